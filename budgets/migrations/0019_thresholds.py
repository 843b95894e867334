"""Per-limit thresholds that resolve, forecasts and spend anomalies (issue 22, items 7 and 8):
Limit.thresholds, Alert.kind/cycle/subject/details, the project's anomaly settings, two beat tasks."""

from __future__ import annotations

from typing import Any

import budgets.base.fields
from decimal import Decimal
from django.db import migrations, models


def install_beat_schedule(apps: Any, schema_editor: Any) -> None:
    from budgets.services.schedule import beat_schedule_install

    beat_schedule_install(apps=apps)


class Migration(migrations.Migration):

    dependencies = [  # noqa: RUF012
        ('budgets', '0018_fallbacks'),
    ]

    operations = [  # noqa: RUF012
        migrations.RemoveConstraint(
            model_name='alert',
            name='one_alert_per_threshold_per_period',
        ),
        migrations.RemoveConstraint(
            model_name='alert',
            name='one_alert_per_limit_threshold_per_window',
        ),
        migrations.AddField(
            model_name='alert',
            name='cycle',
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.AddField(
            model_name='alert',
            name='details',
            field=models.JSONField(blank=True, default=dict),
        ),
        migrations.AddField(
            model_name='alert',
            name='kind',
            field=models.CharField(choices=[('threshold', 'Threshold crossed'), ('resolved', 'Back under a threshold'), ('forecast', 'Forecast over the limit'), ('anomaly', 'Spend anomaly')], default='threshold', max_length=10),
        ),
        migrations.AddField(
            model_name='alert',
            name='subject',
            field=models.CharField(blank=True, default='', max_length=255),
        ),
        migrations.AddField(
            model_name='limit',
            name='thresholds',
            field=models.JSONField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='project',
            name='anomaly_alerts',
            field=models.BooleanField(default=True, help_text="Alert when a user's or team's daily spend jumps."),
        ),
        migrations.AddField(
            model_name='project',
            name='anomaly_floor',
            field=budgets.base.fields.MoneyField(decimal_places=12, default=Decimal('1'), help_text='Dollars a day below which spend is never an anomaly.', max_digits=24),
        ),
        migrations.AddField(
            model_name='project',
            name='anomaly_multiple',
            field=models.DecimalField(decimal_places=2, default=Decimal('3'), help_text='Times the trailing 14-day daily average.', max_digits=6),
        ),
        migrations.AddField(
            model_name='project',
            name='limit_thresholds',
            field=models.JSONField(blank=True, default=list, editable=False),
        ),
        migrations.AlterField(
            model_name='alert',
            name='scope',
            field=models.CharField(choices=[('user', 'User budget'), ('project', 'Project budget'), ('limit', 'Limit'), ('team', 'Team')], max_length=10),
        ),
        migrations.AlterField(
            model_name='alert',
            name='threshold',
            field=models.PositiveIntegerField(help_text='Percent of the budget (an anomaly: the multiple, in percent).'),
        ),
        migrations.AddConstraint(
            model_name='alert',
            constraint=models.UniqueConstraint(condition=models.Q(('kind', 'threshold'), ('source_limit__isnull', True)), fields=('project', 'scope', 'user_id', 'threshold', 'period_start'), name='one_alert_per_threshold_per_period'),
        ),
        migrations.AddConstraint(
            model_name='alert',
            constraint=models.UniqueConstraint(condition=models.Q(('source_limit__isnull', False)), fields=('source_limit', 'kind', 'threshold', 'period_start', 'cycle'), name='one_alert_per_limit_event_per_window'),
        ),
        migrations.AddConstraint(
            model_name='alert',
            constraint=models.UniqueConstraint(condition=models.Q(('kind', 'anomaly')), fields=('project', 'scope', 'subject', 'period_start'), name='one_anomaly_per_subject_per_day'),
        ),
        migrations.RunPython(install_beat_schedule, migrations.RunPython.noop),
]
