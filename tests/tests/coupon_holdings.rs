//! A user's coupon holdings: `c:<user>` (how many) and `h:<k>:<user>` (the k-th issue), so
//! a claim's cost and the bytes it sends to replicas and the AOF do not grow with what the
//! user already holds; a legacy `u:<user>` list is converted by the user's next command.
// Test scenarios read better whole: they opt out of the 70-line limit (clippy.toml).
#![allow(clippy::too_many_lines)]

use std::collections::BTreeMap;

mod common;

use common::rejected;
use tally_tests::{cmd, events, snapshot, wait_for_text, Redis};

fn info_number(c: &mut redis::Connection, section: &str, name: &str) -> i64 {
    let text: String = cmd(&["INFO", section]).query(c).unwrap();
    let prefix = format!("{name}:");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in INFO {section}:\n{text}"))
}

/// (replication bytes, AOF bytes) written so far.
fn written(c: &mut redis::Connection) -> (i64, i64) {
    (
        info_number(c, "replication", "master_repl_offset"),
        info_number(c, "persistence", "aof_current_size"),
    )
}

fn claim(c: &mut redis::Connection, campaign: &str, user: &str) -> (i64, i64) {
    cmd(&["COUPON.CLAIM", campaign, user])
        .query(c)
        .unwrap_or_else(|e| panic!("claim of {user}: {e}"))
}

fn release(c: &mut redis::Connection, campaign: &str, user: &str) -> (i64, i64) {
    cmd(&["COUPON.RELEASE", campaign, user])
        .query(c)
        .unwrap_or_else(|e| panic!("release of {user}: {e}"))
}

/// The campaign's fields other than its counters (the holder fields).
fn holder_fields(c: &mut redis::Connection, campaign: &str) -> BTreeMap<String, String> {
    let all: BTreeMap<String, String> = cmd(&["HGETALL", campaign]).query(c).unwrap();
    let fixed = [
        "kind",
        "total",
        "issued",
        "last_issue",
        "peruser",
        "start",
        "end",
    ];
    all.into_iter()
        .filter(|(f, _)| !fixed.contains(&f.as_str()))
        .collect()
}

fn fields(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(f, v)| (f.to_string(), v.to_string()))
        .collect()
}

#[test]
fn the_thousandth_claim_of_a_user_costs_what_the_second_did() {
    // `always`: with `everysec` a write can wait for a background fsync and land with the next command.
    let mut primary = Redis::start(&["--appendonly", "yes", "--appendfsync", "always"]);
    let replica = Redis::start(&["--replicaof", "127.0.0.1", &primary.port.to_string()]);
    let mut c = primary.conn();
    let mut r = replica.conn();
    wait_for_text(&mut r, &["INFO", "replication"], "master_link_status:up");
    let _: () = cmd(&["COUPON.CREATE", "camp", "5000", "PERUSER", "1000"])
        .query(&mut c)
        .unwrap();
    // Another holder, so the user's fields are not the only ones.
    claim(&mut c, "camp", "bob");

    let mut costs = Vec::new();
    for i in 1..=1000i64 {
        let before = written(&mut c);
        assert_eq!(claim(&mut c, "camp", "alice"), (i + 1, 5000 - i - 1));
        let after = written(&mut c);
        costs.push((after.0 - before.0, after.1 - before.1));
    }
    let (second, thousandth) = (costs[1], costs[999]);
    assert!(
        second.0 > 0 && second.1 > 0,
        "claims were not propagated: {second:?}"
    );
    assert!(
        thousandth.0 <= second.0 + 64,
        "the 1000th claim sent {thousandth:?} bytes, the 2nd {second:?}"
    );
    for (i, cost) in costs.iter().enumerate().skip(1) {
        assert!(
            cost.0 <= second.0 + 64 && cost.1 <= second.1 + 64,
            "claim {} sent (replication, AOF) = {cost:?} bytes, the 2nd sent {second:?}",
            i + 1
        );
    }
    assert_eq!(
        holder_fields(&mut c, "camp")
            .get("c:alice")
            .map(String::as_str),
        Some("1000")
    );
    assert_eq!(
        holder_fields(&mut c, "camp")
            .get("h:1000:alice")
            .map(String::as_str),
        Some("1001")
    );
    let e = rejected(&mut c, &["COUPON.CLAIM", "camp", "alice"], "DUPLICATE");
    assert!(e.contains("already holds 1000 claim(s)"), "{e}");

    // Releases give the newest back first, at a constant cost too.
    let mut release_costs = Vec::new();
    for i in (1..=1000i64).rev() {
        let before = written(&mut c);
        assert_eq!(release(&mut c, "camp", "alice"), (i + 1, 5000 - i));
        let after = written(&mut c);
        release_costs.push(after.0 - before.0);
    }
    let first_release = release_costs[0];
    assert!(
        release_costs.iter().all(|b| *b <= first_release + 64),
        "release bytes: first {first_release}, max {:?}",
        release_costs.iter().max()
    );
    rejected(&mut c, &["COUPON.RELEASE", "camp", "alice"], "NOTFOUND");
    assert_eq!(
        holder_fields(&mut c, "camp"),
        fields(&[("c:bob", "1"), ("h:1:bob", "1")])
    );
    let info: BTreeMap<String, i64> = cmd(&["COUPON.INFO", "camp"]).query(&mut c).unwrap();
    assert_eq!((info["issued"], info["last_issue"]), (1, 1001));
    let released: Vec<i64> = events(&mut c, "tally:log")
        .iter()
        .filter(|(_, e)| e["type"] == "coupon.release")
        .map(|(_, e)| e["coupon"]["issue"].as_i64().unwrap())
        .collect();
    assert_eq!(released, (2..=1001).rev().collect::<Vec<_>>());

    // The replica and the AOF hold exactly the primary's state.
    let acked: i64 = cmd(&["WAIT", "1", "10000"]).query(&mut c).unwrap();
    assert_eq!(acked, 1);
    let state = snapshot(&mut c);
    assert_eq!(snapshot(&mut r), state, "replica differs from primary");
    drop(c);
    primary.restart();
    assert_eq!(
        snapshot(&mut primary.conn()),
        state,
        "state after AOF reload differs"
    );
}

#[test]
fn a_legacy_holder_list_is_converted_by_the_next_claim_or_release() {
    let mut redis = Redis::start(&["--appendonly", "yes"]);
    let mut c = redis.conn();
    // A campaign as older versions wrote it: alice holds 3 and 17, "a:b" holds 5.
    let _: () = cmd(&[
        "HSET",
        "camp",
        "kind",
        "coupon",
        "total",
        "100",
        "issued",
        "3",
        "last_issue",
        "17",
        "peruser",
        "5",
        "start",
        "0",
        "end",
        "0",
        "u:alice",
        "3,17",
        "u:a:b",
        "5",
    ])
    .query(&mut c)
    .unwrap();

    assert_eq!(claim(&mut c, "camp", "alice"), (18, 96));
    assert_eq!(
        holder_fields(&mut c, "camp"),
        fields(&[
            ("c:alice", "3"),
            ("h:1:alice", "3"),
            ("h:2:alice", "17"),
            ("h:3:alice", "18"),
            ("u:a:b", "5")
        ])
    );
    // Converted once: from now on a claim writes two holder fields.
    assert_eq!(claim(&mut c, "camp", "alice"), (19, 95));
    assert_eq!(
        holder_fields(&mut c, "camp")
            .get("h:4:alice")
            .map(String::as_str),
        Some("19")
    );
    assert_eq!(release(&mut c, "camp", "alice"), (19, 96));
    assert_eq!(release(&mut c, "camp", "alice"), (18, 97));
    assert_eq!(release(&mut c, "camp", "alice"), (17, 98));

    // A release converts too (user names may contain ':').
    assert_eq!(release(&mut c, "camp", "a:b"), (5, 99));
    assert_eq!(
        holder_fields(&mut c, "camp"),
        fields(&[("c:alice", "1"), ("h:1:alice", "3")])
    );
    rejected(&mut c, &["COUPON.RELEASE", "camp", "a:b"], "NOTFOUND");
    assert_eq!(claim(&mut c, "camp", "a:b"), (20, 98));
    assert_eq!(
        holder_fields(&mut c, "camp")
            .get("h:1:a:b")
            .map(String::as_str),
        Some("20")
    );

    // Claims of the other users continue the stream and the campaign's sequence.
    let evs = events(&mut c, "tally:log");
    let seqs: Vec<i64> = evs
        .iter()
        .map(|(_, e)| e["keys"][0]["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=7).collect::<Vec<_>>());
    assert_eq!(evs[4].1["coupon"]["issue"], 17);
    assert_eq!(evs[4].1["coupon"]["user"], "alice");

    let state = snapshot(&mut c);
    drop(c);
    redis.restart();
    assert_eq!(
        snapshot(&mut redis.conn()),
        state,
        "state after AOF reload differs"
    );
}

#[test]
fn corrupt_holder_records_are_refused_and_change_nothing() {
    let redis = Redis::start(&[]);
    let mut c = redis.conn();
    let _: () = cmd(&["COUPON.CREATE", "camp", "100", "PERUSER", "10"])
        .query(&mut c)
        .unwrap();
    claim(&mut c, "camp", "alice");
    claim(&mut c, "camp", "alice");
    for bad in ["-1", "02", "x", ""] {
        let _: () = cmd(&["HSET", "camp", "c:alice", bad])
            .query(&mut c)
            .unwrap();
        let e = rejected(&mut c, &["COUPON.CLAIM", "camp", "alice"], "WRONGTYPE");
        assert!(e.contains("corrupt holder record"), "{e}");
        rejected(&mut c, &["COUPON.RELEASE", "camp", "alice"], "WRONGTYPE");
    }
    // The count names a claim that is not there.
    let _: () = cmd(&["HSET", "camp", "c:alice", "3"])
        .query(&mut c)
        .unwrap();
    let e = rejected(&mut c, &["COUPON.RELEASE", "camp", "alice"], "WRONGTYPE");
    assert!(e.contains("corrupt holder record"), "{e}");
    let _: () = cmd(&["HSET", "camp", "c:alice", "2", "h:2:alice", "two"])
        .query(&mut c)
        .unwrap();
    rejected(&mut c, &["COUPON.RELEASE", "camp", "alice"], "WRONGTYPE");
    let _: () = cmd(&["HSET", "camp", "u:bob", "1,x"])
        .query(&mut c)
        .unwrap();
    rejected(&mut c, &["COUPON.CLAIM", "camp", "bob"], "WRONGTYPE");
    // A repaired record works again.
    let _: () = cmd(&["HSET", "camp", "h:2:alice", "2"])
        .query(&mut c)
        .unwrap();
    assert_eq!(release(&mut c, "camp", "alice"), (2, 99));
}
