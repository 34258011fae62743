//! The Redis side of an operation (reconcile, restore): one standalone server, or every
//! primary of a cluster with the slots it serves; for each key, the node that holds it and
//! the sequence hash its seq lives in.

use anyhow::Context as _;
use redis::aio::MultiplexedConnection;

use crate::redis_io::{cluster_layout, Primary};

pub(crate) struct Nodes {
    pub(crate) conns: Vec<MultiplexedConnection>,
    /// Cluster mode: which node serves which slots. Empty when standalone.
    ranges: Vec<SlotOwner>,
}

/// Slots `first..=last` are served by `conns[node]`.
struct SlotOwner {
    first: usize,
    last: usize,
    node: usize,
}

impl Nodes {
    /// Connects to `seed`, or, when it is a cluster node, to every primary of its cluster.
    pub(crate) async fn connect(seed: &str) -> anyhow::Result<Nodes> {
        let layout = cluster_layout(seed)
            .await
            .with_context(|| format!("reading the layout of {seed}"))?;
        let Some(primaries) = layout else {
            return Ok(Nodes {
                conns: vec![open(seed).await?],
                ranges: Vec::new(),
            });
        };
        let mut nodes = Nodes {
            conns: Vec::new(),
            ranges: Vec::new(),
        };
        for Primary { url, slots } in primaries {
            let node = nodes.conns.len();
            nodes
                .ranges
                .extend(
                    slots
                        .into_iter()
                        .map(|(first, last)| SlotOwner { first, last, node }),
                );
            nodes.conns.push(open(&url).await?);
        }
        anyhow::ensure!(
            !nodes.conns.is_empty(),
            "the cluster of {seed} has no primary serving slots"
        );
        Ok(nodes)
    }

    pub(crate) fn is_cluster(&self) -> bool {
        !self.ranges.is_empty()
    }

    /// Index of the node that serves `key` (0 when standalone or when no node serves it).
    pub(crate) fn node_of(&self, key: &str) -> usize {
        let slot = tally_slot::key_slot(key.as_bytes());
        self.ranges
            .iter()
            .find(|r| (r.first..=r.last).contains(&slot))
            .map_or(0, |r| r.node)
    }

    pub(crate) fn conn_for(&mut self, key: &str) -> &mut MultiplexedConnection {
        let i = self.node_of(key);
        &mut self.conns[i]
    }

    /// `:{tag of key's slot}` in a cluster, nothing standalone: the suffix of the module's
    /// per-slot helper keys.
    fn slot_suffix(&self, key: &str) -> String {
        if self.is_cluster() {
            format!(
                ":{{{}}}",
                tally_slot::tag(tally_slot::key_slot(key.as_bytes()))
            )
        } else {
            String::new()
        }
    }

    /// The hash holding `key`'s seq: `<prefix>:seq`, or `<prefix>:seq:{tag of its slot}` in a
    /// cluster.
    pub(crate) fn seq_hash(&self, prefix: &str, key: &str) -> String {
        format!("{prefix}:seq{}", self.slot_suffix(key))
    }

    /// The op-id record of `op` sent with a command whose first key is `key`, named as the
    /// module names it: `<prefix>:op[:{tag}]:<byte length of key>:<key>:<op>`.
    pub(crate) fn op_key(&self, prefix: &str, key: &str, op: &str) -> String {
        format!(
            "{prefix}:op{}:{}:{key}:{op}",
            self.slot_suffix(key),
            key.len()
        )
    }

    /// One empty pipeline per node.
    pub(crate) fn pipes(&self) -> Pipes {
        Pipes {
            pipes: (0..self.conns.len()).map(|_| redis::pipe()).collect(),
        }
    }
}

/// Commands gathered per node, sent as one pipeline to each.
pub(crate) struct Pipes {
    pipes: Vec<redis::Pipeline>,
}

impl Pipes {
    /// The pipeline of the node that serves `key`.
    pub(crate) fn on(&mut self, nodes: &Nodes, key: &str) -> &mut redis::Pipeline {
        let i = nodes.node_of(key).min(self.pipes.len().saturating_sub(1));
        &mut self.pipes[i]
    }

    pub(crate) async fn send(self, nodes: &mut Nodes) -> redis::RedisResult<()> {
        for (pipe, conn) in self.pipes.into_iter().zip(nodes.conns.iter_mut()) {
            if pipe.is_empty() {
                continue;
            }
            pipe.query_async::<()>(conn).await?;
        }
        Ok(())
    }
}

/// Reply timeout of reconcile's and restore's commands (redis-rs would give up after 500 ms,
/// which a busy server can exceed).
const RESPONSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

async fn open(url: &str) -> anyhow::Result<MultiplexedConnection> {
    crate::redis_io::connect(url, RESPONSE_TIMEOUT)
        .await
        .with_context(|| format!("connect to {url}"))
}

#[cfg(test)]
mod tests {
    use super::{Nodes, SlotOwner};

    #[test]
    fn op_keys_are_named_as_the_module_names_them() {
        let standalone = Nodes {
            conns: Vec::new(),
            ranges: Vec::new(),
        };
        assert_eq!(
            standalone.op_key("tally", "other", "op"),
            "tally:op:5:other:op"
        );
        let cluster = Nodes {
            conns: Vec::new(),
            ranges: vec![SlotOwner {
                first: 0,
                last: 16383,
                node: 0,
            }],
        };
        let tag = tally_slot::tag(tally_slot::key_slot(b"acct:1"));
        assert_eq!(
            cluster.op_key("tally", "acct:1", "g1"),
            format!("tally:op:{{{tag}}}:6:acct:1:g1")
        );
        assert_eq!(
            cluster.seq_hash("tally", "acct:1"),
            format!("tally:seq:{{{tag}}}")
        );
    }
}
