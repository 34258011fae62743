//! Helpers shared by the integration test files (`mod common;`).
#![allow(dead_code)]

use tally_tests::{cmd, error_of, snapshot};

/// Asserts `args` fails with an error starting with `code` and changes nothing.
pub fn rejected(conn: &mut redis::Connection, args: &[&str], code: &str) -> String {
    let before = snapshot(conn);
    let err = error_of(conn, args);
    assert!(err.starts_with(code), "{args:?}: expected {code}, got '{err}'");
    assert_eq!(snapshot(conn), before, "{args:?} changed data or history");
    err
}

pub fn strings(conn: &mut redis::Connection, args: &[&str]) -> Vec<String> {
    cmd(args).query(conn).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// Runs a command that must succeed, whatever its reply.
pub fn ok(conn: &mut redis::Connection, args: &[&str]) {
    let _: redis::Value = cmd(args).query(conn).unwrap_or_else(|e| panic!("{args:?}: {e}"));
}
