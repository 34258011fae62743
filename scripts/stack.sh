# shellcheck shell=bash
# Sourced by demo.sh and stop.sh: the local dev stack (redis-server + tally, PostgreSQL 15,
# the tansu Kafka-protocol broker, tally-shipper), all on 127.0.0.1, data under $TALLY_HOME.
# Ports are fixed so a person can poke the running system; override them with env vars.
# `demo.sh --cluster` runs a second stack beside it (use_cluster): a Redis Cluster of 3
# primaries + 3 replicas under $TALLY_HOME/cluster, its own shipper, Postgres database
# tally_cluster and Kafka topic tally.events.cluster, on the same Postgres and broker.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TALLY_HOME="${TALLY_HOME:-$ROOT/.tally}"
REDIS_PORT="${TALLY_REDIS_PORT:-6390}"
PG_PORT="${TALLY_PG_PORT:-5440}"
KAFKA_PORT="${TALLY_KAFKA_PORT:-9093}"
# PostgreSQL runs as the postgres user, which may not be able to enter $ROOT (e.g. /root), so
# its data lives under /var/tmp, in a directory made for this stack on its first start and
# recorded in $TALLY_HOME/pg_home: a stack's Redis (in $TALLY_HOME), broker and Postgres start,
# keep their data and stop together, and a fresh checkout (no $TALLY_HOME yet) gets a fresh
# Postgres. (One directory shared by every checkout gave a fresh clone an empty Redis beside
# another checkout's history, which reconcile rightly reported as a mismatch.)
PG_HOME_FILE="$TALLY_HOME/pg_home"
if [ -n "${TALLY_PG_HOME:-}" ]; then
  PG_HOME="$TALLY_PG_HOME"
elif [ -s "$PG_HOME_FILE" ]; then
  PG_HOME="$(cat "$PG_HOME_FILE")"
elif [ -d "$TALLY_HOME" ] && [ -f /var/tmp/tally-demo-pg/data/PG_VERSION ]; then
  PG_HOME=/var/tmp/tally-demo-pg # a stack started before pg_home was recorded (kept as it was)
else
  PG_HOME="" # made by start_postgres
fi
PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"
BIN="$ROOT/target/release"
export PATH="$HOME/.cargo/bin:$PATH"

CLUSTER_HOME="$TALLY_HOME/cluster"
CLUSTER_BASE_PORT="${TALLY_CLUSTER_PORT:-7391}" # first port tried; node i's bus is port+10000
CLUSTER_METRICS_PORT="${TALLY_CLUSTER_METRICS_PORT:-9188}"
KAFKA_BROKERS="127.0.0.1:$KAFKA_PORT"

# The stack the functions below act on: standalone (the default) or cluster.
use_standalone() {
  STACK=standalone
  REDIS_URL="redis://127.0.0.1:$REDIS_PORT/" # what the shipper and the stories are given
  CHECK_URL="$REDIS_URL"                     # what reconcile is given
  PG_DB=tally
  DATABASE_URL="postgres://tally@127.0.0.1:$PG_PORT/$PG_DB"
  KAFKA_TOPIC=tally.events
  KAFKA_GROUP=tally-persist
  METRICS_PORT="${TALLY_METRICS_PORT:-9187}"
  SHIPPER_PID="$TALLY_HOME/shipper.pid"
  SHIPPER_LOG="$TALLY_HOME/shipper.log"
}

# The cluster stack: its node ports are chosen once (`use_cluster pick`, see cluster_ports)
# and kept in $CLUSTER_HOME/ports, so its nodes restart from their nodes.conf and AOF on the
# same ports.
use_cluster() { # [pick]
  use_standalone
  STACK=cluster
  cluster_ports "${1:-}"
  if [ "${#CLUSTER_PORTS[@]}" -ge 2 ]; then
    REDIS_URL="redis://127.0.0.1:${CLUSTER_PORTS[0]},redis://127.0.0.1:${CLUSTER_PORTS[1]}" # two seeds
    CHECK_URL="redis://127.0.0.1:${CLUSTER_PORTS[0]}"
  fi
  PG_DB=tally_cluster
  DATABASE_URL="postgres://tally@127.0.0.1:$PG_PORT/$PG_DB"
  KAFKA_TOPIC=tally.events.cluster
  KAFKA_GROUP=tally-persist-cluster
  METRICS_PORT="$CLUSTER_METRICS_PORT"
  SHIPPER_PID="$CLUSTER_HOME/shipper.pid"
  SHIPPER_LOG="$CLUSTER_HOME/shipper.log"
}
use_standalone

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

wait_redis() { # port logfile
  wait_port "$1" 20 || { tail -20 "$2"; exit 1; }
  # The port opens before the AOF is loaded: wait for PONG (not LOADING).
  for _ in $(seq 1 600); do
    [ "$(redis-cli -p "$1" ping 2>/dev/null)" = "PONG" ] && break
    sleep 0.2
  done
}

start_redis() {
  mkdir -p "$TALLY_HOME/redis"
  if alive "$TALLY_HOME/redis.pid"; then say "redis-server already running on $REDIS_PORT"; return; fi
  port_busy "$REDIS_PORT" && { echo "port $REDIS_PORT is taken (set TALLY_REDIS_PORT)" >&2; exit 1; }
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$TALLY_HOME/redis" \
    --appendonly yes --appendfsync everysec --maxclients 4000 \
    --daemonize yes --pidfile "$TALLY_HOME/redis.pid" --logfile "$TALLY_HOME/redis.log" \
    --loadmodule "$BIN/libtally.so"
  wait_redis "$REDIS_PORT" "$TALLY_HOME/redis.log"
  say "redis-server + tally on 127.0.0.1:$REDIS_PORT (AOF in $TALLY_HOME/redis)"
}

# --- the cluster: 3 primaries + 3 replicas on loopback, the module on every node ---

# Sets CLUSTER_PORTS: the ports on file, else (given `pick`) six free ports from
# CLUSTER_BASE_PORT up (with their bus ports, +10000, free too), then written to the file.
cluster_ports() { # [pick]
  CLUSTER_PORTS=()
  if [ -s "$CLUSTER_HOME/ports" ]; then read -ra CLUSTER_PORTS <"$CLUSTER_HOME/ports"; return; fi
  [ "${1:-}" = pick ] || return 0
  local p
  for ((p = CLUSTER_BASE_PORT; ${#CLUSTER_PORTS[@]} < 6; p++)); do
    [ "$p" -lt $((CLUSTER_BASE_PORT + 500)) ] || { echo "no 6 free ports from $CLUSTER_BASE_PORT (set TALLY_CLUSTER_PORT)" >&2; exit 1; }
    port_busy "$p" || port_busy $((p + 10000)) || CLUSTER_PORTS+=("$p")
  done
  mkdir -p "$CLUSTER_HOME"
  echo "${CLUSTER_PORTS[*]}" >"$CLUSTER_HOME/ports"
}

start_cluster_node() { # port
  local dir="$CLUSTER_HOME/$1"
  mkdir -p "$dir"
  alive "$dir/redis.pid" && return
  port_busy "$1" && { echo "port $1 is taken: free it, or remove $CLUSTER_HOME (its data) to pick new ports" >&2; exit 1; }
  redis-server --port "$1" --bind 127.0.0.1 --dir "$dir" \
    --cluster-enabled yes --cluster-config-file nodes.conf \
    --appendonly yes --appendfsync everysec --maxclients 10000 \
    --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" \
    --loadmodule "$BIN/libtally.so"
  wait_redis "$1" "$dir/redis.log"
}

cluster_info() { redis-cli -p "$1" cluster info 2>/dev/null; }

# Nodes restarted from their nodes.conf form the cluster again by themselves.
cluster_formed() { [[ "$(cluster_info "${CLUSTER_PORTS[0]}")" == *cluster_slots_assigned:16384* ]]; }

form_cluster() {
  local nodes=() p
  for p in "${CLUSTER_PORTS[@]}"; do nodes+=("127.0.0.1:$p"); done
  redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >"$CLUSTER_HOME/create.log" 2>&1 ||
    { cat "$CLUSTER_HOME/create.log"; exit 1; }
}

wait_for() { # seconds what command...
  local i
  for ((i = 0; i < $1 * 5; i++)); do "${@:3}" && return 0; sleep 0.2; done
  echo "timed out after $1 s waiting for $2" >&2
  exit 1
}

cluster_ok_everywhere() {
  local p
  for p in "${CLUSTER_PORTS[@]}"; do [[ "$(cluster_info "$p")" == *cluster_state:ok* ]] || return 1; done
}

replicas_linked() { # all 3 replicas have their primary link up
  local p n=0
  for p in "${CLUSTER_PORTS[@]}"; do
    [[ "$(redis-cli -p "$p" info replication 2>/dev/null)" == *master_link_status:up* ]] && n=$((n + 1))
  done
  [ "$n" -ge 3 ]
}

cluster_primaries() { # ports of the nodes that are primaries now
  local p
  for p in "${CLUSTER_PORTS[@]}"; do
    [ "$(redis-cli -p "$p" role 2>/dev/null | head -1)" = master ] && echo "$p"
  done
  return 0
}

start_cluster() {
  local p
  for p in "${CLUSTER_PORTS[@]}"; do start_cluster_node "$p"; done
  cluster_formed || form_cluster
  wait_for 60 "cluster_state:ok on every node" cluster_ok_everywhere
  wait_for 60 "3 replicas linked to their primaries" replicas_linked
  say "Redis Cluster + tally on 127.0.0.1 ports ${CLUSTER_PORTS[*]}: primaries $(cluster_primaries | paste -sd' '), 3 replicas linked (data in $CLUSTER_HOME)"
}

# One line per primary: its port, its slots and how many tally:log:* streams it holds (and
# the entries still in them).
primary_streams() {
  local p slots streams entries
  for p in $(cluster_primaries); do
    slots="$(redis-cli -p "$p" cluster nodes | awk '/myself/ { for (i = 9; i <= NF; i++) printf "%s%s", (i > 9 ? "," : ""), $i }')"
    streams="$(redis-cli -p "$p" --scan --pattern 'tally:log:*' | wc -l)"
    entries="$(redis-cli -p "$p" --scan --pattern 'tally:log:*' | sed 's/^/XLEN /' | redis-cli -p "$p" | awk '{ n += $1 } END { print n + 0 }')"
    echo "  primary 127.0.0.1:$p (slots $slots): $streams tally:log:* streams, $entries entries in them"
  done
}

# Replicas first, so no replica is promoted while its primary shuts down.
stop_cluster() {
  [ -s "$CLUSTER_HOME/ports" ] || return 0
  cluster_ports
  local primaries p
  primaries="$(cluster_primaries)"
  for p in "${CLUSTER_PORTS[@]}"; do grep -qx "$p" <<<"$primaries" || stop_cluster_node "$p"; done
  for p in $primaries; do stop_cluster_node "$p"; done
}

stop_cluster_node() { # port
  local pidfile="$CLUSTER_HOME/$1/redis.pid"
  alive "$pidfile" || return 0
  redis-cli -p "$1" shutdown >/dev/null 2>&1 || true
  for _ in $(seq 1 300); do alive "$pidfile" || break; sleep 0.1; done
  alive "$pidfile" && kill -TERM "$(cat "$pidfile")"
  say "redis-server (cluster node) on $1 stopped"
}

pg() { runuser -u postgres -- "$@"; }

start_postgres() {
  if [ -z "$PG_HOME" ]; then
    PG_HOME="$(mktemp -d /var/tmp/tally-demo-pg.XXXXXX)"
  fi
  if [ -z "${TALLY_PG_HOME:-}" ] && [ ! -s "$PG_HOME_FILE" ]; then
    mkdir -p "$TALLY_HOME"
    printf '%s\n' "$PG_HOME" >"$PG_HOME_FILE"
  fi
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
  pg psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='$PG_DB'" | grep -q 1 ||
    pg psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "CREATE DATABASE $PG_DB OWNER tally"
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

# A topic the broker does not have (stop_all dropped its storage once reconcile proved every
# event in Postgres, or it never existed) starts again at offset 0: the positions persist
# kept for it in Postgres (kafka_offsets) are forgotten, or persist would stop at start
# ("stored position is past the end"). Not after a stop that could not prove it (the
# undrained mark): then persist names the events the broker lost.
forget_lost_topic_positions() {
  local topics n
  topics="$(timeout 30 tansu topic list --broker "tcp://$KAFKA_BROKERS" 2>/dev/null)" || return 0
  [[ "$topics" == *"\"name\":\"$KAFKA_TOPIC\""* ]] && return 0
  [ -f "$TALLY_HOME/kafka/undrained.$STACK" ] && return 0
  n="$(psql "$DATABASE_URL" -X -qAtc "WITH d AS (DELETE FROM kafka_offsets WHERE topic = '$KAFKA_TOPIC' RETURNING 1) SELECT count(*) FROM d")"
  [ "$n" = 0 ] || say "Kafka topic $KAFKA_TOPIC is new (the broker's storage was dropped): persist starts it from offset 0"
}

start_shipper() {
  if alive "$SHIPPER_PID"; then say "tally-shipper ($STACK) already running"; return; fi
  "$BIN/tally-shipper" migrate --database-url "$DATABASE_URL" >>"$SHIPPER_LOG" 2>&1
  forget_lost_topic_positions
  nohup "$BIN/tally-shipper" run --redis-url "$REDIS_URL" --database-url "$DATABASE_URL" \
    --kafka-brokers "$KAFKA_BROKERS" --kafka-topic "$KAFKA_TOPIC" --kafka-group "$KAFKA_GROUP" \
    --kafka-create-topic --consumer demo-1 \
    --metrics-addr "127.0.0.1:$METRICS_PORT" --progress-interval-ms 2000 \
    >>"$SHIPPER_LOG" 2>&1 &
  echo $! >"$SHIPPER_PID"
  say "tally-shipper run: $([ "$STACK" = cluster ] && echo "the slots' streams of every primary" || echo stream) -> Kafka topic $KAFKA_TOPIC -> Postgres database $PG_DB (log: $SHIPPER_LOG, metrics: http://127.0.0.1:$METRICS_PORT/metrics)"
}

# The stacks that have state here (the cluster's once its ports were chosen).
stacks() { echo standalone; [ -s "$CLUSTER_HOME/ports" ] && echo cluster; return 0; }

stack_up() { # the current stack's Redis runs
  if [ "$STACK" = cluster ]; then [ -n "$(cluster_primaries)" ]; else alive "$TALLY_HOME/redis.pid"; fi
}

# Whether Kafka holds no event of the current stack that is not also in Postgres: 0 when
# reconcile proves it now (shipper running), 1 when it cannot (the mark file remembers that
# after the stack stopped), 2 when the stack is down and its last stop proved it.
stack_drained() {
  local mark="$TALLY_HOME/kafka/undrained.$STACK"
  if ! alive "$SHIPPER_PID" && ! stack_up; then [ -f "$mark" ] && return 1; return 2; fi
  if alive "$SHIPPER_PID" && [ -x "$BIN/tally-shipper" ] &&
     "$BIN/tally-shipper" reconcile --redis-url "$CHECK_URL" --database-url "$DATABASE_URL" --wait-ms 60000 >/dev/null 2>&1; then
    rm -f "$mark"
    return 0
  fi
  mkdir -p "$TALLY_HOME/kafka" && touch "$mark"
  return 1
}

stop_shipper() {
  alive "$SHIPPER_PID" || return 0
  kill -TERM "$(cat "$SHIPPER_PID")"
  for _ in $(seq 1 300); do alive "$SHIPPER_PID" || break; sleep 0.1; done
  say "tally-shipper ($STACK) stopped"
}

stop_all() {
  # tansu is a development broker whose storage grows with every run and slows down (its
  # group coordinator stopped answering after a few full-size runs here). When reconcile
  # proves every event is in Postgres, Kafka holds nothing that is not also persisted, so
  # its storage can be dropped at stop; otherwise it is kept. With both stacks here, every
  # one must be proven (or have been proven when it last stopped).
  local stack rc proven=0 undrained=0 kafka_drained=0
  for stack in $(stacks); do
    "use_$stack"
    rc=0
    stack_drained || rc=$?
    case "$rc" in 0) proven=$((proven + 1)) ;; 1) undrained=1 ;; esac
  done
  [ "$undrained" = 0 ] && [ "$proven" -gt 0 ] && kafka_drained=1
  for stack in $(stacks); do "use_$stack"; stop_shipper; done
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
  stop_cluster
  if [ -f "$PG_HOME/data/PG_VERSION" ] && pg "$PG_BIN/pg_ctl" -D "$PG_HOME/data" status >/dev/null 2>&1; then
    pg "$PG_BIN/pg_ctl" -D "$PG_HOME/data" -m fast -w stop >/dev/null && say "PostgreSQL stopped"
  fi
  rm -f "$TALLY_HOME"/*.pid "$CLUSTER_HOME"/shipper.pid
}
