//! The metadata group on every node: the topology it replicates (group 0,
//! `storage::topology`), this node's copy of it, and the work that keeps the
//! two and the running replicas in step.
//!
//! - **Bootstrap.** A new cluster's `[cluster]` settings are the input of
//!   the topology's first command. Until the metadata group answers, a node
//!   routes with the same topology computed locally from that input.
//! - **Watch.** Every node reads the topology every `TOPOLOGY_REFRESH` (at
//!   once after a stale-route answer) and takes a newer version as its copy,
//!   kept on disk so a restart routes with what it last knew.
//! - **Replicas follow the topology.** A range this node replicates but does
//!   not run is started: from its stored state (a split's child) or empty,
//!   to be caught up by its leader's snapshot. A child's key range still
//!   inside a group running here (its parent, before applying the split) is
//!   left until the split applies here: the split starts it.
//! - **Splits are recorded.** The split itself is a command in the parent's
//!   log; the topology records it afterwards. If the node that drove it
//!   stopped in between, the child's leader records it: the child's own
//!   range says everything (`[at, end)`, the parent's epoch + 1).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Weak;
use std::time::Duration;

use raft::state_machine::SplitApplied;
use raft::Group;
use raft::GroupError;
use storage::codec;
use storage::keys;
use storage::model::Command;
use storage::model::GroupId;
use storage::model::Line;
use storage::model::Outcome;
use storage::model::RangeDesc;
use storage::topology::RangeInfo;
use storage::topology::TopologyAnswer;
use storage::topology::TopologyCommand;
use storage::topology::METADATA_GROUP;
use storage::Durability;
use storage::Table;
use storage::WriteBatch;
use tokio::sync::mpsc;

use crate::node::Node;
use crate::read::Consistency;
use crate::read::ReadQuery;

/// How often a node reads the topology when nothing told it to sooner.
pub const TOPOLOGY_REFRESH: Duration = Duration::from_millis(500);
/// How far behind the metadata group a replica of it may be for this node
/// to read the topology there (every group's leader ticks every 250 ms, so
/// only a replica cut off from the group falls this far behind).
pub const TOPOLOGY_STALENESS_MAX_MS: u64 = 5_000;
/// How often a node looks for a split due in the groups it leads.
pub const SPLIT_CHECK: Duration = Duration::from_secs(1);
/// A group split by load rests this long (its load meter still counts what
/// moved away); one whose split was refused, `SPLIT_RETRY`.
pub const SPLIT_REST: Duration = Duration::from_secs(raft::load::LOAD_WINDOW_S);
pub const SPLIT_RETRY: Duration = Duration::from_secs(5);
/// Keys sampled before a load split picks where to cut.
pub const LOAD_SAMPLES_MIN: u64 = 32;

/// Where a group should be split by itself, and by which trigger (`"load"`
/// or `"size"`), if one fires: a pure function of what its leader sees.
///
/// Load, when the commands/s pass the policy's bound and enough keys were
/// sampled: if one SKU has at least half of the sample, it is given a range
/// of its own, in two splits (first at the SKU, then just after it at
/// `SKU + "!"`: no valid SKU sorts between, as a SKU has no space or control
/// character); otherwise the cut goes where half the sampled load is on
/// each side. Size, when the group holds more positions than the bound: at
/// its middle SKU (`middle`, asked only then).
pub fn split_due(
    policy: &crate::config::SplitPolicy,
    range: &RangeDesc,
    (positions, load): (u64, f64),
    sample: &BTreeMap<String, u64>,
    middle: impl FnOnce() -> Option<String>,
) -> Option<(String, &'static str)> {
    let total: u64 = sample.values().sum();
    let inside = |at: String| range.splits_at(&at).then_some(at);
    if policy.load_cmds_per_s > 0 && load > policy.load_cmds_per_s as f64 && total >= LOAD_SAMPLES_MIN {
        let hottest = sample.iter().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)));
        let at = match hottest {
            Some((hot, n)) if n * 2 >= total => inside(hot.clone()).or_else(|| inside(format!("{hot}!"))),
            _ => {
                let mut seen = 0;
                sample
                    .iter()
                    .find(|(_, n)| {
                        seen += **n;
                        seen * 2 >= total
                    })
                    .and_then(|(key, _)| inside(key.clone()))
            }
        };
        if let Some(at) = at {
            return Some((at, "load"));
        }
    }
    if policy.positions_max > 0 && positions > policy.positions_max {
        return middle().and_then(inside).map(|at| (at, "size"));
    }
    None
}

/// How often the parent's leader stands for a new child's leadership while
/// the child has none, and how many times at most (about one election
/// timeout in all).
const CHILD_CAMPAIGN_RETRY: Duration = Duration::from_millis(100);
const CHILD_CAMPAIGNS_MAX: usize = 15;

impl Node {
    /// Starts each split's child on this node as its parent applies the split.
    pub(crate) async fn start_children(node: Weak<Node>, mut splits: mpsc::UnboundedReceiver<SplitApplied>) {
        while let Some(split) = splits.recv().await {
            let Some(node) = node.upgrade() else { return };
            if node.failpoint(crate::failpoint::SPLIT_DROPS_RESERVATIONS) {
                node.drop_records_of(split.child.group, &[keys::STATE_RESERVATION, keys::STATE_INTENT]);
            }
            if node.failpoint(crate::failpoint::SPLIT_DROPS_HOMES) {
                node.drop_records_of(split.child.group, &[keys::STATE_CART, keys::STATE_LOCATOR]);
            }
            match node.start_group(split.child.clone()).await {
                Ok(child) => {
                    tracing::info!(node = node.id(), parent = split.parent, child = %split.child, "split applied: child started");
                    // The parent's leader stands for the child's first term
                    // at once: its keys are served again within a round trip,
                    // not after an election timeout. The other replicas may
                    // not have applied the split yet (they answer "not
                    // hosted" and refuse the vote), so it stands again every
                    // `CHILD_CAMPAIGN_RETRY` until the child has a leader.
                    if node.group(split.parent).is_some_and(|p| p.is_leader()) {
                        tokio::spawn(async move {
                            for _ in 0..CHILD_CAMPAIGNS_MAX {
                                child.campaign().await;
                                tokio::time::sleep(CHILD_CAMPAIGN_RETRY).await;
                                if child.leader().is_some() {
                                    return;
                                }
                            }
                        });
                    }
                }
                Err(e) => tracing::error!(node = node.id(), child = %split.child, error = %e, "the split's child did not start"),
            }
            node.topology_stale.notify_one();
        }
    }

    /// Splits, one at a time, the groups this node leads whose size or load
    /// passes the policy (`split_due`), until the node stops.
    pub(crate) async fn split_when_due(node: Weak<Node>) {
        let mut resting: BTreeMap<GroupId, tokio::time::Instant> = BTreeMap::new();
        // Per group: the keys sampled over the last `SPLIT_REST` at most
        // (a quiet group's sample fills slowly).
        let mut samples: BTreeMap<GroupId, (tokio::time::Instant, BTreeMap<String, u64>)> = BTreeMap::new();
        loop {
            tokio::time::sleep(SPLIT_CHECK).await;
            let Some(node) = node.upgrade() else { return };
            let policy = node.config.split;
            let now = tokio::time::Instant::now();
            resting.retain(|_, until| *until > now);
            let leading: Vec<_> = node.groups().filter(|g| g.is_leader()).collect();
            samples.retain(|id, (since, _)| leading.iter().any(|g| g.id == *id) && now.duration_since(*since) < SPLIT_REST);
            for group in leading {
                let fresh = group.take_key_sample();
                if resting.contains_key(&group.id) {
                    samples.remove(&group.id);
                    continue;
                }
                let (_, sample) = samples.entry(group.id).or_insert_with(|| (now, BTreeMap::new()));
                for (key, n) in fresh {
                    if sample.len() < raft::load::SAMPLE_KEYS_MAX || sample.contains_key(&key) {
                        *sample.entry(key).or_default() += n;
                    }
                }
                let positions = group.state().read().position_count() as u64;
                let middle = || group.state().read().middle_sku();
                let Some((at, trigger)) = split_due(&policy, &group.range(), (positions, group.load_per_second()), sample, middle) else { continue };
                let pause = match node.split_group(group.id, Some(at.clone())).await {
                    Ok(done) => {
                        tracing::info!(node = node.id(), group = group.id, at = %at, trigger, child = done.child.group, "split by itself");
                        SPLIT_REST
                    }
                    Err(e) => {
                        tracing::info!(node = node.id(), group = group.id, at = %at, trigger, error = %e, "split not made; tried again later");
                        SPLIT_RETRY
                    }
                };
                resting.insert(group.id, tokio::time::Instant::now() + pause);
                samples.remove(&group.id);
            }
        }
    }

    /// The planted `split-drops-reservations` and `split-drops-homes` bugs:
    /// deletes the stored records of kinds `tags` of a child not started
    /// yet.
    fn drop_records_of(&self, group: GroupId, tags: &[u8]) {
        let mut batch = WriteBatch::new();
        for &tag in tags {
            batch.delete_range(Table::State, keys::state_prefix(group, tag), keys::state_prefix_end(group, tag));
        }
        if let Err(e) = self.engine().write(batch, Durability::Sync) {
            tracing::warn!(group, error = %e, "failpoint: records not dropped");
        }
    }

    /// Keeps this node's copy of the topology fresh until the node stops.
    pub(crate) async fn watch_topology(node: Weak<Node>) {
        loop {
            let Some(strong) = node.upgrade() else { return };
            strong.refresh_topology_at(Consistency::Bounded { max_staleness_ms: TOPOLOGY_STALENESS_MAX_MS }).await;
            let woken = strong.clone();
            drop(strong);
            tokio::select! {
                _ = tokio::time::sleep(TOPOLOGY_REFRESH) => {}
                _ = woken.topology_stale.notified() => {}
            }
        }
    }
}

/// What a split did, as the topology records it.
#[derive(Debug, Clone)]
pub struct SplitDone {
    pub parent: RangeInfo,
    pub child: RangeInfo,
}

impl Node {
    /// Bootstraps the topology if nobody did, takes a newer version, starts
    /// the replicas it gives this node, records splits the topology misses
    /// and retires replicas it moved away: after a change, with the change.
    pub async fn refresh_topology(&self) {
        self.refresh_topology_at(Consistency::Strong).await
    }

    /// One round of the watcher, reading the topology at `consistency`:
    /// the watcher reads from this node's replica while it keeps up (one
    /// that stopped hearing from the group, moved away or partitioned, asks
    /// another); after a change, a strong read sees it.
    pub(crate) async fn refresh_topology_at(&self, consistency: Consistency) {
        let newer_than = self.topology().version;
        let fetched = match self.read(METADATA_GROUP, ReadQuery::Topology { newer_than }, consistency).await {
            Ok(answer) => answer.topology,
            Err(e) => {
                tracing::debug!(node = self.id(), error = %e, "topology not read this round");
                return;
            }
        };
        match fetched {
            Some(fetched) if !fetched.is_bootstrapped() => {
                if let Err(e) = self.change_topology(crate::bootstrap::bootstrap_command(&self.config)).await {
                    tracing::debug!(node = self.id(), error = %e, "bootstrap not recorded yet");
                }
                return;
            }
            Some(fetched) => {
                if let Some(installed) = self.install_topology(*fetched) {
                    let mut batch = WriteBatch::new();
                    batch.put(Table::Meta, keys::meta_key(keys::NODE_GROUP, crate::bootstrap::TOPOLOGY_CACHE_KEY), codec::encode(installed.as_ref()));
                    if let Err(e) = self.engine().write(batch, Durability::Buffered) {
                        tracing::warn!(node = self.id(), error = %e, "the topology copy was not stored");
                    }
                }
            }
            // This node's copy is as new as the group's.
            None => {}
        }
        self.start_missing_replicas().await;
        self.record_unrecorded_splits().await;
        self.record_unrecorded_merges().await;
        self.retire_replicas().await;
    }

    /// Proposes `change` to the metadata group; a refusal is an error that
    /// says why.
    pub async fn change_topology(&self, change: TopologyCommand) -> Result<TopologyAnswer, GroupError> {
        let (_, result) = self.propose(METADATA_GROUP, Command::Topology(change)).await?;
        match (result.outcome, result.topology) {
            (Outcome::Ok, Some(answer)) => Ok(answer),
            _ => Err(GroupError::Invalid {
                group: METADATA_GROUP,
                reason: result.refusal.unwrap_or_else(|| format!("topology change refused: {:?}", result.outcome)),
            }),
        }
    }

    /// Records the bootstrap input unless the metadata group holds a
    /// topology already (a change right after a cluster's first start).
    pub(crate) async fn ensure_bootstrapped(&self) -> Result<(), GroupError> {
        let answer = self.read(METADATA_GROUP, ReadQuery::Topology { newer_than: 0 }, Consistency::Strong).await?;
        if answer.topology.is_some_and(|t| t.is_bootstrapped()) {
            return Ok(());
        }
        match self.change_topology(crate::bootstrap::bootstrap_command(&self.config)).await {
            Ok(_) => Ok(()),
            // Recorded by another node since the read.
            Err(GroupError::Invalid { reason, .. }) if reason == storage::topology::TopologyError::Bootstrapped.to_string() => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn start_missing_replicas(&self) {
        let topology = self.topology();
        if topology.metadata_replicas().contains(&self.id()) && self.group(METADATA_GROUP).is_none() {
            if let Err(e) = self.start_group(RangeDesc::metadata()).await {
                tracing::warn!(node = self.id(), group = METADATA_GROUP, error = %e, "metadata replica not started");
            }
        }
        for range in topology.hosted_by(self.id()) {
            if self.group(range.group).is_some() {
                continue;
            }
            let desc = range.desc();
            if self.groups().any(|g| g.range().overlaps(&desc)) {
                // Its parent runs here and has not applied the split yet.
                continue;
            }
            if let Err(e) = self.start_group(desc).await {
                tracing::warn!(node = self.id(), group = range.group, error = %e, "replica not started");
            }
        }
    }

    /// A child this node leads whose split the topology does not record
    /// yet: recorded from the child's own range.
    async fn record_unrecorded_splits(&self) {
        let topology = self.topology();
        for group in self.groups().filter(|g| g.is_leader() && topology.range(g.id).is_none() && topology.is_allocated(g.id)) {
            let range = group.range();
            let parent = topology
                .groups_in(&self.config.region)
                .find(|p| p.contains(&range.start_sku) && p.start_sku < range.start_sku && p.epoch + 1 == range.epoch)
                .map(|p| (p.group, p.epoch));
            let Some((parent, parent_epoch)) = parent else { continue };
            let change = TopologyCommand::Split { parent, parent_epoch, at_sku: range.start_sku.clone(), child: group.id };
            match self.change_topology(change).await {
                Ok(_) => tracing::info!(node = self.id(), parent, child = group.id, "split recorded by the child's leader"),
                Err(e) => tracing::debug!(node = self.id(), child = group.id, error = %e, "split not recorded yet"),
            }
        }
    }

    /// A message for a group this node does not run: start an empty replica
    /// when the topology gives it one and no group here holds its keys (its
    /// leader then catches it up by snapshot); otherwise `NOT_FOUND`, which
    /// the sender retries.
    pub async fn replica_for_message(&self, group: GroupId) -> Result<Arc<Group>, tonic::Status> {
        let not_hosted = || tonic::Status::not_found(format!("group {group} is not hosted on node {}", self.id()));
        let topology = self.topology();
        let desc = match group {
            METADATA_GROUP if topology.metadata_replicas().contains(&self.id()) => RangeDesc::metadata(),
            _ => match topology.range(group).filter(|r| r.replicas.contains(&self.id())) {
                Some(range) => range.desc(),
                None => {
                    self.topology_stale.notify_one();
                    return Err(not_hosted());
                }
            },
        };
        if self.groups().any(|g| g.range().overlaps(&desc)) {
            return Err(not_hosted());
        }
        self.start_group(desc).await.map_err(|e| tonic::Status::unavailable(format!("group {group} did not start on node {}: {e}", self.id())))
    }

    /// The group that holds every one of `lines` now, if one does: where a
    /// cart's part is prepared and followed whatever group it was planned
    /// in (a split may have moved it).
    pub fn group_of_lines(&self, lines: &[Line]) -> Option<GroupId> {
        let topology = self.topology();
        let first = topology.group_for(&self.config.region, &lines.first()?.sku)?;
        lines.iter().all(|line| first.contains(&line.sku)).then_some(first.group)
    }

    /// Splits `group` at `at` (default: its middle SKU), waits until the
    /// topology records it and the child has a leader, and says what
    /// changed. Every step can be repeated: an id allocated and not used is
    /// only skipped, and a split applied but not recorded is recorded by
    /// the child's leader.
    pub async fn split_group(&self, group: GroupId, at: Option<String>) -> Result<SplitDone, GroupError> {
        let invalid = |reason: String| GroupError::Invalid { group, reason };
        let Some(range) = self.topology().range(group).map(|r| r.desc()) else {
            return Err(invalid(format!("invalid group_id: no group {group} in the shard map")));
        };
        let at =
            match at {
                Some(at) => at,
                None => self.read(group, ReadQuery::SplitKey, Consistency::Strong).await?.split_key.ok_or_else(|| {
                    invalid(format!("invalid at_sku: group {group} holds fewer than two SKUs, so it has no middle; give the key to split at"))
                })?,
            };
        if !range.splits_at(&at) {
            return Err(invalid(format!("invalid at_sku: {at:?} is not strictly inside {range}")));
        }
        self.ensure_bootstrapped().await?;
        let TopologyAnswer::Allocated(child) = self.change_topology(TopologyCommand::AllocateGroup).await? else {
            return Err(invalid("the metadata group allocated no id".into()));
        };
        let (_, result) = self.propose(group, Command::Split { at_sku: at.clone(), child }).await?;
        let parent_range = match (result.outcome, result.range) {
            (Outcome::Ok, Some(range)) => range,
            (_, range) => {
                let reason = result.refusal.unwrap_or_else(|| format!("the split was refused ({:?})", result.outcome));
                let now = range.map(|r| format!("; the group is now {r}")).unwrap_or_default();
                return Err(invalid(format!("invalid at_sku: {reason}{now}")));
            }
        };
        let change = TopologyCommand::Split { parent: group, parent_epoch: parent_range.epoch - 1, at_sku: at, child };
        if let Err(e) = self.change_topology(change).await {
            // Recorded already (by the child's leader), or it will be.
            tracing::debug!(node = self.id(), child, error = %e, "split recorded elsewhere");
        }
        self.refresh_topology().await;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(self.config.rpc_timeout_ms);
        loop {
            let topology = self.topology();
            let ready = match (topology.range(group), topology.range(child)) {
                (Some(parent), Some(child_range)) => {
                    self.read(child, ReadQuery::Range, Consistency::Strong).await.ok().map(|_| SplitDone { parent: parent.clone(), child: child_range.clone() })
                }
                _ => None,
            };
            if let Some(done) = ready {
                return Ok(done);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(GroupError::Unavailable { group: child, reason: "the split applied; its child has no leader yet (retry the listing)".into() });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            self.refresh_topology().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SplitPolicy;

    const POLICY: SplitPolicy = SplitPolicy { positions_max: 100, load_cmds_per_s: 1_000, merge_cold_s: 60 };

    fn range(start: &str, end: Option<&str>) -> RangeDesc {
        RangeDesc { group: 2, start_sku: start.into(), end_sku: end.map(str::to_owned), epoch: 1, home_slots: stockd_proto::home::ALL_SLOTS }
    }

    fn sample(counts: &[(&str, u64)]) -> BTreeMap<String, u64> {
        counts.iter().map(|(k, n)| (k.to_string(), *n)).collect()
    }

    fn no_middle() -> Option<String> {
        None
    }

    #[test]
    fn a_hot_sku_is_given_a_range_of_its_own_in_two_splits() {
        let hot = sample(&[("a-1", 5), ("m-7", 90), ("z-3", 5)]);
        let first = split_due(&POLICY, &range("8", None), (10, 5_000.0), &hot, no_middle);
        assert_eq!(first, Some(("m-7".to_owned(), "load")));
        // Its range now starts at the SKU: cut just after it.
        let second = split_due(&POLICY, &range("m-7", None), (10, 5_000.0), &hot, no_middle);
        assert_eq!(second, Some(("m-7!".to_owned(), "load")));
        // Alone: nothing left to cut, however hot.
        assert_eq!(split_due(&POLICY, &range("m-7", Some("m-7!")), (1, 9_000.0), &hot, no_middle), None);
    }

    #[test]
    fn spread_load_is_cut_in_halves_and_quiet_groups_are_left_alone() {
        let spread = sample(&[("b", 10), ("c", 10), ("d", 10), ("e", 10)]);
        assert_eq!(split_due(&POLICY, &range("a", None), (10, 5_000.0), &spread, no_middle), Some(("c".to_owned(), "load")));
        assert_eq!(split_due(&POLICY, &range("a", None), (10, 999.0), &spread, no_middle), None, "below the load bound");
        let few = sample(&[("b", 3), ("c", 2)]);
        assert_eq!(split_due(&POLICY, &range("a", None), (10, 5_000.0), &few, no_middle), None, "too few samples to choose");
        let off = SplitPolicy { positions_max: 0, load_cmds_per_s: 0, merge_cold_s: 0 };
        assert_eq!(split_due(&off, &range("a", None), (1_000_000, 1e9), &spread, || Some("c".into())), None, "both triggers off");
    }

    #[test]
    fn a_large_group_is_split_at_its_middle_sku() {
        let quiet = BTreeMap::new();
        assert_eq!(split_due(&POLICY, &range("a", None), (101, 0.0), &quiet, || Some("k".into())), Some(("k".to_owned(), "size")));
        assert_eq!(split_due(&POLICY, &range("a", None), (100, 0.0), &quiet, || Some("k".into())), None, "at the bound");
        // A middle that is the range's start cannot cut it.
        assert_eq!(split_due(&POLICY, &range("k", None), (500, 0.0), &quiet, || Some("k".into())), None);
    }
}
