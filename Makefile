# Two commands do all the set-up on a fresh machine (each creates .venv first if needed):
#   make ask    run `glimp ask` on the embedded default model (CPU, offline)
#   make test   lint (ruff check, ruff format --check, mypy), then the whole test suite, then the wheel on
#               every supported Python and at the lowest declared versions (what CI runs)
VENV ?= .venv
PYTHON := $(VENV)/bin/python
Q ?= Tom has 3 apples and buys 4 more. How many apples does he have? Think step by step.

.PHONY: setup ask lint test matrix bench
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
	$(MAKE) matrix

# The wheel installed into a fresh environment per Python (3.10-3.13) with the extras that need no
# torch, then at the lowest versions Glimp declares; `python scripts/matrix.py --help` for the rest.
matrix: setup
	$(PYTHON) scripts/matrix.py
	$(PYTHON) scripts/matrix.py --lowest --pythons 3.10

bench: setup
	$(PYTHON) benchmarks/routing_overhead.py
