//! `tally-shipper failed list | show | retry | dismiss`: the rows of failed_events for an
//! operator, without SQL.
//!
//! A row is unresolved (waits for a fix, blocks `restore`), resolved (a retry stored it as an
//! event) or dismissed (an operator set it aside, with who, when and why: never stored, never
//! blocks `restore`). `retry` is for an event whose cause was fixed (Postgres refused it, a
//! decoder bug); `dismiss` for an entry that is not a tally event at all (XADDed by hand, a
//! foreign producer), which no retry can ever store.
//!
//! Exit codes (beyond 0 done, 1 a fatal error, 2 bad arguments): `EXIT_NO_SUCH_ROW`,
//! `EXIT_REFUSED`, `EXIT_STILL_FAILING`.

mod dismiss;
mod list;
pub(crate) mod retry;

use sqlx::PgPool;

use crate::cli::{FailedCommand, PgOpts};

/// show, retry ID, dismiss: no failed_events row has this id.
pub(crate) const EXIT_NO_SUCH_ROW: u8 = 4;
/// retry ID, dismiss: the row is not unresolved (resolved or dismissed already); dismiss: its
/// payload is a tally event (without --discard-event).
pub(crate) const EXIT_REFUSED: u8 = 5;
/// retry ID: the row still fails (one more attempt counted, its error printed).
pub(crate) const EXIT_STILL_FAILING: u8 = 6;

/// The Postgres options of any of the subcommands.
pub(crate) fn pg_opts(cmd: &FailedCommand) -> &PgOpts {
    match cmd {
        FailedCommand::List { pg, .. }
        | FailedCommand::Show { pg, .. }
        | FailedCommand::Retry { pg, .. }
        | FailedCommand::Dismiss { pg, .. } => pg,
    }
}

pub(crate) async fn command(pool: &PgPool, cmd: FailedCommand) -> anyhow::Result<u8> {
    match cmd {
        FailedCommand::List {
            all, json, limit, ..
        } => list::list(pool, all, json, limit).await,
        FailedCommand::Show { id, json, .. } => list::show(pool, id, json).await,
        FailedCommand::Retry { id: Some(id), .. } => retry_one(pool, id).await,
        FailedCommand::Retry { limit, .. } => {
            retry_all(pool, limit).await?;
            Ok(crate::commands::EXIT_OK)
        }
        FailedCommand::Dismiss {
            id,
            reason,
            by,
            discard_event,
            ..
        } => {
            let by = by.unwrap_or_else(dismiss::os_user);
            dismiss::dismiss(pool, id, &by, &reason, discard_event).await
        }
    }
}

/// `failed retry --all` and `retry-failed`: `resolved=N still_failing=M` on stdout.
pub(crate) async fn retry_all(pool: &PgPool, limit: i64) -> anyhow::Result<()> {
    let r = retry::retry_all(pool, limit).await?;
    tracing::info!(
        resolved = r.resolved,
        still_failing = r.still_failing,
        handled_meanwhile = r.handled_meanwhile,
        "retry-failed done"
    );
    println!("resolved={} still_failing={}", r.resolved, r.still_failing);
    if r.handled_meanwhile > 0 {
        println!(
            "{} rows were resolved or dismissed by someone else meanwhile",
            r.handled_meanwhile
        );
    }
    Ok(())
}

/// `failed retry ID`.
async fn retry_one(pool: &PgPool, id: i64) -> anyhow::Result<u8> {
    let Some(row) = crate::sinks::postgres::failed::unresolved_row(pool, id).await? else {
        return list::not_unresolved(pool, id, "nothing to retry").await;
    };
    let source = row.source.clone();
    Ok(match retry::retry_row(pool, row).await? {
        retry::Retry::Resolved(event) => {
            println!("row {id} ({source}) resolved: stored as event {event}");
            crate::commands::EXIT_OK
        }
        retry::Retry::StillFailing(error) => {
            println!("row {id} ({source}) still fails: {error}");
            println!(
                "fix the cause and retry, or if it is not a tally event: tally-shipper failed dismiss {id} --reason TEXT"
            );
            EXIT_STILL_FAILING
        }
        retry::Retry::HandledMeanwhile => {
            return list::not_unresolved(pool, id, "nothing to retry").await;
        }
    })
}
