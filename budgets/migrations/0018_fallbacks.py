"""Fallbacks: a project names, per model, the models a refused call may fall back to."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("budgets", "0017_tags_db_default"),
    ]

    operations = [
        migrations.AddField(
            model_name="project",
            name="fallbacks",
            field=models.JSONField(blank=True, default=dict,
                                   help_text='Fallback models per model, e.g. {"gpt-4o": ["gpt-4o-mini"]}.'),
        ),
    ]
