//! The hold helper keys outside a command's [`super::Tx`]: their names for read commands and
//! the expiry timer, whole-hash and due-range reads, and the bookkeeping writes the timer
//! makes without an event (a tombstone's removal, a due member moved), each propagated.

use redis_module::raw::{REDISMODULE_NOTIFY_HASH, REDISMODULE_NOTIFY_ZSET};
use redis_module::{CallOptionsBuilder, CallReply, CallResult, Context};

use super::names::Names;
use super::write::partial_write;
use crate::domain::error::CmdError;
use crate::domain::text::IntText;
use crate::host::ffi::{self, Argv, Key, RStr};

/// The holds hash of a key and the due index of its slot.
pub struct HoldNames {
    pub holds: String,
    pub holds_rs: RStr,
    pub due: String,
    pub due_rs: RStr,
}

pub fn hold_names(ctx: &Context, key: &str) -> HoldNames {
    let names = Names::for_key(ctx, key);
    let holds = names.keys.holds(key);
    HoldNames {
        holds_rs: RStr::new(holds.as_bytes()),
        holds,
        due: names.keys.due.clone(),
        due_rs: RStr::new(names.keys.due.as_bytes()),
    }
}

/// Whether a hold of any key in the slot of `key` (the node, standalone) may be due at
/// `now_ms`: the due index exists and its earliest member is not later than now. The timer
/// keeps the earliest ahead of the clock, so this is almost always `false`: one key lookup
/// and the sorted set's first element instead of a look at the key's own holds.
pub fn slot_may_have_due(ctx: &Context, key: &str, now_ms: i64) -> bool {
    let names = Names::for_key(ctx, key);
    if !super::read::exists(ctx, &names.due_rs) {
        return false;
    }
    Key::open(ctx, &names.due_rs, false)
        .ok()
        .and_then(|k| k.zset_first_score())
        .is_some_and(|first| first <= now_ms as f64)
}

/// The due index of hash slot `slot` (cluster mode) or of the node; whether the server runs
/// in cluster mode.
pub fn due_index_names(ctx: &Context, slot: usize) -> (String, bool) {
    let names = Names::for_slot(ctx, slot);
    (names.keys.due.clone(), super::names::cluster_mode(ctx))
}

fn bytes(v: &CallResult) -> Vec<u8> {
    match v {
        Ok(CallReply::String(s)) => s.as_bytes().to_vec(),
        _ => Vec::new(),
    }
}

/// Every field and value of a hash (empty when the key is missing).
/// A hash's fields and values, as bytes.
pub type Fields = Vec<(Vec<u8>, Vec<u8>)>;

pub fn hgetall(ctx: &Context, key: &str) -> Result<Fields, CmdError> {
    let opts = CallOptionsBuilder::new().build();
    let all: CallResult = ctx.call_ext("HGETALL", &opts, &[key][..]);
    let Ok(CallReply::Array(flat)) = all else {
        return Err(CmdError::err("could not read the holds of this key"));
    };
    let mut out = Vec::with_capacity(flat.len() / 2);
    let mut it = flat.iter();
    while let (Some(f), Some(v)) = (it.next(), it.next()) {
        out.push((bytes(&f), bytes(&v)));
    }
    Ok(out)
}

/// Up to `limit` members of the due index `due` with a score at or below `now_ms`, earliest
/// first.
pub fn due_members(
    ctx: &Context,
    due: &str,
    now_ms: i64,
    limit: i64,
) -> Result<Vec<Vec<u8>>, CmdError> {
    let opts = CallOptionsBuilder::new().build();
    let (now, limit) = (now_ms.to_string(), limit.to_string());
    let args = [due, "-inf", &now, "BYSCORE", "LIMIT", "0", &limit];
    let reply: CallResult = ctx.call_ext("ZRANGE", &opts, &args[..]);
    match reply {
        Ok(CallReply::Array(items)) => Ok(items.iter().map(|v| bytes(&v)).collect()),
        _ => Err(CmdError::err("could not read the due index of holds")),
    }
}

/// Sets (`Some`) or deletes (`None`) one field of `key` now, propagated as HSET / HDEL.
pub fn hset_now(ctx: &Context, key: &RStr, field: &[u8], value: Option<&[u8]>) -> CmdResult {
    let k = Key::open(ctx, key, true)?;
    let field = RStr::new(field);
    let value = value.map(RStr::new);
    k.hset(&field, value.as_ref())
        .map_err(|e| partial_write(ctx, e))?;
    drop(k);
    match &value {
        Some(v) => ffi::replicate(ctx, c"HSET", &mut Argv::of([key, &field, v]))?,
        None => ffi::replicate(ctx, c"HDEL", &mut Argv::of([key, &field]))?,
    }
    ffi::notify(ctx, REDISMODULE_NOTIFY_HASH, c"hset", key);
    ffi::signal_modified(ctx, key);
    Ok(())
}

type CmdResult = Result<(), CmdError>;

/// Moves (`Some(score)`) or removes (`None`) a member of the due index now, propagated as
/// ZADD / ZREM.
pub fn due_now(ctx: &Context, due: &RStr, member: &[u8], score_ms: Option<i64>) -> CmdResult {
    let k = Key::open(ctx, due, true)?;
    let member = RStr::new(member);
    match score_ms {
        Some(score) => {
            k.zset_add(score as f64, &member)?;
            drop(k);
            let score = RStr::new(IntText::new(score).as_bytes());
            ffi::replicate(ctx, c"ZADD", &mut Argv::of([due, &score, &member]))?;
        }
        None => {
            k.zset_rem(&member)?;
            drop(k);
            ffi::replicate(ctx, c"ZREM", &mut Argv::of([due, &member]))?;
        }
    }
    ffi::notify(ctx, REDISMODULE_NOTIFY_ZSET, c"zadd", due);
    ffi::signal_modified(ctx, due);
    Ok(())
}
