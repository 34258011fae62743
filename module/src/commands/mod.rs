//! One file per command family; each handler parses (args.rs), decides (logic.rs) and
//! writes through `tx::mutate`.

pub mod asset;
pub mod coupon;
pub mod usage;

use redis_module::RedisValue;

use crate::event::{Item, Reply};

pub type Result = std::result::Result<RedisValue, crate::error::CmdError>;

pub fn to_value(reply: Reply) -> RedisValue {
    match reply {
        Reply::Ok => RedisValue::SimpleStringStatic("OK"),
        Reply::Array(items) => RedisValue::Array(
            items
                .into_iter()
                .map(|i| match i {
                    Item::Int(n) => RedisValue::Integer(n),
                    Item::Str(s) => RedisValue::BulkString(s),
                })
                .collect(),
        ),
    }
}

/// A flat `[name, value, ...]` reply.
pub fn pairs(items: Vec<(&str, RedisValue)>) -> RedisValue {
    RedisValue::Array(
        items
            .into_iter()
            .flat_map(|(k, v)| [RedisValue::BulkString(k.to_string()), v])
            .collect(),
    )
}
