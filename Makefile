# `make demo` and `make test` each bring a fresh Debian machine (as root) up to
# what they need, then run. The stamp keeps re-runs fast.
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.bootstrapped

.PHONY: all deps lock demo test lint imports typecheck pytest cluster clean fuzz fuzz-manifests fuzz-ads

all: test

deps: $(STAMP)

# The lock is a prerequisite: a changed lock re-syncs the venv.
$(STAMP): requirements.lock pyproject.toml setup.py scripts/bootstrap.sh $(wildcard proto/*/*/*.proto)
	bash scripts/bootstrap.sh
	touch $@

# Re-resolve requirements.lock from pyproject.toml (runtime deps + the dev and
# demo extras) for every platform, CPython >= 3.11, with every file's hash.
# Existing pins are kept unless pyproject.toml needs otherwise; to move them:
#   make lock LOCK_FLAGS=--upgrade                    (everything)
#   make lock LOCK_FLAGS='--upgrade-package protobuf' (one package)
LOCK_FLAGS ?=
lock: deps
	$(BIN)/uv pip compile pyproject.toml --extra dev --extra demo --universal \
		--python-version 3.11 --generate-hashes --custom-compile-command "make lock" \
		$(LOCK_FLAGS) --quiet --output-file requirements.lock

demo: deps
	$(BIN)/nodemesh demo

lint: deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

imports: deps
	$(BIN)/lint-imports

typecheck: deps
	$(BIN)/mypy

# The real Kubernetes control plane the `k8s` tests run against, built from
# upstream Go sources into a cache keyed by version (integration/cluster/):
# the first run on a machine builds it (see docs/benchmarks.md for how long),
# later runs find it and build nothing. A missing Go stops here, in one line.
cluster: deps
	$(BIN)/python integration/cluster/cluster_build.py

pytest: deps cluster
	$(BIN)/pytest -q -ra

test: lint imports typecheck pytest

# Longer fuzzing than `make test`'s bounded, seeded runs (same properties,
# more examples). `make fuzz` runs every harness; each is its own target.
FUZZ_EXAMPLES ?= 2000
FUZZ_TARGETS := fuzz-manifests fuzz-ads

fuzz: $(FUZZ_TARGETS)

fuzz-manifests: deps
	NODEMESH_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest -q tests/fuzz/test_fuzz_manifests.py
	$(BIN)/python scripts/manifest_corpus.py --cases 600

# The ADS fuzz harness: FUZZ_ADS_EXAMPLES=20000 make fuzz-ads
FUZZ_ADS_EXAMPLES ?= $(FUZZ_EXAMPLES)
fuzz-ads: deps
	NODEMESH_FUZZ_ADS_EXAMPLES=$(FUZZ_ADS_EXAMPLES) $(BIN)/pytest -q -p no:cacheprovider \
		tests/xds/server/test_ads_fuzz.py

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
