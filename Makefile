# `make demo` and `make test` each bring a fresh Debian machine (as root) up to
# what they need, then run. The stamp keeps re-runs fast.
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.bootstrapped

.PHONY: all deps demo test lint imports typecheck pytest clean

all: test

deps: $(STAMP)

$(STAMP): pyproject.toml scripts/bootstrap.sh $(wildcard proto/*/*/*.proto)
	bash scripts/bootstrap.sh
	touch $@

demo: deps
	$(BIN)/nodemesh demo

lint: deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

imports: deps
	$(BIN)/lint-imports

typecheck: deps
	$(BIN)/mypy

pytest: deps
	$(BIN)/pytest -q -ra

test: lint imports typecheck pytest

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
