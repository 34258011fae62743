//! Replies of the commands as Redis values.

use redis_module::RedisValue;

use crate::domain::record::{Item, Reply};

/// A reply of a mutating command (as the op-id record keeps it, `domain::record::Reply`).
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
