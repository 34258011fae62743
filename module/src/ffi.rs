//! The thin layer over the Redis module key API. Binary-safe (no C strings built from
//! client bytes) and panic-free: every pointer is checked before use.

use std::os::raw::{c_int, c_void};
use std::ptr;

use redis_module::raw::{self, KeyType, RedisModuleKey, RedisModuleString};
use redis_module::{Context, RedisString};

use crate::error::CmdError;

const MODE_READ: c_int = 1;
const MODE_WRITE: c_int = 2;
const HASH_NONE: c_int = 0;
const STREAM_ADD_AUTOID: c_int = 1;

fn missing_api(name: &str) -> CmdError {
    CmdError::err(format!("this Redis lacks the module API {name}"))
}

pub fn bytes(ctx: &Context, data: &[u8]) -> RedisString {
    RedisString::create_from_slice(ctx.get_raw(), data)
}

fn bytes_raw(data: &[u8]) -> RedisString {
    RedisString::create_from_slice(ptr::null_mut(), data)
}

/// An open key, closed on drop.
pub struct Key {
    ptr: *mut RedisModuleKey,
    ctx: *mut raw::RedisModuleCtx,
}

impl Key {
    pub fn open(ctx: &Context, name: &RedisString, write: bool) -> Result<Key, CmdError> {
        let open = unsafe { raw::RedisModule_OpenKey }.ok_or_else(|| missing_api("OpenKey"))?;
        let mode = if write { MODE_READ | MODE_WRITE } else { MODE_READ };
        let ptr = unsafe { open(ctx.get_raw(), name.inner, mode) }.cast::<RedisModuleKey>();
        Ok(Key { ptr, ctx: ctx.get_raw() })
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
    pub fn len(&self) -> usize {
        if self.ptr.is_null() {
            return 0;
        }
        match unsafe { raw::RedisModule_ValueLength } {
            Some(f) => unsafe { f(self.ptr) },
            None => 0,
        }
    }

    pub fn hget(&self, ctx: &Context, field: &[u8]) -> Result<Option<Vec<u8>>, CmdError> {
        if self.ptr.is_null() {
            return Ok(None);
        }
        let get = unsafe { raw::RedisModule_HashGet }.ok_or_else(|| missing_api("HashGet"))?;
        let f = bytes(ctx, field);
        let mut out: *mut RedisModuleString = ptr::null_mut();
        let rc = unsafe {
            get(self.ptr, HASH_NONE, f.inner, &mut out as *mut *mut RedisModuleString, ptr::null_mut::<c_void>())
        };
        if rc != raw::REDISMODULE_OK as c_int {
            return Err(CmdError::wrong_type("key holds a value that is not a hash"));
        }
        if out.is_null() {
            return Ok(None);
        }
        let value = RedisString::from_redis_module_string(ctx.get_raw(), out);
        Ok(Some(value.as_slice().to_vec()))
    }

    pub fn hset(&self, ctx: &Context, field: &[u8], value: &[u8]) -> Result<(), CmdError> {
        let set = unsafe { raw::RedisModule_HashSet }.ok_or_else(|| missing_api("HashSet"))?;
        if self.ptr.is_null() {
            return Err(CmdError::err("key is not open for writing"));
        }
        let (f, v) = (bytes(ctx, field), bytes(ctx, value));
        unsafe { set(self.ptr, HASH_NONE, f.inner, v.inner, ptr::null_mut::<c_void>()) };
        Ok(())
    }

    pub fn hdel(&self, _ctx: &Context, field: &[u8]) -> Result<(), CmdError> {
        let set = unsafe { raw::RedisModule_HashSet }.ok_or_else(|| missing_api("HashSet"))?;
        if self.ptr.is_null() {
            return Err(CmdError::err("key is not open for writing"));
        }
        let f = bytes_raw(field);
        // REDISMODULE_HASH_DELETE is the sentinel pointer value 1.
        let delete = 1usize as *mut RedisModuleString;
        unsafe { set(self.ptr, HASH_NONE, f.inner, delete, ptr::null_mut::<c_void>()) };
        Ok(())
    }

    /// Appends one entry with an automatic id; returns the id as `<ms>-<seq>`.
    pub fn stream_add(&self, ctx: &Context, fields: &[(&[u8], &[u8])]) -> Result<String, CmdError> {
        let add = unsafe { raw::RedisModule_StreamAdd }.ok_or_else(|| missing_api("StreamAdd"))?;
        if self.ptr.is_null() {
            return Err(CmdError::err("stream is not open for writing"));
        }
        let owned: Vec<RedisString> = fields
            .iter()
            .flat_map(|(f, v)| [bytes(ctx, f), bytes(ctx, v)])
            .collect();
        let mut argv: Vec<*mut RedisModuleString> = owned.iter().map(|s| s.inner).collect();
        let mut id = raw::RedisModuleStreamID { ms: 0, seq: 0 };
        let rc = unsafe { add(self.ptr, STREAM_ADD_AUTOID, &mut id, argv.as_mut_ptr(), fields.len() as i64) };
        if rc != raw::REDISMODULE_OK as c_int {
            return Err(CmdError::err("the event stream refused the entry; nothing was changed"));
        }
        Ok(format!("{}-{}", id.ms, id.seq))
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

    pub fn string_set_with_expire(&self, ctx: &Context, value: &[u8], ttl_ms: i64) -> Result<(), CmdError> {
        let set = unsafe { raw::RedisModule_StringSet }.ok_or_else(|| missing_api("StringSet"))?;
        let expire = unsafe { raw::RedisModule_SetExpire }.ok_or_else(|| missing_api("SetExpire"))?;
        let v = bytes(ctx, value);
        unsafe {
            set(self.ptr, v.inner);
            expire(self.ptr, ttl_ms);
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
        let _ = self.ctx;
    }
}

pub fn now_ms() -> i64 {
    match unsafe { raw::RedisModule_Milliseconds } {
        Some(f) => (unsafe { f() }) as i64,
        None => 0,
    }
}
