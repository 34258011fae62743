//! The reader of one primary: every log stream the node holds, on one connection, read
//! blocking (one stream) or swept (several), each stream's entries handed over as a batch.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::Value;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::ack::{AckTarget, InFlight};
use super::batch::{entry_to_record, Batch, Downstream};
use super::cursor::{parse_xread, sync_cursors, Cursor, Read};
use crate::cli::{BatchOpts, RedisOpts};
use crate::event::Record;
use crate::obs::health::Wait;
use crate::obs::metrics;
use crate::redis_io::{connect, query_asking, redirect_url, Entry, NodeConns, RResult};
use crate::retry::backoff_ms;

/// Most entries one sweep round trip may bring back: a round trip reads this many entries
/// divided by --batch-size streams (within the two bounds below).
const SWEEP_ENTRIES_MAX: usize = 50_000;
const SWEEP_STREAMS_MIN: usize = 16;
const SWEEP_STREAMS_MAX: usize = 512;

/// Streams read in one pipelined round trip of a sweep.
fn sweep_streams(batch_size: usize) -> usize {
    (SWEEP_ENTRIES_MAX / batch_size.max(1)).clamp(SWEEP_STREAMS_MIN, SWEEP_STREAMS_MAX)
}

/// Send `cmds` in one round trip; each command's reply or error on its own.
async fn pipelined(
    conn: &mut MultiplexedConnection,
    cmds: &[redis::Cmd],
) -> RResult<Vec<RResult<Value>>> {
    let mut p = redis::pipe();
    p.ignore_errors();
    for c in cmds {
        p.add_command(c.clone());
    }
    p.query_async(conn).await
}

/// The reader of one primary: every log stream the node holds, on one connection. A node
/// with one stream (standalone) is read with blocking XREADGROUP; a node with several (a
/// cluster primary, one stream per written slot) is swept: one pipelined round of
/// non-blocking reads, then a pause of --poll-min-ms doubling up to --block-ms while every
/// stream stays empty. XREADGROUP cannot block on streams of different slots.
pub(super) struct NodeReader<D> {
    pub(super) url: String,
    pub(super) redis: RedisOpts,
    pub(super) batch: BatchOpts,
    pub(super) downstream: Arc<D>,
    pub(super) shutdown: CancellationToken,
    /// the node's shared connection (acks, housekeeping, ASK targets)
    pub(super) conns: NodeConns,
    /// the streams the node holds, as the last discovery found them
    pub(super) streams: watch::Receiver<Vec<String>>,
    /// asks for a discovery now (a slot moved)
    pub(super) rediscover: Arc<Notify>,
    /// /healthz: a request to the node unanswered (kept across a failure and the reconnects
    /// after it until the node answers again)
    pub(super) wait: Arc<Wait>,
}

impl<D: Downstream> NodeReader<D> {
    fn response_timeout(&self) -> Duration {
        Duration::from_millis(self.redis.block_ms + self.batch.batch_wait_ms + 10_000)
    }

    /// How long a blocking read may legitimately take: its BLOCK time, then filling the batch.
    fn read_allowance(&self) -> Duration {
        Duration::from_millis(self.redis.block_ms + self.batch.batch_wait_ms)
    }

    /// `request` to the node, its wait registered for /healthz; ended when it succeeds, kept
    /// when it fails (the retry after a reconnect keeps its start).
    async fn request<T>(&self, request: impl Future<Output = RResult<T>>) -> RResult<T> {
        self.wait.begin(Duration::ZERO);
        let r = request.await;
        if r.is_ok() {
            self.wait.end();
        }
        r
    }

    fn claim_every(&self) -> Duration {
        Duration::from_millis(self.redis.claim_interval_ms)
    }

    fn read_cmd(
        &self,
        stream: &str,
        read: &Read,
        count: usize,
        block_ms: Option<u64>,
    ) -> redis::Cmd {
        let (group, consumer) = (&self.redis.redis_group, &self.redis.consumer);
        if let Read::Claim(cursor) = read {
            let mut c = redis::cmd("XAUTOCLAIM");
            c.arg(stream)
                .arg(group)
                .arg(consumer)
                .arg(self.redis.claim_idle_ms)
                .arg(cursor)
                .arg("COUNT")
                .arg(count.max(1));
            return c;
        }
        let mut c = redis::cmd("XREADGROUP");
        c.arg("GROUP")
            .arg(group)
            .arg(consumer)
            .arg("COUNT")
            .arg(count.max(1));
        if let Some(b) = block_ms {
            c.arg("BLOCK").arg(b.max(1));
        }
        let from = match read {
            Read::Pending(from) => from.as_str(),
            _ => ">",
        };
        c.arg("STREAMS").arg(stream).arg(from);
        c
    }

    fn group_cmd(&self, stream: &str) -> redis::Cmd {
        let mut c = redis::cmd("XGROUP");
        c.arg("CREATE")
            .arg(stream)
            .arg(&self.redis.redis_group)
            .arg("0")
            .arg("MKSTREAM");
        c
    }

    /// One stream's reply, redirections followed. ASK: the stream's key already sits on the
    /// importing node of a slot being migrated; the command goes there after ASKING. MOVED:
    /// the slot has a new owner; the stream is dropped here and a discovery is asked for,
    /// which hands it to that node's reader.
    async fn follow(
        &self,
        c: &mut Cursor,
        cmd: &redis::Cmd,
        reply: RResult<Value>,
    ) -> RResult<Value> {
        let Err(e) = reply else {
            c.asked = false;
            return reply;
        };
        match redirect_url(&self.url, &e) {
            Some((target, true)) => {
                c.asked = true;
                let mut conn = self.conns.get(&target).await?;
                let r = query_asking(&mut conn, cmd, true).await;
                if let Err(e) = &r {
                    self.conns.renew_after(&target, e).await;
                }
                r
            }
            Some((target, false)) => {
                tracing::info!(stream = %c.stream, node = %self.url, to = %target, "stream's slot moved; reading it on its new owner");
                c.moved = true;
                self.rediscover.notify_one();
                Err(e)
            }
            None => Err(e),
        }
    }

    /// A read of one stream failed with a reply error: the other streams go on.
    fn stream_error(&self, c: &mut Cursor, e: &redis::RedisError) {
        if c.moved {
            return;
        }
        if e.code() == Some("NOGROUP") {
            c.group_ready = false; // stream or group deleted: created again at the next sweep
            return;
        }
        tracing::warn!(stream = %c.stream, node = %self.url, error = %e, "reading the stream failed; retrying at the next sweep");
    }

    /// Create the consumer group of every stream that may lack one (one round trip).
    async fn ensure_groups(
        &self,
        conn: &mut MultiplexedConnection,
        part: &mut [Cursor],
    ) -> RResult<()> {
        let idx: Vec<usize> = (0..part.len())
            .filter(|&i| !part[i].group_ready && !part[i].moved)
            .collect();
        if idx.is_empty() {
            return Ok(());
        }
        let cmds: Vec<redis::Cmd> = idx
            .iter()
            .map(|&i| self.group_cmd(&part[i].stream))
            .collect();
        let replies = self.request(pipelined(conn, &cmds)).await?;
        for ((&i, cmd), reply) in idx.iter().zip(&cmds).zip(replies) {
            let c = &mut part[i];
            match self.follow(c, cmd, reply).await {
                Ok(_) => {
                    tracing::info!(stream = %c.stream, group = %self.redis.redis_group, "created consumer group");
                    c.group_ready = true;
                }
                Err(e) if e.code() == Some("BUSYGROUP") => c.group_ready = true,
                Err(e) => self.stream_error(c, &e),
            }
        }
        Ok(())
    }

    /// One pipelined round over the node's streams: one read each (own pending, a claim or
    /// new entries; never blocking), each stream's entries handed over as one batch. Returns
    /// how many entries were handed over.
    async fn sweep(
        &self,
        conn: &mut MultiplexedConnection,
        cursors: &mut [Cursor],
    ) -> RResult<usize> {
        let mut total = 0;
        for part in cursors.chunks_mut(sweep_streams(self.batch.batch_size)) {
            self.ensure_groups(conn, part).await?;
            let reads: Vec<(usize, Read)> = (0..part.len())
                .filter(|&i| part[i].group_ready && !part[i].moved)
                .map(|i| (i, part[i].next_read(self.claim_every())))
                .collect();
            if reads.is_empty() {
                continue;
            }
            let cmds: Vec<redis::Cmd> = reads
                .iter()
                .map(|(i, r)| self.read_cmd(&part[*i].stream, r, self.batch.batch_size, None))
                .collect();
            let replies = self.request(pipelined(conn, &cmds)).await?;
            for (((i, read), cmd), reply) in reads.iter().zip(&cmds).zip(replies) {
                let c = &mut part[*i];
                match self.follow(c, cmd, reply).await {
                    Ok(v) => {
                        let entries = c.advance(read, &v);
                        total += entries.len();
                        self.hand_over(c, entries).await;
                    }
                    Err(e) => self.stream_error(c, &e),
                }
            }
        }
        Ok(total)
    }

    /// The one stream of a standalone server: block for the first new entry, then keep
    /// filling the batch for up to --batch-wait-ms. The reader's wait ends when the last read
    /// is answered; a fill read that fails keeps it running.
    async fn read_blocking(
        &self,
        conn: &mut MultiplexedConnection,
        c: &mut Cursor,
    ) -> RResult<Vec<Entry>> {
        let size = self.batch.batch_size.max(1);
        let cmd = self.read_cmd(&c.stream, &Read::New, size, Some(self.redis.block_ms));
        self.wait.begin(self.read_allowance());
        let first = cmd.query_async(conn).await;
        if first.as_ref().is_err_and(|e| e.code() == Some("ASK")) {
            // read by sweeps: a blocking read must not hold the target's shared connection
            c.asked = true;
            self.wait.end();
            return Ok(vec![]);
        }
        let mut out = match self.follow(c, &cmd, first).await {
            Ok(v) => parse_xread(&v),
            Err(e) if c.moved || e.code() == Some("NOGROUP") => {
                self.stream_error(c, &e);
                self.wait.end();
                return Ok(vec![]);
            }
            Err(e) => return Err(e),
        };
        let deadline = Instant::now() + Duration::from_millis(self.batch.batch_wait_ms);
        while !out.is_empty() && out.len() < size && !self.shutdown.is_cancelled() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let more_cmd = self.read_cmd(
                &c.stream,
                &Read::New,
                size - out.len(),
                Some(left.as_millis().max(1) as u64),
            );
            self.wait.again(left);
            // a failed read ends the batch; the next read meets the error again
            let Ok(more) = more_cmd.query_async(conn).await.map(|v| parse_xread(&v)) else {
                return Ok(out);
            };
            if more.is_empty() {
                break;
            }
            out.extend(more);
        }
        self.wait.end();
        Ok(out)
    }

    /// Reads until shutdown, reconnecting with backoff after a connection error. The batches
    /// handed over are the downstream's to finish (`Downstream::finish`).
    pub(super) async fn run(self) {
        let (mut cursors, mut attempt) = (Vec::new(), 0u32);
        while !self.shutdown.is_cancelled() {
            let Err(e) = self.run_connected(&mut cursors, &mut attempt).await else {
                break;
            };
            self.conns.renew_after(&self.url, &e).await;
            let wait = backoff_ms(
                self.batch.retry_backoff_ms,
                self.batch.retry_backoff_cap_ms,
                attempt,
            );
            metrics::RETRIES.inc();
            tracing::warn!(node = %self.url, streams = cursors.len(), error = %e, retry_in_ms = wait, "redis error");
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
                _ = self.shutdown.cancelled() => break,
            }
            attempt = attempt.saturating_add(1);
        }
    }

    /// One stream's entries, as a batch held in flight, to the downstream (waits while it is
    /// full).
    async fn hand_over(&self, c: &Cursor, entries: Vec<Entry>) {
        if entries.is_empty() {
            return;
        }
        metrics::EVENTS_READ.inc_by(entries.len() as u64);
        let ids: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
        let records: Vec<Record> = entries
            .into_iter()
            .map(|e| entry_to_record(&c.stream, e))
            .collect();
        let target = AckTarget {
            url: self.url.clone(),
            stream: c.stream.clone(),
            group: self.redis.redis_group.clone(),
            conns: self.conns.clone(),
            held: c.held.clone(),
        };
        let in_flight = InFlight::hold(Arc::new(target), ids);
        self.downstream.take(Batch { records, in_flight }).await;
    }

    async fn run_connected(&self, cursors: &mut Vec<Cursor>, attempt: &mut u32) -> RResult<()> {
        // a connection is no answer yet (TCP may connect to a node that answers nothing):
        // the wait ends with the first reply read on it
        self.wait.begin(Duration::ZERO);
        let mut conn = connect(&self.url, self.response_timeout()).await?;
        cursors.iter_mut().for_each(Cursor::reset);
        let mut streams = self.streams.clone();
        let idle_min_ms = self.redis.poll_min_ms.max(1);
        let mut idle_ms = idle_min_ms;
        sync_cursors(cursors, &streams.borrow_and_update());
        let mut changed = false;
        while !self.shutdown.is_cancelled() {
            // a stream dropped after MOVED comes back only if a discovery gives it back
            if std::mem::take(&mut changed) || streams.has_changed().unwrap_or(false) {
                sync_cursors(cursors, &streams.borrow_and_update());
            }
            if cursors.is_empty() {
                self.wait.end(); // nothing to ask the node
            }
            let (got, waited) = match cursors.as_mut_slice() {
                [c] if c.group_ready
                    && !c.asked
                    && c.next_read(self.claim_every()) == Read::New =>
                {
                    let entries = self.read_blocking(&mut conn, c).await?;
                    let n = entries.len();
                    self.hand_over(c, entries).await;
                    (n, !c.asked)
                }
                _ => (self.sweep(&mut conn, cursors).await?, false),
            };
            *attempt = 0;
            cursors.retain(|c| !c.moved);
            if got > 0 || waited {
                idle_ms = idle_min_ms;
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(idle_ms)) => {}
                r = streams.changed() => match r {
                    Ok(()) => changed = true,
                    Err(_) => return Ok(()),
                },
                _ = self.shutdown.cancelled() => {}
            }
            idle_ms = (idle_ms * 2).min(self.redis.block_ms.max(idle_min_ms));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sweep_round_trip_is_bounded_in_entries_and_streams() {
        assert_eq!(sweep_streams(2_000), 25);
        assert_eq!(sweep_streams(1), SWEEP_STREAMS_MAX);
        assert_eq!(sweep_streams(1_000_000), SWEEP_STREAMS_MIN);
        assert_eq!(sweep_streams(0), SWEEP_STREAMS_MAX);
    }
}
