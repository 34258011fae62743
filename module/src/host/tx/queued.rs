//! The writes a command's body queues through a [`super::Tx`], per data key, until `write`
//! performs them.

use smallvec::SmallVec;

use crate::host::ffi::{Key, RStr};

/// A field name of a queued write: a process-lifetime constant or one made for the write.
pub enum FieldName {
    Static(&'static RStr),
    Owned(RStr),
}

impl FieldName {
    pub(super) fn rs(&self) -> &RStr {
        match self {
            FieldName::Static(r) => r,
            FieldName::Owned(r) => r,
        }
    }
}

/// A hash write: `None` deletes the field. Names and values are RedisModuleStrings made
/// once, used for the write and read back as bytes for replication.
pub(super) type FieldWrite = (FieldName, Option<RStr>);

/// A data key of the command, opened once for writing (reads go through the same handle)
/// with the writes queued for it.
pub(super) struct DataKey {
    /// The key's name, borrowed from `rs` (a RedisModuleString this DataKey owns).
    pub(super) rs: RStr,
    pub(super) key: Key,
    pub(super) writes: SmallVec<[FieldWrite; 4]>,
}

impl DataKey {
    pub(super) fn is(&self, name: &str) -> bool {
        self.rs.bytes() == Some(name.as_bytes())
    }
}

/// What a command's body leaves to write: its data keys with their queued writes, the
/// sequence hash if it was opened, and the new seqs (index into `keys`, the key's new seq).
pub(super) struct Queued {
    pub(super) keys: SmallVec<[DataKey; 2]>,
    pub(super) seq_key: Option<Key>,
    pub(super) seqs: SmallVec<[(usize, i64); 2]>,
    /// Writes to the due index of holds: (member, Some(score) = add, None = remove).
    pub(super) due: SmallVec<[(RStr, Option<f64>); 1]>,
}
