//! The state side: each page of keys as Redis holds them (balances, coupons, usage) against
//! the derived tables.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use sqlx::PgPool;

use super::history::pg_seqs;
use super::options::Options;
use super::report::Report;
use super::scan::stream_in_flight;
use crate::ops::decimal::canonical;

/// One page of keys as Redis holds them, sorted by kind.
#[derive(Default)]
pub(super) struct PageHashes {
    pub(super) assets: BTreeMap<String, BTreeMap<String, String>>,
    pub(super) coupons: BTreeMap<String, BTreeMap<String, String>>,
    pub(super) usages: BTreeMap<String, BTreeMap<String, String>>,
    pub(super) missing: Vec<String>,
    /// every key of the page compared (its seq with the one the page read)
    pub(super) compared: Vec<(String, i64)>,
}

impl PageHashes {
    /// Files the key under its kind, from its `TYPE` and `HGETALL` replies; a key that is not
    /// a hash is a balance mismatch.
    fn add(&mut self, key: &str, reply: &[redis::Value], report: &mut Report, show: usize) {
        let kind: String = reply
            .first()
            .and_then(|v| redis::from_redis_value(v.clone()).ok())
            .unwrap_or_default();
        let fields: BTreeMap<String, String> = reply
            .get(1)
            .and_then(|v| redis::from_redis_value(v.clone()).ok())
            .unwrap_or_default();
        match (kind.as_str(), fields.get("kind").map(String::as_str)) {
            ("none", _) => self.missing.push(key.to_string()),
            ("hash", Some("coupon")) => {
                self.coupons.insert(key.to_string(), fields);
            }
            ("hash", Some("usage")) => {
                self.usages.insert(key.to_string(), fields);
            }
            ("hash", _) => {
                self.assets.insert(key.to_string(), fields);
            }
            (other, _) => {
                report.balances.checked += 1;
                report.balances.mismatched += 1;
                report.mismatch(show, format!("{key}: redis holds a {other}, not a hash"));
            }
        }
    }
}

/// Compares each key's seq in Redis with the history's contiguous seq and loads the keys
/// whose history is complete (a key still receiving events is counted in flight instead).
pub(super) async fn compare_sequences(
    (conn, late): (&mut MultiplexedConnection, &mut LateCheck),
    pool: &PgPool,
    opt: &Options,
    report: &mut Report,
    page: &[(String, i64)],
    events_pending: bool,
) -> anyhow::Result<PageHashes> {
    let keys: Vec<String> = page.iter().map(|(k, _)| k.clone()).collect();
    let pg = pg_seqs(pool, &keys).await?;
    let moved = match events_pending {
        true => HashSet::new(),
        false => moved_since_drain((conn, late), pool, opt, page, &pg).await?,
    };
    let mut pipe = redis::pipe();
    for k in &keys {
        pipe.cmd("TYPE").arg(k).cmd("HGETALL").arg(k);
    }
    let replies: Vec<redis::Value> = pipe.query_async(conn).await?;
    let mut out = PageHashes::default();
    for ((key, seq), reply) in page.iter().zip(replies.chunks(2)) {
        let pg_seq = pg.get(key).copied().unwrap_or(0);
        let pending = events_pending || moved.contains(key.as_str());
        if report.compare_seq(opt.show, key, *seq, pg_seq, pending) {
            out.add(key, reply, report, opt.show);
            out.compared.push((key.clone(), *seq));
        }
    }
    Ok(out)
}

/// A node's stream looked at again after the drain check, at most once a second (each look
/// scans the node's keys for its streams): what it held unacknowledged then.
#[derive(Default)]
pub(super) struct LateCheck {
    at: Option<Instant>,
    in_stream: u64,
}

impl LateCheck {
    async fn in_stream(
        &mut self,
        conn: &mut MultiplexedConnection,
        opt: &Options,
    ) -> anyhow::Result<u64> {
        if self
            .at
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            self.in_stream = stream_in_flight(conn, &opt.prefix, &opt.group).await?;
            self.at = Some(Instant::now());
        }
        Ok(self.in_stream)
    }
}

/// The keys of `page` Redis holds ahead of the history although the pipeline had drained,
/// whose events were appended after that check (the holds' expiry timer writes by itself, a
/// client may still be writing): still in the stream, or stored since. Those are in flight;
/// the others are mismatches.
async fn moved_since_drain<'a>(
    (conn, late): (&mut MultiplexedConnection, &mut LateCheck),
    pool: &PgPool,
    opt: &Options,
    page: &'a [(String, i64)],
    pg: &HashMap<String, i64>,
) -> anyhow::Result<HashSet<&'a str>> {
    let ahead: Vec<&(String, i64)> = page
        .iter()
        .filter(|(k, s)| pg.get(k).copied().unwrap_or(0) < *s)
        .collect();
    if ahead.is_empty() {
        return Ok(HashSet::new());
    }
    let in_stream = late.in_stream(conn, opt).await?;
    let keys: Vec<String> = ahead.iter().map(|(k, _)| k.clone()).collect();
    let now = pg_seqs(pool, &keys).await?;
    Ok(ahead
        .into_iter()
        .filter(|(k, s)| in_stream > 0 || now.get(k).copied().unwrap_or(0) >= *s)
        .map(|(k, _)| k.as_str())
        .collect())
}

pub(super) async fn check_assets(
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

pub(super) async fn check_coupons(
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

pub(super) async fn check_usage(
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

#[cfg(test)]
mod tests {
    use super::{holding_field, redis_holders};
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
}
