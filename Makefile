# tportknockd: `make test` (what CI runs), `make demo`, `make bench`, `make fuzz`, `make lint`,
# `make deb` (the Debian package), `make install` / `make uninstall` (from a checkout).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: setup deps test unit e2e lint demo fuzz bench clean deb install uninstall

# System packages the tests, the demo and the package checks use (Debian), as command:package.
# A no-op when every command is there.
DEB_TOOLS := ip:iproute2 sysctl:procps setpriv:util-linux nft:nftables iptables:iptables \
	systemd-analyze:systemd groff:groff-base man:man-db lintian:lintian dpkg-deb:dpkg \
	strace:strace tcpdump:tcpdump
deps:
	@missing=; for pair in $(DEB_TOOLS); do \
	  command -v $${pair%%:*} >/dev/null || missing="$$missing $${pair#*:}"; done; \
	  [ -z "$$missing" ] || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq -o DPkg::Lock::Timeout=300 $$missing)

$(VENV)/installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

setup: deps $(VENV)/installed

lint: setup
	$(PY) -m ruff check src tests scripts bench
	$(PY) -m mypy

# On TEST_JOBS workers (pytest-xdist; auto: one a core). The tests that change the machine
# itself (the package installed system-wide, a unit's user) share one worker, in turn
# (xdist_group marks, --dist loadgroup); every e2e test has namespaces of its own.
TEST_JOBS ?= auto
test: setup lint
	$(PY) -m pytest -q -ra -n $(TEST_JOBS) --dist loadgroup

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

# Generated and mutated packets through both engines, which must agree (the kernel one by
# BPF_PROG_TEST_RUN, as root; without root the Python one alone), and configs through the
# parser. A smaller run: make fuzz PACKETS=20000 CONFIGS=2000; SEED=N repeats a run.
PACKETS ?= 1000000
CONFIGS ?= 100000
fuzz: setup
	$(PY) scripts/fuzz.py --packets $(PACKETS) --configs $(CONFIGS) $(if $(SEED),--seed $(SEED))

# dist/tportknockd_VERSION_all.deb, with dpkg-deb alone (packaging/build-deb.sh).
deb:
	sh packaging/build-deb.sh dist

# The same files as the package, system-wide from a checkout (PREFIX=/usr/local, DESTDIR,
# BINDIR, SBINDIR, ... as in packaging/install.sh). uninstall keeps the configuration, the
# state directory and the user unless PURGE=yes.
install:
	sh packaging/install.sh install

uninstall:
	sh packaging/install.sh uninstall

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
