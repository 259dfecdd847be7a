# momo-batch: `make run` and `make test` work on a fresh clone with only python3 and make.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.DEFAULT_GOAL := help
.PHONY: help venv run test lint bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

venv: $(STAMP) ## create .venv with the locked dependencies

run: $(STAMP) ## run jobs/example.toml against a sandbox server started for the run
	$(VENV)/bin/momo-batch run jobs/example.toml --sandbox

test: lint ## lint, then the whole test suite (what CI runs)
	$(PY) -m pytest

lint: $(STAMP) ## ruff, and mypy on pipeline/
	$(VENV)/bin/ruff check pipeline tests bench
	$(VENV)/bin/mypy pipeline

bench: $(STAMP) ## throughput, CPU per row, peak RSS, estimate speed, sandbox and transport req/s, % of each tier
	$(PY) bench/run.py
	$(PY) bench/sandbox_rps.py
	$(PY) bench/transport.py
	$(PY) bench/tiers.py

clean: ## remove the environment and outputs
	rm -rf $(VENV) data/out build *.egg-info
