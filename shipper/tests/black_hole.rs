//! A server that stops answering without closing its connections (packets dropped: no RST,
//! no FIN) shows in /healthz: 503 within --unhealthy-after-ms + 5 s of the start of the
//! black hole, naming the stage and the peer in the body and in
//! `tally_health_stalled_seconds`; 503 for as long as it lasts; 200 again once the server
//! answers; and every event written meanwhile is in Postgres exactly once. The black hole is
//! a proxy of the test's own between the shipper and Postgres (or Redis), while events are
//! written steadily to the stream.

// Scenarios read better whole, and every test holds `common::serial()` (a std Mutex guard
// that runs the heavy tests one at a time) across its awaits on purpose.
#![allow(clippy::too_many_lines, clippy::await_holding_lock)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rand::SeedableRng;

const GROUP: &str = "tally-shipper";
const EVENTS_SQL: &str = "SELECT count(*) FROM events";
const UNHEALTHY_AFTER_MS: u64 = 5_000;
/// The bound of issue 24: 503 within --unhealthy-after-ms + 5 s of the start of the hole.
const DETECT_WITHIN: Duration = Duration::from_millis(UNHEALTHY_AFTER_MS + 5_000);
/// How long the server stays silent.
const HOLE: Duration = Duration::from_secs(20);
const STALLED: &str = "tally_health_stalled_seconds";

/// Which server the proxy stands in front of.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Silent {
    Postgres,
    Redis,
}

impl Silent {
    /// The (stage, peer) label pairs of `tally_health_stalled_seconds` that may show it.
    fn stages(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Silent::Postgres => &[("persist", "postgres")],
            Silent::Redis => &[("read", "redis"), ("ack", "redis")],
        }
    }

    /// What the 503 body names.
    fn named(self) -> &'static str {
        match self {
            Silent::Postgres => "degraded: persist stalled: waiting for postgres for ",
            Silent::Redis => "stalled: waiting for redis for ",
        }
    }
}

/// Writes model events to the stream (on a connection of its own, not through the proxy)
/// every few milliseconds until stopped; its task returns the model.
struct Writer {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Model>,
}

impl Writer {
    fn start(redis_url: String, seed: u64) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut c = aconn(&redis_url).await;
            let mut m = Model::default();
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            while !flag.load(Ordering::Relaxed) {
                let e = m.random_event(&mut rng);
                xadd(&mut c, STREAM, "event", &e).await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            m
        });
        Writer { stop, task }
    }

    async fn stop(self) -> Model {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("writer task")
    }
}

/// The largest `tally_health_stalled_seconds` among `stages`, from one scrape.
fn stalled_seconds(sh: &Shipper, stages: &[(&str, &str)]) -> Option<f64> {
    let (_, body) = http_get_blocking(&sh.metrics_addr, "/metrics")?;
    stages
        .iter()
        .map(|(stage, peer)| {
            metric_with_labels(&body, STALLED, &[("stage", stage), ("peer", peer)])
        })
        .try_fold(0.0f64, |max, v| v.map(|v| max.max(v)))
}

/// Polls /healthz until `status` or the deadline; the last answer.
async fn wait_health(sh: &Shipper, status: u16, deadline: Instant) -> Option<(u16, String)> {
    loop {
        let h = sh.healthz();
        if h.as_ref().map(|h| h.0) == Some(status) || Instant::now() >= deadline {
            return h;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn silent_server_shows_in_healthz(test: &str, silent: Silent) {
    let _g = serial();
    let Stack {
        redis,
        pg,
        pool,
        mut c,
        ..
    } = stack().await;
    let proxy = BlackHoleProxy::start(match silent {
        Silent::Postgres => pg.port,
        Silent::Redis => redis.port,
    })
    .await;
    let via = |port: u16| match silent {
        Silent::Postgres => (
            redis.url(),
            format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        ),
        Silent::Redis => (format!("redis://127.0.0.1:{port}"), pg.url()),
    };
    let (redis_url, pg_url) = via(proxy.port);
    let dir = tmpdir(test);
    let args = [
        base_args("run", Some(&redis_url), Some(&pg_url), None),
        vec![
            "--unhealthy-after-ms".into(),
            UNHEALTHY_AFTER_MS.to_string(),
        ],
    ]
    .concat();
    let mut sh = Shipper::spawn(&args, &dir.join("shipper.log"));
    sh.wait_ready(Duration::from_secs(60));
    let writer = Writer::start(redis.url(), 24);

    // events flow through the proxy; healthy, nothing stalled
    let flowing = wait_count(&pool, EVENTS_SQL, 50, Duration::from_secs(60)).await;
    assert!(
        flowing >= 50,
        "events do not flow through the proxy ({flowing}); log:\n{}",
        tail_lines(&sh.log_text(), 40)
    );
    let (status, body) = sh.healthz().expect("/healthz answers");
    assert_eq!((status, body.trim()), (200, "ok"));
    let before = stalled_seconds(&sh, silent.stages()).expect("the stalled gauge");
    assert!(before < 1.0, "{STALLED} before the black hole: {before}");

    // the server goes silent: 503 within --unhealthy-after-ms + 5 s, naming it
    proxy.black_hole(true);
    let holed = Instant::now();
    let health = wait_health(&sh, 503, holed + DETECT_WITHIN).await;
    let seen_after = holed.elapsed();
    let (status, body) = health.expect("/healthz answers during the black hole");
    assert_eq!(
        status,
        503,
        "/healthz {DETECT_WITHIN:?} into the black hole: {body}; log:\n{}",
        tail_lines(&sh.log_text(), 40)
    );
    eprintln!("{test}: 503 {seen_after:?} into the black hole: {body}");
    assert!(seen_after <= DETECT_WITHIN, "503 only after {seen_after:?}");
    assert!(body.starts_with("degraded"), "{body}");
    assert!(body.contains(silent.named()), "{body}");
    let stalled = stalled_seconds(&sh, silent.stages()).expect("the stalled gauge");
    assert!(
        stalled >= (UNHEALTHY_AFTER_MS / 1000) as f64,
        "{STALLED} at the 503: {stalled}"
    );

    // 503 for as long as the server is silent
    while holed.elapsed() < HOLE {
        let h = sh.healthz();
        assert_eq!(
            h.as_ref().map(|h| h.0),
            Some(503),
            "/healthz {:?} into the black hole: {h:?}",
            holed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let grown = stalled_seconds(&sh, silent.stages()).expect("the stalled gauge");
    assert!(
        grown > stalled,
        "{STALLED} did not grow ({stalled} -> {grown})"
    );

    // it answers again: 200, nothing stalled
    proxy.black_hole(false);
    let health = wait_health(&sh, 200, Instant::now() + Duration::from_secs(60)).await;
    assert_eq!(
        health.as_ref().map(|h| h.0),
        Some(200),
        "/healthz after the black hole: {health:?}; log:\n{}",
        tail_lines(&sh.log_text(), 40)
    );

    // nothing lost, nothing twice; the stream drains
    let m = writer.stop().await;
    let want = m.ids.len() as i64;
    let got = wait_count(&pool, EVENTS_SQL, want, Duration::from_secs(120)).await;
    assert_eq!(
        got,
        want,
        "events in Postgres; log:\n{}",
        tail_lines(&sh.log_text(), 40)
    );
    let start = Instant::now();
    while (xlen(&mut c, STREAM).await > 0 || group_pending(&mut c, STREAM, GROUP).await > 0)
        && start.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(group_pending(&mut c, STREAM, GROUP).await, 0, "pending");
    assert_eq!(xlen(&mut c, STREAM).await, 0, "stream not drained");
    let after = stalled_seconds(&sh, silent.stages()).expect("the stalled gauge");
    assert!(after < 1.0, "{STALLED} after the drain: {after}");
    let (status, body) = sh.healthz().expect("/healthz answers");
    assert_eq!((status, body.trim()), (200, "ok"));

    sh.sigterm();
    let st = sh
        .wait_timeout(Duration::from_secs(30))
        .expect("shipper did not exit after SIGTERM");
    assert!(st.success(), "exit status {st:?}");
    assert_matches_model(&pool, &m, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_postgres_shows_in_healthz_and_loses_nothing() {
    silent_server_shows_in_healthz("pg-black-hole", Silent::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_redis_shows_in_healthz_and_loses_nothing() {
    silent_server_shows_in_healthz("redis-black-hole", Silent::Redis).await;
}
