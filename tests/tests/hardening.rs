//! Issue 12: type confusion, period order, settings limits, the smaller holes. Each rejected
//! call must leave the data and the stream exactly as they were.
// Test scenarios read better whole: they opt out of the 70-line limit (clippy.toml).
#![allow(clippy::too_many_lines)]

use std::collections::HashMap;

mod common;

use common::{ok, rejected, strings};
use tally_tests::{cmd, error_of, events, Redis};

#[test]
fn each_command_refuses_a_hash_of_another_kind() {
    let redis = Redis::start(&[]);
    let mut c = redis.conn();
    ok(&mut c, &["COUPON.CREATE", "camp", "2"]);
    ok(&mut c, &["USAGE.LIMIT", "q", "10"]);
    ok(&mut c, &["USAGE.CONSUME", "q", "4"]);
    strings(&mut c, &["ASSET.INCR", "acct", "gold", "5"]);
    let cases: &[&[&str]] = &[
        // The reported attacks: hand out more coupons, refill a quota.
        &["ASSET.INCR", "camp", "issued", "-2"],
        &["ASSET.INCR", "camp", "last_issue", "-2"],
        &["ASSET.INCR", "q", "used", "-10"],
        &["ASSET.TRANSFER", "camp", "acct", "total", "1"],
        &["ASSET.TRANSFER", "acct", "q", "gold", "1"],
        &["ASSET.GET", "camp", "issued"],
        &["ASSET.GET", "q"],
        &["COUPON.CREATE", "acct", "5"],
        &["COUPON.CREATE", "q", "5"],
        &["COUPON.CLAIM", "acct", "u"],
        &["COUPON.CLAIM", "q", "u"],
        &["COUPON.RELEASE", "q", "u"],
        &["COUPON.INFO", "q"],
        &["COUPON.INFO", "acct"],
        &["USAGE.LIMIT", "camp", "5"],
        &["USAGE.LIMIT", "acct", "5"],
        &["USAGE.CONSUME", "camp", "1"],
        &["USAGE.CONSUME", "acct", "1"],
        &["USAGE.GET", "camp"],
        &["USAGE.GET", "acct"],
    ];
    for args in cases {
        rejected(&mut c, args, "WRONGTYPE");
    }
    // The reserved field cannot be written through ASSET.*, so an asset hash never looks
    // like a campaign or counter.
    let e = rejected(&mut c, &["ASSET.INCR", "acct", "kind", "1"], "ERR");
    assert!(e.contains("reserved"), "{e}");
    // Each kind still works on its own keys.
    assert_eq!(
        cmd(&["COUPON.CLAIM", "camp", "u"])
            .query::<(i64, i64)>(&mut c)
            .unwrap(),
        (1, 1)
    );
    assert_eq!(strings(&mut c, &["USAGE.CONSUME", "q", "1"]), ["5", "5"]);
    assert_eq!(strings(&mut c, &["ASSET.GET", "acct"]), ["gold", "5"]);
    let info: String = cmd(&["INFO", "tally"]).query(&mut c).unwrap();
    assert!(
        info.contains(&format!("tally_rejected_wrongtype:{}", cases.len())),
        "{info}"
    );
}

#[test]
fn a_stored_period_ahead_of_the_clock_keeps_its_usage() {
    let redis = Redis::start(&[]);
    let mut c = redis.conn();
    ok(&mut c, &["USAGE.LIMIT", "q", "10", "PERIOD", "day"]);
    assert_eq!(strings(&mut c, &["USAGE.CONSUME", "q", "9"]), ["9", "1"]);
    // As if written by a node whose clock is a day ahead (then a failover to this one).
    let _: () = cmd(&["HSET", "q", "period_id", "2999-12-31"])
        .query(&mut c)
        .unwrap();
    let got: HashMap<String, String> = cmd(&["USAGE.GET", "q"]).query(&mut c).unwrap();
    assert_eq!(
        (got["used"].as_str(), got["period_id"].as_str()),
        ("9", "2999-12-31")
    );
    rejected(&mut c, &["USAGE.CONSUME", "q", "2"], "LIMIT");
    assert_eq!(strings(&mut c, &["USAGE.CONSUME", "q", "1"]), ["10", "0"]);
    // A period in the past still starts again from 0.
    let _: () = cmd(&["HSET", "q", "period_id", "2000-01-01"])
        .query(&mut c)
        .unwrap();
    assert_eq!(strings(&mut c, &["USAGE.CONSUME", "q", "2"]), ["2", "8"]);
}

#[test]
fn asset_get_reports_binary_field_names_byte_exact() {
    let redis = Redis::start(&[]);
    let mut c = redis.conn();
    let _: () = redis::cmd("HSET")
        .arg("acct")
        .arg(&b"g\xffx"[..])
        .arg("1.5")
        .arg("a")
        .arg("2")
        .query(&mut c)
        .unwrap();
    let all: Vec<Vec<u8>> = cmd(&["ASSET.GET", "acct"]).query(&mut c).unwrap();
    assert_eq!(
        all,
        vec![
            b"a".to_vec(),
            b"2".to_vec(),
            b"g\xffx".to_vec(),
            b"1.5".to_vec()
        ]
    );
}

#[test]
fn end_zero_means_no_end() {
    let redis = Redis::start(&[]);
    let mut c = redis.conn();
    ok(&mut c, &["COUPON.CREATE", "camp", "2", "END", "0"]);
    let info: HashMap<String, i64> = cmd(&["COUPON.INFO", "camp"]).query(&mut c).unwrap();
    assert_eq!(info["end"], 0);
    assert_eq!(
        cmd(&["COUPON.CLAIM", "camp", "u"])
            .query::<(i64, i64)>(&mut c)
            .unwrap(),
        (1, 1)
    );
}

#[test]
fn long_decimals_with_trailing_zeros_parse() {
    let redis = Redis::start(&[]);
    let mut c = redis.conn();
    let long = format!("1.5{}", "0".repeat(100));
    assert_eq!(
        strings(&mut c, &["ASSET.INCR", "acct", "f", &long]),
        ["1.5"]
    );
    let e = rejected(
        &mut c,
        &[
            "ASSET.INCR",
            "acct",
            "f",
            &format!("0.{}1", "0".repeat(100)),
        ],
        "ERR",
    );
    assert!(e.contains("18 fractional"), "{e}");
}

#[test]
fn hand_edited_counters_near_i64_max_are_refused() {
    let redis = Redis::start(&[]);
    let mut c = redis.conn();
    strings(&mut c, &["ASSET.INCR", "acct", "f", "1"]);
    ok(&mut c, &["COUPON.CREATE", "camp", "5"]);
    let max = i64::MAX.to_string();
    let _: () = cmd(&["HSET", "tally:seq", "acct", &max])
        .query(&mut c)
        .unwrap();
    let e = rejected(&mut c, &["ASSET.INCR", "acct", "f", "1"], "WRONGTYPE");
    assert!(e.contains("sequence"), "{e}");
    let _: () = cmd(&["HSET", "camp", "last_issue", &max])
        .query(&mut c)
        .unwrap();
    rejected(&mut c, &["COUPON.CLAIM", "camp", "u"], "WRONGTYPE");
}

#[test]
fn only_database_zero_is_served() {
    let redis = Redis::start(&[]);
    let mut c = redis.conn();
    let _: () = cmd(&["SELECT", "1"]).query(&mut c).unwrap();
    for args in [
        &["ASSET.INCR", "acct", "f", "1"][..],
        &["ASSET.GET", "acct"],
        &["COUPON.CREATE", "camp", "1"],
        &["USAGE.GET", "q"],
    ] {
        let e = rejected(&mut c, args, "ERR");
        assert!(e.contains("database 0"), "{e}");
    }
    let _: () = cmd(&["SELECT", "0"]).query(&mut c).unwrap();
    assert_eq!(strings(&mut c, &["ASSET.INCR", "acct", "f", "1"]), ["1"]);
    assert_eq!(events(&mut c, "tally:log").len(), 1);
}

#[test]
fn settings_are_validated_the_same_way_on_every_path() {
    use common::refuses_to_start;
    for (args, needle) in [
        (
            &["max-backlog", "-1"][..],
            "max-backlog must be between 0 and",
        ),
        (&["max-op-ids", "-1"], "max-op-ids must be between 0 and"),
        (
            &["op-ttl-ms", "9223372036854775807"],
            "op-ttl-ms must be between 1000 and",
        ),
        (&["prefix", "{x}"], "prefix must be"),
        (&["prefix", "a b"], "prefix must be"),
        (&["--tally.prefix", "{x}"], "prefix must be"),
        (&["--tally.op-ttl-ms", "9223372036854775807"], "op-ttl-ms"),
    ] {
        let log = refuses_to_start(args);
        assert!(
            log.contains(needle),
            "{args:?}: log lacks '{needle}':\n{log}"
        );
    }
    let redis = Redis::start(&["--tally.max-backlog", "7"]);
    let mut c = redis.conn();
    for (name, value) in [
        ("tally.op-ttl-ms", "9223372036854775807"),
        ("tally.max-backlog", "-1"),
        ("tally.op-ttl-ms", "10"),
    ] {
        let e = error_of(&mut c, &["CONFIG", "SET", name, value]);
        assert!(
            e.contains(name.trim_start_matches("tally.")) || e.contains("argument"),
            "{name} {value}: {e}"
        );
    }
    let v: Vec<String> = cmd(&["CONFIG", "GET", "tally.*"]).query(&mut c).unwrap();
    let v: HashMap<String, String> = v.chunks(2).map(|p| (p[0].clone(), p[1].clone())).collect();
    assert_eq!(
        (
            v["tally.max-backlog"].as_str(),
            v["tally.op-ttl-ms"].as_str()
        ),
        ("7", "86400000")
    );
    // The largest op-ttl-ms gives a deadline the replica accepts.
    ok(
        &mut c,
        &["CONFIG", "SET", "tally.op-ttl-ms", "315360000000"],
    );
    strings(&mut c, &["ASSET.INCR", "k", "f", "1", "ID", "long"]);
    let ttl: i64 = cmd(&["PTTL", "tally:op:1:k:long"]).query(&mut c).unwrap();
    assert!(ttl > 315_000_000_000, "{ttl}");
}

#[test]
fn op_ids_compare_the_parsed_request_and_are_scoped_to_the_first_key() {
    let redis = Redis::start(&[]);
    let mut c = redis.conn();
    let first = strings(
        &mut c,
        &[
            "ASSET.INCR",
            "k",
            "f",
            "10",
            "FLOOR",
            "-5",
            "CEIL",
            "100",
            "META",
            "m",
            "ID",
            "op",
        ],
    );
    let n = events(&mut c, "tally:log").len();
    // Reordered options, lower-case option names, 10.0 vs 10, +10, 1e1-free canonical forms.
    for retry in [
        &[
            "ASSET.INCR",
            "k",
            "f",
            "10.0",
            "CEIL",
            "100",
            "FLOOR",
            "-5",
            "META",
            "m",
            "ID",
            "op",
        ][..],
        &[
            "ASSET.INCR",
            "k",
            "f",
            "+10",
            "id",
            "op",
            "meta",
            "m",
            "ceil",
            "100.000",
            "floor",
            "-5.0",
        ],
    ] {
        assert_eq!(strings(&mut c, retry), first, "{retry:?}");
    }
    assert_eq!(events(&mut c, "tally:log").len(), n);
    rejected(
        &mut c,
        &[
            "ASSET.INCR",
            "k",
            "f",
            "10",
            "FLOOR",
            "-5",
            "META",
            "m",
            "ID",
            "op",
        ],
        "CONFLICT",
    );
    ok(
        &mut c,
        &["USAGE.LIMIT", "q", "10", "PERIOD", "day", "ID", "lim"],
    );
    ok(
        &mut c,
        &["USAGE.LIMIT", "q", "10.0", "period", "DAY", "ID", "lim"],
    );
    // The same op-id on another key is another operation: no CONFLICT, nothing revealed.
    assert_eq!(
        strings(&mut c, &["ASSET.INCR", "other", "f", "1", "ID", "op"]),
        ["1"]
    );
    assert_eq!(events(&mut c, "tally:log").len(), n + 2);
    let keys: Vec<String> = cmd(&["KEYS", "tally:op:*"]).query(&mut c).unwrap();
    let mut keys = keys;
    keys.sort();
    assert_eq!(
        keys,
        ["tally:op:1:k:op", "tally:op:1:q:lim", "tally:op:5:other:op"]
    );
    let info: String = cmd(&["INFO", "tally"]).query(&mut c).unwrap();
    assert!(info.contains("tally_idempotent_replays:3"), "{info}");
}

#[test]
fn an_eviction_policy_that_can_drop_op_ids_is_reported() {
    let redis = Redis::start(&["--maxmemory-policy", "allkeys-lru"]);
    let mut c = redis.conn();
    let flag = |c: &mut redis::Connection| -> String {
        let info: String = cmd(&["INFO", "tally"]).query(c).unwrap();
        info.lines()
            .find(|l| l.starts_with("tally_maxmemory_policy_evicts_op_ids:"))
            .unwrap_or("missing")
            .trim()
            .to_string()
    };
    assert_eq!(flag(&mut c), "tally_maxmemory_policy_evicts_op_ids:1");
    assert!(
        redis.log().contains("maxmemory-policy is allkeys-lru"),
        "{}",
        redis.log()
    );
    ok(&mut c, &["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    assert_eq!(flag(&mut c), "tally_maxmemory_policy_evicts_op_ids:0");
    ok(
        &mut c,
        &["CONFIG", "SET", "maxmemory-policy", "volatile-ttl"],
    );
    assert_eq!(flag(&mut c), "tally_maxmemory_policy_evicts_op_ids:1");
    assert!(
        redis.log().contains("maxmemory-policy is volatile-ttl"),
        "{}",
        redis.log()
    );
    let default = Redis::start(&[]);
    assert_eq!(
        flag(&mut default.conn()),
        "tally_maxmemory_policy_evicts_op_ids:0"
    );
}

#[test]
fn the_module_refuses_to_load_without_a_command_it_propagates() {
    for name in ["XADD", "HSET", "HDEL", "SET"] {
        let log = common::refuses_to_start(&["--rename-command", name, ""]);
        assert!(
            log.contains(&format!("the command {name} does not exist")),
            "{name}: {log}"
        );
    }
    let renamed = common::refuses_to_start(&["--rename-command", "XADD", "XADD2"]);
    assert!(
        renamed.contains("the command XADD does not exist"),
        "{renamed}"
    );
}

fn info_field(c: &mut redis::Connection, name: &str) -> String {
    let info: String = cmd(&["INFO", "tally"]).query(c).unwrap();
    let prefix = format!("{name}:");
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or("missing")
        .trim()
        .to_string()
}

#[test]
fn op_id_records_are_bounded_by_max_op_ids() {
    let redis = Redis::start(&["--tally.max-op-ids", "3"]);
    let mut c = redis.conn();
    for i in 0..3 {
        strings(
            &mut c,
            &["ASSET.INCR", "k", "f", "1", "ID", &format!("op{i}")],
        );
    }
    let e = rejected(&mut c, &["ASSET.INCR", "k", "f", "1", "ID", "op3"], "OPIDS");
    assert!(e.contains("tally.max-op-ids is 3"), "{e}");
    rejected(&mut c, &["COUPON.CREATE", "camp", "2", "ID", "c1"], "OPIDS");
    // A retry of a remembered op-id is still answered; a command without ID still runs.
    assert_eq!(
        strings(&mut c, &["ASSET.INCR", "k", "f", "1", "ID", "op0"]),
        ["1"]
    );
    assert_eq!(strings(&mut c, &["ASSET.INCR", "k", "f", "1"]), ["4"]);
    assert_eq!(info_field(&mut c, "tally_op_ids_counted"), "3");
    assert_eq!(info_field(&mut c, "tally_max_op_ids"), "3");
    assert_eq!(info_field(&mut c, "tally_rejected_opids"), "2");
    let records: Vec<String> = cmd(&["KEYS", "tally:op:*"]).query(&mut c).unwrap();
    assert_eq!(records.len(), 3, "{records:?}");
    // 0 lifts the bound at run time.
    ok(&mut c, &["CONFIG", "SET", "tally.max-op-ids", "0"]);
    assert_eq!(
        strings(&mut c, &["ASSET.INCR", "k", "f", "1", "ID", "op3"]),
        ["5"]
    );
    assert_eq!(info_field(&mut c, "tally_op_ids_counted"), "4");
}

#[test]
fn expired_op_id_records_make_room_again() {
    let redis = Redis::start(&["--tally.max-op-ids", "1", "--tally.op-ttl-ms", "1000"]);
    let mut c = redis.conn();
    assert_eq!(
        strings(&mut c, &["ASSET.INCR", "k", "f", "1", "ID", "a"]),
        ["1"]
    );
    // Polled: the record expires after 1 s and is counted at most one bucket (1 s) longer.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        match cmd(&["ASSET.INCR", "k", "f", "1", "ID", "b"]).query::<Vec<String>>(&mut c) {
            Ok(v) => {
                assert_eq!(v, ["2"]);
                break;
            }
            Err(e) => {
                assert!(e.to_string().contains("OPIDS"), "{e}");
                assert!(
                    std::time::Instant::now() < deadline,
                    "op-id 'a' still counted after 60 s"
                );
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }
    assert_eq!(info_field(&mut c, "tally_op_ids_counted"), "1");
}
