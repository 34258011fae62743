//! `tally-shipper history retire`: old months of the history archived to files and removed
//! (docs/history.md, "Retention and archiving"). History in three old months and the current
//! one: the files hold exactly the rows that left, the partitions and events of those months
//! are gone, `history_retired` says what left, the current month and the derived state are
//! untouched, a second run is a no-op, `--dry-run` changes nothing, the previous month is
//! refused, a month with seqs above a key's watermark is refused until the missing seq
//! arrives. With the module: reconcile still matches, `restore --as-of` refuses a moment
//! inside the retired history and rolls back exactly after it (a key whose only changes
//! before the moment were retired included), and a full restore still rebuilds Redis.
#![allow(clippy::too_many_lines, clippy::await_holding_lock)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use common::*;

const HOUR_MS: i64 = 3_600_000;

/// A UTC month, from Postgres's clock and calendar (not the shipper's arithmetic).
struct Mon {
    from: i64,
    to: i64,
    /// `YYYY-MM`, as `--before` takes it
    arg: String,
    /// `YYYYmMM`, as partitions and history_retired name it
    suffix: String,
}

/// The month `back` months before the current one.
async fn month(pool: &sqlx::PgPool, back: i32) -> Mon {
    let (from, to, arg, suffix): (i64, i64, String, String) = sqlx::query_as(
        "SELECT (extract(epoch FROM m) * 1000)::bigint, (extract(epoch FROM m + interval '1 month') * 1000)::bigint,
                to_char(m, 'YYYY-MM'), to_char(m, 'YYYY\"m\"MM')
         FROM (SELECT date_trunc('month', now() AT TIME ZONE 'UTC') - make_interval(months => $1) AS m) x",
    )
    .bind(back)
    .fetch_one(pool)
    .await
    .unwrap();
    Mon {
        from,
        to,
        arg,
        suffix,
    }
}

/// One column of text per row.
async fn rows(pool: &sqlx::PgPool, sql: &str) -> Vec<String> {
    sqlx::query_scalar(sql).fetch_all(pool).await.unwrap()
}

/// A month's rows as the archive writes them: event ids, and the CSV lines of event_keys and
/// event_changes (their values need no quoting).
#[derive(Debug, PartialEq, Eq, Clone)]
struct MonthRows {
    events: BTreeSet<String>,
    keys: BTreeSet<String>,
    changes: BTreeSet<String>,
}

async fn month_rows(pool: &sqlx::PgPool, from: i64, to: i64) -> MonthRows {
    let range = format!("WHERE ts_ms >= {from} AND ts_ms < {to}");
    let events = rows(pool, &format!("SELECT event_id::text FROM events {range}")).await;
    let keys = rows(
        pool,
        &format!("SELECT concat_ws(',', event_id, data_key, seq, ts_ms) FROM event_keys {range}"),
    )
    .await;
    let changes = rows(
        pool,
        &format!(
            "SELECT concat_ws(',', event_id, idx, data_key, field, delta, balance, seq, ts_ms) FROM event_changes {range}"
        ),
    )
    .await;
    MonthRows::new(events, keys, changes)
}

impl MonthRows {
    /// The rows as sets; no row may be there twice.
    fn new(events: Vec<String>, keys: Vec<String>, changes: Vec<String>) -> MonthRows {
        let (n, k, c) = (events.len(), keys.len(), changes.len());
        let out = MonthRows {
            events: events.into_iter().collect(),
            keys: keys.into_iter().collect(),
            changes: changes.into_iter().collect(),
        };
        assert_eq!(
            (out.events.len(), out.keys.len(), out.changes.len()),
            (n, k, c),
            "a row twice"
        );
        out
    }

    fn counts(&self) -> String {
        format!(
            "events {}, event_keys {}, event_changes {}",
            self.events.len(),
            self.keys.len(),
            self.changes.len()
        )
    }
}

/// The rows of an archived month, read back from its three files (a header, then one line a
/// row: the raw JSON of an event holds no newline).
fn archived(dir: &Path, suffix: &str) -> MonthRows {
    let read = |table: &str, header: &str| -> Vec<String> {
        let text = std::fs::read_to_string(dir.join(format!("{table}_{suffix}.csv"))).unwrap();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some(header), "{table}_{suffix}.csv");
        lines.map(str::to_string).collect()
    };
    let events: Vec<String> = read(
        "events",
        "event_id,type,ts_ms,op,meta,raw,stream,stream_id,source,via,persisted_at",
    )
    .iter()
    .map(|l| l.split(',').next().unwrap().to_string())
    .collect();
    let keys = read("event_keys", "event_id,data_key,seq,ts_ms");
    let changes = read(
        "event_changes",
        "event_id,idx,data_key,field,delta,balance,seq,ts_ms",
    );
    MonthRows::new(events, keys, changes)
}

/// What a refused or dry run must leave as it was: the partitions, every row of the three
/// history tables, history_retired, the derived balances and seqs.
async fn history_state(pool: &sqlx::PgPool) -> Vec<Vec<String>> {
    let mut out = vec![rows(pool, PARTITIONS).await];
    for sql in [
        "SELECT event_id::text FROM events ORDER BY 1",
        "SELECT concat_ws(',', event_id, data_key, seq, ts_ms) FROM event_keys ORDER BY 1",
        "SELECT concat_ws(',', event_id, idx, data_key, field, balance, seq) FROM event_changes ORDER BY 1",
        "SELECT concat_ws(',', month, events, event_keys, event_changes, archive) FROM history_retired ORDER BY 1",
        BALANCES,
        SEQS,
    ] {
        out.push(rows(pool, sql).await);
    }
    out
}

/// The partitions of event_keys and event_changes.
const PARTITIONS: &str =
    "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
     WHERE i.inhparent IN ('event_keys'::regclass, 'event_changes'::regclass) ORDER BY 1";
const BALANCES: &str =
    "SELECT concat_ws(' ', data_key, field, balance, seq) FROM balances ORDER BY 1";
const SEQS: &str =
    "SELECT concat_ws(' ', data_key, last_seq, contiguous_seq) FROM key_seqs ORDER BY 1";

/// `tally-shipper history retire --database-url <pg> <args>`.
fn retire(pg: &str, args: &[&str]) -> (i32, String) {
    let mut a = vec!["history", "retire", "--database-url", pg];
    a.extend_from_slice(args);
    shipper_cmd(&a)
}

/// Every file of `dir` with its content.
fn files(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read_to_string(e.path()).unwrap(),
            )
        })
        .collect()
}

type RetiredRow = (String, i64, i64, i64, i64, i64, Option<String>);

async fn retired_rows(pool: &sqlx::PgPool) -> Vec<RetiredRow> {
    sqlx::query_as(
        "SELECT month, from_ms, to_ms, events, event_keys, event_changes, archive
         FROM history_retired ORDER BY month",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

fn retired_row(m: &Mon, r: &MonthRows, archive: Option<&Path>) -> RetiredRow {
    (
        m.suffix.clone(),
        m.from,
        m.to,
        r.events.len() as i64,
        r.keys.len() as i64,
        r.changes.len() as i64,
        archive.map(|d| d.display().to_string()),
    )
}

/// History in three old months (a transfer, a claim and a usage event among it) and the
/// current one. The oldest month is retired without an archive, the next two with one; the
/// newest old month is refused first (a key's seq 1 is missing, its seq 2 is in it), and
/// retired once seq 1 has arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retire_archives_and_removes_old_months_and_nothing_else() {
    let _g = serial();
    let Stack {
        redis,
        pg,
        pool,
        mut c,
        mut m,
    } = stack().await;
    let (m4, m3, m2, prev, cur) = (
        month(&pool, 4).await,
        month(&pool, 3).await,
        month(&pool, 2).await,
        month(&pool, 1).await,
        month(&pool, 0).await,
    );
    let mut events = vec![
        at(&m.asset_incr("acct:a", "gold", 10_000), m4.from + HOUR_MS),
        at(
            &m.asset_incr("acct:b", "gold", 5_000),
            m4.from + 2 * HOUR_MS,
        ),
        at(
            &m.asset_transfer("acct:a", "acct:b", "gold", 1_000),
            m4.from + 3 * HOUR_MS,
        ),
        at(&m.coupon_claim("camp", "u1"), m4.from + 4 * HOUR_MS),
        at(&m.usage_consume("quota", 500), m4.to - 1),
        at(&m.asset_incr("acct:a", "gold", 500), m3.from),
        at(&m.asset_incr("acct:c", "gems", 700), m3.from + HOUR_MS),
        at(&m.asset_incr("acct:b", "gold", 100), m2.from + HOUR_MS),
    ];
    // acct:gap's seq 1 arrives late: its seq 2 waits in m2 above the watermark
    let late = at(
        &m.asset_incr("acct:gap", "gold", 100),
        m2.from + 2 * HOUR_MS,
    );
    events.push(at(&m.asset_incr("acct:gap", "gold", 200), m2.to - 1));
    events.push(m.asset_incr("acct:a", "gold", 100)); // now: the current month
    events.push(m.asset_incr("acct:d", "gold", 300));
    let logs = tmpdir("retire-logs");
    let args = base_args("run", Some(&redis.url()), Some(&pg.url()), None);
    ship_all(&mut c, &pool, &args, &logs.join("1.log"), &events, 11).await;
    let archive_dir = std::fs::canonicalize(tmpdir("retire-archive")).unwrap();
    let adir = archive_dir.to_str().unwrap();
    let rows4 = month_rows(&pool, m4.from, m4.to).await;
    let rows3 = month_rows(&pool, m3.from, m3.to).await;
    let current = month_rows(&pool, cur.from, i64::MAX).await;
    assert_eq!(
        (rows4.events.len(), rows4.keys.len(), rows4.changes.len()),
        (5, 6, 4)
    );
    assert_eq!(current.events.len(), 2);
    let balances = rows(&pool, BALANCES).await;
    let before = history_state(&pool).await;

    // --dry-run lists, with the counts, and changes nothing
    let (code, out) = retire(
        &pg.url(),
        &["--before", &m3.arg, "--no-archive", "--dry-run"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "{}: would retire {}, not archived",
            m4.suffix,
            rows4.counts()
        )) && !out.contains(&m3.suffix)
            && out.contains("dry run: nothing was changed"),
        "{out}"
    );
    let (code, out) = retire(
        &pg.url(),
        &["--before", &prev.arg, "--archive-dir", adir, "--dry-run"],
    );
    assert_eq!(
        code, 1,
        "the gap in {} is refused in a dry run too:\n{out}",
        m2.suffix
    );
    assert!(
        out.contains(&format!(
            "{}: would retire {}, archived in {adir}",
            m3.suffix,
            rows3.counts()
        )),
        "{out}"
    );
    // the previous month (and the current one) are refused, before anything is read
    for before_arg in [&cur.arg, &month(&pool, -1).await.arg] {
        let (code, out) = retire(&pg.url(), &["--before", before_arg, "--archive-dir", adir]);
        assert_eq!(code, 1, "{out}");
        assert!(
            out.contains(&format!("refusing to retire before {before_arg}"))
                && out.contains(&format!("--before {} is the latest allowed", prev.arg)),
            "{out}"
        );
    }
    // one of --archive-dir and --no-archive is required
    assert_eq!(retire(&pg.url(), &["--before", &m3.arg]).0, 2);
    assert_eq!(
        retire(
            &pg.url(),
            &["--before", &m3.arg, "--no-archive", "--archive-dir", adir]
        )
        .0,
        2
    );
    assert_eq!(history_state(&pool).await, before);
    assert!(files(&archive_dir).is_empty());

    // the oldest month without an archive
    let (code, out) = retire(&pg.url(), &["--before", &m3.arg, "--no-archive"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "{}: retired {}, not archived",
            m4.suffix,
            rows4.counts()
        )),
        "{out}"
    );
    // the next two: m3 goes, m2 is refused while acct:gap's seq 1 is missing
    let rows2_gap = month_rows(&pool, m2.from, m2.to).await;
    let (code, out) = retire(&pg.url(), &["--before", &prev.arg, "--archive-dir", adir]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "{}: retired {}, archived in {adir}",
            m3.suffix,
            rows3.counts()
        )) && out.contains(&format!("refusing to retire {}", m2.suffix))
            && out.contains("acct:gap (contiguous to 0, highest 2)"),
        "{out}"
    );
    assert_eq!(month_rows(&pool, m2.from, m2.to).await, rows2_gap);
    assert_eq!(
        files(&archive_dir).keys().cloned().collect::<Vec<_>>(),
        [
            format!("event_changes_{}.csv", m3.suffix),
            format!("event_keys_{}.csv", m3.suffix),
            format!("events_{}.csv", m3.suffix)
        ]
    );
    // seq 1 arrives; the month goes
    let n = count(&pool, "SELECT count(*) FROM events").await;
    ship_all(&mut c, &pool, &args, &logs.join("2.log"), &[late], n + 1).await;
    let rows2 = month_rows(&pool, m2.from, m2.to).await;
    assert_eq!(rows2.events.len(), rows2_gap.events.len() + 1);
    let seqs = rows(&pool, SEQS).await;
    let (code, out) = retire(&pg.url(), &["--before", &prev.arg, "--archive-dir", adir]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "{}: retired {}, archived in {adir}",
            m2.suffix,
            rows2.counts()
        )),
        "{out}"
    );

    // the files hold exactly the rows that left; no partial file is left
    assert_eq!(archived(&archive_dir, &m3.suffix), rows3);
    assert_eq!(archived(&archive_dir, &m2.suffix), rows2);
    assert_eq!(
        files(&archive_dir).len(),
        6,
        "{:?}",
        files(&archive_dir).keys()
    );
    assert_eq!(
        retired_rows(&pool).await,
        vec![
            retired_row(&m4, &rows4, None),
            retired_row(&m3, &rows3, Some(&archive_dir)),
            retired_row(&m2, &rows2, Some(&archive_dir)),
        ]
    );
    // the months' partitions and events are gone; the current month and the derived state
    // are as they were
    let parts = rows(&pool, PARTITIONS).await;
    for old in [&m4, &m3, &m2] {
        assert!(!parts.iter().any(|p| p.ends_with(&old.suffix)), "{parts:?}");
    }
    for t in ["event_keys", "event_changes"] {
        assert!(parts.contains(&format!("{t}_{}", cur.suffix)), "{parts:?}");
    }
    for t in ["events", "event_keys", "event_changes"] {
        let sql = format!("SELECT count(*) FROM {t} WHERE ts_ms < {}", prev.from);
        assert_eq!(count(&pool, &sql).await, 0, "{t}");
    }
    assert_eq!(month_rows(&pool, cur.from, i64::MAX).await, current);
    assert_eq!(rows(&pool, BALANCES).await, balances);
    assert_eq!(rows(&pool, SEQS).await, seqs);

    // a second run is a no-op; restore --as-of refuses a moment inside the retired history
    let state = history_state(&pool).await;
    let archive = files(&archive_dir);
    let (code, out) = retire(&pg.url(), &["--before", &prev.arg, "--archive-dir", adir]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("nothing to retire before {}", prev.arg)),
        "{out}"
    );
    assert_eq!(history_state(&pool).await, state);
    assert_eq!(files(&archive_dir), archive);
    let (code, out) = shipper_cmd(&[
        "restore",
        "--redis-url",
        &redis.url(),
        "--database-url",
        &pg.url(),
        "--as-of",
        &(prev.from - 1).to_string(),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("month {} was retired", m2.suffix))
            && out.contains(&format!("--as-of {}", prev.from)),
        "{out}"
    );
}

/// The server's clock (events carry it), in ms.
async fn server_ms(c: &mut redis::aio::MultiplexedConnection) -> i64 {
    let (s, us): (i64, i64) = redis::cmd("TIME").query_async(c).await.unwrap();
    s * 1000 + us / 1000
}

/// Waits until the server's clock is past `t`.
async fn pass(c: &mut redis::aio::MultiplexedConnection, t: i64) {
    while server_ms(c).await <= t {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Moves the history's events of (after, upto] by `by` ms (the module stamps events with
/// the server's clock: this is how they get an old month).
async fn move_history(pool: &sqlx::PgPool, (after, upto): (i64, i64), by: i64) {
    sqlx::query("SELECT count(*) FROM tally_history_months(ARRAY[$1::bigint])")
        .bind(upto + by)
        .execute(pool)
        .await
        .unwrap();
    for t in ["events", "event_keys", "event_changes"] {
        sqlx::query(&format!(
            "UPDATE {t} SET ts_ms = ts_ms + $3 WHERE ts_ms > $1 AND ts_ms <= $2"
        ))
        .bind(after)
        .bind(upto)
        .bind(by)
        .execute(pool)
        .await
        .unwrap();
    }
}

/// With the module. acct:1 changed only in m3 until a change in the current month, acct:2 in
/// m3 and m2, acct:3 only in m3, acct:4 first in the current month. After m3 is retired:
/// reconcile matches; `restore --as-of` refuses a moment in m3 and, for one in m2, brings
/// back the balances Redis had then (acct:1 from the balance before its first later change,
/// acct:3 from its current balance); a full restore after a FLUSHALL matches too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_and_restore_after_retirement() {
    let _g = serial();
    let Some(ModuleStack {
        redis,
        pg,
        pool,
        mut c,
    }) = module_stack("reconcile_and_restore_after_retirement").await
    else {
        return;
    };
    let (m3, m2) = (month(&pool, 3).await, month(&pool, 2).await);
    let log = tmpdir("retire-module").join("shipper.log");
    let mut sh = Shipper::spawn(
        &base_args("run", Some(&redis.url()), Some(&pg.url()), None),
        &log,
    );
    // m3
    let start = server_ms(&mut c).await - 1;
    cmd(&mut c, &["ASSET.INCR", "acct:1", "gold", "10"]).await;
    cmd(&mut c, &["ASSET.INCR", "acct:2", "gold", "4", "gems", "2"]).await;
    cmd(&mut c, &["ASSET.INCR", "acct:3", "gold", "1.5"]).await;
    let m3_end = server_ms(&mut c).await;
    pass(&mut c, m3_end).await;
    // m2, then the moment
    cmd(&mut c, &["ASSET.INCR", "acct:2", "gold", "1"]).await;
    let m2_end = server_ms(&mut c).await;
    let mut at_moment = BTreeMap::new();
    for k in ["acct:1", "acct:2", "acct:3"] {
        at_moment.insert(k, hgetall(&mut c, k).await);
    }
    pass(&mut c, m2_end).await;
    // the current month: after the moment
    cmd(&mut c, &["ASSET.INCR", "acct:1", "gold", "5"]).await;
    cmd(&mut c, &["ASSET.INCR", "acct:2", "gold", "100"]).await;
    cmd(&mut c, &["ASSET.INCR", "acct:4", "gold", "9"]).await;
    let (r, p) = (redis.url(), pg.url());
    let reconcile = || {
        shipper_cmd(&[
            "reconcile",
            "--redis-url",
            &r,
            "--database-url",
            &p,
            "--wait-ms",
            "60000",
        ])
    };
    let (code, out) = reconcile();
    assert_eq!(code, 0, "{out}");
    move_history(&pool, (start, m3_end), m3.from + 10 * HOUR_MS - m3_end).await;
    move_history(&pool, (m3_end, m2_end), m2.from + 10 * HOUR_MS - m2_end).await;
    let moment = m2.from + 11 * HOUR_MS;
    assert_eq!(
        count(
            &pool,
            &format!(
                "SELECT count(*) FROM event_changes WHERE ts_ms < {}",
                m2.from
            )
        )
        .await,
        4
    );

    let archive_dir = tmpdir("retire-module-archive");
    let (code, out) = retire(
        &p,
        &[
            "--before",
            &m2.arg,
            "--archive-dir",
            archive_dir.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("{}: retired events 3", m3.suffix)),
        "{out}"
    );
    assert_eq!(
        count(&pool, &format!("SELECT count(*) FROM event_changes WHERE data_key = 'acct:1' AND ts_ms <= {moment}")).await,
        0,
        "acct:1's only change before the moment was retired"
    );
    let (code, out) = reconcile();
    assert_eq!(code, 0, "reconcile after the retirement:\n{out}");
    assert!(out.contains("verdict: MATCH"), "{out}");

    let as_of = |ms: i64| {
        shipper_cmd(&[
            "restore",
            "--redis-url",
            &r,
            "--database-url",
            &p,
            "--as-of",
            &ms.to_string(),
        ])
    };
    let now_state = hgetall(&mut c, "acct:1").await;
    let (code, out) = as_of(m2.from - 1);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("month {} was retired", m3.suffix))
            && out.contains(&format!("--as-of {}", m2.from)),
        "{out}"
    );
    assert_eq!(
        hgetall(&mut c, "acct:1").await,
        now_state,
        "a refused rollback changed Redis"
    );
    let (code, out) = as_of(moment);
    assert_eq!(code, 0, "restore --as-of (ends with reconcile):\n{out}");
    for (k, h) in &at_moment {
        assert_eq!(&hgetall(&mut c, k).await, h, "{k} after the rollback");
    }
    let acct4: Option<String> = redis::cmd("HGET")
        .arg("acct:4")
        .arg("gold")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(
        acct4.as_deref(),
        Some("0"),
        "first changed after the moment"
    );

    // a full restore reads only what retirement keeps
    sh.sigterm();
    assert!(sh
        .wait_timeout(Duration::from_secs(30))
        .is_some_and(|s| s.success()));
    let before_flush = {
        let mut m = BTreeMap::new();
        for k in ["acct:1", "acct:2", "acct:3", "acct:4"] {
            m.insert(k, hgetall(&mut c, k).await);
        }
        m
    };
    cmd(&mut c, &["FLUSHALL"]).await;
    let (code, out) = shipper_cmd(&["restore", "--redis-url", &r, "--database-url", &p]);
    assert_eq!(code, 0, "restore after the retirement:\n{out}");
    assert!(out.contains("verdict: MATCH"), "{out}");
    for (k, h) in &before_flush {
        assert_eq!(&hgetall(&mut c, k).await, h, "{k} restored");
    }
}
