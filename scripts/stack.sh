# Sourced by demo.sh and stop.sh: the local dev stack (redis-server + tally, PostgreSQL 15,
# the tansu Kafka-protocol broker, tally-shipper), all on 127.0.0.1, data under $TALLY_HOME.
# Ports are fixed so a person can poke the running system; override them with env vars.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TALLY_HOME="${TALLY_HOME:-$ROOT/.tally}"
REDIS_PORT="${TALLY_REDIS_PORT:-6390}"
PG_PORT="${TALLY_PG_PORT:-5440}"
KAFKA_PORT="${TALLY_KAFKA_PORT:-9093}"
METRICS_PORT="${TALLY_METRICS_PORT:-9187}"
# PostgreSQL runs as the postgres user, which may not be able to enter $ROOT (e.g. /root).
PG_HOME="${TALLY_PG_HOME:-/var/tmp/tally-demo-pg}"
PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"
BIN="$ROOT/target/release"
export PATH="$HOME/.cargo/bin:$PATH"

REDIS_URL="redis://127.0.0.1:$REDIS_PORT/"
DATABASE_URL="postgres://tally@127.0.0.1:$PG_PORT/tally"
KAFKA_BROKERS="127.0.0.1:$KAFKA_PORT"

say() { printf '\033[1m[tally]\033[0m %s\n' "$*"; }

# A pid on file that runs and is not a zombie (kill -0 succeeds on zombies).
alive() {
  [ -f "$1" ] || return 1
  local pid
  pid="$(cat "$1")"
  kill -0 "$pid" 2>/dev/null || return 1
  [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != "Z" ]
}

wait_port() { # port seconds
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_redis() {
  mkdir -p "$TALLY_HOME/redis"
  if alive "$TALLY_HOME/redis.pid"; then say "redis-server already running on $REDIS_PORT"; return; fi
  port_busy "$REDIS_PORT" && { echo "port $REDIS_PORT is taken (set TALLY_REDIS_PORT)" >&2; exit 1; }
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$TALLY_HOME/redis" \
    --appendonly yes --appendfsync everysec --maxclients 4000 \
    --daemonize yes --pidfile "$TALLY_HOME/redis.pid" --logfile "$TALLY_HOME/redis.log" \
    --loadmodule "$BIN/libtally.so"
  wait_port "$REDIS_PORT" 20 || { tail -20 "$TALLY_HOME/redis.log"; exit 1; }
  # The port opens before the AOF is loaded: wait for PONG (not LOADING).
  for _ in $(seq 1 600); do
    [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = "PONG" ] && break
    sleep 0.2
  done
  say "redis-server + tally on 127.0.0.1:$REDIS_PORT (AOF in $TALLY_HOME/redis)"
}

pg() { runuser -u postgres -- "$@"; }

start_postgres() {
  mkdir -p "$PG_HOME"
  chown postgres:postgres "$PG_HOME"
  if [ ! -f "$PG_HOME/data/PG_VERSION" ]; then
    pg "$PG_BIN/initdb" -D "$PG_HOME/data" -A trust -U postgres -E UTF8 >/dev/null
  fi
  if pg "$PG_BIN/pg_ctl" -D "$PG_HOME/data" status >/dev/null 2>&1; then
    say "PostgreSQL already running on $PG_PORT"
  else
    port_busy "$PG_PORT" && { echo "port $PG_PORT is taken (set TALLY_PG_PORT)" >&2; exit 1; }
    pg "$PG_BIN/pg_ctl" -D "$PG_HOME/data" -l "$PG_HOME/pg.log" -w -t 60 \
      -o "-p $PG_PORT -k $PG_HOME -c listen_addresses=127.0.0.1" start >/dev/null
    say "PostgreSQL 15 on 127.0.0.1:$PG_PORT (data in $PG_HOME/data)"
  fi
  pg psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -tAc "SELECT 1 FROM pg_roles WHERE rolname='tally'" | grep -q 1 ||
    pg psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "CREATE ROLE tally LOGIN"
  pg psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='tally'" | grep -q 1 ||
    pg psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "CREATE DATABASE tally OWNER tally"
}

start_kafka() {
  mkdir -p "$TALLY_HOME/kafka"
  if alive "$TALLY_HOME/kafka.pid"; then say "tansu already running on $KAFKA_PORT"; return; fi
  port_busy "$KAFKA_PORT" && { echo "port $KAFKA_PORT is taken (set TALLY_KAFKA_PORT)" >&2; exit 1; }
  # `$!` must be tansu itself (not a subshell around it) so stop.sh can signal it.
  (
    cd "$TALLY_HOME/kafka" || exit 1
    RUST_LOG=warn nohup tansu broker --storage-engine "sqlite://tansu.db" \
      --listener-url "tcp://127.0.0.1:$KAFKA_PORT" --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
      >>"$TALLY_HOME/kafka.log" 2>&1 &
    echo $! >"$TALLY_HOME/kafka.pid"
  )
  wait_port "$KAFKA_PORT" 30 || { tail -20 "$TALLY_HOME/kafka.log"; exit 1; }
  say "tansu (Kafka protocol) on 127.0.0.1:$KAFKA_PORT (durable sqlite storage in $TALLY_HOME/kafka)"
}

start_shipper() {
  if alive "$TALLY_HOME/shipper.pid"; then say "tally-shipper already running"; return; fi
  "$BIN/tally-shipper" migrate --database-url "$DATABASE_URL" >>"$TALLY_HOME/shipper.log" 2>&1
  nohup "$BIN/tally-shipper" run --redis-url "$REDIS_URL" --database-url "$DATABASE_URL" \
    --kafka-brokers "$KAFKA_BROKERS" --kafka-create-topic --consumer demo-1 \
    --metrics-addr "127.0.0.1:$METRICS_PORT" --progress-interval-ms 2000 \
    >>"$TALLY_HOME/shipper.log" 2>&1 &
  echo $! >"$TALLY_HOME/shipper.pid"
  say "tally-shipper run: stream -> Kafka topic tally.events -> Postgres (log: $TALLY_HOME/shipper.log, metrics: http://127.0.0.1:$METRICS_PORT/metrics)"
}

stop_all() {
  # tansu is a development broker whose storage grows with every run and slows down (its
  # group coordinator stopped answering after a few full-size runs here). When reconcile
  # proves every event is in Postgres, Kafka holds nothing that is not also persisted, so
  # its storage can be dropped at stop; otherwise it is kept.
  local kafka_drained=0
  if alive "$TALLY_HOME/shipper.pid" && [ -x "$BIN/tally-shipper" ] &&
     "$BIN/tally-shipper" reconcile --redis-url "$REDIS_URL" --database-url "$DATABASE_URL" --wait-ms 60000 >/dev/null 2>&1; then
    kafka_drained=1
  fi
  if alive "$TALLY_HOME/shipper.pid"; then
    kill -TERM "$(cat "$TALLY_HOME/shipper.pid")"
    for _ in $(seq 1 300); do alive "$TALLY_HOME/shipper.pid" || break; sleep 0.1; done
    say "tally-shipper stopped"
  fi
  if alive "$TALLY_HOME/kafka.pid"; then
    kill -TERM "$(cat "$TALLY_HOME/kafka.pid")"
    for _ in $(seq 1 100); do alive "$TALLY_HOME/kafka.pid" || break; sleep 0.1; done
    # tansu's sqlite storage is durable, so a broker that ignores SIGTERM can be killed.
    alive "$TALLY_HOME/kafka.pid" && kill -KILL "$(cat "$TALLY_HOME/kafka.pid")"
    say "tansu stopped"
  fi
  # A broker started by an older version of this script may not be the pid on file.
  pkill -KILL -f "tansu broker .*tcp://127.0.0.1:$KAFKA_PORT" 2>/dev/null || true
  if [ "$kafka_drained" = 1 ]; then
    rm -f "$TALLY_HOME"/kafka/tansu.db*
    say "every event is in Postgres (reconcile): dropped the development broker's storage"
  elif [ -f "$TALLY_HOME/kafka/tansu.db" ]; then
    say "kept the broker's storage: reconcile could not prove every event reached Postgres"
  fi
  if alive "$TALLY_HOME/redis.pid"; then redis-cli -p "$REDIS_PORT" shutdown >/dev/null 2>&1 || true; say "redis-server stopped"; fi
  if [ -f "$PG_HOME/data/PG_VERSION" ] && pg "$PG_BIN/pg_ctl" -D "$PG_HOME/data" status >/dev/null 2>&1; then
    pg "$PG_BIN/pg_ctl" -D "$PG_HOME/data" -m fast -w stop >/dev/null && say "PostgreSQL stopped"
  fi
  rm -f "$TALLY_HOME"/*.pid
}
