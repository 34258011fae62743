//! ASSET.INCR, ASSET.GET, ASSET.TRANSFER

use redis_module::{CallOptionsBuilder, CallReply, CallResult};
use redis_module::{Context, RedisValue};

use super::{to_value, Result};
use crate::args::{self, Floor};
use crate::decimal::Decimal;
use crate::error::CmdError;
use crate::event::{Change, Event, Item, KeySeq, Reply};
use crate::ffi::RStr;
use crate::logic;
use crate::tx::{self, FieldName, Tx};

/// An existing hash must not be a campaign or usage counter (a `kind` field).
fn check_asset(tx: &mut Tx, key: &str) -> std::result::Result<(), CmdError> {
    if tx.hash_exists(key)? {
        tx.hget_rs(key, tx::kind_field(), logic::check_asset_hash)??;
    }
    Ok(())
}

fn balance(tx: &mut Tx, key: &str, field: &str) -> std::result::Result<Decimal, CmdError> {
    balance_rs(tx, key, field, &RStr::new(field.as_bytes()))
}

/// `balance` with the field's RedisModuleString (`name`) made by the caller.
fn balance_rs(
    tx: &mut Tx,
    key: &str,
    field: &str,
    name: &RStr,
) -> std::result::Result<Decimal, CmdError> {
    tx.hget_rs(key, name, |raw| {
        logic::stored_decimal_lazy(raw, || format!("field '{field}'"))
    })?
}

pub fn incr(ctx: &Context, raw: &[&[u8]]) -> Result {
    let req = args::asset_incr(raw)?;
    tx::check_user_key(&req.key)?;
    let reply = tx::mutate(
        ctx,
        tx::Request {
            command: "ASSET.INCR",
            raw,
            parsed: &req,
            common: &req.common,
        },
        &[&req.key],
        |tx| {
            check_asset(tx, &req.key)?;
            let mut changes = Vec::with_capacity(req.deltas.len());
            let mut items = Vec::with_capacity(req.deltas.len());
            for (field, delta) in &req.deltas {
                // one RedisModuleString for the field's read and its write
                let name = RStr::new(field.as_bytes());
                let next = logic::apply_delta(
                    balance_rs(tx, &req.key, field, &name)?,
                    *delta,
                    req.floor,
                    req.ceil,
                )?;
                let text = next.to_string();
                tx.set_named(&req.key, FieldName::Owned(name), Some(text.as_bytes()));
                changes.push(Change {
                    key: req.key.as_str().into(),
                    field: field.as_str().into(),
                    delta: delta.to_string(),
                    balance: text.clone(),
                });
                items.push(Item::Str(text));
            }
            let seq = tx.next_seq(&req.key)?;
            let mut event = Event::new(
                "asset.incr",
                tx.now_ms,
                &req.common,
                vec![KeySeq {
                    key: req.key.as_str().into(),
                    seq,
                }],
            );
            event.changes = Some(changes);
            Ok((Reply::Array(items), event))
        },
    )?;
    Ok(to_value(reply))
}

pub fn transfer(ctx: &Context, raw: &[&[u8]]) -> Result {
    let req = args::asset_transfer(raw)?;
    tx::check_user_key(&req.from)?;
    tx::check_user_key(&req.to)?;
    let reply = tx::mutate(
        ctx,
        tx::Request {
            command: "ASSET.TRANSFER",
            raw,
            parsed: &req,
            common: &req.common,
        },
        &[&req.from, &req.to],
        |tx| {
            check_asset(tx, &req.from)?;
            check_asset(tx, &req.to)?;
            let out = req.amount.neg();
            let from_balance = logic::apply_delta(
                balance(tx, &req.from, &req.field)?,
                out,
                Floor::Default,
                None,
            )?;
            let to_balance = logic::apply_delta(
                balance(tx, &req.to, &req.field)?,
                req.amount,
                Floor::None,
                None,
            )?;
            let (from_text, to_text) = (from_balance.to_string(), to_balance.to_string());
            tx.set(&req.from, req.field.as_bytes(), Some(from_text.as_bytes()));
            tx.set(&req.to, req.field.as_bytes(), Some(to_text.as_bytes()));
            let from_seq = tx.next_seq(&req.from)?;
            let to_seq = tx.next_seq(&req.to)?;
            let keys = vec![
                KeySeq {
                    key: req.from.as_str().into(),
                    seq: from_seq,
                },
                KeySeq {
                    key: req.to.as_str().into(),
                    seq: to_seq,
                },
            ];
            let mut event = Event::new("asset.transfer", tx.now_ms, &req.common, keys);
            event.changes = Some(vec![
                Change {
                    key: req.from.as_str().into(),
                    field: req.field.as_str().into(),
                    delta: out.to_string(),
                    balance: from_text.clone(),
                },
                Change {
                    key: req.to.as_str().into(),
                    field: req.field.as_str().into(),
                    delta: req.amount.to_string(),
                    balance: to_text.clone(),
                },
            ]);
            Ok((
                Reply::Array(vec![Item::Str(from_text), Item::Str(to_text)]),
                event,
            ))
        },
    )?;
    Ok(to_value(reply))
}

/// `ASSET.GET key [field ...]`: the named balances in order, or every field as
/// `[field, balance, ...]` sorted by field name (byte order; names are returned byte-exact).
pub fn get(ctx: &Context, raw: &[&[u8]]) -> Result {
    let Some((key_raw, fields)) = raw.split_first() else {
        return Err(CmdError::Arity);
    };
    let key = args::name("key", key_raw)?;
    crate::acl::check_read(ctx, &key)?;
    let names = fields
        .iter()
        .map(|f| args::name("field", f))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let handle = tx::open_read(ctx, &key)?;
    if !tx::kind_is_hash(handle.kind())? {
        return Ok(RedisValue::Array(
            fields
                .iter()
                .map(|_| RedisValue::BulkString("0".into()))
                .collect(),
        ));
    }
    logic::check_asset_hash(handle.hget(ctx, logic::KIND_FIELD.as_bytes())?.as_deref())?;
    if !fields.is_empty() {
        let mut out = Vec::with_capacity(fields.len());
        for field in names {
            let value = handle.hget(ctx, field.as_bytes())?;
            let d = logic::stored_decimal(&format!("field '{field}'"), value.as_deref())?;
            out.push(RedisValue::BulkString(d.to_string()));
        }
        return Ok(RedisValue::Array(out));
    }
    drop(handle);
    let opts = CallOptionsBuilder::new().build();
    let all: CallResult = ctx.call_ext("HGETALL", &opts, &[key.as_str()][..]);
    let Ok(CallReply::Array(flat)) = all else {
        return Err(CmdError::err("could not read the hash"));
    };
    // Field names are returned byte for byte (they need not be UTF-8).
    let bytes = |v: Option<CallResult>| -> Vec<u8> {
        match v {
            Some(Ok(CallReply::String(s))) => s.as_bytes().to_vec(),
            _ => Vec::new(),
        }
    };
    let mut balances = Vec::with_capacity(flat.len() / 2);
    let mut it = flat.iter();
    while let (Some(f), Some(v)) = (it.next(), it.next()) {
        let field = bytes(Some(f));
        let d = logic::stored_decimal_lazy(Some(&bytes(Some(v))), || {
            format!("field '{}'", args::printable(&field))
        })?;
        balances.push((field, d));
    }
    balances.sort();
    Ok(RedisValue::Array(
        balances
            .into_iter()
            .flat_map(|(f, d)| {
                [
                    RedisValue::StringBuffer(f),
                    RedisValue::BulkString(d.to_string()),
                ]
            })
            .collect(),
    ))
}
