//! The Redis client layer shared by the source (readers, ack path, stream keeper) and the
//! operations (reconcile, restore). It depends on no stage, so neither imports the other
//! through it.
//!
//! In: URLs and commands. Out: connections (`connect`, `NodeConns`), replies parsed into
//! `Entry` and plain values (`reply`), and the cluster's layout and redirections (`cluster`).

mod cluster;
mod conn;
mod reply;

pub(crate) use cluster::{cluster_layout, redirect_url, Primary};
pub(crate) use conn::{connect, query_asking, NodeConns, RResult};
#[cfg(test)]
pub(crate) use reply::bulk;
pub(crate) use reply::{as_array, as_int, as_str, parse_entries, Entry};
