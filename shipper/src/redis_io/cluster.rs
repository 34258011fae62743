//! Where keys live in a cluster: the primaries and their slot ranges (`CLUSTER SLOTS`), node
//! URLs built from a seed (its credentials and options kept), and MOVED / ASK redirections.

use std::time::Duration;

use redis::Value;

use super::conn::{connect, RResult};
use super::reply::{as_array, as_int, as_str};
use crate::obs::metrics;

/// Slot ranges, each `(first, last)` inclusive.
pub(crate) type SlotRanges = Vec<(usize, usize)>;

/// A primary of a cluster: its URL (the seed's credentials and options) and the slots it
/// serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Primary {
    pub(crate) url: String,
    pub(crate) slots: SlotRanges,
}

/// A node's address as CLUSTER SLOTS gives it: (host, port).
type Addr = (String, u16);

/// The primaries of the cluster `seed` belongs to; None when `seed` is a standalone server.
pub(crate) async fn cluster_layout(seed: &str) -> RResult<Option<Vec<Primary>>> {
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
            .filter_map(|((host, port), slots)| {
                node_url(seed, &host, port).map(|url| Primary { url, slots })
            })
            .collect(),
    ))
}

/// `CLUSTER SLOTS` -> per primary (host, port), its slot ranges.
fn primaries(v: &Value) -> Vec<(Addr, SlotRanges)> {
    let mut out: Vec<(Addr, SlotRanges)> = Vec::new();
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

/// `INFO cluster` says `cluster_enabled:1` on a cluster node.
pub(crate) fn cluster_enabled(info: &str) -> bool {
    info.lines().any(|l| l.trim() == "cluster_enabled:1")
}

/// The seed URL with another host and port (same scheme, credentials and options). An IPv6
/// host (as CLUSTER SLOTS and redirections give it, without brackets) is bracketed.
pub(crate) fn node_url(seed: &str, host: &str, port: u16) -> Option<String> {
    let mut u = redis::parse_redis_url(seed)?;
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    u.set_host(Some(&host)).ok()?;
    u.set_port(Some(port)).ok()?;
    Some(u.to_string())
}

/// Where a MOVED or ASK reply sends the command: the node's URL (credentials and options of
/// `from`) and whether it is an ASK (one command, after ASKING). None for any other error.
pub(crate) fn redirect_url(from: &str, e: &redis::RedisError) -> Option<(String, bool)> {
    let ask = match e.code() {
        Some("ASK") => true,
        Some("MOVED") => false,
        _ => return None,
    };
    let (addr, _slot) = e.redirect_node()?;
    let (host, port) = addr.rsplit_once(':')?;
    let url = node_url(from, host, port.parse().ok()?)?;
    metrics::REDIRECTS
        .with_label_values(&[if ask { "ask" } else { "moved" }])
        .inc();
    Some((url, ask))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis_io::bulk;

    fn server_error(resp: &str) -> redis::RedisError {
        match redis::parse_redis_value(resp.as_bytes()).and_then(Value::extract_error) {
            Err(e) => e,
            Ok(v) => panic!("not an error: {v:?}"),
        }
    }

    #[test]
    fn redirections_keep_the_seed_credentials() {
        let seed = "redis://u:p@127.0.0.1:7000/0";
        let ask = server_error("-ASK 3999 127.0.0.1:7002\r\n");
        assert_eq!(
            redirect_url(seed, &ask),
            Some(("redis://u:p@127.0.0.1:7002/0".to_string(), true))
        );
        let moved = server_error("-MOVED 3999 ::1:7001\r\n");
        assert_eq!(
            redirect_url(seed, &moved),
            Some(("redis://u:p@[::1]:7001/0".to_string(), false))
        );
        assert_eq!(
            redirect_url(seed, &server_error("-NOGROUP no such group\r\n")),
            None
        );
    }

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
    fn standalone_needs_no_scan() {
        assert!(!cluster_enabled("# Cluster\r\ncluster_enabled:0\r\n"));
        assert!(cluster_enabled("# Cluster\r\ncluster_enabled:1\r\n"));
        assert!(!cluster_enabled(""));
    }
}
