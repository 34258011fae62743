//! ASSET.INCR, ASSET.GET, ASSET.TRANSFER
//!
//! An account is a plain hash of balance fields, each an exact decimal as text.

use redis_module::{CallOptionsBuilder, CallReply, CallResult};
use redis_module::{Context, RedisValue};

use super::reply::to_value;
use crate::domain::decimal::Decimal;
use crate::domain::error::CmdError;
use crate::domain::event::{Change, Event, KeySeq};
use crate::domain::layout::KIND_FIELD;
use crate::domain::record::{Item, Reply};
use crate::domain::request;
use crate::domain::rules::{self, Floor};
use crate::domain::text::printable;
use crate::host::acl;
use crate::host::command::{Command, KeyAccess, Spec};
use crate::host::dispatch::CommandResult;
use crate::host::ffi::RStr;
use crate::host::tx::{self, FieldName, Tx};

/// An existing hash must not be a campaign or usage counter (a `kind` field).
pub(super) fn check_asset(tx: &mut Tx, key: &str) -> Result<(), CmdError> {
    if tx.hash_exists(key)? {
        tx.hget_rs(key, tx::kind_field(), rules::check_asset_hash)??;
    }
    Ok(())
}

pub(super) fn balance(tx: &mut Tx, key: &str, field: &str) -> Result<Decimal, CmdError> {
    balance_rs(tx, key, field, &RStr::new(field.as_bytes()))
}

/// `balance` with the field's RedisModuleString (`name`) made by the caller.
fn balance_rs(tx: &mut Tx, key: &str, field: &str, name: &RStr) -> Result<Decimal, CmdError> {
    tx.hget_rs(key, name, |raw| {
        rules::stored_decimal_lazy(raw, || format!("field '{field}'"))
    })?
}

/// The floor check of a decrease, against what is available (balance minus the field's
/// open holds, docs/holds.md): held funds cannot be spent twice.
fn held_floor(
    tx: &mut Tx,
    key: &str,
    field: &str,
    current: Decimal,
    delta: Decimal,
    floor: Floor,
) -> Result<(), CmdError> {
    if !delta.is_negative() || floor == Floor::None || !tx.slot_has_holds() {
        return rules::apply_delta(current, delta, floor, None).map(|_| ());
    }
    let held = super::holds::asset::held(tx, key, field)?;
    let available = current
        .checked_sub(held)
        .ok_or_else(|| CmdError::err("the balance would overflow 20 integer digits"))?;
    if held.is_zero() {
        return rules::apply_delta(current, delta, floor, None).map(|_| ());
    }
    super::holds::asset::check_take(available, -delta, floor, held)
}

pub struct Incr;

impl Command for Incr {
    const SPEC: Spec = Spec {
        name: "asset.incr",
        flags: "write deny-oom",
        arity: -4,
        first_key: 1,
        last_key: 1,
        access: KeyAccess::ReadUpdate,
        summary: "Add signed decimal deltas to balances and log one event",
    };
    fn run(ctx: &Context, args: &[&[u8]]) -> CommandResult {
        incr(ctx, args)
    }
}

/// `ASSET.INCR key field delta [field delta ...] [ID op-id] [META text] [FLOOR n | NOFLOOR] [CEIL n]`
fn incr(ctx: &Context, raw: &[&[u8]]) -> CommandResult {
    let req = request::asset_incr(raw)?;
    tx::check_user_key(&req.key)?;
    super::holds::expiry::expire_due(ctx, &req.key)?;
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
                let current = balance_rs(tx, &req.key, field, &name)?;
                let next = rules::apply_delta(current, *delta, Floor::None, req.ceil)?;
                held_floor(tx, &req.key, field, current, *delta, req.floor)?;
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

pub struct Transfer;

impl Command for Transfer {
    const SPEC: Spec = Spec {
        name: "asset.transfer",
        flags: "write deny-oom fast",
        arity: -5,
        first_key: 1,
        last_key: 2,
        access: KeyAccess::ReadUpdate,
        summary: "Move an amount between two accounts and log one event",
    };
    fn run(ctx: &Context, args: &[&[u8]]) -> CommandResult {
        transfer(ctx, args)
    }
}

/// `ASSET.TRANSFER from to field amount [ID op-id] [META text]`
fn transfer(ctx: &Context, raw: &[&[u8]]) -> CommandResult {
    let req = request::asset_transfer(raw)?;
    tx::check_user_key(&req.from)?;
    tx::check_user_key(&req.to)?;
    super::holds::expiry::expire_due(ctx, &req.from)?;
    super::holds::expiry::expire_due(ctx, &req.to)?;
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
            let out = -req.amount;
            let from_current = balance(tx, &req.from, &req.field)?;
            let from_balance = rules::apply_delta(from_current, out, Floor::None, None)?;
            held_floor(tx, &req.from, &req.field, from_current, out, Floor::Default)?;
            let to_balance = rules::apply_delta(
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

pub struct Get;

impl Command for Get {
    const SPEC: Spec = Spec {
        name: "asset.get",
        flags: "readonly",
        arity: -2,
        first_key: 1,
        last_key: 1,
        access: KeyAccess::Read,
        summary: "Read balances as exact decimals",
    };
    fn run(ctx: &Context, args: &[&[u8]]) -> CommandResult {
        get(ctx, args)
    }
}

/// `ASSET.GET key [field ...]`: the named balances in order, or every field as
/// `[field, balance, ...]` sorted by field name (byte order; names are returned byte-exact).
fn get(ctx: &Context, raw: &[&[u8]]) -> CommandResult {
    let Some((key_raw, fields)) = raw.split_first() else {
        return Err(CmdError::Arity);
    };
    let key = request::name("key", key_raw)?;
    acl::check_read(ctx, &key)?;
    let names = fields
        .iter()
        .map(|f| request::name("field", f))
        .collect::<Result<Vec<_>, _>>()?;
    let handle = tx::open_read(ctx, &key)?;
    if !tx::kind_is_hash(handle.kind())? {
        return Ok(RedisValue::Array(
            fields
                .iter()
                .map(|_| RedisValue::BulkString("0".into()))
                .collect(),
        ));
    }
    rules::check_asset_hash(handle.hget(KIND_FIELD.as_bytes())?.as_deref())?;
    if !fields.is_empty() {
        let mut out = Vec::with_capacity(fields.len());
        for field in names {
            let value = handle.hget(field.as_bytes())?;
            let d = rules::stored_decimal(&format!("field '{field}'"), value.as_deref())?;
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
        let d = rules::stored_decimal_lazy(Some(&bytes(Some(v))), || {
            format!("field '{}'", printable(&field))
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
