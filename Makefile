# Budget Manager: `make run` starts the whole service, `make test` runs the suite.
# Both create .venv and install what they need on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test install lint bench clean

$(STAMP): requirements.txt requirements-test.txt requirements-litellm.txt clients/python/pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("Python 3.11+ is required, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-test.txt
	$(BIN)/python -m pip install -q --no-deps -r requirements-litellm.txt
	@touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/python manage.py run_embedded

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check budgets budgetsite tests bench clients
	$(BIN)/lint-imports
	$(BIN)/mypy budgets budgetsite
	$(BIN)/mypy clients/python/budget_client

# make bench [ROWS=1,2] [BENCH_ARGS="--big --keep"]: PostgreSQL at 127.0.0.1 and wrk needed (docs/PERFORMANCE.md).
bench: install
	$(BIN)/python bench/run.py $(if $(ROWS),--rows $(ROWS)) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache .hypothesis
