# mtlgen task runner. Every target creates/updates .venv itself and is idempotent.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-integration test-all lint format bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

## demo: set up and run the whole pipeline end to end on the embedded demo data:
## synthesise the cohort, then one Prefect run of longitudinal_pipeline (register -> train ->
## evaluate -> promote -> predict -> report). The demo visits lie in 2018-2025: --as-of picks a
## date at which some patients' follow-ups are due.
DEMO_AS_OF ?= 2022-03-01
demo: $(STAMP)
	$(BIN)/mtlgen synth
	$(BIN)/mtlgen show data/raw/demo --patient 001 --out data/reports/demo-patient.png
	$(BIN)/python -m flows.pipeline --as-of $(DEMO_AS_OF) -S flows.predict_window_days=45

## test: set up and run the default (fast) test suite: no servers, nothing slow
test: $(STAMP)
	$(BIN)/python -m pytest

## test-integration: the tests that start real servers (PostgreSQL, MLflow, Prefect, S3) or a
## headless browser (chromium: .ci/run installs it)
test-integration: $(STAMP)
	$(BIN)/python -m pytest -m "integration and not slow"

## test-all: every test, slow and integration included
test-all: $(STAMP)
	$(BIN)/python -m pytest -m ""

## lint: ruff (lint + format) and the architecture contracts (import-linter)
lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

bench: $(STAMP)
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache
