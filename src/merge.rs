//! Merges on every node: the three log commands of `storage::split` driven
//! to the end, by an operator (`stockctl shard merge`), by the cold-range
//! trigger, or by whichever node leads a frozen group whose driver stopped.
//!
//! 1. `Freeze` in the right group R (refused while a cart is in flight in it
//!    or its state is too large to carry).
//! 2. R's frozen state is read from its leader and proposed as `Merge` to
//!    the group that ends where R starts (its left neighbour L, whatever
//!    splits happened meanwhile). L takes it or refuses it for good.
//! 3. Taken: the topology records it (R's id retired, its home slots handed
//!    to L) and every node retires its replica of R. Refused: R is thawed.
//!
//! A replica of a range the topology no longer has, covered by a range of a
//! newer epoch, is retired: its log and state are deleted. Its records are
//! in the left group's log, whether or not it applied the freeze itself.

use std::collections::BTreeMap;
use std::time::Duration;
use std::time::Instant;

use raft::GroupError;
use storage::model::Command;
use storage::model::GroupId;
use storage::model::Outcome;
use storage::topology::RangeInfo;
use storage::topology::Topology;
use storage::topology::TopologyCommand;

use crate::node::Node;
use crate::read::Consistency;
use crate::read::ReadQuery;

/// How often a node looks for frozen groups to finish and cold ranges to
/// merge among the groups it leads.
pub const MERGE_CHECK: Duration = Duration::from_secs(2);
/// How long a frozen group waits for the node that froze it before its
/// leader finishes the merge itself.
pub const MERGE_STALL: Duration = Duration::from_secs(3);
/// A range merged by itself, and its neighbours, rest this long before the
/// next merge this node makes.
pub const MERGE_REST: Duration = Duration::from_secs(10);

/// What a merge did, as the topology records it.
#[derive(Debug, Clone)]
pub struct MergeDone {
    /// The left range after the merge, holding both.
    pub merged: RangeInfo,
    /// The right range's group: its id is never used again.
    pub retired: GroupId,
}

/// The range of `topology` that ends where `right` starts, in its region.
fn left_of(topology: &Topology, right: &RangeInfo) -> Option<RangeInfo> {
    topology.groups_in(&right.region).find(|l| l.end_sku.as_deref() == Some(right.start_sku.as_str())).cloned()
}

/// True when a merge of two ranges holding `positions` together, with
/// loads `loads`, each cold for `cold_for`, is due under `policy`: a pure
/// function of what the right range's leader sees.
pub fn merge_due(policy: &crate::config::SplitPolicy, positions: u64, loads: (f64, f64), cold_for: Duration) -> bool {
    policy.merge_cold_s > 0
        && cold_for >= Duration::from_secs(policy.merge_cold_s)
        && loads.0 < policy.cold_cmds_per_s().max(1.0)
        && loads.1 < policy.cold_cmds_per_s().max(1.0)
        && positions < policy.merged_positions_max()
}

impl Node {
    /// Merges `left` with the range after it in its region: freezes that
    /// one, has `left` take its state, records the merge and waits until the
    /// topology shows it. The answer names the merged range and the retired
    /// group.
    pub async fn merge_group(&self, left: GroupId) -> Result<MergeDone, GroupError> {
        let invalid = |group, reason: String| GroupError::Invalid { group, reason };
        let topology = self.topology();
        let Some(l) = topology.range(left).cloned() else {
            return Err(invalid(left, format!("invalid group_id: no group {left} in the shard map")));
        };
        let Some(r) = topology.groups_in(&l.region).find(|r| l.end_sku.as_deref() == Some(r.start_sku.as_str())).cloned() else {
            return Err(invalid(left, format!("invalid group_id: group {left} is the last range of region {}, with no range after it to merge", l.region)));
        };
        self.ensure_bootstrapped().await?;
        if self.failpoint(crate::failpoint::MERGE_WITHOUT_FREEZE) {
            return self.finish_merge(r.group, crate::failpoint::MERGE_WITHOUT_FREEZE_INDEX).await;
        }
        let (index, frozen) = self.propose(r.group, Command::Freeze).await?;
        if frozen.outcome != Outcome::Ok {
            let why = frozen.refusal.unwrap_or_else(|| format!("{:?}", frozen.outcome));
            return Err(invalid(left, format!("invalid group_id: group {} after it was not frozen for the merge: {why}", r.group)));
        }
        tracing::info!(node = self.id(), left, right = r.group, "frozen for a merge");
        self.finish_merge(r.group, frozen.frozen_at.unwrap_or(index)).await
    }

    /// Steps 2 and 3 for `right`, frozen at `frozen_at`: into the group that
    /// ends where it starts now.
    pub async fn finish_merge(&self, right: GroupId, frozen_at: u64) -> Result<MergeDone, GroupError> {
        let deadline = Instant::now() + Duration::from_millis(self.config.rpc_timeout_ms);
        let unavailable = |reason: String| GroupError::Unavailable { group: right, reason };
        // The right range's first key, once seen: where its keys are after.
        let mut start: Option<String> = None;
        loop {
            let topology = self.topology();
            let Some(r) = topology.range(right).cloned() else {
                return match start {
                    // Merged meanwhile by another driver.
                    Some(start) => self.merged_into(right, &start).await,
                    None => Err(GroupError::Invalid { group: right, reason: format!("invalid group_id: no group {right} in the shard map") }),
                };
            };
            start = Some(r.start_sku.clone());
            let Some(l) = left_of(&topology, &r) else {
                return Err(GroupError::Invalid { group: right, reason: format!("invalid group_id: group {right} starts its region; nothing is before it") });
            };
            let answer = self.read(right, ReadQuery::Frozen, Consistency::Strong).await?;
            let state = answer
                .frozen
                .filter(|(index, _)| *index == frozen_at)
                .map(|(_, state)| state)
                .ok_or_else(|| unavailable(format!("group {right} is no longer frozen at {frozen_at}")))?;
            if self.failpoint(crate::failpoint::MERGE_WITHOUT_FREEZE) {
                // The planted bug's driver is slow, as a real one may be: what
                // the unfrozen right range acknowledges meanwhile is lost.
                tokio::time::sleep(crate::failpoint::MERGE_WITHOUT_FREEZE_PAUSE).await;
            }
            match self.propose(l.group, Command::Merge { right: state }).await {
                Ok((_, taken)) if taken.outcome == Outcome::Ok => {
                    let change = TopologyCommand::Merge { left: l.group, left_epoch: l.epoch, right, right_epoch: r.epoch };
                    if let Err(e) = self.change_topology(change).await {
                        // Recorded already, or left to the left group's leader.
                        tracing::debug!(node = self.id(), left = l.group, right, error = %e, "merge recorded elsewhere");
                    }
                    tracing::info!(node = self.id(), left = l.group, right, "merge applied");
                    return self.merged_into(right, &r.start_sku).await;
                }
                Ok((_, refused)) => {
                    let why = refused.refusal.unwrap_or_else(|| format!("{:?}", refused.outcome));
                    if let Some(f) = refused.frozen_at {
                        // Refused for good at that epoch: the right side may serve again.
                        let thawed = self.propose(right, Command::Thaw { frozen_at: f }).await;
                        tracing::info!(node = self.id(), left = l.group, right, reason = %why, thawed = thawed.is_ok(), "merge refused; right side thawed");
                    }
                    return Err(GroupError::Invalid { group: l.group, reason: format!("invalid group_id: the merge was refused: {why}") });
                }
                // The left side changed (split, merged, retired: this node's
                // map named a group nobody leads any more): route again, with
                // a fresh map, while the right side stays frozen.
                Err(GroupError::StaleRoute { .. } | GroupError::NotLeader { .. }) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    self.refresh_topology().await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits until the topology no longer has `right`, and answers the range
    /// that holds its first key `start` then.
    async fn merged_into(&self, right: GroupId, start: &str) -> Result<MergeDone, GroupError> {
        let deadline = Instant::now() + Duration::from_millis(self.config.rpc_timeout_ms);
        loop {
            self.refresh_topology().await;
            let topology = self.topology();
            if let Some(merged) = topology.range(right).is_none().then(|| topology.group_for(&self.config.region, start)).flatten() {
                return Ok(MergeDone { merged: merged.clone(), retired: right });
            }
            if Instant::now() >= deadline {
                return Err(GroupError::Unavailable {
                    group: right,
                    reason: "the merge applied; the topology does not show it yet (retry the listing)".into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Records a merge this node's replica of the left group applied and the
    /// topology misses (its driver stopped before recording it): the left
    /// range here reaches past the topology's, over ranges of older epochs.
    pub(crate) async fn record_unrecorded_merges(&self) {
        let topology = self.topology();
        for group in self.groups().filter(|g| g.is_leader()) {
            let (Some(known), applied) = (topology.range(group.id), group.range()) else { continue };
            if applied.epoch <= known.epoch || applied.end_sku == known.end_sku {
                continue;
            }
            let Some(right) = topology.groups_in(&known.region).find(|r| known.end_sku.as_deref() == Some(r.start_sku.as_str())) else { continue };
            // The right range lies inside what the left serves now.
            if !applied.contains(&right.start_sku)
                || right.end_sku.as_deref().is_some_and(|end| !applied.contains(end) && applied.end_sku.as_deref() != Some(end))
            {
                continue;
            }
            let change = TopologyCommand::Merge { left: group.id, left_epoch: known.epoch, right: right.group, right_epoch: right.epoch };
            match self.change_topology(change).await {
                Ok(_) => tracing::info!(node = self.id(), left = group.id, right = right.group, "merge recorded by the left group's leader"),
                Err(e) => tracing::debug!(node = self.id(), left = group.id, error = %e, "merge not recorded yet"),
            }
        }
    }

    /// Stops and deletes every replica here that the topology no longer
    /// places here: moved away (the group's replicas, or the metadata
    /// group's, leave this node out; `crate::placement`), or merged away
    /// (not in the topology, not allocated, and covered by a range of a
    /// newer epoch).
    pub(crate) async fn retire_replicas(&self) {
        let retired: Vec<_> = self.all_groups().into_iter().filter(|g| self.is_retiring(g.id)).collect();
        for group in retired {
            // One retirement or start of a replica at a time, so that a
            // replica moved back here starts only after its old copy is
            // gone. The replica leaves the node's groups only once its data
            // is deleted: no replica here means no data here either.
            let _one_at_a_time = self.starting.lock().await;
            if !self.is_retiring(group.id) {
                continue;
            }
            let range = group.range();
            group.shutdown().await;
            match group.delete_records() {
                Ok(()) => tracing::info!(node = self.id(), group = group.id, range = %range, "moved or merged away: replica retired and deleted"),
                Err(e) => tracing::warn!(node = self.id(), group = group.id, error = %e, "retired replica not deleted; deleted at the next start"),
            }
            self.remove_group(group.id);
        }
    }

    /// True when this node runs a replica of `group` that the topology no
    /// longer places here (see `retire_replicas`).
    pub fn is_retiring(&self, group: GroupId) -> bool {
        let topology = self.topology();
        let Some(replica) = self.group(group).filter(|_| topology.is_bootstrapped()) else { return false };
        if group == storage::topology::METADATA_GROUP {
            return !topology.metadata_replicas().contains(&self.id());
        }
        match topology.range(group) {
            Some(placed) => !placed.replicas.contains(&self.id()),
            None if topology.is_allocated(group) => false,
            None => {
                let range = replica.range();
                topology.groups_in(&self.config.region).any(|r| r.desc().overlaps(&range) && r.epoch > range.epoch)
            }
        }
    }

    /// Finishes the merges of frozen groups this node leads whose driver
    /// stopped, and merges cold ranges, one at a time, until the node stops.
    pub(crate) async fn merge_when_due(node: std::sync::Weak<Node>) {
        let mut frozen_seen: BTreeMap<GroupId, Instant> = BTreeMap::new();
        let mut cold_since: BTreeMap<GroupId, Instant> = BTreeMap::new();
        let mut rest_until = Instant::now();
        loop {
            tokio::time::sleep(MERGE_CHECK).await;
            let Some(node) = node.upgrade() else { return };
            let now = Instant::now();
            let policy = node.config.split;
            let leading: Vec<_> = node.groups().filter(|g| g.is_leader()).collect();
            frozen_seen.retain(|id, _| leading.iter().any(|g| g.id == *id && g.state().read().frozen_at().is_some()));
            cold_since.retain(|id, _| leading.iter().any(|g| g.id == *id));
            for group in &leading {
                let frozen_at = group.state().read().frozen_at();
                if let Some(frozen_at) = frozen_at {
                    let first = *frozen_seen.entry(group.id).or_insert(now);
                    if now.duration_since(first) >= MERGE_STALL && node.topology().range(group.id).is_some() {
                        match node.finish_merge(group.id, frozen_at).await {
                            Ok(done) => {
                                tracing::info!(node = node.id(), right = group.id, merged = %done.merged.desc(), "merge finished by the frozen group's leader")
                            }
                            Err(e) => tracing::info!(node = node.id(), right = group.id, error = %e, "frozen group's merge not finished yet"),
                        }
                        frozen_seen.insert(group.id, Instant::now());
                    }
                    continue;
                }
                if group.load_per_second() >= policy.cold_cmds_per_s().max(1.0) {
                    cold_since.remove(&group.id);
                    continue;
                }
                let since = *cold_since.entry(group.id).or_insert(now);
                if now < rest_until || policy.merge_cold_s == 0 || now.duration_since(since) < Duration::from_secs(policy.merge_cold_s) {
                    continue;
                }
                let topology = node.topology();
                let Some(right) = topology.range(group.id).cloned() else { continue };
                let Some(left) = left_of(&topology, &right) else { continue };
                let Ok(left_answer) = node.read(left.group, ReadQuery::Range, Consistency::Strong).await else { continue };
                let positions = left_answer.position_count + group.state().read().position_count() as u64;
                let loads = (left_answer.load_cmds_per_s as f64, group.load_per_second());
                if !merge_due(&policy, positions, loads, now.duration_since(since)) || group.state().read().freeze_refusal().is_some() {
                    continue;
                }
                match node.merge_group(left.group).await {
                    Ok(done) => tracing::info!(node = node.id(), retired = done.retired, merged = %done.merged.desc(), "cold ranges merged by themselves"),
                    Err(e) => tracing::info!(node = node.id(), left = left.group, right = right.group, error = %e, "cold ranges not merged; tried again later"),
                }
                cold_since.remove(&group.id);
                rest_until = Instant::now() + MERGE_REST;
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SplitPolicy;

    const POLICY: SplitPolicy = SplitPolicy { positions_max: 100, load_cmds_per_s: 1_000, merge_cold_s: 60 };

    #[test]
    fn cold_small_neighbours_are_merged_after_the_cold_period() {
        let cold = Duration::from_secs(60);
        assert!(merge_due(&POLICY, 49, (5.0, 99.0), cold));
        assert!(!merge_due(&POLICY, 49, (5.0, 99.0), cold - Duration::from_secs(1)), "not cold for long enough");
        assert!(!merge_due(&POLICY, 50, (5.0, 5.0), cold), "half of split-positions-max together is too many");
        assert!(!merge_due(&POLICY, 10, (100.0, 5.0), cold), "the left side is not cold");
        assert!(!merge_due(&POLICY, 10, (5.0, 100.0), cold), "the right side is not cold");
        let off = SplitPolicy { merge_cold_s: 0, ..POLICY };
        assert!(!merge_due(&off, 1, (0.0, 0.0), Duration::from_secs(3_600)), "merges by themselves off");
        // Size splits off: any number of positions may be merged.
        let no_size = SplitPolicy { positions_max: 0, ..POLICY };
        assert!(merge_due(&no_size, 1_000_000, (0.0, 0.0), cold));
    }
}
