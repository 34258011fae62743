//! The checks a mutating command passes before its body runs: ACL on the helper keys, the
//! op-id (replay, CONFLICT, the `tally.max-op-ids` bound) and the stream (WRONGTYPE,
//! BACKLOG). Nothing is written here.

use redis_module::raw::KeyType;
use redis_module::Context;

use super::names::Names;
use crate::domain::error::CmdError;
use crate::domain::record::{self, Recorded, Reply};
use crate::domain::request::{Canonical, Common};
use crate::host::ffi::{self, Key, RStr};
use crate::host::{acl, config, stats};

/// What `mutate` knows of a request: its command name, its raw arguments after the name
/// (for the format-1 fingerprint of records written before an upgrade), the parsed request
/// and its common options.
pub struct Request<'a, R: Canonical> {
    pub command: &'static str,
    pub raw: &'a [&'a [u8]],
    pub parsed: &'a R,
    pub common: &'a Common,
}

/// What a mutating command may do after its checks: go on (with its op-id record's name
/// and the request's fingerprint, when it has an op-id) or reply as it did the first time.
pub(super) enum Admission {
    Go {
        op_rs: Option<RStr>,
        fingerprint: String,
    },
    Replay(Reply),
}

/// The ACL checks on the helper keys and the idempotency check of the op-id, if any.
pub(super) fn admit(
    ctx: &Context,
    request: &Request<'_, impl Canonical>,
    names: &Names,
    data_keys: &[&str],
) -> Result<Admission, CmdError> {
    let first_key = data_keys.first().copied().unwrap_or_default();
    let op_id = request.common.op_id.as_deref();
    let op_key = op_id.map(|id| names.keys.op(first_key, id));
    let op_rs = op_key.as_deref().map(|k| RStr::new(k.as_bytes()));
    // Redis checks ACL key permissions only for the keys a command declares; the helper
    // keys are derived, so `acl` checks them (and, on Redis 7.0, the core writes).
    acl::check_write(
        ctx,
        data_keys,
        (&names.keys.stream, &names.stream_rs),
        (&names.keys.seq, &names.seq_rs),
        op_key.as_deref().zip(op_rs.as_ref()),
    )?;
    // Idempotent replay: same op-id and same request returns the first reply, writes nothing.
    let mut fingerprint = String::new();
    if let (Some(op_rs), Some(op_id)) = (op_rs.as_ref(), op_id) {
        fingerprint = record::fingerprint(request.command, &request.parsed.canonical());
        let v1 = || {
            let common = request.common;
            record::fingerprint_v1(request.command, request.raw, common.id_index)
        };
        if let Some(done) = replay(ctx, op_rs, &fingerprint, v1)? {
            return Ok(Admission::Replay(done));
        }
        // Not recorded under today's name: a module before the upgrade may have recorded it
        // under the format-1 name, with the same meaning (replay or CONFLICT).
        let v1_rs = RStr::new(names.keys.op_v1(op_id).as_bytes());
        if let Some(done) = replay(ctx, &v1_rs, &fingerprint, v1)? {
            return Ok(Admission::Replay(done));
        }
        admit_op_id()?;
    }
    Ok(Admission::Go { op_rs, fingerprint })
}

fn not_a_record() -> CmdError {
    CmdError::code("CONFLICT", "this op-id's record is not a tally record")
}

/// The stored reply when `op_rs` records this same request (counted as a replay); CONFLICT
/// when it records another request or is not a tally record; None when the op-id is new.
fn replay(
    ctx: &Context,
    op_rs: &RStr,
    fingerprint: &str,
    v1: impl FnOnce() -> String,
) -> Result<Option<Reply>, CmdError> {
    let k = Key::open(ctx, op_rs, false)?;
    match k.kind() {
        KeyType::Empty => Ok(None),
        KeyType::String => {
            let stored = k.string_get().unwrap_or_default();
            match record::check_record(&stored, fingerprint, v1) {
                Recorded::Same(reply) => {
                    stats::replay();
                    Ok(Some(reply))
                }
                Recorded::Different => Err(CmdError::code(
                    "CONFLICT",
                    "this op-id was already used with different arguments",
                )),
                Recorded::Corrupt => Err(not_a_record()),
            }
        }
        _ => Err(not_a_record()),
    }
}

/// OPIDS while this node counts `tally.max-op-ids` op-id records in their window.
fn admit_op_id() -> Result<(), CmdError> {
    let max = config::max_op_ids();
    let mut window = stats::op_id_window();
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

/// The log stream, open for writing: WRONGTYPE when the name holds something else, BACKLOG
/// when it holds `tally.max-backlog` unshipped entries.
pub(super) fn open_stream(ctx: &Context, names: &Names) -> Result<Key, CmdError> {
    let stream = open_stream_unbounded(ctx, names)?;
    let max_backlog = config::max_backlog();
    let entries = stream.value_length();
    if max_backlog > 0 && entries as i64 >= max_backlog {
        return Err(CmdError::code(
            "BACKLOG",
            format!("the event stream holds {entries} unshipped entries (tally.max-backlog); is the shipper running?"),
        ));
    }
    Ok(stream)
}

/// The log stream, open for writing: WRONGTYPE when the name holds something else.
pub(super) fn open_stream_unbounded(ctx: &Context, names: &Names) -> Result<Key, CmdError> {
    let stream = Key::open(ctx, &names.stream_rs, true)?;
    match stream.kind() {
        KeyType::Empty | KeyType::Stream => {}
        _ => {
            return Err(CmdError::wrong_type(format!(
                "tally's log key '{}' is not a stream",
                names.keys.stream
            )))
        }
    }
    Ok(stream)
}
