//! COUPON.CREATE, COUPON.CLAIM, COUPON.RELEASE, COUPON.INFO
//!
//! A campaign is a plain hash: `kind`=`coupon`, `total`, `issued` (claims held),
//! `last_issue`, `peruser`, `start`, `end`, and per holder `c:<user>` (how many claims the
//! user holds) and `h:<k>:<user>` (the issue number of the k-th, in claim order): a claim or
//! a release writes a constant number of fields (see `layout::HolderField`).

use std::sync::OnceLock;

use redis_module::{Context, RedisValue};

use super::reply::{pairs, to_value};
use crate::domain::error::CmdError;
use crate::domain::event::{CouponState, Event, KeySeq};
use crate::domain::layout::{self, HolderField, CAMPAIGN_FIELDS, KIND_COUPON};
use crate::domain::record::{Item, Reply};
use crate::domain::request::{self, Common};
use crate::domain::rules::{self, Campaign, HolderWrites, Holding, Newest};
use crate::domain::text::IntText;
use crate::host::acl;
use crate::host::command::{Command, KeyAccess, Spec};
use crate::host::dispatch::CommandResult;
use crate::host::ffi::{Key, RStr};
use crate::host::tx::{self, FieldName, Tx};

const KIND: &[u8] = KIND_COUPON;

/// The campaign's fixed field names (`layout::CAMPAIGN_FIELDS`), created once.
fn field_names() -> &'static [RStr; 7] {
    static NAMES: OnceLock<[RStr; 7]> = OnceLock::new();
    NAMES.get_or_init(|| CAMPAIGN_FIELDS.map(|f| RStr::new(f.as_bytes())))
}

/// A loaded campaign and, per stored integer field (bit `i` for `CAMPAIGN_FIELDS[i + 1]`),
/// whether its text is already canonical (so an unchanged value need not be rewritten).
pub(crate) struct Loaded {
    pub(crate) campaign: Campaign,
    canonical: u8,
}

pub(crate) fn load(key: &Key) -> Result<Loaded, CmdError> {
    load_with(key, &[]).map(|(l, _)| l)
}

/// Loads the campaign with one read of all its fields and, when given, up to two more
/// fields read in the same call (the holder records), returned as stored.
fn load_with(key: &Key, extra: &[&RStr]) -> Result<(Loaded, [RStr; 2]), CmdError> {
    if !tx::kind_is_hash(key.kind())? {
        return Err(CmdError::code("NOTFOUND", "no such campaign"));
    }
    let names = field_names();
    if extra.len() > 2 {
        return Err(CmdError::err(
            "internal error: too many campaign fields to read",
        ));
    }
    let mut fields: [&RStr; 9] = [&names[0]; 9];
    for (slot, name) in fields
        .iter_mut()
        .zip(names.iter().chain(extra.iter().copied()))
    {
        *slot = name;
    }
    let [kind, f1, f2, f3, f4, f5, f6, x1, x2] = key.hget_many(&fields[..7 + extra.len()])?;
    rules::check_kind(kind.bytes(), KIND)?;
    let mut canonical = 0u8;
    let mut values = [0i64; 6];
    for (i, raw) in [f1, f2, f3, f4, f5, f6].iter().enumerate() {
        let parsed = raw.bytes().and_then(|raw| {
            let n = std::str::from_utf8(raw).ok()?.parse::<i64>().ok()?;
            Some((n, IntText::new(n).as_bytes() == raw))
        });
        let (n, canon) = parsed.ok_or_else(|| {
            CmdError::wrong_type(format!(
                "the campaign's '{}' field is corrupt",
                CAMPAIGN_FIELDS[i + 1]
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

pub(crate) fn state(
    campaign: &str,
    user: Option<&str>,
    issue: Option<i64>,
    c: &Campaign,
) -> CouponState {
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
pub(crate) fn store(tx: &mut Tx, key: &str, old: Option<&Loaded>, c: &Campaign) {
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
                Some(IntText::new(value).as_bytes()),
            );
        }
    }
}

fn event(
    tx: &mut Tx,
    kind: &'static str,
    common: &Common,
    coupon: CouponState,
) -> Result<Event<'static>, CmdError> {
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

pub struct Create;

impl Command for Create {
    const SPEC: Spec = Spec {
        name: "coupon.create",
        flags: "write deny-oom fast",
        arity: -3,
        first_key: 1,
        last_key: 1,
        access: KeyAccess::Insert,
        summary: "Create a coupon campaign with a fixed stock",
    };
    fn run(ctx: &Context, args: &[&[u8]]) -> CommandResult {
        create(ctx, args)
    }
}

/// `COUPON.CREATE campaign total [PERUSER n] [START unix-ms] [END unix-ms] [ID op-id] [META text]`
fn create(ctx: &Context, raw: &[&[u8]]) -> CommandResult {
    let req = request::coupon_create(raw)?;
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
                    rules::check_kind(k, KIND)
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
type Change =
    fn(&mut Tx, &str, &str, &mut Campaign, &Holding) -> Result<(i64, HolderWrites), CmdError>;

/// The campaign and the user's holding, read with one call: the claim count and the
/// legacy `u:<user>` list (used only when there is no count). Also returns the count
/// field's name, made for the read and reused for the write.
pub(crate) fn load_holding(
    tx: &mut Tx,
    campaign: &str,
    user: &str,
) -> Result<(Loaded, Holding, RStr), CmdError> {
    let count_field = RStr::new(&layout::holder_field_name(HolderField::Count, user));
    let legacy_field = RStr::new(&layout::holder_field_name(HolderField::Legacy, user));
    let (loaded, [count_raw, legacy_raw]) =
        load_with(tx.handle(campaign)?, &[&count_field, &legacy_field])?;
    let holding = match count_raw.bytes() {
        Some(raw) => Holding::from_count(raw)?,
        None => Holding::from_legacy(legacy_raw.bytes())?,
    };
    Ok((loaded, holding, count_field))
}

/// Queues the writes to the user's holder fields.
pub(crate) fn queue_holder_writes(
    tx: &mut Tx,
    campaign: &str,
    user: &str,
    writes: HolderWrites,
    count_field: RStr,
) {
    let mut count_field = Some(count_field);
    for (field, value) in writes {
        // The count's name was made for the read: reuse it.
        let made = if field == HolderField::Count {
            count_field.take()
        } else {
            None
        };
        let name = made.unwrap_or_else(|| RStr::new(&layout::holder_field_name(field, user)));
        let text = value.map(IntText::new);
        tx.set_named(
            campaign,
            FieldName::Owned(name),
            text.as_ref().map(IntText::as_bytes),
        );
    }
}

/// CLAIM and RELEASE: load the campaign, the user's claim count and the legacy `u:<user>`
/// list (read only when there is no count) with one call, let `change` decide, store what
/// changed, log it.
fn change_holding(
    ctx: &Context,
    raw: &[&[u8]],
    command: &'static str,
    kind: &'static str,
    change: Change,
) -> CommandResult {
    let req = request::coupon_user(raw)?;
    tx::check_user_key(&req.campaign)?;
    super::holds::expiry::expire_due(ctx, &req.campaign)?;
    let reply = tx::mutate(
        ctx,
        tx::Request {
            command,
            raw,
            parsed: &req,
            common: &req.common,
        },
        &[&req.campaign],
        |tx| {
            let user = req.user.as_str();
            let (loaded, holding, count_field) = load_holding(tx, &req.campaign, user)?;
            let mut c = loaded.campaign;
            let (issue, writes) = change(tx, &req.campaign, user, &mut c, &holding)?;
            queue_holder_writes(tx, &req.campaign, user, writes, count_field);
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

pub struct Claim;

impl Command for Claim {
    const SPEC: Spec = Spec {
        name: "coupon.claim",
        flags: "write deny-oom fast",
        arity: -3,
        first_key: 1,
        last_key: 1,
        access: KeyAccess::ReadUpdate,
        summary: "Claim one coupon for a user",
    };
    fn run(ctx: &Context, args: &[&[u8]]) -> CommandResult {
        claim(ctx, args)
    }
}

/// `COUPON.CLAIM campaign user [ID op-id] [META text]`
fn claim(ctx: &Context, raw: &[&[u8]]) -> CommandResult {
    change_holding(
        ctx,
        raw,
        "COUPON.CLAIM",
        "coupon.claim",
        |tx, campaign, user, c, holding| {
            let reserved = super::holds::coupon::reserved_by(tx, campaign, user)?;
            let issue = c.claim(holding.count().saturating_add(reserved), tx.now_ms)?;
            Ok((issue, holding.claim_writes(issue)))
        },
    )
}

pub struct Release;

impl Command for Release {
    const SPEC: Spec = Spec {
        name: "coupon.release",
        flags: "write deny-oom fast",
        arity: -3,
        first_key: 1,
        last_key: 1,
        access: KeyAccess::ReadUpdate,
        summary: "Give a user's latest claim back to the stock",
    };
    fn run(ctx: &Context, args: &[&[u8]]) -> CommandResult {
        release(ctx, args)
    }
}

/// `COUPON.RELEASE campaign user [ID op-id] [META text]`
fn release(ctx: &Context, raw: &[&[u8]]) -> CommandResult {
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
                    &layout::holder_field_name(field, user),
                    rules::parse_issue,
                )??),
            };
            let issue = c.release(newest)?;
            Ok((issue, holding.release_writes()))
        },
    )
}

pub struct Info;

impl Command for Info {
    const SPEC: Spec = Spec {
        name: "coupon.info",
        flags: "readonly fast",
        arity: 2,
        first_key: 1,
        last_key: 1,
        access: KeyAccess::Read,
        summary: "Show a campaign's stock and limits",
    };
    fn run(ctx: &Context, args: &[&[u8]]) -> CommandResult {
        info(ctx, args)
    }
}

/// `COUPON.INFO campaign`
fn info(ctx: &Context, raw: &[&[u8]]) -> CommandResult {
    let [key_raw] = raw else {
        return Err(CmdError::Arity);
    };
    let key = request::name("campaign", key_raw)?;
    acl::check_read(ctx, &key)?;
    let mut c = load(&tx::open_read(ctx, &key)?)?.campaign;
    // Reservations past their deadline are left out, as if the timer had run.
    let (reserved, due) = super::holds::coupon::reserved_live(ctx, &key)?;
    c.issued = c.issued.saturating_sub(due);
    Ok(pairs(vec![
        ("total", RedisValue::Integer(c.total)),
        ("issued", RedisValue::Integer(c.issued)),
        ("reserved", RedisValue::Integer(reserved)),
        ("remaining", RedisValue::Integer(c.remaining())),
        ("peruser", RedisValue::Integer(c.per_user)),
        ("start", RedisValue::Integer(c.start_ms)),
        ("end", RedisValue::Integer(c.end_ms)),
        ("last_issue", RedisValue::Integer(c.last_issue)),
    ]))
}
