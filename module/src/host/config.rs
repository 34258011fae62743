//! The settings in force (`domain::config` validates them): Redis reads and writes them
//! through `ConfigurationValue` (CONFIG GET/SET, the config file), the module arguments
//! through [`apply`]; commands read them without a lock.

use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};

use redis_module::configuration::ConfigurationContext;
use redis_module::{ConfigurationValue, RedisError, RedisString};

use crate::domain::config::{
    validate, Setting, DEFAULT_HOLD_EXPIRE_PER_TICK, DEFAULT_HOLD_TOMBSTONE_MS,
    DEFAULT_MAX_BACKLOG, DEFAULT_MAX_HOLDS_PER_KEY, DEFAULT_MAX_OP_IDS, DEFAULT_OP_TTL_MS,
    DEFAULT_PREFIX,
};

pub static MAX_BACKLOG: IntSetting = IntSetting::new("max-backlog", DEFAULT_MAX_BACKLOG);
pub static OP_TTL_MS: IntSetting = IntSetting::new("op-ttl-ms", DEFAULT_OP_TTL_MS);
pub static MAX_OP_IDS: IntSetting = IntSetting::new("max-op-ids", DEFAULT_MAX_OP_IDS);
pub static MAX_HOLDS_PER_KEY: IntSetting =
    IntSetting::new("max-holds-per-key", DEFAULT_MAX_HOLDS_PER_KEY);
pub static HOLD_EXPIRE_PER_TICK: IntSetting =
    IntSetting::new("hold-expire-per-tick", DEFAULT_HOLD_EXPIRE_PER_TICK);
pub static HOLD_TOMBSTONE_MS: IntSetting =
    IntSetting::new("hold-tombstone-ms", DEFAULT_HOLD_TOMBSTONE_MS);
pub static PREFIX: PrefixSetting = PrefixSetting(OnceLock::new());

/// Stores a validated setting.
pub fn apply(setting: Setting) {
    match setting {
        Setting::Prefix(p) => *lock_prefix() = p,
        Setting::MaxBacklog(n) => MAX_BACKLOG.value.store(n, Relaxed),
        Setting::OpTtlMs(n) => OP_TTL_MS.value.store(n, Relaxed),
        Setting::MaxOpIds(n) => MAX_OP_IDS.value.store(n, Relaxed),
        Setting::MaxHoldsPerKey(n) => MAX_HOLDS_PER_KEY.value.store(n, Relaxed),
        Setting::HoldExpirePerTick(n) => HOLD_EXPIRE_PER_TICK.value.store(n, Relaxed),
        Setting::HoldTombstoneMs(n) => HOLD_TOMBSTONE_MS.value.store(n, Relaxed),
    }
}

/// An integer module config whose every write is validated.
pub struct IntSetting {
    name: &'static str,
    value: AtomicI64,
}

impl IntSetting {
    const fn new(name: &'static str, default: i64) -> IntSetting {
        IntSetting {
            name,
            value: AtomicI64::new(default),
        }
    }
}

impl ConfigurationValue<i64> for IntSetting {
    fn get(&self, _ctx: &ConfigurationContext) -> i64 {
        self.value.load(Relaxed)
    }
    fn set(&self, _ctx: &ConfigurationContext, val: i64) -> Result<(), RedisError> {
        apply(validate(self.name, val.to_string().as_bytes()).map_err(RedisError::String)?);
        Ok(())
    }
}

/// The prefix config: validated on every write.
pub struct PrefixSetting(OnceLock<Mutex<String>>);

fn lock_prefix() -> std::sync::MutexGuard<'static, String> {
    let cell = PREFIX
        .0
        .get_or_init(|| Mutex::new(DEFAULT_PREFIX.to_string()));
    cell.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ConfigurationValue<RedisString> for PrefixSetting {
    fn get(&self, _ctx: &ConfigurationContext) -> RedisString {
        RedisString::create(None, lock_prefix().as_str())
    }
    fn set(&self, _ctx: &ConfigurationContext, val: RedisString) -> Result<(), RedisError> {
        apply(validate("prefix", val.as_slice()).map_err(RedisError::String)?);
        Ok(())
    }
}

pub fn prefix() -> String {
    lock_prefix().clone()
}

/// The prefix as fixed at load time (it is immutable afterwards), read once on the first
/// command and kept: no lock and no copy per command.
pub fn prefix_fixed() -> &'static str {
    static FIXED: OnceLock<String> = OnceLock::new();
    FIXED.get_or_init(prefix).as_str()
}

pub fn max_backlog() -> i64 {
    MAX_BACKLOG.value.load(Relaxed)
}

pub fn op_ttl_ms() -> i64 {
    OP_TTL_MS.value.load(Relaxed)
}

pub fn max_op_ids() -> i64 {
    MAX_OP_IDS.value.load(Relaxed)
}

pub fn max_holds_per_key() -> i64 {
    MAX_HOLDS_PER_KEY.value.load(Relaxed)
}

pub fn hold_expire_per_tick() -> i64 {
    HOLD_EXPIRE_PER_TICK.value.load(Relaxed)
}

pub fn hold_tombstone_ms() -> i64 {
    HOLD_TOMBSTONE_MS.value.load(Relaxed)
}
