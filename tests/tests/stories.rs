//! The three stories tally was born from, at full size, against a real redis-server.

use std::collections::{BTreeMap, HashMap, HashSet};

use tally_tests::stories::{self, cents, from_cents};
use tally_tests::{events, Redis};

/// Checks per-key sequence numbers are 1..=n without gaps and that balances chain.
fn check_asset_chain(evs: &[(String, serde_json::Value)]) -> HashMap<String, i64> {
    let mut last_seq: HashMap<String, i64> = HashMap::new();
    let mut last_balance: HashMap<String, i64> = HashMap::new();
    for (_, e) in evs {
        let key = e["keys"][0]["key"].as_str().unwrap().to_string();
        let seq = e["keys"][0]["seq"].as_i64().unwrap();
        let prev = last_seq.insert(key.clone(), seq).unwrap_or(0);
        assert_eq!(
            seq,
            prev + 1,
            "sequence of {key} jumped from {prev} to {seq}"
        );
        let ch = &e["changes"][0];
        let before = last_balance.get(&key).copied().unwrap_or(0);
        let after = cents(ch["balance"].as_str().unwrap());
        assert_eq!(
            before + cents(ch["delta"].as_str().unwrap()),
            after,
            "balance chain of {key}"
        );
        last_balance.insert(key, after);
    }
    last_seq
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn currency_500_clients_grant_to_500_users_exactly() {
    let redis = Redis::start(&[]);
    const USERS: usize = 500;
    let outcome = stories::currency(&redis.url(), "", 500, USERS, 20)
        .await
        .unwrap();
    let total_grants = outcome.grants;
    assert_eq!(total_grants, 500 * 20);
    let expected: Vec<i64> = (0..USERS)
        .map(|u| {
            outcome
                .expected
                .get(&format!("user.asset.{u}"))
                .copied()
                .unwrap_or(0)
        })
        .collect();
    let mut conn = redis.conn();
    for (user, cents_expected) in expected.iter().enumerate() {
        let stored: Option<String> = redis::cmd("HGET")
            .arg(format!("user.asset.{user}"))
            .arg("BDP")
            .query(&mut conn)
            .unwrap();
        let want = if *cents_expected == 0 {
            None
        } else {
            Some(from_cents(*cents_expected))
        };
        assert_eq!(stored, want, "balance of user {user}");
    }
    let evs = events(&mut conn, "tally:log");
    assert_eq!(evs.len(), total_grants, "one event per grant");
    let ids: HashSet<&str> = evs.iter().map(|(_, e)| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), total_grants, "event ids are unique");
    let seqs = check_asset_chain(&evs);
    let touched = expected.iter().filter(|c| **c != 0).count();
    assert_eq!(seqs.len(), touched);
    let seq_hash: BTreeMap<String, i64> = redis::cmd("HGETALL")
        .arg("tally:seq")
        .query(&mut conn)
        .unwrap();
    for (key, seq) in &seqs {
        assert_eq!(seq_hash.get(key), Some(seq), "stored sequence of {key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn coupons_1000_clients_race_for_100() {
    let redis = Redis::start(&[]);
    let mut conn = redis.conn();
    let outcome = stories::coupons(&redis.url(), "camp", 1000, 100)
        .await
        .unwrap();
    assert!(
        outcome.other_errors.is_empty(),
        "{:?}",
        outcome.other_errors
    );
    let (winners, soldout) = (outcome.winners, outcome.soldout);
    assert_eq!(winners.len(), 100, "exactly the stock succeeds");
    assert_eq!(soldout, 900);
    let mut issues: Vec<i64> = winners.iter().map(|(_, i)| *i).collect();
    issues.sort();
    assert_eq!(
        issues,
        (1..=100).collect::<Vec<_>>(),
        "issue numbers 1..100 each once"
    );

    let evs = events(&mut conn, "tally:log");
    let claims: Vec<_> = evs
        .iter()
        .filter(|(_, e)| e["type"] == "coupon.claim")
        .collect();
    assert_eq!(claims.len(), 100);
    let mut ev_issues: Vec<i64> = claims
        .iter()
        .map(|(_, e)| e["coupon"]["issue"].as_i64().unwrap())
        .collect();
    ev_issues.sort();
    assert_eq!(ev_issues, issues);
    let winners_set: HashSet<String> = winners.iter().map(|(u, _)| u.clone()).collect();
    let ev_users: HashSet<String> = claims
        .iter()
        .map(|(_, e)| e["coupon"]["user"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ev_users, winners_set);
    let info: HashMap<String, i64> = redis::cmd("COUPON.INFO")
        .arg("camp")
        .query(&mut conn)
        .unwrap();
    assert_eq!(info["issued"], 100);
    assert_eq!(info["remaining"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn usage_10_consumers_against_a_limit_of_10() {
    let redis = Redis::start(&[]);
    let mut conn = redis.conn();
    let outcome = stories::usage(&redis.url(), "api:acme", 10, 10, 5)
        .await
        .unwrap();
    assert!(
        outcome.other_errors.is_empty(),
        "{:?}",
        outcome.other_errors
    );
    let (ok, limited) = (outcome.ok, outcome.limited);
    assert_eq!(ok, 10, "exactly the limit succeeds");
    assert_eq!(limited, 40);
    let got: HashMap<String, String> = redis::cmd("USAGE.GET")
        .arg("api:acme")
        .query(&mut conn)
        .unwrap();
    assert_eq!(got["used"], "10");
    assert_eq!(got["remaining"], "0");
    let evs = events(&mut conn, "tally:log");
    assert_eq!(
        evs.iter()
            .filter(|(_, e)| e["type"] == "usage.consume")
            .count(),
        10
    );
    let used: Vec<String> = evs
        .iter()
        .filter(|(_, e)| e["type"] == "usage.consume")
        .map(|(_, e)| e["usage"]["used"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(used, (1..=10).map(|i| i.to_string()).collect::<Vec<_>>());
}
