//! COUPON.CREATE, COUPON.CLAIM, COUPON.RELEASE, COUPON.INFO
//!
//! A campaign is a plain hash: `kind`=`coupon`, `total`, `issued` (claims held),
//! `last_issue`, `peruser`, `start`, `end`, and per holder `c:<user>` (how many claims the
//! user holds) and `h:<k>:<user>` (the issue number of the k-th, in claim order): a claim or
//! a release writes a constant number of fields (see `logic::HolderField`).

use redis_module::{Context, RedisValue};

use super::{pairs, to_value, Result};
use crate::args::{self, Common};
use crate::error::CmdError;
use crate::event::{CouponState, Event, Item, KeySeq, Reply};
use std::sync::OnceLock;

use crate::ffi::{Key, RStr};
use crate::logic::{self, Campaign, HolderField, HolderWrites, Holding, Newest};
use crate::tx::{self, FieldName, Tx};
use redis_module::raw::RedisModuleString;

const KIND: &[u8] = logic::KIND_COUPON;

/// The campaign's fixed field names, created once.
const FIELD_NAMES: [&str; 7] = [
    "kind",
    "total",
    "issued",
    "last_issue",
    "peruser",
    "start",
    "end",
];

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
    load_with(ctx, key, &[]).map(|(l, _)| l)
}

/// Loads the campaign with one read of all its fields and, when given, one more field read
/// in the same call (the holder record), returned as stored.
fn load_with(
    _ctx: &Context,
    key: &Key,
    extra: &[*mut RedisModuleString],
) -> std::result::Result<(Loaded, [RStr; 2]), CmdError> {
    if !tx::kind_is_hash(key.kind())? {
        return Err(CmdError::code("NOTFOUND", "no such campaign"));
    }
    let names = field_names();
    let mut fields: [*mut RedisModuleString; 9] = [std::ptr::null_mut(); 9];
    for (slot, name) in fields.iter_mut().zip(names.iter()) {
        *slot = name.ptr();
    }
    if extra.len() > 2 {
        return Err(CmdError::err(
            "internal error: too many campaign fields to read",
        ));
    }
    for (slot, f) in fields[7..].iter_mut().zip(extra) {
        *slot = *f;
    }
    let [kind, f1, f2, f3, f4, f5, f6, x1, x2] = key.hget_many(&fields[..7 + extra.len()])?;
    logic::check_kind(kind.bytes(), KIND)?;
    let mut canonical = 0u8;
    let mut values = [0i64; 6];
    for (i, raw) in [f1, f2, f3, f4, f5, f6].iter().enumerate() {
        let parsed = raw.bytes().and_then(|raw| {
            let n = std::str::from_utf8(raw).ok()?.parse::<i64>().ok()?;
            Some((n, tx::IntText::new(n).as_bytes() == raw))
        });
        let (n, canon) = parsed.ok_or_else(|| {
            CmdError::wrong_type(format!(
                "the campaign's '{}' field is corrupt",
                FIELD_NAMES[i + 1]
            ))
        })?;
        values[i] = n;
        if canon {
            canonical |= 1 << i;
        }
    }
    let [total, issued, last_issue, per_user, start_ms, end_ms] = values;
    Ok((
        Loaded {
            campaign: Campaign {
                total,
                issued,
                last_issue,
                per_user,
                start_ms,
                end_ms,
            },
            canonical,
        },
        [x1, x2],
    ))
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
    let values = [
        c.total,
        c.issued,
        c.last_issue,
        c.per_user,
        c.start_ms,
        c.end_ms,
    ];
    let before = old.map(|o| {
        let p = o.campaign;
        [
            p.total,
            p.issued,
            p.last_issue,
            p.per_user,
            p.start_ms,
            p.end_ms,
        ]
    });
    for (i, value) in values.into_iter().enumerate() {
        let unchanged = match (old, before) {
            (Some(o), Some(b)) => b[i] == value && o.canonical & (1 << i) != 0,
            _ => false,
        };
        if !unchanged {
            tx.set_named(
                key,
                FieldName::Static(&field_names()[i + 1]),
                Some(tx::IntText::new(value).as_bytes()),
            );
        }
    }
}

fn event(
    tx: &mut Tx,
    kind: &'static str,
    common: &Common,
    coupon: CouponState,
) -> std::result::Result<Event<'static>, CmdError> {
    let seq = tx.next_seq(&coupon.campaign)?;
    let mut e = Event::new(
        kind,
        tx.now_ms,
        common,
        vec![KeySeq {
            key: coupon.campaign.clone().into(),
            seq,
        }],
    );
    e.coupon = Some(coupon);
    Ok(e)
}

pub fn create(ctx: &Context, raw: &[&[u8]]) -> Result {
    let req = args::coupon_create(raw)?;
    tx::check_user_key(&req.campaign)?;
    let reply = tx::mutate(
        ctx,
        tx::Request {
            command: "COUPON.CREATE",
            raw,
            parsed: &req,
            common: &req.common,
        },
        &[&req.campaign],
        |tx| {
            if tx.hash_exists(&req.campaign)? {
                // Another kind of hash is WRONGTYPE; a campaign already exists.
                tx.hget_rs(&req.campaign, tx::kind_field(), |k| {
                    logic::check_kind(k, KIND)
                })??;
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
            tx.set_named(
                &req.campaign,
                FieldName::Static(&field_names()[0]),
                Some(KIND),
            );
            store(tx, &req.campaign, None, &c);
            let e = event(
                tx,
                "coupon.create",
                &req.common,
                state(&req.campaign, None, None, &c),
            )?;
            Ok((Reply::Ok, e))
        },
    )?;
    Ok(to_value(reply))
}

/// How CLAIM or RELEASE changes a campaign and a user's holding: returns the issue number
/// involved and the writes to the user's holder fields.
type Change = fn(
    &mut Tx,
    &str,
    &str,
    &mut Campaign,
    &Holding,
) -> std::result::Result<(i64, HolderWrites), CmdError>;

/// CLAIM and RELEASE: load the campaign, the user's claim count and the legacy `u:<user>`
/// list (read only when there is no count) with one call, let `change` decide, store what
/// changed, log it.
fn change_holding(
    ctx: &Context,
    raw: &[&[u8]],
    command: &'static str,
    kind: &'static str,
    change: Change,
) -> Result {
    let req = args::coupon_user(raw)?;
    tx::check_user_key(&req.campaign)?;
    let reply = tx::mutate(
        ctx,
        tx::Request {
            command: command,
            raw,
            parsed: &req,
            common: &req.common,
        },
        &[&req.campaign],
        |tx| {
            let user = req.user.as_str();
            let mut count_field = Some(RStr::new(&logic::holder_field_name(
                HolderField::Count,
                user,
            )));
            let legacy_field = RStr::new(&logic::holder_field_name(HolderField::Legacy, user));
            let (loaded, [count_raw, legacy_raw]) = {
                let (ctx, k) = tx.handle(&req.campaign)?;
                load_with(
                    ctx,
                    k,
                    &[
                        count_field.as_ref().map_or(std::ptr::null_mut(), RStr::ptr),
                        legacy_field.ptr(),
                    ],
                )?
            };
            let holding = match count_raw.bytes() {
                Some(raw) => Holding::from_count(raw)?,
                None => Holding::from_legacy(legacy_raw.bytes())?,
            };
            drop((count_raw, legacy_raw, legacy_field));
            let mut c = loaded.campaign;
            let (issue, writes) = change(tx, &req.campaign, user, &mut c, &holding)?;
            for (field, value) in writes {
                // The count's name was made for the read: reuse it.
                let made = if field == HolderField::Count {
                    count_field.take()
                } else {
                    None
                };
                let name =
                    made.unwrap_or_else(|| RStr::new(&logic::holder_field_name(field, user)));
                let text = value.map(tx::IntText::new);
                tx.set_named(
                    &req.campaign,
                    FieldName::Owned(name),
                    text.as_ref().map(tx::IntText::as_bytes),
                );
            }
            store(tx, &req.campaign, Some(&loaded), &c);
            let e = event(
                tx,
                kind,
                &req.common,
                state(&req.campaign, Some(user), Some(issue), &c),
            )?;
            Ok((
                Reply::Array(vec![Item::Int(issue), Item::Int(c.remaining())]),
                e,
            ))
        },
    )?;
    Ok(to_value(reply))
}

pub fn claim(ctx: &Context, raw: &[&[u8]]) -> Result {
    change_holding(
        ctx,
        raw,
        "COUPON.CLAIM",
        "coupon.claim",
        |tx, _, _, c, holding| {
            let issue = c.claim(holding.count(), tx.now_ms)?;
            Ok((issue, holding.claim_writes(issue)))
        },
    )
}

pub fn release(ctx: &Context, raw: &[&[u8]]) -> Result {
    change_holding(
        ctx,
        raw,
        "COUPON.RELEASE",
        "coupon.release",
        |tx, campaign, user, c, holding| {
            let newest = match holding.newest() {
                Newest::Known(issue) => issue,
                Newest::Stored(field) => Some(tx.hget_with(
                    campaign,
                    &logic::holder_field_name(field, user),
                    logic::parse_issue,
                )??),
            };
            let issue = c.release(newest)?;
            Ok((issue, holding.release_writes()))
        },
    )
}

pub fn info(ctx: &Context, raw: &[&[u8]]) -> Result {
    let [key_raw] = raw else {
        return Err(CmdError::Arity);
    };
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
