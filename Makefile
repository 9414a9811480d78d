# Two entry points a fresh machine needs: `make demo` and `make test`.
# Both create .venv and install the project into it first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/celery-janitor: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

.PHONY: demo test lint bench
demo: $(BIN)/celery-janitor
	$(BIN)/celery-janitor demo

test: $(BIN)/celery-janitor
	$(BIN)/ruff check janitor tests bench
	$(BIN)/ruff format --check janitor tests bench
	$(BIN)/mypy
	$(BIN)/pytest

bench: $(BIN)/celery-janitor
	$(BIN)/python bench/sweep_bench.py
