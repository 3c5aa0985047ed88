# tabserve: `make run` serves the demo model; `make test` runs the whole suite.
# Both build what they need first (.venv from constraints.txt, redis-server from apt):
# `make run` the runtime packages only, `make test` and `make lint` the test tools as well.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
TEST_STAMP := $(VENV)/.installed-test-stamp
SYSTEM_PACKAGES := redis-server prometheus
# Only for the tests: the browser that tests/test_web_page.py drives (never downloaded by pip).
TEST_SYSTEM_PACKAGES := chromium
PIP_INSTALL := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: setup setup-test system-deps test-system-deps run test screenshot lint audit lock bench bench-quick bench-batch bench-overhead bench-soak bench-deps clean

setup: $(STAMP) system-deps

setup-test: $(TEST_STAMP) system-deps test-system-deps

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) -e .
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(PIP_INSTALL) -e '.[test]'
	touch $(TEST_STAMP)

system-deps:
	@./scripts/system-deps.sh $(SYSTEM_PACKAGES)

test-system-deps:
	@./scripts/system-deps.sh $(TEST_SYSTEM_PACKAGES)

# Where the API listens: `make run TABSERVE_BIND=127.0.0.1:9000` or in the environment, as
# every TABSERVE_* setting; empty means the default.
TABSERVE_BIND ?=
run: setup
	TABSERVE_BIND='$(TABSERVE_BIND)' $(BIN)/tabserve run

# Three pytest processes by default (pytest-xdist), each with its own redis-server, API and
# worker; a test file stays in one process (--dist loadfile). The suite mostly waits on the
# processes it runs (leases, restarts, real uploads), so three beat two even on 2 cores
# (docs/testing.md). The session's demo model is
# read only (tests/conftest.py): a file that adds models works on its own copy, so no file's
# outcome depends on which files ran before it in its process. `make test TEST_WORKERS=0`
# runs every file in this one process.
TEST_WORKERS ?= 3
test: setup-test
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=25 $(PYTEST_ARGS)

# docs/web-page.png: the web page with a prediction shown and a job done, in headless chromium.
screenshot: setup-test
	TABSERVE_SCREENSHOT=docs/web-page.png $(BIN)/python -m pytest -q tests/test_web_page.py \
		-k uploaded_csv

# Benchmarks write their sections of docs/benchmarks.md; run them on an otherwise idle machine.
# bench: online (15 s per load run; tabserve, hello-world, mlflow and MLServer, whose venvs
# bench.online builds in bench/out/ from PyPI) + batch + monitoring overhead + one model call in and out
# of a server's rhythm + /predict beside slow clients and a hung Redis; bench-quick: a short
# pass.
BENCH_ARGS ?=

# Each step records its rows of issue 18's goals under this run's name; bench.goals writes
# them as one table (rows from another run are marked so).
bench: export BENCH_RUN := $(shell date -u +%Y-%m-%dT%H:%M:%SZ)
bench: setup-test bench-deps
	$(BIN)/python -m bench.online $(BENCH_ARGS)
	$(BIN)/python -m bench.batch
	$(BIN)/python -m bench.batch_budget
	$(BIN)/python -m bench.overhead
	$(BIN)/python -m bench.modelcall
	$(BIN)/python -m bench.isolation
	$(BIN)/python -m bench.contention
	$(BIN)/python -m bench.arrival
	$(BIN)/python -m bench.goals

bench-quick: setup-test bench-deps
	$(BIN)/python -m bench.online --quick $(BENCH_ARGS)
	$(BIN)/python -m bench.batch --quick --no-write
	$(BIN)/python -m bench.overhead --duration 3 --rounds 1

bench-batch: setup-test
	$(BIN)/python -m bench.batch
	$(BIN)/python -m bench.batch_budget

bench-overhead: setup-test bench-deps
	$(BIN)/python -m bench.overhead

# The 10-minute soak of issue 13 (not part of `make test` nor `make bench`):
# bench-soak SOAK_ARGS=--quick for 2 minutes, not written.
bench-soak: setup-test
	$(BIN)/python -m bench.soak $(SOAK_ARGS)

bench-deps:
	@./scripts/system-deps.sh wrk

lint: setup-test
	$(BIN)/ruff check .
	$(BIN)/mypy

# Security audits (also run by `make test`, tests/test_deploy_files.py): bandit on the code at
# medium severity and above; pip-audit on the pins (needs the network; findings are fixed or
# explained in docs/security.md, "Audit findings").
audit: setup-test
	$(BIN)/bandit -q -r shared api worker cli -ll
	$(BIN)/pip-audit -r constraints.txt --no-deps --disable-pip --progress-spinner off

# The images' hashed lock, after a change to constraints.txt or setup.cfg install_requires.
lock: setup-test
	$(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras \
		--no-emit-index-url --no-emit-find-links -c constraints.txt \
		-o constraints-hashes.txt deploy/requirements-image.in

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
