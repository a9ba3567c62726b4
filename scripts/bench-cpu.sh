#!/usr/bin/env bash
# CPU time per Check, scopegate against the no-op floor, at a fixed open-loop rate: each server
# has one runtime worker pinned to the last CPU, examples/loadgen (one cached valid token, the
# requests Envoy sends) runs on CPU 0, and the server's user+system CPU is read from /proc
# around each run. The variants run interleaved, round after round, so drifts of a shared
# machine hit all of them alike; medians are reported. At a fixed rate below saturation, CPU
# per check is steadier than throughput through Envoy (scripts/bench-envoy.sh), whose rounds
# swing by ±30 % on a noisy VM. The log thread's share (scopegate-log: the decision log's
# writes and its batch wake-ups) is shown on its own, as a thread's CPU is steadier than the
# process's.
#
#   N+hdr  examples/noop_authz --answer headers (scopegate's allow answer, fixed values)
#   F      the same with --floor: plus the token's SHA-256 and a decision-log line per check, by
#          scopegate's own functions (to a file): the part of S+log - N+hdr that the contract
#          itself asks for (not in the default list)
#   S      scopegate serve --rules examples/rules.yaml --decision-log off
#   S+log  the same with the default decision log (every decision, to a file)
#   X+log  as S+log with the binary at SCOPEGATE_BENCH_ALT_BIN (not in the default list)
#
#   scripts/bench-cpu.sh [--rate 20000 | --closed] [--rounds 5] [--duration 5s (whole seconds)]
#                        [--no-build] [--variants "N+hdr S S+log"]
#
# --closed: closed loop instead (32 in flight), so each server runs saturated on its CPU: no
# idle wake-ups in the figure, but the client's own pace still shows in the server's kernel time.
#
# Loopback only; every process it starts is stopped on exit. Needs two CPUs for the pinning.
set -euo pipefail
cd "$(dirname "$0")/.."

rate=20000 closed=0 rounds=5 duration=5s build=1 variants_arg="N+hdr S S+log"
while [[ $# -gt 0 ]]; do
  case $1 in
    --rate) rate=$2; shift 2 ;;
    --closed) closed=1; shift ;;
    --rounds) rounds=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    --variants) variants_arg=$2; shift 2 ;;
    *) echo "usage: $0 [--rate R | --closed] [--rounds N] [--duration 5s] [--no-build] [--variants \"N+hdr F S S+log X+log\"]" >&2; exit 2 ;;
  esac
done
source scripts/lib/bench.sh
bench_require curl python3 taskset
bench_alt_bin "$variants_arg"
if [[ $build -eq 1 ]]; then
  cargo build --release --bin scopegate --example noop_authz --example loadgen
fi
bin=target/release
bench_start cpu
bench_pinning 1
if [[ ${#pin_server[@]} -eq 0 ]]; then
  echo "bench: needs two CPUs and taskset (server and load generator on their own CPUs)" >&2
  exit 1
fi

answers_a_check() { # port
  "$bin/examples/loadgen" --addr "http://127.0.0.1:$1" --requests 10 --warmup 0s --pool 1 \
    --fresh-pct 0 --deny-pct 0 --any-answer
}

read -r -a variants <<<"$variants_arg"
declare -A port pid
for v in "${variants[@]}"; do
  p=$(free_port) admin=$(free_port) exe=$bin/scopegate mode=all
  case $v in
    N+hdr | F)
      floor=()
      [[ $v == F ]] && floor=(--floor)
      TOKIO_WORKER_THREADS=1 "${pin_server[@]}" "$bin/examples/noop_authz" --listen "127.0.0.1:$p" \
        --answer headers "${floor[@]}" >"$work/${v/+/-}.log" 2>&1 &
      pid[$v]=$! port[$v]=$p
      pids+=("$!")
      bench_wait_until "$v" 30 answers_a_check "$p"
      continue ;;
    S) mode=off ;;
    S+log) ;;
    X+log) exe=$alt_bin ;;
    *) echo "bench: unknown variant $v" >&2; exit 2 ;;
  esac
  TOKIO_WORKER_THREADS=1 "${pin_server[@]}" "$exe" serve --rules examples/rules.yaml \
    --listen "127.0.0.1:$p" --admin-listen "127.0.0.1:$admin" --decision-log "$mode" \
    >"$work/${v/+/-}.log" 2>&1 &
  pid[$v]=$! port[$v]=$p
  pids+=("$!")
  bench_wait_until "$v" 30 http_has "http://127.0.0.1:$admin/readyz" ready
done

results="$work/results.tsv"
load="open loop at $rate checks/s" load_args=(--rate "$rate")
((closed)) && load="closed loop, 32 in flight" load_args=()
echo "$load, $duration per run, $rounds interleaved rounds; load average $(cut -d' ' -f1-3 /proc/loadavg)"
for ((r = 1; r <= rounds; r++)); do
  for v in "${variants[@]}"; do
    answers=()
    [[ $v == N* || $v == F ]] && answers=(--any-answer)
    t0=$(cpu_ticks "${pid[$v]}") l0=$(thread_ticks "${pid[$v]}" scopegate-log)
    out=$("${pin_client[@]}" "$bin/examples/loadgen" --addr "http://127.0.0.1:${port[$v]}" \
      "${load_args[@]}" --duration "$duration" --warmup 1s --pool 1 --fresh-pct 0 --deny-pct 0 \
      "${answers[@]}" 2>&1 | grep '^RESULT')
    t1=$(cpu_ticks "${pid[$v]}") l1=$(thread_ticks "${pid[$v]}" scopegate-log)
    read -r rps p99 < <(sed -E 's/.* rps=([0-9.]+) .* p99_us=([0-9.]+) .*/\1 \2/' <<<"$out")
    # The 1 s warm-up's CPU is in the ticks too: divide by the checks of warm-up and run (closed
    # loop: the warm-up ran at the run's rate).
    warm=$rate
    ((closed)) && warm=$rps
    read -r cpu log_cpu < <(awk -v t=$((t1 - t0)) -v l=$((l1 - l0)) -v u="$tick_us" -v rps="$rps" \
      -v warm="$warm" -v s="${duration%s}" \
      'BEGIN { n = rps * s + warm; printf "%.2f %.2f\n", t * u / n, l * u / n }')
    printf '  round %d  %-6s %7.0f checks/s  p99 %7.0f us  CPU/check %6.2f us  (log thread %5.2f)\n' \
      "$r" "$v" "$rps" "$p99" "$cpu" "$log_cpu"
    printf '%s\t%s\t%s\t%s\n' "$v" "$cpu" "$log_cpu" "$r" >>"$results"
  done
done
echo
python3 - "$results" "${variants[@]}" <<'EOF'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().splitlines()]
med = {}
for v in sys.argv[2:]:
    med[v] = statistics.median(float(r[1]) for r in rows if r[0] == v)
    log = statistics.median(float(r[2]) for r in rows if r[0] == v)
    print(f"  {v:<6} median CPU/check {med[v]:6.2f} us  (log thread {log:5.2f} us)")
print()
# Also paired: the difference within each round (the two ran seconds apart, so a drift of the
# host between rounds cancels), its median and range over the rounds.
by_round = {(r[0], r[3]): float(r[1]) for r in rows}
rounds = sorted({r[3] for r in rows}, key=int)
for a, b in (("S", "N+hdr"), ("S+log", "N+hdr"), ("S+log", "S"), ("F", "N+hdr"), ("S+log", "F"), ("X+log", "N+hdr"), ("S+log", "X+log")):
    if a in med and b in med:
        paired = [by_round[a, r] - by_round[b, r] for r in rounds]
        print(f"  {a} - {b}: {med[a] - med[b]:+.2f} us  (paired median {statistics.median(paired):+.2f},"
              f" rounds {min(paired):+.2f} to {max(paired):+.2f})")
EOF
echo
echo "machine: $(nproc) CPUs, $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo); scopegate: $(bench_build_id)"
