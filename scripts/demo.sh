#!/usr/bin/env bash
# The main job in one command: takes a fresh Debian 12 machine (as root) to a running tally
# system and plays the four stories (the fourth, the checkout, is played by this script
# itself: checkout_story) through the real pipeline:
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

# ---- story 4, the checkout: 1,000 users (one connection each; every user double-clicks, two
# COUPON.RESERVE in flight at once) reserve from 100 coupons with a TTL; 60 of the winners pay
# (COUPON.CONFIRM), the other 40 walk away and the module's timer gives their coupons back.
CHECKOUT_TTL_MS=8000 # long enough for the race and the payments on a loaded 2-core machine
CHECKOUT_FAILURES=()

# The port of the node serving $CHECKOUT (in a cluster: the primary that holds the key).
checkout_port() {
  if [ "$STACK" != cluster ]; then echo "$REDIS_PORT"; return; fi
  local p
  for p in $(cluster_primaries); do
    if [ "$(redis-cli -p "$p" EXISTS "$CHECKOUT" 2>/dev/null)" = 1 ]; then echo "$p"; return; fi
  done
  echo "no primary holds $CHECKOUT" >&2; return 1
}

# The race and the payments, in one process with one connection per user: python3 - PORT
# CAMPAIGN USERS STOCK TTL_MS PAYERS OUT. Writes "paid|walked <user> <issue>" lines to OUT;
# exits 1 unless exactly STOCK reservations won, by as many users, numbers 1..STOCK, and
# every payment went through.
checkout_driver() {
  python3 - "$@" <<'PY'
import asyncio, resource, sys

port, camp, users, stock, ttl, payers, out = sys.argv[1:8]
port, users, stock, payers = int(port), int(users), int(stock), int(payers)
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
want = users + 100 if hard == resource.RLIM_INFINITY else min(hard, users + 100)
resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))


class Err(str):
    pass


def enc(*args):
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        a = str(a).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(parts)


async def reply(r):
    line = await r.readline()
    kind, body = line[:1], line[1:-2].decode()
    if kind == b"-":
        return Err(body)
    if kind in (b":", b"+"):
        return int(body) if kind == b":" else body
    if kind == b"$":
        n = int(body)
        return None if n < 0 else (await r.readexactly(n + 2))[:-2].decode()
    if kind == b"*":
        return [await reply(r) for _ in range(int(body))]
    raise RuntimeError(f"unexpected reply {line!r}")


async def main():
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(users)]
    go = asyncio.Event()

    async def user(i):
        r, w = conns[i]
        await go.wait()
        reserve = enc("COUPON.RESERVE", camp, f"user{i}", "TTL", ttl)
        w.write(reserve + reserve)  # the double click
        await w.drain()
        return [await reply(r), await reply(r)]

    tasks = [asyncio.create_task(user(i)) for i in range(users)]
    await asyncio.sleep(0.2)  # every user waits at the start line
    go.set()
    won, refused, other = [], {}, []
    for i, replies in enumerate(await asyncio.gather(*tasks)):
        for x in replies:
            code = x.split(" ", 1)[0] if isinstance(x, Err) else None
            if code in ("SOLDOUT", "DUPLICATE"):
                refused[code] = refused.get(code, 0) + 1
            elif code:
                other.append(f"user{i}: {x}")
            else:
                won.append((f"user{i}", x[0]))
    by_user = sorted(won)
    paid, walked = by_user[:payers], by_user[payers:]

    async def confirm(u, issue):
        r, w = conns[int(u[4:])]
        w.write(enc("COUPON.CONFIRM", camp, u, issue))
        await w.drain()
        return u, issue, await reply(r)

    failed = [f"{u} {i}: {x}" for u, i, x in await asyncio.gather(*(confirm(u, i) for u, i in paid))
              if isinstance(x, Err)]
    for _, w in conns:
        w.close()
    with open(out, "w") as f:
        f.writelines(f"paid {u} {i}\n" for u, i in paid)
        f.writelines(f"walked {u} {i}\n" for u, i in walked)
    winners = len({u for u, _ in won})
    print(f"  reservations won: {len(won)} (by {winners} users); refused: "
          + ", ".join(f"{k} {v}" for k, v in sorted(refused.items())) + f"; other errors: {len(other) + len(failed)}")
    print(f"  paid (COUPON.CONFIRM): {len(paid) - len(failed)} of {len(paid)}; walked away: {len(walked)}")
    for e in (other + failed)[:5]:
        print(f"    {e}")
    ok = (len(won) == stock and winners == stock and sorted(i for _, i in won) == list(range(1, stock + 1))
          and not other and not failed)
    print(f"  exactly {stock} reservations, numbers 1..{stock}, no user with two, every payment through: {'yes' if ok else 'NO'}")
    sys.exit(0 if ok else 1)


asyncio.run(main())
PY
}

checkout_story() {
  CHECKOUT="$RUN:coupon:checkout"
  CHECKOUT_PLAYED="$TALLY_HOME/checkout-$RUN.txt"
  say "Story 4: checkout: 1,000 users reserve from 100 coupons (TTL $CHECKOUT_TTL_MS ms), 60 pay, 40 walk away"
  local seed
  seed=$([ "$STACK" = cluster ] && echo "${CLUSTER_PORTS[0]}" || echo "$REDIS_PORT")
  redis-cli -c -p "$seed" COUPON.CREATE "$CHECKOUT" 100 >/dev/null
  CHECKOUT_PORT=$(checkout_port)
  local started
  started=$(date +%s%3N)
  checkout_driver "$CHECKOUT_PORT" "$CHECKOUT" 1000 100 "$CHECKOUT_TTL_MS" 60 "$CHECKOUT_PLAYED" ||
    CHECKOUT_FAILURES+=("story 4 reservations")
  local left=$((started + CHECKOUT_TTL_MS + 2000 - $(date +%s%3N)))
  say "nobody touches $CHECKOUT now; waiting $((left / 1000)) s for the 40 unpaid reservations to expire"
  if [ "$left" -gt 0 ]; then sleep "$((left / 1000)).$(printf '%03d' $((left % 1000)))"; fi
}

# check_eq WHAT GOT WANT: prints the verdict, records a failure.
check_eq() {
  if [ "$2" = "$3" ]; then
    echo "  $1: yes"
  else
    echo "  $1: NO (got: $(tr '\n' ' ' <<<"$2" | cut -c1-200); want: $(tr '\n' ' ' <<<"$3" | cut -c1-200))"
    CHECKOUT_FAILURES+=("story 4: $1")
  fi
}

# After the drain: Redis (COUPON.INFO, the claims) and Postgres (events, the campaign, the
# claims, and the holds table once migration 0006 made it) agree on how every reservation ended.
checkout_check() {
  local r=(redis-cli -p "$CHECKOUT_PORT") pgq=(psql "$DATABASE_URL" -X -Atq -c)
  local paid info
  paid=$(awk '$1 == "paid" {print $2}' "$CHECKOUT_PLAYED" | LC_ALL=C sort)
  info=$("${r[@]}" COUPON.INFO "$CHECKOUT" | paste -d' ' - - |
    awk '{v[$1] = $2} END {printf "issued %s reserved %s remaining %s", v["issued"], v["reserved"], v["remaining"]}')
  echo "  COUPON.INFO $CHECKOUT -> $info"
  check_eq "Redis: issued 60, reserved 0, remaining 40" "$info" "issued 60 reserved 0 remaining 40"
  check_eq "Redis: the 60 claims are the payers'" \
    "$("${r[@]}" HGETALL "$CHECKOUT" | paste - - | awk -F'\t' '$1 ~ /^c:/ {print substr($1, 3)}' | LC_ALL=C sort)" "$paid"
  q -c "SELECT e.type, count(*) FROM events e JOIN event_keys k USING (event_id) WHERE k.data_key = '$CHECKOUT' GROUP BY e.type ORDER BY e.type;"
  check_eq "Postgres: 100 coupon.reserve, 60 coupon.confirm, 40 coupon.expire events" \
    "$("${pgq[@]}" "SELECT e.type || ' ' || count(*) FROM events e JOIN event_keys k USING (event_id) WHERE k.data_key = '$CHECKOUT' AND e.type <> 'coupon.create' GROUP BY e.type ORDER BY e.type")" \
    "$(printf 'coupon.confirm 60\ncoupon.expire 40\ncoupon.reserve 100')"
  check_eq "Postgres: coupon_campaigns issued 60, remaining 40" \
    "$("${pgq[@]}" "SELECT issued || ' ' || remaining FROM coupon_campaigns WHERE campaign = '$CHECKOUT'")" "60 40"
  check_eq "Postgres: coupon_issues holds the payers' 60 claims, nobody else's" \
    "$("${pgq[@]}" "SELECT user_id FROM coupon_issues WHERE campaign = '$CHECKOUT' AND NOT released" | LC_ALL=C sort)" "$paid"
  case "$("${pgq[@]}" "SELECT to_regclass('holds') IS NOT NULL")" in
    t) ;;
    f) echo "  Postgres has no holds table (migration 0006 not applied): compared events, campaign and claims only"
       return ;;
    *) CHECKOUT_FAILURES+=("story 4: could not ask Postgres for the holds table"); return ;;
  esac
  q -c "SELECT status, count(*) FROM holds WHERE data_key = '$CHECKOUT' GROUP BY status ORDER BY status;"
  check_eq "Postgres holds: the payers' 60 reservations settled, the other 40 expired, none open" \
    "$("${pgq[@]}" "SELECT status || ' ' || subject || ' ' || hold_id FROM holds WHERE data_key = '$CHECKOUT'" | LC_ALL=C sort)" \
    "$(awk '{print ($1 == "paid" ? "settled" : "expired"), $2, $3}' "$CHECKOUT_PLAYED" | LC_ALL=C sort)"
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
checkout_story

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
say "Story 4 in Postgres: how the 100 reservations of $CHECKOUT ended"
checkout_check
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
if [ "${#CHECKOUT_FAILURES[@]}" -gt 0 ]; then
  say "the checkout story failed: ${CHECKOUT_FAILURES[*]}"
  exit 1
fi
