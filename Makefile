# registry-kit: the two commands a new user runs are `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: venv demo test test-unit test-e2e lint dist lab-up lab-down lab-status bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

## demo: bring up the lab, deploy the registry into it, push and pull on a client
demo: venv
	$(PY) -m lab.demo

## test: lint, the wheel and sdist checked, then unit and e2e tests (needs root and Docker)
test: venv lint dist
	$(PY) -m pytest $(PYTEST_ARGS)

## test-unit: fast tests only (no lab)
test-unit: venv
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-e2e: venv
	$(PY) -m pytest tests/e2e $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

## dist: build the wheel and sdist (python -m build) and check them (twine check)
dist: venv
	rm -rf dist
	$(PY) -m build --outdir dist .
	$(VENV)/bin/twine check --strict dist/*

lab-up: venv
	$(PY) -m lab up

lab-down: venv
	$(PY) -m lab down

lab-status: venv
	$(PY) -m lab status

bench: venv
	$(PY) -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache dist build
