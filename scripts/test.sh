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

echo "[test] running the workspace tests (module integration tests on $(redis-server --version | cut -d' ' -f1-3))"
export TALLY_REQUIRE_ALL=1 # a test that cannot run fails instead of skipping
status=0
cargo test --workspace --locked --no-fail-fast -- --test-threads="${TALLY_TEST_THREADS:-2}" || status=$?

VALKEY="$(bash scripts/valkey-bin.sh)"
if [ -z "$VALKEY" ]; then
  echo "[test] FAIL: no valkey-server (scripts/setup.sh installs it)" >&2
  exit 1
fi
echo "[test] module integration tests on $("$VALKEY" --version | cut -d' ' -f1-3)"
TALLY_SERVER_BIN="$VALKEY" cargo test -p tally-tests --locked --no-fail-fast -- --test-threads="${TALLY_TEST_THREADS:-2}" || status=$?
echo "[test] the shipper on a Valkey cluster (atomic slot migration, failover)"
TALLY_SERVER_BIN="$VALKEY" cargo test -p tally-shipper --test cluster --test cluster_failover --locked --no-fail-fast -- --test-threads="${TALLY_TEST_THREADS:-2}" || status=$?
exit "$status"
