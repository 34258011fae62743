//! Integers as decimal text in stack buffers (no allocation), and client bytes made safe to
//! quote in an error message.

/// Decimal text of an integer in a stack buffer.
pub struct IntText {
    buf: [u8; 20],
    start: usize,
}

impl IntText {
    pub fn new(v: i64) -> IntText {
        let mut buf = [0u8; 20];
        let mut digits = itoa::Buffer::new();
        let text = digits.format(v).as_bytes();
        // An i64 has at most 19 digits and a sign.
        let len = text.len().min(buf.len());
        let start = buf.len() - len;
        buf[start..].copy_from_slice(&text[text.len() - len..]);
        IntText { buf, start }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

/// `<ms>-<seq>` of a stream entry id, in a stack buffer.
pub struct EntryId {
    buf: [u8; 41],
    len: usize,
}

impl EntryId {
    pub fn new(ms: u64, seq: u64) -> EntryId {
        let (mut a, mut b) = ([0u8; 20], [0u8; 20]);
        let (a, b) = (u64_digits(ms, &mut a), u64_digits(seq, &mut b));
        let mut id = EntryId {
            buf: [0u8; 41],
            len: a.len() + 1 + b.len(),
        };
        id.buf[..a.len()].copy_from_slice(a);
        id.buf[a.len()] = b'-';
        id.buf[a.len() + 1..id.len].copy_from_slice(b);
        id
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// The decimal digits of `v` at the end of `out` (a u64 has at most 20).
fn u64_digits(mut v: u64, out: &mut [u8; 20]) -> &[u8] {
    let mut i = out.len();
    loop {
        i -= 1;
        out[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &out[i..]
}

/// A short, printable rendering of client bytes for error messages.
pub fn printable(raw: &[u8]) -> String {
    let s: String = String::from_utf8_lossy(raw)
        .chars()
        .filter(|c| !c.is_control())
        .take(32)
        .collect();
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int_text_is_the_decimal_text() {
        for v in [
            0,
            1,
            -1,
            9,
            10,
            -10,
            1_732_272_000_123,
            i64::MAX,
            i64::MIN,
            i64::MIN + 1,
        ] {
            assert_eq!(IntText::new(v).as_bytes(), v.to_string().as_bytes(), "{v}");
        }
    }

    proptest::proptest! {
        #[test]
        fn int_text_matches_to_string(v in proptest::num::i64::ANY) {
            let (text, want) = (IntText::new(v), v.to_string());
            proptest::prop_assert_eq!(text.as_bytes(), want.as_bytes());
        }

        #[test]
        fn entry_id_matches_format(ms in proptest::num::u64::ANY, seq in proptest::num::u64::ANY) {
            let (id, want) = (EntryId::new(ms, seq), format!("{ms}-{seq}"));
            proptest::prop_assert_eq!(id.as_bytes(), want.as_bytes());
        }
    }
}
