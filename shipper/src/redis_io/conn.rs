//! Connections to the Redis nodes: one per reader (blocking reads) and one shared per node
//! for everything else (`NodeConns`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::io::tcp::socket2::TcpKeepalive;
use redis::{AsyncConnectionConfig, IntoConnectionInfo, Value};

/// A Redis command's result.
pub(crate) type RResult<T> = Result<T, redis::RedisError>;

/// TCP keepalive on every Redis connection: an idle connection to a server that vanished
/// without closing it (host gone, packets dropped) fails after about IDLE + INTERVAL x PROBES
/// instead of at the next command's response timeout; TCP_USER_TIMEOUT bounds how long sent
/// data may stay unacknowledged. Commands have their own (shorter) response timeouts.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(15);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_PROBES: u32 = 3;
const USER_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) async fn connect(
    url: &str,
    response_timeout: Duration,
) -> RResult<MultiplexedConnection> {
    let info = url.into_connection_info()?;
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    let tcp = info
        .tcp_settings()
        .clone()
        .set_keepalive(keepalive)
        .set_user_timeout(USER_TIMEOUT);
    let client = redis::Client::open(info.set_tcp_settings(tcp))?;
    let cfg = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(response_timeout));
    client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
}

/// Timeout of a command on a node's shared connection (acks, housekeeping: never blocking).
const SHARED_RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// One connection per node for every non-blocking command of every stream the node holds
/// (XACK, housekeeping, commands redirected by ASK): with the node's reader, two connections
/// per node however many slot streams it holds. A task that sees an error on it
/// calls `renew_after`; the next `get` opens a new one.
#[derive(Clone, Default)]
pub(crate) struct NodeConns(Arc<std::sync::Mutex<HashMap<String, SharedConn>>>);

/// A node's shared connection: None until opened, or after a connection error on it. The
/// async lock makes one task connect while the others wait for it.
type SharedConn = Arc<tokio::sync::Mutex<Option<MultiplexedConnection>>>;

impl NodeConns {
    fn slot(&self, url: &str) -> SharedConn {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(url.to_string()).or_default().clone()
    }

    /// The node's shared connection, opened on first use or after `renew` (one connect at a
    /// time per node; other nodes are not held up by a node that does not answer).
    pub(crate) async fn get(&self, url: &str) -> RResult<MultiplexedConnection> {
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
    pub(crate) async fn renew_after(&self, url: &str, e: &redis::RedisError) {
        if e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_timeout()
        {
            *self.slot(url).lock().await = None;
        }
    }
}

/// `cmd` on `conn`, after ASKING when `asking` (one write, so nothing interleaves): the
/// command's own reply or error.
pub(crate) async fn query_asking(
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
