#!/usr/bin/env bash
# Cold-cache restart under load (issue 12: "a restart with a cold cache under load shows no p99
# cliff"). examples/loadgen drives one scopegate over gRPC in open loop (default 5,000 checks/s,
# 10 % never-seen tokens, a pool of 1,000 cached valid tokens, no denials) and prints a latency
# line per 1 s window (--window). At --restart-at the script sends SIGTERM to scopegate, waits
# for it to drain and exit, and starts a new one on the same port: its claims cache is empty, so
# every pool token costs a signature check again, on top of the fresh tokens. loadgen keeps its
# schedule throughout (requests that fail while no server listens are counted as errors, never
# retried) and reconnects on its own.
#
#   scripts/bench-cold-restart.sh [--rate 5000] [--duration 30s] [--restart-at 12s] [--window 1s]
#                                 [--fresh-pct 10] [--pool 1000] [--no-build] [--no-pin]
#
# How to read it. Each WINDOW line covers the requests *scheduled* to start in that window:
# sent/ok/errors/unexpected/dropped; p50/p99/max of the answered ones measured from the
# scheduled start (so a late start or a stall is charged to the window where it began, never
# hidden); send_p99_us, the p99 from the actual send (what loadgen's RESULT line and the
# < 0.5 ms target measure); lag_p99_us, how late requests left against the schedule (the client's
# own share, large on an idle vCPU); err_max_us, the slowest failure (fast refusals versus
# hangs). The summary compares
#   before    windows that ended before SIGTERM: median p99 (the steady state)
#   restart   windows from SIGTERM to "ready" of the new server: the errors of the gap. The last
#             of them also holds the first part of the new server's cold cache (with 1 s windows
#             most pool tokens are seen again within it), so its p99 is part of the answer;
#             --window 250ms resolves the cold period better
#   after     the first 3 full windows after ready, each p99: the cold-cache cliff, if any
#   steady    the windows after those: median p99 (back to the steady state?)
# plus the SIGTERM -> exit (drain) and exit -> ready times, the new server's cache hits and
# misses, and overall counts. "No p99 cliff" means the restart window and the first windows after
# ready stay near the before/steady p99; errors belong only in the restart windows (nothing
# listens there; a client like Envoy would retry or fail over).
#
# By default scopegate (one runtime worker) is pinned to the last CPU and loadgen to CPU 0
# (taskset), as in scripts/bench-envoy.sh; --no-pin lets them share. Loopback only; every process
# it starts is stopped on exit (by PID). Needs bash (its /dev/tcp), python3 and taskset (unless
# --no-pin).
set -euo pipefail
cd "$(dirname "$0")/.."

rate=5000 duration=30s restart_at=12s window=1s fresh_pct=10 pool=1000 build=1 pin=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rate) rate=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --restart-at) restart_at=$2; shift 2 ;;
    --window) window=$2; shift 2 ;;
    --fresh-pct) fresh_pct=$2; shift 2 ;;
    --pool) pool=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    --no-pin) pin=0; shift ;;
    *) echo "usage: $0 [--rate R] [--duration 30s] [--restart-at 12s] [--window 1s] [--fresh-pct 10] [--pool 1000] [--no-build] [--no-pin]" >&2; exit 2 ;;
  esac
done

seconds() { # 12s, 1.5s, 500ms, 2m, 12 -> seconds
  awk -v d="$1" 'BEGIN { n = d + 0; if (d ~ /ms$/) n /= 1000; else if (d ~ /m$/) n *= 60; print n }'
}
duration_s=$(seconds "$duration") restart_s=$(seconds "$restart_at")
if ! awk -v r="$restart_s" -v d="$duration_s" 'BEGIN { exit !(r > 0 && r + 2 < d) }'; then
  echo "bench: --restart-at ($restart_at) must be > 0 and at least 2 s before the end of --duration ($duration)" >&2
  exit 2
fi
command -v python3 >/dev/null || { echo "bench: python3 is required" >&2; exit 1; }

if [[ $build -eq 1 ]]; then
  cargo build --release --bin scopegate --example loadgen
fi
bin=target/release

source scripts/lib/bench.sh
bench_start cold-restart
forget_pid() { # drop an exited (and reaped) PID from the cleanup list
  local keep=() p
  for p in "${pids[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
  pids=("${keep[@]}")
}

# Waiting without forking (this runs on the CPUs being measured): read with a timeout from a
# FIFO nobody writes to.
mkfifo "$work/never"
exec {never}<>"$work/never"
pause() { read -r -t "$1" -u "$never" _ || true; }

grpc_port=$(free_port) admin_port=$(free_port)

# GET /readyz over bash's /dev/tcp (no curl process per poll): true on 200.
ready_now() {
  local fd line
  { exec {fd}<>"/dev/tcp/127.0.0.1/$admin_port"; } 2>/dev/null || return 1
  printf 'GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&"$fd" 2>/dev/null || true
  IFS= read -r -t 2 -u "$fd" line || true
  exec {fd}>&-
  [[ $line == *" 200 "* ]]
}
wait_ready() { # pid: polls every 5 ms, deadline 30 s; fails if the server died
  local deadline=$((SECONDS + 30))
  until ready_now; do
    if ! kill -0 "$1" 2>/dev/null; then
      echo "bench: scopegate exited before it was ready; log:" >&2
      tail -n 20 "$work"/scopegate-*.log >&2
      exit 1
    fi
    if ((SECONDS > deadline)); then echo "bench: scopegate never answered ready" >&2; exit 1; fi
    pause 0.005
  done
}
is_running() { # pid: true until it exits (a zombie counts as exited)
  local stat
  [[ -r /proc/$1/stat ]] || return 1
  IFS= read -r stat <"/proc/$1/stat" 2>/dev/null || return 1
  stat=${stat##*) }
  [[ ${stat%% *} != Z ]]
}

bench_pinning "$pin"
start_scopegate() { # n -> sets sg_pid (default decision log, to the log file)
  TOKIO_WORKER_THREADS=1 "${pin_server[@]}" "$bin/scopegate" serve --rules examples/rules.yaml \
    --listen "127.0.0.1:$grpc_port" --admin-listen "127.0.0.1:$admin_port" >"$work/scopegate-$1.log" 2>&1 &
  sg_pid=$!
  pids+=("$sg_pid")
}

start_scopegate 1
wait_ready "$sg_pid"

"${pin_client[@]}" "$bin/examples/loadgen" --addr "http://127.0.0.1:$grpc_port" --rate "$rate" \
  --fresh-pct "$fresh_pct" --deny-pct 0 --pool "$pool" --report-every "$window" --duration "$duration" \
  --warmup 0s --tolerate-errors >"$work/loadgen.out" 2>"$work/loadgen.err" &
lg_pid=$!
pids+=("$lg_pid")

# The measured run starts after loadgen has minted its tokens and primed the cache with the pool
# (its WINDOWS line gives the start in Unix time, the clock of $EPOCHREALTIME).
deadline=$((SECONDS + 300))
start_unix=
until [[ -n $start_unix ]]; do
  start_unix=$(awk '/^WINDOWS / { for (i = 2; i <= NF; i++) if ($i ~ /^start_unix=/) print substr($i, 12) }' "$work/loadgen.out")
  if [[ -z $start_unix ]]; then
    if ! kill -0 "$lg_pid" 2>/dev/null; then echo "bench: loadgen stopped early:" >&2; cat "$work/loadgen.err" "$work/loadgen.out" >&2; exit 1; fi
    if ((SECONDS > deadline)); then echo "bench: loadgen never started its run" >&2; exit 1; fi
    pause 0.1
  fi
done
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "loadgen: open loop $rate/s, ${fresh_pct}% fresh tokens, pool $pool, $duration; restart at $restart_at; ${pin_server[*]:-unpinned} server, ${pin_client[*]:-unpinned} client"

pause "$(awk -v s="$start_unix" -v r="$restart_s" -v n="$EPOCHREALTIME" 'BEGIN { d = s + r - n; printf "%.3f", (d > 0 ? d : 0) }')"

# --- the restart -----------------------------------------------------------------------------
old_pid=$sg_pid
t_term=$EPOCHREALTIME
kill -TERM "$old_pid"
deadline=$((SECONDS + 30))
while is_running "$old_pid"; do
  if ((SECONDS > deadline)); then echo "bench: scopegate did not exit within 30 s of SIGTERM" >&2; exit 1; fi
  pause 0.002
done
t_exit=$EPOCHREALTIME
old_status=0
wait "$old_pid" || old_status=$?
forget_pid "$old_pid"
start_scopegate 2
t_spawn=$EPOCHREALTIME
wait_ready "$sg_pid"
t_ready=$EPOCHREALTIME

lg_status=0
wait "$lg_pid" || lg_status=$?
forget_pid "$lg_pid"
if ! grep -q '^RESULT' "$work/loadgen.out"; then
  echo "bench: loadgen failed (exit $lg_status):" >&2
  cat "$work/loadgen.err" "$work/loadgen.out" >&2
  exit 1
fi

# --- summary ---------------------------------------------------------------------------------
python3 - "$work/loadgen.out" "$start_unix" "$t_term" "$t_exit" "$t_spawn" "$t_ready" "$old_status" "$lg_status" \
  "http://127.0.0.1:$admin_port/metrics" <<'EOF'
import statistics, sys, urllib.request

out, start, term, exited, spawned, ready = sys.argv[1], *map(float, sys.argv[2:7])
old_status, lg_status, metrics_url = sys.argv[7:10]
lines = open(out).read().splitlines()
header = next(l for l in lines if l.startswith("WINDOWS "))
every = float(dict(f.split("=", 1) for f in header.split()[1:])["every_s"])
windows = []
for line in lines:
    if not line.startswith("WINDOW "):
        continue
    f = dict(x.split("=", 1) for x in line.split()[1:])
    w = {k: (float(v.rstrip("s")) if v != "-" else None) for k, v in f.items()}
    w["line"] = line
    windows.append(w)
t_term, t_exit, t_ready = term - start, exited - start, ready - start

def phase(w):
    if w["t"] + every <= t_term:
        return "before"
    return "restart" if w["t"] < t_ready else "after"

for w in windows:
    w["phase"] = phase(w)
before = [w for w in windows if w["phase"] == "before"]
restart = [w for w in windows if w["phase"] == "restart"]
after = [w for w in windows if w["phase"] == "after"]
first3, steady = after[:3], after[3:]

def values(ws, key):
    return [w[key] for w in ws if w[key] is not None]

def med(ws, key):
    v = values(ws, key)
    return f"{statistics.median(v):7.1f} us (min {min(v):.1f}, max {max(v):.1f}, {len(v)} windows)" if v else "-"

def us(v):
    return "-" if v is None else f"{v:.1f}"

print()
print(f"timeline (s after the start of the measured run): SIGTERM {t_term:.3f}, old exit {t_exit:.3f}"
      f" (drain {1000 * (exited - term):.0f} ms, exit status {old_status}), new started {spawned - start:.3f},"
      f" ready {t_ready:.3f} (exit -> ready {1000 * (ready - exited):.0f} ms; SIGTERM -> ready {1000 * (ready - term):.0f} ms)")
print()
for w in windows:
    print(f"  {w['phase']:<8} {w['line']}")
print()
print("                  p99 from the scheduled start            p99 from the send")
print(f"before restart    {med(before, 'p99_us'):<40} {med(before, 'send_p99_us')}")
for w in restart:
    cold = w["t"] + every - t_ready
    print(f"restart -> ready  t={w['t']:g}s: errors {w['errors']:.0f}/{w['sent']:.0f}, p99 {us(w['p99_us'])} us, send p99"
          f" {us(w['send_p99_us'])} us, max {us(w['max_us'])} us" + (f" ({cold:.2f} s of it after ready: cold cache)" if cold > 0 else ""))
for w in first3:
    print(f"after ready       t={w['t']:g}s: p99 {us(w['p99_us'])} us, send p99 {us(w['send_p99_us'])} us,"
          f" max {us(w['max_us'])} us, lag p99 {us(w['lag_p99_us'])} us, errors {w['errors']:.0f}")
print(f"steady after      {med(steady, 'p99_us'):<40} {med(steady, 'send_p99_us')}")
total = {k: sum(w[k] for w in windows) for k in ("sent", "ok", "errors", "unexpected", "dropped")}
outside = sum(w["errors"] for w in windows if w["phase"] != "restart")
err_windows = [w["t"] for w in windows if w["errors"]]
print(f"overall           sent {total['sent']:.0f}, ok {total['ok']:.0f}, errors {total['errors']:.0f}"
      f" ({outside:.0f} outside the restart windows), unexpected {total['unexpected']:.0f}, dropped {total['dropped']:.0f}"
      + (f"; errors in windows t={err_windows[0]:g}..{err_windows[-1]:g}s" if err_windows else ""))
base = values(before, "p99_us")
cold = values(restart[-1:] + first3, "p99_us")
if base and cold:
    print(f"cold-cache cliff  worst p99 of the last restart window and the first 3 after / median before:"
          f" {max(cold) / statistics.median(base):.2f}x")
try:
    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    text = no_proxy.open(metrics_url, timeout=5).read().decode()
    counts = {l.split()[0]: l.split()[1] for l in text.splitlines()
              if l.startswith(("scopegate_cache_hits", "scopegate_cache_misses")) and not l.startswith("#")}
    print("new server        " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
except OSError as e:
    print(f"new server        metrics unavailable: {e}")
result = next((l for l in lines if l.startswith("RESULT")), "")
print(f"loadgen           exit {lg_status}; {result}")
first = next((l.strip() for l in lines if l.strip().startswith("first unexpected:")), None)
if first:
    print(f"                  {first}")
EOF
echo
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "scopegate: $(bench_build_id)"
