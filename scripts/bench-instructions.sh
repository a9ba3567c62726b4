#!/usr/bin/env bash
# Instructions per Check, counted by valgrind's callgrind: scopegate against the no-op floor,
# over the same gRPC requests from examples/loadgen (one cached valid token, closed loop, 32 in
# flight). Unlike CPU time, an instruction count does not move with the machine's load or the
# host's other guests, so two builds, or scopegate and the no-op, compare to the instruction.
#
#   N      examples/noop_authz --answer none (bare OK)
#   N+hdr  examples/noop_authz --answer headers (scopegate's allow answer, fixed values)
#   F      the same with --floor: plus the token's SHA-256 and a decision-log line per check, by
#          scopegate's own functions: the part of the gap that the contract asks for (not in the
#          default list)
#   S      scopegate serve --rules examples/rules.yaml --decision-log off
#   S+log  the same with the default decision log (every decision; to a file here)
#   X+log  as S+log with the binary at SCOPEGATE_BENCH_ALT_BIN (not in the default list)
#
#   scripts/bench-instructions.sh [--requests 10000] [--no-build] [--variants "N N+hdr S S+log"]
#                                 [--keep DIR]   (keep the callgrind profiles, for callgrind_annotate)
#
# Each server runs under callgrind; after a warm-up its counters are zeroed, loadgen sends
# --requests checks, and the counters are dumped: the figure is that dump's total (every thread)
# divided by the requests. Caveat: valgrind does not offer the SHA extensions, so aws-lc hashes
# with its AVX code there (~8x the instructions of SHA-NI); the SHA-256 of the token for the
# cache key is therefore over-counted (the profile shows it as sha256_block_data_order_avx).
# Loopback only; every process it starts is stopped on exit. Needs valgrind (Debian package).
set -euo pipefail
cd "$(dirname "$0")/.."

requests=10000 build=1 variants_arg="N N+hdr S S+log" keep=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --requests) requests=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    --variants) variants_arg=$2; shift 2 ;;
    --keep) keep=$2; shift 2 ;;
    *) echo "usage: $0 [--requests N] [--no-build] [--variants \"N N+hdr F S S+log X+log\"] [--keep DIR]" >&2; exit 2 ;;
  esac
done
source scripts/lib/bench.sh
bench_require valgrind callgrind_control python3
bench_alt_bin "$variants_arg"
if [[ $build -eq 1 ]]; then
  cargo build --release --bin scopegate --example noop_authz --example loadgen
fi
bin=target/release
bench_start instructions
[[ -n $keep ]] && mkdir -p "$keep"

loadgen() { # port requests [args...]
  "$bin/examples/loadgen" --addr "http://127.0.0.1:$1" --requests "$2" --warmup 0s --duration 600s \
    --pool 1 --fresh-pct 0 --deny-pct 0 "${@:3}"
}

measure() { # variant -> prints "instructions_per_check"
  local v=$1 port admin cmd=() answers=() vpid total=0 f
  port=$(free_port) admin=$(free_port)
  case $v in
    N) cmd=("$bin/examples/noop_authz" --listen "127.0.0.1:$port" --answer none) answers=(--any-answer) ;;
    N+hdr) cmd=("$bin/examples/noop_authz" --listen "127.0.0.1:$port" --answer headers) answers=(--any-answer) ;;
    F) cmd=("$bin/examples/noop_authz" --listen "127.0.0.1:$port" --answer headers --floor) answers=(--any-answer) ;;
    S | S+log | X+log)
      local exe=$bin/scopegate mode=all
      [[ $v == S ]] && mode=off
      [[ $v == X+log ]] && exe=$alt_bin
      cmd=("$exe" serve --rules examples/rules.yaml --listen "127.0.0.1:$port"
        --admin-listen "127.0.0.1:$admin" --decision-log "$mode") ;;
    *) echo "bench: unknown variant $v" >&2; exit 2 ;;
  esac
  valgrind --tool=callgrind --dump-instr=no --callgrind-out-file="$work/${v/+/-}.%p.out" \
    "${cmd[@]}" >"$work/${v/+/-}.log" 2>"$work/${v/+/-}.valgrind" &
  vpid=$!
  pids+=("$vpid")
  # Ready when a check is answered (valgrind starts slowly, hence the long deadline).
  bench_wait_until "$v" 120 loadgen "$port" 10 "${answers[@]}"
  loadgen "$port" 2000 "${answers[@]}" >/dev/null 2>&1
  callgrind_control -z "$vpid" >/dev/null 2>&1
  loadgen "$port" "$requests" "${answers[@]}" >"$work/${v/+/-}.loadgen" 2>&1
  callgrind_control -d "$vpid" >/dev/null 2>&1
  kill -INT "$vpid"
  wait "$vpid" 2>/dev/null || true
  for f in "$work/${v/+/-}.$vpid.out".*; do
    total=$((total + $(awk '/^(summary|totals):/ { print $2; exit }' "$f")))
    [[ -n $keep ]] && cp "$f" "$keep/"
  done
  echo $((total / requests))
}

read -r -a variants <<<"$variants_arg"
declare -A per_check
echo "callgrind instructions per check ($requests checks after a 2,000-check warm-up, one cached token):"
for v in "${variants[@]}"; do
  per_check[$v]=$(measure "$v")
  printf '  %-6s %8d\n' "$v" "${per_check[$v]}"
done
echo
for pair in "S N+hdr" "S+log N+hdr" "S+log S" "N+hdr N" "F N+hdr" "S+log F" "X+log N+hdr" "S+log X+log"; do
  read -r a b <<<"$pair"
  [[ -n ${per_check[$a]:-} && -n ${per_check[$b]:-} ]] || continue
  awk -v a="$a" -v b="$b" -v x="${per_check[$a]}" -v y="${per_check[$b]}" \
    'BEGIN { printf "  %s - %s: %+d instructions (%.3fx)\n", a, b, x - y, x / y }'
done
echo
echo "valgrind: $(valgrind --version); scopegate: $(bench_build_id)"
