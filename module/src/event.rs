//! Event encoding (docs/events.md) and the idempotency record: pure Rust, no Redis.

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_128;

use crate::args::Common;

pub const FORMAT_VERSION: u32 = 1;
/// The single stream field that carries the event JSON.
pub const STREAM_FIELD: &str = "event";

#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct KeySeq {
    pub key: String,
    pub seq: i64,
}

#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub key: String,
    pub field: String,
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
pub struct Event {
    pub v: u32,
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub ts: i64,
    pub op: Option<String>,
    pub meta: Option<String>,
    pub keys: Vec<KeySeq>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changes: Option<Vec<Change>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coupon: Option<CouponState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageState>,
}

impl Event {
    pub fn new(kind: &'static str, ts: i64, common: &Common, keys: Vec<KeySeq>) -> Event {
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
        }
    }

    pub fn to_json(&self) -> String {
        // Serialising plain structs of strings and integers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A UUIDv7 with the server's millisecond time and a random tail.
pub fn new_event_id(ts_ms: i64) -> String {
    let ms = u64::try_from(ts_ms).unwrap_or(0);
    let ts = uuid::Timestamp::from_unix(uuid::NoContext, ms / 1000, ((ms % 1000) * 1_000_000) as u32);
    uuid::Uuid::new_v7(ts).hyphenated().to_string()
}

/// One element of a stored reply.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(untagged)]
pub enum Item {
    Int(i64),
    Str(String),
}

/// A command's successful reply, as remembered for idempotent replays.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Ok,
    Array(Vec<Item>),
}

/// Fingerprint of a request: the command name and every argument except the `ID` pair,
/// length-prefixed so that argument boundaries matter.
pub fn fingerprint(command: &str, args_without_id: &[&[u8]]) -> String {
    let mut buf = Vec::with_capacity(64);
    for part in std::iter::once(command.as_bytes()).chain(args_without_id.iter().copied()) {
        buf.extend_from_slice(&(part.len() as u64).to_le_bytes());
        buf.extend_from_slice(part);
    }
    format!("{:032x}", xxh3_128(&buf))
}

/// The arguments without the `ID <op-id>` pair found by the parser at `id_index`, so the
/// fingerprint covers everything else.
pub fn args_without_id<'a>(args: &[&'a [u8]], id_index: Option<usize>) -> Vec<&'a [u8]> {
    args.iter()
        .enumerate()
        .filter(|(i, _)| id_index.map_or(true, |at| *i != at && *i != at + 1))
        .map(|(_, a)| *a)
        .collect()
}

/// The stored idempotency record: `<fingerprint>\n<reply JSON>`.
pub fn encode_record(fingerprint: &str, reply: &Reply) -> String {
    format!("{fingerprint}\n{}", serde_json::to_string(reply).unwrap_or_default())
}

pub enum Recorded {
    Same(Reply),
    Different,
    Corrupt,
}

pub fn check_record(stored: &[u8], fingerprint: &str) -> Recorded {
    let text = match std::str::from_utf8(stored) {
        Ok(t) => t,
        Err(_) => return Recorded::Corrupt,
    };
    let Some((fp, reply)) = text.split_once('\n') else { return Recorded::Corrupt };
    if fp != fingerprint {
        return Recorded::Different;
    }
    match serde_json::from_str(reply) {
        Ok(r) => Recorded::Same(r),
        Err(_) => Recorded::Corrupt,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_json_matches_the_contract() {
        let common = Common { op_id: Some("op-1".into()), meta: Some("m \"q\"".into()), id_index: None };
        let mut e = Event::new("asset.incr", 1_732_272_000_123, &common, vec![KeySeq { key: "u".into(), seq: 7 }]);
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

    #[test]
    fn event_ids_are_unique_within_one_millisecond() {
        let ids: std::collections::HashSet<String> = (0..10_000).map(|_| new_event_id(5)).collect();
        assert_eq!(ids.len(), 10_000);
    }

    #[test]
    fn fingerprint_ignores_only_the_id_option() {
        let a: Vec<&[u8]> = vec![b"k", b"f", b"1", b"ID", b"x", b"META", b"m"];
        let b: Vec<&[u8]> = vec![b"k", b"f", b"1", b"META", b"m", b"id", b"y"];
        let c: Vec<&[u8]> = vec![b"k", b"f", b"2", b"ID", b"x", b"META", b"m"];
        let b2: Vec<&[u8]> = vec![b"k", b"f", b"1", b"META", b"m"];
        let fa = fingerprint("ASSET.INCR", &args_without_id(&a, Some(3)));
        let fb = fingerprint("ASSET.INCR", &args_without_id(&b, Some(5)));
        let fb2 = fingerprint("ASSET.INCR", &args_without_id(&b2, None));
        let fc = fingerprint("ASSET.INCR", &args_without_id(&c, Some(3)));
        assert_eq!(fa, fb);
        assert_eq!(fa, fb2);
        assert_ne!(fa, fc);
        assert_ne!(fa, fingerprint("ASSET.TRANSFER", &args_without_id(&a, Some(3))));
    }

    #[test]
    fn record_round_trip() {
        let reply = Reply::Array(vec![Item::Int(3), Item::Str("9.5".into())]);
        let rec = encode_record("abc", &reply);
        assert!(matches!(check_record(rec.as_bytes(), "abc"), Recorded::Same(r) if r == reply));
        assert!(matches!(check_record(rec.as_bytes(), "abd"), Recorded::Different));
        assert!(matches!(check_record(b"garbage", "abc"), Recorded::Corrupt));
    }
}
