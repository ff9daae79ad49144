# invoice-dispatch — the two set-up commands are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint bench chaos constraints clean

install: $(STAMP)

# Reproducible: every package pinned by constraints.txt (refresh with `make constraints`).
# requirements-dev.txt is the runtime requirements.txt plus the test and tooling packages;
# the Airflow image installs requirements.txt alone.
$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check -r requirements-dev.txt -c constraints.txt
	$(PIP) install -q --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

demo: install
	$(PY) -m dispatch.airflow_demo

test: install
	$(PY) -m pytest -q -p no:cacheprovider

test-fast: install
	$(PY) -m pytest -q -x -m "not slow and not postgres"

lint: install
	$(VENV)/bin/ruff check plugins dags tests
	$(VENV)/bin/ruff format --check plugins dags tests

# Every performance target side by side (docs/benchmark.md): make bench N=1000000 BACKEND=postgres
BACKEND ?= postgres
bench: install
	$(PY) -m dispatch.bench --backend $(BACKEND) $(if $(N),--invoices $(N),)

# Attack running pipelines from outside (kill -9, concurrent runs, provider, database and
# disk faults) and print the figures of exactly-once / nothing-lost; bounded (~30-40 min).
# Sizes: CHAOS_KILLS (100), CHAOS_KILLS_LOOKUP (30), CHAOS_MESSAGES (10000).
chaos: install
	CHAOS=1 $(PY) -m pytest -q -p no:cacheprovider tests/chaos

constraints:
	$(PIP) freeze --exclude-editable | grep -v '^invoice-dispatch' > constraints.txt

clean:
	rm -rf var .pytest_cache .ruff_cache
