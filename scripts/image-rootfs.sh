#!/usr/bin/env bash
# Assembles the root filesystem of the scopegate image in ROOTFS: the binary, exactly the shared
# libraries `ldd` lists for it (the dynamic loader included), CA certificates, and /etc/passwd
# and /etc/group entries for the image's non-root user (65532). Nothing else: no shell, no
# package manager. The Dockerfile runs it in its build stage and scripts/build-image.sh runs it
# on the locally built binary, so both images have the same filesystem.
#
#   scripts/image-rootfs.sh BINARY ROOTFS
set -euo pipefail

die() { echo "image-rootfs: $*" >&2; exit 1; }

[[ $# -eq 2 ]] || die "usage: $0 BINARY ROOTFS"
bin=$1
root=$2
uid=65532
ca_bundle=/etc/ssl/certs/ca-certificates.crt

[[ -x $bin ]] || die "$bin is not an executable (build it first: cargo build --release --bin scopegate)"
[[ -r $ca_bundle ]] || die "$ca_bundle is missing (apt-get install ca-certificates)"
command -v ldd >/dev/null || die "ldd is required (Debian package libc-bin)"

rm -rf "$root"
mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs" "$root/etc/scopegate"

# The binary, without DWARF debug info (the symbol table stays, so panics still name functions).
install -m 0755 "$bin" "$root/usr/local/bin/scopegate"
if command -v objcopy >/dev/null; then
  objcopy --strip-debug "$root/usr/local/bin/scopegate"
fi

# `ldd` lines: "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)", the loader as
# "/lib64/ld-linux-x86-64.so.2 (0x…)", and the kernel's "linux-vdso.so.1 (0x…)" (no file).
deps=$(ldd "$bin" 2>&1) || {
  [[ $deps == *"not a dynamic executable"* || $deps == *"statically linked"* ]] || die "ldd $bin: $deps"
  deps=""
}
if grep -q "not found" <<<"$deps"; then
  die "a shared library of $bin is missing: $deps"
fi
libs=$(awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$deps" | sort -u)
for lib in $libs; do
  mkdir -p "$root$(dirname "$lib")"
  # -L: the file itself, under the name the binary asks for (Debian's are symlinks).
  cp -L "$lib" "$root$lib"
  chmod 0755 "$root$lib"
done

install -m 0644 "$ca_bundle" "$root/etc/ssl/certs/ca-certificates.crt"
printf 'scopegate:x:%d:%d:scopegate:/nonexistent:/sbin/nologin\n' "$uid" "$uid" >"$root/etc/passwd"
printf 'scopegate:x:%d:\n' "$uid" >"$root/etc/group"
# glibc's resolver: /etc/hosts first, then DNS (Kubernetes mounts resolv.conf and hosts).
printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
chmod 0644 "$root/etc/passwd" "$root/etc/group" "$root/etc/nsswitch.conf"

echo "image-rootfs: $root: scopegate + $(wc -w <<<"$libs") shared libraries ($(tr '\n' ' ' <<<"$libs"))"
