# Two commands do all the set-up on a fresh machine:  make run  |  make test
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch's CPU build comes first from PyTorch's CPU index (PyPI's default Linux torch carries CUDA:
# several GB); where that index cannot be reached (an offline mirror, a local wheel folder), the
# next step takes torch==2.13.0 from pip's own sources, as configured
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_PIN := $(shell grep -E '^torch==' requirements.txt)

.PHONY: run test test-quick install install-test browser train-all data evaluate bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): requirements.txt requirements-test.txt | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q --timeout 10 --retries 0 --index-url $(TORCH_INDEX) "$(TORCH_PIN)" 2>/dev/null \
	  || echo "PyTorch's CPU index not reachable: torch from pip's configured sources"
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
