//! tally: a Redis module whose commands change balances, coupon stock and usage quotas
//! and append one history event per change to a Redis stream, in one atomic step.
//!
//! Layout: `decimal`, `args`, `logic`, `event`, `period`, `slot` are pure Rust (unit tested
//! without Redis); `ffi` and `tx` are the thin layer over the module API; `commands/*`
//! glue the two together, one file per command family.

pub mod acl;
pub mod args;
pub mod commands;
pub mod config;
pub mod decimal;
pub mod error;
pub mod event;
pub mod ffi;
pub mod logic;
pub mod opids;
pub mod period;
pub use tally_slot as slot;
pub mod stats;
pub mod tx;

use std::ffi::CString;
use std::os::raw::c_int;
use std::panic::{catch_unwind, AssertUnwindSafe};

use redis_module::configuration::ConfigurationFlags;
use redis_module::raw::{self, RedisModuleCtx, RedisModuleString};
use redis_module::{
    redis_module, Context, InfoContext, RedisResult, RedisString, RedisValue, Status,
};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

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
fn dispatch(
    raw_ctx: *mut RedisModuleCtx,
    argv: *mut *mut RedisModuleString,
    argc: c_int,
    handler: Handler,
) -> c_int {
    let ctx = Context::new(raw_ctx);
    let mut args: smallvec::SmallVec<[&[u8]; 16]> = smallvec::SmallVec::new();
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

macro_rules! commands_table {
    ($( $fn_name:ident => $name:literal, $handler:path, $flags:literal, $arity:literal, $first:literal, $last:literal, $keys:expr, $summary:literal ;)*) => {
        $(
            extern "C" fn $fn_name(ctx: *mut RedisModuleCtx, argv: *mut *mut RedisModuleString, argc: c_int) -> c_int {
                dispatch(ctx, argv, argc, $handler)
            }
        )*
        const COMMANDS: &[CommandSpec] = &[
            $( CommandSpec { name: $name, entry: $fn_name, flags: $flags, arity: $arity, first_key: $first, last_key: $last, key_flags: $keys, summary: $summary }, )*
        ];
    };
}

type Entry = extern "C" fn(*mut RedisModuleCtx, *mut *mut RedisModuleString, c_int) -> c_int;

struct CommandSpec {
    name: &'static str,
    entry: Entry,
    flags: &'static str,
    /// Redis convention: N = exactly N arguments including the name, -N = at least N.
    arity: c_int,
    first_key: c_int,
    last_key: c_int,
    /// The key spec's flags (`REDISMODULE_CMD_KEY_*`), one spec over `first_key..=last_key`.
    key_flags: u32,
    summary: &'static str,
}

/// Key-spec flags. Reads only read the key (`%R~` suffices). Writes that reply with values
/// of the key read and update it, like HINCRBY (`RW ACCESS UPDATE`: `%RW~` needed);
/// COUPON.CREATE only inserts a new key and USAGE.LIMIT only updates one, replying `OK`
/// (`%W~` suffices).
const KEY_READ: u32 = raw::REDISMODULE_CMD_KEY_RO | raw::REDISMODULE_CMD_KEY_ACCESS;
const KEY_READ_UPDATE: u32 =
    raw::REDISMODULE_CMD_KEY_RW | raw::REDISMODULE_CMD_KEY_ACCESS | raw::REDISMODULE_CMD_KEY_UPDATE;
const KEY_INSERT: u32 = raw::REDISMODULE_CMD_KEY_RW | raw::REDISMODULE_CMD_KEY_INSERT;
const KEY_UPDATE: u32 = raw::REDISMODULE_CMD_KEY_RW | raw::REDISMODULE_CMD_KEY_UPDATE;

commands_table! {
    cmd_asset_incr => "asset.incr", commands::asset::incr, "write deny-oom", -4, 1, 1, KEY_READ_UPDATE,
        "Add signed decimal deltas to balances and log one event";
    cmd_asset_get => "asset.get", commands::asset::get, "readonly", -2, 1, 1, KEY_READ,
        "Read balances as exact decimals";
    cmd_asset_transfer => "asset.transfer", commands::asset::transfer, "write deny-oom fast", -5, 1, 2, KEY_READ_UPDATE,
        "Move an amount between two accounts and log one event";
    cmd_coupon_create => "coupon.create", commands::coupon::create, "write deny-oom fast", -3, 1, 1, KEY_INSERT,
        "Create a coupon campaign with a fixed stock";
    cmd_coupon_claim => "coupon.claim", commands::coupon::claim, "write deny-oom fast", -3, 1, 1, KEY_READ_UPDATE,
        "Claim one coupon for a user";
    cmd_coupon_release => "coupon.release", commands::coupon::release, "write deny-oom fast", -3, 1, 1, KEY_READ_UPDATE,
        "Give a user's latest claim back to the stock";
    cmd_coupon_info => "coupon.info", commands::coupon::info, "readonly fast", 2, 1, 1, KEY_READ,
        "Show a campaign's stock and limits";
    cmd_usage_limit => "usage.limit", commands::usage::limit, "write deny-oom fast", -3, 1, 1, KEY_UPDATE,
        "Set the quota and period of a usage counter";
    cmd_usage_consume => "usage.consume", commands::usage::consume, "write deny-oom fast", -3, 1, 1, KEY_READ_UPDATE,
        "Consume from a quota if it fits";
    cmd_usage_get => "usage.get", commands::usage::get, "readonly fast", 2, 1, 1, KEY_READ,
        "Show a usage counter in the current period";
}

/// Arity, summary and key spec for COMMAND INFO / COMMAND DOCS and for ACL key checks.
fn set_command_info(cmd: *mut raw::RedisModuleCommand, spec: &CommandSpec) -> Result<(), String> {
    let Some(set_info) = (unsafe { raw::RedisModule_SetCommandInfo }) else {
        return Ok(());
    };
    let version = raw::RedisModuleCommandInfoVersion {
        version: 1,
        sizeof_historyentry: std::mem::size_of::<raw::RedisModuleCommandHistoryEntry>(),
        sizeof_keyspec: std::mem::size_of::<raw::RedisModuleCommandKeySpec>(),
        sizeof_arg: std::mem::size_of::<raw::RedisModuleCommandArg>(),
    };
    let summary = CString::new(spec.summary).map_err(|e| e.to_string())?;
    // One range spec from the first key to the last, then the all-zero terminator.
    // SAFETY: a key spec is plain data; all zeros is the terminator Redis expects.
    let mut key_specs: [raw::RedisModuleCommandKeySpec; 2] = unsafe { std::mem::zeroed() };
    key_specs[0].flags = u64::from(spec.key_flags);
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
    let since = CString::new(env!("CARGO_PKG_VERSION")).map_err(|e| e.to_string())?;
    let mut info = raw::RedisModuleCommandInfo {
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
    if unsafe { set_info(cmd, &mut info) } != raw::REDISMODULE_OK as c_int {
        return Err(format!("could not set the command info of {}", spec.name));
    }
    Ok(())
}

fn register_commands(ctx: &Context) -> Result<(), String> {
    let create =
        unsafe { raw::RedisModule_CreateCommand }.ok_or("RedisModule_CreateCommand missing")?;
    // A `tally` ACL category needs Redis 7.4+; older servers get only the flag-implied ones.
    let has_category = match unsafe { raw::RedisModule_AddACLCategory } {
        Some(add) => {
            let name = CString::new("tally").map_err(|e| e.to_string())?;
            unsafe { add(ctx.get_raw(), name.as_ptr()) == raw::REDISMODULE_OK as c_int }
        }
        None => false,
    };
    let get = unsafe { raw::RedisModule_GetCommand }.ok_or("RedisModule_GetCommand missing")?;
    for spec in COMMANDS {
        let name = spec.name;
        let cname = CString::new(name).map_err(|e| e.to_string())?;
        let cflags = CString::new(spec.flags).map_err(|e| e.to_string())?;
        let rc = unsafe {
            create(
                ctx.get_raw(),
                cname.as_ptr(),
                Some(spec.entry),
                cflags.as_ptr(),
                spec.first_key,
                spec.last_key,
                1,
            )
        };
        if rc != raw::REDISMODULE_OK as c_int {
            return Err(format!("could not create command {name}"));
        }
        let cmd = unsafe { get(ctx.get_raw(), cname.as_ptr()) };
        if cmd.is_null() {
            return Err(format!("could not look up command {name}"));
        }
        set_command_info(cmd, spec)?;
        let set_categories = unsafe { raw::RedisModule_SetCommandACLCategories };
        // Redis 7.0: no categories for module commands, so the module enforces the rule itself.
        acl::set_enforce_core_commands(set_categories.is_none());
        if let Some(set) = set_categories {
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
            let ccats = CString::new(cats).map_err(|e| e.to_string())?;
            if unsafe { set(cmd, ccats.as_ptr()) } != raw::REDISMODULE_OK as c_int {
                return Err(format!("could not set ACL categories of {name}"));
            }
        }
    }
    Ok(())
}

/// Module arguments: `prefix <p>`, `max-backlog <n>`, `op-ttl-ms <n>` (pairs), each checked
/// by `config::validate` like every other way of setting them.
fn apply_args(args: &[RedisString]) -> Result<(), String> {
    if args.len() % 2 != 0 {
        return Err("module arguments come in pairs: <name> <value>".into());
    }
    for pair in args.chunks(2) {
        let [name, value] = pair else { continue };
        let name = String::from_utf8_lossy(name.as_slice()).into_owned();
        config::apply(config::validate(&name, value.as_slice())?);
    }
    Ok(())
}

/// The commands the module propagates its changes as (`tx::mutate`).
const PROPAGATED: [&str; 4] = ["HSET", "HDEL", "XADD", "SET"];

/// Refuses to load when a command the module propagates is missing (`rename-command XADD ""`):
/// replicas and the AOF would silently lack the events otherwise.
fn check_propagated_commands(ctx: &Context) -> Result<(), String> {
    for name in PROPAGATED {
        let found = matches!(
            ctx.call("COMMAND", &["INFO", name][..]),
            Ok(RedisValue::Array(v)) if v.first().is_some_and(|c| !matches!(c, RedisValue::Null))
        );
        if !found {
            return Err(format!(
                "the command {name} does not exist under that name on this server (rename-command?); tally propagates its changes to replicas and the AOF as {name}, so it refuses to load"
            ));
        }
    }
    Ok(())
}

/// Set while `maxmemory-policy` can evict op-id records (`INFO tally`).
static EVICTION_RISK: AtomicBool = AtomicBool::new(false);

fn text_of(v: &RedisValue) -> Option<String> {
    match v {
        RedisValue::SimpleString(s) | RedisValue::BulkString(s) => Some(s.clone()),
        RedisValue::StringBuffer(b) => Some(String::from_utf8_lossy(b).into_owned()),
        RedisValue::BulkRedisString(s) => Some(String::from_utf8_lossy(s.as_slice()).into_owned()),
        _ => None,
    }
}

/// Reads `maxmemory-policy`; warns (log and `INFO tally`) when it can evict op-id records.
fn check_eviction_policy(ctx: &Context) {
    let policy = match ctx.call("CONFIG", &["GET", "maxmemory-policy"][..]) {
        Ok(RedisValue::Array(v)) => v.get(1).and_then(text_of),
        _ => None,
    };
    let Some(policy) = policy else { return };
    let risky = config::policy_can_evict_op_ids(&policy);
    EVICTION_RISK.store(risky, Relaxed);
    if risky {
        ctx.log_warning(&format!(
            "tally: maxmemory-policy is {policy}: Redis may evict tally's op-id records, and a retry of an evicted op-id would be applied twice. tally needs maxmemory-policy noeviction"
        ));
    }
}

/// `CONFIG SET maxmemory-policy ...` (server event): check the new policy.
extern "C" fn on_config_change(
    ctx: *mut RedisModuleCtx,
    _eid: raw::RedisModuleEvent,
    _sub: u64,
    data: *mut std::os::raw::c_void,
) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        if data.is_null() {
            return;
        }
        let change = unsafe { &*(data as *const raw::RedisModuleConfigChange) };
        let names = (0..change.num_changes as usize).filter_map(|i| {
            let p = unsafe { *change.config_names.add(i) };
            (!p.is_null()).then(|| unsafe { std::ffi::CStr::from_ptr(p) })
        });
        let mut relevant = false;
        for name in names {
            relevant |= name.to_bytes().eq_ignore_ascii_case(b"maxmemory-policy");
        }
        if relevant {
            check_eviction_policy(&Context::new(ctx));
        }
    }));
}

fn subscribe_config_changes(ctx: &Context) -> Result<(), String> {
    let subscribe = unsafe { raw::RedisModule_SubscribeToServerEvent }
        .ok_or("RedisModule_SubscribeToServerEvent missing")?;
    let event = raw::RedisModuleEvent {
        id: raw::REDISMODULE_EVENT_CONFIG,
        dataver: 1,
    };
    if unsafe { subscribe(ctx.get_raw(), event, Some(on_config_change)) }
        != raw::REDISMODULE_OK as c_int
    {
        return Err("could not subscribe to configuration changes".into());
    }
    Ok(())
}

/// Valkey's `VALKEYMODULE_OPTIONS_HANDLE_ATOMIC_SLOT_MIGRATION` (valkeymodule.h, Valkey 9.0):
/// without it Valkey refuses `CLUSTER MIGRATESLOTS` while the module is loaded.
const VALKEY_OPTION_HANDLE_ATOMIC_SLOT_MIGRATION: c_int = 1 << 5;

/// The module options to declare, given `INFO server`. Keys are signalled as modified (WATCH,
/// client tracking) explicitly, only when a command wrote them: a rejected command opens keys
/// for writing but changes nothing. On Valkey, tally also declares that it supports atomic
/// slot migration: it keeps no per-key or per-slot state outside the keyspace, and a slot's
/// data keys, stream, sequence hash and op-id records move together as one unit. The bit is
/// only set on Valkey: Redis gives its option bits other meanings.
fn module_options(info_server: &str) -> c_int {
    let base = raw::REDISMODULE_OPTION_NO_IMPLICIT_SIGNAL_MODIFIED as c_int;
    let valkey = info_server
        .lines()
        .any(|l| l.starts_with("valkey_version:") || l.trim() == "server_name:valkey");
    if valkey {
        base | VALKEY_OPTION_HANDLE_ATOMIC_SLOT_MIGRATION
    } else {
        base
    }
}

fn init(ctx: &Context, args: &[RedisString]) -> Status {
    if let Some(set_options) = unsafe { raw::RedisModule_SetModuleOptions } {
        let info = ctx
            .call("INFO", &["server"][..])
            .ok()
            .as_ref()
            .and_then(text_of)
            .unwrap_or_default();
        unsafe { set_options(ctx.get_raw(), module_options(&info)) };
    }
    if let Err(e) = apply_args(args) {
        ctx.log_warning(&format!("tally: {e}"));
        return Status::Err;
    }
    // Whatever path set them, the values in force pass the same validation.
    let current = [
        ("prefix", config::prefix()),
        ("max-backlog", config::max_backlog().to_string()),
        ("op-ttl-ms", config::op_ttl_ms().to_string()),
        ("max-op-ids", config::max_op_ids().to_string()),
    ];
    for (name, value) in current {
        if let Err(e) = config::validate(name, value.as_bytes()) {
            ctx.log_warning(&format!("tally: {e}"));
            return Status::Err;
        }
    }
    if let Err(e) = check_propagated_commands(ctx).and_then(|()| subscribe_config_changes(ctx)) {
        ctx.log_warning(&format!("tally: {e}"));
        return Status::Err;
    }
    check_eviction_policy(ctx);
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
    let _ = ctx.add_info_field_long_long("max_op_ids", config::max_op_ids());
    let live = opids::window().live(ffi::now_ms());
    let _ = ctx.add_info_field_long_long("op_ids_counted", i64::try_from(live).unwrap_or(i64::MAX));
    // 1 while maxmemory-policy can evict op-id records (tally needs noeviction).
    let _ = ctx.add_info_field_long_long(
        "maxmemory_policy_evicts_op_ids",
        i64::from(EVICTION_RISK.load(Relaxed)),
    );
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
                ["max-backlog", &config::MAX_BACKLOG, config::DEFAULT_MAX_BACKLOG, config::MIN_MAX_BACKLOG, config::MAX_MAX_BACKLOG, ConfigurationFlags::DEFAULT, None],
                ["op-ttl-ms", &config::OP_TTL_MS, config::DEFAULT_OP_TTL_MS, config::MIN_OP_TTL_MS, config::MAX_OP_TTL_MS, ConfigurationFlags::DEFAULT, None],
                ["max-op-ids", &config::MAX_OP_IDS, config::DEFAULT_MAX_OP_IDS, config::MIN_MAX_OP_IDS, config::MAX_MAX_OP_IDS, ConfigurationFlags::DEFAULT, None],
            ],
            string: [
                ["prefix", &config::PREFIX, config::DEFAULT_PREFIX, ConfigurationFlags::IMMUTABLE, None],
            ],
            bool: [],
            enum: [],
            module_args_as_configuration: false,
        ]
    }
    };
}

#[cfg(not(test))]
tally_module!(
    redis_module::alloc::RedisAlloc,
    redis_module::alloc::RedisAlloc
);
#[cfg(test)]
tally_module!(std::alloc::System, std::alloc::System);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_slot_migration_is_declared_on_valkey_only() {
        let base = raw::REDISMODULE_OPTION_NO_IMPLICIT_SIGNAL_MODIFIED as c_int;
        let redis = "# Server\r\nredis_version:7.0.15\r\nredis_mode:cluster\r\n";
        let valkey =
            "# Server\r\nredis_version:7.2.4\r\nserver_name:valkey\r\nvalkey_version:9.1.2\r\n";
        assert_eq!(module_options(redis), base);
        assert_eq!(
            module_options(valkey),
            base | VALKEY_OPTION_HANDLE_ATOMIC_SLOT_MIGRATION
        );
        assert_eq!(module_options(""), base);
    }
}
