#!/usr/bin/env bash
# demo.sh: the README's first command. Installs what is needed, builds dasmesh (release), then runs
# `dasmesh demo`: a controller and three nodes on loopback with file backends in a temp dir; mirror,
# stripe and concat volumes; data copied in and out and verified; a search; a benchmark against a
# local-file baseline; usage with charges; a node killed under the mirror; a clean shutdown.
# Arguments go to `dasmesh demo` (--keep leaves the temp dir, --dir DIR puts it in DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
echo "== building (release)"
cargo build --release --workspace --bins -q
exec target/release/dasmesh demo "$@"
