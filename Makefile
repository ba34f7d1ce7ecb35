# tportknockd: `make test` (what CI runs), `make demo`, `make bench`, `make fuzz`, `make lint`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: setup deps test unit e2e lint demo fuzz bench clean

# System packages the tests and the demo use (Debian): ip, sysctl, setpriv, nft, tcpdump.
# A no-op when they are there.
deps:
	@for tool in ip sysctl setpriv nft tcpdump; do command -v $$tool >/dev/null || missing=1; done; \
	  [ -z "$$missing" ] || (apt-get update -qq && \
	    apt-get install -y -qq iproute2 procps util-linux nftables tcpdump)

$(VENV)/installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

setup: deps $(VENV)/installed

lint: setup
	$(PY) -m ruff check src tests scripts bench
	$(PY) -m mypy

test: setup lint
	$(PY) -m pytest -q -ra

unit: setup
	$(PY) -m pytest -q -m 'not e2e'

e2e: setup
	$(PY) -m pytest -q -ra -m e2e

demo: setup
	$(PY) scripts/demo.py

# tportknockd and knockd side by side (root; installs knockd, hping3, trafgen, tcpdump,
# matplotlib). Writes bench/results/latest.{md,json,png}. BENCH_ARGS=--quick for a short run.
bench: setup
	$(PY) bench/run.py $(BENCH_ARGS)

# Generated and mutated packets and configs against the parsers (EXAMPLES per parser).
EXAMPLES ?= 25000
fuzz: setup
	$(PY) scripts/fuzz.py --examples $(EXAMPLES)

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
