# Two entry points a fresh machine needs: `make demo` and `make test`.
# Both create .venv and install the project into it first; `make test` first installs the
# system packages the tests need (scripts/system-deps.sh: a no-op when they are there).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/celery-janitor: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

.PHONY: demo test system-deps bench
demo: $(BIN)/celery-janitor
	$(BIN)/celery-janitor demo

test: system-deps $(BIN)/celery-janitor
	$(BIN)/ruff check janitor tests bench
	$(BIN)/ruff format --check janitor tests bench
	$(BIN)/mypy
	$(BIN)/pytest

system-deps:
	bash scripts/system-deps.sh

bench: $(BIN)/celery-janitor
	$(BIN)/python bench/sweep_bench.py
