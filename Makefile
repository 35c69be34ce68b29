# cot-rm: the two commands a user needs are `make demo` and `make test`; both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cot-rm-installed
# No hub access anywhere: every model and tokenizer in tests and the demo is built locally.
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-all lint format clean

setup: $(STAMP)

# Re-installs only when pyproject.toml changes (the stamp is older), so `make setup` is idempotent.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

demo: setup
	$(VENV)/bin/cot-rm demo

test: setup
	$(PY) -m pytest -q

# Slow tests included (still no GPU tests).
test-all: setup
	$(PY) -m pytest -q -m "not gpu"

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf runs/demo .pytest_cache .ruff_cache
