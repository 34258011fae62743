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

// ---------------------------------------------------------------- story 4: checkout

/// 1,000 users race for 100 coupons with a hold each (COUPON.RESERVE ... TTL), 60 of the
/// winners pay (COUPON.CONFIRM), the other 40 walk away and the server's own timer gives
/// their coupons back to the stock.
const CHECKOUT_USERS: usize = 1000;
const CHECKOUT_STOCK: i64 = 100;
const CHECKOUT_PAYERS: usize = 60;
/// Long enough for 1,000 reservations and 60 confirmations on a loaded 2-core machine.
const CHECKOUT_TTL_MS: u64 = 8000;

/// What the users got from the race: (user, issue) per won reservation, refusals by error
/// code, anything else.
struct Reservations {
    won: Vec<(String, i64)>,
    refused: BTreeMap<String, usize>,
    other: Vec<String>,
}

/// Every user has its own connection and double-clicks: two COUPON.RESERVE in flight at
/// once; all users start together.
async fn reserve_race(redis: &Redis, campaign: &str) -> Reservations {
    let client = redis.client();
    let mut conns = Vec::with_capacity(CHECKOUT_USERS);
    for _ in 0..CHECKOUT_USERS {
        conns.push(tally_tests::async_conn(&client).await.expect("connect"));
    }
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(CHECKOUT_USERS));
    let mut tasks = Vec::with_capacity(CHECKOUT_USERS);
    for (u, conn) in conns.into_iter().enumerate() {
        let (campaign, start) = (campaign.to_string(), start.clone());
        tasks.push(tokio::spawn(async move {
            let user = format!("user{u}");
            let reserve = |mut c: redis::aio::MultiplexedConnection| {
                let mut cmd = redis::cmd("COUPON.RESERVE");
                cmd.arg(&campaign)
                    .arg(&user)
                    .arg("TTL")
                    .arg(CHECKOUT_TTL_MS);
                async move { cmd.query_async::<(i64, i64)>(&mut c).await }
            };
            start.wait().await;
            let (a, b) = tokio::join!(reserve(conn.clone()), reserve(conn));
            (user, [a, b])
        }));
    }
    let mut out = Reservations {
        won: Vec::new(),
        refused: BTreeMap::new(),
        other: Vec::new(),
    };
    for t in tasks {
        let (user, replies) = t.await.expect("user task");
        for r in replies {
            match r {
                Ok((issue, _)) => out.won.push((user.clone(), issue)),
                Err(e) if e.code().is_some_and(|c| c == "SOLDOUT" || c == "DUPLICATE") => {
                    *out.refused
                        .entry(e.code().unwrap().to_string())
                        .or_default() += 1;
                }
                Err(e) => out.other.push(format!("{user}: {e}")),
            }
        }
    }
    out
}

/// The payers confirm at once, each on its own connection; every confirmation must succeed.
async fn confirm_all(redis: &Redis, campaign: &str, payers: &[(String, i64)]) {
    let mut tasks = Vec::with_capacity(payers.len());
    for (user, issue) in payers.iter().cloned() {
        let mut conn = redis.aconn().await;
        let campaign = campaign.to_string();
        tasks.push(tokio::spawn(async move {
            let r: redis::RedisResult<(i64, i64)> = redis::cmd("COUPON.CONFIRM")
                .arg(&campaign)
                .arg(&user)
                .arg(issue)
                .query_async(&mut conn)
                .await;
            (user, issue, r)
        }));
    }
    for t in tasks {
        let (user, issue, r) = t.await.expect("payer task");
        let (confirmed, remaining) = r.unwrap_or_else(|e| panic!("{user} confirms {issue}: {e}"));
        assert_eq!(confirmed, issue, "{user} confirmed their own reservation");
        assert_eq!(remaining, 0, "a confirmation gives no stock back");
    }
}

fn coupon_info(conn: &mut redis::Connection, campaign: &str) -> HashMap<String, i64> {
    redis::cmd("COUPON.INFO")
        .arg(campaign)
        .query(conn)
        .expect("COUPON.INFO")
}

/// Waits, reading the stream only (nothing touches the campaign), until the timer has
/// appended `n` coupon.expire events; returns every event.
fn wait_for_expiries(conn: &mut redis::Connection, n: usize) -> Vec<(String, serde_json::Value)> {
    let deadline = std::time::Instant::now()
        + std::time::Duration::from_millis(CHECKOUT_TTL_MS)
        + std::time::Duration::from_secs(30);
    loop {
        let evs = events(conn, "tally:log");
        let expired = evs
            .iter()
            .filter(|(_, e)| e["type"] == "coupon.expire")
            .count();
        if expired >= n || std::time::Instant::now() > deadline {
            return evs;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// (user, issue) of the events of `kind`, sorted by issue.
fn of_type(evs: &[(String, serde_json::Value)], kind: &str) -> Vec<(String, i64)> {
    let mut out: Vec<(String, i64)> = evs
        .iter()
        .filter(|(_, e)| e["type"] == kind)
        .map(|(_, e)| {
            let user = e["coupon"]["user"].as_str().expect("coupon.user");
            (
                user.to_string(),
                e["coupon"]["issue"].as_i64().expect("issue"),
            )
        })
        .collect();
    out.sort_by_key(|(_, issue)| *issue);
    out
}

/// The campaign's history: one create, then per reservation one reserve and exactly one of
/// confirm (the payers) or expire (the others), gapless seqs, expiries decided by the
/// server's clock after each deadline.
fn check_checkout_history(
    evs: &[(String, serde_json::Value)],
    won: &[(String, i64)],
    paid: &[(String, i64)],
    walked: &[(String, i64)],
) {
    let count = |kind: &str| evs.iter().filter(|(_, e)| e["type"] == kind).count();
    assert_eq!(count("coupon.create"), 1);
    assert_eq!(count("coupon.reserve"), 100, "100 reservations");
    assert_eq!(count("coupon.confirm"), 60, "60 confirmations");
    assert_eq!(
        count("coupon.expire"),
        40,
        "40 expiries, never two for one hold"
    );
    assert_eq!(evs.len(), 201, "nothing else happened to the campaign");
    assert_eq!(of_type(evs, "coupon.reserve"), won);
    assert_eq!(of_type(evs, "coupon.confirm"), paid);
    assert_eq!(of_type(evs, "coupon.expire"), walked);
    for (i, (_, e)) in evs.iter().enumerate() {
        assert_eq!(e["keys"][0]["seq"].as_i64(), Some(i as i64 + 1), "seq {e}");
    }
    for (_, e) in evs.iter().filter(|(_, e)| e["type"] == "coupon.expire") {
        let hold = &e["hold"];
        assert_eq!(hold["status"], "expired");
        assert!(
            e["op"].is_null() && e["meta"].is_null(),
            "nobody asked: {e}"
        );
        let (ts, expires) = (e["ts"].as_i64(), hold["expires"].as_i64());
        assert!(ts >= expires, "expired at or after its deadline: {e}");
        assert_eq!(
            expires.zip(hold["created"].as_i64()).map(|(x, c)| x - c),
            Some(CHECKOUT_TTL_MS as i64)
        );
    }
    let last = &evs.last().expect("events").1;
    assert_eq!(last["coupon"]["remaining"], 40, "{last}");
}

/// What Redis holds after the story: 60 claims (the payers'), no open reservation, one
/// tombstone per reservation saying how it ended.
fn check_checkout_state(
    conn: &mut redis::Connection,
    campaign: &str,
    paid: &[(String, i64)],
    walked: &[(String, i64)],
) {
    let hash: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(campaign)
        .query(conn)
        .expect("HGETALL");
    let claims: BTreeMap<String, String> = hash
        .iter()
        .filter_map(|(f, v)| Some((f.strip_prefix("c:")?.to_string(), v.clone())))
        .collect();
    let payers: BTreeMap<String, String> =
        paid.iter().map(|(u, _)| (u.clone(), "1".into())).collect();
    assert_eq!(claims, payers, "60 claims, one per payer");
    for (user, issue) in paid {
        assert_eq!(hash.get(&format!("h:1:{user}")), Some(&issue.to_string()));
    }
    let holds_key = format!("tally:holds:{}:{campaign}", campaign.len());
    let holds: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(&holds_key)
        .query(conn)
        .expect("HGETALL holds");
    assert!(
        holds.keys().all(|f| !f.starts_with("o:")),
        "no reservation left open: {holds:?}"
    );
    assert!(matches!(
        holds.get("open").map(String::as_str),
        None | Some("0")
    ));
    for (ended, status) in [(paid, "settled"), (walked, "expired")] {
        for (user, issue) in ended {
            let tomb = holds.get(&format!("x:{issue}")).map(String::as_str);
            let ok = tomb.is_some_and(|t| t.starts_with(&format!("{status}:")));
            assert!(ok, "reservation {issue} of {user} ended {status}: {tomb:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn checkout_1000_users_reserve_100_coupons_60_pay_40_expire() {
    let redis = Redis::start(&[]);
    let mut conn = redis.conn();
    let campaign = "checkout";
    let _: () = redis::cmd("COUPON.CREATE")
        .arg(campaign)
        .arg(CHECKOUT_STOCK)
        .query(&mut conn)
        .unwrap();
    let started = std::time::Instant::now();
    let mut race = reserve_race(&redis, campaign).await;
    assert!(race.other.is_empty(), "{:?}", race.other);
    assert_eq!(race.won.len(), 100, "exactly the stock is reserved");
    // Every winner's second click is refused as DUPLICATE (checked before the stock, as for
    // COUPON.CLAIM); every other click finds the stock gone.
    let refused: Vec<(&str, usize)> = race.refused.iter().map(|(c, n)| (c.as_str(), *n)).collect();
    assert_eq!(
        refused,
        [("DUPLICATE", 100), ("SOLDOUT", 2 * CHECKOUT_USERS - 200)]
    );
    race.won.sort_by_key(|(_, issue)| *issue);
    let issues: Vec<i64> = race.won.iter().map(|(_, i)| *i).collect();
    assert_eq!(issues, (1..=CHECKOUT_STOCK).collect::<Vec<_>>());
    let users: HashSet<&str> = race.won.iter().map(|(u, _)| u.as_str()).collect();
    assert_eq!(users.len(), 100, "no user gets two");

    // The payers: the 60 winners whose names sort first; the rest walk away.
    let mut by_user = race.won.clone();
    by_user.sort();
    let (paid, walked) = by_user.split_at(CHECKOUT_PAYERS);
    let (mut paid, mut walked) = (paid.to_vec(), walked.to_vec());
    paid.sort_by_key(|(_, i)| *i);
    walked.sort_by_key(|(_, i)| *i);
    confirm_all(&redis, campaign, &paid).await;
    let info = coupon_info(&mut conn, campaign);
    if started.elapsed() < std::time::Duration::from_millis(CHECKOUT_TTL_MS) {
        // No deadline has passed yet: the walkers still hold their coupons.
        assert_eq!(
            (info["issued"], info["reserved"], info["remaining"]),
            (100, 40, 0)
        );
    }

    let evs = wait_for_expiries(&mut conn, 40);
    let info = coupon_info(&mut conn, campaign);
    assert_eq!(
        (info["issued"], info["reserved"], info["remaining"]),
        (60, 0, 40),
        "{info:?}"
    );
    check_checkout_history(&evs, &race.won, &paid, &walked);
    check_checkout_state(&mut conn, campaign, &paid, &walked);
}
