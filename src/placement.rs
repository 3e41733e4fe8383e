//! Replica moves between nodes (`stockctl shard move`): a group's replica
//! goes from one node to another of its region while the group serves.
//!
//! 1. The topology names the new node as a replica too, so that node takes
//!    the group's messages (it starts an empty replica on the first one).
//! 2. On the group's leader: the new node is added as a learner and caught
//!    up (by the log, or a snapshot when the log behind it was purged),
//!    then the voters change by joint consensus, the old node out.
//! 3. The topology names the new voters; the old node, no longer among
//!    them, retires its replica (stops it, deletes its log and state).
//!
//! Every step can be repeated: a move that stopped after step 1 or 2 is
//! completed by the same command again (a group left in the joint config
//! leaves it), and a completed one answers at once.

use std::collections::BTreeSet;
use std::time::Duration;

use raft::GroupError;
use raft::NodeId;
use storage::model::GroupId;
use storage::topology::NodeState;
use storage::topology::RangeInfo;
use storage::topology::TopologyCommand;

use crate::node::Node;
use crate::node::Target;

/// Longest a move waits for its new replica to catch up and the voters to
/// change.
pub const MOVE_TIMEOUT: Duration = Duration::from_secs(60);

/// What a move did, as the topology records it.
#[derive(Debug, Clone)]
pub struct MoveDone {
    pub range: RangeInfo,
}

impl Node {
    /// Moves `group`'s replica on node `from` to node `to` (same region, up,
    /// not a replica yet) and waits until the topology records it.
    pub async fn move_replica(&self, group: GroupId, from: NodeId, to: NodeId) -> Result<MoveDone, GroupError> {
        let invalid = |reason: String| GroupError::Invalid { group, reason };
        let topology = self.topology();
        let range = topology.range(group).cloned().ok_or_else(|| invalid(format!("invalid group_id: no group {group} in the shard map")))?;
        let target = topology.node(to).ok_or_else(|| invalid(format!("invalid to: no node {to} in the topology")))?;
        if from == to {
            return Err(invalid(format!("invalid to: the replica is on node {to} already")));
        }
        if target.state != NodeState::Up || target.region != range.region {
            return Err(invalid(format!(
                "invalid to: node {to} is {:?} in region {}; group {group} needs an up node of region {}",
                target.state, target.region, range.region
            )));
        }
        // A repeat of a move that completed, or went as far as step 1.
        let done = !range.replicas.contains(&from) && range.replicas.contains(&to);
        if !range.replicas.contains(&from) && !done {
            return Err(invalid(format!("invalid from: node {from} holds no replica of group {group}")));
        }
        if done {
            return Ok(MoveDone { range });
        }
        self.ensure_bootstrapped().await?;
        if !range.replicas.contains(&to) {
            let mut with = range.replicas.clone();
            with.push(to);
            self.change_topology(TopologyCommand::SetReplicas { group, replicas: with }).await?;
            self.refresh_topology().await;
        }
        let moving = self.toward_leader(group, |target| async move {
            match target {
                Target::Local => self.move_replica_here(group, from, to).await,
                Target::Peer(id) => self.peers.move_replica(id, group, from, to, MOVE_TIMEOUT).await,
            }
        });
        let voters = tokio::time::timeout(MOVE_TIMEOUT, moving).await.map_err(|_| GroupError::Unavailable {
            group,
            reason: format!("node {to} did not catch up within {} s; the same command completes the move", MOVE_TIMEOUT.as_secs()),
        })??;
        self.change_topology(TopologyCommand::SetReplicas { group, replicas: voters.into_iter().collect() }).await?;
        self.refresh_topology().await;
        let range = self
            .topology()
            .range(group)
            .cloned()
            .ok_or_else(|| GroupError::Unavailable { group, reason: "the group left the topology during the move".into() })?;
        tracing::info!(node = self.id(), group, from, to, replicas = ?range.replicas, "replica moved");
        Ok(MoveDone { range })
    }

    /// Step 2 on this node, when it leads `group` (else "not leader", with
    /// the leader it knows).
    pub async fn move_replica_here(&self, group: GroupId, from: NodeId, to: NodeId) -> Result<BTreeSet<NodeId>, GroupError> {
        let replica = self.group(group).ok_or(GroupError::NotLeader { group, leader: None })?;
        if !replica.is_leader() {
            return Err(GroupError::NotLeader { group, leader: replica.leader() });
        }
        let addr = self
            .topology()
            .node(to)
            .map(|n| n.addr.clone())
            .ok_or_else(|| GroupError::Invalid { group, reason: format!("invalid to: no node {to} in the topology") })?;
        replica.replace_voter(from, to, addr).await
    }
}

/// How often the metadata group's leader looks for a replica to move off a
/// draining node.
pub const PLACE_CHECK: Duration = Duration::from_secs(2);

/// The node to take `range`'s replica from a node leaving it: an up node of
/// its region that holds no replica of it, the one holding fewest replicas
/// (then the lowest id); `None` when there is none.
pub fn drain_target(topology: &storage::topology::Topology, range: &RangeInfo) -> Option<NodeId> {
    topology
        .nodes()
        .filter(|n| n.state == NodeState::Up && n.region == range.region && !range.replicas.contains(&n.id))
        .min_by_key(|n| (topology.hosted_by(n.id).count(), n.id))
        .map(|n| n.id)
}

impl Node {
    /// `stockctl node drain`: marks node `id` draining; the placement loop
    /// then moves its replicas away one at a time. Answers the node as the
    /// topology holds it then.
    pub async fn drain_node(&self, id: NodeId) -> Result<storage::topology::NodeInfo, GroupError> {
        self.set_node_state(id, NodeState::Draining).await
    }

    /// `stockctl node remove`: forgets node `id` for placement, once it holds
    /// no replica; its id is never given to another node.
    pub async fn remove_node(&self, id: NodeId) -> Result<storage::topology::NodeInfo, GroupError> {
        if self.metadata_replicas().contains(&id) {
            return Err(GroupError::Invalid {
                group: storage::topology::METADATA_GROUP,
                reason: format!("invalid node_id: node {id} replicates the metadata group, whose replicas are fixed at bootstrap"),
            });
        }
        self.set_node_state(id, NodeState::Removed).await
    }

    async fn set_node_state(&self, id: NodeId, state: NodeState) -> Result<storage::topology::NodeInfo, GroupError> {
        let invalid = |reason: String| GroupError::Invalid { group: storage::topology::METADATA_GROUP, reason };
        self.ensure_bootstrapped().await?;
        self.refresh_topology().await;
        let known = self.topology().node(id).cloned().ok_or_else(|| invalid(format!("invalid node_id: no node {id} in the topology")))?;
        if known.state != state {
            self.change_topology(TopologyCommand::SetNodeState { node: id, state }).await?;
            self.refresh_topology().await;
        }
        self.topology().node(id).cloned().ok_or_else(|| invalid(format!("invalid node_id: no node {id} in the topology")))
    }

    /// One round of the placement loop, on the metadata group's leader only:
    /// moves one replica off a draining node (the first such node, its first
    /// group), to `drain_target`. Answers what it moved.
    pub async fn place_once(&self) -> Option<(GroupId, NodeId, NodeId)> {
        if !self.group(storage::topology::METADATA_GROUP).is_some_and(|g| g.is_leader()) {
            return None;
        }
        let topology = self.topology();
        let draining = topology.nodes().filter(|n| n.state == NodeState::Draining).map(|n| n.id).collect::<Vec<_>>();
        for from in draining {
            let Some(range) = topology.hosted_by(from).next().cloned() else { continue };
            let Some(to) = drain_target(&topology, &range) else {
                tracing::warn!(node = self.id(), draining = from, group = range.group, region = %range.region, "no up node of the region can take this replica; the drain waits");
                continue;
            };
            return match self.move_replica(range.group, from, to).await {
                Ok(done) => {
                    tracing::info!(node = self.id(), draining = from, group = range.group, to, replicas = ?done.range.replicas, "replica moved off a draining node");
                    Some((range.group, from, to))
                }
                Err(e) => {
                    tracing::info!(node = self.id(), draining = from, group = range.group, to, error = %e, "replica not moved off the draining node yet");
                    None
                }
            };
        }
        None
    }

    /// Runs `place_once` every `PLACE_CHECK` until the node stops.
    pub(crate) async fn place_when_due(node: std::sync::Weak<Node>) {
        loop {
            tokio::time::sleep(PLACE_CHECK).await;
            let Some(node) = node.upgrade() else { return };
            node.place_once().await;
        }
    }
}
