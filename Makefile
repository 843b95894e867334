# Budget Manager: `make run` starts the whole service, `make test` runs the suite.
# Both create .venv and install what they need on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-fast install proxy-venv lint bench clean

# Both run the suite in TEST_WORKERS processes (pytest-xdist; each its own test database, Redis
# database and VAR_DIR: budgetsite/settings_test.py), a test file per process at a time (--dist loadfile:
# a module's server or browser starts once). TEST_WORKERS=0 runs it in this one process.
TEST_WORKERS ?= 2
XDIST := $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile)
# `make test-fast` leaves out the browser tests, the real Celery workers and the tests marked
# slow (other processes, faults, property tests, big pages, live-server clients): see pytest.ini.
FAST := not slow and not browser and not celery_worker
# With DATABASE_URL unset the suite runs on SQLite, which skips the tests marked postgres: they
# run again on this PostgreSQL when it answers (pytest-django creates and drops test_<name>).
LOCAL_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/budget_local

$(STAMP): requirements.txt requirements-test.txt requirements-litellm.txt clients/python/pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("Python 3.11+ is required, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-test.txt
	$(BIN)/python -m pip install -q --no-deps -r requirements-litellm.txt
	@touch $(STAMP)

install: $(STAMP)

# The LiteLLM Proxy in a virtualenv of its own (its dependencies are many and none of the service's),
# with the client package installed editable: tests/test_client_litellm_proxy.py starts `litellm` from
# it. About 45 s on a warm pip cache; litellm at requirements-litellm.txt's pin.
PROXY_VENV := .venv-proxy
PROXY_STAMP := $(PROXY_VENV)/.installed

$(PROXY_STAMP): requirements-litellm.txt requirements-litellm-proxy.txt clients/python/pyproject.toml
	$(PYTHON) -m venv $(PROXY_VENV)
	$(PROXY_VENV)/bin/python -m pip install -q --upgrade pip
	$(PROXY_VENV)/bin/python -m pip install -q --no-deps $$(grep -E '^litellm==' requirements-litellm.txt)
	$(PROXY_VENV)/bin/python -m pip install -q -r requirements-litellm-proxy.txt
	$(PROXY_VENV)/bin/python -m pip install -q --no-deps -e clients/python
	@touch $(PROXY_STAMP)

proxy-venv: $(PROXY_STAMP)

run: install
	$(BIN)/python manage.py run_embedded

test: install proxy-venv
	$(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)
	$(call on_local_postgres,postgres,$(XDIST))

test-fast: install
	$(BIN)/python -m pytest $(XDIST) -m "$(FAST)" $(PYTEST_ARGS)
	$(call on_local_postgres,postgres and $(FAST),)

# The tests marked postgres (and $(1)) on LOCAL_DATABASE_URL, if DATABASE_URL is unset and it
# answers, with pytest options $(2) (test-fast's dozen run quicker in one process: one test
# database to create, not one per worker). Exit status 5 (no test selected, e.g. PYTEST_ARGS
# named a file without any) is fine.
define on_local_postgres
	@if [ -n "$$DATABASE_URL" ]; then exit 0; fi; \
	if ! $(BIN)/python -m tests.postgres_support "$(LOCAL_DATABASE_URL)"; then \
	  echo "No PostgreSQL answers at $(LOCAL_DATABASE_URL): the tests marked postgres stay skipped."; exit 0; fi; \
	echo "The tests marked postgres, on $(LOCAL_DATABASE_URL):"; \
	DATABASE_URL="$(LOCAL_DATABASE_URL)" $(BIN)/python -m pytest $(2) -m "$(1)" $(PYTEST_ARGS); \
	status=$$?; [ $$status -eq 0 ] || [ $$status -eq 5 ]
endef

lint: install
	$(BIN)/ruff check budgets budgetsite tests bench clients
	$(BIN)/lint-imports
	$(BIN)/mypy budgets budgetsite
	$(BIN)/mypy clients/python/budget_client

# make bench [ROWS=1,2] [BENCH_ARGS="--big --keep"]: PostgreSQL at 127.0.0.1 and wrk needed (docs/PERFORMANCE.md).
bench: install
	$(BIN)/python bench/run.py $(if $(ROWS),--rows $(ROWS)) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(PROXY_VENV) var .pytest_cache .hypothesis
