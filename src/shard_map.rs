//! The shard map: each region's key space split into contiguous SKU ranges,
//! each range one Raft group replicated on nodes of that region only.
//!
//! Static in this version (from the cluster configuration) and stored in the
//! node's database at first start; a node refuses to start if its stored map
//! differs from the configured one.

use std::collections::BTreeMap;

use raft::NodeId;
use serde::Deserialize;
use serde::Serialize;
use storage::model::GroupId;
use storage::model::FIRST_EPOCH;

/// One range of the map: the topology's own record of it.
pub use storage::topology::RangeInfo as ShardRange;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMap {
    pub ranges: Vec<ShardRange>,
}

const HEX: &[u8] = b"0123456789abcdef";

fn default_split_points(groups: u32) -> Result<Vec<String>, String> {
    if groups == 0 || groups > 16 {
        return Err(format!("groups-per-region {groups} needs explicit split-points (default split points cover 1..=16 groups)"));
    }
    Ok((1..groups).map(|i| ((HEX[(i * 16 / groups) as usize]) as char).to_string()).collect())
}

impl ShardMap {
    /// Splits each region of `members` (node id, region) into
    /// `groups_per_region` ranges.
    pub fn build<'a>(
        members: impl Iterator<Item = (NodeId, &'a str)>,
        groups_per_region: u32,
        split_points: Option<Vec<String>>,
        replication_factor: usize,
    ) -> Result<ShardMap, String> {
        let splits = match split_points {
            Some(s) => s,
            None => default_split_points(groups_per_region)?,
        };
        if splits.len() + 1 != groups_per_region as usize {
            return Err(format!("{} split points make {} groups, but groups-per-region is {groups_per_region}", splits.len(), splits.len() + 1));
        }
        if splits.iter().any(|s| s.is_empty()) || splits.windows(2).any(|w| w[0] >= w[1]) {
            return Err("split-points must be non-empty and strictly ascending".into());
        }
        let mut regions: BTreeMap<&str, Vec<NodeId>> = BTreeMap::new();
        for (id, region) in members {
            regions.entry(region).or_default().push(id);
        }
        for ids in regions.values_mut() {
            ids.sort_unstable();
        }
        let mut ranges = Vec::new();
        for (r, (region, members)) in regions.iter().enumerate() {
            if members.len() < replication_factor {
                return Err(format!("region {region} has {} nodes but replication-factor is {replication_factor}", members.len()));
            }
            for i in 0..groups_per_region as usize {
                let start_sku = if i == 0 { String::new() } else { splits[i - 1].clone() };
                let end_sku = splits.get(i).cloned();
                // Rotate so that groups spread over the region's nodes when it
                // has more nodes than replicas.
                let replicas = (0..replication_factor).map(|k| members[(i + k) % members.len()]).collect();
                ranges.push(ShardRange { group: (r * 1000 + i + 1) as GroupId, region: region.to_string(), start_sku, end_sku, replicas, epoch: FIRST_EPOCH });
            }
        }
        Ok(ShardMap { ranges })
    }

    /// The group of `sku` in `region`.
    pub fn group_for(&self, region: &str, sku: &str) -> Option<&ShardRange> {
        self.ranges.iter().find(|r| r.region == region && r.contains(sku))
    }

    /// The home group of reservation `id` in `region`: the group that holds
    /// its record. The region's groups split the 64-bit hash space of ids
    /// into equal ranges, in group order (`stockd_proto::home`, which
    /// clients use to send a cart to its home's leader).
    pub fn home_for(&self, region: &str, id: &str) -> Option<&ShardRange> {
        let groups: Vec<&ShardRange> = self.ranges.iter().filter(|r| r.region == region).collect();
        groups.get(stockd_proto::home::slot(id, groups.len())).copied()
    }

    pub fn range(&self, group: GroupId) -> Option<&ShardRange> {
        self.ranges.iter().find(|r| r.group == group)
    }

    pub fn groups_in<'a>(&'a self, region: &'a str) -> impl Iterator<Item = &'a ShardRange> + 'a {
        self.ranges.iter().filter(move |r| r.region == region)
    }

    /// Groups that `node` replicates.
    pub fn hosted_by(&self, node: NodeId) -> impl Iterator<Item = &ShardRange> {
        self.ranges.iter().filter(move |r| r.replicas.contains(&node))
    }
}

pub use stockd_proto::home::id_hash;

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: u64) -> impl Iterator<Item = (NodeId, &'static str)> {
        (1..=n).map(|id| (id, "local"))
    }

    #[test]
    fn every_sku_has_exactly_one_group() {
        let map = ShardMap::build(nodes(3), 8, None, 3).expect("map");
        assert_eq!(map.ranges.len(), 8);
        for sku in ["", "0", "1zzz", "2", "7abc", "a", "dead", "e", "f0", "zzz", "SKU-1"] {
            let owners = map.ranges.iter().filter(|r| r.contains(sku)).count();
            assert_eq!(owners, 1, "sku {sku:?}");
        }
        assert_eq!(map.group_for("local", "1").map(|r| r.group), Some(1));
        assert_eq!(map.group_for("local", "2").map(|r| r.group), Some(2));
        assert_eq!(map.group_for("local", "ffff").map(|r| r.group), Some(8));
        assert!(map.group_for("elsewhere", "1").is_none());
    }

    #[test]
    fn homes_are_stable_and_spread_over_the_region() {
        // Pinned: a reservation's home must never move between versions.
        assert_eq!(id_hash(""), 0xefd0_1f60_ba99_2926);
        assert_eq!(id_hash("a"), 0x82a2_a958_a9be_ce5b);
        let map = ShardMap::build(nodes(3), 8, None, 3).expect("map");
        let mut counts = BTreeMap::new();
        for i in 0..8000 {
            let home = map.home_for("local", &format!("order-{i}")).expect("home").group;
            *counts.entry(home).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 8, "every group is home to some ids");
        // Sequential ids too: 1,000 per group expected.
        assert!(counts.values().all(|&n| (850..1150).contains(&n)), "{counts:?}");
        assert_eq!(map.home_for("local", "order-1").map(|r| r.group), map.home_for("local", "order-1").map(|r| r.group));
        assert!(map.home_for("elsewhere", "order-1").is_none());
    }

    #[test]
    fn replicas_spread_and_stay_in_region() {
        let map = ShardMap::build(nodes(5), 5, Some(vec!["b".into(), "d".into(), "f".into(), "h".into()]), 3).expect("map");
        for r in &map.ranges {
            assert_eq!(r.replicas.len(), 3);
        }
        assert_ne!(map.ranges[0].replicas, map.ranges[1].replicas);
        assert!(ShardMap::build(nodes(2), 8, None, 3).is_err(), "too few nodes");
        assert!(ShardMap::build(nodes(3), 3, Some(vec!["b".into(), "a".into()]), 3).is_err(), "unordered");
    }
}
