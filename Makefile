# Two commands for a fresh machine: `make run` (the push service on SQLite) and
# `make test` (every test, with the real peers it needs). Both install what they need.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8080
DB ?= tidings-data/tidings.db
PYTEST_ARGS ?=

.PHONY: bench-deps run test lint venv dev-venv system-deps node-deps bench clean peers

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

# Debian packages the end-to-end tests drive (as root only; elsewhere say what is missing).
system-deps:
	@if ! command -v firefox-esr >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq firefox-esr >/dev/null; \
	  else echo "note: firefox-esr is missing and cannot be installed here (need root on Debian); Firefox tests will be skipped"; fi; \
	fi

# The npm peers: the web-push sender and the web-push-testing push service.
node-deps: tests/node/node_modules/.package-lock.json

tests/node/node_modules/.package-lock.json: tests/node/package.json tests/node/package-lock.json
	@if command -v npm >/dev/null 2>&1; then cd tests/node && npm ci --no-audit --no-fund --loglevel=error; \
	else echo "note: npm is missing; the npm interop tests will be skipped"; fi

run: venv
	$(VENV)/bin/tidings serve --host $(HOST) --port $(PORT) --db $(DB)

test: dev-venv system-deps node-deps
	$(PY) -m pytest $(PYTEST_ARGS)

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

# wrk drives the service benchmarks (bench/service_load.py, scaleout.py).
bench-deps:
	@if ! command -v wrk >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; \
	  else echo "note: wrk is missing and cannot be installed here (need root on Debian)"; fi; \
	fi

bench: dev-venv node-deps bench-deps
	$(PY) bench/crypto.py

clean:
	rm -rf $(VENV) tests/node/node_modules .pytest_cache .mypy_cache .ruff_cache
