//! ASSET.HOLD, ASSET.SETTLE, ASSET.VOID, ASSET.HOLDS, ASSET.AVAILABLE, and an asset hold's
//! expiry. Available = balance - the field's open holds; a hold never takes it below the
//! floor, and ASSET.INCR / ASSET.TRANSFER check their floor against it too.

use redis_module::{Context, RedisValue};

use super::store::Store;
use super::{before, hold_event, no_request, request};
use crate::commands::asset::{balance, check_asset};
use crate::commands::reply::to_value;
use crate::domain::decimal::Decimal;
use crate::domain::error::CmdError;
use crate::domain::event::{Change, Event};
use crate::domain::hold_request::{self, Close, Open};
use crate::domain::holds::{self, Hold, HoldState, Kind, Status};
use crate::domain::record::{Item, Reply};
use crate::domain::request;
use crate::domain::rules;
use crate::domain::text::printable;
use crate::host::acl;
use crate::host::command::{Command, KeyAccess, Spec};
use crate::host::dispatch::CommandResult;
use crate::host::ffi;
use crate::host::tx::{self, Tx};

fn overflow() -> CmdError {
    CmdError::err("the balance would overflow 20 integer digits")
}

/// The open holds of `field`.
pub(crate) fn held(tx: &mut Tx, key: &str, field: &str) -> Result<Decimal, CmdError> {
    Store::new(tx, key).total(tx, field)
}

/// INSUFFICIENT when taking `amount` from `available` goes below `floor`, saying how much
/// is held.
pub(crate) fn check_take(
    available: Decimal,
    amount: Decimal,
    floor: rules::Floor,
    held: Decimal,
) -> Result<(), CmdError> {
    match holds::take_available(available, amount, floor) {
        Err(e) if e.code_name() == "INSUFFICIENT" => Err(CmdError::code(
            "INSUFFICIENT",
            format!("available {available} ({held} held) cannot cover {amount}"),
        )),
        other => other.map(|_| ()),
    }
}

/// Balance minus the open holds of `field`.
pub(crate) fn available(tx: &mut Tx, key: &str, field: &str) -> Result<Decimal, CmdError> {
    let held = Store::new(tx, key).total(tx, field)?;
    balance(tx, key, field)?
        .checked_sub(held)
        .ok_or_else(overflow)
}

pub struct HoldCmd;

impl Command for HoldCmd {
    const SPEC: Spec = Spec {
        name: "asset.hold",
        flags: "write deny-oom fast",
        arity: -6,
        first_key: 1,
        last_key: 1,
        access: KeyAccess::ReadUpdate,
        summary: "Take an amount out of a balance's reach until settled, voided or expired",
    };
    fn run(ctx: &Context, args: &[&[u8]]) -> CommandResult {
        let req = hold_request::asset_hold(args)?;
        before(ctx, &req.key)?;
        let reply = tx::mutate(ctx, request("ASSET.HOLD", args, &req), &[&req.key], |tx| {
            open(tx, &req)
        })?;
        Ok(to_value(reply))
    }
}

fn open<'a>(tx: &mut Tx, req: &'a Open) -> Result<(Reply, Event<'a>), CmdError> {
    check_asset(tx, &req.key)?;
    let left = holds::take_available(
        available(tx, &req.key, &req.subject)?,
        req.amount,
        req.floor,
    )?;
    let store = Store::new(tx, &req.key);
    let id = store.new_id(tx)?;
    let hold = Hold {
        expires_ms: holds::deadline(tx.now_ms, req.ttl_ms),
        created_ms: tx.now_ms,
        amount: req.amount,
        subject: req.subject.clone(),
    };
    store.add(tx, &id, &hold)?;
    let state = HoldState::of(&id, Kind::Asset, &hold, Status::Open);
    let event = hold_event(tx, "asset.hold", &req.common, &req.key, state)?;
    Ok((
        Reply::Array(vec![Item::Str(id), Item::Str(left.to_string())]),
        event,
    ))
}

pub struct Settle;

impl Command for Settle {
    const SPEC: Spec = Spec {
        name: "asset.settle",
        flags: "write deny-oom fast",
        arity: -3,
        first_key: 1,
        last_key: 1,
        access: KeyAccess::ReadUpdate,
        summary: "Spend all or part of a hold from the balance; release the rest",
    };
    fn run(ctx: &Context, args: &[&[u8]]) -> CommandResult {
        let req = hold_request::close(args, true)?;
        before(ctx, &req.key)?;
        let reply = tx::mutate(
            ctx,
            request("ASSET.SETTLE", args, &req),
            &[&req.key],
            |tx| settle(tx, &req),
        )?;
        Ok(to_value(reply))
    }
}

fn settle<'a>(tx: &mut Tx, req: &'a Close) -> Result<(Reply, Event<'a>), CmdError> {
    check_asset(tx, &req.key)?;
    let store = Store::new(tx, &req.key);
    let hold = store.require(tx, &req.id)?;
    let spent = holds::settle_amount(hold.amount, req.amount, false)?;
    let next = balance(tx, &req.key, &hold.subject)?
        .checked_sub(spent)
        .ok_or_else(overflow)?;
    let text = next.to_string();
    tx.set(&req.key, hold.subject.as_bytes(), Some(text.as_bytes()));
    store.close(tx, &req.id, &hold, Status::Settled)?;
    let mut state = HoldState::of(&req.id, Kind::Asset, &hold, Status::Settled);
    state.settled = Some(spent.to_string());
    let mut event = hold_event(tx, "asset.settle", &req.common, &req.key, state)?;
    event.changes = Some(vec![Change {
        key: req.key.as_str().into(),
        field: hold.subject.clone().into(),
        delta: (-spent).to_string(),
        balance: text.clone(),
    }]);
    Ok((
        Reply::Array(vec![Item::Str(spent.to_string()), Item::Str(text)]),
        event,
    ))
}

pub struct Void;

impl Command for Void {
    const SPEC: Spec = Spec {
        name: "asset.void",
        flags: "write deny-oom fast",
        arity: -3,
        first_key: 1,
        last_key: 1,
        access: KeyAccess::ReadUpdate,
        summary: "Give a hold back to the available balance",
    };
    fn run(ctx: &Context, args: &[&[u8]]) -> CommandResult {
        let req = hold_request::close(args, false)?;
        before(ctx, &req.key)?;
        let reply = tx::mutate(ctx, request("ASSET.VOID", args, &req), &[&req.key], |tx| {
            let (hold, left, event) = release(tx, &req.key, &req.id, Status::Voided, &req.common)?;
            let items = vec![
                Item::Str(hold.amount.to_string()),
                Item::Str(left.to_string()),
            ];
            Ok((Reply::Array(items), event))
        })?;
        Ok(to_value(reply))
    }
}

/// Closes hold `id` without spending it (void or expiry): the hold, what is available
/// after, the event.
fn release<'a>(
    tx: &mut Tx,
    key: &'a str,
    id: &str,
    status: Status,
    common: &request::Common,
) -> Result<(Hold, Decimal, Event<'a>), CmdError> {
    check_asset(tx, key)?;
    let store = Store::new(tx, key);
    let hold = store.require(tx, id)?;
    let before_release = available(tx, key, &hold.subject)?;
    let left = before_release
        .checked_add(hold.amount)
        .ok_or_else(overflow)?;
    store.close(tx, id, &hold, status)?;
    let kind = if status == Status::Expired {
        "asset.expire"
    } else {
        "asset.void"
    };
    let state = HoldState::of(id, Kind::Asset, &hold, status);
    let event = hold_event(tx, kind, common, key, state)?;
    Ok((hold, left, event))
}

/// An asset hold's expiry (the timer, or a command on the key).
pub(crate) fn expire<'a>(tx: &mut Tx, key: &'a str, id: &str) -> Result<Event<'a>, CmdError> {
    release(tx, key, id, Status::Expired, &no_request()).map(|(_, _, e)| e)
}

pub struct Holds;

impl Command for Holds {
    const SPEC: Spec = Spec {
        name: "asset.holds",
        flags: "readonly",
        arity: 2,
        first_key: 1,
        last_key: 1,
        access: KeyAccess::Read,
        summary: "List an account's open holds",
    };
    fn run(ctx: &Context, args: &[&[u8]]) -> CommandResult {
        let [key_raw] = args else {
            return Err(CmdError::Arity);
        };
        let key = request::name("key", key_raw)?;
        acl::check_read(ctx, &key)?;
        let mut out = Vec::new();
        for (id, h) in super::live(ctx, &key, ffi::now_ms())? {
            out.push(RedisValue::BulkString(id.to_string()));
            out.push(RedisValue::BulkString(h.subject));
            out.push(RedisValue::BulkString(h.amount.to_string()));
            out.push(RedisValue::Integer(h.expires_ms));
        }
        Ok(RedisValue::Array(out))
    }
}

pub struct Available;

impl Command for Available {
    const SPEC: Spec = Spec {
        name: "asset.available",
        flags: "readonly",
        arity: -2,
        first_key: 1,
        last_key: 1,
        access: KeyAccess::Read,
        summary: "Read balance, held and available per field",
    };
    fn run(ctx: &Context, args: &[&[u8]]) -> CommandResult {
        let Some((key_raw, fields)) = args.split_first() else {
            return Err(CmdError::Arity);
        };
        let key = request::name("key", key_raw)?;
        acl::check_read(ctx, &key)?;
        let named = fields
            .iter()
            .map(|f| request::balance_field(f))
            .collect::<Result<Vec<_>, _>>()?;
        let rows = available_rows(ctx, &key, named)?;
        let mut out = Vec::with_capacity(rows.len() * 4);
        for (field, balance, held) in rows {
            let avail = balance.checked_sub(held).ok_or_else(overflow)?;
            out.push(RedisValue::BulkString(field));
            for d in [balance, held, avail] {
                out.push(RedisValue::BulkString(d.to_string()));
            }
        }
        Ok(RedisValue::Array(out))
    }
}

/// (field, balance, held) for the named fields, or for every field with a balance or an
/// open hold, sorted by name.
fn available_rows(
    ctx: &Context,
    key: &str,
    named: Vec<String>,
) -> Result<Vec<(String, Decimal, Decimal)>, CmdError> {
    let mut balances = std::collections::BTreeMap::<String, (Decimal, Decimal)>::new();
    for (field, value) in tx::hgetall(ctx, key)? {
        let name = String::from_utf8_lossy(&field).into_owned();
        if name == crate::domain::layout::KIND_FIELD {
            rules::check_asset_hash(Some(&value))?;
        }
        let d =
            rules::stored_decimal_lazy(Some(&value), || format!("field '{}'", printable(&field)))?;
        balances.insert(name, (d, Decimal::ZERO));
    }
    for (_, hold) in super::live(ctx, key, ffi::now_ms())? {
        let entry = balances
            .entry(hold.subject)
            .or_insert((Decimal::ZERO, Decimal::ZERO));
        entry.1 = entry.1.checked_add(hold.amount).ok_or_else(overflow)?;
    }
    if named.is_empty() {
        return Ok(balances.into_iter().map(|(f, (b, h))| (f, b, h)).collect());
    }
    Ok(named
        .into_iter()
        .map(|f| {
            let (b, h) = balances
                .get(&f)
                .copied()
                .unwrap_or((Decimal::ZERO, Decimal::ZERO));
            (f, b, h)
        })
        .collect())
}
