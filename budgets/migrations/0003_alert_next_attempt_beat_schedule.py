"""Alert.next_attempt_at (a delivery's lease and backoff), and the beat schedule in the database."""

from __future__ import annotations

from typing import Any

from django.db import migrations, models


def install_beat_schedule(apps: Any, schema_editor: Any) -> None:
    # The schedule itself is kept in code, in budgets.services.schedule.BEAT_SCHEDULE.
    from budgets.services.schedule import beat_schedule_install

    beat_schedule_install(apps=apps)


class Migration(migrations.Migration):
    dependencies = [  # noqa: RUF012 (Django's migration convention)
        ("budgets", "0002_load_prices"),
        ("django_celery_beat", "0018_improve_crontab_helptext"),
    ]

    operations = [  # noqa: RUF012
        migrations.AddField(
            model_name="alert",
            name="next_attempt_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.RunPython(install_beat_schedule, migrations.RunPython.noop),
    ]
