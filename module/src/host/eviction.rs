//! Whether `maxmemory-policy` can evict op-id records: checked at load and on every
//! `CONFIG SET maxmemory-policy` (a server event); a risky policy is logged and shown in
//! `INFO tally` (`maxmemory_policy_evicts_op_ids`).

use std::os::raw::{c_int, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};

use redis_module::raw::{self, RedisModuleCtx};
use redis_module::{Context, RedisValue};

use crate::domain::config;
use crate::host::stats;

/// The text of a simple or bulk string reply of `ctx.call`.
pub fn text_of(v: &RedisValue) -> Option<String> {
    match v {
        RedisValue::SimpleString(s) | RedisValue::BulkString(s) => Some(s.clone()),
        RedisValue::StringBuffer(b) => Some(String::from_utf8_lossy(b).into_owned()),
        RedisValue::BulkRedisString(s) => Some(String::from_utf8_lossy(s.as_slice()).into_owned()),
        _ => None,
    }
}

/// Reads `maxmemory-policy`; warns (log and `INFO tally`) when it can evict op-id records.
pub fn check_policy(ctx: &Context) {
    let policy = match ctx.call("CONFIG", &["GET", "maxmemory-policy"][..]) {
        Ok(RedisValue::Array(v)) => v.get(1).and_then(text_of),
        _ => None,
    };
    let Some(policy) = policy else { return };
    let risky = config::policy_can_evict_op_ids(&policy);
    stats::set_eviction_risk(risky);
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
    data: *mut c_void,
) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        if data.is_null() {
            return;
        }
        // SAFETY: for REDISMODULE_EVENT_CONFIG, `data` is a RedisModuleConfigChange holding
        // `num_changes` C strings.
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
            check_policy(&Context::new(ctx));
        }
    }));
}

pub fn subscribe_config_changes(ctx: &Context) -> Result<(), String> {
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
