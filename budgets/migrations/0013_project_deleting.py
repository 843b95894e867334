from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('budgets', '0012_invitations'),
    ]

    operations = [
        migrations.AddField(
            model_name='project',
            name='deleting_since',
            field=models.DateTimeField(blank=True, editable=False, null=True),
        ),
    ]
