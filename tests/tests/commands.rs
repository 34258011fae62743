//! Every command's replies, bounds, idempotency and bad inputs. Each rejected call must leave
//! the data and the stream exactly as they were.
// Test scenarios read better whole: they opt out of the 70-line limit (clippy.toml).
#![allow(clippy::too_many_lines)]

use std::collections::HashMap;

mod common;

use common::{rejected, strings};
use tally_tests::{cmd, error_of, events, snapshot, Redis};

#[test]
fn asset_incr_is_exact_and_bounded() {
    let redis = Redis::start(&[]);
    let mut c = redis.conn();
    // An existing hash written by another client keeps working.
    let _: () = cmd(&["HSET", "user.asset.42", "BDP", "100.50"])
        .query(&mut c)
        .unwrap();
    assert_eq!(
        strings(&mut c, &["ASSET.INCR", "user.asset.42", "BDP", "5099.5"]),
        ["5200"]
    );
    assert_eq!(
        strings(&mut c, &["ASSET.INCR", "user.asset.42", "BDP", "10.43"]),
        ["5210.43"]
    );
    assert_eq!(
        strings(&mut c, &["ASSET.INCR", "acct", "a", "0.1", "b", "0.2"]),
        ["0.1", "0.2"]
    );
    assert_eq!(
        strings(&mut c, &["ASSET.INCR", "acct", "a", "0.2"]),
        ["0.3"]
    );
    assert_eq!(
        strings(&mut c, &["ASSET.GET", "acct", "a", "b", "zzz"]),
        ["0.3", "0.2", "0"]
    );
    assert_eq!(
        strings(&mut c, &["ASSET.GET", "acct"]),
        ["a", "0.3", "b", "0.2"]
    );
    assert_eq!(
        strings(&mut c, &["ASSET.GET", "nokey"]),
        Vec::<String>::new()
    );

    // All or nothing: the second field would go negative, so the first does not change.
    let e = rejected(
        &mut c,
        &["ASSET.INCR", "acct", "a", "-0.1", "b", "-1"],
        "INSUFFICIENT",
    );
    assert!(e.contains("cannot cover"), "{e}");
    rejected(
        &mut c,
        &["ASSET.INCR", "acct", "a", "-0.31"],
        "INSUFFICIENT",
    );
    assert_eq!(strings(&mut c, &["ASSET.INCR", "acct", "a", "-0.3"]), ["0"]);
    assert_eq!(
        strings(&mut c, &["ASSET.INCR", "acct", "a", "-5", "FLOOR", "-10"]),
        ["-5"]
    );
    rejected(
        &mut c,
        &["ASSET.INCR", "acct", "a", "-5.01", "FLOOR", "-10"],
        "INSUFFICIENT",
    );
    assert_eq!(
        strings(&mut c, &["ASSET.INCR", "acct", "a", "-1000", "NOFLOOR"]),
        ["-1005"]
    );
    // A deposit into an overdrawn balance is allowed even if it stays below the floor.
    assert_eq!(
        strings(&mut c, &["ASSET.INCR", "acct", "a", "5"]),
        ["-1000"]
    );
    rejected(
        &mut c,
        &["ASSET.INCR", "acct", "b", "1", "CEIL", "1"],
        "LIMIT",
    );
    assert_eq!(
        strings(&mut c, &["ASSET.INCR", "acct", "b", "0.8", "CEIL", "1"]),
        ["1"]
    );
    let max = "99999999999999999999";
    assert_eq!(strings(&mut c, &["ASSET.INCR", "big", "x", max]), [max]);
    rejected(&mut c, &["ASSET.INCR", "big", "x", "1"], "ERR");
}

#[test]
fn transfer_moves_atomically() {
    let redis = Redis::start(&[]);
    let mut c = redis.conn();
    strings(&mut c, &["ASSET.INCR", "{u}1", "gold", "10"]);
    assert_eq!(
        strings(&mut c, &["ASSET.TRANSFER", "{u}1", "{u}2", "gold", "7.5"]),
        ["2.5", "7.5"]
    );
    rejected(
        &mut c,
        &["ASSET.TRANSFER", "{u}1", "{u}2", "gold", "2.51"],
        "INSUFFICIENT",
    );
    rejected(
        &mut c,
        &["ASSET.TRANSFER", "{u}1", "{u}1", "gold", "1"],
        "ERR",
    );
    rejected(
        &mut c,
        &["ASSET.TRANSFER", "{u}1", "{u}2", "gold", "-1"],
        "ERR",
    );
    rejected(
        &mut c,
        &["ASSET.TRANSFER", "{u}1", "{u}2", "gold", "0"],
        "ERR",
    );
    let evs = events(&mut c, "tally:log");
    let t = &evs.last().unwrap().1;
    assert_eq!(t["type"], "asset.transfer");
    assert_eq!(t["keys"][0]["seq"], 2);
    assert_eq!(t["keys"][1]["seq"], 1);
    assert_eq!(t["changes"][0]["delta"], "-7.5");
    assert_eq!(t["changes"][1]["balance"], "7.5");
    let keys: Vec<String> = cmd(&[
        "COMMAND",
        "GETKEYS",
        "ASSET.TRANSFER",
        "a",
        "b",
        "gold",
        "1",
    ])
    .query(&mut c)
    .unwrap();
    assert_eq!(keys, ["a", "b"]);
}

#[test]
fn idempotent_retries_and_conflicts() {
    let redis = Redis::start(&[]);
    let mut c = redis.conn();
    let first = strings(
        &mut c,
        &[
            "ASSET.INCR",
            "k",
            "f",
            "10",
            "ID",
            "grant-1",
            "META",
            "bonus",
        ],
    );
    let n = events(&mut c, "tally:log").len();
    // Same op-id, same request (options in another order): same reply, no change, no event.
    for _ in 0..3 {
        assert_eq!(
            strings(
                &mut c,
                &[
                    "ASSET.INCR",
                    "k",
                    "f",
                    "10",
                    "META",
                    "bonus",
                    "id",
                    "grant-1"
                ]
            ),
            first
        );
    }
    assert_eq!(events(&mut c, "tally:log").len(), n);
    assert_eq!(strings(&mut c, &["ASSET.GET", "k", "f"]), ["10"]);
    rejected(
        &mut c,
        &[
            "ASSET.INCR",
            "k",
            "f",
            "11",
            "ID",
            "grant-1",
            "META",
            "bonus",
        ],
        "CONFLICT",
    );
    rejected(
        &mut c,
        &["ASSET.INCR", "k", "f", "10", "ID", "grant-1"],
        "CONFLICT",
    );
    rejected(
        &mut c,
        &[
            "ASSET.INCR",
            "k",
            "g",
            "10",
            "ID",
            "grant-1",
            "META",
            "bonus",
        ],
        "CONFLICT",
    );
    // A rejected call does not burn its op-id: the retry can succeed later.
    rejected(
        &mut c,
        &["ASSET.INCR", "k", "f", "-20", "ID", "spend-1"],
        "INSUFFICIENT",
    );
    assert_eq!(
        strings(&mut c, &["ASSET.INCR", "k", "f", "-5", "ID", "spend-1"]),
        ["5"]
    );
    // Replays of array replies with integers keep their types.
    let _: () = cmd(&["COUPON.CREATE", "camp", "5"]).query(&mut c).unwrap();
    let a: (i64, i64) = cmd(&["COUPON.CLAIM", "camp", "u1", "ID", "c-1"])
        .query(&mut c)
        .unwrap();
    let b: (i64, i64) = cmd(&["COUPON.CLAIM", "camp", "u1", "ID", "c-1"])
        .query(&mut c)
        .unwrap();
    assert_eq!(a, (1, 4));
    assert_eq!(a, b);
    let ev = &events(&mut c, "tally:log").last().unwrap().1.clone();
    assert_eq!(ev["op"], "c-1");
    let ttl: i64 = cmd(&["PTTL", "tally:op:4:camp:c-1"]).query(&mut c).unwrap();
    assert!(ttl > 86_000_000 && ttl <= 86_400_000, "op-id window {ttl}");
    let info: String = cmd(&["INFO", "tally"]).query(&mut c).unwrap();
    assert!(info.contains("tally_idempotent_replays:4"), "{info}");
}

#[test]
fn coupons() {
    let redis = Redis::start(&[]);
    let mut c = redis.conn();
    let _: () = cmd(&["COUPON.CREATE", "camp", "2", "PERUSER", "2"])
        .query(&mut c)
        .unwrap();
    rejected(&mut c, &["COUPON.CREATE", "camp", "5"], "ERR");
    assert_eq!(
        cmd(&["COUPON.CLAIM", "camp", "alice"])
            .query::<(i64, i64)>(&mut c)
            .unwrap(),
        (1, 1)
    );
    assert_eq!(
        cmd(&["COUPON.CLAIM", "camp", "alice"])
            .query::<(i64, i64)>(&mut c)
            .unwrap(),
        (2, 0)
    );
    rejected(&mut c, &["COUPON.CLAIM", "camp", "alice"], "DUPLICATE");
    rejected(&mut c, &["COUPON.CLAIM", "camp", "bob"], "SOLDOUT");
    assert_eq!(
        cmd(&["COUPON.RELEASE", "camp", "alice"])
            .query::<(i64, i64)>(&mut c)
            .unwrap(),
        (2, 1)
    );
    assert_eq!(
        cmd(&["COUPON.CLAIM", "camp", "bob"])
            .query::<(i64, i64)>(&mut c)
            .unwrap(),
        (3, 0)
    );
    rejected(&mut c, &["COUPON.RELEASE", "camp", "carol"], "NOTFOUND");
    rejected(&mut c, &["COUPON.CLAIM", "nocamp", "bob"], "NOTFOUND");
    let info: HashMap<String, i64> = cmd(&["COUPON.INFO", "camp"]).query(&mut c).unwrap();
    assert_eq!(
        (
            info["total"],
            info["issued"],
            info["remaining"],
            info["peruser"]
        ),
        (2, 2, 0, 2)
    );
    let holders: HashMap<String, String> = cmd(&["HGETALL", "camp"]).query(&mut c).unwrap();
    // Per holder: how many claims (`c:`) and each one's issue number (`h:<k>:`).
    assert_eq!(holders.get("c:alice").map(String::as_str), Some("1"));
    assert_eq!(holders.get("h:1:alice").map(String::as_str), Some("1"));
    assert_eq!(holders.get("h:2:alice"), None);
    assert_eq!(holders.get("c:bob").map(String::as_str), Some("1"));
    assert_eq!(holders.get("h:1:bob").map(String::as_str), Some("3"));
    // Windows: a campaign in the future and one in the past.
    let _: () = cmd(&["COUPON.CREATE", "later", "5", "START", "99999999999999"])
        .query(&mut c)
        .unwrap();
    rejected(&mut c, &["COUPON.CLAIM", "later", "bob"], "CLOSED");
    let _: () = cmd(&["COUPON.CREATE", "past", "5", "START", "1", "END", "2"])
        .query(&mut c)
        .unwrap();
    rejected(&mut c, &["COUPON.CLAIM", "past", "bob"], "CLOSED");
    let kinds: Vec<String> = events(&mut c, "tally:log")
        .iter()
        .map(|(_, e)| e["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        kinds,
        [
            "coupon.create",
            "coupon.claim",
            "coupon.claim",
            "coupon.release",
            "coupon.claim",
            "coupon.create",
            "coupon.create"
        ]
    );
}

#[test]
fn usage() {
    let redis = Redis::start(&[]);
    let mut c = redis.conn();
    rejected(&mut c, &["USAGE.CONSUME", "q", "1"], "NOTFOUND");
    let _: () = cmd(&["USAGE.LIMIT", "q", "2.5", "PERIOD", "day"])
        .query(&mut c)
        .unwrap();
    assert_eq!(strings(&mut c, &["USAGE.CONSUME", "q", "2"]), ["2", "0.5"]);
    rejected(&mut c, &["USAGE.CONSUME", "q", "0.6"], "LIMIT");
    assert_eq!(
        strings(&mut c, &["USAGE.CONSUME", "q", "0.5"]),
        ["2.5", "0"]
    );
    let got: HashMap<String, String> = cmd(&["USAGE.GET", "q"]).query(&mut c).unwrap();
    assert_eq!(got["period"], "day");
    let ev = events(&mut c, "tally:log").last().unwrap().1.clone();
    assert_eq!(
        ev["usage"]["period_id"].as_str(),
        Some(got["period_id"].as_str())
    );
    assert_eq!(got["period_id"].len(), "2026-11-22".len());
    // Raising the limit keeps what was used in this period.
    let _: () = cmd(&["USAGE.LIMIT", "q", "3", "PERIOD", "day"])
        .query(&mut c)
        .unwrap();
    assert_eq!(strings(&mut c, &["USAGE.CONSUME", "q", "0.5"]), ["3", "0"]);
    rejected(&mut c, &["USAGE.LIMIT", "q", "3", "PERIOD", "week"], "ERR");
    rejected(&mut c, &["USAGE.CONSUME", "q", "-1"], "ERR");
}

#[test]
fn bad_inputs_get_clear_errors_and_change_nothing() {
    let redis = Redis::start(&[]);
    let mut c = redis.conn();
    strings(&mut c, &["ASSET.INCR", "acct", "f", "1"]);
    let _: () = cmd(&["SET", "str", "x"]).query(&mut c).unwrap();
    let _: () = cmd(&["HSET", "text", "f", "not-a-number"])
        .query(&mut c)
        .unwrap();
    let _: () = cmd(&["USAGE.LIMIT", "q", "5"]).query(&mut c).unwrap();
    let _: () = cmd(&["COUPON.CREATE", "camp", "5"]).query(&mut c).unwrap();
    let cases: &[(&[&str], &str, &str)] = &[
        (&["ASSET.INCR"], "ERR", "wrong number"),
        (&["ASSET.INCR", "acct"], "ERR", "wrong number"),
        (&["ASSET.INCR", "acct", "f"], "ERR", "wrong number"),
        (&["ASSET.INCR", "acct", "f", "abc"], "ERR", "not a decimal"),
        (&["ASSET.INCR", "acct", "f", "1e3"], "ERR", "not a decimal"),
        (&["ASSET.INCR", "acct", "f", "inf"], "ERR", "not a decimal"),
        (&["ASSET.INCR", "acct", "f", "NaN"], "ERR", "not a decimal"),
        (
            &["ASSET.INCR", "acct", "f", "0.0000000000000000001"],
            "ERR",
            "18 fractional",
        ),
        (
            &["ASSET.INCR", "acct", "f", "123456789012345678901"],
            "ERR",
            "out of range",
        ),
        (
            &["ASSET.INCR", "acct", "f", "1", "g", "x"],
            "ERR",
            "not a decimal",
        ),
        (&["ASSET.INCR", "acct", "f", "1", "f", "2"], "ERR", "twice"),
        (
            &["ASSET.INCR", "acct", "f", "1", "ID", "a", "BOGUS", "1"],
            "ERR",
            "unknown option",
        ),
        (
            &["ASSET.INCR", "acct", "f", "1", "ID"],
            "ERR",
            "needs a value",
        ),
        (
            &["ASSET.INCR", "acct", "f", "1", "FLOOR", "1", "NOFLOOR"],
            "ERR",
            "exclude",
        ),
        (
            &["ASSET.INCR", "acct", "f", "1", "FLOOR", "x"],
            "ERR",
            "not a decimal",
        ),
        (&["ASSET.INCR", "str", "f", "1"], "WRONGTYPE", ""),
        (
            &["ASSET.INCR", "text", "f", "1"],
            "WRONGTYPE",
            "not a decimal",
        ),
        (&["ASSET.GET", "str"], "WRONGTYPE", ""),
        (&["ASSET.GET", "text", "f"], "WRONGTYPE", "not a decimal"),
        (&["ASSET.INCR", "tally:log", "f", "1"], "ERR", "reserved"),
        (
            &["ASSET.TRANSFER", "acct", "other", "f"],
            "ERR",
            "wrong number",
        ),
        (
            &["ASSET.TRANSFER", "acct", "str", "f", "1"],
            "WRONGTYPE",
            "",
        ),
        (&["COUPON.CREATE", "c2"], "ERR", "wrong number"),
        (&["COUPON.CREATE", "c2", "-1"], "ERR", "between"),
        (
            &["COUPON.CREATE", "c2", "10", "PERUSER", "x"],
            "ERR",
            "not an integer",
        ),
        (
            &["COUPON.CREATE", "c2", "10", "START", "5", "END", "5"],
            "ERR",
            "after START",
        ),
        (&["COUPON.CREATE", "str", "10"], "WRONGTYPE", ""),
        (
            &["COUPON.CLAIM", "acct", "u"],
            "WRONGTYPE",
            "not a tally coupon",
        ),
        (
            &["COUPON.CLAIM", "q", "u"],
            "WRONGTYPE",
            "not a tally coupon",
        ),
        (&["COUPON.CLAIM", "camp"], "ERR", "wrong number"),
        (&["COUPON.CLAIM", "camp", "a,b"], "ERR", "','"),
        (&["COUPON.INFO", "camp", "extra"], "ERR", "wrong number"),
        (&["COUPON.INFO", "acct"], "WRONGTYPE", ""),
        (&["USAGE.LIMIT", "q"], "ERR", "wrong number"),
        (&["USAGE.LIMIT", "q", "x"], "ERR", "not a decimal"),
        (
            &["USAGE.LIMIT", "camp", "5"],
            "WRONGTYPE",
            "not a tally usage",
        ),
        (&["USAGE.CONSUME", "q", "0"], "ERR", "positive"),
        (&["USAGE.CONSUME", "acct", "1"], "WRONGTYPE", ""),
        (&["USAGE.GET", "nope"], "NOTFOUND", ""),
    ];
    for (args, code, text) in cases {
        let err = rejected(&mut c, args, code);
        assert!(err.contains(text), "{args:?}: '{err}' lacks '{text}'");
    }
    // Non-UTF-8 and NUL bytes.
    let before = snapshot(&mut c);
    let e = redis::cmd("ASSET.INCR")
        .arg(&b"\xff\xfe"[..])
        .arg("f")
        .arg("1")
        .query::<redis::Value>(&mut c)
        .unwrap_err();
    assert!(e.to_string().contains("UTF-8"), "{e}");
    let e = redis::cmd("ASSET.INCR")
        .arg("acct")
        .arg(&b"a\0b"[..])
        .arg("1")
        .query::<redis::Value>(&mut c)
        .unwrap_err();
    assert!(e.to_string().contains("NUL"), "{e}");
    let long_meta = "m".repeat(5000);
    let e = redis::cmd("ASSET.INCR")
        .arg("acct")
        .arg("f")
        .arg("1")
        .arg("META")
        .arg(&long_meta)
        .query::<redis::Value>(&mut c)
        .unwrap_err();
    assert!(e.to_string().contains("META"), "{e}");
    assert_eq!(snapshot(&mut c), before);
    let info: String = cmd(&["INFO", "tally"]).query(&mut c).unwrap();
    assert!(info.contains("tally_rejected_wrongtype:"), "{info}");
    assert!(!info.contains("tally_rejected_err:0"), "{info}");
}

#[test]
fn backlog_bound_refuses_instead_of_losing_history() {
    let redis = Redis::start(&[]);
    let mut c = redis.conn();
    let _: () = cmd(&["CONFIG", "SET", "tally.max-backlog", "3"])
        .query(&mut c)
        .unwrap();
    for _ in 0..3 {
        strings(&mut c, &["ASSET.INCR", "k", "f", "1"]);
    }
    let e = rejected(&mut c, &["ASSET.INCR", "k", "f", "1"], "BACKLOG");
    assert!(e.contains("unshipped"), "{e}");
    // Once the shipper trims acknowledged entries, writes flow again.
    let _: i64 = cmd(&["XTRIM", "tally:log", "MAXLEN", "0"])
        .query(&mut c)
        .unwrap();
    assert_eq!(strings(&mut c, &["ASSET.INCR", "k", "f", "1"]), ["4"]);
    let _: () = cmd(&["CONFIG", "SET", "tally.max-backlog", "0"])
        .query(&mut c)
        .unwrap();
    let v: Vec<String> = cmd(&["CONFIG", "GET", "tally.max-backlog"])
        .query(&mut c)
        .unwrap();
    assert_eq!(v, ["tally.max-backlog", "0"]);
}

#[test]
fn stream_key_of_wrong_type_is_refused() {
    let redis = Redis::start(&[]);
    let mut c = redis.conn();
    let _: () = cmd(&["SET", "tally:log", "oops"]).query(&mut c).unwrap();
    rejected(&mut c, &["ASSET.INCR", "k", "f", "1"], "WRONGTYPE");
}

#[test]
fn acl_users_cannot_write_history_they_may_not_touch() {
    let redis = Redis::start(&[]);
    let mut c = redis.conn();
    // May run tally commands on app:* keys but has no access to tally:* keys.
    let _: () = cmd(&["ACL", "SETUSER", "app", "on", ">pw", "~app:*", "+@all"])
        .query(&mut c)
        .unwrap();
    let _: () = cmd(&[
        "ACL", "SETUSER", "full", "on", ">pw", "~app:*", "~tally:*", "+@all",
    ])
    .query(&mut c)
    .unwrap();
    let mut app = redis::Client::open(format!("redis://app:pw@127.0.0.1:{}/", redis.port))
        .unwrap()
        .get_connection()
        .unwrap();
    let before = snapshot(&mut c);
    let e = error_of(&mut app, &["ASSET.INCR", "app:1", "f", "1"]);
    assert!(e.starts_with("NOPERM"), "{e}");
    let e = error_of(&mut app, &["ASSET.INCR", "other", "f", "1"]);
    assert!(e.contains("NOPERM") || e.contains("permission"), "{e}");
    assert_eq!(snapshot(&mut c), before);
    let mut full = redis::Client::open(format!("redis://full:pw@127.0.0.1:{}/", redis.port))
        .unwrap()
        .get_connection()
        .unwrap();
    assert_eq!(
        strings(&mut full, &["ASSET.INCR", "app:1", "f", "1"]),
        ["1"]
    );
}

#[test]
fn module_arguments_configure_the_module() {
    let redis = Redis::start_with_module_args(&["prefix", "hist", "max-backlog", "2"]);
    let mut c = redis.conn();
    strings(&mut c, &["ASSET.INCR", "k", "f", "1"]);
    strings(&mut c, &["ASSET.INCR", "k", "f", "1"]);
    rejected(&mut c, &["ASSET.INCR", "k", "f", "1"], "BACKLOG");
    assert_eq!(events(&mut c, "hist:log").len(), 2);
    let seq: HashMap<String, i64> = cmd(&["HGETALL", "hist:seq"]).query(&mut c).unwrap();
    assert_eq!(seq["k"], 2);
    let e = error_of(&mut c, &["CONFIG", "SET", "tally.prefix", "x"]);
    assert!(e.contains("immutable") || e.contains("ERR"), "{e}");
}

#[test]
fn commands_declare_arity_flags_and_keys() {
    let redis = Redis::start(&[]);
    let mut c = redis.conn();
    let expect: &[(&str, i64, &str, bool)] = &[
        ("asset.incr", -4, "write", false),
        ("asset.get", -2, "readonly", false),
        ("asset.transfer", -5, "write", true),
        ("coupon.create", -3, "write", true),
        ("coupon.claim", -3, "write", true),
        ("coupon.release", -3, "write", true),
        ("coupon.info", 2, "readonly", true),
        ("usage.limit", -3, "write", true),
        ("usage.consume", -3, "write", true),
        ("usage.get", 2, "readonly", true),
    ];
    for (name, arity, kind, fast) in expect {
        let info: Vec<redis::Value> = cmd(&["COMMAND", "INFO", name]).query(&mut c).unwrap();
        let redis::Value::Array(fields) = &info[0] else {
            panic!("{name}: {info:?}")
        };
        assert_eq!(
            redis::from_redis_value::<i64>(fields[1].clone()).unwrap(),
            *arity,
            "{name} arity"
        );
        let flags: Vec<String> = redis::from_redis_value(fields[2].clone()).unwrap();
        assert!(flags.contains(&kind.to_string()), "{name} flags {flags:?}");
        assert_eq!(
            flags.contains(&"fast".to_string()),
            *fast,
            "{name} fast flag {flags:?}"
        );
        if *kind == "write" {
            assert!(
                flags.contains(&"denyoom".to_string()),
                "{name} flags {flags:?}"
            );
        }
        assert_eq!(
            redis::from_redis_value::<i64>(fields[3].clone()).unwrap(),
            1,
            "{name} first key"
        );
    }
    let keys: Vec<String> = cmd(&["COMMAND", "GETKEYS", "COUPON.CLAIM", "camp", "u1"])
        .query(&mut c)
        .unwrap();
    assert_eq!(keys, ["camp"]);
}
