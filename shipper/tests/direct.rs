//! Direct path (stream -> Postgres) integration tests: real redis-server and PostgreSQL 15.

// Scenarios read better whole than cut into helpers, and every test holds `common::serial()`
// (a std Mutex guard that runs the heavy tests one at a time) across its awaits on purpose.
#![allow(clippy::too_many_lines, clippy::await_holding_lock)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use rand::{Rng, SeedableRng};

const GROUP: &str = "tally-shipper";
const EVENTS_SQL: &str = "SELECT count(*) FROM events";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_direct_exactly_once_with_replays_and_trim() {
    let _g = serial();
    let redis = Redis::start(None);
    let pg = Pg::start();
    run_migrate(&pg.url());
    run_migrate(&pg.url()); // rerun is safe
    let pool = pg.pool().await;
    let mut c = redis.conn().await;
    let mut m = Model::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);

    // backlog before the shipper starts
    let replay = fill_with_replays(&mut c, &mut m, &mut rng, 800).await;
    let dir = tmpdir("direct");
    let args = base_args("run", Some(&redis.url()), Some(&pg.url()), None);
    let mut sh = Shipper::spawn(&args, &dir.join("shipper.log"));
    // more while running, plus replayed duplicates (same id) which must be deduped
    for _ in 0..700 {
        let e = m.random_event(&mut rng);
        xadd(&mut c, STREAM, "event", &e).await;
    }
    for e in &replay {
        xadd(&mut c, STREAM, "event", e).await;
    }
    let n = m.ids.len() as i64;
    let got = wait_count(&pool, EVENTS_SQL, n, Duration::from_secs(60)).await;
    assert_eq!(got, n, "not all events persisted; log:\n{}", sh.log_text());
    // stream drains to (near) zero: everything acked and trimmed
    let start = Instant::now();
    while xlen(&mut c, STREAM).await > 0 && start.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        xlen(&mut c, STREAM).await,
        0,
        "stream not trimmed after drain"
    );
    assert_eq!(group_pending(&mut c, STREAM, GROUP).await, 0);

    // metrics + healthz
    assert_eq!(sh.metric("tally_events_persisted_total"), Some(1500.0));
    assert_eq!(sh.metric("tally_events_duplicate_total"), Some(8.0));
    assert_eq!(
        sh.metric("tally_delivery_failures_total{stage=\"persist\"}"),
        Some(0.0)
    );
    let len = sh
        .wait_metric(
            &format!("tally_stream_length{{stream=\"{STREAM}\"}}"),
            Duration::from_secs(20),
            |v| v == 0.0,
        )
        .await;
    assert_eq!(len, Some(0.0), "stream length metric after the drain");
    let (status, body) = sh.healthz().expect("/healthz answers");
    assert_eq!((status, body.trim()), (200, "ok"));

    sh.sigterm();
    let st = sh
        .wait_timeout(Duration::from_secs(15))
        .expect("shipper did not exit after SIGTERM");
    assert!(st.success(), "exit status {st:?}");
    assert_matches_model(&pool, &m, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_stream_entries_go_to_failed_events_and_pipeline_continues() {
    let _g = serial();
    let Stack {
        redis,
        pg,
        pool,
        mut c,
        mut m,
    } = stack().await;
    let dir = tmpdir("malformed");
    let mut sh = Shipper::spawn(
        &base_args("run", Some(&redis.url()), Some(&pg.url()), None),
        &dir.join("shipper.log"),
    );

    let a = m.asset_incr("user:1", "gold", 1000);
    xadd(&mut c, STREAM, "event", &a).await;
    let bad1 = xadd(&mut c, STREAM, "junk", "no event field").await;
    let bad2 = xadd(&mut c, STREAM, "event", "{not json").await;
    let bad3 = xadd(
        &mut c,
        STREAM,
        "event",
        &a.replace("\"v\":1", "\"v\":9").replace("user:1", "user:x"),
    )
    .await;
    let b = m.asset_incr("user:1", "gold", 250);
    xadd(&mut c, STREAM, "event", &b).await;

    let got = wait_count(&pool, EVENTS_SQL, 2, Duration::from_secs(30)).await;
    assert_eq!(got, 2, "log:\n{}", sh.log_text());
    let failed = wait_count(
        &pool,
        "SELECT count(*) FROM failed_events",
        3,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(failed, 3);
    // batches are delivered concurrently: look rows up by their source, not their order
    let rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT source, raw, error FROM failed_events")
            .fetch_all(&pool)
            .await
            .unwrap();
    let row = |id: &str| {
        rows.iter()
            .find(|r| r.0 == format!("redis:{STREAM}/{id}"))
            .cloned()
            .expect("failed_events row")
    };
    let (_, raw1, err1) = row(&bad1);
    assert!(
        raw1.contains("no event field") && err1.contains("no `event` field"),
        "{rows:?}"
    );
    let (_, raw2, err2) = row(&bad2);
    assert_eq!(raw2, "{not json");
    assert!(err2.contains("invalid event JSON"));
    assert!(row(&bad3).2.contains("unsupported format version"));
    // all acked, nothing pending
    let start = Instant::now();
    while group_pending(&mut c, STREAM, GROUP).await > 0
        && start.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(group_pending(&mut c, STREAM, GROUP).await, 0);
    sh.sigterm();
    assert!(sh
        .wait_timeout(Duration::from_secs(15))
        .expect("exit")
        .success());
    assert_matches_model(&pool, &m, 3).await;

    // retry-failed: a row whose payload is (now) a valid event gets persisted and resolved
    let fixed = m.asset_incr("user:1", "gold", 5);
    sqlx::query(
        "INSERT INTO failed_events (source, raw, error) VALUES ('manual:1', $1, 'decoder bug')",
    )
    .bind(&fixed)
    .execute(&pool)
    .await
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["retry-failed", "--database-url", &pg.url()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("resolved=1 still_failing=3"));
    assert_eq!(
        count(&pool, "SELECT count(*) FROM failed_events WHERE resolved").await,
        1
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM failed_events WHERE NOT resolved AND attempts = 2"
        )
        .await,
        3
    );
    assert_matches_model(&pool, &m, 4).await;
}

/// Sustained load; the shipper is killed with SIGKILL at random moments and restarted each
/// time. Postgres must end with exactly the appended events: no duplicates, no gaps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_at_random_moments_direct_exactly_once() {
    let _g = serial();
    let Stack {
        redis, pg, pool, ..
    } = stack().await;
    let dir = tmpdir("kill9");
    let args = base_args("run", Some(&redis.url()), Some(&pg.url()), None);
    let args = [args, vec!["--batch-size".into(), "50".into()]].concat();

    // producer: ~4000 events over ~8s
    let url = redis.url();
    let producer = tokio::spawn(async move {
        let mut c = aconn(&url).await;
        let mut m = Model::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for i in 0..4000 {
            let e = m.random_event(&mut rng);
            xadd(&mut c, STREAM, "event", &e).await;
            if i % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        m
    });
    let mut rng = rand::rngs::StdRng::seed_from_u64(99);
    let log = dir.join("shipper.log");
    for round in 0..8 {
        let mut sh = Shipper::spawn(&args, &log);
        let ms = rng.random_range(200..1200);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        sh.kill9();
        let n = count(&pool, EVENTS_SQL).await;
        eprintln!("round {round}: killed after {ms} ms, {n} events persisted so far");
    }
    let m = producer.await.unwrap();
    let mut sh = Shipper::spawn(&args, &log);
    let got = wait_count(
        &pool,
        EVENTS_SQL,
        m.ids.len() as i64,
        Duration::from_secs(90),
    )
    .await;
    assert_eq!(
        got,
        m.ids.len() as i64,
        "log tail:\n{}",
        tail_lines(&sh.log_text(), 40)
    );
    sh.sigterm();
    assert!(sh
        .wait_timeout(Duration::from_secs(15))
        .expect("exit")
        .success());
    assert_matches_model(&pool, &m, 0).await;
    let mut c = redis.conn().await;
    assert_eq!(group_pending(&mut c, STREAM, GROUP).await, 0);
    assert_eq!(xlen(&mut c, STREAM).await, 0);
}

/// Postgres goes away under load and comes back: the outage shows (failed deliveries in
/// /metrics, /healthz degraded, the stream length metric growing), nothing is acked or
/// trimmed meanwhile, and afterwards every event is in Postgres exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_under_load_loses_nothing() {
    let _g = serial();
    let redis = Redis::start(None);
    let mut pg = Pg::start();
    run_migrate(&pg.url());
    let dir = tmpdir("pgdown");
    let args = base_args("run", Some(&redis.url()), Some(&pg.url()), None);
    let args = [
        args,
        vec![
            "--unhealthy-after-ms".into(),
            "500".into(),
            "--pg-acquire-timeout-ms".into(),
            "500".into(),
        ],
    ]
    .concat();
    let mut sh = Shipper::spawn(&args, &dir.join("shipper.log"));
    let mut c = redis.conn().await;
    let mut m = Model::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    for _ in 0..500 {
        xadd(&mut c, STREAM, "event", &m.random_event(&mut rng)).await;
    }
    {
        let pool = pg.pool().await;
        assert_eq!(
            wait_count(&pool, EVENTS_SQL, 500, Duration::from_secs(60)).await,
            500
        );
        pool.close().await;
    }
    let failures = "tally_delivery_failures_total{stage=\"persist\"}";
    let len_series = format!("tally_stream_length{{stream=\"{STREAM}\"}}");
    // Before the outage the count can be above 0: four writers that meet the same new keys at
    // start can deadlock on their key_seqs rows (retried, nothing lost; a known race: a key
    // first seen past its seq 1 is created inside the batch's transaction). The outage must
    // add to it.
    let before = sh
        .metric(failures)
        .expect("the persist failures series is exported");
    pg.stop_server();
    for _ in 0..1000 {
        xadd(&mut c, STREAM, "event", &m.random_event(&mut rng)).await;
    }
    // the outage is visible: failed deliveries counted, /healthz degraded
    let f = sh
        .wait_metric(failures, Duration::from_secs(60), |v| v >= before + 1.0)
        .await;
    assert!(
        f >= Some(before + 1.0),
        "no failed delivery counted during the outage ({f:?}, {before} before it)"
    );
    let start = Instant::now();
    let mut health = sh.healthz();
    while health.as_ref().map(|h| h.0) != Some(503) && start.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        health = sh.healthz();
    }
    let (status, body) = health.expect("/healthz answers during the outage");
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("degraded"), "{body}");
    // the stream length metric keeps moving while Postgres is down
    let first = sh
        .wait_metric(&len_series, Duration::from_secs(30), |v| v >= 1000.0)
        .await;
    assert!(
        first >= Some(1000.0),
        "stream length metric during the outage: {first:?}"
    );
    for _ in 0..1000 {
        xadd(&mut c, STREAM, "event", &m.random_event(&mut rng)).await;
    }
    let second = sh
        .wait_metric(&len_series, Duration::from_secs(30), |v| v >= 2000.0)
        .await;
    assert!(
        second >= Some(2000.0),
        "stream length metric did not grow ({first:?} -> {second:?})"
    );
    assert!(sh.metric(&format!("tally_stream_lag_seconds{{stream=\"{STREAM}\"}}")) > Some(0.0));
    // nothing acked nor trimmed while Postgres is down
    let len = xlen(&mut c, STREAM).await;
    assert!(
        len >= 2000,
        "entries were trimmed while Postgres was down (xlen {len})"
    );
    let pending = group_pending(&mut c, STREAM, GROUP).await;
    assert!(
        pending > 0,
        "the in-flight batch was acked although Postgres is down"
    );
    assert_eq!(sh.metric("tally_events_persisted_total"), Some(500.0));

    pg.start_server();
    let pool = pg.pool().await;
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
        tail_lines(&sh.log_text(), 40)
    );
    let start = Instant::now();
    while sh.healthz().map(|h| h.0) != Some(200) && start.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        sh.healthz().map(|h| h.0),
        Some(200),
        "/healthz after the outage"
    );
    sh.sigterm();
    assert!(sh
        .wait_timeout(Duration::from_secs(15))
        .expect("exit")
        .success());
    assert_matches_model(&pool, &m, 0).await;
    assert_eq!(group_pending(&mut c, STREAM, GROUP).await, 0);
}

/// SIGTERM while events flow: exit 0 within the deadline, everything read is durable and
/// acked (no pending entries), and a restart picks up exactly the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_batch_and_exits_zero() {
    let _g = serial();
    let Stack {
        redis, pg, pool, ..
    } = stack().await;
    let dir = tmpdir("sigterm");
    let args = base_args("run", Some(&redis.url()), Some(&pg.url()), None);
    let args = [
        args,
        vec![
            "--batch-size".into(),
            "100".into(),
            "--shutdown-deadline-ms".into(),
            "10000".into(),
        ],
    ]
    .concat();
    let mut c = redis.conn().await;
    let mut m = Model::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for _ in 0..3000 {
        xadd(&mut c, STREAM, "event", &m.random_event(&mut rng)).await;
    }
    let mut sh = Shipper::spawn(&args, &dir.join("shipper.log"));
    wait_count(&pool, EVENTS_SQL, 200, Duration::from_secs(30)).await;
    sh.sigterm();
    // exit 0 means the drain finished before the 10 s deadline (past it the exit code is 3)
    let st = sh
        .wait_timeout(Duration::from_secs(60))
        .expect("did not exit after SIGTERM");
    assert_eq!(
        st.code(),
        Some(0),
        "log:\n{}",
        tail_lines(&sh.log_text(), 40)
    );
    assert_eq!(
        group_pending(&mut c, STREAM, GROUP).await,
        0,
        "entries left pending after graceful stop"
    );
    let persisted = count(&pool, EVENTS_SQL).await;
    eprintln!("persisted {persisted} of 3000 before SIGTERM completed");
    assert!(persisted >= 200);
    // restart: the rest arrives exactly once
    let mut sh = Shipper::spawn(&args, &dir.join("shipper2.log"));
    assert_eq!(
        wait_count(&pool, EVENTS_SQL, 3000, Duration::from_secs(60)).await,
        3000
    );
    sh.sigterm();
    assert!(sh
        .wait_timeout(Duration::from_secs(15))
        .expect("exit")
        .success());
    assert_matches_model(&pool, &m, 0).await;
}

/// A dead consumer's pending entries are claimed (XAUTOCLAIM) by another consumer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_entries_of_dead_consumer_are_claimed() {
    let _g = serial();
    let Stack {
        redis,
        pg,
        pool,
        mut c,
        mut m,
    } = stack().await;
    let _: redis::Value = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(STREAM)
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut c)
        .await
        .unwrap();
    for i in 0..20 {
        xadd(
            &mut c,
            STREAM,
            "event",
            &m.asset_incr("user:9", "gold", i + 1),
        )
        .await;
    }
    // a consumer "ghost" reads them and dies without acking
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(GROUP)
        .arg("ghost")
        .arg("COUNT")
        .arg(100)
        .arg("STREAMS")
        .arg(STREAM)
        .arg(">")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(group_pending(&mut c, STREAM, GROUP).await, 20);
    let dir = tmpdir("claim");
    let mut sh = Shipper::spawn(
        &base_args("run", Some(&redis.url()), Some(&pg.url()), None),
        &dir.join("shipper.log"),
    );
    assert_eq!(
        wait_count(&pool, EVENTS_SQL, 20, Duration::from_secs(60)).await,
        20,
        "{}",
        sh.log_text()
    );
    assert_eq!(
        sh.metric("tally_entries_claimed_total"),
        Some(20.0),
        "the ghost's entries were taken over"
    );
    sh.sigterm();
    assert!(sh
        .wait_timeout(Duration::from_secs(15))
        .expect("exit")
        .success());
    assert_eq!(group_pending(&mut c, STREAM, GROUP).await, 0);
    assert_matches_model(&pool, &m, 0).await;
}

/// One (key, seq) carried by two different events (what a Redis failover that lost shipped
/// writes produces): both versions are kept, the fork is recorded with both ids, and
/// `reconcile` names it and exits 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_is_recorded_and_named_by_reconcile() {
    let _g = serial();
    let Stack {
        redis,
        pg,
        pool,
        mut c,
        mut m,
    } = stack().await;
    let first = m.asset_incr("acct:f", "gold", 100);
    let second = m.asset_incr("acct:f", "gold", 5);
    // the "new primary" reissues seq 2 with another event id
    let mut other = Model::default();
    other.asset_incr("acct:f", "gold", 100);
    let fork = other.asset_incr("acct:f", "gold", 7);
    for e in [&first, &second, &fork] {
        xadd(&mut c, STREAM, "event", e).await;
    }
    let dir = tmpdir("fork");
    let mut sh = Shipper::spawn(
        &base_args("run", Some(&redis.url()), Some(&pg.url()), None),
        &dir.join("shipper.log"),
    );
    assert_eq!(
        wait_count(&pool, EVENTS_SQL, 3, Duration::from_secs(60)).await,
        3,
        "{}",
        sh.log_text()
    );
    let forks: Vec<(String, i64, String, String)> = sqlx::query_as(
        "SELECT data_key, got_seq, event_id::text, other_event_id::text FROM sequence_anomalies WHERE kind = 'fork'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let id_of = |e: &str| {
        serde_json::from_str::<serde_json::Value>(e).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        forks,
        vec![("acct:f".to_string(), 2, id_of(&fork), id_of(&second))]
    );
    // the first version holds the seq; the second is kept as an event and named by the fork
    let holder: String = sqlx::query_scalar(
        "SELECT event_id::text FROM event_keys WHERE data_key = 'acct:f' AND seq = 2",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(holder, id_of(&second));
    let kept = count(
        &pool,
        &format!(
            "SELECT count(*) FROM events WHERE event_id = '{}'",
            id_of(&fork)
        ),
    )
    .await;
    assert_eq!(kept, 1, "the forked event is kept");
    assert_eq!(sh.metric("tally_seq_anomalies_total"), Some(1.0));
    sh.sigterm();
    assert!(sh
        .wait_timeout(Duration::from_secs(15))
        .expect("exit")
        .success());
    let out = std::process::Command::new(BIN)
        .args([
            "reconcile",
            "--redis-url",
            &redis.url(),
            "--database-url",
            &pg.url(),
            "--wait-ms",
            "0",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "fork acct:f seq 2: events {} and {}",
            id_of(&second),
            id_of(&fork)
        )),
        "{text}"
    );
    assert!(text.contains("history: 1 forks"), "{text}");
}

/// Events Postgres refuses (a 4 KB key exceeds the index row limit: SQLSTATE 54000) land in
/// failed_events one by one while the 10,000 events around them all arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_events_are_isolated_and_the_rest_flows() {
    let _g = serial();
    let Stack {
        redis,
        pg,
        pool,
        mut c,
        mut m,
    } = stack().await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(17);
    // random text: a repetitive key would compress below the index row limit
    let noise: String = (0..4096)
        .map(|_| rng.random_range(b'a'..=b'z') as char)
        .collect();
    let big_key = format!("user:{noise}");
    let mut poison = Vec::new();
    let mut pipe = redis::pipe();
    for i in 0..10_000 {
        if i % 2500 == 1000 {
            let mut side = Model::default(); // not expected in Postgres
            let e = side.asset_incr(&big_key, "gold", 1);
            poison.push(
                serde_json::from_str::<serde_json::Value>(&e).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
            pipe.cmd("XADD")
                .arg(STREAM)
                .arg("*")
                .arg("event")
                .arg(e)
                .ignore();
        }
        pipe.cmd("XADD")
            .arg(STREAM)
            .arg("*")
            .arg("event")
            .arg(m.random_event(&mut rng))
            .ignore();
    }
    let _: () = pipe.query_async(&mut c).await.unwrap();
    let dir = tmpdir("poison");
    let mut sh = Shipper::spawn(
        &base_args("run", Some(&redis.url()), Some(&pg.url()), None),
        &dir.join("shipper.log"),
    );
    let got = wait_count(&pool, EVENTS_SQL, 10_000, Duration::from_secs(180)).await;
    assert_eq!(got, 10_000, "{}", tail_lines(&sh.log_text(), 40));
    let failed = wait_count(
        &pool,
        "SELECT count(*) FROM failed_events",
        poison.len() as i64,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(failed, poison.len() as i64);
    let errors: Vec<String> = sqlx::query_scalar("SELECT error FROM failed_events ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!(
        errors.iter().all(|e| e.starts_with("refused by Postgres")),
        "{errors:?}"
    );
    sh.sigterm();
    assert!(sh
        .wait_timeout(Duration::from_secs(30))
        .expect("exit")
        .success());
    assert_matches_model(&pool, &m, poison.len() as i64).await;
    assert_eq!(group_pending(&mut c, STREAM, GROUP).await, 0);
    // retry-failed is never blocked by them either: they stay failing, counted
    let out = std::process::Command::new(BIN)
        .args(["retry-failed", "--database-url", &pg.url()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = format!("resolved=0 still_failing={}", poison.len());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.lines().any(|l| l == want), "{stdout}");
}

/// A failure that retrying cannot fix (the schema was never migrated) stops the process at
/// once with a non-zero exit and the fix named, instead of retrying forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_schema_exits_non_zero_naming_the_fix() {
    let _g = serial();
    let redis = Redis::start(None);
    let pg = Pg::start();
    let mut c = redis.conn().await;
    let mut m = Model::default();
    xadd(&mut c, STREAM, "event", &m.asset_incr("user:1", "gold", 1)).await;
    let dir = tmpdir("noschema");
    let mut sh = Shipper::spawn(
        &base_args("run", Some(&redis.url()), Some(&pg.url()), None),
        &dir.join("shipper.log"),
    );
    let st = sh
        .wait_timeout(Duration::from_secs(60))
        .expect("the shipper kept running without a schema");
    assert_eq!(st.code(), Some(1));
    let log = sh.log_text();
    assert!(
        log.contains("tally-shipper: fatal:") && log.contains("tally-shipper migrate"),
        "{log}"
    );
    assert_eq!(
        xlen(&mut c, STREAM).await,
        1,
        "the entry stays in the stream"
    );
}

/// A catch-up batch goes in by COPY when none of its rows is stored yet. One that holds an
/// event twice, events an earlier run stored, or a poison event must still end with every
/// event once (the batch falls back to inserting row by row with ON CONFLICT, or is isolated),
/// the poison in failed_events, and every amount stored exactly as the event carries it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_batches_keep_exactly_once_with_replays_and_poison() {
    let _g = serial();
    let Stack {
        redis,
        pg,
        pool,
        mut c,
        mut m,
    } = stack().await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(23);
    let args = base_args("run", Some(&redis.url()), Some(&pg.url()), None);
    let dir = tmpdir("copy");
    let copies = |sh: &Shipper, result: &str| {
        sh.metric(&format!(
            "tally_pg_copy_batches_total{{result=\"{result}\",table=\"events\"}}"
        ))
    };
    // a first run stores 300 events
    let stored: Vec<String> = (0..300).map(|_| m.random_event(&mut rng)).collect();
    let mut pipe = redis::pipe();
    stored.iter().for_each(|e| queue(&mut pipe, e));
    let _: () = pipe.query_async(&mut c).await.unwrap();
    let mut sh = Shipper::spawn(&args, &dir.join("first.log"));
    assert_eq!(
        wait_count(&pool, EVENTS_SQL, 300, Duration::from_secs(60)).await,
        300,
        "{}",
        sh.log_text()
    );
    assert!(
        copies(&sh, "copied").unwrap_or(0.0) >= 1.0,
        "the first batches are copied"
    );
    sh.sigterm();
    assert!(sh
        .wait_timeout(Duration::from_secs(15))
        .expect("exit")
        .success());
    assert_eq!(group_pending(&mut c, STREAM, GROUP).await, 0);

    // the backlog: 2,000 new events, every 10th appended twice in a row (same batch), a poison
    // event (4 KB key: SQLSTATE 54000) among them, then the 300 stored ones again
    let noise: String = (0..4096)
        .map(|_| rng.random_range(b'a'..=b'z') as char)
        .collect();
    let poison = Model::default().asset_incr(&format!("user:{noise}"), "gold", 1);
    let mut pipe = redis::pipe();
    let mut twice = 0;
    for i in 0..2_000 {
        let e = m.random_event(&mut rng);
        let times = if i % 10 == 0 { 2 } else { 1 };
        twice += times - 1;
        (0..times).for_each(|_| queue(&mut pipe, &e));
        if i == 1_000 {
            queue(&mut pipe, &poison);
        }
    }
    stored.iter().for_each(|e| queue(&mut pipe, e));
    let _: () = pipe.query_async(&mut c).await.unwrap();
    let mut sh = Shipper::spawn(&args, &dir.join("second.log"));
    let got = wait_count(&pool, EVENTS_SQL, 2_300, Duration::from_secs(120)).await;
    assert_eq!(got, 2_300, "{}", tail_lines(&sh.log_text(), 40));
    assert_eq!(
        wait_count(
            &pool,
            "SELECT count(*) FROM failed_events",
            1,
            Duration::from_secs(30)
        )
        .await,
        1
    );
    let dup = sh
        .wait_metric(
            "tally_events_duplicate_total",
            Duration::from_secs(20),
            |v| v >= f64::from(twice + 300),
        )
        .await;
    assert_eq!(
        dup,
        Some(f64::from(twice + 300)),
        "each replay counted once"
    );
    assert!(
        copies(&sh, "present").unwrap_or(0.0) >= 1.0,
        "a batch with stored events falls back"
    );
    sh.sigterm();
    assert!(sh
        .wait_timeout(Duration::from_secs(30))
        .expect("exit")
        .success());
    assert_matches_model(&pool, &m, 1).await;
    assert_eq!(group_pending(&mut c, STREAM, GROUP).await, 0);
    // amounts as carried: the binary numerics keep the event's text, scale included
    let differ = count(
        &pool,
        "SELECT count(*) FROM event_changes c JOIN events e USING (event_id)
          WHERE c.delta::text <> (e.raw::jsonb -> 'changes' -> c.idx ->> 'delta')
             OR c.balance::text <> (e.raw::jsonb -> 'changes' -> c.idx ->> 'balance')",
    )
    .await;
    assert_eq!(
        differ, 0,
        "event_changes amounts differ from the events' text"
    );
    assert!(
        count(
            &pool,
            "SELECT count(*) FROM event_changes WHERE delta::text LIKE '%.%'"
        )
        .await
            > 0
    );
}

/// Balances and watermarks do not depend on arrival order: the events of a few keys arrive
/// shuffled within one batch, with some older seqs held back until a second run. Between the
/// runs every balance is the one of its key's highest seq and the held-back keys' watermarks
/// wait; after them every watermark is complete and nothing older overwrote a balance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn derived_tables_do_not_depend_on_arrival_order() {
    use rand::seq::SliceRandom;
    let _g = serial();
    let Stack {
        redis,
        pg,
        pool,
        mut c,
        mut m,
    } = stack().await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(31);
    let args = base_args("run", Some(&redis.url()), Some(&pg.url()), None);
    let dir = tmpdir("order");
    // a first run stores one event per key, so the second finds every key in key_seqs
    let keys: Vec<String> = (0..8).map(|i| format!("user:{i}")).collect();
    let mut events: Vec<String> = keys.iter().map(|k| m.asset_incr(k, "gold", 100)).collect();
    let mut later = Vec::new();
    for i in 0..400 {
        let (a, b) = (&keys[i % keys.len()], &keys[(i * 7 + 3) % keys.len()]);
        let e = if i % 5 == 0 && a != b {
            m.asset_transfer(a, b, "gold", 1)
        } else {
            m.asset_incr(a, "gold", 1 + i as i64)
        };
        // hold back some early events (never the last ones of a key)
        if i % 9 == 4 && i < 300 {
            later.push(e)
        } else {
            events.push(e)
        }
    }
    events[keys.len()..].shuffle(&mut rng);
    let n = events.len() as i64;
    ship_all(&mut c, &pool, &args, &dir.join("first.log"), &events, n).await;
    let bal: Vec<(String, String)> =
        sqlx::query_as("SELECT data_key, balance::text FROM balances ORDER BY 1")
            .fetch_all(&pool)
            .await
            .unwrap();
    let want: Vec<(String, String)> = m
        .balances
        .iter()
        .map(|((k, _), v)| (k.clone(), cents(*v)))
        .collect();
    let got: Vec<(String, String)> = bal
        .into_iter()
        .map(|(k, b)| (k, normalize_decimal(&b)))
        .collect();
    assert_eq!(
        got, want,
        "each balance is its highest seq's, whatever the order"
    );
    let waiting = count(
        &pool,
        "SELECT count(*) FROM key_seqs WHERE contiguous_seq < last_seq",
    )
    .await;
    assert!(waiting > 0, "keys with held-back seqs wait");

    later.shuffle(&mut rng);
    ship_all(
        &mut c,
        &pool,
        &args,
        &dir.join("second.log"),
        &later,
        n + later.len() as i64,
    )
    .await;
    assert_matches_model(&pool, &m, 0).await;
}

fn queue(pipe: &mut redis::Pipeline, event: &str) {
    pipe.cmd("XADD")
        .arg(STREAM)
        .arg("*")
        .arg("event")
        .arg(event)
        .ignore();
}
