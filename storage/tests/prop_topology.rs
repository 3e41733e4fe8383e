//! Property test of the topology state machine (`storage::topology`): random
//! node changes, group allocations, splits, merges and replica changes, some
//! at stale epochs or with bad arguments, from a bootstrapped two-region
//! cluster.
//!
//! Checked after every command:
//! - a refused command changes nothing; an applied one bumps the version;
//! - the invariants: ranges tile each region, replicas are live nodes of the
//!   region, each home slot is held by exactly one of the region's groups;
//! - group ids are never given twice, not even after a merge retired one;
//! - homes move only as the range does: a split moves the ids of the upper
//!   half of the parent's slots to the child and no other; a merge moves
//!   only the right side's, to the left side.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use proptest::prelude::*;
use storage::model::GroupId;
use storage::topology::NodeId;
use storage::topology::NodeInfo;
use storage::topology::NodeState;
use storage::topology::Placement;
use storage::topology::RangeInfo;
use storage::topology::Topology;
use storage::topology::TopologyAnswer;
use storage::topology::TopologyCommand;
use storage::topology::TopologyError;
use storage::topology::METADATA_GROUP;

const KEYS: [&str; 7] = ["b", "d", "f", "h", "k", "p", "t"];
const IDS: usize = 40;

fn node(id: NodeId, region: &str) -> NodeInfo {
    NodeInfo { id, addr: format!("127.0.0.1:{}", 7100 + id), peer_addr: None, region: region.into(), state: NodeState::Up }
}

fn range(group: GroupId, region: &str, (start, end): (&str, Option<&str>), replicas: &[NodeId], home_slots: u64) -> RangeInfo {
    RangeInfo { group, region: region.into(), start_sku: start.into(), end_sku: end.map(str::to_owned), replicas: replicas.to_vec(), epoch: 1, home_slots }
}

fn bootstrapped() -> Topology {
    let mut topology = Topology::default();
    let nodes = vec![node(1, "eu"), node(2, "eu"), node(3, "eu"), node(4, "eu"), node(5, "us"), node(6, "us"), node(7, "us")];
    let ranges = vec![
        range(1, "eu", ("", Some("h")), &[1, 2, 3], stockd_home::bootstrap_slots(0, 3)),
        range(2, "eu", ("h", Some("p")), &[1, 2, 3], stockd_home::bootstrap_slots(1, 3)),
        range(3, "eu", ("p", None), &[2, 3, 4], stockd_home::bootstrap_slots(2, 3)),
        range(1001, "us", ("", None), &[5, 6, 7], stockd_home::ALL_SLOTS),
    ];
    let placement = BTreeMap::from([("eu".to_owned(), Placement { replication_factor: 3 }), ("us".to_owned(), Placement { replication_factor: 3 })]);
    topology.apply(&TopologyCommand::Bootstrap { nodes, ranges, placement, balance: true, metadata: vec![1, 2, 3] }).expect("bootstrap");
    topology
}

/// A command, its arguments picked against the current state (mostly
/// valid, sometimes stale or wrong).
#[derive(Debug, Clone)]
enum Op {
    Allocate,
    Split { pick: usize, at: usize, stale: bool, fresh_child: bool },
    Merge { pick: usize, stale: bool },
    SetReplicas { pick: usize, nodes: Vec<NodeId> },
    SetState { node: NodeId, state: NodeState },
    AddNode { id: NodeId, us: bool },
}

fn op() -> impl Strategy<Value = Op> {
    let state = prop_oneof![Just(NodeState::Up), Just(NodeState::Draining), Just(NodeState::Removed)];
    prop_oneof![
        2 => Just(Op::Allocate),
        4 => (0..8usize, 0..KEYS.len(), prop::bool::weighted(0.15), prop::bool::weighted(0.1))
            .prop_map(|(pick, at, stale, fresh_child)| Op::Split { pick, at, stale, fresh_child }),
        3 => (0..8usize, prop::bool::weighted(0.15)).prop_map(|(pick, stale)| Op::Merge { pick, stale }),
        2 => (0..8usize, prop::collection::vec(1u64..10, 1..5)).prop_map(|(pick, nodes)| Op::SetReplicas { pick, nodes }),
        1 => (1u64..10, state).prop_map(|(node, state)| Op::SetState { node, state }),
        1 => (1u64..12, any::<bool>()).prop_map(|(id, us)| Op::AddNode { id, us }),
    ]
}

fn nth(topology: &Topology, pick: usize) -> RangeInfo {
    let ranges: Vec<&RangeInfo> = topology.ranges().collect();
    ranges[pick % ranges.len()].clone()
}

fn command(topology: &Topology, op: &Op, last_allocated: Option<GroupId>) -> TopologyCommand {
    match op {
        Op::Allocate => TopologyCommand::AllocateGroup,
        Op::Split { pick, at, stale, fresh_child } => {
            let parent = nth(topology, *pick);
            let child = match (last_allocated, fresh_child) {
                (Some(id), false) => id,
                _ => 9_999,
            };
            TopologyCommand::Split { parent: parent.group, parent_epoch: parent.epoch - u64::from(*stale), at_sku: KEYS[*at].into(), child }
        }
        Op::Merge { pick, stale } => {
            let left = nth(topology, *pick);
            let right =
                topology.ranges().find(|r| r.region == left.region && Some(r.start_sku.as_str()) == left.end_sku.as_deref()).cloned().unwrap_or(left.clone());
            TopologyCommand::Merge { left: left.group, left_epoch: left.epoch, right: right.group, right_epoch: right.epoch - u64::from(*stale) }
        }
        Op::SetReplicas { pick, nodes } => TopologyCommand::SetReplicas { group: nth(topology, *pick).group, replicas: nodes.clone() },
        Op::SetState { node, state } => TopologyCommand::SetNodeState { node: *node, state: *state },
        Op::AddNode { id, us } => TopologyCommand::AddNode(node(*id, if *us { "us" } else { "eu" })),
    }
}

/// Per region and id, its slot's bit and its home as the slot table says
/// (which clients route by) and as `home_for` says: the two must agree.
fn homes(topology: &Topology) -> Vec<(u64, Option<GroupId>)> {
    let mut out = Vec::new();
    for region in ["eu", "us"] {
        let slots = topology.home_slots(region);
        assert_eq!(slots.len(), stockd_home::SLOTS);
        for i in 0..IDS {
            let id = format!("order-{i}");
            let home = slots.get(stockd_home::slot(&id, slots.len())).copied();
            assert_eq!(home, topology.home_for(region, &id).map(|r| r.group), "{id}");
            out.push((stockd_home::slot_bit(&id), home));
        }
    }
    out
}

#[derive(Debug, Default)]
struct Coverage {
    splits: usize,
    merges: usize,
    stale: usize,
    refused: usize,
    replicas: usize,
}

fn run(ops: &[Op], coverage: &mut Coverage) {
    let mut topology = bootstrapped();
    let mut seen: BTreeSet<GroupId> = topology.ranges().map(|r| r.group).collect();
    let mut last_allocated = None;
    for op in ops {
        let command = command(&topology, op, last_allocated);
        let before = topology.clone();
        let homes_before = homes(&topology);
        match topology.apply(&command) {
            Err(e) => {
                assert_eq!(topology, before, "a refused {command:?} changed the topology ({e})");
                coverage.refused += 1;
                coverage.stale += usize::from(matches!(e, TopologyError::StaleEpoch { .. }));
            }
            Ok(answer) => {
                assert_eq!(topology.check_invariants(), Ok(()), "after {command:?}");
                assert_eq!(topology.version, before.version + 1);
                if let TopologyAnswer::Allocated(id) = answer {
                    assert!(seen.insert(id), "group id {id} given twice");
                    last_allocated = Some(id);
                }
                let homes_after = homes(&topology);
                match &command {
                    TopologyCommand::Merge { left, right, .. } => {
                        coverage.merges += 1;
                        for (b, a) in homes_before.iter().zip(&homes_after) {
                            let expected = if b.1 == Some(*right) { Some(*left) } else { b.1 };
                            assert_eq!(a.1, expected, "a merge moves only the right side's homes, to the left");
                        }
                        assert!(topology.range(*right).is_none());
                    }
                    TopologyCommand::Split { parent, child, .. } => {
                        coverage.splits += 1;
                        let moved = topology.range(*child).expect("child").home_slots;
                        assert_eq!(moved, stockd_home::split_slots(before.range(*parent).expect("was").home_slots).1);
                        for (b, a) in homes_before.iter().zip(&homes_after) {
                            let expected = if b.1 == Some(*parent) && moved & b.0 != 0 { Some(*child) } else { b.1 };
                            assert_eq!(a.1, expected, "a split moves the ids of the child's slots, from the parent");
                        }
                        let (p, c) = (topology.range(*parent).expect("parent"), topology.range(*child).expect("child"));
                        assert_eq!((p.epoch, c.epoch, &p.replicas), (c.epoch, before.range(*parent).expect("was").epoch + 1, &c.replicas));
                        last_allocated = None;
                    }
                    other => {
                        coverage.replicas += usize::from(matches!(other, TopologyCommand::SetReplicas { .. }));
                        assert_eq!(homes_after, homes_before, "{other:?} moves no home");
                    }
                }
            }
        }
    }
}

#[test]
fn topology_changes_keep_the_map_whole_and_homes_where_they_are() {
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig { cases: 300, ..ProptestConfig::default() });
    let coverage = std::cell::RefCell::new(Coverage::default());
    let result = runner.run(&prop::collection::vec(op(), 1..60), |ops| {
        run(&ops, &mut coverage.borrow_mut());
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let c = coverage.into_inner();
    eprintln!("topology coverage: {c:?}");
    assert!(c.splits > 100 && c.merges > 50 && c.stale > 10 && c.refused > 100 && c.replicas > 10, "{c:?}");
}

#[test]
fn nothing_but_a_bootstrap_applies_before_one_and_a_bootstrap_only_once() {
    let mut empty = Topology::default();
    assert_eq!(empty.apply(&TopologyCommand::AllocateGroup), Err(TopologyError::NotBootstrapped));
    let mut topology = bootstrapped();
    let again = TopologyCommand::Bootstrap { nodes: vec![], ranges: vec![], placement: BTreeMap::new(), balance: true, metadata: vec![] };
    assert_eq!(topology.apply(&again), Err(TopologyError::Bootstrapped));
    // A bootstrap whose ranges leave a gap is refused whole.
    let gap = TopologyCommand::Bootstrap {
        nodes: vec![node(1, "eu")],
        ranges: vec![range(1, "eu", ("", Some("h")), &[1], u64::from(u32::MAX)), range(2, "eu", ("k", None), &[1], u64::MAX << 32)],
        placement: BTreeMap::new(),
        balance: true,
        metadata: vec![1],
    };
    let refused = empty.apply(&gap).expect_err("a gap");
    assert!(refused.to_string().contains("does not end where"), "{refused}");
    assert_eq!(empty, Topology::default());
    // So is one whose home slots overlap, or leave one held by no group.
    for (left, right, why) in [(u64::from(u32::MAX), u64::MAX, "held by another group too"), (1, 2, "held by no group")] {
        let bad = TopologyCommand::Bootstrap {
            nodes: vec![node(1, "eu")],
            ranges: vec![range(1, "eu", ("", Some("h")), &[1], left), range(2, "eu", ("h", None), &[1], right)],
            placement: BTreeMap::new(),
            balance: true,
            metadata: vec![1],
        };
        let refused = empty.apply(&bad).expect_err(why);
        assert!(refused.to_string().contains(why), "{refused}");
        assert_eq!(empty, Topology::default());
    }
    // The first allocated id follows the bootstrap's largest.
    assert_eq!(topology.apply(&TopologyCommand::AllocateGroup), Ok(TopologyAnswer::Allocated(1002)));
    // A node that holds replicas cannot be removed before it is drained.
    let refused = topology.apply(&TopologyCommand::SetNodeState { node: 1, state: NodeState::Removed }).expect_err("holds replicas");
    assert!(refused.to_string().contains("drain it first"), "{refused}");
}

#[test]
fn a_join_adds_a_node_once_and_refuses_a_known_id_elsewhere_or_a_removed_one() {
    let mut topology = bootstrapped();
    let joiner = NodeInfo { peer_addr: Some("127.0.0.1:7208".into()), ..node(8, "eu") };
    assert_eq!(topology.apply(&TopologyCommand::Join(joiner.clone())), Ok(TopologyAnswer::Done));
    assert_eq!(topology.node(8), Some(&joiner));
    assert!(topology.hosted_by(8).next().is_none(), "a joined node holds no replica");
    // Again (a restart with --join): nothing changes.
    let before = topology.clone();
    assert_eq!(topology.apply(&TopologyCommand::Join(joiner.clone())), Ok(TopologyAnswer::Done));
    assert_eq!(topology.nodes().collect::<Vec<_>>(), before.nodes().collect::<Vec<_>>());
    // The same id at another address is another node: refused, unchanged.
    let elsewhere = NodeInfo { addr: "10.0.0.9:7100".into(), ..joiner.clone() };
    let refused = topology.apply(&TopologyCommand::Join(elsewhere)).expect_err("a known id");
    assert!(refused.to_string().contains("in the cluster already at 127.0.0.1:7108"), "{refused}");
    assert_eq!(topology.node(8), Some(&joiner));
    // A removed id never comes back.
    topology.apply(&TopologyCommand::SetNodeState { node: 8, state: NodeState::Removed }).expect("remove the empty node");
    let refused = topology.apply(&TopologyCommand::Join(joiner)).expect_err("removed");
    assert!(refused.to_string().contains("never reused"), "{refused}");
}

#[test]
fn the_balancing_switch_starts_as_bootstrapped_and_turns_on_and_off() {
    let mut topology = bootstrapped();
    assert!(topology.balance_enabled());
    let version = topology.version;
    topology.apply(&TopologyCommand::SetBalance { enabled: false }).expect("off");
    assert!(!topology.balance_enabled());
    assert_eq!(topology.version, version + 1, "a cached copy sees the change");
    topology.apply(&TopologyCommand::SetBalance { enabled: true }).expect("on");
    assert!(topology.balance_enabled());
    let mut paused = Topology::default();
    paused
        .apply(&TopologyCommand::Bootstrap {
            nodes: vec![node(1, "eu")],
            ranges: vec![range(1, "eu", ("", None), &[1], stockd_home::ALL_SLOTS)],
            placement: BTreeMap::new(),
            balance: false,
            metadata: vec![1],
        })
        .expect("bootstrap");
    assert!(!paused.balance_enabled());
}

#[test]
fn the_metadata_group_s_replicas_move_to_any_region_and_hold_their_node_until_they_leave() {
    let mut topology = bootstrapped();
    assert_eq!(topology.metadata_replicas(), [1, 2, 3]);
    assert_eq!((topology.replica_count(1), topology.replica_count(4)), (3, 1), "two ranges and the metadata group; one range");
    // Refused whole: nobody, a node twice, an unknown node.
    for (replicas, why) in [(vec![], "1 to 6 replicas"), (vec![1, 1, 2], "named twice"), (vec![1, 2, 99], "no node 99")] {
        let refused = topology.apply(&TopologyCommand::SetReplicas { group: METADATA_GROUP, replicas }).expect_err(why);
        assert!(refused.to_string().contains(why), "{refused}");
        assert_eq!(topology.metadata_replicas(), [1, 2, 3]);
    }
    // A move: the new node added (any region: the topology holds no user
    // data), then the old one out.
    topology.apply(&TopologyCommand::SetReplicas { group: METADATA_GROUP, replicas: vec![1, 2, 3, 5] }).expect("add node 5 of us");
    let refused = topology.apply(&TopologyCommand::SetNodeState { node: 3, state: NodeState::Removed }).expect_err("node 3 holds ranges");
    assert!(refused.to_string().contains("drain it first"), "{refused}");
    topology.apply(&TopologyCommand::SetReplicas { group: METADATA_GROUP, replicas: vec![1, 2, 5] }).expect("node 3 out");
    assert_eq!(topology.metadata_replicas(), [1, 2, 5]);
    // Node 7 holds one range only; once it is moved away it can go, but
    // node 5, a metadata replica, cannot until its replica moves.
    let refused = topology.apply(&TopologyCommand::SetNodeState { node: 5, state: NodeState::Removed }).expect_err("node 5 holds the metadata");
    assert!(refused.to_string().contains("group 0 (the metadata group): drain it first"), "{refused}");
    topology.apply(&TopologyCommand::SetNodeState { node: 4, state: NodeState::Draining }).expect("drain 4");
    topology.apply(&TopologyCommand::SetReplicas { group: 3, replicas: vec![1, 2, 3] }).expect("node 4's range moves");
    topology.apply(&TopologyCommand::SetReplicas { group: METADATA_GROUP, replicas: vec![1, 2, 4] }).expect("a draining node is not removed");
    let refused = topology.apply(&TopologyCommand::SetNodeState { node: 4, state: NodeState::Removed }).expect_err("the metadata replica");
    assert!(refused.to_string().contains("group 0 (the metadata group): drain it first"), "{refused}");
    topology.apply(&TopologyCommand::SetReplicas { group: METADATA_GROUP, replicas: vec![1, 2, 3] }).expect("back to 3");
    topology.apply(&TopologyCommand::SetNodeState { node: 4, state: NodeState::Removed }).expect("empty now");
    let refused = topology.apply(&TopologyCommand::SetReplicas { group: METADATA_GROUP, replicas: vec![1, 2, 4] }).expect_err("removed");
    assert!(refused.to_string().contains("node 4 is removed"), "{refused}");
    assert_eq!(topology.check_invariants(), Ok(()));
    // A bootstrap names them, and names known nodes.
    let mut empty = Topology::default();
    let bad = TopologyCommand::Bootstrap {
        nodes: vec![node(1, "eu")],
        ranges: vec![range(1, "eu", ("", None), &[1], stockd_home::ALL_SLOTS)],
        placement: BTreeMap::new(),
        balance: true,
        metadata: vec![2],
    };
    let refused = empty.apply(&bad).expect_err("unknown metadata replica");
    assert!(refused.to_string().contains("no node 2"), "{refused}");
    assert_eq!(empty, Topology::default());
}
