# tabserve: `make run` serves the demo model; `make test` runs the whole suite.
# Both build everything they need first (.venv from constraints.txt, redis-server from apt).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
SYSTEM_PACKAGES := redis-server prometheus

.PHONY: setup system-deps run api worker test lint typecheck bench clean

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

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
