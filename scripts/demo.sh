#!/usr/bin/env bash
# The main job in one command: takes a fresh Debian 12 machine (as root) to a running tally
# system and plays the three stories through the real pipeline:
#   redis-server + libtally.so -> tally-shipper forward -> Kafka (tansu) -> tally-shipper persist -> PostgreSQL
# then prints, per story, the Redis state, the rows in Postgres and the reconcile verdict.
#   --cluster  the same through a Redis Cluster on loopback: 3 primaries + 3 replicas, the
#              module on every node; the shipper is given two seed nodes and finds every
#              primary itself, the stories go through a cluster client, reconcile walks
#              every primary. Its own Postgres database (tally_cluster) and Kafka topic.
# Safe to run again (set-up is idempotent, each run uses its own key namespace).
# Stop everything with: bash scripts/stop.sh
set -euo pipefail
# shellcheck source=scripts/stack.sh
source "$(dirname "$0")/stack.sh"
cd "$ROOT"

case "${1:-}" in
  "") STORIES_FLAGS=() ;;
  --cluster) use_cluster pick; STORIES_FLAGS=(--cluster) ;;
  *) echo "usage: bash scripts/demo.sh [--cluster]" >&2; exit 2 ;;
esac

cluster_hints() {
  local p="${CLUSTER_PORTS[0]}"
  cat <<EOT

Poke the running cluster by hand (-c: redis-cli follows MOVED to the node serving the key):
  redis-cli -c -p $p ASSET.INCR user.asset.42 BDP 10.43 ID my-op-1 META "by hand"
  redis-cli -c -p $p ASSET.GET user.asset.42
  redis-cli -p $p cluster nodes
  redis-cli -p $(cluster_primaries | head -1) --scan --pattern 'tally:log:*' | head -3    # per-slot log streams
  psql $DATABASE_URL -c "SELECT type, to_timestamp(ts_ms / 1000.0) AS at, op, meta FROM events ORDER BY ts_ms DESC LIMIT 5"
  $BIN/tally-shipper reconcile --redis-url $CHECK_URL --database-url $DATABASE_URL
  curl -s http://127.0.0.1:$METRICS_PORT/metrics | grep tally_
Stop it all: bash scripts/stop.sh
EOT
}

bash scripts/setup.sh
say "building (release): module, shipper, story driver"
cargo build --release --locked -p tally -p tally-shipper -p tally-tests

if [ "$STACK" = cluster ]; then start_cluster; else start_redis; fi
start_postgres
start_kafka
start_shipper

RUN="run$(date +%s)"
say "playing the three stories (key namespace $RUN:)"
"$BIN/tally-stories" "${STORIES_FLAGS[@]}" --redis-url "$REDIS_URL" --run "$RUN"

say "waiting for the pipeline to drain, then reconciling Redis against Postgres"
set +e
"$BIN/tally-shipper" reconcile --redis-url "$CHECK_URL" --database-url "$DATABASE_URL" --wait-ms 180000
verdict=$?
set -e

q() { psql "$DATABASE_URL" -X -P pager=off "$@"; }
echo
say "Story 1 in Postgres: history rows and latest balances of this run's 500 accounts"
q -c "SELECT count(*) AS asset_events, sum(delta) AS total_granted FROM event_changes WHERE data_key LIKE '$RUN:user.asset.%';" \
  -c "SELECT data_key, field, balance, seq FROM balances WHERE data_key LIKE '$RUN:user.asset.%' ORDER BY data_key LIMIT 3;"
say "Story 2 in Postgres: coupon issues of $RUN:coupon:spring"
q -c "SELECT count(*) AS issues, count(DISTINCT issue) AS distinct_issues, min(issue), max(issue), count(DISTINCT user_id) AS users FROM coupon_issues WHERE campaign = '$RUN:coupon:spring' AND NOT released;"
say "Story 3 in Postgres: usage total of $RUN:usage:api-calls"
q -c "SELECT usage_key, period_id, used, quota, consumed, events FROM usage_totals WHERE usage_key = '$RUN:usage:api-calls';"
q -c "SELECT count(*) AS failed_events FROM failed_events;" -c "SELECT count(*) AS sequence_anomalies FROM sequence_anomalies;"
if [ "$STACK" = cluster ]; then
  say "Log streams per primary (the shipper trims what it shipped)"
  primary_streams
fi

if [ "$STACK" = cluster ]; then cluster_hints; else cat <<EOT

Poke the running system by hand:
  redis-cli -p $REDIS_PORT ASSET.INCR user.asset.42 BDP 10.43 ID my-op-1 META "by hand"
  redis-cli -p $REDIS_PORT ASSET.GET user.asset.42
  redis-cli -p $REDIS_PORT XRANGE tally:log - + COUNT 5
  psql $DATABASE_URL -c "SELECT type, to_timestamp(ts_ms / 1000.0) AS at, op, meta FROM events ORDER BY ts_ms DESC LIMIT 5"
  $BIN/tally-shipper reconcile --redis-url $REDIS_URL --database-url $DATABASE_URL
  curl -s http://127.0.0.1:$METRICS_PORT/metrics | grep tally_
Stop it all: bash scripts/stop.sh
EOT
fi
if [ "$verdict" -ne 0 ]; then
  say "reconcile reported a mismatch (exit $verdict)"
  exit "$verdict"
fi
