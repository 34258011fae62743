//! The ack path: XACK of the entries a batch carried, once the next stage holds them durably.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio_util::sync::CancellationToken;

use crate::cli::BatchOpts;
use crate::redis_io::{query_asking, redirect_url, NodeConns, RResult};
use crate::retry::backoff_ms;

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
