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
use crate::logic::{self, Campaign};
use crate::tx::{self, Tx};

const KIND: &[u8] = b"coupon";

fn holder_field(user: &str) -> Vec<u8> {
    format!("u:{user}").into_bytes()
}

fn load(ctx: &Context, key: &str) -> std::result::Result<Campaign, CmdError> {
    if !tx::hash_exists(ctx, key)? {
        return Err(CmdError::code("NOTFOUND", "no such campaign"));
    }
    if tx::read_field(ctx, key, b"kind")?.as_deref() != Some(KIND) {
        return Err(CmdError::wrong_type("the key is not a tally coupon campaign"));
    }
    let int = |field: &str| -> std::result::Result<i64, CmdError> {
        let raw = tx::read_field(ctx, key, field.as_bytes())?;
        raw.as_deref()
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|s| s.parse::<i64>().ok())
            .ok_or_else(|| CmdError::wrong_type(format!("the campaign's '{field}' field is corrupt")))
    };
    Ok(Campaign {
        total: int("total")?,
        issued: int("issued")?,
        last_issue: int("last_issue")?,
        per_user: int("peruser")?,
        start_ms: int("start")?,
        end_ms: int("end")?,
    })
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

fn store(tx: &mut Tx, key: &str, c: &Campaign) {
    for (field, value) in [
        ("total", c.total),
        ("issued", c.issued),
        ("last_issue", c.last_issue),
        ("peruser", c.per_user),
        ("start", c.start_ms),
        ("end", c.end_ms),
    ] {
        tx.set(key, field.as_bytes(), Some(value.to_string().as_bytes()));
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
    let reply = tx::mutate(ctx, "COUPON.CREATE", raw, &req.common, &req.campaign, |tx| {
        if tx.hash_exists(&req.campaign)? {
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
        tx.set(&req.campaign, b"kind", Some(KIND));
        store(tx, &req.campaign, &c);
        let e = event(tx, "coupon.create", &req.common, state(&req.campaign, None, None, &c))?;
        Ok((Reply::Ok, e))
    })?;
    Ok(to_value(reply))
}

pub fn claim(ctx: &Context, raw: &[&[u8]]) -> Result {
    let req = args::coupon_user(raw)?;
    tx::check_user_key(&req.campaign)?;
    let reply = tx::mutate(ctx, "COUPON.CLAIM", raw, &req.common, &req.campaign, |tx| {
        let mut c = load(tx.ctx, &req.campaign)?;
        let field = holder_field(&req.user);
        let mut held = logic::parse_held(tx.hget(&req.campaign, &field)?.as_deref())?;
        let issue = c.claim(&held, tx.now_ms)?;
        held.push(issue);
        tx.set(&req.campaign, &field, Some(logic::format_held(&held).as_bytes()));
        store(tx, &req.campaign, &c);
        let e = event(tx, "coupon.claim", &req.common, state(&req.campaign, Some(&req.user), Some(issue), &c))?;
        Ok((Reply::Array(vec![Item::Int(issue), Item::Int(c.remaining())]), e))
    })?;
    Ok(to_value(reply))
}

pub fn release(ctx: &Context, raw: &[&[u8]]) -> Result {
    let req = args::coupon_user(raw)?;
    tx::check_user_key(&req.campaign)?;
    let reply = tx::mutate(ctx, "COUPON.RELEASE", raw, &req.common, &req.campaign, |tx| {
        let mut c = load(tx.ctx, &req.campaign)?;
        let field = holder_field(&req.user);
        let mut held = logic::parse_held(tx.hget(&req.campaign, &field)?.as_deref())?;
        let issue = c.release(&held)?;
        held.pop();
        let record = logic::format_held(&held);
        tx.set(&req.campaign, &field, if held.is_empty() { None } else { Some(record.as_bytes()) });
        store(tx, &req.campaign, &c);
        let e = event(tx, "coupon.release", &req.common, state(&req.campaign, Some(&req.user), Some(issue), &c))?;
        Ok((Reply::Array(vec![Item::Int(issue), Item::Int(c.remaining())]), e))
    })?;
    Ok(to_value(reply))
}

pub fn info(ctx: &Context, raw: &[&[u8]]) -> Result {
    let [key_raw] = raw else { return Err(CmdError::Arity) };
    let key = args::name("campaign", key_raw)?;
    let c = load(ctx, &key)?;
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
