//! Cluster mode: the stream, the sequence hash and op-id keys live in the hash slot of the
//! command's key, so every command touches exactly one slot.

use tally_tests::{cmd, error_of, events, wait_for_text, Redis};

#[test]
fn helper_keys_share_the_commands_slot() {
    let redis = Redis::start(&[
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
    ]);
    let mut c = redis.conn();
    let _: () = cmd(&["CLUSTER", "ADDSLOTSRANGE", "0", "16383"])
        .query(&mut c)
        .unwrap();
    wait_for_text(&mut c, &["CLUSTER", "INFO"], "cluster_state:ok");
    let slot_of = |c: &mut redis::Connection, k: &str| -> i64 {
        cmd(&["CLUSTER", "KEYSLOT", k]).query(c).unwrap()
    };
    for key in ["user.asset.1", "user.asset.2", "{shop}a"] {
        let _: Vec<String> = cmd(&["ASSET.INCR", key, "gold", "1", "ID", &format!("op-{key}")])
            .query(&mut c)
            .unwrap();
    }
    let mut streams: Vec<String> = cmd(&["KEYS", "tally:log*"]).query(&mut c).unwrap();
    streams.sort();
    assert_eq!(streams.len(), 3, "{streams:?}");
    for key in ["user.asset.1", "user.asset.2", "{shop}a"] {
        let slot = slot_of(&mut c, key);
        let stream = streams
            .iter()
            .find(|s| slot_of(&mut c, s) == slot)
            .expect("a stream in the key's slot");
        let evs = events(&mut c, stream);
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].1["keys"][0]["key"], key);
        let tag = stream.trim_start_matches("tally:log:");
        assert_eq!(slot_of(&mut c, &format!("tally:seq:{tag}")), slot);
        // Same op-id scope as standalone mode: the command's first key.
        let op = format!("tally:op:{tag}:{}:{key}:op-{key}", key.len());
        assert_eq!(slot_of(&mut c, &op), slot);
        let exists: i64 = cmd(&["EXISTS", &op]).query(&mut c).unwrap();
        assert_eq!(exists, 1);
    }
    // Two keys in different slots cannot be moved between in one command.
    let e = error_of(
        &mut c,
        &[
            "ASSET.TRANSFER",
            "user.asset.1",
            "user.asset.2",
            "gold",
            "1",
        ],
    );
    assert!(e.starts_with("CROSSSLOT"), "{e}");
    let r: Vec<String> = cmd(&["ASSET.TRANSFER", "{shop}a", "{shop}b", "gold", "1"])
        .query(&mut c)
        .unwrap();
    assert_eq!(r, ["0", "1"]);
}

/// Holds in cluster mode: the holds hash and the due index live in the key's slot, and the
/// timer finds due holds in every slot of the node — also after a restart, when the node
/// has to discover which slots hold due indexes (it wrote none of them since it started).
#[test]
fn holds_live_in_the_keys_slot_and_expire_in_every_slot() {
    let mut redis = Redis::start(&[
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
        "--appendonly",
        "yes",
    ]);
    let mut c = redis.conn();
    let _: () = cmd(&["CLUSTER", "ADDSLOTSRANGE", "0", "16383"])
        .query(&mut c)
        .unwrap();
    wait_for_text(&mut c, &["CLUSTER", "INFO"], "cluster_state:ok");
    let keys: Vec<String> = (0..40).map(|i| format!("acct:{i}")).collect();
    for key in &keys {
        let _: Vec<String> = cmd(&["ASSET.INCR", key, "gold", "10"])
            .query(&mut c)
            .unwrap();
        let _: Vec<String> = cmd(&["ASSET.HOLD", key, "gold", "10", "TTL", "2000"])
            .query(&mut c)
            .unwrap();
    }
    let slot_of = |c: &mut redis::Connection, k: &str| -> i64 {
        cmd(&["CLUSTER", "KEYSLOT", k]).query(c).unwrap()
    };
    let dues: Vec<String> = cmd(&["KEYS", "tally:due*"]).query(&mut c).unwrap();
    for key in &keys {
        let slot = slot_of(&mut c, key);
        assert!(
            dues.iter().any(|d| slot_of(&mut c, d) == slot),
            "{key}: {dues:?}"
        );
        let holds: Vec<String> = cmd(&["KEYS", &format!("tally:holds:*:{}:{key}", key.len())])
            .query(&mut c)
            .unwrap();
        assert_eq!(holds.len(), 1, "{key}");
        assert_eq!(slot_of(&mut c, &holds[0]), slot);
    }
    // Restarted before the deadlines: the new process expires every hold, once, with
    // nobody touching the keys.
    drop(c);
    redis.restart();
    let mut c = redis.conn();
    wait_for_text(&mut c, &["CLUSTER", "INFO"], "cluster_state:ok");
    wait_for_expiries(&mut c, keys.len());
    for key in &keys {
        let a: Vec<String> = cmd(&["ASSET.AVAILABLE", key, "gold"])
            .query(&mut c)
            .unwrap();
        assert_eq!(a, ["gold", "10", "0", "10"], "{key}");
    }
}

/// Polls every stream of the node until `n` asset.expire events are logged (never more).
fn wait_for_expiries(c: &mut redis::Connection, n: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let streams: Vec<String> = cmd(&["KEYS", "tally:log*"]).query(c).unwrap();
    loop {
        let expired: usize = streams
            .iter()
            .map(|s| {
                events(c, s)
                    .iter()
                    .filter(|(_, e)| e["type"] == "asset.expire")
                    .count()
            })
            .sum();
        if expired == n {
            return;
        }
        assert!(expired < n, "{expired} expiries for {n} holds");
        assert!(
            std::time::Instant::now() < deadline,
            "{expired} of {n} expired"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
