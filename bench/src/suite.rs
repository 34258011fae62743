//! `tally-bench suite`: every workload at depth 1 and the pipeline depth, then the memory test.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::{json, Value};

use crate::pairs;
use crate::resp::{Conn, Val};
use crate::workloads::{incr_each, load_scripts, setup, trim_streams, Tool, STREAMS, WORKLOADS};
use crate::{key, Cfg};

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
        .rfind(|l| !l.trim().is_empty())
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

pub fn event_json(key: &str, balance: Option<&str>) -> String {
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
    let shas = load_scripts(&mut c).await?;
    let mut lat = Vec::with_capacity(1 << 16);
    let mut retries = 0u64;
    let window = Window { start, end };
    while Instant::now() < end {
        match id {
            "multi" | "asset_rust" => {
                pipelined_batch(&mut c, id, keys, depth, window, &mut lat).await?
            }
            "watch" => retries += watch_once(&mut c, keys, depth, window, &mut lat).await?,
            id if pairs::is_pair(id) => {
                let batch: Vec<String> = (0..depth)
                    .map(|_| key(pairs::prefix(id), fastrand::u64(..keys)))
                    .collect();
                let t0 = Instant::now();
                pairs::batch(&mut c, id, &shas, &batch).await?;
                for _ in 0..depth {
                    window.record(&mut lat, t0);
                }
            }
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

pub async fn suite(cfg: Cfg) -> Result<()> {
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
    incr_each(c, "HINCRBYFLOAT", "mh:", n, "1.25").await?;
    let m1 = used_memory(c).await?;
    let bare_per_account = (m1 - m0) as f64 / n as f64;

    c.ok(&["FLUSHALL"]).await?;
    let a0 = used_memory(c).await?;
    incr_each(c, "ASSET.INCR", "ma:", n, "1.25").await?;
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
