//! A backlog of module events: `ASSET.INCR acct:<random of 10,000> gold 1`, each appending one
//! event to tally:log. Both fills check that the stream got exactly the events asked for.

use std::time::Instant;

use anyhow::{bail, Result};
use tokio::process::Command;

use super::probe::{entries_added, Probe};
use super::servers::{tail, Servers};
use crate::key;

/// Accounts the events are spread over (`backlog`'s usual `accounts`).
pub const ACCOUNTS: u64 = 10_000;

/// redis-benchmark, 50 connections 16 deep, over `accounts` accounts (`acct:` and 12
/// digits); returns the seconds it took. redis-benchmark
/// overshoots `-n` when it is not a multiple of the pipeline depth, so the multiple of 16
/// goes pipelined and the remainder one command at a time.
pub async fn backlog(s: &Servers, p: &mut Probe, n: u64, accounts: u64) -> Result<f64> {
    let before = p.entries_added().await;
    let log = s.log("fill.out");
    let out = std::fs::File::create(&log)?;
    let t0 = Instant::now();
    for (count, depth, clients) in [(n / 16 * 16, "16", "50"), (n % 16, "1", "1")] {
        if count == 0 {
            continue;
        }
        let status = Command::new("redis-benchmark")
            .args(["-p", &s.redis.port.to_string(), "-P", depth, "-c", clients])
            .args(["-n", &count.to_string(), "-r", &accounts.to_string(), "-q"])
            .args(["ASSET.INCR", "acct:__rand_int__", "gold", "1"])
            .stdout(out.try_clone()?)
            .stderr(out.try_clone()?)
            .status()
            .await?;
        if !status.success() {
            bail!("redis-benchmark failed:\n{}", tail(&log, 5));
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    let added = p.entries_added().await - before;
    if added != n {
        bail!(
            "fill: {added} entries appended, not {n}:\n{}",
            tail(&log, 5)
        );
    }
    Ok(seconds)
}

/// The same events on one pipelined connection, commands built beforehand: for the timed
/// forward stage, where a second redis-benchmark process for the remainder would append
/// the last events after a process start the stage would be timed for.
pub async fn one_stream(s: &Servers, n: u64) -> Result<()> {
    let mut c = redis::Client::open(s.redis.url())?
        .get_multiplexed_async_connection()
        .await?;
    let before = entries_added(&mut c).await;
    let mut pipe = redis::pipe();
    for _ in 0..n {
        let account = key("acct:", fastrand::u64(..ACCOUNTS));
        pipe.cmd("ASSET.INCR")
            .arg(account)
            .arg("gold")
            .arg(1)
            .ignore();
    }
    pipe.exec_async(&mut c).await?;
    let appended = entries_added(&mut c).await - before;
    if appended != n {
        bail!("fill: {appended} entries appended, not {n}");
    }
    Ok(())
}
