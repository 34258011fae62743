//! The hold commands of the `request` target (docs/holds.md): ASSET.HOLD, COUPON.RESERVE and
//! USAGE.RESERVE (`hold_request::asset_hold`, `coupon_reserve`, `usage_reserve`),
//! ASSET.SETTLE/VOID, USAGE.COMMIT/CANCEL (`hold_request::close`), COUPON.CONFIRM/CANCEL
//! (`hold_request::coupon_close`); ASSET.HOLDS and ASSET.AVAILABLE parse in their handlers
//! (`request::name`, `request::balance_field`), done the same way here.
//!
//! On what parses: the checks of every command (`request.rs`: canonical parts, fingerprints,
//! the ID position, the request written back parsing to the same one, the op-id record);
//! the records a hold leaves in Redis read back as written (`Hold::encode`/`parse`,
//! `due_member`/`parse_due_member`, tombstones, the holds hash named in the key's slot);
//! then the events the module writes, built as `commands/holds/*.rs` builds them and decoded
//! by the shipper: the command's own event, and the `*.expire` event of the same hold (the
//! timer's, or the one a later command on the key writes first).
//!
//! A close names a stored hold the request does not describe: it is checked against a hold
//! of 1 and, for SETTLE/COMMIT with a positive amount, a hold of exactly that amount.

use crate::check_error_text;
use crate::domain::decimal::Decimal;
use crate::domain::error::CmdError;
use crate::domain::event::{Change, CouponState, Event, KeySeq, UsageState};
use crate::domain::hold_request::{self as hreq, Close, Open};
use crate::domain::holds::{self, Hold, HoldState, Kind, Status};
use crate::domain::layout::{self, HelperKeys, KIND_FIELD};
use crate::domain::period::Period;
use crate::domain::record::{Item, Reply};
use crate::domain::request::{self as req, Canonical, Common};
use crate::domain::rules::{Campaign, Floor, Usage};
use crate::request::{
    check_decimal, check_event, check_name, check_parsed, finish_event, names_of_key, reparse,
    same_common, single_key, with_common, PREFIX, TS,
};

type Parser<T> = fn(&[&[u8]]) -> Result<T, CmdError>;

/// One of the eleven hold commands (`request::COMMANDS[10..]`).
pub(crate) fn run(command: &'static str, args: &[&[u8]]) -> Result<(), CmdError> {
    let opened = |kind: Kind| open_parser(kind)(args).map(|r| open(command, kind, args, &r));
    match command {
        "ASSET.HOLD" => opened(Kind::Asset),
        "COUPON.RESERVE" => opened(Kind::Coupon),
        "USAGE.RESERVE" => opened(Kind::Usage),
        "ASSET.HOLDS" => single_key("key", args).map(|key| hold_names(&key)),
        "ASSET.AVAILABLE" => asset_available(args),
        _ => close_parser(command)(args).map(|r| close(command, args, &r)),
    }
}

fn open_parser(kind: Kind) -> Parser<Open> {
    match kind {
        Kind::Asset => hreq::asset_hold,
        Kind::Coupon => hreq::coupon_reserve,
        Kind::Usage => hreq::usage_reserve,
    }
}

fn close_parser(command: &str) -> Parser<Close> {
    match command {
        "ASSET.SETTLE" | "USAGE.COMMIT" => |a| hreq::close(a, true),
        "ASSET.VOID" | "USAGE.CANCEL" => |a| hreq::close(a, false),
        "COUPON.CONFIRM" | "COUPON.CANCEL" => hreq::coupon_close,
        other => unreachable!("{other} is not a hold command"),
    }
}

/// `ASSET.AVAILABLE key [field ...]`, parsed as `commands/holds/asset.rs` does: the key a
/// `request::name`, every field a `request::balance_field`.
fn asset_available(args: &[&[u8]]) -> Result<(), CmdError> {
    let Some((key, fields)) = args.split_first() else {
        return Err(CmdError::Arity);
    };
    let key = req::name("key", key)?;
    for f in fields {
        let field = req::balance_field(f)?;
        check_name(&field);
        assert_ne!(field, KIND_FIELD);
    }
    names_of_key(&key, None);
    hold_names(&key);
    Ok(())
}

/// The holds hash of `key` is `<prefix>:holds[:{tag}]:<byte length of key>:<key>`; in
/// cluster mode it and the due index hash to the key's slot (one command, one slot).
fn hold_names(key: &str) {
    let tail = format!(":{}:{key}", key.len());
    assert!(HelperKeys::new(PREFIX, "").holds(key).ends_with(&tail));
    let slot = tally_slot::key_slot(key.as_bytes());
    let cluster = HelperKeys::new(PREFIX, &layout::slot_suffix(key));
    let name = cluster.holds(key);
    assert!(name.ends_with(&tail), "{name:?}");
    assert_eq!(tally_slot::key_slot(name.as_bytes()), slot, "{name:?}");
    assert_eq!(tally_slot::key_slot(cluster.due.as_bytes()), slot);
}

/// What a hold leaves in Redis reads back as written: its `o:<id>` value (the subject last,
/// so it may hold `:`), its due-index member (the key's byte length first, so the key may
/// hold `:`), the tombstone of each way it closes; the names of its hashes.
fn check_records(key: &str, id: &str, hold: &Hold) {
    let stored = hold.encode();
    match Hold::parse(stored.as_bytes()) {
        Ok(h) => assert_eq!(&h, hold, "{stored:?}"),
        Err(e) => panic!("the hold record {stored:?} does not parse back: {e}"),
    }
    let member = holds::due_member(key, id);
    let back = holds::parse_due_member(member.as_bytes());
    assert_eq!(back, Some((key.to_string(), id.to_string())), "{member:?}");
    for status in [Status::Settled, Status::Voided, Status::Expired] {
        let tomb = holds::encode_closed(status, TS);
        assert_eq!(holds::parse_closed(tomb.as_bytes()), Some((status, TS)));
    }
    assert_eq!(holds::open_field(id), [b"o:", id.as_bytes()].concat());
    let total = holds::total_field(&hold.subject);
    assert_eq!(total, [b"t:", hold.subject.as_bytes()].concat());
    hold_names(key);
}

/// ASSET.HOLD, COUPON.RESERVE, USAGE.RESERVE.
fn open(command: &str, kind: Kind, raw: &[&[u8]], r: &Open) {
    let fp = check_parsed(command, raw, r, &r.common);
    check_subject(kind, r);
    assert!(r.amount.is_positive());
    assert!((holds::MIN_TTL_MS..=holds::MAX_TTL_MS).contains(&r.ttl_ms));
    let again = reparse(&render_open(kind, r), open_parser(kind));
    assert_eq!(
        (
            &again.key,
            &again.subject,
            again.amount,
            again.ttl_ms,
            again.floor
        ),
        (&r.key, &r.subject, r.amount, r.ttl_ms, r.floor)
    );
    same_common(&again.common, &r.common);
    assert_eq!(again.canonical(), r.canonical());
    names_of_key(&r.key, r.common.op_id.as_deref());
    let hold = Hold {
        expires_ms: holds::deadline(TS, r.ttl_ms),
        created_ms: TS,
        amount: r.amount,
        subject: r.subject.clone(),
    };
    assert!(!hold.is_due(TS) && hold.is_due(hold.expires_ms));
    let id = match kind {
        Kind::Asset => asset_hold(r, &hold, &fp),
        Kind::Coupon => coupon_reserve(r, &hold, &fp),
        Kind::Usage => usage_reserve(r, &hold, &fp),
    };
    check_records(&r.key, &id, &hold);
    expire(kind, &r.key, &id, &hold);
}

/// The subject the parser gives: a balance field other than `kind` (asset), a user without
/// `,` holding 1 (coupon), none (usage); a floor only for an asset hold.
fn check_subject(kind: Kind, r: &Open) {
    check_name(&r.key);
    match kind {
        Kind::Asset => {
            check_name(&r.subject);
            assert_ne!(r.subject, KIND_FIELD);
        }
        Kind::Coupon => {
            check_name(&r.subject);
            assert!(!r.subject.contains(','));
            assert_eq!(r.amount, Decimal::from_int(1));
        }
        Kind::Usage => assert!(r.subject.is_empty()),
    }
    if kind != Kind::Asset {
        assert_eq!(r.floor, Floor::Default);
    }
}

/// The request written back: canonical numbers, option words in other cases, TTL last.
fn render_open(kind: Kind, r: &Open) -> Vec<Vec<u8>> {
    let mut words = vec![r.key.clone().into_bytes()];
    if kind != Kind::Usage {
        words.push(r.subject.clone().into_bytes());
    }
    if kind != Kind::Coupon {
        words.push(check_decimal(r.amount).into_bytes());
    }
    match r.floor {
        Floor::Default => {}
        Floor::At(f) => words.extend([b"Floor".to_vec(), check_decimal(f).into_bytes()]),
        Floor::None => words.push(b"nofloor".to_vec()),
    }
    let mut words = with_common(words, &r.common);
    words.extend([b"tTl".to_vec(), r.ttl_ms.to_string().into_bytes()]);
    words
}

/// The event of a hold change on `key` (`commands/holds/mod.rs`, `hold_event`).
fn hold_event<'a>(
    kind: &'static str,
    ts: i64,
    common: &Common,
    key: &'a str,
    state: HoldState,
) -> Event<'a> {
    let keys = vec![KeySeq {
        key: key.into(),
        seq: 4,
    }];
    let mut e = Event::new(kind, ts, common, keys);
    e.hold = Some(state);
    e
}

/// The id of a key's first asset or usage hold.
fn first_id() -> String {
    let (n, id) = holds::next_id(None).expect("the first hold id");
    assert_eq!((n, id.as_str()), (1, "1"));
    id
}

/// ASSET.HOLD: `[hold-id, available]`, event `asset.hold` (no changes). `take_available` is
/// checked against its definition for an available balance of 0, of the amount, and of the
/// amount above the floor; the first it accepts is the reply's (none: no balance within the
/// bounds covers it, so no event).
fn asset_hold(r: &Open, hold: &Hold, fp: &str) -> String {
    let above_floor = match r.floor {
        Floor::At(f) => r.amount.checked_add(f),
        Floor::Default | Floor::None => None,
    };
    let mut left = None;
    for before in [Decimal::ZERO, r.amount].into_iter().chain(above_floor) {
        left = left.or(take(before, r.amount, r.floor));
    }
    let id = first_id();
    let Some(left) = left else {
        return id;
    };
    let state = HoldState::of(&id, Kind::Asset, hold, Status::Open);
    let e = hold_event("asset.hold", TS, &r.common, &r.key, state);
    let left = check_decimal(left);
    finish_event(
        e,
        fp,
        Reply::Array(vec![Item::Str(id.clone()), Item::Str(left)]),
    );
    id
}

/// `take_available(before, amount, floor)`: `before - amount` unless it overflows or goes
/// below the floor (default 0, none with NOFLOOR).
fn take(before: Decimal, amount: Decimal, floor: Floor) -> Option<Decimal> {
    let least = match floor {
        Floor::Default => Some(Decimal::ZERO),
        Floor::At(f) => Some(f),
        Floor::None => None,
    };
    let want = match (before.checked_sub(amount), least) {
        (Some(after), Some(l)) if after < l => None,
        (after, _) => after,
    };
    let got = holds::take_available(before, amount, floor);
    agrees(got, want, || format!("{before} - {amount}, {floor:?}"))
}

/// A decision of `domain::holds` agrees with its definition: `want`, or refused (None) with
/// a well-formed error.
fn agrees(
    got: Result<Decimal, CmdError>,
    want: Option<Decimal>,
    case: impl FnOnce() -> String,
) -> Option<Decimal> {
    match got {
        Ok(v) => assert_eq!(Some(v), want, "{}", case()),
        Err(e) => {
            check_error_text(&e);
            assert_eq!(want, None, "{}: {e}", case());
        }
    }
    want
}

/// A campaign whose last issue number is at least `issue`, 4 of 10 issued, PERUSER 2.
fn campaign(issue: i64) -> Campaign {
    Campaign {
        total: 10,
        issued: 4,
        last_issue: issue.max(7),
        per_user: 2,
        start_ms: 0,
        end_ms: 0,
    }
}

/// The campaign's state in a coupon hold event (`commands/coupon.rs`, `state`).
fn coupon_state(campaign: &str, user: &str, issue: i64, c: &Campaign) -> CouponState {
    CouponState {
        campaign: campaign.to_string(),
        user: Some(user.to_string()),
        issue: Some(issue),
        total: c.total,
        issued: c.issued,
        remaining: c.remaining(),
        peruser: c.per_user,
        start: c.start_ms,
        end: c.end_ms,
    }
}

/// COUPON.RESERVE: a number from the stock like a claim, the user's open reservation
/// counting against PERUSER (`Campaign::claim`); `[issue, remaining]`, event
/// `coupon.reserve` with the campaign after it. The hold id is the issue number.
fn coupon_reserve(r: &Open, hold: &Hold, fp: &str) -> String {
    let mut full = campaign(7);
    let refused = full.claim(2, TS).expect_err("PERUSER 2 reached");
    assert_eq!(refused.code_name(), "DUPLICATE");
    let mut c = campaign(7);
    let issue = c
        .claim(1, TS)
        .expect("a claim within PERUSER and the stock");
    assert_eq!((issue, c.issued), (8, 5));
    let id = issue.to_string();
    let state = HoldState::of(&id, Kind::Coupon, hold, Status::Open);
    let mut e = hold_event("coupon.reserve", TS, &r.common, &r.key, state);
    e.coupon = Some(coupon_state(&r.key, &r.subject, issue, &c));
    let reply = Reply::Array(vec![Item::Int(issue), Item::Int(c.remaining())]);
    finish_event(e, fp, reply);
    id
}

/// A usage counter with `limit`, period by the key's length (all three get used), nothing
/// used.
fn counter(key: &str, limit: Decimal) -> Usage {
    let period = [Period::None, Period::Day, Period::Month][key.len() % 3];
    Usage {
        limit,
        period,
        period_id: period.id_at(TS),
        used: Decimal::ZERO,
    }
}

/// The counter's state in a usage event (`commands/usage.rs`, `store_and_event`).
fn usage_state(key: &str, u: &Usage, amount: Option<String>) -> UsageState {
    UsageState {
        key: key.to_string(),
        amount,
        used: check_decimal(u.used),
        limit: check_decimal(u.limit),
        period: u.period.as_str(),
        period_id: u.period_id.clone(),
    }
}

/// USAGE.RESERVE: checked like a CONSUME of the amount beside the open reservations
/// (`Usage::consume`), `used` not moved; `[id, used, reserved, remaining]`, event
/// `usage.reserve` with `amount` null. Here the reservation fills the limit.
fn usage_reserve(r: &Open, hold: &Hold, fp: &str) -> String {
    let u = counter(&r.key, r.amount);
    let fits = u.consume(r.amount, Decimal::ZERO, TS);
    assert_eq!(fits.map(|c| c.used), Ok(r.amount));
    let over = u
        .consume(r.amount, r.amount, TS)
        .expect_err("twice the limit");
    check_error_text(&over);
    let id = first_id();
    let state = HoldState::of(&id, Kind::Usage, hold, Status::Open);
    let mut e = hold_event("usage.reserve", TS, &r.common, &r.key, state);
    e.usage = Some(usage_state(&r.key, &u, None));
    let remaining = u.remaining_with(r.amount);
    assert!(remaining.is_zero());
    let items = [
        id.clone(),
        u.used.to_string(),
        check_decimal(r.amount),
        remaining.to_string(),
    ];
    finish_event(
        e,
        fp,
        Reply::Array(items.into_iter().map(Item::Str).collect()),
    );
    id
}

/// The `*.expire` event of `hold` (the timer's, or the one a command on the key writes
/// before its own): no op-id nor META, at the deadline, the campaign or counter after the
/// hold is released.
fn expire(kind: Kind, key: &str, id: &str, hold: &Hold) {
    let typ = match kind {
        Kind::Asset => "asset.expire",
        Kind::Coupon => "coupon.expire",
        Kind::Usage => "usage.expire",
    };
    let state = HoldState::of(id, kind, hold, Status::Expired);
    let mut e = hold_event(typ, hold.expires_ms, &Common::default(), key, state);
    if kind == Kind::Coupon {
        let issue: i64 = id.parse().expect("a reservation's id is its issue number");
        let mut c = campaign(issue);
        assert_eq!(c.release(Some(issue)), Ok(issue));
        e.coupon = Some(coupon_state(key, &hold.subject, issue, &c));
    }
    if kind == Kind::Usage {
        e.usage = Some(usage_state(key, &counter(key, hold.amount), None));
    }
    check_event(&e);
}

/// ASSET.SETTLE/VOID, COUPON.CONFIRM/CANCEL, USAGE.COMMIT/CANCEL.
fn close(command: &'static str, raw: &[&[u8]], r: &Close) {
    let fp = check_parsed(command, raw, r, &r.common);
    check_close(command, r);
    let mut words = vec![r.key.clone().into_bytes()];
    words.extend(r.user.clone().map(String::into_bytes));
    words.push(r.id.clone().into_bytes());
    words.extend(r.amount.map(|a| check_decimal(a).into_bytes()));
    let again = reparse(&with_common(words, &r.common), close_parser(command));
    assert_eq!(
        (&again.key, &again.user, &again.id, again.amount),
        (&r.key, &r.user, &r.id, r.amount)
    );
    same_common(&again.common, &r.common);
    assert_eq!(again.canonical(), r.canonical());
    names_of_key(&r.key, r.common.op_id.as_deref());
    // Hold ids come from a per-key i64 counter or are issue numbers (at most MAX_TOTAL): a
    // larger one names no hold, the module answers NOTFOUND and writes nothing.
    if r.id.parse::<i64>().is_err() {
        check_error_text(&holds::not_found(&r.id, None));
        return;
    }
    let one = Decimal::from_int(1);
    let exact = r.amount.filter(|a| a.is_positive() && *a != one);
    for amount in [one].into_iter().chain(exact) {
        closed_one(command, r, &fp, amount);
    }
}

/// What the parser gives: a canonical hold id (an issue number for a coupon, with the
/// user), an amount only for SETTLE and COMMIT.
fn check_close(command: &str, r: &Close) {
    check_name(&r.key);
    let canonical = holds::hold_id(r.id.as_bytes());
    assert_eq!(canonical.as_ref(), Ok(&r.id), "hold id {:?}", r.id);
    assert_eq!(r.user.is_some(), command.starts_with("COUPON."));
    if let Some(u) = &r.user {
        check_name(u);
        assert!(!u.contains(','));
        let issue = r.id.parse::<i64>().ok();
        assert!(issue.is_some_and(|i| (1..=req::MAX_TOTAL).contains(&i)));
    }
    if !matches!(command, "ASSET.SETTLE" | "USAGE.COMMIT") {
        assert_eq!(r.amount, None);
    }
}

/// The close of an open hold of `amount` made a minute before and due a minute after:
/// its records, the command's event, and the hold's expiry instead.
fn closed_one(command: &str, r: &Close, fp: &str, amount: Decimal) {
    let (kind, subject) = match command {
        // an asset hold's field: the key's name (a field can be any name but `kind`)
        "ASSET.SETTLE" | "ASSET.VOID" if r.key == KIND_FIELD => (Kind::Asset, "gold"),
        "ASSET.SETTLE" | "ASSET.VOID" => (Kind::Asset, r.key.as_str()),
        "USAGE.COMMIT" | "USAGE.CANCEL" => (Kind::Usage, ""),
        _ => (Kind::Coupon, r.user.as_deref().unwrap_or_default()),
    };
    let hold = Hold {
        expires_ms: TS + 60_000,
        created_ms: TS - 60_000,
        amount,
        subject: subject.to_string(),
    };
    check_records(&r.key, &r.id, &hold);
    match command {
        "ASSET.SETTLE" => asset_settle(r, fp, &hold),
        "ASSET.VOID" => asset_void(r, fp, &hold),
        "USAGE.COMMIT" | "USAGE.CANCEL" => usage_close(r, fp, &hold, command == "USAGE.COMMIT"),
        _ => coupon_close(r, fp, &hold, command == "COUPON.CONFIRM"),
    }
    expire(kind, &r.key, &r.id, &hold);
}

/// `settle_amount` against its definition: all of the hold without an amount, else
/// `0 < amount <= held` (`0 <=` for a usage commit); None when refused.
fn spend(held: Decimal, amount: Option<Decimal>, zero_ok: bool) -> Option<Decimal> {
    let want = match amount {
        None => Some(held),
        Some(a) if a.is_negative() || (a.is_zero() && !zero_ok) || a > held => None,
        Some(a) => Some(a),
    };
    let got = holds::settle_amount(held, amount, zero_ok);
    agrees(got, want, || format!("{amount:?} of {held}"))
}

/// ASSET.SETTLE: what it spends leaves the balance (here the held amount, so what was not
/// spent stays); `[settled, balance]`, event `asset.settle` with its one change.
fn asset_settle(r: &Close, fp: &str, hold: &Hold) {
    let Some(spent) = spend(hold.amount, r.amount, false) else {
        return;
    };
    let balance = check_decimal(hold.amount.checked_sub(spent).expect("spent <= held"));
    let mut state = HoldState::of(&r.id, Kind::Asset, hold, Status::Settled);
    state.settled = Some(check_decimal(spent));
    let mut e = hold_event("asset.settle", TS, &r.common, &r.key, state);
    e.changes = Some(vec![Change {
        key: r.key.as_str().into(),
        field: hold.subject.as_str().into(),
        delta: check_decimal(-spent),
        balance: balance.clone(),
    }]);
    let items = vec![Item::Str(spent.to_string()), Item::Str(balance)];
    finish_event(e, fp, Reply::Array(items));
}

/// ASSET.VOID: the hold back to what is available (nothing else here); `[released,
/// available]`, event `asset.void` (no changes).
fn asset_void(r: &Close, fp: &str, hold: &Hold) {
    let state = HoldState::of(&r.id, Kind::Asset, hold, Status::Voided);
    let e = hold_event("asset.void", TS, &r.common, &r.key, state);
    let amount = check_decimal(hold.amount);
    let items = vec![Item::Str(amount.clone()), Item::Str(amount)];
    finish_event(e, fp, Reply::Array(items));
}

/// COUPON.CONFIRM (the reservation becomes a claim, the campaign unchanged, settled 1) and
/// COUPON.CANCEL (the stock gets one back, `Campaign::release`); `[issue, remaining]`,
/// event with the campaign after it.
fn coupon_close(r: &Close, fp: &str, hold: &Hold, confirm: bool) {
    let user = r.user.as_deref().expect("coupon_close gives the user");
    let issue: i64 = r.id.parse().expect("an issue number");
    let mut c = campaign(issue);
    let (typ, state) = if confirm {
        let mut s = HoldState::of(&r.id, Kind::Coupon, hold, Status::Settled);
        s.settled = Some(hold.amount.to_string());
        ("coupon.confirm", s)
    } else {
        assert_eq!(c.release(Some(issue)), Ok(issue));
        let s = HoldState::of(&r.id, Kind::Coupon, hold, Status::Voided);
        ("coupon.cancel", s)
    };
    let mut e = hold_event(typ, TS, &r.common, &r.key, state);
    e.coupon = Some(coupon_state(&r.key, user, issue, &c));
    let reply = Reply::Array(vec![Item::Int(issue), Item::Int(c.remaining())]);
    finish_event(e, fp, reply);
}

/// USAGE.COMMIT (`settle_amount`, 0 allowed, added to `used`, the rest released;
/// `[used, remaining]`, `amount` = what was added) and USAGE.CANCEL (`[released,
/// remaining]`, `amount` null). The reservation filled the limit.
fn usage_close(r: &Close, fp: &str, hold: &Hold, commit: bool) {
    let mut u = counter(&r.key, hold.amount);
    let (typ, amount, mut state, head) = if commit {
        let Some(actual) = spend(hold.amount, r.amount, true) else {
            return;
        };
        u.used = u.used.checked_add(actual).expect("used 0 + actual");
        let mut s = HoldState::of(&r.id, Kind::Usage, hold, Status::Settled);
        s.settled = Some(check_decimal(actual));
        ("usage.commit", Some(actual.to_string()), s, u.used)
    } else {
        let s = HoldState::of(&r.id, Kind::Usage, hold, Status::Voided);
        ("usage.cancel", None, s, hold.amount)
    };
    assert_eq!(state.subject.take(), None);
    let remaining = u.remaining_with(Decimal::ZERO);
    let mut e = hold_event(typ, TS, &r.common, &r.key, state);
    e.usage = Some(usage_state(&r.key, &u, amount));
    let items = vec![
        Item::Str(head.to_string()),
        Item::Str(check_decimal(remaining)),
    ];
    finish_event(e, fp, Reply::Array(items));
}
