//! Holds (docs/holds.md, issue 25) through the shipper: the `holds` table and the tables the
//! hold events move (balances, coupon_issues, coupon_campaigns, usage_totals), exactly once
//! whatever the arrival order, on the direct path and through Kafka; migration 0006 on a
//! database with rows; and, with the module, reconcile, restore and restore --as-of.

// Scenarios read better whole than cut into helpers, and every test holds `common::serial()`
// (a std Mutex guard that runs the heavy tests one at a time) across its awaits on purpose.
#![allow(clippy::too_many_lines, clippy::await_holding_lock)]

mod common;

use std::collections::{BTreeMap, HashMap};

use common::*;
use serde_json::{json, Value};

const EVENTS_SQL: &str = "SELECT count(*) FROM events";

/// A hold's row as the test expects it: kind, subject, amount, status, created, expires,
/// closed, settled, seq.
type HoldRow = (
    String,
    String,
    String,
    String,
    i64,
    i64,
    Option<i64>,
    Option<String>,
    i64,
);

/// Hand-written hold events as the contract describes them, and the rows they must leave.
#[derive(Default)]
struct HoldEvents {
    seq: HashMap<String, i64>,
    /// (key, id) -> the row
    want: BTreeMap<(String, i64), HoldRow>,
    /// (key, seq) -> the event, for holding some back and replaying others
    by_seq: BTreeMap<(String, i64), String>,
    order: Vec<(String, i64)>,
}

const T0: i64 = 1_800_000_000_000;

impl HoldEvents {
    /// One event of `typ` on `key` carrying `body` (changes, coupon or usage) and `hold`.
    fn push(&mut self, typ: &str, key: &str, body: Value, hold: Option<Value>) {
        let seq = {
            let s = self.seq.entry(key.to_string()).or_insert(0);
            *s += 1;
            *s
        };
        let ts = T0 + seq * 1_000;
        let expire = typ.ends_with(".expire");
        let mut e = json!({"v":1,"id":uuid::Uuid::now_v7().to_string(),"type":typ,
            "ts": if expire { T0 + 100_000 } else { ts },
            "op": if expire { Value::Null } else { json!(format!("op-{key}-{seq}")) },
            "meta":null,"keys":[{"key":key,"seq":seq}]});
        for (k, v) in body.as_object().unwrap() {
            e[k] = v.clone();
        }
        if let Some(h) = hold {
            let status = h["status"].as_str().unwrap().to_string();
            let row: HoldRow = (
                h["kind"].as_str().unwrap().into(),
                h["subject"].as_str().unwrap_or_default().into(),
                h["amount"].as_str().unwrap().into(),
                status.clone(),
                h["created"].as_i64().unwrap(),
                h["expires"].as_i64().unwrap(),
                (status != "open").then(|| e["ts"].as_i64().unwrap()),
                h["settled"].as_str().map(String::from),
                seq,
            );
            let id: i64 = h["id"].as_str().unwrap().parse().unwrap();
            self.want.insert((key.to_string(), id), row);
            e["hold"] = h;
        }
        self.by_seq.insert((key.to_string(), seq), e.to_string());
        self.order.push((key.to_string(), seq));
    }

    fn hold(id: i64, kind: &str, subject: Option<&str>, amount: &str, status: &str) -> Value {
        json!({"id": id.to_string(), "kind": kind, "subject": subject, "amount": amount,
               "status": status, "created": T0 + id * 10, "expires": T0 + 60_000,
               "settled": Value::Null})
    }

    fn settled(mut h: Value, amount: &str) -> Value {
        h["settled"] = json!(amount);
        h
    }

    fn asset(&mut self) {
        let k = "acct";
        let change = |delta: &str, bal: &str| json!({"changes":[{"key":k,"field":"gold","delta":delta,"balance":bal}]});
        let h = |id, amount, status| Some(Self::hold(id, "asset", Some("gold"), amount, status));
        self.push("asset.incr", k, change("100", "100"), None);
        self.push("asset.hold", k, json!({}), h(1, "30", "open"));
        self.push("asset.hold", k, json!({}), h(2, "20", "open"));
        let settle = Self::settled(Self::hold(1, "asset", Some("gold"), "30", "settled"), "25");
        self.push("asset.settle", k, change("-25", "75"), Some(settle));
        self.push("asset.void", k, json!({}), h(2, "20", "voided"));
        self.push("asset.hold", k, json!({}), h(3, "10.5", "open"));
        self.push("asset.hold", k, json!({}), h(4, "5", "open"));
        self.push("asset.expire", k, json!({}), h(4, "5", "expired"));
    }

    fn coupon(&mut self) {
        let k = "camp";
        let state = |user: Option<&str>, issue: Option<i64>, issued: i64| {
            json!({"coupon":{"campaign":k,"user":user,"issue":issue,"total":10,"issued":issued,
                   "remaining":10 - issued,"peruser":1,"start":0,"end":0}})
        };
        let h = |id, user, status| Some(Self::hold(id, "coupon", Some(user), "1", status));
        self.push("coupon.create", k, state(None, None, 0), None);
        self.push(
            "coupon.reserve",
            k,
            state(Some("u1"), Some(1), 1),
            h(1, "u1", "open"),
        );
        self.push(
            "coupon.reserve",
            k,
            state(Some("u2"), Some(2), 2),
            h(2, "u2", "open"),
        );
        let confirm = Self::settled(Self::hold(1, "coupon", Some("u1"), "1", "settled"), "1");
        self.push(
            "coupon.confirm",
            k,
            state(Some("u1"), Some(1), 2),
            Some(confirm),
        );
        self.push(
            "coupon.cancel",
            k,
            state(Some("u2"), Some(2), 1),
            h(2, "u2", "voided"),
        );
        self.push(
            "coupon.reserve",
            k,
            state(Some("u3"), Some(3), 2),
            h(3, "u3", "open"),
        );
        self.push(
            "coupon.reserve",
            k,
            state(Some("u4"), Some(4), 3),
            h(4, "u4", "open"),
        );
        self.push(
            "coupon.expire",
            k,
            state(Some("u4"), Some(4), 2),
            h(4, "u4", "expired"),
        );
    }

    fn usage(&mut self) {
        let k = "quota";
        let state = |amount: Option<&str>, used: &str| json!({"usage":{"key":k,"amount":amount,"used":used,"limit":"100","period":"none","period_id":"all"}});
        let h = |id, amount, status| Some(Self::hold(id, "usage", None, amount, status));
        self.push("usage.limit", k, state(None, "0"), None);
        self.push("usage.reserve", k, state(None, "0"), h(1, "10", "open"));
        let commit = Self::settled(Self::hold(1, "usage", None, "10", "settled"), "7");
        self.push("usage.commit", k, state(Some("7"), "7"), Some(commit));
        self.push("usage.reserve", k, state(None, "7"), h(2, "5", "open"));
        self.push("usage.cancel", k, state(None, "7"), h(2, "5", "voided"));
        self.push("usage.reserve", k, state(None, "7"), h(3, "4", "open"));
    }
}

/// A row of `holds` with its key and id.
type TableRow = (
    String,
    i64,
    String,
    String,
    String,
    String,
    i64,
    i64,
    Option<i64>,
    Option<String>,
    i64,
);

async fn holds_table(pool: &sqlx::PgPool) -> BTreeMap<(String, i64), HoldRow> {
    let rows: Vec<TableRow> = sqlx::query_as(
        "SELECT data_key, hold_id, kind, COALESCE(subject, ''), amount::text, status, created_ms,
                    expires_ms, closed_ms, settled::text, seq FROM holds ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|r| ((r.0, r.1), (r.2, r.3, r.4, r.5, r.6, r.7, r.8, r.9, r.10)))
        .collect()
}

/// Every hold type through the shipper, the opening events of three holds held back until a
/// second run (their settle, confirm and commit arrive first) with three events replayed:
/// each hold's row is the state of its newest event, the opening event is recorded when it
/// comes, and the balance, claim, campaign and usage rows mean what they meant before holds.
async fn derived_tables_from_hold_events(brokers: Option<String>, tag: &str) {
    let Stack {
        redis,
        pg,
        pool,
        mut c,
        ..
    } = stack().await;
    let mut ev = HoldEvents::default();
    ev.asset();
    ev.coupon();
    ev.usage();
    let late: Vec<(String, i64)> = ["acct", "camp", "quota"]
        .iter()
        .map(|k| (k.to_string(), 2))
        .collect();
    let first: Vec<String> = ev
        .order
        .iter()
        .filter(|k| !late.contains(k))
        .map(|k| ev.by_seq[k].clone())
        .collect();
    let args = base_args(
        "run",
        Some(&redis.url()),
        Some(&pg.url()),
        brokers.as_deref(),
    );
    let dir = tmpdir(tag);
    ship_all(
        &mut c,
        &pool,
        &args,
        &dir.join("first.log"),
        &first,
        first.len() as i64,
    )
    .await;
    let rows = holds_table(&pool).await;
    for k in &late {
        let hold = (k.0.clone(), 1);
        assert_eq!(
            rows[&hold], ev.want[&hold],
            "{k:?} before its opening event"
        );
    }
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM holds WHERE open_event_id IS NULL"
        )
        .await,
        3,
        "the three holds whose opening event is late"
    );
    let mut second: Vec<String> = late.iter().map(|k| ev.by_seq[k].clone()).collect();
    second.extend(
        [("acct", 4), ("camp", 8), ("quota", 3)]
            .map(|(k, s)| ev.by_seq[&(k.to_string(), s)].clone()),
    );
    let all = ev.order.len() as i64;
    ship_all(&mut c, &pool, &args, &dir.join("second.log"), &second, all).await;

    assert_eq!(count(&pool, EVENTS_SQL).await, all, "every event once");
    let via_kafka = count(
        &pool,
        "SELECT count(*) FROM events WHERE via LIKE 'kafka:tally.events/%'",
    )
    .await;
    assert_eq!(via_kafka, if brokers.is_some() { all } else { 0 });
    assert_eq!(
        holds_table(&pool).await,
        ev.want,
        "each hold as its newest event left it"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM holds WHERE open_event_id IS NULL"
        )
        .await,
        0
    );
    let opened_by_hold_events = count(
        &pool,
        "SELECT count(*) FROM holds h JOIN events e ON e.event_id = h.open_event_id
          WHERE e.type IN ('asset.hold', 'coupon.reserve', 'usage.reserve')",
    )
    .await;
    assert_eq!(opened_by_hold_events, 11);
    let balances: Vec<(String, String, String)> =
        sqlx::query_as("SELECT data_key, field, balance::text FROM balances")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        balances,
        vec![("acct".into(), "gold".into(), "75".into())],
        "held funds are not spent"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM event_changes WHERE data_key = 'acct'"
        )
        .await,
        2
    );
    let claims: Vec<(i64, String, bool)> = sqlx::query_as(
        "SELECT issue, user_id, released FROM coupon_issues WHERE campaign = 'camp'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        claims,
        vec![(1, "u1".into(), false)],
        "only the confirmed reservation is a claim"
    );
    let campaign: (i64, i64, i64) = sqlx::query_as(
        "SELECT issued, remaining, seq FROM coupon_campaigns WHERE campaign = 'camp'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        campaign,
        (2, 8, 8),
        "the campaign as its newest event (issued counts the open reservation)"
    );
    let usage: (String, String, i64, i64) = sqlx::query_as(
        "SELECT used::text, consumed::text, events, seq FROM usage_totals WHERE usage_key = 'quota'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        usage,
        ("7".into(), "7".into(), 6, 6),
        "a commit adds to used and consumed"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM key_seqs WHERE contiguous_seq = last_seq"
        )
        .await,
        3
    );
    for t in ["sequence_anomalies", "failed_events"] {
        assert_eq!(
            count(&pool, &format!("SELECT count(*) FROM {t}")).await,
            0,
            "{t}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_events_derive_exactly_once_on_the_direct_path() {
    let _g = serial();
    derived_tables_from_hold_events(None, "holds-direct").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_events_derive_exactly_once_through_kafka() {
    let _g = serial();
    let Some(kafka) = Tansu::start() else {
        skip(
            "hold_events_derive_exactly_once_through_kafka",
            "tansu not found",
        );
        return;
    };
    derived_tables_from_hold_events(Some(kafka.brokers()), "holds-kafka").await;
}

/// Migration 0006 on a database at 0005 with rows: nothing of them changes, `holds` starts
/// empty, and a hold event an older shipper sent to failed_events (unknown type) is stored by
/// `failed retry --all` with its hold row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_at_0005_migrates_to_0006_and_stores_the_hold_events_failed_before() {
    let _g = serial();
    let pg = Pg::start();
    let pool = pg.pool().await;
    migrate_up_to(&pool, 5).await;
    // rows as a 0005 shipper writes them: an event with its derived rows, and a hold event
    // it did not know
    let mut m = Model::default();
    let incr = m.asset_incr("acct", "gold", 10_000);
    let e: Value = serde_json::from_str(&incr).unwrap();
    let id = e["id"].as_str().unwrap();
    for sql in [
        "INSERT INTO events (event_id, type, ts_ms, op, meta, raw, source) VALUES ($1::uuid, 'asset.incr', 1, NULL, 'test', $2, 'redis:tally:log/1-0')",
        "INSERT INTO balances (data_key, field, balance, seq, event_id, ts_ms) SELECT 'acct', 'gold', 100, 1, $1::uuid, 1 WHERE $2 <> ''",
        "INSERT INTO key_seqs (data_key, last_seq, event_id, contiguous_seq) SELECT 'acct', 1, $1::uuid, 1 WHERE $2 <> ''",
    ] {
        sqlx::query(sql).bind(id).bind(&incr).execute(&pool).await.unwrap();
    }
    let mut ev = HoldEvents::default();
    ev.seq.insert("acct".into(), 1);
    ev.push(
        "asset.hold",
        "acct",
        json!({}),
        Some(HoldEvents::hold(1, "asset", Some("gold"), "30", "open")),
    );
    let hold = ev.by_seq[&("acct".to_string(), 2)].clone();
    sqlx::query("INSERT INTO failed_events (source, stream, stream_id, raw, error) VALUES ('redis:tally:log/2-0', 'tally:log', '2-0', $1, 'unknown event type \"asset.hold\"')")
        .bind(&hold)
        .execute(&pool)
        .await
        .unwrap();
    let snapshot = |table: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, String>(&format!(
                "SELECT to_jsonb(t)::text FROM {table} t ORDER BY 1"
            ))
            .fetch_all(&pool)
            .await
            .unwrap()
        }
    };
    let tables = ["events", "balances", "key_seqs", "failed_events"];
    let mut before = Vec::new();
    for t in tables {
        before.push(snapshot(t).await);
    }

    run_migrate(&pg.url());
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM _sqlx_migrations WHERE success AND version = 6"
        )
        .await,
        1
    );
    for (t, b) in tables.iter().zip(&before) {
        assert_eq!(&snapshot(t).await, b, "{t} changed by the migration");
    }
    assert_eq!(count(&pool, "SELECT count(*) FROM holds").await, 0);

    let (code, out) = shipper_cmd(&["failed", "retry", "--all", "--database-url", &pg.url()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("resolved=1"), "{out}");
    assert_eq!(holds_table(&pool).await, ev.want);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM key_seqs WHERE data_key = 'acct' AND contiguous_seq = 2"
        )
        .await,
        1
    );
    // the schema keeps a hold's row consistent
    for bad in [
        "UPDATE holds SET status = 'settled'",
        "UPDATE holds SET closed_ms = 5",
        "UPDATE holds SET kind = 'gift'",
    ] {
        let refused = sqlx::query(bad).execute(&pool).await;
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.to_string().contains("holds_")),
            "{bad}: {refused:?}"
        );
    }
}

// ---------------------------------------------------------------- with the module

/// A command's reply as text items (`[hold-id, available]` and the like).
fn items(v: &redis::Value) -> Vec<String> {
    redis::from_redis_value(v.clone()).unwrap_or_else(|e| panic!("{v:?}: {e}"))
}

/// `tally-shipper reconcile` (exit code, output) and the (checked, matching) of a category.
fn reconcile(redis: &str, pg: &str, wait_ms: &str) -> (i32, String) {
    shipper_cmd(&[
        "reconcile",
        "--redis-url",
        redis,
        "--database-url",
        pg,
        "--wait-ms",
        wait_ms,
    ])
}

fn category(out: &str, name: &str) -> (u64, u64) {
    let line = out
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_default();
    let n = |i: usize| {
        line.split_whitespace()
            .nth(i)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (n(1), n(2))
}

/// Every kind of hold through the module: opened, settled in full and in part, voided,
/// cancelled, confirmed, committed, and expired by the timer (TTL 300 ms, then a wait).
/// Returns the events appended per type.
async fn module_workload(c: &mut redis::aio::MultiplexedConnection) -> BTreeMap<String, i64> {
    cmd(c, &["ASSET.INCR", "acct:1", "gold", "100"]).await;
    cmd(c, &["ASSET.INCR", "acct:2", "gold", "50"]).await;
    for i in 0..6 {
        let id = items(
            &cmd(
                c,
                &[
                    "ASSET.HOLD",
                    "acct:1",
                    "gold",
                    "5.5",
                    "TTL",
                    "600000",
                    "ID",
                    &format!("h{i}"),
                ],
            )
            .await,
        );
        assert_eq!(id[0], (i + 1).to_string());
    }
    cmd(c, &["ASSET.SETTLE", "acct:1", "1"]).await;
    cmd(
        c,
        &["ASSET.SETTLE", "acct:1", "2", "3.25", "META", "partial"],
    )
    .await;
    cmd(c, &["ASSET.VOID", "acct:1", "3"]).await;
    cmd(c, &["ASSET.HOLD", "acct:1", "gold", "2", "TTL", "300"]).await;
    cmd(c, &["ASSET.HOLD", "acct:2", "gold", "10", "TTL", "600000"]).await;
    cmd(c, &["COUPON.CREATE", "camp", "10", "PERUSER", "2"]).await;
    for (user, ttl) in [("u1", "600000"), ("u2", "600000"), ("u3", "300")] {
        cmd(c, &["COUPON.RESERVE", "camp", user, "TTL", ttl]).await;
    }
    cmd(c, &["COUPON.CONFIRM", "camp", "u1", "1"]).await;
    cmd(c, &["COUPON.CANCEL", "camp", "u2", "2"]).await;
    cmd(c, &["COUPON.RESERVE", "camp", "u4", "TTL", "600000"]).await;
    cmd(c, &["USAGE.LIMIT", "quota", "100"]).await;
    cmd(c, &["USAGE.RESERVE", "quota", "10", "TTL", "600000"]).await;
    cmd(c, &["USAGE.COMMIT", "quota", "1", "7"]).await;
    cmd(c, &["USAGE.RESERVE", "quota", "5", "TTL", "600000"]).await;
    cmd(c, &["USAGE.CANCEL", "quota", "2"]).await;
    cmd(c, &["USAGE.RESERVE", "quota", "4.5", "TTL", "600000"]).await;
    cmd(c, &["USAGE.RESERVE", "quota", "1", "TTL", "300"]).await;
    tokio::time::sleep(std::time::Duration::from_millis(1_000)).await; // the timer expires 3
    [
        ("asset.incr", 2),
        ("asset.hold", 8),
        ("asset.settle", 2),
        ("asset.void", 1),
        ("asset.expire", 1),
        ("coupon.create", 1),
        ("coupon.reserve", 4),
        ("coupon.confirm", 1),
        ("coupon.cancel", 1),
        ("coupon.expire", 1),
        ("usage.limit", 1),
        ("usage.reserve", 4),
        ("usage.commit", 1),
        ("usage.cancel", 1),
        ("usage.expire", 1),
    ]
    .into_iter()
    .map(|(t, n)| (t.to_string(), n))
    .collect()
}

async fn events_per_type(pool: &sqlx::PgPool) -> BTreeMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>("SELECT type, count(*) FROM events GROUP BY type")
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

/// The hold records of `keys` as the module keeps them, without tombstones and `d` (a lower
/// bound the module may leave below the earliest deadline), and the due members of their
/// open holds with their scores.
async fn hold_records(
    c: &mut redis::aio::MultiplexedConnection,
    keys: &[&str],
) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for k in keys {
        let mut h: BTreeMap<String, String> = redis::cmd("HGETALL")
            .arg(format!("tally:holds:{}:{k}", k.len()))
            .query_async(c)
            .await
            .unwrap();
        h.retain(|f, _| !f.starts_with("x:") && f != "d");
        for id in h
            .keys()
            .filter_map(|f| f.strip_prefix("o:"))
            .map(String::from)
            .collect::<Vec<_>>()
        {
            let score: Option<i64> = redis::cmd("ZSCORE")
                .arg("tally:due")
                .arg(format!("{}:{k}:{id}", k.len()))
                .query_async(c)
                .await
                .unwrap();
            h.insert(format!("due:{id}"), format!("{score:?}"));
        }
        out.insert(k.to_string(), h);
    }
    out
}

/// The module's holds shipped on the direct path: every hold event in Postgres once, the
/// holds table equal to Redis (reconcile 0, a tampered hold named); Redis lost and restored:
/// the same hold records and due members, reconcile 0, ids continue; a hold whose deadline
/// passed while Redis was down is expired by the module's timer right after the restore,
/// with its event, which the shipper carries like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn module_holds_are_shipped_reconciled_and_restored() {
    let _g = serial();
    let Some(ModuleStack {
        redis,
        pg,
        pool,
        mut c,
    }) = module_stack("module_holds_are_shipped_reconciled_and_restored").await
    else {
        return;
    };
    let dir = tmpdir("holds-module");
    let args = base_args("run", Some(&redis.url()), Some(&pg.url()), None);
    let mut sh = Shipper::spawn(&args, &dir.join("first.log"));
    let want = module_workload(&mut c).await;
    let all: i64 = want.values().sum();
    let got = wait_count(&pool, EVENTS_SQL, all, std::time::Duration::from_secs(60)).await;
    assert_eq!(got, all, "{}", tail_lines(&sh.log_text(), 40));
    assert_eq!(events_per_type(&pool).await, want, "every hold event once");
    // the module's own listing of acct:1's open holds is the table's
    let listed = items(&cmd(&mut c, &["ASSET.HOLDS", "acct:1"]).await);
    let table: Vec<(i64, String, String, i64)> = sqlx::query_as(
        "SELECT hold_id, subject, amount::text, expires_ms FROM holds
          WHERE data_key = 'acct:1' AND status = 'open' ORDER BY hold_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let table: Vec<String> = table
        .into_iter()
        .flat_map(|(i, s, a, e)| [i.to_string(), s, normalize_decimal(&a), e.to_string()])
        .collect();
    assert_eq!(listed, table);
    let (code, out) = reconcile(&redis.url(), &pg.url(), "60000");
    assert_eq!(code, 0, "{out}");
    assert_eq!(category(&out, "holds"), (4, 4), "{out}");

    let keys = ["acct:1", "acct:2", "camp", "quota"];
    let before = hold_records(&mut c, &keys).await;
    assert_eq!(before["acct:1"]["n"], "7", "{before:?}");
    let camp_before = hgetall(&mut c, "camp").await;
    // a hold changed behind the module's back is named
    let holds_1 = "tally:holds:6:acct:1";
    let real: String = redis::cmd("HGET")
        .arg(holds_1)
        .arg("o:4")
        .query_async(&mut c)
        .await
        .unwrap();
    cmd(
        &mut c,
        &["HSET", holds_1, "o:4", &real.replacen(":5.5:", ":6:", 1)],
    )
    .await;
    let (code, out) = reconcile(&redis.url(), &pg.url(), "0");
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("MISMATCH holds acct:1: hold 4: redis"),
        "{out}"
    );

    // a hold shipped just before Redis loses everything, whose deadline passes while it is down
    cmd(&mut c, &["ASSET.INCR", "acct:late", "gold", "1"]).await;
    let late = ["ASSET.HOLD", "acct:late", "gold", "1", "TTL", "4000"];
    let late = items(&cmd(&mut c, &late).await);
    let late_made = std::time::Instant::now();
    let all = all + 2;
    let got = wait_count(&pool, EVENTS_SQL, all, std::time::Duration::from_secs(60)).await;
    assert_eq!(got, all, "{}", tail_lines(&sh.log_text(), 40));
    sh.sigterm();
    assert!(sh
        .wait_timeout(std::time::Duration::from_secs(30))
        .expect("exit")
        .success());
    cmd(&mut c, &["FLUSHALL"]).await;
    assert!(
        late_made.elapsed() < std::time::Duration::from_millis(3_500),
        "too slow to test"
    );
    let left = std::time::Duration::from_millis(4_500).saturating_sub(late_made.elapsed());
    tokio::time::sleep(left).await;
    let (code, out) = shipper_cmd(&[
        "restore",
        "--redis-url",
        &redis.url(),
        "--database-url",
        &pg.url(),
    ]);
    // restore waits for the module to expire the late hold: its event is in flight
    assert_eq!(code, 2, "restore:\n{out}");
    assert!(
        out.contains(
            "1 of them had passed their deadline while Redis was down: the module expired 1 "
        ),
        "{out}"
    );
    assert!(out.contains("restored 7 open holds of 5 keys"), "{out}");
    assert_eq!(
        hold_records(&mut c, &keys).await,
        before,
        "hold records as the module kept them"
    );
    assert_eq!(hgetall(&mut c, "camp").await, camp_before);
    let late_records: BTreeMap<String, String> = redis::cmd("HGETALL")
        .arg("tally:holds:9:acct:late")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(
        late_records
            .get(&format!("x:{}", late[0]))
            .map(|x| x.starts_with("expired:")),
        Some(true),
        "{late_records:?}"
    );

    // ids continue, restored holds settle, and the history carries on without a fork
    assert_eq!(
        items(
            &cmd(
                &mut c,
                &["ASSET.HOLD", "acct:1", "gold", "1", "TTL", "600000"]
            )
            .await
        )[0],
        "8"
    );
    assert_eq!(
        items(&cmd(&mut c, &["COUPON.RESERVE", "camp", "u5", "TTL", "600000"]).await)[0],
        "5"
    );
    assert_eq!(
        items(&cmd(&mut c, &["USAGE.RESERVE", "quota", "1", "TTL", "600000"]).await)[0],
        "5"
    );
    assert_eq!(
        items(&cmd(&mut c, &["ASSET.SETTLE", "acct:1", "4"]).await),
        ["5.5", "85.75"]
    );
    let mut sh = Shipper::spawn(&args, &dir.join("second.log"));
    let got = wait_count(
        &pool,
        EVENTS_SQL,
        all + 5,
        std::time::Duration::from_secs(60),
    )
    .await;
    assert_eq!(got, all + 5, "{}", tail_lines(&sh.log_text(), 40));
    let (code, out) = reconcile(&redis.url(), &pg.url(), "60000");
    assert_eq!(code, 0, "{out}");
    let status: String =
        sqlx::query_scalar("SELECT status FROM holds WHERE data_key = 'acct:late'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(status, "expired");
    assert_eq!(
        count(&pool, "SELECT count(*) FROM sequence_anomalies").await,
        0
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM failed_events").await, 0);
    sh.sigterm();
    assert!(sh
        .wait_timeout(std::time::Duration::from_secs(30))
        .expect("exit")
        .success());

    // over a Redis that has them, restore refuses; --force writes the same records again
    let now = hold_records(&mut c, &keys).await;
    let restore = [
        "restore",
        "--redis-url",
        &redis.url(),
        "--database-url",
        &pg.url(),
    ];
    let (code, out) = shipper_cmd(&restore);
    assert!(code == 1 && out.contains("refusing to overwrite"), "{out}");
    let (code, out) = shipper_cmd(&[&restore[..], &["--force"]].concat());
    assert_eq!(code, 0, "restore --force:\n{out}");
    assert_eq!(hold_records(&mut c, &keys).await, now);
    let due: i64 = redis::cmd("ZCARD")
        .arg("tally:due")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(
        due, 8,
        "one member per open hold, the tombstones' gone with the due set"
    );
}

/// The same workload through Kafka: every hold event in Postgres once, reconcile 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn module_holds_through_kafka() {
    let _g = serial();
    let Some(ModuleStack {
        redis,
        pg,
        pool,
        mut c,
    }) = module_stack("module_holds_through_kafka").await
    else {
        return;
    };
    let Some(kafka) = Tansu::start() else {
        skip("module_holds_through_kafka", "tansu not found");
        return;
    };
    let args = base_args(
        "run",
        Some(&redis.url()),
        Some(&pg.url()),
        Some(&kafka.brokers()),
    );
    let mut sh = Shipper::spawn(&args, &tmpdir("holds-kafka-module").join("shipper.log"));
    let want = module_workload(&mut c).await;
    let all: i64 = want.values().sum();
    let got = wait_count(&pool, EVENTS_SQL, all, std::time::Duration::from_secs(90)).await;
    assert_eq!(got, all, "{}", tail_lines(&sh.log_text(), 40));
    assert_eq!(events_per_type(&pool).await, want, "every hold event once");
    assert_eq!(
        count(&pool, "SELECT count(*) FROM events WHERE via IS NULL").await,
        0,
        "all through Kafka"
    );
    let (code, out) = reconcile(&redis.url(), &pg.url(), "60000");
    assert_eq!(code, 0, "{out}");
    assert_eq!(category(&out, "holds"), (4, 4), "{out}");
    sh.sigterm();
    assert!(sh
        .wait_timeout(std::time::Duration::from_secs(30))
        .expect("exit")
        .success());
}

/// The open holds of `key` as `(field or user, amount, deadline)`, from its hold records.
async fn open_holds(
    c: &mut redis::aio::MultiplexedConnection,
    key: &str,
) -> Vec<(String, String, i64)> {
    let h = hgetall(c, &format!("tally:holds:{}:{key}", key.len())).await;
    let mut out: Vec<(String, String, i64)> = h
        .iter()
        .filter(|(f, _)| f.starts_with("o:"))
        .map(|(_, v)| {
            let p: Vec<&str> = v.splitn(4, ':').collect();
            (p[3].to_string(), p[2].to_string(), p[0].parse().unwrap())
        })
        .collect();
    out.sort();
    out
}

/// `restore --as-of` brings the holds back to the moment through the module: those opened
/// after it voided, those open at it and settled, voided, confirmed or cancelled since opened
/// again with their field or user, amount and deadline; balances and claims as before; the
/// history keeps both, reconcile matches, and a second run changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_as_of_brings_the_holds_of_the_moment_back() {
    let _g = serial();
    let Some(ModuleStack {
        redis,
        pg,
        pool,
        mut c,
    }) = module_stack("restore_as_of_brings_the_holds_of_the_moment_back").await
    else {
        return;
    };
    let args = base_args("run", Some(&redis.url()), Some(&pg.url()), None);
    let mut sh = Shipper::spawn(&args, &tmpdir("holds-as-of").join("shipper.log"));
    cmd(&mut c, &["ASSET.INCR", "acct", "gold", "100"]).await;
    for amount in ["10", "20", "30"] {
        cmd(
            &mut c,
            &["ASSET.HOLD", "acct", "gold", amount, "TTL", "600000"],
        )
        .await;
    }
    cmd(&mut c, &["COUPON.CREATE", "camp", "10"]).await;
    cmd(&mut c, &["COUPON.RESERVE", "camp", "u1", "TTL", "600000"]).await;
    cmd(&mut c, &["USAGE.LIMIT", "quota", "100"]).await;
    cmd(&mut c, &["USAGE.RESERVE", "quota", "10", "TTL", "600000"]).await;
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let moment = now_ms();
    let at_moment = (
        open_holds(&mut c, "acct").await,
        open_holds(&mut c, "camp").await,
        open_holds(&mut c, "quota").await,
    );
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    // the incident
    cmd(&mut c, &["ASSET.SETTLE", "acct", "2"]).await;
    cmd(&mut c, &["ASSET.VOID", "acct", "3"]).await;
    cmd(
        &mut c,
        &["ASSET.HOLD", "acct", "gold", "5", "TTL", "600000"],
    )
    .await;
    cmd(&mut c, &["COUPON.CONFIRM", "camp", "u1", "1"]).await;
    cmd(&mut c, &["COUPON.RESERVE", "camp", "u2", "TTL", "600000"]).await;
    cmd(&mut c, &["USAGE.CANCEL", "quota", "1"]).await;
    cmd(&mut c, &["USAGE.RESERVE", "quota", "3", "TTL", "600000"]).await;
    let (code, out) = reconcile(&redis.url(), &pg.url(), "60000");
    assert_eq!(code, 0, "{out}");

    let as_of = [
        "restore",
        "--redis-url",
        &redis.url(),
        "--database-url",
        &pg.url(),
        "--as-of",
        &moment.to_string(),
    ];
    let (code, out) = shipper_cmd(&as_of);
    assert_eq!(
        code,
        0,
        "restore --as-of:\n{out}\n{}",
        tail_lines(&sh.log_text(), 20)
    );
    assert!(
        out.contains("holds: 3 opened after the moment voided, 4 open at the moment opened again"),
        "{out}"
    );
    let near = |a: &[(String, String, i64)], b: &[(String, String, i64)]| {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| x.0 == y.0 && x.1 == y.1 && (x.2 - y.2).abs() < 2_000)
    };
    let now = (
        open_holds(&mut c, "acct").await,
        open_holds(&mut c, "camp").await,
        open_holds(&mut c, "quota").await,
    );
    assert!(near(&now.0, &at_moment.0), "{now:?}\n{at_moment:?}");
    assert!(near(&now.1, &at_moment.1), "{now:?}\n{at_moment:?}");
    assert!(near(&now.2, &at_moment.2), "{now:?}\n{at_moment:?}");
    assert_eq!(
        hgetall(&mut c, "acct").await["gold"],
        "100",
        "the settle is undone"
    );
    let camp = hgetall(&mut c, "camp").await;
    assert!(
        !camp.contains_key("c:u1"),
        "the claim confirmed after the moment is released: {camp:?}"
    );
    assert_eq!(camp["issued"], "1", "{camp:?}");

    let events = count(&pool, EVENTS_SQL).await;
    let (code, out) = reconcile(&redis.url(), &pg.url(), "60000");
    assert_eq!(code, 0, "{out}");
    let (code, out) = shipper_cmd(&as_of);
    assert_eq!(code, 0, "a second run:\n{out}");
    assert!(
        out.contains("holds: 0 opened after the moment voided, 0 open at the moment opened again"),
        "{out}"
    );
    let (code, out) = reconcile(&redis.url(), &pg.url(), "60000");
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        count(&pool, EVENTS_SQL).await,
        events,
        "a second run changes nothing"
    );
    sh.sigterm();
    assert!(sh
        .wait_timeout(std::time::Duration::from_secs(30))
        .expect("exit")
        .success());
}
