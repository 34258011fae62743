//! The thin layer over the Redis module key API, and with `acl`, `dispatch`, `register`
//! and `eviction` the only place that calls it directly (`unsafe`). Binary-safe (no C
//! strings built from client bytes) and panic-free: every pointer is checked before use.
//! Callers pass strings as [`RStr`] handles, never as raw pointers.
//!
//! Hot-path notes: key and field names are passed as `RStr` (one RedisModuleString each,
//! reused for every call on the same name); helper-key names and constant field names are
//! created once and kept for the life of the process; replication passes those same
//! RedisModuleStrings to `RedisModule_Replicate` (`v` format), so Redis takes a reference to
//! each argument instead of copying it.

use std::ffi::CStr;
use std::marker::PhantomData;
use std::os::raw::{c_char, c_int, c_void};
use std::ptr;

use redis_module::raw::{self, KeyType, RedisModuleKey, RedisModuleString};
use redis_module::Context;
use smallvec::SmallVec;

use crate::domain::error::CmdError;

const MODE_READ: c_int = 1;
const MODE_WRITE: c_int = 2;
const HASH_NONE: c_int = 0;
/// `RedisModule_HashSet` counts inserted fields too, so a successful set returns >= 1.
const HASH_COUNT_ALL: c_int = raw::REDISMODULE_HASH_COUNT_ALL as c_int;

/// `REDISMODULE_HASH_DELETE`: the sentinel value pointer that deletes a field.
const HASH_DELETE: *mut RedisModuleString = ptr::without_provenance_mut(1);
const STREAM_ADD_AUTOID: c_int = 1;
/// Arguments of one propagated command kept on the stack (more spill to the heap): HSET of a
/// key with 4 fields, XADD, SET ... PXAT.
const ARGV_INLINE: usize = 9;

fn write_failed(what: &str) -> CmdError {
    CmdError::err(format!("Redis refused the {what} write"))
}

fn missing_api(name: &str) -> CmdError {
    CmdError::err(format!("this Redis lacks the module API {name}"))
}

/// A RedisModuleString made from bytes, freed on drop. Created without a context, so it can
/// also be kept in a static for the life of the process (helper-key and constant field
/// names); it is only ever touched on Redis's main thread.
pub struct RStr {
    ptr: *mut RedisModuleString,
}

// SAFETY: module commands run on Redis's main thread only; statics holding an `RStr` are
// read there and never freed.
unsafe impl Send for RStr {}
unsafe impl Sync for RStr {}

impl RStr {
    pub fn new(data: &[u8]) -> RStr {
        let ptr = match unsafe { raw::RedisModule_CreateString } {
            Some(create) => unsafe {
                create(ptr::null_mut(), data.as_ptr().cast::<c_char>(), data.len())
            },
            None => ptr::null_mut(),
        };
        RStr { ptr }
    }

    /// The RedisModuleString, for the module API calls of `host`.
    pub(super) fn ptr(&self) -> *mut RedisModuleString {
        self.ptr
    }

    /// Whether the handle holds no string (creation failed, or a field that was missing).
    pub(super) fn is_null(&self) -> bool {
        self.ptr.is_null()
    }

    /// The bytes of the string, `None` for an empty handle.
    pub fn bytes(&self) -> Option<&[u8]> {
        if self.ptr.is_null() {
            None
        } else {
            Some(slice_of(self.ptr))
        }
    }
}

/// Up to this many fields are read by one `Key::hget_many` call.
pub const HGET_MAX: usize = 9;

impl Drop for RStr {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            if let Some(free) = unsafe { raw::RedisModule_FreeString } {
                unsafe { free(ptr::null_mut(), self.ptr) };
            }
        }
    }
}

/// The bytes of a RedisModuleString (empty for a null pointer).
pub(super) fn slice_of<'a>(s: *mut RedisModuleString) -> &'a [u8] {
    if s.is_null() {
        return &[];
    }
    let Some(ptr_len) = (unsafe { raw::RedisModule_StringPtrLen }) else {
        return &[];
    };
    let mut len: usize = 0;
    let p = unsafe { ptr_len(s, &mut len) };
    if p.is_null() {
        &[]
    } else {
        unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) }
    }
}

/// Whether key `name` exists, without opening it (no key handle, no access-time or
/// hit/miss statistics): `RedisModule_KeyExists` (Redis 7.0+), else an open for reading.
pub fn key_exists(ctx: &Context, name: &RStr) -> bool {
    if name.is_null() {
        return false;
    }
    match unsafe { raw::RedisModule_KeyExists } {
        Some(exists) => unsafe { exists(ctx.get_raw(), name.ptr()) != 0 },
        None => Key::open(ctx, name, false).is_ok_and(|k| k.kind() != KeyType::Empty),
    }
}

/// An open key, closed on drop.
pub struct Key {
    ptr: *mut RedisModuleKey,
}

impl Key {
    pub fn open(ctx: &Context, name: &RStr, write: bool) -> Result<Key, CmdError> {
        let open = unsafe { raw::RedisModule_OpenKey }.ok_or_else(|| missing_api("OpenKey"))?;
        if name.is_null() {
            return Err(CmdError::err("could not create a key name"));
        }
        let mode = if write {
            MODE_READ | MODE_WRITE
        } else {
            MODE_READ
        };
        let ptr = unsafe { open(ctx.get_raw(), name.ptr(), mode) }.cast::<RedisModuleKey>();
        Ok(Key { ptr })
    }

    pub fn kind(&self) -> KeyType {
        if self.ptr.is_null() {
            return KeyType::Empty;
        }
        match unsafe { raw::RedisModule_KeyType } {
            Some(f) => KeyType::from(unsafe { f(self.ptr) }),
            None => KeyType::Empty,
        }
    }

    /// Number of fields (hash) or entries (stream).
    pub fn value_length(&self) -> usize {
        if self.ptr.is_null() {
            return 0;
        }
        match unsafe { raw::RedisModule_ValueLength } {
            Some(f) => unsafe { f(self.ptr) },
            None => 0,
        }
    }

    pub fn hget(&self, field: &[u8]) -> Result<Option<Vec<u8>>, CmdError> {
        if self.ptr.is_null() {
            return Ok(None);
        }
        self.hget_with(&RStr::new(field), |v| v.map(<[u8]>::to_vec))
    }

    /// Reads one hash field and hands its bytes (borrowed, no copy) to `f`.
    pub fn hget_with<R>(
        &self,
        field: &RStr,
        f: impl FnOnce(Option<&[u8]>) -> R,
    ) -> Result<R, CmdError> {
        if self.ptr.is_null() {
            return Ok(f(None));
        }
        let get = unsafe { raw::RedisModule_HashGet }.ok_or_else(|| missing_api("HashGet"))?;
        if field.is_null() {
            return Err(CmdError::err("could not create a field name"));
        }
        let mut out: *mut RedisModuleString = ptr::null_mut();
        let rc = unsafe {
            get(
                self.ptr,
                HASH_NONE,
                field.ptr(),
                &mut out as *mut *mut RedisModuleString,
                ptr::null_mut::<c_void>(),
            )
        };
        if rc != raw::REDISMODULE_OK as c_int {
            return Err(CmdError::wrong_type("key holds a value that is not a hash"));
        }
        if out.is_null() {
            return Ok(f(None));
        }
        let owned = RStr { ptr: out };
        Ok(f(Some(slice_of(owned.ptr()))))
    }

    /// Reads up to `HGET_MAX` hash fields with one variadic `RedisModule_HashGet` call;
    /// entry `i` of the result holds field `i` (an empty handle when the field or the key is
    /// missing).
    pub fn hget_many(&self, fields: &[&RStr]) -> Result<[RStr; HGET_MAX], CmdError> {
        let mut out: [*mut RedisModuleString; HGET_MAX] = [ptr::null_mut(); HGET_MAX];
        if fields.len() > HGET_MAX || fields.iter().any(|f| f.is_null()) {
            return Err(CmdError::err("could not create a field name"));
        }
        if !self.ptr.is_null() && !fields.is_empty() {
            let get = unsafe { raw::RedisModule_HashGet }.ok_or_else(|| missing_api("HashGet"))?;
            // (field, out) pairs, ended by the first null field; the arguments after it are
            // never read.
            let mut f: [*mut RedisModuleString; HGET_MAX + 1] = [ptr::null_mut(); HGET_MAX + 1];
            for (slot, field) in f.iter_mut().zip(fields) {
                *slot = field.ptr();
            }
            let o = out.as_mut_ptr();
            let rc = unsafe {
                get(
                    self.ptr,
                    HASH_NONE,
                    f[0],
                    o,
                    f[1],
                    o.add(1),
                    f[2],
                    o.add(2),
                    f[3],
                    o.add(3),
                    f[4],
                    o.add(4),
                    f[5],
                    o.add(5),
                    f[6],
                    o.add(6),
                    f[7],
                    o.add(7),
                    f[8],
                    o.add(8),
                    f[9],
                )
            };
            if rc != raw::REDISMODULE_OK as c_int {
                // Free whatever was returned before the failure.
                drop(out.map(|p| RStr { ptr: p }));
                return Err(CmdError::wrong_type("key holds a value that is not a hash"));
            }
        }
        Ok(out.map(|p| RStr { ptr: p }))
    }

    /// Adds `member` with `score` to a sorted set (or updates its score); creates the key.
    pub fn zset_add(&self, score: f64, member: &RStr) -> Result<(), CmdError> {
        let add = unsafe { raw::RedisModule_ZsetAdd }.ok_or_else(|| missing_api("ZsetAdd"))?;
        if self.ptr.is_null() || member.is_null() {
            return Err(CmdError::err("the due index is not open for writing"));
        }
        let mut flags: c_int = 0;
        let rc = unsafe { add(self.ptr, score, member.ptr(), &mut flags) };
        if rc != raw::REDISMODULE_OK as c_int {
            return Err(write_failed("due index"));
        }
        Ok(())
    }

    /// The lowest score of a sorted set (`None` for a missing or empty key, or another type).
    pub fn zset_first_score(&self) -> Option<f64> {
        if self.ptr.is_null() || self.kind() != KeyType::ZSet {
            return None;
        }
        let (Some(first), Some(current), Some(stop)) = (
            unsafe { raw::RedisModule_ZsetFirstInScoreRange },
            unsafe { raw::RedisModule_ZsetRangeCurrentElement },
            unsafe { raw::RedisModule_ZsetRangeStop },
        ) else {
            return None;
        };
        let inf = f64::INFINITY;
        if unsafe { first(self.ptr, -inf, inf, 0, 0) } != raw::REDISMODULE_OK as c_int {
            return None;
        }
        let mut score = 0.0;
        let member = unsafe { current(self.ptr, &mut score) };
        let found = !member.is_null();
        // The element is a new string the caller owns: freed by the RStr's drop.
        drop(RStr { ptr: member });
        unsafe { stop(self.ptr) };
        found.then_some(score)
    }

    /// Removes `member` from a sorted set (deleting the key when it empties).
    pub fn zset_rem(&self, member: &RStr) -> Result<(), CmdError> {
        let rem = unsafe { raw::RedisModule_ZsetRem }.ok_or_else(|| missing_api("ZsetRem"))?;
        if self.ptr.is_null() || member.is_null() {
            return Err(CmdError::err("the due index is not open for writing"));
        }
        let mut deleted: c_int = 0;
        let rc = unsafe { rem(self.ptr, member.ptr(), &mut deleted) };
        if rc != raw::REDISMODULE_OK as c_int {
            return Err(write_failed("due index"));
        }
        Ok(())
    }

    /// Sets (`Some`) or deletes (`None`) one field.
    pub fn hset(&self, field: &RStr, value: Option<&RStr>) -> Result<(), CmdError> {
        let set = unsafe { raw::RedisModule_HashSet }.ok_or_else(|| missing_api("HashSet"))?;
        if self.ptr.is_null() {
            return Err(CmdError::err("key is not open for writing"));
        }
        let v = value.map_or(HASH_DELETE, RStr::ptr);
        if field.is_null() || v.is_null() {
            return Err(CmdError::err("could not create a field or value"));
        }
        let n = unsafe {
            set(
                self.ptr,
                HASH_COUNT_ALL,
                field.ptr(),
                v,
                ptr::null_mut::<c_void>(),
            )
        };
        // A delete of a field that is already gone counts 0 and is not a failure.
        if value.is_some() && n < 1 {
            return Err(write_failed("hash field"));
        }
        Ok(())
    }

    /// Appends one entry of one field with an automatic id; returns the id as (ms, seq).
    pub fn stream_add(&self, field: &RStr, value: &RStr) -> Result<(u64, u64), CmdError> {
        let add = unsafe { raw::RedisModule_StreamAdd }.ok_or_else(|| missing_api("StreamAdd"))?;
        if self.ptr.is_null() {
            return Err(CmdError::err("stream is not open for writing"));
        }
        if field.is_null() || value.is_null() {
            return Err(CmdError::err(
                "the event stream refused the entry; nothing was changed",
            ));
        }
        let mut argv = [field.ptr(), value.ptr()];
        let mut id = raw::RedisModuleStreamID { ms: 0, seq: 0 };
        let rc = unsafe { add(self.ptr, STREAM_ADD_AUTOID, &mut id, argv.as_mut_ptr(), 1) };
        if rc != raw::REDISMODULE_OK as c_int {
            return Err(CmdError::err(
                "the event stream refused the entry; nothing was changed",
            ));
        }
        Ok((id.ms, id.seq))
    }

    pub fn string_get(&self) -> Option<Vec<u8>> {
        if self.ptr.is_null() || self.kind() != KeyType::String {
            return None;
        }
        let dma = unsafe { raw::RedisModule_StringDMA }?;
        let mut len: usize = 0;
        let p = unsafe { dma(self.ptr, &mut len, MODE_READ) };
        if p.is_null() {
            return None;
        }
        Some(unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) }.to_vec())
    }

    /// Sets the string value and its TTL.
    pub fn string_set_with_expire(&self, value: &RStr, ttl_ms: i64) -> Result<(), CmdError> {
        let set = unsafe { raw::RedisModule_StringSet }.ok_or_else(|| missing_api("StringSet"))?;
        let expire =
            unsafe { raw::RedisModule_SetExpire }.ok_or_else(|| missing_api("SetExpire"))?;
        if self.ptr.is_null() {
            return Err(CmdError::err("key is not open for writing"));
        }
        if value.is_null() {
            return Err(CmdError::err("could not create a value"));
        }
        if unsafe { set(self.ptr, value.ptr()) } != raw::REDISMODULE_OK as c_int {
            return Err(write_failed("op-id record"));
        }
        if unsafe { expire(self.ptr, ttl_ms) } != raw::REDISMODULE_OK as c_int {
            return Err(write_failed("op-id record expiry"));
        }
        Ok(())
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            if let Some(close) = unsafe { raw::RedisModule_CloseKey } {
                unsafe { close(self.ptr) };
            }
        }
    }
}

pub fn now_ms() -> i64 {
    match unsafe { raw::RedisModule_Milliseconds } {
        Some(f) => unsafe { f() },
        None => 0,
    }
}

/// Tells Redis a key was written (WATCH, client-side caching). The module turns off the
/// implicit signal on closing a key opened for writing, so that a rejected command, which
/// opens keys for writing but writes nothing, signals nothing.
pub fn signal_modified(ctx: &Context, key: &RStr) {
    if key.is_null() {
        return;
    }
    if let Some(signal) = unsafe { raw::RedisModule_SignalModifiedKey } {
        unsafe { signal(ctx.get_raw(), key.ptr()) };
    }
}

/// Keyspace notification with a static event name.
pub fn notify(ctx: &Context, kind: c_int, event: &CStr, key: &RStr) {
    if key.is_null() {
        return;
    }
    if let Some(f) = unsafe { raw::RedisModule_NotifyKeyspaceEvent } {
        unsafe { f(ctx.get_raw(), kind, event.as_ptr(), key.ptr()) };
    }
}

/// The arguments of a command to propagate: RedisModuleStrings borrowed from [`RStr`]s that
/// outlive the list (built on the stack for up to `ARGV_INLINE` arguments).
#[derive(Default)]
pub struct Argv<'a> {
    ptrs: SmallVec<[*mut RedisModuleString; ARGV_INLINE]>,
    strings: PhantomData<&'a RStr>,
}

impl<'a> Argv<'a> {
    pub fn new() -> Argv<'a> {
        Argv::default()
    }

    pub fn of<const N: usize>(args: [&'a RStr; N]) -> Argv<'a> {
        let mut argv = Argv::new();
        for s in args {
            argv.push(s);
        }
        argv
    }

    pub fn push(&mut self, s: &'a RStr) {
        self.ptrs.push(s.ptr());
    }

    pub fn len(&self) -> usize {
        self.ptrs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ptrs.is_empty()
    }
}

/// Propagates `cmd argv...` to replicas and the AOF (inside the MULTI/EXEC Redis wraps around a
/// module command's effects). Every argument is an existing RedisModuleString: Redis
/// takes a reference to each (no copy, no allocation per argument).
pub fn replicate(ctx: &Context, cmd: &CStr, argv: &mut Argv) -> Result<(), CmdError> {
    let rep = unsafe { raw::RedisModule_Replicate }.ok_or_else(|| missing_api("Replicate"))?;
    let argv = &mut argv.ptrs;
    if argv.is_empty() || argv.iter().any(|p| p.is_null()) {
        return Err(CmdError::err(
            "could not propagate the change to replicas/AOF",
        ));
    }
    let rc = unsafe {
        rep(
            ctx.get_raw(),
            cmd.as_ptr(),
            c"v".as_ptr(),
            argv.as_mut_ptr(),
            argv.len(),
        )
    };
    if rc == raw::REDISMODULE_OK as c_int {
        Ok(())
    } else {
        Err(CmdError::err(format!(
            "could not propagate {} to replicas/AOF",
            cmd.to_string_lossy()
        )))
    }
}
