//! Redis Cluster hash slots (CRC16/XMODEM of the key or its `{hash tag}`) and, for each
//! slot, a short tag that maps to it, so tally's helper keys can share a command's slot.
//! Shared by the module (which names the helper keys) and the shipper (which computes the
//! per-slot stream names of the slots a node serves instead of scanning its keyspace).

pub const SLOTS: usize = 16384;

pub fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The hash slot of `key`, honouring the first non-empty `{...}` hash tag like Redis does.
pub fn key_slot(key: &[u8]) -> usize {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    usize::from(crc16(hashed)) % SLOTS
}

/// For every slot, the shortest base-36 string (first found) that hashes to it.
pub fn build_tag_table() -> Vec<String> {
    let mut table: Vec<Option<String>> = vec![None; SLOTS];
    let mut found = 0;
    let mut n: u64 = 0;
    while found < SLOTS {
        let tag = base36(n);
        let slot = usize::from(crc16(tag.as_bytes())) % SLOTS;
        if table[slot].is_none() {
            table[slot] = Some(tag);
            found += 1;
        }
        n += 1;
    }
    table.into_iter().map(Option::unwrap_or_default).collect()
}

/// The tag of `slot` from the table above, built once on first use; "0" for a slot out of
/// range. tally's helper keys of a slot are `<prefix>:log:{tag}`, `<prefix>:seq:{tag}` and
/// `<prefix>:op:{tag}:...`.
pub fn tag(slot: usize) -> &'static str {
    static TAGS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    TAGS.get_or_init(build_tag_table)
        .get(slot)
        .map(String::as_str)
        .unwrap_or("0")
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_redis_reference_values() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(
            key_slot(b"{user1000}.following"),
            key_slot(b"{user1000}.followers")
        );
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}"));
        assert_eq!(key_slot(b"{}foo"), usize::from(crc16(b"{}foo")) % SLOTS);
    }

    #[test]
    fn every_slot_gets_a_tag_that_maps_back() {
        let table = build_tag_table();
        assert_eq!(table.len(), SLOTS);
        for (slot, tag) in table.iter().enumerate() {
            assert!(!tag.is_empty());
            assert_eq!(key_slot(format!("tally:log:{{{tag}}}").as_bytes()), slot);
            assert_eq!(super::tag(slot), tag);
        }
    }
}
