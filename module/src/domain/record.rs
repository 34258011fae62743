//! The op-id record (idempotency): the reply a command gave, as remembered, and the
//! fingerprint of the request it answered. Stored as `<fingerprint>\n<reply JSON>` under
//! the op-id's record key (`layout::HelperKeys::op`) and carried in the event (`fp`, `reply`)
//! so that `tally-shipper restore` can rebuild it. Pure Rust, no Redis.

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_128;

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

/// Fingerprint of a request (op-id record format 2): the command name and the parsed
/// request's canonical parts (`request::Canonical`), length-prefixed so that part boundaries
/// matter.
pub fn fingerprint(command: &str, parts: &[Vec<u8>]) -> String {
    hash_parts(std::iter::once(command.as_bytes()).chain(parts.iter().map(Vec::as_slice)))
}

/// Fingerprint of a request as op-id records of format 1 hold it (modules before 313b772,
/// and the `fp` of their events): the command name and every raw argument after it except
/// the `ID <op-id>` pair at `id_index`. Computed only to read a record or an event written
/// before an upgrade (docs/upgrade.md), never to write one.
pub fn fingerprint_v1(command: &str, raw: &[&[u8]], id_index: Option<usize>) -> String {
    let outside_id = |i: &usize| id_index.is_none_or(|at| *i != at && *i != at + 1);
    let args = raw
        .iter()
        .enumerate()
        .filter(|(i, _)| outside_id(i))
        .map(|(_, a)| *a);
    hash_parts(std::iter::once(command.as_bytes()).chain(args))
}

/// xxh3-128 of the length-prefixed parts, as 32 lowercase hex digits.
fn hash_parts<'a>(parts: impl Iterator<Item = &'a [u8]>) -> String {
    let mut buf = Vec::with_capacity(64);
    for part in parts {
        buf.extend_from_slice(&(part.len() as u64).to_le_bytes());
        buf.extend_from_slice(part);
    }
    let h = xxh3_128(&buf);
    const HEX: &[u8; 16] = b"0123456789abcdef";
    (0..32)
        .rev()
        .map(|i| HEX[((h >> (4 * i)) & 0xf) as usize] as char)
        .collect()
}

/// The stored idempotency record: `<fingerprint>\n<reply JSON>`.
pub fn encode_record(fingerprint: &str, reply: &Reply) -> String {
    format!(
        "{fingerprint}\n{}",
        serde_json::to_string(reply).unwrap_or_default()
    )
}

pub enum Recorded {
    Same(Reply),
    Different,
    Corrupt,
}

/// Reads a stored record against the request's fingerprint. A record written before an
/// upgrade holds the format-1 fingerprint (`fingerprint_v1`), which `v1` computes only when
/// the current one differs: the same request replays whichever format recorded it.
pub fn check_record(stored: &[u8], fingerprint: &str, v1: impl FnOnce() -> String) -> Recorded {
    let text = match std::str::from_utf8(stored) {
        Ok(t) => t,
        Err(_) => return Recorded::Corrupt,
    };
    let Some((fp, reply)) = text.split_once('\n') else {
        return Recorded::Corrupt;
    };
    if fp != fingerprint && fp != v1() {
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

    proptest::proptest! {
        #[test]
        fn fingerprint_hex_matches_format(a in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..8), 0..4)) {
            let mut buf = Vec::new();
            for part in std::iter::once(&b"X"[..]).chain(a.iter().map(Vec::as_slice)) {
                buf.extend_from_slice(&(part.len() as u64).to_le_bytes());
                buf.extend_from_slice(part);
            }
            proptest::prop_assert_eq!(fingerprint("X", &a), format!("{:032x}", xxh3_128(&buf)));
        }
    }

    #[test]
    fn fingerprint_separates_commands_and_part_boundaries() {
        let p = |v: &[&str]| v.iter().map(|s| s.as_bytes().to_vec()).collect::<Vec<_>>();
        assert_eq!(
            fingerprint("ASSET.INCR", &p(&["k", "f"])),
            fingerprint("ASSET.INCR", &p(&["k", "f"]))
        );
        assert_ne!(
            fingerprint("ASSET.INCR", &p(&["k", "f"])),
            fingerprint("ASSET.INCR", &p(&["kf"]))
        );
        assert_ne!(
            fingerprint("ASSET.INCR", &p(&["k", "f"])),
            fingerprint("ASSET.TRANSFER", &p(&["k", "f"]))
        );
    }

    #[test]
    fn record_round_trip() {
        let reply = Reply::Array(vec![Item::Int(3), Item::Str("9.5".into())]);
        let rec = encode_record("abc", &reply);
        let no_v1 = || "-".to_string();
        assert!(
            matches!(check_record(rec.as_bytes(), "abc", no_v1), Recorded::Same(r) if r == reply)
        );
        assert!(matches!(
            check_record(rec.as_bytes(), "abd", no_v1),
            Recorded::Different
        ));
        assert!(matches!(
            check_record(b"garbage", "abc", no_v1),
            Recorded::Corrupt
        ));
    }

    #[test]
    fn a_format_1_record_replays_the_same_request_only() {
        let reply = Reply::Array(vec![Item::Str("10".into())]);
        let raw: Vec<&[u8]> = vec![b"k", b"f", b"10", b"ID", b"op", b"META", b"m"];
        let v1 = fingerprint_v1("ASSET.INCR", &raw, Some(3));
        let rec = encode_record(&v1, &reply);
        let same = || v1.clone();
        assert!(
            matches!(check_record(rec.as_bytes(), "now", same), Recorded::Same(r) if r == reply)
        );
        let other: Vec<&[u8]> = vec![b"k", b"f", b"11", b"ID", b"op", b"META", b"m"];
        let differs = || fingerprint_v1("ASSET.INCR", &other, Some(3));
        assert!(matches!(
            check_record(rec.as_bytes(), "now", differs),
            Recorded::Different
        ));
    }

    /// The format-1 scheme as modules before 313b772 computed it (their unit test, ported).
    #[test]
    fn fingerprint_v1_ignores_only_the_id_option() {
        let a: Vec<&[u8]> = vec![b"k", b"f", b"1", b"ID", b"x", b"META", b"m"];
        let b: Vec<&[u8]> = vec![b"k", b"f", b"1", b"META", b"m", b"id", b"y"];
        let c: Vec<&[u8]> = vec![b"k", b"f", b"2", b"ID", b"x", b"META", b"m"];
        let b2: Vec<&[u8]> = vec![b"k", b"f", b"1", b"META", b"m"];
        let fa = fingerprint_v1("ASSET.INCR", &a, Some(3));
        assert_eq!(fa, fingerprint_v1("ASSET.INCR", &b, Some(5)));
        assert_eq!(fa, fingerprint_v1("ASSET.INCR", &b2, None));
        assert_ne!(fa, fingerprint_v1("ASSET.INCR", &c, Some(3)));
        assert_ne!(fa, fingerprint_v1("ASSET.TRANSFER", &a, Some(3)));
        let flat: Vec<u8> = [&b"ASSET.INCR"[..], b"k", b"f", b"1", b"META", b"m"]
            .iter()
            .flat_map(|p| {
                (p.len() as u64)
                    .to_le_bytes()
                    .into_iter()
                    .chain(p.iter().copied())
            })
            .collect();
        assert_eq!(fa, format!("{:032x}", xxh3_128(&flat)));
    }
}
