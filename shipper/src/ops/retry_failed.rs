//! `tally-shipper retry-failed`: decode the unresolved failed_events again; those that are
//! events now are stored and marked resolved.

use sqlx::PgPool;

use crate::event::{Origin, Record};
use crate::sinks::postgres::failed;

/// Re-process unresolved failed_events, each row in its own transaction: a row that still
/// fails (to decode, or to be stored) is counted and left for later, never blocking the
/// rows after it. Returns (resolved, still failing).
pub(crate) async fn retry_failed(pool: &PgPool, limit: i64) -> Result<(usize, usize), sqlx::Error> {
    let rows = failed::unresolved(pool, limit).await?;
    let (mut ok, mut bad) = (0, 0);
    for row in rows {
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
                Ok(()) => None,
                Err(
                    e @ (sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed),
                ) => return Err(e),
                Err(e) => Some(format!("refused by Postgres: {e}")),
            },
            Err(e) => Some(e.clone()),
        };
        if let Some(e) = error {
            failed::still_failing(pool, id, &e).await?;
            bad += 1;
        } else {
            ok += 1;
        }
    }
    Ok((ok, bad))
}
