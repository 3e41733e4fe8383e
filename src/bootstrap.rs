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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_peers;
    use crate::config::FileConfig;
    use crate::config::Overrides;

    fn config(peers: &str, metadata_replicas: usize) -> Config {
        let mut file = FileConfig::default();
        file.cluster.metadata_replicas = metadata_replicas;
        let overrides =
            Overrides { node_id: Some(1), peers: Some(parse_peers(peers).expect("peers")), data_dir: Some("d".into()), insecure: true, ..Default::default() };
        file.validate(overrides).expect("valid")
    }

    #[test]
    fn the_metadata_group_starts_on_an_odd_number_of_the_first_nodes() {
        let four = "1=127.0.0.1:7101,2=127.0.0.1:7102,3=127.0.0.1:7103,4=127.0.0.1:7104";
        assert_eq!(metadata_replicas(&config(four, 5)), [1, 2, 3], "four nodes: three");
        assert_eq!(metadata_replicas(&config(four, 1)), [1]);
        let five = "1=127.0.0.1:7101,2=127.0.0.1:7102,3=127.0.0.1:7103,4=127.0.0.1:7104,5=127.0.0.1:7105";
        assert_eq!(metadata_replicas(&config(five, 5)), [1, 2, 3, 4, 5]);
        assert_eq!(metadata_replicas(&config(five, 3)), [1, 2, 3]);
        let TopologyCommand::Bootstrap { metadata, .. } = bootstrap_command(&config(four, 3)) else { panic!("a bootstrap") };
        assert_eq!(metadata, [1, 2, 3], "the bootstrap names them");
    }
}
