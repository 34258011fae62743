//! COUPON.RESERVE, COUPON.CONFIRM, COUPON.CANCEL, and a reservation's expiry.
//!
//! A reservation takes a number from the stock (`issued` + 1, `last_issue` + 1) and counts
//! against the user's PERUSER like a claim, but writes no holder fields: CONFIRM makes it a
//! claim (the holder fields COUPON.CLAIM writes); CANCEL and expiry give the stock back
//! (`issued` - 1) and retire the number, as RELEASE does. Its hold id is the issue number.

use redis_module::Context;

use super::store::Store;
use super::{before, hold_event, no_request, request};
use crate::commands::coupon::{load, store, Loaded};
use crate::commands::coupon::{load_holding, queue_holder_writes, state};
use crate::commands::reply::to_value;
use crate::domain::error::CmdError;
use crate::domain::event::Event;
use crate::domain::hold_request::{self, Close};
use crate::domain::holds::{self, Hold, HoldState, Kind, Status};
use crate::domain::record::{Item, Reply};
use crate::domain::request::Common;
use crate::host::command::{Command, KeyAccess, Spec};
use crate::host::dispatch::CommandResult;
use crate::host::ffi;
use crate::host::tx::{self, Tx};

/// How many open reservations `user` has in `campaign`.
pub(crate) fn reserved_by(tx: &mut Tx, campaign: &str, user: &str) -> Result<i64, CmdError> {
    if !tx.slot_has_holds() {
        return Ok(0);
    }
    let total = Store::new(tx, campaign).total(tx, user)?;
    total
        .to_string()
        .parse::<i64>()
        .map_err(|_| CmdError::wrong_type("the campaign's reservation count is corrupt"))
}

/// (open reservations not yet due, reservations due but not yet expired) of a campaign.
pub(crate) fn reserved_live(ctx: &Context, campaign: &str) -> Result<(i64, i64), CmdError> {
    let s = super::live_summary(ctx, campaign, "", ffi::now_ms())?;
    Ok((s.live, s.stored_open.saturating_sub(s.live).max(0)))
}

pub struct Reserve;

impl Command for Reserve {
    const SPEC: Spec = Spec {
        name: "coupon.reserve",
        flags: "write deny-oom fast",
        arity: -5,
        first_key: 1,
        last_key: 1,
        access: KeyAccess::ReadUpdate,
        summary: "Hold one coupon for a user until confirmed, cancelled or expired",
    };
    fn run(ctx: &Context, args: &[&[u8]]) -> CommandResult {
        let req = hold_request::coupon_reserve(args)?;
        before(ctx, &req.key)?;
        let r = request("COUPON.RESERVE", args, &req);
        let reply = tx::mutate(ctx, r, &[&req.key], |tx| {
            let user = req.subject.as_str();
            let (loaded, holding, _) = load_holding(tx, &req.key, user)?;
            let mut c = loaded.campaign;
            let reserved = reserved_by(tx, &req.key, user)?;
            let issue = c.claim(holding.count().saturating_add(reserved), tx.now_ms)?;
            store(tx, &req.key, Some(&loaded), &c);
            let id = issue.to_string();
            let hold = Hold {
                expires_ms: holds::deadline(tx.now_ms, req.ttl_ms),
                created_ms: tx.now_ms,
                amount: req.amount,
                subject: user.to_string(),
            };
            Store::new(tx, &req.key).add(tx, &id, &hold)?;
            let hs = HoldState::of(&id, Kind::Coupon, &hold, Status::Open);
            let e = with_coupon(
                tx,
                "coupon.reserve",
                &req.common,
                &req.key,
                hs,
                &c,
                user,
                issue,
            )?;
            Ok((
                Reply::Array(vec![Item::Int(issue), Item::Int(c.remaining())]),
                e,
            ))
        })?;
        Ok(to_value(reply))
    }
}

/// A coupon hold event: the hold and the campaign's state after it.
#[allow(clippy::too_many_arguments)]
fn with_coupon<'a>(
    tx: &mut Tx,
    kind: &'static str,
    common: &Common,
    campaign: &'a str,
    hold: HoldState,
    c: &crate::domain::rules::Campaign,
    user: &str,
    issue: i64,
) -> Result<Event<'a>, CmdError> {
    let mut e = hold_event(tx, kind, common, campaign, hold)?;
    e.coupon = Some(state(campaign, Some(user), Some(issue), c));
    Ok(e)
}

/// The open reservation `id` of `user`: NOTFOUND when it is not open or not the user's.
fn reservation(tx: &mut Tx, campaign: &str, user: &str, id: &str) -> Result<Hold, CmdError> {
    let hold = Store::new(tx, campaign).require(tx, id)?;
    if hold.subject != user {
        return Err(CmdError::code(
            "NOTFOUND",
            format!("reservation {id} is not this user's"),
        ));
    }
    Ok(hold)
}

pub struct Confirm;

impl Command for Confirm {
    const SPEC: Spec = Spec {
        name: "coupon.confirm",
        flags: "write deny-oom fast",
        arity: -4,
        first_key: 1,
        last_key: 1,
        access: KeyAccess::ReadUpdate,
        summary: "Turn a user's reservation into a claim",
    };
    fn run(ctx: &Context, args: &[&[u8]]) -> CommandResult {
        let req = hold_request::coupon_close(args)?;
        before(ctx, &req.key)?;
        let reply = tx::mutate(
            ctx,
            request("COUPON.CONFIRM", args, &req),
            &[&req.key],
            |tx| confirm(tx, &req),
        )?;
        Ok(to_value(reply))
    }
}

fn confirm<'a>(tx: &mut Tx, req: &'a Close) -> Result<(Reply, Event<'a>), CmdError> {
    let user = req.user.as_deref().unwrap_or_default();
    let hold = reservation(tx, &req.key, user, &req.id)?;
    let (loaded, holding, count_field) = load_holding(tx, &req.key, user)?;
    let c = loaded.campaign;
    let issue: i64 = req
        .id
        .parse()
        .map_err(|_| holds::not_found(&req.id, None))?;
    queue_holder_writes(tx, &req.key, user, holding.claim_writes(issue), count_field);
    Store::new(tx, &req.key).close(tx, &req.id, &hold, Status::Settled)?;
    let mut hs = HoldState::of(&req.id, Kind::Coupon, &hold, Status::Settled);
    hs.settled = Some(hold.amount.to_string());
    let e = with_coupon(
        tx,
        "coupon.confirm",
        &req.common,
        &req.key,
        hs,
        &c,
        user,
        issue,
    )?;
    Ok((
        Reply::Array(vec![Item::Int(issue), Item::Int(c.remaining())]),
        e,
    ))
}

pub struct Cancel;

impl Command for Cancel {
    const SPEC: Spec = Spec {
        name: "coupon.cancel",
        flags: "write deny-oom fast",
        arity: -4,
        first_key: 1,
        last_key: 1,
        access: KeyAccess::ReadUpdate,
        summary: "Give a user's reservation back to the stock",
    };
    fn run(ctx: &Context, args: &[&[u8]]) -> CommandResult {
        let req = hold_request::coupon_close(args)?;
        before(ctx, &req.key)?;
        let reply = tx::mutate(
            ctx,
            request("COUPON.CANCEL", args, &req),
            &[&req.key],
            |tx| {
                let user = req.user.as_deref().unwrap_or_default();
                let (issue, remaining, e) =
                    give_back(tx, &req.key, user, &req.id, Status::Voided, &req.common)?;
                Ok((
                    Reply::Array(vec![Item::Int(issue), Item::Int(remaining)]),
                    e,
                ))
            },
        )?;
        Ok(to_value(reply))
    }
}

/// Cancel or expiry: the number goes back to the stock (retired), the hold closes.
fn give_back<'a>(
    tx: &mut Tx,
    campaign: &'a str,
    user: &str,
    id: &str,
    status: Status,
    common: &Common,
) -> Result<(i64, i64, Event<'a>), CmdError> {
    let hold = reservation(tx, campaign, user, id)?;
    let loaded: Loaded = load(tx.handle(campaign)?)?;
    let mut c = loaded.campaign;
    let issue: i64 = id.parse().map_err(|_| holds::not_found(id, None))?;
    c.release(Some(issue))?;
    store(tx, campaign, Some(&loaded), &c);
    Store::new(tx, campaign).close(tx, id, &hold, status)?;
    let kind = if status == Status::Expired {
        "coupon.expire"
    } else {
        "coupon.cancel"
    };
    let hs = HoldState::of(id, Kind::Coupon, &hold, status);
    let e = with_coupon(tx, kind, common, campaign, hs, &c, user, issue)?;
    Ok((issue, c.remaining(), e))
}

/// A reservation's expiry (the timer, or a command on the campaign).
pub(crate) fn expire<'a>(tx: &mut Tx, campaign: &'a str, id: &str) -> Result<Event<'a>, CmdError> {
    let hold = Store::new(tx, campaign).require(tx, id)?;
    give_back(
        tx,
        campaign,
        &hold.subject,
        id,
        Status::Expired,
        &no_request(),
    )
    .map(|(_, _, e)| e)
}
