//! USAGE.LIMIT, USAGE.CONSUME, USAGE.GET
//!
//! A usage counter is a plain hash: `kind`=`usage`, `limit`, `period`, `period_id`, `used`.

use redis_module::{Context, RedisValue};

use super::{pairs, to_value, Result};
use crate::args;
use crate::error::CmdError;
use crate::event::{Event, Item, KeySeq, Reply, UsageState};
use crate::logic::{self, Usage};
use crate::period::Period;
use crate::tx::{self, Tx};

const KIND: &[u8] = b"usage";

fn load(ctx: &Context, key: &str) -> std::result::Result<Option<Usage>, CmdError> {
    if !tx::hash_exists(ctx, key)? {
        return Ok(None);
    }
    if tx::read_field(ctx, key, b"kind")?.as_deref() != Some(KIND) {
        return Err(CmdError::wrong_type("the key is not a tally usage counter"));
    }
    let text = |field: &str| -> std::result::Result<String, CmdError> {
        tx::read_field(ctx, key, field.as_bytes())?
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| CmdError::wrong_type(format!("the usage counter's '{field}' field is corrupt")))
    };
    let period = Period::parse(&text("period")?.to_ascii_uppercase())
        .ok_or_else(|| CmdError::wrong_type("the usage counter's 'period' field is corrupt"))?;
    Ok(Some(Usage {
        limit: logic::stored_decimal("limit", Some(text("limit")?.as_bytes()))?,
        used: logic::stored_decimal("used", Some(text("used")?.as_bytes()))?,
        period,
        period_id: text("period_id")?,
    }))
}

fn store_and_event(tx: &mut Tx, key: &str, kind: &'static str, u: &Usage, amount: Option<String>, common: &args::Common)
    -> std::result::Result<Event, CmdError> {
    tx.set(key, b"kind", Some(KIND));
    tx.set(key, b"limit", Some(u.limit.to_string().as_bytes()));
    tx.set(key, b"period", Some(u.period.as_str().as_bytes()));
    tx.set(key, b"period_id", Some(u.period_id.as_bytes()));
    tx.set(key, b"used", Some(u.used.to_string().as_bytes()));
    let seq = tx.next_seq(key)?;
    let mut e = Event::new(kind, tx.now_ms, common, vec![KeySeq { key: key.to_string(), seq }]);
    e.usage = Some(UsageState {
        key: key.to_string(),
        amount,
        used: u.used.to_string(),
        limit: u.limit.to_string(),
        period: u.period.as_str(),
        period_id: u.period_id.clone(),
    });
    Ok(e)
}

pub fn limit(ctx: &Context, raw: &[&[u8]]) -> Result {
    let req = args::usage_limit(raw)?;
    tx::check_user_key(&req.key)?;
    let reply = tx::mutate(ctx, "USAGE.LIMIT", raw, &req.common, &req.key, |tx| {
        let now = tx.now_ms;
        // Usage already counted in the current period carries over to the new quota.
        let used = match load(tx.ctx, &req.key)? {
            Some(old) => old.at(now).used,
            None => crate::decimal::Decimal::ZERO,
        };
        let u = Usage { limit: req.limit, period: req.period, period_id: req.period.id_at(now), used };
        let e = store_and_event(tx, &req.key, "usage.limit", &u, None, &req.common)?;
        Ok((Reply::Ok, e))
    })?;
    Ok(to_value(reply))
}

pub fn consume(ctx: &Context, raw: &[&[u8]]) -> Result {
    let req = args::usage_consume(raw)?;
    tx::check_user_key(&req.key)?;
    let reply = tx::mutate(ctx, "USAGE.CONSUME", raw, &req.common, &req.key, |tx| {
        let u = load(tx.ctx, &req.key)?
            .ok_or_else(|| CmdError::code("NOTFOUND", "no usage limit is set for this key (USAGE.LIMIT)"))?;
        let next = u.consume(req.amount, tx.now_ms)?;
        let e = store_and_event(tx, &req.key, "usage.consume", &next, Some(req.amount.to_string()), &req.common)?;
        let items = vec![Item::Str(next.used.to_string()), Item::Str(next.remaining().to_string())];
        Ok((Reply::Array(items), e))
    })?;
    Ok(to_value(reply))
}

pub fn get(ctx: &Context, raw: &[&[u8]]) -> Result {
    let [key_raw] = raw else { return Err(CmdError::Arity) };
    let key = args::name("key", key_raw)?;
    let u = load(ctx, &key)?
        .ok_or_else(|| CmdError::code("NOTFOUND", "no usage limit is set for this key"))?
        .at(crate::ffi::now_ms());
    Ok(pairs(vec![
        ("used", RedisValue::BulkString(u.used.to_string())),
        ("limit", RedisValue::BulkString(u.limit.to_string())),
        ("remaining", RedisValue::BulkString(u.remaining().to_string())),
        ("period", RedisValue::BulkString(u.period.as_str().to_string())),
        ("period_id", RedisValue::BulkString(u.period_id)),
    ]))
}
