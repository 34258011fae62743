//! Upgrade contract: data written by an earlier module keeps its meaning under this one.
//!
//! `tests/fixtures/upgrade-v1/` holds an RDB written by the module of c421fd3 (op-id record
//! format 1: `tally:op:<op-id>`, fingerprint over the raw arguments; coupon holders in the
//! `u:<user>` layout) and the replies that module gave to `REQUESTS`. Its provenance and how
//! to make it again are in that folder's README. This module must replay every recorded
//! op-id with its first reply and append nothing, answer CONFLICT to a different request
//! with a recorded op-id, continue every key's sequence, and convert the old holder layout.

use std::path::{Path, PathBuf};

use tally_tests::{cmd, events, Redis};

/// The requests the fixture's module answered, in order (standalone mode).
const REQUESTS: &[&[&str]] = &[
    &[
        "ASSET.INCR",
        "acct:1",
        "BDP",
        "5200",
        "ID",
        "op-incr-1",
        "META",
        "grant",
    ],
    &[
        "ASSET.INCR",
        "acct:1",
        "BDP",
        "10.43",
        "GOLD",
        "2",
        "ID",
        "op-incr-2",
    ],
    &[
        "asset.incr",
        "acct:3",
        "bdp",
        "1",
        "meta",
        "lower",
        "id",
        "op-lower",
    ],
    &[
        "ASSET.TRANSFER",
        "acct:1",
        "acct:2",
        "BDP",
        "10",
        "ID",
        "op-xfer-1",
    ],
    &[
        "COUPON.CREATE",
        "camp",
        "10",
        "PERUSER",
        "3",
        "ID",
        "op-create-1",
    ],
    &["COUPON.CLAIM", "camp", "alice", "ID", "op-claim-1"],
    &["COUPON.CLAIM", "camp", "alice", "ID", "op-claim-2"],
    &["COUPON.CLAIM", "camp", "bob", "ID", "op-claim-3"],
    &["COUPON.RELEASE", "camp", "alice", "ID", "op-release-1"],
    &[
        "USAGE.LIMIT",
        "quota",
        "100",
        "PERIOD",
        "none",
        "ID",
        "op-limit-1",
    ],
    &["USAGE.CONSUME", "quota", "7", "ID", "op-consume-1"],
    &["ASSET.INCR", "acct:4", "BDP", "1"],
];

/// A different request under each recorded op-id (a changed amount, key, user or limit).
const CONFLICTING: &[&[&str]] = &[
    &[
        "ASSET.INCR",
        "acct:1",
        "BDP",
        "5201",
        "ID",
        "op-incr-1",
        "META",
        "grant",
    ],
    &[
        "ASSET.INCR",
        "acct:9",
        "BDP",
        "5200",
        "ID",
        "op-incr-1",
        "META",
        "grant",
    ],
    &["ASSET.INCR", "acct:1", "BDP", "10.43", "ID", "op-incr-2"],
    &[
        "ASSET.INCR",
        "acct:3",
        "bdp",
        "1",
        "meta",
        "other",
        "id",
        "op-lower",
    ],
    &[
        "ASSET.TRANSFER",
        "acct:1",
        "acct:2",
        "BDP",
        "11",
        "ID",
        "op-xfer-1",
    ],
    &[
        "COUPON.CREATE",
        "camp",
        "11",
        "PERUSER",
        "3",
        "ID",
        "op-create-1",
    ],
    &["COUPON.CLAIM", "camp", "carol", "ID", "op-claim-1"],
    &["COUPON.RELEASE", "camp", "bob", "ID", "op-release-1"],
    &[
        "USAGE.LIMIT",
        "quota",
        "200",
        "PERIOD",
        "none",
        "ID",
        "op-limit-1",
    ],
    &["USAGE.CONSUME", "quota", "8", "ID", "op-consume-1"],
];

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/upgrade-v1")
}

/// A reply as JSON, so the fixture can record it and the test compare it.
fn to_json(v: &redis::Value) -> serde_json::Value {
    use redis::Value as V;
    match v {
        V::Int(i) => serde_json::json!(i),
        V::BulkString(b) => serde_json::json!(String::from_utf8_lossy(b)),
        V::SimpleString(s) => serde_json::json!(s),
        V::Okay => serde_json::json!("OK"),
        V::Array(items) => serde_json::Value::Array(items.iter().map(to_json).collect()),
        V::ServerError(e) => serde_json::json!({ "error": format!("{e:?}") }),
        other => serde_json::json!(format!("{other:?}")),
    }
}

fn send(c: &mut redis::Connection, args: &[&str]) -> redis::RedisResult<redis::Value> {
    cmd(args).query(c)
}

fn xlen(c: &mut redis::Connection) -> i64 {
    cmd(&["XLEN", "tally:log"]).query(c).expect("XLEN")
}

/// Makes the fixture: run with the OLD module, e.g.
/// `TALLY_MODULE=/old/libtally.so TALLY_UPGRADE_FIXTURE_OUT=tests/fixtures/upgrade-v1 \
///  cargo test -p tally-tests --test upgrade -- --ignored generate`.
#[test]
#[ignore = "generates the fixture with an old module; see tests/fixtures/upgrade-v1/README.md"]
fn generate_v1_fixture() {
    let out = PathBuf::from(std::env::var("TALLY_UPGRADE_FIXTURE_OUT").expect("set the output"));
    // Records kept for 10 years, so the fixture's op-ids are still inside their window.
    let redis = Redis::start_with_module_args(&["op-ttl-ms", "315360000000"]);
    let mut c = redis.conn();
    let mut replies = Vec::new();
    for args in REQUESTS {
        let reply = send(&mut c, args).expect("the old module accepts the request");
        replies.push(to_json(&reply));
    }
    let _: () = cmd(&["SAVE"]).query(&mut c).expect("SAVE");
    std::fs::create_dir_all(&out).expect("output dir");
    std::fs::copy(redis.dir.path().join("dump.rdb"), out.join("dump.rdb")).expect("copy RDB");
    let text = serde_json::to_string_pretty(&replies).expect("json");
    std::fs::write(out.join("replies.json"), text + "\n").expect("write replies");
}

fn recorded_replies() -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(fixture_dir().join("replies.json")).expect("replies");
    let replies: Vec<serde_json::Value> = serde_json::from_str(&text).expect("replies JSON");
    assert_eq!(
        replies.len(),
        REQUESTS.len(),
        "the fixture answers every request"
    );
    replies
}

#[test]
fn op_ids_recorded_before_the_upgrade_replay_their_first_reply() {
    let redis = Redis::start_from_rdb(&fixture_dir().join("dump.rdb"), &[]);
    let mut c = redis.conn();
    let before = xlen(&mut c);
    assert_eq!(
        before,
        REQUESTS.len() as i64,
        "one event per request in the fixture"
    );
    for (args, first) in REQUESTS.iter().zip(recorded_replies()) {
        if !args.iter().any(|a| a.eq_ignore_ascii_case("ID")) {
            continue; // without an op-id a request is new every time
        }
        let again = send(&mut c, args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        assert_eq!(to_json(&again), first, "{args:?} replays its first reply");
    }
    assert_eq!(xlen(&mut c), before, "replays append nothing");
    for args in CONFLICTING {
        let err = send(&mut c, args).expect_err("a different request under a recorded op-id");
        assert_eq!(err.code(), Some("CONFLICT"), "{args:?}: {err}");
    }
    assert_eq!(xlen(&mut c), before, "refused requests append nothing");
}

/// The highest seq each key reached in the fixture's stream.
fn last_seq(events: &[(String, serde_json::Value)], key: &str) -> i64 {
    let seqs = events
        .iter()
        .flat_map(|(_, e)| e["keys"].as_array().cloned().unwrap_or_default());
    seqs.filter(|k| k["key"] == key)
        .filter_map(|k| k["seq"].as_i64())
        .max()
        .unwrap_or(0)
}

#[test]
fn sequences_and_coupon_holders_carry_on_after_the_upgrade() {
    let redis = Redis::start_from_rdb(&fixture_dir().join("dump.rdb"), &[]);
    let mut c = redis.conn();
    let old = events(&mut c, "tally:log");
    let acct1 = last_seq(&old, "acct:1");
    assert!(
        acct1 >= 3,
        "acct:1 changed three times in the fixture (seq {acct1})"
    );
    let _: Vec<String> = cmd(&["ASSET.INCR", "acct:1", "BDP", "1", "ID", "op-new"])
        .query(&mut c)
        .expect("a new op-id on an old key");
    let new = events(&mut c, "tally:log");
    assert_eq!(
        last_seq(&new, "acct:1"),
        acct1 + 1,
        "acct:1's sequence continues"
    );

    // alice's first claim (op-claim-1) is the one she still holds, in the old layout
    let replies = recorded_replies();
    let first_issue = replies[5][0].as_i64().expect("op-claim-1's issue number");
    let fields: Vec<String> = cmd(&["HKEYS", "camp"]).query(&mut c).expect("HKEYS");
    assert!(
        fields.iter().any(|f| f == "u:alice"),
        "the fixture has the old layout"
    );
    let (released, _remaining): (i64, i64) = cmd(&["COUPON.RELEASE", "camp", "alice"])
        .query(&mut c)
        .expect("release");
    assert_eq!(
        released, first_issue,
        "the release gives back alice's remaining claim"
    );
    let fields: Vec<String> = cmd(&["HKEYS", "camp"]).query(&mut c).expect("HKEYS");
    assert!(
        !fields.iter().any(|f| f == "u:alice"),
        "converted in the same step"
    );
    let (issue, _): (i64, i64) = cmd(&["COUPON.CLAIM", "camp", "bob"])
        .query(&mut c)
        .expect("bob's second claim");
    assert!(
        issue > first_issue,
        "issue numbers are never reused ({issue})"
    );
}
