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
//! leaves it), and a completed one answers at once. One whose driver
//! stopped for good is finished by the group's leader: once the topology
//! and the group's membership have disagreed for `RECONCILE_AFTER`, the
//! topology records the group's voters (`reconcile_replicas_when_due`).

use std::collections::BTreeSet;
use std::time::Duration;

use raft::GroupError;
use raft::NodeId;
use storage::model::GroupId;
use storage::topology::NodeState;
use storage::topology::RangeInfo;
use storage::topology::Topology;
use storage::topology::TopologyCommand;
use storage::topology::METADATA_GROUP;

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
        // Judged on the newest topology: this node's copy may be seconds
        // old (the watcher reads it from a replica), and a copy from before
        // a replica fix would skip step 1 ("`to` is named already") or
        // call the move done.
        self.refresh_topology().await;
        let topology = self.topology();
        let range = placed_range(&topology, group).ok_or_else(|| invalid(format!("invalid group_id: no group {group} in the shard map")))?;
        let target = topology.node(to).ok_or_else(|| invalid(format!("invalid to: no node {to} in the topology")))?;
        if from == to {
            return Err(invalid(format!("invalid to: the replica is on node {to} already")));
        }
        if target.state != NodeState::Up {
            return Err(invalid(format!("invalid to: node {to} is {}; a replica moves to an up node", target.state.as_str())));
        }
        // The metadata group holds no user data: any region's node takes it.
        if group != METADATA_GROUP && target.region != range.region {
            return Err(invalid(format!("invalid to: node {to} is in region {}; group {group} needs an up node of region {}", target.region, range.region)));
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
        if self.failpoint(crate::failpoint::MOVE_STOP_BEFORE_RECORD) {
            return Err(GroupError::Unavailable { group, reason: "failpoint: the move's driver stopped before the topology recorded the new voters".into() });
        }
        self.change_topology(TopologyCommand::SetReplicas { group, replicas: voters.into_iter().collect() }).await?;
        self.refresh_topology().await;
        let range = placed_range(&self.topology(), group)
            .ok_or_else(|| GroupError::Unavailable { group, reason: "the group left the topology during the move".into() })?;
        tracing::info!(node = self.id(), group, from, to, replicas = ?range.replicas, "replica moved");
        if self.failpoint(crate::failpoint::MOVE_SKIPS_HISTORY) {
            // As the balancer may, give the new replica the leadership (once
            // it keeps up and the leader's lease allows), for up to 10 s.
            for _ in 0..20 {
                match self.transfer_leader(group, to).await {
                    Ok(()) => break,
                    Err(e) => tracing::info!(node = self.id(), group, to, error = %e, "planted bug: the moved replica did not take the leadership yet"),
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        Ok(MoveDone { range })
    }

    /// Step 2 on this node, when it leads `group` (else "not leader", with
    /// the leader it knows).
    pub async fn move_replica_here(&self, group: GroupId, from: NodeId, to: NodeId) -> Result<BTreeSet<NodeId>, GroupError> {
        let replica = self.group(group).ok_or(GroupError::NotLeader { group, leader: None })?;
        if !replica.is_leader() {
            return Err(GroupError::NotLeader { group, leader: replica.leader() });
        }
        if from == self.id() {
            // The leader's own replica leaves: hand the leadership to another
            // voter first, so that removing it costs no election timeout
            // (every client of the group would wait it out). The move goes
            // on at the new leader; if no voter takes it, it goes on here.
            let progress = replica.progress();
            let caught_up = |id: &NodeId| {
                progress.replication.iter().any(|(r, matched)| r == id && progress.last_log_index.saturating_sub(*matched) <= raft::group::LEADER_MOVE_LAG_MAX)
            };
            if let Some(heir) = progress.voters.iter().copied().filter(|v| *v != from && *v != to).find(caught_up) {
                match self.transfer_leader_here(group, heir).await {
                    Ok(()) => return Err(GroupError::NotLeader { group, leader: replica.leader() }),
                    Err(e) => tracing::info!(node = self.id(), group, heir, error = %e, "the leader's replica moves without handing the leadership over first"),
                }
            }
        }
        // The topology named `to` in step 1; a replica fix may have taken
        // that back since (a driver that took longer than
        // `RECONCILE_AFTER`): adding it now would make a voter no node runs.
        if !placed_range(&self.topology(), group).is_some_and(|r| r.replicas.contains(&to)) {
            self.refresh_topology().await;
            if !placed_range(&self.topology(), group).is_some_and(|r| r.replicas.contains(&to)) {
                return Err(GroupError::Unavailable {
                    group,
                    reason: format!("the topology no longer names node {to} as a replica of group {group}; run the move again"),
                });
            }
        }
        let addr = self
            .topology()
            .node(to)
            .map(|n| n.addr.clone())
            .ok_or_else(|| GroupError::Invalid { group, reason: format!("invalid to: no node {to} in the topology") })?;
        replica.replace_voter(from, to, addr).await
    }
}

/// Longest a leader move takes, forwarding included.
pub const LEADER_MOVE_TIMEOUT: Duration = Duration::from_secs(5);

impl Node {
    /// Hands `group`'s leadership to node `to`, a replica of it (see
    /// `raft::Group::transfer_leader`), wherever the leader is.
    pub async fn transfer_leader(&self, group: GroupId, to: NodeId) -> Result<(), GroupError> {
        self.toward_leader(group, |target| async move {
            match target {
                Target::Local => self.transfer_leader_here(group, to).await,
                Target::Peer(id) => self.peers.transfer_leader(id, group, to, LEADER_MOVE_TIMEOUT).await,
            }
        })
        .await
    }

    /// A leader move on this node, when it leads `group`.
    pub async fn transfer_leader_here(&self, group: GroupId, to: NodeId) -> Result<(), GroupError> {
        let replica = self.group(group).ok_or(GroupError::NotLeader { group, leader: None })?;
        let campaign = async {
            if to == self.id() {
                replica.campaign().await;
                Ok(())
            } else {
                self.peers.campaign(to, group).await
            }
        };
        replica.transfer_leader(to, campaign).await?;
        tracing::info!(node = self.id(), group, to, "leader moved");
        Ok(())
    }

    /// (group, leader, term) for every group this node replicates, as its
    /// replica knows them.
    pub fn local_leaders(&self) -> Vec<(GroupId, Option<NodeId>, u64)> {
        self.groups()
            .map(|g| {
                let p = g.progress();
                (g.id, p.leader, p.term)
            })
            .collect()
    }

    /// The balancer's view of the cluster: every node of the topology, and
    /// every range with the leader its most recent term names (asked of
    /// every up node; one that does not answer in `timeout` is left out).
    pub async fn balance_view(&self, timeout: Duration) -> (Vec<NodeView>, Vec<GroupView>) {
        let topology = self.topology();
        let others: Vec<NodeId> = topology.nodes().filter(|n| n.state != NodeState::Removed && n.id != self.id()).map(|n| n.id).collect();
        let answers = futures::future::join_all(others.iter().map(|&id| self.peers.leaders(id, timeout))).await;
        let mut newest: std::collections::BTreeMap<GroupId, (u64, NodeId)> = std::collections::BTreeMap::new();
        for (group, leader, term) in answers.into_iter().filter_map(Result::ok).flatten().chain(self.local_leaders()) {
            if let Some(leader) = leader {
                let seen = newest.entry(group).or_insert((term, leader));
                if term > seen.0 {
                    *seen = (term, leader);
                }
            }
        }
        let nodes = topology.nodes().map(|n| NodeView { id: n.id, region: n.region.clone(), state: n.state }).collect();
        let groups = topology
            .ranges()
            .map(|r| GroupView { group: r.group, region: r.region.clone(), replicas: r.replicas.clone(), leader: newest.get(&r.group).map(|(_, l)| *l) })
            .collect();
        (nodes, groups)
    }

    /// One step of balancing, when the topology has it on: plans with
    /// `plan_balance` and takes the step. Answers the step it took.
    async fn balance_once(&self) -> Option<BalanceStep> {
        if !self.topology().balance_enabled() {
            return None;
        }
        let (nodes, groups) = self.balance_view(PLACE_CHECK).await;
        let step = plan_balance(&nodes, &groups)?;
        let outcome = match step {
            BalanceStep::Replica { group, from, to } => self.move_replica(group, from, to).await.map(|_| ()),
            BalanceStep::Leader { group, to, .. } => self.transfer_leader(group, to).await,
        };
        match outcome {
            Ok(()) => {
                tracing::info!(node = self.id(), %step, "balanced");
                Some(step)
            }
            Err(e) => {
                tracing::info!(node = self.id(), %step, error = %e, "balancing step not taken; planned again next round");
                None
            }
        }
    }
}

/// How often the metadata group's leader looks for a replica to move off a
/// draining node.
pub const PLACE_CHECK: Duration = Duration::from_secs(2);

/// `group`'s range as the topology places it; the metadata group's is a
/// range of no key and no region, on its replicas.
pub fn placed_range(topology: &Topology, group: GroupId) -> Option<RangeInfo> {
    if group != METADATA_GROUP {
        return topology.range(group).cloned();
    }
    let replicas = Some(topology.metadata_replicas().to_vec()).filter(|r| !r.is_empty())?;
    let desc = storage::model::RangeDesc::metadata();
    Some(RangeInfo { group, region: String::new(), start_sku: desc.start_sku, end_sku: desc.end_sku, replicas, epoch: desc.epoch, home_slots: 0 })
}

/// The node to take `range`'s replica from node `leaving`: an up node of
/// its region (of any region for the metadata group, the leaving node's
/// first) that holds no replica of it, the one holding the fewest replicas,
/// then the lowest id; `None` when there is none.
pub fn drain_target(topology: &Topology, range: &RangeInfo, leaving: NodeId) -> Option<NodeId> {
    let region_of = |id: NodeId| topology.node(id).map(|n| n.region.as_str());
    let metadata = range.group == METADATA_GROUP;
    topology
        .nodes()
        .filter(|n| n.state == NodeState::Up && (metadata || n.region == range.region) && !range.replicas.contains(&n.id))
        .min_by_key(|n| (Some(n.region.as_str()) != region_of(leaving), topology.replica_count(n.id), n.id))
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
        self.set_node_state(id, NodeState::Removed).await
    }

    /// `stockctl balance on|off`: answers the topology that records it.
    pub async fn set_balance(&self, enabled: bool) -> Result<std::sync::Arc<storage::topology::Topology>, GroupError> {
        self.ensure_bootstrapped().await?;
        self.change_topology(TopologyCommand::SetBalance { enabled }).await?;
        self.refresh_topology().await;
        Ok(self.topology())
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

    /// One round of the placement loop, on the metadata group's leader
    /// only: a drain step if a node is draining, else a balancing step.
    /// At most one change per round (`PLACE_CHECK`): that is the rate limit.
    pub async fn place_once(&self) -> Option<BalanceStep> {
        if !self.group(storage::topology::METADATA_GROUP).is_some_and(|g| g.is_leader()) {
            return None;
        }
        let topology = self.topology();
        let draining = topology.nodes().any(|n| n.state == NodeState::Draining && topology.replica_count(n.id) > 0);
        if draining {
            return self.drain_once().await.map(|(group, from, to)| BalanceStep::Replica { group, from, to });
        }
        self.balance_once().await
    }

    /// Moves one replica off a draining node (the first such node, its
    /// first group), to `drain_target`. Answers what it moved.
    async fn drain_once(&self) -> Option<(GroupId, NodeId, NodeId)> {
        let topology = self.topology();
        let draining = topology.nodes().filter(|n| n.state == NodeState::Draining).map(|n| n.id).collect::<Vec<_>>();
        for from in draining {
            // Its ranges first; the metadata group's replica last.
            let metadata = topology.metadata_replicas().contains(&from).then(|| placed_range(&topology, METADATA_GROUP)).flatten();
            let Some(range) = topology.hosted_by(from).next().cloned().or(metadata) else { continue };
            let Some(to) = drain_target(&topology, &range, from) else {
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

/// How long a group's topology entry and its membership may disagree
/// before the group's leader makes the topology say what the group is.
/// Between a move's steps they disagree for a moment (the topology names
/// the new node before it is added, the old one until the voters changed);
/// a move whose driver stopped leaves them so for good. Longer than a
/// move's first two steps take before its new replica is a learner (the
/// snapshot it may wait for, `raft::group` SNAPSHOT_BEFORE_NEW_REPLICA_WAIT,
/// twice).
pub const RECONCILE_AFTER: Duration = Duration::from_secs(30);
/// The same while the node the topology names is a learner still being
/// caught up: a move's driver waits `MOVE_TIMEOUT` for that.
pub const RECONCILE_LEARNER_AFTER: Duration = Duration::from_secs(MOVE_TIMEOUT.as_secs() + 10);

/// What a group's leader does when the topology names other replicas than
/// the group's membership holds (a move stopped between its steps).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaFix {
    /// The topology names other nodes than the group's voters: it records
    /// the voters (a named node that is no voter retires its replica; a
    /// voter it did not name starts one again and is caught up).
    Record(Vec<NodeId>),
    /// Learners the topology does not name (their nodes hold no replica):
    /// the group forgets them.
    RemoveLearners(BTreeSet<NodeId>),
}

/// The fix for a group whose topology names `named` and whose membership
/// is `membership`, or `None` when they agree or a joint change is under
/// way (the same move command completes it).
pub fn replica_fix(named: &[NodeId], membership: &raft::group::Membership) -> Option<ReplicaFix> {
    if membership.joint {
        return None;
    }
    let named: BTreeSet<NodeId> = named.iter().copied().collect();
    if named != membership.voters {
        return Some(ReplicaFix::Record(membership.voters.iter().copied().collect()));
    }
    Some(ReplicaFix::RemoveLearners(membership.learners.clone())).filter(|_| !membership.learners.is_empty())
}

/// How long `fix` must have stood before it is made: longer while a node
/// the topology names is a learner still catching up.
fn fix_after(named: &[NodeId], membership: &raft::group::Membership) -> Duration {
    if named.iter().any(|id| membership.learners.contains(id)) {
        RECONCILE_LEARNER_AFTER
    } else {
        RECONCILE_AFTER
    }
}

impl Node {
    /// Every `PLACE_CHECK`, on the leader of each group, until the node
    /// stops: a fix (`replica_fix`) that has stood unchanged for its time
    /// (`fix_after`) is made, after a strong read of the topology shows it
    /// still due. So a move whose driver stopped between its steps never
    /// leaves the topology naming a replica the group does not have (a
    /// drain would then try to move it forever), nor the group a learner
    /// nobody catches up.
    pub(crate) async fn reconcile_replicas_when_due(node: std::sync::Weak<Node>) {
        let mut seen: std::collections::BTreeMap<GroupId, (ReplicaFix, std::time::Instant)> = std::collections::BTreeMap::new();
        loop {
            tokio::time::sleep(PLACE_CHECK).await;
            let Some(node) = node.upgrade() else { return };
            let topology = node.topology();
            if !topology.is_bootstrapped() {
                continue;
            }
            let leading: Vec<_> = node.all_groups().into_iter().filter(|g| g.is_leader()).collect();
            seen.retain(|id, _| leading.iter().any(|g| g.id == *id));
            for group in leading {
                let Some(named) = placed_range(&topology, group.id).map(|r| r.replicas) else { continue };
                let membership = group.membership();
                let Some(fix) = replica_fix(&named, &membership) else {
                    seen.remove(&group.id);
                    continue;
                };
                let since = match seen.get(&group.id) {
                    Some((same, since)) if *same == fix => *since,
                    _ => {
                        seen.insert(group.id, (fix, std::time::Instant::now()));
                        continue;
                    }
                };
                if since.elapsed() < fix_after(&named, &membership) {
                    continue;
                }
                seen.remove(&group.id);
                node.make_replica_fix(&group, fix).await;
            }
        }
    }

    /// Makes `fix` for `group` (led here) if a strong read of the topology
    /// still calls for it.
    async fn make_replica_fix(&self, group: &raft::Group, fix: ReplicaFix) {
        self.refresh_topology().await;
        let Some(named) = placed_range(&self.topology(), group.id).map(|r| r.replicas) else { return };
        if replica_fix(&named, &group.membership()).as_ref() != Some(&fix) {
            return;
        }
        let outcome = match &fix {
            ReplicaFix::Record(voters) => self.change_topology(TopologyCommand::SetReplicas { group: group.id, replicas: voters.clone() }).await.map(|_| ()),
            ReplicaFix::RemoveLearners(learners) => group.remove_learners(learners.clone()).await,
        };
        match outcome {
            Ok(()) => {
                tracing::warn!(node = self.id(), group = group.id, named = ?named, ?fix, "the topology and the group's membership disagreed (a move stopped between its steps): fixed");
                self.refresh_topology().await;
            }
            Err(e) => tracing::info!(node = self.id(), group = group.id, ?fix, error = %e, "replica fix not made; tried again later"),
        }
    }
}

/// A node as the balancer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub id: NodeId,
    pub region: String,
    pub state: NodeState,
}

/// A range as the balancer sees it: its replicas (from the topology) and
/// its leader (as the replicas report it; `None` when unknown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupView {
    pub group: GroupId,
    pub region: String,
    pub replicas: Vec<NodeId>,
    pub leader: Option<NodeId>,
}

/// One step of the balancer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BalanceStep {
    /// Move `group`'s replica from `from` to `to`.
    Replica { group: GroupId, from: NodeId, to: NodeId },
    /// Hand `group`'s leadership from `from` to `to` (a replica of it).
    Leader { group: GroupId, from: NodeId, to: NodeId },
}

impl std::fmt::Display for BalanceStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BalanceStep::Replica { group, from, to } => write!(f, "move group {group}'s replica from node {from} to node {to}"),
            BalanceStep::Leader { group, from, to } => write!(f, "move group {group}'s leader from node {from} to node {to}"),
        }
    }
}

/// The next step that evens out replicas, then leaders, per up node of a
/// region, or `None` when every region is balanced: no up node holds two
/// more replicas (or leads two more groups) than another that could take
/// one. A replica moves to the least loaded node (a follower's replica
/// first, so that no leader changes); a leader moves to a replica of its
/// group only, of a group of at most `raft::LEADER_MOVE_VOTERS_MAX`
/// replicas. Ties go to the lowest ids, so every run plans the same step.
pub fn plan_balance(nodes: &[NodeView], groups: &[GroupView]) -> Option<BalanceStep> {
    let regions: BTreeSet<&str> = nodes.iter().map(|n| n.region.as_str()).collect();
    for region in &regions {
        let up: Vec<NodeId> = nodes.iter().filter(|n| n.region == *region && n.state == NodeState::Up).map(|n| n.id).collect();
        let in_region: Vec<&GroupView> = groups.iter().filter(|g| g.region == *region).collect();
        let replicas = |id: NodeId| in_region.iter().filter(|g| g.replicas.contains(&id)).count();
        if let Some(step) = even_out(&up, replicas, |from, to| {
            let movable = |g: &&&GroupView| g.replicas.contains(&from) && !g.replicas.contains(&to);
            let pick = in_region.iter().filter(movable).min_by_key(|g| (g.leader == Some(from), g.group))?;
            Some(BalanceStep::Replica { group: pick.group, from, to })
        }) {
            return Some(step);
        }
    }
    for region in &regions {
        let up: Vec<NodeId> = nodes.iter().filter(|n| n.region == *region && n.state == NodeState::Up).map(|n| n.id).collect();
        let in_region: Vec<&GroupView> = groups.iter().filter(|g| g.region == *region).collect();
        let leads = |id: NodeId| in_region.iter().filter(|g| g.leader == Some(id)).count();
        if let Some(step) = even_out(&up, leads, |from, to| {
            let pick = in_region
                .iter()
                .filter(|g| g.leader == Some(from) && g.replicas.contains(&to) && g.replicas.len() <= raft::LEADER_MOVE_VOTERS_MAX)
                .min_by_key(|g| g.group)?;
            Some(BalanceStep::Leader { group: pick.group, from, to })
        }) {
            return Some(step);
        }
    }
    None
}

/// Among `up` nodes counted by `count`: from the most loaded to each less
/// loaded one with at least two fewer, the first step `step` finds.
fn even_out(up: &[NodeId], count: impl Fn(NodeId) -> usize, step: impl Fn(NodeId, NodeId) -> Option<BalanceStep>) -> Option<BalanceStep> {
    let mut by_load: Vec<(usize, NodeId)> = up.iter().map(|&id| (count(id), id)).collect();
    by_load.sort();
    for &(high, from) in by_load.iter().rev() {
        for &(low, to) in &by_load {
            if low + 2 > high {
                break;
            }
            if let Some(found) = step(from, to) {
                return Some(found);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(ids: &[NodeId]) -> Vec<NodeView> {
        ids.iter().map(|&id| NodeView { id, region: "eu".into(), state: NodeState::Up }).collect()
    }

    fn group(group: GroupId, replicas: &[NodeId], leader: NodeId) -> GroupView {
        GroupView { group, region: "eu".into(), replicas: replicas.to_vec(), leader: Some(leader) }
    }

    /// Applies steps until the plan is empty; answers the steps taken.
    fn settle(nodes: &[NodeView], groups: &mut [GroupView]) -> Vec<BalanceStep> {
        let mut steps = Vec::new();
        while let Some(step) = plan_balance(nodes, groups) {
            assert!(steps.len() < 100, "the balancer does not converge: {steps:?}");
            match step {
                BalanceStep::Replica { group, from, to } => {
                    let g = groups.iter_mut().find(|g| g.group == group).expect("planned group");
                    let at = g.replicas.iter().position(|&r| r == from).expect("from holds it");
                    g.replicas[at] = to;
                    if g.leader == Some(from) {
                        g.leader = Some(g.replicas[0]);
                    }
                }
                BalanceStep::Leader { group, to, .. } => groups.iter_mut().find(|g| g.group == group).expect("planned group").leader = Some(to),
            }
            steps.push(step);
        }
        steps
    }

    #[test]
    fn a_joined_node_takes_its_share_of_replicas_then_of_leaders() {
        let view = nodes(&[1, 2, 3, 4]);
        let mut groups: Vec<GroupView> = (1..=8).map(|g| group(g, &[1, 2, 3], [1, 2, 3][(g as usize) % 3])).collect();
        let steps = settle(&view, &mut groups);
        let replicas = |id| groups.iter().filter(|g| g.replicas.contains(&id)).count();
        let leaders = |id| groups.iter().filter(|g| g.leader == Some(id)).count();
        assert_eq!([1, 2, 3, 4].map(replicas), [6, 6, 6, 6], "{steps:?}");
        let counts = [1, 2, 3, 4].map(leaders);
        assert!(counts.iter().max() <= counts.iter().min().map(|m| m + 1).as_ref(), "{counts:?} after {steps:?}");
        assert_eq!(steps.iter().filter(|s| matches!(s, BalanceStep::Replica { .. })).count(), 6, "only the moves needed: {steps:?}");
        // A follower's replica moves first: no leader changes for it.
        let BalanceStep::Replica { group: first, from, .. } = steps[0] else { panic!("{steps:?}") };
        assert_ne!((1..=8).map(|g| group(g, &[1, 2, 3], [1, 2, 3][(g as usize) % 3])).find(|g| g.group == first).expect("planned group").leader, Some(from));
    }

    #[test]
    fn leaders_piled_on_one_node_after_restarts_spread_over_the_replicas() {
        let view = nodes(&[1, 2, 3]);
        let mut groups: Vec<GroupView> = (1..=8).map(|g| group(g, &[1, 2, 3], 3)).collect();
        let steps = settle(&view, &mut groups);
        assert!(steps.iter().all(|s| matches!(s, BalanceStep::Leader { from: 3, .. })), "{steps:?}");
        let counts = [1, 2, 3].map(|id| groups.iter().filter(|g| g.leader == Some(id)).count());
        assert_eq!(counts, [3, 2, 3], "{steps:?}");
    }

    #[test]
    fn a_balanced_region_plans_nothing_and_others_are_not_counted() {
        let mut view = nodes(&[1, 2, 3]);
        view.push(NodeView { id: 4, region: "us".into(), state: NodeState::Up });
        view.push(NodeView { id: 5, region: "eu".into(), state: NodeState::Draining });
        let groups: Vec<GroupView> = (1..=3).map(|g| group(g, &[1, 2, 3], g as NodeId)).collect();
        assert_eq!(plan_balance(&view, &groups), None, "a region of its own and a draining node take nothing");
    }

    #[test]
    fn a_leader_moves_only_to_a_replica_of_a_small_enough_group_and_unknown_leaders_count_for_nobody() {
        let view = nodes(&[1, 2, 3, 4, 5]);
        // Node 1 leads both, but of five replicas each: no move is possible.
        let big = vec![group(1, &[1, 2, 3, 4, 5], 1), group(2, &[1, 2, 3, 4, 5], 1)];
        assert_eq!(plan_balance(&view, &big), None);
        let mut unknown = vec![group(1, &[1, 2, 3], 1), group(2, &[1, 2, 3], 1)];
        unknown[1].leader = None;
        let view = nodes(&[1, 2, 3]);
        assert_eq!(plan_balance(&view, &unknown), None, "1 against 0 is within one");
    }

    fn membership(voters: &[NodeId], learners: &[NodeId], joint: bool) -> raft::group::Membership {
        raft::group::Membership { voters: voters.iter().copied().collect(), learners: learners.iter().copied().collect(), joint }
    }

    #[test]
    fn a_move_stopped_between_its_steps_is_fixed_from_the_groups_membership() {
        // Agreement, and a joint change (the same move command completes it).
        assert_eq!(replica_fix(&[3, 1, 2], &membership(&[1, 2, 3], &[], false)), None);
        assert_eq!(replica_fix(&[1, 2, 3, 4], &membership(&[1, 2, 3], &[4], true)), None);
        // Stopped after the voters changed, before the topology recorded
        // them: node 1 is named but no longer a voter.
        assert_eq!(replica_fix(&[1, 2, 3, 4], &membership(&[2, 3, 4], &[], false)), Some(ReplicaFix::Record(vec![2, 3, 4])));
        assert_eq!(fix_after(&[1, 2, 3, 4], &membership(&[2, 3, 4], &[], false)), RECONCILE_AFTER);
        // Stopped after step 1: node 4 named, never added.
        assert_eq!(replica_fix(&[1, 2, 3, 4], &membership(&[1, 2, 3], &[], false)), Some(ReplicaFix::Record(vec![1, 2, 3])));
        // A learner being caught up: the fix waits longer than a move does.
        assert_eq!(replica_fix(&[1, 2, 3, 4], &membership(&[1, 2, 3], &[4], false)), Some(ReplicaFix::Record(vec![1, 2, 3])));
        assert!(fix_after(&[1, 2, 3, 4], &membership(&[1, 2, 3], &[4], false)) > MOVE_TIMEOUT);
        // A voter the topology does not name is named again.
        assert_eq!(replica_fix(&[1, 2], &membership(&[1, 2, 3], &[], false)), Some(ReplicaFix::Record(vec![1, 2, 3])));
        // A learner nobody names (its node holds no replica) is forgotten.
        assert_eq!(replica_fix(&[1, 2, 3], &membership(&[1, 2, 3], &[5], false)), Some(ReplicaFix::RemoveLearners([5].into())));
    }
}
