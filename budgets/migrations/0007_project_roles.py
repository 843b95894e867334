"""Project members get a role: the plain M2M becomes `Membership` (existing members become owners)."""

import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models


def members_to_owners(apps, schema_editor):
    """Everyone who was a member could do everything: they keep it as owners."""
    Project = apps.get_model("budgets", "Project")
    Membership = apps.get_model("budgets", "Membership")
    through = Project.members.through
    Membership.objects.bulk_create(
        [Membership(project_id=row.project_id, user_id=row.user_id, role="owner") for row in through.objects.all()],
        ignore_conflicts=True,
    )


def owners_to_members(apps, schema_editor):
    Project = apps.get_model("budgets", "Project")
    Membership = apps.get_model("budgets", "Membership")
    through = Project.members.through
    through.objects.bulk_create(
        [through(project_id=m.project_id, user_id=m.user_id) for m in Membership.objects.all()],
        ignore_conflicts=True,
    )


class Migration(migrations.Migration):

    # The lead rebases this onto 0006 (reservations) when merging.
    dependencies = [
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
        ("budgets", "0006_reservations"),
    ]

    operations = [
        migrations.CreateModel(
            name="Membership",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("role", models.CharField(choices=[("owner", "Owner"), ("manager", "Manager"), ("viewer", "Viewer")],
                                          default="owner", max_length=10)),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                ("project", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE,
                                              related_name="memberships", to="budgets.project")),
                ("user", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE,
                                           related_name="budget_memberships", to=settings.AUTH_USER_MODEL)),
            ],
            options={
                "ordering": ["project", "user__username"],
                "constraints": [models.UniqueConstraint(fields=("project", "user"), name="one_membership_per_user")],
            },
        ),
        migrations.RunPython(members_to_owners, owners_to_members),
        migrations.RemoveField(model_name="project", name="members"),
        migrations.AddField(
            model_name="project",
            name="members",
            field=models.ManyToManyField(blank=True, related_name="budget_projects", through="budgets.Membership",
                                         to=settings.AUTH_USER_MODEL),
        ),
    ]
