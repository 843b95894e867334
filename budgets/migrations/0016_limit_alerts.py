"""Alerts per limit: an Alert row may name the Limit whose used crossed a threshold (once per window)."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("budgets", "0015_slack_delivery"),
    ]

    operations = [
        migrations.AddField(
            model_name="alert",
            name="source_limit",
            field=models.ForeignKey(
                blank=True, null=True, on_delete=django.db.models.deletion.CASCADE, related_name="alerts",
                to="budgets.limit",
            ),
        ),
        migrations.AlterField(
            model_name="alert",
            name="scope",
            field=models.CharField(
                choices=[("user", "User budget"), ("project", "Project budget"), ("limit", "Limit")], max_length=10,
            ),
        ),
        migrations.RemoveConstraint(model_name="alert", name="one_alert_per_threshold_per_period"),
        migrations.AddConstraint(
            model_name="alert",
            constraint=models.UniqueConstraint(
                condition=models.Q(("source_limit__isnull", True)),
                fields=("project", "scope", "user_id", "threshold", "period_start"),
                name="one_alert_per_threshold_per_period",
            ),
        ),
        migrations.AddConstraint(
            model_name="alert",
            constraint=models.UniqueConstraint(
                condition=models.Q(("source_limit__isnull", False)),
                fields=("source_limit", "threshold", "period_start"),
                name="one_alert_per_limit_threshold_per_window",
            ),
        ),
    ]
