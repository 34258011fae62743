//! `failed retry` (and `retry-failed`): decode unresolved rows again; those that are events
//! now are stored and marked resolved.

use sqlx::PgPool;

use crate::event::{Origin, Record};
use crate::sinks::postgres::failed::{self, FailedRow};

/// What one retry of a row did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Retry {
    /// stored as this event, the row marked resolved
    Resolved(String),
    /// one more attempt counted, with this error
    StillFailing(String),
    /// resolved or dismissed by someone else between reading it and storing it: nothing done
    HandledMeanwhile,
}

/// What a retry of many rows did.
#[derive(Debug, Default)]
pub(crate) struct Retried {
    pub(crate) resolved: usize,
    pub(crate) still_failing: usize,
    pub(crate) handled_meanwhile: usize,
}

/// Re-process up to `limit` unresolved rows, each in its own transaction: a row that still
/// fails (to decode, or to be stored) is counted and left for later, never blocking the rows
/// after it.
pub(crate) async fn retry_all(pool: &PgPool, limit: i64) -> Result<Retried, sqlx::Error> {
    let mut out = Retried::default();
    for row in failed::unresolved(pool, limit).await? {
        match retry_row(pool, row).await? {
            Retry::Resolved(_) => out.resolved += 1,
            Retry::StillFailing(_) => out.still_failing += 1,
            Retry::HandledMeanwhile => out.handled_meanwhile += 1,
        }
    }
    Ok(out)
}

/// Decode `row` again and store it if it is an event now; an error that means Postgres is
/// unavailable stops the retry (it says nothing about the row).
pub(crate) async fn retry_row(pool: &PgPool, row: FailedRow) -> Result<Retry, sqlx::Error> {
    let id = row.id;
    let origin = Origin {
        source: row.source,
        via: row.via,
        stream: row.stream,
        stream_id: row.stream_id,
    };
    let rec = Record::new(origin, row.raw, None);
    let error = match &rec.decoded {
        Ok(ev) => match failed::resolve(pool, id, &rec, &ev.id).await {
            Ok(true) => return Ok(Retry::Resolved(ev.id.clone())),
            Ok(false) => return Ok(Retry::HandledMeanwhile),
            Err(e @ (sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed)) => {
                return Err(e)
            }
            Err(e) => format!("refused by Postgres: {e}"),
        },
        Err(e) => e.clone(),
    };
    failed::still_failing(pool, id, &error).await?;
    Ok(Retry::StillFailing(error))
}
