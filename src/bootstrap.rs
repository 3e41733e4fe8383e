//! What a node starts from before the metadata group answers: the
//! topology's bootstrap input (from `[cluster]`), the copy of the topology
//! this node stored last, the metadata group's replicas and the groups
//! whose state is on this node's disk.

use std::collections::BTreeMap;

use raft::NodeId;
use storage::codec;
use storage::keys;
use storage::model::GroupId;
use storage::topology::NodeInfo;
use storage::topology::NodeState;
use storage::topology::Placement;
use storage::topology::Topology;
use storage::topology::TopologyCommand;
use storage::Engine;
use storage::Table;

use crate::config::Config;

pub const TOPOLOGY_CACHE_KEY: &str = "topology";
/// The version of a topology that has applied its bootstrap command only.
pub const BOOTSTRAP_VERSION: u64 = 1;

/// The first command of a new cluster, from its `[cluster]` settings.
pub fn bootstrap_command(config: &Config) -> TopologyCommand {
    let nodes = config
        .nodes
        .values()
        .map(|n| NodeInfo { id: n.id, addr: n.addr.clone(), peer_addr: n.peer_addr.clone(), region: n.region.clone(), state: NodeState::Up })
        .collect();
    let mut placement = BTreeMap::new();
    for range in &config.shard_map.ranges {
        placement.entry(range.region.clone()).or_insert(Placement { replication_factor: range.replicas.len() });
    }
    TopologyCommand::Bootstrap { nodes, ranges: config.shard_map.ranges.clone(), placement, balance: config.balance, metadata: metadata_replicas(config) }
}

/// The topology a node starts routing with: the one it last stored if it
/// is newer than the bootstrap input's.
pub fn initial_topology(config: &Config, engine: &dyn Engine) -> Result<Topology, String> {
    let mut topology = Topology::default();
    topology.apply(&bootstrap_command(config)).map_err(|e| e.to_string())?;
    let key = keys::meta_key(keys::NODE_GROUP, TOPOLOGY_CACHE_KEY);
    if let Some(bytes) = engine.get(Table::Meta, &key).map_err(|e| e.to_string())? {
        let stored: Topology = codec::decode(&bytes, "stored topology").map_err(|e| e.to_string())?;
        if stored.version > topology.version {
            return Ok(stored);
        }
    }
    Ok(topology)
}

/// The metadata group's first replicas: the first nodes by id, an odd
/// number of them (at most `[cluster] metadata-replicas`), whatever their regions
/// (the topology holds no user data). Moves change them later; the
/// topology records them (`Topology::metadata_replicas`).
pub fn metadata_replicas(config: &Config) -> Vec<NodeId> {
    let mut count = config.nodes.len().min(config.metadata_replicas);
    if count > 1 && count.is_multiple_of(2) {
        count -= 1;
    }
    config.nodes.keys().copied().take(count).collect()
}

/// Every group with state stored in `engine` (one seek per group).
pub fn stored_groups(engine: &dyn Engine) -> Result<Vec<GroupId>, String> {
    let mut groups = Vec::new();
    let mut from = keys::group_prefix(0);
    let end = keys::group_prefix(keys::NODE_GROUP);
    while let Some((key, _)) = engine.scan(Table::State, &from, &end, 1).map_err(|e| e.to_string())?.into_iter().next() {
        let Some(group) = key.get(..4).and_then(|b| b.try_into().ok()).map(GroupId::from_be_bytes) else { break };
        groups.push(group);
        from = keys::group_end(group);
    }
    Ok(groups)
}
