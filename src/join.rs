//! A node joining a running cluster (`stockd start --join ADDR,...`): it
//! runs with the cluster's `[cluster]` settings (so its fingerprint is the
//! cluster's) but is not in their bootstrap list. It registers itself in
//! the topology (`TopologyCommand::Join`) through the nodes `--join` names,
//! then the metadata group's leader wherever it is, and tries again every
//! second until the topology lists it. From then on every node learns its
//! peer address from the topology, and moves and the placement loop may
//! give it replicas; until then it holds none and forwards what it is sent.
//! Starting it again with `--join` is harmless: a repeat changes nothing.
//!
//! Before it starts (`prepare_join`), the node asks the nodes `--join`
//! names for the cluster's settings and nodes (`Admin/ClusterSettings`,
//! with its own node certificate). A node without a bootstrap list of its
//! own (no `[cluster] nodes`, no `--peers`) takes the cluster's `[cluster]`
//! settings from the answer and keeps them in its data directory
//! (`CLUSTER_SETTINGS_FILE`), so a restart needs no other node; `--join`
//! may name any node of the running cluster, not only one of its first.
//! A node with a bootstrap list of its own must have the cluster's
//! fingerprint, which is checked at once.

use std::sync::Weak;
use std::time::Duration;

use raft::GroupError;
use storage::model::Command;
use storage::model::Outcome;
use storage::topology::NodeInfo;
use storage::topology::NodeState;
use storage::topology::TopologyCommand;
use storage::topology::METADATA_GROUP;

use crate::config::FileConfig;
use crate::config::NodeEntry;
use crate::config::Overrides;
use crate::config::Security;
use crate::node::Node;

/// The file in a joining node's data directory that keeps the cluster
/// settings it took (JSON, as `Admin/ClusterSettings` gives them).
pub const CLUSTER_SETTINGS_FILE: &str = "cluster-settings.json";
/// Beside it, the cluster's nodes as the node learnt them (JSON), so that
/// `--join` names a known node after a restart too.
pub const CLUSTER_NODES_FILE: &str = "cluster-nodes.json";

/// Longest a joining node waits for the cluster's settings before it
/// starts (every node `--join` names is asked in turn).
pub const LEARN_TIMEOUT: Duration = Duration::from_secs(10);

/// What a joining node learnt of the cluster before it started.
#[derive(Debug, Clone, Default)]
pub struct Learnt {
    /// The cluster's fingerprint, when a node answered (a restart from the
    /// kept settings while no node answers has none).
    pub fingerprint: Option<String>,
}

/// `stockd start --join`: asks the cluster for its settings and nodes and
/// prepares `file` and `overrides` with them (see the module notes). A node
/// without `--join` is left as it is.
pub async fn prepare_join(file: &mut FileConfig, overrides: &mut Overrides) -> Result<Learnt, String> {
    let Some(addrs) = overrides.join.clone().filter(|a| !a.is_empty()) else { return Ok(Learnt::default()) };
    let node_id = overrides.node_id.or(file.node.id).ok_or("node id is required (--node-id or [node] id)")?;
    let data_dir = overrides.data_dir.clone().or_else(|| file.node.data_dir.clone()).ok_or("data dir is required (--data-dir or [node] data-dir)")?;
    let kept = data_dir.join(CLUSTER_SETTINGS_FILE);
    let own_list = file.has_bootstrap_list() || overrides.peers.is_some();
    let tls = match file.node.security_with(overrides)? {
        Security::Tls { certs, .. } => Some(
            stockd_client::TlsConfig::from_dir(&certs, &format!("node-{node_id}"))
                .map_err(|e| format!("--join: the node's certificate (node-{node_id}.crt in {}): {e}", certs.display()))?,
        ),
        Security::Insecure => None,
    };
    let config = stockd_client::ClientConfig { tls, routes_max_age: None, total_deadline: LEARN_TIMEOUT, ..stockd_client::ClientConfig::default() };
    let answer = match stockd_client::Client::with_config(&addrs, config) {
        Ok(client) => client.cluster_settings().await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let kept_nodes = data_dir.join(CLUSTER_NODES_FILE);
    let settings = match answer {
        Ok(answer) => {
            overrides.known_nodes = answer
                .nodes
                .iter()
                .filter(|n| n.state != "removed" && !n.peer_addr.is_empty())
                .map(|n| NodeEntry { id: n.id, addr: n.addr.clone(), peer_addr: Some(n.peer_addr.clone()), region: n.region.clone() })
                .collect();
            if !own_list {
                let nodes = serde_json::to_string(&overrides.known_nodes).map_err(|e| format!("encode the cluster's nodes: {e}"))?;
                std::fs::create_dir_all(&data_dir).map_err(|e| format!("create {}: {e}", data_dir.display()))?;
                std::fs::write(&kept, &answer.settings_json).map_err(|e| format!("keep the cluster settings in {}: {e}", kept.display()))?;
                std::fs::write(&kept_nodes, nodes).map_err(|e| format!("keep the cluster's nodes in {}: {e}", kept_nodes.display()))?;
            }
            Some((answer.settings_json, answer.fingerprint))
        }
        Err(e) if !own_list && kept.exists() => {
            tracing::warn!(node = node_id, error = %e, kept = %kept.display(), "no node --join names answered; starting with the cluster settings kept here");
            let nodes = std::fs::read_to_string(&kept_nodes).map_err(|e| format!("read {}: {e}", kept_nodes.display()))?;
            overrides.known_nodes = serde_json::from_str(&nodes).map_err(|e| format!("invalid {}: {e}", kept_nodes.display()))?;
            None
        }
        Err(e) if own_list => {
            tracing::warn!(node = node_id, error = %e, "no node --join names answered; joining with this node's own bootstrap list");
            return Ok(Learnt::default());
        }
        Err(e) => return Err(format!("--join: no node of {} gave the cluster's settings: {e}", addrs.join(","))),
    };
    if !own_list {
        let text = match &settings {
            Some((text, _)) => text.clone(),
            None => std::fs::read_to_string(&kept).map_err(|e| format!("read {}: {e}", kept.display()))?,
        };
        file.take_cluster_settings(&text)?;
    }
    Ok(Learnt { fingerprint: settings.map(|(_, fingerprint)| fingerprint) })
}

/// Refuses a joining node whose cluster settings are not the cluster's: it
/// would start and have every peer message refused.
pub fn check_fingerprint(config: &crate::config::Config, learnt: &Learnt) -> Result<(), String> {
    match &learnt.fingerprint {
        Some(theirs) if *theirs != config.cluster_fingerprint => Err(format!(
            "--join: this node's [cluster] settings (fingerprint {}) are not the cluster's ({theirs}); start it with the cluster's settings, \
             or without a bootstrap list to take them from the cluster",
            config.cluster_fingerprint
        )),
        _ => Ok(()),
    }
}

/// How long a joining node waits before asking again.
pub const JOIN_RETRY: Duration = Duration::from_secs(1);

impl Node {
    /// This node as `TopologyCommand::Join` names it.
    fn joining_info(&self) -> NodeInfo {
        let me = &self.config.me;
        NodeInfo { id: me.id, addr: me.addr.clone(), peer_addr: me.peer_addr.clone(), region: me.region.clone(), state: NodeState::Up }
    }

    /// True when this node's copy of the topology lists it with its
    /// addresses and region.
    pub fn is_joined(&self) -> bool {
        let me = self.joining_info();
        self.topology().node(me.id).is_some_and(|n| (&n.addr, &n.peer_addr, &n.region) == (&me.addr, &me.peer_addr, &me.region))
    }

    /// One attempt at joining: through each node `--join` names (the one
    /// that leads the metadata group takes it), else the metadata group's
    /// leader found the usual way.
    pub async fn join_cluster(&self) -> Result<(), GroupError> {
        if self.is_joined() {
            return Ok(());
        }
        let command = Command::Topology(TopologyCommand::Join(self.joining_info()));
        let mut taken = None;
        for target in self.config.join.iter().copied() {
            match self.peers.propose(target, METADATA_GROUP, storage::model::FIRST_EPOCH, &command).await {
                Ok((_, result)) => {
                    taken = Some(result);
                    break;
                }
                Err(e) => tracing::debug!(node = self.id(), through = target, error = %e, "join not taken by this node"),
            }
        }
        let result = match taken {
            Some(result) => result,
            None => self.propose(METADATA_GROUP, command).await?.1,
        };
        if result.outcome != Outcome::Ok {
            return Err(GroupError::Invalid {
                group: METADATA_GROUP,
                reason: result.refusal.unwrap_or_else(|| format!("the join was refused: {:?}", result.outcome)),
            });
        }
        self.refresh_topology().await;
        Ok(())
    }

    /// Joins, trying again every `JOIN_RETRY`, until the topology lists this
    /// node or it stops.
    pub(crate) async fn join_when_started(node: Weak<Node>) {
        let mut attempts = 0u64;
        loop {
            let Some(strong) = node.upgrade() else { return };
            attempts += 1;
            match strong.join_cluster().await {
                Ok(()) => {
                    let me = strong.joining_info();
                    tracing::info!(node = me.id, addr = %me.addr, region = %me.region, "joined the cluster; it may be given replicas now");
                    return;
                }
                // Refused for good (the id is another node's, or was removed):
                // said once, loudly, then asked again in case it is fixed.
                Err(e @ GroupError::Invalid { .. }) if attempts == 1 || attempts.is_multiple_of(60) => {
                    tracing::error!(node = strong.id(), error = %e, "the cluster refuses this node's join")
                }
                Err(e) => tracing::debug!(node = strong.id(), error = %e, "not joined yet; trying again"),
            }
            drop(strong);
            tokio::time::sleep(JOIN_RETRY).await;
        }
    }
}
