//! The module's settings, their defaults and bounds, and the one validation every way of
//! setting them goes through: `--loadmodule libtally.so prefix tally max-backlog 1000000 ...`,
//! `--tally.<name> <value>` / `tally.<name> <value>` in the config file, or
//! `CONFIG SET tally.<name> <value>` at run time (prefix is fixed at load time).
//!
//! A value [`validate`] refuses is refused with the same message whether it came as a module
//! argument, a config-file or command-line setting, or CONFIG SET. The values in force are
//! kept by `host::config`.

pub const DEFAULT_MAX_BACKLOG: i64 = 1_000_000;
pub const DEFAULT_OP_TTL_MS: i64 = 86_400_000;
/// About 2 GB of op-id records at their ~213 bytes each.
pub const DEFAULT_MAX_OP_IDS: i64 = 10_000_000;
pub const DEFAULT_PREFIX: &str = "tally";
/// Holds (docs/holds.md): open holds per key, expiries per 10 ms timer tick, and how long a
/// closed hold's outcome is kept for NOTFOUND reasons (one hour of tombstones: a key closing
/// 10 holds a second keeps about 36,000, a few MB).
pub const DEFAULT_MAX_HOLDS_PER_KEY: i64 = 1000;
pub const MIN_MAX_HOLDS_PER_KEY: i64 = 1;
pub const MAX_MAX_HOLDS_PER_KEY: i64 = 100_000;
pub const DEFAULT_HOLD_EXPIRE_PER_TICK: i64 = 500;
pub const MIN_HOLD_EXPIRE_PER_TICK: i64 = 1;
pub const MAX_HOLD_EXPIRE_PER_TICK: i64 = 100_000;
pub const DEFAULT_HOLD_TOMBSTONE_MS: i64 = 3_600_000;
pub const MIN_HOLD_TOMBSTONE_MS: i64 = 0;
pub const MAX_HOLD_TOMBSTONE_MS: i64 = 2_592_000_000;

/// Bounds, also declared to Redis when the configs are registered.
pub const MIN_MAX_BACKLOG: i64 = 0;
pub const MAX_MAX_BACKLOG: i64 = 1_000_000_000_000;
pub const MIN_OP_TTL_MS: i64 = 1000;
/// 10 years: far from any wrap of `now + ttl`, far beyond any sensible retry window.
pub const MAX_OP_TTL_MS: i64 = 10 * 365 * 86_400_000;
pub const MIN_MAX_OP_IDS: i64 = 0;
pub const MAX_MAX_OP_IDS: i64 = 1_000_000_000_000;
pub const MAX_PREFIX_LEN: usize = 64;

/// A validated setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Setting {
    Prefix(String),
    MaxBacklog(i64),
    OpTtlMs(i64),
    MaxOpIds(i64),
    MaxHoldsPerKey(i64),
    HoldExpirePerTick(i64),
    HoldTombstoneMs(i64),
}

/// The one validation of every setting: `name` (case-insensitive, with or without the
/// `tally.` prefix) and its value as given.
pub fn validate(name: &str, value: &[u8]) -> Result<Setting, String> {
    let lower = name.to_ascii_lowercase();
    let name = lower.strip_prefix("tally.").unwrap_or(&lower);
    let text = std::str::from_utf8(value).map_err(|_| format!("{name} must be ASCII text"))?;
    let int = |min: i64, max: i64| -> Result<i64, String> {
        let n: i64 = text
            .parse()
            .map_err(|_| format!("{name} needs an integer, got '{}'", printable(text)))?;
        if n < min || n > max {
            return Err(format!("{name} must be between {min} and {max}, got {n}"));
        }
        Ok(n)
    };
    match name {
        "prefix" => {
            let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':');
            if text.is_empty() || text.len() > MAX_PREFIX_LEN || !text.chars().all(ok_char) {
                return Err(format!(
                    "prefix must be 1 to {MAX_PREFIX_LEN} characters of A-Z a-z 0-9 _ - . : (no '{{', '}}', spaces or control characters), got '{}'",
                    printable(text)
                ));
            }
            Ok(Setting::Prefix(text.to_string()))
        }
        "max-backlog" => int(MIN_MAX_BACKLOG, MAX_MAX_BACKLOG).map(Setting::MaxBacklog),
        "op-ttl-ms" => int(MIN_OP_TTL_MS, MAX_OP_TTL_MS).map(Setting::OpTtlMs),
        "max-op-ids" => int(MIN_MAX_OP_IDS, MAX_MAX_OP_IDS).map(Setting::MaxOpIds),
        "max-holds-per-key" => {
            int(MIN_MAX_HOLDS_PER_KEY, MAX_MAX_HOLDS_PER_KEY).map(Setting::MaxHoldsPerKey)
        }
        "hold-expire-per-tick" => {
            int(MIN_HOLD_EXPIRE_PER_TICK, MAX_HOLD_EXPIRE_PER_TICK).map(Setting::HoldExpirePerTick)
        }
        "hold-tombstone-ms" => {
            int(MIN_HOLD_TOMBSTONE_MS, MAX_HOLD_TOMBSTONE_MS).map(Setting::HoldTombstoneMs)
        }
        other => Err(format!("unknown setting '{}'", printable(other))),
    }
}

fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(32).collect()
}

/// Whether a `maxmemory-policy` can evict op-id records (string keys with a TTL): every
/// `volatile-*` and `allkeys-*` policy can; only `noeviction` keeps them.
pub fn policy_can_evict_op_ids(policy: &str) -> bool {
    !policy.eq_ignore_ascii_case("noeviction")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(name: &str, value: &str) -> String {
        match validate(name, value.as_bytes()) {
            Err(e) => e,
            Ok(s) => panic!("{name}={value} accepted as {s:?}"), // ok: test-only helper
        }
    }

    #[test]
    fn valid_settings() {
        assert_eq!(
            validate("prefix", b"hist"),
            Ok(Setting::Prefix("hist".into()))
        );
        assert_eq!(
            validate("tally.prefix", b"app:v2_x-1.0"),
            Ok(Setting::Prefix("app:v2_x-1.0".into()))
        );
        assert_eq!(validate("MAX-BACKLOG", b"0"), Ok(Setting::MaxBacklog(0)));
        assert_eq!(validate("op-ttl-ms", b"1000"), Ok(Setting::OpTtlMs(1000)));
        assert_eq!(validate("tally.max-op-ids", b"0"), Ok(Setting::MaxOpIds(0)));
        assert_eq!(
            validate("op-ttl-ms", MAX_OP_TTL_MS.to_string().as_bytes()),
            Ok(Setting::OpTtlMs(MAX_OP_TTL_MS))
        );
    }

    #[test]
    fn invalid_settings_are_refused_with_a_reason() {
        for bad in [
            "{x}",
            "a{b",
            "a}b",
            "",
            "a b",
            "a\nb",
            "é",
            &"p".repeat(MAX_PREFIX_LEN + 1),
        ] {
            assert!(err("prefix", bad).starts_with("prefix must be"), "{bad:?}");
        }
        assert!(err("max-backlog", "-1").contains("between 0 and"));
        assert!(err("max-backlog", "x").contains("needs an integer"));
        assert!(err("max-op-ids", "-1").contains("between 0 and"));
        assert!(err("max-op-ids", "1e6").contains("needs an integer"));
        assert!(err("op-ttl-ms", &i64::MAX.to_string()).contains("between 1000 and"));
        assert!(err("op-ttl-ms", "999").contains("between 1000 and"));
        assert!(err("op-ttl-ms", "99999999999999999999999").contains("needs an integer"));
        assert!(err("bogus", "1").contains("unknown setting"));
    }

    #[test]
    fn only_noeviction_keeps_op_id_records() {
        assert!(!policy_can_evict_op_ids("noeviction"));
        for p in [
            "volatile-lru",
            "volatile-lfu",
            "volatile-random",
            "volatile-ttl",
            "allkeys-lru",
            "allkeys-lfu",
            "allkeys-random",
        ] {
            assert!(policy_can_evict_op_ids(p), "{p}");
        }
    }

    #[test]
    fn the_op_id_deadline_cannot_wrap() {
        // now (ms, year 2262 at most for an i64 of ns; ms go much further) + the largest TTL.
        assert!(i64::MAX
            .checked_sub(MAX_OP_TTL_MS)
            .is_some_and(|room| room > 253_402_300_800_000));
    }
}
