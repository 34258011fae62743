//! The commands, one file per family. Each command is declared beside its handler (a
//! `host::command::Command` impl: name, flags, arity, keys, summary); its handler parses
//! (`domain::request`), decides (`domain::rules`) and, for a change, reads and writes
//! through `host::tx::mutate`, which appends the event in the same atomic step.

mod asset;
mod coupon;
pub(crate) mod holds;
mod reply;
mod usage;

use crate::host::command::{registration, Registration};

/// Every command, in the order they are registered.
pub const ALL: [Registration; 21] = [
    registration::<asset::Incr>(),
    registration::<asset::Get>(),
    registration::<asset::Transfer>(),
    registration::<coupon::Create>(),
    registration::<coupon::Claim>(),
    registration::<coupon::Release>(),
    registration::<coupon::Info>(),
    registration::<usage::Limit>(),
    registration::<usage::Consume>(),
    registration::<usage::Get>(),
    registration::<holds::asset::HoldCmd>(),
    registration::<holds::asset::Settle>(),
    registration::<holds::asset::Void>(),
    registration::<holds::asset::Holds>(),
    registration::<holds::asset::Available>(),
    registration::<holds::coupon::Reserve>(),
    registration::<holds::coupon::Confirm>(),
    registration::<holds::coupon::Cancel>(),
    registration::<holds::usage::Reserve>(),
    registration::<holds::usage::Commit>(),
    registration::<holds::usage::Cancel>(),
];
