//! COUPON.CREATE, COUPON.CLAIM, COUPON.RELEASE, COUPON.INFO
//!
//! A campaign is a plain hash: `kind`=`coupon`, `total`, `issued` (claims held),
//! `last_issue`, `peruser`, `start`, `end`, and one `u:<user>` field per holder listing
//! the issue numbers the user holds (`"3,17"`).

use redis_module::{Context, RedisValue};

use super::{pairs, to_value, Result};
use crate::args::{self, Common};
use crate::error::CmdError;
use crate::event::{CouponState, Event, Item, KeySeq, Reply};
use std::sync::OnceLock;

use crate::ffi::{Key, RStr};
use crate::logic::{self, Campaign};
use crate::tx::{self, FieldName, Tx};
use redis_module::raw::RedisModuleString;

const KIND: &[u8] = logic::KIND_COUPON;

fn holder_field(user: &str) -> smallvec::SmallVec<[u8; 64]> {
    let mut f = smallvec::SmallVec::new();
    f.extend_from_slice(b"u:");
    f.extend_from_slice(user.as_bytes());
    f
}

/// The campaign's fixed field names, created once.
const FIELD_NAMES: [&str; 7] = ["kind", "total", "issued", "last_issue", "peruser", "start", "end"];

fn field_names() -> &'static [RStr; 7] {
    static NAMES: OnceLock<[RStr; 7]> = OnceLock::new();
    NAMES.get_or_init(|| FIELD_NAMES.map(|f| RStr::new(f.as_bytes())))
}

/// A loaded campaign and, per stored integer field (bit `i` for `FIELD_NAMES[i + 1]`),
/// whether its text is already canonical (so an unchanged value need not be rewritten).
struct Loaded {
    campaign: Campaign,
    canonical: u8,
}

fn load(ctx: &Context, key: &Key) -> std::result::Result<Loaded, CmdError> {
    load_with(ctx, key, None).map(|(l, _)| l)
}

/// Loads the campaign with one read of all its fields and, when given, one more field read
/// in the same call (the holder record), returned as stored.
fn load_with(
    _ctx: &Context,
    key: &Key,
    extra: Option<*mut RedisModuleString>,
) -> std::result::Result<(Loaded, RStr), CmdError> {
    if !tx::kind_is_hash(key.kind())? {
        return Err(CmdError::code("NOTFOUND", "no such campaign"));
    }
    let names = field_names();
    let mut fields: [*mut RedisModuleString; 8] = [std::ptr::null_mut(); 8];
    for (slot, name) in fields.iter_mut().zip(names.iter()) {
        *slot = name.ptr();
    }
    let n = match extra {
        Some(f) => {
            fields[7] = f;
            8
        }
        None => 7,
    };
    let [kind, f1, f2, f3, f4, f5, f6, holder] = key.hget_many(&fields[..n])?;
    logic::check_kind(kind.bytes(), KIND)?;
    let mut canonical = 0u8;
    let mut values = [0i64; 6];
    for (i, raw) in [f1, f2, f3, f4, f5, f6].iter().enumerate() {
        let parsed = raw.bytes().and_then(|raw| {
            let n = std::str::from_utf8(raw).ok()?.parse::<i64>().ok()?;
            Some((n, tx::IntText::new(n).as_bytes() == raw))
        });
        let (n, canon) = parsed
            .ok_or_else(|| CmdError::wrong_type(format!("the campaign's '{}' field is corrupt", FIELD_NAMES[i + 1])))?;
        values[i] = n;
        if canon {
            canonical |= 1 << i;
        }
    }
    let [total, issued, last_issue, per_user, start_ms, end_ms] = values;
    Ok((Loaded { campaign: Campaign { total, issued, last_issue, per_user, start_ms, end_ms }, canonical }, holder))
}

fn state(campaign: &str, user: Option<&str>, issue: Option<i64>, c: &Campaign) -> CouponState {
    CouponState {
        campaign: campaign.to_string(),
        user: user.map(str::to_string),
        issue,
        total: c.total,
        issued: c.issued,
        remaining: c.remaining(),
        peruser: c.per_user,
        start: c.start_ms,
        end: c.end_ms,
    }
}

/// Queues the campaign's integer fields: all of them for a new campaign, otherwise only
/// those whose stored text differs from the new value's canonical text.
fn store(tx: &mut Tx, key: &str, old: Option<&Loaded>, c: &Campaign) {
    let values = [c.total, c.issued, c.last_issue, c.per_user, c.start_ms, c.end_ms];
    let before = old.map(|o| {
        let p = o.campaign;
        [p.total, p.issued, p.last_issue, p.per_user, p.start_ms, p.end_ms]
    });
    for (i, value) in values.into_iter().enumerate() {
        let unchanged = match (old, before) {
            (Some(o), Some(b)) => b[i] == value && o.canonical & (1 << i) != 0,
            _ => false,
        };
        if !unchanged {
            tx.set_named(key, FieldName::Static(&field_names()[i + 1]), Some(tx::IntText::new(value).as_bytes()));
        }
    }
}

fn event(tx: &mut Tx, kind: &'static str, common: &Common, coupon: CouponState) -> std::result::Result<Event, CmdError> {
    let seq = tx.next_seq(&coupon.campaign)?;
    let mut e = Event::new(kind, tx.now_ms, common, vec![KeySeq { key: coupon.campaign.clone(), seq }]);
    e.coupon = Some(coupon);
    Ok(e)
}

pub fn create(ctx: &Context, raw: &[&[u8]]) -> Result {
    let req = args::coupon_create(raw)?;
    tx::check_user_key(&req.campaign)?;
    let reply = tx::mutate(ctx, "COUPON.CREATE", &req, &req.common, &[&req.campaign], |tx| {
        if tx.hash_exists(&req.campaign)? {
            // Another kind of hash is WRONGTYPE; a campaign already exists.
            tx.hget_with(&req.campaign, logic::KIND_FIELD.as_bytes(), |k| logic::check_kind(k, KIND))??;
            return Err(CmdError::err("the campaign already exists"));
        }
        let c = Campaign {
            total: req.total,
            issued: 0,
            last_issue: 0,
            per_user: req.per_user,
            start_ms: req.start_ms,
            end_ms: req.end_ms,
        };
        tx.set_named(&req.campaign, FieldName::Static(&field_names()[0]), Some(KIND));
        store(tx, &req.campaign, None, &c);
        let e = event(tx, "coupon.create", &req.common, state(&req.campaign, None, None, &c))?;
        Ok((Reply::Ok, e))
    })?;
    Ok(to_value(reply))
}

/// CLAIM and RELEASE: load the campaign and the user's holding through one handle, let
/// `change` decide (it returns the issue number involved), store what changed, log it.
fn change_holding(
    ctx: &Context,
    raw: &[&[u8]],
    command: &str,
    kind: &'static str,
    change: fn(&mut Campaign, &mut Vec<i64>, i64) -> std::result::Result<i64, CmdError>,
) -> Result {
    let req = args::coupon_user(raw)?;
    tx::check_user_key(&req.campaign)?;
    let reply = tx::mutate(ctx, command, &req, &req.common, &[&req.campaign], |tx| {
        let field = RStr::new(&holder_field(&req.user));
        let (loaded, held_raw) = {
            let (ctx, k) = tx.handle(&req.campaign)?;
            load_with(ctx, k, Some(field.ptr()))?
        };
        let mut c = loaded.campaign;
        let mut held = logic::parse_held(held_raw.bytes())?;
        drop(held_raw);
        let issue = change(&mut c, &mut held, tx.now_ms)?;
        let record = logic::format_held(&held);
        tx.set_named(&req.campaign, FieldName::Owned(field), if held.is_empty() { None } else { Some(record.as_bytes()) });
        store(tx, &req.campaign, Some(&loaded), &c);
        let e = event(tx, kind, &req.common, state(&req.campaign, Some(&req.user), Some(issue), &c))?;
        Ok((Reply::Array(vec![Item::Int(issue), Item::Int(c.remaining())]), e))
    })?;
    Ok(to_value(reply))
}

pub fn claim(ctx: &Context, raw: &[&[u8]]) -> Result {
    change_holding(ctx, raw, "COUPON.CLAIM", "coupon.claim", |c, held, now_ms| {
        let issue = c.claim(held, now_ms)?;
        held.push(issue);
        Ok(issue)
    })
}

pub fn release(ctx: &Context, raw: &[&[u8]]) -> Result {
    change_holding(ctx, raw, "COUPON.RELEASE", "coupon.release", |c, held, _| {
        let issue = c.release(held)?;
        held.pop();
        Ok(issue)
    })
}

pub fn info(ctx: &Context, raw: &[&[u8]]) -> Result {
    let [key_raw] = raw else { return Err(CmdError::Arity) };
    let key = args::name("campaign", key_raw)?;
    crate::acl::check_read(ctx, &key)?;
    let c = load(ctx, &tx::open_read(ctx, &key)?)?.campaign;
    Ok(pairs(vec![
        ("total", RedisValue::Integer(c.total)),
        ("issued", RedisValue::Integer(c.issued)),
        ("remaining", RedisValue::Integer(c.remaining())),
        ("peruser", RedisValue::Integer(c.per_user)),
        ("start", RedisValue::Integer(c.start_ms)),
        ("end", RedisValue::Integer(c.end_ms)),
        ("last_issue", RedisValue::Integer(c.last_issue)),
    ]))
}
