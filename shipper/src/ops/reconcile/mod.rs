//! `tally-shipper reconcile`: compares Redis (the live state) with Postgres (the history's
//! derived tables), key by key, in bounded batches (HSCAN / SCAN and `= ANY($1)` queries),
//! so it never loads millions of keys at once.
//!
//! Categories: balances (key, field), coupons (issued count and holder set), usage (used in
//! the stored period and the quota), holds (open holds and held totals per key), sequences
//! (per-key seq). A key whose Postgres sequence
//! is behind Redis while events are still in flight is counted as "in flight", not as a
//! mismatch; with `--wait-ms` the command first waits for the pipeline to drain.
//!
//! In: every primary's keys (`scan`: sequence hashes, log streams) and the history's tables.
//! Out: a `report::Report` printed to stdout, and its verdict as the exit code.
//!
//! - `scan`: the Redis side, paged; `state`: balances, coupons and usage against the derived
//!   tables; `holds`: hold records against the `holds` table; `history`: seqs against the
//!   watermarks, keys Redis lost, forks and gaps.

mod history;
mod holds;
mod options;
mod report;
mod scan;
mod state;

use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use sqlx::PgPool;

use history::{check_history, check_keys_with_history, keys_behind};
use holds::check_holds;
use report::Report;
use state::{check_assets, check_coupons, check_usage, compare_sequences, LateCheck};

pub(crate) use options::Options;
use scan::SeqPager;
pub(crate) use scan::{scan_keys, stream_in_flight};

/// Compares Redis with the history. `nodes` holds one connection per primary: a standalone
/// server, or every primary of a cluster (each node's sequence hashes and streams are its own).
pub(crate) async fn run(
    nodes: &mut [MultiplexedConnection],
    pool: &PgPool,
    opt: &Options,
) -> anyhow::Result<Report> {
    let mut report = Report::default();
    wait_for_drain(nodes, pool, opt, &mut report).await?;
    let events_pending = !report.drained;
    // Redis -> Postgres, node by node, batch by batch.
    for conn in nodes.iter_mut() {
        let mut pager = SeqPager::new(conn, &opt.prefix).await?;
        let mut late = LateCheck::default();
        while let Some(page) = pager.next(conn, opt.batch).await? {
            let node = (&mut *conn, &mut late);
            let hashes =
                compare_sequences(node, pool, opt, &mut report, &page, events_pending).await?;
            check_assets(pool, &mut report, opt, &hashes.assets, &hashes.missing).await?;
            check_coupons(pool, &mut report, opt, &hashes.coupons).await?;
            check_usage(pool, &mut report, opt, &hashes.usages).await?;
            let seq_hash = pager.page_hash().to_string();
            check_holds(conn, pool, (&mut report, opt), &seq_hash, &hashes.compared).await?;
        }
    }
    check_history(pool, &mut report, opt, events_pending).await?;
    check_keys_with_history(nodes, pool, opt, &mut report).await?;
    Ok(report)
}

/// Waits (up to `wait_ms`) until nothing is pending in the streams and no key's history is
/// behind Redis; records whether that happened.
async fn wait_for_drain(
    nodes: &mut [MultiplexedConnection],
    pool: &PgPool,
    opt: &Options,
    report: &mut Report,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let (mut in_stream, mut behind) = (0, 0);
        for conn in nodes.iter_mut() {
            in_stream += stream_in_flight(conn, &opt.prefix, &opt.group).await?;
            behind += keys_behind(conn, pool, &opt.prefix, opt.batch).await?;
        }
        report.stream_in_flight = in_stream;
        if in_stream == 0 && behind == 0 {
            report.drained = true;
            break;
        }
        if started.elapsed() >= Duration::from_millis(opt.wait_ms) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    report.waited_ms = started.elapsed().as_millis() as u64;
    Ok(())
}

/// Connects to what `redis_urls` names (every primary of a cluster, or every standalone
/// server: each node's keys are compared where they are) and runs; returns the process exit
/// code (0 match, 1 mismatch, 2 only in flight).
pub(crate) async fn command(
    redis_urls: &[String],
    pool: &PgPool,
    opt: &Options,
) -> anyhow::Result<u8> {
    let mut nodes = super::nodes::Nodes::connect(redis_urls).await?;
    let report = run(&mut nodes.conns, pool, opt).await?;
    report.print();
    Ok(if !report.ok() {
        1
    } else if report.in_flight() > 0 {
        2
    } else {
        0
    })
}
