#!/usr/bin/env bash
# Soak through faults (see benches/soak/): real Envoy → two scopegate replicas (etcd source) →
# echo upstream at a fixed rate for several minutes while etcd loses its leader, members restart,
# the history is compacted, one replica is cut off etcd, the other restarts, and a watched member
# hangs; rule changes and revocations throughout. Loopback only; bounded by --duration.
#   scripts/soak.sh [DURATION_SECONDS] [RATE_PER_SECOND]     (defaults 300 and 200)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
export SCOPEGATE_ENVOY_BIN="$PWD/.venv/bin/envoy"
exec cargo bench --bench soak -- --duration "${1:-300}" --rate "${2:-200}"
