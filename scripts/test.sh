#!/usr/bin/env bash
# test.sh: the README's test command. Installs what is needed, then format, lint, build, test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo build"
cargo build --workspace --bins
echo "== cargo test"
cargo test --workspace
echo "== fuzz targets: build on stable and a short smoke run of each"
cargo build --manifest-path fuzz/Cargo.toml -q
for t in request reply framer handshake token search claim; do
  fuzz/target/debug/$t -runs=5000 2>&1 | tail -n 1
done
