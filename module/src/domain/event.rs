//! The event a change appends to the stream (docs/events.md): its fields, its JSON written
//! byte for byte as serde_json would, and its UUIDv7 id. Pure Rust, no Redis.

use std::borrow::Cow;

use serde::{Serialize, Serializer};

use crate::domain::holds::HoldState;
use crate::domain::record::Reply;
use crate::domain::request::Common;

pub const FORMAT_VERSION: u32 = 1;

#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct KeySeq<'a> {
    pub key: Cow<'a, str>,
    pub seq: i64,
}

#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct Change<'a> {
    pub key: Cow<'a, str>,
    pub field: Cow<'a, str>,
    pub delta: String,
    pub balance: String,
}

#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct CouponState {
    pub campaign: String,
    pub user: Option<String>,
    pub issue: Option<i64>,
    pub total: i64,
    pub issued: i64,
    pub remaining: i64,
    pub peruser: i64,
    pub start: i64,
    pub end: i64,
}

#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct UsageState {
    pub key: String,
    pub amount: Option<String>,
    pub used: String,
    pub limit: String,
    pub period: &'static str,
    pub period_id: String,
}

#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct Event<'a> {
    pub v: u32,
    pub id: EventId,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub ts: i64,
    pub op: Option<String>,
    pub meta: Option<String>,
    pub keys: Vec<KeySeq<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changes: Option<Vec<Change<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coupon: Option<CouponState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageState>,
    /// Hold events (docs/holds.md): the hold after the event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold: Option<HoldState>,
    /// With an op-id: the idempotency record (fingerprint and reply), so that
    /// `tally-shipper restore` can rebuild the record of an op-id still inside its window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply: Option<Reply>,
}

impl<'a> Event<'a> {
    pub fn new(kind: &'static str, ts: i64, common: &Common, keys: Vec<KeySeq<'a>>) -> Event<'a> {
        Event {
            v: FORMAT_VERSION,
            id: new_event_id(ts),
            kind,
            ts,
            op: common.op_id.clone(),
            meta: common.meta.clone(),
            keys,
            changes: None,
            coupon: None,
            usage: None,
            hold: None,
            fp: None,
            reply: None,
        }
    }

    #[cfg(test)]
    pub fn to_json(&self) -> String {
        let mut out = Vec::with_capacity(512);
        self.write_json(&mut out);
        // Only valid UTF-8 (the strings are `String`s) and ASCII are written.
        String::from_utf8(out).unwrap_or_default()
    }

    /// Appends the event's JSON to `out`: byte for byte what `serde_json::to_string` makes
    /// of the derived `Serialize` (a test checks that), written directly without the
    /// serializer's per-field machinery.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"v\":");
        json_int(out, i64::from(self.v));
        out.extend_from_slice(b",\"id\":");
        json_str(out, self.id.as_str());
        out.extend_from_slice(b",\"type\":");
        json_str(out, self.kind);
        out.extend_from_slice(b",\"ts\":");
        json_int(out, self.ts);
        out.extend_from_slice(b",\"op\":");
        json_opt_str(out, self.op.as_deref());
        out.extend_from_slice(b",\"meta\":");
        json_opt_str(out, self.meta.as_deref());
        self.write_keys(out);
        if let Some(changes) = &self.changes {
            write_changes(out, changes);
        }
        if let Some(c) = &self.coupon {
            write_coupon(out, c);
        }
        if let Some(u) = &self.usage {
            write_usage(out, u);
        }
        if let Some(h) = &self.hold {
            write_hold(out, h);
        }
        if let Some(fp) = &self.fp {
            out.extend_from_slice(b",\"fp\":");
            json_str(out, fp);
        }
        if let Some(reply) = &self.reply {
            out.extend_from_slice(b",\"reply\":");
            // Only with an op-id; serde's form is the record's (encode_record).
            let _ = serde_json::to_writer(&mut *out, reply);
        }
        out.push(b'}');
    }

    fn write_keys(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b",\"keys\":[");
        for (i, k) in self.keys.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"key\":");
            json_str(out, &k.key);
            out.extend_from_slice(b",\"seq\":");
            json_int(out, k.seq);
            out.push(b'}');
        }
        out.push(b']');
    }
}

fn write_changes(out: &mut Vec<u8>, changes: &[Change]) {
    out.extend_from_slice(b",\"changes\":[");
    for (i, c) in changes.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"key\":");
        json_str(out, &c.key);
        out.extend_from_slice(b",\"field\":");
        json_str(out, &c.field);
        out.extend_from_slice(b",\"delta\":");
        json_str(out, &c.delta);
        out.extend_from_slice(b",\"balance\":");
        json_str(out, &c.balance);
        out.push(b'}');
    }
    out.push(b']');
}

fn write_coupon(out: &mut Vec<u8>, c: &CouponState) {
    out.extend_from_slice(b",\"coupon\":{\"campaign\":");
    json_str(out, &c.campaign);
    out.extend_from_slice(b",\"user\":");
    json_opt_str(out, c.user.as_deref());
    out.extend_from_slice(b",\"issue\":");
    match c.issue {
        Some(n) => json_int(out, n),
        None => out.extend_from_slice(b"null"),
    }
    for (name, v) in [
        (&b",\"total\":"[..], c.total),
        (b",\"issued\":", c.issued),
        (b",\"remaining\":", c.remaining),
        (b",\"peruser\":", c.peruser),
        (b",\"start\":", c.start),
        (b",\"end\":", c.end),
    ] {
        out.extend_from_slice(name);
        json_int(out, v);
    }
    out.push(b'}');
}

fn write_usage(out: &mut Vec<u8>, u: &UsageState) {
    out.extend_from_slice(b",\"usage\":{\"key\":");
    json_str(out, &u.key);
    out.extend_from_slice(b",\"amount\":");
    json_opt_str(out, u.amount.as_deref());
    out.extend_from_slice(b",\"used\":");
    json_str(out, &u.used);
    out.extend_from_slice(b",\"limit\":");
    json_str(out, &u.limit);
    out.extend_from_slice(b",\"period\":");
    json_str(out, u.period);
    out.extend_from_slice(b",\"period_id\":");
    json_str(out, &u.period_id);
    out.push(b'}');
}

fn write_hold(out: &mut Vec<u8>, h: &HoldState) {
    out.extend_from_slice(b",\"hold\":{\"id\":");
    json_str(out, &h.id);
    out.extend_from_slice(b",\"kind\":");
    json_str(out, h.kind.as_str());
    out.extend_from_slice(b",\"subject\":");
    json_opt_str(out, h.subject.as_deref());
    out.extend_from_slice(b",\"amount\":");
    json_str(out, &h.amount);
    out.extend_from_slice(b",\"status\":");
    json_str(out, h.status.as_str());
    out.extend_from_slice(b",\"created\":");
    json_int(out, h.created);
    out.extend_from_slice(b",\"expires\":");
    json_int(out, h.expires);
    out.extend_from_slice(b",\"settled\":");
    json_opt_str(out, h.settled.as_deref());
    out.push(b'}');
}

/// Straight from itoa's buffer: IntText (the same digits) would copy them once more, about
/// 10 times per coupon event.
fn json_int(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

fn json_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => json_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// A JSON string with serde_json's escaping: `"` and `\\`, the short forms of \b \t \n
/// \f \r, `\u00xx` (lower-case hex) for the other control characters; everything else,
/// including non-ASCII UTF-8, as is.
fn json_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(s.len() + 2);
    out.push(b'"');
    let bytes = s.as_bytes();
    if !bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\') {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short = match b {
            b'"' => b'"',
            b'\\' => b'\\',
            0x08 => b'b',
            0x09 => b't',
            0x0a => b'n',
            0x0c => b'f',
            0x0d => b'r',
            0x00..=0x1f => b'u',
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.push(b'\\');
        out.push(short);
        if short == b'u' {
            out.extend_from_slice(&[b'0', b'0', HEX[(b >> 4) as usize], HEX[(b & 0xf) as usize]]);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// A UUIDv7 with the server's millisecond time and a random tail.
///
/// The tail comes from a SplitMix64 generator seeded once per thread from the operating
/// system's randomness (through `RandomState`), not from a `getrandom` system call per event:
/// ids must be unique and unpredictable enough to never collide, not secret.
pub fn new_event_id(ts_ms: i64) -> EventId {
    let ms = u64::try_from(ts_ms).unwrap_or(0);
    let mut tail = [0u8; 10];
    let (a, b) = (next_random(), next_random());
    tail[..8].copy_from_slice(&a.to_le_bytes());
    tail[8..].copy_from_slice(&b.to_le_bytes()[..2]);
    let mut id = EventId([0u8; uuid::fmt::Hyphenated::LENGTH]);
    uuid::Builder::from_unix_timestamp_millis(ms, &tail)
        .into_uuid()
        .hyphenated()
        .encode_lower(&mut id.0);
    id
}

/// An event id: a UUIDv7 in its hyphenated lower-case text, kept inline (no allocation).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventId([u8; uuid::fmt::Hyphenated::LENGTH]);

impl EventId {
    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits and hyphens are written.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl std::fmt::Debug for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for EventId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): a full-period 64-bit generator.
fn next_random() -> u64 {
    use std::cell::Cell;
    use std::hash::{BuildHasher, Hasher};
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u32(std::process::id());
            h.finish()
        });
    }
    STATE.with(|s| {
        let x = s.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        s.set(x);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::record::{fingerprint, Item};

    #[test]
    fn event_json_matches_the_contract() {
        let common = Common {
            op_id: Some("op-1".into()),
            meta: Some("m \"q\"".into()),
            id_index: None,
        };
        let mut e = Event::new(
            "asset.incr",
            1_732_272_000_123,
            &common,
            vec![KeySeq {
                key: "u".into(),
                seq: 7,
            }],
        );
        e.changes = Some(vec![Change {
            key: "u".into(),
            field: "BDP".into(),
            delta: "10.43".into(),
            balance: "5210.43".into(),
        }]);
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap_or_default();
        assert_eq!(v["v"], 1);
        assert_eq!(v["type"], "asset.incr");
        assert_eq!(v["ts"], 1_732_272_000_123i64);
        assert_eq!(v["op"], "op-1");
        assert_eq!(v["meta"], "m \"q\"");
        assert_eq!(v["keys"][0]["seq"], 7);
        assert_eq!(v["changes"][0]["balance"], "5210.43");
        assert!(v.get("coupon").is_none());
        let id = v["id"].as_str().unwrap_or_default();
        let parsed = uuid::Uuid::parse_str(id).ok();
        assert_eq!(parsed.map(|u| u.get_version_num()), Some(7));
    }

    fn serde_json_of(e: &Event) -> String {
        serde_json::to_string(e).unwrap_or_default()
    }

    proptest::proptest! {
        #[test]
        fn hand_written_json_equals_serde(key in ".{0,12}", field in "[\\x00-\\x7f]{0,12}", meta in proptest::option::of(".{0,16}"),
                                          op in proptest::option::of("[ -~]{1,8}"), seq in proptest::num::i64::ANY,
                                          n in proptest::num::i64::ANY, kind in 0u8..4) {
            let common = Common { op_id: op.clone(), meta: meta.clone(), id_index: None };
            let mut e = Event::new("asset.incr", n, &common, vec![KeySeq { key: key.as_str().into(), seq }, KeySeq { key: field.as_str().into(), seq: n }]);
            match kind {
                0 => e.changes = Some(vec![
                    Change { key: key.as_str().into(), field: field.as_str().into(), delta: "-1.5".into(), balance: meta.clone().unwrap_or_default() },
                    Change { key: field.as_str().into(), field: key.as_str().into(), delta: "\"\\".into(), balance: "0".into() },
                ]),
                1 => e.coupon = Some(CouponState { campaign: key.clone(), user: meta.clone(), issue: op.as_ref().map(|_| seq),
                    total: n, issued: seq, remaining: -n, peruser: 3, start: 0, end: i64::MIN }),
                2 => e.hold = Some(crate::domain::holds::HoldState { id: field.clone(), kind: crate::domain::holds::Kind::Usage,
                    subject: meta.clone(), amount: key.clone(), status: crate::domain::holds::Status::Expired, created: n, expires: seq,
                    settled: op.clone() }),
                _ => e.usage = Some(UsageState { key: key.clone(), amount: op.clone(), used: field.clone(), limit: "10".into(),
                    period: "day", period_id: meta.clone().unwrap_or_default() }),
            }
            if let Some(op) = &op {
                e.fp = Some(fingerprint("ASSET.INCR", &[op.as_bytes().to_vec()]));
                e.reply = Some(if n % 2 == 0 { Reply::Ok } else { Reply::Array(vec![Item::Int(n), Item::Str(field.clone())]) });
            }
            proptest::prop_assert_eq!(e.to_json(), serde_json_of(&e));
        }

    }

    #[test]
    fn event_json_escapes_like_serde() {
        let common = Common {
            op_id: None,
            meta: Some("a\u{0}b\u{7f}\u{1f}\t\r\n\u{8}\u{c}\"\\é😀".into()),
            id_index: None,
        };
        let e = Event::new("usage.limit", -5, &common, vec![]);
        assert_eq!(e.to_json(), serde_json_of(&e));
    }

    #[test]
    fn event_ids_are_unique_within_one_millisecond() {
        let ids: std::collections::HashSet<EventId> =
            (0..10_000).map(|_| new_event_id(5)).collect();
        assert_eq!(ids.len(), 10_000);
    }

    #[test]
    fn event_ids_are_version_7_with_the_time_and_sort_by_it() {
        let a = uuid::Uuid::parse_str(new_event_id(1_732_272_000_123).as_str()).ok();
        let b = uuid::Uuid::parse_str(new_event_id(1_732_272_000_124).as_str()).ok();
        assert_eq!(a.map(|u| u.get_version_num()), Some(7));
        assert_eq!(a.map(|u| u.get_variant()), Some(uuid::Variant::RFC4122));
        let ms = a
            .and_then(|u| u.get_timestamp())
            .map(|t| t.to_unix())
            .map(|(s, n)| s * 1000 + u64::from(n / 1_000_000));
        assert_eq!(ms, Some(1_732_272_000_123));
        assert!(a < b);
    }
}
