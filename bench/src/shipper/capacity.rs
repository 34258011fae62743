//! `tally-bench capacity RESULTS.json`: the mixed workload (mix.rs) at stepped fixed rates
//! on the direct path or through Kafka (CAPACITY_PATH), one `tally-shipper run` throughout;
//! per step the achieved and shipped rates, the backlog at its start and end, CPU seconds and
//! (once everything drained) the freshness of its events; then the drain ceiling of the same
//! path on the same servers (drain.rs).

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use redis::aio::MultiplexedConnection;

use super::probe::{group, Probe, STREAM};
use super::results::{CapacityResults, CapacitySettings, LoadAt, Route, Sample, Step, StoredTotal};
use super::servers::{wait_port, Proc, RunArgs, Servers};
use super::{cpu, drain, fresh, loadavg, mix, pgstat, say, unix_now, Config};
use crate::resp::Conn;

/// Unix time in ms.
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Group lag + pending (XLEN when the group has no lag figure); 0 without the group.
pub async fn backlog(c: &mut MultiplexedConnection) -> i64 {
    let g = group(c, None).await.unwrap_or_default();
    match g.lag {
        Some(lag) => lag + g.pending.unwrap_or(0),
        None => redis::cmd("XLEN")
            .arg(STREAM)
            .query_async(c)
            .await
            .unwrap_or(0),
    }
}

/// The backlog of `path`. Direct: the group's (`backlog`). Through Kafka the group holds only
/// what `forward` has not produced yet, so: events appended to the stream - rows of `events`
/// (everything not yet in Postgres, wherever it is).
async fn backlog_of(p: &mut Probe, path: Route) -> i64 {
    match path {
        Route::Direct => backlog(&mut p.redis).await,
        Route::Kafka => {
            let added = p.entries_added().await;
            let stored = p.events().await.unwrap_or(0);
            i64::try_from(added.saturating_sub(stored)).unwrap_or(i64::MAX)
        }
    }
}

/// Polls the backlog of `path` (every 100 ms; through Kafka every 250 ms, a count of
/// `events` each time) until it is at most `to` or `limit` has passed; true when it got there.
pub async fn wait_backlog(p: &mut Probe, path: Route, to: i64, limit: Duration) -> bool {
    let every = match path {
        Route::Direct => Duration::from_millis(100),
        Route::Kafka => Duration::from_millis(250),
    };
    let end = Instant::now() + limit;
    loop {
        if backlog_of(p, path).await <= to {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(every).await;
    }
}

/// The load's `n` connections (see `mix`).
async fn connections(s: &Servers, n: u32) -> Result<Vec<Conn>> {
    let mut conns = Vec::new();
    for _ in 0..n {
        conns.push(Conn::connect(s.redis.port).await?);
    }
    Ok(conns)
}

impl CapacitySettings {
    /// A step's allowed backlog growth.
    pub fn slack(&self, rate: f64) -> i64 {
        (self.slack_seconds * rate).max(self.slack_min as f64) as i64
    }

    pub fn bounded(&self, step: &Step) -> bool {
        step.backlog_end <= step.backlog_start + self.slack(step.target_rate)
    }

    /// The target rate achieved (within `achieved_min`), a bounded backlog and p99 freshness
    /// under 1 s. That every event was stored is judged over the whole run (`StoredTotal`):
    /// a step counts its events by `ts` within its window, which a few at its edges can miss.
    pub fn passed(&self, step: &Step) -> bool {
        let achieved = (step.sent - step.errors) as f64 / step.seconds;
        achieved >= self.achieved_min * step.target_rate
            && self.bounded(step)
            && step.freshness.p99_ms.is_some_and(|p| p < 1000.0)
    }
}

/// The whole run on one set of servers.
pub async fn run(cfg: &Config, k: &CapacitySettings) -> Result<CapacityResults> {
    let started_unix = unix_now();
    let kafka = k.path == Route::Kafka;
    if kafka && !cfg.tansu.is_file() {
        anyhow::bail!(
            "CAPACITY_PATH=kafka: no tansu at {} (scripts/setup.sh builds it; or TANSU_BIN)",
            cfg.tansu.display()
        );
    }
    let (s, mut p, mut loads) = super::start(cfg, kafka).await?;
    let setup_events = mix::setup(&mut p.redis).await?;
    let mut conns = connections(&s, k.clients).await?;
    let topic = format!("bench.capacity.{}", fastrand::u16(..));
    let args = RunArgs {
        writers: k.writers,
        topic: kafka.then_some(topic.as_str()),
        ..RunArgs::default()
    };
    let mut shipper = s.shipper_run(cfg, "capacity", args)?;
    wait_port(s.metrics_port, Duration::from_secs(10)).await;
    let limit = Duration::from_secs(k.drain_timeout_s);
    if !wait_backlog(&mut p, k.path, 0, limit).await {
        say("capacity: the setup's events did not drain in time");
    }
    let steps = steps(&s, &mut p, &mut conns, &shipper, k).await?;
    loads.push(at("after the steps"));
    let drained = wait_backlog(&mut p, k.path, 0, limit).await;
    say(&format!("capacity: final drain complete: {drained}"));
    let stored = whole_run(&p, &mut shipper, setup_events, &steps, limit).await?;
    let mut steps = measured(&p, steps).await?;
    shipper.stop().await;
    for st in &mut steps {
        st.bounded = k.bounded(st);
        st.passed = k.passed(st);
    }
    // no capacity at all unless every event of the run is in Postgres
    let whole = stored.stored == stored.expected && stored.failed_events == 0;
    let capacity = steps
        .iter()
        .filter(|st| st.passed && whole)
        .map(|st| st.target_rate)
        .reduce(f64::max);
    say(&format!("capacity: {capacity:?} commands/s"));
    let mut cfg_drain = Config::from_env()?;
    (cfg_drain.knobs.n, cfg_drain.knobs.kafka_n) = (k.drain_n, k.drain_n);
    cfg_drain.knobs.drain_timeout_s = k.drain_timeout_s;
    cfg_drain.knobs.kafka_timeout_s = k.drain_timeout_s;
    let drain = drain::run(&s, &mut p, &cfg_drain, k.path, None, k.writers).await?;
    loads.push(at("end"));
    let run = super::run_info(cfg, &s, &p, started_unix, loads).await?;
    Ok(CapacityResults {
        run,
        settings: k.clone(),
        setup_events,
        stored,
        steps,
        capacity,
        drain,
    })
}

/// Every event the run should have stored (the setup's and every successful command's),
/// waited for in `events` (the stream's backlog can read 0 before the last batch commits),
/// and the rows of failed_events.
async fn whole_run(
    p: &Probe,
    shipper: &mut Proc,
    setup_events: u64,
    steps: &[Step],
    limit: Duration,
) -> Result<StoredTotal> {
    let expected = setup_events + steps.iter().map(|st| st.sent - st.errors).sum::<u64>();
    let every = Duration::from_millis(200);
    let waited = p
        .wait_rows(shipper, expected, Instant::now(), limit, every)
        .await?;
    let failed_events: i64 = sqlx::query_scalar("SELECT count(*) FROM failed_events")
        .fetch_one(&p.pg)
        .await?;
    say(&format!(
        "capacity: {} of {expected} events stored, {failed_events} in failed_events",
        waited.rows
    ));
    Ok(StoredTotal {
        expected,
        stored: waited.rows,
        failed_events,
    })
}

pub fn at(what: &str) -> LoadAt {
    LoadAt {
        at: what.into(),
        loadavg: loadavg(),
    }
}

/// The steps in order, stopping after `stop_after_failed` failed steps in a row (judged on
/// the backlog here; freshness is measured once everything drained).
async fn steps(
    s: &Servers,
    p: &mut Probe,
    conns: &mut Vec<Conn>,
    shipper: &Proc,
    k: &CapacitySettings,
) -> Result<Vec<Step>> {
    let mut out = Vec::new();
    let mut failed = 0;
    for (i, &rate) in k.rates.iter().enumerate() {
        // start each step from a drained pipeline, as far as it gets within 30 s
        wait_backlog(p, k.path, k.slack_min as i64, Duration::from_secs(30)).await;
        let step = step(s, p, conns, shipper, k, i, rate).await?;
        say(&format!(
            "capacity step {rate}/s: sent {} ({} errors) in {:.1}s, backlog {} -> {}, cpu {:?}",
            step.sent,
            step.errors,
            step.seconds,
            step.backlog_start,
            step.backlog_end,
            [
                step.cpu.redis,
                step.cpu.shipper,
                step.cpu.postgres,
                step.cpu.bench
            ]
        ));
        failed = if k.bounded(&step) { 0 } else { failed + 1 };
        out.push(step);
        if failed >= k.stop_after_failed {
            say("capacity: stopping the steps (backlog unbounded)");
            break;
        }
    }
    Ok(out)
}

/// One step: the load, the stream sampled every second, CPU and backlog around it.
async fn step(
    s: &Servers,
    p: &mut Probe,
    conns: &mut Vec<Conn>,
    shipper: &Proc,
    k: &CapacitySettings,
    i: usize,
    rate: f64,
) -> Result<Step> {
    let backlog_start = backlog_of(p, k.path).await;
    let statements = pgstat::connect(&s.pg.url("postgres", "tally")).await;
    if let Some(pg) = &statements {
        pgstat::reset(pg).await;
    }
    let cpu0 = cpu::now(s, Some(shipper));
    let start_ms = unix_ms();
    let t0 = Instant::now();
    let load = mix::run(std::mem::take(conns), i, rate, k.step_seconds);
    let mut samples = Vec::new();
    for n in 1u32.. {
        let g = group(&mut p.redis, None).await.unwrap_or_default();
        samples.push(Sample {
            t: (t0.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
            xlen: p.xlen().await.ok().and_then(|x| i64::try_from(x).ok()),
            pending: g.pending,
            lag: g.lag,
        });
        if load.is_finished() {
            break;
        }
        let next = t0 + Duration::from_secs(n.into());
        tokio::time::sleep_until(next.into()).await;
    }
    let (done, back) = load.await.context("the load task")??;
    *conns = back;
    let seconds = t0.elapsed().as_secs_f64();
    let end_ms = unix_ms();
    let cpu = cpu::now(s, Some(shipper)) - cpu0;
    if let Some(pg) = &statements {
        pgstat::dump(pg, s.work.path(), &format!("step {rate}/s")).await;
    }
    if let Some(e) = &done.first_error {
        say(&format!("capacity step {rate}/s: first error: {e}"));
    }
    Ok(Step {
        target_rate: rate,
        seconds,
        sent: done.sent,
        errors: done.errors,
        by_type: done.by_type,
        max_behind_schedule_s: done.behind.as_secs_f64(),
        start_ms,
        end_ms,
        backlog_start,
        backlog_end: backlog_of(p, k.path).await,
        samples,
        shipped: 0,
        freshness: Default::default(),
        cpu,
        bounded: false,
        passed: false,
    })
}

/// Each step's freshness and shipped count, from Postgres once the run drained.
async fn measured(p: &Probe, mut steps: Vec<Step>) -> Result<Vec<Step>> {
    for st in &mut steps {
        st.freshness = fresh::freshness_between(p, st.start_ms, st.end_ms).await?;
        st.shipped = sqlx::query_scalar(
            "SELECT count(*) FROM events WHERE ts_ms >= $1 - 600000 AND \
             pg_xact_commit_timestamp(xmin) >= to_timestamp($1 / 1000.0) AND \
             pg_xact_commit_timestamp(xmin) < to_timestamp($2 / 1000.0)",
        )
        .bind(st.start_ms)
        .bind(st.end_ms)
        .fetch_one(&p.pg)
        .await?;
        say(&format!(
            "capacity step {}/s: shipped {}, freshness p50 {:?} p99 {:?} ms over {} events",
            st.target_rate,
            st.shipped,
            st.freshness.p50_ms,
            st.freshness.p99_ms,
            st.freshness.events
        ));
    }
    Ok(steps)
}
