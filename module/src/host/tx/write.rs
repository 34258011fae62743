//! The writes of a mutating command, after its body has decided, and their propagation to
//! replicas and the AOF: the event first (if the stream refuses it, nothing has been changed
//! yet), then the data keys (HSET, HDEL), the sequence hash (HSET), the XADD, and the op-id
//! record (SET ... PXAT). A write Redis refuses after the event is logged and counted.

use std::cell::Cell;

use redis_module::raw::{
    REDISMODULE_NOTIFY_HASH, REDISMODULE_NOTIFY_STREAM, REDISMODULE_NOTIFY_STRING,
    REDISMODULE_NOTIFY_ZSET,
};
use redis_module::Context;
use smallvec::SmallVec;

use super::names::{event_field, pxat_word, Names};
use super::queued::{DataKey, Queued};
use crate::domain::error::CmdError;
use crate::domain::event::Event;
use crate::domain::record::{self, Reply};
use crate::domain::text::{EntryId, IntText};
use crate::host::ffi::{self, Argv, Key, RStr};
use crate::host::{config, stats};

/// The event into the stream, then the queued data and sequence writes, then the XADD's
/// propagation.
pub(super) fn event_and_data(
    ctx: &Context,
    names: &Names,
    stream: Key,
    queued: &mut Queued,
    event: &Event,
    propagated: &mut Propagation,
) -> Result<(), CmdError> {
    let json_rs = encode_event(event);
    let seq_key = match queued.seq_key.take() {
        Some(k) => k,
        None => Key::open(ctx, &names.seq_rs, true)?,
    };
    let (ms, sq) = stream.stream_add(event_field(), &json_rs)?;

    for dk in &queued.keys {
        data_key(ctx, dk, propagated)?;
    }
    seq_hash(ctx, names, seq_key, &queued.seqs, &queued.keys, propagated)?;
    // The data keys are closed before the XADD is propagated.
    queued.keys.clear();

    let id = RStr::new(EntryId::new(ms, sq).as_bytes());
    let mut xadd = Argv::of([&names.stream_rs, &id, event_field(), &json_rs]);
    propagated.note(ctx, ffi::replicate(ctx, c"XADD", &mut xadd));
    ffi::notify(ctx, REDISMODULE_NOTIFY_STREAM, c"xadd", &names.stream_rs);
    drop(stream);
    ffi::signal_modified(ctx, &names.stream_rs);
    Ok(())
}

/// The event's JSON as a RedisModuleString, through a buffer reused from command to command
/// (Redis's main thread only).
fn encode_event(event: &Event) -> RStr {
    thread_local! {
        static JSON_BUF: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
    }
    let mut json = JSON_BUF.take();
    json.clear();
    json.reserve(512);
    event.write_json(&mut json);
    let rs = RStr::new(&json);
    JSON_BUF.set(json);
    rs
}

/// One data key's queued writes, propagated as one HSET (and one HDEL for removed fields).
fn data_key(ctx: &Context, dk: &DataKey, propagated: &mut Propagation) -> Result<(), CmdError> {
    if dk.writes.is_empty() {
        return Ok(());
    }
    let mut hset_args = Argv::new();
    hset_args.push(&dk.rs);
    let mut hdel_args = Argv::new();
    for (field, value) in &dk.writes {
        let f = field.rs();
        dk.key
            .hset(f, value.as_ref())
            .map_err(|e| partial_write(ctx, e))?;
        match value {
            Some(v) => {
                hset_args.push(f);
                hset_args.push(v);
            }
            None => {
                if hdel_args.is_empty() {
                    hdel_args.push(&dk.rs);
                }
                hdel_args.push(f);
            }
        }
    }
    if hset_args.len() > 1 {
        propagated.note(ctx, ffi::replicate(ctx, c"HSET", &mut hset_args));
        ffi::notify(ctx, REDISMODULE_NOTIFY_HASH, c"hset", &dk.rs);
    }
    if hdel_args.len() > 1 {
        propagated.note(ctx, ffi::replicate(ctx, c"HDEL", &mut hdel_args));
        ffi::notify(ctx, REDISMODULE_NOTIFY_HASH, c"hdel", &dk.rs);
    }
    ffi::signal_modified(ctx, &dk.rs);
    Ok(())
}

/// The new per-key seqs into the sequence hash, propagated as one HSET.
fn seq_hash(
    ctx: &Context,
    names: &Names,
    seq_key: Key,
    seqs: &[(usize, i64)],
    keys: &[DataKey],
    propagated: &mut Propagation,
) -> Result<(), CmdError> {
    let seq_texts: SmallVec<[RStr; 2]> = seqs
        .iter()
        .map(|(_, s)| RStr::new(IntText::new(*s).as_bytes()))
        .collect();
    let mut seq_args = Argv::new();
    seq_args.push(&names.seq_rs);
    for ((k, _), text) in seqs.iter().zip(&seq_texts) {
        // `seqs` holds indexes into `keys` (Tx::next_seq).
        let Some(name) = keys.get(*k).map(|d| &d.rs) else {
            let e = CmdError::err("could not create a field or value");
            return Err(partial_write(ctx, e));
        };
        seq_key
            .hset(name, Some(text))
            .map_err(|e| partial_write(ctx, e))?;
        seq_args.push(name);
        seq_args.push(text);
    }
    drop(seq_key);
    if seq_args.len() > 1 {
        propagated.note(ctx, ffi::replicate(ctx, c"HSET", &mut seq_args));
        ffi::signal_modified(ctx, &names.seq_rs);
    }
    Ok(())
}

/// The queued writes to the due index of holds, propagated as ZADD / ZREM.
pub(super) fn due_index(
    ctx: &Context,
    names: &Names,
    ops: &[(RStr, Option<f64>)],
    propagated: &mut Propagation,
) -> Result<(), CmdError> {
    if ops.is_empty() {
        return Ok(());
    }
    let key = Key::open(ctx, &names.due_rs, true).map_err(|e| partial_write(ctx, e))?;
    for (member, score) in ops {
        match score {
            Some(score) => {
                key.zset_add(*score, member)
                    .map_err(|e| partial_write(ctx, e))?;
                let score_rs = RStr::new(IntText::new(*score as i64).as_bytes());
                let mut zadd = Argv::of([&names.due_rs, &score_rs, member]);
                propagated.note(ctx, ffi::replicate(ctx, c"ZADD", &mut zadd));
            }
            None => {
                key.zset_rem(member).map_err(|e| partial_write(ctx, e))?;
                let mut zrem = Argv::of([&names.due_rs, member]);
                propagated.note(ctx, ffi::replicate(ctx, c"ZREM", &mut zrem));
            }
        }
    }
    drop(key);
    ffi::notify(ctx, REDISMODULE_NOTIFY_ZSET, c"zadd", &names.due_rs);
    ffi::signal_modified(ctx, &names.due_rs);
    Ok(())
}

/// The op-id record (fingerprint and reply) with its TTL, propagated as SET ... PXAT.
pub(super) fn op_record(
    ctx: &Context,
    op_rs: &RStr,
    fingerprint: &str,
    reply: &Reply,
    propagated: &mut Propagation,
) -> Result<(), CmdError> {
    let ttl_ms = config::op_ttl_ms();
    let record = RStr::new(record::encode_record(fingerprint, reply).as_bytes());
    let k = Key::open(ctx, op_rs, true).map_err(|e| partial_write(ctx, e))?;
    k.string_set_with_expire(&record, ttl_ms)
        .map_err(|e| partial_write(ctx, e))?;
    drop(k);
    // One instant for the count and the replicated deadline: the record is counted at least
    // until the PXAT the replicas get.
    let now = ffi::now_ms();
    stats::op_id_window().record(now, ttl_ms);
    // ttl_ms is at most config::MAX_OP_TTL_MS, so this cannot wrap; saturate anyway.
    let at = RStr::new(IntText::new(now.saturating_add(ttl_ms)).as_bytes());
    let mut set = Argv::of([op_rs, &record, pxat_word(), &at]);
    propagated.note(ctx, ffi::replicate(ctx, c"SET", &mut set));
    ffi::notify(ctx, REDISMODULE_NOTIFY_STRING, c"set", op_rs);
    ffi::signal_modified(ctx, op_rs);
    Ok(())
}

/// A write that failed after the event was appended (Redis refused it: out of memory, or the
/// server changed under the module). Never silent: logged, counted, replied as an error.
pub(super) fn partial_write(ctx: &Context, e: CmdError) -> CmdError {
    ctx.log_warning(&format!(
        "tally: {e} after the event was appended; this command's change is incomplete"
    ));
    stats::propagation_failed();
    e
}

/// The outcome of a command's propagation calls. The commands the module propagates are
/// checked at load (`host::load`), so a failure here means the server changed under the
/// module: it is logged, counted, and the client gets an error instead of `OK`.
#[derive(Default)]
pub(super) struct Propagation {
    failed: Option<CmdError>,
}

impl Propagation {
    fn note(&mut self, ctx: &Context, r: Result<(), CmdError>) {
        if let Err(e) = r {
            ctx.log_warning(&format!(
                "tally: {e}; this node holds a change its replicas and AOF lack"
            ));
            stats::propagation_failed();
            self.failed.get_or_insert(e);
        }
    }

    pub(super) fn result(self) -> Result<(), CmdError> {
        match self.failed {
            Some(_) => Err(CmdError::err(
                "the change was applied on this node but could not be propagated to replicas/AOF (see the server log)",
            )),
            None => Ok(()),
        }
    }
}
