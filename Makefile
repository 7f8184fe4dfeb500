# Developer targets (the Go library's names). Every target works on a fresh machine:
# `scripts/bootstrap.sh` installs the Python packages and builds the interop peers first.
PYTHON ?= python3
FUZZTIME ?= 10
PYTEST ?= $(PYTHON) -m pytest
SRC := $(wildcard glueberry tests fuzz bench)

.PHONY: bootstrap test test-short bench fuzz coverage check lint typecheck format demo

bootstrap:
	bash scripts/bootstrap.sh

# The whole suite on asyncio's loop, then the suites that drive sockets again on uvloop.
UVLOOP_SUITES := tests/test_event_loop.py tests/net tests/transport tests/integration tests/peers tests/badinput

test: bootstrap
	$(PYTEST)
	GLUEBERRY_TEST_LOOP=uvloop $(PYTEST) --timeout-method=thread $(UVLOOP_SUITES)

test-short: bootstrap
	$(PYTEST) -m "not slow and not interop and not netns"

lint: bootstrap
	$(PYTHON) -m ruff check $(SRC)
	$(PYTHON) -m ruff format --check $(SRC)

# mypy --strict over the package and the tests (`strict` and `files` in pyproject.toml).
typecheck: bootstrap
	$(PYTHON) -m mypy

format:
	$(PYTHON) -m ruff format $(SRC)
	$(PYTHON) -m ruff check --fix $(SRC)

fuzz: bootstrap
	FUZZTIME=$(FUZZTIME) $(PYTHON) fuzz/run.py

coverage: bootstrap
	$(PYTEST) --cov=glueberry --cov-branch --cov-report=term-missing

bench: bootstrap
	$(PYTHON) bench/run.py

check: lint typecheck test

demo:
	$(PYTHON) -m pip install -q -e .
	$(PYTHON) -m glueberry demo
