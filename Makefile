# `make run` and `make test` set themselves up on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: run test lint typecheck unit system-deps native bench soak clean cluster

$(STAMP): pyproject.toml
	@$(PY) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "Python 3.11 or newer is needed (found: $$($(PY) --version))"; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $(STAMP)

# Debian packages the tests need: installed when missing and we are root,
# otherwise named so a person can install them.
SYSTEM_TOOLS := redis-server:redis-server prometheus:prometheus promtool:prometheus gcc:gcc
system-deps:
	@missing=""; for pair in $(SYSTEM_TOOLS); do \
	  cmd=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$cmd >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else \
	    echo "The tests need these Debian packages:$$missing"; \
	    echo "Install them (sudo apt-get install$$missing) and run make test again."; exit 1; \
	  fi; \
	fi

# The hot modules compiled with mypyc into build/native (gateway/_native.py): a no-op
# when the build there is of these sources; the gateway runs them only then.
native: $(STAMP)
	@$(MAKE) --no-print-directory system-deps SYSTEM_TOOLS=gcc:gcc
	$(BIN)/python -c 'from gateway import _native; _native.main(["build"])'

# Without a compiler (not root, gcc missing) the gateway serves as plain Python.
run: $(STAMP)
	@$(MAKE) --no-print-directory native || \
	  echo "make native failed: the gateway runs as plain Python (slower), as it says at startup"
	$(BIN)/gateway serve --config config/sandbox.yaml --with-sandboxes

# Redis, two replicas and the sandboxes as local processes (no containers).
cluster: $(STAMP) system-deps
	deploy/cluster.sh

lint: $(STAMP)
	$(BIN)/ruff check gateway providers tests

typecheck: $(STAMP)
	$(BIN)/mypy gateway providers

# Every test against the compiled modules, then the end-to-end and core tests again as
# plain Python (GATEWAY_NATIVE=0), as an install without a build runs them.
test: $(STAMP) system-deps lint typecheck native
	$(BIN)/pytest -q $(PYTEST_ARGS)
	GATEWAY_NATIVE=0 $(BIN)/pytest -q -p no:cacheprovider tests/e2e tests/core tests/unit

# The gateway next to a bare passthrough (writes bench/RESULTS.md, bench/results.json).
# Needs wrk and valgrind as well, installed like the tests' packages; 16 to 22 minutes.
BENCH_ARGS ?=
bench: native
	@$(MAKE) --no-print-directory system-deps SYSTEM_TOOLS="$(SYSTEM_TOOLS) wrk:wrk valgrind:valgrind"
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# The long runs of the hardening suite: 30 minutes of mixed traffic with faults
# (SOAK_S seconds), and Redis killed three times during 10,000 requests. The soak
# writes its numbers into bench/RESULTS.md (between its soak markers).
SOAK_S ?= 1800
soak: $(STAMP) system-deps native
	HARDENING_SOAK_S=$(SOAK_S) HARDENING_REDIS_REQUESTS=10000 $(BIN)/pytest -q -rx \
	  tests/hardening/test_soak.py tests/hardening/test_redis_kill.py

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache
