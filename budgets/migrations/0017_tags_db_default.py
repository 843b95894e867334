# A reservation's tags get the database default "" too (the ledger's tags have it since 0014), so
# SQL of our own may leave the column out.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("budgets", "0016_limit_alerts"),
    ]

    operations = [
        migrations.AlterField(
            model_name="reservation",
            name="tags",
            field=models.CharField(blank=True, db_default="", default="", max_length=400),
        ),
    ]
