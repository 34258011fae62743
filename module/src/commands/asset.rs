//! ASSET.INCR, ASSET.GET, ASSET.TRANSFER

use redis_module::{Context, RedisValue};

use super::{to_value, Result};
use crate::args::{self, Floor};
use crate::decimal::Decimal;
use crate::error::CmdError;
use crate::event::{Change, Event, Item, KeySeq, Reply};
use crate::logic;
use crate::tx::{self, Tx};

fn balance(tx: &mut Tx, key: &str, field: &str) -> std::result::Result<Decimal, CmdError> {
    tx.hget_with(key, field.as_bytes(), |raw| logic::stored_decimal_lazy(raw, || format!("field '{field}'")))?
}

pub fn incr(ctx: &Context, raw: &[&[u8]]) -> Result {
    let req = args::asset_incr(raw)?;
    tx::check_user_key(&req.key)?;
    let reply = tx::mutate(ctx, "ASSET.INCR", raw, &req.common, &req.key, |tx| {
        tx.hash_exists(&req.key)?;
        let mut changes = Vec::with_capacity(req.deltas.len());
        let mut items = Vec::with_capacity(req.deltas.len());
        for (field, delta) in &req.deltas {
            let next = logic::apply_delta(balance(tx, &req.key, field)?, *delta, req.floor, req.ceil)?;
            let text = next.to_string();
            tx.set(&req.key, field.as_bytes(), Some(text.as_bytes()));
            changes.push(Change { key: req.key.clone(), field: field.clone(), delta: delta.to_string(), balance: text.clone() });
            items.push(Item::Str(text));
        }
        let seq = tx.next_seq(&req.key)?;
        let mut event = Event::new("asset.incr", tx.now_ms, &req.common, vec![KeySeq { key: req.key.clone(), seq }]);
        event.changes = Some(changes);
        Ok((Reply::Array(items), event))
    })?;
    Ok(to_value(reply))
}

pub fn transfer(ctx: &Context, raw: &[&[u8]]) -> Result {
    let req = args::asset_transfer(raw)?;
    tx::check_user_key(&req.from)?;
    tx::check_user_key(&req.to)?;
    let reply = tx::mutate(ctx, "ASSET.TRANSFER", raw, &req.common, &req.from, |tx| {
        tx.hash_exists(&req.from)?;
        tx.hash_exists(&req.to)?;
        let out = req.amount.neg();
        let from_balance = logic::apply_delta(balance(tx, &req.from, &req.field)?, out, Floor::Default, None)?;
        let to_balance = logic::apply_delta(balance(tx, &req.to, &req.field)?, req.amount, Floor::None, None)?;
        let (from_text, to_text) = (from_balance.to_string(), to_balance.to_string());
        tx.set(&req.from, req.field.as_bytes(), Some(from_text.as_bytes()));
        tx.set(&req.to, req.field.as_bytes(), Some(to_text.as_bytes()));
        let from_seq = tx.next_seq(&req.from)?;
        let to_seq = tx.next_seq(&req.to)?;
        let keys = vec![KeySeq { key: req.from.clone(), seq: from_seq }, KeySeq { key: req.to.clone(), seq: to_seq }];
        let mut event = Event::new("asset.transfer", tx.now_ms, &req.common, keys);
        event.changes = Some(vec![
            Change { key: req.from.clone(), field: req.field.clone(), delta: out.to_string(), balance: from_text.clone() },
            Change { key: req.to.clone(), field: req.field.clone(), delta: req.amount.to_string(), balance: to_text.clone() },
        ]);
        Ok((Reply::Array(vec![Item::Str(from_text), Item::Str(to_text)]), event))
    })?;
    Ok(to_value(reply))
}

/// `ASSET.GET key [field ...]`: the named balances in order, or every field as
/// `[field, balance, ...]` sorted by field name.
pub fn get(ctx: &Context, raw: &[&[u8]]) -> Result {
    let Some((key_raw, fields)) = raw.split_first() else { return Err(CmdError::Arity) };
    let key = args::name("key", key_raw)?;
    if !fields.is_empty() {
        let mut out = Vec::with_capacity(fields.len());
        for f in fields {
            let field = args::name("field", f)?;
            let value = tx::read_field(ctx, &key, field.as_bytes())?;
            let d = logic::stored_decimal(&format!("field '{field}'"), value.as_deref())?;
            out.push(RedisValue::BulkString(d.to_string()));
        }
        return Ok(RedisValue::Array(out));
    }
    if !tx::hash_exists(ctx, &key)? {
        return Ok(RedisValue::Array(Vec::new()));
    }
    let all = ctx
        .call("HGETALL", &[key.as_str()][..])
        .map_err(|_| CmdError::err("could not read the hash"))?;
    let RedisValue::Array(flat) = all else { return Err(CmdError::err("unexpected HGETALL reply")) };
    let text = |v: &RedisValue| -> Vec<u8> {
        match v {
            RedisValue::BulkString(s) | RedisValue::SimpleString(s) => s.as_bytes().to_vec(),
            RedisValue::StringBuffer(b) => b.clone(),
            RedisValue::BulkRedisString(s) => s.as_slice().to_vec(),
            _ => Vec::new(),
        }
    };
    let mut balances = Vec::with_capacity(flat.len() / 2);
    for pair in flat.chunks(2) {
        let [f, v] = pair else { continue };
        let field = String::from_utf8_lossy(&text(f)).into_owned();
        let d = logic::stored_decimal(&format!("field '{field}'"), Some(&text(v)))?;
        balances.push((field, d));
    }
    balances.sort();
    Ok(RedisValue::Array(
        balances
            .into_iter()
            .flat_map(|(f, d)| [RedisValue::BulkString(f), RedisValue::BulkString(d.to_string())])
            .collect(),
    ))
}
