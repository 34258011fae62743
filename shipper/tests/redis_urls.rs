//! One `--redis-url` for every subcommand, on several standalone servers (a 3-primary
//! cluster given as seeds is in cluster_failover.rs): the value `run` gets, or the same in
//! TALLY_REDIS_URL, lets `reconcile` compare every server's keys where they are and
//! `restore --as-of` correct each key on the server holding it; a full `restore`, which would
//! have to choose a server for every key, refuses and says why.

// Scenarios read better whole than cut into helpers, and every test holds `common::serial()`
// (a std Mutex guard that runs the heavy tests one at a time) across its awaits on purpose.
#![allow(clippy::too_many_lines, clippy::await_holding_lock)]

mod common;

use std::time::Duration;

use common::*;
use redis::aio::MultiplexedConnection;

/// A `tally-shipper` subcommand with `TALLY_REDIS_URL` set: (exit code, stdout + stderr).
fn shipper_cmd_with_url_env(urls: &str, args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(BIN)
        .args(args)
        .env("TALLY_REDIS_URL", urls)
        .output()
        .expect("run tally-shipper");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

async fn gold(c: &mut MultiplexedConnection, key: &str) -> Option<String> {
    redis::cmd("HGET")
        .arg(key)
        .arg("gold")
        .query_async(c)
        .await
        .unwrap()
}

/// The server's clock in milliseconds (events carry the server's time).
async fn server_ms(c: &mut MultiplexedConnection) -> i64 {
    let (s, us): (i64, i64) = redis::cmd("TIME").query_async(c).await.unwrap();
    s * 1000 + us / 1000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_and_restore_take_the_server_list_run_takes() {
    let _g = serial();
    let Some(module) = module_or_skip("reconcile_and_restore_take_the_server_list_run_takes")
    else {
        return;
    };
    let servers = [Redis::start(Some(&module)), Redis::start(Some(&module))];
    let (pg, pool) = migrated_pg().await;
    let urls = format!("{},{}", servers[0].url(), servers[1].url());
    let mut sh = Shipper::spawn(
        &base_args("run", Some(&urls), Some(&pg.url()), None),
        &tmpdir("redis-urls").join("shipper.log"),
    );
    sh.wait_ready(Duration::from_secs(30));
    let mut conns = [servers[0].conn().await, servers[1].conn().await];
    // the clients' sharding: acct:<even> on the first server, acct:<odd> on the second
    for round in 0..3 {
        for i in 0..6 {
            cmd(
                &mut conns[i % 2],
                &["ASSET.INCR", &format!("acct:{i}"), "gold", "10"],
            )
            .await;
        }
        if round == 0 {
            cmd(
                &mut conns[1],
                &["COUPON.CREATE", "camp", "5", "PERUSER", "1"],
            )
            .await;
        }
        cmd(
            &mut conns[1],
            &["COUPON.CLAIM", "camp", &format!("u{round}")],
        )
        .await;
    }
    let p = pg.url();
    let reconcile = |url_args: &[&str]| {
        shipper_cmd(
            &[
                &["reconcile", "--database-url", &p, "--wait-ms", "60000"],
                url_args,
            ]
            .concat(),
        )
    };
    let (code, out) = reconcile(&["--redis-url", &urls]);
    assert_eq!(code, 0, "reconcile with run's --redis-url:\n{out}");
    assert!(out.contains("verdict: MATCH"), "{out}");
    let (code, out) = shipper_cmd_with_url_env(
        &urls,
        &["reconcile", "--database-url", &p, "--wait-ms", "60000"],
    );
    assert_eq!(code, 0, "reconcile with TALLY_REDIS_URL:\n{out}");
    assert!(out.contains("verdict: MATCH"), "{out}");
    // one server alone is not the whole: the other's keys are missing from it
    let (code, out) = reconcile(&["--redis-url", &servers[0].url()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("acct:1: postgres seq 3, missing in redis"),
        "{out}"
    );
    // every server listed must answer, and once
    let (code, out) = reconcile(&["--redis-url", &format!("{urls},redis://127.0.0.1:1")]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(
            "reading the layout of redis://127.0.0.1:1 (a standalone server of --redis-url"
        ),
        "{out}"
    );
    let (code, out) = reconcile(&[
        "--redis-url",
        &format!("{urls},redis://localhost:{}", servers[1].port),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("--redis-url names one server twice"), "{out}");

    // a full restore would have to pick a server for every key: refused, --force or not
    for force in [&[][..], &["--force"]] {
        let (code, out) = shipper_cmd_with_url_env(
            &urls,
            &[&["restore", "--database-url", &p][..], force].concat(),
        );
        assert_eq!(code, 1, "{out}");
        assert!(
            out.contains("refusing to restore: --redis-url lists 2 standalone servers")
                && out.contains("clients' sharding"),
            "{out}"
        );
    }

    // restore --as-of corrects each key on the server that holds it
    let moment = server_ms(&mut conns[0])
        .await
        .max(server_ms(&mut conns[1]).await);
    while server_ms(&mut conns[0]).await <= moment || server_ms(&mut conns[1]).await <= moment {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    for i in 0..6 {
        cmd(
            &mut conns[i % 2],
            &["ASSET.INCR", &format!("acct:{i}"), "gold", "1000"],
        )
        .await;
    }
    cmd(&mut conns[1], &["COUPON.CLAIM", "camp", "u9"]).await;
    let (code, out) = reconcile(&["--redis-url", &urls]);
    assert_eq!(code, 0, "drained before the rollback:\n{out}");
    let (code, out) = shipper_cmd(&[
        "restore",
        "--redis-url",
        &urls,
        "--database-url",
        &p,
        "--as-of",
        &moment.to_string(),
    ]);
    assert_eq!(code, 0, "restore --as-of (ends with reconcile):\n{out}");
    assert!(
        out.contains("6 fields of 6 keys corrected, 1 claims released")
            && out.contains("verdict: MATCH"),
        "{out}"
    );
    for i in 0..6 {
        let key = format!("acct:{i}");
        assert_eq!(
            gold(&mut conns[i % 2], &key)
                .await
                .map(|g| normalize_decimal(&g)),
            Some("30".to_string()),
            "{key} on its server"
        );
        assert_eq!(
            gold(&mut conns[1 - i % 2], &key).await,
            None,
            "{key} elsewhere"
        );
    }
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM coupon_issues WHERE NOT released"
        )
        .await,
        3
    );
    sh.sigterm();
    assert!(sh
        .wait_timeout(Duration::from_secs(30))
        .is_some_and(|s| s.success()));
}
