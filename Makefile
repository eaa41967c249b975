# Two commands do all the set-up on a fresh machine (each creates .venv first if needed):
#   make ask    run `glimp ask` on the embedded default model (CPU, offline)
#   make test   lint (ruff check, ruff format --check, mypy), then the whole test suite (what CI runs)
VENV ?= .venv
PYTHON := $(VENV)/bin/python
Q ?= Tom has 3 apples and buys 4 more. How many apples does he have? Think step by step.

.PHONY: setup ask lint test bench
setup:
	@bash scripts/setup.sh

ask: setup
	$(VENV)/bin/glimp ask "$(Q)" --seed 0

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir .site

test: setup lint
	$(PYTHON) -m pytest

bench: setup
	$(PYTHON) benchmarks/routing_overhead.py
