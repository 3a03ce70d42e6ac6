#!/usr/bin/env bash
# setup.sh: installs what dasmesh needs to build, test and benchmark on a fresh Debian machine.
# Idempotent and quiet unless it installs something. Needs root (or sudo) only when installing.
set -euo pipefail

packages=(build-essential pkg-config protobuf-compiler fio python3 procps libnbd-bin qemu-utils nbd-client)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""
  [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found. Install a stable Rust toolchain (https://rustup.rs) and re-run." >&2
  exit 1
fi
