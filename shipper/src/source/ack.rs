//! The ack path: the entries of a batch are held while in flight (`InFlight`, released on
//! drop) and acknowledged (XACK) once the next stage holds them durably.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio_util::sync::CancellationToken;

use crate::cli::BatchOpts;
use crate::obs::health::{Step, Wait};
use crate::redis_io::{query_asking, redirect_url, NodeConns, RResult};
use crate::retry::backoff_ms;

/// Where a stream's entries are acknowledged: the node that holds the stream, the stream, the
/// group, and the ids of it in flight (handed downstream and not acknowledged yet).
pub(crate) struct AckTarget {
    pub(crate) url: String,
    pub(crate) stream: String,
    pub(crate) group: String,
    pub(crate) conns: NodeConns,
    /// ids being delivered (never re-read or re-claimed meanwhile); shared with the cursor
    pub(crate) held: Arc<Mutex<HashSet<String>>>,
}

impl AckTarget {
    fn held(&self) -> MutexGuard<'_, HashSet<String>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Entries of one stream handed downstream: held (their reader neither re-reads nor claims
/// them) for as long as this guard lives. `ack` acknowledges them once the next stage holds
/// them durably; a guard dropped without it (a delivery that failed, a writer gone, a task
/// that panicked) leaves them pending in the group, to be read again. Either way the ids
/// are released on drop: none can be forgotten.
pub(crate) struct InFlight {
    target: Arc<AckTarget>,
    ids: Vec<String>,
}

impl InFlight {
    /// Holds `ids` until the guard is dropped.
    pub(crate) fn hold(target: Arc<AckTarget>, ids: Vec<String>) -> InFlight {
        target.held().extend(ids.iter().cloned());
        InFlight { target, ids }
    }

    /// The same entries under `n` guards: the i-th id goes to guard `part_of(i)` (at most
    /// `n - 1`). Nothing is released.
    pub(crate) fn split(mut self, n: usize, part_of: impl Fn(usize) -> usize) -> Vec<InFlight> {
        let n = n.max(1);
        let mut parts: Vec<InFlight> = (0..n)
            .map(|_| InFlight {
                target: self.target.clone(),
                ids: Vec::new(),
            })
            .collect();
        for (i, id) in std::mem::take(&mut self.ids).into_iter().enumerate() {
            parts[part_of(i).min(n - 1)].ids.push(id);
        }
        parts
    }

    /// XACK the entries (the next stage holds them durably), then release them.
    pub(crate) async fn ack(self, retry: &BatchOpts, shutdown: &CancellationToken) {
        if self.ids.is_empty() {
            return;
        }
        ack_with_retry(&self.target, retry, shutdown, &self.ids).await;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.ids.is_empty() {
            return;
        }
        let mut held = self.target.held();
        for id in &self.ids {
            held.remove(id);
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
async fn ack_with_retry(
    ack: &AckTarget,
    batch: &BatchOpts,
    shutdown: &CancellationToken,
    ids: &[String],
) {
    // /healthz: waiting for Redis until the XACK succeeds
    let _wait = Wait::start(Step::Ack);
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
