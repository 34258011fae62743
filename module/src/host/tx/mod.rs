//! One mutating command = one atomic step: idempotency check, backlog check, the data
//! writes, the per-key sequence numbers, one stream entry, the op-id record, and their
//! propagation to replicas/AOF as concrete commands (wrapped by Redis in MULTI/EXEC).
//!
//! In: a parsed request and a `body` that reads through a [`Tx`], decides (`domain::rules`)
//! and queues writes. Out: the reply. The steps, in order:
//! - `admit`: ACL checks on the helper keys, op-id replay or CONFLICT, the op-id bound,
//!   then the stream (WRONGTYPE, BACKLOG) — all before anything is read for the body;
//! - `body`: reads and queued writes through the [`Tx`] (nothing is written yet);
//! - `write`: the event first, then the data keys, the sequence hash, the op-id record,
//!   each propagated as HSET / HDEL / XADD / SET.

mod admit;
mod direct;
mod names;
mod queued;
mod read;
mod write;

use smallvec::SmallVec;

use redis_module::Context;

use crate::domain::error::CmdError;
use crate::domain::event::Event;
use crate::domain::record::Reply;
use crate::domain::request::Canonical;
use crate::host::ffi::{self, Key, RStr};
use crate::host::stats;

pub use admit::Request;
pub use direct::{
    due_index_names, due_members, due_now, hgetall, hold_names, hset_now, slot_may_have_due,
};
pub use names::{check_user_key, kind_field};
pub use queued::FieldName;
pub use read::{kind_is_hash, open_read};

use admit::Admission;
use names::Names;
use queued::{DataKey, Queued};

/// A mutating command's view of Redis while its body runs: reads through open handles,
/// writes queued until the body has decided.
pub struct Tx<'a> {
    pub ctx: &'a Context,
    pub now_ms: i64,
    names: &'a Names,
    queued: Queued,
    /// A key that could not be opened for a queued write: the command fails before writing.
    failed: Option<CmdError>,
}

fn internal_key_table_error() -> CmdError {
    CmdError::err("internal key table error")
}

impl<'a> Tx<'a> {
    fn new(ctx: &'a Context, names: &'a Names) -> Tx<'a> {
        Tx {
            ctx,
            now_ms: ffi::now_ms(),
            names,
            queued: Queued {
                keys: SmallVec::new(),
                seq_key: None,
                seqs: SmallVec::new(),
                due: SmallVec::new(),
            },
            failed: None,
        }
    }

    /// The index of `key` in the key table, opening it for writing on first use.
    fn index_of(&mut self, key: &str) -> Result<usize, CmdError> {
        let keys = &mut self.queued.keys;
        if let Some(i) = keys.iter().position(|k| k.is(key)) {
            return Ok(i);
        }
        let rs = RStr::new(key.as_bytes());
        let handle = Key::open(self.ctx, &rs, true)?;
        keys.push(DataKey {
            rs,
            key: handle,
            writes: SmallVec::new(),
        });
        Ok(keys.len() - 1)
    }

    fn data(&mut self, key: &str) -> Result<&mut DataKey, CmdError> {
        let i = self.index_of(key)?;
        self.queued
            .keys
            .get_mut(i)
            .ok_or_else(internal_key_table_error)
    }

    /// The open handle of a data key (for loaders that read several fields).
    pub fn handle(&mut self, key: &str) -> Result<&Key, CmdError> {
        Ok(&self.data(key)?.key)
    }

    /// Reads one field and hands its bytes to `f` without copying them.
    pub fn hget_with<R>(
        &mut self,
        key: &str,
        field: &[u8],
        f: impl FnOnce(Option<&[u8]>) -> R,
    ) -> Result<R, CmdError> {
        self.hget_rs(key, &RStr::new(field), f)
    }

    /// `hget_with` with the field name given as a RedisModuleString (made once by the caller,
    /// e.g. to be used for the write as well).
    pub fn hget_rs<R>(
        &mut self,
        key: &str,
        field: &RStr,
        f: impl FnOnce(Option<&[u8]>) -> R,
    ) -> Result<R, CmdError> {
        read::field_with(&self.data(key)?.key, field, f)
    }

    pub fn hash_exists(&mut self, key: &str) -> Result<bool, CmdError> {
        kind_is_hash(self.data(key)?.key.kind())
    }

    pub fn set(&mut self, key: &str, field: &[u8], value: Option<&[u8]>) {
        self.set_named(key, FieldName::Owned(RStr::new(field)), value);
    }

    /// `set` with the field name given as a RedisModuleString.
    pub fn set_named(&mut self, key: &str, field: FieldName, value: Option<&[u8]>) {
        let write = (field, value.map(RStr::new));
        match self.data(key) {
            Ok(d) => d.writes.push(write),
            // Not read before and cannot be opened: surfaces before anything is written.
            Err(e) => self.failed = Some(e),
        }
    }

    /// The holds hash of `key` (docs/holds.md), in this command's slot.
    pub fn holds_key(&self, key: &str) -> String {
        self.names.keys.holds(key)
    }

    /// Whether this command's slot (the node, standalone) has a due index, i.e. any hold open
    /// or closed within `tally.hold-tombstone-ms`: when not, no key here has holds, and the
    /// commands skip looking for them (one lookup of a name made once).
    pub fn slot_has_holds(&self) -> bool {
        read::exists(self.ctx, &self.names.due_rs)
    }

    /// Queues adding (or moving) a member of the due index of holds.
    pub fn due_add(&mut self, member: &str, score_ms: i64) {
        // Deadlines are below 2^53 ms, exact in an f64.
        self.queued
            .due
            .push((RStr::new(member.as_bytes()), Some(score_ms as f64)));
    }

    /// Queues removing a member of the due index of holds.
    pub fn due_remove(&mut self, member: &str) {
        self.queued.due.push((RStr::new(member.as_bytes()), None));
    }

    /// The sequence number the next event of `key` carries.
    pub fn next_seq(&mut self, key: &str) -> Result<i64, CmdError> {
        let index = self.index_of(key)?;
        let q = &mut self.queued;
        if q.seq_key.is_none() {
            q.seq_key = Some(Key::open(self.ctx, &self.names.seq_rs, true)?);
        }
        let (Some(seq), Some(data)) = (q.seq_key.as_ref(), q.keys.get(index)) else {
            return Err(internal_key_table_error());
        };
        // The field is the data key's name: reuse its RedisModuleString.
        let parsed = read::field_with(seq, &data.rs, |raw| match raw {
            None => Some(0),
            Some(b) => std::str::from_utf8(b)
                .ok()
                .and_then(|s| s.parse::<i64>().ok()),
        })?;
        let corrupt = || CmdError::wrong_type("the sequence record of this key is corrupt");
        let next = parsed
            .ok_or_else(corrupt)?
            .checked_add(1)
            .ok_or_else(corrupt)?;
        q.seqs.push((index, next));
        Ok(next)
    }
}

/// Runs a mutating command. `body` reads state, decides, queues writes and returns the reply
/// and the event; nothing is written unless it succeeds.
pub fn mutate<'r>(
    ctx: &Context,
    request: Request<'_, impl Canonical>,
    data_keys: &[&str],
    body: impl FnOnce(&mut Tx) -> Result<(Reply, Event<'r>), CmdError>,
) -> Result<Reply, CmdError> {
    let names = Names::for_key(ctx, data_keys.first().copied().unwrap_or_default());
    let names: &Names = &names;
    let (op_rs, fingerprint) = match admit::admit(ctx, &request, names, data_keys)? {
        Admission::Replay(done) => return Ok(done),
        Admission::Go { op_rs, fingerprint } => (op_rs, fingerprint),
    };
    let stream = admit::open_stream(ctx, names)?;

    let mut tx = Tx::new(ctx, names);
    let (reply, mut event) = body(&mut tx)?;
    if let Some(e) = tx.failed.take() {
        return Err(e);
    }
    if op_rs.is_some() {
        event.fp = Some(fingerprint.clone());
        event.reply = Some(reply.clone());
    }

    let mut propagated = write::Propagation::default();
    write::event_and_data(ctx, names, stream, &mut tx.queued, &event, &mut propagated)?;
    write::due_index(ctx, names, &tx.queued.due, &mut propagated)?;
    if let Some(op_rs) = op_rs {
        write::op_record(ctx, &op_rs, &fingerprint, &reply, &mut propagated)?;
    }
    stats::event_appended();
    propagated.result()?;
    Ok(reply)
}

/// A change the module makes on its own (a hold's expiry): `body` as in [`mutate`], without
/// a request (no ACL user, no op-id) and without the `tally.max-backlog` refusal, since an
/// expiry that waits would hold funds past their deadline. One event, propagated like a
/// command's.
pub fn apply<'r>(
    ctx: &Context,
    first_key: &str,
    body: impl FnOnce(&mut Tx) -> Result<Event<'r>, CmdError>,
) -> Result<(), CmdError> {
    let names = Names::for_key(ctx, first_key);
    let names: &Names = &names;
    let stream = admit::open_stream_unbounded(ctx, names)?;
    let mut tx = Tx::new(ctx, names);
    let event = body(&mut tx)?;
    if let Some(e) = tx.failed.take() {
        return Err(e);
    }
    let mut propagated = write::Propagation::default();
    write::event_and_data(ctx, names, stream, &mut tx.queued, &event, &mut propagated)?;
    write::due_index(ctx, names, &tx.queued.due, &mut propagated)?;
    stats::event_appended();
    propagated.result()
}
