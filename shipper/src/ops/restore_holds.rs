//! `restore`, the holds (docs/holds.md): each key's open holds written back as the module
//! keeps them, in the hash `<prefix>:holds[:{tag}]:<len>:<key>` (`n`, `open`, `d`, `o:<id>`,
//! `t:<subject>`; no tombstones) and one member per open hold in `<prefix>:due[:{tag}]`
//! scored with its deadline.
//!
//! A hold whose deadline passed while Redis was down is written back open with that past
//! deadline: the module's timer, which runs as soon as the module is loaded, expires it at
//! once with its `*.expire` event, as it would have without the outage. `n` is the highest
//! hold id the history has seen for the key (asset and usage; a coupon's hold id is its issue
//! number, whose counter is the campaign's `last_issue`), so no id is handed out twice.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sqlx::PgPool;

use super::decimal::canonical;
use super::nodes::{due_member, Nodes, Pipes};
use crate::clock::now_ms;

/// What the holds of a page of keys wrote.
#[derive(Default, Debug)]
pub(crate) struct HoldsRestored {
    /// keys given a hold hash
    pub(crate) keys: u64,
    /// open holds written
    pub(crate) open: u64,
    /// open holds written whose deadline had passed (the module's timer expires them)
    pub(crate) past_due: Vec<(String, i64)>,
    /// how many of them, and how many the module had not expired when restore stopped waiting
    pub(crate) past_due_count: u64,
    pub(crate) past_due_open: u64,
}

/// A key's holds in the history: the highest asset/usage id, the open ones.
#[derive(sqlx::FromRow)]
struct HoldKeyRow {
    data_key: String,
    max_id: Option<i64>,
    open: i64,
    earliest: Option<i64>,
}

/// An open hold (amount as decimal text, subject empty for usage).
#[derive(sqlx::FromRow)]
struct OpenHoldRow {
    data_key: String,
    hold_id: i64,
    subject: String,
    amount: String,
    created_ms: i64,
    expires_ms: i64,
}

/// Writes the holds of `keys` into `pipes`.
pub(crate) async fn add_holds(
    pipes: &mut Pipes,
    nodes: &Nodes,
    pool: &PgPool,
    (prefix, keys): (&str, &[String]),
    done: &mut HoldsRestored,
) -> anyhow::Result<()> {
    let (per_key, open, totals) = read_holds(pool, keys).await?;
    let mut open_of: HashMap<&str, Vec<&OpenHoldRow>> = HashMap::new();
    for h in &open {
        open_of.entry(h.data_key.as_str()).or_default().push(h);
    }
    let mut totals_of: HashMap<&str, Vec<(&str, &str)>> = HashMap::new();
    for (k, subject, sum) in &totals {
        totals_of
            .entry(k.as_str())
            .or_default()
            .push((subject, sum));
    }
    for k in &per_key {
        if k.max_id.is_none() && k.open == 0 {
            continue; // a campaign whose reservations all closed: nothing to keep
        }
        let hset = pipes.on(nodes, &k.data_key).cmd("HSET");
        hset.arg(nodes.holds_hash(prefix, &k.data_key));
        if let Some(n) = k.max_id {
            hset.arg("n").arg(n);
        }
        if let Some(d) = k.earliest {
            hset.arg("open").arg(k.open).arg("d").arg(d);
        }
        for h in open_of.get(k.data_key.as_str()).into_iter().flatten() {
            let value = format!(
                "{}:{}:{}:{}",
                h.expires_ms,
                h.created_ms,
                canonical(&h.amount),
                h.subject
            );
            hset.arg(format!("o:{}", h.hold_id)).arg(value);
        }
        for (subject, sum) in totals_of.get(k.data_key.as_str()).into_iter().flatten() {
            hset.arg(format!("t:{subject}")).arg(canonical(sum));
        }
        hset.ignore();
        done.keys += 1;
    }
    for h in &open {
        pipes
            .on(nodes, &h.data_key)
            .cmd("ZADD")
            .arg(nodes.due_zset(prefix, &h.data_key))
            .arg(h.expires_ms)
            .arg(due_member(&h.data_key, h.hold_id))
            .ignore();
        done.open += 1;
        if h.expires_ms <= now_ms() {
            done.past_due.push((h.data_key.clone(), h.hold_id));
        }
    }
    Ok(())
}

/// How long restore waits for the module to expire the restored holds whose deadline passed
/// (its timer finds them within a tick; in a cluster, within its walk over the slots).
const EXPIRY_WAIT: Duration = Duration::from_secs(15);

/// Waits until the module has expired every hold of `past_due` (its `o:<id>` is gone), so the
/// reconcile that ends the restore counts their events in flight instead of meeting them half
/// way. Returns how many are still open when the wait ends.
pub(crate) async fn wait_expired(
    nodes: &mut Nodes,
    prefix: &str,
    past_due: &[(String, i64)],
) -> anyhow::Result<usize> {
    let started = Instant::now();
    let mut left: Vec<&(String, i64)> = past_due.iter().collect();
    while !left.is_empty() {
        let mut still = Vec::new();
        for node in 0..nodes.conns.len() {
            let mine: Vec<&(String, i64)> = left
                .iter()
                .copied()
                .filter(|(k, _)| nodes.node_of(k) == node)
                .collect();
            if mine.is_empty() {
                continue;
            }
            let mut pipe = redis::pipe();
            for (k, id) in &mine {
                pipe.cmd("HEXISTS")
                    .arg(nodes.holds_hash(prefix, k))
                    .arg(format!("o:{id}"));
            }
            let open: Vec<bool> = pipe.query_async(&mut nodes.conns[node]).await?;
            still.extend(
                mine.into_iter()
                    .zip(open)
                    .filter(|(_, o)| *o)
                    .map(|(h, _)| h),
            );
        }
        left = still;
        if left.is_empty() || started.elapsed() >= EXPIRY_WAIT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(left.len())
}

/// The history's holds of `keys`: per key, its open holds, and the held totals per subject.
async fn read_holds(
    pool: &PgPool,
    keys: &[String],
) -> anyhow::Result<(
    Vec<HoldKeyRow>,
    Vec<OpenHoldRow>,
    Vec<(String, String, String)>,
)> {
    let per_key: Vec<HoldKeyRow> = sqlx::query_as(
        "SELECT data_key, max(hold_id) FILTER (WHERE kind <> 'coupon') AS max_id,
                count(*) FILTER (WHERE status = 'open') AS open,
                min(expires_ms) FILTER (WHERE status = 'open') AS earliest
         FROM holds WHERE data_key = ANY($1) GROUP BY data_key",
    )
    .bind(keys)
    .fetch_all(pool)
    .await?;
    let open: Vec<OpenHoldRow> = sqlx::query_as(
        "SELECT data_key, hold_id, COALESCE(subject, '') AS subject, amount::text AS amount,
                created_ms, expires_ms
         FROM holds WHERE data_key = ANY($1) AND status = 'open' ORDER BY data_key, hold_id",
    )
    .bind(keys)
    .fetch_all(pool)
    .await?;
    let totals: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT data_key, COALESCE(subject, ''), sum(amount)::text FROM holds
         WHERE data_key = ANY($1) AND status = 'open' GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .bind(keys)
    .fetch_all(pool)
    .await?;
    Ok((per_key, open, totals))
}
