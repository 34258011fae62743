//! Helpers shared by the integration test files (`mod common;`).
#![allow(dead_code)]

use tally_tests::{cmd, error_of, snapshot};

/// Asserts `args` fails with an error starting with `code` and changes nothing.
pub fn rejected(conn: &mut redis::Connection, args: &[&str], code: &str) -> String {
    rejected_seen_by(conn, None, args, code)
}

/// `rejected` for a connection that may not read everything: `observer` (an admin
/// connection) takes the before/after snapshots.
pub fn rejected_seen_by(
    conn: &mut redis::Connection,
    mut observer: Option<&mut redis::Connection>,
    args: &[&str],
    code: &str,
) -> String {
    let before = snapshot(observer.as_deref_mut().unwrap_or(conn));
    let err = error_of(conn, args);
    assert!(
        err.starts_with(code),
        "{args:?}: expected {code}, got '{err}'"
    );
    assert_eq!(
        snapshot(observer.unwrap_or(conn)),
        before,
        "{args:?} changed data or history"
    );
    err
}

pub fn strings(conn: &mut redis::Connection, args: &[&str]) -> Vec<String> {
    cmd(args)
        .query(conn)
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// Runs a command that must succeed, whatever its reply.
pub fn ok(conn: &mut redis::Connection, args: &[&str]) {
    let _: redis::Value = cmd(args)
        .query(conn)
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
}

/// Starts the server under test with `args` (after `--loadmodule <tally>`) and expects it to
/// refuse to start; returns its log. Panics if the server comes up.
pub fn refuses_to_start(module_and_server_args: &[&str]) -> String {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("server.log");
    let port = tally_tests::free_port();
    let mut child = Command::new(tally_tests::server_bin())
        .arg("--port")
        .arg(port.to_string())
        .arg("--bind")
        .arg("127.0.0.1")
        .arg("--dir")
        .arg(dir.path())
        .arg("--save")
        .arg("")
        .arg("--logfile")
        .arg(&log)
        .arg("--loadmodule")
        .arg(tally_tests::module_path())
        .args(module_and_server_args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn server");
    let started =
        tally_tests::wait_server_owned(port, &mut child, std::time::Duration::from_secs(30));
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        started.is_err(),
        "server started with {module_and_server_args:?}; log:\n{text}"
    );
    text
}
