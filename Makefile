# make run: set up and run the driver on the seed scenario.  make test: set up and run the test suite.
# make bench: kvmgr against its peers.  make faults: the fault suite.  make lint: ruff.  make typecheck: mypy.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUNTIME := $(VENV)/.installed-runtime
TESTING := $(VENV)/.installed-test

.PHONY: run test lint typecheck bench faults clean

# make run needs kvmgr and its runtime dependencies only; the other targets need the test extras too.
$(RUNTIME): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	$(BIN)/python -m compileall -q kvmgr  # bytecode now: alice and kvmgr start without compiling (an editable install makes none)
	touch $(RUNTIME)

$(TESTING): $(RUNTIME)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(TESTING)

run: $(RUNTIME)
	$(BIN)/python run_driver.py

test: $(TESTING)
	$(BIN)/python -m pytest -q -n 2  # two workers (pytest-xdist): most tests wait on processes and sockets

bench: $(TESTING)
	$(BIN)/kvmgr bench

faults: $(TESTING)
	$(BIN)/kvmgr faults
	$(BIN)/kvmgr faults --target redis+sentinel://
	$(BIN)/kvmgr faults --target redis+cluster://

lint: $(TESTING)
	$(BIN)/ruff check .

typecheck: $(TESTING)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info
