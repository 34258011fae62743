//! tally: a Redis module whose commands change balances, coupon stock and usage quotas
//! and append one history event per change to a Redis stream, in one atomic step.
//!
//! Layout: `decimal`, `args`, `logic`, `event`, `period`, `slot` are pure Rust (unit tested
//! without Redis); `ffi` and `tx` are the thin layer over the module API; `commands/*`
//! glue the two together, one file per command family.

pub mod args;
pub mod commands;
pub mod config;
pub mod decimal;
pub mod error;
pub mod event;
pub mod ffi;
pub mod logic;
pub mod period;
pub mod slot;
pub mod stats;
pub mod tx;

use std::ffi::CString;
use std::os::raw::c_int;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering::Relaxed;

use redis_module::configuration::ConfigurationFlags;
use redis_module::raw::{self, RedisModuleCtx, RedisModuleString};
use redis_module::{redis_module, Context, InfoContext, RedisResult, RedisString, Status};

use crate::error::CmdError;

type Handler = fn(&Context, &[&[u8]]) -> commands::Result;

fn reply_error(ctx: &Context, message: &str) -> c_int {
    let clean = message.replace('\0', " ");
    let text = CString::new(clean).unwrap_or_default();
    match unsafe { raw::RedisModule_ReplyWithError } {
        Some(f) => unsafe { f(ctx.get_raw(), text.as_ptr()) },
        None => raw::REDISMODULE_ERR as c_int,
    }
}

/// Runs a handler with the arguments after the command name as byte slices. A panic is a
/// bug; it is caught here so it can never unwind into Redis.
fn dispatch(raw_ctx: *mut RedisModuleCtx, argv: *mut *mut RedisModuleString, argc: c_int, handler: Handler) -> c_int {
    let ctx = Context::new(raw_ctx);
    let mut args: Vec<&[u8]> = Vec::with_capacity(argc.max(0) as usize);
    let Some(ptr_len) = (unsafe { raw::RedisModule_StringPtrLen }) else {
        return reply_error(&ctx, "ERR this Redis lacks RedisModule_StringPtrLen");
    };
    for i in 1..argc.max(0) as usize {
        let s = unsafe { *argv.add(i) };
        let mut len: usize = 0;
        let p = unsafe { ptr_len(s, &mut len) };
        if p.is_null() {
            args.push(&[]);
        } else {
            args.push(unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) });
        }
    }
    match catch_unwind(AssertUnwindSafe(|| handler(&ctx, &args))) {
        Ok(Ok(value)) => ctx.reply(Ok(value)) as c_int,
        Ok(Err(CmdError::Arity)) => {
            stats::rejected("ERR");
            match unsafe { raw::RedisModule_WrongArity } {
                Some(f) => unsafe { f(raw_ctx) },
                None => reply_error(&ctx, "ERR wrong number of arguments"),
            }
        }
        Ok(Err(e)) => {
            stats::rejected(e.code_name());
            reply_error(&ctx, &e.to_string())
        }
        Err(_) => reply_error(&ctx, "ERR internal error in tally (please report it)"),
    }
}

macro_rules! commands_table {
    ($( $fn_name:ident => $name:literal, $handler:path, $flags:literal, $first:literal, $last:literal ;)*) => {
        $(
            extern "C" fn $fn_name(ctx: *mut RedisModuleCtx, argv: *mut *mut RedisModuleString, argc: c_int) -> c_int {
                dispatch(ctx, argv, argc, $handler)
            }
        )*
        /// (name, entry point, flags, first key, last key)
        const COMMANDS: &[(&str, extern "C" fn(*mut RedisModuleCtx, *mut *mut RedisModuleString, c_int) -> c_int, &str, c_int, c_int)] = &[
            $( ($name, $fn_name, $flags, $first, $last), )*
        ];
    };
}

commands_table! {
    cmd_asset_incr => "asset.incr", commands::asset::incr, "write deny-oom", 1, 1;
    cmd_asset_get => "asset.get", commands::asset::get, "readonly", 1, 1;
    cmd_asset_transfer => "asset.transfer", commands::asset::transfer, "write deny-oom fast", 1, 2;
    cmd_coupon_create => "coupon.create", commands::coupon::create, "write deny-oom fast", 1, 1;
    cmd_coupon_claim => "coupon.claim", commands::coupon::claim, "write deny-oom fast", 1, 1;
    cmd_coupon_release => "coupon.release", commands::coupon::release, "write deny-oom fast", 1, 1;
    cmd_coupon_info => "coupon.info", commands::coupon::info, "readonly fast", 1, 1;
    cmd_usage_limit => "usage.limit", commands::usage::limit, "write deny-oom fast", 1, 1;
    cmd_usage_consume => "usage.consume", commands::usage::consume, "write deny-oom fast", 1, 1;
    cmd_usage_get => "usage.get", commands::usage::get, "readonly fast", 1, 1;
}

fn register_commands(ctx: &Context) -> Result<(), String> {
    let create = unsafe { raw::RedisModule_CreateCommand }.ok_or("RedisModule_CreateCommand missing")?;
    // A `tally` ACL category needs Redis 7.4+; older servers get only the flag-implied ones.
    let has_category = match unsafe { raw::RedisModule_AddACLCategory } {
        Some(add) => {
            let name = CString::new("tally").map_err(|e| e.to_string())?;
            unsafe { add(ctx.get_raw(), name.as_ptr()) == raw::REDISMODULE_OK as c_int }
        }
        None => false,
    };
    for (name, entry, flags, first, last) in COMMANDS {
        let cname = CString::new(*name).map_err(|e| e.to_string())?;
        let cflags = CString::new(*flags).map_err(|e| e.to_string())?;
        let rc = unsafe { create(ctx.get_raw(), cname.as_ptr(), Some(*entry), cflags.as_ptr(), *first, *last, 1) };
        if rc != raw::REDISMODULE_OK as c_int {
            return Err(format!("could not create command {name}"));
        }
        if let (Some(set), Some(get)) =
            (unsafe { raw::RedisModule_SetCommandACLCategories }, unsafe { raw::RedisModule_GetCommand })
        {
            let base = if flags.starts_with("write") { "write" } else { "read" };
            let cats = if has_category { format!("{base} tally") } else { base.to_string() };
            let ccats = CString::new(cats).map_err(|e| e.to_string())?;
            let cmd = unsafe { get(ctx.get_raw(), cname.as_ptr()) };
            if !cmd.is_null() && unsafe { set(cmd, ccats.as_ptr()) } != raw::REDISMODULE_OK as c_int {
                return Err(format!("could not set ACL categories of {name}"));
            }
        }
    }
    Ok(())
}

/// Module arguments: `prefix <p>`, `max-backlog <n>`, `op-ttl-ms <n>` (pairs).
fn apply_args(args: &[RedisString]) -> Result<(), String> {
    if args.len() % 2 != 0 {
        return Err("module arguments come in pairs: <name> <value>".into());
    }
    for pair in args.chunks(2) {
        let name = String::from_utf8_lossy(pair[0].as_slice()).to_ascii_lowercase();
        let value = String::from_utf8_lossy(pair[1].as_slice()).into_owned();
        let number = || value.parse::<i64>().map_err(|_| format!("{name} needs an integer, got '{value}'"));
        match name.as_str() {
            "prefix" => {
                if value.is_empty() || value.contains(['{', '}', ' ']) {
                    return Err("prefix must be non-empty without '{', '}' or spaces".into());
                }
                match config::prefix_cell().lock() {
                    Ok(mut p) => *p = value.clone(),
                    Err(_) => return Err("prefix lock poisoned".into()),
                }
            }
            "max-backlog" => config::MAX_BACKLOG.store(number()?.max(0), Relaxed),
            "op-ttl-ms" => {
                let n = number()?;
                if n < 1000 {
                    return Err("op-ttl-ms must be at least 1000".into());
                }
                config::OP_TTL_MS.store(n, Relaxed)
            }
            other => return Err(format!("unknown module argument '{other}'")),
        }
    }
    Ok(())
}

fn init(ctx: &Context, args: &[RedisString]) -> Status {
    if let Err(e) = apply_args(args) {
        ctx.log_warning(&format!("tally: {e}"));
        return Status::Err;
    }
    if let Err(e) = register_commands(ctx) {
        ctx.log_warning(&format!("tally: {e}"));
        return Status::Err;
    }
    Status::Ok
}

#[allow(deprecated)] // the builder API needs a section per call; these counters are flat
fn info(ctx: &InfoContext, _for_crash_report: bool) {
    let _ = ctx.add_info_section(Some("stats"));
    for (name, value) in stats::snapshot() {
        let _ = ctx.add_info_field_long_long(&name, value as i64);
    }
    let _ = ctx.add_info_field_long_long("max_backlog", config::max_backlog());
    let _ = ctx.add_info_field_long_long("op_ttl_ms", config::op_ttl_ms());
}

/// Unit tests run outside Redis, where the Redis allocator does not exist.
macro_rules! tally_module {
    ($alloc:ty, $alloc_init:expr) => {
    redis_module! {
        name: "tally",
        version: 1,
        allocator: ($alloc, $alloc_init),
        data_types: [],
        init: init,
        info: info,
        commands: [],
        configurations: [
            i64: [
                ["max-backlog", &config::MAX_BACKLOG, config::DEFAULT_MAX_BACKLOG, 0, i64::MAX, ConfigurationFlags::DEFAULT, None],
                ["op-ttl-ms", &config::OP_TTL_MS, config::DEFAULT_OP_TTL_MS, 1000, i64::MAX, ConfigurationFlags::DEFAULT, None],
            ],
            string: [
                ["prefix", config::prefix_cell(), config::DEFAULT_PREFIX, ConfigurationFlags::IMMUTABLE, None],
            ],
            bool: [],
            enum: [],
            module_args_as_configuration: false,
        ]
    }
    };
}

#[cfg(not(test))]
tally_module!(redis_module::alloc::RedisAlloc, redis_module::alloc::RedisAlloc);
#[cfg(test)]
tally_module!(std::alloc::System, std::alloc::System);
