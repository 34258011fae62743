//! HOLD+SETTLE pairs: tally's `ASSET.HOLD` + `ASSET.SETTLE`, the two Lua scripts a user
//! would write for the same (workloads.rs), and a bare `HINCRBYFLOAT` pair (no checks, no
//! history: the floor of cost). One operation is one pair, in two writes: the holds of a
//! batch, then (their replies read) the settles, since a settle names the hold id its hold
//! returned. The same two round trips for all three, at any pipeline depth.

use anyhow::{bail, Result};

use crate::resp::{Conn, Val};
use crate::workloads::Shas;

/// Long enough that no hold of a run expires: every hold is settled by its pair.
pub const HOLD_TTL_MS: &str = "600000";
pub const AMOUNT: &str = "1.25";
/// What each account starts with, so no hold of a run is refused.
pub const FUNDS: &str = "1000000000000";
/// The stream the Lua scripts append to.
pub const LUA_STREAM: &str = "bench:lh:log";

/// Whether workload `id` is a pair.
pub fn is_pair(id: &str) -> bool {
    matches!(id, "hold" | "lua_hold" | "hincr_pair")
}

/// The key prefix of a pair workload's accounts.
pub fn prefix(id: &str) -> &'static str {
    match id {
        "hold" => "ha:",
        "lua_hold" => "lh:",
        _ => "hp:",
    }
}

/// The command that makes (or funds, for `hincr_pair`) account `key` of a pair workload.
pub fn fund(id: &str, key: String) -> Vec<String> {
    let cmd = if id == "hold" {
        "ASSET.INCR"
    } else {
        "HINCRBYFLOAT"
    };
    vec![cmd.into(), key, "gold".into(), FUNDS.into()]
}

/// The pair as text, for the report.
pub fn describe(id: &str) -> String {
    let (p, ttl, s) = (prefix(id), HOLD_TTL_MS, LUA_STREAM);
    match id {
        "hold" => format!(
            "ASSET.HOLD {p}<n> gold {AMOUNT} TTL {ttl}; then ASSET.SETTLE {p}<n> <hold-id>"
        ),
        "lua_hold" => format!(
            "EVALSHA <hold> 2 {p}<n> {s} gold {AMOUNT} {ttl}; then EVALSHA <settle> 2 {p}<n> {s} <hold-id>"
        ),
        _ => format!("HINCRBYFLOAT {p}<n> held:gold {AMOUNT}; then HINCRBYFLOAT {p}<n> gold -{AMOUNT}"),
    }
}

fn hold_cmd(id: &str, shas: &Shas, key: &str) -> Vec<String> {
    let v: &[&str] = match id {
        "hold" => &["ASSET.HOLD", key, "gold", AMOUNT, "TTL", HOLD_TTL_MS],
        "lua_hold" => &[
            "EVALSHA",
            &shas.hold,
            "2",
            key,
            LUA_STREAM,
            "gold",
            AMOUNT,
            HOLD_TTL_MS,
        ],
        _ => &["HINCRBYFLOAT", key, "held:gold", AMOUNT],
    };
    v.iter().map(|s| s.to_string()).collect()
}

/// The settle of the hold that answered `reply`.
fn settle_cmd(id: &str, shas: &Shas, key: &str, reply: &Val) -> Result<Vec<String>> {
    let hold_id = || match reply {
        Val::Arr(Some(v)) if v.len() == 2 && matches!(v[0], Val::Bulk(Some(_))) => Ok(v[0].text()),
        other => bail!("{id}: unexpected hold reply {other:?}"),
    };
    let minus = format!("-{AMOUNT}");
    let v: Vec<&str> = match id {
        "hold" => return Ok(vec!["ASSET.SETTLE".into(), key.into(), hold_id()?]),
        "lua_hold" => {
            let h = hold_id()?;
            let v = ["EVALSHA", &shas.settle, "2", key, LUA_STREAM, &h];
            return Ok(v.iter().map(|s| s.to_string()).collect());
        }
        _ => vec!["HINCRBYFLOAT", key, "gold", &minus],
    };
    Ok(v.iter().map(|s| s.to_string()).collect())
}

fn push(c: &mut Conn, v: &[String]) {
    let a: Vec<&[u8]> = v.iter().map(|s| s.as_bytes()).collect();
    c.push(&a);
}

/// One pair per key of `keys`: every hold in one write, then every settle in the next.
pub async fn batch(c: &mut Conn, id: &str, shas: &Shas, keys: &[String]) -> Result<()> {
    for k in keys {
        push(c, &hold_cmd(id, shas, k));
    }
    c.flush().await?;
    let mut settles = Vec::with_capacity(keys.len());
    for k in keys {
        let v = c.read().await?;
        if v.is_err() {
            bail!("{id}: hold refused: {}", v.text());
        }
        settles.push(settle_cmd(id, shas, k, &v)?);
    }
    for s in &settles {
        push(c, s);
    }
    c.flush().await?;
    for _ in keys {
        let v = c.read().await?;
        if v.is_err() {
            bail!("{id}: settle refused: {}", v.text());
        }
    }
    Ok(())
}
