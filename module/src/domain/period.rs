//! Usage periods: UTC calendar days and months computed from Unix milliseconds.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    None,
    Day,
    Month,
}

const MS_PER_DAY: i64 = 86_400_000;

impl Period {
    pub fn parse(upper: &str) -> Option<Period> {
        match upper {
            "NONE" => Some(Period::None),
            "DAY" => Some(Period::Day),
            "MONTH" => Some(Period::Month),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Period::None => "none",
            Period::Day => "day",
            Period::Month => "month",
        }
    }

    /// The id of the period containing `now_ms`: `all`, `YYYY-MM-DD` or `YYYY-MM` (UTC).
    pub fn id_at(self, now_ms: i64) -> String {
        let (y, m, d) = civil_from_days(now_ms.div_euclid(MS_PER_DAY));
        match self {
            Period::None => "all".to_string(),
            Period::Day => format!("{y:04}-{m:02}-{d:02}"),
            Period::Month => format!("{y:04}-{m:02}"),
        }
    }
}

/// Whether the period id `current` is later than `stored`. Ids of one period kind have a
/// fixed width (`YYYY-MM-DD`, `YYYY-MM`, `all`) for years 0-9999, so their text order is
/// their time order. Ids of different widths (the stored one was edited by hand, or its
/// period kind changed, or it is not an id at all) count as a new period.
pub fn is_later(current: &str, stored: &str) -> bool {
    let same_shape = current.len() == stored.len()
        && current.bytes().zip(stored.bytes()).all(|(a, b)| {
            a.is_ascii_digit() == b.is_ascii_digit() && (a.is_ascii_digit() || a == b)
        });
    !same_shape || current > stored
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_at_known_instants() {
        assert_eq!(Period::Day.id_at(0), "1970-01-01");
        // 2024-02-29T23:59:59.999Z and one ms later.
        assert_eq!(Period::Day.id_at(1_709_251_199_999), "2024-02-29");
        assert_eq!(Period::Day.id_at(1_709_251_200_000), "2024-03-01");
        assert_eq!(Period::Month.id_at(1_709_251_199_999), "2024-02");
        assert_eq!(Period::Month.id_at(1_709_251_200_000), "2024-03");
        // 2026-12-31T23:59:59.999Z -> 2027-01-01
        assert_eq!(Period::Month.id_at(1_798_761_599_999), "2026-12");
        assert_eq!(Period::Day.id_at(1_798_761_600_000), "2027-01-01");
        assert_eq!(Period::None.id_at(1_798_761_600_000), "all");
    }

    #[test]
    fn only_a_later_period_is_later() {
        assert!(is_later("2026-11-24", "2026-11-23"));
        assert!(!is_later("2026-11-23", "2026-11-23"));
        assert!(!is_later("2026-11-22", "2026-11-23"));
        assert!(is_later("2027-01", "2026-12"));
        assert!(!is_later("2026-12", "2027-01"));
        assert!(!is_later("all", "all"));
        assert!(is_later("2026-11", "corrupt"));
        assert!(is_later("2026-11", "9999x11"));
        assert!(is_later("2026-11-23", "2026-11"));
    }
}
