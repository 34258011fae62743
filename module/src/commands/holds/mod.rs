//! Holds (docs/holds.md): ASSET.HOLD/SETTLE/VOID/HOLDS/AVAILABLE, COUPON.RESERVE/CONFIRM/
//! CANCEL, USAGE.RESERVE/COMMIT/CANCEL, and their expiry.
//!
//! - `store`: a key's holds hash and due-index members, through a command's `Tx`
//! - `asset`, `coupon`, `usage`: the commands of each kind, and what an expiry does to it
//! - `expiry`: the primary's timer, and the expiry of due holds before a command on the key

pub(super) mod asset;
pub(super) mod coupon;
pub(crate) mod expiry;
mod store;
pub(super) mod usage;

use redis_module::Context;

use crate::domain::decimal::Decimal;
use crate::domain::error::CmdError;
use crate::domain::event::{Event, KeySeq};
use crate::domain::hold_request::{Close, Open};
use crate::domain::holds::{self, Hold, HoldState, FIELD_DEADLINE, FIELD_OPEN};
use crate::domain::request::{Canonical, Common};
use crate::domain::rules;
use crate::host::acl;
use crate::host::ffi::Key;
use crate::host::tx::{self, Tx};

/// The event of a hold change on `key`: its next seq and the hold's state after it.
fn hold_event<'a>(
    tx: &mut Tx,
    kind: &'static str,
    common: &Common,
    key: &'a str,
    hold: HoldState,
) -> Result<Event<'a>, CmdError> {
    let seq = tx.next_seq(key)?;
    let mut e = Event::new(
        kind,
        tx.now_ms,
        common,
        vec![KeySeq {
            key: key.into(),
            seq,
        }],
    );
    e.hold = Some(hold);
    Ok(e)
}

/// What every mutating hold command does before its change: refuse tally's own keys,
/// check write access to the holds hash and due index, expire the key's due holds.
fn before(ctx: &Context, key: &str) -> Result<(), CmdError> {
    tx::check_user_key(key)?;
    let names = tx::hold_names(ctx, key);
    acl::check_hold_keys(
        ctx,
        &[(&names.holds, &names.holds_rs), (&names.due, &names.due_rs)],
    )?;
    expiry::expire_due(ctx, key)
}

/// The common options of an expiry: no op-id, no META.
fn no_request() -> Common {
    Common::default()
}

/// The open holds of `key` that are not due at `now_ms` (reads leave due holds out), in id
/// order.
pub(crate) fn live(ctx: &Context, key: &str, now_ms: i64) -> Result<Vec<(u64, Hold)>, CmdError> {
    let mut out: Vec<(u64, Hold)> = open_holds(ctx, key)?
        .into_iter()
        .filter(|(_, hold)| !hold.is_due(now_ms))
        .filter_map(|(id, hold)| Some((id.parse::<u64>().ok()?, hold)))
        .collect();
    out.sort_by_key(|(id, _)| *id);
    Ok(out)
}

/// Every open hold of `key` (its `o:<id>` fields), due or not, with its id, in hash order.
pub(crate) fn open_holds(ctx: &Context, key: &str) -> Result<Vec<(String, Hold)>, CmdError> {
    let names = tx::hold_names(ctx, key);
    let mut out = Vec::new();
    for (field, value) in tx::hgetall(ctx, &names.holds)? {
        if let Some(id) = field.strip_prefix(b"o:") {
            out.push((
                String::from_utf8_lossy(id).into_owned(),
                Hold::parse(&value)?,
            ));
        }
    }
    Ok(out)
}

/// What reads report of a key's holds at `now_ms`, leaving due holds out (as if the timer
/// had run): how many are open in Redis, how many of them are not due, and the sum of the
/// not-due ones of `subject`. From the stored count and total when none is due (one read),
/// else by reading the holds.
pub(crate) struct Summary {
    pub(crate) stored_open: i64,
    pub(crate) live: i64,
    pub(crate) live_sum: Decimal,
}

pub(crate) fn live_summary(
    ctx: &Context,
    key: &str,
    subject: &str,
    now_ms: i64,
) -> Result<Summary, CmdError> {
    let names = tx::hold_names(ctx, key);
    let k = Key::open(ctx, &names.holds_rs, false)?;
    let int =
        |raw: Option<Vec<u8>>| raw.and_then(|b| std::str::from_utf8(&b).ok()?.parse::<i64>().ok());
    let stored_open = int(k.hget(FIELD_OPEN)?).unwrap_or(0);
    let deadline = int(k.hget(FIELD_DEADLINE)?);
    if deadline.is_none_or(|d| d > now_ms) {
        let total = k.hget(&holds::total_field(subject))?;
        let live_sum = rules::stored_decimal("the holds' total", total.as_deref())?;
        return Ok(Summary {
            stored_open,
            live: stored_open,
            live_sum,
        });
    }
    drop(k);
    let all = live(ctx, key, now_ms)?;
    let mut live_sum = Decimal::ZERO;
    for (_, h) in all.iter().filter(|(_, h)| h.subject == subject) {
        live_sum = live_sum
            .checked_add(h.amount)
            .ok_or_else(|| CmdError::err("the held total would overflow 20 integer digits"))?;
    }
    Ok(Summary {
        stored_open,
        live: all.len() as i64,
        live_sum,
    })
}

/// The `tx::Request` of a parsed hold command.
fn request<'a, R: Canonical + HasCommon>(
    command: &'static str,
    raw: &'a [&'a [u8]],
    parsed: &'a R,
) -> tx::Request<'a, R> {
    tx::Request {
        command,
        raw,
        parsed,
        common: parsed.common(),
    }
}

/// The common options of a parsed hold request.
pub(super) trait HasCommon {
    fn common(&self) -> &Common;
}
impl HasCommon for Open {
    fn common(&self) -> &Common {
        &self.common
    }
}
impl HasCommon for Close {
    fn common(&self) -> &Common {
        &self.common
    }
}
