//! The Redis side of an operation (reconcile, restore): from the `--redis-url` list, one
//! standalone server, several standalone servers, or every primary of a cluster with the
//! slots it serves; for each key, the node that holds it and the sequence hash its seq lives
//! in.
//!
//! The list means what it means to `run`: cluster nodes are seeds (the first that answers
//! gives the layout), standalone servers are each a server of their own. Several standalone
//! servers hold disjoint keys placed by the clients' sharding, which nothing in Redis or the
//! history records: a key's server is found by looking (`locate`), so an operation can only
//! touch keys that are on a server already.

use std::collections::HashMap;

use anyhow::{bail, Context as _};
use redis::aio::MultiplexedConnection;

use crate::redis_io::{cluster_layout, Primary};

pub(crate) struct Nodes {
    pub(crate) conns: Vec<MultiplexedConnection>,
    /// Cluster mode: which node serves which slots. Empty when standalone.
    ranges: Vec<SlotOwner>,
    /// Several standalone servers: the server each key asked about was found on (`locate`).
    located: HashMap<String, usize>,
}

/// Slots `first..=last` are served by `conns[node]`.
struct SlotOwner {
    first: usize,
    last: usize,
    node: usize,
}

/// Keys looked up per pipeline when locating keys on several standalone servers.
const LOCATE_BATCH: usize = 1000;

impl Nodes {
    /// Connects to what `urls` names: when the first URL that answers is a cluster node, every
    /// primary of its cluster (the URLs are seeds: one that does not answer is skipped);
    /// otherwise every URL, each a standalone server that must answer.
    pub(crate) async fn connect(urls: &[String]) -> anyhow::Result<Nodes> {
        let urls = distinct(urls);
        let mut unanswered = Vec::new();
        for url in &urls {
            match cluster_layout(url).await {
                Ok(Some(primaries)) => {
                    for (seed, e) in &unanswered {
                        tracing::warn!(seed = %seed, error = %e, "seed did not answer; the layout was read from another");
                    }
                    return Nodes::cluster(url, primaries).await;
                }
                Ok(None) => return Nodes::servers(&urls).await,
                Err(e) => unanswered.push((url.clone(), e)),
            }
        }
        let why: Vec<String> = unanswered
            .iter()
            .map(|(u, e)| format!("{u}: {e}"))
            .collect();
        bail!(
            "reading the layout of {}: no node answered ({})",
            urls.join(","),
            why.join("; ")
        )
    }

    /// Every primary of the cluster `seed` belongs to.
    async fn cluster(seed: &str, primaries: Vec<Primary>) -> anyhow::Result<Nodes> {
        let mut nodes = Nodes::empty();
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

    /// Every one of `urls`, each a standalone server: a server that does not answer, or a
    /// cluster node among them, is an error (its keys are on no other server).
    async fn servers(urls: &[String]) -> anyhow::Result<Nodes> {
        let mut nodes = Nodes::empty();
        let mut run_ids: Vec<(String, &str)> = Vec::new();
        for url in urls {
            let layout = cluster_layout(url).await.with_context(|| {
                format!(
                    "reading the layout of {url} (a standalone server of --redis-url {})",
                    urls.join(",")
                )
            })?;
            if layout.is_some() {
                bail!(
                    "--redis-url {} mixes standalone servers and cluster nodes ({url} is a cluster node)",
                    urls.join(",")
                );
            }
            let mut conn = open(url).await?;
            let id = run_id(&mut conn)
                .await
                .with_context(|| format!("INFO server of {url}"))?;
            if let Some((_, other)) = run_ids.iter().find(|(i, _)| *i == id) {
                bail!("--redis-url names one server twice: {other} and {url} (run_id {id})");
            }
            run_ids.push((id, url));
            nodes.conns.push(conn);
        }
        Ok(nodes)
    }

    fn empty() -> Nodes {
        Nodes {
            conns: Vec::new(),
            ranges: Vec::new(),
            located: HashMap::new(),
        }
    }

    pub(crate) fn is_cluster(&self) -> bool {
        !self.ranges.is_empty()
    }

    /// Several standalone servers (not a cluster, not one server): keys are where the
    /// clients' sharding put them, found only by `locate`.
    pub(crate) fn several_servers(&self) -> bool {
        !self.is_cluster() && self.conns.len() > 1
    }

    /// Index of the node that serves `key`: by slot in a cluster, 0 on one server (and when
    /// no node serves the slot). Several servers: the server `locate` found it on, 0 for a
    /// key not located (callers that write there `locate` first: `conn_for`).
    pub(crate) fn node_of(&self, key: &str) -> usize {
        if let Some(&i) = self.located.get(key) {
            return i;
        }
        let slot = tally_slot::key_slot(key.as_bytes());
        self.ranges
            .iter()
            .find(|r| (r.first..=r.last).contains(&slot))
            .map_or(0, |r| r.node)
    }

    /// The connection of the node holding `key`; on several servers, the one it is on
    /// (`locate`): an error when it is on none or on more than one.
    pub(crate) async fn conn_for(
        &mut self,
        prefix: &str,
        key: &str,
    ) -> anyhow::Result<&mut MultiplexedConnection> {
        if self.several_servers() && !self.located.contains_key(key) {
            self.locate(prefix, &[key.to_string()]).await?;
        }
        let i = self.node_of(key);
        Ok(&mut self.conns[i])
    }

    /// Several servers: finds the server of each of `keys` (the key, or its seq in
    /// `<prefix>:seq`, exists there), so that `node_of` and `conn_for` answer for them. Every
    /// key must be on exactly one server: one on none cannot be placed (the sharding is the
    /// clients'), one on several is ambiguous. Nothing to do on a cluster or one server.
    pub(crate) async fn locate(&mut self, prefix: &str, keys: &[String]) -> anyhow::Result<()> {
        if !self.several_servers() {
            return Ok(());
        }
        let seq_hash = format!("{prefix}:seq");
        for chunk in keys.chunks(LOCATE_BATCH) {
            let mut holders: Vec<Vec<usize>> = vec![Vec::new(); chunk.len()];
            for (node, conn) in self.conns.iter_mut().enumerate() {
                let mut pipe = redis::pipe();
                for k in chunk {
                    pipe.cmd("EXISTS")
                        .arg(k)
                        .cmd("HEXISTS")
                        .arg(&seq_hash)
                        .arg(k);
                }
                let found: Vec<bool> = pipe.query_async(conn).await?;
                for (i, pair) in found.chunks(2).enumerate() {
                    if pair.iter().any(|f| *f) {
                        holders[i].push(node);
                    }
                }
            }
            for (key, on) in chunk.iter().zip(holders) {
                match on[..] {
                    [node] => {
                        self.located.insert(key.clone(), node);
                    }
                    [] => bail!(
                        "{key} is on none of the {} standalone servers of --redis-url: which server a key \
                         belongs to is the clients' sharding, which the history does not record, so a key \
                         can only be written where it already is",
                        self.conns.len()
                    ),
                    _ => bail!(
                        "{key} is on {} of the standalone servers of --redis-url (servers {on:?} in the order \
                         given): a key must live on exactly one",
                        on.len()
                    ),
                }
            }
        }
        Ok(())
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

    /// The hold records of `key` (docs/holds.md): `<prefix>:holds[:{tag}]:<byte length>:<key>`.
    pub(crate) fn holds_hash(&self, prefix: &str, key: &str) -> String {
        holds_hash(prefix, &self.slot_suffix(key), key)
    }

    /// The deadlines of the holds in `key`'s slot: `<prefix>:due[:{tag}]`.
    pub(crate) fn due_zset(&self, prefix: &str, key: &str) -> String {
        format!("{prefix}:due{}", self.slot_suffix(key))
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

/// The hold records of `key` whose helper keys end in `suffix` (empty standalone,
/// `:{<tag>}` in a cluster): `<prefix>:holds<suffix>:<byte length of key>:<key>`.
pub(crate) fn holds_hash(prefix: &str, suffix: &str, key: &str) -> String {
    format!("{prefix}:holds{suffix}:{}:{key}", key.len())
}

/// A hold's member of the due sorted set: `<byte length of key>:<key>:<id>`.
pub(crate) fn due_member(key: &str, id: i64) -> String {
    format!("{}:{key}:{id}", key.len())
}

/// Reply timeout of reconcile's and restore's commands (redis-rs would give up after 500 ms,
/// which a busy server can exceed).
const RESPONSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

async fn open(url: &str) -> anyhow::Result<MultiplexedConnection> {
    crate::redis_io::connect(url, RESPONSE_TIMEOUT)
        .await
        .with_context(|| format!("connect to {url}"))
}

/// The URLs once each, in the order given, blanks dropped.
fn distinct(urls: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for u in urls.iter().map(|u| u.trim()).filter(|u| !u.is_empty()) {
        if !out.iter().any(|o| o == u) {
            out.push(u.to_string());
        }
    }
    out
}

/// The server's `run_id` (INFO server): two URLs with the same one name the same server.
async fn run_id(conn: &mut MultiplexedConnection) -> redis::RedisResult<String> {
    let info: String = redis::cmd("INFO").arg("server").query_async(conn).await?;
    Ok(info
        .lines()
        .find_map(|l| l.trim().strip_prefix("run_id:"))
        .unwrap_or_default()
        .to_string())
}

#[cfg(test)]
mod tests {
    use super::{distinct, Nodes, SlotOwner};

    #[test]
    fn a_url_list_is_read_once_each_in_order() {
        let urls = ["redis://b:1", " redis://a:2", "", "redis://b:1"].map(String::from);
        assert_eq!(distinct(&urls), vec!["redis://b:1", "redis://a:2"]);
    }

    #[test]
    fn op_keys_are_named_as_the_module_names_them() {
        let standalone = Nodes::empty();
        assert_eq!(
            standalone.op_key("tally", "other", "op"),
            "tally:op:5:other:op"
        );
        let cluster = Nodes {
            ranges: vec![SlotOwner {
                first: 0,
                last: 16383,
                node: 0,
            }],
            ..Nodes::empty()
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
        assert_eq!(
            cluster.holds_hash("tally", "acct:1"),
            format!("tally:holds:{{{tag}}}:6:acct:1")
        );
        assert_eq!(
            cluster.due_zset("tally", "acct:1"),
            format!("tally:due:{{{tag}}}")
        );
        assert_eq!(standalone.holds_hash("tally", "ü"), "tally:holds:2:ü");
        assert_eq!(standalone.due_zset("tally", "k"), "tally:due");
        assert_eq!(super::due_member("a:b", 12), "3:a:b:12");
    }
}
