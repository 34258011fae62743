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

use redis_module::raw::{self, RedisModuleString, RedisModuleUser};
use redis_module::{AclPermissions, Context};

use crate::error::CmdError;
use crate::ffi::RStr;

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
        let lookup = unsafe { raw::RedisModule_GetModuleUserFromUserName }
            .ok_or_else(|| CmdError::err("this Redis lacks the ACL module API (Redis 7.0+ required)"))?;
        let user = unsafe { lookup(name.inner) };
        if user.is_null() {
            return Err(CmdError::code("NOPERM", "the current user does not exist or is disabled"));
        }
        Ok(Some(User(user)))
    }

    fn may_write_key(&self, key: *mut RedisModuleString) -> Result<bool, CmdError> {
        let check = unsafe { raw::RedisModule_ACLCheckKeyPermissions }
            .ok_or_else(|| CmdError::err("this Redis lacks RedisModule_ACLCheckKeyPermissions"))?;
        let flags = (AclPermissions::INSERT | AclPermissions::UPDATE).bits();
        Ok(!key.is_null() && unsafe { check(self.0, key, flags) } == raw::REDISMODULE_OK as i32)
    }

    fn may_run(&self, argv: &[&[u8]]) -> Result<bool, CmdError> {
        let check = unsafe { raw::RedisModule_ACLCheckCommandPermissions }
            .ok_or_else(|| CmdError::err("this Redis lacks RedisModule_ACLCheckCommandPermissions"))?;
        let owned: smallvec::SmallVec<[RStr; 5]> = argv.iter().map(|a| RStr::new(a)).collect();
        let mut ptrs: smallvec::SmallVec<[*mut RedisModuleString; 5]> = owned.iter().map(RStr::ptr).collect();
        if ptrs.iter().any(|p| p.is_null()) {
            return Err(CmdError::err("could not create a string"));
        }
        Ok(unsafe { check(self.0, ptrs.as_mut_ptr(), ptrs.len() as i32) } == raw::REDISMODULE_OK as i32)
    }
}

impl Drop for User {
    fn drop(&mut self) {
        if let Some(free) = unsafe { raw::RedisModule_FreeModuleUser } {
            unsafe { free(self.0) };
        }
    }
}

fn denied_core(argv: &[&[u8]]) -> CmdError {
    let name = argv.first().map(|c| String::from_utf8_lossy(c).into_owned()).unwrap_or_default();
    let key = argv.get(1).map(|k| crate::args::printable(k)).unwrap_or_default();
    CmdError::code("NOPERM", format!("this user may not run {name} on '{key}', which this command performs"))
}

/// A mutating command: write permission on the helper keys, and (Redis 7.0) the core writes.
pub fn check_write(
    ctx: &Context,
    data_keys: &[&str],
    helpers: &[(&str, *mut RedisModuleString)],
    stream: &str,
    seq: &str,
    op_key: Option<&str>,
) -> Result<(), CmdError> {
    let Some(user) = User::current(ctx)? else { return Ok(()) };
    for (name, key) in helpers {
        if !user.may_write_key(*key)? {
            return Err(CmdError::code("NOPERM", format!("this user has no write access to tally's key '{name}'")));
        }
    }
    if !enforces_core_commands() {
        return Ok(());
    }
    let hset = |k: &'_ str| -> Vec<Vec<u8>> { vec![b"HSET".to_vec(), k.as_bytes().to_vec(), b"f".to_vec(), b"0".to_vec()] };
    let mut core: Vec<Vec<Vec<u8>>> = data_keys.iter().map(|k| hset(k)).collect();
    core.push(vec![b"XADD".to_vec(), stream.as_bytes().to_vec(), b"*".to_vec(), b"event".to_vec(), b"{}".to_vec()]);
    core.push(hset(seq));
    if let Some(op) = op_key {
        core.push(vec![b"SET".to_vec(), op.as_bytes().to_vec(), b"r".to_vec()]);
    }
    for argv in &core {
        let argv: Vec<&[u8]> = argv.iter().map(Vec::as_slice).collect();
        if !user.may_run(&argv)? {
            return Err(denied_core(&argv));
        }
    }
    Ok(())
}

/// A read command (Redis 7.0): the user must be allowed `HGET key`.
pub fn check_read(ctx: &Context, key: &str) -> Result<(), CmdError> {
    if !enforces_core_commands() {
        return Ok(());
    }
    let Some(user) = User::current(ctx)? else { return Ok(()) };
    let argv: [&[u8]; 3] = [b"HGET", key.as_bytes(), b"f"];
    if !user.may_run(&argv)? {
        return Err(denied_core(&argv));
    }
    Ok(())
}
