#!/usr/bin/env bash
# Runs every check CI runs, installing etcd, Envoy, podman and the Helm SDK first if missing:
# formatting, clippy with warnings as errors, all tests (unit, gRPC, etcd, Envoy end to end), and
# the Helm chart tests, and the image (built with podman and checked; reported loudly if not).
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
# The image: built here from the release binary with podman, then its entrypoint must answer
# Checks as the image's user inside the image's own filesystem (scripts/build-image.sh).
if command -v podman >/dev/null; then
  scripts/build-image.sh --check
else
  echo "==================================================================================" >&2
  echo "IMAGE CHECK NOT RUN: podman is not installed, so the image was neither built nor" >&2
  echo "checked. Install it (scripts/setup.sh --test, or apt-get install podman buildah runc)." >&2
  echo "==================================================================================" >&2
fi
