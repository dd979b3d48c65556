# Two commands for a fresh machine: `make run` (the push service on SQLite) and
# `make test` (every test, with the real peers it needs). Both install what they need.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8080
DB ?= tidings-data/tidings.db
PYTEST_ARGS ?=
# DEMO=1: also serve /playground/ and its demo sender (a try-out mode, not for production).
DEMO ?=
FUZZ_SECONDS ?= 300
FUZZ_TARGETS ?= $(shell $(PY) tests/fuzz/run.py --list 2>&1 | sed -n 's/^targets: //p')

.PHONY: bench-deps run test lint venv dev-venv system-deps node-deps bench clean fuzz faults faults-deps peers

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# The runtime install: just the package and what it needs to serve.
$(VENV)/.run-installed: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e .
	touch $@

# The development install: test peers (pywebpush, py-vapid, http_ece), linters, drivers.
$(VENV)/.dev-installed: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@ $(VENV)/.run-installed

venv: $(VENV)/.run-installed
dev-venv: $(VENV)/.dev-installed

# Debian packages the end-to-end tests drive (as root only; elsewhere say what is missing):
# Firefox, nginx in front of the service (deploy/nginx) and certutil to make a Firefox
# profile trust the tests' private CA; systemd-analyze checks deploy/systemd.
SYSTEM_PACKAGES := firefox-esr:firefox-esr nginx:nginx certutil:libnss3-tools systemd-analyze:systemd \
  iptables:iptables tc:iproute2
system-deps:
	@missing=""; for pair in $(SYSTEM_PACKAGES); do \
	  command -v $${pair%%:*} >/dev/null 2>&1 || [ -x /usr/sbin/$${pair%%:*} ] || missing="$$missing $${pair#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "note: missing Debian packages:$$missing (need root on Debian to install); their tests will be skipped"; fi; \
	fi

# The npm peers: the web-push sender and the web-push-testing push service.
node-deps: tests/node/node_modules/.package-lock.json

tests/node/node_modules/.package-lock.json: tests/node/package.json tests/node/package-lock.json
	@if command -v npm >/dev/null 2>&1; then cd tests/node && npm ci --no-audit --no-fund --loglevel=error; \
	else echo "note: npm is missing; the npm interop tests will be skipped"; fi

run: venv
	$(VENV)/bin/tidings serve --host $(HOST) --port $(PORT) --db $(DB) $(if $(DEMO),--demo)

test: dev-venv system-deps node-deps
	$(PY) -m pytest $(PYTEST_ARGS)

# Coverage-guided fuzzing (atheris) of every parser, FUZZ_SECONDS each; `make test` runs a
# short, seeded pass of the same targets. Crashing inputs land in fuzz-work/crashes/.
fuzz: dev-venv
	@rm -rf fuzz-work/crashes; failed=""; for target in $(FUZZ_TARGETS); do \
	  echo "== fuzzing $$target for $(FUZZ_SECONDS) s"; \
	  $(PY) tests/fuzz/run.py $$target -max_total_time=$(FUZZ_SECONDS) -max_len=4096 \
	    -print_final_stats=1 2>&1 | grep -v '^INFO: Instrumenting' | tail -n 25 \
	    || failed="$$failed $$target"; \
	  test -z "$$(ls fuzz-work/crashes/$$target-* 2>/dev/null)" || failed="$$failed $$target"; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzzing found crashes in:$$failed (see fuzz-work/crashes/)"; exit 1; fi

# Mozilla's autopush integration suite against Tidings (docs/peers/autopush.md):
# make peers AUTOPUSH=/path/to/autopush-rs. The suite runs in its own venv.
AUTOPUSH_VENV ?= /tmp/autopush-venv
peers: dev-venv
	@test -n "$(AUTOPUSH)" || { echo "usage: make peers AUTOPUSH=<autopush-rs checkout>"; exit 2; }
	@test -x $(AUTOPUSH_VENV)/bin/python || { $(PYTHON) -m venv $(AUTOPUSH_VENV) && \
	  $(AUTOPUSH_VENV)/bin/pip install -q "cryptography>=43" jws psutil "pytest>=8.3,<9" \
	  "pytest-asyncio>=0.23.8,<0.24" pytest-order python-jose "httpx>=0.27,<0.28" \
	  "fastapi>=0.111,<0.112" "uvicorn[standard]>=0.29,<0.30" "websockets>=12,<13" ecdsa; }
	$(PY) tests/peers/run_autopush_suite.py $(AUTOPUSH) --suite-python $(AUTOPUSH_VENV)/bin/python

lint: dev-venv
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# wrk drives the service benchmarks (bench/service_load.py, scaleout.py).
bench-deps:
	@if ! command -v wrk >/dev/null 2>&1 || ! command -v valgrind >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk valgrind >/dev/null; \
	  else echo "note: wrk or valgrind is missing and cannot be installed here (need root on Debian)"; fi; \
	fi

bench: dev-venv node-deps bench-deps
	$(PY) bench/crypto.py

clean:
	rm -rf $(VENV) tests/node/node_modules .pytest_cache .mypy_cache .ruff_cache fuzz-work

# The fault campaign (bench/faults, issue 22): three nodes, PostgreSQL with a replica and
# Redis in network namespaces, a seeded nemesis and a checker. Root only (namespaces,
# iptables, tc). SEED and DURATION (seconds of faults) replay a run.
SEED ?= 1
DURATION ?= 120
faults-deps:
	@if ! command -v iptables >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iptables iproute2 >/dev/null; \
	  else echo "note: the fault campaign needs iptables and root"; exit 1; fi; \
	fi

faults: dev-venv faults-deps
	$(PY) bench/faults/campaign.py --seed $(SEED) --duration $(DURATION)
