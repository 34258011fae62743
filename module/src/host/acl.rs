//! ACL checks the module makes itself.
//!
//! - Always: tally's helper keys (stream, sequence hash, op-id record) are derived, not
//!   declared, so Redis cannot check them; the calling user must have write permission on
//!   each (`NOPERM` otherwise).
//! - Only where the server cannot give module commands ACL categories
//!   (`RedisModule_SetCommandACLCategories` is missing: Redis 7.0): a user's category rules
//!   (`-@write`, `+@read`) do not reach tally's commands there, so the module requires what
//!   the commands amount to. A mutating command runs only if the user may run each core
//!   write it performs (`HSET` on every data key, `XADD` on the stream, `HSET` on the
//!   sequence hash, `SET` on the op-id record when `ID` is given); a read command only if
//!   the user may `HGET` the key.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::OnceLock;

use redis_module::raw::{self, RedisModuleString, RedisModuleUser};
use redis_module::{AclPermissions, Context};

use crate::domain::error::CmdError;
use crate::host::ffi::RStr;

/// Set at load when the server lacks `RedisModule_SetCommandACLCategories`.
static ENFORCE_CORE_COMMANDS: AtomicBool = AtomicBool::new(false);

pub fn set_enforce_core_commands(on: bool) {
    ENFORCE_CORE_COMMANDS.store(on, Relaxed);
}

pub fn enforces_core_commands() -> bool {
    ENFORCE_CORE_COMMANDS.load(Relaxed)
}

/// The calling user, freed on drop; `None` inside an internal call (no client).
struct User(*mut RedisModuleUser);

impl User {
    fn current(ctx: &Context) -> Result<Option<User>, CmdError> {
        let name = ctx.get_current_user();
        if name.inner.is_null() {
            return Ok(None);
        }
        let lookup = unsafe { raw::RedisModule_GetModuleUserFromUserName }.ok_or_else(|| {
            CmdError::err("this Redis lacks the ACL module API (Redis 7.0+ required)")
        })?;
        let user = unsafe { lookup(name.inner) };
        if user.is_null() {
            return Err(CmdError::code(
                "NOPERM",
                "the current user does not exist or is disabled",
            ));
        }
        Ok(Some(User(user)))
    }

    fn may_write_key(&self, key: &RStr) -> Result<bool, CmdError> {
        let check = unsafe { raw::RedisModule_ACLCheckKeyPermissions }
            .ok_or_else(|| CmdError::err("this Redis lacks RedisModule_ACLCheckKeyPermissions"))?;
        let flags = (AclPermissions::INSERT | AclPermissions::UPDATE).bits();
        Ok(!key.is_null()
            && unsafe { check(self.0, key.ptr(), flags) } == raw::REDISMODULE_OK as i32)
    }

    fn may_run(&self, argv: &mut [*mut RedisModuleString]) -> Result<bool, CmdError> {
        let check = unsafe { raw::RedisModule_ACLCheckCommandPermissions }.ok_or_else(|| {
            CmdError::err("this Redis lacks RedisModule_ACLCheckCommandPermissions")
        })?;
        if argv.iter().any(|p| p.is_null()) {
            return Err(CmdError::err("could not create a string"));
        }
        Ok(
            unsafe { check(self.0, argv.as_mut_ptr(), argv.len() as i32) }
                == raw::REDISMODULE_OK as i32,
        )
    }
}

/// The constant words of the core commands, created once (Redis's main thread only).
struct Words {
    hset: RStr,
    hget: RStr,
    xadd: RStr,
    set: RStr,
    field: RStr,
    value: RStr,
    star: RStr,
    event: RStr,
}

fn words() -> &'static Words {
    static WORDS: OnceLock<Words> = OnceLock::new();
    WORDS.get_or_init(|| Words {
        hset: RStr::new(b"HSET"),
        hget: RStr::new(b"HGET"),
        xadd: RStr::new(b"XADD"),
        set: RStr::new(b"SET"),
        field: RStr::new(b"f"),
        value: RStr::new(b"0"),
        star: RStr::new(b"*"),
        event: RStr::new(b"event"),
    })
}

impl Drop for User {
    fn drop(&mut self) {
        if let Some(free) = unsafe { raw::RedisModule_FreeModuleUser } {
            unsafe { free(self.0) };
        }
    }
}

fn denied_core(command: &str, key: &str) -> CmdError {
    CmdError::code(
        "NOPERM",
        format!("this user may not run {command} on '{key}', which this command performs"),
    )
}

/// A key name and its RedisModuleString.
pub type NamedKey<'a> = (&'a str, &'a RStr);

/// A mutating command: write permission on the helper keys, and (Redis 7.0) the core writes.
pub fn check_write(
    ctx: &Context,
    data_keys: &[&str],
    stream: NamedKey,
    seq: NamedKey,
    op: Option<NamedKey>,
) -> Result<(), CmdError> {
    let Some(user) = User::current(ctx)? else {
        return Ok(());
    };
    if !enforces_core_commands() {
        for (name, key) in [Some(stream), Some(seq), op].into_iter().flatten() {
            if !user.may_write_key(key)? {
                return Err(CmdError::code(
                    "NOPERM",
                    format!("this user has no write access to tally's key '{name}'"),
                ));
            }
        }
        return Ok(());
    }
    // Redis 7.0: each core write below is checked with its keys (XADD on the stream, HSET
    // on the sequence hash, SET on the op-id record), which covers the write permission on
    // those keys, so they are not checked twice.
    let w = words();
    let hset = |key: &RStr| [w.hset.ptr(), key.ptr(), w.field.ptr(), w.value.ptr()];
    for k in data_keys {
        let rs = RStr::new(k.as_bytes());
        if !user.may_run(&mut hset(&rs))? {
            return Err(denied_core("HSET", k));
        }
    }
    if !user.may_run(&mut [
        w.xadd.ptr(),
        stream.1.ptr(),
        w.star.ptr(),
        w.event.ptr(),
        w.value.ptr(),
    ])? {
        return Err(denied_core("XADD", stream.0));
    }
    if !user.may_run(&mut hset(seq.1))? {
        return Err(denied_core("HSET", seq.0));
    }
    if let Some((name, key)) = op {
        if !user.may_run(&mut [w.set.ptr(), key.ptr(), w.value.ptr()])? {
            return Err(denied_core("SET", name));
        }
    }
    Ok(())
}

/// A read command (Redis 7.0): the user must be allowed `HGET key`.
pub fn check_read(ctx: &Context, key: &str) -> Result<(), CmdError> {
    if !enforces_core_commands() {
        return Ok(());
    }
    let Some(user) = User::current(ctx)? else {
        return Ok(());
    };
    let w = words();
    let rs = RStr::new(key.as_bytes());
    if !user.may_run(&mut [w.hget.ptr(), rs.ptr(), w.field.ptr()])? {
        return Err(denied_core("HGET", key));
    }
    Ok(())
}

/// A hold command: write permission on the key's holds hash and the due index
/// (docs/holds.md), checked with the key permissions on every Redis version.
pub fn check_hold_keys(ctx: &Context, keys: &[NamedKey]) -> Result<(), CmdError> {
    let Some(user) = User::current(ctx)? else {
        return Ok(());
    };
    for (name, key) in keys {
        if !user.may_write_key(key)? {
            return Err(CmdError::code(
                "NOPERM",
                format!("this user has no write access to tally's key '{name}'"),
            ));
        }
    }
    Ok(())
}
