//! The bootstrap layout: each region's key space split into contiguous SKU
//! ranges, each range one Raft group replicated on nodes of that region
//! only, from the `[cluster]` settings of a new cluster. By default a
//! region starts as one range holding every home slot; size and load
//! splits shape it from there (`crate::metadata`). Explicit split points
//! give a region more ranges from the start.

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

impl ShardMap {
    /// Splits each region of `members` (node id, region) into
    /// `groups_per_region` ranges at `split_points` (one range needs none);
    /// the region's home slots are shared out evenly in range order
    /// (`stockd_home::bootstrap_slots`).
    pub fn build<'a>(
        members: impl Iterator<Item = (NodeId, &'a str)>,
        groups_per_region: u32,
        split_points: Option<Vec<String>>,
        replication_factor: usize,
    ) -> Result<ShardMap, String> {
        let splits = match split_points {
            Some(s) => s,
            None if groups_per_region == 1 => Vec::new(),
            None => {
                return Err(format!(
                    "groups-per-region {groups_per_region} needs {} split-points: a region starts as one range unless told where to cut it",
                    groups_per_region.saturating_sub(1)
                ))
            }
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
                let home_slots = stockd_proto::home::bootstrap_slots(i, groups_per_region as usize);
                ranges.push(ShardRange {
                    group: (r * 1000 + i + 1) as GroupId,
                    region: region.to_string(),
                    start_sku,
                    end_sku,
                    replicas,
                    epoch: FIRST_EPOCH,
                    home_slots,
                });
            }
        }
        Ok(ShardMap { ranges })
    }

    /// The group of `sku` in `region`.
    pub fn group_for(&self, region: &str, sku: &str) -> Option<&ShardRange> {
        self.ranges.iter().find(|r| r.region == region && r.contains(sku))
    }

    /// The home group of reservation `id` in `region`: the range holding
    /// the id's home slot.
    pub fn home_for(&self, region: &str, id: &str) -> Option<&ShardRange> {
        let bit = stockd_proto::home::slot_bit(id);
        self.ranges.iter().find(|r| r.region == region && r.home_slots & bit != 0)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: u64) -> impl Iterator<Item = (NodeId, &'static str)> {
        (1..=n).map(|id| (id, "local"))
    }

    fn eight(n: u64) -> ShardMap {
        let splits = ["2", "4", "6", "8", "a", "c", "e"].map(String::from).to_vec();
        ShardMap::build(nodes(n), 8, Some(splits), 3).expect("map")
    }

    #[test]
    fn every_sku_has_exactly_one_group() {
        let map = eight(3);
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
    fn a_region_starts_as_one_range_unless_told_where_to_cut() {
        let map = ShardMap::build(nodes(3), 1, None, 3).expect("one range");
        assert_eq!(map.ranges.len(), 1);
        let only = &map.ranges[0];
        assert_eq!((only.start_sku.as_str(), only.end_sku.as_deref(), only.home_slots), ("", None, stockd_proto::home::ALL_SLOTS));
        for sku in ["", "SKU-12345", "B07XJ8C8F5", "9", "zzz"] {
            assert_eq!(map.group_for("local", sku).map(|r| r.group), Some(1), "{sku}");
        }
        assert_eq!(map.home_for("local", "order-1").map(|r| r.group), Some(1));
        let refused = ShardMap::build(nodes(3), 4, None, 3).expect_err("4 ranges, no split points");
        assert!(refused.contains("needs 3 split-points"), "{refused}");
    }

    #[test]
    fn homes_are_spread_over_the_region() {
        let map = eight(3);
        let mut counts = BTreeMap::new();
        for i in 0..8000 {
            let home = map.home_for("local", &format!("order-{i}")).expect("home").group;
            *counts.entry(home).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 8, "every group is home to some ids");
        // Sequential ids too: 1,000 per group expected.
        assert!(counts.values().all(|&n| (850..1150).contains(&n)), "{counts:?}");
        // Eight slots each, in range order.
        assert!(map.ranges.iter().enumerate().all(|(i, r)| r.home_slots == 0xff << (8 * i)), "{:?}", map.ranges);
        assert!(map.home_for("elsewhere", "order-1").is_none());
    }

    #[test]
    fn replicas_spread_and_stay_in_region() {
        let map = ShardMap::build(nodes(5), 5, Some(vec!["b".into(), "d".into(), "f".into(), "h".into()]), 3).expect("map");
        for r in &map.ranges {
            assert_eq!(r.replicas.len(), 3);
        }
        assert_ne!(map.ranges[0].replicas, map.ranges[1].replicas);
        assert!(ShardMap::build(nodes(2), 1, None, 3).is_err(), "too few nodes");
        assert!(ShardMap::build(nodes(3), 3, Some(vec!["b".into(), "a".into()]), 3).is_err(), "unordered");
    }
}
