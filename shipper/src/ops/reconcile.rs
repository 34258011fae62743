//! `tally-shipper reconcile`: compares Redis (the live state) with Postgres (the history's
//! derived tables), key by key, in bounded batches (HSCAN / SCAN and `= ANY($1)` queries),
//! so it never loads millions of keys at once.
//!
//! Categories: balances (key, field), coupons (issued count and holder set), usage (used in
//! the stored period and the quota), sequences (per-key seq). A key whose Postgres sequence
//! is behind Redis while events are still in flight is counted as "in flight", not as a
//! mismatch; with `--wait-ms` the command first waits for the pipeline to drain.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use sqlx::PgPool;

/// Canonical decimal text: no `+`, no trailing fractional zeros, no `-0`.
pub fn canonical(s: &str) -> String {
    let s = s.trim();
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let body = if body.contains('.') {
        body.trim_end_matches('0').trim_end_matches('.')
    } else {
        body
    };
    let int_trimmed = {
        let (i, f) = body
            .split_once('.')
            .map_or((body, None), |(i, f)| (i, Some(f)));
        let i = i.trim_start_matches('0');
        let i = if i.is_empty() { "0" } else { i };
        match f {
            Some(f) => format!("{i}.{f}"),
            None => i.to_string(),
        }
    };
    if neg && int_trimmed != "0" {
        format!("-{int_trimmed}")
    } else {
        int_trimmed
    }
}

#[derive(Default, Debug, Clone, Copy)]
pub struct Tally {
    pub checked: u64,
    pub matching: u64,
    pub mismatched: u64,
    pub in_flight: u64,
}

#[derive(Default, Debug)]
pub struct Report {
    pub balances: Tally,
    pub coupons: Tally,
    pub usage: Tally,
    pub sequences: Tally,
    pub mismatches: Vec<String>,
    pub stream_in_flight: u64,
    /// seqs carried by two different events
    pub forks: u64,
    /// keys with seqs missing after the pipeline drained
    pub gaps: u64,
    pub drained: bool,
    pub waited_ms: u64,
}

impl Report {
    pub fn ok(&self) -> bool {
        [self.balances, self.coupons, self.usage, self.sequences]
            .iter()
            .all(|t| t.mismatched == 0)
            && self.forks == 0
            && self.gaps == 0
    }
    pub fn in_flight(&self) -> u64 {
        [self.balances, self.coupons, self.usage, self.sequences]
            .iter()
            .map(|t| t.in_flight)
            .sum::<u64>()
            + self.stream_in_flight
    }
    fn mismatch(&mut self, max_shown: usize, text: String) {
        if self.mismatches.len() < max_shown {
            self.mismatches.push(text);
        }
    }

    pub fn print(&self) {
        println!(
            "{:<10} {:>10} {:>10} {:>11} {:>10}",
            "category", "checked", "matching", "mismatched", "in flight"
        );
        for (name, t) in [
            ("balances", self.balances),
            ("coupons", self.coupons),
            ("usage", self.usage),
            ("sequences", self.sequences),
        ] {
            println!(
                "{name:<10} {:>10} {:>10} {:>11} {:>10}",
                t.checked, t.matching, t.mismatched, t.in_flight
            );
        }
        println!(
            "stream entries not yet acknowledged by the shipper: {}",
            self.stream_in_flight
        );
        println!(
            "history: {} forks, {} keys with gaps",
            self.forks, self.gaps
        );
        if self.drained {
            println!(
                "pipeline: drained (waited {} ms); every event appended so far is in Postgres",
                self.waited_ms
            );
        } else {
            println!(
                "pipeline: NOT drained after {} ms; keys behind are counted as in flight",
                self.waited_ms
            );
        }
        for m in &self.mismatches {
            println!("MISMATCH {m}");
        }
        println!(
            "verdict: {}",
            if !self.ok() {
                "MISMATCH"
            } else if self.in_flight() > 0 {
                "MATCH (with events in flight)"
            } else {
                "MATCH"
            }
        );
    }
}

pub struct Options {
    pub prefix: String,
    pub group: String,
    pub wait_ms: u64,
    pub batch: usize,
    pub show: usize,
}

impl Options {
    /// The options of `target`, waiting up to `wait_ms` for the pipeline to drain.
    pub fn new(target: &crate::cli::CheckOpts, wait_ms: u64) -> Options {
        Options {
            prefix: target.prefix.clone(),
            group: target.group.clone(),
            wait_ms,
            batch: target.batch.max(1),
            show: target.show,
        }
    }
}

pub(crate) async fn scan_keys(
    conn: &mut MultiplexedConnection,
    pattern: &str,
    kind: &str,
) -> anyhow::Result<Vec<String>> {
    let mut cursor: u64 = 0;
    let mut out = BTreeSet::new();
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .arg("TYPE")
            .arg(kind)
            .query_async(conn)
            .await?;
        out.extend(keys);
        if next == 0 {
            return Ok(out.into_iter().collect());
        }
        cursor = next;
    }
}

/// Entries of the log streams the shipper has not acknowledged yet (pending + not delivered).
pub async fn stream_in_flight(
    conn: &mut MultiplexedConnection,
    prefix: &str,
    group: &str,
) -> anyhow::Result<u64> {
    let mut total = 0u64;
    for stream in scan_keys(conn, &format!("{prefix}:log*"), "stream").await? {
        let groups: Vec<HashMap<String, redis::Value>> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&stream)
            .query_async(conn)
            .await?;
        let ours = groups.iter().find(|g| matches!(g.get("name"), Some(v) if redis::from_redis_value::<String>(v.clone()).ok().as_deref() == Some(group)));
        let len: u64 = redis::cmd("XLEN").arg(&stream).query_async(conn).await?;
        total += match ours {
            None => len,
            Some(g) => {
                let pending = g
                    .get("pending")
                    .and_then(|v| redis::from_redis_value::<u64>(v.clone()).ok())
                    .unwrap_or(0);
                // `lag` (entries not yet delivered to the group) is nil when Redis cannot tell.
                let lag = g
                    .get("lag")
                    .and_then(|v| redis::from_redis_value::<u64>(v.clone()).ok())
                    .unwrap_or(len);
                pending + lag
            }
        };
    }
    Ok(total)
}

/// Pages through `<prefix>:seq*` hashes: (data key, seq) in batches.
struct SeqPager {
    hashes: Vec<String>,
    idx: usize,
    cursor: u64,
    done: bool,
}

impl SeqPager {
    async fn new(conn: &mut MultiplexedConnection, prefix: &str) -> anyhow::Result<SeqPager> {
        let hashes = scan_keys(conn, &format!("{prefix}:seq*"), "hash").await?;
        Ok(SeqPager {
            done: hashes.is_empty(),
            hashes,
            idx: 0,
            cursor: 0,
        })
    }

    async fn next(
        &mut self,
        conn: &mut MultiplexedConnection,
        batch: usize,
    ) -> anyhow::Result<Option<Vec<(String, i64)>>> {
        while !self.done {
            let hash = &self.hashes[self.idx];
            let (next, flat): (u64, Vec<(String, i64)>) = redis::cmd("HSCAN")
                .arg(hash)
                .arg(self.cursor)
                .arg("COUNT")
                .arg(batch)
                .query_async(conn)
                .await?;
            self.cursor = next;
            if next == 0 {
                self.idx += 1;
                self.done = self.idx >= self.hashes.len();
            }
            if !flat.is_empty() {
                return Ok(Some(flat));
            }
        }
        Ok(None)
    }
}

/// Per key, the contiguous watermark: the highest n such that seqs 1..n are all in Postgres.
async fn pg_seqs(pool: &PgPool, keys: &[String]) -> anyhow::Result<HashMap<String, i64>> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT data_key, contiguous_seq FROM key_seqs WHERE data_key = ANY($1)")
            .bind(keys)
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().collect())
}

/// How many keys have a Postgres sequence behind Redis.
async fn keys_behind(
    conn: &mut MultiplexedConnection,
    pool: &PgPool,
    prefix: &str,
    batch: usize,
) -> anyhow::Result<u64> {
    let mut pager = SeqPager::new(conn, prefix).await?;
    let mut behind = 0;
    while let Some(page) = pager.next(conn, batch).await? {
        let keys: Vec<String> = page.iter().map(|(k, _)| k.clone()).collect();
        let mut pg = pg_seqs(pool, &keys).await?;
        let lagging: Vec<String> = page
            .iter()
            .filter(|(k, s)| pg.get(k).copied().unwrap_or(0) < *s)
            .map(|(k, _)| k.clone())
            .collect();
        if !lagging.is_empty() {
            // a watermark left behind by concurrent writers is recomputed before it counts
            crate::sinks::postgres::repair_watermarks(pool, &lagging).await?;
            pg = pg_seqs(pool, &keys).await?;
        }
        behind += page
            .iter()
            .filter(|(k, s)| pg.get(k).copied().unwrap_or(0) < *s)
            .count() as u64;
    }
    Ok(behind)
}

/// Compares Redis with the history. `nodes` holds one connection per primary: a standalone
/// server, or every primary of a cluster (each node's sequence hashes and streams are its own).
pub async fn run(
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
        while let Some(page) = pager.next(conn, opt.batch).await? {
            let hashes =
                compare_sequences(conn, pool, opt, &mut report, &page, events_pending).await?;
            check_assets(pool, &mut report, opt, &hashes.assets, &hashes.missing).await?;
            check_coupons(pool, &mut report, opt, &hashes.coupons).await?;
            check_usage(pool, &mut report, opt, &hashes.usages).await?;
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

/// One page of keys as Redis holds them, sorted by kind.
#[derive(Default)]
struct PageHashes {
    assets: BTreeMap<String, BTreeMap<String, String>>,
    coupons: BTreeMap<String, BTreeMap<String, String>>,
    usages: BTreeMap<String, BTreeMap<String, String>>,
    missing: Vec<String>,
}

/// Compares each key's seq in Redis with the history's contiguous seq and loads the keys
/// whose history is complete (a key still receiving events is counted in flight instead).
async fn compare_sequences(
    conn: &mut MultiplexedConnection,
    pool: &PgPool,
    opt: &Options,
    report: &mut Report,
    page: &[(String, i64)],
    events_pending: bool,
) -> anyhow::Result<PageHashes> {
    let keys: Vec<String> = page.iter().map(|(k, _)| k.clone()).collect();
    let pg = pg_seqs(pool, &keys).await?;
    let mut pipe = redis::pipe();
    for k in &keys {
        pipe.cmd("TYPE").arg(k).cmd("HGETALL").arg(k);
    }
    let replies: Vec<redis::Value> = pipe.query_async(conn).await?;
    let mut out = PageHashes::default();
    for ((key, seq), reply) in page.iter().zip(replies.chunks(2)) {
        let pg_seq = pg.get(key).copied().unwrap_or(0);
        report.sequences.checked += 1;
        let behind = pg_seq < *seq;
        if pg_seq == *seq {
            report.sequences.matching += 1;
        } else if behind && events_pending {
            report.sequences.in_flight += 1;
        } else {
            report.sequences.mismatched += 1;
            let ahead = if behind {
                "redis is ahead of the history"
            } else {
                "the history is ahead of redis"
            };
            report.mismatch(
                opt.show,
                format!(
                    "sequences {key}: redis seq {seq}, postgres contiguous seq {pg_seq} ({ahead})"
                ),
            );
        }
        if behind && events_pending {
            continue; // its newest events are still on their way
        }
        let kind: String = reply
            .first()
            .and_then(|v| redis::from_redis_value(v.clone()).ok())
            .unwrap_or_default();
        let fields: BTreeMap<String, String> = reply
            .get(1)
            .and_then(|v| redis::from_redis_value(v.clone()).ok())
            .unwrap_or_default();
        match (kind.as_str(), fields.get("kind").map(String::as_str)) {
            ("none", _) => out.missing.push(key.clone()),
            ("hash", Some("coupon")) => {
                out.coupons.insert(key.clone(), fields);
            }
            ("hash", Some("usage")) => {
                out.usages.insert(key.clone(), fields);
            }
            ("hash", _) => {
                out.assets.insert(key.clone(), fields);
            }
            (other, _) => {
                report.balances.checked += 1;
                report.balances.mismatched += 1;
                report.mismatch(
                    opt.show,
                    format!("{key}: redis holds a {other}, not a hash"),
                );
            }
        }
    }
    Ok(out)
}

/// Postgres -> Redis: every key with history must still have its sequence in Redis.
async fn check_keys_with_history(
    nodes: &mut [MultiplexedConnection],
    pool: &PgPool,
    opt: &Options,
    report: &mut Report,
) -> anyhow::Result<()> {
    let mut seq_hashes = Vec::new();
    for (i, conn) in nodes.iter_mut().enumerate() {
        seq_hashes.extend(
            scan_keys(conn, &format!("{}:seq*", opt.prefix), "hash")
                .await?
                .into_iter()
                .map(|h| (i, h)),
        );
    }
    let mut after = String::new();
    loop {
        let rows: Vec<(String, i64)> = sqlx::query_as("SELECT data_key, last_seq FROM key_seqs WHERE data_key > $1 ORDER BY data_key LIMIT $2")
            .bind(&after).bind(opt.batch as i64).fetch_all(pool).await?;
        let Some(last) = rows.last() else { break };
        after = last.0.clone();
        let mut found: HashMap<String, bool> = HashMap::new();
        for (node, h) in &seq_hashes {
            let mut pipe = redis::pipe();
            for (k, _) in &rows {
                pipe.cmd("HEXISTS").arg(h).arg(k);
            }
            let exists: Vec<bool> = pipe.query_async(&mut nodes[*node]).await?;
            for ((k, _), e) in rows.iter().zip(exists) {
                *found.entry(k.clone()).or_insert(false) |= e;
            }
        }
        for (k, s) in &rows {
            if !found.get(k).copied().unwrap_or(false) {
                report.sequences.checked += 1;
                report.sequences.mismatched += 1;
                report.mismatch(
                    opt.show,
                    format!("sequences {k}: postgres seq {s}, missing in redis"),
                );
            }
        }
    }
    Ok(())
}

/// A fork as sequence_anomalies records it: `data_key`'s seq `got_seq` carried by `event_id`
/// after `other_event_id`.
#[derive(sqlx::FromRow)]
struct ForkRow {
    data_key: String,
    got_seq: i64,
    event_id: String,
    other_event_id: Option<String>,
}

/// The history's own proof: every fork (one seq carried by two events), and, once the
/// pipeline has drained, every gap (seqs missing below the highest seen).
async fn check_history(
    pool: &PgPool,
    report: &mut Report,
    opt: &Options,
    events_pending: bool,
) -> anyhow::Result<()> {
    let forks: Vec<ForkRow> = sqlx::query_as(
        "SELECT data_key, got_seq, event_id::text AS event_id, other_event_id::text AS other_event_id
         FROM sequence_anomalies WHERE kind = 'fork' ORDER BY id",
    )
    .fetch_all(pool)
    .await?;
    for f in forks {
        report.forks += 1;
        let other = f.other_event_id.unwrap_or_else(|| "?".into());
        report.mismatch(
            opt.show,
            format!(
                "fork {} seq {}: events {other} and {} (one timeline was lost, e.g. by a failover)",
                f.data_key, f.got_seq, f.event_id
            ),
        );
    }
    if events_pending {
        return Ok(());
    }
    let gaps: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT data_key, contiguous_seq, last_seq FROM key_seqs WHERE last_seq > contiguous_seq ORDER BY data_key",
    )
    .fetch_all(pool)
    .await?;
    let candidates: Vec<String> = gaps.iter().map(|g| g.0.clone()).collect();
    let still: std::collections::HashSet<String> =
        crate::sinks::postgres::repair_watermarks(pool, &candidates)
            .await?
            .into_iter()
            .collect();
    for (key, _, last) in gaps.into_iter().filter(|g| still.contains(&g.0)) {
        let c: i64 = sqlx::query_scalar("SELECT contiguous_seq FROM key_seqs WHERE data_key = $1")
            .bind(&key)
            .fetch_one(pool)
            .await?;
        let missing: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT s + 1, next_s - 1 FROM (
                 SELECT seq AS s, lead(seq) OVER (ORDER BY seq) AS next_s
                 FROM (SELECT DISTINCT seq FROM event_keys WHERE data_key = $1 AND seq >= $2
                       UNION SELECT $2) d) x
             WHERE next_s > s + 1 ORDER BY s LIMIT 20",
        )
        .bind(&key)
        .bind(c)
        .fetch_all(pool)
        .await?;
        let ranges: Vec<String> = missing
            .iter()
            .map(|(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}..{b}")
                }
            })
            .collect();
        report.gaps += 1;
        report.mismatch(
            opt.show,
            format!(
                "gap {key}: seq {} missing (contiguous to {c}, highest seen {last})",
                ranges.join(", ")
            ),
        );
    }
    Ok(())
}

async fn check_assets(
    pool: &PgPool,
    report: &mut Report,
    opt: &Options,
    assets: &BTreeMap<String, BTreeMap<String, String>>,
    missing: &[String],
) -> anyhow::Result<()> {
    let keys: Vec<String> = assets.keys().chain(missing.iter()).cloned().collect();
    if keys.is_empty() {
        return Ok(());
    }
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT data_key, field, balance::text FROM balances WHERE data_key = ANY($1)",
    )
    .bind(&keys)
    .fetch_all(pool)
    .await?;
    let mut pg: BTreeMap<(String, String), String> = BTreeMap::new();
    for (k, f, b) in rows {
        pg.insert((k, f), canonical(&b));
    }
    let empty = BTreeMap::new();
    for key in &keys {
        let fields = assets.get(key).unwrap_or(&empty);
        for (field, value) in fields {
            report.balances.checked += 1;
            match pg.remove(&(key.clone(), field.clone())) {
                Some(p) if p == canonical(value) => report.balances.matching += 1,
                Some(p) => {
                    report.balances.mismatched += 1;
                    report.mismatch(
                        opt.show,
                        format!("balances {key} {field}: redis {value}, postgres {p}"),
                    );
                }
                None => {
                    report.balances.mismatched += 1;
                    report.mismatch(
                        opt.show,
                        format!("balances {key} {field}: redis {value}, no history in postgres"),
                    );
                }
            }
        }
    }
    for ((key, field), p) in pg {
        report.balances.checked += 1;
        report.balances.mismatched += 1;
        report.mismatch(
            opt.show,
            format!("balances {key} {field}: postgres {p}, missing in redis"),
        );
    }
    Ok(())
}

async fn check_coupons(
    pool: &PgPool,
    report: &mut Report,
    opt: &Options,
    coupons: &BTreeMap<String, BTreeMap<String, String>>,
) -> anyhow::Result<()> {
    if coupons.is_empty() {
        return Ok(());
    }
    let keys: Vec<String> = coupons.keys().cloned().collect();
    let issued: HashMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
        "SELECT campaign, issued FROM coupon_campaigns WHERE campaign = ANY($1)",
    )
    .bind(&keys)
    .fetch_all(pool)
    .await?
    .into_iter()
    .collect();
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT campaign, COALESCE(user_id, ''), issue FROM coupon_issues WHERE campaign = ANY($1) AND NOT released ORDER BY campaign, issue",
    ).bind(&keys).fetch_all(pool).await?;
    let mut pg_holders: BTreeMap<String, BTreeSet<(String, i64)>> = BTreeMap::new();
    for (c, u, i) in rows {
        pg_holders.entry(c).or_default().insert((u, i));
    }
    for (campaign, fields) in coupons {
        report.coupons.checked += 1;
        let redis_issued: i64 = fields
            .get("issued")
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1);
        let (redis_holders, broken) = redis_holders(fields);
        let pg_set = pg_holders.remove(campaign).unwrap_or_default();
        let pg_issued = issued.get(campaign).copied();
        if pg_issued == Some(redis_issued) && pg_set == redis_holders && broken.is_empty() {
            report.coupons.matching += 1;
        } else {
            report.coupons.mismatched += 1;
            let only_redis: Vec<_> = redis_holders.difference(&pg_set).take(3).collect();
            let only_pg: Vec<_> = pg_set.difference(&redis_holders).take(3).collect();
            let broken = match broken.len() {
                0 => String::new(),
                _ => format!(
                    "; claim count and claims disagree in redis for {:?}",
                    broken.iter().take(3).collect::<Vec<_>>()
                ),
            };
            report.mismatch(opt.show, format!(
                "coupons {campaign}: issued redis {redis_issued}, postgres {pg_issued:?}; holders only in redis {only_redis:?}, only in postgres {only_pg:?}{broken}"
            ));
        }
    }
    Ok(())
}

async fn check_usage(
    pool: &PgPool,
    report: &mut Report,
    opt: &Options,
    usages: &BTreeMap<String, BTreeMap<String, String>>,
) -> anyhow::Result<()> {
    if usages.is_empty() {
        return Ok(());
    }
    let keys: Vec<String> = usages.keys().cloned().collect();
    let rows: Vec<UsageTotalRow> = sqlx::query_as(
        "SELECT usage_key, period_id, used::text AS used, quota::text AS quota
         FROM usage_totals WHERE usage_key = ANY($1)",
    )
    .bind(&keys)
    .fetch_all(pool)
    .await?;
    // (key, period) -> (used, quota), canonical
    let pg: HashMap<(String, String), (String, String)> = rows
        .into_iter()
        .map(|r| {
            let amounts = (canonical(&r.used), canonical(&r.quota));
            ((r.usage_key, r.period_id), amounts)
        })
        .collect();
    for (key, fields) in usages {
        report.usage.checked += 1;
        let get = |f: &str| fields.get(f).cloned().unwrap_or_default();
        let (period_id, used, limit) = (
            get("period_id"),
            canonical(&get("used")),
            canonical(&get("limit")),
        );
        match pg.get(&(key.clone(), period_id.clone())) {
            Some((u, q)) if *u == used && *q == limit => report.usage.matching += 1,
            other => {
                report.usage.mismatched += 1;
                report.mismatch(opt.show, format!("usage {key} period {period_id}: redis used {used} limit {limit}, postgres {other:?}"));
            }
        }
    }
    Ok(())
}

/// A usage counter of one period in the history (amounts as decimal text).
#[derive(sqlx::FromRow)]
struct UsageTotalRow {
    usage_key: String,
    period_id: String,
    used: String,
    quota: String,
}

/// `h:<k>:<user>` as (k, user): k is the digits up to the first ':' (a user name may hold ':').
fn holding_field(field: &str) -> Option<(i64, &str)> {
    let (k, user) = field.strip_prefix("h:")?.split_once(':')?;
    if k.is_empty() || !k.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((k.parse().ok()?, user))
}

/// The claims a campaign hash records as (user, issue), and the users whose record is
/// inconsistent: `c:<user>` = n must come with exactly `h:1:<user>` .. `h:n:<user>`. Legacy
/// `u:<user>` lists (`"3,17"`, kept until the user's next command) count too. An issue that
/// is not a number reads as -1, so it never matches Postgres.
fn redis_holders(fields: &BTreeMap<String, String>) -> (BTreeSet<(String, i64)>, BTreeSet<String>) {
    let number = |v: &str| v.parse::<i64>().unwrap_or(-1);
    let mut holders = BTreeSet::new();
    let mut counted: BTreeMap<&str, (i64, BTreeSet<i64>)> = BTreeMap::new();
    let mut broken = BTreeSet::new();
    for (f, v) in fields {
        if let Some(user) = f.strip_prefix("u:") {
            for n in v.split(',').filter(|s| !s.is_empty()) {
                holders.insert((user.to_string(), number(n)));
            }
        } else if let Some(user) = f.strip_prefix("c:") {
            counted.entry(user).or_insert((0, BTreeSet::new())).0 = number(v);
        } else if f.starts_with("h:") {
            match holding_field(f) {
                Some((k, user)) => {
                    holders.insert((user.to_string(), number(v)));
                    counted
                        .entry(user)
                        .or_insert((0, BTreeSet::new()))
                        .1
                        .insert(k);
                }
                None => {
                    broken.insert(f.clone());
                }
            }
        }
    }
    for (user, (count, ks)) in counted {
        if count < 1 || !ks.iter().copied().eq(1..=count) {
            broken.insert(user.to_string());
        }
    }
    (holders, broken)
}

/// Connects and runs; returns the process exit code (0 match, 1 mismatch, 2 only in flight).
pub async fn command(redis_url: &str, pool: &PgPool, opt: &Options) -> anyhow::Result<u8> {
    let mut nodes = super::nodes::Nodes::connect(redis_url).await?;
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

#[cfg(test)]
mod tests {
    use super::{canonical, holding_field, redis_holders};
    use std::collections::{BTreeMap, BTreeSet};

    #[test]
    fn holding_fields_split_at_the_first_colon_after_the_index() {
        assert_eq!(holding_field("h:12:alice"), Some((12, "alice")));
        assert_eq!(holding_field("h:1:a:b:3"), Some((1, "a:b:3")));
        assert_eq!(holding_field("h:1:"), Some((1, "")));
        for bad in ["h:x:alice", "h::alice", "h:12", "c:12:alice", "h:-1:a"] {
            assert_eq!(holding_field(bad), None, "{bad}");
        }
    }

    fn hash(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(f, v)| (f.to_string(), v.to_string()))
            .collect()
    }

    fn set(pairs: &[(&str, i64)]) -> BTreeSet<(String, i64)> {
        pairs.iter().map(|(u, i)| (u.to_string(), *i)).collect()
    }

    #[test]
    fn holders_from_counted_and_legacy_fields() {
        let h = hash(&[
            ("kind", "coupon"),
            ("issued", "4"),
            ("c:a:b", "2"),
            ("h:1:a:b", "3"),
            ("h:2:a:b", "9"),
            ("u:carol", "4,5"),
        ]);
        assert_eq!(
            redis_holders(&h),
            (
                set(&[("a:b", 3), ("a:b", 9), ("carol", 4), ("carol", 5)]),
                BTreeSet::new()
            )
        );
        // A count without its claims, claims without a count, a gap, a bad field name.
        let h = hash(&[
            ("c:x", "2"),
            ("h:1:x", "1"),
            ("h:1:y", "2"),
            ("c:z", "2"),
            ("h:1:z", "3"),
            ("h:3:z", "4"),
            ("h:q:w", "5"),
        ]);
        let broken: BTreeSet<String> = ["x", "y", "z", "h:q:w"].map(String::from).into();
        assert_eq!(redis_holders(&h).1, broken);
    }

    #[test]
    fn canonical_decimals() {
        for (a, b) in [
            ("5210.430", "5210.43"),
            ("-0.0", "0"),
            ("007", "7"),
            ("10", "10"),
            ("0.10", "0.1"),
            ("-3.50", "-3.5"),
            ("100.000", "100"),
        ] {
            assert_eq!(canonical(a), b, "{a}");
        }
    }
}
