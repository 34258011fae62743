//! `failed dismiss ID --reason TEXT [--by WHO]`: an unresolved row set aside for good, with
//! who, when and why kept in the row.

use std::os::unix::fs::MetadataExt as _;

use sqlx::PgPool;

use super::list::not_unresolved;
use super::EXIT_REFUSED;
use crate::commands::EXIT_OK;
use crate::event::{Origin, Record};
use crate::sinks::postgres::failed;

/// Who runs the command: $USER, else $LOGNAME, else the name of the process's user in
/// /etc/passwd, else `uid N`.
pub(crate) fn os_user() -> String {
    for var in ["USER", "LOGNAME"] {
        if let Some(v) = std::env::var(var).ok().filter(|v| !v.trim().is_empty()) {
            return v.trim().to_string();
        }
    }
    let Ok(uid) = std::fs::metadata("/proc/self").map(|m| m.uid()) else {
        return "unknown".into();
    };
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| {
            passwd.lines().find_map(|l| {
                let mut f = l.split(':');
                let name = f.next()?;
                (f.nth(1)? == uid.to_string()).then(|| name.to_string())
            })
        })
        .unwrap_or_else(|| format!("uid {uid}"))
}

/// Refuses a row that does not exist (4), is not unresolved (5), or whose payload is a tally
/// event unless `discard_event` (5): that event would be missing from the history for good,
/// and from any Redis a `restore` rebuilds.
pub(crate) async fn dismiss(
    pool: &PgPool,
    id: i64,
    by: &str,
    reason: &str,
    discard_event: bool,
) -> anyhow::Result<u8> {
    let Some(row) = failed::unresolved_row(pool, id).await? else {
        return not_unresolved(pool, id, "nothing to dismiss").await;
    };
    let source = row.source.clone();
    let origin = Origin {
        source: row.source,
        via: row.via,
        stream: row.stream,
        stream_id: row.stream_id,
    };
    if let Ok(ev) = Record::new(origin, row.raw, None).decoded {
        if !discard_event {
            eprintln!(
                "tally-shipper failed dismiss: row {id} ({source}) is a tally event ({} {}) that could \
                 not be stored; dismissed, it would be missing from the history for good and from \
                 any Redis a restore rebuilds. Fix the cause (tally-shipper failed show {id} has \
                 the error) and run tally-shipper failed retry {id}, or pass --discard-event to \
                 dismiss it anyway",
                ev.typ, ev.id
            );
            return Ok(EXIT_REFUSED);
        }
    }
    let Some(at) = failed::dismiss(pool, id, by, reason).await? else {
        // resolved or dismissed by someone else since it was read
        return not_unresolved(pool, id, "nothing to dismiss").await;
    };
    println!("row {id} ({source}) dismissed at {at} by {by}: {reason}");
    Ok(EXIT_OK)
}
