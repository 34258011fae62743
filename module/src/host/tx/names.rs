//! The helper keys of a command (`domain::layout::HelperKeys`) as RedisModuleStrings, and
//! the constant words the writes use, each created once.

use std::ops::Deref;
use std::sync::OnceLock;

use redis_module::{Context, ContextFlags};

use crate::domain::error::CmdError;
use crate::domain::layout::{self, HelperKeys, KIND_FIELD, STREAM_FIELD};
use crate::host::config;
use crate::host::ffi::RStr;

/// The helper keys that share the command's hash slot.
pub(super) struct Names {
    pub(super) keys: HelperKeys,
    pub(super) stream_rs: RStr,
    pub(super) seq_rs: RStr,
    pub(super) due_rs: RStr,
}

/// The names of a command: in standalone mode one set, built on first use and kept (the
/// prefix is fixed at load time); in cluster mode one set per hash slot, built per call.
pub(super) enum NamesRef {
    Fixed(&'static Names),
    Slot(Names),
}

impl Deref for NamesRef {
    type Target = Names;
    fn deref(&self) -> &Names {
        match self {
            NamesRef::Fixed(n) => n,
            NamesRef::Slot(n) => n,
        }
    }
}

/// Whether the server runs in cluster mode (fixed for the life of the process).
pub(crate) fn cluster_mode(ctx: &Context) -> bool {
    static CLUSTER: OnceLock<bool> = OnceLock::new();
    *CLUSTER.get_or_init(|| ctx.get_flags().contains(ContextFlags::CLUSTER))
}

impl Names {
    fn build(prefix: &str, suffix: &str) -> Names {
        let keys = HelperKeys::new(prefix, suffix);
        Names {
            stream_rs: RStr::new(keys.stream.as_bytes()),
            seq_rs: RStr::new(keys.seq.as_bytes()),
            due_rs: RStr::new(keys.due.as_bytes()),
            keys,
        }
    }

    /// The names of the helper keys of a hash slot (cluster mode) or of the node.
    pub(super) fn for_slot(ctx: &Context, slot: usize) -> NamesRef {
        let prefix = config::prefix_fixed();
        if cluster_mode(ctx) {
            let suffix = format!(":{{{}}}", tally_slot::tag(slot));
            NamesRef::Slot(Names::build(prefix, &suffix))
        } else {
            Names::for_key(ctx, "")
        }
    }

    pub(super) fn for_key(ctx: &Context, key: &str) -> NamesRef {
        let prefix = config::prefix_fixed();
        if cluster_mode(ctx) {
            NamesRef::Slot(Names::build(prefix, &layout::slot_suffix(key)))
        } else {
            static FIXED: OnceLock<Names> = OnceLock::new();
            NamesRef::Fixed(FIXED.get_or_init(|| Names::build(prefix, "")))
        }
    }
}

/// Rejects keys inside tally's own namespace (`<prefix>:...`).
pub fn check_user_key(key: &str) -> Result<(), CmdError> {
    layout::check_user_key(config::prefix_fixed(), key)
}

/// `PXAT`, created once.
pub(super) fn pxat_word() -> &'static RStr {
    static WORD: OnceLock<RStr> = OnceLock::new();
    WORD.get_or_init(|| RStr::new(b"PXAT"))
}

/// The name of the field that marks a campaign or usage hash (`layout::KIND_FIELD`),
/// created once.
pub fn kind_field() -> &'static RStr {
    static FIELD: OnceLock<RStr> = OnceLock::new();
    FIELD.get_or_init(|| RStr::new(KIND_FIELD.as_bytes()))
}

/// The stream field name, created once.
pub(super) fn event_field() -> &'static RStr {
    static FIELD: OnceLock<RStr> = OnceLock::new();
    FIELD.get_or_init(|| RStr::new(STREAM_FIELD.as_bytes()))
}
