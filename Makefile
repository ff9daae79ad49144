# invoice-dispatch — the two set-up commands are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: install install-celery demo test test-fast lint bench chaos constraints clean

install: $(STAMP)

# Reproducible: every package pinned by constraints.txt (refresh with `make constraints`).
# requirements-dev.txt is the runtime requirements.txt plus the test and tooling packages;
# the Airflow image installs requirements.txt alone.
$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check -r requirements-dev.txt -c constraints.txt
	$(PIP) install -q --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

# The Celery deployment without Docker (docs/airflow.md): the Celery provider, celery, kombu
# and the redis client of requirements-celery.txt, under the same constraints.txt.
CELERY_STAMP := $(VENV)/.installed-celery
install-celery: $(CELERY_STAMP)

$(CELERY_STAMP): $(STAMP) requirements-celery.txt
	$(PIP) install -q --disable-pip-version-check -r requirements.txt -r requirements-celery.txt -c constraints.txt
	touch $(CELERY_STAMP)

demo: install
	$(PY) -m dispatch.devtools.airflow_demo

# Three workers on two cores: much of the suite waits on PostgreSQL, subprocesses and sockets.
# Each test makes its own databases, ports and directories, so they run side by side.
TEST_WORKERS ?= 3
test: install
	$(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist worksteal --durations=15

test-fast: install
	$(PY) -m pytest -q -x -m "not slow and not postgres"

lint: install
	$(VENV)/bin/ruff check plugins dags tests
	$(VENV)/bin/ruff format --check plugins dags tests
	$(VENV)/bin/mypy

# Every performance target side by side (docs/benchmark.md): make bench N=1000000 BACKEND=postgres
BACKEND ?= postgres
bench: install
	$(PY) -m dispatch.devtools.bench --backend $(BACKEND) $(if $(N),--invoices $(N),)
	$(PY) -m dispatch.devtools.bench_pages --backend $(BACKEND) $(if $(N),--invoices $(N),)
	$(PY) -m dispatch.devtools.bench_webhooks --events 10000

# Attack running pipelines from outside (kill -9, concurrent runs, provider, database and
# disk faults, a Celery deployment with a worker killed) and print the figures of
# exactly-once / nothing-lost; bounded (~30-40 min). The Celery deployment needs Redis at
# 127.0.0.1:6379 (DISPATCH_TEST_CELERY_BROKER, default redis://127.0.0.1:6379/7).
# Sizes: CHAOS_KILLS (100), CHAOS_KILLS_LOOKUP (30), CHAOS_MESSAGES (10000).
chaos: install-celery
	CHAOS=1 $(PY) -m pytest -q -p no:cacheprovider tests/chaos

constraints:
	$(PIP) freeze --exclude-editable | grep -v '^invoice-dispatch' > constraints.txt

clean:
	rm -rf var .pytest_cache .ruff_cache .mypy_cache
