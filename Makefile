# Two commands do all the set-up on a fresh machine:  make run  |  make test
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-quick install install-test browser train-all data evaluate bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): requirements.txt requirements-test.txt | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt -r requirements-test.txt
	touch $(STAMP)

install: $(STAMP)

browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

## Run the review app on http://127.0.0.1:7860 (bundled checkpoints, SQLite store under ./data)
run: install
	$(BIN)/python app.py

## Run the whole test suite (installs everything it needs first)
test: install browser
	$(BIN)/python -m pytest -q -ra

## The quick subset (no live app, browser or long training)
test-quick: install
	$(BIN)/python -m pytest -q -m "not slow"

data: install
	$(BIN)/python -m anomaly.data build --out data/cohort --seed 0

evaluate: install
	$(BIN)/python -m anomaly.evaluate --data data/cohort/test --methods all --out runs/eval_test

bench: install
	$(BIN)/python -m anomaly.bench

clean:
	rm -rf $(VENV) .pytest_cache runs
