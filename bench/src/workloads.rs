//! The workloads of the suite: the Lua baselines, what each row sends, and its setup.

use anyhow::Result;

use crate::pairs;
use crate::resp::Conn;
use crate::{key, Cfg};

/// HINCRBYFLOAT + XADD of an event much like the module's.
pub const LUA_ASSET: &str = r#"
local b = redis.call('HINCRBYFLOAT', KEYS[1], ARGV[1], ARGV[2])
local t = redis.call('TIME')
local ms = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('XADD', KEYS[2], '*', 'event', '{"v":1,"type":"asset.incr","ts":' .. ms ..
  ',"op":null,"meta":null,"keys":[{"key":"' .. KEYS[1] .. '","seq":0}],"changes":[{"key":"' .. KEYS[1] ..
  '","field":"' .. ARGV[1] .. '","delta":"' .. ARGV[2] .. '","balance":"' .. b .. '"}]}')
return b
"#;

/// The same checks as COUPON.CLAIM: per-user limit (holder field with the issue list),
/// stock, issue counter, then XADD.
pub const LUA_COUPON: &str = r#"
local c = KEYS[1]
local v = redis.call('HMGET', c, 'total', 'issued', 'last_issue', 'peruser')
if not v[1] then return redis.error_reply('NOTFOUND no such campaign') end
local total, issued, peruser = tonumber(v[1]), tonumber(v[2]), tonumber(v[4])
local hf = 'u:' .. ARGV[1]
local held = redis.call('HGET', c, hf)
local n = 0
if held then local _, commas = string.gsub(held, ',', ','); n = commas + 1 end
if n >= peruser then return redis.error_reply('DUPLICATE the user already holds the limit') end
if issued >= total then return redis.error_reply('SOLDOUT no coupons remain') end
local issue = redis.call('HINCRBY', c, 'last_issue', 1)
issued = redis.call('HINCRBY', c, 'issued', 1)
if held then held = held .. ',' .. issue else held = tostring(issue) end
redis.call('HSET', c, hf, held)
local t = redis.call('TIME')
local ms = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('XADD', KEYS[2], '*', 'event', '{"v":1,"type":"coupon.claim","ts":' .. ms ..
  ',"op":null,"meta":null,"keys":[{"key":"' .. c .. '","seq":0}],"coupon":{"campaign":"' .. c ..
  '","user":"' .. ARGV[1] .. '","issue":' .. issue .. ',"total":' .. total .. ',"issued":' .. issued ..
  ',"remaining":' .. (total - issued) .. ',"peruser":' .. peruser .. ',"start":0,"end":0}}')
return {issue, total - issued}
"#;

/// USAGE.CONSUME's check-and-increment, then XADD.
pub const LUA_USAGE: &str = r#"
local k = KEYS[1]
local v = redis.call('HMGET', k, 'limit', 'used')
if not v[1] then return redis.error_reply('NOTFOUND no usage limit') end
local limit, used, amt = tonumber(v[1]), tonumber(v[2]), tonumber(ARGV[1])
if used + amt > limit then return redis.error_reply('LIMIT would exceed the limit') end
local now = redis.call('HINCRBYFLOAT', k, 'used', ARGV[1])
local t = redis.call('TIME')
local ms = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('XADD', KEYS[2], '*', 'event', '{"v":1,"type":"usage.consume","ts":' .. ms ..
  ',"op":null,"meta":null,"keys":[{"key":"' .. k .. '","seq":0}],"usage":{"key":"' .. k ..
  '","amount":"' .. ARGV[1] .. '","used":"' .. now .. '","limit":"' .. v[1] .. '","period":"none","period_id":"all"}}')
return {now, tostring(limit - tonumber(now))}
"#;

/// ASSET.HOLD as a user would write it: available = balance - held (`held:<field>` in the
/// same hash) must cover the amount; then the hold counter, the held sum, the hold record
/// `hold:<id>` = `<expires-ms>:<created-ms>:<amount>:<field>`, and an event like the module's.
/// No expiry of its own: a user would still need something that expires holds.
pub const LUA_HOLD: &str = r#"
local k, f, amt = KEYS[1], ARGV[1], ARGV[2]
local v = redis.call('HMGET', k, f, 'held:' .. f)
local avail = tonumber(v[1] or '0') - tonumber(v[2] or '0')
if avail < tonumber(amt) then return redis.error_reply('INSUFFICIENT available ' .. avail) end
local id = redis.call('HINCRBY', k, 'hold:n', 1)
redis.call('HINCRBYFLOAT', k, 'held:' .. f, amt)
local t = redis.call('TIME')
local ms = t[1] * 1000 + math.floor(t[2] / 1000)
local exp = ms + tonumber(ARGV[3])
redis.call('HSET', k, 'hold:' .. id, exp .. ':' .. ms .. ':' .. amt .. ':' .. f)
redis.call('XADD', KEYS[2], '*', 'event', '{"v":1,"type":"asset.hold","ts":' .. ms ..
  ',"op":null,"meta":null,"keys":[{"key":"' .. k .. '","seq":0}],"hold":{"id":"' .. id ..
  '","kind":"asset","subject":"' .. f .. '","amount":"' .. amt .. '","status":"open","created":' .. ms ..
  ',"expires":' .. exp .. ',"settled":null}}')
return {tostring(id), tostring(avail - tonumber(amt))}
"#;

/// ASSET.SETTLE (of the whole hold) as a user would write it: the hold must exist and not
/// be past its deadline; the balance and the held sum go down, the record goes, an event.
pub const LUA_SETTLE: &str = r#"
local k, id = KEYS[1], ARGV[1]
local rec = redis.call('HGET', k, 'hold:' .. id)
if not rec then return redis.error_reply('NOTFOUND hold ' .. id) end
local exp, created, amt, f = string.match(rec, '^(%d+):(%d+):([^:]+):(.*)$')
local t = redis.call('TIME')
local ms = t[1] * 1000 + math.floor(t[2] / 1000)
if tonumber(exp) <= ms then return redis.error_reply('NOTFOUND hold ' .. id .. ' expired') end
local bal = redis.call('HINCRBYFLOAT', k, f, '-' .. amt)
redis.call('HINCRBYFLOAT', k, 'held:' .. f, '-' .. amt)
redis.call('HDEL', k, 'hold:' .. id)
redis.call('XADD', KEYS[2], '*', 'event', '{"v":1,"type":"asset.settle","ts":' .. ms ..
  ',"op":null,"meta":null,"keys":[{"key":"' .. k .. '","seq":0}],"changes":[{"key":"' .. k ..
  '","field":"' .. f .. '","delta":"-' .. amt .. '","balance":"' .. bal .. '"}],"hold":{"id":"' .. id ..
  '","kind":"asset","subject":"' .. f .. '","amount":"' .. amt .. '","status":"settled","created":' .. created ..
  ',"expires":' .. exp .. ',"settled":"' .. amt .. '"}}')
return {amt, bal}
"#;

pub const STREAMS: [&str; 7] = [
    "tally:log",
    "bench:lua:log",
    "bench:mx:log",
    "bench:wl:log",
    "bench:lc:log",
    "bench:lu:log",
    pairs::LUA_STREAM,
];
pub const LIMIT: &str = "1000000000000000";

pub struct Shas {
    pub asset: String,
    pub coupon: String,
    pub usage: String,
    pub hold: String,
    pub settle: String,
}

pub async fn load_scripts(c: &mut Conn) -> Result<Shas> {
    Ok(Shas {
        asset: c.ok(&["SCRIPT", "LOAD", LUA_ASSET]).await?.text(),
        coupon: c.ok(&["SCRIPT", "LOAD", LUA_COUPON]).await?.text(),
        usage: c.ok(&["SCRIPT", "LOAD", LUA_USAGE]).await?.text(),
        hold: c.ok(&["SCRIPT", "LOAD", LUA_HOLD]).await?.text(),
        settle: c.ok(&["SCRIPT", "LOAD", LUA_SETTLE]).await?.text(),
    })
}

// ---------------------------------------------------------------- workloads

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tool {
    RedisBenchmark,
    Rust,
}

pub struct Workload {
    pub id: &'static str,
    pub label: &'static str,
    pub group: &'static str,
    pub tool: Tool,
    /// The command counted in INFO commandstats to check that the run did what it claims.
    pub stat: &'static str,
}

pub const WORKLOADS: &[Workload] = &[
    Workload {
        id: "ping",
        label: "PING (ceiling)",
        group: "ceiling",
        tool: Tool::RedisBenchmark,
        stat: "ping",
    },
    Workload {
        id: "asset",
        label: "ASSET.INCR (+event)",
        group: "asset",
        tool: Tool::RedisBenchmark,
        stat: "asset.incr",
    },
    Workload {
        id: "hincrbyfloat",
        label: "HINCRBYFLOAT alone",
        group: "asset",
        tool: Tool::RedisBenchmark,
        stat: "hincrbyfloat",
    },
    Workload {
        id: "lua_asset",
        label: "Lua HINCRBYFLOAT+XADD",
        group: "asset",
        tool: Tool::RedisBenchmark,
        stat: "evalsha",
    },
    Workload {
        id: "multi",
        label: "MULTI/EXEC HINCRBYFLOAT+XADD",
        group: "asset",
        tool: Tool::Rust,
        stat: "exec",
    },
    Workload {
        id: "watch",
        label: "WATCH/HGET/MULTI HSET+XADD loop",
        group: "asset",
        tool: Tool::Rust,
        stat: "exec",
    },
    Workload {
        id: "asset_rust",
        label: "ASSET.INCR (Rust client, calibration)",
        group: "asset",
        tool: Tool::Rust,
        stat: "asset.incr",
    },
    Workload {
        id: "coupon",
        label: "COUPON.CLAIM",
        group: "coupon",
        tool: Tool::RedisBenchmark,
        stat: "coupon.claim",
    },
    Workload {
        id: "lua_coupon",
        label: "Lua coupon claim+XADD",
        group: "coupon",
        tool: Tool::RedisBenchmark,
        stat: "evalsha",
    },
    Workload {
        id: "usage",
        label: "USAGE.CONSUME",
        group: "usage",
        tool: Tool::RedisBenchmark,
        stat: "usage.consume",
    },
    Workload {
        id: "lua_usage",
        label: "Lua usage check+incr+XADD",
        group: "usage",
        tool: Tool::RedisBenchmark,
        stat: "evalsha",
    },
    Workload {
        id: "hold",
        label: "ASSET.HOLD+SETTLE (pair)",
        group: "hold",
        tool: Tool::Rust,
        stat: "asset.settle",
    },
    Workload {
        id: "lua_hold",
        label: "Lua hold+XADD, settle+XADD (pair)",
        group: "hold",
        tool: Tool::Rust,
        stat: "evalsha",
    },
    Workload {
        id: "hincr_pair",
        label: "HINCRBYFLOAT pair (floor)",
        group: "hold",
        tool: Tool::Rust,
        stat: "hincrbyfloat",
    },
];

/// The fields that make `lcamp` the campaign the Lua coupon script claims from.
pub const LUA_CAMPAIGN: [&str; 16] = [
    "HSET",
    "lcamp",
    "kind",
    "coupon",
    "total",
    "1000000000",
    "issued",
    "0",
    "last_issue",
    "0",
    "peruser",
    "1000",
    "start",
    "0",
    "end",
    "0",
];

/// Creates what a workload needs (after FLUSHALL) and returns the redis-benchmark command
/// line (for redis-benchmark workloads) and the `-r` range to use.
pub async fn setup(c: &mut Conn, cfg: &Cfg, id: &str) -> Result<(Vec<String>, u64)> {
    c.ok(&["FLUSHALL"]).await?;
    let shas = load_scripts(c).await?;
    create_data(c, id, cfg.keys).await?;
    Ok(command_line(id, &shas, cfg))
}

/// The campaign or usage keys a workload works on.
async fn create_data(c: &mut Conn, id: &str, keys: u64) -> Result<()> {
    match id {
        "coupon" => {
            c.ok(&["COUPON.CREATE", "camp", "1000000000", "PERUSER", "1000"])
                .await?;
        }
        "lua_coupon" => {
            c.ok(&LUA_CAMPAIGN).await?;
        }
        "usage" => {
            c.bulk((0..keys).map(|i| vec!["USAGE.LIMIT".into(), key("use:", i), LIMIT.into()]))
                .await?;
        }
        "lua_usage" => {
            let hash = |i| {
                let f = ["kind", "usage", "limit", LIMIT, "used", "0"];
                let mut v = vec!["HSET".to_string(), key("lu:", i)];
                v.extend(
                    f.iter()
                        .chain(&["period", "none", "period_id", "all"])
                        .map(|x| x.to_string()),
                );
                v
            };
            c.bulk((0..keys).map(hash)).await?;
        }
        id if pairs::is_pair(id) => {
            let prefix = pairs::prefix(id);
            c.bulk((0..keys).map(|i| pairs::fund(id, key(prefix, i))))
                .await?;
        }
        _ => {}
    }
    Ok(())
}

/// The redis-benchmark command line of a workload and its `-r` range.
fn command_line(id: &str, shas: &Shas, cfg: &Cfg) -> (Vec<String>, u64) {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let keys = cfg.keys;
    match id {
        "ping" => (s(&["PING"]), keys),
        "asset" => (
            s(&["ASSET.INCR", "acct:__rand_int__", "gold", "1.25"]),
            keys,
        ),
        "hincrbyfloat" => (
            s(&["HINCRBYFLOAT", "hf:__rand_int__", "gold", "1.25"]),
            keys,
        ),
        "lua_asset" => {
            let la = ["2", "la:__rand_int__", "bench:lua:log", "gold", "1.25"];
            (s(&[&["EVALSHA", &shas.asset], &la[..]].concat()), keys)
        }
        "coupon" => (s(&["COUPON.CLAIM", "camp", "user:__rand_int__"]), cfg.users),
        "lua_coupon" => {
            let lc = ["2", "lcamp", "bench:lc:log", "user:__rand_int__"];
            (
                s(&[&["EVALSHA", &shas.coupon], &lc[..]].concat()),
                cfg.users,
            )
        }
        "usage" => (s(&["USAGE.CONSUME", "use:__rand_int__", "1"]), keys),
        "lua_usage" => {
            let lu = ["2", "lu:__rand_int__", "bench:lu:log", "1"];
            (s(&[&["EVALSHA", &shas.usage], &lu[..]].concat()), keys)
        }
        id if pairs::is_pair(id) => (vec![pairs::describe(id)], keys),
        _ => (Vec::new(), keys),
    }
}

/// `CMD <prefix><i> gold <amount>` for every i below n, pipelined.
pub async fn incr_each(c: &mut Conn, cmd: &str, prefix: &str, n: u64, amount: &str) -> Result<()> {
    c.bulk((0..n).map(|i| vec![cmd.into(), key(prefix, i), "gold".into(), amount.into()]))
        .await
}

pub async fn trim_streams(c: &mut Conn) -> Result<()> {
    for s in STREAMS {
        c.ok(&["DEL", s]).await?;
    }
    Ok(())
}
