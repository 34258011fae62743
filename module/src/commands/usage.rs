//! USAGE.LIMIT, USAGE.CONSUME, USAGE.GET
//!
//! A usage counter is a plain hash: `kind`=`usage`, `limit`, `period`, `period_id`, `used`.

use std::sync::OnceLock;

use redis_module::{Context, RedisValue};

use super::reply::{pairs, to_value};
use crate::domain::decimal::Decimal;
use crate::domain::error::CmdError;
use crate::domain::event::{Event, KeySeq, UsageState};
use crate::domain::layout::{KIND_USAGE, USAGE_FIELDS};
use crate::domain::period::Period;
use crate::domain::record::{Item, Reply};
use crate::domain::request::{self, Common};
use crate::domain::rules::{self, Usage};
use crate::host::acl;
use crate::host::command::{Command, KeyAccess, Spec};
use crate::host::dispatch::CommandResult;
use crate::host::ffi::{self, Key, RStr};
use crate::host::tx::{self, FieldName, Tx};

const KIND: &[u8] = KIND_USAGE;

/// The counter's field names (`layout::USAGE_FIELDS`), created once.
fn field_names() -> &'static [RStr; 5] {
    static NAMES: OnceLock<[RStr; 5]> = OnceLock::new();
    NAMES.get_or_init(|| USAGE_FIELDS.map(|f| RStr::new(f.as_bytes())))
}

/// The stored texts, so that only changed fields are rewritten.
pub(crate) struct Stored {
    period: RStr,
    limit: RStr,
    used: RStr,
    period_id: RStr,
}

/// The stored text of a field (`None` for a missing field or one that is not UTF-8).
fn text_of(s: &RStr) -> Option<&str> {
    s.bytes().and_then(|b| std::str::from_utf8(b).ok())
}

pub(crate) fn load(key: &Key) -> Result<Option<(Usage, Stored)>, CmdError> {
    if !tx::kind_is_hash(key.kind())? {
        return Ok(None);
    }
    let names = field_names();
    let fields: [&RStr; 5] = [&names[0], &names[1], &names[2], &names[3], &names[4]];
    let [kind, period, limit, used, period_id, ..] = key.hget_many(&fields)?;
    rules::check_kind(kind.bytes(), KIND)?;
    let corrupt = |i: usize| {
        CmdError::wrong_type(format!(
            "the usage counter's '{}' field is corrupt",
            USAGE_FIELDS[i]
        ))
    };
    let period_text = text_of(&period).ok_or_else(|| corrupt(1))?;
    let parsed_period = Period::parse(&period_text.to_ascii_uppercase())
        .ok_or_else(|| CmdError::wrong_type("the usage counter's 'period' field is corrupt"))?;
    let limit_text = text_of(&limit).ok_or_else(|| corrupt(2))?;
    let limit_value = rules::stored_decimal("limit", Some(limit_text.as_bytes()))?;
    let used_text = text_of(&used).ok_or_else(|| corrupt(3))?;
    let used_value = rules::stored_decimal("used", Some(used_text.as_bytes()))?;
    let period_id_text = text_of(&period_id).ok_or_else(|| corrupt(4))?.to_string();
    let stored = Stored {
        period,
        limit,
        used,
        period_id,
    };
    Ok(Some((
        Usage {
            limit: limit_value,
            used: used_value,
            period: parsed_period,
            period_id: period_id_text,
        },
        stored,
    )))
}

/// Queues the counter's fields (all for a new counter, otherwise those whose stored text
/// differs) and builds the event.
pub(crate) fn store_and_event(
    tx: &mut Tx,
    key: &str,
    kind: &'static str,
    u: &Usage,
    old: Option<&Stored>,
    amount: Option<String>,
    common: &Common,
) -> Result<Event<'static>, CmdError> {
    let (limit, used) = (u.limit.to_string(), u.used.to_string());
    let changed =
        |new: &str, stored: Option<&RStr>| stored.is_none_or(|s| s.bytes() != Some(new.as_bytes()));
    let names = field_names();
    if old.is_none() {
        tx.set_named(key, FieldName::Static(&names[0]), Some(KIND));
    }
    if changed(&limit, old.map(|o| &o.limit)) {
        tx.set_named(key, FieldName::Static(&names[2]), Some(limit.as_bytes()));
    }
    if changed(u.period.as_str(), old.map(|o| &o.period)) {
        tx.set_named(
            key,
            FieldName::Static(&names[1]),
            Some(u.period.as_str().as_bytes()),
        );
    }
    if changed(&u.period_id, old.map(|o| &o.period_id)) {
        tx.set_named(
            key,
            FieldName::Static(&names[4]),
            Some(u.period_id.as_bytes()),
        );
    }
    if changed(&used, old.map(|o| &o.used)) {
        tx.set_named(key, FieldName::Static(&names[3]), Some(used.as_bytes()));
    }
    let seq = tx.next_seq(key)?;
    let mut e = Event::new(
        kind,
        tx.now_ms,
        common,
        vec![KeySeq {
            key: key.to_string().into(),
            seq,
        }],
    );
    e.usage = Some(UsageState {
        key: key.to_string(),
        amount,
        used,
        limit,
        period: u.period.as_str(),
        period_id: u.period_id.clone(),
    });
    Ok(e)
}

pub(crate) fn load_in(tx: &mut Tx, key: &str) -> Result<Option<(Usage, Stored)>, CmdError> {
    load(tx.handle(key)?)
}

pub struct Limit;

impl Command for Limit {
    const SPEC: Spec = Spec {
        name: "usage.limit",
        flags: "write deny-oom fast",
        arity: -3,
        first_key: 1,
        last_key: 1,
        access: KeyAccess::Update,
        summary: "Set the quota and period of a usage counter",
    };
    fn run(ctx: &Context, args: &[&[u8]]) -> CommandResult {
        limit(ctx, args)
    }
}

/// `USAGE.LIMIT key limit [PERIOD none|day|month] [ID op-id] [META text]`
fn limit(ctx: &Context, raw: &[&[u8]]) -> CommandResult {
    let req = request::usage_limit(raw)?;
    tx::check_user_key(&req.key)?;
    let reply = tx::mutate(
        ctx,
        tx::Request {
            command: "USAGE.LIMIT",
            raw,
            parsed: &req,
            common: &req.common,
        },
        &[&req.key],
        |tx| {
            let now = tx.now_ms;
            // Usage already counted in the current period carries over to the new quota.
            let old = load_in(tx, &req.key)?;
            let used = match &old {
                Some((u, _)) => u.at(now).used,
                None => Decimal::ZERO,
            };
            let u = Usage {
                limit: req.limit,
                period: req.period,
                period_id: req.period.id_at(now),
                used,
            };
            let e = store_and_event(
                tx,
                &req.key,
                "usage.limit",
                &u,
                old.as_ref().map(|(_, s)| s),
                None,
                &req.common,
            )?;
            Ok((Reply::Ok, e))
        },
    )?;
    Ok(to_value(reply))
}

pub struct Consume;

impl Command for Consume {
    const SPEC: Spec = Spec {
        name: "usage.consume",
        flags: "write deny-oom fast",
        arity: -3,
        first_key: 1,
        last_key: 1,
        access: KeyAccess::ReadUpdate,
        summary: "Consume from a quota if it fits",
    };
    fn run(ctx: &Context, args: &[&[u8]]) -> CommandResult {
        consume(ctx, args)
    }
}

/// `USAGE.CONSUME key amount [ID op-id] [META text]`
fn consume(ctx: &Context, raw: &[&[u8]]) -> CommandResult {
    let req = request::usage_consume(raw)?;
    tx::check_user_key(&req.key)?;
    super::holds::expiry::expire_due(ctx, &req.key)?;
    let reply = tx::mutate(
        ctx,
        tx::Request {
            command: "USAGE.CONSUME",
            raw,
            parsed: &req,
            common: &req.common,
        },
        &[&req.key],
        |tx| {
            let (u, stored) = load_in(tx, &req.key)?.ok_or_else(|| {
                CmdError::code(
                    "NOTFOUND",
                    "no usage limit is set for this key (USAGE.LIMIT)",
                )
            })?;
            let reserved = super::holds::usage::reserved(tx, &req.key)?;
            let next = u.consume(req.amount, reserved, tx.now_ms)?;
            let e = store_and_event(
                tx,
                &req.key,
                "usage.consume",
                &next,
                Some(&stored),
                Some(req.amount.to_string()),
                &req.common,
            )?;
            let used = e
                .usage
                .as_ref()
                .map(|s| s.used.clone())
                .unwrap_or_else(|| next.used.to_string());
            let remaining = next.remaining_with(reserved).to_string();
            let items = vec![Item::Str(used), Item::Str(remaining)];
            Ok((Reply::Array(items), e))
        },
    )?;
    Ok(to_value(reply))
}

pub struct Get;

impl Command for Get {
    const SPEC: Spec = Spec {
        name: "usage.get",
        flags: "readonly fast",
        arity: 2,
        first_key: 1,
        last_key: 1,
        access: KeyAccess::Read,
        summary: "Show a usage counter in the current period",
    };
    fn run(ctx: &Context, args: &[&[u8]]) -> CommandResult {
        get(ctx, args)
    }
}

/// `USAGE.GET key`
fn get(ctx: &Context, raw: &[&[u8]]) -> CommandResult {
    let [key_raw] = raw else {
        return Err(CmdError::Arity);
    };
    let key = request::name("key", key_raw)?;
    acl::check_read(ctx, &key)?;
    let u = load(&tx::open_read(ctx, &key)?)?
        .map(|(u, _)| u)
        .ok_or_else(|| CmdError::code("NOTFOUND", "no usage limit is set for this key"))?
        .at(ffi::now_ms());
    // Reservations past their deadline are left out, as if the timer had run.
    let reserved = super::holds::live_summary(ctx, &key, "", ffi::now_ms())?.live_sum;
    Ok(pairs(vec![
        ("used", RedisValue::BulkString(u.used.to_string())),
        ("limit", RedisValue::BulkString(u.limit.to_string())),
        ("reserved", RedisValue::BulkString(reserved.to_string())),
        (
            "remaining",
            RedisValue::BulkString(u.remaining_with(reserved).to_string()),
        ),
        (
            "period",
            RedisValue::BulkString(u.period.as_str().to_string()),
        ),
        ("period_id", RedisValue::BulkString(u.period_id)),
    ]))
}
