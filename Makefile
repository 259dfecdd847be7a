# momo-batch: `make run` and `make test` work on a fresh clone with only python3 and make.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.DEFAULT_GOAL := help
.PHONY: help venv run report screenshot test browser lint bench eval clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

venv: $(STAMP) ## create .venv with the locked dependencies

run: $(STAMP) ## run jobs/example.toml against a sandbox server started for the run
	$(VENV)/bin/momo-batch run jobs/example.toml --sandbox

report: $(STAMP) ## run the example job and write its HTML report (data/out/, untracked)
	$(VENV)/bin/momo-batch run jobs/example.toml --sandbox --restart --quiet --report

# rewrites the tracked docs/report.png: only when the report's look changed on purpose
screenshot: report browser ## the README's picture of the report: docs/report.png, from `make report`
	$(PY) -m tests.browser data/out/questions.report.html docs/report.png

# four workers on two cores: most tests wait on sockets and scaled time, not the CPU (164 s in
# one process, 83 s in four); a file's tests stay in one worker, so module fixtures start once
test: lint browser ## lint, then the whole test suite (what CI runs)
	$(PY) -m pytest -n 4 --dist loadfile

# The report's test opens the page in a real browser: Debian's chromium, installed when missing.
# Where it cannot be installed (no apt-get, not root) the test is skipped, loudly; under CI=true
# it fails instead, since CI's machines can install it.
browser: ## install Debian's chromium (for the report's browser test) when it is missing
	@if command -v $${CHROMIUM:-chromium} >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing Debian's chromium for the report's browser test"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
		echo "WARNING: no chromium, and apt-get as root is not available to install it:" \
		     "the report's browser test will be SKIPPED (or fail under CI=true)" >&2; \
	fi

lint: $(STAMP) ## ruff, and mypy on pipeline/
	$(VENV)/bin/ruff check pipeline tests bench
	$(VENV)/bin/mypy pipeline

bench: $(STAMP) ## throughput, CPU per row, peak RSS, ledger, estimate, sandbox, transport, tiers, rate limits, Ray workers, scale
	$(PY) bench/run.py
	$(PY) bench/ledger.py
	$(PY) bench/sandbox_rps.py
	$(PY) bench/transport.py
	$(PY) bench/tiers.py
	$(PY) bench/rate_limits.py
	$(PY) bench/ray_run.py
	$(PY) bench/ray_engine.py
	$(PY) bench/scale.py

eval: $(STAMP) ## accuracy and cost of each labelling strategy (1 vote, 3 votes, escalation) on the gold sample
	$(PY) bench/eval.py

clean: ## remove the environment and outputs
	rm -rf $(VENV) data/out build *.egg-info
