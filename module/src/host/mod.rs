//! The part of tally that talks to Redis, and the only one with `unsafe`: the module API
//! calls, the atomic step of a mutating command, ACL checks, settings, INFO, and loading.
//!
//! In: Redis's calls (load, a command, INFO, a config change). Out: module API calls (keys,
//! stream, replication, replies) driven by what `domain` decided.
//!
//! - `ffi`: string and key handles over the module API ([`ffi::RStr`], [`ffi::Key`])
//! - `tx`: one mutating command as one atomic step (admit, read, write, propagate)
//! - `acl`: the permission checks Redis cannot make for tally's derived keys
//! - `command`, `dispatch`, `register`: how a command is declared, called and registered
//! - `load`, `eviction`: checks at load time and on `CONFIG SET maxmemory-policy`
//! - `config`, `stats`: the settings in force; the counters and state `INFO tally` shows
//!
//! Imports run one way: `load` -> `register` -> `command` -> `dispatch`; `tx` -> `acl`,
//! `ffi`, `config`, `stats`; nothing here imports `commands`.

pub mod acl;
pub mod command;
pub mod config;
pub mod dispatch;
pub mod eviction;
pub mod ffi;
pub mod load;
pub mod register;
pub mod stats;
pub mod tx;
