//! Failover with asynchronous replication, for real: a replica cut off from its primary is
//! promoted after the primary dies, so it lacks writes the shipper had already shipped, and
//! it hands those seq numbers out again with new event ids. The shipper, pointed at the new
//! primary, keeps every event it acknowledges; each reissued seq is recorded as a fork with
//! both event ids, and reconcile names the forks and says the history is ahead of Redis.

// Scenarios read better whole than cut into helpers, and every test holds `common::serial()`
// (a std Mutex guard that runs the heavy tests one at a time) across its awaits on purpose.
#![allow(clippy::too_many_lines, clippy::await_holding_lock)]

mod common;

use std::time::Duration;

use common::*;

const KEYS: usize = 5;

async fn incr_all(c: &mut redis::aio::MultiplexedConnection, rounds: usize) -> i64 {
    for _ in 0..rounds {
        for k in 0..KEYS {
            cmd(c, &["ASSET.INCR", &format!("acct:{k}"), "gold", "1"]).await;
        }
    }
    (rounds * KEYS) as i64
}

async fn info_field(
    c: &mut redis::aio::MultiplexedConnection,
    section: &str,
    field: &str,
) -> String {
    let text: String = redis::cmd("INFO")
        .arg(section)
        .query_async(c)
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_replica_that_lost_writes_forks_and_reconcile_names_it() {
    let _g = serial();
    let Some(ModuleStack {
        redis: primary,
        pg,
        pool,
        mut c,
    }) = module_stack("failover_forks").await
    else {
        return;
    };
    let module = module_path().expect("module");
    let replica = Redis::start(Some(&module));
    let mut r = replica.conn().await;
    cmd(
        &mut r,
        &["REPLICAOF", "127.0.0.1", &primary.port.to_string()],
    )
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while info_field(&mut r, "replication", "master_link_status").await != "up" {
        assert!(std::time::Instant::now() < deadline, "replica never linked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = tmpdir("failover").join("shipper.log");
    let mut sh = Shipper::spawn(
        &base_args("run", Some(&primary.url()), Some(&pg.url()), None),
        &log,
    );

    // 1. replicated and shipped: 3 events per key
    let mut shipped = incr_all(&mut c, 3).await;
    let acked: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(10_000)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(acked, 1, "the replica has phase 1");
    assert_eq!(
        wait_count(
            &pool,
            "SELECT count(*) FROM events",
            shipped,
            Duration::from_secs(60)
        )
        .await,
        shipped
    );

    // 2. the replica is cut off; the primary takes 4 more per key, all shipped; then it dies
    cmd(&mut r, &["REPLICAOF", "NO", "ONE"]).await;
    shipped += incr_all(&mut c, 4).await;
    assert_eq!(
        wait_count(
            &pool,
            "SELECT count(*) FROM events",
            shipped,
            Duration::from_secs(60)
        )
        .await,
        shipped
    );
    sh.sigterm();
    assert!(sh
        .wait_timeout(Duration::from_secs(30))
        .is_some_and(|s| s.success()));
    drop(primary); // SIGKILL

    // 3. the promoted replica serves clients: 2 per key, seqs 4-5 reissued with new ids
    let reissued = incr_all(&mut r, 2).await;
    let mut sh = Shipper::spawn(
        &base_args("run", Some(&replica.url()), Some(&pg.url()), None),
        &log,
    );
    let total = shipped + reissued;
    assert_eq!(
        wait_count(
            &pool,
            "SELECT count(*) FROM events",
            total,
            Duration::from_secs(60)
        )
        .await,
        total,
        "every event the new primary acknowledged is kept"
    );
    assert_eq!(group_pending(&mut r, STREAM, "tally-shipper").await, 0);

    let forks: Vec<(String, i64)> = sqlx::query_as(
        "SELECT data_key, got_seq FROM sequence_anomalies WHERE kind = 'fork' ORDER BY 1, 2",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let want: Vec<(String, i64)> = (0..KEYS)
        .flat_map(|k| [(format!("acct:{k}"), 4), (format!("acct:{k}"), 5)])
        .collect();
    assert_eq!(forks, want, "one fork per reissued seq");
    assert_eq!(
        sh.metric("tally_seq_anomalies_total"),
        Some(reissued as f64)
    );

    let (code, out) = shipper_cmd(&[
        "reconcile",
        "--redis-url",
        &replica.url(),
        "--database-url",
        &pg.url(),
        "--wait-ms",
        "30000",
        "--show",
        "100",
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("history: {reissued} forks")), "{out}");
    assert!(out.contains("fork acct:0 seq 4: events "), "{out}");
    assert!(out.contains("sequences acct:0: redis seq 5, postgres contiguous seq 7 (the history is ahead of redis)"), "{out}");
    sh.sigterm();
    assert!(sh
        .wait_timeout(Duration::from_secs(30))
        .is_some_and(|s| s.success()));
}
