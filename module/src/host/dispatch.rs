//! From Redis's call of a command to its handler and back: the arguments as byte slices,
//! the one-database rule, the reply or the coded error (counted by code), and a panic caught
//! before it can unwind into Redis.

use std::ffi::CString;
use std::os::raw::c_int;
use std::panic::{catch_unwind, AssertUnwindSafe};

use redis_module::raw::{self, RedisModuleCtx, RedisModuleString};
use redis_module::{Context, RedisValue};
use smallvec::SmallVec;

use crate::domain::error::CmdError;
use crate::host::stats;

/// What a command handler returns.
pub type CommandResult = Result<RedisValue, CmdError>;

/// A handler: the context and the arguments after the command name.
pub type Handler = fn(&Context, &[&[u8]]) -> CommandResult;

/// Arguments kept on the stack (a longer call spills to the heap).
const ARGS_INLINE: usize = 16;

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
///
/// # Safety
/// `raw_ctx`, `argv` and `argc` are those Redis passed to the command's entry point: `argv`
/// holds `argc` valid RedisModuleStrings that outlive the call.
pub(super) unsafe fn dispatch(
    raw_ctx: *mut RedisModuleCtx,
    argv: *mut *mut RedisModuleString,
    argc: c_int,
    handler: Handler,
) -> c_int {
    let ctx = Context::new(raw_ctx);
    let mut args: SmallVec<[&[u8]; ARGS_INLINE]> = SmallVec::new();
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
    // One stream per server: the shipper reads database 0, so other databases are refused.
    if let Some(db) = unsafe { raw::RedisModule_GetSelectedDb } {
        if unsafe { db(raw_ctx) } != 0 {
            stats::rejected("ERR");
            return reply_error(&ctx, "ERR tally serves database 0 only (SELECT 0)");
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
