//! tally-bench: the measuring half of `scripts/bench.sh`.
//!
//! `tally-bench suite`   runs every workload against the redis-server the script started
//!                       (redis-benchmark where it fits, the built-in Rust load generator for
//!                       MULTI/EXEC and the WATCH retry loop), then the memory test, and
//!                       writes one JSON file with every figure.
//! `tally-bench profile WORKLOAD` runs a fixed, small, pipelined workload on one connection
//!                       (used while redis-server runs under callgrind).
//!
//! Configuration comes from environment variables (see `Cfg::from_env`).

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

// ---------------------------------------------------------------- configuration

#[derive(Clone, Debug)]
struct Cfg {
    port: u16,
    clients: usize,
    pipeline: usize,
    keys: u64,
    users: u64,
    seconds: f64,
    probe_requests: u64,
    min_requests: u64,
    max_requests: u64,
    mem_accounts: u64,
    out: String,
    profile_ops: u64,
    only: Option<Vec<String>>,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

impl Cfg {
    fn from_env() -> Result<Cfg> {
        Ok(Cfg {
            port: std::env::var("BENCH_PORT")
                .context("BENCH_PORT is not set")?
                .parse()?,
            clients: env_or("BENCH_CLIENTS", 50),
            pipeline: env_or("BENCH_PIPELINE", 16),
            keys: env_or("BENCH_KEYS", 10_000),
            users: env_or("BENCH_USERS", 100_000_000),
            seconds: env_or("BENCH_SECONDS", 3.0),
            probe_requests: env_or("BENCH_PROBE_REQUESTS", 20_000),
            min_requests: env_or("BENCH_MIN_REQUESTS", 10_000),
            max_requests: env_or("BENCH_MAX_REQUESTS", 5_000_000),
            mem_accounts: env_or("BENCH_MEM_ACCOUNTS", 100_000),
            out: std::env::var("BENCH_OUT").unwrap_or_else(|_| "bench-results.json".into()),
            profile_ops: env_or("BENCH_PROFILE_OPS", 5_000),
            only: std::env::var("BENCH_ONLY")
                .ok()
                .filter(|s| !s.is_empty())
                .map(|s| s.split(',').map(str::to_string).collect()),
        })
    }
}

// ---------------------------------------------------------------- a minimal RESP client

#[derive(Debug, Clone)]
enum Val {
    Simple(String),
    Err(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Arr(Option<Vec<Val>>),
}

impl Val {
    fn text(&self) -> String {
        match self {
            Val::Simple(s) | Val::Err(s) => s.clone(),
            Val::Int(n) => n.to_string(),
            Val::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
            Val::Bulk(None) | Val::Arr(None) => String::new(),
            Val::Arr(Some(v)) => v.iter().map(Val::text).collect::<Vec<_>>().join(" "),
        }
    }
    fn is_err(&self) -> bool {
        matches!(self, Val::Err(_))
    }
}

struct Conn {
    r: BufReader<OwnedReadHalf>,
    w: OwnedWriteHalf,
    out: Vec<u8>,
    line: Vec<u8>,
}

fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

impl Conn {
    async fn connect(port: u16) -> Result<Conn> {
        let s = TcpStream::connect(("127.0.0.1", port)).await?;
        s.set_nodelay(true)?;
        let (r, w) = s.into_split();
        Ok(Conn {
            r: BufReader::with_capacity(64 * 1024, r),
            w,
            out: Vec::with_capacity(64 * 1024),
            line: Vec::new(),
        })
    }

    fn push(&mut self, args: &[&[u8]]) {
        encode(&mut self.out, args);
    }

    async fn flush(&mut self) -> Result<()> {
        self.w.write_all(&self.out).await?;
        self.out.clear();
        Ok(())
    }

    fn read(&mut self) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Val>> + '_>> {
        Box::pin(async move {
            self.line.clear();
            let n = self.r.read_until(b'\n', &mut self.line).await?;
            if n < 3 {
                bail!("connection closed");
            }
            let body = String::from_utf8_lossy(&self.line[1..n - 2]).into_owned();
            match self.line[0] {
                b'+' => Ok(Val::Simple(body)),
                b'-' => Ok(Val::Err(body)),
                b':' => Ok(Val::Int(body.parse()?)),
                b'$' => {
                    let len: i64 = body.parse()?;
                    if len < 0 {
                        return Ok(Val::Bulk(None));
                    }
                    let mut buf = vec![0u8; len as usize + 2];
                    self.r.read_exact(&mut buf).await?;
                    buf.truncate(len as usize);
                    Ok(Val::Bulk(Some(buf)))
                }
                b'*' => {
                    let len: i64 = body.parse()?;
                    if len < 0 {
                        return Ok(Val::Arr(None));
                    }
                    let mut v = Vec::with_capacity(len as usize);
                    for _ in 0..len {
                        v.push(self.read().await?);
                    }
                    Ok(Val::Arr(Some(v)))
                }
                c => bail!("unexpected RESP type byte {c}"),
            }
        })
    }

    async fn cmd(&mut self, args: &[&str]) -> Result<Val> {
        let a: Vec<&[u8]> = args.iter().map(|s| s.as_bytes()).collect();
        self.push(&a);
        self.flush().await?;
        self.read().await
    }

    async fn ok(&mut self, args: &[&str]) -> Result<Val> {
        let v = self.cmd(args).await?;
        if v.is_err() {
            bail!("{:?} failed: {}", args, v.text());
        }
        Ok(v)
    }

    /// Sends many commands pipelined in batches, failing on the first error reply.
    async fn bulk(&mut self, cmds: impl Iterator<Item = Vec<String>>) -> Result<()> {
        let mut pending = 0usize;
        for c in cmds {
            let a: Vec<&[u8]> = c.iter().map(|s| s.as_bytes()).collect();
            self.push(&a);
            pending += 1;
            if pending == 1000 {
                self.drain(pending).await?;
                pending = 0;
            }
        }
        self.drain(pending).await
    }

    async fn drain(&mut self, n: usize) -> Result<()> {
        self.flush().await?;
        for _ in 0..n {
            let v = self.read().await?;
            // An EXEC reply is an array: a command that failed inside it is an error too.
            if v.is_err() || matches!(&v, Val::Arr(Some(a)) if a.iter().any(Val::is_err)) {
                bail!("bulk command failed: {}", v.text());
            }
        }
        Ok(())
    }

    async fn info(&mut self, section: &str) -> Result<String> {
        Ok(self.ok(&["INFO", section]).await?.text())
    }

    async fn info_field(&mut self, section: &str, field: &str) -> Result<i64> {
        let text = self.info(section).await?;
        for line in text.lines() {
            if let Some(v) = line.strip_prefix(&format!("{field}:")) {
                return Ok(v.trim().parse()?);
            }
        }
        bail!("INFO {section} has no {field}")
    }
}

// ---------------------------------------------------------------- the Lua baselines

/// HINCRBYFLOAT + XADD of an event much like the module's.
const LUA_ASSET: &str = r#"
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
const LUA_COUPON: &str = r#"
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
const LUA_USAGE: &str = r#"
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

const STREAMS: [&str; 6] = [
    "tally:log",
    "bench:lua:log",
    "bench:mx:log",
    "bench:wl:log",
    "bench:lc:log",
    "bench:lu:log",
];
const LIMIT: &str = "1000000000000000";

fn key(prefix: &str, n: u64) -> String {
    // Same shape as redis-benchmark's __rand_int__ expansion (12 digits).
    format!("{prefix}{n:012}")
}

struct Shas {
    asset: String,
    coupon: String,
    usage: String,
}

async fn load_scripts(c: &mut Conn) -> Result<Shas> {
    Ok(Shas {
        asset: c.ok(&["SCRIPT", "LOAD", LUA_ASSET]).await?.text(),
        coupon: c.ok(&["SCRIPT", "LOAD", LUA_COUPON]).await?.text(),
        usage: c.ok(&["SCRIPT", "LOAD", LUA_USAGE]).await?.text(),
    })
}

// ---------------------------------------------------------------- workloads

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tool {
    RedisBenchmark,
    Rust,
}

struct Workload {
    id: &'static str,
    label: &'static str,
    group: &'static str,
    tool: Tool,
    /// The command counted in INFO commandstats to check that the run did what it claims.
    stat: &'static str,
}

const WORKLOADS: &[Workload] = &[
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
];

/// Creates what a workload needs (after FLUSHALL) and returns the redis-benchmark command
/// line (for redis-benchmark workloads) and the `-r` range to use.
async fn setup(c: &mut Conn, cfg: &Cfg, id: &str) -> Result<(Vec<String>, u64)> {
    c.ok(&["FLUSHALL"]).await?;
    let shas = load_scripts(c).await?;
    let keys = cfg.keys;
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    Ok(match id {
        "ping" => (s(&["PING"]), keys),
        "asset" => (
            s(&["ASSET.INCR", "acct:__rand_int__", "gold", "1.25"]),
            keys,
        ),
        "hincrbyfloat" => (
            s(&["HINCRBYFLOAT", "hf:__rand_int__", "gold", "1.25"]),
            keys,
        ),
        "lua_asset" => (
            s(&[
                "EVALSHA",
                &shas.asset,
                "2",
                "la:__rand_int__",
                "bench:lua:log",
                "gold",
                "1.25",
            ]),
            keys,
        ),
        "coupon" => {
            c.ok(&["COUPON.CREATE", "camp", "1000000000", "PERUSER", "1000"])
                .await?;
            (s(&["COUPON.CLAIM", "camp", "user:__rand_int__"]), cfg.users)
        }
        "lua_coupon" => {
            c.ok(&[
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
            ])
            .await?;
            (
                s(&[
                    "EVALSHA",
                    &shas.coupon,
                    "2",
                    "lcamp",
                    "bench:lc:log",
                    "user:__rand_int__",
                ]),
                cfg.users,
            )
        }
        "usage" => {
            c.bulk((0..keys).map(|i| vec!["USAGE.LIMIT".into(), key("use:", i), LIMIT.into()]))
                .await?;
            (s(&["USAGE.CONSUME", "use:__rand_int__", "1"]), keys)
        }
        "lua_usage" => {
            c.bulk((0..keys).map(|i| {
                vec![
                    "HSET".into(),
                    key("lu:", i),
                    "kind".into(),
                    "usage".into(),
                    "limit".into(),
                    LIMIT.into(),
                    "used".into(),
                    "0".into(),
                    "period".into(),
                    "none".into(),
                    "period_id".into(),
                    "all".into(),
                ]
            }))
            .await?;
            (
                s(&[
                    "EVALSHA",
                    &shas.usage,
                    "2",
                    "lu:__rand_int__",
                    "bench:lu:log",
                    "1",
                ]),
                keys,
            )
        }
        _ => (Vec::new(), keys),
    })
}

async fn trim_streams(c: &mut Conn) -> Result<()> {
    for s in STREAMS {
        c.ok(&["DEL", s]).await?;
    }
    Ok(())
}

#[derive(Debug, Default, Clone)]
struct RunStats {
    ops: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: u64,
    seconds: f64,
    retries: u64,
}

fn run_redis_benchmark(
    cfg: &Cfg,
    cmd: &[String],
    range: u64,
    pipeline: usize,
    n: u64,
) -> Result<RunStats> {
    let mut args: Vec<String> = vec![
        "-h".into(),
        "127.0.0.1".into(),
        "-p".into(),
        cfg.port.to_string(),
        "-c".into(),
        cfg.clients.to_string(),
        "-n".into(),
        n.to_string(),
        "-r".into(),
        range.to_string(),
        "-P".into(),
        pipeline.to_string(),
        "--csv".into(),
    ];
    args.extend(cmd.iter().cloned());
    let t0 = Instant::now();
    let out = Command::new("redis-benchmark")
        .args(&args)
        .output()
        .context("running redis-benchmark")?;
    let secs = t0.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "redis-benchmark failed: {}{}",
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let line = stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .last()
        .ok_or_else(|| anyhow!("no CSV output"))?;
    let f: Vec<String> = line
        .split("\",\"")
        .map(|x| x.trim_matches('"').to_string())
        .collect();
    if f.len() < 8 {
        bail!("unexpected redis-benchmark CSV line: {line}");
    }
    let num = |i: usize| -> Result<f64> {
        f[i].parse::<f64>()
            .with_context(|| format!("CSV field {i} in {line}"))
    };
    Ok(RunStats {
        ops: num(1)?,
        p50_ms: num(4)?,
        p99_ms: num(6)?,
        requests: n,
        seconds: secs,
        retries: 0,
    })
}

// ---------------------------------------------------------------- the Rust load generator

fn event_json(key: &str, balance: Option<&str>) -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let id = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
    let bal = balance
        .map(|b| format!("\"{b}\""))
        .unwrap_or_else(|| "null".into());
    format!(
        r#"{{"v":1,"id":"{id}","type":"asset.incr","ts":{ms},"op":null,"meta":null,"keys":[{{"key":"{key}","seq":0}}],"changes":[{{"key":"{key}","field":"gold","delta":"1.25","balance":{bal}}}]}}"#
    )
}

/// One client: runs `id` until `end`, recording latencies (µs) of operations that finish
/// inside [`start`, `end`].
async fn client(
    port: u16,
    id: &'static str,
    keys: u64,
    depth: usize,
    start: Instant,
    end: Instant,
) -> Result<(Vec<u32>, u64)> {
    let mut c = Conn::connect(port).await?;
    let mut lat = Vec::with_capacity(1 << 16);
    let mut retries = 0u64;
    let window = Window { start, end };
    while Instant::now() < end {
        match id {
            "multi" | "asset_rust" => {
                pipelined_batch(&mut c, id, keys, depth, window, &mut lat).await?
            }
            "watch" => retries += watch_once(&mut c, keys, depth, window, &mut lat).await?,
            _ => bail!("no Rust workload {id}"),
        }
    }
    Ok((lat, retries))
}

/// The measured part of a run: operations finishing inside it are recorded.
#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    end: Instant,
}

impl Window {
    fn record(self, lat: &mut Vec<u32>, t0: Instant) {
        let done = Instant::now();
        if done >= self.start && done <= self.end {
            lat.push(done.duration_since(t0).as_micros() as u32);
        }
    }
}

/// `depth` MULTI/EXEC transactions (`multi`) or ASSET.INCR commands (`asset_rust`) in one write.
async fn pipelined_batch(
    c: &mut Conn,
    id: &str,
    keys: u64,
    depth: usize,
    window: Window,
    lat: &mut Vec<u32>,
) -> Result<()> {
    for _ in 0..depth {
        let k = key(
            if id == "multi" { "mx:" } else { "acct:" },
            fastrand::u64(..keys),
        );
        if id == "multi" {
            let ev = event_json(&k, None);
            c.push(&[b"MULTI"]);
            c.push(&[b"HINCRBYFLOAT", k.as_bytes(), b"gold", b"1.25"]);
            c.push(&[b"XADD", b"bench:mx:log", b"*", b"event", ev.as_bytes()]);
            c.push(&[b"EXEC"]);
        } else {
            c.push(&[b"ASSET.INCR", k.as_bytes(), b"gold", b"1.25"]);
        }
    }
    let t0 = Instant::now();
    c.flush().await?;
    for _ in 0..depth {
        let replies = if id == "multi" { 4 } else { 1 };
        for r in 0..replies {
            let v = c.read().await?;
            let bad = v.is_err()
                || (r == 3 && !matches!(&v, Val::Arr(Some(a)) if a.iter().all(|x| !x.is_err())));
            if bad {
                bail!("{id}: unexpected reply {v:?}");
            }
        }
        window.record(lat, t0);
    }
    Ok(())
}

/// One increment by the naive optimistic loop, retried until its EXEC commits; returns the
/// number of retries.
async fn watch_once(
    c: &mut Conn,
    keys: u64,
    depth: usize,
    window: Window,
    lat: &mut Vec<u32>,
) -> Result<u64> {
    let mut retries = 0u64;
    // The naive optimistic loop. Unpipelined: WATCH, HGET, then MULTI..EXEC as one
    // write (3 round trips, as redis-py/redis-rs transactions do). Pipelined: WATCH+HGET
    // in one write, MULTI..EXEC in the next (2 round trips); deeper pipelining is not
    // possible because the writes depend on the read.
    let k = key("wk:", fastrand::u64(..keys));
    let t0 = Instant::now();
    loop {
        if depth > 1 {
            c.push(&[b"WATCH", k.as_bytes()]);
            c.push(&[b"HGET", k.as_bytes(), b"gold"]);
            c.flush().await?;
            let w = c.read().await?;
            if w.is_err() {
                bail!("WATCH: {w:?}");
            }
        } else {
            let w = c.cmd(&["WATCH", &k]).await?;
            if w.is_err() {
                bail!("WATCH: {w:?}");
            }
            c.push(&[b"HGET", k.as_bytes(), b"gold"]);
            c.flush().await?;
        }
        let cur = match c.read().await? {
            Val::Bulk(Some(b)) => String::from_utf8_lossy(&b).parse::<f64>().unwrap_or(0.0),
            Val::Bulk(None) => 0.0,
            v => bail!("HGET: {v:?}"),
        };
        let next = format!("{}", cur + 1.25);
        let ev = event_json(&k, Some(&next));
        c.push(&[b"MULTI"]);
        c.push(&[b"HSET", k.as_bytes(), b"gold", next.as_bytes()]);
        c.push(&[b"XADD", b"bench:wl:log", b"*", b"event", ev.as_bytes()]);
        c.push(&[b"EXEC"]);
        c.flush().await?;
        for _ in 0..3 {
            let v = c.read().await?;
            if v.is_err() {
                bail!("watch loop: {v:?}");
            }
        }
        match c.read().await? {
            Val::Arr(Some(_)) => break,
            Val::Arr(None) => retries += 1,
            v => bail!("EXEC: {v:?}"),
        }
    }
    window.record(lat, t0);
    Ok(retries)
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

async fn run_rust(cfg: &Cfg, id: &'static str, depth: usize, seconds: f64) -> Result<RunStats> {
    let warmup = Duration::from_millis(500);
    let t = Instant::now();
    let start = t + warmup;
    let end = start + Duration::from_secs_f64(seconds);
    let mut handles = Vec::new();
    for _ in 0..cfg.clients {
        handles.push(tokio::task::spawn_local(client(
            cfg.port, id, cfg.keys, depth, start, end,
        )));
    }
    let mut all = Vec::new();
    let mut retries = 0;
    for h in handles {
        let (l, r) = h.await??;
        all.extend(l);
        retries += r;
    }
    all.sort_unstable();
    Ok(RunStats {
        ops: all.len() as f64 / seconds,
        p50_ms: pct(&all, 0.5),
        p99_ms: pct(&all, 0.99),
        requests: all.len() as u64,
        seconds,
        retries,
    })
}

// ---------------------------------------------------------------- the suite

async fn check_stats(c: &mut Conn, stat: &str) -> Result<(i64, i64)> {
    let errs = c.info("errorstats").await?;
    let errors: i64 = errs
        .lines()
        .filter_map(|l| l.split("count=").nth(1))
        .filter_map(|n| n.trim().parse::<i64>().ok())
        .sum();
    let cmds = c.info("commandstats").await?;
    let calls = cmds
        .lines()
        .find(|l| l.starts_with(&format!("cmdstat_{stat}:")))
        .and_then(|l| l.split("calls=").nth(1))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok((errors, calls))
}

async fn suite(cfg: Cfg) -> Result<()> {
    let mut c = Conn::connect(cfg.port).await?;
    c.ok(&["CONFIG", "SET", "tally.max-backlog", "0"]).await?;
    let mut rows = Vec::new();
    for w in WORKLOADS {
        if let Some(only) = &cfg.only {
            if !only.iter().any(|o| o == w.id) {
                continue;
            }
        }
        for &depth in &[1usize, cfg.pipeline] {
            let (cmd, range) = setup(&mut c, &cfg, w.id).await?;
            trim_streams(&mut c).await?;
            let stats = match w.tool {
                Tool::RedisBenchmark => {
                    // A short probe (also the warm-up) sizes the measured run to ~BENCH_SECONDS.
                    let probe = run_redis_benchmark(&cfg, &cmd, range, depth, cfg.probe_requests)?;
                    trim_streams(&mut c).await?;
                    let n = ((probe.ops * cfg.seconds) as u64)
                        .clamp(cfg.min_requests, cfg.max_requests);
                    c.ok(&["CONFIG", "RESETSTAT"]).await?;
                    run_redis_benchmark(&cfg, &cmd, range, depth, n)?
                }
                Tool::Rust => {
                    c.ok(&["CONFIG", "RESETSTAT"]).await?;
                    run_rust(&cfg, w.id, depth, cfg.seconds).await?
                }
            };
            let (errors, calls) = check_stats(&mut c, w.stat).await?;
            let xlen: i64 = {
                let mut total = 0;
                for s in STREAMS {
                    if let Val::Int(n) = c.cmd(&["XLEN", s]).await? {
                        total += n;
                    }
                }
                total
            };
            eprintln!(
                "{:<40} depth {:>2}: {:>10.0} ops/s  p50 {:>7.3} ms  p99 {:>7.3} ms  ({} requests, {} server calls, {} errors, {} retries, {} events)",
                w.label, depth, stats.ops, stats.p50_ms, stats.p99_ms, stats.requests, calls, errors, stats.retries, xlen
            );
            rows.push(json!({
                "id": w.id, "label": w.label, "group": w.group,
                "tool": if w.tool == Tool::Rust { "tally-bench" } else { "redis-benchmark" },
                "pipeline": depth, "ops": stats.ops, "p50_ms": stats.p50_ms, "p99_ms": stats.p99_ms,
                "requests": stats.requests, "seconds": stats.seconds, "server_calls": calls,
                "errors": errors, "retries": stats.retries, "events": xlen,
                "command": cmd.join(" "),
            }));
            trim_streams(&mut c).await?;
        }
    }
    c.ok(&["FLUSHALL"]).await?;
    let memory = memory_test(&mut c, &cfg).await?;
    c.ok(&["FLUSHALL"]).await?;
    let result = json!({
        "config": {
            "clients": cfg.clients, "pipeline": cfg.pipeline, "keys": cfg.keys, "users": cfg.users,
            "seconds": cfg.seconds, "probe_requests": cfg.probe_requests, "mem_accounts": cfg.mem_accounts,
        },
        "rows": rows,
        "memory": memory,
    });
    std::fs::write(&cfg.out, serde_json::to_string_pretty(&result)?)?;
    eprintln!("wrote {}", cfg.out);
    Ok(())
}

async fn used_memory(c: &mut Conn) -> Result<i64> {
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.info_field("memory", "used_memory").await
}

async fn memory_usage(c: &mut Conn, key: &str) -> Result<i64> {
    match c.cmd(&["MEMORY", "USAGE", key, "SAMPLES", "0"]).await? {
        Val::Int(n) => Ok(n),
        _ => Ok(0),
    }
}

async fn memory_test(c: &mut Conn, cfg: &Cfg) -> Result<Value> {
    let n = cfg.mem_accounts;
    // Bare hashes first, as the reference.
    c.ok(&["FLUSHALL"]).await?;
    let m0 = used_memory(c).await?;
    c.bulk((0..n).map(|i| {
        vec![
            "HINCRBYFLOAT".into(),
            key("mh:", i),
            "gold".into(),
            "1.25".into(),
        ]
    }))
    .await?;
    let m1 = used_memory(c).await?;
    let bare_per_account = (m1 - m0) as f64 / n as f64;

    c.ok(&["FLUSHALL"]).await?;
    let a0 = used_memory(c).await?;
    c.bulk((0..n).map(|i| {
        vec![
            "ASSET.INCR".into(),
            key("ma:", i),
            "gold".into(),
            "1.25".into(),
        ]
    }))
    .await?;
    let a1 = used_memory(c).await?;
    let xlen = match c.cmd(&["XLEN", "tally:log"]).await? {
        Val::Int(x) => x,
        _ => 0,
    };
    let stream_before = memory_usage(c, "tally:log").await?;
    let seq_hash = memory_usage(c, "tally:seq").await?;
    let one_account = memory_usage(c, &key("ma:", 0)).await?;
    c.ok(&["XTRIM", "tally:log", "MAXLEN", "0"]).await?;
    let a2 = used_memory(c).await?;
    let stream_after = memory_usage(c, "tally:log").await?;
    let r = json!({
        "accounts": n,
        "events": xlen,
        "bare_hash_bytes_per_account": bare_per_account,
        "tally_bytes_per_account_after_trim": (a2 - a0) as f64 / n as f64,
        "tally_bytes_per_account_with_stream": (a1 - a0) as f64 / n as f64,
        "bytes_per_unshipped_event": (a1 - a2) as f64 / xlen.max(1) as f64,
        "stream_memory_usage_before_trim": stream_before,
        "stream_memory_usage_after_trim": stream_after,
        "seq_hash_memory_usage": seq_hash,
        "seq_hash_bytes_per_account": seq_hash as f64 / n as f64,
        "one_account_memory_usage": one_account,
        "used_memory": {"bare_before": m0, "bare_after": m1, "tally_before": a0, "tally_after": a1, "tally_after_trim": a2},
    });
    eprintln!("memory: {r}");
    Ok(r)
}

// ---------------------------------------------------------------- callgrind workload

/// A fixed workload for one profile phase: setup outside the measured part is done by
/// `profile-setup`; `profile WORKLOAD` sends BENCH_PROFILE_OPS operations, 16 per write. An
/// operation is one command, except `multi`: one MULTI/HINCRBYFLOAT/XADD/EXEC transaction.
async fn profile(cfg: Cfg, id: &str) -> Result<()> {
    let mut c = Conn::connect(cfg.port).await?;
    let shas = load_scripts(&mut c).await?;
    let keys = 1000u64;
    let mut rng = fastrand::Rng::with_seed(42);
    fastrand::seed(42); // the event ids of `xadd` and `multi`
    let n = cfg.profile_ops;
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
        "asset" => vec![
            "ASSET.INCR".into(),
            key("acct:", k),
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

async fn profile_setup(cfg: Cfg) -> Result<()> {
    let mut c = Conn::connect(cfg.port).await?;
    c.ok(&["CONFIG", "SET", "tally.max-backlog", "0"]).await?;
    load_scripts(&mut c).await?;
    let small = Cfg { keys: 1000, ..cfg };
    setup(&mut c, &small, "coupon").await?; // FLUSHALL + campaign
    c.ok(&[
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
    ])
    .await?;
    c.bulk((0..1000).map(|i| vec!["USAGE.LIMIT".into(), key("use:", i), LIMIT.into()]))
        .await?;
    c.bulk((0..1000).map(|i| {
        vec![
            "HSET".into(),
            key("lu:", i),
            "limit".into(),
            LIMIT.into(),
            "used".into(),
            "0".into(),
        ]
    }))
    .await?;
    // Touch every asset key once so the profiled phase measures updates, not creations.
    c.bulk((0..1000).map(|i| {
        vec![
            "ASSET.INCR".into(),
            key("acct:", i),
            "gold".into(),
            "1".into(),
        ]
    }))
    .await?;
    c.bulk((0..1000).map(|i| {
        vec![
            "HINCRBYFLOAT".into(),
            key("hf:", i),
            "gold".into(),
            "1".into(),
        ]
    }))
    .await?;
    c.bulk((0..1000).map(|i| {
        vec![
            "HINCRBYFLOAT".into(),
            key("la:", i),
            "gold".into(),
            "1".into(),
        ]
    }))
    .await?;
    c.bulk((0..1000).map(|i| {
        vec![
            "HINCRBYFLOAT".into(),
            key("mx:", i),
            "gold".into(),
            "1".into(),
        ]
    }))
    .await?;
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let cfg = Cfg::from_env()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    match args.get(1).map(String::as_str) {
        Some("suite") => local.block_on(&rt, suite(cfg)),
        Some("profile-setup") => local.block_on(&rt, profile_setup(cfg)),
        Some("profile") => {
            let id = args.get(2).ok_or_else(|| anyhow!("profile WORKLOAD"))?.clone();
            local.block_on(&rt, profile(cfg, &id))
        }
        _ => bail!("usage: tally-bench suite | profile-setup | profile WORKLOAD (configured by BENCH_* variables)"),
    }
}
