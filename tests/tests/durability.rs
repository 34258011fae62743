//! Replication and AOF: the data change and its event travel as one MULTI/EXEC with the
//! concrete stream id, so a replica and a restarted server hold exactly the same state.

use tally_tests::{cmd, events, snapshot as state, wait_for_text, Redis};

fn workload(c: &mut redis::Connection) {
    let _: () = cmd(&["COUPON.CREATE", "camp", "50", "ID", "create-camp"])
        .query(c)
        .unwrap();
    let _: () = cmd(&["USAGE.LIMIT", "quota", "1000", "PERIOD", "month"])
        .query(c)
        .unwrap();
    for i in 0..200 {
        let user = format!("user.asset.{}", i % 17);
        let _: Vec<String> = cmd(&[
            "ASSET.INCR",
            &user,
            "gold",
            "1.25",
            "gems",
            "3",
            "ID",
            &format!("g-{i}"),
        ])
        .query(c)
        .unwrap();
        if i % 3 == 0 {
            let _: redis::RedisResult<(i64, i64)> =
                cmd(&["COUPON.CLAIM", "camp", &format!("u{}", i % 60)]).query(c);
        }
        if i % 5 == 0 {
            let _: Vec<String> = cmd(&["USAGE.CONSUME", "quota", "2.5", "ID", &format!("q-{i}")])
                .query(c)
                .unwrap();
        }
        if i % 7 == 0 {
            let _: redis::RedisResult<Vec<String>> = cmd(&[
                "ASSET.TRANSFER",
                &format!("{{x}}{}", i % 4),
                &format!("{{x}}{}", (i + 1) % 4),
                "gold",
                "1",
            ])
            .query(c);
            let _: Vec<String> = cmd(&["ASSET.INCR", &format!("{{x}}{}", i % 4), "gold", "2"])
                .query(c)
                .unwrap();
        }
        if i % 11 == 0 {
            let _: redis::RedisResult<(i64, i64)> =
                cmd(&["COUPON.RELEASE", "camp", &format!("u{}", i % 60)]).query(c);
        }
    }
}

#[test]
fn replica_holds_identical_data_and_stream() {
    let primary = Redis::start(&[]);
    let replica = Redis::start(&["--replicaof", "127.0.0.1", &primary.port.to_string()]);
    let mut p = primary.conn();
    let mut r = replica.conn();
    // Wait for the initial sync so the workload streams through replication, not an RDB.
    wait_for_text(&mut r, &["INFO", "replication"], "master_link_status:up");
    workload(&mut p);
    let acked: i64 = cmd(&["WAIT", "1", "10000"]).query(&mut p).unwrap();
    assert_eq!(acked, 1);
    let ps = state(&mut p);
    let rs = state(&mut r);
    assert!(ps.len() > 20, "workload wrote too little: {}", ps.len());
    assert_eq!(ps, rs, "replica differs from primary");
    assert!(events(&mut p, "tally:log").len() > 250);
}

#[test]
fn restart_from_aof_keeps_balances_stream_and_op_ids() {
    let mut redis = Redis::start(&["--appendonly", "yes", "--appendfsync", "always"]);
    let mut c = redis.conn();
    workload(&mut c);
    let before = state(&mut c);
    drop(c);
    redis.restart();
    let mut c = redis.conn();
    let after = state(&mut c);
    assert_eq!(before, after, "state after AOF reload differs");
    // Op-ids survived: the retry is recognised, returns the first reply and logs nothing.
    let n = events(&mut c, "tally:log").len();
    let reply: Vec<String> = cmd(&[
        "ASSET.INCR",
        "user.asset.0",
        "gold",
        "1.25",
        "gems",
        "3",
        "ID",
        "g-0",
    ])
    .query(&mut c)
    .unwrap();
    assert_eq!(reply, ["1.25", "3"]);
    assert_eq!(events(&mut c, "tally:log").len(), n);
    let e = tally_tests::error_of(
        &mut c,
        &["ASSET.INCR", "user.asset.0", "gold", "9", "ID", "g-0"],
    );
    assert!(e.starts_with("CONFLICT"), "{e}");
    // New events continue each key's sequence.
    let _: Vec<String> = cmd(&["ASSET.INCR", "user.asset.0", "gold", "1"])
        .query(&mut c)
        .unwrap();
    let evs = events(&mut c, "tally:log");
    let seqs: Vec<i64> = evs
        .iter()
        .filter(|(_, e)| e["keys"][0]["key"] == "user.asset.0")
        .map(|(_, e)| e["keys"][0]["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
    // The AOF carries tally's writes as plain commands inside MULTI/EXEC, never ASSET.*.
    let aof_dir = redis.dir.path().join("appendonlydir");
    let mut aof = String::new();
    for entry in std::fs::read_dir(&aof_dir).unwrap() {
        let p = entry.unwrap().path();
        if p.to_string_lossy().ends_with(".aof") {
            aof.push_str(&String::from_utf8_lossy(&std::fs::read(&p).unwrap()));
        }
    }
    assert!(
        aof.contains("MULTI") && aof.contains("XADD") && aof.contains("HSET"),
        "AOF lacks the expected commands"
    );
    // As a RESP command name (`$10\r\nASSET.INCR\r\n`), not the event type inside the JSON.
    assert!(
        !aof.to_ascii_uppercase().contains("$10\r\nASSET.INCR\r\n"),
        "module command replicated verbatim"
    );
}
