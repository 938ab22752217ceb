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

.PHONY: help test test-only setup build fmt fmt-check clippy check-layers bench-hbone bench-ztunnel demo demo-hbone demo-require-root controlplane-demo clean distclean

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{ printf "  make %-13s %s\n", $$1, $$2 }'

test: setup fmt-check clippy check-layers charts-check test-only ## the one test command: setup, lints, layering, all tests

test-only: ## doc tests and every nextest test (with ENVOY_BIN exported), no setup or lints
	$(call step,tests)
	@ENVOY_BIN="$$(bash scripts/envoy-path.sh)"; export ENVOY_BIN; \
	echo "ENVOY_BIN=$$ENVOY_BIN"; \
	HELM_PYTHON="$(CURDIR)/$(VENV_PYTHON)"; export HELM_PYTHON; \
	TEST_PYTHON="$(CURDIR)/$(VENV_PYTHON)"; export TEST_PYTHON; \
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

bench-ztunnel: setup ## ztunnel in the lab vs. direct TCP (meshlab/examples/bench_ztunnel.rs, root); ARGS="..."
	$(call step,bench-ztunnel)
	$(CARGO) build --release --locked --workspace --bins
	$(CARGO) run --release --locked -p meshlab --example bench_ztunnel -- $(ARGS)

# Where cargo puts its outputs (honours CARGO_TARGET_DIR).
TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),target)

demo: demo-require-root setup ## the guided, self-checking tour of the mesh in a lab (as root); ARGS="--keep" leaves it up
	$(call step,render the Helm charts (the lab starts ztunnel and the CNI agent with their settings))
	@mkdir -p target
	@$(VENV_PYTHON) scripts/charts-check.py >target/charts-check.log 2>&1 || { \
		cat target/charts-check.log >&2; \
		echo "make demo: rendering the charts failed (output above)" >&2; exit 1; }
	@tail -n 1 target/charts-check.log
	$(call step,cargo build --release: ztunnel cni controlplane meshlab (the first time: about 10 minutes on 2 cores))
	$(CARGO) build --release --locked -p ztunnel -p cni -p controlplane -p meshlab
	$(call step,meshlab demo $(ARGS))
	@MESHLAB_CHART_DIR="$(CURDIR)/target/charts" "$(TARGET_DIR)/release/meshlab" demo $(ARGS)

demo-require-root:
	@if [ "$$(id -u)" -ne 0 ]; then \
		echo "make demo: run it as root (sudo make demo): the lab creates network namespaces, bridges and nftables rules" >&2; \
		exit 1; fi

demo-hbone: ## HBONE demo on loopback (hbone/examples/demo.rs); pass options with ARGS="..."
	$(CARGO) run --release --locked -p hbone --example demo -- $(ARGS)

controlplane-demo: ## run the local control plane on controlplane/examples/sample (state in target/controlplane-demo)
	$(CARGO) run --release --locked -p controlplane -- serve --config controlplane/examples/sample \
		--state-dir target/controlplane-demo --listen 127.0.0.1:15012 $(ARGS)

clean: ## remove build outputs and benchmark results (keeps .venv)
	$(CARGO) clean
	rm -rf bench-results

distclean: clean ## also remove the .venv and .tools installs
	rm -rf .venv .tools

# ---- charts, images and the kind end-to-end test
# The .venv interpreter of `make setup` (helm-python-sdk, kubernetes-validate); test-only
# exports it to the tests as HELM_PYTHON (ztunnel/tests/chart_contract.rs).
VENV_PYTHON ?= .venv/bin/python
# Container images (make images / e2e-kind) are tagged <HUB>/<name>:<TAG>.
HUB ?= localhost/ambient
TAG ?= dev
DOCKER ?= docker
IMAGES := ztunnel cni-agent controlplane

.PHONY: charts-check images e2e-kind

charts-check: ## lint, render and strictly validate charts/* (scripts/charts-check.py)
	$(call step,charts-check)
	@test -x $(VENV_PYTHON) || { echo "make charts-check: $(VENV_PYTHON) not found: run make setup first" >&2; exit 1; }
	$(VENV_PYTHON) scripts/charts-check.py

images: ## docker build images/<name>/Dockerfile as HUB/<name>:TAG (needs a Docker engine)
	$(call step,images)
	@command -v $(DOCKER) >/dev/null 2>&1 || { echo "make images: '$(DOCKER)' not found on PATH: install Docker (or set DOCKER=...)" >&2; exit 1; }
	@$(DOCKER) info >/dev/null 2>&1 || { echo "make images: no Docker engine reachable ('$(DOCKER) info' failed): start dockerd or point DOCKER_HOST at one; nothing was built" >&2; exit 1; }
	@for image in $(IMAGES); do \
		echo "make images: building $(HUB)/$$image:$(TAG) from images/$$image/Dockerfile"; \
		DOCKER_BUILDKIT=1 $(DOCKER) build -f images/$$image/Dockerfile -t $(HUB)/$$image:$(TAG) . ; \
	done

e2e-kind: ## end-to-end test on a throw-away kind cluster (needs docker, kind, helm, kubectl, network)
	$(call step,e2e-kind)
	HUB=$(HUB) TAG=$(TAG) DOCKER=$(DOCKER) bash tests/kind/e2e.sh
