//! tally: a Redis module whose commands change balances, coupon stock and usage quotas
//! and append one history event per change to a Redis stream, in one atomic step.
//!
//! - `domain`: what a command decides, pure Rust (no Redis, no `unsafe`), unit tested alone
//! - `host`: everything that talks to Redis (every `unsafe`), the atomic step, loading
//! - `commands`: one file per command family, each command declared beside its handler;
//!   they parse and decide with `domain` and read and write through `host::tx`
//!
//! This file wires them together: the module's name, settings, INFO and commands.

mod commands;
mod domain;
mod host;

use redis_module::configuration::ConfigurationFlags;
use redis_module::{redis_module, Context, InfoContext, RedisResult, RedisString, Status};

use crate::domain::config as bounds;
use crate::host::config;
use crate::host::stats::info;

fn init(ctx: &Context, args: &[RedisString]) -> Status {
    let status = host::load::init(ctx, args, &commands::ALL);
    if status == Status::Ok {
        // Holds expire on the primary by its clock (docs/holds.md).
        commands::holds::expiry::start(ctx);
    }
    status
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
                ["max-backlog", &config::MAX_BACKLOG, bounds::DEFAULT_MAX_BACKLOG, bounds::MIN_MAX_BACKLOG, bounds::MAX_MAX_BACKLOG, ConfigurationFlags::DEFAULT, None],
                ["op-ttl-ms", &config::OP_TTL_MS, bounds::DEFAULT_OP_TTL_MS, bounds::MIN_OP_TTL_MS, bounds::MAX_OP_TTL_MS, ConfigurationFlags::DEFAULT, None],
                ["max-op-ids", &config::MAX_OP_IDS, bounds::DEFAULT_MAX_OP_IDS, bounds::MIN_MAX_OP_IDS, bounds::MAX_MAX_OP_IDS, ConfigurationFlags::DEFAULT, None],
                ["max-holds-per-key", &config::MAX_HOLDS_PER_KEY, bounds::DEFAULT_MAX_HOLDS_PER_KEY, bounds::MIN_MAX_HOLDS_PER_KEY, bounds::MAX_MAX_HOLDS_PER_KEY, ConfigurationFlags::DEFAULT, None],
                ["hold-expire-per-tick", &config::HOLD_EXPIRE_PER_TICK, bounds::DEFAULT_HOLD_EXPIRE_PER_TICK, bounds::MIN_HOLD_EXPIRE_PER_TICK, bounds::MAX_HOLD_EXPIRE_PER_TICK, ConfigurationFlags::DEFAULT, None],
                ["hold-tombstone-ms", &config::HOLD_TOMBSTONE_MS, bounds::DEFAULT_HOLD_TOMBSTONE_MS, bounds::MIN_HOLD_TOMBSTONE_MS, bounds::MAX_HOLD_TOMBSTONE_MS, ConfigurationFlags::DEFAULT, None],
            ],
            string: [
                ["prefix", &config::PREFIX, bounds::DEFAULT_PREFIX, ConfigurationFlags::IMMUTABLE, None],
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
