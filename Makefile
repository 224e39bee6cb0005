# Set-up lives here: `make run` and `make test` create or refresh .venv themselves.
SHELL := /bin/bash
PYTHON ?= $(shell for p in python3.12 python3.11 python3; do command -v $$p >/dev/null && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' && echo $$p && break; done)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck unit bench diagram venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python 3.11+ is needed (python3.11 or newer on PATH)"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)
	$(PY) -m bot run

lint: $(STAMP)
	$(VENV)/bin/ruff check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy dialogs bot integrations

unit: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test: lint typecheck unit

diagram: $(STAMP)
	$(PY) -m bot diagram > docs/dialogs.mmd

bench: $(STAMP)
	$(PY) bench/webchat.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
