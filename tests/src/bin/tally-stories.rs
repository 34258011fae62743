//! Plays the three stories against a running redis-server with tally loaded (or, with
//! `--cluster`, a Redis Cluster with tally on every node) and prints what a person wants to
//! see. Used by scripts/demo.sh. Exits 1 if any expectation fails.

use std::collections::BTreeSet;

use clap::Parser;
use tally_tests::stories::{self, cents, from_cents, Conn, Target};

#[derive(Parser)]
#[command(about = "Play tally's three stories against a running Redis with the module")]
struct Args {
    /// The server; with --cluster, one or more seed nodes, comma separated.
    #[arg(
        long,
        env = "TALLY_REDIS_URL",
        default_value = "redis://127.0.0.1:6379/"
    )]
    redis_url: String,
    /// The URL(s) are nodes of a Redis Cluster: every command goes to the node serving its
    /// key (a cluster client that reads CLUSTER SLOTS and follows MOVED/ASK).
    #[arg(long)]
    cluster: bool,
    /// Namespace for this run's keys, so runs can be repeated against the same server.
    #[arg(long, default_value = "demo")]
    run: String,
}

fn check(ok: bool, what: &str, failures: &mut Vec<String>) -> &'static str {
    if !ok {
        failures.push(what.to_string());
    }
    if ok {
        "yes"
    } else {
        "NO"
    }
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> Result<()> {
    let args = Args::parse();
    tally_tests::raise_fd_limit();
    let target = if args.cluster {
        Target::cluster(&args.redis_url)?
    } else {
        Target::server(&args.redis_url)?
    };
    let mut conn = target.conn().await?;
    let mut failures = Vec::new();
    let run = &args.run;

    let accounts = currency(&target, &mut conn, run, &mut failures).await?;
    let campaign = coupons(&target, &mut conn, run, &mut failures).await?;
    let key = usage(&target, &mut conn, run, &mut failures).await?;

    if args.cluster {
        let mut keys = vec![campaign, key];
        keys.extend(accounts);
        let (streams, len) = slot_streams(&mut conn, &keys).await?;
        println!("\nthe {streams} per-slot streams tally:log:{{tag}} this run wrote to now hold {len} unshipped entries (the shipper drains and trims them)");
    } else {
        let len: i64 = redis::cmd("XLEN")
            .arg("tally:log")
            .query_async(&mut conn)
            .await?;
        println!("\nstream tally:log now holds {len} unshipped entries (the shipper drains and trims it)");
    }
    if failures.is_empty() {
        Ok(())
    } else {
        eprintln!("FAILED: {}", failures.join(", "));
        std::process::exit(1);
    }
}

/// Story 1; returns the accounts it granted to.
async fn currency(
    target: &Target,
    conn: &mut Conn,
    run: &str,
    failures: &mut Vec<String>,
) -> Result<Vec<String>> {
    println!("== Story 1: in-app currency: 500 concurrent clients grant BDP to 500 users ==");
    let t = std::time::Instant::now();
    let prefix = format!("{run}:");
    let out = stories::currency_on(target, &prefix, 500, 500, 20).await?;
    let elapsed = t.elapsed().as_millis();
    let mut matching = 0;
    let mut total_cents = 0;
    for (key, want) in &out.expected {
        let got: Option<String> = redis::cmd("HGET")
            .arg(key)
            .arg("BDP")
            .query_async(conn)
            .await?;
        total_cents += want;
        if got.as_deref().map(cents) == Some(*want) {
            matching += 1;
        }
    }
    println!("  {} grants in {elapsed} ms; accounts whose Redis balance equals the sum of its grants: {matching}/{}", out.grants, out.expected.len());
    println!(
        "  total granted: {} BDP (amounts like 10.43, 0.1 + 0.2: exact decimals)",
        from_cents(total_cents)
    );
    for key in out.expected.keys().take(3) {
        let v: Option<String> = redis::cmd("HGET")
            .arg(key)
            .arg("BDP")
            .query_async(conn)
            .await?;
        println!("  HGET {key} BDP -> {}", v.unwrap_or_default());
    }
    println!(
        "  every balance exact: {}",
        check(matching == out.expected.len(), "story 1 balances", failures)
    );
    Ok(out.expected.into_keys().collect())
}

/// Story 2; returns the campaign's key.
async fn coupons(
    target: &Target,
    conn: &mut Conn,
    run: &str,
    failures: &mut Vec<String>,
) -> Result<String> {
    println!("\n== Story 2: first-come coupons: 1,000 users race for 100 coupons ==");
    let campaign = format!("{run}:coupon:spring");
    let out = stories::coupons_on(target, &campaign, 1000, 100).await?;
    let mut issues: Vec<i64> = out.winners.iter().map(|(_, i)| *i).collect();
    issues.sort();
    println!(
        "  claims won: {}, SOLDOUT: {}, other errors: {}",
        out.winners.len(),
        out.soldout,
        out.other_errors.len()
    );
    let info: Vec<redis::Value> = redis::cmd("COUPON.INFO")
        .arg(&campaign)
        .query_async(conn)
        .await?;
    let info: Vec<String> = info
        .iter()
        .map(|v| match v {
            redis::Value::Int(n) => n.to_string(),
            other => redis::from_redis_value::<String>(other.clone()).unwrap_or_default(),
        })
        .collect();
    println!("  COUPON.INFO {campaign} -> {}", info.join(" "));
    let exact = out.winners.len() == 100
        && issues == (1..=100).collect::<Vec<_>>()
        && out.other_errors.is_empty();
    println!(
        "  exactly 100 winners with issue numbers 1..100 once each: {}",
        check(exact, "story 2 claims", failures)
    );
    Ok(campaign)
}

/// Story 3; returns the usage counter's key.
async fn usage(
    target: &Target,
    conn: &mut Conn,
    run: &str,
    failures: &mut Vec<String>,
) -> Result<String> {
    println!("\n== Story 3: usage billing: 10 concurrent consumers against a limit of 10 ==");
    let key = format!("{run}:usage:api-calls");
    let out = stories::usage_on(target, &key, 10, 10, 5).await?;
    let got: Vec<String> = redis::cmd("USAGE.GET").arg(&key).query_async(conn).await?;
    println!(
        "  consumed: {}, refused with LIMIT: {}, other errors: {}",
        out.ok,
        out.limited,
        out.other_errors.len()
    );
    println!("  USAGE.GET {key} -> {}", got.join(" "));
    println!(
        "  exactly 10 consumed: {}",
        check(
            out.ok == 10 && out.other_errors.is_empty(),
            "story 3 usage",
            failures
        )
    );
    Ok(key)
}

/// Cluster mode: the module logs a key's events to `tally:log:{<tag of its slot>}` on the
/// node serving that slot. Returns how many such streams `keys` use and their total length.
async fn slot_streams(conn: &mut Conn, keys: &[String]) -> redis::RedisResult<(usize, i64)> {
    let streams: BTreeSet<String> = keys
        .iter()
        .map(|k| {
            format!(
                "tally:log:{{{}}}",
                tally_slot::tag(tally_slot::key_slot(k.as_bytes()))
            )
        })
        .collect();
    let mut total = 0;
    for s in &streams {
        let len: i64 = redis::cmd("XLEN").arg(s).query_async(conn).await?;
        total += len;
    }
    Ok((streams.len(), total))
}
