//! Kafka path (stream -> Kafka -> Postgres) integration tests against a local tansu broker
//! (Kafka protocol, sqlite storage). Skipped with a message when tansu is not installed.

// Scenarios read better whole than cut into helpers, and every test holds `common::serial()`
// (a std Mutex guard that runs the heavy tests one at a time) across its awaits on purpose.
#![allow(clippy::too_many_lines, clippy::await_holding_lock)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use rand::{Rng, SeedableRng};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

const GROUP: &str = "tally-shipper";
const EVENTS_SQL: &str = "SELECT count(*) FROM events";

fn tansu_or_skip(test: &str) -> Option<Tansu> {
    match Tansu::start() {
        Some(t) => Some(t),
        None => {
            skip(
                test,
                "tansu not found (set TANSU_BIN or install into ~/.cargo/bin/tansu)",
            );
            None
        }
    }
}

fn tail(s: &str) -> String {
    tail_lines(s, 60)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_kafka_run_exactly_once() {
    let _g = serial();
    let Some(kafka) = tansu_or_skip("e2e_kafka_run_exactly_once") else {
        return;
    };
    let Stack {
        redis,
        pg,
        pool,
        mut c,
        mut m,
    } = stack().await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(21);
    let replay = fill_with_replays(&mut c, &mut m, &mut rng, 600).await;
    let dir = tmpdir("kafka-e2e");
    let mut sh = Shipper::spawn(
        &base_args(
            "run",
            Some(&redis.url()),
            Some(&pg.url()),
            Some(&kafka.brokers()),
        ),
        &dir.join("shipper.log"),
    );
    for _ in 0..600 {
        xadd(&mut c, STREAM, "event", &m.random_event(&mut rng)).await;
    }
    for e in &replay {
        xadd(&mut c, STREAM, "event", e).await;
    }
    let n = m.ids.len() as i64;
    let got = wait_count(&pool, EVENTS_SQL, n, Duration::from_secs(90)).await;
    assert_eq!(got, n, "log tail:\n{}", tail(&sh.log_text()));
    // every event came through Kafka
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM events WHERE via LIKE 'kafka:tally.events/%'"
        )
        .await,
        n
    );
    let start = Instant::now();
    while xlen(&mut c, STREAM).await > 0 && start.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(xlen(&mut c, STREAM).await, 0, "stream not trimmed");
    sh.sigterm();
    let st = sh
        .wait_timeout(Duration::from_secs(20))
        .expect("no exit after SIGTERM");
    assert!(st.success(), "{st:?}\n{}", tail(&sh.log_text()));
    assert_matches_model(&pool, &m, 0).await;
}

/// `forward` and `persist` as separate sidecars; a malformed stream entry and a malformed
/// Kafka message both land in failed_events and the pipeline keeps going.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_and_malformed_kafka_message() {
    let _g = serial();
    let Some(kafka) = tansu_or_skip("sidecars_and_malformed_kafka_message") else {
        return;
    };
    let Stack {
        redis,
        pg,
        pool,
        mut c,
        mut m,
    } = stack().await;
    let dir = tmpdir("kafka-sidecars");
    let mut fwd = Shipper::spawn(
        &base_args("forward", Some(&redis.url()), None, Some(&kafka.brokers())),
        &dir.join("fwd.log"),
    );
    let mut per = Shipper::spawn(
        &base_args("persist", None, Some(&pg.url()), Some(&kafka.brokers())),
        &dir.join("per.log"),
    );

    for i in 0..100 {
        xadd(
            &mut c,
            STREAM,
            "event",
            &m.asset_incr("user:1", "gold", i + 1),
        )
        .await;
    }
    let bad_stream = xadd(&mut c, STREAM, "nope", "x").await;
    assert_eq!(
        wait_count(&pool, EVENTS_SQL, 100, Duration::from_secs(60)).await,
        100,
        "{}\n{}",
        tail(&fwd.log_text()),
        tail(&per.log_text())
    );

    // garbage straight into the topic
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka.brokers())
        .set("message.timeout.ms", "10000")
        .create()
        .unwrap();
    let (part, off) = producer
        .send(
            FutureRecord::to("tally.events")
                .key("junk")
                .payload("\u{1}definitely not an event"),
            Duration::from_secs(10),
        )
        .await
        .map(|d| (d.partition, d.offset))
        .expect("produce garbage");
    for i in 0..100 {
        xadd(
            &mut c,
            STREAM,
            "event",
            &m.asset_incr("user:2", "gems", i + 1),
        )
        .await;
    }
    assert_eq!(
        wait_count(&pool, EVENTS_SQL, 200, Duration::from_secs(60)).await,
        200,
        "{}",
        tail(&per.log_text())
    );
    assert_eq!(
        wait_count(
            &pool,
            "SELECT count(*) FROM failed_events",
            2,
            Duration::from_secs(20)
        )
        .await,
        2
    );
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT source, error FROM failed_events ORDER BY source")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(rows.contains(&(
        format!("kafka:tally.events/{part}/{off}"),
        rows.iter()
            .find(|r| r.0.starts_with("kafka:"))
            .unwrap()
            .1
            .clone()
    )));
    assert!(
        rows.iter()
            .any(|r| r.0.starts_with("kafka:") && r.1.contains("invalid event JSON")),
        "{rows:?}"
    );
    assert!(
        rows.iter()
            .any(|r| r.0 == format!("redis:{STREAM}/{bad_stream}")
                && r.1.contains("no `event` field")),
        "{rows:?}"
    );

    fwd.sigterm();
    per.sigterm();
    assert!(fwd
        .wait_timeout(Duration::from_secs(20))
        .expect("forward exit")
        .success());
    assert!(per
        .wait_timeout(Duration::from_secs(20))
        .expect("persist exit")
        .success());
    assert_eq!(group_pending(&mut c, STREAM, GROUP).await, 0);
    assert_matches_model(&pool, &m, 2).await;
}

/// The broker goes away under load and comes back: nothing lost, backlog drained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_under_load_loses_nothing() {
    let _g = serial();
    let Some(mut kafka) = tansu_or_skip("broker_restart_under_load_loses_nothing") else {
        return;
    };
    let Stack {
        redis,
        pg,
        pool,
        mut c,
        mut m,
    } = stack().await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let dir = tmpdir("kafka-restart");
    let mut sh = Shipper::spawn(
        &base_args(
            "run",
            Some(&redis.url()),
            Some(&pg.url()),
            Some(&kafka.brokers()),
        ),
        &dir.join("shipper.log"),
    );
    for _ in 0..300 {
        xadd(&mut c, STREAM, "event", &m.random_event(&mut rng)).await;
    }
    assert_eq!(
        wait_count(&pool, EVENTS_SQL, 300, Duration::from_secs(60)).await,
        300,
        "{}",
        tail(&sh.log_text())
    );
    kafka.stop_server();
    for _ in 0..700 {
        xadd(&mut c, STREAM, "event", &m.random_event(&mut rng)).await;
    }
    // the outage shows as failed deliveries (after --kafka-message-timeout-ms), and nothing
    // is acknowledged or trimmed meanwhile
    let failures = "tally_delivery_failures_total{stage=\"forward\"}";
    let f = sh
        .wait_metric(failures, Duration::from_secs(90), |v| v >= 1.0)
        .await;
    assert!(
        f >= Some(1.0),
        "no failed delivery counted while the broker was down ({f:?})"
    );
    let len = xlen(&mut c, STREAM).await;
    assert!(
        len >= 700,
        "entries trimmed while the broker was down (xlen {len})"
    );
    let m_len = sh.metric(&format!("tally_stream_length{{stream=\"{STREAM}\"}}"));
    assert!(
        m_len >= Some(700.0),
        "stream length metric while the broker was down: {m_len:?}"
    );
    kafka.start_server();
    let n = m.ids.len() as i64;
    let got = wait_count(&pool, EVENTS_SQL, n, Duration::from_secs(120)).await;
    assert_eq!(got, n, "log tail:\n{}", tail(&sh.log_text()));
    sh.sigterm();
    assert!(sh
        .wait_timeout(Duration::from_secs(30))
        .expect("exit")
        .success());
    assert_matches_model(&pool, &m, 0).await;
}

/// kill -9 of the combined Kafka pipeline at random moments under load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_at_random_moments_kafka_exactly_once() {
    let _g = serial();
    let Some(kafka) = tansu_or_skip("kill9_at_random_moments_kafka_exactly_once") else {
        return;
    };
    let Stack {
        redis, pg, pool, ..
    } = stack().await;
    let dir = tmpdir("kafka-kill9");
    let args = base_args(
        "run",
        Some(&redis.url()),
        Some(&pg.url()),
        Some(&kafka.brokers()),
    );
    // no consumer-group session to wait for: persist assigns every partition itself and
    // seeks to the positions stored in Postgres
    let args = [args, vec!["--batch-size".into(), "50".into()]].concat();
    let url = redis.url();
    let producer = tokio::spawn(async move {
        let mut c = aconn(&url).await;
        let mut m = Model::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(8);
        for i in 0..2000 {
            xadd(&mut c, STREAM, "event", &m.random_event(&mut rng)).await;
            if i % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        m
    });
    let mut rng = rand::rngs::StdRng::seed_from_u64(77);
    let log = dir.join("shipper.log");
    for round in 0..6 {
        let mut sh = Shipper::spawn(&args, &log);
        let ms = rng.random_range(1000..4000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        sh.kill9();
        eprintln!(
            "round {round}: killed after {ms} ms, {} persisted",
            count(&pool, EVENTS_SQL).await
        );
    }
    let m = producer.await.unwrap();
    let mut sh = Shipper::spawn(&args, &log);
    let got = wait_count(
        &pool,
        EVENTS_SQL,
        m.ids.len() as i64,
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(
        got,
        m.ids.len() as i64,
        "log tail:\n{}",
        tail(&sh.log_text())
    );
    sh.sigterm();
    let st = sh.wait_timeout(Duration::from_secs(30)).expect("exit");
    assert!(st.success(), "{st:?}\n{}", tail(&sh.log_text()));
    assert_matches_model(&pool, &m, 0).await;
}

// ------------------------------------------------------------- module workload through Kafka

const USERS: usize = 60;
const QUOTAS: usize = 10;
const CLIENTS: u64 = 50;
const OPS_PER_CLIENT: usize = 40; // 50 x 40 = 2,000 mixed operations

/// One client's share of the workload: deposits/withdrawals, transfers, coupon claims and
/// usage, paced over ~15 s. Returns how many commands succeeded (each appended one event).
async fn workload_client(url: String, seed: u64) -> i64 {
    let mut c = aconn(&url).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut appended = 0;
    for _ in 0..OPS_PER_CLIENT {
        let user = |rng: &mut rand::rngs::StdRng| format!("user:{}", rng.random_range(0..USERS));
        let cents = |v: i64| format!("{}.{:02}", v / 100, v % 100);
        let args: Vec<String> = match rng.random_range(0..10) {
            0..=3 => {
                let d: i64 = rng.random_range(-500..1000);
                let amount = if d < 0 {
                    format!("-{}", cents(-d))
                } else {
                    cents(d)
                };
                vec!["ASSET.INCR".into(), user(&mut rng), "gold".into(), amount]
            }
            4..=5 => {
                let (a, b) = (user(&mut rng), user(&mut rng));
                if a == b {
                    continue;
                }
                vec![
                    "ASSET.TRANSFER".into(),
                    a,
                    b,
                    "gold".into(),
                    cents(rng.random_range(1..3000)),
                ]
            }
            6..=7 => vec![
                "COUPON.CLAIM".into(),
                "camp".into(),
                format!("u{}", rng.random_range(0..300)),
            ],
            _ => vec![
                "USAGE.CONSUME".into(),
                format!("q:{}", rng.random_range(0..QUOTAS)),
                cents(rng.random_range(50..300)),
            ],
        };
        let mut k = redis::cmd(&args[0]);
        for a in &args[1..] {
            k.arg(a);
        }
        match k.query_async::<redis::Value>(&mut c).await {
            Ok(_) => appended += 1,
            Err(e)
                if matches!(
                    e.code(),
                    Some("INSUFFICIENT" | "SOLDOUT" | "DUPLICATE" | "LIMIT")
                ) => {}
            Err(e) => panic!("{args:?}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..700))).await;
    }
    appended
}

/// Initial balances, a 100-coupon campaign and usage limits; returns the events appended.
async fn workload_setup(c: &mut redis::aio::MultiplexedConnection) -> i64 {
    for u in 0..USERS {
        cmd(c, &["ASSET.INCR", &format!("user:{u}"), "gold", "100"]).await;
    }
    cmd(c, &["COUPON.CREATE", "camp", "100"]).await;
    for q in 0..QUOTAS {
        cmd(c, &["USAGE.LIMIT", &format!("q:{q}"), "50"]).await;
    }
    (USERS + 1 + QUOTAS) as i64
}

/// Which shipper processes the workload runs: `run`, or `forward` + one `persist` per entry
/// (sidecars; several entries are the shards of the topic).
enum Topology {
    Combined(Vec<String>),
    Sidecars(Vec<String>, Vec<Vec<String>>),
}

impl Topology {
    fn processes(&self) -> usize {
        match self {
            Topology::Combined(_) => 1,
            Topology::Sidecars(_, p) => 1 + p.len(),
        }
    }

    /// Starts process `i` (0 = run or forward, 1.. = persist), appending to its own log.
    fn spawn(&self, i: usize, log: &std::path::Path) -> Shipper {
        match (self, i) {
            (Topology::Combined(a), _) => Shipper::spawn(a, log),
            (Topology::Sidecars(f, _), 0) => Shipper::spawn(f, &log.with_extension("fwd.log")),
            (Topology::Sidecars(_, p), i) => Shipper::spawn(
                &p[(i - 1).min(p.len() - 1)],
                &log.with_extension(format!("per{i}.log")),
            ),
        }
    }
}

/// Plays the workload while a shipper process is SIGKILLed `kills` times at seeded random
/// moments (sidecars: forward and persist in turn) and Postgres is stopped for 5 s. Returns
/// the number of events Redis appended and the processes left running.
async fn play_with_kills(
    ms: &mut ModuleStack,
    top: &Topology,
    log: &std::path::Path,
    kills: usize,
) -> (i64, Vec<Shipper>) {
    let mut expected = workload_setup(&mut ms.c).await;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| tokio::spawn(workload_client(ms.redis.url(), 1000 + i)))
        .collect();
    xadd(&mut ms.c, STREAM, "nope", "not an event").await; // the one malformed entry
    let mut rng = rand::rngs::StdRng::seed_from_u64(4242);
    let mut running: Vec<Shipper> = (0..top.processes()).map(|i| top.spawn(i, log)).collect();
    for round in 0..kills {
        tokio::time::sleep(Duration::from_millis(rng.random_range(1000..4000))).await;
        if round == 1 {
            ms.pg.stop_server();
            tokio::time::sleep(Duration::from_secs(5)).await; // the outage itself, not a wait for a state
            ms.pg.start_server();
        }
        let victim = round % running.len();
        running[victim].kill9();
        eprintln!(
            "round {round}: killed process {victim}, {} persisted",
            count(&ms.pool, EVENTS_SQL).await
        );
        running[victim] = top.spawn(victim, log);
    }
    for cl in clients {
        expected += cl.await.unwrap();
    }
    (expected, running)
}

/// After the drain: every event exactly once, every key's seq 1..n equal to Redis, the
/// derived state equal to Redis (checked here and by reconcile), one failed event, no
/// anomaly, nothing pending; then SIGTERM exits 0.
async fn assert_workload_drained(ms: &mut ModuleStack, expected: i64, mut running: Vec<Shipper>) {
    let logs = |r: &[Shipper]| {
        r.iter()
            .map(|s| tail(&s.log_text()))
            .collect::<Vec<_>>()
            .join("\n----\n")
    };
    let got = wait_count(&ms.pool, EVENTS_SQL, expected, Duration::from_secs(240)).await;
    assert_eq!(
        got,
        expected,
        "events in Postgres vs appended by Redis\n{}",
        logs(&running)
    );
    let (code, out) = shipper_cmd(&[
        "reconcile",
        "--redis-url",
        &ms.redis.url(),
        "--database-url",
        &ms.pg.url(),
        "--wait-ms",
        "120000",
    ]);
    assert_eq!(code, 0, "reconcile:\n{out}");
    assert!(out.contains("pipeline: drained"), "{out}");
    assert_eq!(
        count(&ms.pool, "SELECT count(*) FROM failed_events").await,
        1,
        "the malformed entry, once"
    );
    assert_eq!(
        count(&ms.pool, "SELECT count(*) FROM sequence_anomalies").await,
        0,
        "anomalies"
    );
    // every key's history is 1..n with n = Redis's own sequence number
    let seqs: Vec<(String, i64, i64)> =
        sqlx::query_as("SELECT data_key, last_seq, contiguous_seq FROM key_seqs ORDER BY 1")
            .fetch_all(&ms.pool)
            .await
            .unwrap();
    let redis_seqs: BTreeMap<String, i64> = redis::cmd("HGETALL")
        .arg("tally:seq")
        .query_async(&mut ms.c)
        .await
        .unwrap();
    assert_eq!(seqs.len(), redis_seqs.len(), "keys with history");
    for (k, last, contiguous) in &seqs {
        assert_eq!(
            (Some(last), contiguous),
            (redis_seqs.get(k), last),
            "seq of {k}"
        );
        let n = count(
            &ms.pool,
            &format!("SELECT count(*) FROM event_keys WHERE data_key = '{k}'"),
        )
        .await;
        assert_eq!(n, *last, "{k}: one event per seq 1..{last}");
    }
    // balances, coupons and usage as Redis holds them, independently of reconcile
    for u in 0..USERS {
        let k = format!("user:{u}");
        let r: String = redis::cmd("HGET")
            .arg(&k)
            .arg("gold")
            .query_async(&mut ms.c)
            .await
            .unwrap();
        let p: String = sqlx::query_scalar(
            "SELECT balance::text FROM balances WHERE data_key = $1 AND field = 'gold'",
        )
        .bind(&k)
        .fetch_one(&ms.pool)
        .await
        .unwrap();
        assert_eq!(
            normalize_decimal(&p),
            normalize_decimal(&r),
            "balance of {k}"
        );
    }
    let issued: i64 = redis::cmd("HGET")
        .arg("camp")
        .arg("issued")
        .query_async(&mut ms.c)
        .await
        .unwrap();
    assert_eq!(
        count(
            &ms.pool,
            "SELECT count(*) FROM coupon_issues WHERE NOT released"
        )
        .await,
        issued
    );
    assert_eq!(
        issued, 100,
        "about 400 claims by up to 300 users sell the 100 coupons out"
    );
    for q in 0..QUOTAS {
        let k = format!("q:{q}");
        let r: String = redis::cmd("HGET")
            .arg(&k)
            .arg("used")
            .query_async(&mut ms.c)
            .await
            .unwrap();
        let p: String = sqlx::query_scalar(
            "SELECT used::text FROM usage_totals WHERE usage_key = $1 ORDER BY seq DESC LIMIT 1",
        )
        .bind(&k)
        .fetch_one(&ms.pool)
        .await
        .unwrap();
        assert_eq!(normalize_decimal(&p), normalize_decimal(&r), "usage of {k}");
    }
    assert_eq!(group_pending(&mut ms.c, STREAM, GROUP).await, 0);
    for s in &mut running {
        s.sigterm();
    }
    for s in &mut running {
        let st = s
            .wait_timeout(Duration::from_secs(30))
            .expect("no exit after SIGTERM");
        assert!(st.success(), "{st:?}\n{}", tail(&s.log_text()));
    }
}

/// The workload of issue 10 with the real module through Kafka: 2,000 mixed operations from
/// 50 clients, a malformed entry, 4 SIGKILLs of `run`, Postgres stopped for 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn module_workload_through_kafka_survives_kills_and_a_postgres_outage() {
    let _g = serial();
    let Some(kafka) =
        tansu_or_skip("module_workload_through_kafka_survives_kills_and_a_postgres_outage")
    else {
        return;
    };
    let Some(mut ms) =
        module_stack("module_workload_through_kafka_survives_kills_and_a_postgres_outage").await
    else {
        return;
    };
    let top = Topology::Combined(base_args(
        "run",
        Some(&ms.redis.url()),
        Some(&ms.pg.url()),
        Some(&kafka.brokers()),
    ));
    let log = tmpdir("kafka-workload").join("shipper.log");
    let (expected, running) = play_with_kills(&mut ms, &top, &log, 4).await;
    assert_workload_drained(&mut ms, expected, running).await;
}

/// The same with `forward` and `persist` as separate processes, each SIGKILLed 3 times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn module_workload_through_kafka_sidecars_killed_in_turn() {
    let _g = serial();
    let Some(kafka) = tansu_or_skip("module_workload_through_kafka_sidecars_killed_in_turn") else {
        return;
    };
    let Some(mut ms) = module_stack("module_workload_through_kafka_sidecars_killed_in_turn").await
    else {
        return;
    };
    let top = Topology::Sidecars(
        base_args(
            "forward",
            Some(&ms.redis.url()),
            None,
            Some(&kafka.brokers()),
        ),
        vec![base_args(
            "persist",
            None,
            Some(&ms.pg.url()),
            Some(&kafka.brokers()),
        )],
    );
    let log = tmpdir("kafka-workload-sidecars").join("shipper.log");
    let (expected, running) = play_with_kills(&mut ms, &top, &log, 6).await;
    assert_workload_drained(&mut ms, expected, running).await;
}

/// The same workload with two `persist` instances sharing the 3-partition topic by
/// `--persist-shard` (0/2 owns partitions 0 and 2, 1/2 owns 1), each SIGKILLed in turn with
/// `forward`: no event lost or doubled, no anomaly, state equal to Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn module_workload_through_kafka_two_persist_shards_killed_in_turn() {
    let _g = serial();
    let Some(kafka) =
        tansu_or_skip("module_workload_through_kafka_two_persist_shards_killed_in_turn")
    else {
        return;
    };
    let Some(mut ms) =
        module_stack("module_workload_through_kafka_two_persist_shards_killed_in_turn").await
    else {
        return;
    };
    let persist = |shard: &str| {
        [
            base_args("persist", None, Some(&ms.pg.url()), Some(&kafka.brokers())),
            vec!["--persist-shard".into(), shard.into()],
        ]
        .concat()
    };
    let top = Topology::Sidecars(
        base_args(
            "forward",
            Some(&ms.redis.url()),
            None,
            Some(&kafka.brokers()),
        ),
        vec![persist("0/2"), persist("1/2")],
    );
    let log = tmpdir("kafka-workload-shards").join("shipper.log");
    let (expected, running) = play_with_kills(&mut ms, &top, &log, 6).await;
    // each instance consumes its own partitions only
    for (i, want) in [(1, 2.0), (2, 1.0)] {
        let got = running[i]
            .wait_metric(
                "tally_kafka_partitions_assigned",
                Duration::from_secs(60),
                |v| v == want,
            )
            .await;
        assert_eq!(got, Some(want), "persist shard {i}");
    }
    assert_workload_drained(&mut ms, expected, running).await;
    assert_every_partition_stored(&ms.pool, "both shards").await;
}

/// The same workload with two `persist` instances in one consumer group (`--persist-group`,
/// dynamic membership, 6 s sessions), each SIGKILLed in turn with `forward`. Partitions move
/// between them with every rebalance; each batch is stored only if its positions were not
/// moved meanwhile. No event lost or doubled, no anomaly, state equal to Redis, and the
/// group ends with the 3 partitions shared between the two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn module_workload_through_kafka_two_persist_group_members_killed_in_turn() {
    let _g = serial();
    let Some(kafka) =
        tansu_or_skip("module_workload_through_kafka_two_persist_group_members_killed_in_turn")
    else {
        return;
    };
    let Some(mut ms) =
        module_stack("module_workload_through_kafka_two_persist_group_members_killed_in_turn")
            .await
    else {
        return;
    };
    let member = || {
        // dynamic membership: tansu never settles a group of static members (group.instance.id):
        // its SyncGroup answered "rebalance in progress" every 6 s for 3 minutes
        let group = [
            "--persist-group",
            "--kafka-opt",
            "session.timeout.ms=6000",
            "--kafka-opt",
            "heartbeat.interval.ms=500",
        ];
        [
            base_args("persist", None, Some(&ms.pg.url()), Some(&kafka.brokers())),
            group.map(String::from).to_vec(),
        ]
        .concat()
    };
    let top = Topology::Sidecars(
        base_args(
            "forward",
            Some(&ms.redis.url()),
            None,
            Some(&kafka.brokers()),
        ),
        vec![member(), member()],
    );
    let log = tmpdir("kafka-workload-group").join("shipper.log");
    let (expected, running) = play_with_kills(&mut ms, &top, &log, 6).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    let owned = loop {
        let owned: Vec<Option<f64>> = running[1..]
            .iter()
            .map(|s| s.metric("tally_kafka_partitions_assigned"))
            .collect();
        if owned.iter().map(|o| o.unwrap_or(0.0)).sum::<f64>() == 3.0
            || std::time::Instant::now() > deadline
        {
            break owned;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(
        owned.iter().map(|o| o.unwrap_or(0.0)).sum::<f64>(),
        3.0,
        "partitions owned by the two members: {owned:?}"
    );
    assert_workload_drained(&mut ms, expected, running).await;
    assert_every_partition_stored(&ms.pool, "the group's members").await;
}

/// Two `persist` instances given the same partitions (a mistake, or a zombie that lost them):
/// both read every message, and each batch is stored by the first to commit it; the other's
/// batch is fenced (nothing of it written) and it reads again from the stored positions. The
/// malformed entry is recorded once (`attempts` 1: an unfenced second write would count 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_persist_instances_on_the_same_partitions_store_each_batch_once() {
    let _g = serial();
    let Some(kafka) =
        tansu_or_skip("two_persist_instances_on_the_same_partitions_store_each_batch_once")
    else {
        return;
    };
    let Some(mut ms) =
        module_stack("two_persist_instances_on_the_same_partitions_store_each_batch_once").await
    else {
        return;
    };
    let persist = || base_args("persist", None, Some(&ms.pg.url()), Some(&kafka.brokers())); // each its own metrics port
    let top = Topology::Sidecars(
        base_args(
            "forward",
            Some(&ms.redis.url()),
            None,
            Some(&kafka.brokers()),
        ),
        vec![persist(), persist()],
    );
    let log = tmpdir("kafka-workload-fenced").join("shipper.log");
    let (expected, running) = play_with_kills(&mut ms, &top, &log, 0).await;
    let got = wait_count(&ms.pool, EVENTS_SQL, expected, Duration::from_secs(240)).await;
    assert_eq!(got, expected, "events in Postgres vs appended by Redis");
    let fenced: f64 = running[1..]
        .iter()
        .map(|s| s.metric("tally_kafka_fenced_batches_total").unwrap_or(0.0))
        .sum();
    assert!(
        fenced > 0.0,
        "two instances on the same partitions: some batches must have been fenced"
    );
    assert_eq!(
        count(&ms.pool, "SELECT sum(attempts) FROM failed_events").await,
        1,
        "the malformed entry written once"
    );
    assert_workload_drained(&mut ms, expected, running).await;
}

/// The topic's 3 partitions each have a position in `kafka_offsets`.
async fn assert_every_partition_stored(pool: &sqlx::PgPool, who: &str) {
    let partitions: Vec<i32> = sqlx::query_scalar("SELECT partition FROM kafka_offsets ORDER BY 1")
        .fetch_all(pool)
        .await
        .unwrap();
    assert_eq!(
        partitions,
        [0, 1, 2],
        "{who} stored every partition's position"
    );
}

/// `restore` with `--kafka-brokers` counts the messages `forward` delivered that `persist` has
/// not stored yet, and refuses; once persist has stored them, only the existing keys stop it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refuses_while_kafka_holds_unpersisted_events() {
    let _g = serial();
    let Some(kafka) = tansu_or_skip("restore_refuses_while_kafka_holds_unpersisted_events") else {
        return;
    };
    let Some(mut ms) = module_stack("restore_refuses_while_kafka_holds_unpersisted_events").await
    else {
        return;
    };
    let dir = tmpdir("kafka-restore");
    let mut fwd = Shipper::spawn(
        &base_args(
            "forward",
            Some(&ms.redis.url()),
            None,
            Some(&kafka.brokers()),
        ),
        &dir.join("fwd.log"),
    );
    for i in 0..40 {
        cmd(
            &mut ms.c,
            &["ASSET.INCR", &format!("acct:{}", i % 4), "gold", "1"],
        )
        .await;
    }
    // forward has delivered and acknowledged every entry: nothing is in flight in the stream
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // the group exists once forward has started reading
        let pending: redis::RedisResult<redis::Value> = redis::cmd("XPENDING")
            .arg(STREAM)
            .arg(GROUP)
            .query_async(&mut ms.c)
            .await;
        let drained = matches!(&pending, Ok(redis::Value::Array(a)) if a.first() == Some(&redis::Value::Int(0)));
        if drained && xlen(&mut ms.c, STREAM).await == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "forward did not ack and trim:\n{}",
            tail(&fwd.log_text())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (r, p, b) = (ms.redis.url(), ms.pg.url(), kafka.brokers());
    let restore = |extra: &[&str]| {
        let mut a = vec![
            "restore",
            "--redis-url",
            r.as_str(),
            "--database-url",
            p.as_str(),
        ];
        a.extend_from_slice(extra);
        shipper_cmd(&a)
    };
    let (code, out) = restore(&["--kafka-brokers", &b]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("40 Kafka messages of topic tally.events not yet persisted"),
        "{out}"
    );

    let mut per = Shipper::spawn(
        &base_args("persist", None, Some(&p), Some(&b)),
        &dir.join("per.log"),
    );
    assert_eq!(
        wait_count(&ms.pool, EVENTS_SQL, 40, Duration::from_secs(90)).await,
        40,
        "{}",
        tail(&per.log_text())
    );
    // positions are stored with the events: nothing unpersisted is left
    let deadline = Instant::now() + Duration::from_secs(30);
    let out = loop {
        let (code, out) = restore(&["--kafka-brokers", &b]);
        assert_ne!(code, 0, "the keys exist, restore must still refuse:\n{out}");
        if !out.contains("Kafka messages") {
            break out;
        }
        assert!(Instant::now() < deadline, "{out}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        out.contains("refusing to overwrite existing Redis keys"),
        "{out}"
    );
    // without brokers, a history that came through Kafka is reported as unchecked
    let (code, out) = restore(&[]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("unchecked: the history came through Kafka (topics tally.events)"),
        "{out}"
    );
    for s in [&mut fwd, &mut per] {
        s.sigterm();
        assert!(s
            .wait_timeout(Duration::from_secs(30))
            .is_some_and(|st| st.success()));
    }
}
