//! USAGE.RESERVE, USAGE.COMMIT, USAGE.CANCEL, and a reservation's expiry.
//!
//! A reservation counts against the limit (`used + reserved + amount <= limit`) without
//! moving `used`; COMMIT adds what was really used (at most the reservation) to `used` in
//! the period it happens in; CANCEL and expiry release it. `reserved` is the holds' total.

use redis_module::Context;

use super::store::Store;
use super::{before, no_request, request};
use crate::commands::reply::to_value;
use crate::commands::usage::{load_in, store_and_event, Stored};
use crate::domain::decimal::Decimal;
use crate::domain::error::CmdError;
use crate::domain::event::Event;
use crate::domain::hold_request::{self, Close};
use crate::domain::holds::{self, Hold, HoldState, Kind, Status};
use crate::domain::record::{Item, Reply};
use crate::domain::request::Common;
use crate::domain::rules::Usage;
use crate::host::command::{Command, KeyAccess, Spec};
use crate::host::dispatch::CommandResult;
use crate::host::tx::{self, Tx};

/// The amount open reservations of `key` hold.
pub(crate) fn reserved(tx: &mut Tx, key: &str) -> Result<Decimal, CmdError> {
    if !tx.slot_has_holds() {
        return Ok(Decimal::ZERO);
    }
    Store::new(tx, key).total(tx, "")
}

fn overflow() -> CmdError {
    CmdError::err("usage would overflow 20 integer digits")
}

fn counter(tx: &mut Tx, key: &str) -> Result<(Usage, Stored), CmdError> {
    let (u, stored) = load_in(tx, key)?.ok_or_else(|| {
        CmdError::code(
            "NOTFOUND",
            "no usage limit is set for this key (USAGE.LIMIT)",
        )
    })?;
    Ok((u.at(tx.now_ms), stored))
}

/// The event of a usage hold change, with the counter's state after it.
#[allow(clippy::too_many_arguments)]
fn with_usage<'a>(
    tx: &mut Tx,
    key: &'a str,
    kind: &'static str,
    u: &Usage,
    stored: &Stored,
    amount: Option<String>,
    common: &Common,
    hold: HoldState,
) -> Result<Event<'a>, CmdError> {
    let mut e = store_and_event(tx, key, kind, u, Some(stored), amount, common)?;
    e.hold = Some(hold);
    Ok(e)
}

pub struct Reserve;

impl Command for Reserve {
    const SPEC: Spec = Spec {
        name: "usage.reserve",
        flags: "write deny-oom fast",
        arity: -5,
        first_key: 1,
        last_key: 1,
        access: KeyAccess::ReadUpdate,
        summary: "Hold part of a quota until committed, cancelled or expired",
    };
    fn run(ctx: &Context, args: &[&[u8]]) -> CommandResult {
        let req = hold_request::usage_reserve(args)?;
        before(ctx, &req.key)?;
        let r = request("USAGE.RESERVE", args, &req);
        let reply = tx::mutate(ctx, r, &[&req.key], |tx| {
            let (u, stored) = counter(tx, &req.key)?;
            let held = reserved(tx, &req.key)?;
            // Checked like a CONSUME of the amount, without moving `used`.
            u.consume(req.amount, held, tx.now_ms)?;
            let store = Store::new(tx, &req.key);
            let id = store.new_id(tx)?;
            let hold = Hold {
                expires_ms: holds::deadline(tx.now_ms, req.ttl_ms),
                created_ms: tx.now_ms,
                amount: req.amount,
                subject: String::new(),
            };
            store.add(tx, &id, &hold)?;
            let now_held = held.checked_add(req.amount).ok_or_else(overflow)?;
            let hs = HoldState::of(&id, Kind::Usage, &hold, Status::Open);
            let e = with_usage(
                tx,
                &req.key,
                "usage.reserve",
                &u,
                &stored,
                None,
                &req.common,
                hs,
            )?;
            let items = [
                id,
                u.used.to_string(),
                now_held.to_string(),
                u.remaining_with(now_held).to_string(),
            ];
            Ok((Reply::Array(items.into_iter().map(Item::Str).collect()), e))
        })?;
        Ok(to_value(reply))
    }
}

pub struct Commit;

impl Command for Commit {
    const SPEC: Spec = Spec {
        name: "usage.commit",
        flags: "write deny-oom fast",
        arity: -3,
        first_key: 1,
        last_key: 1,
        access: KeyAccess::ReadUpdate,
        summary: "Count what a reservation really used; release the rest",
    };
    fn run(ctx: &Context, args: &[&[u8]]) -> CommandResult {
        let req = hold_request::close(args, true)?;
        before(ctx, &req.key)?;
        let reply = tx::mutate(
            ctx,
            request("USAGE.COMMIT", args, &req),
            &[&req.key],
            |tx| commit(tx, &req),
        )?;
        Ok(to_value(reply))
    }
}

fn commit<'a>(tx: &mut Tx, req: &'a Close) -> Result<(Reply, Event<'a>), CmdError> {
    let (mut u, stored) = counter(tx, &req.key)?;
    let store = Store::new(tx, &req.key);
    let hold = store.require(tx, &req.id)?;
    let actual = holds::settle_amount(hold.amount, req.amount, true)?;
    let held_after = reserved(tx, &req.key)?
        .checked_sub(hold.amount)
        .ok_or_else(overflow)?;
    u.used = u.used.checked_add(actual).ok_or_else(overflow)?;
    store.close(tx, &req.id, &hold, Status::Settled)?;
    let mut hs = HoldState::of(&req.id, Kind::Usage, &hold, Status::Settled);
    hs.settled = Some(actual.to_string());
    let amount = Some(actual.to_string());
    let e = with_usage(
        tx,
        &req.key,
        "usage.commit",
        &u,
        &stored,
        amount,
        &req.common,
        hs,
    )?;
    let items = vec![
        Item::Str(u.used.to_string()),
        Item::Str(u.remaining_with(held_after).to_string()),
    ];
    Ok((Reply::Array(items), e))
}

pub struct Cancel;

impl Command for Cancel {
    const SPEC: Spec = Spec {
        name: "usage.cancel",
        flags: "write deny-oom fast",
        arity: -3,
        first_key: 1,
        last_key: 1,
        access: KeyAccess::ReadUpdate,
        summary: "Release a reservation",
    };
    fn run(ctx: &Context, args: &[&[u8]]) -> CommandResult {
        let req = hold_request::close(args, false)?;
        before(ctx, &req.key)?;
        let reply = tx::mutate(
            ctx,
            request("USAGE.CANCEL", args, &req),
            &[&req.key],
            |tx| {
                let (released, remaining, e) =
                    release(tx, &req.key, &req.id, Status::Voided, &req.common)?;
                Ok((
                    Reply::Array(vec![Item::Str(released), Item::Str(remaining)]),
                    e,
                ))
            },
        )?;
        Ok(to_value(reply))
    }
}

/// Cancel or expiry: (released amount, remaining after, the event).
fn release<'a>(
    tx: &mut Tx,
    key: &'a str,
    id: &str,
    status: Status,
    common: &Common,
) -> Result<(String, String, Event<'a>), CmdError> {
    let (u, stored) = counter(tx, key)?;
    let store = Store::new(tx, key);
    let hold = store.require(tx, id)?;
    let held_after = reserved(tx, key)?
        .checked_sub(hold.amount)
        .ok_or_else(overflow)?;
    store.close(tx, id, &hold, status)?;
    let kind = if status == Status::Expired {
        "usage.expire"
    } else {
        "usage.cancel"
    };
    let hs = HoldState::of(id, Kind::Usage, &hold, status);
    let e = with_usage(tx, key, kind, &u, &stored, None, common, hs)?;
    Ok((
        hold.amount.to_string(),
        u.remaining_with(held_after).to_string(),
        e,
    ))
}

/// A reservation's expiry (the timer, or a command on the counter).
pub(crate) fn expire<'a>(tx: &mut Tx, key: &'a str, id: &str) -> Result<Event<'a>, CmdError> {
    release(tx, key, id, Status::Expired, &no_request()).map(|(_, _, e)| e)
}
