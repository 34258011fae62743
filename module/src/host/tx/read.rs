//! Reads outside a [`super::Tx`] (read-only commands) and the field read both use.

use redis_module::raw::KeyType;
use redis_module::Context;

use crate::domain::error::CmdError;
use crate::host::ffi::{Key, RStr};

fn wrong_kind() -> CmdError {
    CmdError::wrong_type("Operation against a key holding the wrong kind of value")
}

/// Opens a key for reading (read-only commands).
pub fn open_read(ctx: &Context, key: &str) -> Result<Key, CmdError> {
    Key::open(ctx, &RStr::new(key.as_bytes()), false)
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
pub(super) fn field_with<R>(
    key: &Key,
    field: &RStr,
    f: impl FnOnce(Option<&[u8]>) -> R,
) -> Result<R, CmdError> {
    match key.kind() {
        KeyType::Empty => Ok(f(None)),
        KeyType::Hash => key.hget_with(field, f),
        _ => Err(wrong_kind()),
    }
}

/// Whether a key exists (of any type).
pub(super) fn exists(ctx: &Context, name: &RStr) -> bool {
    crate::host::ffi::key_exists(ctx, name)
}
