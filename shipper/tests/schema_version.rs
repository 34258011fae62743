//! No silent failing inserts across a schema change: a shipper refuses a database migrated
//! past what it knows (a row in `_sqlx_migrations` it does not embed), and `migrate` refuses
//! while a connection named after an older schema version (`tally-shipper/<v>`, the
//! `application_name` every shipper connection carries) is open on the same database.

// Every test holds `common::serial()` (a std Mutex guard that runs the heavy tests one at a
// time) across its awaits on purpose.
#![allow(clippy::await_holding_lock)]

mod common;

use std::str::FromStr;

use common::*;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};

/// The newest migration in `migrations/`: the schema version this build's binary writes.
fn newest_migration() -> i64 {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations");
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let digits: String = name.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<i64>().ok()
        })
        .max()
        .expect("migrations/ holds migrations")
}

/// A connection to `url` named `name`, as a shipper of that version names its connections.
async fn named_connection(url: &str, name: &str) -> PgConnection {
    PgConnectOptions::from_str(url)
        .unwrap()
        .application_name(name)
        .connect()
        .await
        .unwrap()
}

/// `url` with another database name.
fn database(pg: &Pg, name: &str) -> String {
    format!("postgres://postgres@127.0.0.1:{}/{name}", pg.port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shipper_refuses_a_schema_newer_than_it_knows() {
    let _g = serial();
    let (pg, pool) = migrated_pg().await;
    let known = newest_migration();
    let newer = known + 1;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES ($1, 'from a newer shipper', true, '\\x00', 0)",
    )
    .bind(newer)
    .execute(&pool)
    .await
    .unwrap();
    let url = pg.url();
    let says = format!(
        "the schema is at version {newer}, this shipper knows up to {known}: upgrade the shipper"
    );
    let metrics = format!("127.0.0.1:{}", free_port());
    let commands: [&[&str]; 6] = [
        &[
            "run",
            "--redis-url",
            "redis://127.0.0.1:1",
            "--metrics-addr",
            &metrics,
        ],
        &[
            "persist",
            "--kafka-brokers",
            "127.0.0.1:1",
            "--metrics-addr",
            &metrics,
        ],
        &["run", "--migrate", "--metrics-addr", &metrics],
        &["migrate"],
        &["retry-failed"],
        &["reconcile", "--redis-url", "redis://127.0.0.1:1"],
    ];
    for args in commands {
        let (code, out) = shipper_cmd(&[args, &["--database-url", &url]].concat());
        assert_eq!(code, 1, "{args:?}:\n{out}");
        assert!(
            out.contains("tally-shipper: fatal:") && out.contains(&says),
            "{args:?}:\n{out}"
        );
    }
    // the refusals changed nothing
    assert_eq!(
        count(&pool, "SELECT count(*) FROM _sqlx_migrations").await,
        known + 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_without_the_schema_names_migrate() {
    let _g = serial();
    let pg = Pg::start();
    for args in [
        &["retry-failed"][..],
        &["reconcile", "--redis-url", "redis://127.0.0.1:1"],
    ] {
        let (code, out) = shipper_cmd(&[args, &["--database-url", &pg.url()]].concat());
        assert_eq!(code, 1, "{args:?}:\n{out}");
        assert!(
            out.contains("the database lacks tally's migrations 0001_")
                && out.contains("run `tally-shipper migrate"),
            "{args:?}:\n{out}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_refuses_while_a_shipper_of_an_older_schema_is_connected() {
    let _g = serial();
    let pg = Pg::start();
    let admin = pg.pool().await;
    for db in ["second", "third"] {
        sqlx::query(&format!("CREATE DATABASE {db}"))
            .execute(&admin)
            .await
            .unwrap();
    }
    let current = newest_migration();
    let older = format!("tally-shipper/{}", current - 1);
    let old_shipper = named_connection(&pg.url(), &older).await;

    let (code, out) = shipper_cmd(&["migrate", "--database-url", &pg.url()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "refusing to migrate the schema from version 0 to {current}"
        )) && out.contains(&older)
            && out.contains("--force"),
        "{out}"
    );
    let applied: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations')::text")
            .fetch_one(&admin)
            .await
            .unwrap();
    assert_eq!(
        applied, None,
        "migrate applied something although it refused"
    );
    // `run --migrate` refuses too, naming `migrate --force`
    let (code, out) = shipper_cmd(&[
        "run",
        "--migrate",
        "--redis-url",
        "redis://127.0.0.1:1",
        "--metrics-addr",
        &format!("127.0.0.1:{}", free_port()),
        "--database-url",
        &pg.url(),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&older) && out.contains("tally-shipper migrate --force"),
        "{out}"
    );

    // an older shipper on another database does not hold this one back
    let (code, out) = shipper_cmd(&["migrate", "--database-url", &database(&pg, "second")]);
    assert_eq!(code, 0, "{out}");

    // --force migrates anyway
    let third = database(&pg, "third");
    let _old_on_third = named_connection(&third, "tally-shipper/1").await;
    let (code, out) = shipper_cmd(&["migrate", "--force", "--database-url", &third]);
    assert_eq!(code, 0, "{out}");

    // a shipper of the current version is no reason to refuse
    old_shipper.close().await.unwrap();
    let _new_shipper = named_connection(&pg.url(), &format!("tally-shipper/{current}")).await;
    let (code, out) = shipper_cmd(&["migrate", "--database-url", &pg.url()]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        count(
            &admin,
            "SELECT count(*) FROM _sqlx_migrations WHERE success"
        )
        .await,
        current
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_shippers_connections_carry_its_schema_version() {
    let _g = serial();
    let (pg, admin) = migrated_pg().await;
    let current = newest_migration();
    let redis = Redis::start(None);
    let mut sh = Shipper::spawn(
        &base_args("run", Some(&redis.url()), Some(&pg.url()), None),
        &tmpdir("schema-version").join("shipper.log"),
    );
    sh.wait_ready(std::time::Duration::from_secs(30));
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT application_name FROM pg_stat_activity
         WHERE datname = current_database() AND application_name LIKE 'tally-shipper/%'",
    )
    .fetch_all(&admin)
    .await
    .unwrap();
    assert!(
        !names.is_empty()
            && names
                .iter()
                .all(|n| *n == format!("tally-shipper/{current}")),
        "{names:?}"
    );
    sh.sigterm();
    assert!(sh
        .wait_timeout(std::time::Duration::from_secs(30))
        .is_some_and(|s| s.success()));
}
