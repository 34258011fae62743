//! A real cluster on loopback: 3 primaries with one replica each, the module on every node,
//! the shipper on the direct path given two seed nodes. The three stories at full size, sent
//! concurrently and routed by slot as a cluster client does: 1,000 users race for 100
//! coupons, 1,000 calls race for a quota of 500, 2,000 grants over 100 accounts and 200
//! transfers inside one hash tag. Then one primary (also a seed) is killed under load, its
//! replica takes over, writes go on through the new primary, and the history stays exact:
//! every event of the stories once, exactly 100 coupon rows, nothing left pending, and
//! reconcile's verdict agrees with what the failover did (MATCH, or a recorded fork for each
//! seq the new primary handed out again). `reconcile` and `restore` get the exact
//! `--redis-url` value `run` got (two seeds, comma separated; after the failover the first no
//! longer answers), or the same in TALLY_REDIS_URL; last, the cluster is flushed and
//! `restore` rebuilds every primary's keys.

// Scenarios read better whole than cut into helpers, and every test holds `common::serial()`
// (a std Mutex guard that runs the heavy tests one at a time) across its awaits on purpose.
#![allow(clippy::too_many_lines, clippy::await_holding_lock)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use redis::aio::MultiplexedConnection;

const RANGES: [(usize, usize); 3] = [(0, 5460), (5461, 10922), (10923, 16383)];

async fn text(c: &mut MultiplexedConnection, args: &[&str]) -> String {
    let mut k = redis::cmd(args[0]);
    for a in &args[1..] {
        k.arg(*a);
    }
    k.query_async(c)
        .await
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut ok: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !ok().await {
        assert!(Instant::now() < deadline, "{what} within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Six nodes: primary i serves RANGES[i], replica i replicates it.
async fn three_primaries_three_replicas(module: &std::path::Path) -> (Vec<Redis>, Vec<Redis>) {
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
    let primaries: Vec<Redis> = (0..3).map(|_| node()).collect();
    let replicas: Vec<Redis> = (0..3).map(|_| node()).collect();
    let mut first = primaries[0].conn().await;
    for (p, (lo, hi)) in primaries.iter().zip(RANGES) {
        cmd(
            &mut p.conn().await,
            &["CLUSTER", "ADDSLOTSRANGE", &lo.to_string(), &hi.to_string()],
        )
        .await;
    }
    for n in primaries.iter().chain(&replicas).skip(1) {
        let bus: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("cluster-port")
            .query_async(&mut n.conn().await)
            .await
            .unwrap();
        cmd(
            &mut first,
            &["CLUSTER", "MEET", "127.0.0.1", &n.port.to_string(), &bus[1]],
        )
        .await;
    }
    every_node_says(
        primaries.iter().chain(&replicas),
        &["CLUSTER", "INFO"],
        "cluster_known_nodes:6",
    )
    .await;
    for (r, p) in replicas.iter().zip(&primaries) {
        let id = text(&mut p.conn().await, &["CLUSTER", "MYID"]).await;
        cmd(&mut r.conn().await, &["CLUSTER", "REPLICATE", &id]).await;
    }
    every_node_says(
        replicas.iter(),
        &["INFO", "replication"],
        "master_link_status:up",
    )
    .await;
    every_node_says(
        primaries.iter().chain(&replicas),
        &["CLUSTER", "INFO"],
        "cluster_state:ok",
    )
    .await;
    (primaries, replicas)
}

/// Waits until `args` answers with `needle` on every node.
async fn every_node_says(nodes: impl Iterator<Item = &Redis>, args: &[&str], needle: &str) {
    for n in nodes {
        let c = n.conn().await;
        wait_until(
            &format!("{args:?} says {needle} on :{}", n.port),
            Duration::from_secs(60),
            || {
                let mut c = c.clone();
                async move { text(&mut c, args).await.contains(needle) }
            },
        )
        .await;
    }
}

/// The port of the primary serving slot 0, as `c` sees the cluster (CLUSTER SLOTS).
async fn primary_port_of_slot_0(c: &mut MultiplexedConnection) -> Option<i64> {
    let slots: redis::Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(c)
        .await
        .ok()?;
    let redis::Value::Array(ranges) = slots else {
        return None;
    };
    ranges.iter().find_map(|r| match r {
        redis::Value::Array(parts) if parts.first() == Some(&redis::Value::Int(0)) => {
            match parts.get(2) {
                Some(redis::Value::Array(node)) => match node.get(1) {
                    Some(redis::Value::Int(p)) => Some(*p),
                    _ => None,
                },
                _ => None,
            }
        }
        _ => None,
    })
}

/// Sends each command to the primary serving its first key, as a cluster client would.
#[derive(Clone)]
struct Router(Arc<Mutex<Vec<MultiplexedConnection>>>);

/// Index into RANGES of the range holding `key`.
fn range_of(key: &str) -> usize {
    let slot = tally_slot::key_slot(key.as_bytes());
    RANGES
        .iter()
        .position(|(lo, hi)| (*lo..=*hi).contains(&slot))
        .unwrap_or(0)
}

impl Router {
    fn conn_for(&self, key: &str) -> MultiplexedConnection {
        self.0.lock().unwrap()[range_of(key)].clone()
    }

    async fn call(&self, args: &[String]) -> redis::RedisResult<redis::Value> {
        let mut c = self.conn_for(&args[1]);
        let mut k = redis::cmd(&args[0]);
        for a in &args[1..] {
            k.arg(a);
        }
        k.query_async(&mut c).await
    }

    /// `n` commands at once; the error replies (first word) by count, and the successes.
    async fn race(&self, n: usize, make: impl Fn(usize) -> Vec<String>) -> (usize, Vec<String>) {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..n {
            let (r, args) = (self.clone(), make(i));
            set.spawn(async move { r.call(&args).await });
        }
        let (mut ok, mut errors) = (0, Vec::new());
        while let Some(r) = set.join_next().await {
            match r.expect("task") {
                Ok(_) => ok += 1,
                Err(e) => errors.push(e.to_string()),
            }
        }
        (ok, errors)
    }
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// A `tally-shipper` subcommand with `TALLY_REDIS_URL` set: (exit code, stdout + stderr).
fn shipper_cmd_with_url_env(urls: &str, args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(BIN)
        .args(args)
        .env("TALLY_REDIS_URL", urls)
        .output()
        .expect("run tally-shipper");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The three stories; returns the number of events they append.
async fn three_stories(r: &Router) -> i64 {
    r.call(&args(&[
        "COUPON.CREATE",
        "camp:spring",
        "100",
        "PERUSER",
        "1",
    ]))
    .await
    .unwrap();
    let (won, lost) = r
        .race(1000, |i| {
            args(&["COUPON.CLAIM", "camp:spring", &format!("user:{i}")])
        })
        .await;
    assert_eq!(won, 100, "exactly 100 coupons: {:?}", lost.first());
    assert!(
        lost.iter().all(|e| e.contains("SOLDOUT")),
        "{:?}",
        lost.iter().find(|e| !e.contains("SOLDOUT"))
    );

    r.call(&args(&["USAGE.LIMIT", "quota:acme", "500"]))
        .await
        .unwrap();
    let (used, refused) = r
        .race(1000, |_| args(&["USAGE.CONSUME", "quota:acme", "1"]))
        .await;
    assert_eq!(used, 500, "exactly the quota: {:?}", refused.first());
    assert!(
        refused.iter().all(|e| e.contains("LIMIT")),
        "{:?}",
        refused.iter().find(|e| !e.contains("LIMIT"))
    );

    let (granted, failed) = r
        .race(2000, |i| {
            args(&["ASSET.INCR", &format!("acct:{}", i % 100), "gold", "10.43"])
        })
        .await;
    assert_eq!(granted, 2000, "{failed:?}");
    r.call(&args(&["ASSET.INCR", "{bank}:a", "gold", "100"]))
        .await
        .unwrap();
    let (moved, failed) = r
        .race(200, |_| {
            args(&["ASSET.TRANSFER", "{bank}:a", "{bank}:b", "gold", "0.5"])
        })
        .await;
    assert_eq!(moved, 200, "{failed:?}");
    1 + 100 + 1 + 500 + 2000 + 1 + 200
}

/// Grants on 30 accounts until `stop`; counts the acknowledged ones per slot range. Errors
/// (the killed primary) are retried after a pause: the router is switched to the new primary
/// meanwhile.
fn writer(
    r: Router,
    stop: Arc<AtomicBool>,
    acked: Arc<[AtomicU64; 3]>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let key = format!("load:{}", i % 30);
            match r.call(&args(&["ASSET.INCR", &key, "gold", "1"])).await {
                Ok(_) => {
                    acked[range_of(&key)].fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
            i += 1;
        }
    })
}

/// Kills `primary` (a seed) under load; `replica` takes over; writing goes on until the
/// promoted replica acknowledged 100 grants. Returns (grants acknowledged, by the promoted).
async fn failover_under_load(
    router: &Router,
    primary: &mut Redis,
    replica: &Redis,
    survivor: &Redis,
) -> (u64, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<[AtomicU64; 3]> = Arc::new(Default::default());
    let load = writer(router.clone(), stop.clone(), acked.clone());
    let on = |range: usize| acked[range].load(Ordering::Relaxed);
    wait_until(
        "load is running on range 0",
        Duration::from_secs(60),
        || {
            let n = on(0);
            async move { n >= 100 }
        },
    )
    .await;
    primary.kill9();
    let promoted = replica.conn().await;
    cmd(&mut promoted.clone(), &["CLUSTER", "FAILOVER", "TAKEOVER"]).await;
    let (port, survivor) = (i64::from(replica.port), survivor.conn().await);
    wait_until(
        "the survivor sees the promoted replica as the primary of slot 0",
        Duration::from_secs(60),
        || {
            let (mut s, mut r) = (survivor.clone(), promoted.clone());
            async move {
                text(&mut r, &["INFO", "replication"])
                    .await
                    .contains("role:master")
                    && primary_port_of_slot_0(&mut s).await == Some(port)
                    && text(&mut s, &["CLUSTER", "INFO"])
                        .await
                        .contains("cluster_state:ok")
            }
        },
    )
    .await;
    router.0.lock().unwrap()[0] = promoted;
    let at_switch = on(0);
    wait_until(
        "grants acknowledged by the promoted replica",
        Duration::from_secs(60),
        || {
            let n = on(0);
            async move { n >= at_switch + 100 }
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    (on(0) + on(1) + on(2), on(0) - at_switch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_primaries_with_replicas_ship_the_stories_and_survive_a_failover() {
    let _g = serial();
    let Some(module) = module_or_skip("three_primaries_with_replicas") else {
        return;
    };
    let (mut primaries, replicas) = three_primaries_three_replicas(&module).await;
    let (pg, pool) = migrated_pg().await;
    let seeds = format!("{},{}", primaries[0].url(), primaries[1].url());
    let shipper_args = [
        base_args("run", Some(&seeds), Some(&pg.url()), None),
        args(&["--discover-interval-ms", "300"]),
    ]
    .concat();
    let mut sh = Shipper::spawn(&shipper_args, &tmpdir("cluster3").join("shipper.log"));
    sh.wait_ready(Duration::from_secs(60));

    let mut conns = Vec::new();
    for p in &primaries {
        conns.push(p.conn().await);
    }
    let router = Router(Arc::new(Mutex::new(conns)));
    let stories = three_stories(&router).await;
    let events = "SELECT count(*) FROM events";
    assert_eq!(
        wait_count(&pool, events, stories, Duration::from_secs(120)).await,
        stories,
        "{}",
        tail_lines(&sh.log_text(), 40)
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM coupon_issues WHERE campaign = 'camp:spring'"
        )
        .await,
        100
    );
    // the seed list `run` got, as it got it, and the same in TALLY_REDIS_URL
    let (code, out) = shipper_cmd(&[
        "reconcile",
        "--redis-url",
        &seeds,
        "--database-url",
        &pg.url(),
        "--wait-ms",
        "60000",
    ]);
    assert_eq!(code, 0, "reconcile after the stories:\n{out}");
    assert!(out.contains("verdict: MATCH"), "{out}");
    let (code, out) = shipper_cmd_with_url_env(
        &seeds,
        &["reconcile", "--database-url", &pg.url(), "--wait-ms", "0"],
    );
    assert_eq!(code, 0, "reconcile with TALLY_REDIS_URL:\n{out}");
    assert!(out.contains("verdict: MATCH"), "{out}");
    // restore reads every primary through the seeds, and finds the keys in place
    let (code, out) = shipper_cmd(&[
        "restore",
        "--redis-url",
        &seeds,
        "--database-url",
        &pg.url(),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("refusing to overwrite existing Redis keys"),
        "{out}"
    );

    let [first, second, _] = &mut primaries[..] else {
        unreachable!("three primaries")
    };
    let (total, by_promoted) = failover_under_load(&router, first, &replicas[0], second).await;

    // Drained: nothing pending on any serving primary; the verdict agrees with the forks. The
    // first seed is the killed primary: the second gives the layout.
    let (code, out) = shipper_cmd(&[
        "reconcile",
        "--redis-url",
        &seeds,
        "--database-url",
        &pg.url(),
        "--wait-ms",
        "120000",
    ]);
    let forks = count(
        &pool,
        "SELECT count(*) FROM sequence_anomalies WHERE kind = 'fork'",
    )
    .await;
    eprintln!(
        "failover: {total} grants acknowledged ({by_promoted} by the promoted replica), {forks} forks, {} events in the history, reconcile exit {code}",
        count(&pool, events).await
    );
    if forks == 0 {
        assert_eq!(
            code, 0,
            "no fork, so Redis and the history must match:\n{out}"
        );
        assert!(out.contains("verdict: MATCH"), "{out}");
    } else {
        assert_eq!(code, 1, "{forks} forks must make reconcile fail:\n{out}");
        assert!(out.contains(&format!("history: {forks} forks")), "{out}");
    }
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM sequence_anomalies WHERE kind <> 'fork'"
        )
        .await,
        0
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM failed_events").await, 0);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM coupon_issues WHERE campaign = 'camp:spring'"
        )
        .await,
        100
    );
    for n in [&replicas[0], &primaries[1], &primaries[2]] {
        let c = &mut n.conn().await;
        let streams: Vec<String> = redis::cmd("KEYS")
            .arg("tally:log:*")
            .query_async(c)
            .await
            .unwrap();
        for s in &streams {
            assert_eq!(group_pending(c, s, "tally-shipper").await, 0, "{s}");
        }
        // the router's connection and this one, the shipper's reader and shared connection,
        // a discovery's short-lived one
        assert_connections_per_node_not_per_stream(c, streams.len(), 8).await;
    }
    sh.sigterm();
    assert!(
        sh.wait_timeout(Duration::from_secs(60))
            .is_some_and(|s| s.success()),
        "{}",
        tail_lines(&sh.log_text(), 40)
    );

    // The cluster loses its data; restore, given the seeds in TALLY_REDIS_URL, rebuilds every
    // primary's keys, and reconcile with the seeds agrees as before.
    for n in [&replicas[0], &primaries[1], &primaries[2]] {
        cmd(&mut n.conn().await, &["FLUSHALL"]).await;
    }
    let (code, out) = shipper_cmd_with_url_env(&seeds, &["restore", "--database-url", &pg.url()]);
    let expected = if forks == 0 { 0 } else { 1 };
    assert_eq!(code, expected, "restore with TALLY_REDIS_URL:\n{out}");
    assert!(
        out.contains("restored ") && out.contains(" sequences"),
        "{out}"
    );
    let (code, out) = shipper_cmd(&[
        "reconcile",
        "--redis-url",
        &seeds,
        "--database-url",
        &pg.url(),
        "--wait-ms",
        "0",
    ]);
    assert_eq!(code, expected, "reconcile after the restore:\n{out}");
    if forks == 0 {
        assert!(out.contains("verdict: MATCH"), "{out}");
    } else {
        assert!(out.contains(&format!("history: {forks} forks")), "{out}");
    }
    let mut restored = 0;
    for n in [&replicas[0], &primaries[1], &primaries[2]] {
        let size: i64 = redis::cmd("DBSIZE")
            .query_async(&mut n.conn().await)
            .await
            .unwrap();
        assert!(size > 0, "restore wrote nothing on :{}", n.port);
        restored += size;
    }
    eprintln!("restore: {restored} keys over the three primaries");
}
