//! tally-bench: the measuring halves of `scripts/bench.sh` and `scripts/bench-shipper.sh`.
//!
//! `tally-bench suite`   runs every workload against the redis-server the script started
//!                       (redis-benchmark where it fits, the built-in Rust load generator for
//!                       MULTI/EXEC and the WATCH retry loop), then the memory test, and
//!                       writes one JSON file with every figure (suite.rs, workloads.rs).
//! `tally-bench profile WORKLOAD` runs a fixed, small, pipelined workload on one connection
//!                       (used while redis-server runs under callgrind; profile.rs).
//! `tally-bench shipper RESULTS.json` starts its own redis-server, PostgreSQL and tansu,
//!                       measures tally-shipper against them and writes the figures as
//!                       typed JSON (shipper/).
//! `tally-bench capacity RESULTS.json` the mixed workload at stepped rates on the direct
//!                       path, and the drain ceiling (shipper/capacity.rs).
//! `tally-bench growth RESULTS.json` drain rate and statement latency as a synthetic
//!                       history grows (shipper/growth.rs).
//!
//! Configuration comes from environment variables (`Cfg::from_env`, `shipper::Config`).

mod pairs;
mod profile;
mod resp;
mod shipper;
mod suite;
mod workloads;

use std::process::ExitCode;

use anyhow::{anyhow, bail, Context as _, Result};

// ---------------------------------------------------------------- configuration

#[derive(Clone, Debug)]
struct Cfg {
    port: u16,
    clients: usize,
    pipeline: usize,
    keys: u64,
    users: u64,
    seconds: f64,
    probe_requests: u64,
    min_requests: u64,
    max_requests: u64,
    mem_accounts: u64,
    out: String,
    profile_ops: u64,
    only: Option<Vec<String>>,
}

impl Cfg {
    fn from_env() -> Result<Cfg> {
        Ok(Cfg {
            port: std::env::var("BENCH_PORT")
                .context("BENCH_PORT is not set")?
                .parse()?,
            clients: env_or("BENCH_CLIENTS", 50),
            pipeline: env_or("BENCH_PIPELINE", 16),
            keys: env_or("BENCH_KEYS", 10_000),
            users: env_or("BENCH_USERS", 100_000_000),
            seconds: env_or("BENCH_SECONDS", 3.0),
            probe_requests: env_or("BENCH_PROBE_REQUESTS", 20_000),
            min_requests: env_or("BENCH_MIN_REQUESTS", 10_000),
            max_requests: env_or("BENCH_MAX_REQUESTS", 5_000_000),
            mem_accounts: env_or("BENCH_MEM_ACCOUNTS", 100_000),
            out: std::env::var("BENCH_OUT").unwrap_or_else(|_| "bench-results.json".into()),
            profile_ops: env_or("BENCH_PROFILE_OPS", 5_000),
            only: std::env::var("BENCH_ONLY")
                .ok()
                .filter(|s| !s.is_empty())
                .map(|s| s.split(',').map(str::to_string).collect()),
        })
    }
}

fn key(prefix: &str, n: u64) -> String {
    // Same shape as redis-benchmark's __rand_int__ expansion (12 digits).
    format!("{prefix}{n:012}")
}

/// `name` parsed, or `default` when it is unset or does not parse.
fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const USAGE: &str = "usage: tally-bench suite | profile-setup | profile WORKLOAD \
                     | shipper RESULTS.json | capacity RESULTS.json | growth RESULTS.json \
                     (configured by BENCH_*, CAPACITY_* and GROWTH_* variables)";

fn main() -> Result<ExitCode> {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    match args.get(1).map(String::as_str) {
        Some("suite") => local.block_on(&rt, suite::suite(Cfg::from_env()?))?,
        Some("profile-setup") => local.block_on(&rt, profile::profile_setup(Cfg::from_env()?))?,
        Some("profile") => {
            let id = args.get(2).ok_or_else(|| anyhow!("profile WORKLOAD"))?;
            local.block_on(&rt, profile::profile(Cfg::from_env()?, id))?;
        }
        Some("shipper") => {
            let out = args.get(2).ok_or_else(|| anyhow!("shipper RESULTS.json"))?;
            return local.block_on(&rt, shipper::main(out.as_ref()));
        }
        Some("capacity") => {
            let out = args
                .get(2)
                .ok_or_else(|| anyhow!("capacity RESULTS.json"))?;
            return local.block_on(&rt, shipper::capacity_main(out.as_ref()));
        }
        Some("growth") => {
            let out = args.get(2).ok_or_else(|| anyhow!("growth RESULTS.json"))?;
            return local.block_on(&rt, shipper::growth_main(out.as_ref()));
        }
        _ => bail!(USAGE),
    }
    Ok(ExitCode::SUCCESS)
}
