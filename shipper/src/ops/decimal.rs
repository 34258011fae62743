//! Decimal text as Redis and Postgres print it, compared and written in one form.

/// Canonical decimal text: no `+`, no trailing fractional zeros, no `-0`.
pub(crate) fn canonical(s: &str) -> String {
    let s = s.trim();
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let body = if body.contains('.') {
        body.trim_end_matches('0').trim_end_matches('.')
    } else {
        body
    };
    let int_trimmed = {
        let (i, f) = body
            .split_once('.')
            .map_or((body, None), |(i, f)| (i, Some(f)));
        let i = i.trim_start_matches('0');
        let i = if i.is_empty() { "0" } else { i };
        match f {
            Some(f) => format!("{i}.{f}"),
            None => i.to_string(),
        }
    };
    if neg && int_trimmed != "0" {
        format!("-{int_trimmed}")
    } else {
        int_trimmed
    }
}

#[cfg(test)]
mod tests {
    use super::canonical;

    #[test]
    fn canonical_decimals() {
        for (a, b) in [
            ("5210.430", "5210.43"),
            ("-0.0", "0"),
            ("007", "7"),
            ("10", "10"),
            ("0.10", "0.1"),
            ("-3.50", "-3.5"),
            ("100.000", "100"),
        ] {
            assert_eq!(canonical(a), b, "{a}");
        }
    }
}
