#!/usr/bin/env bash
# tally-shipper benchmarks: drain rate (direct and through Kafka), Kafka stages vs a plain
# client, sustained freshness, Redis memory. Writes docs/bench-shipper.md.
#
#   scripts/bench-shipper.sh
#
# Builds (release) the module, tally-shipper with the plain-client Kafka ceiling
# (shipper/examples/kafka_ceiling.rs) and tally-bench; `tally-bench shipper` then starts its
# own redis-server (the module, no AOF/RDB), PostgreSQL 15 (as user postgres) and tansu,
# all on free 127.0.0.1 ports with data in temp dirs, runs every stage (bench/src/shipper/),
# stops the servers (also on Ctrl-C) and writes the figures as JSON; bench/report.py shipper
# renders them. Needs root (runuser, chown), redis-server, redis-benchmark, python3.
#
# Knobs (environment):
#   BENCH_SHIPPER_N=200000            backlog size, direct path
#   BENCH_SHIPPER_WRITERS="1 2 4"     --pg-writers values, direct path (the curve over writers)
#   BENCH_SHIPPER_BATCH=default       --batch-size of the direct drains ("default" = the shipper's)
#   BENCH_SHIPPER_KAFKA_N=5000        backlog size through Kafka (tansu; small, see docs/bench-shipper.md)
#   BENCH_SHIPPER_KAFKA_BATCHES="500" --batch-size values through Kafka ("" skips Kafka)
#   BENCH_SHIPPER_STAGES_N=5000       backlog for the Kafka stages vs plain-client ceiling
#   BENCH_SHIPPER_TANSU_STORAGE=sqlite   sqlite (durable, as scripts/stack.sh), memory, or a URL
#   BENCH_SHIPPER_DRAIN_TIMEOUT=180   seconds allowed per direct drain run (then reported as timed out,
#                                     with the rate of what was persisted by then)
#   BENCH_SHIPPER_KAFKA_TIMEOUT=120   the same for the Kafka runs
#   BENCH_SHIPPER_RATES="1000 4000"   steady load rates (ASSET.INCR/s) for the freshness runs ("" skips)
#   BENCH_SHIPPER_SECONDS=30          length of each freshness run
#   BENCH_SHIPPER_FRESH_BATCH=default --batch-size of the freshness runs
#   BENCH_SHIPPER_STAGE_LOG=info      TALLY_LOG of the Kafka stage shippers
#   BENCH_SHIPPER_DOC=docs/bench-shipper.md
#   BENCH_SHIPPER_KEEP=dir            keep logs and the results JSON in dir
#   TALLY_MODULE=path  TALLY_SHIPPER=path  TALLY_KAFKA_CEILING=path   (any of them: build nothing)
#   PG_BIN=/usr/lib/postgresql/15/bin  TANSU_BIN=~/.cargo/bin/tansu (missing: the Kafka runs are skipped)
#   MODULE_TARGET_DIR=target BENCH_TARGET_DIR=$CARGO_TARGET_DIR or target   (cargo target dirs, as bench.sh)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
COMMAND_LINE="scripts/bench-shipper.sh"
for v in BENCH_SHIPPER_N BENCH_SHIPPER_WRITERS BENCH_SHIPPER_BATCH BENCH_SHIPPER_KAFKA_N \
         BENCH_SHIPPER_KAFKA_BATCHES BENCH_SHIPPER_STAGES_N BENCH_SHIPPER_TANSU_STORAGE \
         BENCH_SHIPPER_DRAIN_TIMEOUT BENCH_SHIPPER_KAFKA_TIMEOUT BENCH_SHIPPER_RATES \
         BENCH_SHIPPER_SECONDS BENCH_SHIPPER_FRESH_BATCH BENCH_SHIPPER_DOC TALLY_MODULE TALLY_SHIPPER; do
  if [[ -n "${!v+x}" ]]; then COMMAND_LINE="$v=\"${!v}\" $COMMAND_LINE"; fi
done
DOC="${BENCH_SHIPPER_DOC:-docs/bench-shipper.md}"
MODULE_TARGET_DIR="${MODULE_TARGET_DIR:-$ROOT/target}"
BENCH_TARGET_DIR="${BENCH_TARGET_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}}"

for tool in redis-server redis-benchmark runuser cargo python3; do
  command -v "$tool" >/dev/null || { echo "bench-shipper.sh: $tool is required" >&2; exit 1; }
done

# ---- build
if [[ -z "${TALLY_MODULE:-}${TALLY_SHIPPER:-}${TALLY_KAFKA_CEILING:-}" ]]; then
  echo "== building the module and tally-shipper (cargo build --release)" >&2
  CARGO_TARGET_DIR="$MODULE_TARGET_DIR" cargo build --release --locked -q -p tally
  CARGO_TARGET_DIR="$MODULE_TARGET_DIR" cargo build --release --locked -q -p tally-shipper --bins --examples
fi
export TALLY_MODULE="${TALLY_MODULE:-$MODULE_TARGET_DIR/release/libtally.so}"
export TALLY_SHIPPER="${TALLY_SHIPPER:-$MODULE_TARGET_DIR/release/tally-shipper}"
export TALLY_KAFKA_CEILING="${TALLY_KAFKA_CEILING:-$MODULE_TARGET_DIR/release/examples/kafka_ceiling}"
echo "== building tally-bench" >&2
CARGO_TARGET_DIR="$BENCH_TARGET_DIR" cargo build --release --locked -q -p tally-bench

# ---- run
if [[ -n "${BENCH_SHIPPER_KEEP:-}" ]]; then
  mkdir -p "$BENCH_SHIPPER_KEEP"
  RESULTS="$BENCH_SHIPPER_KEEP/results.json"
else
  OUT="$(mktemp -d /tmp/bench-shipper-results.XXXXXX)"
  trap 'rm -rf "$OUT"' EXIT
  RESULTS="$OUT/results.json"
fi
"$BENCH_TARGET_DIR/release/tally-bench" shipper "$RESULTS"

# ---- report
COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo '?')"
if ! git diff --quiet HEAD -- module shipper 2>/dev/null; then COMMIT="$COMMIT (module/ or shipper/ with uncommitted changes)"; fi
python3 "$ROOT/bench/report.py" shipper --results "$RESULTS" --doc "$DOC" \
  --command "$COMMAND_LINE" --commit "$COMMIT"
echo "bench-shipper.sh: wrote $DOC" >&2
