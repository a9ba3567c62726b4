# Sourced by the benchmark scripts (scripts/bench-*.sh): a work directory and the processes a
# script starts, all stopped (by PID) and removed on exit; free loopback ports; and where to pin
# server and client so that they do not preempt each other.

# bench_start TAG: sets $work (a new temporary directory) and $pids (append every PID started).
bench_start() {
  work=$(mktemp -d -t "scopegate-$1.XXXXXX")
  pids=()
  trap bench_cleanup EXIT
}

bench_cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# bench_pinning PIN: sets pin_server (the last CPU) and pin_client (CPU 0) as taskset prefixes
# when PIN is 1 and there are two CPUs or more; empty (shared CPUs) otherwise.
bench_pinning() {
  pin_server=() pin_client=()
  if [[ $1 -eq 1 && $(nproc) -ge 2 ]] && command -v taskset >/dev/null; then
    pin_server=(taskset -c $(($(nproc) - 1))) pin_client=(taskset -c 0)
  fi
}

# bench_require TOOL...: exits 1 naming the first tool that is not on PATH.
bench_require() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || {
      echo "bench: $tool is required (scripts/setup.sh --test, or its Debian package)" >&2
      exit 1
    }
  done
}

# bench_wait_until WHAT SECONDS COMMAND...: runs COMMAND (quietly) until it succeeds, a condition
# with a deadline; after SECONDS, exits 1 naming WHAT.
bench_wait_until() {
  local what=$1 deadline=$((SECONDS + $2))
  shift 2
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS > deadline)); then echo "bench: $what never became ready (logs in $work)" >&2; exit 1; fi
    sleep 0.05
  done
}

# http_has URL TEXT: the URL answers 200 with a body containing TEXT.
http_has() {
  curl -sf --max-time 2 "$1" 2>/dev/null | grep -q "$2"
}

# bench_alt_bin VARIANTS: when VARIANTS lists X+log, sets alt_bin to SCOPEGATE_BENCH_ALT_BIN
# (another scopegate build, measured beside this one); exits 2 if that is not an executable.
bench_alt_bin() {
  alt_bin=""
  [[ " $1 " == *" X+log "* ]] || return 0
  if [[ ! -x ${SCOPEGATE_BENCH_ALT_BIN:-} ]]; then
    echo "bench: variant X+log needs SCOPEGATE_BENCH_ALT_BIN=<path to another scopegate binary>" >&2
    exit 2
  fi
  alt_bin=$SCOPEGATE_BENCH_ALT_BIN
}

# cpu_ticks PID: user+system CPU of a process in clock ticks (0 without a PID); tick_us: one
# tick in microseconds.
cpu_ticks() {
  if [[ -n ${1:-} ]]; then stat_ticks "/proc/$1/stat"; else echo 0; fi
}
# stat_ticks FILE: utime + stime from a /proc .../stat file.
stat_ticks() {
  awk '{ print $14 + $15 }' "$1"
}
tick_us=$((1000000 / $(getconf CLK_TCK)))

# thread_ticks PID NAME: user+system CPU, in clock ticks, of the process's threads called NAME
# (0 if it has none).
thread_ticks() {
  local task ticks=0
  for task in /proc/"$1"/task/*; do
    [[ $(cat "$task/comm" 2>/dev/null) == "$2" ]] || continue
    ticks=$((ticks + $(stat_ticks "$task/stat")))
  done
  echo "$ticks"
}

# bench_build_id: the commit the binaries in $bin were built from, as the summary line says it.
bench_build_id() {
  local dirty
  dirty=$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo " + uncommitted changes in src/")
  echo "$(git rev-parse --short HEAD 2>/dev/null)$dirty (binaries built $(date -r "$bin/scopegate" '+%F %T'))"
}
