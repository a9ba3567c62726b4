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
