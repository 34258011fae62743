//! Section 3: sustained freshness on the direct path. `tally-shipper run` running; one
//! connection sends `ASSET.INCR acct:<i % 10000> gold 1` at a fixed rate without pipelining
//! (send, wait for the reply) while another samples the stream every second; then the
//! freshness of every event: commit time of the transaction that stored it - its `ts_ms`.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use redis::io::tcp::TcpSettings;
use redis::IntoConnectionInfo as _;

use super::probe::{group, Probe, STREAM};
use super::results::{FreshRun, Freshness, Load, Sample};
use super::servers::{wait_port, RunArgs, Servers};
use super::{say, Config};

/// Seconds the stream is still sampled after the load stops, so the tail is visible.
const TAIL_S: f64 = 2.5;

pub async fn run(s: &Servers, p: &mut Probe, cfg: &Config, rate: f64) -> Result<FreshRun> {
    say(&format!(
        "freshness: {rate} ASSET.INCR/s for {}s, direct shipper batch={}",
        cfg.knobs.fresh_seconds,
        cfg.knobs
            .fresh_batch_size
            .map_or("default".into(), |b| b.to_string())
    ));
    p.reset().await?;
    let args = RunArgs {
        batch_size: cfg.knobs.fresh_batch_size,
        ..RunArgs::default()
    };
    let mut shipper = s.shipper_run(cfg, &format!("fresh-{rate}"), args)?;
    wait_port(s.metrics_port, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let load = load(s, rate, cfg.knobs.fresh_seconds).await?;
    let expected = load.sent - load.errors;
    let every = Duration::from_millis(500);
    p.wait_rows(
        &mut shipper,
        expected,
        Instant::now(),
        Duration::from_secs(60),
        every,
    )
    .await?;
    shipper.stop().await;
    let freshness = freshness(p).await?;
    say(&format!(
        "freshness {rate}/s: {} events, p50 {:?} p99 {:?} max {:?} mean {:?} ms",
        freshness.events, freshness.p50_ms, freshness.p99_ms, freshness.max_ms, freshness.mean_ms
    ));
    Ok(FreshRun {
        target_rate: rate,
        load,
        expected,
        freshness,
    })
}

/// The load on its own thread (a blocking connection paced by the OS's sleep, finer than
/// the runtime's millisecond timer) and the sampler on the runtime, until `TAIL_S` after
/// the load's end.
async fn load(s: &Servers, rate: f64, seconds: f64) -> Result<Load> {
    let info = s.redis.url().into_connection_info()?;
    let info = info.set_tcp_settings(TcpSettings::default().set_nodelay(true));
    let mut sampler = redis::Client::open(info.clone())?
        .get_multiplexed_async_connection()
        .await?;
    let sender = std::thread::spawn(move || send_at_rate(info, rate, seconds));
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(seconds + TAIL_S);
    let mut samples = Vec::new();
    for k in 1u32.. {
        let xlen: Option<i64> = redis::cmd("XLEN")
            .arg(STREAM)
            .query_async(&mut sampler)
            .await
            .ok();
        let g = group(&mut sampler, None).await.unwrap_or_default();
        let t = (t0.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
        samples.push(Sample {
            t,
            xlen,
            pending: g.pending,
            lag: g.lag,
        });
        // the next sample on a 1 s grid
        let next = t0 + Duration::from_secs(k.into());
        if next >= end {
            break;
        }
        tokio::time::sleep_until(next.into()).await;
    }
    let Ok(sent) = sender.join() else {
        bail!("the load thread panicked")
    };
    Ok(Load { samples, ..sent? })
}

/// `ASSET.INCR` at `rate`/s on a fixed schedule for `seconds`, one command at a time.
fn send_at_rate(info: redis::ConnectionInfo, rate: f64, seconds: f64) -> Result<Load> {
    let mut c = redis::Client::open(info)?.get_connection()?;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let (mut sent, mut errors, mut behind) = (0u64, 0u64, Duration::ZERO);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    let mut next = start;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        match next.checked_duration_since(now) {
            Some(wait) => std::thread::sleep(wait),
            None => behind = behind.max(now - next),
        }
        let account = format!("acct:{}", sent % 10_000);
        let reply = redis::cmd("ASSET.INCR")
            .arg(&[&account, "gold", "1"])
            .exec(&mut c);
        match reply {
            Err(e) if e.is_io_error() || e.is_connection_dropped() => return Err(e.into()),
            Err(_) => errors += 1,
            Ok(()) => {}
        }
        sent += 1;
        next += interval;
    }
    Ok(Load {
        seconds: start.elapsed().as_secs_f64(),
        sent,
        errors,
        max_behind_schedule_s: behind.as_secs_f64(),
        samples: Vec::new(),
    })
}

/// p50/p99/max/mean of (commit time of the row's transaction - ts_ms) over all events, ms.
async fn freshness(p: &Probe) -> Result<Freshness> {
    freshness_between(p, i64::MIN, i64::MAX).await
}

/// The same over the events with `from_ms <= ts_ms < to_ms`.
pub async fn freshness_between(p: &Probe, from_ms: i64, to_ms: i64) -> Result<Freshness> {
    let row: (i64, Option<f64>, Option<f64>, Option<f64>, Option<f64>) = sqlx::query_as(
        "SELECT count(*), \
         round(percentile_cont(0.5) WITHIN GROUP (ORDER BY f)::numeric, 1)::float8, \
         round(percentile_cont(0.99) WITHIN GROUP (ORDER BY f)::numeric, 1)::float8, \
         round(max(f)::numeric, 1)::float8, round(avg(f)::numeric, 1)::float8 \
         FROM (SELECT extract(epoch FROM pg_xact_commit_timestamp(xmin)) * 1000 - ts_ms AS f \
         FROM events WHERE ts_ms >= $1 AND ts_ms < $2) s",
    )
    .bind(from_ms)
    .bind(to_ms)
    .fetch_one(&p.pg)
    .await?;
    let (events, p50_ms, p99_ms, max_ms, mean_ms) = row;
    Ok(Freshness {
        events,
        p50_ms,
        p99_ms,
        max_ms,
        mean_ms,
    })
}
