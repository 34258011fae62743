//! The `decimal` target: `Decimal::parse` on arbitrary bytes against a reference written
//! here over strings, the canonical text and its round trip, and the arithmetic (add, sub,
//! neg, ordering, `rules::apply_delta`) against plain `i128` arithmetic.
//!
//! Input: the whole input is parsed; then it is split on its first three `|` into
//! `a|b|floor|ceil` (a byte a decimal never holds): `a + b`, `a - b`, and
//! `apply_delta(a, b, floor, ceil)` where an absent or empty floor is the default floor 0,
//! `none` is NOFLOOR and an absent ceil is none. `5200|10.43` adds.

use std::cmp::Ordering;

use crate::domain::decimal::{Decimal, DecimalError};
use crate::domain::rules::{self, Floor};

use crate::check_error_text;
use crate::shipper_decode::is_canonical_decimal;

const SCALE: usize = 18;
const ONE: i128 = 1_000_000_000_000_000_000;
const MAX_RAW: i128 = 10i128.pow(38) - 1;

pub fn run(data: &[u8]) {
    let _ = check_parse(data);
    let mut parts = data.splitn(4, |&b| b == b'|');
    let (Some(a), Some(b)) = (parts.next(), parts.next()) else {
        return;
    };
    let (Some(a), Some(b)) = (check_parse(a), check_parse(b)) else {
        return;
    };
    arithmetic(a, b);
    let floor = match parts.next() {
        None | Some(b"") => Some(Floor::Default),
        Some(b"none") => Some(Floor::None),
        Some(f) => check_parse(f).map(|(f, _)| Floor::At(f)),
    };
    let ceil = match parts.next() {
        None => Some(None),
        Some(c) => check_parse(c).map(|(c, _)| Some(c)),
    };
    if let (Some(floor), Some(ceil)) = (floor, ceil) {
        apply_delta(a, b, floor, ceil);
    }
}

/// The reference: what the input is by the grammar of docs/commands.md ("Amounts"), as the
/// exact value in units of 10^-18 and its canonical text.
fn reference(input: &[u8]) -> Result<(i128, String), DecimalError> {
    let (negative, body) = match input.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, input),
    };
    let text = std::str::from_utf8(body).map_err(|_| DecimalError::Malformed)?;
    let (int, frac) = match text.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (text, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || frac.is_some_and(|f| !digits(f)) {
        return Err(DecimalError::Malformed);
    }
    let frac = frac.unwrap_or("").trim_end_matches('0');
    if frac.len() > SCALE {
        return Err(DecimalError::TooPrecise);
    }
    let int = int.trim_start_matches('0');
    if int.len() > 20 {
        return Err(DecimalError::OutOfRange);
    }
    let units = |s: &str| s.bytes().fold(0i128, |n, d| n * 10 + i128::from(d - b'0'));
    let padded = format!("{frac:0<SCALE$}");
    let raw = units(int) * ONE + units(&padded);
    Ok((
        if negative { -raw } else { raw },
        format_units(if negative { -raw } else { raw }),
    ))
}

/// Canonical text of a value in units of 10^-18, the plain way.
fn format_units(raw: i128) -> String {
    let abs = raw.unsigned_abs();
    let (int, frac) = (abs / ONE as u128, abs % ONE as u128);
    let mut s = if raw < 0 {
        format!("-{int}")
    } else {
        int.to_string()
    };
    if frac != 0 {
        s.push('.');
        s.push_str(format!("{frac:018}").trim_end_matches('0'));
    }
    s
}

/// `Decimal::parse` agrees with the reference (value or error kind); the canonical text
/// is the reference's, parses back to the same value, and is canonical for the shipper.
fn check_parse(input: &[u8]) -> Option<(Decimal, i128)> {
    let got = Decimal::parse(input);
    let want = reference(input);
    let stored = rules::stored_decimal("x", Some(input));
    assert_eq!(stored.is_ok(), got.is_ok());
    if let Err(e) = &stored {
        check_error_text(e);
        assert_eq!(e.code_name(), "WRONGTYPE");
    }
    match (got, want) {
        (Ok(d), Ok((raw, text))) => {
            let shown = d.to_string();
            assert_eq!(
                shown,
                text,
                "canonical text of {:?}",
                String::from_utf8_lossy(input)
            );
            assert!(shown.len() <= 41);
            assert_eq!(Decimal::parse(shown.as_bytes()), Ok(d));
            assert!(is_canonical_decimal(&shown), "{shown}");
            assert_eq!(d.is_zero(), raw == 0);
            assert_eq!(d.is_negative(), raw < 0);
            assert_eq!(d.is_positive(), raw > 0);
            Some((d, raw))
        }
        (Err(e), Err(w)) => {
            assert_eq!(e, w, "error kind for {:?}", String::from_utf8_lossy(input));
            assert!(!e.to_string().is_empty());
            None
        }
        (got, want) => panic!(
            "parse of {:?}: {got:?}, reference {want:?}",
            String::from_utf8_lossy(input)
        ),
    }
}

/// The value of a raw sum or difference, `None` beyond the range, as `checked_*` must say.
fn in_range(raw: Option<i128>) -> Option<i128> {
    raw.filter(|r| r.abs() <= MAX_RAW)
}

fn same(d: Option<Decimal>, raw: Option<i128>) {
    assert_eq!(d.map(|d| d.to_string()), raw.map(format_units));
}

fn arithmetic((a, ra): (Decimal, i128), (b, rb): (Decimal, i128)) {
    assert_eq!(-(-a), a);
    assert_eq!((-a).to_string(), format_units(-ra));
    assert_eq!(a.cmp(&b), ra.cmp(&rb));
    assert_eq!(a == b, ra == rb);
    let sum = a.checked_add(b);
    same(sum, in_range(ra.checked_add(rb)));
    assert_eq!(sum, b.checked_add(a));
    let diff = a.checked_sub(b);
    same(diff, in_range(ra.checked_sub(rb)));
    assert_eq!(diff, a.checked_add(-b));
    if let Some(s) = sum {
        assert_eq!(s.checked_sub(b), Some(a));
        assert_eq!(Decimal::parse(s.to_string().as_bytes()), Ok(s));
        match rb.cmp(&0) {
            Ordering::Greater => assert!(s > a),
            Ordering::Less => assert!(s < a),
            Ordering::Equal => assert_eq!(s, a),
        }
    }
}

/// `apply_delta(current, delta, floor, ceil)`: the sum, or a refusal only when the change
/// moves the balance further past a bound (or overflows).
fn apply_delta(
    (current, rc): (Decimal, i128),
    (delta, rd): (Decimal, i128),
    floor: Floor,
    ceil: Option<Decimal>,
) {
    let sum = in_range(rc.checked_add(rd));
    match rules::apply_delta(current, delta, floor, ceil) {
        Ok(next) => {
            same(Some(next), sum);
            let lower = match floor {
                Floor::Default => Some(Decimal::ZERO),
                Floor::At(f) => Some(f),
                Floor::None => None,
            };
            if let (Some(f), true) = (lower, delta.is_negative()) {
                assert!(next >= f, "{next} below floor {f}");
            }
            if let (Some(c), true) = (ceil, delta.is_positive()) {
                assert!(next <= c, "{next} above ceil {c}");
            }
        }
        Err(e) => {
            check_error_text(&e);
            let code = e.code_name();
            match code {
                "ERR" => assert!(sum.is_none(), "overflow error for an in-range sum"),
                "INSUFFICIENT" => assert!(delta.is_negative() && sum.is_some()),
                "LIMIT" => assert!(delta.is_positive() && sum.is_some()),
                other => panic!("apply_delta error code {other}"),
            }
        }
    }
}
