# registry-kit: the two commands a new user runs are `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# Parallel lanes of `make test` (pytest-xdist workers, each with a lab namespace of its own);
# LANES=0 runs everything in one process, in file order.
LANES ?= 2
# The developers' fast lane: unit tests (without the 2.5-minute property test) and one e2e
# smoke test: a fresh deploy, a client's docker login/push/pull, and a rerun that changes nothing.
QUICK_E2E := tests/e2e/test_deploy.py::test_first_deploy_installs_docker_and_serves_tls_with_auth \
	tests/e2e/test_deploy.py::test_second_run_changes_nothing \
	tests/e2e/test_deploy.py::test_seed_flow_on_client_with_ca_trust_only

.PHONY: venv compiled demo test test-quick durations test-unit test-e2e lint dist settings-docs lab-up lab-down lab-status bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

## demo: bring up the lab, deploy the registry into it, push and pull on a client
demo: venv
	$(PY) -m lab.demo

## test: lint, the wheel and sdist checked, then unit and e2e tests in $(LANES) parallel lanes
## (needs root and Docker); ends with the time of every module
test: venv lint dist compiled
	$(PY) -m pytest -n $(LANES) $(PYTEST_ARGS)

# Every pyinfra run of the e2e tests imports the kit afresh (hundreds a run); where
# PYTHONDONTWRITEBYTECODE is set (as on these machines) each compiled it from source again,
# about 0.1 s of CPU a run. Compiled once here, as a wheel install is (the scripts folder is
# package data copied to hosts, not imported: left out).
compiled: venv
	$(PY) -m compileall -q -x 'registry_kit/scripts/' registry_kit

## test-quick: unit tests and one e2e smoke test (deploy, push, pull, no-op rerun), a few minutes
test-quick: venv compiled
	$(PY) -m pytest tests/unit --ignore=tests/unit/test_hostile_settings.py \
		$(QUICK_E2E) $(PYTEST_ARGS)

## durations: keep the last full run's time per module (orders the lanes, longest first)
durations:
	cp .test-output/durations.json tests/durations.json

## test-unit: fast tests only (no lab)
test-unit: venv
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-e2e: venv
	$(PY) -m pytest tests/e2e $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

## settings-docs: regenerate the README's settings table and group_data/all.py from the
## declarations in registry_kit/model/settings.py (a unit test fails while either is stale)
settings-docs: venv
	$(PY) -m registry_kit.model.settings_doc --write

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
