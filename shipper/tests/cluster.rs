//! The shipper on a real two-primary cluster, given one seed node: it finds both primaries
//! and the per-slot streams from CLUSTER SLOTS (no keyspace scan), ships every event of
//! both nodes exactly once, and picks up streams of slots first written after it started;
//! reconcile given the same seed checks every primary, and restore rebuilds every primary.

// Scenarios read better whole than cut into helpers, and every test holds `common::serial()`
// (a std Mutex guard that runs the heavy tests one at a time) across its awaits on purpose.
#![allow(clippy::too_many_lines, clippy::await_holding_lock)]

mod common;

use std::time::{Duration, Instant};

use common::*;

async fn info_has(c: &mut redis::aio::MultiplexedConnection, needle: &str) -> bool {
    let text: String = redis::cmd("CLUSTER")
        .arg("INFO")
        .query_async(c)
        .await
        .unwrap();
    text.contains(needle)
}

/// Two primaries with the module: A serves slots 0-8191, B 8192-16383.
async fn two_primaries(module: &std::path::Path) -> (Redis, Redis) {
    let node = || {
        let bus = tally_tests::free_port().to_string();
        Redis::start_with(
            Some(module),
            &[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-port",
                &bus,
            ],
        )
    };
    let (a, b) = (node(), node());
    let (mut ca, mut cb) = (a.conn().await, b.conn().await);
    cmd(&mut ca, &["CLUSTER", "ADDSLOTSRANGE", "0", "8191"]).await;
    cmd(&mut cb, &["CLUSTER", "ADDSLOTSRANGE", "8192", "16383"]).await;
    let bus_b: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("cluster-port")
        .query_async(&mut cb)
        .await
        .unwrap();
    cmd(
        &mut ca,
        &[
            "CLUSTER",
            "MEET",
            "127.0.0.1",
            &b.port.to_string(),
            &bus_b[1],
        ],
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    for c in [&mut ca, &mut cb] {
        while !(info_has(c, "cluster_state:ok").await && info_has(c, "cluster_known_nodes:2").await)
        {
            assert!(Instant::now() < deadline, "cluster never formed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    (a, b)
}

/// `n` increments on keys spread over both nodes, each sent to the node that serves it.
async fn incr_spread(
    a: &mut redis::aio::MultiplexedConnection,
    b: &mut redis::aio::MultiplexedConnection,
    tag: &str,
    n: usize,
) -> Vec<String> {
    let mut keys = Vec::new();
    for i in 0..n {
        let key = format!("{tag}:acct:{}", i % 20);
        let c = if a_serves(&key) { &mut *a } else { &mut *b };
        cmd(c, &["ASSET.INCR", &key, "gold", "1"]).await;
        keys.push(key);
    }
    keys
}

/// Whether node A (slots 0-8191) serves `key`.
fn a_serves(key: &str) -> bool {
    tally_slot::key_slot(key.as_bytes()) < 8192
}

/// One hold on a key of each node, and the open holds `ASSET.HOLDS` lists for each key.
async fn hold_on_each_node(
    a: &mut redis::aio::MultiplexedConnection,
    b: &mut redis::aio::MultiplexedConnection,
    keys: &[String],
) -> Vec<(String, redis::Value)> {
    let mut out = Vec::new();
    for on_a in [true, false] {
        let key = keys
            .iter()
            .find(|k| a_serves(k) == on_a)
            .expect("a key on each node");
        let c = if on_a { &mut *a } else { &mut *b };
        cmd(c, &["ASSET.HOLD", key, "gold", "0.5", "TTL", "600000"]).await;
        out.push((key.clone(), cmd(c, &["ASSET.HOLDS", key]).await));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_seed_node_ships_every_primary_of_a_cluster() {
    let _g = serial();
    let Some(module) = module_or_skip("one_seed_node_ships_every_primary_of_a_cluster") else {
        return;
    };
    let (a, b) = two_primaries(&module).await;
    let (pg, pool) = migrated_pg().await;
    let (mut ca, mut cb) = (a.conn().await, b.conn().await);
    let first = incr_spread(&mut ca, &mut cb, "x", 200).await;

    let args = [
        base_args("run", Some(&a.url()), Some(&pg.url()), None),
        vec!["--discover-interval-ms".into(), "300".into()],
    ]
    .concat();
    let mut sh = Shipper::spawn(&args, &tmpdir("cluster").join("shipper.log"));
    assert_eq!(
        wait_count(
            &pool,
            "SELECT count(*) FROM events",
            200,
            Duration::from_secs(60)
        )
        .await,
        200,
        "{}",
        tail_lines(&sh.log_text(), 40)
    );
    // keys in slots first written now get streams the shipper has not seen yet
    let later = incr_spread(&mut ca, &mut cb, "y", 100).await;
    // and a hold on each node: its hash and due index live in the key's slot
    let held = hold_on_each_node(&mut ca, &mut cb, &later).await;
    assert_eq!(
        wait_count(
            &pool,
            "SELECT count(*) FROM events",
            302,
            Duration::from_secs(60)
        )
        .await,
        302,
        "{}",
        tail_lines(&sh.log_text(), 40)
    );

    // both nodes held streams, and every key's balance and seq are exact
    let mut nodes_with_streams = 0;
    for c in [&mut ca, &mut cb] {
        let streams: Vec<String> = redis::cmd("KEYS")
            .arg("tally:log:*")
            .query_async(c)
            .await
            .unwrap();
        nodes_with_streams += usize::from(!streams.is_empty());
        for s in &streams {
            assert_eq!(group_pending(c, s, "tally-shipper").await, 0, "{s}");
        }
        assert_connections_per_node_not_per_stream(c, streams.len(), 6).await;
    }
    assert_eq!(nodes_with_streams, 2);
    for key in first
        .iter()
        .chain(&later)
        .collect::<std::collections::BTreeSet<_>>()
    {
        let n = first.iter().chain(&later).filter(|k| *k == key).count() as i64;
        let (bal, seq): (String, i64) = sqlx::query_as(
            "SELECT b.balance::text, s.contiguous_seq FROM balances b JOIN key_seqs s USING (data_key) WHERE b.data_key = $1 AND b.field = 'gold'",
        )
        .bind(key)
        .fetch_one(&pool)
        .await
        .unwrap();
        // a hold moves no balance, and takes the next seq
        let holds = held.iter().filter(|(k, _)| k == key).count() as i64;
        assert_eq!(
            (normalize_decimal(&bal), seq),
            (n.to_string(), n + holds),
            "{key}"
        );
    }
    assert_eq!(
        count(&pool, "SELECT count(*) FROM sequence_anomalies").await,
        0
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM failed_events").await, 0);

    // reconcile, given the same seed, walks every primary
    let reconcile = || {
        shipper_cmd(&[
            "reconcile",
            "--redis-url",
            &a.url(),
            "--database-url",
            &pg.url(),
            "--wait-ms",
            "30000",
        ])
    };
    let (code, out) = reconcile();
    assert_eq!(code, 0, "{out}");
    let checked = out
        .lines()
        .find(|l| l.starts_with("sequences"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_default()
        .to_string();
    assert_eq!(checked, "40", "every key of both nodes:\n{out}");
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().take(3).eq(["holds", "2", "2"])),
        "the hold of each node:\n{out}"
    );
    // a balance tampered with on the node the seed is not
    let on_b = first
        .iter()
        .chain(&later)
        .find(|k| !a_serves(k))
        .expect("a key served by B")
        .clone();
    let _: () = redis::cmd("HSET")
        .arg(&on_b)
        .arg("gold")
        .arg("999")
        .query_async(&mut cb)
        .await
        .unwrap();
    let (code, out) = reconcile();
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("balances {on_b} gold: redis 999")),
        "{out}"
    );
    // a hold shipped just before both nodes lose everything, due while they are down
    let late = cmd(
        &mut cb,
        &["ASSET.HOLD", &on_b, "gold", "0.25", "TTL", "4000"],
    )
    .await;
    let late_made = std::time::Instant::now();
    let late: Vec<String> = redis::from_redis_value(late).unwrap();
    let shipped = wait_count(
        &pool,
        "SELECT count(*) FROM events",
        303,
        Duration::from_secs(30),
    );
    assert_eq!(shipped.await, 303, "{}", tail_lines(&sh.log_text(), 40));
    sh.sigterm();
    assert!(sh
        .wait_timeout(Duration::from_secs(30))
        .is_some_and(|s| s.success()));

    // both nodes lose everything; restore from the seed writes each key on its node, its
    // seq into its slot's sequence hash, and ends with a matching reconcile
    cmd(&mut ca, &["FLUSHALL"]).await;
    cmd(&mut cb, &["FLUSHALL"]).await;
    assert!(
        late_made.elapsed() < Duration::from_millis(3_500),
        "too slow to test"
    );
    tokio::time::sleep(Duration::from_millis(4_500).saturating_sub(late_made.elapsed())).await;
    let (code, out) = shipper_cmd(&[
        "restore",
        "--redis-url",
        &a.url(),
        "--database-url",
        &pg.url(),
    ]);
    // restore waits for the node's timer to expire the late hold: its event is in flight
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("the module expired 1 "), "{out}");
    assert!(out.contains("verdict: MATCH"), "{out}");
    let n_b = first.iter().chain(&later).filter(|k| **k == on_b).count();
    let restored: String = redis::cmd("HGET")
        .arg(&on_b)
        .arg("gold")
        .query_async(&mut cb)
        .await
        .unwrap();
    assert_eq!(
        restored,
        n_b.to_string(),
        "{on_b} restored on B with its history's balance"
    );
    for (key, listed) in &held {
        let c = if a_serves(key) { &mut ca } else { &mut cb };
        assert_eq!(
            &cmd(c, &["ASSET.HOLDS", key]).await,
            listed,
            "{key}'s hold restored on its node"
        );
    }
    // and the system keeps going: sequences continue on both nodes, no anomaly
    let mut sh = Shipper::spawn(&args, &tmpdir("cluster-after").join("shipper.log"));
    let more = incr_spread(&mut ca, &mut cb, "x", 40).await;
    assert_eq!(
        wait_count(
            &pool,
            "SELECT count(*) FROM events",
            344,
            Duration::from_secs(60)
        )
        .await,
        344,
        "{}",
        tail_lines(&sh.log_text(), 40)
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM sequence_anomalies").await,
        0,
        "the restored sequences continued"
    );
    let (code, out) = shipper_cmd(&[
        "reconcile",
        "--redis-url",
        &a.url(),
        "--database-url",
        &pg.url(),
        "--wait-ms",
        "30000",
    ]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(more.len(), 40);
    let status: String =
        sqlx::query_scalar("SELECT status FROM holds WHERE data_key = $1 AND hold_id = $2")
            .bind(&on_b)
            .bind(late[0].parse::<i64>().unwrap())
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        status, "expired",
        "the restored node's timer expired the late hold"
    );
    sh.sigterm();
    assert!(sh
        .wait_timeout(Duration::from_secs(30))
        .is_some_and(|s| s.success()));
}

/// Grants on `key` until `stop`, as a cluster client does: MOVED switches to B, ASK sends
/// ASKING + the command to B, TRYAGAIN and other errors wait and retry (none of them applied
/// anything). Returns the grants acknowledged.
async fn grants_following_redirects(
    a: String,
    b: String,
    key: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> i64 {
    let (mut ca, mut cb) = (aconn(&a).await, aconn(&b).await);
    let (mut on_b, mut acked) = (false, 0i64);
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let grant = || {
            redis::cmd("ASSET.INCR")
                .arg(&key)
                .arg("gold")
                .arg("1")
                .clone()
        };
        let r: redis::RedisResult<redis::Value> = grant()
            .query_async(if on_b { &mut cb } else { &mut ca })
            .await;
        let r = match r {
            Err(e) if e.code() == Some("ASK") => {
                let mut p = redis::pipe();
                p.atomic().cmd("ASKING").ignore().add_command(grant());
                p.query_async::<redis::Value>(&mut cb).await
            }
            r => r,
        };
        match r {
            Ok(_) => acked += 1,
            Err(e) if e.code() == Some("MOVED") => on_b = true,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    acked
}

/// How a slot moves from A to B.
#[derive(Clone, Copy, Debug)]
enum Move {
    /// scripts/reshard-slot.sh: SETSLOT and MIGRATE key by key (Redis 7.x; Valkey too)
    KeyByKey,
    /// CLUSTER MIGRATESLOTS: the whole slot as one unit (Valkey 9+)
    Atomic,
}

async fn move_slot(how: Move, a: &Redis, b: &Redis, slot: usize) {
    match how {
        Move::KeyByKey => {
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/reshard-slot.sh");
            let out = std::process::Command::new("bash")
                .args([
                    script,
                    &format!("127.0.0.1:{}", a.port),
                    &format!("127.0.0.1:{}", b.port),
                    &slot.to_string(),
                ])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "reshard: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Move::Atomic => {
            let (mut ca, mut cb) = (a.conn().await, b.conn().await);
            let b_id: String = redis::cmd("CLUSTER")
                .arg("MYID")
                .query_async(&mut cb)
                .await
                .unwrap();
            let s = slot.to_string();
            cmd(
                &mut ca,
                &[
                    "CLUSTER",
                    "MIGRATESLOTS",
                    "SLOTSRANGE",
                    &s,
                    &s,
                    "NODE",
                    &b_id,
                ],
            )
            .await;
            // done when A sends the slot's keys to B and B serves them
            let probe = format!("probe{{{}}}", tally_slot::tag(slot));
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let on_a: redis::RedisResult<i64> =
                    redis::cmd("EXISTS").arg(&probe).query_async(&mut ca).await;
                let on_b: redis::RedisResult<i64> =
                    redis::cmd("EXISTS").arg(&probe).query_async(&mut cb).await;
                if on_a.is_err_and(|e| e.code() == Some("MOVED")) && on_b.is_ok() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "slot {slot} not migrated after 60 s"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Whether the server migrates whole slots (CLUSTER GETSLOTMIGRATIONS exists).
async fn has_atomic_migration(c: &mut redis::aio::MultiplexedConnection) -> bool {
    redis::cmd("CLUSTER")
        .arg("GETSLOTMIGRATIONS")
        .query_async::<redis::Value>(c)
        .await
        .is_ok()
}

/// A slot moves from A to B (scripts/reshard-slot.sh, the legacy procedure for Redis 7.x)
/// while the shipper ships it and a client keeps writing to it: every acknowledged grant is
/// in Postgres once, the key's seq is 1..n, nothing is left pending, and SIGTERM exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_moved_while_shipping_loses_nothing() {
    let _g = serial();
    let Some(module) = module_or_skip("a_slot_moved_while_shipping_loses_nothing") else {
        return;
    };
    slot_moved_while_shipping(&module, Move::KeyByKey).await;
}

/// The same with Valkey's atomic slot migration (`CLUSTER MIGRATESLOTS`): the stream, its
/// group and pending entries move with the slot at once, and the shipper follows (MOVED).
/// A server without it (Redis 7.x) says so and the test stops there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_atomically_migrated_slot_while_shipping_loses_nothing() {
    let _g = serial();
    let Some(module) = module_or_skip("an_atomically_migrated_slot_while_shipping_loses_nothing")
    else {
        return;
    };
    slot_moved_while_shipping(&module, Move::Atomic).await;
}

async fn slot_moved_while_shipping(module: &std::path::Path, how: Move) {
    let (a, b) = two_primaries(module).await;
    if matches!(how, Move::Atomic) && !has_atomic_migration(&mut a.conn().await).await {
        eprintln!("{}: no atomic slot migration on this server; the key-by-key procedure is tested instead", tally_tests::server_bin());
        return;
    }
    let (pg, pool) = migrated_pg().await;
    let key = (0..)
        .map(|i| format!("mover:{i}"))
        .find(|k| a_serves(k))
        .unwrap();
    let slot = tally_slot::key_slot(key.as_bytes());
    let args = [
        base_args("run", Some(&a.url()), Some(&pg.url()), None),
        vec!["--discover-interval-ms".into(), "300".into()],
    ]
    .concat();
    let mut sh = Shipper::spawn(&args, &tmpdir("cluster-move").join("shipper.log"));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = tokio::spawn(grants_following_redirects(
        a.url(),
        b.url(),
        key.clone(),
        stop.clone(),
    ));
    let q = format!("SELECT count(*) FROM event_keys WHERE data_key = '{key}'");
    assert!(
        wait_count(&pool, &q, 100, Duration::from_secs(60)).await >= 100,
        "{}",
        tail_lines(&sh.log_text(), 40)
    );

    move_slot(how, &a, &b, slot).await;
    let before = count(&pool, &q).await;
    assert!(
        wait_count(&pool, &q, before + 100, Duration::from_secs(60)).await >= before + 100,
        "{}",
        tail_lines(&sh.log_text(), 40)
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked = writer.await.unwrap();
    eprintln!("moved slot {slot} of {key} ({how:?}): {acked} grants acknowledged");

    assert_eq!(
        wait_count(&pool, &q, acked, Duration::from_secs(60)).await,
        acked,
        "{}",
        tail_lines(&sh.log_text(), 40)
    );
    let seq: i64 = sqlx::query_scalar("SELECT contiguous_seq FROM key_seqs WHERE data_key = $1")
        .bind(&key)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(seq, acked, "seq 1..n across the move");
    assert_eq!(
        count(&pool, "SELECT count(*) FROM sequence_anomalies").await,
        0
    );
    let mut cb = b.conn().await;
    let stream = format!("tally:log:{{{}}}", tally_slot::tag(slot));
    let deadline = Instant::now() + Duration::from_secs(60);
    while group_pending(&mut cb, &stream, "tally-shipper").await != 0 {
        assert!(
            Instant::now() < deadline,
            "entries still pending on B:\n{}",
            tail_lines(&sh.log_text(), 40)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let left: i64 = redis::cmd("CLUSTER")
        .arg("COUNTKEYSINSLOT")
        .arg(slot)
        .query_async(&mut a.conn().await)
        .await
        .unwrap();
    assert_eq!(left, 0, "nothing of the slot left on A");
    sh.sigterm();
    assert!(
        sh.wait_timeout(Duration::from_secs(60))
            .is_some_and(|s| s.success()),
        "{}",
        tail_lines(&sh.log_text(), 40)
    );
}
