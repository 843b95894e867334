from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("budgets", "0014_limits_teams_tags"),
    ]

    operations = [
        migrations.AddField(
            model_name="alert",
            name="webhook_sent_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="alert",
            name="slack_sent_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
    ]
