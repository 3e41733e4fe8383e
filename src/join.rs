//! A node joining a running cluster (`stockd start --join ADDR,...`): it
//! runs with the cluster's `[cluster]` settings (so its fingerprint is the
//! cluster's) but is not in their bootstrap list. It registers itself in
//! the topology (`TopologyCommand::Join`) through the nodes `--join` names,
//! then the metadata group's leader wherever it is, and tries again every
//! second until the topology lists it. From then on every node learns its
//! peer address from the topology, and moves and the placement loop may
//! give it replicas; until then it holds none and forwards what it is sent.
//! Starting it again with `--join` is harmless: a repeat changes nothing.

use std::sync::Weak;
use std::time::Duration;

use raft::GroupError;
use storage::model::Command;
use storage::model::Outcome;
use storage::topology::NodeInfo;
use storage::topology::NodeState;
use storage::topology::TopologyCommand;
use storage::topology::METADATA_GROUP;

use crate::node::Node;

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
