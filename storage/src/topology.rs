//! The topology: the state machine the metadata group replicates, the one
//! place where a node, a range, a replica set or a placement rule changes
//! (every node and client holds a cached copy and refreshes it on a stale
//! answer).
//!
//! It holds:
//! - nodes (id, addresses, region, up / draining / removed);
//! - ranges (region, `[start, end)`, group, replicas, epoch), which tile each
//!   region's key space;
//! - the home slots of reservation ids per region: each of the region's
//!   `stockd_home::SLOTS` slots of the hash space of ids is held by one of
//!   its ranges (`RangeInfo::home_slots`). A split hands the upper half of
//!   the parent's slots to the child, with their records; a merge hands the
//!   right side's to the left (`stockd_home::split_slots`, which the
//!   group's own split applies too);
//! - group id allocation: ids grow and are never reused, not even after a
//!   merge retired one;
//! - placement rules (replication factor per region);
//! - the metadata group's own replicas (group 0, whose voters change by the
//!   same moves as a range's; any region: the topology holds no user data).
//!
//! Like the inventory, `apply` is a pure function of the state and the
//! command; a refused command changes nothing.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use serde::Deserialize;
use serde::Serialize;

use crate::range::GroupId;
use crate::range::RangeDesc;
pub use crate::range::METADATA_GROUP;

/// A node id, as the Raft layer numbers nodes.
pub type NodeId = u64;

/// Most replicas a placement rule may ask for.
pub const REPLICATION_FACTOR_MAX: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeState {
    Up,
    /// Being emptied: the placement loop moves its replicas and leaders away.
    Draining,
    /// Forgotten for placement; its id is never given to another node.
    Removed,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Up => "up",
            NodeState::Draining => "draining",
            NodeState::Removed => "removed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: NodeId,
    /// Client plane address (`host:port`).
    pub addr: String,
    /// Peer plane address.
    pub peer_addr: Option<String>,
    pub region: String,
    pub state: NodeState,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeInfo {
    pub group: GroupId,
    pub region: String,
    /// Inclusive; "" is the start of the key space.
    pub start_sku: String,
    /// Exclusive; `None` is unbounded.
    pub end_sku: Option<String>,
    pub replicas: Vec<NodeId>,
    pub epoch: u64,
    /// The home slots it holds (`RangeDesc::home_slots`).
    pub home_slots: u64,
}

impl RangeInfo {
    pub fn contains(&self, sku: &str) -> bool {
        self.desc().contains(sku)
    }

    /// What the group's own state machine holds of the range.
    pub fn desc(&self) -> RangeDesc {
        RangeDesc { group: self.group, start_sku: self.start_sku.clone(), end_sku: self.end_sku.clone(), epoch: self.epoch, home_slots: self.home_slots }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub replication_factor: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TopologyCommand {
    /// The first command of a new cluster: its nodes, ranges and rules
    /// (from the static `[cluster]` configuration).
    Bootstrap {
        nodes: Vec<NodeInfo>,
        ranges: Vec<RangeInfo>,
        placement: BTreeMap<String, Placement>,
        /// Whether the placement loop balances (see `SetBalance`).
        balance: bool,
        /// The metadata group's first voters.
        metadata: Vec<NodeId>,
    },
    AddNode(NodeInfo),
    SetNodeState {
        node: NodeId,
        state: NodeState,
    },
    /// Reserves the next group id (for a split); answered with it.
    AllocateGroup,
    /// Records a split applied in `parent`'s log at `parent_epoch`: `[at,
    /// end)` became group `child` (an allocated id) on the same replicas.
    Split {
        parent: GroupId,
        parent_epoch: u64,
        at_sku: String,
        child: GroupId,
    },
    /// Records a merge applied in `left`'s log: `right` (adjacent; its
    /// records travelled in `left`'s log, so the two need not share
    /// replicas) is now part of `left`, on `left`'s replicas, and its id
    /// retired.
    Merge {
        left: GroupId,
        left_epoch: u64,
        right: GroupId,
        right_epoch: u64,
    },
    /// The group's voters after a membership change (group 0: the metadata
    /// group's own).
    SetReplicas {
        group: GroupId,
        replicas: Vec<NodeId>,
    },
    SetPlacement {
        region: String,
        placement: Placement,
    },
    // Variants are appended: stored logs name them by position.
    /// A node joining a running cluster (`stockd start --join`): added, up,
    /// with no replica; a repeat with the same addresses and region changes
    /// nothing, anything else about a known id is refused.
    Join(NodeInfo),
    /// `stockctl balance on|off`: whether the placement loop balances
    /// replicas and leaders.
    SetBalance {
        enabled: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TopologyAnswer {
    Done,
    Allocated(GroupId),
}

/// Why a topology command was refused; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum TopologyError {
    #[error("the topology is bootstrapped already")]
    Bootstrapped,
    #[error("the topology is not bootstrapped yet")]
    NotBootstrapped,
    #[error("no node {0}")]
    UnknownNode(NodeId),
    #[error("no group {0}")]
    UnknownGroup(GroupId),
    #[error("group {group} is at epoch {current}, the command names epoch {named}")]
    StaleEpoch { group: GroupId, current: u64, named: u64 },
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> TopologyError {
    TopologyError::Invalid { field, reason: reason.into() }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    /// Grows with every change, so a cached copy can tell it is behind.
    pub version: u64,
    nodes: BTreeMap<NodeId, NodeInfo>,
    ranges: BTreeMap<GroupId, RangeInfo>,
    placement: BTreeMap<String, Placement>,
    /// Allocated and not yet used by a split.
    allocated: BTreeSet<GroupId>,
    /// The next id `AllocateGroup` gives.
    next_group: GroupId,
    /// The placement loop balances replicas and leaders only while this is
    /// false (`stockctl balance on|off`); it drains nodes either way.
    balance_paused: bool,
    /// The metadata group's replicas (group 0 has no range).
    metadata: Vec<NodeId>,
}

impl Topology {
    pub fn is_bootstrapped(&self) -> bool {
        self.next_group > 0
    }

    /// True unless `stockctl balance off` paused the balancing.
    pub fn balance_enabled(&self) -> bool {
        !self.balance_paused
    }

    pub fn nodes(&self) -> impl Iterator<Item = &NodeInfo> {
        self.nodes.values()
    }

    pub fn ranges(&self) -> impl Iterator<Item = &RangeInfo> {
        self.ranges.values()
    }

    pub fn range(&self, group: GroupId) -> Option<&RangeInfo> {
        self.ranges.get(&group)
    }

    /// The metadata group's replicas, as the last move recorded them.
    pub fn metadata_replicas(&self) -> &[NodeId] {
        &self.metadata
    }

    /// How many replicas `node` holds, the metadata group's included.
    pub fn replica_count(&self, node: NodeId) -> usize {
        self.hosted_by(node).count() + usize::from(self.metadata.contains(&node))
    }

    pub fn placement(&self, region: &str) -> Option<Placement> {
        self.placement.get(region).copied()
    }

    /// The group serving `sku` in `region`.
    pub fn group_for(&self, region: &str, sku: &str) -> Option<&RangeInfo> {
        self.ranges.values().find(|r| r.region == region && r.contains(sku))
    }

    /// The groups holding `region`'s home slots, in slot order
    /// (`stockd_home::SLOTS` of them, or none for a region without ranges):
    /// the record of reservation `id` is in `slots[stockd_home::slot(id,
    /// slots.len())]`. Clients route by this table.
    pub fn home_slots(&self, region: &str) -> Vec<GroupId> {
        let mut slots = vec![None; stockd_home::SLOTS];
        for range in self.groups_in(region) {
            for (s, slot) in slots.iter_mut().enumerate() {
                if range.home_slots & (1 << s) != 0 {
                    *slot = Some(range.group);
                }
            }
        }
        slots.into_iter().collect::<Option<Vec<_>>>().unwrap_or_default()
    }

    /// The home group of reservation `id` in `region`: the range holding
    /// the id's home slot.
    pub fn home_for(&self, region: &str, id: &str) -> Option<&RangeInfo> {
        let bit = stockd_home::slot_bit(id);
        self.ranges.values().find(|r| r.region == region && r.home_slots & bit != 0)
    }

    pub fn groups_in<'a>(&'a self, region: &'a str) -> impl Iterator<Item = &'a RangeInfo> + 'a {
        self.ranges.values().filter(move |r| r.region == region)
    }

    /// The ranges `node` replicates.
    pub fn hosted_by(&self, node: NodeId) -> impl Iterator<Item = &RangeInfo> {
        self.ranges.values().filter(move |r| r.replicas.contains(&node))
    }

    /// True when `group` was allocated for a split that is not recorded yet.
    pub fn is_allocated(&self, group: GroupId) -> bool {
        self.allocated.contains(&group)
    }

    pub fn node(&self, id: NodeId) -> Option<&NodeInfo> {
        self.nodes.get(&id)
    }

    /// Applies `command`; a refusal leaves everything as it was.
    pub fn apply(&mut self, command: &TopologyCommand) -> Result<TopologyAnswer, TopologyError> {
        if !self.is_bootstrapped() && !matches!(command, TopologyCommand::Bootstrap { .. }) {
            return Err(TopologyError::NotBootstrapped);
        }
        let mut next = self.clone();
        let answer = next.change(command)?;
        next.version += 1;
        debug_assert_eq!(next.check_invariants(), Ok(()));
        *self = next;
        Ok(answer)
    }

    fn change(&mut self, command: &TopologyCommand) -> Result<TopologyAnswer, TopologyError> {
        match command {
            TopologyCommand::Bootstrap { nodes, ranges, placement, balance, metadata } => {
                self.balance_paused = !balance;
                self.bootstrap(nodes, ranges, placement, metadata)
            }
            TopologyCommand::AddNode(node) => self.add_node(node),
            TopologyCommand::Join(node) => self.join(node),
            TopologyCommand::SetNodeState { node, state } => self.set_node_state(*node, *state),
            TopologyCommand::AllocateGroup => {
                let id = self.next_group;
                self.next_group = id.checked_add(1).ok_or_else(|| invalid("group", "group ids are exhausted"))?;
                self.allocated.insert(id);
                return Ok(TopologyAnswer::Allocated(id));
            }
            TopologyCommand::Split { parent, parent_epoch, at_sku, child } => self.split(*parent, *parent_epoch, at_sku, *child),
            TopologyCommand::Merge { left, left_epoch, right, right_epoch } => self.merge((*left, *left_epoch), (*right, *right_epoch)),
            TopologyCommand::SetReplicas { group, replicas } => self.set_replicas(*group, replicas),
            TopologyCommand::SetPlacement { region, placement } => {
                check_placement(placement)?;
                self.placement.insert(region.clone(), *placement);
                Ok(())
            }
            TopologyCommand::SetBalance { enabled } => {
                self.balance_paused = !enabled;
                Ok(())
            }
        }?;
        Ok(TopologyAnswer::Done)
    }

    fn bootstrap(
        &mut self,
        nodes: &[NodeInfo],
        ranges: &[RangeInfo],
        placement: &BTreeMap<String, Placement>,
        metadata: &[NodeId],
    ) -> Result<(), TopologyError> {
        if self.is_bootstrapped() {
            return Err(TopologyError::Bootstrapped);
        }
        for node in nodes {
            self.add_node(node)?;
        }
        self.check_metadata_replicas(metadata).map_err(|e| match e {
            TopologyError::Invalid { reason, .. } => invalid("metadata", reason),
            other => other,
        })?;
        self.metadata = metadata.to_vec();
        for range in ranges {
            if range.group == METADATA_GROUP || self.ranges.insert(range.group, range.clone()).is_some() {
                return Err(invalid("ranges", format!("group {} is the metadata group's or given twice", range.group)));
            }
            self.check_replicas(range, &range.replicas)?;
        }
        for rule in placement.values() {
            check_placement(rule)?;
        }
        self.placement = placement.clone();
        self.next_group = self.ranges.keys().max().map_or(1, |g| g + 1);
        self.check_invariants().map_err(|reason| invalid("ranges", reason))
    }

    fn add_node(&mut self, node: &NodeInfo) -> Result<(), TopologyError> {
        if self.nodes.contains_key(&node.id) || node.id == 0 {
            return Err(invalid("node.id", format!("node {} exists (or was removed: ids are never reused)", node.id)));
        }
        if node.addr.is_empty() || node.region.is_empty() {
            return Err(invalid("node", "a node needs an address and a region"));
        }
        self.nodes.insert(node.id, NodeInfo { state: NodeState::Up, ..node.clone() });
        Ok(())
    }

    fn join(&mut self, node: &NodeInfo) -> Result<(), TopologyError> {
        match self.nodes.get(&node.id) {
            None => self.add_node(node),
            Some(known) if known.state == NodeState::Removed => {
                Err(invalid("node.id", format!("node {} was removed: ids are never reused; join with a new id", node.id)))
            }
            Some(known) if (&known.addr, &known.peer_addr, &known.region) == (&node.addr, &node.peer_addr, &node.region) => Ok(()),
            Some(known) => Err(invalid(
                "node.id",
                format!(
                    "node {} is in the cluster already at {} (peer {}) in region {}; a node joins with its own id",
                    node.id,
                    known.addr,
                    known.peer_addr.as_deref().unwrap_or("-"),
                    known.region
                ),
            )),
        }
    }

    fn set_node_state(&mut self, id: NodeId, state: NodeState) -> Result<(), TopologyError> {
        let current = self.nodes.get(&id).ok_or(TopologyError::UnknownNode(id))?.state;
        if current == NodeState::Removed {
            return Err(invalid("node.state", format!("node {id} was removed")));
        }
        if state == NodeState::Removed {
            if self.metadata.contains(&id) {
                return Err(invalid("node.state", format!("node {id} still holds a replica of group {METADATA_GROUP} (the metadata group): drain it first")));
            }
            if let Some(range) = self.ranges.values().find(|r| r.replicas.contains(&id)) {
                return Err(invalid("node.state", format!("node {id} still holds a replica of group {}: drain it first", range.group)));
            }
        }
        if let Some(node) = self.nodes.get_mut(&id) {
            node.state = state;
        }
        Ok(())
    }

    fn at_epoch(&self, group: GroupId, named: u64) -> Result<&RangeInfo, TopologyError> {
        let range = self.ranges.get(&group).ok_or(TopologyError::UnknownGroup(group))?;
        if range.epoch != named {
            return Err(TopologyError::StaleEpoch { group, current: range.epoch, named });
        }
        Ok(range)
    }

    fn split(&mut self, parent: GroupId, epoch: u64, at: &str, child: GroupId) -> Result<(), TopologyError> {
        let range = self.at_epoch(parent, epoch)?.clone();
        if !range.desc().splits_at(at) {
            return Err(invalid("at_sku", format!("{at:?} is not strictly inside {}", range.desc())));
        }
        if !self.allocated.remove(&child) {
            return Err(invalid("child", format!("group {child} was not allocated for a split, or is used")));
        }
        let (kept, moved) = stockd_home::split_slots(range.home_slots);
        let right = RangeInfo { group: child, start_sku: at.to_owned(), epoch: epoch + 1, home_slots: moved, ..range.clone() };
        self.ranges.insert(parent, RangeInfo { end_sku: Some(at.to_owned()), epoch: epoch + 1, home_slots: kept, ..range });
        self.ranges.insert(child, right);
        Ok(())
    }

    fn merge(&mut self, (left, left_epoch): (GroupId, u64), (right, right_epoch): (GroupId, u64)) -> Result<(), TopologyError> {
        let l = self.at_epoch(left, left_epoch)?.clone();
        let r = self.at_epoch(right, right_epoch)?.clone();
        if l.region != r.region || l.end_sku.as_deref() != Some(r.start_sku.as_str()) {
            return Err(invalid("right", format!("{} does not follow {} in one region", r.desc(), l.desc())));
        }
        self.ranges.remove(&right);
        let home_slots = l.home_slots | r.home_slots;
        self.ranges.insert(left, RangeInfo { end_sku: r.end_sku, epoch: l.epoch.max(r.epoch) + 1, home_slots, ..l });
        Ok(())
    }

    fn set_replicas(&mut self, group: GroupId, replicas: &[NodeId]) -> Result<(), TopologyError> {
        if group == METADATA_GROUP {
            self.check_metadata_replicas(replicas)?;
            self.metadata = replicas.to_vec();
            return Ok(());
        }
        let range = self.ranges.get(&group).ok_or(TopologyError::UnknownGroup(group))?.clone();
        self.check_replicas(&range, replicas)?;
        self.ranges.insert(group, RangeInfo { replicas: replicas.to_vec(), ..range });
        Ok(())
    }

    /// The metadata group's replicas: as a range's, of any region (the
    /// topology holds no user data).
    fn check_metadata_replicas(&self, replicas: &[NodeId]) -> Result<(), TopologyError> {
        self.check_replica_set(METADATA_GROUP, None, replicas)
    }

    fn check_replicas(&self, range: &RangeInfo, replicas: &[NodeId]) -> Result<(), TopologyError> {
        self.check_replica_set(range.group, Some(&range.region), replicas)
    }

    /// 1 to `REPLICATION_FACTOR_MAX` replicas (one more while a move adds
    /// its new one), each named once, a known node not removed, of `region`
    /// when one is given.
    fn check_replica_set(&self, group: GroupId, region: Option<&str>, replicas: &[NodeId]) -> Result<(), TopologyError> {
        if replicas.is_empty() || replicas.len() > REPLICATION_FACTOR_MAX + 1 {
            return Err(invalid("replicas", format!("group {group} needs 1 to {} replicas", REPLICATION_FACTOR_MAX + 1)));
        }
        if replicas.iter().collect::<BTreeSet<_>>().len() != replicas.len() {
            return Err(invalid("replicas", format!("group {group}: a node is named twice")));
        }
        for id in replicas {
            let node = self.nodes.get(id).ok_or(TopologyError::UnknownNode(*id))?;
            match region {
                _ if node.state == NodeState::Removed => return Err(invalid("replicas", format!("node {id} is removed"))),
                Some(region) if node.region != region => return Err(invalid("replicas", format!("node {id} is not in region {region}"))),
                _ => {}
            }
        }
        Ok(())
    }

    /// The ranges tile each region's key space; replicas are live nodes of
    /// the range's region; each home slot of a region is held by exactly
    /// one of its ranges; ids are below
    /// the next one given.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut by_region: BTreeMap<&str, Vec<&RangeInfo>> = BTreeMap::new();
        for range in self.ranges.values() {
            by_region.entry(range.region.as_str()).or_default().push(range);
        }
        for (region, mut ranges) in by_region {
            ranges.sort_by(|a, b| a.start_sku.cmp(&b.start_sku));
            if !ranges[0].start_sku.is_empty() {
                return Err(format!("region {region} does not start at the key space's start"));
            }
            for pair in ranges.windows(2) {
                if pair[0].end_sku.as_deref() != Some(pair[1].start_sku.as_str()) {
                    return Err(format!("region {region}: group {} does not end where group {} starts", pair[0].group, pair[1].group));
                }
            }
            if ranges.last().is_some_and(|r| r.end_sku.is_some()) {
                return Err(format!("region {region} does not reach the key space's end"));
            }
            if ranges.iter().any(|r| r.end_sku.as_deref().is_some_and(|end| end <= r.start_sku.as_str())) {
                return Err(format!("region {region} has an empty range"));
            }
            let mut held = 0u64;
            for range in &ranges {
                if held & range.home_slots != 0 {
                    return Err(format!("region {region}: a home slot of group {} is held by another group too", range.group));
                }
                held |= range.home_slots;
            }
            if held != stockd_home::ALL_SLOTS {
                return Err(format!("region {region}: home slots {:#x} are held by no group", !held));
            }
        }
        if self.is_bootstrapped() {
            self.check_metadata_replicas(&self.metadata).map_err(|e| e.to_string())?;
        }
        for range in self.ranges.values() {
            self.check_replicas(range, &range.replicas).map_err(|e| e.to_string())?;
            if range.group >= self.next_group || self.allocated.contains(&range.group) {
                return Err(format!("group {} is not below the next id {} or still marked allocated", range.group, self.next_group));
            }
        }
        Ok(())
    }
}

fn check_placement(rule: &Placement) -> Result<(), TopologyError> {
    if rule.replication_factor == 0 || rule.replication_factor > REPLICATION_FACTOR_MAX {
        return Err(invalid("replication_factor", format!("{} is not in 1..={REPLICATION_FACTOR_MAX}", rule.replication_factor)));
    }
    Ok(())
}
