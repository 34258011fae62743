//! Holds (docs/holds.md): hold, settle, void and expiry for balances, coupons and quotas —
//! races, replays, bad input, expiry by the primary's timer alone, across an AOF restart
//! and a replica promotion, replicas and AOF identical to the primary.
#![allow(clippy::too_many_lines)] // scenarios read top to bottom

mod common;

use std::time::{Duration, Instant};

use common::{ok, rejected, strings};
use tally_tests::{cmd, error_of, events, snapshot, wait_for_text, Redis};

const LOG: &str = "tally:log";

fn types(c: &mut redis::Connection) -> Vec<String> {
    events(c, LOG)
        .into_iter()
        .map(|(_, e)| e["type"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn count(c: &mut redis::Connection, kind: &str) -> usize {
    types(c).iter().filter(|t| *t == kind).count()
}

/// Polls until the stream holds `n` events of type `kind` (at most 10 s).
fn wait_for_events(c: &mut redis::Connection, kind: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = count(c, kind);
        if seen >= n {
            assert_eq!(seen, n, "more {kind} events than holds");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{seen} of {n} {kind} events after 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn asset_hold_settle_void_and_reasons() {
    let redis = Redis::start(&[]);
    let mut c = redis.conn();
    ok(&mut c, &["ASSET.INCR", "acct", "gold", "100"]);
    assert_eq!(
        strings(
            &mut c,
            &["ASSET.HOLD", "acct", "gold", "30", "TTL", "60000"]
        ),
        ["1", "70"]
    );
    assert_eq!(
        strings(
            &mut c,
            &["ASSET.HOLD", "acct", "gold", "50.5", "TTL", "60000"]
        ),
        ["2", "19.5"]
    );
    // Held funds cannot be spent twice: not by another hold, an INCR or a TRANSFER.
    rejected(
        &mut c,
        &["ASSET.HOLD", "acct", "gold", "20", "TTL", "1000"],
        "INSUFFICIENT",
    );
    rejected(
        &mut c,
        &["ASSET.INCR", "acct", "gold", "-20"],
        "INSUFFICIENT",
    );
    rejected(
        &mut c,
        &["ASSET.TRANSFER", "acct", "b", "gold", "20"],
        "INSUFFICIENT",
    );
    ok(&mut c, &["ASSET.INCR", "acct", "gold", "-19.5"]);
    // FLOOR / NOFLOOR apply to the hold like to a decrease.
    assert_eq!(
        strings(
            &mut c,
            &[
                "ASSET.HOLD",
                "acct",
                "gold",
                "5",
                "TTL",
                "60000",
                "FLOOR",
                "-5"
            ]
        ),
        ["3", "-5"]
    );
    assert_eq!(
        strings(&mut c, &["ASSET.AVAILABLE", "acct"]),
        ["gold", "80.5", "85.5", "-5"]
    );
    let holds = strings(&mut c, &["ASSET.HOLDS", "acct"]);
    assert_eq!(holds.len(), 12);
    assert_eq!(
        (holds[0].as_str(), holds[1].as_str(), holds[2].as_str()),
        ("1", "gold", "30")
    );
    // Partial settle: 25 spent, 5 released.
    assert_eq!(
        strings(&mut c, &["ASSET.SETTLE", "acct", "1", "25"]),
        ["25", "55.5"]
    );
    assert_eq!(strings(&mut c, &["ASSET.VOID", "acct", "3"]), ["5", "5"]);
    assert_eq!(
        strings(&mut c, &["ASSET.SETTLE", "acct", "2"]),
        ["50.5", "5"]
    );
    assert_eq!(
        strings(&mut c, &["ASSET.AVAILABLE", "acct", "gold", "silver"]),
        ["gold", "5", "0", "5", "silver", "0", "0", "0"]
    );
    let e = rejected(&mut c, &["ASSET.SETTLE", "acct", "1"], "NOTFOUND");
    assert!(e.ends_with("was settled"), "{e}");
    let e = rejected(&mut c, &["ASSET.VOID", "acct", "3"], "NOTFOUND");
    assert!(e.ends_with("was voided"), "{e}");
    let e = rejected(&mut c, &["ASSET.VOID", "acct", "99"], "NOTFOUND");
    assert!(e.ends_with("is unknown"), "{e}");
    let t = types(&mut c);
    let holds_only: Vec<&str> = t
        .iter()
        .map(String::as_str)
        .filter(|t| t.starts_with("asset.") && *t != "asset.incr")
        .collect();
    assert_eq!(
        holds_only,
        [
            "asset.hold",
            "asset.hold",
            "asset.hold",
            "asset.settle",
            "asset.void",
            "asset.settle"
        ]
    );
    let evs = events(&mut c, LOG);
    let settle = &evs
        .iter()
        .find(|(_, e)| e["type"] == "asset.settle")
        .unwrap()
        .1;
    assert_eq!(settle["changes"][0]["delta"], "-25");
    assert_eq!(settle["hold"]["settled"], "25");
    assert_eq!(settle["hold"]["amount"], "30");
    assert_eq!(settle["hold"]["status"], "settled");
}

#[test]
fn bad_hold_input_changes_nothing() {
    let redis = Redis::start(&[]);
    let mut c = redis.conn();
    ok(&mut c, &["ASSET.INCR", "acct", "gold", "100"]);
    ok(
        &mut c,
        &["ASSET.HOLD", "acct", "gold", "10", "TTL", "60000"],
    );
    ok(&mut c, &["COUPON.CREATE", "camp", "5"]);
    ok(&mut c, &["USAGE.LIMIT", "q", "10"]);
    let long = "9".repeat(40);
    for bad in [
        vec!["ASSET.HOLD", "acct", "gold", "1", "TTL", "0"],
        vec!["ASSET.HOLD", "acct", "gold", "1", "TTL", "-5"],
        vec!["ASSET.HOLD", "acct", "gold", "1", "TTL", "2592000001"],
        vec!["ASSET.HOLD", "acct", "gold", "0", "TTL", "100"],
        vec!["ASSET.HOLD", "acct", "gold", "1"],
        vec!["ASSET.HOLD", "acct", "gold", "1", "TTL", "10", "BOGUS"],
        vec!["ASSET.SETTLE", "acct", "1", "10.01"],
        vec!["ASSET.SETTLE", "acct", "1", "0"],
        vec!["ASSET.SETTLE", "acct", "1", "-1"],
        vec!["ASSET.SETTLE", "acct", &long],
        vec!["ASSET.VOID", "acct", "0"],
        vec!["ASSET.VOID", "acct", "abc"],
        vec!["COUPON.RESERVE", "camp", "u", "TTL", "0"],
        vec!["COUPON.CONFIRM", "camp", "u", "0"],
        vec!["USAGE.RESERVE", "q", "-1", "TTL", "100"],
        vec!["USAGE.COMMIT", "q", "1", "5"],
    ] {
        rejected(&mut c, &bad, "");
    }
    rejected(&mut c, &["USAGE.RESERVE", "q", "11", "TTL", "100"], "LIMIT");
    rejected(
        &mut c,
        &["USAGE.RESERVE", "nolimit", "1", "TTL", "100"],
        "NOTFOUND",
    );
    rejected(
        &mut c,
        &["COUPON.RESERVE", "nocamp", "u", "TTL", "100"],
        "NOTFOUND",
    );
    rejected(
        &mut c,
        &["ASSET.HOLD", "camp", "gold", "1", "TTL", "100"],
        "WRONGTYPE",
    );
    rejected(
        &mut c,
        &["ASSET.HOLD", "tally:x", "gold", "1", "TTL", "100"],
        "ERR",
    );
    // A bounded number of open holds per key.
    ok(&mut c, &["CONFIG", "SET", "tally.max-holds-per-key", "2"]);
    ok(&mut c, &["ASSET.HOLD", "acct", "gold", "1", "TTL", "60000"]);
    rejected(
        &mut c,
        &["ASSET.HOLD", "acct", "gold", "1", "TTL", "60000"],
        "HOLDLIMIT",
    );
}

#[test]
fn every_hold_command_replays_under_its_op_id() {
    let redis = Redis::start(&[]);
    let mut c = redis.conn();
    ok(&mut c, &["ASSET.INCR", "acct", "gold", "100"]);
    ok(&mut c, &["COUPON.CREATE", "camp", "5"]);
    ok(&mut c, &["USAGE.LIMIT", "q", "10"]);
    let steps: [&[&str]; 9] = [
        &[
            "ASSET.HOLD",
            "acct",
            "gold",
            "30",
            "TTL",
            "60000",
            "ID",
            "h1",
        ],
        &["ASSET.SETTLE", "acct", "1", "10", "ID", "s1"],
        &[
            "ASSET.HOLD",
            "acct",
            "gold",
            "5",
            "TTL",
            "60000",
            "ID",
            "h2",
        ],
        &["ASSET.VOID", "acct", "2", "ID", "v2"],
        &[
            "COUPON.RESERVE",
            "camp",
            "alice",
            "TTL",
            "60000",
            "ID",
            "r1",
        ],
        &["COUPON.CONFIRM", "camp", "alice", "1", "ID", "c1"],
        &["COUPON.RESERVE", "camp", "bob", "TTL", "60000", "ID", "r2"],
        &["COUPON.CANCEL", "camp", "bob", "2", "ID", "x2"],
        &["USAGE.RESERVE", "q", "4", "TTL", "60000", "ID", "u1"],
    ];
    for step in steps {
        let first: redis::Value = cmd(step).query(&mut c).unwrap();
        let n = events(&mut c, LOG).len();
        let again: redis::Value = cmd(step).query(&mut c).unwrap();
        assert_eq!(first, again, "{step:?} replayed a different reply");
        assert_eq!(
            events(&mut c, LOG).len(),
            n,
            "{step:?} replay appended an event"
        );
    }
    ok(&mut c, &["USAGE.COMMIT", "q", "1", "3", "ID", "k1"]);
    let n = events(&mut c, LOG).len();
    assert_eq!(
        strings(&mut c, &["USAGE.COMMIT", "q", "1", "3", "ID", "k1"]),
        ["3", "7"]
    );
    assert_eq!(events(&mut c, LOG).len(), n);
    let e = error_of(
        &mut c,
        &[
            "ASSET.HOLD",
            "acct",
            "gold",
            "31",
            "TTL",
            "60000",
            "ID",
            "h1",
        ],
    );
    assert!(e.starts_with("CONFLICT"), "{e}");
}

fn coupon_info(c: &mut redis::Connection) -> std::collections::HashMap<String, i64> {
    cmd(&["COUPON.INFO", "camp"]).query(c).unwrap()
}

/// `n` clients race one command each; returns how many succeeded.
async fn race(redis: &Redis, n: usize, args: impl Fn(usize) -> Vec<String>) -> usize {
    let mut conns = Vec::new();
    for _ in 0..50 {
        conns.push(redis.aconn().await);
    }
    let mut tasks = Vec::new();
    for i in 0..n {
        let mut conn = conns[i % conns.len()].clone();
        let a = args(i);
        tasks.push(tokio::spawn(async move {
            let refs: Vec<&str> = a.iter().map(String::as_str).collect();
            let r: redis::RedisResult<redis::Value> = cmd(&refs).query_async(&mut conn).await;
            r.is_ok()
        }));
    }
    let mut won = 0;
    for t in tasks {
        won += usize::from(t.await.unwrap_or(false));
    }
    won
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_racing_holds_against_stock_for_a_hundred() {
    let redis = Redis::start(&[]);
    let mut c = redis.conn();
    ok(
        &mut c,
        &["CONFIG", "SET", "tally.max-holds-per-key", "1000"],
    );
    ok(&mut c, &["ASSET.INCR", "acct", "gold", "1000"]);
    ok(&mut c, &["COUPON.CREATE", "camp", "100"]);
    ok(&mut c, &["USAGE.LIMIT", "q", "100"]);
    let won = race(&redis, 1000, |_| {
        ["ASSET.HOLD", "acct", "gold", "10", "TTL", "600000"]
            .map(String::from)
            .to_vec()
    })
    .await;
    assert_eq!(won, 100);
    assert_eq!(
        strings(&mut c, &["ASSET.AVAILABLE", "acct", "gold"]),
        ["gold", "1000", "1000", "0"]
    );
    let won = race(&redis, 1000, |i| {
        vec![
            "COUPON.RESERVE".into(),
            "camp".into(),
            format!("user{i}"),
            "TTL".into(),
            "600000".into(),
        ]
    })
    .await;
    assert_eq!(won, 100);
    let won = race(&redis, 1000, |_| {
        ["USAGE.RESERVE", "q", "1", "TTL", "600000"]
            .map(String::from)
            .to_vec()
    })
    .await;
    assert_eq!(won, 100);
    let info = coupon_info(&mut c);
    assert_eq!(
        (info["issued"], info["reserved"], info["remaining"]),
        (100, 100, 0)
    );
    let get: Vec<String> = cmd(&["USAGE.GET", "q"]).query(&mut c).unwrap();
    assert_eq!(&get[..6], ["used", "0", "limit", "100", "reserved", "100"]);
    assert_eq!(count(&mut c, "asset.hold"), 100);
    assert_eq!(count(&mut c, "coupon.reserve"), 100);
    assert_eq!(count(&mut c, "usage.reserve"), 100);
}

#[test]
fn holds_expire_with_no_client_touching_the_key() {
    let redis = Redis::start(&[]);
    let mut c = redis.conn();
    ok(&mut c, &["ASSET.INCR", "acct", "gold", "100"]);
    ok(&mut c, &["COUPON.CREATE", "camp", "1"]);
    ok(&mut c, &["USAGE.LIMIT", "q", "10"]);
    ok(&mut c, &["ASSET.HOLD", "acct", "gold", "100", "TTL", "150"]);
    ok(&mut c, &["COUPON.RESERVE", "camp", "alice", "TTL", "150"]);
    ok(&mut c, &["USAGE.RESERVE", "q", "10", "TTL", "150"]);
    ok(
        &mut c,
        &["ASSET.HOLD", "acct", "gold", "0.5", "TTL", "100", "NOFLOOR"],
    );
    wait_for_events(&mut c, "asset.expire", 2);
    wait_for_events(&mut c, "coupon.expire", 1);
    wait_for_events(&mut c, "usage.expire", 1);
    assert_eq!(
        strings(&mut c, &["ASSET.AVAILABLE", "acct"]),
        ["gold", "100", "0", "100"]
    );
    let info = coupon_info(&mut c);
    assert_eq!(
        (info["issued"], info["reserved"], info["remaining"]),
        (0, 0, 1)
    );
    let e = rejected(&mut c, &["ASSET.SETTLE", "acct", "1"], "NOTFOUND");
    assert!(e.ends_with("expired"), "{e}");
    let e = rejected(
        &mut c,
        &["COUPON.CONFIRM", "camp", "alice", "1"],
        "NOTFOUND",
    );
    assert!(e.ends_with("expired"), "{e}");
    // The expiries' events carry the hold and, for a coupon, the stock given back.
    let evs = events(&mut c, LOG);
    let exp = &evs
        .iter()
        .find(|(_, e)| e["type"] == "coupon.expire")
        .unwrap()
        .1;
    assert_eq!(exp["coupon"]["issued"], 0);
    assert_eq!(exp["hold"]["status"], "expired");
    assert!(exp["op"].is_null());
    assert!(exp["ts"].as_i64() >= exp["hold"]["expires"].as_i64());
    // Many holds due at once: all expire, each once, a bounded number per tick.
    ok(
        &mut c,
        &["CONFIG", "SET", "tally.hold-expire-per-tick", "50"],
    );
    ok(
        &mut c,
        &["CONFIG", "SET", "tally.max-holds-per-key", "100000"],
    );
    ok(&mut c, &["ASSET.INCR", "acct", "gold", "1000"]);
    let mut pipe = redis::pipe();
    for _ in 0..2000 {
        pipe.cmd("ASSET.HOLD")
            .arg("acct")
            .arg("gold")
            .arg("0.5")
            .arg("TTL")
            .arg("100");
    }
    let _: Vec<redis::Value> = pipe.query(&mut c).unwrap();
    wait_for_events(&mut c, "asset.expire", 2002);
    assert_eq!(
        strings(&mut c, &["ASSET.AVAILABLE", "acct", "gold"]),
        ["gold", "1100", "0", "1100"]
    );
    let due: i64 = cmd(&["ZCARD", "tally:due"]).query(&mut c).unwrap();
    assert!(due >= 2002, "tombstones keep their due members: {due}");
}

#[test]
fn a_command_expires_the_keys_due_holds_first() {
    let redis = Redis::start(&[]);
    let mut c = redis.conn();
    ok(
        &mut c,
        &["CONFIG", "SET", "tally.hold-expire-per-tick", "1"],
    );
    ok(&mut c, &["ASSET.INCR", "acct", "gold", "100"]);
    // 300 holds due before acct's keep the timer (1 expiry per 10 ms tick) busy for ~3 s.
    // One key each: a hold command on a key expires that key's own due holds first, so 300
    // holds on one key would expire each other.
    let mut pipe = redis::pipe();
    for i in 0..300 {
        pipe.cmd("ASSET.HOLD")
            .arg(format!("other:{i}"))
            .arg("gold")
            .arg("1")
            .arg("TTL")
            .arg("1")
            .arg("NOFLOOR");
    }
    let _: Vec<redis::Value> = pipe.query(&mut c).unwrap();
    ok(&mut c, &["ASSET.HOLD", "acct", "gold", "100", "TTL", "20"]);
    std::thread::sleep(Duration::from_millis(30));
    // The command on acct expires its due hold itself, before spending.
    ok(&mut c, &["ASSET.INCR", "acct", "gold", "-100"]);
    let evs = events(&mut c, LOG);
    let acct: Vec<&str> = evs
        .iter()
        .filter(|(_, e)| e["keys"][0]["key"] == "acct")
        .map(|(_, e)| e["type"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        acct,
        ["asset.incr", "asset.hold", "asset.expire", "asset.incr"]
    );
    let timer_done = evs
        .iter()
        .filter(|(_, e)| {
            let key = e["keys"][0]["key"].as_str().unwrap_or_default();
            e["type"] == "asset.expire" && key.starts_with("other:")
        })
        .count();
    assert!(
        timer_done < 300,
        "the timer had caught up ({timer_done}): the test proves nothing"
    );
}

fn hold_workload(c: &mut redis::Connection) {
    ok(c, &["ASSET.INCR", "acct", "gold", "100"]);
    ok(c, &["COUPON.CREATE", "camp", "20"]);
    ok(c, &["USAGE.LIMIT", "q", "10"]);
    for i in 0..20 {
        let ttl = if i % 2 == 0 { "100" } else { "600000" };
        ok(c, &["ASSET.HOLD", "acct", "gold", "1", "TTL", ttl]);
        ok(c, &["USAGE.RESERVE", "q", "0.25", "TTL", ttl]);
        let _: redis::RedisResult<redis::Value> =
            cmd(&["COUPON.RESERVE", "camp", &format!("u{i}"), "TTL", ttl]).query(c);
    }
    ok(c, &["ASSET.SETTLE", "acct", "2", "0.5"]);
    ok(c, &["USAGE.COMMIT", "q", "4"]);
}

#[test]
fn replica_and_aof_hold_what_the_primary_holds_expiries_included() {
    let mut primary = Redis::start(&["--appendonly", "yes", "--appendfsync", "always"]);
    let replica = Redis::start(&["--replicaof", "127.0.0.1", &primary.port.to_string()]);
    let mut p = primary.conn();
    let mut r = replica.conn();
    wait_for_text(&mut r, &["INFO", "replication"], "master_link_status:up");
    hold_workload(&mut p);
    wait_for_events(&mut p, "asset.expire", 10);
    wait_for_events(&mut p, "usage.expire", 10);
    wait_for_events(&mut p, "coupon.expire", 10);
    let acked: i64 = cmd(&["WAIT", "1", "10000"]).query(&mut p).unwrap();
    assert_eq!(acked, 1);
    let ps = snapshot(&mut p);
    assert!(ps.iter().any(|(k, _)| k == "tally:due"), "{ps:?}");
    assert_eq!(ps, snapshot(&mut r), "replica differs from primary");
    drop(p);
    primary.restart();
    let mut p = primary.conn();
    assert_eq!(snapshot(&mut p), ps, "AOF reload differs");
}

#[test]
fn holds_due_across_an_aof_restart_expire_once() {
    let mut redis = Redis::start(&["--appendonly", "yes", "--appendfsync", "always"]);
    let mut c = redis.conn();
    ok(&mut c, &["ASSET.INCR", "acct", "gold", "100"]);
    ok(&mut c, &["ASSET.HOLD", "acct", "gold", "10", "TTL", "1500"]);
    ok(
        &mut c,
        &["ASSET.HOLD", "acct", "gold", "20", "TTL", "600000"],
    );
    drop(c);
    redis.restart();
    let mut c = redis.conn();
    // Both open after the restart (unless the first came due during it)...
    assert!(strings(&mut c, &["ASSET.HOLDS", "acct"]).len() >= 4);
    // ...and the due one expires on the restarted server, once.
    wait_for_events(&mut c, "asset.expire", 1);
    assert_eq!(
        strings(&mut c, &["ASSET.AVAILABLE", "acct"]),
        ["gold", "100", "20", "80"]
    );
    let evs = events(&mut c, LOG);
    let seqs: Vec<i64> = evs
        .iter()
        .map(|(_, e)| e["keys"][0]["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
}

#[test]
fn a_replica_never_expires_a_promoted_one_does_once() {
    let mut primary = Redis::start(&[]);
    let replica = Redis::start(&["--replicaof", "127.0.0.1", &primary.port.to_string()]);
    let mut p = primary.conn();
    let mut r = replica.conn();
    wait_for_text(&mut r, &["INFO", "replication"], "master_link_status:up");
    ok(&mut p, &["ASSET.INCR", "acct", "gold", "100"]);
    ok(&mut p, &["ASSET.HOLD", "acct", "gold", "60", "TTL", "300"]);
    let acked: i64 = cmd(&["WAIT", "1", "10000"]).query(&mut p).unwrap();
    assert_eq!(acked, 1);
    primary.stop();
    // Past the deadline the replica still holds it open: only a primary decides.
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(count(&mut r, "asset.expire"), 0);
    let open: Vec<String> = cmd(&["HKEYS", "tally:holds:4:acct"]).query(&mut r).unwrap();
    assert!(open.contains(&"o:1".to_string()), "{open:?}");
    ok(&mut r, &["REPLICAOF", "NO", "ONE"]);
    wait_for_events(&mut r, "asset.expire", 1);
    assert_eq!(
        strings(&mut r, &["ASSET.AVAILABLE", "acct"]),
        ["gold", "100", "0", "100"]
    );
}
