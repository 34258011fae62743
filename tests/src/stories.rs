//! The three stories as load drivers, shared by the tests (which assert) and the demo
//! binary `tally-stories` (which prints). Every client has its own connection: to one
//! server, or a cluster connection that sends each command to the node serving its key.

use std::collections::BTreeMap;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// Where the stories run: one server, or a Redis Cluster given seed nodes.
#[derive(Clone)]
pub enum Target {
    Server(redis::Client),
    Cluster(Box<redis::cluster::ClusterClient>),
}

impl Target {
    pub fn server(url: &str) -> redis::RedisResult<Target> {
        Ok(Target::Server(redis::Client::open(url)?))
    }

    /// A cluster from its seed nodes (comma separated URLs); the client reads CLUSTER SLOTS
    /// and follows MOVED/ASK like any cluster client.
    pub fn cluster(seeds: &str) -> redis::RedisResult<Target> {
        let seeds: Vec<&str> = seeds
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        let client = redis::cluster::ClusterClientBuilder::new(seeds)
            .connection_timeout(std::time::Duration::from_secs(10))
            .response_timeout(crate::RESPONSE_TIMEOUT)
            .build()?;
        Ok(Target::Cluster(Box::new(client)))
    }

    /// A new connection of its own (a cluster connection holds one per node).
    pub async fn conn(&self) -> redis::RedisResult<Conn> {
        Ok(match self {
            Target::Server(c) => Conn::Server(crate::async_conn(c).await?),
            Target::Cluster(c) => Conn::Cluster(c.get_async_connection().await?),
        })
    }
}

/// A connection of a [`Target`].
#[derive(Clone)]
pub enum Conn {
    Server(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Server(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Server(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Server(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Exact amounts in cents for the expectations (the grants use at most 2 decimals).
pub fn cents(s: &str) -> i64 {
    let (i, f) = s.split_once('.').unwrap_or((s, "0"));
    let f = format!("{f:0<2}");
    let int: i64 = i.parse().unwrap_or(0);
    let frac: i64 = f[..2].parse().unwrap_or(0);
    if int < 0 || s.starts_with('-') {
        int * 100 - frac
    } else {
        int * 100 + frac
    }
}

pub fn from_cents(c: i64) -> String {
    let sign = if c < 0 { "-" } else { "" };
    let c = c.abs();
    let (i, f) = (c / 100, c % 100);
    match f {
        0 => format!("{sign}{i}"),
        f if f % 10 == 0 => format!("{sign}{i}.{}", f / 10),
        f => format!("{sign}{i}.{f:02}"),
    }
}

pub const AMOUNTS: [&str; 5] = ["10.43", "0.1", "0.2", "5200", "1.01"];

pub struct CurrencyOutcome {
    /// Expected balance (cents) per account key.
    pub expected: BTreeMap<String, i64>,
    pub grants: usize,
}

/// `clients` concurrent clients each grant `grants_per_client` times to accounts
/// `<prefix>user.asset.<n>` (n < users), overlapping so every account is contended.
pub async fn currency(
    url: &str,
    prefix: &str,
    clients: usize,
    users: usize,
    grants_per_client: usize,
) -> redis::RedisResult<CurrencyOutcome> {
    currency_on(
        &Target::server(url)?,
        prefix,
        clients,
        users,
        grants_per_client,
    )
    .await
}

/// [`currency`] against any [`Target`].
pub async fn currency_on(
    target: &Target,
    prefix: &str,
    clients: usize,
    users: usize,
    grants_per_client: usize,
) -> redis::RedisResult<CurrencyOutcome> {
    let mut tasks = Vec::with_capacity(clients);
    for c in 0..clients {
        let mut conn = target.conn().await?;
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            let mut granted = Vec::with_capacity(grants_per_client);
            for g in 0..grants_per_client {
                let user = (c * 7 + g * 31) % users;
                let amount = AMOUNTS[(c + g) % AMOUNTS.len()];
                let key = format!("{prefix}user.asset.{user}");
                let _: Vec<String> = redis::cmd("ASSET.INCR")
                    .arg(&key)
                    .arg("BDP")
                    .arg(amount)
                    .arg("META")
                    .arg(format!("grant by client {c}"))
                    .query_async(&mut conn)
                    .await?;
                granted.push((key, amount));
            }
            Ok::<_, redis::RedisError>(granted)
        }));
    }
    let mut expected = BTreeMap::new();
    let mut grants = 0;
    for t in tasks {
        let granted = t
            .await
            .map_err(|e| redis::RedisError::from(std::io::Error::other(e)))??;
        for (key, amount) in granted {
            *expected.entry(key).or_insert(0) += cents(amount);
            grants += 1;
        }
    }
    Ok(CurrencyOutcome { expected, grants })
}

pub struct CouponOutcome {
    pub winners: Vec<(String, i64)>,
    pub soldout: usize,
    pub other_errors: Vec<String>,
}

/// `clients` distinct users race for a campaign of `stock` (created here).
pub async fn coupons(
    url: &str,
    campaign: &str,
    clients: usize,
    stock: i64,
) -> redis::RedisResult<CouponOutcome> {
    coupons_on(&Target::server(url)?, campaign, clients, stock).await
}

/// [`coupons`] against any [`Target`].
pub async fn coupons_on(
    target: &Target,
    campaign: &str,
    clients: usize,
    stock: i64,
) -> redis::RedisResult<CouponOutcome> {
    let mut setup = target.conn().await?;
    let _: () = redis::cmd("COUPON.CREATE")
        .arg(campaign)
        .arg(stock)
        .query_async(&mut setup)
        .await?;
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        conns.push(target.conn().await?);
    }
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(clients));
    let mut tasks = Vec::with_capacity(clients);
    for (u, mut conn) in conns.into_iter().enumerate() {
        let (campaign, start) = (campaign.to_string(), start.clone());
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let user = format!("user{u}");
            let r: redis::RedisResult<(i64, i64)> = redis::cmd("COUPON.CLAIM")
                .arg(&campaign)
                .arg(&user)
                .query_async(&mut conn)
                .await;
            (user, r)
        }));
    }
    let mut out = CouponOutcome {
        winners: Vec::new(),
        soldout: 0,
        other_errors: Vec::new(),
    };
    for t in tasks {
        match t.await {
            Ok((user, Ok((issue, _)))) => out.winners.push((user, issue)),
            Ok((_, Err(e))) if e.code() == Some("SOLDOUT") => out.soldout += 1,
            Ok((_, Err(e))) => out.other_errors.push(e.to_string()),
            Err(e) => out.other_errors.push(e.to_string()),
        }
    }
    Ok(out)
}

pub struct UsageOutcome {
    pub ok: usize,
    pub limited: usize,
    pub other_errors: Vec<String>,
}

/// `consumers` concurrent clients each try `attempts` times to consume 1 from `limit`.
pub async fn usage(
    url: &str,
    key: &str,
    consumers: usize,
    limit: i64,
    attempts: usize,
) -> redis::RedisResult<UsageOutcome> {
    usage_on(&Target::server(url)?, key, consumers, limit, attempts).await
}

/// [`usage`] against any [`Target`].
pub async fn usage_on(
    target: &Target,
    key: &str,
    consumers: usize,
    limit: i64,
    attempts: usize,
) -> redis::RedisResult<UsageOutcome> {
    let mut setup = target.conn().await?;
    let _: () = redis::cmd("USAGE.LIMIT")
        .arg(key)
        .arg(limit)
        .query_async(&mut setup)
        .await?;
    let mut tasks = Vec::with_capacity(consumers);
    for _ in 0..consumers {
        let mut conn = target.conn().await?;
        let key = key.to_string();
        tasks.push(tokio::spawn(async move {
            let mut results = Vec::with_capacity(attempts);
            for _ in 0..attempts {
                let r: redis::RedisResult<Vec<String>> = redis::cmd("USAGE.CONSUME")
                    .arg(&key)
                    .arg(1)
                    .query_async(&mut conn)
                    .await;
                results.push(r);
            }
            results
        }));
    }
    let mut out = UsageOutcome {
        ok: 0,
        limited: 0,
        other_errors: Vec::new(),
    };
    for t in tasks {
        for r in t
            .await
            .map_err(|e| redis::RedisError::from(std::io::Error::other(e)))?
        {
            match r {
                Ok(_) => out.ok += 1,
                Err(e) if e.code() == Some("LIMIT") => out.limited += 1,
                Err(e) => out.other_errors.push(e.to_string()),
            }
        }
    }
    Ok(out)
}
