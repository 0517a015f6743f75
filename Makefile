# The two commands of the quick start: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
CONFIG ?= etc/demo.toml

.PHONY: run test lint venv clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/python -m pip install --quiet --config-settings editable_mode=compat -e '.[test]'
	touch $@

venv: $(VENV)/.installed

run: venv
	$(BIN)/python -m txmailhub.demo --config $(CONFIG)
	$(BIN)/twistd -n --pidfile= mailhub --config $(CONFIG)

# The suite runs in one worker process per CPU (pytest-xdist): most of its
# time is the tests' own CPU (property and state-machine tests, hubs started
# in subprocesses), so on two cores it takes about half as long.  JOBS=0
# runs it in pytest's own process; PYTEST_ARGS adds arguments (a file, -k).
# Bytecode is written (the environment may say not to): every hub a test
# starts is a new Python process, which otherwise compiles txmailhub again.
JOBS ?= auto

test: venv
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest -q -n $(JOBS) --dist worksteal $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check txmailhub tests twisted bench

clean:
	rm -rf $(VENV) build *.egg-info var
