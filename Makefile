# The same few commands locally and in CI. Everything runs from ./.venv, which
# `make run` / `make test` create on first use (needs Python 3.11+ with venv).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-pyproject
# pyodbc needs unixODBC's libodbc.so.2, which pip cannot install.
ODBC_PACKAGE := unixodbc

.PHONY: help run test lint bench soak clean venv system-libs

help:
	@echo "make run     the whole stack in one process on http://127.0.0.1:8000 (cache-refresher dev)"
	@echo "make test    run the whole test suite (needs PostgreSQL, see README.md)"
	@echo "make lint    ruff check, ruff format --check, mypy"
	@echo "make bench   refresh benchmarks on SQLite and PostgreSQL (bench/refresh.py, bench/upstream.py)"
	@echo "make soak    cache-refresher dev for a few minutes, watched for leaks (bench/soak.py)"
	@echo "make clean   remove the venv, caches and the dev database"

$(BIN)/python:
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "cache-refresher needs Python 3.11 or newer: run make with PYTHON=python3.11 (or newer)")'
	$(PYTHON) -m venv $(VENV)

# Reinstall only when pyproject.toml changed since the last install.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

system-libs: venv
	@if ! $(BIN)/python -c 'import pyodbc' 2>/dev/null; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "pyodbc needs unixODBC (libodbc.so.2): installing $(ODBC_PACKAGE) with apt-get"; \
			apt-get update && apt-get install -y $(ODBC_PACKAGE); \
		else \
			echo "pyodbc needs the unixODBC library (libodbc.so.2), which is not installed." >&2; \
			echo "Install it with:  sudo apt-get install -y $(ODBC_PACKAGE)   then run make test again." >&2; \
			exit 1; \
		fi; \
	fi

run: venv
	$(BIN)/cache-refresher dev

test: system-libs
	$(BIN)/python -m pytest

lint: venv
	$(BIN)/ruff check
	$(BIN)/ruff format --check
	$(BIN)/mypy

bench: venv
	$(BIN)/python bench/refresh.py
	$(BIN)/python bench/upstream.py

soak: venv
	$(BIN)/python bench/soak.py

clean:
	rm -rf $(VENV) .dev .pytest_cache .mypy_cache .ruff_cache .coverage .coverage.* build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
