//! The three stories tally was born from, at full size, against a real redis-server.

use std::collections::{BTreeMap, HashMap, HashSet};

use tally_tests::{events, Redis};

/// Exact decimal arithmetic for the expectations, in units of 0.01.
fn cents(s: &str) -> i64 {
    let (i, f) = s.split_once('.').unwrap_or((s, "0"));
    let f = format!("{f:0<2}");
    i.parse::<i64>().unwrap() * 100 + f[..2].parse::<i64>().unwrap()
}

fn from_cents(c: i64) -> String {
    let (i, f) = (c / 100, c % 100);
    match f {
        0 => i.to_string(),
        f if f % 10 == 0 => format!("{i}.{}", f / 10),
        f => format!("{i}.{f:02}"),
    }
}

/// Checks per-key sequence numbers are 1..=n without gaps and that balances chain.
fn check_asset_chain(evs: &[(String, serde_json::Value)]) -> HashMap<String, i64> {
    let mut last_seq: HashMap<String, i64> = HashMap::new();
    let mut last_balance: HashMap<String, i64> = HashMap::new();
    for (_, e) in evs {
        let key = e["keys"][0]["key"].as_str().unwrap().to_string();
        let seq = e["keys"][0]["seq"].as_i64().unwrap();
        let prev = last_seq.insert(key.clone(), seq).unwrap_or(0);
        assert_eq!(seq, prev + 1, "sequence of {key} jumped from {prev} to {seq}");
        let ch = &e["changes"][0];
        let before = last_balance.get(&key).copied().unwrap_or(0);
        let after = cents(ch["balance"].as_str().unwrap());
        assert_eq!(before + cents(ch["delta"].as_str().unwrap()), after, "balance chain of {key}");
        last_balance.insert(key, after);
    }
    last_seq
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn currency_500_clients_grant_to_500_users_exactly() {
    let redis = Redis::start(&[]);
    const CLIENTS: usize = 500;
    const USERS: usize = 500;
    const GRANTS_PER_CLIENT: usize = 20;
    let amounts = ["10.43", "0.1", "0.2", "5200", "1.01"];

    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let mut conn = redis.aconn().await;
        tasks.push(tokio::spawn(async move {
            let mut granted: Vec<(usize, &'static str)> = Vec::new();
            for g in 0..GRANTS_PER_CLIENT {
                // Every user is hit by many clients at once.
                let user = (c * 7 + g * 31) % USERS;
                let amount = amounts[(c + g) % amounts.len()];
                let reply: Vec<String> = redis::cmd("ASSET.INCR")
                    .arg(format!("user.asset.{user}"))
                    .arg("BDP")
                    .arg(amount)
                    .query_async(&mut conn)
                    .await
                    .expect("ASSET.INCR");
                assert_eq!(reply.len(), 1);
                granted.push((user, amount));
            }
            granted
        }));
    }
    let mut expected = vec![0i64; USERS];
    let mut total_grants = 0;
    for t in tasks {
        for (user, amount) in t.await.unwrap() {
            expected[user] += cents(amount);
            total_grants += 1;
        }
    }
    assert_eq!(total_grants, CLIENTS * GRANTS_PER_CLIENT);

    let mut conn = redis.conn();
    for (user, cents_expected) in expected.iter().enumerate() {
        let stored: Option<String> = redis::cmd("HGET").arg(format!("user.asset.{user}")).arg("BDP").query(&mut conn).unwrap();
        let want = if *cents_expected == 0 { None } else { Some(from_cents(*cents_expected)) };
        assert_eq!(stored, want, "balance of user {user}");
    }
    let evs = events(&mut conn, "tally:log");
    assert_eq!(evs.len(), total_grants, "one event per grant");
    let ids: HashSet<&str> = evs.iter().map(|(_, e)| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), total_grants, "event ids are unique");
    let seqs = check_asset_chain(&evs);
    let touched = expected.iter().filter(|c| **c != 0).count();
    assert_eq!(seqs.len(), touched);
    let seq_hash: BTreeMap<String, i64> = redis::cmd("HGETALL").arg("tally:seq").query(&mut conn).unwrap();
    for (key, seq) in &seqs {
        assert_eq!(seq_hash.get(key), Some(seq), "stored sequence of {key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn coupons_1000_clients_race_for_100() {
    let redis = Redis::start(&[]);
    let mut conn = redis.conn();
    let _: () = redis::cmd("COUPON.CREATE").arg("camp").arg(100).query(&mut conn).unwrap();

    let mut tasks = Vec::new();
    for u in 0..1000 {
        let mut c = redis.aconn().await;
        tasks.push(tokio::spawn(async move {
            let r: redis::RedisResult<(i64, i64)> =
                redis::cmd("COUPON.CLAIM").arg("camp").arg(format!("user{u}")).query_async(&mut c).await;
            (u, r)
        }));
    }
    let mut winners = Vec::new();
    let mut soldout = 0;
    for t in tasks {
        let (u, r) = t.await.unwrap();
        match r {
            Ok((issue, _remaining)) => winners.push((u, issue)),
            Err(e) if e.code() == Some("SOLDOUT") => soldout += 1,
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!(winners.len(), 100, "exactly the stock succeeds");
    assert_eq!(soldout, 900);
    let mut issues: Vec<i64> = winners.iter().map(|(_, i)| *i).collect();
    issues.sort();
    assert_eq!(issues, (1..=100).collect::<Vec<_>>(), "issue numbers 1..100 each once");

    let evs = events(&mut conn, "tally:log");
    let claims: Vec<_> = evs.iter().filter(|(_, e)| e["type"] == "coupon.claim").collect();
    assert_eq!(claims.len(), 100);
    let mut ev_issues: Vec<i64> = claims.iter().map(|(_, e)| e["coupon"]["issue"].as_i64().unwrap()).collect();
    ev_issues.sort();
    assert_eq!(ev_issues, issues);
    let winners_set: HashSet<String> = winners.iter().map(|(u, _)| format!("user{u}")).collect();
    let ev_users: HashSet<String> = claims.iter().map(|(_, e)| e["coupon"]["user"].as_str().unwrap().to_string()).collect();
    assert_eq!(ev_users, winners_set);
    let info: HashMap<String, i64> = redis::cmd("COUPON.INFO").arg("camp").query(&mut conn).unwrap();
    assert_eq!(info["issued"], 100);
    assert_eq!(info["remaining"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn usage_10_consumers_against_a_limit_of_10() {
    let redis = Redis::start(&[]);
    let mut conn = redis.conn();
    let _: () = redis::cmd("USAGE.LIMIT").arg("api:acme").arg(10).query(&mut conn).unwrap();
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let mut c = redis.aconn().await;
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            let mut limited = 0;
            for _ in 0..5 {
                let r: redis::RedisResult<Vec<String>> = redis::cmd("USAGE.CONSUME").arg("api:acme").arg(1).query_async(&mut c).await;
                match r {
                    Ok(_) => ok += 1,
                    Err(e) if e.code() == Some("LIMIT") => limited += 1,
                    Err(e) => panic!("{e}"),
                }
            }
            (ok, limited)
        }));
    }
    let (mut ok, mut limited) = (0, 0);
    for t in tasks {
        let (o, l) = t.await.unwrap();
        ok += o;
        limited += l;
    }
    assert_eq!(ok, 10, "exactly the limit succeeds");
    assert_eq!(limited, 40);
    let got: HashMap<String, String> = redis::cmd("USAGE.GET").arg("api:acme").query(&mut conn).unwrap();
    assert_eq!(got["used"], "10");
    assert_eq!(got["remaining"], "0");
    let evs = events(&mut conn, "tally:log");
    assert_eq!(evs.iter().filter(|(_, e)| e["type"] == "usage.consume").count(), 10);
    let used: Vec<String> = evs
        .iter()
        .filter(|(_, e)| e["type"] == "usage.consume")
        .map(|(_, e)| e["usage"]["used"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(used, (1..=10).map(|i| i.to_string()).collect::<Vec<_>>());
}
