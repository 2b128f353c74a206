# fhir_bridge developer targets. Everything runs from the local virtualenv in .venv.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.DEFAULT_GOAL := all
.PHONY: all install demo test test-unit lint format mypy bench bench-api sekmet clean

all: lint test

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "fhir_bridge needs Python >= 3.11")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)  ## create .venv and install fhir_bridge with its dev tools

sekmet: install  ## install the SEKMET sandbox FHIR server into .fhirpeer/ (tests and demo do this themselves)
	$(BIN)/python -c 'from fhir_bridge.sandbox import default_venv, ensure_installed; print(ensure_installed(default_venv()))'

demo: install  ## sandbox EHR with sample data + the bridge + API on the embedded store
	$(BIN)/fhir-bridge demo

test: install  ## the whole suite: unit tests and integration tests against a real SEKMET
	$(BIN)/pytest

test-unit: install  ## unit tests only (no FHIR server)
	$(BIN)/pytest -m "not integration"

lint: install  ## ruff + mypy --strict
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy src

format: install
	$(BIN)/ruff check --fix src tests bench
	$(BIN)/ruff format src tests bench

mypy: install
	$(BIN)/mypy src

bench: install  ## every benchmark: one table of figures and ratios (JSON in bench/results), asserts nothing
	$(BIN)/python bench/run.py --compare last

bench-api: install  ## API p50/p99 with 100k tasks under 50 clients, SQLite and Redis (needs wrk; ~25 min)
	@command -v wrk >/dev/null || { echo "bench-api needs wrk: apt-get install wrk"; exit 1; }
	$(BIN)/python bench/api_load.py

clean:
	rm -rf $(VENV) .fhirpeer var .pytest_cache .mypy_cache .ruff_cache bench/results build dist
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
