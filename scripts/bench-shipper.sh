#!/usr/bin/env bash
# tally-shipper benchmarks: drain rate (direct and through Kafka), sustained freshness, memory.
#
#   scripts/bench-shipper.sh
#
# Starts its own redis-server (with target/release/libtally.so, no AOF/RDB), PostgreSQL 15 and
# tansu (Kafka protocol), all on free 127.0.0.1 ports with data in temp dirs, and stops them on
# exit. Builds (release) the module, tally-shipper and the plain-client Kafka ceiling
# (shipper/examples/kafka_ceiling.rs) if missing. Writes docs/bench-shipper.md.
#
# 1. Drain rate: pre-fill a backlog of N events (redis-benchmark -P 16 -c 50 ASSET.INCR on
#    10,000 random keys, tally.max-backlog 0), check XLEN == N, start `tally-shipper run`
#    with --batch-size B, time until SELECT count(*) FROM events == N (polled). Redis is
#    flushed and the Postgres tables truncated before each run. Same through Kafka.
# 2. Freshness: `tally-shipper run` (direct) running, bench/shipper/load.py sends ASSET.INCR
#    at a fixed rate (one connection, no pipelining) for S seconds and samples XLEN and the
#    group's pending / lag every second; then p50/p99/max of persisted_at - ts_ms per event.
# 3. Memory: used_memory and MEMORY USAGE tally:log with the backlog, and after the drain.
#
# Knobs (environment):
#   BENCH_SHIPPER_N=200000            backlog size, direct path
#   BENCH_SHIPPER_WRITERS="1 2 4"     --pg-writers values, direct path (the curve over writers)
#   BENCH_SHIPPER_BATCH=default       --batch-size of the direct drains ("default" = the shipper's)
#   BENCH_SHIPPER_KAFKA_N=5000        backlog size through Kafka (tansu; small, see docs/bench-shipper.md)
#   BENCH_SHIPPER_KAFKA_BATCHES="500" --batch-size values through Kafka ("" skips Kafka)
#   BENCH_SHIPPER_STAGES_N=5000       backlog for the Kafka stages vs plain-client ceiling
#   BENCH_SHIPPER_TANSU_STORAGE=sqlite   sqlite (durable, as scripts/stack.sh) or memory
#   BENCH_SHIPPER_DRAIN_TIMEOUT=180   seconds allowed per direct drain run (then reported as timed out,
#                                     with the rate of what was persisted by then)
#   BENCH_SHIPPER_KAFKA_TIMEOUT=120   the same for the Kafka runs
#   BENCH_SHIPPER_RATES="1000 4000"   steady load rates (ASSET.INCR/s) for the freshness runs
#   BENCH_SHIPPER_SECONDS=30          length of each freshness run
#   BENCH_SHIPPER_FRESH_BATCH=default --batch-size of the freshness runs
#   BENCH_SHIPPER_DOC=docs/bench-shipper.md
#   BENCH_SHIPPER_KEEP=dir            keep logs and raw samples in dir
#   TALLY_MODULE=path  TALLY_SHIPPER=path  PG_BIN=/usr/lib/postgresql/15/bin  TANSU_BIN=path
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
COMMAND_LINE="scripts/bench-shipper.sh"
for v in BENCH_SHIPPER_N BENCH_SHIPPER_WRITERS BENCH_SHIPPER_BATCH BENCH_SHIPPER_KAFKA_N BENCH_SHIPPER_KAFKA_BATCHES BENCH_SHIPPER_STAGES_N \
         BENCH_SHIPPER_TANSU_STORAGE BENCH_SHIPPER_DRAIN_TIMEOUT BENCH_SHIPPER_KAFKA_TIMEOUT BENCH_SHIPPER_RATES \
         BENCH_SHIPPER_SECONDS BENCH_SHIPPER_FRESH_BATCH BENCH_SHIPPER_DOC TALLY_MODULE TALLY_SHIPPER; do
  if [[ -n "${!v+x}" ]]; then COMMAND_LINE="$v=\"${!v}\" $COMMAND_LINE"; fi
done

N="${BENCH_SHIPPER_N:-200000}"
WRITERS="${BENCH_SHIPPER_WRITERS-1 2 4}"
BATCH="${BENCH_SHIPPER_BATCH:-default}"
KAFKA_N="${BENCH_SHIPPER_KAFKA_N:-5000}"
KAFKA_BATCHES="${BENCH_SHIPPER_KAFKA_BATCHES-500}"
STAGES_N="${BENCH_SHIPPER_STAGES_N:-5000}"
TANSU_STORAGE="${BENCH_SHIPPER_TANSU_STORAGE:-sqlite}"
DRAIN_TIMEOUT="${BENCH_SHIPPER_DRAIN_TIMEOUT:-180}"
KAFKA_TIMEOUT="${BENCH_SHIPPER_KAFKA_TIMEOUT:-120}"
RATES="${BENCH_SHIPPER_RATES-1000 4000}"
SECONDS_RUN="${BENCH_SHIPPER_SECONDS:-30}"
FRESH_BATCH="${BENCH_SHIPPER_FRESH_BATCH:-default}"
DOC="${BENCH_SHIPPER_DOC:-docs/bench-shipper.md}"
MODULE="${TALLY_MODULE:-$ROOT/target/release/libtally.so}"
SHIPPER="${TALLY_SHIPPER:-$ROOT/target/release/tally-shipper}"
CEILING_BIN="${TALLY_KAFKA_CEILING:-$ROOT/target/release/examples/kafka_ceiling}"
PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"
TANSU="${TANSU_BIN:-$HOME/.cargo/bin/tansu}"

for tool in redis-server redis-cli redis-benchmark python3 runuser; do
  command -v "$tool" >/dev/null || { echo "bench-shipper.sh: $tool is required" >&2; exit 1; }
done
if [[ -z "${TALLY_MODULE:-}${TALLY_SHIPPER:-}${TALLY_KAFKA_CEILING:-}" ]]; then
  (cd "$ROOT" && cargo build --release --locked -q -p tally && cargo build --release --locked -q -p tally-shipper --bins --examples)
fi
[[ -f "$MODULE" ]] || { echo "bench-shipper.sh: $MODULE missing (cargo build --release -p tally)" >&2; exit 1; }
[[ -x "$SHIPPER" ]] || { echo "bench-shipper.sh: $SHIPPER missing (cargo build --release -p tally-shipper)" >&2; exit 1; }
[[ -x "$PG_BIN/postgres" ]] || { echo "bench-shipper.sh: PostgreSQL binaries not in $PG_BIN" >&2; exit 1; }
if [[ -n "$KAFKA_BATCHES" && ! -x "$TANSU" ]]; then
  echo "bench-shipper.sh: tansu not found at $TANSU; skipping the Kafka runs" >&2; KAFKA_BATCHES=""
fi

say() { printf '[bench-shipper %s] %s\n' "$(date +%T)" "$*" >&2; }
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_port() { # port seconds
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}
now_s() { date +%s.%N; }

# ---- temp dirs, ports, cleanup
WORK="$(mktemp -d /tmp/bench-shipper.XXXXXX)"
PG_HOME="$(mktemp -d /var/tmp/bench-shipper-pg.XXXXXX)"   # the postgres user must be able to enter it
chown postgres:postgres "$PG_HOME"
REDIS_PORT="$(free_port)"; PG_PORT="$(free_port)"; KAFKA_PORT="$(free_port)"; METRICS_PORT="$(free_port)"
REDIS_PID=""; TANSU_PID=""; SHIPPER_PID=""; PG_STARTED=0

pg() { runuser -u postgres -- "$@"; }

cleanup() {
  set +e
  if [[ -n "$SHIPPER_PID" ]] && kill -0 "$SHIPPER_PID" 2>/dev/null; then
    kill -TERM "$SHIPPER_PID"; for _ in $(seq 1 100); do kill -0 "$SHIPPER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SHIPPER_PID" 2>/dev/null
  fi
  if [[ -n "$TANSU_PID" ]] && kill -0 "$TANSU_PID" 2>/dev/null; then
    kill -TERM "$TANSU_PID"; for _ in $(seq 1 50); do kill -0 "$TANSU_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$TANSU_PID" 2>/dev/null
  fi
  if [[ -n "$REDIS_PID" ]] && kill -0 "$REDIS_PID" 2>/dev/null; then
    redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1
    for _ in $(seq 1 50); do kill -0 "$REDIS_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$REDIS_PID" 2>/dev/null
  fi
  if [[ "$PG_STARTED" == 1 ]]; then
    pg "$PG_BIN/pg_ctl" -D "$PG_HOME/data" -m immediate -w -t 30 stop >/dev/null 2>&1
  fi
  if [[ -n "${BENCH_SHIPPER_KEEP:-}" ]]; then
    mkdir -p "$BENCH_SHIPPER_KEEP" && cp -r "$WORK"/. "$BENCH_SHIPPER_KEEP"/ 2>/dev/null
    cp "$PG_HOME/pg.log" "$BENCH_SHIPPER_KEEP"/ 2>/dev/null
  fi
  rm -rf "$WORK" "$PG_HOME"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rcli() { redis-cli -p "$REDIS_PORT" "$@"; }
psqlq() { pg psql -h 127.0.0.1 -p "$PG_PORT" -U tally -d tally -tAqX -v ON_ERROR_STOP=1 -c "$1"; }

# ---- start redis-server + module
say "redis-server on $REDIS_PORT, PostgreSQL on $PG_PORT, tansu on $KAFKA_PORT (work dir $WORK)"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$WORK" --save '' --appendonly no \
  --maxclients 4000 --daemonize yes --pidfile "$WORK/redis.pid" --logfile "$WORK/redis.log" \
  --loadmodule "$MODULE"
wait_port "$REDIS_PORT" 20 || { tail -20 "$WORK/redis.log" >&2; exit 1; }
REDIS_PID="$(cat "$WORK/redis.pid")"
rcli CONFIG SET tally.max-backlog 0 >/dev/null

# ---- PostgreSQL 15 (defaults except the port/socket; fsync and synchronous_commit on)
pg "$PG_BIN/initdb" -D "$PG_HOME/data" -A trust -U postgres -E UTF8 >/dev/null
pg "$PG_BIN/pg_ctl" -D "$PG_HOME/data" -l "$PG_HOME/pg.log" -w -t 60 \
  -o "-p $PG_PORT -k $PG_HOME -c listen_addresses=127.0.0.1 -c track_commit_timestamp=on" start >/dev/null
PG_STARTED=1
pg psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "CREATE ROLE tally LOGIN"
pg psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "CREATE DATABASE tally OWNER tally"
DATABASE_URL="postgres://tally@127.0.0.1:$PG_PORT/tally"
"$SHIPPER" migrate --database-url "$DATABASE_URL" >"$WORK/migrate.log" 2>&1
TABLES="$(psqlq "SELECT string_agg(quote_ident(tablename), ', ') FROM pg_tables WHERE schemaname='public' AND tablename NOT LIKE '\_sqlx%'")"

# ---- tansu
if [[ -n "$KAFKA_BATCHES" ]]; then
  mkdir -p "$WORK/kafka"
  case "$TANSU_STORAGE" in
    sqlite) STORAGE_URL="sqlite://tansu.db" ;;
    memory) STORAGE_URL="memory://tansu/" ;;
    *) STORAGE_URL="$TANSU_STORAGE" ;;
  esac
  (cd "$WORK/kafka" && RUST_LOG=warn exec "$TANSU" broker --storage-engine "$STORAGE_URL" \
    --listener-url "tcp://127.0.0.1:$KAFKA_PORT" --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    >"$WORK/tansu.log" 2>&1) &
  TANSU_PID=$!
  wait_port "$KAFKA_PORT" 30 || { tail -20 "$WORK/tansu.log" >&2; exit 1; }
fi

# ---- helpers
reset_state() {
  rcli FLUSHALL >/dev/null
  rcli MEMORY PURGE >/dev/null 2>&1 || true
  psqlq "TRUNCATE $TABLES" >/dev/null
  psqlq "VACUUM ANALYZE" >/dev/null 2>&1 || true
}
info_field() { rcli INFO memory | tr -d '\r' | awk -F: -v k="$1" '$1==k{print $2}'; }
xlen() { rcli XLEN tally:log | tr -d '\r'; }
stream_mem() { local m; m="$(rcli MEMORY USAGE tally:log SAMPLES 0 | tr -d '\r')"; echo "${m:-0}"; }
pg_count() { psqlq "SELECT count(*) FROM events"; }

start_shipper() { # name batch [kafka topic] [writers]
  local name="$1" batch="$2" topic="${3:-}" writers="${4:-}"
  local args=(run --redis-url "redis://127.0.0.1:$REDIS_PORT/" --database-url "$DATABASE_URL"
    --consumer "bench-$name" --metrics-addr "127.0.0.1:$METRICS_PORT" --progress-interval-ms 5000)
  [[ "$batch" == default ]] || args+=(--batch-size "$batch")
  [[ -z "$writers" ]] || args+=(--pg-writers "$writers")
  if [[ -n "$topic" ]]; then
    args+=(--kafka-brokers "127.0.0.1:$KAFKA_PORT" --kafka-topic "$topic" --kafka-create-topic
      --kafka-group "persist-$name")
  fi
  TALLY_LOG=info "$SHIPPER" "${args[@]}" >"$WORK/shipper-$name.log" 2>&1 &
  SHIPPER_PID=$!
}
stop_shipper() {
  [[ -n "$SHIPPER_PID" ]] || return 0
  kill -TERM "$SHIPPER_PID" 2>/dev/null || true
  local i
  for ((i = 0; i < 400; i++)); do kill -0 "$SHIPPER_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$SHIPPER_PID" 2>/dev/null || true
  wait "$SHIPPER_PID" 2>/dev/null || true
  SHIPPER_PID=""
}

entries_added() { # entries ever appended to tally:log (0 without the stream); trimming does not lower it
  rcli XINFO STREAM tally:log 2>/dev/null | tr -d '\r' | awk '$0=="entries-added"{getline; print; f=1; exit} END{if(!f) print 0}'
}
fill() { # n -> prints seconds taken; fails unless the stream got exactly n more entries
  local n="$1" t0 t1 added0 added
  added0="$(entries_added)"
  t0="$(now_s)"
  # redis-benchmark overshoots -n when it is not a multiple of the pipeline depth: fill the
  # multiple of 16 pipelined, the remainder one command at a time.
  local bulk=$(( n / 16 * 16 )) rest=$(( n % 16 ))
  : >"$WORK/fill.out"
  if (( bulk > 0 )); then
    redis-benchmark -p "$REDIS_PORT" -P 16 -c 50 -n "$bulk" -r 10000 -q \
      ASSET.INCR acct:__rand_int__ gold 1 >>"$WORK/fill.out" 2>&1
  fi
  if (( rest > 0 )); then
    redis-benchmark -p "$REDIS_PORT" -P 1 -c 1 -n "$rest" -r 10000 -q \
      ASSET.INCR acct:__rand_int__ gold 1 >>"$WORK/fill.out" 2>&1
  fi
  t1="$(now_s)"
  added=$(( $(entries_added) - added0 ))
  if [[ "$added" != "$n" ]]; then
    say "fill: $added entries appended, not $n"; tail -5 "$WORK/fill.out" >&2; return 1
  fi
  python3 -c "print(f'{$t1-$t0:.2f}')"
}

fill_one_stream() { # n -> the same events as fill, written by one pipelined connection
  # (redis-cli --pipe, commands generated beforehand): for the timed forward stage, where a
  # second redis-benchmark process for the remainder would append the last events after a
  # process start that the stage would be timed for. Fails unless exactly n entries came.
  local n="$1" added0 added
  python3 -c '
import random, sys
words = lambda *w: b"*%d\r\n" % len(w) + b"".join(b"$%d\r\n%s\r\n" % (len(x), x) for x in w)
out = sys.stdout.buffer
for _ in range(int(sys.argv[1])):
    out.write(words(b"ASSET.INCR", b"acct:%012d" % random.randrange(10000), b"gold", b"1"))
' "$n" >"$WORK/fill.resp"
  added0="$(entries_added)"
  redis-cli -p "$REDIS_PORT" --pipe <"$WORK/fill.resp" >"$WORK/fill.out" 2>&1 || { tail -3 "$WORK/fill.out" >&2; return 1; }
  added=$(( $(entries_added) - added0 ))
  [[ "$added" == "$n" ]] || { say "fill: $added entries appended, not $n"; return 1; }
}

RESULTS="$WORK/drain.tsv"; : >"$RESULTS"
# columns: path batch n fill_s fill_rate used_before used_backlog stream_backlog drain_s rate status first_row_s stream_after used_after xlen_after
drain_run() { # path(direct|kafka) batch n [writers]
  local path="$1" batch="$2" n="$3" writers="${4:-}" name topic="" t0 t1 cnt status="ok" first="" elapsed
  name="$path-$batch-$n-w${writers:-d}"
  say "drain $path batch=$batch N=$n: fill"
  reset_state
  local used0 used1 smem0 fill_s
  used0="$(info_field used_memory)"
  fill_s="$(fill "$n")" || { echo -e "$path\t$batch\t$n\tfill-failed" >>"$RESULTS"; return 0; }
  used1="$(info_field used_memory)"
  smem0="$(stream_mem)"
  [[ "$path" == kafka ]] && topic="bench.$batch.$n.$RANDOM"
  say "drain $path batch=$batch N=$n: backlog filled in ${fill_s}s, shipping"
  t0="$(now_s)"
  start_shipper "$name" "$batch" "$topic" "$writers"
  local limit="$DRAIN_TIMEOUT"; [[ "$path" == kafka ]] && limit="$KAFKA_TIMEOUT"
  local deadline=$(( $(date +%s) + limit ))
  while :; do
    cnt="$(pg_count)"
    if [[ -z "$first" && "$cnt" -gt 0 ]]; then first="$(python3 -c "print(f'{$(now_s)-$t0:.2f}')")"; fi
    [[ "$cnt" -ge "$n" ]] && break
    if ! kill -0 "$SHIPPER_PID" 2>/dev/null; then status="shipper-exited"; break; fi
    if (( $(date +%s) >= deadline )); then status="timeout"; break; fi
    sleep 0.5
  done
  t1="$(now_s)"
  elapsed="$(python3 -c "print(f'{$t1-$t0:.2f}')")"
  # let XTRIM MINID (every 1 s) catch up, then measure what is left of the stream
  local i xl
  for ((i = 0; i < 20; i++)); do xl="$(xlen)"; [[ "$xl" -lt 1000 ]] && break; sleep 0.5; done
  local smem1 used2
  smem1="$(stream_mem)"; used2="$(info_field used_memory)"; xl="$(xlen)"
  stop_shipper
  psqlq "SELECT coalesce(round(avg(length(raw))), 0) FROM events" >"$WORK/raw_len"
  local rate
  rate="$(python3 -c "print(int($cnt/$elapsed))")"
  local fill_rate
  fill_rate="$(python3 -c "print(int($n/$fill_s))")"
  echo -e "$path\t$batch\t$n\t$fill_s\t$fill_rate\t$used0\t$used1\t$smem0\t$elapsed\t$rate\t$status\t$cnt\t${first:-}\t$smem1\t$used2\t$xl\t$(grep -c " WARN " "$WORK/shipper-$name.log" || true)\t$(grep -c "session timed out" "$WORK/shipper-$name.log" || true)\t${writers:-default}" >>"$RESULTS"
  say "drain $path batch=$batch N=$n: $cnt rows in ${elapsed}s = $rate ev/s ($status)"
}

LOAD_START="$(cut -d' ' -f1-3 /proc/loadavg)"
T_START="$(date +%s)"

for w in $WRITERS; do drain_run direct "$BATCH" "$N" "$w"; done
LOAD_AFTER_DIRECT="$(cut -d' ' -f1-3 /proc/loadavg)"

# ---- the server-side ceiling: N event-sized rows with a uuid primary key (time-ordered, as
# the module's UUIDv7 ids) inserted by one INSERT ... SELECT generate_series statement, on
# the same server in the same run
RAW_LEN="$(cat "$WORK/raw_len" 2>/dev/null || echo 300)"; [[ "$RAW_LEN" -gt 0 ]] || RAW_LEN=300
psqlq "DROP TABLE IF EXISTS bench_ceiling; CREATE TABLE bench_ceiling (event_id uuid PRIMARY KEY, type text NOT NULL, ts_ms bigint NOT NULL, raw text NOT NULL)" >/dev/null
psqlq "CHECKPOINT" >/dev/null 2>&1 || true
t0="$(now_s)"
psqlq "INSERT INTO bench_ceiling SELECT ('00000000-0000-7000-8000-' || lpad(to_hex(i), 12, '0'))::uuid, 'asset.incr', i, repeat('x', $RAW_LEN) FROM generate_series(1, $N) AS i" >/dev/null
t1="$(now_s)"
CEILING_RATE="$(python3 -c "print(int($N/($t1-$t0)))")"
psqlq "DROP TABLE bench_ceiling" >/dev/null
say "ceiling: $N rows of $RAW_LEN bytes in one INSERT ... SELECT: $CEILING_RATE rows/s"
for b in $KAFKA_BATCHES; do drain_run kafka "$b" "$KAFKA_N"; done

# ---- Kafka stages alone vs the broker's ceiling, same broker, same run: `forward` drains a
# backlog of STAGES_N events into a new topic (time until the group has nothing pending or
# unread), then `persist` alone moves that topic into Postgres (time until N rows); the
# ceiling is a plain librdkafka producer and consumer (shipper/examples/kafka_ceiling.rs)
# moving N messages of the same size through a new topic with as many partitions.
KSTAGES="$WORK/kstages.tsv"; : >"$KSTAGES"
stage_run() { # sub topic -> starts tally-shipper <sub> on the topic
  local sub="$1" topic="$2" args=()
  [[ "$sub" == forward ]] && args=(--redis-url "redis://127.0.0.1:$REDIS_PORT/" --consumer bench-stage)
  [[ "$sub" == persist ]] && args=(--database-url "$DATABASE_URL")
  TALLY_LOG="${BENCH_SHIPPER_STAGE_LOG:-info}" "$SHIPPER" "$sub" "${args[@]}" --metrics-addr "127.0.0.1:$METRICS_PORT" \
    --kafka-brokers "127.0.0.1:$KAFKA_PORT" --kafka-topic "$topic" --kafka-create-topic \
    --kafka-group "stage-$topic" --progress-interval-ms 100 >"$WORK/stage-$sub.log" 2>&1 &
  SHIPPER_PID=$!
}
STAGES_WARMUP=100 # events forward ships before its clock starts, as kafka_ceiling's WARMUP
# The shared part of the two Redis pollers below: one process, one connection, a RESP reader
# (a process per poll would take the CPU the stage being timed needs).
RESP_PY='
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
f = s.makefile("rb")
def reply():
    line = f.readline()
    kind, rest = line[:1], line[1:-2]
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [reply() for _ in range(n)]
    if kind == b"$":
        n = int(rest)
        return None if n < 0 else f.read(n + 2)[:-2].decode()
    if kind == b":":
        return int(rest)
    if kind == b"-":
        return None
    return rest.decode()
def cmd(*words):
    s.sendall(b"".join([b"*%d\r\n" % len(words)] + [b"$%d\r\n%s\r\n" % (len(w), w.encode()) for w in words]))
    return reply()
def group():
    for g in cmd("XINFO", "GROUPS", "tally:log") or []:
        d = dict(zip(g[::2], g[1::2]))
        if d.get("name") == "tally-shipper":
            return d
    return {}
'
wait_drained() { # seconds -> success once the shipper group has nothing pending or unread
  python3 -c "$RESP_PY"'
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    d = group()
    if d.get("pending") == 0 and d.get("lag") == 0:
        sys.exit(0)
    time.sleep(0.005)
sys.exit(1)
' "$REDIS_PORT" "$1"
}
time_forward() { # n seconds file -> once ready is written to file, times the next n entries:
  # from the first one's stream id (the time Redis appended it) to the poll (every 5 ms) that
  # sees the group's entries-read past them with nothing pending. Writes "<t_first> <t_done>"
  # (Unix seconds) to file, or exits 1 after the limit. The clock thus starts when the first
  # event exists, not when the harness starts redis-benchmark (process start and 50
  # connections take tens of ms, which a 5,000-event run at 10k+/s would count as forward's).
  python3 -c "$RESP_PY"'
n, limit, out = int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
info = cmd("XINFO", "STREAM", "tally:log") or []
d = dict(zip(info[::2], info[1::2]))
base_id, target = d.get("last-generated-id", "0-0"), d.get("entries-added", 0) + n
open(out, "w").write("ready\n")
first, end = None, time.monotonic() + limit
while time.monotonic() < end:
    if first is None:
        e = cmd("XRANGE", "tally:log", "(" + base_id, "+", "COUNT", "1")
        if e:
            first = int(e[0][0].split("-")[0]) / 1000
    g = group()
    if first is not None and (g.get("entries-read") or 0) >= target and g.get("pending") == 0:
        open(out, "w").write(f"{first} {time.time()}\n")
        sys.exit(0)
    time.sleep(0.005)
sys.exit(1)
' "$REDIS_PORT" "$1" "$2" "$3"
}
forwarded() { # tally_events_forwarded_total of the running shipper (0 while /metrics does not answer)
  python3 - "$METRICS_PORT" <<'PY'
import sys, urllib.request
try:
    body = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=2).read().decode()
    print(next((int(float(l.split()[1])) for l in body.splitlines() if l.startswith("tally_events_forwarded_total ")), 0))
except Exception:
    print(0)
PY
}
if [[ -n "$KAFKA_BATCHES" && -x "$CEILING_BIN" ]]; then
  reset_state
  fill "$STAGES_WARMUP" >/dev/null
  topic="bench.stages.$RANDOM"
  # Each stage is timed warm, as the plain clients are: forward first ships STAGES_WARMUP
  # events (its idempotent producer id, connections and topic metadata are in place after
  # them; on tansu that start-up alone takes 0.5-1 s), then the clock runs from the moment
  # Redis appended the first of N more events (its stream id) until the group has read them
  # all with nothing pending (time_forward); persist is timed
  # from its first committed row. A stage rate = events moved in that time / the time.
  stage_run forward "$topic"; fstatus=ok; deadline=$(( $(date +%s) + KAFKA_TIMEOUT ))
  until wait_drained 1 && (( $(forwarded) >= STAGES_WARMUP )); do
    kill -0 "$SHIPPER_PID" 2>/dev/null || { fstatus=exited; break; }
    (( $(date +%s) >= deadline )) && { fstatus=timeout; break; }
  done
  left0="$STAGES_N"; left="$STAGES_N"; fwd_s=0; times="$WORK/forward.times"; : >"$times"
  if [[ "$fstatus" == ok ]]; then
    time_forward "$STAGES_N" "$KAFKA_TIMEOUT" "$times" & timer=$!
    until [[ -s "$times" ]] || ! kill -0 "$timer" 2>/dev/null; do sleep 0.01; done
    fill_one_stream "$STAGES_N" || fstatus=fill-failed
    if wait "$timer"; then
      left=0; fwd_s="$(awk '{printf "%.3f", $2 - $1}' "$times")"
    else
      [[ "$fstatus" == ok ]] && fstatus=timeout
    fi
  fi
  stop_shipper
  fwd_n=$(( ${left0:-0} - left ))
  # persist is timed by Postgres's own clock: events.persisted_at is the start time of the
  # transaction that stored the row, so (rows of every transaction but the last) / (last
  # start - first start) is the stage's rate, free of the polls (a psql process every few
  # hundred ms, only to see when it is done) and of the time to the first message.
  stage_run persist "$topic"; pstatus=ok
  deadline=$(( $(date +%s) + KAFKA_TIMEOUT ))
  until [[ "$(pg_count)" -ge $(( STAGES_N + STAGES_WARMUP )) ]]; do
    kill -0 "$SHIPPER_PID" 2>/dev/null || { pstatus=exited; break; }
    (( $(date +%s) >= deadline )) && { pstatus=timeout; break; }
    sleep 0.25
  done
  stop_shipper
  read -r per_n per_s <<<"$(psqlq "SELECT count(*) FILTER (WHERE e.persisted_at < m.last), round(extract(epoch FROM m.last - m.first), 3) FROM events e, (SELECT min(persisted_at) AS first, max(persisted_at) AS last FROM events) m GROUP BY m.first, m.last" | tr '|' ' ')"
  [[ -n "${per_n:-}" ]] || { per_n=0; per_s=0; }
  RAW_K="$(psqlq "SELECT coalesce(round(avg(length(raw))), 300) FROM events")"
  if ceil="$("$CEILING_BIN" "127.0.0.1:$KAFKA_PORT" "bench.ceiling.$RANDOM" "$STAGES_N" "$RAW_K" 3 2>"$WORK/ceiling.err")"; then
    read -r prod_s cons_s prod_h_s cons_h_s <<<"$ceil"
    echo -e "$STAGES_N\t$RAW_K\t$fwd_s\t$fstatus\t$per_s\t$pstatus\t$per_n\t$prod_s\t$cons_s\t$fwd_n\t$prod_h_s\t$cons_h_s" >>"$KSTAGES"
    say "kafka stages: forward ${fwd_s}s ($fstatus), persist ${per_s}s ($pstatus); plain producer/consumer, then with headers producer/consumer: $ceil s"
  else
    say "kafka ceiling failed: $(tail -3 "$WORK/ceiling.err")"
  fi
fi
LOAD_AFTER_KAFKA="$(cut -d' ' -f1-3 /proc/loadavg)"

# ---- sustained freshness
FRESH="$WORK/fresh.tsv"; : >"$FRESH"
for r in $RATES; do
  say "freshness: $r ASSET.INCR/s for ${SECONDS_RUN}s, direct shipper batch=$FRESH_BATCH"
  reset_state
  start_shipper "fresh-$r" "$FRESH_BATCH"
  for ((i = 0; i < 100; i++)); do
    (exec 3<>"/dev/tcp/127.0.0.1/$METRICS_PORT") 2>/dev/null && break; sleep 0.1
  done
  sleep 1
  python3 "$ROOT/bench/shipper/load.py" "$REDIS_PORT" "$r" "$SECONDS_RUN" "$WORK/load-$r.json"
  sent="$(python3 -c "import json;print(json.load(open('$WORK/load-$r.json'))['sent'])")"
  errs="$(python3 -c "import json;print(json.load(open('$WORK/load-$r.json'))['errors'])")"
  expect=$((sent - errs))
  for ((i = 0; i < 120; i++)); do [[ "$(pg_count)" -ge "$expect" ]] && break; sleep 0.5; done
  stop_shipper
  stats="$(psqlq "SELECT count(*), round(percentile_cont(0.5) WITHIN GROUP (ORDER BY f)::numeric,1), round(percentile_cont(0.99) WITHIN GROUP (ORDER BY f)::numeric,1), round(max(f)::numeric,1), round(avg(f)::numeric,1) FROM (SELECT extract(epoch FROM pg_xact_commit_timestamp(xmin))*1000 - ts_ms AS f FROM events) s" | tr '|' '\t')"
  echo -e "$r\t$WORK/load-$r.json\t$expect\t$stats" >>"$FRESH"
  say "freshness $r/s: $(echo "$stats" | tr '\t' ' ')"
done
LOAD_END="$(cut -d' ' -f1-3 /proc/loadavg)"
T_END="$(date +%s)"

# ---- report
export RESULTS FRESH DOC COMMAND_LINE LOAD_START LOAD_AFTER_DIRECT LOAD_AFTER_KAFKA LOAD_END \
  KAFKA_TIMEOUT T_START T_END TANSU_STORAGE SECONDS_RUN FRESH_BATCH MODULE SHIPPER TANSU DRAIN_TIMEOUT N KAFKA_N \
  CEILING_RATE RAW_LEN KSTAGES
export REDIS_VER="$(redis-server --version)"
export PG_VER="$("$PG_BIN/postgres" --version)"
export TANSU_VER="$([[ -x "$TANSU" ]] && "$TANSU" --version 2>/dev/null || echo n/a)"
export CPU_MODEL="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
export NPROC="$(nproc)"
export GIT_REV="$(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- module shipper 2>/dev/null || echo ' (module/ or shipper/ with uncommitted changes)')"
export MODULE_SHA="$(sha256sum "$MODULE" | cut -c1-12)  $(date -r "$MODULE" '+%F %T')"
export SHIPPER_SHA="$(sha256sum "$SHIPPER" | cut -c1-12)  $(date -r "$SHIPPER" '+%F %T')"
export PG_SETTINGS="$(psqlq "SELECT string_agg(name||'='||setting, ', ' ORDER BY name) FROM pg_settings WHERE name IN ('fsync','synchronous_commit','shared_buffers','wal_level','max_wal_size')")"
python3 - <<'PY'
import json, os, datetime
E = os.environ
def mib(b): return f"{int(b)/1048576:.1f} MiB"
rows = [l.rstrip("\n").split("\t") for l in open(E["RESULTS"]) if l.strip()]
fresh = [l.rstrip("\n").split("\t") for l in open(E["FRESH"]) if l.strip()]
out = []
w = out.append
w("# tally-shipper benchmarks")
w("")
w("Written by `scripts/bench-shipper.sh` (unedited output). Numbers are from one run on a shared")
w("2-core machine where other work may have been running: read them with the load averages")
w("below, and compare the ratios measured in the same run rather than absolute rates across runs.")
w("")
w("## Machine and run")
w("")
w(f"- date: {datetime.datetime.fromtimestamp(int(E['T_START'])).strftime('%Y-%m-%d %H:%M:%S %Z').strip()}, "
  f"wall time of the whole script: {int(E['T_END'])-int(E['T_START'])} s")
w(f"- command: `{E['COMMAND_LINE']}`")
w(f"- nproc: {E['NPROC']}, CPU: {E['CPU_MODEL']}")
w(f"- load average (1/5/15 min): start {E['LOAD_START']}; after the direct drains {E['LOAD_AFTER_DIRECT']}; "
  f"after the Kafka drains {E['LOAD_AFTER_KAFKA']}; end {E['LOAD_END']}")
w(f"- {E['REDIS_VER']}")
w(f"- {E['PG_VER']} (initdb defaults: {E['PG_SETTINGS']})")
w(f"- tansu: {E['TANSU_VER']}, storage `{E['TANSU_STORAGE']}`")
w(f"- git: {E['GIT_REV']}; libtally.so sha256 {E['MODULE_SHA']}; tally-shipper sha256 {E['SHIPPER_SHA']}")
w("- everything on 127.0.0.1: redis-server (no AOF/RDB, `tally.max-backlog 0`), PostgreSQL, tansu and")
w("  tally-shipper share the 2 cores with the load generator.")
w("")
w("## 1. Drain rate (backlog -> Postgres)")
w("")
w("Backlog pre-filled with `redis-benchmark -P 16 -c 50 -n N -r 10000 ASSET.INCR acct:__rand_int__ gold 1`")
w("(XLEN checked == N), then `tally-shipper run --pg-writers W` (batch size B, `default` = the")
w("shipper's default; other settings default) started; time = from starting the shipper process until")
w("`SELECT count(*) FROM events` (polled every 0.5 s) reached N, so it includes shipper start-up")
w("(and, through Kafka, topic creation). Redis flushed and all tables")
w(f"truncated before each run; time limit {E['DRAIN_TIMEOUT']} s per direct run, {E['KAFKA_TIMEOUT']} s per Kafka run (a timed-out")
w("run reports the rows persisted by then divided by the time). WARN = WARN lines in the shipper log.")
w("")
ceiling = int(E["CEILING_RATE"])
w(f"Server-side ceiling, same server, same run: {int(E['N']):,} rows of {E['RAW_LEN']} bytes (the mean event")
w(f"size of the last drain) with a time-ordered uuid primary key, inserted by one")
w(f"`INSERT ... SELECT ... FROM generate_series` statement: **{ceiling:,} rows/s**. The ratio column is")
w("the drain rate over that ceiling (what share of the database's raw insert speed the whole")
w("pipeline reaches, with its history, derived tables and acknowledgements).")
w("")
w("| path | writers | batch size | N | fill time (s) | fill rate (ev/s) | drain time (s) | drain rate (ev/s) | ratio to ceiling | first row after (s) | status | WARN |")
w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
for r in rows:
    if len(r) < 16:
        w(f"| {r[0]} | | {r[1]} | {int(r[2]):,} | | | | | | | {r[3]} | |"); continue
    path, b, n, fs, fr, u0, u1, sm0, ds, rate, st, cnt, first, sm1, u2, xl, nwarn, nsess, writers = r[:19]
    status = st if st == "ok" else f"{st} ({cnt} rows persisted)"
    ratio = f"{int(rate)/ceiling:.2f}" if ceiling and path == "direct" else ""
    w(f"| {path} | {writers if path == 'direct' else ''} | {b} | {int(n):,} | {fs} | {int(fr):,} | {ds} | **{int(rate):,}** | {ratio} | {first} | {status} | {nwarn} |")
kn = [r for r in rows if r[0] == "kafka"]
if kn:
    w("")
    w(f"Kafka runs use N = {int(E['KAFKA_N']):,} (BENCH_SHIPPER_KAFKA_N), not the direct path's "
      f"{int(E['N']):,}: the path goes through a single tansu broker (storage `{E['TANSU_STORAGE']}`) on the same")
    w("2 cores, which moves a few hundred to a few thousand messages/s; the rate is what was measured")
    w("at this N; nothing is extrapolated. Section 1b compares each Kafka stage with the broker's own ceiling.")
ks = [l.rstrip("\n").split("\t") for l in open(E["KSTAGES"]) if l.strip()]
if ks:
    n, size, fwd_s, fst, per_s, pst, per_n, prod_s, cons_s, fwd_n, prod_h_s, cons_h_s = ks[0]
    n = int(n)
    def r(s, k=n): return int(k) / float(s) if float(s) > 0 else 0
    w("")
    w("### 1b. Kafka stages vs the broker's ceiling (same broker, same run)")
    w("")
    w(f"`forward` drains {n:,} events into a new topic; then `persist` alone moves that topic into Postgres.")
    w("Both are timed warm, as the plain clients are: `forward` first ships 100 events (its idempotent")
    w("producer id, connections and the topic's metadata are then in place; on tansu that start-up alone")
    w(f"takes 0.5-1 s, which timed into a {n:,}-event run would measure the start-up, not the rate), then")
    w(f"the clock runs from the moment Redis appended the first of the {n:,} events (the time in its stream")
    w("id) until a poll every 5 ms sees the group past all of them with nothing pending (acknowledged after")
    w("every delivery report); the harness's start of redis-benchmark is not counted. `persist` is timed by")
    w("Postgres: the rows of every transaction but the last, over the time from the first transaction's start")
    w("to the last one's (`events.persisted_at`). The ceiling (`shipper/examples/kafka_ceiling.rs`), also")
    w("warm (100 messages first): a plain librdkafka producer (idempotent, acks=all, linger 5 ms, 10,000")
    w(f"outstanding) sends {n:,} messages of {size} bytes to a new 3-partition topic, without headers and,")
    w("into another topic, with the two headers `forward` sets (`tally_source`, `event_id`); a plain")
    w("consumer assigned to every partition reads each topic back. `persist` reads messages with those")
    w("headers, and also writes Postgres; the plain consumer does not.")
    w("")
    w("| stage | tally (ev/s) | status | plain client (msg/s) | ratio |")
    w("|---|---:|---|---:|---:|")
    fw, pe, pc, cc, ph, ch = r(fwd_s, fwd_n), r(per_s, per_n), r(prod_s), r(cons_s), r(prod_h_s), r(cons_h_s)
    w(f"| forward (stream -> Kafka) | {fw:,.0f} | {fst} | {pc:,.0f} (producer, no headers) | **{fw/pc if pc else 0:.2f}** |")
    w(f"| forward (stream -> Kafka) | {fw:,.0f} | {fst} | {ph:,.0f} (producer, forward's 2 headers) | **{fw/ph if ph else 0:.2f}** |")
    w(f"| persist (Kafka -> Postgres) | {pe:,.0f} | {pst} | {cc:,.0f} (consumer, no headers) | **{pe/cc if cc else 0:.2f}** |")
    w(f"| persist (Kafka -> Postgres) | {pe:,.0f} | {pst} | {ch:,.0f} (consumer, forward's 2 headers) | **{pe/ch if ch else 0:.2f}** |")
w("")
w("## 2. Memory (Redis)")
w("")
w("`used_memory` after FLUSHALL, with the backlog of N unshipped events, and after the drain (the")
w("shipper XTRIMs acknowledged entries with MINID every second); `MEMORY USAGE tally:log SAMPLES 0`.")
w("The used_memory delta also contains the 10,000 `acct:*` hashes and the module's `tally:seq` hash;")
w("the stream column is the stream alone.")
w("")
w("| path | batch | N | used_memory empty | with backlog | delta per event | stream with backlog | stream per event | stream after drain (XLEN) | used_memory after drain |")
w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in rows:
    if len(r) < 16: continue
    path, b, n, fs, fr, u0, u1, sm0, ds, rate, st, cnt, first, sm1, u2, xl = r[:16]
    n_ = int(n)
    w(f"| {path} | {b} | {n_:,} | {mib(u0)} | {mib(u1)} | {(int(u1)-int(u0))/n_:.0f} B | {mib(sm0)} | "
      f"{int(sm0)/n_:.0f} B | {int(sm1):,} B ({int(xl):,}) | {mib(u2)} |")
w("")
w("## 3. Sustained freshness (direct path)")
w("")
w(f"`tally-shipper run --batch-size {E['FRESH_BATCH']}` running; `bench/shipper/load.py` sends `ASSET.INCR acct:<i%10000> gold 1`")
w(f"at a fixed rate on one connection without pipelining for {E['SECONDS_RUN']} s and samples the stream every")
w("second (XLEN; `pending` = read, not yet acked and `lag` = not yet read, from XINFO GROUPS).")
w("Freshness per event = commit time of the transaction that stored it (`pg_xact_commit_timestamp(xmin)`,")
w("with `track_commit_timestamp = on`) - `ts_ms` (module server time), in ms, over all events of the run:")
w("from the change in Redis to the history row being visible, commit included.")
w("")
w("| target rate (ev/s) | achieved rate | events | p50 (ms) | p99 (ms) | max (ms) | mean (ms) | XLEN max / last | pending max | lag (unread) max | bounded? |")
w("|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|")
series = []
for f in fresh:
    rate, path, expect, cnt, p50, p99, mx, mean = f
    L = json.load(open(path))
    s = L["samples"]
    xl = [x["xlen"] for x in s if isinstance(x["xlen"], int)]
    pe = [x["pending"] for x in s if isinstance(x["pending"], int)]
    lg = [x["lag"] for x in s if isinstance(x["lag"], int)]
    # bounded: the second half of the load window does not trend above the first half
    dur = L["seconds"]
    first = [x["xlen"] for x in s if x["t"] < dur/2]
    second = [x["xlen"] for x in s if dur/2 <= x["t"] <= dur]
    bounded = "n/a"
    if first and second:
        bounded = "yes" if max(second) <= 2*max(first) + 2*float(rate) else "no (growing)"
    ok = "" if int(cnt) == int(expect) else f" ({cnt}/{expect} persisted)"
    w(f"| {int(float(rate)):,} | {L['achieved_rate']:,.0f} | {int(cnt):,}{ok} | {p50} | {p99} | {mx} | {mean} | "
      f"{max(xl) if xl else '-'} / {xl[-1] if xl else '-'} | {max(pe) if pe else '-'} | {max(lg) if lg else '-'} | {bounded} |")
    series.append((rate, s))
w("")
w("bounded? = yes when the largest XLEN sampled in the second half of the load window is at most")
w("twice the largest of the first half plus two seconds of load (i.e. the backlog did not keep growing).")
w("XLEN includes entries already acked but not yet trimmed (XTRIM MINID runs every second).")
w("")
w("Per-second samples (t = seconds since the load started; the load stops at the end of the window")
w("and the last samples show the tail):")
for rate, s in series:
    w("")
    w(f"- {int(float(rate)):,} ev/s, XLEN: " + " ".join(str(x["xlen"]) for x in s))
    w(f"  pending: " + " ".join(str(x["pending"]) for x in s))
w("")
open(E["DOC"], "w").write("\n".join(out))
print("\n".join(out))
PY
say "wrote $DOC"
