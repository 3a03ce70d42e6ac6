#!/usr/bin/env bash
# screenshots.sh: renews the console's screenshots in docs/console/ (the README shows one) by
# running the browser test with DASMESH_CONSOLE_SHOTS set. Needs what scripts/setup.sh installs.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p docs/console
cargo build -q --bins
DASMESH_CONSOLE_SHOTS="$PWD/docs/console" \
  cargo test -q -p dasmesh-controller --test console the_console_in_a_browser -- --nocapture
ls -l docs/console
