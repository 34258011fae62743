//! Kafka path (stream -> Kafka -> Postgres) integration tests against a local tansu broker
//! (Kafka protocol, sqlite storage). Skipped with a message when tansu is not installed.

mod common;

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
            skip(test, "tansu not found (set TANSU_BIN or install into ~/.cargo/bin/tansu)");
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
    let Some(kafka) = tansu_or_skip("e2e_kafka_run_exactly_once") else { return };
    let Stack { redis, pg, pool, mut c, mut m } = stack().await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(21);
    let replay = fill_with_replays(&mut c, &mut m, &mut rng, 600).await;
    let dir = tmpdir("kafka-e2e");
    let mut sh = Shipper::spawn(
        &base_args("run", Some(&redis.url()), Some(&pg.url()), Some(&kafka.brokers())),
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
    assert_eq!(count(&pool, "SELECT count(*) FROM events WHERE via LIKE 'kafka:tally.events/%'").await, n);
    let start = Instant::now();
    while xlen(&mut c, STREAM).await > 0 && start.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(xlen(&mut c, STREAM).await, 0, "stream not trimmed");
    sh.sigterm();
    let st = sh.wait_timeout(Duration::from_secs(20)).expect("no exit after SIGTERM");
    assert!(st.success(), "{st:?}\n{}", tail(&sh.log_text()));
    assert_matches_model(&pool, &m, 0).await;
}

/// `forward` and `persist` as separate sidecars; a malformed stream entry and a malformed
/// Kafka message both land in failed_events and the pipeline keeps going.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_and_malformed_kafka_message() {
    let _g = serial();
    let Some(kafka) = tansu_or_skip("sidecars_and_malformed_kafka_message") else { return };
    let Stack { redis, pg, pool, mut c, mut m } = stack().await;
    let dir = tmpdir("kafka-sidecars");
    let mut fwd = Shipper::spawn(&base_args("forward", Some(&redis.url()), None, Some(&kafka.brokers())), &dir.join("fwd.log"));
    let mut per = Shipper::spawn(&base_args("persist", None, Some(&pg.url()), Some(&kafka.brokers())), &dir.join("per.log"));

    for i in 0..100 {
        xadd(&mut c, STREAM, "event", &m.asset_incr("user:1", "gold", i + 1)).await;
    }
    let bad_stream = xadd(&mut c, STREAM, "nope", "x").await;
    assert_eq!(wait_count(&pool, EVENTS_SQL, 100, Duration::from_secs(60)).await, 100, "{}\n{}", tail(&fwd.log_text()), tail(&per.log_text()));

    // garbage straight into the topic
    let producer: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", kafka.brokers()).set("message.timeout.ms", "10000").create().unwrap();
    let (part, off) = producer
        .send(FutureRecord::to("tally.events").key("junk").payload("\u{1}definitely not an event"), Duration::from_secs(10))
        .await
        .map(|d| (d.partition, d.offset))
        .expect("produce garbage");
    for i in 0..100 {
        xadd(&mut c, STREAM, "event", &m.asset_incr("user:2", "gems", i + 1)).await;
    }
    assert_eq!(wait_count(&pool, EVENTS_SQL, 200, Duration::from_secs(60)).await, 200, "{}", tail(&per.log_text()));
    assert_eq!(wait_count(&pool, "SELECT count(*) FROM failed_events", 2, Duration::from_secs(20)).await, 2);
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT source, error FROM failed_events ORDER BY source").fetch_all(&pool).await.unwrap();
    assert!(rows.contains(&(format!("kafka:tally.events/{part}/{off}"), rows.iter().find(|r| r.0.starts_with("kafka:")).unwrap().1.clone())));
    assert!(rows.iter().any(|r| r.0.starts_with("kafka:") && r.1.contains("invalid event JSON")), "{rows:?}");
    assert!(rows.iter().any(|r| r.0 == format!("redis:{STREAM}/{bad_stream}") && r.1.contains("no `event` field")), "{rows:?}");

    fwd.sigterm();
    per.sigterm();
    assert!(fwd.wait_timeout(Duration::from_secs(20)).expect("forward exit").success());
    assert!(per.wait_timeout(Duration::from_secs(20)).expect("persist exit").success());
    assert_eq!(group_pending(&mut c, STREAM, GROUP).await, 0);
    assert_matches_model(&pool, &m, 2).await;
}

/// The broker goes away under load and comes back: nothing lost, backlog drained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_under_load_loses_nothing() {
    let _g = serial();
    let Some(mut kafka) = tansu_or_skip("broker_restart_under_load_loses_nothing") else { return };
    let Stack { redis, pg, pool, mut c, mut m } = stack().await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let dir = tmpdir("kafka-restart");
    let mut sh = Shipper::spawn(
        &base_args("run", Some(&redis.url()), Some(&pg.url()), Some(&kafka.brokers())),
        &dir.join("shipper.log"),
    );
    for _ in 0..300 {
        xadd(&mut c, STREAM, "event", &m.random_event(&mut rng)).await;
    }
    assert_eq!(wait_count(&pool, EVENTS_SQL, 300, Duration::from_secs(60)).await, 300, "{}", tail(&sh.log_text()));
    kafka.stop_server();
    for _ in 0..700 {
        xadd(&mut c, STREAM, "event", &m.random_event(&mut rng)).await;
    }
    // the outage shows as failed deliveries (after --kafka-message-timeout-ms), and nothing
    // is acknowledged or trimmed meanwhile
    let failures = "tally_delivery_failures_total{stage=\"forward\"}";
    let f = sh.wait_metric(failures, Duration::from_secs(90), |v| v >= 1.0).await;
    assert!(f >= Some(1.0), "no failed delivery counted while the broker was down ({f:?})");
    let len = xlen(&mut c, STREAM).await;
    assert!(len >= 700, "entries trimmed while the broker was down (xlen {len})");
    let m_len = sh.metric(&format!("tally_stream_length{{stream=\"{STREAM}\"}}"));
    assert!(m_len >= Some(700.0), "stream length metric while the broker was down: {m_len:?}");
    kafka.start_server();
    let n = m.ids.len() as i64;
    let got = wait_count(&pool, EVENTS_SQL, n, Duration::from_secs(120)).await;
    assert_eq!(got, n, "log tail:\n{}", tail(&sh.log_text()));
    sh.sigterm();
    assert!(sh.wait_timeout(Duration::from_secs(30)).expect("exit").success());
    assert_matches_model(&pool, &m, 0).await;
}

/// kill -9 of the combined Kafka pipeline at random moments under load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_at_random_moments_kafka_exactly_once() {
    let _g = serial();
    let Some(kafka) = tansu_or_skip("kill9_at_random_moments_kafka_exactly_once") else { return };
    let Stack { redis, pg, pool, .. } = stack().await;
    let dir = tmpdir("kafka-kill9");
    let args = base_args("run", Some(&redis.url()), Some(&pg.url()), Some(&kafka.brokers()));
    // no consumer-group session to wait for: persist assigns every partition itself and
    // seeks to the positions stored in Postgres
    let args = [args, vec!["--batch-size".into(), "50".into()]].concat();
    let url = redis.url();
    let producer = tokio::spawn(async move {
        let mut c = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
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
        eprintln!("round {round}: killed after {ms} ms, {} persisted", count(&pool, EVENTS_SQL).await);
    }
    let m = producer.await.unwrap();
    let mut sh = Shipper::spawn(&args, &log);
    let got = wait_count(&pool, EVENTS_SQL, m.ids.len() as i64, Duration::from_secs(120)).await;
    assert_eq!(got, m.ids.len() as i64, "log tail:\n{}", tail(&sh.log_text()));
    sh.sigterm();
    let st = sh.wait_timeout(Duration::from_secs(30)).expect("exit");
    assert!(st.success(), "{st:?}\n{}", tail(&sh.log_text()));
    assert_matches_model(&pool, &m, 0).await;
}
