//! `tally-shipper failed list | show | retry | dismiss`: the failed_events rows handled without
//! SQL. An entry XADDed by hand that is not a tally event is listed, blocks `restore`, is
//! dismissed with a recorded reason, and `restore` then runs without `--force`; a row whose
//! cause was fixed is retried; the gauges follow on /metrics; a database at migration 0004
//! keeps its rows through 0005.

// Scenarios read better whole than cut into helpers, and every test holds `common::serial()`
// (a std Mutex guard that runs the heavy tests one at a time) across its awaits on purpose.
#![allow(clippy::too_many_lines, clippy::await_holding_lock)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// `tally-shipper failed <args> --database-url <pg>` run as `user` ($USER) when given:
/// (exit code, stdout, stderr).
fn failed_as(pg: &str, args: &[&str], user: Option<&str>) -> (i32, String, String) {
    let mut c = Command::new(BIN);
    c.arg("failed")
        .args(args)
        .args(["--database-url", pg])
        .env("TALLY_LOG", "warn");
    if let Some(u) = user {
        c.env("USER", u);
    }
    let out = c.output().expect("run tally-shipper failed");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn failed(pg: &str, args: &[&str]) -> (i32, String, String) {
    failed_as(pg, args, None)
}

/// `failed list --json` (with `--all` when `all`): the rows.
fn list_json(pg: &str, all: bool) -> Vec<Value> {
    let mut args = vec!["list", "--json"];
    if all {
        args.push("--all");
    }
    let (code, out, err) = failed(pg, &args);
    assert_eq!(code, 0, "failed list --json: {out}{err}");
    serde_json::from_str::<Value>(&out)
        .unwrap_or_else(|e| panic!("failed list --json is not JSON ({e}): {out}"))
        .as_array()
        .expect("a JSON array")
        .clone()
}

/// The row of `list_json` with this id.
fn row(rows: &[Value], id: i64) -> Value {
    rows.iter()
        .find(|r| r["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("no row {id} in {rows:?}"))
}

/// The acceptance story: a hand-written entry that is not an event is recorded, listed,
/// blocks restore (which names the commands), is dismissed with who/when/why, and restore
/// then runs without --force; the gauges go up and down on /metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_written_entry_is_dismissed_and_restore_runs_without_force() {
    let _g = serial();
    let Some(ModuleStack {
        redis,
        pg,
        pool,
        mut c,
    }) = module_stack("a_hand_written_entry_is_dismissed_and_restore_runs_without_force").await
    else {
        return;
    };
    let pg_url = pg.url();
    for i in 0..3 {
        cmd(
            &mut c,
            &["ASSET.INCR", "acct:1", "gold", "1", "ID", &format!("f{i}")],
        )
        .await;
    }
    let log = tmpdir("failed-dismiss").join("shipper.log");
    let mut args = base_args("run", Some(&redis.url()), Some(&pg_url), None);
    args.extend(["--failed-events-interval-ms".into(), "200".into()]);
    let mut sh = Shipper::spawn(&args, &log);
    sh.wait_ready(Duration::from_secs(60));
    let events = wait_count(
        &pool,
        "SELECT count(*) FROM events",
        3,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(events, 3, "log:\n{}", tail_lines(&sh.log_text(), 40));
    let unresolved = "tally_failed_events_unresolved";
    let dismissed = "tally_failed_events_dismissed";
    assert_eq!(
        sh.wait_metric(unresolved, Duration::from_secs(10), |v| v == 0.0)
            .await,
        Some(0.0)
    );
    assert_eq!(sh.metric(dismissed), Some(0.0));

    // someone XADDs an entry by hand: not a tally event, recorded, the gauge goes up
    let entry = xadd(&mut c, STREAM, "nope", "x").await;
    let source = format!("redis:{STREAM}/{entry}");
    assert_eq!(
        wait_count(
            &pool,
            "SELECT count(*) FROM failed_events",
            1,
            Duration::from_secs(30)
        )
        .await,
        1
    );
    assert_eq!(
        sh.wait_metric(unresolved, Duration::from_secs(10), |v| v == 1.0)
            .await,
        Some(1.0),
        "the gauge did not go up"
    );

    // failed list: id, state, source, attempts, first/last seen, error; --json the same
    let (code, out, err) = failed(&pg_url, &["list"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&source)
            && out.contains("unresolved")
            && out.contains("no `event` field")
            && out.contains("FIRST SEEN")
            && out.contains("1 unresolved, 0 dismissed, 0 resolved"),
        "{out}"
    );
    let rows = list_json(&pg_url, false);
    assert_eq!(rows.len(), 1, "{rows:?}");
    let id = rows[0]["id"].as_i64().expect("id");
    assert_eq!(rows[0]["source"], source.as_str());
    assert_eq!(rows[0]["state"], "unresolved");
    assert_eq!(rows[0]["attempts"], 1);
    assert!(rows[0]["first_seen"].is_string() && rows[0]["last_seen"].is_string());
    assert!(rows[0].get("raw").is_none(), "list carries no payload");

    // failed show: every column and the payload
    let (code, out, err) = failed(&pg_url, &["show", &id.to_string()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("payload") && out.contains("nope"), "{out}");
    let (code, out, _) = failed(&pg_url, &["show", &id.to_string(), "--json"]);
    assert_eq!(code, 0);
    let shown: Value = serde_json::from_str(&out).expect("show --json");
    assert!(shown["raw"].as_str().is_some_and(|r| r.contains("nope")));

    // a retry cannot turn it into an event: exit 6, one more attempt
    let (code, out, err) = failed(&pg_url, &["retry", &id.to_string()]);
    assert_eq!(code, 6, "{out}{err}");
    assert!(out.contains("still fails"), "{out}");
    assert_eq!(row(&list_json(&pg_url, false), id)["attempts"], 2);

    // restore refuses, naming the commands that handle it; Redis untouched
    let restore = |extra: &[&str]| {
        let (r, p) = (redis.url(), pg_url.clone());
        let mut a = vec!["restore", "--redis-url", &r, "--database-url", &p];
        a.extend_from_slice(extra);
        shipper_cmd(&a)
    };
    let (code, out) = restore(&[]);
    assert_ne!(
        code, 0,
        "restore ran with an unresolved failed event:\n{out}"
    );
    for needle in [
        "1 unresolved failed_events",
        "tally-shipper failed list",
        "tally-shipper failed retry",
        "tally-shipper failed dismiss",
    ] {
        assert!(out.contains(needle), "no {needle:?} in:\n{out}");
    }

    // dismiss: a reason is required, the row must exist
    let id_s = id.to_string();
    for (bad, code_want) in [
        (vec!["dismiss", &id_s, "--reason", ""], 2),
        (vec!["dismiss", &id_s, "--reason", "   "], 2),
        (vec!["dismiss", &id_s], 2),
        (vec!["dismiss", "999999", "--reason", "x"], 4),
    ] {
        let (code, out, err) = failed(&pg_url, &bad);
        assert_eq!(code, code_want, "{bad:?}: {out}{err}");
    }
    assert_eq!(
        list_json(&pg_url, false).len(),
        1,
        "a refused dismiss changed the row"
    );
    let reason = "XADDed by hand while testing, not a tally event";
    let (code, out, err) = failed(
        &pg_url,
        &["dismiss", &id_s, "--reason", reason, "--by", "alice"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("dismissed") && out.contains("alice"), "{out}");

    // the gauges: unresolved down, dismissed up
    assert_eq!(
        sh.wait_metric(unresolved, Duration::from_secs(10), |v| v == 0.0)
            .await,
        Some(0.0),
        "the gauge did not go down"
    );
    assert_eq!(
        sh.wait_metric(dismissed, Duration::from_secs(10), |v| v == 1.0)
            .await,
        Some(1.0)
    );

    // list no longer shows it; --all shows who, when and why
    let (code, out, _) = failed(&pg_url, &["list"]);
    assert_eq!(code, 0);
    assert!(
        !out.contains(&source) && out.contains("0 unresolved, 1 dismissed, 0 resolved"),
        "{out}"
    );
    assert!(list_json(&pg_url, false).is_empty());
    let (code, out, _) = failed(&pg_url, &["list", "--all"]);
    assert_eq!(code, 0);
    assert!(
        out.contains(&source)
            && out.contains("dismissed at 20")
            && out.contains("by alice")
            && out.contains(reason),
        "{out}"
    );
    let all = row(&list_json(&pg_url, true), id);
    assert_eq!(all["state"], "dismissed");
    assert_eq!(all["dismissed_by"], "alice");
    assert_eq!(all["dismiss_reason"], reason);
    assert!(all["dismissed_at"].is_string() && all["event_id"].is_null());

    // a dismissed row is neither dismissed again nor retried
    let (code, _, err) = failed(&pg_url, &["dismiss", &id_s, "--reason", "again"]);
    assert_eq!(code, 5, "{err}");
    assert!(
        err.contains("not unresolved") && err.contains("alice"),
        "{err}"
    );
    let (code, _, err) = failed(&pg_url, &["retry", &id_s]);
    assert_eq!(code, 5, "{err}");

    sh.sigterm();
    assert!(sh
        .wait_timeout(Duration::from_secs(30))
        .is_some_and(|s| s.success()));

    // Redis loses its data: restore runs without --force, counting the dismissed row apart
    cmd(&mut c, &["DEL", "acct:1", "tally:seq"]).await;
    let (code, out) = restore(&[]);
    assert_eq!(code, 0, "restore after the dismissal:\n{out}");
    assert!(
        out.contains("1 dismissed failed_events") && !out.contains("unresolved failed_events"),
        "{out}"
    );
    let gold: String = redis::cmd("HGET")
        .arg("acct:1")
        .arg("gold")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(gold, "3");
    // restore --as-of is not blocked either (nothing to roll back at this moment)
    let now = now_ms().to_string();
    let (code, out) = restore(&["--as-of", &now]);
    assert_eq!(code, 0, "restore --as-of after the dismissal:\n{out}");
    assert!(out.contains("1 dismissed failed_events"), "{out}");
}

/// `failed retry` stores a row whose payload is an event (one at a time or --all, and
/// `retry-failed` still does the same); a resolved row cannot be dismissed; a row that is an
/// event is not dismissed without --discard-event; who defaults to $USER.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_retry_resolves_a_fixable_row_and_a_resolved_row_cannot_be_dismissed() {
    let _g = serial();
    let (pg, pool) = migrated_pg().await;
    let pg_url = pg.url();
    let mut m = Model::default();
    let insert = |source: &'static str, raw: String| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "INSERT INTO failed_events (source, raw, error) VALUES ($1, $2, 'decoder bug') RETURNING id",
            )
            .bind(source)
            .bind(raw)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let fixable = insert("manual:fixable", m.asset_incr("user:1", "gold", 500)).await;
    let junk = insert("manual:junk", "{not json".into()).await;
    let fixable2 = insert("manual:fixable2", m.asset_incr("user:2", "gold", 100)).await;
    let junk2 = insert("manual:junk2", r#"{"x":1}"#.into()).await;
    let s = |id: i64| id.to_string();

    // an event is not dismissed without --discard-event: it would be missing for good
    let (code, _, err) = failed(&pg_url, &["dismiss", &s(fixable), "--reason", "r"]);
    assert_eq!(code, 5, "{err}");
    assert!(
        err.contains("is a tally event") && err.contains("--discard-event"),
        "{err}"
    );
    assert_eq!(
        row(&list_json(&pg_url, false), fixable)["state"],
        "unresolved"
    );

    // retry ID: stored, resolved, the event in the history
    let (code, out, err) = failed(&pg_url, &["retry", &s(fixable)]);
    assert_eq!(code, 0, "{out}{err}");
    let stored = row(&list_json(&pg_url, true), fixable);
    assert_eq!(stored["state"], "resolved");
    assert_eq!(stored["attempts"], 2);
    let event = stored["event_id"].as_str().expect("event_id").to_string();
    assert!(out.contains(&event), "{out}");
    assert_eq!(
        count(
            &pool,
            &format!("SELECT count(*) FROM events WHERE event_id = '{event}'")
        )
        .await,
        1
    );
    // a resolved row: neither dismissed nor retried
    let (code, _, err) = failed(&pg_url, &["dismiss", &s(fixable), "--reason", "r"]);
    assert_eq!(code, 5, "{err}");
    assert!(
        err.contains("not unresolved") && err.contains("stored as event"),
        "{err}"
    );
    let (code, _, err) = failed(&pg_url, &["retry", &s(fixable)]);
    assert_eq!(code, 5, "{err}");
    assert_eq!(
        row(&list_json(&pg_url, true), fixable)["dismissed_at"],
        Value::Null
    );

    // retry ID of a row that still fails: 6, an attempt counted, the new error kept
    let (code, out, _) = failed(&pg_url, &["retry", &s(junk)]);
    assert_eq!(code, 6, "{out}");
    let j = row(&list_json(&pg_url, false), junk);
    assert_eq!(j["attempts"], 2);
    assert!(
        j["error"].as_str().unwrap().contains("invalid event JSON"),
        "{j}"
    );

    // ID or --all, exactly one of them
    assert_eq!(failed(&pg_url, &["retry"]).0, 2);
    assert_eq!(failed(&pg_url, &["retry", &s(junk), "--all"]).0, 2);
    assert_eq!(failed(&pg_url, &["show", "999999"]).0, 4);
    assert_eq!(failed(&pg_url, &["retry", "999999"]).0, 4);

    // --all: what retry-failed prints
    let (code, out, err) = failed(&pg_url, &["retry", "--all"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("resolved=1 still_failing=2"), "{out}");
    assert_eq!(
        row(&list_json(&pg_url, true), fixable2)["state"],
        "resolved"
    );

    // who defaults to $USER
    let (code, out, err) = failed_as(
        &pg_url,
        &["dismiss", &s(junk2), "--reason", "a foreign producer"],
        Some("carol"),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        row(&list_json(&pg_url, true), junk2)["dismissed_by"],
        "carol"
    );
    assert_eq!(
        failed(&pg_url, &["dismiss", &s(junk), "--reason", "r", "--by", ""]).0,
        2
    );

    let (code, out, _) = failed(&pg_url, &["list"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("manual:junk")
            && !out.contains("manual:junk2")
            && out.contains("1 unresolved, 1 dismissed, 2 resolved"),
        "{out}"
    );
    let (code, out, _) = failed(&pg_url, &["list", "--all"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("stored as event") && out.contains("by carol: a foreign producer"),
        "{out}"
    );

    // retry-failed is still there, and leaves resolved and dismissed rows alone
    let (code, out) = shipper_cmd(&["retry-failed", "--database-url", &pg_url]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("resolved=0 still_failing=1"), "{out}");
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM failed_events WHERE resolved AND dismissed_at IS NULL AND event_id IS NOT NULL"
        )
        .await,
        2
    );

    // the schema keeps the states consistent: no half-dismissed rows
    for bad in [
        format!("UPDATE failed_events SET dismissed_at = now(), dismissed_by = 'x', dismiss_reason = 'y' WHERE id = {junk}"),
        format!("UPDATE failed_events SET dismissed_at = now(), dismissed_by = 'x', dismiss_reason = 'y' WHERE id = {fixable}"),
        format!("UPDATE failed_events SET dismiss_reason = '' WHERE id = {junk2}"),
        format!("UPDATE failed_events SET dismissed_by = NULL WHERE id = {junk2}"),
    ] {
        let refused = sqlx::query(&bad).execute(&pool).await;
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.to_string().contains("failed_events_dismissal_check")),
            "{bad}: {refused:?}"
        );
    }
}

/// The upgrade contract of migration 0005: a database at 0004 with failed_events rows (and
/// an event) migrates with every row intact, old rows keep their state, and the new
/// subcommands work on them. Before the migration, `failed` names `migrate`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_at_0004_migrates_to_0005_with_its_failed_events_intact() {
    let _g = serial();
    let pg = Pg::start();
    let pg_url = pg.url();
    let pool = pg.pool().await;
    migrate_up_to(&pool, 4).await;

    // rows as a 0004 shipper writes them: an event, an unresolved and a resolved failure
    let event = uuid::Uuid::now_v7().to_string();
    sqlx::query(
        "INSERT INTO events (event_id, type, ts_ms, op, meta, raw, stream, stream_id, source)
         VALUES ($1::uuid, 'asset.incr', 1700000000000, 'op-1', NULL, '{}', 'tally:log', '1-0', 'redis:tally:log/1-0')",
    )
    .bind(&event)
    .execute(&pool)
    .await
    .unwrap();
    let unresolved: i64 = sqlx::query_scalar(
        "INSERT INTO failed_events (source, stream, stream_id, raw, error, attempts, first_seen, last_seen)
         VALUES ('redis:tally:log/2-0', 'tally:log', '2-0', '{\"nope\":\"x\"}', 'stream entry has no `event` field', 3,
                 '2025-01-02T03:04:05Z', '2025-01-03T03:04:05Z') RETURNING id",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let resolved: i64 = sqlx::query_scalar(
        "INSERT INTO failed_events (source, raw, error, resolved, resolved_at, event_id)
         VALUES ('manual:1', '{}', 'decoder bug', true, '2025-01-04T00:00:00Z', $1::uuid) RETURNING id",
    )
    .bind(&event)
    .fetch_one(&pool)
    .await
    .unwrap();
    let snapshot = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, String>(sql)
                .fetch_all(&pool)
                .await
                .unwrap()
        }
    };
    let failed_before = snapshot("SELECT to_jsonb(f)::text FROM failed_events f ORDER BY id").await;
    let events_before = snapshot("SELECT to_jsonb(e)::text FROM events e").await;

    // the new subcommands need 0005 and say so
    let (code, out, err) = failed(&pg_url, &["list"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("0005_failed_event_dismissal") && err.contains("tally-shipper migrate"),
        "{err}"
    );

    run_migrate(&pg_url);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM _sqlx_migrations WHERE success AND version = 5"
        )
        .await,
        1
    );
    let failed_after = snapshot(
        "SELECT (to_jsonb(f) - 'dismissed_at' - 'dismissed_by' - 'dismiss_reason')::text FROM failed_events f ORDER BY id",
    )
    .await;
    assert_eq!(failed_after, failed_before, "failed_events rows changed");
    assert_eq!(
        snapshot("SELECT to_jsonb(e)::text FROM events e").await,
        events_before
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM failed_events WHERE dismissed_at IS NULL AND dismissed_by IS NULL AND dismiss_reason IS NULL"
        )
        .await,
        2
    );

    // old rows keep their meaning
    let rows = list_json(&pg_url, true);
    assert_eq!(row(&rows, unresolved)["state"], "unresolved");
    assert_eq!(row(&rows, unresolved)["attempts"], 3);
    assert_eq!(
        row(&rows, unresolved)["first_seen"],
        "2025-01-02T03:04:05.000Z"
    );
    assert_eq!(row(&rows, resolved)["state"], "resolved");
    assert_eq!(row(&rows, resolved)["event_id"], event.as_str());
    let (code, out, _) = failed(&pg_url, &["list"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("1 unresolved, 0 dismissed, 1 resolved"),
        "{out}"
    );

    // and the new state applies to them
    let (code, out, err) = failed(
        &pg_url,
        &[
            "dismiss",
            &unresolved.to_string(),
            "--reason",
            "left over from before the upgrade",
            "--by",
            "ops",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        failed(
            &pg_url,
            &["dismiss", &resolved.to_string(), "--reason", "x"]
        )
        .0,
        5
    );
    assert!(list_json(&pg_url, false).is_empty());
    // migrate again: nothing to do, nothing changed
    run_migrate(&pg_url);
    assert_eq!(
        row(&list_json(&pg_url, true), unresolved)["dismissed_by"],
        "ops"
    );
}
