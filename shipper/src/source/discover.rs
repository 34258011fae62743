//! Where the log streams are: the one stream of a standalone server, or, in cluster mode,
//! the primaries (from `CLUSTER SLOTS` of any seed node) and per slot the stream name the
//! module computes, kept when it exists. No keyspace scan in either mode.

use std::time::Duration;

use redis::aio::MultiplexedConnection;

use crate::redis_io::{cluster_layout, connect, Primary, RResult};

/// Where the log streams are: per node that answered, its URL and the streams it holds (maybe
/// none), for every URL given; and whether every node answered.
/// Standalone: the one stream `<prefix>:log` of that server, known without looking at the
/// keyspace. Cluster mode: the primaries and their slots from `CLUSTER SLOTS` (any node of
/// the cluster will do as a seed, so primaries added or promoted later are found at the next
/// discovery), and per slot the stream name computed from the slot's tag, kept when it exists
/// (one pipelined EXISTS per primary). A node that does not answer is left out (its reader
/// keeps the streams it had); the others keep shipping.
pub(crate) async fn discover_all(
    urls: &[String],
    prefix: &str,
) -> (Vec<(String, Vec<String>)>, bool) {
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
    for Primary { url: node, slots } in primaries {
        let streams: Vec<String> = slots
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

/// The stream of `slot`: `<prefix>:log:{<tag of the slot>}`, as the module names it.
pub(crate) fn slot_stream(prefix: &str, slot: usize) -> String {
    format!("{prefix}:log:{{{}}}", tally_slot::tag(slot))
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
