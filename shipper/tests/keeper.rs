//! The stream keeper trims only what every group acknowledged, on every server of the matrix
//! (scripts/test.sh runs this on Redis 7.0, Redis 8.2 and Valkey 9.1): an entry another
//! group holds pending survives, and so does every entry after it that group has not read,
//! while what both groups acknowledged goes. On Redis 8.2+ the trim is `XTRIM ... ACKED`
//! (the server checks every group itself), found out once per node; elsewhere the MINID bound
//! alone. The server's SLOWLOG, told to log every command, shows which.

// Scenarios read better whole than cut into helpers, and every test holds `common::serial()`
// (a std Mutex guard that runs the heavy tests one at a time) across its awaits on purpose.
#![allow(clippy::too_many_lines, clippy::await_holding_lock)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use rand::SeedableRng;
use redis::aio::MultiplexedConnection;

const EVENTS_SQL: &str = "SELECT count(*) FROM events";

/// Whether the server is Redis 8.2 or later (Valkey reports a Redis version of 7.2).
async fn is_redis_8_2_or_later(c: &mut MultiplexedConnection) -> bool {
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(c)
        .await
        .unwrap();
    if info.contains("valkey_version:") || info.contains("server_name:valkey") {
        return false;
    }
    let version = info
        .lines()
        .find_map(|l| l.trim().strip_prefix("redis_version:"))
        .unwrap_or("0.0");
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (8, 2)
}

/// Every command the SLOWLOG holds (slowlog-log-slower-than 0 logs them all), as its words.
async fn logged_commands(c: &mut MultiplexedConnection) -> Vec<Vec<String>> {
    let log: redis::Value = cmd(c, &["SLOWLOG", "GET", "100000"]).await;
    let redis::Value::Array(entries) = log else {
        panic!("SLOWLOG GET: {log:?}")
    };
    entries
        .iter()
        .filter_map(|e| match e {
            redis::Value::Array(parts) => match parts.get(3) {
                Some(redis::Value::Array(args)) => Some(
                    args.iter()
                        .map(|a| redis::from_redis_value::<String>(a.clone()).unwrap_or_default())
                        .collect(),
                ),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

async fn first_id(c: &mut MultiplexedConnection) -> Option<String> {
    let v: redis::Value = cmd(c, &["XRANGE", STREAM, "-", "+", "COUNT", "1"]).await;
    let redis::Value::Array(entries) = v else {
        return None;
    };
    match entries.first() {
        Some(redis::Value::Array(e)) => redis::from_redis_value(e[0].clone()).ok(),
        _ => None,
    }
}

/// Waits until the stream holds exactly `len` entries, the first being `first`; then checks
/// that it stays so across several trims.
async fn settles_at(c: &mut MultiplexedConnection, len: i64, first: &str, sh: &Shipper) {
    let start = Instant::now();
    while (xlen(c, STREAM).await, first_id(c).await.as_deref()) != (len, Some(first))
        && start.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // --trim-interval-ms 200: a second is several trims
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        (xlen(c, STREAM).await, first_id(c).await.as_deref()),
        (len, Some(first)),
        "{}",
        tail_lines(&sh.log_text(), 20)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimming_keeps_what_another_group_has_not_acknowledged() {
    let _g = serial();
    let redis = Redis::start_with(
        None,
        &[
            "--slowlog-log-slower-than",
            "0",
            "--slowlog-max-len",
            "100000",
        ],
    );
    let (pg, pool) = migrated_pg().await;
    let mut c = redis.conn().await;
    let mut m = Model::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(24);
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(xadd(&mut c, STREAM, "event", &m.random_event(&mut rng)).await);
    }
    // another consumer group read all 20 and acknowledged all but the tenth
    cmd(&mut c, &["XGROUP", "CREATE", STREAM, "audit", "0"]).await;
    cmd(
        &mut c,
        &[
            "XREADGROUP",
            "GROUP",
            "audit",
            "a",
            "COUNT",
            "100",
            "STREAMS",
            STREAM,
            ">",
        ],
    )
    .await;
    let mut ack = vec!["XACK", STREAM, "audit"];
    ack.extend(
        ids.iter()
            .enumerate()
            .filter(|(i, _)| *i != 9)
            .map(|(_, id)| id.as_str()),
    );
    cmd(&mut c, &ack).await;

    let mut sh = Shipper::spawn(
        &base_args("run", Some(&redis.url()), Some(&pg.url()), None),
        &tmpdir("keeper").join("shipper.log"),
    );
    assert_eq!(
        wait_count(&pool, EVENTS_SQL, 20, Duration::from_secs(60)).await,
        20
    );
    // the shipper acknowledged all 20: the nine before the pending one go, it stays
    settles_at(&mut c, 11, &ids[9], &sh).await;

    // ten more, shipped but never read by the other group: they stay too
    for _ in 0..10 {
        ids.push(xadd(&mut c, STREAM, "event", &m.random_event(&mut rng)).await);
    }
    assert_eq!(
        wait_count(&pool, EVENTS_SQL, 30, Duration::from_secs(60)).await,
        30
    );
    assert_eq!(group_pending(&mut c, STREAM, "tally-shipper").await, 0);
    settles_at(&mut c, 21, &ids[9], &sh).await;

    // the other group acknowledges the tenth: everything it read goes, what it did not stays
    cmd(&mut c, &["XACK", STREAM, "audit", &ids[9]]).await;
    settles_at(&mut c, 10, &ids[20], &sh).await;

    sh.sigterm();
    assert!(sh
        .wait_timeout(Duration::from_secs(30))
        .is_some_and(|s| s.success()));
    assert_matches_model(&pool, &m, 0).await;

    let logged = logged_commands(&mut c).await;
    let word = |cmd: &[String], i: usize| cmd.get(i).map(|w| w.to_ascii_uppercase());
    let trims: Vec<&Vec<String>> = logged
        .iter()
        .filter(|cmd| word(cmd, 0).as_deref() == Some("XTRIM"))
        .collect();
    assert!(!trims.is_empty(), "no XTRIM logged");
    let acked = trims
        .iter()
        .filter(|t| t.iter().any(|w| w.eq_ignore_ascii_case("ACKED")))
        .count();
    if is_redis_8_2_or_later(&mut c).await {
        assert_eq!(
            acked,
            trims.len(),
            "Redis 8.2+: every trim with ACKED: {trims:?}"
        );
    } else {
        assert_eq!(acked, 0, "no ACKED before Redis 8.2: {trims:?}");
    }
    // found out once for the node, not per trim
    let docs = logged
        .iter()
        .filter(|cmd| {
            word(cmd, 0).as_deref() == Some("COMMAND") && word(cmd, 1).as_deref() == Some("DOCS")
        })
        .count();
    assert_eq!(docs, 1, "COMMAND DOCS per node: {docs}");
}
