//! One mutating command = one atomic step: idempotency check, backlog check, the data
//! writes, the per-key sequence numbers, one stream entry, the op-id record, and their
//! propagation to replicas/AOF as concrete commands (wrapped by Redis in MULTI/EXEC).

use std::cell::Cell;
use std::ops::Deref;

use smallvec::SmallVec;
use std::sync::OnceLock;

use redis_module::raw::{
    KeyType, RedisModuleString, REDISMODULE_NOTIFY_HASH, REDISMODULE_NOTIFY_STREAM,
    REDISMODULE_NOTIFY_STRING,
};
use redis_module::{Context, ContextFlags};

use crate::args::{Canonical, Common};
use crate::config;
use crate::error::CmdError;
use crate::event::{self, Event, Recorded, Reply};
use crate::ffi::{self, Key, RStr};
use crate::slot;
use crate::stats;

/// The helper keys that share the command's hash slot.
pub struct Names {
    pub stream: String,
    pub seq: String,
    op_prefix: String,
    stream_rs: RStr,
    seq_rs: RStr,
}

/// The names of a command: in standalone mode one set, built on first use and kept (the
/// prefix is fixed at load time); in cluster mode one set per hash slot, built per call.
pub enum NamesRef {
    Fixed(&'static Names),
    Slot(Names),
}

impl Deref for NamesRef {
    type Target = Names;
    fn deref(&self) -> &Names {
        match self {
            NamesRef::Fixed(n) => n,
            NamesRef::Slot(n) => n,
        }
    }
}

/// Whether the server runs in cluster mode (fixed for the life of the process).
fn cluster_mode(ctx: &Context) -> bool {
    static CLUSTER: OnceLock<bool> = OnceLock::new();
    *CLUSTER.get_or_init(|| ctx.get_flags().contains(ContextFlags::CLUSTER))
}

impl Names {
    fn build(prefix: &str, suffix: &str) -> Names {
        let stream = format!("{prefix}:log{suffix}");
        let seq = format!("{prefix}:seq{suffix}");
        Names {
            stream_rs: RStr::new(stream.as_bytes()),
            seq_rs: RStr::new(seq.as_bytes()),
            stream,
            seq,
            op_prefix: format!("{prefix}:op{suffix}:"),
        }
    }

    pub fn for_key(ctx: &Context, key: &str) -> NamesRef {
        let prefix = config::prefix_fixed();
        if cluster_mode(ctx) {
            let suffix = format!(":{{{}}}", slot::tag(slot::key_slot(key.as_bytes())));
            NamesRef::Slot(Names::build(prefix, &suffix))
        } else {
            static FIXED: OnceLock<Names> = OnceLock::new();
            NamesRef::Fixed(FIXED.get_or_init(|| Names::build(prefix, "")))
        }
    }

    /// The record of `op_id` sent with a command whose first key is `key`. An op-id is
    /// scoped to the command's first key, in standalone and cluster mode alike:
    /// `<prefix>:op[:{tag}]:<byte length of key>:<key>:<op-id>` (the length keeps the
    /// name unambiguous whatever bytes the key holds).
    pub fn op(&self, key: &str, op_id: &str) -> String {
        let len = crate::event::IntText::new(key.len() as i64);
        let mut s = String::with_capacity(self.op_prefix.len() + 24 + key.len() + op_id.len());
        s.push_str(&self.op_prefix);
        s.push_str(std::str::from_utf8(len.as_bytes()).unwrap_or("0"));
        s.push(':');
        s.push_str(key);
        s.push(':');
        s.push_str(op_id);
        s
    }

    /// The record of `op_id` as modules before 313b772 named it (op-id record format 1):
    /// `<prefix>:op[:{tag}]:<op-id>`, one per node (per slot in cluster mode) whatever the
    /// key. Only read, for the records such a module left within `tally.op-ttl-ms`.
    fn op_v1(&self, op_id: &str) -> String {
        let mut s = String::with_capacity(self.op_prefix.len() + op_id.len());
        s.push_str(&self.op_prefix);
        s.push_str(op_id);
        s
    }
}

/// Rejects keys inside tally's own namespace.
pub fn check_user_key(key: &str) -> Result<(), CmdError> {
    let prefix = config::prefix_fixed();
    let k = key.as_bytes();
    if k.len() > prefix.len() && k.starts_with(prefix.as_bytes()) && k[prefix.len()] == b':' {
        return Err(CmdError::err(format!(
            "keys starting with '{prefix}:' are reserved for tally"
        )));
    }
    Ok(())
}

/// A field name of a queued write: a process-lifetime constant or one made for the write.
pub enum FieldName {
    Static(&'static RStr),
    Owned(RStr),
}

impl FieldName {
    fn rs(&self) -> &RStr {
        match self {
            FieldName::Static(r) => r,
            FieldName::Owned(r) => r,
        }
    }
}

impl DataKey {
    fn is(&self, name: &str) -> bool {
        self.rs.bytes() == Some(name.as_bytes())
    }
}

/// A hash write: `None` deletes the field. Names and values are RedisModuleStrings made
/// once, used for the write and read back as bytes for replication.
type FieldWrite = (FieldName, Option<RStr>);

/// A data key of the command, opened once for writing (reads go through the same handle)
/// with the writes queued for it.
struct DataKey {
    /// The key's name, borrowed from `rs` (a RedisModuleString this DataKey owns).
    rs: RStr,
    key: Key,
    writes: SmallVec<[FieldWrite; 4]>,
}

pub struct Tx<'a> {
    pub ctx: &'a Context,
    pub now_ms: i64,
    names: &'a Names,
    keys: SmallVec<[DataKey; 2]>,
    seq_key: Option<Key>,
    /// (index into `keys`, the key's new seq)
    seqs: SmallVec<[(usize, i64); 2]>,
    /// A key that could not be opened for a queued write: the command fails before writing.
    failed: Option<CmdError>,
}

fn wrong_kind() -> CmdError {
    CmdError::wrong_type("Operation against a key holding the wrong kind of value")
}

/// Opens a key for reading (read-only commands).
pub fn open_read(ctx: &Context, key: &str) -> Result<Key, CmdError> {
    let name = RStr::new(key.as_bytes());
    Key::open_raw(ctx, name.ptr(), false)
}

/// `false` for a missing key, `true` for a hash; anything else is a WRONGTYPE error.
pub fn hash_exists(ctx: &Context, key: &str) -> Result<bool, CmdError> {
    kind_is_hash(open_read(ctx, key)?.kind())
}

/// `false` for empty, `true` for a hash, WRONGTYPE otherwise.
pub fn kind_is_hash(kind: KeyType) -> Result<bool, CmdError> {
    match kind {
        KeyType::Empty => Ok(false),
        KeyType::Hash => Ok(true),
        _ => Err(wrong_kind()),
    }
}

/// Reads a field through an open handle (missing key = no field), passing the bytes to `f`.
pub fn field_with<R>(
    ctx: &Context,
    key: &Key,
    field: *mut RedisModuleString,
    f: impl FnOnce(Option<&[u8]>) -> R,
) -> Result<R, CmdError> {
    match key.kind() {
        KeyType::Empty => Ok(f(None)),
        KeyType::Hash => key.hget_with(ctx, field, f),
        _ => Err(wrong_kind()),
    }
}

impl<'a> Tx<'a> {
    /// The index of `key` in the key table, opening it for writing on first use.
    fn index_of(&mut self, key: &str) -> Result<usize, CmdError> {
        if let Some(i) = self.keys.iter().position(|k| k.is(key)) {
            return Ok(i);
        }
        let rs = RStr::new(key.as_bytes());
        let handle = Key::open_raw(self.ctx, rs.ptr(), true)?;
        self.keys.push(DataKey {
            rs,
            key: handle,
            writes: SmallVec::new(),
        });
        Ok(self.keys.len() - 1)
    }

    fn data(&mut self, key: &str) -> Result<&mut DataKey, CmdError> {
        let i = self.index_of(key)?;
        self.keys
            .get_mut(i)
            .ok_or_else(|| CmdError::err("internal key table error"))
    }

    /// The open handle of a data key (for loaders that read several fields).
    pub fn handle(&mut self, key: &str) -> Result<(&Context, &Key), CmdError> {
        let ctx = self.ctx;
        let d = self.data(key)?;
        Ok((ctx, &d.key))
    }

    pub fn hget(&mut self, key: &str, field: &[u8]) -> Result<Option<Vec<u8>>, CmdError> {
        self.hget_with(key, field, |v| v.map(<[u8]>::to_vec))
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
        let ctx = self.ctx;
        let d = self.data(key)?;
        field_with(ctx, &d.key, field.ptr(), f)
    }

    pub fn hash_exists(&mut self, key: &str) -> Result<bool, CmdError> {
        kind_is_hash(self.data(key)?.key.kind())
    }

    pub fn set(&mut self, key: &str, field: &[u8], value: Option<&[u8]>) {
        self.set_named(key, FieldName::Owned(RStr::new(field)), value)
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

    fn seq_handle(&mut self) -> Result<&Key, CmdError> {
        if self.seq_key.is_none() {
            self.seq_key = Some(Key::open_raw(self.ctx, self.names.seq_rs.ptr(), true)?);
        }
        self.seq_key
            .as_ref()
            .ok_or_else(|| CmdError::err("internal key table error"))
    }

    /// The sequence number the next event of `key` carries.
    pub fn next_seq(&mut self, key: &str) -> Result<i64, CmdError> {
        let ctx = self.ctx;
        // The field is the data key's name: reuse its RedisModuleString.
        let index = self.index_of(key)?;
        let field = self
            .keys
            .get(index)
            .ok_or_else(|| CmdError::err("internal key table error"))?
            .rs
            .ptr();
        let seq = self.seq_handle()?;
        let parsed = field_with(ctx, seq, field, |raw| match raw {
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
        self.seqs.push((index, next));
        Ok(next)
    }
}

pub use crate::event::IntText;

/// What a mutating command may do after its checks: go on (with its op-id record's name
/// and the request's fingerprint, when it has an op-id) or reply as it did the first time.
enum Admission {
    Go {
        op_rs: Option<RStr>,
        fingerprint: String,
    },
    Replay(Reply),
}

/// What `mutate` knows of a request: its command name, its raw arguments after the name
/// (for the format-1 fingerprint of records written before an upgrade), the parsed request
/// and its common options.
pub struct Request<'a, R: Canonical> {
    pub command: &'static str,
    pub raw: &'a [&'a [u8]],
    pub parsed: &'a R,
    pub common: &'a Common,
}

/// The ACL checks on the helper keys and the idempotency check of the op-id, if any.
fn admit(
    ctx: &Context,
    request: &Request<'_, impl Canonical>,
    names: &Names,
    data_keys: &[&str],
) -> Result<Admission, CmdError> {
    let first_key = data_keys.first().copied().unwrap_or_default();
    let op_id = request.common.op_id.as_deref();
    let op_key = op_id.map(|id| names.op(first_key, id));
    let op_rs = op_key.as_deref().map(|k| RStr::new(k.as_bytes()));
    // Redis checks ACL key permissions only for the keys a command declares; the helper
    // keys are derived, so `acl` checks them (and, on Redis 7.0, the core writes).
    crate::acl::check_write(
        ctx,
        data_keys,
        (&names.stream, names.stream_rs.ptr()),
        (&names.seq, names.seq_rs.ptr()),
        op_key.as_deref().zip(op_rs.as_ref().map(RStr::ptr)),
    )?;
    // Idempotent replay: same op-id and same request returns the first reply, writes nothing.
    let mut fingerprint = String::new();
    if let (Some(op_rs), Some(op_id)) = (op_rs.as_ref(), op_id) {
        fingerprint = event::fingerprint(request.command, &request.parsed.canonical());
        let v1 = || {
            let common = request.common;
            event::fingerprint_v1(request.command, request.raw, common.id_index)
        };
        if let Some(done) = replay(ctx, op_rs, &fingerprint, v1)? {
            return Ok(Admission::Replay(done));
        }
        // Not recorded under today's name: a module before the upgrade may have recorded it
        // under the format-1 name, with the same meaning (replay or CONFLICT).
        let v1_rs = RStr::new(names.op_v1(op_id).as_bytes());
        if let Some(done) = replay(ctx, &v1_rs, &fingerprint, v1)? {
            return Ok(Admission::Replay(done));
        }
        admit_op_id()?;
    }
    Ok(Admission::Go { op_rs, fingerprint })
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
    let (op_rs, fingerprint) = match admit(ctx, &request, names, data_keys)? {
        Admission::Replay(done) => return Ok(done),
        Admission::Go { op_rs, fingerprint } => (op_rs, fingerprint),
    };

    let stream = open_stream(ctx, names)?;

    let mut tx = Tx {
        ctx,
        now_ms: ffi::now_ms(),
        names,
        keys: SmallVec::new(),
        seq_key: None,
        seqs: SmallVec::new(),
        failed: None,
    };
    let (reply, mut event) = body(&mut tx)?;
    let Tx {
        keys,
        seq_key,
        seqs,
        failed,
        ..
    } = tx;
    if let Some(e) = failed {
        return Err(e);
    }
    if op_rs.is_some() {
        event.fp = Some(fingerprint.clone());
        event.reply = Some(reply.clone());
    }
    let json_rs = encode_event(&event);
    let seq_key = match seq_key {
        Some(k) => k,
        None => Key::open_raw(ctx, names.seq_rs.ptr(), true)?,
    };

    let mut propagated = Propagation::default();
    // The event first: if the stream refuses it, nothing has been changed yet.
    let (ms, sq) = stream.stream_add(ctx, &[event_field().ptr(), json_rs.ptr()])?;

    for dk in &keys {
        write_data_key(ctx, dk, &mut propagated)?;
    }
    write_seqs(ctx, names, seq_key, &seqs, &keys, &mut propagated)?;
    drop(keys);

    let id = RStr::new(entry_id(ms, sq).as_bytes());
    propagated.note(
        ctx,
        ffi::replicate_rs(
            ctx,
            c"XADD",
            &mut [
                names.stream_rs.ptr(),
                id.ptr(),
                event_field().ptr(),
                json_rs.ptr(),
            ],
        ),
    );
    ffi::notify(
        ctx,
        REDISMODULE_NOTIFY_STREAM,
        c"xadd",
        names.stream_rs.ptr(),
    );
    drop(stream);
    ffi::signal_modified(ctx, names.stream_rs.ptr());

    if let Some(op_rs) = op_rs {
        write_op_record(ctx, &op_rs, &fingerprint, &reply, &mut propagated)?;
    }
    stats::event_appended();
    propagated.result()?;
    Ok(reply)
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

/// The stored reply when `op_rs` records this same request (counted as a replay); CONFLICT
/// when it records another request or is not a tally record; None when the op-id is new.
fn replay(
    ctx: &Context,
    op_rs: &RStr,
    fingerprint: &str,
    v1: impl FnOnce() -> String,
) -> Result<Option<Reply>, CmdError> {
    let k = Key::open_raw(ctx, op_rs.ptr(), false)?;
    match k.kind() {
        KeyType::Empty => Ok(None),
        KeyType::String => {
            let stored = k.string_get().unwrap_or_default();
            match event::check_record(&stored, fingerprint, v1) {
                Recorded::Same(reply) => {
                    stats::replay();
                    Ok(Some(reply))
                }
                Recorded::Different => Err(CmdError::code(
                    "CONFLICT",
                    "this op-id was already used with different arguments",
                )),
                Recorded::Corrupt => Err(CmdError::code(
                    "CONFLICT",
                    "this op-id's record is not a tally record",
                )),
            }
        }
        _ => Err(CmdError::code(
            "CONFLICT",
            "this op-id's record is not a tally record",
        )),
    }
}

/// The log stream, open for writing: WRONGTYPE when the name holds something else, BACKLOG
/// when it holds `tally.max-backlog` unshipped entries.
fn open_stream(ctx: &Context, names: &Names) -> Result<Key, CmdError> {
    let stream = Key::open_raw(ctx, names.stream_rs.ptr(), true)?;
    match stream.kind() {
        KeyType::Empty | KeyType::Stream => {}
        _ => {
            return Err(CmdError::wrong_type(format!(
                "tally's log key '{}' is not a stream",
                names.stream
            )))
        }
    }
    let max_backlog = config::max_backlog();
    if max_backlog > 0 && stream.len() as i64 >= max_backlog {
        return Err(CmdError::code(
            "BACKLOG",
            format!("the event stream holds {} unshipped entries (tally.max-backlog); is the shipper running?", stream.len()),
        ));
    }
    Ok(stream)
}

/// One data key's queued writes, propagated as one HSET (and one HDEL for removed fields).
fn write_data_key(
    ctx: &Context,
    dk: &DataKey,
    propagated: &mut Propagation,
) -> Result<(), CmdError> {
    if dk.writes.is_empty() {
        return Ok(());
    }
    let mut hset_args: SmallVec<[*mut RedisModuleString; 9]> = SmallVec::new();
    hset_args.push(dk.rs.ptr());
    let mut hdel_args: SmallVec<[*mut RedisModuleString; 4]> = SmallVec::new();
    for (field, value) in &dk.writes {
        let f = field.rs();
        match value {
            Some(v) => {
                dk.key
                    .hset_rs(f.ptr(), Some(v.ptr()))
                    .map_err(|e| partial_write(ctx, e))?;
                hset_args.push(f.ptr());
                hset_args.push(v.ptr());
            }
            None => {
                dk.key
                    .hset_rs(f.ptr(), None)
                    .map_err(|e| partial_write(ctx, e))?;
                if hdel_args.is_empty() {
                    hdel_args.push(dk.rs.ptr());
                }
                hdel_args.push(f.ptr());
            }
        }
    }
    if hset_args.len() > 1 {
        propagated.note(ctx, ffi::replicate_rs(ctx, c"HSET", &mut hset_args));
        ffi::notify(ctx, REDISMODULE_NOTIFY_HASH, c"hset", dk.rs.ptr());
    }
    if hdel_args.len() > 1 {
        propagated.note(ctx, ffi::replicate_rs(ctx, c"HDEL", &mut hdel_args));
        ffi::notify(ctx, REDISMODULE_NOTIFY_HASH, c"hdel", dk.rs.ptr());
    }
    ffi::signal_modified(ctx, dk.rs.ptr());
    Ok(())
}

/// The new per-key seqs into the sequence hash, propagated as one HSET.
fn write_seqs(
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
    let mut seq_args: SmallVec<[*mut RedisModuleString; 5]> = SmallVec::new();
    seq_args.push(names.seq_rs.ptr());
    for ((k, _), text) in seqs.iter().zip(&seq_texts) {
        let name = keys.get(*k).map_or(std::ptr::null_mut(), |d| d.rs.ptr());
        seq_key
            .hset_rs(name, Some(text.ptr()))
            .map_err(|e| partial_write(ctx, e))?;
        seq_args.push(name);
        seq_args.push(text.ptr());
    }
    drop(seq_key);
    if seq_args.len() > 1 {
        propagated.note(ctx, ffi::replicate_rs(ctx, c"HSET", &mut seq_args));
        ffi::signal_modified(ctx, names.seq_rs.ptr());
    }
    Ok(())
}

/// OPIDS while this node counts `tally.max-op-ids` op-id records in their window.
fn admit_op_id() -> Result<(), CmdError> {
    let max = config::max_op_ids();
    let mut window = crate::opids::window();
    if window.admits(ffi::now_ms(), max) {
        return Ok(());
    }
    Err(CmdError::code(
        "OPIDS",
        format!(
            "{} op-id records are within tally.op-ttl-ms and tally.max-op-ids is {max}: retry later, or raise tally.max-op-ids / lower tally.op-ttl-ms",
            window.live(ffi::now_ms())
        ),
    ))
}

/// The op-id record (fingerprint and reply) with its TTL, propagated as SET ... PXAT.
fn write_op_record(
    ctx: &Context,
    op_rs: &RStr,
    fingerprint: &str,
    reply: &Reply,
    propagated: &mut Propagation,
) -> Result<(), CmdError> {
    let ttl_ms = config::op_ttl_ms();
    let record = RStr::new(event::encode_record(fingerprint, reply).as_bytes());
    let k = Key::open_raw(ctx, op_rs.ptr(), true).map_err(|e| partial_write(ctx, e))?;
    k.string_set_with_expire(record.ptr(), ttl_ms)
        .map_err(|e| partial_write(ctx, e))?;
    drop(k);
    // One instant for the count and the replicated deadline: the record is counted at least
    // until the PXAT the replicas get.
    let now = ffi::now_ms();
    crate::opids::window().record(now, ttl_ms);
    // ttl_ms is at most config::MAX_OP_TTL_MS, so this cannot wrap; saturate anyway.
    let at = RStr::new(IntText::new(now.saturating_add(ttl_ms)).as_bytes());
    let pxat = pxat_word().ptr();
    propagated.note(
        ctx,
        ffi::replicate_rs(
            ctx,
            c"SET",
            &mut [op_rs.ptr(), record.ptr(), pxat, at.ptr()],
        ),
    );
    ffi::notify(ctx, REDISMODULE_NOTIFY_STRING, c"set", op_rs.ptr());
    ffi::signal_modified(ctx, op_rs.ptr());
    Ok(())
}

/// A write that failed after the event was appended (Redis refused it: out of memory, or the
/// server changed under the module). Never silent: logged, counted, replied as an error.
fn partial_write(ctx: &Context, e: CmdError) -> CmdError {
    ctx.log_warning(&format!(
        "tally: {e} after the event was appended; this command's change is incomplete"
    ));
    stats::propagation_failed();
    e
}

/// The outcome of a command's propagation calls. The commands the module propagates are
/// checked at load (`check_propagated_commands`), so a failure here means the server changed
/// under the module: it is logged, counted, and the client gets an error instead of `OK`.
#[derive(Default)]
struct Propagation {
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

    fn result(self) -> Result<(), CmdError> {
        match self.failed {
            Some(_) => Err(CmdError::err(
                "the change was applied on this node but could not be propagated to replicas/AOF (see the server log)",
            )),
            None => Ok(()),
        }
    }
}

/// `PXAT`, created once.
fn pxat_word() -> &'static RStr {
    static WORD: OnceLock<RStr> = OnceLock::new();
    WORD.get_or_init(|| RStr::new(b"PXAT"))
}

/// The name of the field that marks a campaign or usage hash (`logic::KIND_FIELD`), created once.
pub fn kind_field() -> &'static RStr {
    static FIELD: OnceLock<RStr> = OnceLock::new();
    FIELD.get_or_init(|| RStr::new(crate::logic::KIND_FIELD.as_bytes()))
}

/// The stream field name, created once.
fn event_field() -> &'static RStr {
    static FIELD: OnceLock<RStr> = OnceLock::new();
    FIELD.get_or_init(|| RStr::new(event::STREAM_FIELD.as_bytes()))
}

/// `<ms>-<seq>` of a stream entry id, in a stack buffer.
struct EntryId {
    buf: [u8; 41],
    len: usize,
}

impl EntryId {
    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

fn entry_id(ms: u64, seq: u64) -> EntryId {
    fn digits(mut v: u64, out: &mut [u8; 20]) -> &[u8] {
        let mut i = out.len();
        loop {
            i -= 1;
            out[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        &out[i..]
    }
    let (mut a, mut b) = ([0u8; 20], [0u8; 20]);
    let (a, b) = (digits(ms, &mut a), digits(seq, &mut b));
    let mut id = EntryId {
        buf: [0u8; 41],
        len: a.len() + 1 + b.len(),
    };
    id.buf[..a.len()].copy_from_slice(a);
    id.buf[a.len()] = b'-';
    id.buf[a.len() + 1..id.len].copy_from_slice(b);
    id
}
