//! Expiry of holds. Decided on the primary only, by its clock: a module timer every
//! [`TICK`] walks the due index (one sorted set per node, per slot in cluster mode) and
//! expires at most `tally.hold-expire-per-tick` holds per tick, each as its own change with
//! an `*.expire` event, propagated as effects (replicas and AOF replay never decide an
//! expiry). A command on a key expires that key's due holds first ([`expire_due`]).

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::time::Duration;

use redis_module::{Context, ContextFlags};

use super::{asset, coupon, usage};
use crate::domain::error::CmdError;
use crate::domain::holds::{self, Hold, FIELD_DEADLINE};
use crate::domain::layout::{KIND_COUPON, KIND_FIELD, KIND_USAGE};
use crate::domain::text::IntText;
use crate::host::ffi::{self, Key, RStr};
use crate::host::{config, stats, tx};

/// How often the timer runs. Short enough that a hold is released within tens of ms of its
/// deadline, long enough that an idle server spends next to nothing on it.
pub const TICK: Duration = Duration::from_millis(10);
const SLOTS: usize = 16384;
/// Cluster mode: slots looked at per tick to discover due indexes this node did not write
/// (a slot migrated in): all 16384 in 2.56 s, at 64 key lookups per tick.
const DISCOVER_PER_TICK: usize = 64;
/// After loading or a promotion every slot is looked at, 2048 per tick (8 ticks), so the
/// promoted node's due holds expire within ~80 ms without one long pause.
const BURST_PER_TICK: usize = 2048;
/// A member whose holds hash is missing (it may still be arriving in a slot migration) is
/// looked at again after this long.
const RETRY_MS: i64 = 60_000;

/// Cluster mode: the slots known to hold a due index on this node, and the discovery walk.
/// Touched on Redis's main thread only (commands and timer callbacks).
#[derive(Default)]
struct Slots {
    known: BTreeSet<usize>,
    cursor: usize,
    burst_left: usize,
    was_primary: bool,
    next_known: usize,
}

thread_local! {
    static STATE: RefCell<Slots> = RefCell::new(Slots::default());
}

/// A hold was opened on `key` (cluster mode: its slot has a due index from now on).
pub(crate) fn note_due(ctx: &Context, key: &str) {
    if tx::due_index_names(ctx, 0).1 {
        let slot = tally_slot::key_slot(key.as_bytes());
        STATE.with(|s| s.borrow_mut().known.insert(slot));
    }
}

/// Starts the timer (at module load).
pub fn start(ctx: &Context) {
    ctx.create_timer(TICK, tick, ());
}

fn tick(ctx: &Context, _: ()) {
    let flags = ctx.get_flags();
    if flags.contains(ContextFlags::MASTER) && !flags.contains(ContextFlags::LOADING) {
        run_tick(ctx);
    } else {
        STATE.with(|s| s.borrow_mut().was_primary = false);
    }
    ctx.create_timer(TICK, tick, ());
}

fn run_tick(ctx: &Context) {
    let mut budget = config::hold_expire_per_tick();
    let now_ms = ffi::now_ms();
    let (due, cluster) = tx::due_index_names(ctx, 0);
    if !cluster {
        sweep(ctx, &due, now_ms, &mut budget);
        return;
    }
    discover(ctx);
    let (known, start) = STATE.with(|s| {
        let s = s.borrow();
        (s.known.clone(), s.next_known)
    });
    // From where the last tick stopped, so a busy slot cannot starve the others.
    let order = known.range(start..).chain(known.range(..start));
    let mut gone = Vec::new();
    let mut last = start;
    for &slot in order {
        if budget <= 0 {
            break;
        }
        let (due, _) = tx::due_index_names(ctx, slot);
        if exists(ctx, &due) {
            sweep(ctx, &due, now_ms, &mut budget);
        } else {
            gone.push(slot);
        }
        last = slot + 1;
    }
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        s.next_known = last % SLOTS;
        for slot in gone {
            s.known.remove(&slot);
        }
    });
}

/// Looks at the next slots for due indexes not yet known: a few per tick, every slot after
/// loading or a promotion.
fn discover(ctx: &Context) {
    let (cursor, walk) = STATE.with(|s| {
        let mut s = s.borrow_mut();
        if !s.was_primary {
            s.was_primary = true;
            s.burst_left = SLOTS;
        }
        let walk = if s.burst_left > 0 {
            BURST_PER_TICK
        } else {
            DISCOVER_PER_TICK
        };
        s.burst_left = s.burst_left.saturating_sub(walk);
        let cursor = s.cursor;
        s.cursor = (cursor + walk) % SLOTS;
        (cursor, walk)
    });
    let found: Vec<usize> = (0..walk)
        .map(|i| (cursor + i) % SLOTS)
        .filter(|&slot| exists(ctx, &tx::due_index_names(ctx, slot).0))
        .collect();
    STATE.with(|s| s.borrow_mut().known.extend(found));
}

fn exists(ctx: &Context, name: &str) -> bool {
    ffi::key_exists(ctx, &RStr::new(name.as_bytes()))
}

/// Handles the due members of one due index, spending `budget`.
fn sweep(ctx: &Context, due: &str, now_ms: i64, budget: &mut i64) {
    let members = match tx::due_members(ctx, due, now_ms, *budget) {
        Ok(m) => m,
        Err(e) => {
            ctx.log_warning(&format!("tally: hold expiry: {e}"));
            return;
        }
    };
    let due_rs = RStr::new(due.as_bytes());
    for member in members {
        *budget -= 1;
        if let Err(e) = handle(ctx, &due_rs, &member, now_ms) {
            stats::hold_expiry_retried();
            ctx.log_warning(&format!(
                "tally: hold expiry: {e}; retried in {RETRY_MS} ms"
            ));
            let _ = tx::due_now(ctx, &due_rs, &member, Some(now_ms.saturating_add(RETRY_MS)));
        }
    }
}

/// One due member: expire its hold, drop its tombstone, or move it to its real time.
fn handle(ctx: &Context, due: &RStr, member: &[u8], now_ms: i64) -> Result<(), CmdError> {
    let Some((key, id)) = holds::parse_due_member(member) else {
        return tx::due_now(ctx, due, member, None);
    };
    let names = tx::hold_names(ctx, &key);
    let k = Key::open(ctx, &names.holds_rs, false)?;
    if k.kind() == redis_module::KeyType::Empty {
        return tx::due_now(ctx, due, member, Some(now_ms.saturating_add(RETRY_MS)));
    }
    let open = k.hget(&holds::open_field(&id))?;
    let closed = k.hget(&holds::closed_field(&id))?;
    drop(k);
    if let Some(raw) = open {
        let hold = Hold::parse(&raw)?;
        if !hold.is_due(now_ms) {
            return tx::due_now(ctx, due, member, Some(hold.expires_ms));
        }
        return expire_one(ctx, &key, &id);
    }
    match closed.as_deref().and_then(holds::parse_closed) {
        Some((_, at)) if at.saturating_add(config::hold_tombstone_ms()) > now_ms => {
            let when = at.saturating_add(config::hold_tombstone_ms());
            tx::due_now(ctx, due, member, Some(when))
        }
        Some(_) => {
            tx::hset_now(ctx, &names.holds_rs, &holds::closed_field(&id), None)?;
            tx::due_now(ctx, due, member, None)
        }
        None => tx::due_now(ctx, due, member, None),
    }
}

/// Expires hold `id` of `key` as one change with its event, by the kind of the key.
fn expire_one(ctx: &Context, key: &str, id: &str) -> Result<(), CmdError> {
    let kind = Key::open(ctx, &RStr::new(key.as_bytes()), false)?.hget(KIND_FIELD.as_bytes())?;
    tx::apply(ctx, key, |tx| match kind.as_deref() {
        Some(k) if k == KIND_COUPON => coupon::expire(tx, key, id),
        Some(k) if k == KIND_USAGE => usage::expire(tx, key, id),
        _ => asset::expire(tx, key, id),
    })?;
    stats::hold_expired();
    Ok(())
}

/// Before a command on `key`: expires its due holds, each with its event, earliest first,
/// and stores the earliest deadline left. Cheap when none is due: one field read.
pub(crate) fn expire_due(ctx: &Context, key: &str) -> Result<(), CmdError> {
    let now_ms = ffi::now_ms();
    if !tx::slot_may_have_due(ctx, key, now_ms) {
        return Ok(());
    }
    let names = tx::hold_names(ctx, key);
    let deadline = Key::open(ctx, &names.holds_rs, false)?
        .hget(FIELD_DEADLINE)
        .unwrap_or(None);
    let earliest = deadline
        .as_deref()
        .and_then(|b| std::str::from_utf8(b).ok())
        .and_then(|s| s.parse::<i64>().ok());
    if earliest.is_none_or(|d| d > now_ms) {
        return Ok(());
    }
    let mut due: Vec<(i64, String)> = Vec::new();
    let mut left: Option<i64> = None;
    for (id, hold) in super::open_holds(ctx, key)? {
        if hold.is_due(now_ms) {
            due.push((hold.expires_ms, id));
        } else {
            left = Some(left.map_or(hold.expires_ms, |l| l.min(hold.expires_ms)));
        }
    }
    due.sort();
    for (_, id) in &due {
        expire_one(ctx, key, id)?;
    }
    if let Some(l) = left {
        let text = IntText::new(l);
        tx::hset_now(ctx, &names.holds_rs, FIELD_DEADLINE, Some(text.as_bytes()))?;
    }
    Ok(())
}
