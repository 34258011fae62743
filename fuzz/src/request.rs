//! The `request` target: a command line from arbitrary bytes, through the command's argument
//! parsing; on what parses, the canonical form, the fingerprints, the op-id record and the
//! event JSON the module would write.
//!
//! Input: byte 0 picks the command (`CODES[i]` is `COMMANDS[i]`: `0`-`9` the ten commands of
//! before holds, `a`-`k` the eleven hold commands; any other byte picks `COMMANDS[byte % 21]`),
//! byte 1 is the separator, the rest the arguments after the command name split on it (an
//! empty rest is no argument). `0 acct gold 10` is `ASSET.INCR acct gold 10`;
//! `0|acct|gold|1|META|daily bonus` puts a space in an argument; `a acct gold 30 TTL 60000`
//! is `ASSET.HOLD acct gold 30 TTL 60000`. The hold commands' checks are in `holds.rs`.

use crate::domain::decimal::Decimal;
use crate::domain::error::CmdError;
use crate::domain::event::{Change, CouponState, Event, KeySeq, UsageState};
use crate::domain::holds::HoldState;
use crate::domain::layout::{self, HelperKeys, HolderField};
use crate::domain::record::{self, Item, Recorded, Reply};
use crate::domain::request::{self as req, Canonical, Common};
use crate::domain::rules::{self, Floor};

use crate::check_error_text;
use crate::shipper_decode::{self as shipper, Body};

/// The commands, in the order of [`CODES`]: the ten of before holds, then the eleven hold
/// commands (docs/holds.md).
pub const COMMANDS: [&str; 21] = [
    "ASSET.INCR",
    "ASSET.GET",
    "ASSET.TRANSFER",
    "COUPON.CREATE",
    "COUPON.CLAIM",
    "COUPON.RELEASE",
    "COUPON.INFO",
    "USAGE.LIMIT",
    "USAGE.CONSUME",
    "USAGE.GET",
    "ASSET.HOLD",
    "ASSET.SETTLE",
    "ASSET.VOID",
    "ASSET.HOLDS",
    "ASSET.AVAILABLE",
    "COUPON.RESERVE",
    "COUPON.CONFIRM",
    "COUPON.CANCEL",
    "USAGE.RESERVE",
    "USAGE.COMMIT",
    "USAGE.CANCEL",
];

/// The input's first byte for each command of [`COMMANDS`] (fuzz/seeds.py writes the same).
pub const CODES: &[u8; 21] = b"0123456789abcdefghijk";

/// The default `tally.prefix`.
pub(crate) const PREFIX: &str = "tally";
/// The server time of the events built here (any non-negative ms).
pub(crate) const TS: i64 = 1_796_579_307_776;

/// The command index and its arguments; `None` for inputs shorter than two bytes.
pub fn split(data: &[u8]) -> Option<(usize, Vec<&[u8]>)> {
    let (&cmd, rest) = data.split_first()?;
    let (&sep, rest) = rest.split_first()?;
    let args = if rest.is_empty() {
        Vec::new()
    } else {
        rest.split(|&b| b == sep).collect()
    };
    let index = CODES.iter().position(|&c| c == cmd);
    Some((index.unwrap_or(usize::from(cmd) % COMMANDS.len()), args))
}

pub fn run(data: &[u8]) {
    let Some((cmd, args)) = split(data) else {
        return;
    };
    let result = match cmd {
        0 => req::asset_incr(&args).map(|r| incr(&args, &r)),
        1 => asset_get(&args),
        2 => req::asset_transfer(&args).map(|r| transfer(&args, &r)),
        3 => req::coupon_create(&args).map(|r| create(&args, &r)),
        4 | 5 => req::coupon_user(&args).map(|r| coupon_user(COMMANDS[cmd], &args, &r)),
        6 => single_key("campaign", &args).map(drop),
        7 => req::usage_limit(&args).map(|r| usage_limit(&args, &r)),
        8 => req::usage_consume(&args).map(|r| usage_consume(&args, &r)),
        9 => single_key("key", &args).map(drop),
        _ => crate::holds::run(COMMANDS[cmd], &args),
    };
    if let Err(e) = result {
        check_error_text(&e);
    }
}

/// `ASSET.GET key [field ...]`, parsed as `commands/asset.rs` does (no parser function in
/// `domain::request` for it): `request::name` on the key and on every field.
fn asset_get(args: &[&[u8]]) -> Result<(), CmdError> {
    let Some((key, fields)) = args.split_first() else {
        return Err(CmdError::Arity);
    };
    let key = req::name("key", key)?;
    for f in fields {
        req::name("field", f)?;
    }
    names_of_key(&key, None);
    Ok(())
}

/// `COUPON.INFO campaign` / `USAGE.GET key` / `ASSET.HOLDS key`, parsed as
/// `commands/coupon.rs`, `commands/usage.rs` and `commands/holds/asset.rs` do: exactly one
/// argument, a `request::name`.
pub(crate) fn single_key(what: &str, args: &[&[u8]]) -> Result<String, CmdError> {
    let [key] = args else {
        return Err(CmdError::Arity);
    };
    let key = req::name(what, key)?;
    names_of_key(&key, None);
    Ok(key)
}

/// A parsed name: valid UTF-8 (a `String`), non-empty, bounded, without NUL.
pub(crate) fn check_name(name: &str) {
    assert!(!name.is_empty() && name.len() <= req::MAX_NAME_LEN);
    assert!(!name.contains('\0'), "NUL in a parsed name {name:?}");
}

/// The helper-key names built from a parsed key (and op-id): they must not panic, and the
/// op-id record's name embeds the key's byte length.
pub(crate) fn names_of_key(key: &str, op_id: Option<&str>) {
    check_name(key);
    let _ = layout::check_user_key(PREFIX, key).map_err(|e| check_error_text(&e));
    let suffix = layout::slot_suffix(key);
    assert!(
        suffix.starts_with(":{") && suffix.ends_with('}'),
        "{suffix:?}"
    );
    for keys in [
        HelperKeys::new(PREFIX, ""),
        HelperKeys::new(PREFIX, &suffix),
    ] {
        if let Some(op) = op_id {
            let name = keys.op(key, op);
            let want_tail = format!("{}:{key}:{op}", key.len());
            assert!(name.ends_with(&want_tail), "{name:?}");
            assert!(keys.op_v1(op).ends_with(op));
        }
    }
}

/// What every parsed mutating request must satisfy; returns its fingerprint.
pub(crate) fn check_parsed<R: Canonical>(
    command: &str,
    raw: &[&[u8]],
    r: &R,
    common: &Common,
) -> String {
    let parts = r.canonical();
    assert_eq!(parts, r.canonical(), "canonical form not stable");
    let fp = record::fingerprint(command, &parts);
    check_hex(&fp);
    check_hex(&record::fingerprint_v1(command, raw, common.id_index));
    match (common.id_index, &common.op_id) {
        (Some(i), Some(op)) => {
            assert!(
                raw[i].eq_ignore_ascii_case(b"ID"),
                "id_index {i} in {raw:?}"
            );
            assert_eq!(raw.get(i + 1).copied(), Some(op.as_bytes()));
            assert!(!op.is_empty() && op.len() <= req::MAX_OP_ID_LEN);
            check_name(op);
        }
        (None, None) => {}
        other => panic!("id_index and op_id disagree: {other:?}"),
    }
    if let Some(m) = &common.meta {
        assert!(m.len() <= req::MAX_META_LEN);
    }
    fp
}

fn check_hex(fp: &str) {
    assert!(
        fp.len() == 32 && fp.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        "{fp:?}"
    );
}

/// The op-id record round trip: what `encode_record` stores, `check_record` replays.
fn check_record(fp: &str, reply: &Reply) {
    let stored = record::encode_record(fp, reply);
    match record::check_record(stored.as_bytes(), fp, || "-".into()) {
        Recorded::Same(r) => assert_eq!(&r, reply),
        Recorded::Different => panic!("own record reads as different"),
        Recorded::Corrupt => panic!("own record reads as corrupt: {stored:?}"),
    }
}

/// A decimal as parsed from a request: its canonical text parses back to it, and is what
/// the shipper accepts as a canonical decimal.
pub(crate) fn check_decimal(d: Decimal) -> String {
    let text = d.to_string();
    assert_eq!(Decimal::parse(text.as_bytes()), Ok(d), "{text}");
    assert!(shipper::is_canonical_decimal(&text), "{text}");
    text
}

/// The request as argument words again: canonical numbers, options in one order.
pub(crate) fn with_common(mut words: Vec<Vec<u8>>, common: &Common) -> Vec<Vec<u8>> {
    if let Some(m) = &common.meta {
        words.extend([b"META".to_vec(), m.clone().into_bytes()]);
    }
    if let Some(op) = &common.op_id {
        words.extend([b"id".to_vec(), op.clone().into_bytes()]);
    }
    words
}

pub(crate) fn reparse<T>(words: &[Vec<u8>], parse: impl Fn(&[&[u8]]) -> Result<T, CmdError>) -> T {
    let refs: Vec<&[u8]> = words.iter().map(Vec::as_slice).collect();
    match parse(&refs) {
        Ok(r) => r,
        Err(e) => panic!("the re-rendered request {words:?} does not parse: {e}"),
    }
}

/// Same request, position of the ID option aside.
pub(crate) fn same_common(a: &Common, b: &Common) {
    assert_eq!((&a.op_id, &a.meta), (&b.op_id, &b.meta));
}

fn incr(raw: &[&[u8]], r: &req::AssetIncr) {
    let fp = check_parsed("ASSET.INCR", raw, r, &r.common);
    assert!(!r.deltas.is_empty() && r.deltas.len() <= req::MAX_FIELDS);
    let mut words = vec![r.key.clone().into_bytes()];
    let mut changes = Vec::new();
    let mut items = Vec::new();
    for (field, delta) in &r.deltas {
        check_name(field);
        assert_ne!(field, layout::KIND_FIELD);
        let text = check_decimal(*delta);
        words.extend([field.clone().into_bytes(), text.clone().into_bytes()]);
        let balance = match rules::apply_delta(Decimal::ZERO, *delta, r.floor, r.ceil) {
            Ok(b) => check_decimal(b),
            Err(e) => {
                check_error_text(&e);
                text.clone()
            }
        };
        items.push(Item::Str(balance.clone()));
        changes.push(Change {
            key: r.key.as_str().into(),
            field: field.as_str().into(),
            delta: text,
            balance,
        });
    }
    match r.floor {
        Floor::Default => {}
        Floor::At(f) => words.extend([b"floor".to_vec(), check_decimal(f).into_bytes()]),
        Floor::None => words.push(b"NOFLOOR".to_vec()),
    }
    if let Some(c) = r.ceil {
        words.extend([b"CEIL".to_vec(), check_decimal(c).into_bytes()]);
    }
    let again = reparse(&with_common(words, &r.common), req::asset_incr);
    assert_eq!(
        (&again.key, &again.deltas, again.floor, again.ceil),
        (&r.key, &r.deltas, r.floor, r.ceil)
    );
    same_common(&again.common, &r.common);
    assert_eq!(again.canonical(), r.canonical());
    names_of_key(&r.key, r.common.op_id.as_deref());
    let mut e = Event::new(
        "asset.incr",
        TS,
        &r.common,
        vec![KeySeq {
            key: r.key.as_str().into(),
            seq: 1,
        }],
    );
    e.changes = Some(changes);
    finish_event(e, &fp, Reply::Array(items));
}

fn transfer(raw: &[&[u8]], r: &req::AssetTransfer) {
    let fp = check_parsed("ASSET.TRANSFER", raw, r, &r.common);
    assert_ne!(r.from, r.to);
    check_name(&r.field);
    assert!(r.amount.is_positive());
    let amount = check_decimal(r.amount);
    let out = check_decimal(-r.amount);
    let words = vec![
        r.from.clone().into_bytes(),
        r.to.clone().into_bytes(),
        r.field.clone().into_bytes(),
        amount.clone().into_bytes(),
    ];
    let again = reparse(&with_common(words, &r.common), req::asset_transfer);
    assert_eq!(
        (&again.from, &again.to, &again.field, again.amount),
        (&r.from, &r.to, &r.field, r.amount)
    );
    same_common(&again.common, &r.common);
    names_of_key(&r.from, r.common.op_id.as_deref());
    names_of_key(&r.to, None);
    let change = |key: &str, delta: &str, balance: &str| Change {
        key: key.to_string().into(),
        field: r.field.clone().into(),
        delta: delta.into(),
        balance: balance.into(),
    };
    let keys = [&r.from, &r.to].map(|k| KeySeq {
        key: k.clone().into(),
        seq: 3,
    });
    let mut e = Event::new("asset.transfer", TS, &r.common, keys.to_vec());
    e.changes = Some(vec![
        change(&r.from, &out, "0"),
        change(&r.to, &amount, &amount),
    ]);
    let reply = Reply::Array(vec![Item::Str("0".into()), Item::Str(amount)]);
    finish_event(e, &fp, reply);
}

fn create(raw: &[&[u8]], r: &req::CouponCreate) {
    let fp = check_parsed("COUPON.CREATE", raw, r, &r.common);
    assert!((1..=req::MAX_TOTAL).contains(&r.total));
    assert!((1..=req::MAX_PER_USER).contains(&r.per_user));
    assert!(r.start_ms >= 0 && r.end_ms >= 0);
    assert!(r.end_ms == 0 || r.end_ms > r.start_ms);
    let mut words = vec![
        r.campaign.clone().into_bytes(),
        r.total.to_string().into_bytes(),
    ];
    for (opt, v) in [
        ("PERUSER", r.per_user),
        ("start", r.start_ms),
        ("End", r.end_ms),
    ] {
        words.extend([opt.as_bytes().to_vec(), v.to_string().into_bytes()]);
    }
    let again = reparse(&with_common(words, &r.common), req::coupon_create);
    assert_eq!(
        (again.total, again.per_user, again.start_ms, again.end_ms),
        (r.total, r.per_user, r.start_ms, r.end_ms)
    );
    assert_eq!(again.campaign, r.campaign);
    same_common(&again.common, &r.common);
    names_of_key(&r.campaign, r.common.op_id.as_deref());
    let mut e = coupon_event("coupon.create", &r.campaign, &r.common);
    e.coupon = Some(CouponState {
        campaign: r.campaign.clone(),
        user: None,
        issue: None,
        total: r.total,
        issued: 0,
        remaining: r.total,
        peruser: r.per_user,
        start: r.start_ms,
        end: r.end_ms,
    });
    finish_event(e, &fp, Reply::Ok);
}

fn coupon_event<'a>(kind: &'static str, campaign: &'a str, common: &Common) -> Event<'a> {
    let keys = vec![KeySeq {
        key: campaign.into(),
        seq: 2,
    }];
    Event::new(kind, TS, common, keys)
}

fn coupon_user(command: &str, raw: &[&[u8]], r: &req::CouponUser) {
    let fp = check_parsed(command, raw, r, &r.common);
    check_name(&r.user);
    assert!(!r.user.contains(','));
    let words = vec![r.campaign.clone().into_bytes(), r.user.clone().into_bytes()];
    let again = reparse(&with_common(words, &r.common), req::coupon_user);
    assert_eq!((&again.campaign, &again.user), (&r.campaign, &r.user));
    same_common(&again.common, &r.common);
    names_of_key(&r.campaign, r.common.op_id.as_deref());
    for field in [
        HolderField::Count,
        HolderField::Issue(7),
        HolderField::Legacy,
    ] {
        let name = layout::holder_field_name(field, &r.user);
        assert!(name.ends_with(r.user.as_bytes()));
    }
    let kind = if command == "COUPON.CLAIM" {
        "coupon.claim"
    } else {
        "coupon.release"
    };
    let mut e = coupon_event(kind, &r.campaign, &r.common);
    e.coupon = Some(CouponState {
        campaign: r.campaign.clone(),
        user: Some(r.user.clone()),
        issue: Some(1),
        total: 10,
        issued: 1,
        remaining: 9,
        peruser: 1,
        start: 0,
        end: 0,
    });
    finish_event(e, &fp, Reply::Array(vec![Item::Int(1), Item::Int(9)]));
}

fn usage_limit(raw: &[&[u8]], r: &req::UsageLimit) {
    let fp = check_parsed("USAGE.LIMIT", raw, r, &r.common);
    assert!(!r.limit.is_negative());
    let limit = check_decimal(r.limit);
    let words = vec![
        r.key.clone().into_bytes(),
        limit.clone().into_bytes(),
        b"period".to_vec(),
        r.period.as_str().as_bytes().to_vec(),
    ];
    let again = reparse(&with_common(words, &r.common), req::usage_limit);
    assert_eq!(
        (&again.key, again.limit, again.period),
        (&r.key, r.limit, r.period)
    );
    same_common(&again.common, &r.common);
    names_of_key(&r.key, r.common.op_id.as_deref());
    let mut e = Event::new("usage.limit", TS, &r.common, usage_keys(&r.key));
    e.usage = Some(UsageState {
        key: r.key.clone(),
        amount: None,
        used: "0".into(),
        limit: limit.clone(),
        period: r.period.as_str(),
        period_id: r.period.id_at(TS),
    });
    finish_event(
        e,
        &fp,
        Reply::Array(vec![Item::Str("0".into()), Item::Str(limit)]),
    );
}

fn usage_keys(key: &str) -> Vec<KeySeq<'_>> {
    vec![KeySeq {
        key: key.into(),
        seq: 1,
    }]
}

fn usage_consume(raw: &[&[u8]], r: &req::UsageConsume) {
    let fp = check_parsed("USAGE.CONSUME", raw, r, &r.common);
    assert!(r.amount.is_positive());
    let amount = check_decimal(r.amount);
    let words = vec![r.key.clone().into_bytes(), amount.clone().into_bytes()];
    let again = reparse(&with_common(words, &r.common), req::usage_consume);
    assert_eq!((&again.key, again.amount), (&r.key, r.amount));
    same_common(&again.common, &r.common);
    names_of_key(&r.key, r.common.op_id.as_deref());
    let mut e = Event::new("usage.consume", TS, &r.common, usage_keys(&r.key));
    e.usage = Some(UsageState {
        key: r.key.clone(),
        amount: Some(amount.clone()),
        used: amount.clone(),
        limit: amount,
        period: "none",
        period_id: "all".into(),
    });
    finish_event(e, &fp, Reply::Array(vec![Item::Str("0".into())]));
}

/// The op-id part of the event (as `host::tx` adds it), then the event checks.
pub(crate) fn finish_event(mut e: Event, fp: &str, reply: Reply) {
    check_record(fp, &reply);
    if e.op.is_some() {
        e.fp = Some(fp.to_string());
        e.reply = Some(reply);
    }
    check_event(&e);
}

/// The module's hand-written event JSON is serde_json's, byte for byte; the event holds no
/// NUL (Postgres text cannot store one, the shipper refuses it); the shipper's decoder
/// accepts it and reads back what the module wrote.
pub(crate) fn check_event(e: &Event) {
    let mut json = Vec::new();
    e.write_json(&mut json);
    let serde = serde_json::to_vec(e).expect("serde_json of an event");
    assert_eq!(
        String::from_utf8_lossy(&json),
        String::from_utf8_lossy(&serde),
        "write_json differs from serde_json"
    );
    let text = std::str::from_utf8(&json).expect("event JSON is UTF-8");
    for s in event_strings(e) {
        assert!(
            !s.contains('\0'),
            "the module accepts a request whose event holds a NUL ({s:?}): the shipper refuses \
             such an event (failed_events) and Postgres text cannot store it"
        );
    }
    let d = match shipper::decode(text) {
        Ok(d) => d,
        Err(err) => panic!("the shipper refuses the module's event: {err}\n{text}"),
    };
    assert_eq!(d.id, e.id.as_str());
    assert_eq!((d.typ.as_str(), d.ts), (e.kind, e.ts));
    assert_eq!((&d.op, &d.meta), (&e.op, &e.meta));
    let keys: Vec<(&str, i64)> = e.keys.iter().map(|k| (&*k.key, k.seq)).collect();
    let got: Vec<(&str, i64)> = d.keys.iter().map(|k| (k.key.as_str(), k.seq)).collect();
    assert_eq!(keys, got);
    match (&d.body, &e.changes, &e.coupon, &e.usage) {
        // asset.hold, asset.void, asset.expire: no balance moves
        (Body::Asset(got), None, None, None) if e.hold.is_some() => assert!(got.is_empty()),
        (Body::Asset(got), Some(want), None, None) => {
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(want) {
                assert_eq!((g.key.as_str(), g.field.as_str()), (&*w.key, &*w.field));
                assert_eq!((&g.delta, &g.balance), (&w.delta, &w.balance));
            }
        }
        (Body::Coupon(got), None, Some(want), None) => {
            assert_eq!((&got.campaign, &got.user), (&want.campaign, &want.user));
            assert_eq!((got.issue, got.total), (want.issue, want.total));
        }
        (Body::Usage(got), None, None, Some(want)) => {
            assert_eq!((&got.key, &got.amount), (&want.key, &want.amount));
            assert_eq!(
                (&got.limit, got.period.as_str()),
                (&want.limit, want.period)
            );
            assert_eq!(got.period_id, want.period_id);
        }
        other => panic!("decoded body does not match the event: {other:?}"),
    }
    check_hold(d.hold.as_ref(), e.hold.as_ref());
}

/// The shipper reads back the `hold` object the module wrote (hold events only).
fn check_hold(got: Option<&shipper::Hold>, want: Option<&HoldState>) {
    let (Some(g), Some(w)) = (got, want) else {
        assert!(
            got.is_none() && want.is_none(),
            "hold {got:?} decoded from {want:?}"
        );
        return;
    };
    assert_eq!(g.id.to_string(), w.id);
    assert_eq!((g.kind, g.status), (w.kind.as_str(), w.status.as_str()));
    assert_eq!((&g.subject, &g.amount), (&w.subject, &w.amount));
    assert_eq!(
        (g.created, g.expires, &g.settled),
        (w.created, w.expires, &w.settled)
    );
}

/// Every string of an event that ends up in a Postgres text column.
fn event_strings<'a>(e: &'a Event) -> Vec<&'a str> {
    let mut v: Vec<&str> = e.op.iter().chain(&e.meta).map(String::as_str).collect();
    v.extend(e.keys.iter().map(|k| &*k.key));
    for c in e.changes.iter().flatten() {
        v.extend([&*c.key, &*c.field]);
    }
    if let Some(c) = &e.coupon {
        v.push(&c.campaign);
        v.extend(c.user.as_deref());
    }
    if let Some(u) = &e.usage {
        v.extend([u.key.as_str(), u.period_id.as_str()]);
    }
    if let Some(h) = &e.hold {
        v.push(&h.id);
        v.extend(h.subject.as_deref());
    }
    v
}
