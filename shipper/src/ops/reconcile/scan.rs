//! The Redis side: keys by pattern and type (SCAN), the entries the shipper has not
//! acknowledged yet, and the seq of every key (HSCAN of the sequence hashes), in pages.

use std::collections::{BTreeSet, HashMap};

use redis::aio::MultiplexedConnection;

pub(crate) async fn scan_keys(
    conn: &mut MultiplexedConnection,
    pattern: &str,
    kind: &str,
) -> anyhow::Result<Vec<String>> {
    let mut cursor: u64 = 0;
    let mut out = BTreeSet::new();
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .arg("TYPE")
            .arg(kind)
            .query_async(conn)
            .await?;
        out.extend(keys);
        if next == 0 {
            return Ok(out.into_iter().collect());
        }
        cursor = next;
    }
}

/// Entries of the log streams the shipper has not acknowledged yet (pending + not delivered).
pub(crate) async fn stream_in_flight(
    conn: &mut MultiplexedConnection,
    prefix: &str,
    group: &str,
) -> anyhow::Result<u64> {
    let mut total = 0u64;
    for stream in scan_keys(conn, &format!("{prefix}:log*"), "stream").await? {
        let groups: Vec<HashMap<String, redis::Value>> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&stream)
            .query_async(conn)
            .await?;
        let ours = groups.iter().find(|g| matches!(g.get("name"), Some(v) if redis::from_redis_value::<String>(v.clone()).ok().as_deref() == Some(group)));
        let len: u64 = redis::cmd("XLEN").arg(&stream).query_async(conn).await?;
        total += match ours {
            None => len,
            Some(g) => {
                let pending = g
                    .get("pending")
                    .and_then(|v| redis::from_redis_value::<u64>(v.clone()).ok())
                    .unwrap_or(0);
                // `lag` (entries not yet delivered to the group) is nil when Redis cannot tell.
                let lag = g
                    .get("lag")
                    .and_then(|v| redis::from_redis_value::<u64>(v.clone()).ok())
                    .unwrap_or(len);
                pending + lag
            }
        };
    }
    Ok(total)
}

/// Pages through `<prefix>:seq*` hashes: (data key, seq) in batches.
pub(super) struct SeqPager {
    hashes: Vec<String>,
    idx: usize,
    cursor: u64,
    done: bool,
    /// the sequence hash the last page came from
    page_hash: String,
}

impl SeqPager {
    pub(super) async fn new(
        conn: &mut MultiplexedConnection,
        prefix: &str,
    ) -> anyhow::Result<SeqPager> {
        let hashes = scan_keys(conn, &format!("{prefix}:seq*"), "hash").await?;
        Ok(SeqPager {
            done: hashes.is_empty(),
            hashes,
            idx: 0,
            cursor: 0,
            page_hash: String::new(),
        })
    }

    /// The sequence hash the last page came from: `<prefix>:seq`, or `<prefix>:seq:{tag}`.
    pub(super) fn page_hash(&self) -> &str {
        &self.page_hash
    }

    pub(super) async fn next(
        &mut self,
        conn: &mut MultiplexedConnection,
        batch: usize,
    ) -> anyhow::Result<Option<Vec<(String, i64)>>> {
        while !self.done {
            let hash = &self.hashes[self.idx];
            let (next, flat): (u64, Vec<(String, i64)>) = redis::cmd("HSCAN")
                .arg(hash)
                .arg(self.cursor)
                .arg("COUNT")
                .arg(batch)
                .query_async(conn)
                .await?;
            self.cursor = next;
            self.page_hash.clone_from(hash);
            if next == 0 {
                self.idx += 1;
                self.done = self.idx >= self.hashes.len();
            }
            if !flat.is_empty() {
                return Ok(Some(flat));
            }
        }
        Ok(None)
    }
}
