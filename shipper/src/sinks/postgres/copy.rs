//! `COPY ... FROM STDIN (FORMAT binary)` for the batch inserts of the history tables.
//!
//! A plain COPY is the cheapest way into a table: rows go in by pages (one WAL record per
//! heap page instead of one per row) and, unlike `INSERT ... ON CONFLICT`, it does not probe
//! every unique index before inserting. It cannot skip a row that is already there, so the
//! table with a dedupe key (events) is copied optimistically inside a savepoint: a unique
//! violation (a replayed event) rolls the savepoint back and the caller takes its
//! `ON CONFLICT` path, which decides row by row as before. event_keys and event_changes have
//! no unique index (history format 2): only rows known to be new are copied into them.

use sqlx::{Connection, PgConnection};

/// Binary COPY rows: the header, then per row a field count and each field as a length and
/// its bytes (-1 = NULL), then the trailer.
pub(crate) struct CopyRows {
    buf: Vec<u8>,
}

/// The most integer digits `numeric` encodes here; a longer value (never a canonical amount of
/// the module, at most 20) is left to the text path, where Postgres judges it.
pub(crate) const MAX_NUMERIC_INT_DIGITS: usize = 1_000;

impl CopyRows {
    pub(crate) fn new() -> CopyRows {
        let mut buf = Vec::with_capacity(64 * 1024);
        buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        buf.extend_from_slice(&0i32.to_be_bytes()); // flags
        buf.extend_from_slice(&0i32.to_be_bytes()); // header extension length
        CopyRows { buf }
    }

    pub(crate) fn row(&mut self, fields: i16) {
        self.buf.extend_from_slice(&fields.to_be_bytes());
    }

    fn field(&mut self, bytes: &[u8]) {
        // a field longer than 2^31 - 1 bytes cannot be stored anyway; Postgres refuses the row
        let len = i32::try_from(bytes.len()).unwrap_or(i32::MAX);
        self.buf.extend_from_slice(&len.to_be_bytes());
        self.buf.extend_from_slice(bytes);
    }

    pub(crate) fn text(&mut self, s: &str) {
        self.field(s.as_bytes());
    }

    pub(crate) fn opt_text(&mut self, s: Option<&str>) {
        match s {
            Some(s) => self.text(s),
            None => self.buf.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }

    pub(crate) fn int8(&mut self, v: i64) {
        self.field(&v.to_be_bytes());
    }

    pub(crate) fn int4(&mut self, v: i32) {
        self.field(&v.to_be_bytes());
    }

    pub(crate) fn uuid_value(&mut self, u: &uuid::Uuid) {
        self.field(u.as_bytes());
    }

    /// None when `s` is not a plain decimal (`-`? digits (`.` digits)?) of at most
    /// `MAX_NUMERIC_INT_DIGITS` integer digits.
    pub(crate) fn numeric(&mut self, s: &str) -> Option<()> {
        let bytes = numeric_binary(s)?;
        self.field(&bytes);
        Some(())
    }

    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.buf.extend_from_slice(&(-1i16).to_be_bytes());
        self.buf
    }
}

/// Postgres' binary `numeric`: ndigits, weight (of the first base-10000 digit), sign,
/// display scale, then the base-10000 digits, all big-endian 16-bit.
pub(crate) fn numeric_binary(s: &str) -> Option<Vec<u8>> {
    let (neg, body) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let digits_only = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty()
        || int.len() > MAX_NUMERIC_INT_DIGITS
        || !digits_only(int)
        || !digits_only(frac)
    {
        return None;
    }
    if body.contains('.') && frac.is_empty() {
        return None;
    }
    let dscale = u16::try_from(frac.len()).ok().filter(|d| *d <= 0x3FFF)?;
    // align on the decimal point: the integer part padded on the left, the fraction on the right
    let mut ascii = vec![b'0'; (4 - int.len() % 4) % 4];
    ascii.extend_from_slice(int.as_bytes());
    let int_groups = ascii.len() / 4;
    ascii.extend_from_slice(frac.as_bytes());
    ascii.resize(ascii.len().div_ceil(4) * 4, b'0');
    let mut groups: Vec<i16> = ascii
        .chunks(4)
        .map(|c| c.iter().fold(0i16, |acc, d| acc * 10 + i16::from(d - b'0')))
        .collect();
    let mut weight = i16::try_from(int_groups).ok()? - 1;
    let lead = groups.iter().take_while(|g| **g == 0).count();
    groups.drain(..lead);
    weight -= i16::try_from(lead).ok()?;
    while groups.last() == Some(&0) {
        groups.pop();
    }
    let (sign, weight) = if groups.is_empty() {
        (0u16, 0i16)
    } else {
        (if neg { 0x4000 } else { 0 }, weight)
    };
    let mut out = Vec::with_capacity(8 + 2 * groups.len());
    out.extend_from_slice(&i16::try_from(groups.len()).ok()?.to_be_bytes());
    out.extend_from_slice(&weight.to_be_bytes());
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&dscale.to_be_bytes());
    groups
        .iter()
        .for_each(|g| out.extend_from_slice(&g.to_be_bytes()));
    Some(out)
}

/// COPY `rows` (binary, as built by `CopyRows`) into `table` (`columns`, comma separated).
/// Returns the rows copied.
pub(crate) async fn copy_in(
    conn: &mut PgConnection,
    table: &str,
    columns: &str,
    rows: Vec<u8>,
) -> Result<u64, sqlx::Error> {
    let mut copy = conn
        .copy_in_raw(&format!(
            "COPY {table} ({columns}) FROM STDIN (FORMAT binary)"
        ))
        .await?;
    copy.send(rows).await?;
    copy.finish().await
}

/// SQLSTATE 23505: a unique index already holds the key.
pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("23505"))
}

/// COPY inside a savepoint: true when every row went in, false when a unique index refused
/// one (nothing of the COPY is left; the caller decides row by row instead). Any other error
/// is returned as it is.
pub(crate) async fn copy_unless_present(
    conn: &mut PgConnection,
    table: &str,
    columns: &str,
    rows: Vec<u8>,
) -> Result<bool, sqlx::Error> {
    let mut savepoint = conn.begin().await?;
    let copied = match copy_in(&mut savepoint, table, columns, rows).await {
        Ok(_) => {
            savepoint.commit().await?;
            true
        }
        Err(e) if is_unique_violation(&e) => {
            savepoint.rollback().await?;
            false
        }
        Err(e) => return Err(e),
    };
    crate::obs::metrics::PG_COPIES
        .with_label_values(&[table, if copied { "copied" } else { "present" }])
        .inc();
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (ndigits, weight, sign, dscale, digits)
    fn parts(s: &str) -> Option<(i16, i16, u16, u16, Vec<i16>)> {
        let b = numeric_binary(s)?;
        let w = |i: usize| [b[i], b[i + 1]];
        let digits = b[8..]
            .chunks(2)
            .map(|c| i16::from_be_bytes([c[0], c[1]]))
            .collect();
        Some((
            i16::from_be_bytes(w(0)),
            i16::from_be_bytes(w(2)),
            u16::from_be_bytes(w(4)),
            u16::from_be_bytes(w(6)),
            digits,
        ))
    }

    #[test]
    fn numerics_as_postgres_stores_them() {
        assert_eq!(parts("0"), Some((0, 0, 0, 0, vec![])));
        assert_eq!(parts("10.43"), Some((2, 0, 0, 2, vec![10, 4300])));
        assert_eq!(parts("5210.43"), Some((2, 0, 0, 2, vec![5210, 4300])));
        assert_eq!(parts("-0.5"), Some((1, -1, 0x4000, 1, vec![5000])));
        assert_eq!(parts("12345678"), Some((2, 1, 0, 0, vec![1234, 5678])));
        assert_eq!(parts("100000"), Some((1, 1, 0, 0, vec![10])));
        assert_eq!(
            parts("0.000000000000000001"),
            Some((1, -5, 0, 18, vec![100]))
        );
        assert_eq!(
            parts("-99999999999999999999.999999999999999999").map(|p| (p.1, p.2, p.3)),
            Some((4, 0x4000, 18))
        );
        assert_eq!(
            parts("-0.0"),
            Some((0, 0, 0, 1, vec![])),
            "zero is never negative"
        );
    }

    #[test]
    fn what_is_not_a_plain_decimal_is_left_to_the_text_path() {
        for bad in ["", "-", "1.", ".5", "1e5", " 1", "NaN", "1.2.3", "+1", "١"] {
            assert_eq!(numeric_binary(bad), None, "{bad:?}");
        }
        assert!(numeric_binary(&"9".repeat(MAX_NUMERIC_INT_DIGITS)).is_some());
        assert_eq!(
            numeric_binary(&"9".repeat(MAX_NUMERIC_INT_DIGITS + 1)),
            None
        );
    }

    #[test]
    fn rows_are_framed() {
        let mut r = CopyRows::new();
        r.row(3);
        r.int8(7);
        r.opt_text(None);
        r.uuid_value(&uuid::Uuid::nil());
        let b = r.finish();
        assert!(b.starts_with(b"PGCOPY\n\xff\r\n\0"));
        assert!(b.ends_with(&[0xff, 0xff]));
        assert_eq!(b.len(), 19 + 2 + 4 + 8 + 4 + 4 + 16 + 2);
    }
}
