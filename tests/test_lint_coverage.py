"""import-linter's layers name every module of budgets/, so none escapes the layer check.

A module left out of `.importlinter` may import anything: import-linter only checks the
modules a contract names. This test fails when a module or package is added at the top of
budgets/ (or a name in the layers no longer exists) until `.importlinter` places it.
"""

from __future__ import annotations

import configparser
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / ".importlinter"
LAYERS_CONTRACT = "importlinter:contract:layers"


def layer_names(config: Path = CONFIG) -> set[str]:
    """Every module named in the layers contract (siblings split on `:` and `|`)."""
    parser = configparser.ConfigParser()
    parser.read(config)
    return {name for name in re.split(r"[\s:|]+", parser[LAYERS_CONTRACT]["layers"]) if name}


def modules_of(package: Path) -> set[str]:
    """The dotted names of a package's own modules and subpackages (one level down)."""
    names = {f"{package.name}.{path.stem}" for path in package.glob("*.py") if path.stem != "__init__"}
    names |= {f"{package.name}.{path.parent.name}" for path in package.glob("*/__init__.py")}
    return names


def left_out(package: Path, named: set[str]) -> list[str]:
    return sorted(modules_of(package) - named)


def not_modules(package: Path, named: set[str]) -> list[str]:
    prefix = f"{package.name}."
    return sorted(name for name in named if name.startswith(prefix) and name not in modules_of(package))


def test_every_module_of_budgets_is_in_a_layer():
    assert left_out(ROOT / "budgets", layer_names()) == []


def test_every_name_in_the_layers_is_a_module_of_budgets():
    assert not_modules(ROOT / "budgets", layer_names()) == []


def test_the_check_finds_a_module_left_out_and_a_name_that_is_gone(tmp_path):
    package = tmp_path / "budgets"
    (package / "api").mkdir(parents=True)
    for name in ("__init__.py", "api/__init__.py", "models.py", "forms.py"):
        (package / name).write_text("")
    config = tmp_path / ".importlinter"
    config.write_text(f"[{LAYERS_CONTRACT}]\nlayers =\n    budgets.api | budgets.gone\n    budgets.models\n")

    named = layer_names(config)

    assert named == {"budgets.api", "budgets.gone", "budgets.models"}
    assert left_out(package, named) == ["budgets.forms"]
    assert not_modules(package, named) == ["budgets.gone"]
