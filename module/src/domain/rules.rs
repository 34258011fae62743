//! The decisions each command makes, as pure functions of the stored state and the
//! request: bound checks, coupon stock and per-user limits, usage quotas and periods.
//! The command layer reads state, calls these, and writes what they return.

use crate::domain::decimal::Decimal;
use crate::domain::error::CmdError;
use crate::domain::layout::{HolderField, KIND_COUPON, KIND_USAGE};
use crate::domain::period::{self, Period};

/// The lower bound of an `ASSET.*` balance: the default floor 0, another one (`FLOOR n`),
/// or none (`NOFLOOR`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Floor {
    Default,
    At(Decimal),
    None,
}

/// A stored balance (or absent = 0), parsed strictly.
pub fn stored_decimal(what: &str, raw: Option<&[u8]>) -> Result<Decimal, CmdError> {
    stored_decimal_lazy(raw, || what.to_string())
}

/// `stored_decimal` with the name of the value built only for the error message.
pub fn stored_decimal_lazy(
    raw: Option<&[u8]>,
    what: impl FnOnce() -> String,
) -> Result<Decimal, CmdError> {
    match raw {
        None => Ok(Decimal::ZERO),
        Some(bytes) => Decimal::parse(bytes).map_err(|_| {
            CmdError::wrong_type(format!("{} holds a value that is not a decimal", what()))
        }),
    }
}

/// Applies `delta` to `current` under the bounds. A bound only blocks a change that moves
/// the balance further past it: a deposit into an overdrawn account is always allowed.
pub fn apply_delta(
    current: Decimal,
    delta: Decimal,
    floor: Floor,
    ceil: Option<Decimal>,
) -> Result<Decimal, CmdError> {
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
                format!("balance {current} cannot cover {} (floor {f})", -delta),
            ));
        }
    }
    if let Some(c) = ceil {
        if delta.is_positive() && next > c {
            return Err(CmdError::code(
                "LIMIT",
                format!("balance would exceed the ceiling {c}"),
            ));
        }
    }
    Ok(next)
}

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
        Some(k) => Err(CmdError::wrong_type(format!(
            "the key is {}, not an asset hash",
            kind_name(k)
        ))),
    }
}

/// `COUPON.*` / `USAGE.*` on an existing hash: its `kind` must be `want`.
pub fn check_kind(kind: Option<&[u8]>, want: &[u8]) -> Result<(), CmdError> {
    match kind {
        Some(k) if k == want => Ok(()),
        Some(k) => Err(CmdError::wrong_type(format!(
            "the key is {}, not {}",
            kind_name(k),
            kind_name(want)
        ))),
        None => Err(CmdError::wrong_type(format!(
            "the key is an asset hash, not {}",
            kind_name(want)
        ))),
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

    /// Claim for a user who currently holds `held` claims.
    /// Returns the new issue number; the caller stores the updated campaign.
    pub fn claim(&mut self, held: i64, now_ms: i64) -> Result<i64, CmdError> {
        if now_ms < self.start_ms {
            return Err(CmdError::code("CLOSED", "the campaign has not started"));
        }
        if self.end_ms != 0 && now_ms >= self.end_ms {
            return Err(CmdError::code("CLOSED", "the campaign has ended"));
        }
        if held >= self.per_user {
            return Err(CmdError::code(
                "DUPLICATE",
                format!("the user already holds {held} claim(s), the limit per user"),
            ));
        }
        if self.issued >= self.total {
            return Err(CmdError::code("SOLDOUT", "no coupons remain"));
        }
        let corrupt =
            || CmdError::wrong_type("the campaign's counters are out of range (edited by hand?)");
        let issued = self.issued.checked_add(1).ok_or_else(corrupt)?;
        let last_issue = self.last_issue.checked_add(1).ok_or_else(corrupt)?;
        self.issued = issued;
        self.last_issue = last_issue;
        Ok(self.last_issue)
    }

    /// Gives back the user's most recent claim (`newest`, None when the user holds none);
    /// returns the released issue number.
    pub fn release(&mut self, newest: Option<i64>) -> Result<i64, CmdError> {
        let last = newest.ok_or_else(|| {
            CmdError::code("NOTFOUND", "the user holds no claim in this campaign")
        })?;
        if self.issued <= 0 {
            return Err(CmdError::wrong_type(
                "the campaign's issued counter is corrupt",
            ));
        }
        self.issued -= 1;
        Ok(last)
    }
}

/// The claims a user holds in the legacy layout (one field `u:<user>` = `"3,17"`).
pub fn parse_held(raw: Option<&[u8]>) -> Result<Vec<i64>, CmdError> {
    let Some(raw) = raw else {
        return Ok(Vec::new());
    };
    let text =
        std::str::from_utf8(raw).map_err(|_| CmdError::wrong_type("corrupt holder record"))?;
    if text.is_empty() {
        return Ok(Vec::new());
    }
    text.split(',')
        .map(|n| {
            n.parse::<i64>()
                .map_err(|_| CmdError::wrong_type("corrupt holder record"))
        })
        .collect()
}

/// A canonical non-negative decimal integer (no sign, no leading zero, fits i64).
fn canonical_count(raw: &[u8]) -> Option<i64> {
    let digits_only = !raw.is_empty() && raw.iter().all(u8::is_ascii_digit);
    if !digits_only || (raw.len() > 1 && raw.first() == Some(&b'0')) {
        return None;
    }
    std::str::from_utf8(raw).ok()?.parse::<i64>().ok()
}

/// A user's holding as stored: counted (`c:<user>`, absent = 0) or a legacy list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holding {
    Counted(i64),
    /// The issues of a legacy `u:<user>` record, in claim order.
    Legacy(Vec<i64>),
}

/// Writes to the holder fields: the field and its new value (`None` deletes it).
pub type HolderWrites = smallvec::SmallVec<[(HolderField, Option<i64>); 3]>;

impl Holding {
    /// From a stored `c:<user>`.
    pub fn from_count(raw: &[u8]) -> Result<Holding, CmdError> {
        canonical_count(raw).map(Holding::Counted).ok_or_else(|| {
            CmdError::wrong_type(
                "corrupt holder record: the claim count is not a non-negative integer",
            )
        })
    }

    /// From the legacy `u:<user>` of a user without `c:<user>` (absent = no claim).
    pub fn from_legacy(raw: Option<&[u8]>) -> Result<Holding, CmdError> {
        match raw {
            None => Ok(Holding::Counted(0)),
            Some(_) => parse_held(raw).map(Holding::Legacy),
        }
    }

    /// How many claims the user holds.
    pub fn count(&self) -> i64 {
        match self {
            Holding::Counted(n) => *n,
            Holding::Legacy(held) => held.len() as i64,
        }
    }

    /// Where the user's newest issue number is: known already (legacy list), in a field
    /// still to read (`h:<count>:<user>`), or nowhere (no claim).
    pub fn newest(&self) -> Newest {
        match self {
            Holding::Counted(n) if *n > 0 => Newest::Stored(HolderField::Issue(*n)),
            Holding::Counted(_) => Newest::Known(None),
            Holding::Legacy(held) => Newest::Known(held.last().copied()),
        }
    }

    /// The writes that add `issue` as the user's newest claim.
    pub fn claim_writes(&self, issue: i64) -> HolderWrites {
        match self {
            Holding::Counted(n) => {
                let k = n.saturating_add(1);
                smallvec::smallvec![
                    (HolderField::Count, Some(k)),
                    (HolderField::Issue(k), Some(issue))
                ]
            }
            Holding::Legacy(held) => converted(held, Some(issue)),
        }
    }

    /// The writes that remove the user's newest claim (none when there is none).
    pub fn release_writes(&self) -> HolderWrites {
        match self {
            Holding::Counted(n) if *n > 0 => {
                let rest = n - 1;
                smallvec::smallvec![
                    (HolderField::Issue(*n), None),
                    (HolderField::Count, (rest > 0).then_some(rest))
                ]
            }
            Holding::Counted(_) => HolderWrites::new(),
            Holding::Legacy(held) => {
                converted(held.split_last().map_or(&[][..], |(_, rest)| rest), None)
            }
        }
    }
}

/// See [`Holding::newest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Newest {
    Known(Option<i64>),
    Stored(HolderField),
}

/// A stored `h:<k>:<user>` (absent is corrupt: the count says it exists).
pub fn parse_issue(raw: Option<&[u8]>) -> Result<i64, CmdError> {
    raw.and_then(canonical_count)
        .filter(|n| *n > 0)
        .ok_or_else(|| {
            CmdError::wrong_type(
                "corrupt holder record: the user's newest claim is missing or not an issue number",
            )
        })
}

/// A legacy record replaced by the counted layout holding `held` and then `newest`.
fn converted(held: &[i64], newest: Option<i64>) -> HolderWrites {
    let count = held.len() as i64 + i64::from(newest.is_some());
    let mut w: HolderWrites = smallvec::smallvec![(HolderField::Legacy, None)];
    if count > 0 {
        w.push((HolderField::Count, Some(count)));
    }
    w.extend(
        held.iter()
            .copied()
            .chain(newest)
            .zip(1..)
            .map(|(issue, k)| (HolderField::Issue(k), Some(issue))),
    );
    w
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
        if period::is_later(&current, &self.period_id) {
            Usage {
                period_id: current,
                used: Decimal::ZERO,
                ..self.clone()
            }
        } else {
            self.clone()
        }
    }

    /// What is left under the limit with `reserved` held by open reservations.
    pub fn remaining_with(&self, reserved: Decimal) -> Decimal {
        let r = self
            .limit
            .checked_sub(self.used)
            .and_then(|r| r.checked_sub(reserved))
            .unwrap_or(Decimal::ZERO);
        if r.is_negative() {
            Decimal::ZERO
        } else {
            r
        }
    }

    /// Consumes `amount` at `now_ms` if it fits beside the `reserved` amount of open
    /// reservations (USAGE.RESERVE); returns the state to store.
    pub fn consume(
        &self,
        amount: Decimal,
        reserved: Decimal,
        now_ms: i64,
    ) -> Result<Usage, CmdError> {
        let mut u = self.at(now_ms);
        let overflow = || CmdError::err("usage would overflow 20 integer digits");
        let next = u.used.checked_add(amount).ok_or_else(overflow)?;
        if next.checked_add(reserved).ok_or_else(overflow)? > u.limit {
            return Err(CmdError::code(
                "LIMIT",
                format!(
                    "used {} + reserved {reserved} + {amount} would exceed the limit {}",
                    u.used, u.limit
                ),
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
        assert_eq!(
            apply_delta(d("5"), d("-5"), Floor::Default, None),
            Ok(d("0"))
        );
        let e = apply_delta(d("5"), d("-5.01"), Floor::Default, None);
        assert_eq!(e.map_err(|e| e.code_name()), Err("INSUFFICIENT"));
    }

    #[test]
    fn explicit_bounds() {
        assert_eq!(
            apply_delta(d("0"), d("-50"), Floor::At(d("-100")), None),
            Ok(d("-50"))
        );
        assert!(apply_delta(d("0"), d("-101"), Floor::At(d("-100")), None).is_err());
        assert_eq!(
            apply_delta(d("0"), d("-1000000"), Floor::None, None),
            Ok(d("-1000000"))
        );
        assert_eq!(
            apply_delta(d("9"), d("1"), Floor::Default, Some(d("10"))),
            Ok(d("10"))
        );
        let e = apply_delta(d("9"), d("1.5"), Floor::Default, Some(d("10")));
        assert_eq!(e.map_err(|e| e.code_name()), Err("LIMIT"));
    }

    #[test]
    fn bounds_never_block_moving_back_inside() {
        // Overdrawn account may receive a deposit that still leaves it below the floor.
        assert_eq!(
            apply_delta(d("-10"), d("3"), Floor::Default, None),
            Ok(d("-7"))
        );
        // Above a ceiling may still withdraw.
        assert_eq!(
            apply_delta(d("20"), d("-1"), Floor::Default, Some(d("10"))),
            Ok(d("19"))
        );
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
        assert_eq!(
            stored_decimal("f", Some(b"abc")).map_err(|e| e.code_name()),
            Err("WRONGTYPE")
        );
    }

    fn campaign(total: i64, per_user: i64) -> Campaign {
        Campaign {
            total,
            issued: 0,
            last_issue: 0,
            per_user,
            start_ms: 0,
            end_ms: 0,
        }
    }

    #[test]
    fn claims_stop_at_the_stock() {
        let mut c = campaign(3, 1);
        let issues: Vec<i64> = (0..3).filter_map(|_| c.claim(0, 1).ok()).collect();
        assert_eq!(issues, vec![1, 2, 3]);
        assert_eq!(c.claim(0, 1).map_err(|e| e.code_name()), Err("SOLDOUT"));
        assert_eq!(c.remaining(), 0);
    }

    #[test]
    fn per_user_limit_and_window() {
        let mut c = campaign(10, 2);
        assert!(c.claim(2, 1).map_err(|e| e.code_name()) == Err("DUPLICATE"));
        c.start_ms = 100;
        c.end_ms = 200;
        assert_eq!(c.claim(0, 99).map_err(|e| e.code_name()), Err("CLOSED"));
        assert_eq!(c.claim(0, 200).map_err(|e| e.code_name()), Err("CLOSED"));
        assert_eq!(c.claim(0, 150), Ok(1));
    }

    #[test]
    fn release_returns_stock_without_reusing_numbers() {
        let mut c = campaign(1, 1);
        assert_eq!(c.claim(0, 0), Ok(1));
        assert_eq!(c.release(Some(1)), Ok(1));
        assert_eq!(c.remaining(), 1);
        assert_eq!(c.claim(0, 0), Ok(2));
        assert_eq!(c.release(None).map_err(|e| e.code_name()), Err("NOTFOUND"));
    }

    #[test]
    fn legacy_holder_records() {
        assert_eq!(parse_held(Some(b"3,17")), Ok(vec![3, 17]));
        assert_eq!(parse_held(None), Ok(vec![]));
        assert!(parse_held(Some(b"x")).is_err());
        assert_eq!(Holding::from_legacy(None), Ok(Holding::Counted(0)));
        assert_eq!(
            Holding::from_legacy(Some(b"3,17")),
            Ok(Holding::Legacy(vec![3, 17]))
        );
        assert_eq!(
            Holding::from_legacy(Some(b"3,x")).map_err(|e| e.code_name()),
            Err("WRONGTYPE")
        );
    }

    #[test]
    fn counts_and_issues_must_be_canonical() {
        assert_eq!(Holding::from_count(b"0"), Ok(Holding::Counted(0)));
        assert_eq!(Holding::from_count(b"1000"), Ok(Holding::Counted(1000)));
        for bad in [
            &b""[..],
            b"-1",
            b"01",
            b"+1",
            b" 1",
            b"1.0",
            b"x",
            b"99999999999999999999",
        ] {
            let got = Holding::from_count(bad).map_err(|e| e.code_name());
            assert_eq!(got, Err("WRONGTYPE"), "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(parse_issue(Some(b"17")), Ok(17));
        for bad in [None, Some(&b"0"[..]), Some(b"-3"), Some(b"017"), Some(b"")] {
            assert_eq!(
                parse_issue(bad).map_err(|e| e.code_name()),
                Err("WRONGTYPE"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_counted_claim_or_release_writes_two_fields_whatever_the_count() {
        use HolderField::{Count, Issue};
        let first = Holding::Counted(0);
        assert_eq!(first.count(), 0);
        assert_eq!(
            first.claim_writes(7).as_slice(),
            [(Count, Some(1)), (Issue(1), Some(7))]
        );
        assert_eq!(first.newest(), Newest::Known(None));
        assert!(first.release_writes().is_empty());
        let many = Holding::Counted(999);
        assert_eq!(
            many.claim_writes(5000).as_slice(),
            [(Count, Some(1000)), (Issue(1000), Some(5000))]
        );
        let full = Holding::Counted(1000);
        assert_eq!(full.newest(), Newest::Stored(Issue(1000)));
        assert_eq!(
            full.release_writes().as_slice(),
            [(Issue(1000), None), (Count, Some(999))]
        );
        // The last claim given back removes the count too.
        assert_eq!(
            Holding::Counted(1).release_writes().as_slice(),
            [(Issue(1), None), (Count, None)]
        );
    }

    #[test]
    fn a_legacy_list_is_converted_by_the_next_claim_or_release() {
        use HolderField::{Count, Issue, Legacy};
        let old = Holding::Legacy(vec![3, 17]);
        assert_eq!(old.count(), 2);
        assert_eq!(old.newest(), Newest::Known(Some(17)));
        let claimed = [
            (Legacy, None),
            (Count, Some(3)),
            (Issue(1), Some(3)),
            (Issue(2), Some(17)),
            (Issue(3), Some(20)),
        ];
        assert_eq!(old.claim_writes(20).as_slice(), claimed);
        assert_eq!(
            old.release_writes().as_slice(),
            [(Legacy, None), (Count, Some(1)), (Issue(1), Some(3))]
        );
        let one = Holding::Legacy(vec![3]);
        assert_eq!(one.release_writes().as_slice(), [(Legacy, None)]);
        let empty = Holding::Legacy(vec![]);
        assert_eq!(empty.newest(), Newest::Known(None));
        assert_eq!(
            empty.claim_writes(4).as_slice(),
            [(Legacy, None), (Count, Some(1)), (Issue(1), Some(4))]
        );
    }

    #[test]
    fn the_per_user_limit_counts_what_is_held() {
        let mut c = campaign(10, 1000);
        assert_eq!(c.claim(999, 1), Ok(1));
        let e = c.claim(1000, 1).map_err(|e| e.to_string());
        assert!(e.is_err_and(|e| e.contains("already holds 1000 claim(s)")));
    }

    #[test]
    fn asset_commands_refuse_campaigns_and_counters() {
        assert_eq!(check_asset_hash(None), Ok(()));
        for kind in [&b"coupon"[..], b"usage", b"other"] {
            assert_eq!(
                check_asset_hash(Some(kind)).map_err(|e| e.code_name()),
                Err("WRONGTYPE")
            );
        }
        assert_eq!(check_kind(Some(b"coupon"), KIND_COUPON), Ok(()));
        assert_eq!(
            check_kind(Some(b"usage"), KIND_COUPON).map_err(|e| e.code_name()),
            Err("WRONGTYPE")
        );
        assert_eq!(
            check_kind(None, KIND_USAGE).map_err(|e| e.code_name()),
            Err("WRONGTYPE")
        );
    }

    #[test]
    fn hand_edited_counters_at_the_limit_are_errors_not_wraps() {
        let mut c = Campaign {
            total: i64::MAX,
            issued: i64::MAX - 1,
            last_issue: i64::MAX,
            per_user: 1,
            start_ms: 0,
            end_ms: 0,
        };
        let before = c;
        assert_eq!(c.claim(0, 1).map_err(|e| e.code_name()), Err("WRONGTYPE"));
        assert_eq!(c, before);
        let c = Campaign {
            total: 5,
            issued: i64::MIN,
            last_issue: 0,
            per_user: 1,
            start_ms: 0,
            end_ms: 0,
        };
        assert_eq!(c.remaining(), i64::MAX);
    }

    #[test]
    fn a_stored_period_ahead_of_the_clock_does_not_reset() {
        let day = 86_400_000;
        // Stored in day 2 (1970-01-03); the clock now says day 1.
        let u = Usage {
            limit: d("10"),
            period: Period::Day,
            period_id: Period::Day.id_at(2 * day),
            used: d("9"),
        };
        assert_eq!(u.at(day), u);
        assert_eq!(
            u.consume(d("2"), Decimal::ZERO, day)
                .map_err(|e| e.code_name()),
            Err("LIMIT")
        );
        assert_eq!(
            u.consume(d("1"), Decimal::ZERO, day)
                .map(|u| (u.used, u.period_id)),
            Ok((d("10"), "1970-01-03".to_string()))
        );
        // A later period still resets.
        assert_eq!(u.at(3 * day).used, d("0"));
        let m = Usage {
            limit: d("10"),
            period: Period::Month,
            period_id: "1970-02".into(),
            used: d("9"),
        };
        assert_eq!(m.at(0).used, d("9"));
    }

    #[test]
    fn usage_limit_and_period_reset() {
        let day = 86_400_000;
        let u = Usage {
            limit: d("10"),
            period: Period::Day,
            period_id: Period::Day.id_at(0),
            used: d("9"),
        };
        assert_eq!(
            u.consume(d("1"), Decimal::ZERO, 5).map(|u| u.used),
            Ok(d("10"))
        );
        assert_eq!(
            u.consume(d("2"), Decimal::ZERO, 5)
                .map_err(|e| e.code_name()),
            Err("LIMIT")
        );
        let next_day = u
            .consume(d("2"), Decimal::ZERO, day)
            .map(|u| (u.used, u.period_id));
        assert_eq!(next_day, Ok((d("2"), "1970-01-02".to_string())));
        assert_eq!(u.at(day).remaining_with(Decimal::ZERO), d("10"));
    }
}
