//! Redis replies and connections shared by the stages that talk to the log streams: the
//! source (readers), the stream keeper (housekeeping) and the ack path (writers). It depends
//! on no stage, so none of them imports another through it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Value};
use tokio_util::sync::CancellationToken;

use crate::config::{backoff_ms, BatchOpts};

type RResult<T> = Result<T, redis::RedisError>;

#[derive(Debug, Clone)]
pub struct Entry {
    pub id: String,
    /// None when the entry was deleted while pending
    pub fields: Option<Vec<(String, Vec<u8>)>>,
}

pub(crate) fn as_str(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        Value::Okay => Some("OK".into()),
        _ => None,
    }
}

pub(crate) fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => as_str(other)?.parse().ok(),
    }
}

pub(crate) fn as_array(v: &Value) -> &[Value] {
    match v {
        Value::Array(a) | Value::Set(a) => a,
        _ => &[],
    }
}

/// Parse a list of stream entries `[[id, [f, v, ...]], ...]`.
pub fn parse_entries(v: &Value) -> Vec<Entry> {
    let mut out = Vec::new();
    for e in as_array(v) {
        let parts = as_array(e);
        let Some(id) = parts.first().and_then(as_str) else {
            continue;
        };
        let fields = match parts.get(1) {
            Some(Value::Array(kv)) => {
                let mut f = Vec::new();
                for pair in kv.chunks(2) {
                    if let [k, v] = pair {
                        let val = match v {
                            Value::BulkString(b) => b.clone(),
                            other => as_str(other).unwrap_or_default().into_bytes(),
                        };
                        f.push((as_str(k).unwrap_or_default(), val));
                    }
                }
                Some(f)
            }
            Some(Value::Map(kv)) => Some(
                kv.iter()
                    .map(|(k, v)| {
                        (
                            as_str(k).unwrap_or_default(),
                            as_str(v).unwrap_or_default().into_bytes(),
                        )
                    })
                    .collect(),
            ),
            _ => None,
        };
        out.push(Entry { id, fields });
    }
    out
}

pub async fn connect(url: &str, response_timeout: Duration) -> RResult<MultiplexedConnection> {
    let client = redis::Client::open(url)?;
    let cfg = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(response_timeout));
    client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
}

/// `INFO cluster` says `cluster_enabled:1` on a cluster node.
/// Timeout of a command on a node's shared connection (acks, housekeeping: never blocking).
const SHARED_RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// One connection per node for every non-blocking command of every stream the node holds
/// (XACK, housekeeping, commands redirected by ASK): with the node's reader, two connections
/// per node however many slot streams it holds. A task that sees an error on it
/// calls `renew`; the next `get` opens a new one.
#[derive(Clone, Default)]
pub struct NodeConns(
    Arc<std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<MultiplexedConnection>>>>>>,
);

impl NodeConns {
    fn slot(&self, url: &str) -> Arc<tokio::sync::Mutex<Option<MultiplexedConnection>>> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(url.to_string()).or_default().clone()
    }

    /// The node's shared connection, opened on first use or after `renew` (one connect at a
    /// time per node; other nodes are not held up by a node that does not answer).
    pub async fn get(&self, url: &str) -> RResult<MultiplexedConnection> {
        let slot = self.slot(url);
        let mut conn = slot.lock().await;
        if let Some(c) = conn.as_ref() {
            return Ok(c.clone());
        }
        let c = connect(url, SHARED_RESPONSE_TIMEOUT).await?;
        *conn = Some(c.clone());
        Ok(c)
    }

    /// Forget the node's shared connection after a connection error on it (a reply error,
    /// such as MOVED, leaves it in use).
    pub async fn renew_after(&self, url: &str, e: &redis::RedisError) {
        if e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_timeout()
        {
            *self.slot(url).lock().await = None;
        }
    }
}

/// The seed URL with another host and port (same scheme, credentials and options). An IPv6
/// host (as CLUSTER SLOTS and redirections give it, without brackets) is bracketed.
pub fn node_url(seed: &str, host: &str, port: u16) -> Option<String> {
    let mut u = redis::parse_redis_url(seed)?;
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    u.set_host(Some(&host)).ok()?;
    u.set_port(Some(port)).ok()?;
    Some(u.to_string())
}

/// Where a MOVED or ASK reply sends the command: the node's URL (credentials and options of
/// `from`) and whether it is an ASK (one command, after ASKING). None for any other error.
pub fn redirect_url(from: &str, e: &redis::RedisError) -> Option<(String, bool)> {
    let ask = match e.code() {
        Some("ASK") => true,
        Some("MOVED") => false,
        _ => return None,
    };
    let (addr, _slot) = e.redirect_node()?;
    let (host, port) = addr.rsplit_once(':')?;
    let url = node_url(from, host, port.parse().ok()?)?;
    crate::metrics::REDIRECTS
        .with_label_values(&[if ask { "ask" } else { "moved" }])
        .inc();
    Some((url, ask))
}

/// Where the entries of a batch are acknowledged once they are durable downstream.
#[derive(Clone)]
pub struct AckTarget {
    pub url: String,
    pub stream: String,
    pub group: String,
    pub conns: NodeConns,
    /// ids being delivered (never re-read or re-claimed meanwhile)
    pub held: Arc<Mutex<HashSet<String>>>,
}

impl AckTarget {
    pub fn hold(&self, ids: &[String]) {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(ids.iter().cloned());
    }

    pub fn release(&self, ids: &[String]) {
        let mut h = self.held.lock().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            h.remove(id);
        }
    }
}

/// Redirections an XACK follows before it gives up (the entries are then re-delivered by the
/// stream's new owner and deduplicated downstream).
const ACK_REDIRECTS_MAX: u32 = 5;

/// The one ack path. The batch is durable downstream; XACK must not be lost to a blip, so it
/// is retried (on a renewed connection if needed). It follows the stream when its slot moves:
/// MOVED sends it to the new owner, ASK to the importing node after ASKING (the stream moved
/// with its group and pending entries). If we die first, the entries are re-shipped and
/// deduplicated.
pub async fn ack_with_retry(
    ack: &AckTarget,
    batch: &BatchOpts,
    shutdown: &CancellationToken,
    ids: &[String],
) {
    let (mut url, mut asking) = (ack.url.clone(), false);
    let (mut attempt, mut hops) = (0u32, 0u32);
    loop {
        let r = match ack.conns.get(&url).await {
            Ok(mut conn) => xack(&mut conn, ack, ids, asking).await,
            Err(e) => Err(e),
        };
        let Err(e) = r else { return };
        if let Some((target, ask)) = redirect_url(&url, &e) {
            hops += 1;
            if hops > ACK_REDIRECTS_MAX {
                tracing::info!(stream = %ack.stream, count = ids.len(), "XACK redirected too often; the stream's owner re-delivers these entries");
                return;
            }
            (url, asking) = (target, ask);
            continue;
        }
        ack.conns.renew_after(&url, &e).await;
        let wait = backoff_ms(batch.retry_backoff_ms, batch.retry_backoff_cap_ms, attempt);
        tracing::warn!(stream = %ack.stream, error = %e, retry_in_ms = wait, "XACK failed, retrying");
        tokio::time::sleep(Duration::from_millis(wait)).await;
        attempt = attempt.saturating_add(1);
        if attempt > 20 && shutdown.is_cancelled() {
            tracing::warn!(stream = %ack.stream, "giving up XACK at shutdown; entries will be re-shipped (deduped)");
            return;
        }
    }
}

async fn xack(
    conn: &mut MultiplexedConnection,
    ack: &AckTarget,
    ids: &[String],
    asking: bool,
) -> RResult<()> {
    let mut cmd = redis::cmd("XACK");
    cmd.arg(&ack.stream).arg(&ack.group).arg(ids);
    query_asking(conn, &cmd, asking).await.map(drop)
}

/// `cmd` on `conn`, after ASKING when `asking` (one write, so nothing interleaves): the
/// command's own reply or error.
pub async fn query_asking(
    conn: &mut MultiplexedConnection,
    cmd: &redis::Cmd,
    asking: bool,
) -> RResult<Value> {
    if !asking {
        return cmd.query_async(conn).await;
    }
    let mut p = redis::pipe();
    p.ignore_errors().cmd("ASKING").add_command(cmd.clone());
    let mut replies: Vec<RResult<Value>> = p.query_async(conn).await?;
    replies.pop().unwrap_or(Ok(Value::Nil))
}

/// A bulk-string reply, for the tests of every module that parses replies.
#[cfg(test)]
pub fn bulk(s: &str) -> Value {
    Value::BulkString(s.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(resp: &str) -> redis::RedisError {
        match redis::parse_redis_value(resp.as_bytes()).and_then(Value::extract_error) {
            Err(e) => e,
            Ok(v) => panic!("not an error: {v:?}"),
        }
    }

    #[test]
    fn redirections_keep_the_seed_credentials() {
        let seed = "redis://u:p@127.0.0.1:7000/0";
        let ask = server_error("-ASK 3999 127.0.0.1:7002\r\n");
        assert_eq!(
            redirect_url(seed, &ask),
            Some(("redis://u:p@127.0.0.1:7002/0".to_string(), true))
        );
        let moved = server_error("-MOVED 3999 ::1:7001\r\n");
        assert_eq!(
            redirect_url(seed, &moved),
            Some(("redis://u:p@[::1]:7001/0".to_string(), false))
        );
        assert_eq!(
            redirect_url(seed, &server_error("-NOGROUP no such group\r\n")),
            None
        );
    }
}
