//! `tally-bench profile-setup` and `profile WORKLOAD`: fixed small workloads for callgrind.

use anyhow::{bail, Result};

use crate::pairs;
use crate::resp::Conn;
use crate::suite::event_json;
use crate::workloads::{incr_each, load_scripts, setup, Shas, LIMIT, LUA_CAMPAIGN};
use crate::{key, Cfg};

/// A fixed workload for one profile phase: setup outside the measured part is done by
/// `profile-setup`; `profile WORKLOAD` sends BENCH_PROFILE_OPS operations, 16 per write. An
/// operation is one command, except `multi`: one MULTI/HINCRBYFLOAT/XADD/EXEC transaction,
/// and the pairs (`hold`, `lua_hold`, `hincr_pair`): one hold and its settle (pairs.rs).
pub async fn profile(cfg: Cfg, id: &str) -> Result<()> {
    let mut c = Conn::connect(cfg.port).await?;
    let shas = load_scripts(&mut c).await?;
    let keys = if id == "asset_1m" { MANY_KEYS } else { 1000u64 };
    let mut rng = fastrand::Rng::with_seed(42);
    fastrand::seed(42); // the event ids of `xadd` and `multi`
    let n = cfg.profile_ops;
    if pairs::is_pair(id) {
        // BENCH_PROFILE_OPS pairs, 16 holds per write then their 16 settles.
        let keys: Vec<String> = (0..n)
            .map(|_| key(pairs::prefix(id), rng.u64(..keys)))
            .collect();
        for chunk in keys.chunks(16) {
            pairs::batch(&mut c, id, &shas, chunk).await?;
        }
        return Ok(());
    }
    let mut ops: Vec<Vec<Vec<String>>> = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let k = rng.u64(..keys);
        let u = rng.u64(..cfg.users);
        ops.push(profile_op(id, &shas, k, u)?);
    }
    let (mut pending, mut replies) = (0, 0);
    for op in ops {
        for v in &op {
            let a: Vec<&[u8]> = v.iter().map(|s| s.as_bytes()).collect();
            c.push(&a);
        }
        replies += op.len();
        pending += 1;
        if pending == 16 {
            c.drain(replies).await?;
            (pending, replies) = (0, 0);
        }
    }
    c.drain(replies).await?;
    Ok(())
}

/// The commands of one profiled operation on key number `k` (user `u` for the coupon rows).
fn profile_op(id: &str, shas: &Shas, k: u64, u: u64) -> Result<Vec<Vec<String>>> {
    let v: Vec<String> = match id {
        // asset_1m: the same over MANY_KEYS accounts and a tally:seq of as many fields
        "asset" | "asset_1m" => vec![
            "ASSET.INCR".into(),
            key(if id == "asset" { "acct:" } else { MANY_PREFIX }, k),
            "gold".into(),
            "1.25".into(),
        ],
        "hincrbyfloat" => vec![
            "HINCRBYFLOAT".into(),
            key("hf:", k),
            "gold".into(),
            "1.25".into(),
        ],
        "lua_asset" => vec![
            "EVALSHA".into(),
            shas.asset.clone(),
            "2".into(),
            key("la:", k),
            "bench:lua:log".into(),
            "gold".into(),
            "1.25".into(),
        ],
        "coupon" => vec!["COUPON.CLAIM".into(), "camp".into(), key("user:", u)],
        "lua_coupon" => vec![
            "EVALSHA".into(),
            shas.coupon.clone(),
            "2".into(),
            "lcamp".into(),
            "bench:lc:log".into(),
            key("user:", u),
        ],
        "usage" => vec!["USAGE.CONSUME".into(), key("use:", k), "1".into()],
        "lua_usage" => vec![
            "EVALSHA".into(),
            shas.usage.clone(),
            "2".into(),
            key("lu:", k),
            "bench:lu:log".into(),
            "1".into(),
        ],
        "ping" => vec!["PING".into()],
        // The append ASSET.INCR makes, alone: one stream, an event-sized JSON in field `event`.
        "xadd" => vec![
            "XADD".into(),
            "bench:xa:log".into(),
            "*".into(),
            "event".into(),
            event_json(&key("xa:", k), None),
        ],
        "multi" => {
            let k = key("mx:", k);
            let ev = event_json(&k, None);
            return Ok(vec![
                vec!["MULTI".into()],
                vec!["HINCRBYFLOAT".into(), k, "gold".into(), "1.25".into()],
                vec![
                    "XADD".into(),
                    "bench:mx:log".into(),
                    "*".into(),
                    "event".into(),
                    ev,
                ],
                vec!["EXEC".into()],
            ]);
        }
        _ => bail!("unknown profile workload {id}"),
    };
    Ok(vec![v])
}

/// `asset_1m`'s accounts: ASSET.INCR's cost with a keyspace and a sequence hash this large
/// (issue 27), against `asset`'s 1,000.
const MANY_KEYS: u64 = 1_000_000;
const MANY_PREFIX: &str = "acct1m:";

/// `asset_1m`'s accounts as ASSET.INCR leaves them (docs/module.md): the account hash and
/// its field in `tally:seq`, written with HSET because under callgrind a million module
/// commands (each with its event) would take many minutes; the profiled commands then
/// update existing accounts, as `asset`'s do.
async fn many_accounts(c: &mut Conn) -> Result<()> {
    c.bulk((0..MANY_KEYS).flat_map(|i| {
        let k = key(MANY_PREFIX, i);
        let data = ["HSET", &k, "gold", "1"].map(String::from).to_vec();
        let seq = ["HSET", "tally:seq", &k, "1"].map(String::from).to_vec();
        [data, seq]
    }))
    .await
}

pub async fn profile_setup(cfg: Cfg) -> Result<()> {
    let mut c = Conn::connect(cfg.port).await?;
    c.ok(&["CONFIG", "SET", "tally.max-backlog", "0"]).await?;
    load_scripts(&mut c).await?;
    let small = Cfg { keys: 1000, ..cfg };
    setup(&mut c, &small, "coupon").await?; // FLUSHALL + campaign
    c.ok(&LUA_CAMPAIGN).await?;
    c.bulk((0..1000).map(|i| vec!["USAGE.LIMIT".into(), key("use:", i), LIMIT.into()]))
        .await?;
    c.bulk((0..1000).map(|i| {
        let f = ["limit", LIMIT, "used", "0"].map(String::from);
        [vec!["HSET".into(), key("lu:", i)], f.to_vec()].concat()
    }))
    .await?;
    // Touch every asset key once so the profiled phase measures updates, not creations.
    let touched = [
        ("ASSET.INCR", "acct:"),
        ("HINCRBYFLOAT", "hf:"),
        ("HINCRBYFLOAT", "la:"),
        ("HINCRBYFLOAT", "mx:"),
    ];
    for (cmd, prefix) in touched {
        incr_each(&mut c, cmd, prefix, 1000, "1").await?;
    }
    many_accounts(&mut c).await?;
    // The pairs' accounts: funded, and one pair each so that the holds hash, the due index
    // and the Lua script's fields exist before the profiled phase.
    let shas = load_scripts(&mut c).await?;
    for id in ["hold", "lua_hold", "hincr_pair"] {
        let keys: Vec<String> = (0..1000).map(|i| key(pairs::prefix(id), i)).collect();
        c.bulk(keys.iter().map(|k| pairs::fund(id, k.clone())))
            .await?;
        for chunk in keys.chunks(16) {
            pairs::batch(&mut c, id, &shas, chunk).await?;
        }
    }
    Ok(())
}
