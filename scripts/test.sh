#!/usr/bin/env bash
# The test command: installs what is missing, builds the module (release) and runs every
# test of the workspace (unit, property, module integration, shipper end-to-end). Every
# test starts its own redis-server / PostgreSQL / broker on free 127.0.0.1 ports.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"

echo "[test] building the module (release)"
cargo build --release --locked -p tally
export TALLY_MODULE="$PWD/target/release/libtally.so"

echo "[test] running the workspace tests"
export TALLY_REQUIRE_ALL=1 # a test that cannot run fails instead of skipping
cargo test --workspace --locked --no-fail-fast -- --test-threads="${TALLY_TEST_THREADS:-2}"
