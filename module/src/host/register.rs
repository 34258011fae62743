//! Registration of the commands at load: each with its flags, its key spec, its summary
//! and arity (COMMAND INFO / COMMAND DOCS) and its ACL categories.

use std::ffi::CString;
use std::os::raw::c_int;

use redis_module::raw::{self, RedisModuleCommand};
use redis_module::Context;

use crate::host::acl;
use crate::host::command::{KeyAccess, Registration, Spec};

const OK: c_int = raw::REDISMODULE_OK as c_int;

/// The key spec's flags (`REDISMODULE_CMD_KEY_*`) of a [`KeyAccess`].
fn key_flags(access: KeyAccess) -> u64 {
    let flags = match access {
        KeyAccess::Read => raw::REDISMODULE_CMD_KEY_RO | raw::REDISMODULE_CMD_KEY_ACCESS,
        KeyAccess::ReadUpdate => {
            raw::REDISMODULE_CMD_KEY_RW
                | raw::REDISMODULE_CMD_KEY_ACCESS
                | raw::REDISMODULE_CMD_KEY_UPDATE
        }
        KeyAccess::Insert => raw::REDISMODULE_CMD_KEY_RW | raw::REDISMODULE_CMD_KEY_INSERT,
        KeyAccess::Update => raw::REDISMODULE_CMD_KEY_RW | raw::REDISMODULE_CMD_KEY_UPDATE,
    };
    u64::from(flags)
}

fn c_string(text: &str) -> Result<CString, String> {
    CString::new(text).map_err(|e| e.to_string())
}

/// One range spec from the first key to the last, then the all-zero terminator.
fn key_specs(spec: &Spec) -> [raw::RedisModuleCommandKeySpec; 2] {
    // SAFETY: a key spec is plain data; all zeros is the terminator Redis expects.
    let mut key_specs: [raw::RedisModuleCommandKeySpec; 2] = unsafe { std::mem::zeroed() };
    key_specs[0].flags = key_flags(spec.access);
    key_specs[0].begin_search_type =
        raw::RedisModuleKeySpecBeginSearchType_REDISMODULE_KSPEC_BS_INDEX;
    key_specs[0].bs.index = raw::RedisModuleCommandKeySpec__bindgen_ty_1__bindgen_ty_1 {
        pos: spec.first_key,
    };
    key_specs[0].find_keys_type = raw::RedisModuleKeySpecFindKeysType_REDISMODULE_KSPEC_FK_RANGE;
    key_specs[0].fk.range = raw::RedisModuleCommandKeySpec__bindgen_ty_2__bindgen_ty_1 {
        lastkey: spec.last_key - spec.first_key,
        keystep: 1,
        limit: 0,
    };
    key_specs
}

/// Arity, summary and key spec for COMMAND INFO / COMMAND DOCS and for ACL key checks.
fn set_command_info(cmd: *mut RedisModuleCommand, spec: &Spec) -> Result<(), String> {
    let Some(set_info) = (unsafe { raw::RedisModule_SetCommandInfo }) else {
        return Ok(());
    };
    let version = raw::RedisModuleCommandInfoVersion {
        version: 1,
        sizeof_historyentry: std::mem::size_of::<raw::RedisModuleCommandHistoryEntry>(),
        sizeof_keyspec: std::mem::size_of::<raw::RedisModuleCommandKeySpec>(),
        sizeof_arg: std::mem::size_of::<raw::RedisModuleCommandArg>(),
    };
    let summary = c_string(spec.summary)?;
    let mut key_specs = key_specs(spec);
    let since = c_string(env!("CARGO_PKG_VERSION"))?;
    let info = raw::RedisModuleCommandInfo {
        version: &version,
        summary: summary.as_ptr(),
        complexity: std::ptr::null(),
        since: since.as_ptr(),
        history: std::ptr::null_mut(),
        tips: std::ptr::null(),
        arity: spec.arity,
        key_specs: key_specs.as_mut_ptr(),
        args: std::ptr::null_mut(),
    };
    // Redis copies what it keeps of `info` before returning.
    if unsafe { set_info(cmd, &info) } != OK {
        return Err(format!("could not set the command info of {}", spec.name));
    }
    Ok(())
}

/// A `tally` ACL category needs Redis 7.4+; older servers get only the flag-implied ones.
fn add_tally_category(ctx: &Context) -> Result<bool, String> {
    match unsafe { raw::RedisModule_AddACLCategory } {
        Some(add) => {
            let name = c_string("tally")?;
            Ok(unsafe { add(ctx.get_raw(), name.as_ptr()) } == OK)
        }
        None => Ok(false),
    }
}

/// `write` or `read` (by the command's flags), plus `tally` where the server has it.
fn set_acl_categories(
    cmd: *mut RedisModuleCommand,
    spec: &Spec,
    has_category: bool,
) -> Result<(), String> {
    let set_categories = unsafe { raw::RedisModule_SetCommandACLCategories };
    // Redis 7.0: no categories for module commands, so the module enforces the rule itself.
    acl::set_enforce_core_commands(set_categories.is_none());
    let Some(set) = set_categories else {
        return Ok(());
    };
    let base = if spec.flags.starts_with("write") {
        "write"
    } else {
        "read"
    };
    let cats = if has_category {
        format!("{base} tally")
    } else {
        base.to_string()
    };
    let ccats = c_string(&cats)?;
    if unsafe { set(cmd, ccats.as_ptr()) } != OK {
        return Err(format!("could not set ACL categories of {}", spec.name));
    }
    Ok(())
}

/// Creates every command of `commands` with its info and ACL categories.
pub fn register(ctx: &Context, commands: &[Registration]) -> Result<(), String> {
    let create =
        unsafe { raw::RedisModule_CreateCommand }.ok_or("RedisModule_CreateCommand missing")?;
    let has_category = add_tally_category(ctx)?;
    let get = unsafe { raw::RedisModule_GetCommand }.ok_or("RedisModule_GetCommand missing")?;
    for Registration { spec, entry } in commands {
        let name = spec.name;
        let cname = c_string(name)?;
        let cflags = c_string(spec.flags)?;
        let rc = unsafe {
            create(
                ctx.get_raw(),
                cname.as_ptr(),
                Some(*entry),
                cflags.as_ptr(),
                spec.first_key,
                spec.last_key,
                1,
            )
        };
        if rc != OK {
            return Err(format!("could not create command {name}"));
        }
        let cmd = unsafe { get(ctx.get_raw(), cname.as_ptr()) };
        if cmd.is_null() {
            return Err(format!("could not look up command {name}"));
        }
        set_command_info(cmd, spec)?;
        set_acl_categories(cmd, spec, has_category)?;
    }
    Ok(())
}
