# sharpmix: two commands do all set-up.  `make test` and `make demo`; `make help` lists the rest.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# Database tests also run on PostgreSQL when one answers locally (CI starts one). Each test session
# creates its own database there and drops it afterwards.
PG_ADMIN_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/postgres
SHARPMIX_TEST_POSTGRES_URL ?= $(shell pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null && echo $(PG_ADMIN_URL))
export SHARPMIX_TEST_POSTGRES_URL
# torch's OpenMP threads spin while they wait for work; on a small machine shared with anything
# else (the test suite's own worker processes included) long spinning starves the working
# threads. A short spin keeps an idle machine's speed (bench/omp_wait.py; sharpmix/cli.py sets
# the same default for the `sharpmix` command).
export GOMP_SPINCOUNT ?= 10000

.PHONY: help venv check lint format typecheck imports test test-fast demo clean

help:
	@echo "make test   set up .venv, run every check and the whole test suite"
	@echo "make demo   set up .venv, run the main job on the embedded default (SQLite, CPU)"
	@echo "make check  ruff (lint + format), mypy strict, the import rules of the layers"
	@echo "make format apply ruff's formatting and safe fixes"

# torch is installed first and on its own: asked for by another package, pip might pick a CUDA
# build from the registry instead of the pinned CPU one.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: venv
	$(BIN)/mypy

imports: venv
	$(BIN)/python tools/check_imports.py

check: lint typecheck imports

# The whole suite: unit, db (SQLite and PostgreSQL), slow; gpu tests skip where there is no CUDA.
# Coverage of contract/, service/, workers/ and sharpmix/ must stay above the floor (measured 90% when it was set).
test: venv check
	$(BIN)/python -m pytest --cov=contract --cov=service --cov=workers --cov=sharpmix --cov-report=term:skip-covered \
		--cov-fail-under=85

# Everyday loop: unit and db tests only.
test-fast: venv
	$(BIN)/python -m pytest -m "not slow"

demo: venv
	$(BIN)/sharpmix demo

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
