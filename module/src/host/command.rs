//! How a command is declared: its metadata ([`Spec`]) beside its handler, in one
//! [`Command`] impl per command (`commands/*`), as RedisJSON declares its commands. The
//! module's entry point for each command is generated from the impl ([`registration`]).
//!
//! tally does not use `redis-module-macros`' `#[command]` for this: its generated entry
//! point decodes the arguments into a `Vec<RedisString>` on every call and has no place for
//! tally's dispatch (database 0 only, panics caught, rejections counted by code).

use std::os::raw::c_int;

use redis_module::raw::{RedisModuleCtx, RedisModuleString};
use redis_module::Context;

use crate::host::dispatch::{self, CommandResult};

/// How a command uses its keys, for its key spec (COMMAND INFO, ACL key checks). Reads only
/// read the key (`%R~` suffices). Writes that reply with values of the key read and update
/// it, like HINCRBY (`%RW~` needed); COUPON.CREATE only inserts a new key and USAGE.LIMIT
/// only updates one, replying `OK` (`%W~` suffices).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAccess {
    Read,
    ReadUpdate,
    Insert,
    Update,
}

/// A command's declaration.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub name: &'static str,
    /// Redis command flags (`write deny-oom fast`, `readonly`, ...).
    pub flags: &'static str,
    /// Redis convention: N = exactly N arguments including the name, -N = at least N.
    pub arity: c_int,
    /// One key spec over the arguments `first_key..=last_key` (1 = the first after the name).
    pub first_key: c_int,
    pub last_key: c_int,
    pub access: KeyAccess,
    pub summary: &'static str,
}

/// A command: its declaration and its handler (the arguments after the command name).
pub trait Command {
    const SPEC: Spec;
    fn run(ctx: &Context, args: &[&[u8]]) -> CommandResult;
}

/// The entry point Redis calls.
pub type Entry = extern "C" fn(*mut RedisModuleCtx, *mut *mut RedisModuleString, c_int) -> c_int;

extern "C" fn entry<C: Command>(
    ctx: *mut RedisModuleCtx,
    argv: *mut *mut RedisModuleString,
    argc: c_int,
) -> c_int {
    // SAFETY: Redis calls a command's entry point with its context and `argc` arguments.
    unsafe { dispatch::dispatch(ctx, argv, argc, C::run) }
}

/// A command as registered: its declaration and its entry point.
pub struct Registration {
    pub spec: Spec,
    pub entry: Entry,
}

pub const fn registration<C: Command>() -> Registration {
    Registration {
        spec: C::SPEC,
        entry: entry::<C>,
    }
}
