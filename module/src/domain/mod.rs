//! The pure part of tally: everything a command decides, computed from bytes and values,
//! with no Redis in sight (no `redis_module`, no `unsafe`; `scripts/check-module-purity.sh`
//! checks it). Unit and property tests run it without a server.
//!
//! In: a command's arguments as byte slices, the stored fields of its hashes as bytes, the
//! server's time. Out: a typed request, a decision (new values or a coded error), the event
//! JSON and the op-id record to store.
//!
//! - `request`: parsing of every command's arguments, and their canonical form
//! - `holds`, `hold_request`: hold records, their rules and the hold commands' arguments
//! - `rules`: the decisions (bounds, coupon stock and holders, usage quotas)
//! - `layout`: hash fields and helper-key names
//! - `event`, `record`: the event JSON; the op-id record (fingerprint, stored reply)
//! - `decimal`, `period`, `text`: exact decimals, usage periods, integer text
//! - `config`: the settings' bounds and their validation; `opids`: the op-id count window
//! - `error`: the coded error replies
//!
//! Imports run one way: `request` -> `rules` -> `layout` -> `text`, `error`; `event` ->
//! `request`, `record`.

pub mod config;
pub mod decimal;
pub mod error;
pub mod event;
pub mod hold_request;
pub mod holds;
pub mod layout;
pub mod opids;
pub mod period;
pub mod record;
pub mod request;
pub mod rules;
pub mod text;
