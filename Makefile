# Set-up lives here: `make run` and `make test` create or refresh .venv from the committed lock themselves
# (scripts/setup_env.py: uv from uv.lock, or pip from requirements.txt with the same pins).
SHELL := /bin/bash
# The first Python 3.11+ on PATH. pyenv's shims answer `command -v` for versions that are not installed and then
# complain on stderr, so the probe runs each candidate and keeps quiet about the ones that fail. It keeps the
# interpreter's real path: a shim costs 0.2 s a call.
ifeq ($(origin PYTHON), undefined)
PYTHON := $(shell for p in python3 python3.13 python3.12 python3.11; do $$p -c 'import sys; assert sys.version_info >= (3, 11); print(sys.executable)' 2>/dev/null && break; done)
endif
# This machine's environment sets PYTHONDONTWRITEBYTECODE. Without byte-code caches every start, every pytest worker
# and every server a test spawns compiles the whole dependency tree again (about 4 s of CPU each); __pycache__/ is
# ignored by git, so the targets below let Python keep its caches.
export PYTHONDONTWRITEBYTECODE :=
VENV := .venv
PY := $(VENV)/bin/python
# Two pytest workers, one a core. PYTEST_WORKERS=3 is faster still (much of a test's time is waiting, which a
# third worker fills: 3:48 against 5:10 on the same loaded machine), but the extra load made the three-worker
# Telegram scale test earn 429s in two of six runs; the multi-process tests stay two at a time either way (their
# xdist groups, processes-a and processes-b).
PYTEST_WORKERS ?= 2

.PHONY: run test lint typecheck unit bench diagram venv lock upgrade clean

venv:
	@test -n "$(PYTHON)" || { echo "Python 3.11 or newer is needed on PATH (python3 or python3.11)" >&2; exit 1; }
	@$(PYTHON) scripts/setup_env.py

# A new data folder gets the sandbox's demo population from the machine's cache (scripts/sandbox_cache.py).
run: venv
	@if [ -f "$${DATA_DIR:-data}/sandbox-registry.sqlite3" ]; then exec $(PY) -m bot run; \
	else exec $(PY) scripts/sandbox_cache.py --then-run; fi

lint: venv
	$(VENV)/bin/ruff check .
	@if [ -f .importlinter ]; then echo "$(VENV)/bin/lint-imports"; $(VENV)/bin/lint-imports; fi

# A new clone starts from the machine's latest mypy cache instead of none (about 30 s of CPU on 2 cores): mypy
# checks each cached module against its source's hash, so a cache from another checkout costs time, never a
# missed error. The cache goes back to the machine after each successful run.
MYPY_MACHINE_CACHE := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/haoqing/mypy-cache
typecheck: venv
	@if [ ! -d .mypy_cache ] && [ -d "$(MYPY_MACHINE_CACHE)" ]; then cp -R "$(MYPY_MACHINE_CACHE)" .mypy_cache; fi
	$(VENV)/bin/mypy dialogs bot integrations domain
	@mkdir -p "$(dir $(MYPY_MACHINE_CACHE))"; scratch="$(MYPY_MACHINE_CACHE).$$$$"; \
	cp -R .mypy_cache "$$scratch" && rm -rf "$(MYPY_MACHINE_CACHE)" && mv -T "$$scratch" "$(MYPY_MACHINE_CACHE)" \
	  2>/dev/null || rm -rf "$$scratch"

# pytest-xdist spreads the suite over the machine's two cores (PYTEST_WORKERS, above); PYTEST_WORKERS=0 runs it in
# one process. `--dist loadgroup` keeps each xdist_group on one worker (tests/conftest.py makes that work again
# with pytest 9.2).
unit: venv
	@echo "$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)"
	@$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadgroup $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest ran no test (exit code 5): nothing matched PYTEST_ARGS='$(PYTEST_ARGS)'" >&2; fi; \
	exit $$status

test: lint typecheck unit

diagram: venv
	$(PY) -m bot diagram > docs/dialogs.mmd

bench: venv
	$(PY) bench/webchat.py

# Re-resolves after a change to pyproject.toml's dependencies, keeping every pin that still fits, and exports the
# same pins to requirements.txt for machines without uv. `make upgrade` moves every pin to the newest release.
lock:
	@$(MAKE) --no-print-directory _lock UV_LOCK_ARGS=

upgrade:
	@$(MAKE) --no-print-directory _lock UV_LOCK_ARGS=--upgrade

_lock:
	@uv="$$($(PYTHON) scripts/setup_env.py --uv-path)" && test -n "$$uv" || { echo "make lock needs uv" >&2; exit 1; }; \
	set -e; export UV_NO_CONFIG=1 UV_PYTHON_DOWNLOADS=never; \
	"$$uv" lock $(UV_LOCK_ARGS); \
	{ echo "# The pins of uv.lock for pip, written by \`make lock\`: do not edit. \`make venv\` uses it when uv is missing."; \
	  echo "# pyproject-dependencies-sha256: $$($(PYTHON) scripts/setup_env.py --dependencies-digest)"; \
	  "$$uv" export --quiet --frozen --extra dev --no-emit-project --no-header --format requirements-txt; \
	} > requirements.txt; \
	echo "uv.lock and requirements.txt are up to date: commit both"

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
