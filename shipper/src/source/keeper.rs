//! Housekeeping of one log stream, beside the reader, on the node's shared connection:
//! trimming entries every group has acknowledged, and sampling the stream's length, pending
//! entries and lag for /metrics. Runs on timers, so the figures keep moving while the next
//! stage (Kafka or Postgres) is down and the reader is stuck retrying a batch.
//!
//! Trimming computes the lowest id any group still needs (XINFO GROUPS, XPENDING) and trims
//! below it (XTRIM MINID); where the server has `XTRIM ... ACKED` (Redis 8.2+, found once per
//! node) the same XTRIM also carries ACKED, so the server itself keeps every entry a group
//! has not acknowledged, whatever changed since the groups were read.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::Value;
use tokio_util::sync::CancellationToken;

use crate::cli::{BatchOpts, RedisOpts};
use crate::clock::now_ms;
use crate::event::{next_stream_id, parse_stream_id};
use crate::obs::metrics;
use crate::redis_io::{as_array, as_int, as_str, parse_entries, NodeConns, RResult};
use crate::retry::backoff_ms;

/// An empty stream is sampled at most this many sampling intervals apart (10 s at the default
/// --stream-metrics-interval-ms).
const IDLE_TICKS_MAX: u32 = 10;

/// Per node URL: whether its XTRIM takes `ACKED`, asked once per node (not per stream, not
/// per trim) and shared by every keeper of the node's streams.
static ACKED_TRIM: LazyLock<Mutex<HashMap<String, Arc<tokio::sync::OnceCell<bool>>>>> =
    LazyLock::new(Mutex::default);

fn acked_trim_cell(url: &str) -> Arc<tokio::sync::OnceCell<bool>> {
    let mut map = ACKED_TRIM.lock().unwrap_or_else(|e| e.into_inner());
    map.entry(url.to_string()).or_default().clone()
}

/// Whether the node at `url` has `XTRIM ... ACKED`: its `COMMAND DOCS XTRIM` lists the ACKED
/// token (Redis 8.2+; not Redis 7.x, not Valkey 9.1). A server without COMMAND DOCS (before
/// 7.0) has not. Asked once per node; a connection error leaves it unknown (asked again).
async fn has_acked_trim(url: &str, conn: &mut MultiplexedConnection) -> RResult<bool> {
    let cell = acked_trim_cell(url);
    let known = cell
        .get_or_try_init(|| async {
            let docs: RResult<Value> = redis::cmd("COMMAND")
                .arg("DOCS")
                .arg("XTRIM")
                .query_async(conn)
                .await;
            let acked = match docs {
                Ok(v) => has_token(&v, "ACKED"),
                Err(e) if e.code() == Some("ERR") => false,
                Err(e) => return Err(e),
            };
            tracing::debug!(url = %url, acked, "XTRIM ... ACKED (the server keeps unacknowledged entries)");
            Ok(acked)
        })
        .await?;
    Ok(*known)
}

/// Whether a COMMAND DOCS reply (RESP2 flat arrays or RESP3 maps) has an argument whose
/// `token` is `token`.
fn has_token(v: &Value, token: &str) -> bool {
    let is_token = |k: &Value, v: &Value| {
        as_str(k).as_deref() == Some("token")
            && as_str(v).is_some_and(|t| t.eq_ignore_ascii_case(token))
    };
    match v {
        Value::Map(kv) => kv
            .iter()
            .any(|(k, v)| is_token(k, v) || has_token(v, token)),
        Value::Array(items) | Value::Set(items) => {
            items.windows(2).any(|p| is_token(&p[0], &p[1]))
                || items.iter().any(|i| has_token(i, token))
        }
        _ => false,
    }
}

pub(crate) struct Keeper {
    url: String,
    stream: String,
    group: String,
    trim_every: Option<Duration>,
    sample_every: Duration,
    backoff_ms: (u64, u64),
    /// cancelled after the readers acked their last batch: one final trim, then stop
    stop: CancellationToken,
    conns: NodeConns,
}

/// One group's view of the stream, from XINFO GROUPS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupInfo {
    pub(crate) name: String,
    pub(crate) pending: i64,
    pub(crate) last_delivered: String,
    /// entries not yet read by the group (None when the server cannot tell)
    pub(crate) lag: Option<i64>,
}

pub(crate) fn parse_groups(v: &Value) -> Vec<GroupInfo> {
    let mut out = Vec::new();
    for g in as_array(v) {
        let kv: HashMap<String, &Value> = match g {
            Value::Map(m) => m
                .iter()
                .filter_map(|(k, v)| Some((as_str(k)?, v)))
                .collect(),
            other => as_array(other)
                .chunks(2)
                .filter_map(|p| Some((as_str(p.first()?)?, p.get(1)?)))
                .collect(),
        };
        let (Some(name), Some(last)) = (
            kv.get("name").and_then(|v| as_str(v)),
            kv.get("last-delivered-id").and_then(|v| as_str(v)),
        ) else {
            continue;
        };
        let pending = kv.get("pending").and_then(|v| as_int(v)).unwrap_or(0);
        let lag = kv.get("lag").and_then(|v| as_int(v));
        out.push(GroupInfo {
            name,
            pending,
            last_delivered: last,
            lag,
        });
    }
    out
}

/// The lowest id any group still needs, given each group's oldest pending id (when it has
/// pending entries). None when a group's position cannot be read: then nothing is trimmed.
pub(crate) fn trim_floor(groups: &[(GroupInfo, Option<String>)]) -> Option<String> {
    let mut floor: Option<((u64, u64), String)> = None;
    for (g, oldest_pending) in groups {
        let min = match oldest_pending {
            Some(id) if g.pending > 0 => id.clone(),
            _ if g.pending > 0 => return None,
            _ => next_stream_id(&g.last_delivered)?,
        };
        let key = parse_stream_id(&min)?;
        if floor.as_ref().map(|f| key < f.0).unwrap_or(true) {
            floor = Some((key, min));
        }
    }
    floor.map(|f| f.1)
}

/// The pause before the next look at a stream: the base interval while it holds entries; an
/// empty one (nothing to trim, nothing pending) is looked at less and less often, up to
/// IDLE_TICKS_MAX intervals apart, so thousands of idle slot streams cost a primary little.
fn next_tick(holds: bool, tick: Duration, base: Duration) -> Duration {
    if holds {
        base
    } else {
        (tick * 2).min(base * IDLE_TICKS_MAX)
    }
}

impl Keeper {
    pub(crate) fn new(
        url: &str,
        stream: &str,
        redis: &RedisOpts,
        batch: &BatchOpts,
        stop: CancellationToken,
        conns: NodeConns,
    ) -> Keeper {
        Keeper {
            url: url.to_string(),
            stream: stream.to_string(),
            group: redis.redis_group.clone(),
            trim_every: (redis.trim_interval_ms > 0)
                .then(|| Duration::from_millis(redis.trim_interval_ms)),
            sample_every: Duration::from_millis(redis.stream_metrics_interval_ms.max(100)),
            backoff_ms: (batch.retry_backoff_ms, batch.retry_backoff_cap_ms),
            stop,
            conns,
        }
    }

    pub(crate) async fn run(self) {
        let mut attempt = 0u32;
        loop {
            match self.run_connected().await {
                Ok(()) => return,
                // the slot moved away: the keeper on its new owner takes over
                Err(e) if e.code() == Some("MOVED") => return,
                Err(e) => {
                    self.conns.renew_after(&self.url, &e).await;
                    let wait = backoff_ms(self.backoff_ms.0, self.backoff_ms.1, attempt);
                    tracing::warn!(stream = %self.stream, url = %self.url, error = %e, retry_in_ms = wait,
                        "stream housekeeping failed");
                    if self.stop.is_cancelled() {
                        return;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
                        _ = self.stop.cancelled() => return,
                    }
                    attempt = attempt.saturating_add(1);
                }
            }
        }
    }

    async fn run_connected(&self) -> RResult<()> {
        let mut conn = self.conns.get(&self.url).await?;
        let mut last_trim = Instant::now();
        let base = self
            .trim_every
            .map(|t| t.min(self.sample_every))
            .unwrap_or(self.sample_every);
        let mut tick = base;
        loop {
            let holds = self.sample(&mut conn).await?;
            if let Some(every) = self.trim_every {
                if holds && last_trim.elapsed() >= every {
                    self.trim(&mut conn).await?;
                    last_trim = Instant::now();
                }
            }
            tick = next_tick(holds, tick, base);
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = self.stop.cancelled() => {
                    if self.trim_every.is_some() {
                        self.trim(&mut conn).await?;
                    }
                    self.sample(&mut conn).await?;
                    return Ok(());
                }
            }
        }
    }

    async fn groups(&self, conn: &mut MultiplexedConnection) -> RResult<Vec<GroupInfo>> {
        let r: RResult<Value> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&self.stream)
            .query_async(conn)
            .await;
        match r {
            Ok(v) => Ok(parse_groups(&v)),
            // the stream does not exist yet (the reader creates it with its group)
            Err(e) if e.to_string().contains("no such key") => Ok(vec![]),
            Err(e) => Err(e),
        }
    }

    async fn oldest_pending(
        &self,
        conn: &mut MultiplexedConnection,
        group: &str,
    ) -> RResult<Option<String>> {
        let p: Value = redis::cmd("XPENDING")
            .arg(&self.stream)
            .arg(group)
            .query_async(conn)
            .await?;
        Ok(as_array(&p).get(1).and_then(as_str))
    }

    /// XTRIM MINID to the lowest id any group still needs. Never removes an entry a group has
    /// not acknowledged.
    ///
    /// The bound is computed from replies read one after the other (XINFO GROUPS, then each
    /// group's XPENDING), then used by a later XTRIM: a group created meanwhile (XGROUP CREATE
    /// at an old id), moved back (XGROUP SETID) or whose position was misread would lose
    /// entries it has not acknowledged. With ACKED (Redis 8.2+) the server checks every
    /// group's pending list and last-delivered id in the same atomic XTRIM and keeps any
    /// entry one of them has not acknowledged; the MINID bound stays, so a group destroyed
    /// meanwhile (an XTRIM ACKED on a stream without groups removes anything) cannot widen
    /// the trim either. Servers without it (Redis 7.x, Valkey) keep the bound alone.
    async fn trim(&self, conn: &mut MultiplexedConnection) -> RResult<()> {
        let groups = self.groups(conn).await?;
        if groups.is_empty() {
            return Ok(());
        }
        let mut with_pending = Vec::with_capacity(groups.len());
        for g in groups {
            let oldest = if g.pending > 0 {
                self.oldest_pending(conn, &g.name).await?
            } else {
                None
            };
            with_pending.push((g, oldest));
        }
        let Some(minid) = trim_floor(&with_pending) else {
            return Ok(());
        };
        let acked = has_acked_trim(&self.url, conn).await?;
        let mut xtrim = redis::cmd("XTRIM");
        xtrim.arg(&self.stream).arg("MINID").arg(&minid);
        if acked {
            xtrim.arg("ACKED");
        }
        match xtrim.query_async::<Value>(conn).await {
            Ok(_) => Ok(()),
            Err(e) => {
                if acked && e.code() == Some("ERR") {
                    // another server behind the same URL now (a downgrade): asked again next time
                    let mut map = ACKED_TRIM.lock().unwrap_or_else(|e| e.into_inner());
                    map.remove(&self.url);
                }
                Err(e)
            }
        }
    }

    /// Length, pending entries, unread entries and the age of the oldest unacknowledged entry.
    /// Returns whether the stream holds any entry.
    async fn sample(&self, conn: &mut MultiplexedConnection) -> RResult<bool> {
        let len: i64 = redis::cmd("XLEN")
            .arg(&self.stream)
            .query_async(conn)
            .await?;
        let label = [self.stream.as_str()];
        metrics::STREAM_LEN.with_label_values(&label).set(len);
        let Some(g) = self
            .groups(conn)
            .await?
            .into_iter()
            .find(|g| g.name == self.group)
        else {
            metrics::STREAM_UNREAD.with_label_values(&label).set(len);
            return Ok(len > 0);
        };
        metrics::PENDING.with_label_values(&label).set(g.pending);
        if let Some(lag) = g.lag {
            metrics::STREAM_UNREAD.with_label_values(&label).set(lag);
        }
        let oldest = if g.pending > 0 {
            self.oldest_pending(conn, &self.group).await?
        } else {
            let v: Value = redis::cmd("XRANGE")
                .arg(&self.stream)
                .arg(format!("({}", g.last_delivered))
                .arg("+")
                .arg("COUNT")
                .arg(1)
                .query_async(conn)
                .await?;
            parse_entries(&v).into_iter().next().map(|e| e.id)
        };
        let age_s = oldest
            .and_then(|id| parse_stream_id(&id))
            .map(|(ms, _)| {
                (now_ms() - i64::try_from(ms).unwrap_or(i64::MAX)).max(0) as f64 / 1000.0
            })
            .unwrap_or(0.0);
        metrics::STREAM_LAG.with_label_values(&label).set(age_s);
        Ok(len > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(name: &str, pending: i64, last: &str) -> GroupInfo {
        GroupInfo {
            name: name.into(),
            pending,
            last_delivered: last.into(),
            lag: None,
        }
    }

    #[test]
    fn an_empty_stream_is_looked_at_less_often_and_a_busy_one_at_once() {
        let base = Duration::from_secs(1);
        let mut tick = base;
        let mut seen = vec![];
        for _ in 0..6 {
            tick = next_tick(false, tick, base);
            seen.push(tick.as_secs());
        }
        assert_eq!(seen, vec![2, 4, 8, 10, 10, 10]);
        assert_eq!(next_tick(true, tick, base), base);
    }

    #[test]
    fn acked_is_found_in_command_docs_in_both_protocols() {
        let b = crate::redis_io::bulk;
        let arg = |name: &str| {
            Value::Array(vec![
                b("name"),
                b(&name.to_lowercase()),
                b("type"),
                b("pure-token"),
                b("token"),
                b(name),
            ])
        };
        let resp2 = |args: Vec<Value>| {
            Value::Array(vec![
                b("xtrim"),
                Value::Array(vec![
                    b("summary"),
                    b("Deletes messages from the beginning of a stream."),
                    b("arguments"),
                    Value::Array(args),
                ]),
            ])
        };
        let redis82 = resp2(vec![arg("MINID"), arg("KEEPREF"), arg("ACKED")]);
        assert!(has_token(&redis82, "ACKED"));
        assert!(!has_token(
            &resp2(vec![arg("MINID"), arg("LIMIT")]),
            "ACKED"
        ));
        // the word in a text (history, summary) is not an argument
        let history = Value::Array(vec![b("history"), b("Added the ACKED option.")]);
        assert!(!has_token(&resp2(vec![history]), "ACKED"));
        let resp3 = Value::Map(vec![(
            b("xtrim"),
            Value::Map(vec![(
                b("arguments"),
                Value::Array(vec![Value::Map(vec![
                    (b("name"), b("acked")),
                    (b("token"), b("ACKED")),
                ])]),
            )]),
        )]);
        assert!(has_token(&resp3, "ACKED"));
    }

    #[test]
    fn floor_is_the_lowest_position_any_group_needs() {
        // nothing pending: everything up to last-delivered is acknowledged
        assert_eq!(
            trim_floor(&[(g("a", 0, "5-3"), None)]).as_deref(),
            Some("5-4")
        );
        // pending entries hold the floor at the oldest of them
        assert_eq!(
            trim_floor(&[(g("a", 2, "9-0"), Some("4-1".into()))]).as_deref(),
            Some("4-1")
        );
        // the slowest group wins
        let two = [
            (g("a", 0, "9-0"), None),
            (g("b", 1, "9-0"), Some("7-0".into())),
        ];
        assert_eq!(trim_floor(&two).as_deref(), Some("7-0"));
        // unknown position: trim nothing
        assert_eq!(trim_floor(&[(g("a", 3, "9-0"), None)]), None);
        assert_eq!(trim_floor(&[(g("a", 0, "garbage"), None)]), None);
        assert_eq!(trim_floor(&[]), None);
    }

    #[test]
    fn parses_xinfo_groups_resp2() {
        let b = crate::redis_io::bulk;
        let v = Value::Array(vec![Value::Array(vec![
            b("name"),
            b("tally-shipper"),
            b("consumers"),
            Value::Int(1),
            b("pending"),
            Value::Int(4),
            b("last-delivered-id"),
            b("10-2"),
            b("entries-read"),
            Value::Int(6),
            b("lag"),
            Value::Int(3),
        ])]);
        assert_eq!(
            parse_groups(&v),
            vec![GroupInfo {
                name: "tally-shipper".into(),
                pending: 4,
                last_delivered: "10-2".into(),
                lag: Some(3)
            }]
        );
        let nil_lag = Value::Array(vec![Value::Array(vec![
            b("name"),
            b("g"),
            b("pending"),
            Value::Int(0),
            b("last-delivered-id"),
            b("0-0"),
            b("lag"),
            Value::Nil,
        ])]);
        assert_eq!(parse_groups(&nil_lag)[0].lag, None);
    }
}
