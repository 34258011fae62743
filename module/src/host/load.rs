//! What the module does and checks when Redis loads it, before any command can run: the
//! module options, the module arguments and settings (each validated), the commands it
//! propagates as, the eviction policy, and the registration of its commands. A failed check
//! refuses the load with a logged reason.

use std::os::raw::c_int;

use redis_module::raw;
use redis_module::{Context, RedisString, RedisValue, Status};

use crate::domain::config;
use crate::host::command::Registration;
use crate::host::config as settings;
use crate::host::eviction::{self, text_of};
use crate::host::register;

/// The commands the module propagates its changes as (`host::tx`).
const PROPAGATED: [&str; 4] = ["HSET", "HDEL", "XADD", "SET"];

/// Valkey's `VALKEYMODULE_OPTIONS_HANDLE_ATOMIC_SLOT_MIGRATION` (valkeymodule.h, Valkey 9.0):
/// without it Valkey refuses `CLUSTER MIGRATESLOTS` while the module is loaded.
const VALKEY_OPTION_HANDLE_ATOMIC_SLOT_MIGRATION: c_int = 1 << 5;

/// Loads the module: `commands` are registered last, once every check has passed.
pub fn init(ctx: &Context, args: &[RedisString], commands: &[Registration]) -> Status {
    set_module_options(ctx);
    let checked = apply_args(args)
        .and_then(|()| check_settings())
        .and_then(|()| check_propagated_commands(ctx))
        .and_then(|()| eviction::subscribe_config_changes(ctx))
        .map(|()| eviction::check_policy(ctx))
        .and_then(|()| register::register(ctx, commands));
    match checked {
        Ok(()) => Status::Ok,
        Err(e) => {
            ctx.log_warning(&format!("tally: {e}"));
            Status::Err
        }
    }
}

fn set_module_options(ctx: &Context) {
    if let Some(set_options) = unsafe { raw::RedisModule_SetModuleOptions } {
        let info = ctx
            .call("INFO", &["server"][..])
            .ok()
            .as_ref()
            .and_then(text_of)
            .unwrap_or_default();
        unsafe { set_options(ctx.get_raw(), module_options(&info)) };
    }
}

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

/// Module arguments: `prefix <p>`, `max-backlog <n>`, `op-ttl-ms <n>` (pairs), each checked
/// by `config::validate` like every other way of setting them.
fn apply_args(args: &[RedisString]) -> Result<(), String> {
    let pairs = args.chunks_exact(2);
    if !pairs.remainder().is_empty() {
        return Err("module arguments come in pairs: <name> <value>".into());
    }
    for pair in pairs {
        let [name, value] = pair else { continue };
        let name = String::from_utf8_lossy(name.as_slice()).into_owned();
        settings::apply(config::validate(&name, value.as_slice())?);
    }
    Ok(())
}

/// Whatever path set them, the values in force pass the same validation.
fn check_settings() -> Result<(), String> {
    let current = [
        ("prefix", settings::prefix()),
        ("max-backlog", settings::max_backlog().to_string()),
        ("op-ttl-ms", settings::op_ttl_ms().to_string()),
        ("max-op-ids", settings::max_op_ids().to_string()),
    ];
    for (name, value) in current {
        config::validate(name, value.as_bytes())?;
    }
    Ok(())
}

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
