# The ledger's raw inserts (the two-statement record, COPY of the demo seed) leave `tags` out: the
# database fills it with "" as the model does (0014 declared only the Python default, so they failed NOT NULL).

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('budgets', '0014_limits_teams_tags'),
    ]

    operations = [
        migrations.AlterField(
            model_name='costevent',
            name='tags',
            field=models.CharField(blank=True, db_default='', default='', max_length=400),
        ),
        migrations.AlterField(
            model_name='reservation',
            name='tags',
            field=models.CharField(blank=True, db_default='', default='', max_length=400),
        ),
    ]
