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
}

pub(crate) const TYPES: &[&str] = &[
    "asset.incr",
    "asset.transfer",
    "coupon.create",
    "coupon.claim",
    "coupon.release",
    "usage.limit",
    "usage.consume",
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
        "asset.incr" | "asset.transfer" => {
            Body::Asset(decode_changes(&raw.typ, raw.changes, &keys)?)
        }
        t if t.starts_with("coupon.") => Body::Coupon(decode_coupon(t, raw.coupon)?),
        t => Body::Usage(decode_usage(t, raw.usage)?),
    };
    Ok(Event {
        id: id.hyphenated().to_string(),
        uuid: id,
        typ: raw.typ,
        ts: raw.ts,
        op,
        meta,
        keys,
        body,
    })
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
    Ok(out)
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
        (Some(a), _) => Some(decimal(a, "amount")?),
        (None, "usage.consume") => return Err("usage.consume without `amount`".into()),
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
}
