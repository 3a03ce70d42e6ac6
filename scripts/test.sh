#!/usr/bin/env bash
# test.sh: the README's test command. Installs what is needed, then format, lint, build, test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
echo "== cargo fmt --check"
cargo fmt --all -- --check
# The tests run the node built with its test-only fault injection (dataplane/node/src/fault.rs);
# the product's builds (the demo, release binaries) never have it.
FEATURES="--features dasmesh-node/fault-injection"
echo "== cargo clippy -D warnings (with and without the test features)"
cargo clippy --workspace --all-targets $FEATURES -- -D warnings
cargo clippy -p dasmesh-node --all-targets -- -D warnings
echo "== cargo build"
cargo build --workspace --bins $FEATURES
echo "== cargo test"
cargo test --workspace $FEATURES
echo "== fuzz targets: build on stable and a short smoke run of each"
cargo build --manifest-path fuzz/Cargo.toml -q
for t in request reply framer handshake token search claim; do
  fuzz/target/debug/$t -runs=5000 2>&1 | tail -n 1
done
