//! The decisions each command makes, as pure functions of the stored state and the
//! request: bound checks, coupon stock and per-user limits, usage quotas and periods.
//! The command layer reads state, calls these, and writes what they return.

use crate::args::Floor;
use crate::decimal::Decimal;
use crate::error::CmdError;
use crate::period::Period;

/// A stored balance (or absent = 0), parsed strictly.
pub fn stored_decimal(what: &str, raw: Option<&[u8]>) -> Result<Decimal, CmdError> {
    stored_decimal_lazy(raw, || what.to_string())
}

/// `stored_decimal` with the name of the value built only for the error message.
pub fn stored_decimal_lazy(raw: Option<&[u8]>, what: impl FnOnce() -> String) -> Result<Decimal, CmdError> {
    match raw {
        None => Ok(Decimal::ZERO),
        Some(bytes) => Decimal::parse(bytes)
            .map_err(|_| CmdError::wrong_type(format!("{} holds a value that is not a decimal", what()))),
    }
}

/// Applies `delta` to `current` under the bounds. A bound only blocks a change that moves
/// the balance further past it: a deposit into an overdrawn account is always allowed.
pub fn apply_delta(current: Decimal, delta: Decimal, floor: Floor, ceil: Option<Decimal>) -> Result<Decimal, CmdError> {
    let next = current
        .checked_add(delta)
        .ok_or_else(|| CmdError::err("the balance would overflow 20 integer digits"))?;
    let floor = match floor {
        Floor::Default => Some(Decimal::ZERO),
        Floor::At(f) => Some(f),
        Floor::None => None,
    };
    if let Some(f) = floor {
        if delta.is_negative() && next < f {
            return Err(CmdError::code(
                "INSUFFICIENT",
                format!("balance {current} cannot cover {} (floor {f})", delta.neg()),
            ));
        }
    }
    if let Some(c) = ceil {
        if delta.is_positive() && next > c {
            return Err(CmdError::code("LIMIT", format!("balance would exceed the ceiling {c}")));
        }
    }
    Ok(next)
}

/// The reserved field that marks a hash as a tally campaign (`coupon`) or usage counter
/// (`usage`). A hash without it is an asset hash; `ASSET.*` never writes it.
pub const KIND_FIELD: &str = "kind";
pub const KIND_COUPON: &[u8] = b"coupon";
pub const KIND_USAGE: &[u8] = b"usage";

/// What the `kind` field of an existing hash says it is, for error messages.
fn kind_name(kind: &[u8]) -> &'static str {
    if kind == KIND_COUPON {
        "a tally coupon campaign"
    } else if kind == KIND_USAGE {
        "a tally usage counter"
    } else {
        "a hash with tally's reserved field 'kind'"
    }
}

/// `ASSET.*` on an existing hash: refused (WRONGTYPE) when the hash carries a `kind`.
pub fn check_asset_hash(kind: Option<&[u8]>) -> Result<(), CmdError> {
    match kind {
        None => Ok(()),
        Some(k) => Err(CmdError::wrong_type(format!("the key is {}, not an asset hash", kind_name(k)))),
    }
}

/// `COUPON.*` / `USAGE.*` on an existing hash: its `kind` must be `want`.
pub fn check_kind(kind: Option<&[u8]>, want: &[u8]) -> Result<(), CmdError> {
    match kind {
        Some(k) if k == want => Ok(()),
        Some(k) => Err(CmdError::wrong_type(format!("the key is {}, not {}", kind_name(k), kind_name(want)))),
        None => Err(CmdError::wrong_type(format!("the key is an asset hash, not {}", kind_name(want)))),
    }
}

/// A coupon campaign as stored in its hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Campaign {
    pub total: i64,
    /// Claims currently held.
    pub issued: i64,
    /// Last issue number handed out (never reused).
    pub last_issue: i64,
    pub per_user: i64,
    pub start_ms: i64,
    pub end_ms: i64,
}

impl Campaign {
    pub fn remaining(&self) -> i64 {
        self.total.saturating_sub(self.issued).max(0)
    }

    /// Claim for a user who currently holds `held` issue numbers.
    /// Returns the new issue number; the caller stores the updated campaign.
    pub fn claim(&mut self, held: &[i64], now_ms: i64) -> Result<i64, CmdError> {
        if now_ms < self.start_ms {
            return Err(CmdError::code("CLOSED", "the campaign has not started"));
        }
        if self.end_ms != 0 && now_ms >= self.end_ms {
            return Err(CmdError::code("CLOSED", "the campaign has ended"));
        }
        if held.len() as i64 >= self.per_user {
            return Err(CmdError::code(
                "DUPLICATE",
                format!("the user already holds {} claim(s), the limit per user", held.len()),
            ));
        }
        if self.issued >= self.total {
            return Err(CmdError::code("SOLDOUT", "no coupons remain"));
        }
        let corrupt = || CmdError::wrong_type("the campaign's counters are out of range (edited by hand?)");
        let issued = self.issued.checked_add(1).ok_or_else(corrupt)?;
        let last_issue = self.last_issue.checked_add(1).ok_or_else(corrupt)?;
        self.issued = issued;
        self.last_issue = last_issue;
        Ok(self.last_issue)
    }

    /// Gives back the user's most recent claim; returns the released issue number.
    pub fn release(&mut self, held: &[i64]) -> Result<i64, CmdError> {
        let last = *held
            .last()
            .ok_or_else(|| CmdError::code("NOTFOUND", "the user holds no claim in this campaign"))?;
        if self.issued <= 0 {
            return Err(CmdError::wrong_type("the campaign's issued counter is corrupt"));
        }
        self.issued -= 1;
        Ok(last)
    }
}

/// The claims a user holds, stored as `"3,17"`.
pub fn parse_held(raw: Option<&[u8]>) -> Result<Vec<i64>, CmdError> {
    let Some(raw) = raw else { return Ok(Vec::new()) };
    let text = std::str::from_utf8(raw).map_err(|_| CmdError::wrong_type("corrupt holder record"))?;
    if text.is_empty() {
        return Ok(Vec::new());
    }
    text.split(',')
        .map(|n| n.parse::<i64>().map_err(|_| CmdError::wrong_type("corrupt holder record")))
        .collect()
}

pub fn format_held(held: &[i64]) -> String {
    held.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
}

/// A usage counter as stored in its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    pub limit: Decimal,
    pub period: Period,
    /// The period the stored `used` counts in.
    pub period_id: String,
    pub used: Decimal,
}

impl Usage {
    /// The usage as seen at `now_ms`: only a period LATER than the stored one starts from 0.
    /// A stored period ahead of the clock (the clock stepped back, or a failover to a node
    /// whose clock is behind) keeps counting in the stored period.
    pub fn at(&self, now_ms: i64) -> Usage {
        let current = self.period.id_at(now_ms);
        if crate::period::is_later(&current, &self.period_id) {
            Usage { period_id: current, used: Decimal::ZERO, ..self.clone() }
        } else {
            self.clone()
        }
    }

    pub fn remaining(&self) -> Decimal {
        let r = self.limit.checked_sub(self.used).unwrap_or(Decimal::ZERO);
        if r.is_negative() {
            Decimal::ZERO
        } else {
            r
        }
    }

    /// Consumes `amount` at `now_ms` if it fits; returns the state to store.
    pub fn consume(&self, amount: Decimal, now_ms: i64) -> Result<Usage, CmdError> {
        let mut u = self.at(now_ms);
        let next = u
            .used
            .checked_add(amount)
            .ok_or_else(|| CmdError::err("usage would overflow 20 integer digits"))?;
        if next > u.limit {
            return Err(CmdError::code(
                "LIMIT",
                format!("used {} + {amount} would exceed the limit {}", u.used, u.limit),
            ));
        }
        u.used = next;
        Ok(u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::parse(s.as_bytes()).unwrap_or_else(|e| panic!("{s}: {e}")) // ok: test-only helper
    }

    #[test]
    fn default_floor_is_zero() {
        assert_eq!(apply_delta(d("5"), d("-5"), Floor::Default, None), Ok(d("0")));
        let e = apply_delta(d("5"), d("-5.01"), Floor::Default, None);
        assert_eq!(e.map_err(|e| e.code_name()), Err("INSUFFICIENT"));
    }

    #[test]
    fn explicit_bounds() {
        assert_eq!(apply_delta(d("0"), d("-50"), Floor::At(d("-100")), None), Ok(d("-50")));
        assert!(apply_delta(d("0"), d("-101"), Floor::At(d("-100")), None).is_err());
        assert_eq!(apply_delta(d("0"), d("-1000000"), Floor::None, None), Ok(d("-1000000")));
        assert_eq!(apply_delta(d("9"), d("1"), Floor::Default, Some(d("10"))), Ok(d("10")));
        let e = apply_delta(d("9"), d("1.5"), Floor::Default, Some(d("10")));
        assert_eq!(e.map_err(|e| e.code_name()), Err("LIMIT"));
    }

    #[test]
    fn bounds_never_block_moving_back_inside() {
        // Overdrawn account may receive a deposit that still leaves it below the floor.
        assert_eq!(apply_delta(d("-10"), d("3"), Floor::Default, None), Ok(d("-7")));
        // Above a ceiling may still withdraw.
        assert_eq!(apply_delta(d("20"), d("-1"), Floor::Default, Some(d("10"))), Ok(d("19")));
    }

    #[test]
    fn overflow_is_an_error() {
        let max = d("99999999999999999999");
        assert!(apply_delta(max, d("1"), Floor::Default, None).is_err());
    }

    #[test]
    fn stored_values_must_be_decimals() {
        assert_eq!(stored_decimal("f", None), Ok(Decimal::ZERO));
        assert_eq!(stored_decimal("f", Some(b"100.50")), Ok(d("100.5")));
        assert_eq!(stored_decimal("f", Some(b"abc")).map_err(|e| e.code_name()), Err("WRONGTYPE"));
    }

    fn campaign(total: i64, per_user: i64) -> Campaign {
        Campaign { total, issued: 0, last_issue: 0, per_user, start_ms: 0, end_ms: 0 }
    }

    #[test]
    fn claims_stop_at_the_stock() {
        let mut c = campaign(3, 1);
        let issues: Vec<i64> = (0..3).filter_map(|_| c.claim(&[], 1).ok()).collect();
        assert_eq!(issues, vec![1, 2, 3]);
        assert_eq!(c.claim(&[], 1).map_err(|e| e.code_name()), Err("SOLDOUT"));
        assert_eq!(c.remaining(), 0);
    }

    #[test]
    fn per_user_limit_and_window() {
        let mut c = campaign(10, 2);
        assert!(c.claim(&[1, 2], 1).map_err(|e| e.code_name()) == Err("DUPLICATE"));
        c.start_ms = 100;
        c.end_ms = 200;
        assert_eq!(c.claim(&[], 99).map_err(|e| e.code_name()), Err("CLOSED"));
        assert_eq!(c.claim(&[], 200).map_err(|e| e.code_name()), Err("CLOSED"));
        assert_eq!(c.claim(&[], 150), Ok(1));
    }

    #[test]
    fn release_returns_stock_without_reusing_numbers() {
        let mut c = campaign(1, 1);
        assert_eq!(c.claim(&[], 0), Ok(1));
        assert_eq!(c.release(&[1]), Ok(1));
        assert_eq!(c.remaining(), 1);
        assert_eq!(c.claim(&[], 0), Ok(2));
        assert_eq!(c.release(&[]).map_err(|e| e.code_name()), Err("NOTFOUND"));
    }

    #[test]
    fn holder_records() {
        assert_eq!(parse_held(Some(b"3,17")), Ok(vec![3, 17]));
        assert_eq!(format_held(&[3, 17]), "3,17");
        assert_eq!(parse_held(None), Ok(vec![]));
        assert!(parse_held(Some(b"x")).is_err());
    }

    #[test]
    fn asset_commands_refuse_campaigns_and_counters() {
        assert_eq!(check_asset_hash(None), Ok(()));
        for kind in [&b"coupon"[..], b"usage", b"other"] {
            assert_eq!(check_asset_hash(Some(kind)).map_err(|e| e.code_name()), Err("WRONGTYPE"));
        }
        assert_eq!(check_kind(Some(b"coupon"), KIND_COUPON), Ok(()));
        assert_eq!(check_kind(Some(b"usage"), KIND_COUPON).map_err(|e| e.code_name()), Err("WRONGTYPE"));
        assert_eq!(check_kind(None, KIND_USAGE).map_err(|e| e.code_name()), Err("WRONGTYPE"));
    }

    #[test]
    fn hand_edited_counters_at_the_limit_are_errors_not_wraps() {
        let mut c = Campaign { total: i64::MAX, issued: i64::MAX - 1, last_issue: i64::MAX, per_user: 1, start_ms: 0, end_ms: 0 };
        let before = c;
        assert_eq!(c.claim(&[], 1).map_err(|e| e.code_name()), Err("WRONGTYPE"));
        assert_eq!(c, before);
        let c = Campaign { total: 5, issued: i64::MIN, last_issue: 0, per_user: 1, start_ms: 0, end_ms: 0 };
        assert_eq!(c.remaining(), i64::MAX);
    }

    #[test]
    fn a_stored_period_ahead_of_the_clock_does_not_reset() {
        let day = 86_400_000;
        // Stored in day 2 (1970-01-03); the clock now says day 1.
        let u = Usage { limit: d("10"), period: Period::Day, period_id: Period::Day.id_at(2 * day), used: d("9") };
        assert_eq!(u.at(day), u);
        assert_eq!(u.consume(d("2"), day).map_err(|e| e.code_name()), Err("LIMIT"));
        assert_eq!(u.consume(d("1"), day).map(|u| (u.used, u.period_id)), Ok((d("10"), "1970-01-03".to_string())));
        // A later period still resets.
        assert_eq!(u.at(3 * day).used, d("0"));
        let m = Usage { limit: d("10"), period: Period::Month, period_id: "1970-02".into(), used: d("9") };
        assert_eq!(m.at(0).used, d("9"));
    }

    #[test]
    fn usage_limit_and_period_reset() {
        let day = 86_400_000;
        let u = Usage { limit: d("10"), period: Period::Day, period_id: Period::Day.id_at(0), used: d("9") };
        assert_eq!(u.consume(d("1"), 5).map(|u| u.used), Ok(d("10")));
        assert_eq!(u.consume(d("2"), 5).map_err(|e| e.code_name()), Err("LIMIT"));
        let next_day = u.consume(d("2"), day).map(|u| (u.used, u.period_id));
        assert_eq!(next_day, Ok((d("2"), "1970-01-02".to_string())));
        assert_eq!(u.at(day).remaining(), d("10"));
    }
}
