#!/usr/bin/env bash
# The test command (what CI runs through .ci/run). Installs what is missing, then:
#   1. gates: cargo fmt --check, clippy -D warnings, shellcheck, the module's purity check
#   2. the workspace's tests (unit, property, module integration on Debian's Redis 7.0,
#      the shipper end to end with PostgreSQL and the Kafka-protocol test broker)
#   3. the module's integration tests, the shipper's cluster tests and its stream trimming
#      test on Redis 8.2 and Valkey 9.1
#   4. the Python and TypeScript clients' tests, the alert rules' promtool tests, and a short
#      fuzz run of every parser over the committed corpus (scripts/fuzz.sh)
# Every test starts its own servers on free 127.0.0.1 ports and stops them. Every step runs
# even when an earlier one failed; the exit status is 1 when any failed, and the summary at
# the end names them.
#   TALLY_TEST_THREADS=2   test threads per cargo test binary
#   FUZZ_SECONDS=20        seconds of fuzzing per target
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"

failed=()
run() { # <label> <command...>: runs one step, remembers a failure, goes on
  local label="$1" started=$SECONDS
  shift
  echo "[test] $label"
  if "$@"; then
    echo "[test] ok: $label ($((SECONDS - started)) s)"
  else
    echo "[test] FAILED: $label ($((SECONDS - started)) s)" >&2
    failed+=("$label")
  fi
}
threads="--test-threads=${TALLY_TEST_THREADS:-2}"

run "cargo fmt --check" cargo fmt --all --check
run "clippy -D warnings" cargo clippy --workspace --all-targets --locked -- -D warnings
run "shellcheck" shellcheck -x scripts/*.sh clients/*/test.sh deploy/test.sh .ci/run
run "module purity (domain/ without redis_module, unsafe only in host/)" \
  bash scripts/check-module-purity.sh

run "build the module (release)" cargo build --release --locked -p tally
export TALLY_MODULE="$PWD/target/release/libtally.so"
export TALLY_REQUIRE_ALL=1 # a test that cannot run fails instead of skipping

run "workspace tests on $(redis-server --version | cut -d' ' -f1-3)" \
  cargo test --workspace --locked --no-fail-fast -- "$threads"

for server in redis8 valkey; do
  bin="$(bash scripts/server-bin.sh "$server")"
  if [ -z "$bin" ]; then
    failed+=("no $server server (scripts/setup.sh installs it)")
    continue
  fi
  version="$("$bin" --version | cut -d' ' -f1-3)"
  run "module integration tests on $version" \
    env TALLY_SERVER_BIN="$bin" cargo test -p tally-tests --locked --no-fail-fast -- "$threads"
  run "the shipper on a $version cluster (slot migration, failover) and its stream trimming" \
    env TALLY_SERVER_BIN="$bin" cargo test -p tally-shipper --locked --no-fail-fast \
    --test cluster --test cluster_failover --test keeper -- "$threads"
done

run "Python client (clients/python)" bash clients/python/test.sh
run "TypeScript client (clients/node)" bash clients/node/test.sh
run "alert rules (promtool)" bash deploy/test.sh
run "fuzz: every target ${FUZZ_SECONDS:-20} s over the committed corpus" bash scripts/fuzz.sh

if [ "${#failed[@]}" -gt 0 ]; then
  printf '[test] FAILED steps:\n' >&2
  printf '  - %s\n' "${failed[@]}" >&2
  exit 1
fi
echo "[test] all steps passed"
