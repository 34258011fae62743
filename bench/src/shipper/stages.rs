//! Section 1b: the Kafka stages alone vs the broker's ceiling, same broker, same run.
//! `forward` drains a backlog of n events into a new topic, then `persist` alone moves that
//! topic into Postgres; the ceiling is a plain librdkafka producer and consumer
//! (shipper/examples/kafka_ceiling.rs) moving n messages of the same size through a new
//! topic with as many partitions.
//!
//! Each stage is timed warm, as the plain clients are: forward first ships WARMUP events (its
//! idempotent producer id, connections and topic metadata are in place after them; on tansu
//! that start-up alone takes 0.5-1 s), then the clock runs from the moment Redis appended the
//! first of n more events (the time in its stream id) until the group has read them all with
//! nothing pending. persist is timed by Postgres's own clock: `events.persisted_at` is the
//! start of the transaction that stored the row, so (rows of every transaction but the last)
//! / (last start - first start) is its rate, free of the polls and of the time to the first
//! message.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use redis::aio::MultiplexedConnection;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::fill;
use super::probe::{group, stopped, Probe, STREAM};
use super::results::{KafkaStages, PlainClients, Stage, Status};
use super::servers::Servers;
use super::{say, Config};

/// Events forward ships before its clock starts, as kafka_ceiling's WARMUP.
const WARMUP: u64 = 100;
/// The shipper's consumer group on the stream.
const GROUP: &str = "tally-shipper";
/// How often the stage pollers look.
const POLL: Duration = Duration::from_millis(5);

/// Both stages and the plain clients; `None` when the plain clients failed.
pub async fn run(s: &Servers, p: &mut Probe, cfg: &Config) -> Result<Option<KafkaStages>> {
    p.reset().await?;
    fill::backlog(s, p, WARMUP, fill::ACCOUNTS).await?;
    let topic = format!("bench.stages.{}", fastrand::u16(..));
    let forward = forward(s, p, cfg, &topic).await?;
    let persist = persist(s, p, cfg, &topic).await?;
    let message_bytes = p.mean_raw_len().await?.unwrap_or(300);
    let Some(plain) = plain_clients(s, cfg, message_bytes).await? else {
        return Ok(None);
    };
    say(&format!(
        "kafka stages: forward {:.3}s ({:?}), persist {:.3}s ({:?}); plain producer/consumer \
         {:.3}/{:.3} s, with headers {:.3}/{:.3} s",
        forward.seconds,
        forward.status,
        persist.seconds,
        persist.status,
        plain.produce_s,
        plain.consume_s,
        plain.produce_headers_s,
        plain.consume_headers_s
    ));
    Ok(Some(KafkaStages {
        n: cfg.knobs.stages_n,
        message_bytes,
        forward,
        persist,
        plain,
    }))
}

/// `forward`: warm-up, then the n events timed (see the module's comment).
async fn forward(s: &Servers, p: &mut Probe, cfg: &Config, topic: &str) -> Result<Stage> {
    let mut shipper = s.shipper_stage(cfg, "forward", topic)?;
    let limit = Duration::from_secs(cfg.knobs.kafka_timeout_s);
    let t0 = Instant::now();
    let mut status = Status::Ok;
    loop {
        let drained = p.group(Some(GROUP)).await.is_some_and(|g| g.drained());
        if drained && forwarded(s.metrics_port).await >= WARMUP {
            break;
        }
        if let Some(st) = stopped(&mut shipper, t0, limit) {
            status = st;
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let mut stage = Stage {
        events: 0,
        seconds: 0.0,
        status,
    };
    if status == Status::Ok {
        let n = cfg.knobs.stages_n;
        let target = p.entries_added().await + n;
        let base = p.stream_info().await.get("last-generated-id").cloned();
        let base: String = base
            .and_then(|v| redis::from_redis_value(v).ok())
            .unwrap_or("0-0".into());
        let timer = time_forward(p.redis.clone(), &base, target, limit);
        let (filled, timed) = tokio::join!(fill::one_stream(s, n), timer);
        match (filled, timed?) {
            (Err(e), _) => {
                say(&format!("forward stage fill: {e:#}"));
                stage.status = Status::FillFailed;
            }
            (Ok(()), None) => stage.status = Status::Timeout,
            (Ok(()), Some(seconds)) => {
                stage = Stage {
                    events: n,
                    seconds,
                    status,
                }
            }
        }
    }
    shipper.stop().await;
    Ok(stage)
}

/// Seconds from the first entry after `base` (the time in its stream id, when Redis appended
/// it) until a poll sees the group's entries-read at `target` with nothing pending; `None`
/// after `limit`. The clock thus starts when the first event exists, not when the harness
/// starts writing.
async fn time_forward(
    mut c: MultiplexedConnection,
    base: &str,
    target: u64,
    limit: Duration,
) -> Result<Option<f64>> {
    let end = Instant::now() + limit;
    let mut first: Option<f64> = None;
    while Instant::now() < end {
        if first.is_none() {
            let after = format!("({base}");
            let mut range = redis::cmd("XRANGE");
            range.arg(&[STREAM, &after, "+", "COUNT", "1"]);
            let entries: Vec<(String, redis::Value)> = range.query_async(&mut c).await?;
            first = entries
                .first()
                .and_then(|(id, _)| id.split('-').next()?.parse().ok());
            first = first.map(|ms: f64| ms / 1000.0);
        }
        let g = group(&mut c, Some(GROUP)).await.unwrap_or_default();
        let read = g.entries_read.unwrap_or(0).max(0) as u64;
        if let (Some(first), true) = (first, read >= target && g.pending == Some(0)) {
            let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64();
            return Ok(Some(now - first));
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(None)
}

/// `tally_events_forwarded_total` of the running shipper (0 while /metrics does not answer).
async fn forwarded(port: u16) -> u64 {
    let get = async {
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        c.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await?;
        let mut body = String::new();
        c.read_to_string(&mut body).await?;
        Ok::<_, std::io::Error>(body)
    };
    let body = tokio::time::timeout(Duration::from_secs(2), get).await;
    let body = body.ok().and_then(Result::ok).unwrap_or_default();
    body.lines()
        .find_map(|l| l.strip_prefix("tally_events_forwarded_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// `persist` alone until Postgres holds the warm-up and the n events.
async fn persist(s: &Servers, p: &mut Probe, cfg: &Config, topic: &str) -> Result<Stage> {
    let mut shipper = s.shipper_stage(cfg, "persist", topic)?;
    let target = cfg.knobs.stages_n + WARMUP;
    let every = Duration::from_millis(250);
    let t0 = Instant::now();
    let waited = p
        .wait_rows(
            &mut shipper,
            target,
            t0,
            Duration::from_secs(cfg.knobs.kafka_timeout_s),
            every,
        )
        .await?;
    shipper.stop().await;
    let (events, seconds): (i64, f64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE e.persisted_at < m.last), \
         round(extract(epoch FROM m.last - m.first), 3)::float8 \
         FROM events e, (SELECT min(persisted_at) AS first, max(persisted_at) AS last \
         FROM events) m GROUP BY m.first, m.last",
    )
    .fetch_optional(&p.pg)
    .await?
    .unwrap_or((0, 0.0));
    Ok(Stage {
        events: events.max(0) as u64,
        seconds,
        status: waited.status,
    })
}

/// kafka_ceiling on a new topic of 3 partitions; `None` (and why on stderr) when it fails.
async fn plain_clients(s: &Servers, cfg: &Config, size: u32) -> Result<Option<PlainClients>> {
    let tansu = s.tansu.as_ref().context("Kafka stages without tansu")?;
    let topic = format!("bench.ceiling.{}", fastrand::u16(..));
    let err_log = std::fs::File::create(s.log("ceiling.err"))?;
    let out = tokio::process::Command::new(&cfg.ceiling)
        .args([
            &tansu.brokers(),
            &topic,
            &cfg.knobs.stages_n.to_string(),
            &size.to_string(),
            "3",
        ])
        .stderr(err_log)
        .output()
        .await?;
    let secs: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    if !out.status.success() || secs.len() != 4 {
        let why = super::servers::tail(&s.log("ceiling.err"), 3);
        say(&format!("kafka ceiling failed: {why}"));
        return Ok(None);
    }
    Ok(Some(PlainClients {
        produce_s: secs[0],
        consume_s: secs[1],
        produce_headers_s: secs[2],
        consume_headers_s: secs[3],
    }))
}
