#!/usr/bin/env bash
# setup.sh: installs what dasmesh needs to build, test and benchmark on a fresh Debian machine.
# Idempotent and quiet unless it installs something. Needs root (or sudo) only when installing.
set -euo pipefail

# etcd-server provides /usr/bin/etcd, which the tests start as a real cluster on free loopback ports
# (tools/testkit/src/etcd.rs); etcd-client provides etcdctl, for looking at one by hand. Where systemd
# runs, the package also starts a system etcd on 2379; the tests leave it alone.
# chromium (Debian's) runs the console's browser tests headless, driven by Playwright for Python
# (below), which is told to use it rather than download a browser of its own.
packages=(build-essential pkg-config protobuf-compiler fio python3 python3-pip procps libnbd-bin qemu-utils
  nbd-client etcd-server etcd-client chromium curl)
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
# Playwright's Python package (its driver, not its browsers: the tests use /usr/bin/chromium).
if ! python3 -c "import playwright" 2>/dev/null; then
  echo "setup: installing playwright (Python)"
  python3 -m pip install -q --disable-pip-version-check "playwright>=1.40,<2" 2>/dev/null ||
    python3 -m pip install -q --disable-pip-version-check --break-system-packages "playwright>=1.40,<2"
fi
if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found. Install a stable Rust toolchain (https://rustup.rs) and re-run." >&2
  exit 1
fi
