"""Load the shipped model price snapshot, so a fresh `migrate` can price every model in it."""

from __future__ import annotations

from typing import Any

from django.db import migrations


def load_snapshot(apps: Any, schema_editor: Any) -> None:
    # Imported here: the loader reads the historical model, passed in, not budgets.models.
    from budgets.services.prices import load_price_map

    load_price_map(model_class=apps.get_model("budgets", "ModelPrice"), using=schema_editor.connection.alias)


class Migration(migrations.Migration):
    dependencies = [("budgets", "0001_initial")]  # noqa: RUF012 (Django's migration convention)

    operations = [migrations.RunPython(load_snapshot, migrations.RunPython.noop)]  # noqa: RUF012
