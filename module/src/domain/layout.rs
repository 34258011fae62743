//! Where tally keeps things in Redis: the fields of its hashes and the names of its helper
//! keys. Plain hashes a client can read with HGETALL; the shipper and `tally-shipper
//! restore` read the same names (docs/events.md, docs/module.md).

use crate::domain::error::CmdError;
use crate::domain::text::IntText;
use tally_slot as slot;

/// The reserved field that marks a hash as a tally campaign (`coupon`) or usage counter
/// (`usage`). A hash without it is an asset hash; `ASSET.*` never writes it.
pub const KIND_FIELD: &str = "kind";
pub const KIND_COUPON: &[u8] = b"coupon";
pub const KIND_USAGE: &[u8] = b"usage";

/// A campaign hash's fixed fields: `kind` (`coupon`), then its integers in the order of
/// `rules::Campaign`. Holder fields are per user ([`HolderField`]).
pub const CAMPAIGN_FIELDS: [&str; 7] = [
    KIND_FIELD,
    "total",
    "issued",
    "last_issue",
    "peruser",
    "start",
    "end",
];

/// A usage counter hash's fields: `kind` (`usage`), `period`, `limit`, `used`, `period_id`.
pub const USAGE_FIELDS: [&str; 5] = [KIND_FIELD, "period", "limit", "used", "period_id"];

/// The single stream field that carries the event JSON.
pub const STREAM_FIELD: &str = "event";

/// A holder field of a campaign hash, for one user.
///
/// The layout: `c:<user>` = how many claims the user holds (absent = none), and
/// `h:<k>:<user>` = the issue number of the user's k-th claim (k = 1..count, in claim
/// order), so a claim or a release writes a constant number of fields. Versions before
/// this layout kept one field `u:<user>` = `"3,17"`; the user's next CLAIM or RELEASE
/// converts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HolderField {
    /// `c:<user>`
    Count,
    /// `h:<k>:<user>`
    Issue(i64),
    /// `u:<user>` (legacy)
    Legacy,
}

/// The name of `field` for `user`.
pub fn holder_field_name(field: HolderField, user: &str) -> smallvec::SmallVec<[u8; 64]> {
    let mut f = smallvec::SmallVec::new();
    match field {
        HolderField::Count => f.extend_from_slice(b"c:"),
        HolderField::Legacy => f.extend_from_slice(b"u:"),
        HolderField::Issue(k) => {
            f.extend_from_slice(b"h:");
            f.extend_from_slice(IntText::new(k).as_bytes());
            f.push(b':');
        }
    }
    f.extend_from_slice(user.as_bytes());
    f
}

/// The names of the helper keys that share a command's hash slot: the event stream, the
/// per-key sequence hash and the op-id records. `suffix` is empty in standalone mode and
/// `:{<tag>}` in cluster mode ([`slot_suffix`]).
pub struct HelperKeys {
    pub stream: String,
    pub seq: String,
    /// The due index of holds (docs/holds.md): a sorted set per node (per slot in cluster mode).
    pub due: String,
    op_prefix: String,
    holds_prefix: String,
}

impl HelperKeys {
    pub fn new(prefix: &str, suffix: &str) -> HelperKeys {
        HelperKeys {
            stream: format!("{prefix}:log{suffix}"),
            seq: format!("{prefix}:seq{suffix}"),
            due: format!("{prefix}:due{suffix}"),
            op_prefix: format!("{prefix}:op{suffix}:"),
            holds_prefix: format!("{prefix}:holds{suffix}:"),
        }
    }

    /// The holds hash of `key`: `<prefix>:holds[:{tag}]:<byte length of key>:<key>`.
    pub fn holds(&self, key: &str) -> String {
        format!("{}{}:{key}", self.holds_prefix, key.len())
    }

    /// The record of `op_id` sent with a command whose first key is `key`. An op-id is
    /// scoped to the command's first key, in standalone and cluster mode alike:
    /// `<prefix>:op[:{tag}]:<byte length of key>:<key>:<op-id>` (the length keeps the
    /// name unambiguous whatever bytes the key holds).
    pub fn op(&self, key: &str, op_id: &str) -> String {
        let len = IntText::new(key.len() as i64);
        let mut s = String::with_capacity(self.op_prefix.len() + 24 + key.len() + op_id.len());
        s.push_str(&self.op_prefix);
        s.push_str(std::str::from_utf8(len.as_bytes()).unwrap_or("0"));
        s.push(':');
        s.push_str(key);
        s.push(':');
        s.push_str(op_id);
        s
    }

    /// The record of `op_id` as modules before 313b772 named it (op-id record format 1):
    /// `<prefix>:op[:{tag}]:<op-id>`, one per node (per slot in cluster mode) whatever the
    /// key. Only read, for the records such a module left within `tally.op-ttl-ms`.
    pub fn op_v1(&self, op_id: &str) -> String {
        let mut s = String::with_capacity(self.op_prefix.len() + op_id.len());
        s.push_str(&self.op_prefix);
        s.push_str(op_id);
        s
    }
}

/// The helper-key suffix of `key`'s hash slot in cluster mode: `:{<tag>}`, where the tag
/// hashes to the same slot (`tally_slot`).
pub fn slot_suffix(key: &str) -> String {
    format!(":{{{}}}", slot::tag(slot::key_slot(key.as_bytes())))
}

/// Rejects keys inside tally's own namespace (`<prefix>:...`).
pub fn check_user_key(prefix: &str, key: &str) -> Result<(), CmdError> {
    let k = key.as_bytes();
    if k.len() > prefix.len() && k.starts_with(prefix.as_bytes()) && k[prefix.len()] == b':' {
        return Err(CmdError::err(format!(
            "keys starting with '{prefix}:' are reserved for tally"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(field: HolderField, user: &str) -> String {
        String::from_utf8_lossy(&holder_field_name(field, user)).into_owned()
    }

    #[test]
    fn holder_field_names() {
        assert_eq!(name(HolderField::Count, "alice"), "c:alice");
        assert_eq!(name(HolderField::Issue(12), "a:b"), "h:12:a:b");
        assert_eq!(name(HolderField::Legacy, "alice"), "u:alice");
    }

    #[test]
    fn helper_key_names() {
        let standalone = HelperKeys::new("tally", "");
        assert_eq!(standalone.stream, "tally:log");
        assert_eq!(standalone.seq, "tally:seq");
        assert_eq!(standalone.op("acct:1", "x"), "tally:op:6:acct:1:x");
        assert_eq!(standalone.op_v1("x"), "tally:op:x");
        assert_eq!(standalone.holds("acct:1"), "tally:holds:6:acct:1");
        assert_eq!(standalone.due, "tally:due");
        let suffix = slot_suffix("acct:1");
        assert!(
            suffix.starts_with(":{") && suffix.ends_with('}'),
            "{suffix}"
        );
        let cluster = HelperKeys::new("t", &suffix);
        assert_eq!(cluster.stream, format!("t:log{suffix}"));
        assert_eq!(cluster.op("k", "o"), format!("t:op{suffix}:1:k:o"));
        assert_eq!(cluster.op_v1("o"), format!("t:op{suffix}:o"));
        assert_eq!(cluster.holds("k"), format!("t:holds{suffix}:1:k"));
        assert_eq!(cluster.due, format!("t:due{suffix}"));
    }

    #[test]
    fn the_prefix_namespace_is_reserved() {
        assert!(check_user_key("tally", "tally:log").is_err());
        assert!(check_user_key("tally", "tally:").is_err());
        assert!(check_user_key("tally", "tally").is_ok());
        assert!(check_user_key("tally", "tallyx:1").is_ok());
        assert!(check_user_key("tally", "acct:tally:1").is_ok());
    }
}
