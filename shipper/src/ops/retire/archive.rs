//! A month's rows written to files before they leave Postgres: `events_<yyyy>m<mm>.csv`,
//! `event_keys_<yyyy>m<mm>.csv`, `event_changes_<yyyy>m<mm>.csv` in the archive directory,
//! each `COPY ... TO STDOUT (FORMAT csv, HEADER)` of the month's rows.
//!
//! Each file is written under a `.partial` name, fsynced, renamed to its name, and the
//! directory fsynced after the three: a file under its final name is always complete (a crash
//! leaves at most a `.partial`, or the complete file of an earlier run). The three are read
//! in one snapshot, and their rows are counted as they are written (CSV records, not lines:
//! a quoted value may hold a newline); the removal compares those counts with what it removes.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use futures_util::StreamExt as _;
use sqlx::PgPool;
use tokio::io::AsyncWriteExt as _;

use super::plan::{simple_query, MonthParts};
use super::Counts;

/// The tables archived, one file each per month.
pub(super) const ARCHIVED: [&str; 3] = ["events", "event_keys", "event_changes"];

/// The archive directory, as written into `history_retired.archive`: it must exist (a
/// directory that is not there may be a volume that is not mounted).
pub(super) fn check_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    let abs = std::fs::canonicalize(dir)
        .with_context(|| format!("--archive-dir {}: cannot be used", dir.display()))?;
    anyhow::ensure!(
        abs.is_dir(),
        "--archive-dir {}: not a directory",
        dir.display()
    );
    Ok(abs)
}

/// The file of `table`'s rows of the month: `<table>_<yyyy>m<mm>.csv`.
pub(super) fn file_name(table: &str, m: &MonthParts) -> String {
    format!("{table}_{}.csv", m.month.suffix())
}

/// Writes the month's rows of events, event_keys and event_changes into `dir`; returns how
/// many rows each file holds.
pub(super) async fn write_month(
    pool: &PgPool,
    m: &MonthParts,
    dir: &Path,
) -> anyhow::Result<Counts> {
    let mut tx = pool.begin().await?;
    // one snapshot for the three files; a month can take longer than the statement timeout
    simple_query(
        &mut tx,
        "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY;
         SET LOCAL statement_timeout = 0; SET LOCAL idle_in_transaction_session_timeout = 0",
    )
    .await?;
    let (from, to) = (m.month.start_ms(), m.month.end_ms());
    let mut rows = [0; 3];
    for (n, table) in rows
        .iter_mut()
        .zip(["events", "event_keys", "event_changes"])
    {
        let copy = format!(
            "COPY (SELECT * FROM {table} WHERE ts_ms >= {from} AND ts_ms < {to}) TO STDOUT (FORMAT csv, HEADER)"
        );
        let path = dir.join(file_name(table, m));
        *n = write_copy(&mut tx, &copy, &path).await.with_context(|| {
            format!(
                "archiving {table} of {} to {}",
                m.month.suffix(),
                path.display()
            )
        })?;
    }
    tx.commit().await?;
    tokio::fs::File::open(dir)
        .await?
        .sync_all()
        .await
        .with_context(|| format!("fsync of {}", dir.display()))?;
    let [events, event_keys, event_changes] = rows;
    Ok(Counts {
        events,
        event_keys,
        event_changes,
    })
}

/// One COPY into `path` (through `<path>.partial`, fsynced, renamed); returns its rows.
async fn write_copy(conn: &mut sqlx::PgConnection, copy: &str, path: &Path) -> anyhow::Result<i64> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let file = tokio::fs::File::create(&partial).await?;
    let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
    let mut records = CsvRecords::default();
    let mut stream = conn.copy_out_raw(copy).await?;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        records.feed(&chunk);
        out.write_all(&chunk).await?;
    }
    drop(stream);
    out.flush().await?;
    out.get_ref().sync_all().await?;
    drop(out);
    let rows = records
        .rows()
        .context("the COPY output did not end with a complete CSV record")?;
    tokio::fs::rename(&partial, path).await?;
    Ok(rows)
}

/// Counts the records of Postgres CSV output as it streams by: a newline outside quotes ends
/// a record (a doubled quote inside a quoted value toggles twice).
#[derive(Default)]
struct CsvRecords {
    in_quotes: bool,
    newlines: i64,
    ends_record: bool,
}

impl CsvRecords {
    fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            match b {
                b'"' => self.in_quotes = !self.in_quotes,
                b'\n' if !self.in_quotes => self.newlines += 1,
                _ => {}
            }
        }
        if let Some(&last) = bytes.last() {
            self.ends_record = last == b'\n' && !self.in_quotes;
        }
    }

    /// Data rows (the header is not one); None unless the output ended a record.
    fn rows(&self) -> Option<i64> {
        (self.ends_record && self.newlines >= 1).then(|| self.newlines - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::CsvRecords;

    fn rows(chunks: &[&str]) -> Option<i64> {
        let mut r = CsvRecords::default();
        for c in chunks {
            r.feed(c.as_bytes());
        }
        r.rows()
    }

    #[test]
    fn counts_records_not_lines() {
        assert_eq!(rows(&["a,b\n"]), Some(0));
        assert_eq!(rows(&["a,b\n", "1,2\n", "3,4\n"]), Some(2));
        // a quoted newline and doubled quotes inside one value, split across chunks
        assert_eq!(
            rows(&["id,raw\n1,\"{\"\"m\"\":\"\"x", "\ny\"\"}\"\n", "2,plain\n"]),
            Some(2)
        );
        assert_eq!(rows(&["a\n1,\"open\n"]), None, "ends inside quotes");
        assert_eq!(rows(&["a\n1"]), None, "ends inside a record");
        assert_eq!(rows(&[]), None, "not even a header");
    }
}
