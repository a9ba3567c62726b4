#!/usr/bin/env bash
# Builds the scopegate image on this machine with podman (buildah underneath) from the locally
# built release binary: the Dockerfile's final stage (FROM scratch), around the root filesystem
# that scripts/image-rootfs.sh assembles (the binary, exactly the shared libraries `ldd` lists,
# CA certificates, a passwd entry for user 65532). No base image is pulled.
#
#   scripts/build-image.sh             build $SCOPEGATE_IMAGE:$SCOPEGATE_IMAGE_TAG
#   scripts/build-image.sh --check     build, then prove the image (below); exit 1 if it fails
#   scripts/build-image.sh --push REPOSITORY
#                                      build, tag REPOSITORY:<tag> and push it (podman login first)
#
# SCOPEGATE_IMAGE defaults to localhost/scopegate (the Helm chart's default image.repository),
# SCOPEGATE_IMAGE_TAG to the crate version (the chart's appVersion).
#
# --check runs the image's entrypoint as the image's user inside the image's own filesystem and
# asks it a real Check (examples/check_client), twice:
#   1. `podman run` (read-only root filesystem, all capabilities dropped, no-new-privileges),
#      when this machine can run containers; if it cannot, that is reported and step 2 decides;
#   2. always: the image exported with `podman export`, unpacked, bind-mounted read-only, and the
#      entrypoint started in it with `chroot --userspec` under `setpriv` (no new privileges, a
#      bounding set of only what chroot needs to switch to the user, which the switch then drops).
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "build-image: $*" >&2; exit 1; }
say() { echo "build-image: $*"; }

mode=build
push_repo=""
case "${1:-}" in
  "") ;;
  --check) mode=check ;;
  --push) mode=push; push_repo=${2:-}; [[ -n $push_repo ]] || die "--push needs a repository" ;;
  *) die "unknown argument $1 (see the header of $0)" ;;
esac

command -v podman >/dev/null || die "podman is required: apt-get install podman buildah (scripts/setup.sh --test installs them)"

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
image=${SCOPEGATE_IMAGE:-localhost/scopegate}
tag=${SCOPEGATE_IMAGE_TAG:-$version}
ref="$image:$tag"
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
if [[ $revision != unknown && -n $(git status --porcelain 2>/dev/null) ]]; then
  revision="$revision-dirty"
fi
# Reproducible: the image's timestamps come from the last commit, not from the clock.
epoch=$(git log -1 --format=%ct 2>/dev/null || echo 0)
created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)

work=$(mktemp -d)
pids=()
mounted=""
container=""
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  [[ -n $container ]] && podman rm -f "$container" >/dev/null 2>&1 || true
  [[ -n $mounted ]] && umount "$mounted" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

build() {
  say "cargo build --release --locked --bin scopegate"
  cargo build --release --locked --bin scopegate
  scripts/image-rootfs.sh target/release/scopegate "$work/context/rootfs"
  # The final stage of the Dockerfile, with its rootfs from the context instead of the build stage.
  sed -n '/^FROM scratch AS runtime$/,$p' Dockerfile \
    | sed 's#^COPY --from=build /rootfs/ /$#COPY rootfs/ /#' >"$work/context/Containerfile"
  grep -q '^COPY rootfs/ /$' "$work/context/Containerfile" \
    || die "Dockerfile: the runtime stage must start with 'FROM scratch AS runtime' and copy '--from=build /rootfs/ /'"
  say "podman build $ref"
  podman build --quiet --timestamp "$epoch" \
    --build-arg VERSION="$version" --build-arg REVISION="$revision" --build-arg CREATED="$created" \
    -t "$ref" -f "$work/context/Containerfile" "$work/context" >/dev/null
  local size id
  size=$(podman image inspect --format '{{.Size}}' "$ref")
  id=$(podman image inspect --format '{{.Id}}' "$ref")
  say "built $ref (image id ${id:0:12}, $((size / 1024 / 1024)) MiB; revision $revision)"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# GET path on 127.0.0.1:port; prints the status code (000 when nothing answers).
http_status() {
  local port=$1 path=$2 line
  # In a group: the group's 2>/dev/null silences a refused connection without redirecting the
  # script's stderr for good (as `exec … 2>/dev/null` would).
  if { exec 3<>"/dev/tcp/127.0.0.1/$port"; } 2>/dev/null; then
    printf 'GET %s HTTP/1.0\r\nHost: check\r\n\r\n' "$path" >&3
    read -r -t 2 line <&3 || line=""
    exec 3<&- 3>&-
    awk '{print $2}' <<<"$line"
  else
    echo 000
  fi
}

# Waits (up to 20 s) for /readyz on the admin port; `alive` is a command that fails when the
# server has exited.
wait_ready() {
  local admin=$1 alive=$2 deadline=$((SECONDS + 20))
  until [[ $(http_status "$admin" /readyz) == 200 ]]; do
    $alive || return 1
    ((SECONDS < deadline)) || return 1
    sleep 0.1
  done
}

check_client() {
  local bin=target/debug/examples/check_client
  if [[ ! -x $bin ]]; then
    cargo build --locked --example check_client >/dev/null
  fi
  echo "$bin"
}

# Asks two real Checks: a public route (allow) and a protected one without a token (401).
ask_checks() {
  local grpc=$1 client out
  client=$(check_client)
  out=$(TOKEN="" "$client" --addr "http://127.0.0.1:$grpc" GET api.example.com /healthz)
  [[ $out == ALLOW* ]] || { echo "$out"; return 1; }
  say "  Check GET /healthz -> ${out%%$'\n'*}"
  out=$(TOKEN="" "$client" --addr "http://127.0.0.1:$grpc" GET api.example.com /orders/1)
  [[ $out == "DENY 401"* && $out == *missing_credential* ]] || { echo "$out"; return 1; }
  say "  Check GET /orders/1 (no token) -> ${out%%$'\n'*}"
}

# The process runs as the image's user, without capabilities, inside `root` (if given).
check_identity() {
  local pid=$1 uid=$2 gid=$3 root=${4:-}
  local status
  status=$(cat "/proc/$pid/status")
  awk -v u="$uid" '/^Uid:/ { exit !($2 == u && $3 == u && $4 == u && $5 == u) }' <<<"$status" || { echo "$status"; return 1; }
  awk -v g="$gid" '/^Gid:/ { exit !($2 == g && $3 == g) }' <<<"$status" || { echo "$status"; return 1; }
  grep -Eq '^CapEff:[[:space:]]+0+$' <<<"$status" || { grep Cap <<<"$status"; return 1; }
  grep -Eq '^CapPrm:[[:space:]]+0+$' <<<"$status" || { grep Cap <<<"$status"; return 1; }
  if [[ -n $root ]]; then
    [[ $(readlink "/proc/$pid/root") == "$root" ]] || { echo "root is $(readlink "/proc/$pid/root")"; return 1; }
  fi
  say "  pid $pid: uid $uid, gid $gid, no capabilities${root:+, root directory $root}"
}

write_rules() {
  mkdir -p "$1"
  cat >"$1/rules.yaml" <<'EOF'
routes:
  health: {host: "*", path: /healthz, require: {public: true}}
  orders: {host: api.example.com, path: "/orders/{id}", require: {all: [orders:read]}}
EOF
  chmod -R a+rX "$1"
}

inspect_config() {
  local user entrypoint labels
  user=$(podman image inspect --format '{{.Config.User}}' "$ref")
  entrypoint=$(podman image inspect --format '{{json .Config.Entrypoint}}' "$ref")
  labels=$(podman image inspect --format '{{json .Config.Labels}}' "$ref")
  [[ $user =~ ^[1-9][0-9]*:[1-9][0-9]*$ ]] || die "image user '$user' is not a numeric non-root uid:gid"
  [[ $entrypoint == '["scopegate"]' ]] || die "image entrypoint is $entrypoint"
  for label in title version revision created source licenses; do
    grep -q "\"org.opencontainers.image.$label\"" <<<"$labels" || die "label org.opencontainers.image.$label missing"
  done
  local layers
  layers=$(podman image inspect --format '{{len .RootFS.Layers}}' "$ref")
  say "image config: user $user, entrypoint $entrypoint, OCI labels present, $layers layer(s)"
  image_user=$user
}

# 1. podman run. Machines without cgroup v2 or CAP_SYS_RESOURCE need runc and modest ulimits.
check_podman_run() {
  local uid=$1 gid=$2 grpc admin rules=$work/run-rules runtime=""
  write_rules "$rules"
  local attempt
  for attempt in default runc; do
    if [[ $attempt == runc ]]; then
      command -v runc >/dev/null || break
      runtime="--runtime runc"
    fi
    grpc=$(free_port); admin=$(free_port)
    container="scopegate-image-check-$$"
    podman rm -f "$container" >/dev/null 2>&1 || true
    # shellcheck disable=SC2086
    if podman run -d --name "$container" $runtime --network host --read-only --cap-drop ALL \
         --security-opt no-new-privileges --ulimit nofile=4096:4096 --ulimit nproc=4096:4096 \
         -v "$rules:/etc/scopegate:ro" "$ref" \
         serve --rules /etc/scopegate/rules.yaml --listen "127.0.0.1:$grpc" --admin-listen "127.0.0.1:$admin" \
         >"$work/podman-run.out" 2>&1; then
      break
    fi
    say "  podman run (${attempt} runtime) could not start a container: $(tail -1 "$work/podman-run.out")"
    podman rm -f "$container" >/dev/null 2>&1 || true
    container=""
  done
  if [[ -z $container ]]; then
    podman_run_result="NOT POSSIBLE on this machine ($(tail -1 "$work/podman-run.out"))"
    return 0
  fi
  local alive="podman container exists $container"
  if ! wait_ready "$admin" "$alive"; then
    podman logs "$container" >&2 || true
    die "podman run: scopegate did not become ready"
  fi
  local pid
  pid=$(podman inspect --format '{{.State.Pid}}' "$container")
  check_identity "$pid" "$uid" "$gid" || die "podman run: the process is not the image's user"
  ask_checks "$grpc" || die "podman run: a Check was not answered as expected"
  podman stop --time 10 "$container" >/dev/null
  local code
  code=$(podman inspect --format '{{.State.ExitCode}}' "$container")
  [[ $code == 0 ]] || die "podman run: scopegate exited with $code after SIGTERM"
  podman rm -f "$container" >/dev/null
  container=""
  podman_run_result="ok ($attempt runtime; read-only root, no capabilities, drained and exited 0 on SIGTERM)"
}

# 2. The image's own filesystem, unpacked, read-only, entered with chroot as the image's user.
check_rootfs() {
  local uid=$1 gid=$2 root=$work/rootfs grpc admin
  mkdir -p "$root"
  local cid
  cid=$(podman create "$ref")
  podman export "$cid" | tar -x -C "$root"
  podman rm "$cid" >/dev/null
  # The rules file where the chart's ConfigMap is mounted.
  write_rules "$root/etc/scopegate"
  local files
  files=$(cd "$root" && find . -type f | sort | tr '\n' ' ')
  say "  unpacked rootfs: $files"
  mount --bind "$root" "$root" && mounted=$root
  mount -o remount,bind,ro "$root" || die "cannot make the unpacked rootfs read-only"
  touch "$root/probe" 2>/dev/null && die "the unpacked rootfs is writable"
  local entrypoint
  entrypoint=$(podman image inspect --format '{{index .Config.Entrypoint 0}}' "$ref")
  grpc=$(free_port); admin=$(free_port)
  # PATH as the image sets it: `scopegate` is found inside the image, not on this machine.
  env -i PATH=/usr/local/bin /usr/bin/setpriv --no-new-privs \
    --bounding-set -all,+sys_chroot,+setuid,+setgid \
    /usr/sbin/chroot --userspec="$uid:$gid" --groups="$gid" "$root" \
    "$entrypoint" serve --rules /etc/scopegate/rules.yaml \
    --listen "127.0.0.1:$grpc" --admin-listen "127.0.0.1:$admin" --log-format text \
    >"$work/rootfs.log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  if ! wait_ready "$admin" "kill -0 $pid"; then
    cat "$work/rootfs.log" >&2
    die "rootfs: scopegate did not become ready"
  fi
  check_identity "$pid" "$uid" "$gid" "$root" || die "rootfs: the process is not the image's user"
  ask_checks "$grpc" || die "rootfs: a Check was not answered as expected"
  kill -TERM "$pid"
  local code=0
  wait "$pid" || code=$?
  pids=()
  [[ $code == 0 ]] || { cat "$work/rootfs.log" >&2; die "rootfs: scopegate exited with $code after SIGTERM"; }
  umount "$root" && mounted=""
}

build
case $mode in
  push)
    podman tag "$ref" "$push_repo:$tag"
    say "podman push $push_repo:$tag"
    podman push "$push_repo:$tag"
    ;;
  check)
    image_user=""
    inspect_config
    uid=${image_user%%:*}
    gid=${image_user##*:}
    podman_run_result=""
    say "check 1: podman run"
    check_podman_run "$uid" "$gid"
    say "check 2: the image's rootfs, unpacked read-only, chroot as $uid:$gid"
    check_rootfs "$uid" "$gid"
    say "image check passed: $ref"
    say "  podman run:     $podman_run_result"
    say "  chroot rootfs:  ok (entrypoint as $uid:$gid in the image's own filesystem, read-only, answered Checks, exited 0 on SIGTERM)"
    ;;
esac
