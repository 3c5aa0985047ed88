# tabserve: `make run` serves the demo model; `make test` runs the whole suite.
# Both build everything they need first (.venv from constraints.txt, redis-server from apt).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
SYSTEM_PACKAGES := redis-server prometheus

.PHONY: setup system-deps run test lint bench bench-quick bench-batch bench-overhead bench-deps clean

setup: $(STAMP) system-deps

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $(STAMP)

system-deps:
	@./scripts/system-deps.sh $(SYSTEM_PACKAGES)

run: setup
	$(BIN)/tabserve run

test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# Benchmarks write their sections of docs/benchmarks.md; run them on an otherwise idle machine.
# bench: online (15 s per load run) + batch + monitoring overhead + one model call in and out
# of a server's rhythm; bench-quick: a short pass.
BENCH_ARGS ?=

bench: setup bench-deps
	$(BIN)/python -m bench.online $(BENCH_ARGS)
	$(BIN)/python -m bench.batch
	$(BIN)/python -m bench.overhead
	$(BIN)/python -m bench.modelcall

bench-quick: setup bench-deps
	$(BIN)/python -m bench.online --quick $(BENCH_ARGS)
	$(BIN)/python -m bench.batch --quick --no-write
	$(BIN)/python -m bench.overhead --duration 3 --rounds 1

bench-batch: setup
	$(BIN)/python -m bench.batch

bench-overhead: setup bench-deps
	$(BIN)/python -m bench.overhead

bench-deps:
	@./scripts/system-deps.sh wrk

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
