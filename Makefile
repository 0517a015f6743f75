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

test: venv
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check txmailhub tests twisted bench

clean:
	rm -rf $(VENV) build *.egg-info var
