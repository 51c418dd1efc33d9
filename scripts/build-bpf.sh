#!/usr/bin/env bash
# Rebuilds the kernel fast path's eBPF object, src/net/offload/relay.bpf.o, from
# src/net/offload/relay.bpf.c with Debian's clang and libbpf-dev (installed when missing).
# The object is committed so that `cargo build` needs only Rust; tests/offload.rs runs this
# script into a temporary file and fails when the result differs from the committed object.
#
# Usage: scripts/build-bpf.sh [OUTPUT]   (default: src/net/offload/relay.bpf.o)
#
# The build is reproducible: relative source path, debug paths mapped, DWARF stripped (the
# BTF that describes the maps stays). The committed object was made by Debian 12's clang 14.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

packages=()
command -v clang >/dev/null || packages+=(clang)
command -v llvm-strip >/dev/null || packages+=(llvm)
[ -e /usr/include/bpf/bpf_helpers.h ] || packages+=(libbpf-dev)
if [ "${#packages[@]}" -gt 0 ]; then
  echo "installing ${packages[*]}" >&2
  as_root apt-get update >&2
  as_root env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y --no-install-recommends "${packages[@]}" >&2
fi

output="${1:-src/net/offload/relay.bpf.o}"
multiarch="$(gcc -print-multiarch 2>/dev/null || echo "$(uname -m)-linux-gnu")"
tmp="$(mktemp)"
trap 'rm -f "$tmp"' EXIT

clang -target bpf -O2 -g -Wall -Werror \
  -I"/usr/include/$multiarch" \
  -fdebug-prefix-map="$PWD"=. \
  -c src/net/offload/relay.bpf.c -o "$tmp"
llvm-strip -g "$tmp"
cp "$tmp" "$output"
