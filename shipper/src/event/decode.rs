//! Decoding and validation of tally events (docs/events.md, format version 1).
//!
//! Pure logic: no I/O. Anything that does not match the contract is an error string that
//! ends up in `failed_events`.

use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeySeq {
    pub(crate) key: String,
    pub(crate) seq: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Change {
    pub(crate) key: String,
    pub(crate) field: String,
    pub(crate) delta: String,
    pub(crate) balance: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Coupon {
    pub(crate) campaign: String,
    pub(crate) user: Option<String>,
    pub(crate) issue: Option<i64>,
    pub(crate) total: i64,
    pub(crate) issued: i64,
    pub(crate) remaining: i64,
    pub(crate) peruser: i64,
    pub(crate) start: i64,
    pub(crate) end: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Usage {
    pub(crate) key: String,
    pub(crate) amount: Option<String>,
    pub(crate) used: String,
    pub(crate) limit: String,
    pub(crate) period: String,
    pub(crate) period_id: String,
}

/// A hold (docs/holds.md): its state after the event that carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hold {
    /// the per-key counter (asset, usage) or the issue number (coupon)
    pub(crate) id: i64,
    /// `asset`, `coupon` or `usage`
    pub(crate) kind: &'static str,
    /// the field (asset), the user (coupon), None (usage)
    pub(crate) subject: Option<String>,
    /// the held amount, canonical, > 0 (`1` for a coupon)
    pub(crate) amount: String,
    /// `open`, `settled`, `voided` or `expired`
    pub(crate) status: &'static str,
    pub(crate) created: i64,
    pub(crate) expires: i64,
    /// the amount spent (settled), else None
    pub(crate) settled: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Body {
    Asset(Vec<Change>),
    Coupon(Coupon),
    Usage(Usage),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Event {
    pub(crate) id: String, // canonical lower-case hyphenated UUID
    /// `id` parsed (the binary form COPY sends; parsed once, at decode)
    pub(crate) uuid: uuid::Uuid,
    pub(crate) typ: String,
    pub(crate) ts: i64,
    pub(crate) op: Option<String>,
    pub(crate) meta: Option<String>,
    pub(crate) keys: Vec<KeySeq>,
    pub(crate) body: Body,
    /// hold events only (`asset.hold`, `coupon.reserve`, ...)
    pub(crate) hold: Option<Hold>,
}

impl Event {
    /// The first data key (Kafka message key).
    pub(crate) fn first_key(&self) -> &str {
        &self.keys[0].key
    }
    /// seq of `key` in this event, if the event changed it.
    pub(crate) fn seq_of(&self, key: &str) -> Option<i64> {
        self.keys.iter().find(|k| k.key == key).map(|k| k.seq)
    }
}

#[derive(Deserialize)]
struct RawKey {
    key: String,
    seq: i64,
}

#[derive(Deserialize)]
struct RawChange {
    key: String,
    field: String,
    delta: String,
    balance: String,
}

#[derive(Deserialize)]
struct RawCoupon {
    campaign: String,
    user: Option<String>,
    issue: Option<i64>,
    total: i64,
    issued: i64,
    remaining: i64,
    peruser: i64,
    start: i64,
    end: i64,
}

#[derive(Deserialize)]
struct RawUsage {
    key: String,
    amount: Option<String>,
    used: String,
    limit: String,
    period: String,
    period_id: String,
}

#[derive(Deserialize)]
struct RawHold {
    id: String,
    kind: String,
    // `subject` and `settled` must be present (string or null).
    subject: Value,
    amount: String,
    status: String,
    created: i64,
    expires: i64,
    settled: Value,
}

#[derive(Deserialize)]
struct RawEvent {
    v: i64,
    id: String,
    #[serde(rename = "type")]
    typ: String,
    ts: i64,
    // `op` and `meta` must be present (string or null).
    op: Value,
    meta: Value,
    keys: Vec<RawKey>,
    changes: Option<Vec<RawChange>>,
    coupon: Option<RawCoupon>,
    usage: Option<RawUsage>,
    hold: Option<RawHold>,
}

pub(crate) const TYPES: &[&str] = &[
    "asset.incr",
    "asset.transfer",
    "coupon.create",
    "coupon.claim",
    "coupon.release",
    "usage.limit",
    "usage.consume",
    "asset.hold",
    "asset.settle",
    "asset.void",
    "asset.expire",
    "coupon.reserve",
    "coupon.confirm",
    "coupon.cancel",
    "coupon.expire",
    "usage.reserve",
    "usage.commit",
    "usage.cancel",
    "usage.expire",
];

/// The hold event types (docs/holds.md): (type, hold kind, hold status after it).
const HOLD_TYPES: &[(&str, &str, &str)] = &[
    ("asset.hold", "asset", "open"),
    ("asset.settle", "asset", "settled"),
    ("asset.void", "asset", "voided"),
    ("asset.expire", "asset", "expired"),
    ("coupon.reserve", "coupon", "open"),
    ("coupon.confirm", "coupon", "settled"),
    ("coupon.cancel", "coupon", "voided"),
    ("coupon.expire", "coupon", "expired"),
    ("usage.reserve", "usage", "open"),
    ("usage.commit", "usage", "settled"),
    ("usage.cancel", "usage", "voided"),
    ("usage.expire", "usage", "expired"),
];

/// Canonical decimal: optional `-`, integer digits without leading zeros, optional `.` and
/// 1..=18 fractional digits without trailing zero, no exponent; `-0` is not canonical.
pub(crate) fn is_canonical_decimal(s: &str) -> bool {
    let (neg, body) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = match body.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (body, None),
    };
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    if int.len() > 1 && int.starts_with('0') {
        return false;
    }
    if let Some(f) = frac {
        if f.is_empty()
            || f.len() > 18
            || !f.bytes().all(|b| b.is_ascii_digit())
            || f.ends_with('0')
        {
            return false;
        }
    }
    if neg && int == "0" && frac.is_none() {
        return false;
    }
    true
}

fn opt_string(v: Value, name: &str) -> Result<Option<String>, String> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s)),
        _ => Err(format!("`{name}` must be a string or null")),
    }
}

fn decimal(s: String, what: &str) -> Result<String, String> {
    if is_canonical_decimal(&s) {
        Ok(s)
    } else {
        Err(format!("{what}: {s:?} is not a canonical decimal"))
    }
}

/// Whether the JSON text escapes a NUL character, which Postgres text cannot store: a
/// `u0000` after an odd run of backslashes. After an even run (`\\u0000`) it is an escaped
/// backslash followed by the text `u0000`, which is stored as it is (found by fuzzing).
fn escapes_nul(json: &str) -> bool {
    let bytes = json.as_bytes();
    json.match_indices("u0000").any(|(at, _)| {
        let run = bytes[..at]
            .iter()
            .rev()
            .take_while(|&&c| c == b'\\')
            .count();
        run % 2 == 1
    })
}

/// Decode one event from its JSON text and validate it against the contract.
pub(crate) fn decode(json: &str) -> Result<Event, String> {
    if escapes_nul(json) {
        return Err("event contains a NUL character (cannot be stored)".into());
    }
    let raw: RawEvent =
        serde_json::from_str(json).map_err(|e| format!("invalid event JSON: {e}"))?;
    if raw.v != 1 {
        return Err(format!("unsupported format version v={}", raw.v));
    }
    let id = uuid::Uuid::parse_str(&raw.id)
        .map_err(|e| format!("`id` {:?} is not a UUID: {e}", raw.id))?;
    if !TYPES.contains(&raw.typ.as_str()) {
        return Err(format!("unknown event type {:?}", raw.typ));
    }
    if raw.ts < 0 {
        return Err(format!("`ts` {} is negative", raw.ts));
    }
    let op = opt_string(raw.op, "op")?;
    let meta = opt_string(raw.meta, "meta")?;
    let keys = decode_keys(raw.keys)?;
    let body = match raw.typ.as_str() {
        "asset.incr" | "asset.transfer" | "asset.settle" => {
            Body::Asset(decode_changes(&raw.typ, raw.changes, &keys)?)
        }
        t if t.starts_with("asset.") => Body::Asset(no_changes(t, raw.changes)?),
        t if t.starts_with("coupon.") => Body::Coupon(decode_coupon(t, raw.coupon)?),
        t => Body::Usage(decode_usage(t, raw.usage)?),
    };
    let mut event = Event {
        id: id.hyphenated().to_string(),
        uuid: id,
        typ: raw.typ,
        ts: raw.ts,
        op,
        meta,
        keys,
        body,
        hold: None,
    };
    if let Some(&(_, kind, status)) = HOLD_TYPES.iter().find(|h| h.0 == event.typ) {
        let raw_hold = raw
            .hold
            .ok_or_else(|| format!("{} without `hold`", event.typ))?;
        event.hold = Some(decode_hold(raw_hold, kind, status)?);
        check_hold_event(&event)?;
    }
    Ok(event)
}

/// `keys`: at least one, each listed once, seq >= 1.
fn decode_keys(raw: Vec<RawKey>) -> Result<Vec<KeySeq>, String> {
    if raw.is_empty() {
        return Err("`keys` is empty".into());
    }
    let mut keys = Vec::with_capacity(raw.len());
    for k in raw {
        if k.seq < 1 {
            return Err(format!("key {:?} has seq {} < 1", k.key, k.seq));
        }
        if keys.iter().any(|x: &KeySeq| x.key == k.key) {
            return Err(format!("key {:?} listed twice in `keys`", k.key));
        }
        keys.push(KeySeq {
            key: k.key,
            seq: k.seq,
        });
    }
    Ok(keys)
}

/// An asset event's `changes`: canonical decimals, each on a listed key; a transfer has two.
fn decode_changes(
    typ: &str,
    changes: Option<Vec<RawChange>>,
    keys: &[KeySeq],
) -> Result<Vec<Change>, String> {
    let changes = changes.ok_or("asset event without `changes`")?;
    if changes.is_empty() {
        return Err("`changes` is empty".into());
    }
    let mut out = Vec::with_capacity(changes.len());
    for c in changes {
        if !keys.iter().any(|x| x.key == c.key) {
            return Err(format!("change for key {:?} not listed in `keys`", c.key));
        }
        out.push(Change {
            delta: decimal(c.delta, "delta")?,
            balance: decimal(c.balance, "balance")?,
            key: c.key,
            field: c.field,
        });
    }
    if typ == "asset.transfer" && (keys.len() != 2 || out.len() != 2) {
        return Err("asset.transfer needs two keys and two changes".into());
    }
    if typ == "asset.settle" && out.len() != 1 {
        return Err("asset.settle needs exactly one change".into());
    }
    Ok(out)
}

/// `asset.hold`, `asset.void`, `asset.expire`: balances do not move, so no change (absent,
/// null or empty).
fn no_changes(typ: &str, changes: Option<Vec<RawChange>>) -> Result<Vec<Change>, String> {
    match changes {
        Some(c) if !c.is_empty() => Err(format!("{typ} with `changes` (a hold moves no balance)")),
        _ => Ok(Vec::new()),
    }
}

fn decode_coupon(t: &str, c: Option<RawCoupon>) -> Result<Coupon, String> {
    let c = c.ok_or("coupon event without `coupon`")?;
    if t != "coupon.create" && (c.user.is_none() || c.issue.is_none()) {
        return Err(format!("{t} without `user`/`issue`"));
    }
    if let Some(i) = c.issue {
        if i < 1 {
            return Err(format!("coupon issue {i} < 1"));
        }
    }
    Ok(Coupon {
        campaign: c.campaign,
        user: c.user,
        issue: c.issue,
        total: c.total,
        issued: c.issued,
        remaining: c.remaining,
        peruser: c.peruser,
        start: c.start,
        end: c.end,
    })
}

fn decode_usage(t: &str, u: Option<RawUsage>) -> Result<Usage, String> {
    let u = u.ok_or("usage event without `usage`")?;
    let amount = match (u.amount, t) {
        (Some(_), "usage.reserve" | "usage.cancel" | "usage.expire") => {
            return Err(format!("{t} with an `amount` (`used` does not move)"))
        }
        (Some(a), _) => Some(decimal(a, "amount")?),
        (None, "usage.consume" | "usage.commit") => return Err(format!("{t} without `amount`")),
        (None, _) => None,
    };
    if !["none", "day", "month"].contains(&u.period.as_str()) {
        return Err(format!("unknown usage period {:?}", u.period));
    }
    Ok(Usage {
        used: decimal(u.used, "used")?,
        limit: decimal(u.limit, "limit")?,
        amount,
        key: u.key,
        period: u.period,
        period_id: u.period_id,
    })
}

/// A hold id: the decimal text of a positive integer (a per-key counter, or an issue number).
fn hold_id(s: &str) -> Result<i64, String> {
    let canonical = !s.is_empty() && !s.starts_with('0') && s.bytes().all(|b| b.is_ascii_digit());
    match s.parse::<i64>() {
        Ok(n) if canonical => Ok(n),
        _ => Err(format!("hold `id` {s:?} is not a positive integer")),
    }
}

/// Orders two canonical non-negative decimals exactly.
fn cmp_decimal(a: &str, b: &str) -> std::cmp::Ordering {
    let split = |s: &str| -> (String, String) {
        let (i, f) = s.split_once('.').unwrap_or((s, ""));
        (i.to_string(), f.to_string())
    };
    let ((ai, af), (bi, bf)) = (split(a), split(b));
    let width = af.len().max(bf.len());
    ai.len()
        .cmp(&bi.len())
        .then_with(|| ai.cmp(&bi))
        .then_with(|| format!("{af:0<width$}").cmp(&format!("{bf:0<width$}")))
}

/// The `hold` object on its own: present fields, canonical amounts, the kind and status its
/// event type says, a deadline after the creation.
fn decode_hold(h: RawHold, kind: &'static str, status: &'static str) -> Result<Hold, String> {
    if h.kind != kind || h.status != status {
        return Err(format!(
            "hold kind/status {:?}/{:?}, the event type says {kind}/{status}",
            h.kind, h.status
        ));
    }
    let amount = decimal(h.amount, "hold amount")?;
    if amount.starts_with('-') || amount == "0" {
        return Err(format!("hold amount {amount} is not positive"));
    }
    if h.created < 0 || h.expires <= h.created {
        return Err(format!(
            "hold created {} / expires {}: the deadline must follow the creation",
            h.created, h.expires
        ));
    }
    let settled = match (opt_string(h.settled, "hold settled")?, status) {
        (Some(s), "settled") => Some(decimal(s, "hold settled")?),
        (None, "settled") => return Err("settled hold without `settled`".into()),
        (Some(_), _) => return Err(format!("`settled` set on a hold that is {status}")),
        (None, _) => None,
    };
    if let Some(s) = &settled {
        if s.starts_with('-') || cmp_decimal(s, &amount).is_gt() {
            return Err(format!("hold settled {s} is not within 0..={amount}"));
        }
    }
    Ok(Hold {
        id: hold_id(&h.id)?,
        kind,
        subject: opt_string(h.subject, "hold subject")?,
        amount,
        status,
        created: h.created,
        expires: h.expires,
        settled,
    })
}

/// A hold event as a whole: one key, the hold on it, and the rest of the event agreeing with
/// the hold (docs/holds.md, Events).
fn check_hold_event(e: &Event) -> Result<(), String> {
    let Some(h) = &e.hold else { return Ok(()) };
    let [key] = e.keys.as_slice() else {
        return Err(format!("{} needs exactly one key", e.typ));
    };
    if e.typ.ends_with(".expire") {
        if e.op.is_some() || e.meta.is_some() {
            return Err(format!(
                "{} with `op` or `meta` (an expiry has neither)",
                e.typ
            ));
        }
        if e.ts < h.expires {
            return Err(format!(
                "{} at {} before its deadline {}",
                e.typ, e.ts, h.expires
            ));
        }
    }
    match &e.body {
        Body::Asset(changes) => check_asset_hold(h, &key.key, changes),
        Body::Coupon(c) => check_coupon_hold(h, &key.key, c),
        Body::Usage(u) => check_usage_hold(h, &key.key, u),
    }
}

fn check_asset_hold(h: &Hold, key: &str, changes: &[Change]) -> Result<(), String> {
    let Some(field) = &h.subject else {
        return Err("asset hold without a `subject` (its field)".into());
    };
    if let (Some(settled), [c]) = (&h.settled, changes) {
        if settled == "0" {
            return Err("asset.settle of 0 (an asset hold settles a positive amount)".into());
        }
        if c.key != key || &c.field != field || c.delta != format!("-{settled}") {
            return Err(format!(
                "asset.settle change {}/{} delta {} does not spend the hold's {settled} of {field}",
                c.key, c.field, c.delta
            ));
        }
    }
    Ok(())
}

fn check_coupon_hold(h: &Hold, key: &str, c: &Coupon) -> Result<(), String> {
    if c.campaign != key {
        return Err(format!(
            "coupon campaign {:?} is not the event's key",
            c.campaign
        ));
    }
    if h.subject != c.user || c.issue != Some(h.id) {
        return Err(format!(
            "coupon hold {} of {:?} does not match the coupon's issue {:?} of {:?}",
            h.id, h.subject, c.issue, c.user
        ));
    }
    if h.amount != "1" || h.settled.as_deref().is_some_and(|s| s != "1") {
        return Err("a coupon hold holds and settles exactly 1".into());
    }
    Ok(())
}

fn check_usage_hold(h: &Hold, key: &str, u: &Usage) -> Result<(), String> {
    if u.key != key {
        return Err(format!("usage key {:?} is not the event's key", u.key));
    }
    if h.subject.is_some() {
        return Err("usage hold with a `subject` (it has none)".into());
    }
    if u.amount.is_some() && u.amount != h.settled {
        return Err(format!(
            "usage.commit amount {:?} is not the hold's settled {:?}",
            u.amount, h.settled
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"{"v":1,"id":"0193508e-7c4a-7b3e-9f1c-3d2a8e5b6c01","type":"asset.incr","ts":1732272000123,
 "op":"grant-42-7","meta":"daily bonus","keys":[{"key":"user.asset.42","seq":7}],
 "changes":[{"key":"user.asset.42","field":"BDP","delta":"10.43","balance":"5210.43"}]}"#;

    #[test]
    fn only_an_escaped_nul_is_refused() {
        assert!(escapes_nul(r#"{"meta":"a\u0000"}"#));
        assert!(escapes_nul(r#"{"meta":"\\\u0000"}"#));
        assert!(!escapes_nul(r#"{"meta":"\\u0000"}"#));
        assert!(!escapes_nul(r#"{"meta":"u0000"}"#));
        assert!(!escapes_nul(r#"{"meta":"\\\\u0000"}"#));
    }

    #[test]
    fn decodes_contract_example() {
        let e = decode(EXAMPLE).unwrap();
        assert_eq!(e.id, "0193508e-7c4a-7b3e-9f1c-3d2a8e5b6c01");
        assert_eq!(e.typ, "asset.incr");
        assert_eq!(e.op.as_deref(), Some("grant-42-7"));
        assert_eq!(e.first_key(), "user.asset.42");
        assert_eq!(e.seq_of("user.asset.42"), Some(7));
        match e.body {
            Body::Asset(c) => {
                assert_eq!(c.len(), 1);
                assert_eq!(c[0].delta, "10.43");
                assert_eq!(c[0].balance, "5210.43");
            }
            _ => panic!("wrong body"),
        }
    }

    #[test]
    fn canonical_decimals() {
        for ok in [
            "0",
            "10.43",
            "-3",
            "5210.43",
            "0.000000000000000001",
            "123456789012345678901234567890",
        ] {
            assert!(is_canonical_decimal(ok), "{ok}");
        }
        for bad in [
            "",
            "-",
            "1.",
            ".5",
            "1.50",
            "01",
            "-0",
            "1e5",
            "1.0000000000000000001",
            "+1",
            "1,5",
            " 1",
            "NaN",
        ] {
            assert!(!is_canonical_decimal(bad), "{bad}");
        }
    }

    #[test]
    fn rejects_schema_breaks() {
        let cases = [
            ("not json", "invalid event JSON"),
            (r#"{"v":2}"#, "invalid event JSON"),
            (
                &EXAMPLE.replace(r#""v":1"#, r#""v":2"#),
                "unsupported format version",
            ),
            (
                &EXAMPLE.replace("0193508e-7c4a", "zz93508e-7c4a"),
                "not a UUID",
            ),
            (
                &EXAMPLE.replace("asset.incr", "asset.burn"),
                "unknown event type",
            ),
            (
                &EXAMPLE.replace(r#""10.43""#, "10.43"),
                "invalid event JSON",
            ),
            (
                &EXAMPLE.replace(r#""10.43""#, r#""10.430""#),
                "canonical decimal",
            ),
            (&EXAMPLE.replace(r#""seq":7"#, r#""seq":0"#), "seq 0 < 1"),
            (
                &EXAMPLE.replace(
                    r#""key":"user.asset.42","field""#,
                    r#""key":"other","field""#,
                ),
                "not listed",
            ),
            (
                &EXAMPLE.replace(r#""op":"grant-42-7","#, ""),
                "invalid event JSON",
            ),
        ];
        for (json, want) in cases {
            let err = decode(json).unwrap_err();
            assert!(err.contains(want), "{json}: got {err}, want {want}");
        }
    }

    #[test]
    fn decodes_coupon_and_usage() {
        let claim = r#"{"v":1,"id":"0193508e-7c4a-7b3e-9f1c-3d2a8e5b6c02","type":"coupon.claim","ts":1,"op":null,"meta":null,
          "keys":[{"key":"c1","seq":2}],"coupon":{"campaign":"c1","user":"u1","issue":1,"total":100,"issued":1,"remaining":99,"peruser":1,"start":0,"end":0}}"#;
        let e = decode(claim).unwrap();
        assert!(
            matches!(e.body, Body::Coupon(ref c) if c.issue == Some(1) && c.user.as_deref() == Some("u1"))
        );
        let bad_claim = claim.replace(r#""issue":1"#, r#""issue":null"#);
        assert!(decode(&bad_claim)
            .unwrap_err()
            .contains("without `user`/`issue`"));

        let consume = r#"{"v":1,"id":"0193508e-7c4a-7b3e-9f1c-3d2a8e5b6c03","type":"usage.consume","ts":1,"op":null,"meta":null,
          "keys":[{"key":"k","seq":3}],"usage":{"key":"k","amount":"1.5","used":"2.5","limit":"10","period":"day","period_id":"2024-11-22"}}"#;
        let e = decode(consume).unwrap();
        assert!(matches!(e.body, Body::Usage(ref u) if u.amount.as_deref() == Some("1.5")));
        assert!(decode(&consume.replace(r#""amount":"1.5""#, r#""amount":null"#)).is_err());
        assert!(decode(&consume.replace(r#""day""#, r#""week""#))
            .unwrap_err()
            .contains("period"));
    }

    #[test]
    fn transfer_needs_two_changes() {
        let t = r#"{"v":1,"id":"0193508e-7c4a-7b3e-9f1c-3d2a8e5b6c04","type":"asset.transfer","ts":1,"op":null,"meta":null,
          "keys":[{"key":"a","seq":1},{"key":"b","seq":1}],
          "changes":[{"key":"a","field":"g","delta":"-1","balance":"0"},{"key":"b","field":"g","delta":"1","balance":"1"}]}"#;
        assert!(decode(t).is_ok());
        let one = t.replace(r#",{"key":"b","field":"g","delta":"1","balance":"1"}"#, "");
        assert!(decode(&one).unwrap_err().contains("two keys"));
    }

    /// A hold event of `typ` as docs/holds.md describes it: `extra` holds the rest of the
    /// event's fields (`changes`, `coupon` or `usage`), `hold` the fields of the hold object
    /// that differ from an open asset hold of 30 gold.
    fn hold_event(typ: &str, op: &str, extra: &str, hold: &str) -> String {
        let mut h = serde_json::json!({"id":"7","kind":"asset","subject":"gold","amount":"30",
            "status":"open","created":1000,"expires":61000,"settled":null});
        let over: serde_json::Value = serde_json::from_str(hold).unwrap();
        for (k, v) in over.as_object().unwrap() {
            h[k] = v.clone();
        }
        format!(
            r#"{{"v":1,"id":"0193508e-7c4a-7b3e-9f1c-3d2a8e5b6c05","type":"{typ}","ts":61000,{op},
              "keys":[{{"key":"acct","seq":4}}]{extra},"hold":{h}}}"#
        )
    }

    const OP: &str = r#""op":"p1","meta":null"#;
    const NO_OP: &str = r#""op":null,"meta":null"#;
    const SETTLE_CHANGE: &str =
        r#","changes":[{"key":"acct","field":"gold","delta":"-25","balance":"75"}]"#;
    const SETTLED: &str = r#"{"status":"settled","settled":"25"}"#;

    fn coupon_state(issued: i64) -> String {
        format!(
            r#","coupon":{{"campaign":"acct","user":"u1","issue":7,"total":10,"issued":{issued},"remaining":{},"peruser":1,"start":0,"end":0}}"#,
            10 - issued
        )
    }

    fn usage_state(amount: &str) -> String {
        format!(
            r#","usage":{{"key":"acct","amount":{amount},"used":"5","limit":"100","period":"none","period_id":"all"}}"#
        )
    }

    const COUPON_HOLD: &str = r#"{"kind":"coupon","subject":"u1","amount":"1"}"#;
    const USAGE_HOLD: &str = r#"{"kind":"usage","subject":null,"amount":"2.5"}"#;

    /// Every one of the twelve hold types, as the contract writes it.
    fn valid_hold_events() -> Vec<String> {
        let coupon = |status: &str, settled: &str| {
            let mut h: serde_json::Value = serde_json::from_str(COUPON_HOLD).unwrap();
            h["status"] = status.into();
            h["settled"] = serde_json::from_str(settled).unwrap();
            h.to_string()
        };
        let usage = |status: &str, settled: &str| {
            let mut h: serde_json::Value = serde_json::from_str(USAGE_HOLD).unwrap();
            h["status"] = status.into();
            h["settled"] = serde_json::from_str(settled).unwrap();
            h.to_string()
        };
        vec![
            hold_event("asset.hold", OP, "", "{}"),
            hold_event("asset.settle", OP, SETTLE_CHANGE, SETTLED),
            hold_event("asset.void", OP, "", r#"{"status":"voided"}"#),
            hold_event("asset.expire", NO_OP, "", r#"{"status":"expired"}"#),
            hold_event(
                "coupon.reserve",
                OP,
                &coupon_state(3),
                &coupon("open", "null"),
            ),
            hold_event(
                "coupon.confirm",
                OP,
                &coupon_state(3),
                &coupon("settled", r#""1""#),
            ),
            hold_event(
                "coupon.cancel",
                OP,
                &coupon_state(2),
                &coupon("voided", "null"),
            ),
            hold_event(
                "coupon.expire",
                NO_OP,
                &coupon_state(2),
                &coupon("expired", "null"),
            ),
            hold_event(
                "usage.reserve",
                OP,
                &usage_state("null"),
                &usage("open", "null"),
            ),
            hold_event(
                "usage.commit",
                OP,
                &usage_state(r#""2""#),
                &usage("settled", r#""2""#),
            ),
            hold_event(
                "usage.cancel",
                OP,
                &usage_state("null"),
                &usage("voided", "null"),
            ),
            hold_event(
                "usage.expire",
                NO_OP,
                &usage_state("null"),
                &usage("expired", "null"),
            ),
        ]
    }

    #[test]
    fn decodes_every_hold_type() {
        let events = valid_hold_events();
        assert_eq!(events.len(), HOLD_TYPES.len());
        for (json, (typ, kind, status)) in events.iter().zip(HOLD_TYPES) {
            let e = decode(json).unwrap_or_else(|err| panic!("{typ}: {err}\n{json}"));
            assert_eq!(e.typ, *typ);
            let h = e.hold.as_ref().unwrap();
            assert_eq!((h.id, h.kind, h.status), (7, *kind, *status));
            assert_eq!((h.created, h.expires), (1000, 61000));
            match (&e.body, *kind) {
                (Body::Asset(c), "asset") => {
                    assert_eq!(c.len(), usize::from(*typ == "asset.settle"))
                }
                (Body::Coupon(c), "coupon") => assert_eq!(c.issue, Some(7)),
                (Body::Usage(u), "usage") => {
                    assert_eq!(u.amount.is_some(), *typ == "usage.commit")
                }
                other => panic!("{typ}: body {other:?}"),
            }
        }
        let settle = decode(&events[1]).unwrap();
        let h = settle.hold.unwrap();
        assert_eq!(h.subject.as_deref(), Some("gold"));
        assert_eq!(h.settled.as_deref(), Some("25"));
        let usage = decode(&events[8]).unwrap().hold.unwrap();
        assert_eq!((usage.subject, usage.amount.as_str()), (None, "2.5"));
        // the old types carry no hold
        assert_eq!(decode(EXAMPLE).unwrap().hold, None);
    }

    /// Each case: the fields of the hold object that differ from an open asset hold, and
    /// the error it must give as an `asset.hold` (or `typ` with `extra`).
    fn assert_refused(cases: &[(&str, &str, &str, &str)]) {
        for (typ, extra, hold, want) in cases {
            let op = if typ.ends_with(".expire") { NO_OP } else { OP };
            let json = hold_event(typ, op, extra, hold);
            let err = decode(&json).unwrap_err();
            assert!(err.contains(want), "{json}: got {err}, want {want}");
        }
    }

    #[test]
    fn rejects_hold_objects_that_break_the_contract() {
        let h = "asset.hold";
        assert_refused(&[
            (h, "", r#"{"id":""}"#, "not a positive integer"),
            (h, "", r#"{"id":"07"}"#, "not a positive integer"),
            (h, "", r#"{"id":"0"}"#, "not a positive integer"),
            (h, "", r#"{"id":"h7"}"#, "not a positive integer"),
            (
                h,
                "",
                r#"{"status":"settled"}"#,
                "event type says asset/open",
            ),
            (h, "", r#"{"kind":"usage"}"#, "event type says asset/open"),
            (h, "", r#"{"amount":"0"}"#, "not positive"),
            (h, "", r#"{"amount":"-3"}"#, "not positive"),
            (h, "", r#"{"amount":"3.50"}"#, "canonical decimal"),
            (h, "", r#"{"expires":1000}"#, "deadline must follow"),
            (h, "", r#"{"settled":"1"}"#, "set on a hold that is open"),
            (h, "", r#"{"subject":null}"#, "without a `subject`"),
            (h, SETTLE_CHANGE, "{}", "moves no balance"),
            ("asset.void", "", r#"{"status":"open"}"#, "asset/voided"),
        ]);
    }

    #[test]
    fn rejects_settles_and_expiries_that_break_the_contract() {
        let s = "asset.settle";
        let two = SETTLE_CHANGE.replace(
            "}]",
            r#"},{"key":"acct","field":"gold","delta":"-1","balance":"74"}]"#,
        );
        let gems = SETTLE_CHANGE.replace("gold", "gems");
        assert_refused(&[
            (s, "", SETTLED, "without `changes`"),
            (
                s,
                SETTLE_CHANGE,
                r#"{"status":"settled"}"#,
                "without `settled`",
            ),
            (
                s,
                SETTLE_CHANGE,
                r#"{"status":"settled","settled":"31"}"#,
                "not within 0..=30",
            ),
            (
                s,
                SETTLE_CHANGE,
                r#"{"status":"settled","settled":"24.5"}"#,
                "does not spend",
            ),
            (
                s,
                SETTLE_CHANGE,
                r#"{"status":"settled","settled":"0"}"#,
                "settle of 0",
            ),
            (s, &gems, SETTLED, "does not spend"),
            (s, &two, SETTLED, "exactly one change"),
            (
                "asset.expire",
                "",
                r#"{"status":"expired","expires":62000}"#,
                "before its deadline",
            ),
        ]);
        let with_op = hold_event("asset.expire", OP, "", r#"{"status":"expired"}"#);
        assert!(decode(&with_op)
            .unwrap_err()
            .contains("(an expiry has neither)"));
    }

    fn assert_each_refused(broken: &[(String, &str)]) {
        for (json, want) in broken {
            let err = decode(json).unwrap_err();
            assert!(err.contains(want), "{json}: got {err}, want {want}");
        }
    }

    #[test]
    fn rejects_hold_events_whose_parts_disagree() {
        let e = valid_hold_events();
        let two_keys = r#""keys":[{"key":"acct","seq":4},{"key":"b","seq":1}]"#;
        let (asset, reserve, confirm) = (&e[0], &e[4], &e[5]);
        assert_each_refused(&[
            (
                asset.replace(r#","hold":"#, r#","nohold":"#),
                "without `hold`",
            ),
            (
                asset.replace(r#""subject":"gold""#, r#""subj":"gold""#),
                "invalid event JSON",
            ),
            (
                asset.replace(r#""settled":null"#, r#""x":null"#),
                "invalid event JSON",
            ),
            (
                asset.replace(r#""keys":[{"key":"acct","seq":4}]"#, two_keys),
                "exactly one key",
            ),
            (
                reserve.replace(r#""issue":7"#, r#""issue":8"#),
                "does not match the coupon",
            ),
            (
                reserve.replace(r#""subject":"u1""#, r#""subject":"u2""#),
                "does not match",
            ),
            (
                reserve.replace(r#""campaign":"acct""#, r#""campaign":"x""#),
                "not the event's key",
            ),
            (
                reserve.replace(r#""amount":"1""#, r#""amount":"2""#),
                "exactly 1",
            ),
            (
                confirm.replace(r#""settled":"1""#, r#""settled":"0""#),
                "exactly 1",
            ),
            (
                reserve.replace(r#""user":"u1","issue":7"#, r#""user":null,"issue":null"#),
                "`issue`",
            ),
        ]);
    }

    #[test]
    fn rejects_usage_hold_events_whose_parts_disagree() {
        let e = valid_hold_events();
        let (reserve, commit) = (&e[8], &e[9]);
        assert_each_refused(&[
            (
                reserve.replace(r#""amount":null"#, r#""amount":"2.5""#),
                "with an `amount`",
            ),
            (
                reserve.replace(r#""subject":null"#, r#""subject":"x""#),
                "has none",
            ),
            (
                reserve.replace(r#""key":"acct","amount""#, r#""key":"x","amount""#),
                "event's key",
            ),
            (
                commit.replace(r#""amount":"2""#, r#""amount":null"#),
                "commit without `amount`",
            ),
            (
                commit.replace(r#""amount":"2""#, r#""amount":"1""#),
                "not the hold's settled",
            ),
            (
                commit.replace(r#""settled":"2""#, r#""settled":"3""#),
                "not within 0..=2.5",
            ),
        ]);
        // a commit of nothing is allowed: the whole reservation released
        let zero = commit
            .replace(r#""amount":"2""#, r#""amount":"0""#)
            .replace(r#""settled":"2""#, r#""settled":"0""#);
        assert!(decode(&zero).is_ok());
    }

    #[test]
    fn decimals_compare_exactly() {
        use std::cmp::Ordering::*;
        for (a, b, want) in [
            ("2", "10", Less),
            ("2.5", "2.5", Equal),
            ("2.5", "2.45", Greater),
            ("0.000000000000000001", "0", Greater),
            ("100", "99.999", Greater),
            ("3", "3.1", Less),
        ] {
            assert_eq!(cmp_decimal(a, b), want, "{a} {b}");
        }
    }
}
