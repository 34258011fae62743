//! One mutating command = one atomic step: idempotency check, backlog check, the data
//! writes, the per-key sequence numbers, one stream entry, the op-id record, and their
//! propagation to replicas/AOF as concrete commands (wrapped by Redis in MULTI/EXEC).

use redis_module::raw::KeyType;
use redis_module::{AclPermissions, Context, ContextFlags, NotifyEvent};

use crate::args::Common;
use crate::config;
use crate::error::CmdError;
use crate::event::{self, Event, Recorded, Reply};
use crate::ffi::{self, Key};
use crate::slot;
use crate::stats;

/// The helper keys that share the command's hash slot.
pub struct Names {
    pub stream: String,
    pub seq: String,
    op_prefix: String,
}

impl Names {
    pub fn for_key(ctx: &Context, key: &str) -> Names {
        let prefix = config::prefix();
        let suffix = if ctx.get_flags().contains(ContextFlags::CLUSTER) {
            format!(":{{{}}}", config::slot_tag(slot::key_slot(key.as_bytes())))
        } else {
            String::new()
        };
        Names {
            stream: format!("{prefix}:log{suffix}"),
            seq: format!("{prefix}:seq{suffix}"),
            op_prefix: format!("{prefix}:op{suffix}:"),
        }
    }

    pub fn op(&self, op_id: &str) -> String {
        format!("{}{op_id}", self.op_prefix)
    }
}

/// Rejects keys inside tally's own namespace.
pub fn check_user_key(key: &str) -> Result<(), CmdError> {
    let prefix = config::prefix();
    if key.starts_with(&format!("{prefix}:")) {
        return Err(CmdError::err(format!("keys starting with '{prefix}:' are reserved for tally")));
    }
    Ok(())
}

/// A hash write: `None` deletes the field.
type FieldWrite = (Vec<u8>, Option<Vec<u8>>);

pub struct Tx<'a> {
    pub ctx: &'a Context,
    pub now_ms: i64,
    names: Names,
    writes: Vec<(String, Vec<FieldWrite>)>,
    seqs: Vec<(String, i64)>,
}

fn wrong_kind() -> CmdError {
    CmdError::wrong_type("Operation against a key holding the wrong kind of value")
}

/// One field of a hash key; a missing key reads as no field, another type is WRONGTYPE.
pub fn read_field(ctx: &Context, key: &str, field: &[u8]) -> Result<Option<Vec<u8>>, CmdError> {
    let k = Key::open(ctx, &ffi::bytes(ctx, key.as_bytes()), false)?;
    match k.kind() {
        KeyType::Empty => Ok(None),
        KeyType::Hash => k.hget(ctx, field),
        _ => Err(wrong_kind()),
    }
}

/// `false` for a missing key, `true` for a hash; anything else is a WRONGTYPE error.
pub fn hash_exists(ctx: &Context, key: &str) -> Result<bool, CmdError> {
    let k = Key::open(ctx, &ffi::bytes(ctx, key.as_bytes()), false)?;
    match k.kind() {
        KeyType::Empty => Ok(false),
        KeyType::Hash => Ok(true),
        _ => Err(wrong_kind()),
    }
}

impl<'a> Tx<'a> {
    pub fn hget(&self, key: &str, field: &[u8]) -> Result<Option<Vec<u8>>, CmdError> {
        read_field(self.ctx, key, field)
    }

    pub fn hash_exists(&self, key: &str) -> Result<bool, CmdError> {
        hash_exists(self.ctx, key)
    }

    pub fn set(&mut self, key: &str, field: &[u8], value: Option<&[u8]>) {
        let entry = match self.writes.iter_mut().find(|(k, _)| k == key) {
            Some(e) => e,
            None => {
                self.writes.push((key.to_string(), Vec::new()));
                let last = self.writes.len() - 1;
                &mut self.writes[last]
            }
        };
        entry.1.push((field.to_vec(), value.map(<[u8]>::to_vec)));
    }

    /// The sequence number the next event of `key` carries.
    pub fn next_seq(&mut self, key: &str) -> Result<i64, CmdError> {
        let seq_key = self.names.seq.clone();
        let raw = self.hget(&seq_key, key.as_bytes())?;
        let current = match raw {
            None => 0,
            Some(b) => std::str::from_utf8(&b)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
                .ok_or_else(|| CmdError::wrong_type("the sequence record of this key is corrupt"))?,
        };
        let next = current + 1;
        self.seqs.push((key.to_string(), next));
        Ok(next)
    }
}

/// Redis checks ACL key permissions only for the keys a command declares; tally's helper
/// keys are derived, so they are checked here for the calling user (one user lookup).
fn check_acl(ctx: &Context, names: &[&str]) -> Result<(), CmdError> {
    let user_name = ctx.get_current_user();
    if user_name.inner.is_null() {
        return Ok(()); // no client (internal call): nothing to check against
    }
    let apis = unsafe {
        (
            redis_module::raw::RedisModule_GetModuleUserFromUserName,
            redis_module::raw::RedisModule_ACLCheckKeyPermissions,
            redis_module::raw::RedisModule_FreeModuleUser,
        )
    };
    let (Some(lookup), Some(check), Some(free)) = apis else {
        return Err(CmdError::err("this Redis lacks the ACL module API (Redis 7.0+ required)"));
    };
    let user = unsafe { lookup(user_name.inner) };
    if user.is_null() {
        return Err(CmdError::code("NOPERM", "the current user does not exist or is disabled"));
    }
    let flags = (AclPermissions::INSERT | AclPermissions::UPDATE | AclPermissions::ACCESS).bits();
    let mut denied = None;
    for name in names {
        let key = ffi::bytes(ctx, name.as_bytes());
        if unsafe { check(user, key.inner, flags) } != redis_module::raw::REDISMODULE_OK as i32 {
            denied = Some(*name);
            break;
        }
    }
    unsafe { free(user) };
    match denied {
        Some(name) => Err(CmdError::code("NOPERM", format!("this user has no write access to tally's key '{name}'"))),
        None => Ok(()),
    }
}

/// Runs a mutating command. `body` reads state, decides, queues writes and returns the reply
/// and the event; nothing is written unless it succeeds.
pub fn mutate(
    ctx: &Context,
    command: &str,
    raw_args: &[&[u8]],
    common: &Common,
    first_key: &str,
    body: impl FnOnce(&mut Tx) -> Result<(Reply, Event), CmdError>,
) -> Result<Reply, CmdError> {
    let names = Names::for_key(ctx, first_key);
    let op_key = common.op_id.as_deref().map(|id| names.op(id));
    let mut helper_keys = vec![names.stream.as_str(), names.seq.as_str()];
    if let Some(k) = op_key.as_deref() {
        helper_keys.push(k);
    }
    check_acl(ctx, &helper_keys)?;

    // Idempotent replay: same op-id and same request returns the first reply, writes nothing.
    let fingerprint = event::fingerprint(command, &event::args_without_id(raw_args, common.id_index));
    if let Some(op_key) = op_key.as_deref() {
        let k = Key::open(ctx, &ffi::bytes(ctx, op_key.as_bytes()), false)?;
        match k.kind() {
            KeyType::Empty => {}
            KeyType::String => {
                let stored = k.string_get().unwrap_or_default();
                return match event::check_record(&stored, &fingerprint) {
                    Recorded::Same(reply) => {
                        stats::replay();
                        Ok(reply)
                    }
                    Recorded::Different => Err(CmdError::code(
                        "CONFLICT",
                        "this op-id was already used with different arguments",
                    )),
                    Recorded::Corrupt => Err(CmdError::code("CONFLICT", "this op-id's record is not a tally record")),
                };
            }
            _ => return Err(CmdError::code("CONFLICT", "this op-id's record is not a tally record")),
        }
    }

    let stream_name = ffi::bytes(ctx, names.stream.as_bytes());
    let stream = Key::open(ctx, &stream_name, true)?;
    match stream.kind() {
        KeyType::Empty | KeyType::Stream => {}
        _ => return Err(CmdError::wrong_type(format!("tally's log key '{}' is not a stream", names.stream))),
    }
    let max_backlog = config::max_backlog();
    if max_backlog > 0 && stream.len() as i64 >= max_backlog {
        return Err(CmdError::code(
            "BACKLOG",
            format!("the event stream holds {} unshipped entries (tally.max-backlog); is the shipper running?", stream.len()),
        ));
    }

    let mut tx = Tx { ctx, now_ms: ffi::now_ms(), names, writes: Vec::new(), seqs: Vec::new() };
    let (reply, event) = body(&mut tx)?;
    let Tx { names, writes, seqs, .. } = tx;
    let json = event.to_json();

    // The event first: if the stream refuses it, nothing has been changed yet.
    let entry_id = stream.stream_add(ctx, &[(event::STREAM_FIELD.as_bytes(), json.as_bytes())])?;

    for (key, fields) in &writes {
        let k = Key::open(ctx, &ffi::bytes(ctx, key.as_bytes()), true)?;
        let mut hset_args: Vec<&[u8]> = vec![key.as_bytes()];
        let mut hdel_args: Vec<&[u8]> = vec![key.as_bytes()];
        for (field, value) in fields {
            match value {
                Some(v) => {
                    k.hset(ctx, field, v)?;
                    hset_args.push(field);
                    hset_args.push(v);
                }
                None => {
                    k.hdel(ctx, field)?;
                    hdel_args.push(field);
                }
            }
        }
        drop(k);
        let keyname = ffi::bytes(ctx, key.as_bytes());
        if hset_args.len() > 1 {
            ctx.replicate("HSET", hset_args.as_slice());
            ctx.notify_keyspace_event(NotifyEvent::HASH, "hset", &keyname);
        }
        if hdel_args.len() > 1 {
            ctx.replicate("HDEL", hdel_args.as_slice());
            ctx.notify_keyspace_event(NotifyEvent::HASH, "hdel", &keyname);
        }
    }

    let seq_name = ffi::bytes(ctx, names.seq.as_bytes());
    let seq_key = Key::open(ctx, &seq_name, true)?;
    let seq_values: Vec<(String, String)> = seqs.iter().map(|(k, s)| (k.clone(), s.to_string())).collect();
    let mut seq_args: Vec<&[u8]> = vec![names.seq.as_bytes()];
    for (k, s) in &seq_values {
        seq_key.hset(ctx, k.as_bytes(), s.as_bytes())?;
        seq_args.push(k.as_bytes());
        seq_args.push(s.as_bytes());
    }
    drop(seq_key);
    ctx.replicate("HSET", seq_args.as_slice());

    ctx.replicate(
        "XADD",
        &[names.stream.as_bytes(), entry_id.as_bytes(), event::STREAM_FIELD.as_bytes(), json.as_bytes()][..],
    );
    ctx.notify_keyspace_event(NotifyEvent::STREAM, "xadd", &stream_name);
    drop(stream);

    if let Some(op_key) = op_key {
        let ttl_ms = config::op_ttl_ms();
        let record = event::encode_record(&fingerprint, &reply);
        let name = ffi::bytes(ctx, op_key.as_bytes());
        let k = Key::open(ctx, &name, true)?;
        k.string_set_with_expire(ctx, record.as_bytes(), ttl_ms)?;
        drop(k);
        let at = (ffi::now_ms() + ttl_ms).to_string();
        ctx.replicate("SET", &[op_key.as_bytes(), record.as_bytes(), b"PXAT".as_slice(), at.as_bytes()][..]);
        ctx.notify_keyspace_event(NotifyEvent::STRING, "set", &name);
    }
    stats::event_appended();
    Ok(reply)
}
