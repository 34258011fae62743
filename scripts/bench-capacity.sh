#!/usr/bin/env bash
# Capacity and growth (issue 27): the command rate tally sustains end to end with its history
# under a second behind, and what the history's size does to the drain rate and to the account
# statement query. Writes docs/bench-capacity.md and docs/bench-capacity.png.
#
#   scripts/bench-capacity.sh
#
# Builds (release) the module, tally-shipper and tally-bench; `tally-bench capacity` and
# `tally-bench growth` each start their own redis-server (the module, no AOF/RDB) and
# PostgreSQL 15 (as user postgres) on free 127.0.0.1 ports, with data in temp dirs
# (bench/src/shipper/capacity.rs, growth.rs), and write their figures as JSON;
# bench/report_capacity.py renders them (the chart with matplotlib from a venv this script
# creates when python3 has none). Needs root (runuser, chown), redis-server, redis-benchmark,
# python3 (with venv).
#
# Knobs (environment):
#   BENCH_CAPACITY_RUNS="capacity growth"  which runs ("capacity", "growth" or both)
#   CAPACITY_PATH=direct              direct, or kafka: through tansu (~/.cargo/bin/tansu, or TANSU_BIN;
#                                     scripts/setup.sh builds it) with forward and persist in one shipper
#   CAPACITY_RATES="2000 5000 8000 10000 12000 15000 20000"   target commands/s, one step each
#                                     (kafka: "100 200 400 800")
#   CAPACITY_STEP_SECONDS=60          length of each step
#   CAPACITY_CLIENTS=50               connections of the mixed workload
#   CAPACITY_WRITERS=                 --pg-writers of every shipper (empty: the shipper's default)
#   CAPACITY_SLACK_MIN=1000           bounded backlog: end <= start + max(SLACK_MIN,
#   CAPACITY_SLACK_SECONDS=1          SLACK_SECONDS x target rate)
#   CAPACITY_STOP_AFTER=2             stop after this many unbounded steps in a row
#   CAPACITY_ACHIEVED_MIN=0.95        a step passes only if it achieved this fraction of its target
#   CAPACITY_DRAIN_N=200000           backlog of the drain ceiling measured after the steps (kafka: 5000)
#   CAPACITY_DRAIN_TIMEOUT=300        seconds allowed for any drain
#   GROWTH_SIZES="1000000 10000000 20000000"   history sizes (events), after a first point on the
#                                     empty database (20M events take ~22 GB under /var/tmp)
#   GROWTH_ACCOUNTS=1000000           accounts of the synthetic history
#   GROWTH_BACKLOG=200000             backlog drained at each size
#   GROWTH_BACKLOG_ACCOUNTS=1000000   accounts that backlog is spread over
#   GROWTH_QUERIES=200                statement queries per point and class (hot, cold)
#   GROWTH_REDIS_ACCOUNTS="100000 1000000"   Redis used_memory per account at these counts ("" skips)
#   GROWTH_PG_SET=""                  Postgres settings for the growth run, "name=value ..." (ALTER
#                                     SYSTEM before the first point), e.g. "wal_compression=on"
#   BENCH_PG_CONF=""                  settings Postgres starts with (both runs), "name=value ...",
#                                     for those that need a restart, e.g. "shared_buffers=6GB"; with
#                                     "shared_preload_libraries=pg_stat_statements" each capacity step's
#                                     top statements go to pg_statements.txt (kept with BENCH_CAPACITY_KEEP)
#   BENCH_CAPACITY_DOC=docs/bench-capacity.md   (the chart goes next to it, .png)
#   BENCH_CAPACITY_KEEP=dir           keep logs and the results JSON in dir
#   BENCH_VENV=$BENCH_TARGET_DIR/bench-venv    venv for matplotlib
#   TALLY_MODULE=path  TALLY_SHIPPER=path  (either: build nothing)  PG_BIN=/usr/lib/postgresql/15/bin
#   MODULE_TARGET_DIR=target BENCH_TARGET_DIR=$CARGO_TARGET_DIR or target   (as bench-shipper.sh)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
COMMAND_LINE="scripts/bench-capacity.sh"
for v in BENCH_CAPACITY_RUNS CAPACITY_PATH CAPACITY_RATES CAPACITY_STEP_SECONDS CAPACITY_CLIENTS CAPACITY_WRITERS \
         CAPACITY_SLACK_MIN CAPACITY_SLACK_SECONDS CAPACITY_STOP_AFTER CAPACITY_DRAIN_N \
         CAPACITY_DRAIN_TIMEOUT GROWTH_SIZES GROWTH_ACCOUNTS GROWTH_BACKLOG GROWTH_BACKLOG_ACCOUNTS \
         GROWTH_QUERIES GROWTH_REDIS_ACCOUNTS GROWTH_PG_SET BENCH_PG_CONF CAPACITY_ACHIEVED_MIN BENCH_CAPACITY_DOC TALLY_MODULE TALLY_SHIPPER; do
  if [[ -n "${!v+x}" ]]; then COMMAND_LINE="$v=\"${!v}\" $COMMAND_LINE"; fi
done
RUNS="${BENCH_CAPACITY_RUNS:-capacity growth}"
DOC="${BENCH_CAPACITY_DOC:-docs/bench-capacity.md}"
CHART="${DOC%.md}.png"
MODULE_TARGET_DIR="${MODULE_TARGET_DIR:-$ROOT/target}"
BENCH_TARGET_DIR="${BENCH_TARGET_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}}"
VENV="${BENCH_VENV:-$BENCH_TARGET_DIR/bench-venv}"

for tool in redis-server redis-benchmark runuser cargo python3; do
  command -v "$tool" >/dev/null || { echo "bench-capacity.sh: $tool is required" >&2; exit 1; }
done

# ---- build
if [[ -z "${TALLY_MODULE:-}${TALLY_SHIPPER:-}" ]]; then
  echo "== building the module and tally-shipper (cargo build --release)" >&2
  CARGO_TARGET_DIR="$MODULE_TARGET_DIR" cargo build --release --locked -q -p tally
  CARGO_TARGET_DIR="$MODULE_TARGET_DIR" cargo build --release --locked -q -p tally-shipper --bins
fi
export TALLY_MODULE="${TALLY_MODULE:-$MODULE_TARGET_DIR/release/libtally.so}"
export TALLY_SHIPPER="${TALLY_SHIPPER:-$MODULE_TARGET_DIR/release/tally-shipper}"
echo "== building tally-bench" >&2
CARGO_TARGET_DIR="$BENCH_TARGET_DIR" cargo build --release --locked -q -p tally-bench

# ---- python for the report: matplotlib from a venv when python3 has none
PYTHON=python3
if ! python3 -c 'import matplotlib' 2>/dev/null; then
  if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import matplotlib' 2>/dev/null; then
    echo "== creating $VENV with matplotlib (pip)" >&2
    python3 -m venv "$VENV" && "$VENV/bin/pip" install --quiet matplotlib \
      || echo "bench-capacity.sh: no matplotlib; the report goes without its chart" >&2
  fi
  if [[ -x "$VENV/bin/python" ]]; then PYTHON="$VENV/bin/python"; fi
fi

# ---- run
if [[ -n "${BENCH_CAPACITY_KEEP:-}" ]]; then
  mkdir -p "$BENCH_CAPACITY_KEEP"
  OUT="$BENCH_CAPACITY_KEEP"
else
  OUT="$(mktemp -d /tmp/bench-capacity-results.XXXXXX)"
  trap 'rm -rf "$OUT"' EXIT
fi
REPORT_ARGS=()
for run in $RUNS; do
  case "$run" in
    capacity|growth) ;;
    *) echo "bench-capacity.sh: unknown run $run" >&2; exit 2 ;;
  esac
  echo "== tally-bench $run (load average: $(cut -d' ' -f1-3 /proc/loadavg))" >&2
  KEEP_ENV=()
  if [[ -n "${BENCH_CAPACITY_KEEP:-}" ]]; then KEEP_ENV=("BENCH_SHIPPER_KEEP=$BENCH_CAPACITY_KEEP/$run"); fi
  env "${KEEP_ENV[@]}" "$BENCH_TARGET_DIR/release/tally-bench" "$run" "$OUT/$run.json"
  REPORT_ARGS+=("--$run" "$OUT/$run.json")
done

# ---- report
COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo '?')"
if ! git diff --quiet HEAD -- module shipper bench 2>/dev/null; then
  COMMIT="$COMMIT (module/, shipper/ or bench/ with uncommitted changes)"
fi
"$PYTHON" "$ROOT/bench/report_capacity.py" "${REPORT_ARGS[@]}" --doc "$DOC" --chart "$CHART" \
  --command "$COMMAND_LINE" --commit "$COMMIT"
echo "bench-capacity.sh: wrote $DOC and $CHART" >&2
