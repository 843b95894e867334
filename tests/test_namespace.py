"""services.<name>, selectors.<name>, views.<name>: found in the package's modules, no export list."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

from budgets import selectors, services, views


@pytest.mark.parametrize("package", [services, selectors, views], ids=lambda p: p.__name__)
def test_every_public_function_of_a_module_is_found_by_its_name(package):
    found = 0
    submodules = {info.name for info in pkgutil.iter_modules(package.__path__)}
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for name, value in vars(module).items():
            # A name that is also a module's (views.project_settings) is the module: import it from there.
            if name in submodules:
                continue
            if not name.startswith("_") and inspect.isfunction(value) and value.__module__ == module.__name__:
                assert getattr(package, name) is value, f"{package.__name__}.{name}"
                found += 1
    assert found > 10


def test_a_name_defined_in_one_module_and_imported_by_another_is_the_defining_ones():
    from budgets.services.ledger import CostRecorded

    assert services.CostRecorded is CostRecorded


def test_an_unknown_or_private_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_service"):
        services.no_such_service  # noqa: B018
    with pytest.raises(AttributeError):
        services._names_of_nothing  # noqa: B018


def test_a_submodule_is_imported_as_itself():
    from budgets.services import ledger

    assert services.ledger is ledger
    assert "cost_record" in dir(services)
