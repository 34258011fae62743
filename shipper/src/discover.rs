//! Where the log streams are: the one stream of a standalone server, or, in cluster mode,
//! the primaries (from `CLUSTER SLOTS` of any seed node) and per slot the stream name the
//! module computes, kept when it exists. No keyspace scan in either mode.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::Value;

use crate::redis_io::{as_array, as_int, as_str, connect, node_url};

type RResult<T> = Result<T, redis::RedisError>;

/// Where the log streams are: per node that answered, its URL and the streams it holds (maybe
/// none), for every URL given; and whether every node answered.
/// Standalone: the one stream `<prefix>:log` of that server, known without looking at the
/// keyspace. Cluster mode: the primaries and their slots from `CLUSTER SLOTS` (any node of
/// the cluster will do as a seed, so primaries added or promoted later are found at the next
/// discovery), and per slot the stream name computed from the slot's tag, kept when it exists
/// (one pipelined EXISTS per primary). A node that does not answer is left out (its reader
/// keeps the streams it had); the others keep shipping.
pub async fn discover_all(urls: &[String], prefix: &str) -> (Vec<(String, Vec<String>)>, bool) {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    let mut complete = true;
    for url in urls {
        match discover(url, prefix, &mut complete).await {
            Ok(nodes) => {
                for (node, streams) in nodes {
                    if !out.iter().any(|(n, _)| *n == node) {
                        out.push((node, streams));
                    }
                }
            }
            Err(e) => {
                complete = false;
                tracing::warn!(url = %url, error = %e, "stream discovery failed; retrying at the next discovery");
            }
        }
    }
    (out, complete)
}

async fn discover(
    url: &str,
    prefix: &str,
    complete: &mut bool,
) -> RResult<Vec<(String, Vec<String>)>> {
    let Some(primaries) = cluster_layout(url).await? else {
        return Ok(vec![(url.to_string(), vec![format!("{prefix}:log")])]);
    };
    let mut out = Vec::new();
    for (node, ranges) in primaries {
        let streams: Vec<String> = ranges
            .iter()
            .flat_map(|&(lo, hi)| lo..=hi)
            .map(|slot| slot_stream(prefix, slot))
            .collect();
        let existing = match connect(&node, Duration::from_secs(10)).await {
            Ok(mut node) => existing_streams(&mut node, &streams).await,
            Err(e) => Err(e),
        };
        match existing {
            Ok(names) => out.push((node, names)),
            Err(e) => {
                *complete = false;
                tracing::warn!(node = %node, error = %e, "primary did not answer discovery; retrying at the next discovery");
            }
        }
    }
    Ok(out)
}

/// The primaries of the cluster `seed` belongs to, each with its URL (the seed's credentials
/// and options) and slot ranges; None when `seed` is a standalone server.
pub async fn cluster_layout(seed: &str) -> RResult<Option<Vec<(String, Vec<(usize, usize)>)>>> {
    let mut conn = connect(seed, Duration::from_secs(10)).await?;
    let info: String = redis::cmd("INFO")
        .arg("cluster")
        .query_async(&mut conn)
        .await?;
    if !cluster_enabled(&info) {
        return Ok(None);
    }
    let slots: Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut conn)
        .await?;
    Ok(Some(
        primaries(&slots)
            .into_iter()
            .filter_map(|((host, port), ranges)| node_url(seed, &host, port).map(|u| (u, ranges)))
            .collect(),
    ))
}

/// The stream of `slot`: `<prefix>:log:{<tag of the slot>}`, as the module names it.
pub fn slot_stream(prefix: &str, slot: usize) -> String {
    format!("{prefix}:log:{{{}}}", tally_slot::tag(slot))
}

/// `CLUSTER SLOTS` -> per primary (host, port), its slot ranges.
fn primaries(v: &Value) -> Vec<((String, u16), Vec<(usize, usize)>)> {
    let mut out: Vec<((String, u16), Vec<(usize, usize)>)> = Vec::new();
    for range in as_array(v) {
        let r = as_array(range);
        let (Some(lo), Some(hi), Some(node)) = (
            r.first().and_then(as_int),
            r.get(1).and_then(as_int),
            r.get(2),
        ) else {
            continue;
        };
        let n = as_array(node);
        let (Some(host), Some(port)) = (n.first().and_then(as_str), n.get(1).and_then(as_int))
        else {
            continue;
        };
        let (Ok(lo), Ok(hi), Ok(port)) = (
            usize::try_from(lo),
            usize::try_from(hi),
            u16::try_from(port),
        ) else {
            continue;
        };
        let addr = (host, port);
        match out.iter_mut().find(|(a, _)| *a == addr) {
            Some((_, ranges)) => ranges.push((lo, hi.min(tally_slot::SLOTS - 1))),
            None => out.push((addr, vec![(lo, hi.min(tally_slot::SLOTS - 1))])),
        }
    }
    out
}

async fn existing_streams(
    conn: &mut MultiplexedConnection,
    names: &[String],
) -> RResult<Vec<String>> {
    let mut out = Vec::new();
    for chunk in names.chunks(1000) {
        let mut pipe = redis::pipe();
        for n in chunk {
            pipe.cmd("EXISTS").arg(n);
        }
        let exists: Vec<i64> = pipe.query_async(conn).await?;
        out.extend(
            chunk
                .iter()
                .zip(exists)
                .filter(|(_, e)| *e > 0)
                .map(|(n, _)| n.clone()),
        );
    }
    Ok(out)
}

pub fn cluster_enabled(info: &str) -> bool {
    info.lines().any(|l| l.trim() == "cluster_enabled:1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis_io::bulk;

    #[test]
    fn cluster_slots_give_each_primary_its_ranges() {
        let node = |port: i64| Value::Array(vec![bulk("10.0.0.1"), Value::Int(port), bulk("id")]);
        let range = |lo: i64, hi: i64, port: i64| {
            Value::Array(vec![
                Value::Int(lo),
                Value::Int(hi),
                node(port),
                node(port + 1000),
            ])
        };
        let v = Value::Array(vec![
            range(0, 5, 7000),
            range(10, 11, 7001),
            range(6, 9, 7000),
        ]);
        assert_eq!(
            primaries(&v),
            vec![
                (("10.0.0.1".to_string(), 7000), vec![(0, 5), (6, 9)]),
                (("10.0.0.1".to_string(), 7001), vec![(10, 11)])
            ]
        );
        assert!(primaries(&Value::Array(vec![bulk("junk")])).is_empty());
    }

    #[test]
    fn node_urls_keep_credentials_and_options() {
        assert_eq!(
            node_url("redis://u:p@seed:6379/0", "10.0.0.2", 7001).as_deref(),
            Some("redis://u:p@10.0.0.2:7001/0")
        );
        assert_eq!(
            node_url("rediss://seed:6380", "h", 1).as_deref(),
            Some("rediss://h:1")
        );
        assert_eq!(node_url("not a url", "h", 1), None);
    }

    #[test]
    fn slot_streams_are_named_as_the_module_names_them() {
        for slot in [0, 1, 8191, 16383] {
            let name = slot_stream("tally", slot);
            assert!(
                name.starts_with("tally:log:{") && name.ends_with('}'),
                "{name}"
            );
            assert_eq!(tally_slot::key_slot(name.as_bytes()), slot);
        }
    }

    #[test]
    fn standalone_needs_no_scan() {
        assert!(!cluster_enabled("# Cluster\r\ncluster_enabled:0\r\n"));
        assert!(cluster_enabled("# Cluster\r\ncluster_enabled:1\r\n"));
        assert!(!cluster_enabled(""));
    }
}
