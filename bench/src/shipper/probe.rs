//! What the stages read from Redis (the stream, memory, the shipper's group) and Postgres
//! (rows stored), on one connection to each, and the reset between runs.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use redis::aio::MultiplexedConnection;
use redis::Value;
use sqlx::PgPool;

use super::results::Status;
use super::servers::{Proc, Servers};

pub const STREAM: &str = "tally:log";

pub struct Probe {
    pub redis: MultiplexedConnection,
    pub pg: PgPool,
    /// Every table the migrations created, for TRUNCATE.
    tables: String,
}

/// The shipper's consumer group on the stream, from XINFO GROUPS.
#[derive(Default, Debug)]
pub struct Group {
    pub pending: Option<i64>,
    pub lag: Option<i64>,
    pub entries_read: Option<i64>,
}

fn int(v: Option<&Value>) -> Option<i64> {
    v.and_then(|v| redis::from_redis_value_ref(v).ok())
}

impl Group {
    fn from_fields(g: &HashMap<String, Value>) -> Group {
        Group {
            pending: int(g.get("pending")),
            lag: int(g.get("lag")),
            entries_read: int(g.get("entries-read")),
        }
    }

    /// Nothing pending, nothing unread.
    pub fn drained(&self) -> bool {
        self.pending == Some(0) && self.lag == Some(0)
    }
}

/// Rows that reached Postgres while waiting for a target count.
pub struct Waited {
    pub status: Status,
    pub rows: u64,
    /// Seconds from the start until the first row was seen.
    pub first_row_s: Option<f64>,
}

/// XINFO STREAM's fields (empty without the stream).
pub async fn stream_info(c: &mut MultiplexedConnection) -> HashMap<String, Value> {
    let info = redis::cmd("XINFO")
        .arg(&["STREAM", STREAM])
        .query_async(c)
        .await;
    info.unwrap_or_default()
}

/// Entries ever appended to the stream (0 without it); trimming does not lower it.
pub async fn entries_added(c: &mut MultiplexedConnection) -> u64 {
    int(stream_info(c).await.get("entries-added")).map_or(0, |n| n.max(0) as u64)
}

/// The group called `name`, or the first group when `name` is None.
pub async fn group(c: &mut MultiplexedConnection, name: Option<&str>) -> Option<Group> {
    let groups = redis::cmd("XINFO")
        .arg(&["GROUPS", STREAM])
        .query_async(c)
        .await;
    let groups: Vec<HashMap<String, Value>> = groups.unwrap_or_default();
    let named = |g: &&HashMap<String, Value>| {
        let own = g
            .get("name")
            .and_then(|v| redis::from_redis_value_ref::<String>(v).ok());
        name.is_none_or(|n| own.as_deref() == Some(n))
    };
    groups.iter().find(named).map(Group::from_fields)
}

/// The shipper's state when it is not done: exited, or out of time.
pub fn stopped(shipper: &mut Proc, t0: Instant, limit: Duration) -> Option<Status> {
    if !shipper.alive() {
        Some(Status::ShipperExited)
    } else if t0.elapsed() >= limit {
        Some(Status::Timeout)
    } else {
        None
    }
}

impl Probe {
    pub async fn connect(s: &Servers) -> Result<Probe> {
        let client = redis::Client::open(s.redis.url())?;
        // FLUSHALL of a large keyspace takes seconds: no 500 ms response timeout
        let config = redis::AsyncConnectionConfig::new()
            .set_response_timeout(Some(std::time::Duration::from_secs(120)));
        let mut redis = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        redis::cmd("CONFIG")
            .arg(&["SET", "tally.max-backlog", "0"])
            .exec_async(&mut redis)
            .await?;
        let pg = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&s.database_url())
            .await?;
        let tables = sqlx::query_scalar(
            "SELECT string_agg(quote_ident(tablename), ', ') FROM pg_tables \
             WHERE schemaname = 'public' AND tablename NOT LIKE '\\_sqlx%'",
        )
        .fetch_one(&pg)
        .await?;
        Ok(Probe { redis, pg, tables })
    }

    /// FLUSHALL and every table truncated, so each run starts empty.
    pub async fn reset(&mut self) -> Result<()> {
        redis::cmd("FLUSHALL").exec_async(&mut self.redis).await?;
        let _ = redis::cmd("MEMORY")
            .arg("PURGE")
            .exec_async(&mut self.redis)
            .await;
        sqlx::raw_sql(&format!("TRUNCATE {}", self.tables))
            .execute(&self.pg)
            .await?;
        let _ = sqlx::raw_sql("VACUUM ANALYZE").execute(&self.pg).await;
        Ok(())
    }

    pub async fn used_memory(&mut self) -> Result<u64> {
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut self.redis)
            .await?;
        crate::resp::info_value(&info, "used_memory").context("INFO memory has no used_memory")
    }

    pub async fn xlen(&mut self) -> Result<u64> {
        Ok(redis::cmd("XLEN")
            .arg(STREAM)
            .query_async(&mut self.redis)
            .await?)
    }

    /// MEMORY USAGE of the stream (0 without it).
    pub async fn stream_memory(&mut self) -> Result<u64> {
        let mut usage = redis::cmd("MEMORY");
        usage.arg(&["USAGE", STREAM, "SAMPLES", "0"]);
        let m: Option<u64> = usage.query_async(&mut self.redis).await?;
        Ok(m.unwrap_or(0))
    }

    /// XINFO STREAM's fields (empty without the stream).
    pub async fn stream_info(&mut self) -> HashMap<String, Value> {
        stream_info(&mut self.redis).await
    }

    pub async fn entries_added(&mut self) -> u64 {
        entries_added(&mut self.redis).await
    }

    pub async fn group(&mut self, name: Option<&str>) -> Option<Group> {
        group(&mut self.redis, name).await
    }

    pub async fn events(&self) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&self.pg)
            .await?;
        Ok(n.max(0) as u64)
    }

    /// avg(length(raw)) of the events stored, `None` without events.
    pub async fn mean_raw_len(&self) -> Result<Option<u32>> {
        let n: Option<f64> =
            sqlx::query_scalar("SELECT round(avg(length(raw)))::float8 FROM events")
                .fetch_one(&self.pg)
                .await?;
        Ok(n.map(|n| n as u32).filter(|&n| n > 0))
    }

    /// Polls `count(*) FROM events` every `every` until it reaches `target`, the shipper
    /// exits or `limit` has passed since `t0`.
    pub async fn wait_rows(
        &self,
        shipper: &mut Proc,
        target: u64,
        t0: Instant,
        limit: Duration,
        every: Duration,
    ) -> Result<Waited> {
        let mut first_row_s = None;
        loop {
            let rows = self.events().await?;
            if first_row_s.is_none() && rows > 0 {
                first_row_s = Some(t0.elapsed().as_secs_f64());
            }
            let done = (rows >= target).then_some(Status::Ok);
            let status = done.or_else(|| stopped(shipper, t0, limit));
            if let Some(status) = status {
                return Ok(Waited {
                    status,
                    rows,
                    first_row_s,
                });
            }
            tokio::time::sleep(every).await;
        }
    }
}
