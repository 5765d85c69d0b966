# The README's commands. Each target creates .venv (and installs the package) if missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: install demo test test-slow test-soak lint

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,audit,analysis,quality,server]'
	touch $(STAMP)

demo: install
	$(VENV)/bin/fedreid sim --compare fedklpr:codec.value_dtype=float16,fedavg -c sims/configs/demo.yaml

test: install
	$(PY) -m pytest

test-slow: install
	$(PY) -m pytest -m slow

test-soak: install
	$(PY) -m pytest -m soak -s

lint: install
	$(VENV)/bin/ruff check fedreid server clients sims tests
