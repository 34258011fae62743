#!/usr/bin/env bash
# tally benchmark suite: one command, one redis-server, ratios from one run.
#
#   scripts/bench.sh
#
# Starts its own redis-server (loopback, free port, no AOF, no RDB) with the module, runs
# every workload on it (redis-benchmark where it fits, the Rust load generator `tally-bench`
# for MULTI/EXEC and the WATCH loop), the memory test, and (if valgrind is installed and
# BENCH_PROFILE is not 0) a callgrind profile of a fixed small workload on a second
# redis-server (with XADD alone and MULTI/EXEC HINCRBYFLOAT+XADD, for the native floor).
# HOLD+SETTLE rows (hold, lua_hold, hincr_pair) count one ASSET.HOLD and its ASSET.SETTLE
# (or the Lua pair, or two HINCRBYFLOATs) as one operation.
# Writes docs/bench.md and docs/bench-ratios.png and prints a Markdown table for the README.
#
# Knobs (environment):
#   BENCH_SECONDS=3          target length of each measured run (redis-benchmark runs are
#                            sized from a short probe run, which is also the warm-up)
#   BENCH_CLIENTS=50  BENCH_PIPELINE=16  BENCH_KEYS=10000  BENCH_USERS=100000000
#   BENCH_PROBE_REQUESTS=20000  BENCH_MEM_ACCOUNTS=100000
#   BENCH_PROFILE=1          0 skips the callgrind profile
#   BENCH_PROFILE_OPS=5000   commands per profiled workload
#   BENCH_ONLY=id,id         run only these workloads (ids: ping asset hincrbyfloat lua_asset
#                            multi watch asset_rust coupon lua_coupon usage lua_usage
#                            hold lua_hold hincr_pair); the callgrind profile runs them all,
#                            and asset_1m: ASSET.INCR over 1,000,000 accounts (profile only)
#   BENCH_DOC=docs/bench.md  BENCH_CHART=docs/bench-ratios.png
#   TALLY_MODULE=path        use this libtally.so instead of building it
#   MODULE_TARGET_DIR=target BENCH_TARGET_DIR=$CARGO_TARGET_DIR or target   (cargo target dirs)
#   BENCH_KEEP=dir           keep the raw results (results.json, callgrind files) in dir
#   CARGO_BUILD_JOBS         passed to cargo as usual
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
COMMAND_LINE="scripts/bench.sh"
for v in BENCH_SECONDS BENCH_CLIENTS BENCH_PIPELINE BENCH_KEYS BENCH_USERS BENCH_PROBE_REQUESTS \
         BENCH_MEM_ACCOUNTS BENCH_PROFILE BENCH_PROFILE_OPS BENCH_ONLY BENCH_TARGET_DIR TALLY_MODULE; do
  if [[ -n "${!v:-}" ]]; then COMMAND_LINE="$v=${!v} $COMMAND_LINE"; fi
done

BENCH_DOC="${BENCH_DOC:-docs/bench.md}"
BENCH_CHART="${BENCH_CHART:-docs/bench-ratios.png}"
MODULE_TARGET_DIR="${MODULE_TARGET_DIR:-$ROOT/target}"
BENCH_TARGET_DIR="${BENCH_TARGET_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}}"
BENCH_PROFILE="${BENCH_PROFILE:-1}"
export BENCH_PROFILE_OPS="${BENCH_PROFILE_OPS:-5000}"

need() { command -v "$1" >/dev/null 2>&1; }
for tool in redis-server redis-benchmark redis-cli cargo python3; do
  need "$tool" || { echo "bench.sh: $tool is required" >&2; exit 1; }
done

# ---- dependencies: matplotlib for the chart, valgrind for the profile
if ! python3 -c 'import matplotlib' 2>/dev/null; then
  echo "== installing matplotlib (pip)" >&2
  python3 -m pip install --quiet matplotlib
fi
if [[ "$BENCH_PROFILE" != 0 ]] && ! need valgrind; then
  echo "== installing valgrind (apt-get)" >&2
  if [[ $(id -u) == 0 ]]; then
    (apt-get update -qq && apt-get install -y -qq valgrind) >&2 || echo "could not install valgrind; profile skipped" >&2
  else
    echo "valgrind missing and not root; profile skipped" >&2
  fi
fi

# ---- build
if [[ -z "${TALLY_MODULE:-}" ]]; then
  echo "== building the module (cargo build --release -p tally)" >&2
  CARGO_TARGET_DIR="$MODULE_TARGET_DIR" cargo build --release -p tally >&2
  TALLY_MODULE="$MODULE_TARGET_DIR/release/libtally.so"
fi
echo "== building tally-bench" >&2
CARGO_TARGET_DIR="$BENCH_TARGET_DIR" cargo build --release -p tally-bench >&2
BENCH_BIN="$BENCH_TARGET_DIR/release/tally-bench"

WORK="$(mktemp -d /tmp/tally-bench.XXXXXX)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]:-}"; do
    if [[ -n "$pid" ]]; then kill "$pid" 2>/dev/null || true; fi
  done
  for pid in "${PIDS[@]:-}"; do
    if [[ -n "$pid" ]]; then wait "$pid" 2>/dev/null || true; fi
  done
  if [[ -n "${BENCH_KEEP:-}" ]]; then mkdir -p "$BENCH_KEEP" && cp -r "$WORK"/. "$BENCH_KEEP"/; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

start_redis() { # start_redis PORT DIR [wrapper...]
  local port=$1 dir=$2; shift 2
  mkdir -p "$dir"
  "$@" redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" \
    --protected-mode yes --loglevel warning --logfile "$dir/redis.log" \
    --loadmodule "$TALLY_MODULE" &
  PIDS+=($!)
  for _ in $(seq 1 600); do
    if redis-cli -h 127.0.0.1 -p "$port" PING 2>/dev/null | grep -q PONG; then return 0; fi
    sleep 0.1
  done
  echo "redis-server on $port did not start:" >&2; cat "$dir/redis.log" >&2 || true; exit 1
}

# ---- the measured run
PORT=$(free_port)
start_redis "$PORT" "$WORK/main"
redis-cli -p "$PORT" MODULE LIST | grep -q tally || { echo "module not loaded" >&2; exit 1; }
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
echo "== suite on 127.0.0.1:$PORT (load average $LOAD_BEFORE)" >&2
BENCH_PORT=$PORT BENCH_OUT="$WORK/results.json" "$BENCH_BIN" suite
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
REDIS_VERSION=$(redis-cli -p "$PORT" INFO server | awk -F: '/^redis_version/{print $2}' | tr -d '\r')
redis-cli -p "$PORT" SHUTDOWN NOSAVE >/dev/null 2>&1 || true

# ---- callgrind profile of a fixed small workload
PROFILE_DIR="$WORK/profile"
# callgrind's dumps in $PROFILE_DIR, oldest first
dumps() { find "$PROFILE_DIR" -maxdepth 1 -name 'callgrind.out.*' -printf '%T@ %p\n' | sort -n | cut -d' ' -f2-; }
if [[ "$BENCH_PROFILE" != 0 ]] && need valgrind && need callgrind_control; then
  mkdir -p "$PROFILE_DIR"
  PPORT=$(free_port)
  echo "== callgrind profile on 127.0.0.1:$PPORT ($BENCH_PROFILE_OPS commands per workload)" >&2
  start_redis "$PPORT" "$PROFILE_DIR" valgrind --tool=callgrind --collect-atstart=yes \
    --callgrind-out-file="$PROFILE_DIR/callgrind.out.%p" -q
  VPID=${PIDS[-1]}
  BENCH_PORT=$PPORT "$BENCH_BIN" profile-setup
  for w in ping hincrbyfloat asset asset_1m lua_asset coupon lua_coupon usage lua_usage xadd \
           multi hold lua_hold hincr_pair; do
    # Outside the counted part: the xadd/multi streams never hold more than one run's events.
    redis-cli -p "$PPORT" DEL bench:xa:log bench:mx:log >/dev/null
    callgrind_control -z "$VPID" >/dev/null
    BENCH_PORT=$PPORT "$BENCH_BIN" profile "$w"
    before=$(dumps | wc -l)
    callgrind_control --dump="$w" "$VPID" >/dev/null
    for _ in $(seq 1 300); do
      [[ $(dumps | wc -l) -gt $before ]] && break
      sleep 0.1
    done
    f=$(dumps | tail -1)
    mv "$f" "$PROFILE_DIR/$w.callgrind"
    callgrind_annotate --inclusive=yes --threshold=100 --auto=no "$PROFILE_DIR/$w.callgrind" > "$PROFILE_DIR/$w.inclusive.txt" 2>/dev/null || true
    callgrind_annotate --inclusive=no --threshold=100 --auto=no "$PROFILE_DIR/$w.callgrind" > "$PROFILE_DIR/$w.self.txt" 2>/dev/null || true
    callgrind_annotate --inclusive=yes --tree=calling --threshold=100 --auto=no "$PROFILE_DIR/$w.callgrind" > "$PROFILE_DIR/$w.tree.txt" 2>/dev/null || true
  done
  redis-cli -p "$PPORT" SHUTDOWN NOSAVE >/dev/null 2>&1 || true
  wait "$VPID" 2>/dev/null || true
fi

# ---- report
CPU_MODEL=$(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)
python3 "$ROOT/bench/report.py" \
  --results "$WORK/results.json" --profile-dir "$PROFILE_DIR" --profile-ops "$BENCH_PROFILE_OPS" \
  --doc "$BENCH_DOC" --chart "$BENCH_CHART" \
  --command "$COMMAND_LINE" --nproc "$(nproc)" --cpu "$CPU_MODEL" --redis "$REDIS_VERSION" \
  --date "$(date -u '+%Y-%m-%d %H:%M UTC')" --load "$LOAD_BEFORE -> $LOAD_AFTER" \
  --commit "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet HEAD -- module 2>/dev/null || echo '+dirty module/')"
