//! `tally-shipper history retire --before YYYY-MM (--archive-dir DIR | --no-archive)
//! [--dry-run]`: old months of the history leave Postgres (docs/history.md, "Retention and
//! archiving").
//!
//! Every month with a partition of event_keys or event_changes that ends at or before the
//! start of `--before` (UTC) is retired, oldest first: its rows of events, event_keys and
//! event_changes are written to files (`archive`, unless `--no-archive`), then removed in one
//! transaction that records the month in `history_retired` (`remove`). A month already there
//! is skipped; a run that stopped between the two steps leaves the month in place, and the
//! next run writes its files again. The current and the previous month are never retired:
//! forks are found only in the months kept.
//!
//! Derived state (balances, key_seqs, holds, coupons, usage) is never touched. A month holding
//! seqs above a key's contiguous watermark is refused (`plan::refuse_gaps`).

mod archive;
mod month;
mod plan;
mod remove;

use std::fmt;
use std::path::PathBuf;

use anyhow::bail;
use sqlx::PgPool;

pub(crate) use month::Month;
use plan::MonthParts;

pub(crate) struct Options {
    /// the first month kept
    pub(crate) before: Month,
    /// where the files go; None: `--no-archive`
    pub(crate) archive_dir: Option<PathBuf>,
    pub(crate) dry_run: bool,
    /// now (Unix ms): the current and the previous month are refused
    pub(crate) now_ms: i64,
}

/// A month's rows in each table.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) events: i64,
    pub(crate) event_keys: i64,
    pub(crate) event_changes: i64,
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "events {}, event_keys {}, event_changes {}",
            self.events, self.event_keys, self.event_changes
        )
    }
}

/// Retires (or with `dry_run` lists) every month before `opt.before`; one line per month on
/// stdout. An error (a refusal included) stops at the month it concerns: the months before it
/// are retired, the others untouched.
pub(crate) async fn command(pool: &PgPool, opt: &Options) -> anyhow::Result<()> {
    refuse_recent(opt.before, opt.now_ms)?;
    let dir = opt
        .archive_dir
        .as_deref()
        .map(archive::check_dir)
        .transpose()?;
    let months = plan::months_before(pool, opt.before).await?;
    if months.is_empty() {
        println!("nothing to retire before {}", opt.before);
    }
    for m in &months {
        let line = match (&m.retired_at, opt.dry_run) {
            (Some(at), _) => format!(
                "skipped: retired at {at}; it has partitions again (late events stored since), left in place"
            ),
            (None, true) => dry_run(pool, m, dir.as_deref()).await?,
            (None, false) => retire(pool, m, dir.as_deref()).await?,
        };
        println!("{}: {line}", m.month.suffix());
    }
    if opt.dry_run {
        println!("dry run: nothing was changed");
    }
    Ok(())
}

/// The current month and the one before stay: forks are detected only in the months kept,
/// and they come from failovers seconds to minutes apart.
fn refuse_recent(before: Month, now_ms: i64) -> anyhow::Result<()> {
    let now = Month::of_ms(now_ms);
    let latest = now.prev();
    if before > latest {
        bail!(
            "refusing to retire before {before}: that would retire {latest}{}, and the current month ({now}, UTC) \
             and the previous one are always kept (forks are detected only in the months kept); \
             --before {latest} is the latest allowed",
            if before > now { " and the current month" } else { ", the previous month" }
        );
    }
    Ok(())
}

/// What the month would lose, and where its files would go.
async fn dry_run(
    pool: &PgPool,
    m: &MonthParts,
    dir: Option<&std::path::Path>,
) -> anyhow::Result<String> {
    plan::refuse_gaps(pool, m).await?;
    let mut conn = pool.acquire().await?;
    let counts = plan::count(&mut conn, m).await?;
    Ok(match dir {
        Some(d) => format!("would retire {counts}, archived in {}", d.display()),
        None => format!("would retire {counts}, not archived"),
    })
}

/// The month archived (unless `dir` is None) and removed.
async fn retire(
    pool: &PgPool,
    m: &MonthParts,
    dir: Option<&std::path::Path>,
) -> anyhow::Result<String> {
    plan::refuse_gaps(pool, m).await?;
    let Some(dir) = dir else {
        let removed = remove::remove_month(pool, m, None).await?;
        return Ok(format!("retired {removed}, not archived"));
    };
    let archived = archive::write_month(pool, m, dir).await?;
    let removed = remove::remove_month(pool, m, Some((dir, archived))).await?;
    let files: Vec<String> = archive::ARCHIVED
        .iter()
        .map(|t| archive::file_name(t, m))
        .collect();
    Ok(format!(
        "retired {removed}, archived in {}: {}",
        dir.display(),
        files.join(", ")
    ))
}
