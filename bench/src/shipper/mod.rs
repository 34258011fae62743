//! `tally-bench shipper RESULTS.json`: the measuring half of `scripts/bench-shipper.sh`.
//!
//! Starts its own servers, measures tally-shipper against them stage by stage, and writes
//! every figure as typed JSON that `bench/report.py shipper` renders as
//! docs/bench-shipper.md. In the order a run goes:
//!
//! - `servers`: redis-server with the module, PostgreSQL, tansu, and each tally-shipper
//!   process: free 127.0.0.1 ports, temp dirs, stopped when their guards drop (at the end,
//!   on an error, and on SIGINT/SIGTERM, which drop the run).
//! - `probe`: what the stages read from Redis and Postgres, and the reset between runs.
//! - `fill`: a backlog of module events.
//! - `drain`: 1. drain rate, direct and through Kafka, with the server-side insert
//!   ceiling, and 2. Redis memory around each drain.
//! - `stages`: 1b. `forward` and `persist` alone vs plain Kafka clients.
//! - `fresh`: 3. sustained freshness under a fixed-rate load.
//! - `results`: the JSON written (the report's input).

mod capacity;
mod cpu;
mod drain;
mod fill;
mod fresh;
mod growth;
mod history;
mod mix;
mod pgstat;
mod probe;
mod results;
mod servers;
mod stages;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _, Result};
use sha2::Digest as _;
use tokio::signal::unix::{signal, SignalKind};

use probe::Probe;
use results::{Binary, CapacitySettings, LoadAverages, Results, Route, RunInfo, Settings};
use servers::{command_output, Servers};

/// The knobs (BENCH_SHIPPER_*, recorded in the results) and the binaries' paths;
/// scripts/bench-shipper.sh lists them.
pub struct Config {
    pub knobs: Settings,
    pub stage_log: String,
    pub keep: Option<PathBuf>,
    pub module: PathBuf,
    pub shipper: PathBuf,
    pub ceiling: PathBuf,
    pub pg_bin: PathBuf,
    /// `name=value` settings Postgres starts with (`-c`; BENCH_PG_CONF): the ones that need a
    /// restart, like shared_buffers, which GROWTH_PG_SET (a reload) cannot change.
    pub pg_conf: Vec<String>,
    pub tansu: PathBuf,
}

/// A variable's value, `default` when unset (set and empty stays empty: "skip").
fn env_text(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.into())
}

/// A space-separated list; `default` (a list too) when unset.
fn env_list<T: std::str::FromStr>(name: &str, default: &str) -> Result<Vec<T>> {
    env_text(name, default)
        .split_whitespace()
        .map(|w| {
            w.parse()
                .map_err(|_| anyhow::anyhow!("{name}: {w:?} is not a value"))
        })
        .collect()
}

/// A batch size: a number, or `default` (the shipper's own).
fn batch(w: &str) -> Result<Option<u32>> {
    match w {
        "default" => Ok(None),
        _ => Ok(Some(
            w.parse().with_context(|| format!("batch size {w:?}"))?,
        )),
    }
}

fn path(name: &str, default: &str) -> PathBuf {
    PathBuf::from(env_text(name, default))
}

impl Config {
    pub fn from_env() -> Result<Config> {
        use crate::env_or;
        let batches = env_text("BENCH_SHIPPER_KAFKA_BATCHES", "500");
        let knobs = Settings {
            n: env_or("BENCH_SHIPPER_N", 200_000),
            writers: env_list("BENCH_SHIPPER_WRITERS", "1 2 4")?,
            batch_size: batch(&env_text("BENCH_SHIPPER_BATCH", "default"))?,
            kafka_n: env_or("BENCH_SHIPPER_KAFKA_N", 5_000),
            kafka_batch_sizes: batches
                .split_whitespace()
                .map(batch)
                .collect::<Result<_>>()?,
            stages_n: env_or("BENCH_SHIPPER_STAGES_N", 5_000),
            tansu_storage: env_text("BENCH_SHIPPER_TANSU_STORAGE", "sqlite"),
            drain_timeout_s: env_or("BENCH_SHIPPER_DRAIN_TIMEOUT", 180),
            kafka_timeout_s: env_or("BENCH_SHIPPER_KAFKA_TIMEOUT", 120),
            fresh_rates: env_list("BENCH_SHIPPER_RATES", "1000 4000")?,
            fresh_seconds: env_or("BENCH_SHIPPER_SECONDS", 30.0),
            fresh_batch_size: batch(&env_text("BENCH_SHIPPER_FRESH_BATCH", "default"))?,
        };
        let home = env_text("HOME", "/root");
        Ok(Config {
            knobs,
            stage_log: env_text("BENCH_SHIPPER_STAGE_LOG", "info"),
            keep: std::env::var_os("BENCH_SHIPPER_KEEP").map(PathBuf::from),
            module: path("TALLY_MODULE", "target/release/libtally.so"),
            shipper: path("TALLY_SHIPPER", "target/release/tally-shipper"),
            ceiling: path(
                "TALLY_KAFKA_CEILING",
                "target/release/examples/kafka_ceiling",
            ),
            pg_bin: path("PG_BIN", "/usr/lib/postgresql/15/bin"),
            pg_conf: env_list("BENCH_PG_CONF", "")?,
            tansu: path("TANSU_BIN", &format!("{home}/.cargo/bin/tansu")),
        })
    }
}

/// Runs the benchmark into `out`; SIGINT or SIGTERM drop the run (every server stops).
pub async fn main(out: &Path) -> Result<ExitCode> {
    let mut cfg = checked_config()?;
    if !cfg.knobs.kafka_batch_sizes.is_empty() && !cfg.tansu.is_file() {
        say(&format!(
            "tansu not found at {}; skipping the Kafka runs",
            cfg.tansu.display()
        ));
        cfg.knobs.kafka_batch_sizes.clear();
    }
    guarded(out, run(&cfg)).await
}

/// `tally-bench capacity RESULTS.json` (capacity.rs).
pub async fn capacity_main(out: &Path) -> Result<ExitCode> {
    let cfg = checked_config()?;
    let k = capacity_settings()?;
    guarded(out, capacity::run(&cfg, &k)).await
}

/// `tally-bench growth RESULTS.json` (growth.rs).
pub async fn growth_main(out: &Path) -> Result<ExitCode> {
    let cfg = checked_config()?;
    let k = capacity_settings()?;
    guarded(out, growth::run(&cfg, &k)).await
}

/// The configuration, with the module, tally-shipper and PostgreSQL where it says.
fn checked_config() -> Result<Config> {
    let cfg = Config::from_env()?;
    for (what, p) in [("module", &cfg.module), ("tally-shipper", &cfg.shipper)] {
        if !p.is_file() {
            bail!(
                "{what} not found at {} (cargo build --release)",
                p.display()
            );
        }
    }
    if !cfg.pg_bin.join("postgres").is_file() {
        bail!("PostgreSQL binaries not in {}", cfg.pg_bin.display());
    }
    Ok(cfg)
}

/// CAPACITY_* and GROWTH_* (scripts/bench-capacity.sh lists them).
fn capacity_settings() -> Result<CapacitySettings> {
    use crate::env_or;
    let (path, rates, drain_n) = match env_text("CAPACITY_PATH", "direct").as_str() {
        "direct" => (
            Route::Direct,
            "2000 5000 8000 10000 12000 15000 20000",
            200_000,
        ),
        "kafka" => (Route::Kafka, "100 200 400 800", 5_000),
        other => anyhow::bail!("CAPACITY_PATH={other:?}: direct or kafka"),
    };
    Ok(CapacitySettings {
        path,
        rates: env_list("CAPACITY_RATES", rates)?,
        step_seconds: env_or("CAPACITY_STEP_SECONDS", 60.0),
        clients: env_or("CAPACITY_CLIENTS", 50),
        writers: std::env::var("CAPACITY_WRITERS")
            .ok()
            .and_then(|w| w.parse().ok()),
        slack_min: env_or("CAPACITY_SLACK_MIN", 1000),
        slack_seconds: env_or("CAPACITY_SLACK_SECONDS", 1.0),
        achieved_min: env_or("CAPACITY_ACHIEVED_MIN", 0.95),
        drain_n: env_or("CAPACITY_DRAIN_N", drain_n),
        stop_after_failed: env_or("CAPACITY_STOP_AFTER", 2),
        growth_sizes: env_list("GROWTH_SIZES", "1000000 10000000 20000000")?,
        growth_accounts: env_or("GROWTH_ACCOUNTS", 1_000_000),
        growth_backlog: env_or("GROWTH_BACKLOG", 200_000),
        growth_backlog_accounts: env_or("GROWTH_BACKLOG_ACCOUNTS", 1_000_000),
        growth_queries: env_or("GROWTH_QUERIES", 200),
        redis_accounts: env_list("GROWTH_REDIS_ACCOUNTS", "100000 1000000")?,
        pg_set: env_list("GROWTH_PG_SET", "")?,
        drain_timeout_s: env_or("CAPACITY_DRAIN_TIMEOUT", 300),
    })
}

/// Servers (tansu only with `kafka`), the database migrated, the probe, and the load average
/// now.
async fn start(cfg: &Config, kafka: bool) -> Result<(Servers, Probe, Vec<results::LoadAt>)> {
    let s = Servers::start(cfg, kafka).await?;
    s.create_database(cfg).await?;
    let p = Probe::connect(&s).await?;
    Ok((s, p, vec![capacity::at("start")]))
}

/// Runs `work` into `out`; SIGINT or SIGTERM drop the run (every server stops).
async fn guarded<T: serde::Serialize>(
    out: &Path,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<ExitCode> {
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let results = tokio::select! {
        r = work => r?,
        _ = int.recv() => return interrupted("SIGINT"),
        _ = term.recv() => return interrupted("SIGTERM"),
    };
    std::fs::write(out, serde_json::to_string_pretty(&results)?)
        .with_context(|| format!("writing {}", out.display()))?;
    say(&format!("wrote {}", out.display()));
    Ok(ExitCode::SUCCESS)
}

fn interrupted(signal: &str) -> Result<ExitCode> {
    say(&format!("{signal}: servers stopped, nothing written"));
    Ok(ExitCode::from(130))
}

/// Every stage in order, on one set of servers.
async fn run(cfg: &Config) -> Result<Results> {
    let started_unix = unix_now();
    let kafka = !cfg.knobs.kafka_batch_sizes.is_empty();
    let s = Servers::start(cfg, kafka).await?;
    s.create_database(cfg).await?;
    let mut p = Probe::connect(&s).await?;
    let load_start = loadavg();
    let mut drains = Vec::new();
    for &w in &cfg.knobs.writers {
        let d = drain::run(
            &s,
            &mut p,
            cfg,
            Route::Direct,
            cfg.knobs.batch_size,
            Some(w),
        )
        .await?;
        drains.push(d);
    }
    let after_direct = loadavg();
    let raw_len = drains
        .last()
        .and_then(|d| d.measured.as_ref())
        .map(|m| m.mean_raw_len);
    let ceiling =
        drain::ceiling(&p, cfg.knobs.n, raw_len.filter(|&l| l > 0).unwrap_or(300)).await?;
    for &b in &cfg.knobs.kafka_batch_sizes {
        drains.push(drain::run(&s, &mut p, cfg, Route::Kafka, b, None).await?);
    }
    let stages = match kafka && cfg.ceiling.is_file() {
        true => stages::run(&s, &mut p, cfg).await?,
        false => None,
    };
    let after_kafka = loadavg();
    let mut freshness = Vec::new();
    for &rate in &cfg.knobs.fresh_rates {
        freshness.push(fresh::run(&s, &mut p, cfg, rate).await?);
    }
    let load = LoadAverages {
        start: load_start,
        after_direct,
        after_kafka,
        end: loadavg(),
    };
    let run = run_info(cfg, &s, &p, started_unix, load).await?;
    let settings = cfg.knobs.clone();
    Ok(Results {
        run,
        settings,
        drains,
        ceiling,
        stages,
        freshness,
    })
}

pub async fn run_info<L>(
    cfg: &Config,
    s: &Servers,
    p: &Probe,
    started_unix: u64,
    load: L,
) -> Result<RunInfo<L>> {
    let started_with: Vec<String> = cfg
        .pg_conf
        .iter()
        .filter_map(|s| Some(s.split_once('=')?.0.to_lowercase()))
        .collect();
    let postgres_settings = sqlx::query_scalar(
        "SELECT string_agg(name || '=' || current_setting(name), ', ' ORDER BY name) \
         FROM pg_settings WHERE name IN ('fsync', 'synchronous_commit', 'shared_buffers', \
         'wal_level', 'max_wal_size') OR name = ANY($1)",
    )
    .bind(&started_with)
    .fetch_one(&p.pg)
    .await?;
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':'));
    let version = |bin: &Path| command_output(std::process::Command::new(bin).arg("--version"));
    Ok(RunInfo {
        started_unix,
        finished_unix: unix_now(),
        nproc: std::thread::available_parallelism().map_or(1, usize::from),
        cpu: cpu.map_or("?".into(), |(_, m)| m.trim().to_string()),
        load,
        redis_version: version(Path::new("redis-server")),
        postgres_version: s.pg.version(),
        postgres_settings,
        postgres_start_settings: cfg.pg_conf.clone(),
        tansu_version: s.tansu.as_ref().map(|_| version(&cfg.tansu)),
        module: binary(&cfg.module)?,
        shipper: binary(&cfg.shipper)?,
    })
}

fn binary(path: &Path) -> Result<Binary> {
    let bytes = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
    let hash = sha2::Sha256::digest(&bytes);
    let modified = std::fs::metadata(path)?.modified()?;
    Ok(Binary {
        path: path.display().to_string(),
        sha256: hash.iter().take(6).map(|b| format!("{b:02x}")).collect(),
        modified_unix: modified
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64),
    })
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The 1, 5 and 15 minute load averages.
pub fn loadavg() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A progress line on stderr.
pub fn say(msg: &str) {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    eprintln!(
        "[bench-shipper {:02}:{:02}:{:02} UTC] {msg}",
        t / 3600 % 24,
        t / 60 % 60,
        t % 60
    );
}
