//! `tally-shipper restore`: rebuilds the Redis state from the Postgres history after Redis
//! lost its data: balances, per-key sequence numbers (so new events continue the sequence),
//! coupon campaigns (stock, issued, holders, issue counter), usage counters and open holds
//! (`restore_holds`). Writes plain
//! Redis hashes in pipelined batches (replicated and AOF'd by Redis like any write); it
//! appends no events, because the history already has them. Last, the op-id records still
//! inside `tally.op-ttl-ms` (op_records.rs), so a client's retry is not applied twice. On a
//! cluster, given any node, it writes each key, and its seq into its slot's sequence hash,
//! on the primary that serves it.
//!
//! It refuses to run before the pipeline has drained: an event still in the stream, in Kafka
//! or in `failed_events` is not in the derived tables, so the rebuilt state would lack it and
//! Redis would hand its seq numbers out again. `--force` runs anyway and prints what is lost.

use std::time::Instant;

use anyhow::{bail, Context as _};
use sqlx::PgPool;

use super::decimal::canonical;
use super::nodes::{Nodes, Pipes};
use super::reconcile::{scan_keys, stream_in_flight};
use super::{op_records, restore_as_of, restore_holds};
use crate::cli::KafkaOpts;
use crate::clock::now_ms;
use crate::sinks::postgres::failed;
use crate::sinks::{kafka, postgres};

pub(crate) struct Options {
    pub(crate) prefix: String,
    /// the shipper's consumer group (stream entries it has not acknowledged are in flight)
    pub(crate) group: String,
    /// check the topic against the positions in kafka_offsets
    pub(crate) kafka: Option<KafkaOpts>,
    pub(crate) force: bool,
    pub(crate) batch: usize,
}

#[derive(Default, Debug)]
pub(crate) struct Restored {
    pub(crate) balance_keys: u64,
    pub(crate) balance_fields: u64,
    pub(crate) campaigns: u64,
    pub(crate) holders: u64,
    pub(crate) usage_keys: u64,
    pub(crate) sequences: u64,
    pub(crate) holds: restore_holds::HoldsRestored,
    pub(crate) op_ids: op_records::OpRecords,
}

impl Restored {
    /// What the restore wrote, for the operator (stdout).
    pub(crate) fn print(&self) {
        println!(
            "restored {} balance keys ({} fields), {} campaigns ({} holders), {} usage counters, {} sequences",
            self.balance_keys, self.balance_fields, self.campaigns, self.holders, self.usage_keys, self.sequences
        );
        println!(
            "restored {} open holds of {} keys (a deadline that passed while Redis was down is expired by the module's timer at once, with its event)",
            self.holds.open, self.holds.keys
        );
        if self.holds.past_due_count > 0 {
            println!(
                "{} of them had passed their deadline while Redis was down: the module expired {} (their *.expire events are in the stream for the shipper){}",
                self.holds.past_due_count,
                self.holds.past_due_count - self.holds.past_due_open,
                match self.holds.past_due_open {
                    0 => String::new(),
                    n => format!("; {n} not yet after 15 s: is the module loaded on every primary?"),
                }
            );
        }
        println!(
            "restored {} op-id records still inside tally.op-ttl-ms",
            self.op_ids.restored
        );
        if self.op_ids.without_record > 0 {
            println!(
                "not restored: {} op-ids inside the window whose events carry no record (written by an older module); a retry of one is applied again",
                self.op_ids.without_record
            );
        }
    }
}

/// What has not reached the derived tables yet; each entry is one sentence for the operator.
async fn not_drained(
    nodes: &mut Nodes,
    pool: &PgPool,
    opt: &Options,
) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stream = 0;
    for conn in nodes.conns.iter_mut() {
        stream += stream_in_flight(conn, &opt.prefix, &opt.group).await?;
    }
    if stream > 0 {
        out.push(format!(
            "{stream} stream entries not yet acknowledged by the shipper (group {})",
            opt.group
        ));
    }
    match &opt.kafka {
        Some(k) => {
            let stored = postgres::load_positions(pool, &k.topic)
                .await
                .context("reading kafka_offsets")?;
            let n = kafka::unpersisted(k, &stored).await?;
            if n > 0 {
                out.push(format!("{n} Kafka messages of topic {} not yet persisted (kafka_offsets behind the topic's end)", k.topic));
            }
        }
        None => {
            let topics: Vec<String> =
                sqlx::query_scalar("SELECT DISTINCT topic FROM kafka_offsets ORDER BY 1")
                    .fetch_all(pool)
                    .await?;
            if !topics.is_empty() {
                out.push(format!(
                    "unchecked: the history came through Kafka (topics {}); pass --kafka-brokers so restore can check that every message is persisted",
                    topics.join(", ")
                ));
            }
        }
    }
    out.extend(unresolved_failed(pool).await?);
    let behind: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT data_key, contiguous_seq, last_seq FROM key_seqs WHERE last_seq > contiguous_seq ORDER BY data_key",
    )
    .fetch_all(pool)
    .await?;
    if !behind.is_empty() {
        let shown: Vec<String> = behind
            .iter()
            .take(5)
            .map(|(k, c, l)| format!("{k} (seqs {}..{} missing or not applied)", c + 1, l))
            .collect();
        out.push(format!(
            "{} keys whose history has missing seqs, e.g. {}",
            behind.len(),
            shown.join(", ")
        ));
    }
    Ok(out)
}

/// Every data key the history knows, in pages (keyset pagination on key_seqs).
async fn history_keys(
    pool: &PgPool,
    after: &str,
    batch: usize,
) -> anyhow::Result<Vec<(String, i64)>> {
    Ok(sqlx::query_as(
        "SELECT data_key, last_seq FROM key_seqs WHERE data_key > $1 ORDER BY data_key LIMIT $2",
    )
    .bind(after)
    .bind(batch as i64)
    .fetch_all(pool)
    .await?)
}

/// Refuses to overwrite: any key with history that exists in Redis, or a sequence hash.
async fn existing_keys(
    nodes: &mut Nodes,
    pool: &PgPool,
    opt: &Options,
) -> anyhow::Result<Vec<String>> {
    let mut found = Vec::new();
    for conn in nodes.conns.iter_mut() {
        found.extend(scan_keys(conn, &format!("{}:seq*", opt.prefix), "hash").await?);
        found.extend(scan_keys(conn, &format!("{}:due*", opt.prefix), "zset").await?);
    }
    let mut after = String::new();
    loop {
        let page = history_keys(pool, &after, opt.batch).await?;
        let Some(last) = page.last() else { break };
        after = last.0.clone();
        // one pipelined EXISTS per node for the keys it serves
        for node in 0..nodes.conns.len() {
            let mine: Vec<&String> = page
                .iter()
                .map(|(k, _)| k)
                .filter(|k| nodes.node_of(k) == node)
                .collect();
            if mine.is_empty() {
                continue;
            }
            let mut pipe = redis::pipe();
            for k in &mine {
                pipe.cmd("EXISTS").arg(*k);
                pipe.cmd("EXISTS").arg(nodes.holds_hash(&opt.prefix, k));
            }
            let exists: Vec<i64> = pipe.query_async(&mut nodes.conns[node]).await?;
            for (k, e) in mine.into_iter().zip(exists.chunks(2)) {
                if e[0] > 0 {
                    found.push(k.clone());
                }
                if e[1] > 0 {
                    found.push(nodes.holds_hash(&opt.prefix, k));
                }
            }
        }
        if found.len() >= 10 {
            break;
        }
    }
    Ok(found)
}

/// The unresolved failed_events as a reason not to restore, naming the commands that handle
/// them. Dismissed rows never block.
async fn unresolved_failed(pool: &PgPool) -> anyhow::Result<Option<String>> {
    let n = failed::unresolved_count(pool).await?;
    Ok((n > 0).then(|| {
        format!(
            "{n} unresolved failed_events: list them with `tally-shipper failed list`; once their cause is \
             fixed `tally-shipper failed retry ID` (or --all) stores them, and `tally-shipper failed dismiss ID \
             --reason TEXT` sets aside an entry that is not a tally event"
        )
    }))
}

/// Refuses (or with --force, warns) while events are in flight. Dismissed failed_events are
/// counted apart: set aside by an operator, they are not part of the history.
async fn require_drained(nodes: &mut Nodes, pool: &PgPool, opt: &Options) -> anyhow::Result<()> {
    let dismissed = failed::dismissed_count(pool).await?;
    if dismissed > 0 {
        println!(
            "{dismissed} dismissed failed_events: set aside by an operator, not part of the history, so neither \
             restored nor blocking (tally-shipper failed list --all)"
        );
    }
    let pending = not_drained(nodes, pool, opt).await?;
    if !pending.is_empty() {
        if !opt.force {
            bail!(
                "refusing to restore: the pipeline has not drained, and these events would be missing from the restored \
                 state while Redis hands their seq numbers out again:\n  - {}\nLet the shipper drain (reconcile says \
                 'drained'), or pass --force to restore without them",
                pending.join("\n  - ")
            );
        }
        eprintln!(
            "restore --force: the restored state will NOT include:\n  - {}",
            pending.join("\n  - ")
        );
    }
    Ok(())
}

pub(crate) async fn run(
    nodes: &mut Nodes,
    pool: &PgPool,
    opt: &Options,
) -> anyhow::Result<Restored> {
    refuse_several_servers(nodes)?;
    require_drained(nodes, pool, opt).await?;
    let existing = existing_keys(nodes, pool, opt).await?;
    if !existing.is_empty() && !opt.force {
        bail!(
            "refusing to overwrite existing Redis keys (e.g. {}); pass --force to replace them with the history's state",
            existing.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
        );
    }
    if opt.force {
        clear_due(nodes, &opt.prefix).await?;
    }
    let started = Instant::now();
    let mut done = Restored::default();

    // Keys are restored in pages of the history's key list; each page is one pipeline.
    let mut after = String::new();
    loop {
        let page = history_keys(pool, &after, opt.batch).await?;
        let Some(last) = page.last() else { break };
        after = last.0.clone();
        let keys: Vec<String> = page.iter().map(|(k, _)| k.clone()).collect();
        let mut pipes = nodes.pipes();
        if opt.force {
            for k in &keys {
                let holds = nodes.holds_hash(&opt.prefix, k);
                pipes.on(nodes, k).cmd("DEL").arg(k).arg(holds).ignore();
            }
        }
        add_balances(&mut pipes, nodes, pool, &keys, &mut done).await?;
        add_campaigns(&mut pipes, nodes, pool, &keys, &mut done).await?;
        add_usage(&mut pipes, nodes, pool, &keys, &mut done).await?;
        for (k, seq) in &page {
            pipes
                .on(nodes, k)
                .cmd("HSET")
                .arg(nodes.seq_hash(&opt.prefix, k))
                .arg(k)
                .arg(seq)
                .ignore();
            done.sequences += 1;
        }
        // after the seqs: the module's timer may expire a restored hold as soon as its due
        // member is written, and its event must continue the key's sequence
        let page_keys = (opt.prefix.as_str(), keys.as_slice());
        restore_holds::add_holds(&mut pipes, nodes, pool, page_keys, &mut done.holds).await?;
        pipes
            .send(nodes)
            .await
            .context("writing a restore batch to redis")?;
        println!(
            "restore: {} keys so far ({} balance fields, {} campaigns, {} usage counters) in {} ms",
            done.sequences,
            done.balance_fields,
            done.campaigns,
            done.usage_keys,
            started.elapsed().as_millis()
        );
    }
    done.op_ids = op_records::restore(nodes, pool, &opt.prefix, now_ms(), opt.batch).await?;
    let past_due = std::mem::take(&mut done.holds.past_due);
    done.holds.past_due_count = past_due.len() as u64;
    done.holds.past_due_open =
        restore_holds::wait_expired(nodes, &opt.prefix, &past_due).await? as u64;
    Ok(done)
}

/// `--force`: the due sets go (the open holds' members are written again with their keys),
/// so no member is left for a hold the history does not have open.
async fn clear_due(nodes: &mut Nodes, prefix: &str) -> anyhow::Result<()> {
    for conn in nodes.conns.iter_mut() {
        for due in scan_keys(conn, &format!("{prefix}:due*"), "zset").await? {
            redis::cmd("DEL")
                .arg(&due)
                .query_async::<()>(&mut *conn)
                .await?;
        }
    }
    Ok(())
}

/// A coupon campaign as the history holds it, and the highest issue number it handed out.
#[derive(sqlx::FromRow)]
struct CampaignRow {
    campaign: String,
    total: i64,
    issued: i64,
    peruser: i64,
    start_ms: i64,
    end_ms: i64,
    last_issue: i64,
}

/// The issue numbers a user holds in a campaign, ascending.
#[derive(sqlx::FromRow)]
struct HolderRow {
    campaign: String,
    user_id: String,
    issues: Vec<i64>,
}

/// A usage counter as of its highest seq (amounts as decimal text).
#[derive(sqlx::FromRow)]
struct UsageRow {
    usage_key: String,
    period: String,
    period_id: String,
    used: String,
    quota: String,
}

/// The balances of `keys`, one HSET per field.
async fn add_balances(
    pipes: &mut Pipes,
    nodes: &Nodes,
    pool: &PgPool,
    keys: &[String],
    done: &mut Restored,
) -> anyhow::Result<()> {
    let balances: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT data_key, field, balance::text FROM balances WHERE data_key = ANY($1) ORDER BY data_key, field",
    ).bind(keys).fetch_all(pool).await?;
    let mut last_key = None;
    for (k, f, b) in &balances {
        if last_key != Some(k) {
            done.balance_keys += 1;
            last_key = Some(k);
        }
        pipes
            .on(nodes, k)
            .cmd("HSET")
            .arg(k)
            .arg(f)
            .arg(canonical(b))
            .ignore();
        done.balance_fields += 1;
    }
    Ok(())
}

/// The campaigns among `keys`: stock, issued, issue counter, window, and every holder.
async fn add_campaigns(
    pipes: &mut Pipes,
    nodes: &Nodes,
    pool: &PgPool,
    keys: &[String],
    done: &mut Restored,
) -> anyhow::Result<()> {
    let campaigns: Vec<CampaignRow> = sqlx::query_as(
        "SELECT c.campaign, c.total, c.issued, c.peruser, c.start_ms, c.end_ms,
                GREATEST(COALESCE((SELECT max(i.issue) FROM coupon_issues i WHERE i.campaign = c.campaign), 0),
                         COALESCE((SELECT max(h.hold_id) FROM holds h
                                   WHERE h.data_key = c.campaign AND h.kind = 'coupon'), 0)) AS last_issue
         FROM coupon_campaigns c WHERE c.campaign = ANY($1)",
    ).bind(keys).fetch_all(pool).await?;
    for c in &campaigns {
        pipes
            .on(nodes, &c.campaign)
            .cmd("HSET")
            .arg(&c.campaign)
            .arg("kind")
            .arg("coupon")
            .arg("total")
            .arg(c.total)
            .arg("issued")
            .arg(c.issued)
            .arg("last_issue")
            .arg(c.last_issue)
            .arg("peruser")
            .arg(c.peruser)
            .arg("start")
            .arg(c.start_ms)
            .arg("end")
            .arg(c.end_ms)
            .ignore();
        done.campaigns += 1;
    }
    // The module's layout: `c:<user>` = how many, `h:<k>:<user>` = the k-th in claim order
    // (ascending issue numbers: a claim takes the next number, a release gives back the newest).
    let holders: Vec<HolderRow> = sqlx::query_as(
        "SELECT campaign, user_id, array_agg(issue ORDER BY issue) AS issues
         FROM coupon_issues WHERE campaign = ANY($1) AND NOT released AND user_id IS NOT NULL
         GROUP BY campaign, user_id",
    )
    .bind(keys)
    .fetch_all(pool)
    .await?;
    for HolderRow {
        campaign: c,
        user_id: u,
        issues,
    } in &holders
    {
        let hset = pipes
            .on(nodes, c)
            .cmd("HSET")
            .arg(c)
            .arg(format!("c:{u}"))
            .arg(issues.len());
        for (k, issue) in issues.iter().enumerate() {
            hset.arg(format!("h:{}:{u}", k + 1)).arg(issue);
        }
        hset.ignore();
        done.holders += 1;
    }
    Ok(())
}

/// The usage counters among `keys`, as of their highest seq.
async fn add_usage(
    pipes: &mut Pipes,
    nodes: &Nodes,
    pool: &PgPool,
    keys: &[String],
    done: &mut Restored,
) -> anyhow::Result<()> {
    let usage: Vec<UsageRow> = sqlx::query_as(
        "SELECT DISTINCT ON (usage_key) usage_key, period, period_id, used::text AS used, quota::text AS quota
         FROM usage_totals WHERE usage_key = ANY($1) ORDER BY usage_key, seq DESC",
    )
    .bind(keys)
    .fetch_all(pool)
    .await?;
    for u in &usage {
        pipes
            .on(nodes, &u.usage_key)
            .cmd("HSET")
            .arg(&u.usage_key)
            .arg("kind")
            .arg("usage")
            .arg("limit")
            .arg(canonical(&u.quota))
            .arg("period")
            .arg(&u.period)
            .arg("period_id")
            .arg(&u.period_id)
            .arg("used")
            .arg(canonical(&u.used))
            .ignore();
        done.usage_keys += 1;
    }
    Ok(())
}

pub(crate) async fn command(
    redis_urls: &[String],
    pool: &PgPool,
    opt: &Options,
) -> anyhow::Result<Restored> {
    let mut nodes = Nodes::connect(redis_urls).await?;
    refuse_several_servers(&nodes)?;
    run(&mut nodes, pool, opt).await
}

/// A rebuild writes every key to the node that serves it: a cluster's slot owner, or the one
/// server. Several standalone servers hold keys where the clients' sharding put them, which
/// neither Redis (it lost its data) nor the history records: refused, rather than every key
/// written to the first server.
fn refuse_several_servers(nodes: &Nodes) -> anyhow::Result<()> {
    if nodes.several_servers() {
        bail!(
            "refusing to restore: --redis-url lists {} standalone servers, and which of them a key belongs to is \
             decided by the clients' sharding, which the history does not record. restore rebuilds one standalone \
             server or a cluster (each key on the primary serving its slot); `reconcile` and `restore --as-of` \
             work on several servers",
            nodes.conns.len()
        );
    }
    Ok(())
}

/// `restore --as-of`: refused before the end of the retired history; the same drain rule,
/// then the rollback through the module.
pub(crate) async fn as_of_command(
    redis_urls: &[String],
    pool: &PgPool,
    opt: &Options,
    as_of_ms: i64,
) -> anyhow::Result<restore_as_of::RolledBack> {
    let kept_from = restore_as_of::kept_from(pool, as_of_ms).await?;
    let mut nodes = Nodes::connect(redis_urls).await?;
    require_drained(&mut nodes, pool, opt).await?;
    restore_as_of::run(&mut nodes, pool, &opt.prefix, (as_of_ms, kept_from)).await
}
