//! Holds (docs/holds.md): each key's hold records in Redis (the hash
//! `<prefix>:holds[:{tag}]:<len>:<key>` and the key's members of `<prefix>:due[:{tag}]`)
//! against the open holds of the history's `holds` table: the same open holds (id, field or
//! user, amount, created, deadline), the same held totals per field or user, the count, an
//! earliest deadline `d` at or before the earliest open one, every open hold due at its
//! deadline, and an id counter that never hands out an id the history has seen.
//!
//! A module timer expires holds on its own, so a key can change between the page of seqs and
//! these reads: a key whose seq moved meanwhile is counted in flight, not as a mismatch.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use redis::aio::MultiplexedConnection;
use sqlx::PgPool;

use super::options::Options;
use super::report::Report;
use crate::ops::decimal::canonical;
use crate::ops::nodes::{due_member, holds_hash};

/// An open hold: as `o:<id>` = `<expires>:<created>:<amount>:<subject>` holds it, or as the
/// history does (a usage hold's subject is empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct OpenHold {
    pub(super) expires: i64,
    pub(super) created: i64,
    pub(super) amount: String,
    pub(super) subject: String,
}

/// One key's hold records in Redis.
#[derive(Debug, Default)]
pub(super) struct RedisHolds {
    n: Option<String>,
    open: Option<String>,
    d: Option<String>,
    holds: BTreeMap<i64, OpenHold>,
    /// `t:<subject>` sums that are not zero, canonical
    totals: BTreeMap<String, String>,
    /// fields that do not read as the layout says
    broken: Vec<String>,
    /// the score of each open hold's member in the due set (None: no member)
    due: BTreeMap<i64, Option<i64>>,
}

/// One key's holds in the history.
#[derive(Debug, Default)]
pub(super) struct PgHolds {
    pub(super) open: BTreeMap<i64, OpenHold>,
    /// held per subject over the open holds, canonical
    pub(super) totals: BTreeMap<String, String>,
    /// the highest id of an asset or usage hold, open or closed
    pub(super) max_id: Option<i64>,
}

/// `o:<id>`'s value.
fn open_hold(v: &str) -> Option<OpenHold> {
    let mut parts = v.splitn(4, ':');
    let expires = parts.next()?.parse().ok()?;
    let created = parts.next()?.parse().ok()?;
    let amount = canonical(parts.next()?);
    let subject = parts.next()?.to_string();
    Some(OpenHold {
        expires,
        created,
        amount,
        subject,
    })
}

/// A key's hold hash as HGETALL returns it.
pub(super) fn parse_redis(fields: BTreeMap<String, String>) -> RedisHolds {
    let mut r = RedisHolds::default();
    for (f, v) in fields {
        match f.as_str() {
            "n" => r.n = Some(v),
            "open" => r.open = Some(v),
            "d" => r.d = Some(v),
            _ => {
                if let Some(id) = f.strip_prefix("o:") {
                    match (id.parse::<i64>(), open_hold(&v)) {
                        (Ok(id), Some(h)) => {
                            r.holds.insert(id, h);
                        }
                        _ => r.broken.push(format!("{f}={v}")),
                    }
                } else if let Some(subject) = f.strip_prefix("t:") {
                    let sum = canonical(&v);
                    if sum != "0" {
                        r.totals.insert(subject.to_string(), sum);
                    }
                }
                // `x:<id>`: a closed hold's tombstone, not in the history's open holds
            }
        }
    }
    r
}

/// What differs between a key's hold records in Redis and its holds in the history; empty
/// when they match.
pub(super) fn differences(r: &RedisHolds, pg: &PgHolds) -> Vec<String> {
    let mut out: Vec<String> = r.broken.iter().map(|b| format!("unreadable {b}")).collect();
    let ids = |m: &BTreeMap<i64, OpenHold>| m.keys().copied().collect::<BTreeSet<i64>>();
    let (redis_ids, pg_ids) = (ids(&r.holds), ids(&pg.open));
    let only =
        |a: &BTreeSet<i64>, b: &BTreeSet<i64>| a.difference(b).take(5).copied().collect::<Vec<_>>();
    if redis_ids != pg_ids {
        out.push(format!(
            "open holds only in redis {:?}, only in postgres {:?}",
            only(&redis_ids, &pg_ids),
            only(&pg_ids, &redis_ids)
        ));
    }
    for (id, p) in &pg.open {
        match r.holds.get(id) {
            Some(h) if h != p => out.push(format!("hold {id}: redis {h:?}, postgres {p:?}")),
            _ => {}
        }
        match r.due.get(id).copied().flatten() {
            Some(score) if score == p.expires => {}
            other => out.push(format!(
                "hold {id}: due at {other:?}, deadline {}",
                p.expires
            )),
        }
    }
    if r.totals != pg.totals {
        out.push(format!(
            "held totals: redis {:?}, postgres {:?}",
            r.totals, pg.totals
        ));
    }
    let open = r
        .open
        .as_deref()
        .map_or(Some(0), |v| v.parse::<usize>().ok());
    if open != Some(pg.open.len()) {
        out.push(format!(
            "open: redis {:?}, postgres {}",
            r.open,
            pg.open.len()
        ));
    }
    // `d` is a lower bound: the module sets it when a hold opens and when it expires the due
    // ones before a command, and drops it with the last open hold, but leaves it as it is
    // when an earlier hold closes (a command then expires nothing and sets it again)
    let earliest = pg.open.values().map(|h| h.expires).min();
    let d = r.d.as_deref().map(|d| d.parse::<i64>().ok());
    let d_ok = match (d, earliest) {
        (None, None) => true,
        (Some(Some(d)), Some(e)) => d <= e,
        _ => false,
    };
    if !d_ok {
        out.push(format!(
            "earliest deadline d: redis {:?}, postgres {earliest:?}",
            r.d
        ));
    }
    if let Some(max) = pg.max_id {
        if r.n
            .as_deref()
            .and_then(|n| n.parse::<i64>().ok())
            .is_none_or(|n| n < max)
        {
            out.push(format!(
                "id counter n: redis {:?}, below the history's hold {max}",
                r.n
            ));
        }
    }
    out
}

/// The history's holds of `keys`: open ones, held totals, highest ids.
async fn pg_holds(pool: &PgPool, keys: &[String]) -> anyhow::Result<HashMap<String, PgHolds>> {
    let mut out: HashMap<String, PgHolds> = HashMap::new();
    let open: Vec<(String, i64, String, String, i64, i64)> = sqlx::query_as(
        "SELECT data_key, hold_id, COALESCE(subject, ''), amount::text, created_ms, expires_ms
         FROM holds WHERE data_key = ANY($1) AND status = 'open'",
    )
    .bind(keys)
    .fetch_all(pool)
    .await?;
    for (key, id, subject, amount, created, expires) in open {
        let amount = canonical(&amount);
        let hold = OpenHold {
            expires,
            created,
            amount,
            subject,
        };
        out.entry(key).or_default().open.insert(id, hold);
    }
    let totals: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT data_key, COALESCE(subject, ''), sum(amount)::text FROM holds
         WHERE data_key = ANY($1) AND status = 'open' GROUP BY 1, 2",
    )
    .bind(keys)
    .fetch_all(pool)
    .await?;
    for (key, subject, sum) in totals {
        out.entry(key)
            .or_default()
            .totals
            .insert(subject, canonical(&sum));
    }
    let ids: Vec<(String, i64)> = sqlx::query_as(
        "SELECT data_key, max(hold_id) FROM holds WHERE data_key = ANY($1) AND kind <> 'coupon' GROUP BY 1",
    )
    .bind(keys)
    .fetch_all(pool)
    .await?;
    for (key, max) in ids {
        out.entry(key).or_default().max_id = Some(max);
    }
    Ok(out)
}

/// Compares the holds of `keys` (pairs of key and the seq the page read), all from the
/// sequence hash `seq_hash` (their helper keys share its suffix).
pub(super) async fn check_holds(
    conn: &mut MultiplexedConnection,
    pool: &PgPool,
    (report, opt): (&mut Report, &Options),
    seq_hash: &str,
    keys: &[(String, i64)],
) -> anyhow::Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let suffix = seq_hash
        .strip_prefix(&format!("{}:seq", opt.prefix))
        .unwrap_or_default();
    let names: Vec<String> = keys.iter().map(|(k, _)| k.clone()).collect();
    let mut pipe = redis::pipe();
    for k in &names {
        pipe.cmd("HGETALL").arg(holds_hash(&opt.prefix, suffix, k));
    }
    let hashes: Vec<BTreeMap<String, String>> = pipe.query_async(&mut *conn).await?;
    let mut pg = pg_holds(pool, &names).await?;
    let mut with_holds: Vec<(&str, i64, RedisHolds, PgHolds)> = Vec::new();
    for ((key, seq), fields) in keys.iter().zip(hashes) {
        let p = pg.remove(key).unwrap_or_default();
        if fields.is_empty() && p.open.is_empty() && p.max_id.is_none() {
            continue;
        }
        with_holds.push((key, *seq, parse_redis(fields), p));
    }
    if with_holds.is_empty() {
        return Ok(()); // (an empty pipeline is an error to redis-rs)
    }
    // the due members of the open holds, and each key's seq again
    let due = format!("{}:due{suffix}", opt.prefix);
    let mut pipe = redis::pipe();
    for (key, _, _, p) in &with_holds {
        let ids: Vec<String> = p.open.keys().map(|id| due_member(key, *id)).collect();
        match ids.is_empty() {
            true => pipe.cmd("ECHO").arg("none"),
            false => pipe.cmd("ZMSCORE").arg(&due).arg(ids),
        };
        pipe.cmd("HGET").arg(seq_hash).arg(*key);
    }
    let replies: Vec<redis::Value> = pipe.query_async(conn).await?;
    for ((key, seq, mut r, p), reply) in with_holds.into_iter().zip(replies.chunks(2)) {
        let value = |i: usize| reply.get(i).cloned().unwrap_or(redis::Value::Nil);
        let scores: Vec<Option<f64>> = match p.open.is_empty() {
            true => Vec::new(),
            false => redis::from_redis_value(value(0)).unwrap_or_default(),
        };
        r.due = p
            .open
            .keys()
            .copied()
            .zip(scores.into_iter().map(|s| s.map(|s| s as i64)))
            .collect();
        let seq_now: Option<i64> = redis::from_redis_value(value(1)).ok();
        tally_key(report, opt, key, differences(&r, &p), seq_now != Some(seq));
    }
    Ok(())
}

/// Counts one key with holds: matching, in flight (its seq moved while it was read), or a
/// mismatch shown with what differs.
fn tally_key(report: &mut Report, opt: &Options, key: &str, diffs: Vec<String>, moved: bool) {
    report.holds.checked += 1;
    if diffs.is_empty() {
        report.holds.matching += 1;
    } else if moved {
        report.holds.in_flight += 1;
    } else {
        report.holds.mismatched += 1;
        report.mismatch(opt.show, format!("holds {key}: {}", diffs.join("; ")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(f, v)| (f.to_string(), v.to_string()))
            .collect()
    }

    fn hold(expires: i64, amount: &str, subject: &str) -> OpenHold {
        OpenHold {
            expires,
            created: 100,
            amount: amount.into(),
            subject: subject.into(),
        }
    }

    /// Two open holds of an asset key (gold 30 and 5.5 due at 900 and 800), one closed.
    fn both() -> (RedisHolds, PgHolds) {
        let mut r = parse_redis(hash(&[
            ("n", "3"),
            ("open", "2"),
            ("d", "800"),
            ("o:1", "900:100:30:gold"),
            ("o:3", "800:100:5.50:gold:x"),
            ("t:gold", "35.5"),
            ("t:gems", "0"),
            ("x:2", "settled:500"),
        ]));
        r.due = BTreeMap::from([(1, Some(900)), (3, Some(800))]);
        let pg = PgHolds {
            open: BTreeMap::from([
                (1, hold(900, "30", "gold")),
                (3, hold(800, "5.5", "gold:x")),
            ]),
            totals: BTreeMap::from([("gold".into(), "35.5".into())]),
            max_id: Some(3),
        };
        (r, pg)
    }

    #[test]
    fn matching_hold_records_have_no_differences() {
        let (r, pg) = both();
        assert!(r.broken.is_empty());
        assert_eq!(r.holds[&3].subject, "gold:x", "a subject may hold ':'");
        assert_eq!(differences(&r, &pg), Vec::<String>::new());
        // a key whose holds all closed: no open, no d, a counter at least the history's
        let r = parse_redis(hash(&[("n", "4"), ("open", "0"), ("x:4", "voided:1")]));
        let pg = PgHolds {
            max_id: Some(4),
            ..PgHolds::default()
        };
        assert_eq!(differences(&r, &pg), Vec::<String>::new());
        // open absent reads as 0 (a restored key with nothing open)
        let r = parse_redis(hash(&[("n", "4")]));
        assert_eq!(differences(&r, &pg), Vec::<String>::new());
        // `d` below the earliest open deadline: an earlier hold closed since
        let (mut r, pg) = both();
        r.d = Some("700".into());
        assert_eq!(differences(&r, &pg), Vec::<String>::new());
    }

    #[test]
    fn each_difference_is_named() {
        type Change = Box<dyn Fn(&mut RedisHolds, &mut PgHolds)>;
        let cases: Vec<(Change, &str)> = vec![
            (
                Box::new(|r, _| {
                    r.holds.remove(&3);
                }),
                "only in postgres [3]",
            ),
            (
                Box::new(|_, p| {
                    p.open.remove(&1);
                }),
                "only in redis [1]",
            ),
            (
                Box::new(|r, _| r.holds.get_mut(&1).unwrap().amount = "31".into()),
                "hold 1: redis",
            ),
            (
                Box::new(|r, _| r.holds.get_mut(&1).unwrap().created = 7),
                "hold 1: redis",
            ),
            (
                Box::new(|r, _| {
                    r.due.insert(1, None);
                }),
                "hold 1: due at None",
            ),
            (
                Box::new(|r, _| {
                    r.due.insert(3, Some(801));
                }),
                "hold 3: due at Some(801)",
            ),
            (
                Box::new(|r, _| {
                    r.totals.insert("gold".into(), "35".into());
                }),
                "held totals",
            ),
            (
                Box::new(|r, _| r.open = Some("3".into())),
                "open: redis Some(\"3\")",
            ),
            (Box::new(|r, _| r.d = None), "earliest deadline"),
            (
                Box::new(|r, _| r.d = Some("801".into())),
                "earliest deadline",
            ),
            (Box::new(|_, p| p.open.clear()), "earliest deadline"),
            (Box::new(|r, _| r.n = Some("2".into())), "id counter n"),
            (Box::new(|r, _| r.n = None), "id counter n"),
            (
                Box::new(|r, _| r.broken.push("o:x=1".into())),
                "unreadable o:x=1",
            ),
        ];
        for (change, want) in cases {
            let (mut r, mut pg) = both();
            change(&mut r, &mut pg);
            let d = differences(&r, &pg);
            assert!(d.iter().any(|x| x.contains(want)), "want {want}: {d:?}");
        }
        let r = parse_redis(hash(&[("o:1", "900:100"), ("o:a", "900:100:1:")]));
        assert_eq!(r.broken.len(), 2);
    }
}
