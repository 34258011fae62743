//! Holds (docs/holds.md): the records a hold leaves in its holds hash, the due-index
//! member, the rules of settling, and the `hold` object of hold events. Pure Rust.

use serde::Serialize;

use crate::domain::decimal::Decimal;
use crate::domain::error::CmdError;
use crate::domain::rules::Floor;

/// Shortest and longest hold TTL: 1 ms to 30 days.
pub const MIN_TTL_MS: i64 = 1;
pub const MAX_TTL_MS: i64 = 2_592_000_000;
/// A hold id is a positive integer of at most this many digits (a coupon issue number or a
/// per-key counter), so a longer argument is refused before any lookup.
pub const MAX_HOLD_ID_LEN: usize = 19;

/// Fields of the holds hash (docs/holds.md, "Layout in Redis").
pub const FIELD_LAST_ID: &[u8] = b"n";
pub const FIELD_OPEN: &[u8] = b"open";
pub const FIELD_DEADLINE: &[u8] = b"d";

/// What a hold holds: a balance field, a coupon user, or a usage quota (no subject).
#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Asset,
    Coupon,
    Usage,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Asset => "asset",
            Kind::Coupon => "coupon",
            Kind::Usage => "usage",
        }
    }
}

/// Where a hold is: open, or closed one of three ways.
#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Open,
    Settled,
    Voided,
    Expired,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Open => "open",
            Status::Settled => "settled",
            Status::Voided => "voided",
            Status::Expired => "expired",
        }
    }

    fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "settled" => Status::Settled,
            "voided" => Status::Voided,
            "expired" => Status::Expired,
            _ => return None,
        })
    }
}

/// An open hold, as its `o:<id>` field stores it: `<expires-ms>:<created-ms>:<amount>:<subject>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub expires_ms: i64,
    pub created_ms: i64,
    pub amount: Decimal,
    pub subject: String,
}

fn corrupt(what: &str) -> CmdError {
    CmdError::wrong_type(format!("a hold record of this key is corrupt ({what})"))
}

impl Hold {
    pub fn encode(&self) -> String {
        format!(
            "{}:{}:{}:{}",
            self.expires_ms, self.created_ms, self.amount, self.subject
        )
    }

    pub fn parse(raw: &[u8]) -> Result<Hold, CmdError> {
        let text = std::str::from_utf8(raw).map_err(|_| corrupt("not UTF-8"))?;
        let mut parts = text.splitn(4, ':');
        let mut int = |what| {
            parts
                .next()
                .and_then(|p| p.parse::<i64>().ok())
                .ok_or_else(|| corrupt(what))
        };
        let expires_ms = int("deadline")?;
        let created_ms = int("creation time")?;
        let amount = parts
            .next()
            .and_then(|p| Decimal::parse(p.as_bytes()).ok())
            .ok_or_else(|| corrupt("amount"))?;
        let subject = parts.next().ok_or_else(|| corrupt("subject"))?.to_string();
        Ok(Hold {
            expires_ms,
            created_ms,
            amount,
            subject,
        })
    }

    pub fn is_due(&self, now_ms: i64) -> bool {
        self.expires_ms <= now_ms
    }
}

/// A closed hold's tombstone (`x:<id>`): `<status>:<closed-ms>`.
pub fn encode_closed(status: Status, closed_ms: i64) -> String {
    format!("{}:{closed_ms}", status.as_str())
}

/// The status and closing time of a tombstone.
pub fn parse_closed(raw: &[u8]) -> Option<(Status, i64)> {
    let text = std::str::from_utf8(raw).ok()?;
    let (status, at) = text.split_once(':')?;
    Some((Status::parse(status)?, at.parse().ok()?))
}

/// `o:<id>`, `x:<id>` and `t:<subject>`.
pub fn open_field(id: &str) -> Vec<u8> {
    [b"o:", id.as_bytes()].concat()
}
pub fn closed_field(id: &str) -> Vec<u8> {
    [b"x:", id.as_bytes()].concat()
}
pub fn total_field(subject: &str) -> Vec<u8> {
    [b"t:", subject.as_bytes()].concat()
}

/// The due-index member of a hold: `<byte length of key>:<key>:<id>`.
pub fn due_member(key: &str, id: &str) -> String {
    format!("{}:{key}:{id}", key.len())
}

/// The key and hold id of a due-index member, `None` if it is not one.
pub fn parse_due_member(raw: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(raw).ok()?;
    let (len, rest) = text.split_once(':')?;
    let len: usize = len.parse().ok()?;
    let key = rest.get(..len)?;
    let id = rest.get(len..)?.strip_prefix(':')?;
    if id.is_empty() {
        return None;
    }
    Some((key.to_string(), id.to_string()))
}

/// A hold id argument: a canonical positive integer.
pub fn hold_id(raw: &[u8]) -> Result<String, CmdError> {
    let canonical = !raw.is_empty()
        && raw.len() <= MAX_HOLD_ID_LEN
        && raw.iter().all(u8::is_ascii_digit)
        && raw[0] != b'0';
    if !canonical {
        return Err(CmdError::err(format!(
            "hold id must be a positive integer of at most {MAX_HOLD_ID_LEN} digits"
        )));
    }
    Ok(String::from_utf8_lossy(raw).into_owned())
}

/// The next id of a key's holds after `last` (the stored `n`).
pub fn next_id(last: Option<&[u8]>) -> Result<(i64, String), CmdError> {
    let last = match last {
        None => 0,
        Some(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
            .filter(|n| *n >= 0)
            .ok_or_else(|| corrupt("last id"))?,
    };
    let next = last.checked_add(1).ok_or_else(|| corrupt("last id"))?;
    Ok((next, next.to_string()))
}

/// NOTFOUND for a hold that is not open, with the reason.
pub fn not_found(id: &str, closed: Option<Status>) -> CmdError {
    let why = match closed {
        Some(Status::Settled) => "was settled",
        Some(Status::Voided) => "was voided",
        Some(Status::Expired) => "expired",
        Some(Status::Open) | None => "is unknown",
    };
    CmdError::code("NOTFOUND", format!("hold {id} of this key {why}"))
}

/// How much a settle (or commit) spends: all of the hold by default, else `0 < amount <=
/// held` (`zero_ok`: a usage commit may spend nothing).
pub fn settle_amount(
    held: Decimal,
    amount: Option<Decimal>,
    zero_ok: bool,
) -> Result<Decimal, CmdError> {
    let Some(a) = amount else {
        return Ok(held);
    };
    if a.is_negative() || (a.is_zero() && !zero_ok) {
        let least = if zero_ok { "0 or more" } else { "positive" };
        return Err(CmdError::err(format!("the amount must be {least}")));
    }
    if a > held {
        return Err(CmdError::err(format!(
            "the amount {a} exceeds the hold's {held}"
        )));
    }
    Ok(a)
}

/// What is left available after holding `amount` out of `available` under `floor`:
/// INSUFFICIENT when it would go below the floor.
pub fn take_available(
    available: Decimal,
    amount: Decimal,
    floor: Floor,
) -> Result<Decimal, CmdError> {
    let after = available
        .checked_sub(amount)
        .ok_or_else(|| CmdError::err("the balance would overflow 20 integer digits"))?;
    let floor = match floor {
        Floor::Default => Some(Decimal::ZERO),
        Floor::At(f) => Some(f),
        Floor::None => None,
    };
    if let Some(f) = floor.filter(|f| after < *f) {
        return Err(CmdError::code(
            "INSUFFICIENT",
            format!("available {available} cannot cover {amount} (floor {f})"),
        ));
    }
    Ok(after)
}

/// The deadline of a hold made at `now_ms` with `ttl_ms` (bounded by the parser).
pub fn deadline(now_ms: i64, ttl_ms: i64) -> i64 {
    now_ms.saturating_add(ttl_ms)
}

/// The `hold` object of a hold event (docs/holds.md, "Events").
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct HoldState {
    pub id: String,
    pub kind: Kind,
    pub subject: Option<String>,
    pub amount: String,
    pub status: Status,
    pub created: i64,
    pub expires: i64,
    pub settled: Option<String>,
}

impl HoldState {
    /// The state of `hold` (id `id`) after an event that leaves it `status`.
    pub fn of(id: &str, kind: Kind, hold: &Hold, status: Status) -> HoldState {
        HoldState {
            id: id.to_string(),
            kind,
            subject: (kind != Kind::Usage).then(|| hold.subject.clone()),
            amount: hold.amount.to_string(),
            status,
            created: hold.created_ms,
            expires: hold.expires_ms,
            settled: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::parse(s.as_bytes()).unwrap()
    }

    #[test]
    fn a_hold_record_round_trips_with_colons_in_the_subject() {
        let h = Hold {
            expires_ms: 1_700_000_060_000,
            created_ms: 1_700_000_000_000,
            amount: d("10.43"),
            subject: "gold:eu".into(),
        };
        assert_eq!(h.encode(), "1700000060000:1700000000000:10.43:gold:eu");
        assert_eq!(Hold::parse(h.encode().as_bytes()).unwrap(), h);
        assert!(Hold::parse(b"x:1:1:a").is_err());
        assert!(Hold::parse(b"1:1:abc:a").is_err());
        assert!(Hold::parse(b"1:1:5").is_err());
    }

    #[test]
    fn tombstones_and_due_members_round_trip() {
        let t = encode_closed(Status::Voided, 42);
        assert_eq!(t, "voided:42");
        assert_eq!(parse_closed(t.as_bytes()), Some((Status::Voided, 42)));
        assert_eq!(parse_closed(b"open:1"), None);
        let m = due_member("acct:1:x", "17");
        assert_eq!(m, "8:acct:1:x:17");
        assert_eq!(
            parse_due_member(m.as_bytes()),
            Some(("acct:1:x".into(), "17".into()))
        );
        assert_eq!(parse_due_member(b"9:acct:1:x:17"), None);
        assert_eq!(parse_due_member(b"8:acct:1:x:"), None);
        assert_eq!(parse_due_member(b"x"), None);
    }

    #[test]
    fn hold_ids_are_canonical_positive_integers() {
        assert_eq!(hold_id(b"17").unwrap(), "17");
        for bad in [
            &b""[..],
            b"0",
            b"017",
            b"-1",
            b"1.5",
            b"12345678901234567890",
        ] {
            assert!(hold_id(bad).is_err(), "{bad:?}");
        }
        assert_eq!(next_id(None).unwrap(), (1, "1".into()));
        assert_eq!(next_id(Some(b"41")).unwrap(), (42, "42".into()));
        assert!(next_id(Some(b"-1")).is_err());
        assert!(next_id(Some(b"9223372036854775807")).is_err());
    }

    #[test]
    fn settling_spends_at_most_what_is_held() {
        assert_eq!(settle_amount(d("30"), None, false).unwrap(), d("30"));
        assert_eq!(
            settle_amount(d("30"), Some(d("25")), false).unwrap(),
            d("25")
        );
        assert!(settle_amount(d("30"), Some(d("30.01")), false).is_err());
        assert!(settle_amount(d("30"), Some(d("0")), false).is_err());
        assert_eq!(settle_amount(d("30"), Some(d("0")), true).unwrap(), d("0"));
        assert!(settle_amount(d("30"), Some(d("-1")), true).is_err());
    }

    #[test]
    fn a_hold_never_takes_available_below_the_floor() {
        assert_eq!(
            take_available(d("100"), d("30"), Floor::Default).unwrap(),
            d("70")
        );
        assert_eq!(
            take_available(d("30"), d("30"), Floor::Default).unwrap(),
            d("0")
        );
        let e = take_available(d("29.99"), d("30"), Floor::Default).unwrap_err();
        assert_eq!(e.code_name(), "INSUFFICIENT");
        assert!(take_available(d("10"), d("30"), Floor::At(d("-20"))).is_ok());
        assert!(take_available(d("10"), d("30"), Floor::At(d("-19"))).is_err());
        assert!(take_available(d("-5"), d("30"), Floor::None).is_ok());
    }

    #[test]
    fn not_found_says_why() {
        let msg = |s| not_found("7", s).to_string();
        assert_eq!(msg(None), "NOTFOUND hold 7 of this key is unknown");
        assert!(msg(Some(Status::Settled)).ends_with("was settled"));
        assert!(msg(Some(Status::Voided)).ends_with("was voided"));
        assert!(msg(Some(Status::Expired)).ends_with("expired"));
    }
}
