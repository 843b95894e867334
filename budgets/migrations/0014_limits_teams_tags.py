from decimal import Decimal

import django.db.models.deletion
import django.utils.timezone
from django.db import migrations, models

import budgets.base.fields


def name_keys_apart(apps, schema_editor):
    """A key limit names its key, so names become unique per project: later duplicates get " (2)", " (3)"."""
    ApiKey = apps.get_model("budgets", "ApiKey")
    taken: dict[int, set[str]] = {}
    for key in ApiKey.objects.order_by("project_id", "created_at", "id"):
        names = taken.setdefault(key.project_id, set())
        name, n = key.name, 1
        while name in names:
            n += 1
            name = f"{key.name[:90]} ({n})"
        names.add(name)
        if name != key.name:
            ApiKey.objects.filter(pk=key.pk).update(name=name)


class Migration(migrations.Migration):
    dependencies = [
        ("budgets", "0013_project_deleting"),
    ]

    operations = [
        migrations.CreateModel(
            name="Limit",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                (
                    "scope",
                    models.CharField(
                        choices=[
                            ("project", "Project"),
                            ("team", "Team"),
                            ("user", "User"),
                            ("key", "API key"),
                            ("tag", "Tag"),
                        ],
                        max_length=10,
                    ),
                ),
                (
                    "subject",
                    models.CharField(blank=True, help_text="Team name, user id, key name or tag.", max_length=255),
                ),
                (
                    "model",
                    models.CharField(
                        blank=True, help_text="Only this model's calls; blank: every model.", max_length=255
                    ),
                ),
                (
                    "unit",
                    models.CharField(
                        choices=[("usd", "Dollars"), ("tokens", "Tokens"), ("requests", "Requests")],
                        default="usd",
                        max_length=10,
                    ),
                ),
                (
                    "window",
                    models.CharField(
                        choices=[
                            ("hour", "Hour"),
                            ("day", "Day"),
                            ("week", "Week"),
                            ("month", "Month"),
                            ("year", "Year"),
                            ("lifetime", "Lifetime"),
                        ],
                        default="month",
                        max_length=10,
                    ),
                ),
                ("amount", budgets.base.fields.MoneyField(decimal_places=12, max_digits=24)),
                (
                    "mode",
                    models.CharField(
                        choices=[("hard", "Hard (refuses)"), ("soft", "Soft (alerts only)")],
                        default="hard",
                        max_length=4,
                    ),
                ),
                ("used", budgets.base.fields.MoneyField(decimal_places=12, default=Decimal(0), max_digits=24)),
                ("held", budgets.base.fields.MoneyField(decimal_places=12, default=Decimal(0), max_digits=24)),
                ("window_start", models.DateTimeField(default=django.utils.timezone.now)),
                ("resets_at", models.DateTimeField(blank=True, db_index=True, null=True)),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                ("updated_at", models.DateTimeField(default=django.utils.timezone.now)),
            ],
            options={
                "ordering": ["scope", "subject", "model", "unit", "window"],
            },
        ),
        migrations.CreateModel(
            name="Team",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("name", models.CharField(max_length=100)),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
            ],
            options={
                "ordering": ["name"],
            },
        ),
        migrations.CreateModel(
            name="TeamMember",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("user_id", models.CharField(max_length=255)),
            ],
            options={
                "ordering": ["user_id"],
            },
        ),
        migrations.AddField(
            model_name="costevent",
            name="api_key",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="+",
                to="budgets.apikey",
            ),
        ),
        migrations.AddField(
            model_name="costevent",
            name="tags",
            field=models.CharField(blank=True, db_default="", default="", max_length=400),
        ),
        migrations.AddField(
            model_name="project",
            name="slack_webhook_url",
            field=models.URLField(blank=True, help_text="A Slack incoming webhook for alerts.", max_length=500),
        ),
        migrations.AddField(
            model_name="reservation",
            name="api_key",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="+",
                to="budgets.apikey",
            ),
        ),
        migrations.AddField(
            model_name="reservation",
            name="limit_ids",
            field=models.JSONField(blank=True, default=list),
        ),
        migrations.AddField(
            model_name="reservation",
            name="tags",
            field=models.CharField(blank=True, default="", max_length=400),
        ),
        migrations.AddField(
            model_name="reservation",
            name="tokens",
            field=models.BigIntegerField(default=0),
        ),
        migrations.RunPython(name_keys_apart, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="apikey",
            constraint=models.UniqueConstraint(fields=("project", "name"), name="unique_key_name_per_project"),
        ),
        migrations.AddField(
            model_name="limit",
            name="project",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.CASCADE, related_name="limits", to="budgets.project"
            ),
        ),
        migrations.AddField(
            model_name="team",
            name="project",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.CASCADE, related_name="teams", to="budgets.project"
            ),
        ),
        migrations.AddField(
            model_name="teammember",
            name="project",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.CASCADE, related_name="+", to="budgets.project"
            ),
        ),
        migrations.AddField(
            model_name="teammember",
            name="team",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.CASCADE, related_name="members", to="budgets.team"
            ),
        ),
        migrations.AddIndex(
            model_name="limit",
            index=models.Index(fields=["project", "scope", "subject"], name="limit_subject"),
        ),
        migrations.AddConstraint(
            model_name="limit",
            constraint=models.UniqueConstraint(
                fields=("project", "scope", "subject", "model", "unit", "window"), name="unique_limit"
            ),
        ),
        migrations.AddConstraint(
            model_name="limit",
            constraint=models.CheckConstraint(condition=models.Q(("amount__gte", 0)), name="limit_amount_non_negative"),
        ),
        migrations.AddConstraint(
            model_name="team",
            constraint=models.UniqueConstraint(fields=("project", "name"), name="unique_team_per_project"),
        ),
        migrations.AddConstraint(
            model_name="teammember",
            constraint=models.UniqueConstraint(fields=("project", "user_id"), name="one_team_per_user"),
        ),
    ]
