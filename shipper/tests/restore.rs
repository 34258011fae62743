//! Reconcile and restore: after a workload is shipped, Redis loses everything (FLUSHALL);
//! `restore` rebuilds it from Postgres, `reconcile` proves both sides match, and the system
//! keeps operating: new events continue each key's sequence and persist without conflicts.

// Scenarios read better whole than cut into helpers, and every test holds `common::serial()`
// (a std Mutex guard that runs the heavy tests one at a time) across its awaits on purpose.
#![allow(clippy::too_many_lines, clippy::await_holding_lock)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;

/// Every key (but the stream and op-id records) with its full hash content.
async fn state(
    c: &mut redis::aio::MultiplexedConnection,
) -> BTreeMap<String, BTreeMap<String, String>> {
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(c).await.unwrap();
    let mut out = BTreeMap::new();
    for k in keys {
        if k.starts_with("tally:log") || k.starts_with("tally:op:") {
            continue;
        }
        let h: BTreeMap<String, String> =
            redis::cmd("HGETALL").arg(&k).query_async(c).await.unwrap();
        out.insert(k, h);
    }
    out
}

/// The op-ids are remembered again after a restore: a client's retry of `g<i>` gets its first
/// reply, changes nothing, appends nothing; the same op-id with other arguments is a CONFLICT.
async fn op_ids_replay_after_restore(
    c: &mut redis::aio::MultiplexedConnection,
    first_replies: &[redis::Value],
    before: &BTreeMap<String, BTreeMap<String, String>>,
) {
    let events_before: i64 = redis::cmd("XLEN")
        .arg("tally:log")
        .query_async(c)
        .await
        .unwrap();
    for i in [0usize, 31, 59] {
        let acct = format!("acct:{}", i % 7);
        let again = cmd(
            c,
            &[
                "ASSET.INCR",
                &acct,
                "gold",
                "10.43",
                "gems",
                "1",
                "ID",
                &format!("g{i}"),
            ],
        )
        .await;
        assert_eq!(again, first_replies[i], "retry of g{i} after restore");
    }
    let conflict = redis::cmd("ASSET.INCR")
        .arg("acct:0")
        .arg("gold")
        .arg("1")
        .arg("ID")
        .arg("g0")
        .query_async::<redis::Value>(c)
        .await;
    assert!(
        conflict
            .as_ref()
            .is_err_and(|e| e.to_string().contains("CONFLICT")),
        "{conflict:?}"
    );
    let events_after: i64 = redis::cmd("XLEN")
        .arg("tally:log")
        .query_async(c)
        .await
        .unwrap();
    assert_eq!(
        events_after, events_before,
        "a retry after restore appended an event"
    );
    assert_eq!(
        &state(c).await,
        before,
        "a retry after restore changed a balance"
    );
    let ttl: i64 = redis::cmd("PTTL")
        .arg("tally:op:6:acct:0:g0")
        .query_async(c)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 86_400_000, "op-id record TTL {ttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_restore_reconcile_and_keep_operating() {
    let _g = serial();
    let Some(ModuleStack {
        redis,
        pg,
        pool,
        mut c,
    }) = module_stack("flush_restore_reconcile_and_keep_operating").await
    else {
        return;
    };
    let log = tmpdir("restore").join("shipper.log");
    let mut shipper = Shipper::spawn(
        &base_args("run", Some(&redis.url()), Some(&pg.url()), None),
        &log,
    );
    shipper.wait_ready(Duration::from_secs(30));

    cmd(&mut c, &["COUPON.CREATE", "camp", "10", "PERUSER", "2"]).await;
    cmd(&mut c, &["USAGE.LIMIT", "quota", "100", "PERIOD", "month"]).await;
    let mut first_replies = Vec::new();
    for i in 0..60 {
        let acct = format!("acct:{}", i % 7);
        first_replies.push(
            cmd(
                &mut c,
                &[
                    "ASSET.INCR",
                    &acct,
                    "gold",
                    "10.43",
                    "gems",
                    "1",
                    "ID",
                    &format!("g{i}"),
                ],
            )
            .await,
        );
        if i % 4 == 0 {
            cmd(
                &mut c,
                &["ASSET.TRANSFER", &acct, "acct:bank", "gold", "0.1"],
            )
            .await;
        }
        if i % 5 == 0 {
            let _ = redis::cmd("COUPON.CLAIM")
                .arg("camp")
                .arg(format!("u{}", i % 4))
                .query_async::<redis::Value>(&mut c)
                .await;
        }
        if i % 3 == 0 {
            cmd(&mut c, &["USAGE.CONSUME", "quota", "1.5"]).await;
        }
    }
    cmd(&mut c, &["COUPON.RELEASE", "camp", "u0"]).await;
    let camp_by_module = hgetall(&mut c, "camp").await;
    assert_eq!(
        camp_by_module.get("c:u1").map(String::as_str),
        Some("2"),
        "{camp_by_module:?}"
    );

    let (code, out) = shipper_cmd(&[
        "reconcile",
        "--redis-url",
        &redis.url(),
        "--database-url",
        &pg.url(),
        "--wait-ms",
        "60000",
    ]);
    assert_eq!(code, 0, "reconcile before the flush:\n{out}");
    assert!(
        out.contains("verdict: MATCH") && out.contains("drained"),
        "{out}"
    );
    let checked = |cat: &str| -> u64 {
        let line = out.lines().find(|l| l.starts_with(cat)).unwrap_or_default();
        line.split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    assert!(
        checked("balances") == 15
            && checked("coupons") == 1
            && checked("usage") == 1
            && checked("sequences") == 10,
        "{out}"
    );

    // Reconcile notices a divergence (and exits 1).
    let _: () = redis::cmd("HSET")
        .arg("acct:1")
        .arg("gold")
        .arg("999")
        .query_async(&mut c)
        .await
        .unwrap();
    let (code, out) = shipper_cmd(&[
        "reconcile",
        "--redis-url",
        &redis.url(),
        "--database-url",
        &pg.url(),
        "--wait-ms",
        "0",
    ]);
    assert_eq!(
        code, 1,
        "reconcile must report the tampered balance:\n{out}"
    );
    assert!(out.contains("balances acct:1 gold: redis 999"), "{out}");
    let (code, out) = shipper_cmd(&[
        "restore",
        "--redis-url",
        &redis.url(),
        "--database-url",
        &pg.url(),
    ]);
    assert_ne!(
        code, 0,
        "restore must refuse to overwrite existing keys:\n{out}"
    );
    assert!(out.contains("refusing"), "{out}");
    // Put the true value back through restore --force below; first snapshot the truth.
    let (code, out) = shipper_cmd(&[
        "restore",
        "--redis-url",
        &redis.url(),
        "--database-url",
        &pg.url(),
        "--force",
    ]);
    assert_eq!(code, 0, "restore --force:\n{out}");
    let before = state(&mut c).await;
    assert!(before.len() >= 11, "{before:?}");

    // Redis loses everything.
    shipper.sigterm();
    assert!(shipper
        .wait_timeout(Duration::from_secs(30))
        .is_some_and(|s| s.success()));
    cmd(&mut c, &["FLUSHALL"]).await;
    let (code, out) = shipper_cmd(&[
        "restore",
        "--redis-url",
        &redis.url(),
        "--database-url",
        &pg.url(),
    ]);
    assert_eq!(code, 0, "restore:\n{out}");
    assert!(out.contains("verdict: MATCH"), "{out}");
    let after = state(&mut c).await;
    assert_eq!(
        after, before,
        "restored state differs from the state before the loss"
    );
    assert_eq!(
        after["camp"], camp_by_module,
        "the campaign restored differs from the one the module wrote"
    );
    assert!(out.contains("restored 60 op-id records"), "{out}");
    op_ids_replay_after_restore(&mut c, &first_replies, &before).await;

    // It keeps operating: sequences and issue numbers continue, rows persist without conflict.
    let seq_before: i64 = redis::cmd("HGET")
        .arg("tally:seq")
        .arg("acct:1")
        .query_async(&mut c)
        .await
        .unwrap();
    let last_issue: i64 = redis::cmd("HGET")
        .arg("camp")
        .arg("last_issue")
        .query_async(&mut c)
        .await
        .unwrap();
    let mut shipper = Shipper::spawn(
        &base_args("run", Some(&redis.url()), Some(&pg.url()), None),
        &log,
    );
    shipper.wait_ready(Duration::from_secs(30));
    cmd(&mut c, &["ASSET.INCR", "acct:1", "gold", "1"]).await;
    let claim: (i64, i64) = redis::cmd("COUPON.CLAIM")
        .arg("camp")
        .arg("newcomer")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(
        claim.0,
        last_issue + 1,
        "issue numbers continue after restore"
    );
    cmd(&mut c, &["USAGE.CONSUME", "quota", "1"]).await;
    let (code, out) = shipper_cmd(&[
        "reconcile",
        "--redis-url",
        &redis.url(),
        "--database-url",
        &pg.url(),
        "--wait-ms",
        "60000",
    ]);
    assert_eq!(code, 0, "reconcile after restore and new traffic:\n{out}");
    let pg_seq = count(
        &pool,
        "SELECT last_seq FROM key_seqs WHERE data_key = 'acct:1'",
    )
    .await;
    assert_eq!(
        pg_seq,
        seq_before + 1,
        "the sequence continued where the history stopped"
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM sequence_anomalies").await,
        0
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM failed_events").await, 0);
    shipper.sigterm();
    assert!(shipper
        .wait_timeout(Duration::from_secs(30))
        .is_some_and(|s| s.success()));
}

/// restore refuses while events are in flight (stream entries not acknowledged, unresolved
/// failed events) and leaves Redis untouched; --force says what it leaves out and runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refuses_until_the_pipeline_drains() {
    let _g = serial();
    let Some(ModuleStack {
        redis,
        pg,
        pool,
        mut c,
    }) = module_stack("restore_refuses_until_the_pipeline_drains").await
    else {
        return;
    };
    let restore = |force: bool| {
        let mut a = vec!["restore", "--redis-url", "", "--database-url", ""];
        let (r, p) = (redis.url(), pg.url());
        a[2] = &r;
        a[4] = &p;
        if force {
            a.push("--force");
        }
        shipper_cmd(&a)
    };
    for i in 0..5 {
        cmd(
            &mut c,
            &["ASSET.INCR", "acct:1", "gold", "1", "ID", &format!("r{i}")],
        )
        .await;
    }
    // Redis loses its data keys, the stream still holds 5 unshipped events
    cmd(&mut c, &["DEL", "acct:1", "tally:seq"]).await;
    let (code, out) = restore(false);
    assert_ne!(code, 0, "restore ran with 5 events in the stream:\n{out}");
    assert!(
        out.contains("5 stream entries not yet acknowledged"),
        "{out}"
    );
    assert_eq!(xlen(&mut c, STREAM).await, 5);
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("acct:*")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(keys.is_empty(), "a refused restore wrote {keys:?}");

    // shipped, but one entry is not an event: an unresolved failed event blocks the restore
    xadd(&mut c, STREAM, "nope", "x").await;
    let log = tmpdir("restore-drain").join("shipper.log");
    let mut sh = Shipper::spawn(
        &base_args("run", Some(&redis.url()), Some(&pg.url()), None),
        &log,
    );
    assert_eq!(
        wait_count(
            &pool,
            "SELECT count(*) FROM failed_events",
            1,
            Duration::from_secs(60)
        )
        .await,
        1
    );
    assert_eq!(
        wait_count(
            &pool,
            "SELECT count(*) FROM events",
            5,
            Duration::from_secs(60)
        )
        .await,
        5
    );
    sh.sigterm();
    assert!(sh
        .wait_timeout(Duration::from_secs(30))
        .is_some_and(|s| s.success()));
    assert_eq!(group_pending(&mut c, STREAM, "tally-shipper").await, 0);
    let (code, out) = restore(false);
    assert_ne!(
        code, 0,
        "restore ran with an unresolved failed event:\n{out}"
    );
    assert!(
        out.contains("1 unresolved failed_events") && !out.contains("stream entries"),
        "{out}"
    );

    // --force names what it leaves out, restores, and the state matches the history
    let (code, out) = restore(true);
    assert_eq!(code, 0, "restore --force:\n{out}");
    assert!(
        out.contains("will NOT include") && out.contains("1 unresolved failed_events"),
        "{out}"
    );
    let gold: String = redis::cmd("HGET")
        .arg("acct:1")
        .arg("gold")
        .query_async(&mut c)
        .await
        .unwrap();
    let seq: i64 = redis::cmd("HGET")
        .arg("tally:seq")
        .arg("acct:1")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!((gold.as_str(), seq), ("5", 5));
}

/// `restore --as-of` rolls balances and claims back to a moment by appending correcting
/// events through the module: the state equals a snapshot taken at that moment, the history
/// keeps the incident and the correction, reconcile matches, and a second run changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_as_of_rolls_balances_and_claims_back_through_the_module() {
    let _g = serial();
    let Some(ModuleStack {
        redis,
        pg,
        pool,
        mut c,
    }) = module_stack("restore_as_of_rolls_balances_and_claims_back").await
    else {
        return;
    };
    let log = tmpdir("restore-as-of").join("shipper.log");
    let mut sh = Shipper::spawn(
        &base_args("run", Some(&redis.url()), Some(&pg.url()), None),
        &log,
    );
    cmd(&mut c, &["COUPON.CREATE", "camp", "10", "PERUSER", "2"]).await;
    for i in 0..20 {
        cmd(
            &mut c,
            &[
                "ASSET.INCR",
                &format!("acct:{}", i % 4),
                "gold",
                "10.43",
                "gems",
                "1",
            ],
        )
        .await;
        if i % 5 == 0 {
            cmd(&mut c, &["COUPON.CLAIM", "camp", &format!("u{}", i % 3)]).await;
        }
    }
    // the moment, in the server's clock (events carry the server's time)
    let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(&mut c).await.unwrap();
    let moment = secs * 1000 + micros / 1000;
    let mut before = BTreeMap::new();
    for k in ["acct:0", "acct:1", "acct:2", "acct:3", "camp"] {
        before.insert(k.to_string(), hgetall(&mut c, k).await);
    }
    // the incident, strictly after the moment
    loop {
        let (s, us): (i64, i64) = redis::cmd("TIME").query_async(&mut c).await.unwrap();
        if s * 1000 + us / 1000 > moment {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    cmd(&mut c, &["ASSET.INCR", "acct:1", "gold", "1000"]).await;
    cmd(&mut c, &["ASSET.INCR", "acct:9", "gold", "5"]).await;
    cmd(&mut c, &["ASSET.INCR", "acct:2", "silver", "3"]).await;
    cmd(&mut c, &["ASSET.TRANSFER", "acct:0", "acct:3", "gold", "5"]).await;
    cmd(&mut c, &["COUPON.CLAIM", "camp", "u7"]).await;
    cmd(&mut c, &["COUPON.CLAIM", "camp", "u1"]).await; // a second claim of a holder
    let (r, p) = (redis.url(), pg.url());
    let (code, out) = shipper_cmd(&[
        "reconcile",
        "--redis-url",
        &r,
        "--database-url",
        &p,
        "--wait-ms",
        "60000",
    ]);
    assert_eq!(code, 0, "{out}");

    let m = moment.to_string();
    let (code, out) = shipper_cmd(&[
        "restore",
        "--redis-url",
        &r,
        "--database-url",
        &p,
        "--as-of",
        &m,
    ]);
    assert_eq!(code, 0, "restore --as-of (ends with reconcile):\n{out}");
    assert!(out.contains("2 claims released"), "{out}");
    for k in ["acct:0", "acct:1", "acct:3"] {
        assert_eq!(
            hgetall(&mut c, k).await,
            before[k],
            "{k} after the rollback"
        );
    }
    let mut acct2 = before["acct:2"].clone();
    acct2.insert("silver".into(), "0".into());
    assert_eq!(
        hgetall(&mut c, "acct:2").await,
        acct2,
        "a field first written after the moment rolls back to 0"
    );
    let acct9: Option<String> = redis::cmd("HGET")
        .arg("acct:9")
        .arg("gold")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(acct9.as_deref(), Some("0"));
    let camp = hgetall(&mut c, "camp").await;
    let holders = |h: &BTreeMap<String, String>| -> Vec<(String, String)> {
        h.iter()
            .filter(|(f, _)| f.starts_with("c:") || f.starts_with("h:"))
            .map(|(f, v)| (f.clone(), v.clone()))
            .collect()
    };
    assert_eq!(camp["issued"], before["camp"]["issued"]);
    assert_eq!(
        holders(&camp),
        holders(&before["camp"]),
        "claims held at the moment, no other"
    );

    // the history has the incident and the correction; a second run changes nothing
    let corrections = count(
        &pool,
        &format!("SELECT count(*) FROM events WHERE meta = 'restore --as-of {m}'"),
    )
    .await;
    assert!(
        corrections >= 5,
        "correcting events in the history: {corrections}"
    );
    let (code, out) = shipper_cmd(&[
        "restore",
        "--redis-url",
        &r,
        "--database-url",
        &p,
        "--as-of",
        &m,
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("0 fields of 0 keys corrected, 0 claims released"),
        "{out}"
    );
    assert_eq!(hgetall(&mut c, "acct:1").await, before["acct:1"]);
    sh.sigterm();
    assert!(sh
        .wait_timeout(Duration::from_secs(30))
        .is_some_and(|s| s.success()));
}
