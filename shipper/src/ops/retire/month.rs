//! A UTC calendar month, as the history's partitions are cut (`<table>_<yyyy>m<mm>`, `ts_ms`
//! in [first ms of the month, first ms of the next)): parsed from `YYYY-MM`, named, bounded.

use std::fmt;

const DAY_MS: i64 = 86_400_000;

/// A UTC calendar month (month 1..=12). Ordered in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Month {
    year: i32,
    month: u32,
}

impl Month {
    /// `YYYY-MM` (the form `--before` takes), years 1970 to 9999.
    pub(crate) fn parse(s: &str) -> Result<Month, String> {
        let bad = || format!("expected a month as YYYY-MM (e.g. 2025-06), got {s:?}");
        let (y, m) = s.trim().split_once('-').ok_or_else(bad)?;
        if y.len() != 4 || m.len() != 2 {
            return Err(bad());
        }
        Month::new(y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?).ok_or_else(bad)
    }

    /// The month of a partition name's suffix, `2025m06`.
    pub(crate) fn from_suffix(s: &str) -> Option<Month> {
        let (y, m) = s.split_once('m')?;
        if y.len() != 4 || m.len() != 2 || !y.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
            return None;
        }
        Month::new(y.parse().ok()?, m.parse().ok()?)
    }

    fn new(year: i32, month: u32) -> Option<Month> {
        ((1970..=9999).contains(&year) && (1..=12).contains(&month))
            .then_some(Month { year, month })
    }

    /// The month `ms` (Unix ms) falls in.
    pub(crate) fn of_ms(ms: i64) -> Month {
        let (year, month) = civil_from_days(ms.div_euclid(DAY_MS));
        Month { year, month }
    }

    /// The partition suffix and `history_retired.month`: `2025m06`.
    pub(crate) fn suffix(self) -> String {
        format!("{:04}m{:02}", self.year, self.month)
    }

    /// Its first millisecond (Unix ms, UTC).
    pub(crate) fn start_ms(self) -> i64 {
        days_from_civil(self.year, self.month) * DAY_MS
    }

    /// The first millisecond of the next month.
    pub(crate) fn end_ms(self) -> i64 {
        self.next().start_ms()
    }

    pub(crate) fn next(self) -> Month {
        match self.month {
            12 => Month {
                year: self.year + 1,
                month: 1,
            },
            m => Month {
                year: self.year,
                month: m + 1,
            },
        }
    }

    pub(crate) fn prev(self) -> Month {
        match self.month {
            1 => Month {
                year: self.year - 1,
                month: 12,
            },
            m => Month {
                year: self.year,
                month: m - 1,
            },
        }
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

/// Days since 1970-01-01 of the first day of `month` of `year` (proleptic Gregorian; Howard
/// Hinnant's `days_from_civil`).
fn days_from_civil(year: i32, month: u32) -> i64 {
    let y = i64::from(year) - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((month + 9) % 12); // March = 0
    let doy = (153 * mp + 2) / 5;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// (year, month) of a day counted from 1970-01-01 (the inverse of `days_from_civil`).
fn civil_from_days(days: i64) -> (i32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year as i32, month as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_utc_calendar_months() {
        let jan = Month::parse("2026-01").unwrap();
        // 2026-01-31 23:59:59.999 UTC is the last ms of January (shipper/tests/history_months.rs)
        assert_eq!(jan.end_ms() - 1, 1_769_903_999_999);
        assert_eq!(Month::of_ms(1_769_903_999_999), jan);
        assert_eq!(Month::of_ms(1_769_904_000_000), jan.next());
        assert_eq!(Month::parse("1970-01").unwrap().start_ms(), 0);
        // 2025-06-15 UTC falls in 2025m06; a leap February has 29 days
        assert_eq!(Month::of_ms(1_749_945_600_000).suffix(), "2025m06");
        let feb = Month::parse("2024-02").unwrap();
        assert_eq!(feb.end_ms() - feb.start_ms(), 29 * DAY_MS);
        assert_eq!(
            Month::parse("2024-12").unwrap().next().to_string(),
            "2025-01"
        );
        assert_eq!(
            Month::parse("2025-01").unwrap().prev().to_string(),
            "2024-12"
        );
        // every month start round-trips over four centuries
        let mut m = Month::parse("1970-01").unwrap();
        for _ in 0..4_800 {
            assert_eq!(Month::of_ms(m.start_ms()), m);
            assert_eq!(Month::of_ms(m.end_ms() - 1), m);
            m = m.next();
        }
    }

    #[test]
    fn parsing_and_names() {
        assert_eq!(Month::parse(" 2025-06 ").unwrap().suffix(), "2025m06");
        assert_eq!(Month::from_suffix("2025m06"), Month::parse("2025-06").ok());
        for bad in [
            "2025-6", "25-06", "2025-13", "2025-00", "2025/06", "", "1969-12", "x025-06",
        ] {
            assert!(Month::parse(bad).is_err(), "{bad:?}");
        }
        for bad in ["2025m6", "2025-06", "2025m13", "2025m06x", "+025m06"] {
            assert!(Month::from_suffix(bad).is_none(), "{bad:?}");
        }
        assert!(Month::parse("2025-05").unwrap() < Month::parse("2025-06").unwrap());
    }
}
