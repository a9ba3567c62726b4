#!/usr/bin/env bash
# Builds scopegate and runs it on the embedded default: the example rules file, hot-reloaded.
# gRPC (Envoy ext_authz + grpc.health.v1) on 127.0.0.1:9191, admin HTTP on 127.0.0.1:9192.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked --bin scopegate --examples
echo "scopegate: serving examples/rules.yaml; try, in another terminal:"
echo "  export TOKEN=\$(target/release/examples/mint_token --scope orders:read)"
echo "  target/release/examples/check_client GET api.example.com /orders/42"
exec target/release/scopegate serve --rules examples/rules.yaml --log-format text "$@"
