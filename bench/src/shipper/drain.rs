//! Section 1 and 2: drain rate and Redis memory. A backlog of n events, then `tally-shipper
//! run` (direct, or through Kafka) timed from its start until Postgres holds n rows; and the
//! server-side ceiling the direct drains are compared with.

use std::time::{Duration, Instant};

use anyhow::Result;

use super::fill;
use super::probe::Probe;
use super::results::{Ceiling, DrainRun, Drained, Route, Status};
use super::servers::{RunArgs, Servers};
use super::{say, Config};

/// One drain of the route (`writers`: `--pg-writers`, direct runs).
pub async fn run(
    s: &Servers,
    p: &mut Probe,
    cfg: &Config,
    route: Route,
    batch_size: Option<u32>,
    writers: Option<u32>,
) -> Result<DrainRun> {
    let n = if route == Route::Kafka {
        cfg.knobs.kafka_n
    } else {
        cfg.knobs.n
    };
    let mut run = DrainRun {
        route,
        writers,
        batch_size,
        n,
        status: Status::Ok,
        measured: None,
    };
    let label = format!("{route:?} batch={} N={n}", batch_text(batch_size)).to_lowercase();
    say(&format!("drain {label}: fill"));
    p.reset().await?;
    let used_memory_empty = p.used_memory().await?;
    let fill_s = match fill::backlog(s, p, n, fill::ACCOUNTS).await {
        Ok(seconds) => seconds,
        Err(e) => {
            say(&format!("drain {label}: {e:#}"));
            run.status = Status::FillFailed;
            return Ok(run);
        }
    };
    say(&format!(
        "drain {label}: backlog filled in {fill_s:.2}s, shipping"
    ));
    let backlog = Drained {
        fill_s,
        used_memory_empty,
        used_memory_backlog: p.used_memory().await?,
        stream_memory_backlog: p.stream_memory().await?,
        ..Drained::default()
    };
    let (status, drained) = ship(s, p, cfg, &run, backlog).await?;
    let rate = drained.rows as f64 / drained.drain_s;
    say(&format!(
        "drain {label}: {} rows in {:.2}s = {rate:.0} ev/s ({status:?})",
        drained.rows, drained.drain_s
    ));
    run.status = status;
    run.measured = Some(drained);
    Ok(run)
}

fn batch_text(batch_size: Option<u32>) -> String {
    batch_size.map_or("default".into(), |b| b.to_string())
}

/// Starts the shipper on the backlog and times it until Postgres holds `run.n` rows; then
/// what is left in Redis. `drained` comes with the backlog's figures filled in.
async fn ship(
    s: &Servers,
    p: &mut Probe,
    cfg: &Config,
    run: &DrainRun,
    drained: Drained,
) -> Result<(Status, Drained)> {
    let batch = batch_text(run.batch_size);
    let n = run.n;
    let writers = run.writers.map_or("d".into(), |w| w.to_string());
    let name = format!("{:?}-{batch}-{n}-w{writers}", run.route).to_lowercase();
    let topic = format!("bench.{batch}.{n}.{}", fastrand::u16(..));
    let kafka = run.route == Route::Kafka;
    let args = RunArgs {
        batch_size: run.batch_size,
        writers: run.writers,
        topic: kafka.then_some(topic.as_str()),
    };
    let limit = if kafka {
        Duration::from_secs(cfg.knobs.kafka_timeout_s)
    } else {
        Duration::from_secs(cfg.knobs.drain_timeout_s)
    };
    let t0 = Instant::now();
    let mut shipper = s.shipper_run(cfg, &name, args)?;
    let waited = p
        .wait_rows(&mut shipper, n, t0, limit, Duration::from_millis(500))
        .await?;
    let drain_s = t0.elapsed().as_secs_f64();
    // XTRIM MINID runs every second: let it catch up, then see what is left of the stream.
    for _ in 0..20 {
        if p.xlen().await? < 1000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let stream_memory_after = p.stream_memory().await?;
    let used_memory_after = p.used_memory().await?;
    let xlen_after = p.xlen().await?;
    shipper.stop().await;
    let log = std::fs::read_to_string(s.log(&format!("shipper-{name}.log"))).unwrap_or_default();
    let count = |needle: &str| log.lines().filter(|l| l.contains(needle)).count() as u64;
    let drained = Drained {
        used_memory_after,
        stream_memory_after,
        xlen_after,
        drain_s,
        rows: waited.rows,
        first_row_s: waited.first_row_s,
        warn_lines: count(" WARN "),
        session_timeouts: count("session timed out"),
        mean_raw_len: p.mean_raw_len().await?.unwrap_or(0),
        ..drained
    };
    Ok((waited.status, drained))
}

/// `rows` rows of `raw_len` bytes with a time-ordered uuid primary key (as the module's
/// UUIDv7 ids), inserted by one INSERT ... SELECT generate_series statement on the same
/// server in the same run.
pub async fn ceiling(p: &Probe, rows: u64, raw_len: u32) -> Result<Ceiling> {
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS bench_ceiling; CREATE TABLE bench_ceiling (event_id uuid \
         PRIMARY KEY, type text NOT NULL, ts_ms bigint NOT NULL, raw text NOT NULL)",
    )
    .execute(&p.pg)
    .await?;
    let t0 = Instant::now();
    sqlx::query(
        "INSERT INTO bench_ceiling SELECT ('00000000-0000-7000-8000-' || lpad(to_hex(i), 12, \
         '0'))::uuid, 'asset.incr', i, repeat('x', $2) FROM generate_series(1, $1) AS i",
    )
    .bind(i64::try_from(rows)?)
    .bind(i32::try_from(raw_len)?)
    .execute(&p.pg)
    .await?;
    let seconds = t0.elapsed().as_secs_f64();
    sqlx::raw_sql("DROP TABLE bench_ceiling")
        .execute(&p.pg)
        .await?;
    say(&format!(
        "ceiling: {rows} rows of {raw_len} bytes in one INSERT ... SELECT: {:.0} rows/s",
        rows as f64 / seconds
    ));
    Ok(Ceiling {
        rows,
        raw_len,
        seconds,
    })
}
