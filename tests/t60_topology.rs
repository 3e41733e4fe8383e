//! The elastic topology on a real cluster (3 nodes): the metadata group
//! bootstraps the topology and every node learns it; a split under load
//! moves positions, reservations and cart intents to the new group, loses
//! no acknowledged write, and survives a restart; a merge under load takes
//! the right range back, loses no acknowledged write, waits for carts in
//! flight, and retires the right group's replicas; a frozen range answers
//! no reads of its records; cold ranges merge by themselves; a node joins
//! the running cluster and takes a replica; a drained node's replicas move
//! to the others and an empty node is removed; a replica moves to a node that had none under load,
//! and so does the leader's own replica; a move whose driver stopped before
//! the topology recorded it is fixed by the group's leader;
//! leaders piled on one node (by leader moves, then by a restart) spread
//! out once balancing is on, and a joined node takes its share of replicas
//! and leaders, under load, with no acknowledged write lost.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::line;
use common::poll;
use common::receive;
use common::reserve;
use common::test_config;
use common::Cluster;
use common::SERIAL;
use stockd::proto::v1 as pb;
use storage::topology::METADATA_GROUP;

const LOC: &str = "wh1";
/// Test clusters split at "8": group 1 is [.., "8"), group 2 ["8", ..).
const RIGHT: u32 = 2;
const SKUS: [&str; 6] = ["b-0", "b-2", "b-4", "b-6", "b-8", "c-1"];
const AT: &str = "b-5";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_learns_the_topology_from_the_metadata_group() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(3, test_config()).await;
    poll("the metadata group holds the bootstrapped topology", Duration::from_secs(20), || async {
        (1..=3).all(|id| cluster.node(id).group(METADATA_GROUP).is_some_and(|g| g.state().read().topology().is_bootstrapped()))
    })
    .await;
    for id in 1..=3 {
        let topology = cluster.node(id).topology();
        assert_eq!(topology.ranges().count(), 2, "node {id}");
        let halves: Vec<u32> = [1; 32].into_iter().chain([2; 32]).collect();
        assert_eq!(topology.home_slots("local"), halves, "node {id}: each group holds half of the home slots, in range order");
    }
    // Status tells clients the home slots and the version routed with.
    let mut admin = pb::admin_client::AdminClient::new(cluster.channel(2, Some("operator")));
    let status = admin.status(pb::StatusRequest {}).await.expect("status").into_inner();
    assert_eq!(status.home_slots.len(), 64);
    assert_eq!(status.home_slots, cluster.node(2).topology().home_slots("local"));
    assert!(status.topology_version >= 1);
    assert!(status.groups.iter().all(|g| g.group_id != METADATA_GROUP), "the metadata group is not a shard");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_under_load_moves_its_records_and_loses_no_write() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(3, test_config()).await;
    let mut feed = cluster.feed(1).await;
    for sku in SKUS {
        receive(&mut feed, &format!("stock-{sku}"), sku, LOC, 1_000).await;
    }
    receive(&mut feed, "stock-0-x", "0-x", LOC, 100).await;
    let node = cluster.node(1).clone();
    // Held before the split: one reservation on a SKU that moves, and a
    // cart whose moving line is an intent (homed in group 1, so the split
    // may take its line with the position).
    let mut c = cluster.client(1).await;
    reserve(&mut c, "before-split", vec![line("b-6", LOC, 5)], 60_000).await.expect("reserve");
    let cart_id = (0..).map(|i| format!("cart-{i}")).find(|id| node.home_of(id) == Some(1)).expect("an id homed in group 1");
    let cart = reserve(&mut c, &cart_id, vec![line("0-x", LOC, 1), line("b-8", LOC, 2)], 60_000).await.expect("cart");
    assert_eq!(cart.outcome(), pb::Outcome::Ok);
    // A cart homed in the splitting group with its own lines on the right:
    // the split takes them away from the record, which from then on has
    // them followed as it has any other group's.
    // Group 2 holds home slots 32-63; the split hands 48-63 to the child.
    let slot = |id: &str| stockd_proto::home::slot(id, stockd_proto::home::SLOTS);
    let apart_id = (0..).map(|i| format!("apart-{i}")).find(|id| node.home_of(id) == Some(RIGHT) && slot(id) < 48).expect("an id that stays in group 2");
    reserve(&mut c, &apart_id, vec![line("0-x", LOC, 1), line("b-6", LOC, 1)], 60_000).await.expect("cart with its own lines on the right");
    // And a record that goes with its slot, leaving its own lines behind.
    let moved_id = (0..).map(|i| format!("moved-{i}")).find(|id| slot(id) >= 48).expect("an id of the child's slots");
    reserve(&mut c, &moved_id, vec![line("0-x", LOC, 1), line("b-2", LOC, 1)], 60_000).await.expect("cart homed in the upper slots");

    // Writers on both sides of the split key while it happens.
    let stop = Arc::new(AtomicBool::new(false));
    let writing = writers(&cluster, &SKUS, &stop);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let client = stockd_client::Client::new(&cluster.addrs).expect("client");
    let split = client.split_shard(RIGHT, AT).await.expect("split");
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acknowledged = BTreeMap::new();
    for writer in writing {
        acknowledged.extend(writer.await.expect("writer"));
    }
    let (parent, child) = (split.parent.expect("parent"), split.child.expect("child"));
    assert_eq!((parent.group_id, parent.start_sku.as_str(), parent.end_sku.as_str(), parent.epoch), (RIGHT, "8", AT, 2));
    assert_eq!((child.start_sku.as_str(), child.end_sku.as_str(), child.epoch), (AT, "", 2));
    assert_eq!(child.replicas.len(), 3);
    assert!(child.group_id > RIGHT, "a new id");

    // Every acknowledged reservation is held, in the group of its SKU.
    assert!(acknowledged.len() > 20, "the writers made progress: {}", acknowledged.len());
    for (id, sku) in &acknowledged {
        let held = client.get_reservation(id).await.unwrap_or_else(|e| panic!("{id}: {e}"));
        let r = held.reservation.expect("reservation");
        assert_eq!(r.state(), pb::ReservationState::Pending, "{id}");
        let group = if *sku >= AT { child.group_id } else { RIGHT };
        assert_eq!(r.home_group, group, "{id} on {sku}");
    }
    // What was held before the split moved with its position and finishes.
    client.commit("before-split").await.expect("commit a reservation that moved");
    let committed = client.commit(&cart_id).await.expect("commit a cart whose intent moved");
    assert_eq!(committed.reservation.expect("cart").state(), pb::ReservationState::Committed);
    let record_group = node.home_of(&apart_id).expect("home");
    let apart = node.group(record_group).and_then(|g| g.state().read().cart(&apart_id).cloned()).expect("the record");
    assert!(apart.own_apart, "the split put the record's own lines (b-6) in the new group: {apart:?}");
    let committed = client.commit(&apart_id).await.expect("commit a cart whose own lines left its home");
    assert_eq!(committed.reservation.expect("cart").state(), pb::ReservationState::Committed);
    assert_eq!(node.home_of(&moved_id), Some(child.group_id), "the record went with its home slot");
    let found = client.get_reservation(&moved_id).await.expect("get a record that moved").reservation.expect("found");
    assert_eq!((found.state(), found.home_group), (pb::ReservationState::Pending, child.group_id));
    let committed = client.commit(&moved_id).await.expect("commit a record that moved");
    assert_eq!(committed.reservation.expect("cart").state(), pb::ReservationState::Committed);
    let at = |sku: &str| {
        let group = cluster.node(2).topology().group_for("local", sku).expect("group").group;
        let replica = cluster.node(2).group(group).expect("hosted");
        let p = replica.state().read().position(&storage::model::PositionKey::new(sku, LOC)).cloned().expect("position");
        (group, p.committed)
    };
    poll("the commits applied on node 2", Duration::from_secs(10), || async { at("b-6").1 == 6 && at("b-8").1 == 2 && at("b-2").1 == 1 }).await;
    assert_eq!(at("b-8").0, child.group_id);
    // The parent no longer answers for a SKU that left it, not even
    // "absent": a read routed there with an old map is refused as stale.
    let moved = stockd::read::ReadQuery::Position(storage::model::PositionKey::new("b-8", LOC));
    let stale = cluster.node(2).read_local(RIGHT, &moved, stockd::read::Consistency::Any).await.expect_err("b-8 left group 2");
    assert!(matches!(stale, raft::GroupError::StaleRoute { .. }), "{stale}");

    // A restarted node starts the child from its own disk.
    cluster.stop_node(3).await;
    cluster.start_node(3).await;
    let restarted = cluster.node(3).clone();
    poll("node 3 runs the child again", Duration::from_secs(20), || async { restarted.group(child.group_id).is_some_and(|g| g.leader().is_some()) }).await;
    let replica = restarted.group(child.group_id).expect("child");
    let b8 = replica.state().read().position(&storage::model::PositionKey::new("b-8", LOC)).cloned().expect("b-8 in the child");
    assert_eq!(b8.committed, 2);
    assert_eq!(restarted.topology().range(child.group_id).map(|r| r.start_sku.clone()), Some(AT.to_owned()));

    // A second split at the same key is refused with the reason, and the
    // listing shows three data groups.
    let again = client.split_shard(RIGHT, AT).await.expect_err("split twice");
    assert!(again.to_string().contains("not strictly inside"), "{again}");
    let reports = client.status_all().await;
    let listed = stockd::cli::shard_list_json(&reports);
    assert_eq!(listed["shards"].as_array().map(Vec::len), Some(3), "{listed}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locator_written_before_a_split_does_not_lose_the_reservation() {
    let _serial = SERIAL.lock().await;
    // 4 nodes, 3 replicas: group 1 on nodes 1-3, group 2 on nodes 2-4, so
    // node 1 finds group 2's reservations only through the id's home.
    let cluster = Cluster::start(4, test_config()).await;
    let node = cluster.node(1).clone();
    assert!(node.group(RIGHT).is_none(), "node 1 does not replicate group 2");
    let mut feed = cluster.feed(2).await;
    receive(&mut feed, "stock-b-8", "b-8", LOC, 10).await;
    let id = (0..).map(|i| format!("located-{i}")).find(|id| node.home_of(id) == Some(1)).expect("an id homed in group 1");
    let mut c = cluster.client(1).await;
    reserve(&mut c, &id, vec![line("b-8", LOC, 3)], 60_000).await.expect("reserve");
    // The first lookup asks every group and leaves a locator at the home.
    let found = c.get_reservation(pb::ReservationRef { reservation_id: id.clone() }).await.expect("get").into_inner();
    assert_eq!(found.reservation.expect("found").home_group, RIGHT);
    let home = node.group(1).expect("node 1 replicates group 1");
    poll("the locator at the id's home", Duration::from_secs(10), || async { home.state().read().locator(&id).map(|l| l.group) == Some(RIGHT) }).await;

    // The split moves the reservation away from the group the locator names.
    let split = node.split_group(RIGHT, Some(AT.into())).await.expect("split");
    let lookups = node.lookups_everywhere();
    let committed = c.commit(pb::ReservationRef { reservation_id: id.clone() }).await.expect("commit").into_inner();
    assert_eq!(committed.outcome(), pb::Outcome::Ok, "the stale locator sent the commit to group 2, then every group was asked");
    let r = committed.reservation.expect("reservation");
    assert_eq!((r.state(), r.home_group), (pb::ReservationState::Committed, split.child.group));
    assert!(node.lookups_everywhere() > lookups);
    cluster.shutdown().await;
}

/// A locator at the id's home names the group that held the reservation;
/// merges then move it on. A merge into a third group leaves the locator
/// naming a retired group: the commit still finds the reservation. A merge
/// into the locator's own group brings the two together: the reserve's
/// retry is a replay, not a reused id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locator_outlived_by_its_group_neither_loses_nor_refuses_the_reservation() {
    let _serial = SERIAL.lock().await;
    // As above: node 1 does not replicate group 2, nor the child it splits off.
    let cluster = Cluster::start(4, test_config()).await;
    let node = cluster.node(1).clone();
    let mut feed = cluster.feed(2).await;
    receive(&mut feed, "stock-b-8", "b-8", LOC, 10).await;
    let client = stockd_client::Client::new(&cluster.addrs).expect("client");
    let child = client.split_shard(RIGHT, AT).await.expect("split").child.expect("child").group_id;
    let id = (0..).map(|i| format!("outlived-{i}")).find(|id| node.home_of(id) == Some(1)).expect("an id homed in group 1");
    let mut c = cluster.client(1).await;
    let first = reserve(&mut c, &id, vec![line("b-8", LOC, 3)], 60_000).await.expect("reserve");
    assert_eq!(first.outcome(), pb::Outcome::Ok);
    let found = c.get_reservation(pb::ReservationRef { reservation_id: id.clone() }).await.expect("get").into_inner();
    assert_eq!(found.reservation.expect("found").home_group, child);
    let home = node.group(1).expect("node 1 replicates group 1");
    poll("the locator at the id's home", Duration::from_secs(10), || async { home.state().read().locator(&id).map(|l| l.group) == Some(child) }).await;

    // The child merges back into group 2: the locator names a retired group.
    assert_eq!(client.merge_shard(RIGHT).await.expect("merge").retired_group_id, child);
    poll("node 1 sees the child retired", Duration::from_secs(10), || async { node.topology().range(child).is_none() }).await;
    let committed = c.commit(pb::ReservationRef { reservation_id: id.clone() }).await.expect("commit").into_inner();
    assert_eq!(committed.outcome(), pb::Outcome::Ok, "{committed:?}");
    assert_eq!(committed.reservation.expect("reservation").home_group, RIGHT);

    // Group 2 merges into group 1, which holds the locator.
    assert_eq!(client.merge_shard(1).await.expect("merge").retired_group_id, RIGHT);
    poll("node 1 sees group 2 retired", Duration::from_secs(10), || async { node.topology().range(RIGHT).is_none() }).await;
    let retried = reserve(&mut c, &id, vec![line("b-8", LOC, 3)], 60_000).await.expect("the reserve again");
    assert_eq!((retried.outcome(), retried.replay), (pb::Outcome::Ok, true), "{retried:?}");
    assert!(home.state().read().locator(&id).is_none(), "the merge dropped the locator beside its reservation");
    let got = c.get_reservation(pb::ReservationRef { reservation_id: id.clone() }).await.expect("get").into_inner();
    let r = got.reservation.expect("found");
    assert_eq!((r.state(), r.home_group), (pb::ReservationState::Committed, 1));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_split_by_themselves_by_size_and_a_hot_sku_ends_up_alone() {
    let _serial = SERIAL.lock().await;
    let mut file = test_config();
    file.cluster.split_positions_max = 6;
    file.cluster.split_load_cmds_per_s = 40;
    let cluster = Cluster::start(3, file).await;
    let node = cluster.node(1).clone();
    // Size: eight positions in group 1 (`..8`), more than six.
    let mut feed = cluster.feed(1).await;
    for i in 0..8 {
        receive(&mut feed, &format!("size-{i}"), &format!("1-{i}"), LOC, 5).await;
    }
    poll("group 1 split by size", Duration::from_secs(30), || async { node.topology().range(1).is_some_and(|r| r.epoch > 1) }).await;

    // Load: writers on one hot SKU and a few cold ones, all in group 2.
    for sku in ["b-1", "b-5", "c-2"] {
        receive(&mut feed, &format!("stock-{sku}"), sku, LOC, 1_000_000).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..3 {
        let client = stockd_client::Client::new(&cluster.addrs).expect("client");
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let sku = if i % 10 == 9 { ["b-1", "c-2"][i % 2] } else { "b-5" };
                let id = format!("load-{w}-{i}");
                let request = pb::ReserveRequest { reservation_id: id.clone(), lines: vec![line(sku, LOC, 1)], ttl_ms: 60_000, risk_gate: None };
                if client.reserve(request).await.is_ok_and(|a| a.outcome() == pb::Outcome::Ok) {
                    acknowledged.push(id);
                }
                i += 1;
            }
            acknowledged
        }));
    }
    let alone = |node: &stockd::node::Node| node.topology().ranges().any(|r| r.start_sku == "b-5" && r.end_sku.as_deref() == Some("b-5!"));
    poll("b-5 alone in its range", Duration::from_secs(60), || async { alone(&node) }).await;
    stop.store(true, Ordering::Relaxed);
    let client = stockd_client::Client::new(&cluster.addrs).expect("client");
    let mut count = 0;
    for writer in writers {
        for id in writer.await.expect("writer") {
            let r = client.get_reservation(&id).await.unwrap_or_else(|e| panic!("{id}: {e}")).reservation.expect("held");
            assert_eq!(r.state(), pb::ReservationState::Pending, "{id}");
            count += 1;
        }
    }
    assert!(count > 100, "the writers made progress: {count}");
    let hot = node.topology().group_for("local", "b-5").expect("group").clone();
    assert_eq!((hot.start_sku.as_str(), hot.end_sku.as_deref()), ("b-5", Some("b-5!")));
    assert_ne!(node.topology().group_for("local", "c-2").map(|r| r.group), Some(hot.group), "the cold SKUs are elsewhere");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_missed_the_split_gets_the_child_by_snapshot() {
    let _serial = SERIAL.lock().await;
    let mut file = test_config();
    // Snapshots (and log purges) after a few entries: a replica that was
    // away while the split applied can only catch up by snapshot.
    file.cluster.snapshot_logs_since_last = 20;
    file.cluster.logs_to_keep_after_snapshot = 5;
    let mut cluster = Cluster::start(3, file).await;
    let mut feed = cluster.feed(1).await;
    for sku in ["b-1", "b-8"] {
        receive(&mut feed, &format!("stock-{sku}"), sku, LOC, 100).await;
    }
    cluster.stop_node(3).await;
    let node = cluster.node(1).clone();
    let split = node.split_group(RIGHT, Some(AT.into())).await.expect("split while node 3 is down");
    let child = split.child.group;
    // Enough entries in both groups that their logs move past what node 3 has.
    let client = stockd_client::Client::new(&cluster.addrs[..2]).expect("client");
    for i in 0..60 {
        let sku = if i % 2 == 0 { "b-1" } else { "b-8" };
        let request = pb::ReserveRequest { reservation_id: format!("away-{i}"), lines: vec![line(sku, LOC, 1)], ttl_ms: 60_000, risk_gate: None };
        assert_eq!(client.reserve(request).await.expect("reserve").outcome(), pb::Outcome::Ok);
    }
    for id in [1, 2] {
        let g = cluster.node(id).group(RIGHT).expect("parent");
        poll("the parent snapshotted past the split", Duration::from_secs(20), || async { g.raft().metrics().borrow().snapshot.is_some_and(|s| s.index > 10) })
            .await;
    }

    cluster.start_node(3).await;
    let back = cluster.node(3).clone();
    poll("node 3 holds the child with its positions", Duration::from_secs(30), || async {
        back.group(child).is_some_and(|g| {
            let b8 = g.state().read().position(&storage::model::PositionKey::new("b-8", LOC)).cloned();
            b8.is_some_and(|p| p.on_hand == 100 && p.reserved == 30)
        })
    })
    .await;
    let parent = back.group(RIGHT).expect("parent on node 3");
    poll("node 3's parent caught up", Duration::from_secs(20), || async {
        parent.range().end_sku.as_deref() == Some(AT)
            && parent.state().read().position(&storage::model::PositionKey::new("b-1", LOC)).is_some_and(|p| p.reserved == 30)
    })
    .await;
    assert!(parent.state().read().position(&storage::model::PositionKey::new("b-8", LOC)).is_none(), "b-8 left the parent");
    cluster.shutdown().await;
}

/// Four writers reserving one unit of `skus` in turn until `stop`; each
/// returns the ids it had acknowledged with the SKU.
fn writers(cluster: &Cluster, skus: &'static [&'static str], stop: &Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<BTreeMap<String, &'static str>>> {
    (0..4)
        .map(|w| {
            let client = stockd_client::Client::new(&cluster.addrs).expect("client");
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut acknowledged = BTreeMap::new();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let sku = skus[(w + i) % skus.len()];
                    let id = format!("m{w}-{i}");
                    let request = pb::ReserveRequest { reservation_id: id.clone(), lines: vec![line(sku, LOC, 1)], ttl_ms: 600_000, risk_gate: None };
                    if let Ok(answer) = client.reserve(request).await {
                        assert_eq!(answer.outcome(), pb::Outcome::Ok, "{id} on {sku}");
                        acknowledged.insert(id, sku);
                    }
                    i += 1;
                }
                acknowledged
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_under_load_takes_the_range_back_and_retires_its_replicas() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(3, test_config()).await;
    let mut feed = cluster.feed(1).await;
    for sku in SKUS {
        receive(&mut feed, &format!("stock-{sku}"), sku, LOC, 1_000).await;
    }
    receive(&mut feed, "stock-0-x", "0-x", LOC, 100).await;
    let client = stockd_client::Client::new(&cluster.addrs).expect("client");
    let split = client.split_shard(RIGHT, AT).await.expect("split");
    let child = split.child.expect("child").group_id;
    let mut c = cluster.client(1).await;
    reserve(&mut c, "held-right", vec![line("b-8", LOC, 4)], 60_000).await.expect("reserve on the right side");

    // A cart with units in the right range keeps it from freezing: the
    // merge is refused and nothing changes until the cart is settled.
    let node = cluster.node(1).clone();
    let cart_id = (0..).map(|i| format!("mcart-{i}")).find(|id| node.home_of(id) == Some(1)).expect("an id homed in group 1");
    reserve(&mut c, &cart_id, vec![line("0-x", LOC, 1), line("b-6", LOC, 2)], 60_000).await.expect("cart");
    poll("the cart's intent is prepared in the right range", Duration::from_secs(10), || async {
        node.group(child).is_some_and(|g| g.state().read().intent_of(&cart_id).is_some())
    })
    .await;
    let refused = client.merge_shard(RIGHT).await.expect_err("a cart holds units in the right range");
    assert!(refused.to_string().contains("cart"), "{refused}");
    assert!(node.topology().range(child).is_some(), "nothing changed");
    client.commit(&cart_id).await.expect("commit the cart");
    let fulfilled = client.fulfill(&cart_id).await.expect("fulfill the cart");
    assert_eq!(fulfilled.reservation.expect("cart").state(), pb::ReservationState::Fulfilled);

    // Writers on both sides while the merge happens.
    let stop = Arc::new(AtomicBool::new(false));
    let writing = writers(&cluster, &SKUS, &stop);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let merged = poll_ok("the merge, once the cart's intent followed", Duration::from_secs(20), || client.merge_shard(RIGHT)).await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acknowledged = BTreeMap::new();
    for writer in writing {
        acknowledged.extend(writer.await.expect("writer"));
    }
    let range = merged.merged.expect("merged range");
    assert_eq!((range.group_id, range.start_sku.as_str(), range.end_sku.as_str()), (RIGHT, "8", ""));
    assert_eq!(range.epoch, 3, "the next epoch of both sides (2)");
    assert_eq!(merged.retired_group_id, child);

    // Every acknowledged reservation is held, now in the merged group.
    assert!(acknowledged.len() > 20, "the writers made progress: {}", acknowledged.len());
    for (id, sku) in &acknowledged {
        let held = client.get_reservation(id).await.unwrap_or_else(|e| panic!("{id}: {e}"));
        let r = held.reservation.expect("reservation");
        assert_eq!((r.state(), r.home_group), (pb::ReservationState::Pending, RIGHT), "{id} on {sku}");
    }
    let committed = client.commit("held-right").await.expect("commit a reservation that came back");
    assert_eq!(committed.reservation.expect("held").home_group, RIGHT);
    // The right group's replicas are retired everywhere, their data deleted.
    for id in 1..=3 {
        let n = cluster.node(id).clone();
        poll("the right group's replica retired", Duration::from_secs(20), || async { n.group(child).is_none() && n.topology().range(child).is_none() }).await;
    }
    let b8 = |id: u64| cluster.node(id).group(RIGHT).and_then(|g| g.state().read().position(&storage::model::PositionKey::new("b-8", LOC)).cloned());
    poll("b-8 is in the merged group on every node", Duration::from_secs(10), || async { (1..=3).all(|id| b8(id).is_some_and(|p| p.committed == 4)) }).await;
    cluster.stop_node(3).await;
    assert!(stockd::bootstrap::stored_groups(&*open_engine(&cluster, 3)).expect("scan").iter().all(|g| *g != child), "no record of the retired group is left");
    cluster.start_node(3).await;
    let back = cluster.node(3).clone();
    poll("node 3 serves the merged range after a restart", Duration::from_secs(20), || async {
        back.group(RIGHT).is_some_and(|g| g.range().end_sku.is_none() && g.leader().is_some())
    })
    .await;
    assert!(back.group(child).is_none(), "the retired group does not come back");
    // A merge with nothing after it is refused with the reason.
    let last = client.merge_shard(RIGHT).await.expect_err("the last range");
    assert!(last.to_string().contains("last range"), "{last}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_range_answers_no_reads_until_its_merge_finishes() {
    use stockd::read::Consistency;
    use stockd::read::ReadQuery;
    use storage::model::PositionKey;
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(3, test_config()).await;
    let mut feed = cluster.feed(1).await;
    receive(&mut feed, "stock-b-8", "b-8", LOC, 10).await;
    let mut c = cluster.client(1).await;
    reserve(&mut c, "frozen-held", vec![line("b-8", LOC, 3)], 600_000).await.expect("reserve");
    let node = cluster.node(1).clone();
    // Frozen as by a merge driver that stopped right after the freeze.
    let (_, frozen) = node.propose(RIGHT, storage::model::Command::Freeze).await.expect("freeze");
    assert!(frozen.frozen_at.is_some(), "{frozen:?}");
    poll("every replica applied the freeze", Duration::from_secs(10), || async {
        (1..=3).all(|id| cluster.node(id).group(RIGHT).is_some_and(|g| g.state().read().frozen_at().is_some()))
    })
    .await;
    // Its records are not answered (the left group may hold them already),
    // at any consistency, and no local replica names it.
    let key = PositionKey::new("b-8", LOC);
    for consistency in [Consistency::Strong, Consistency::Bounded { max_staleness_ms: 60_000 }, Consistency::Any] {
        let read = node.read(RIGHT, ReadQuery::Position(key.clone()), consistency).await;
        assert!(matches!(read, Err(raft::GroupError::StaleRoute { .. })), "{consistency:?}: {read:?}");
    }
    let read = node.read(RIGHT, ReadQuery::Reservation("frozen-held".into()), Consistency::Strong).await;
    assert!(matches!(read, Err(raft::GroupError::StaleRoute { .. })), "{read:?}");
    assert!((1..=3).all(|id| cluster.node(id).locate_locally("frozen-held", None).is_none()));
    assert!(node.read(RIGHT, ReadQuery::Range, Consistency::Strong).await.is_ok(), "its range is still answered");
    // The frozen group's leader finishes the merge; the records are read
    // from the merged range.
    let client = stockd_client::Client::new(&cluster.addrs).expect("client");
    let held = poll_ok("the reservation, from the merged range", Duration::from_secs(30), || client.get_reservation("frozen-held")).await;
    let r = held.reservation.expect("held");
    assert_eq!((r.state(), r.home_group), (pb::ReservationState::Pending, 1));
    // The answer may come from a node that learnt the merge first.
    poll("node 1 sees the right group retired", Duration::from_secs(10), || async { node.topology().range(RIGHT).is_none() }).await;
    let merged = node.read(1, ReadQuery::Position(key), Consistency::Strong).await.expect("read the merged range");
    assert_eq!(merged.position.expect("b-8").reserved, 3);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_ranges_merge_by_themselves() {
    let _serial = SERIAL.lock().await;
    let mut file = test_config();
    file.cluster.merge_cold_s = 2;
    let cluster = Cluster::start(3, file).await;
    let mut feed = cluster.feed(1).await;
    for sku in ["0-a", "b-1"] {
        receive(&mut feed, &format!("stock-{sku}"), sku, LOC, 10).await;
    }
    let mut c = cluster.client(1).await;
    reserve(&mut c, "cold-held", vec![line("b-1", LOC, 3)], 600_000).await.expect("reserve");
    let node = cluster.node(1).clone();
    poll("one range left", Duration::from_secs(60), || async { node.topology().ranges().count() == 1 }).await;
    let only = node.topology().ranges().next().cloned().expect("a range");
    assert_eq!((only.start_sku.as_str(), only.end_sku.as_deref()), ("", None));
    assert_eq!(node.topology().home_slots("local"), vec![only.group; 64], "the retired group's home slots moved to the merged one");
    let client = stockd_client::Client::new(&cluster.addrs).expect("client");
    let r = client.commit("cold-held").await.expect("commit after the merge").reservation.expect("held");
    assert_eq!((r.state(), r.home_group), (pb::ReservationState::Committed, only.group));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_moves_to_another_node_under_load() {
    let _serial = SERIAL.lock().await;
    // 4 nodes, 3 replicas: group 2 on nodes 2-4, none on node 1.
    let cluster = Cluster::start(4, test_config()).await;
    assert!(cluster.node(1).group(RIGHT).is_none());
    let mut feed = cluster.feed(2).await;
    for sku in SKUS {
        receive(&mut feed, &format!("stock-{sku}"), sku, LOC, 1_000).await;
    }
    let client = stockd_client::Client::new(&cluster.addrs).expect("client");
    let refused = client.move_shard(RIGHT, 3, 4).await.expect_err("node 4 holds a replica already");
    assert!(refused.to_string().contains("invalid"), "{refused}");
    let refused = client.move_shard(RIGHT, 2, 9).await.expect_err("no node 9");
    assert!(refused.to_string().contains("invalid to"), "{refused}");
    assert_eq!(cluster.node(2).group(RIGHT).expect("group 2").progress().voters.len(), 3, "a refused move changes no voter");

    let stop = Arc::new(AtomicBool::new(false));
    let writing = writers(&cluster, &SKUS, &stop);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let moved = client.move_shard(RIGHT, 2, 1).await.expect("move");
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acknowledged = BTreeMap::new();
    for writer in writing {
        acknowledged.extend(writer.await.expect("writer"));
    }
    assert_eq!(moved.range.expect("range").replicas, vec![1, 3, 4]);
    assert!(acknowledged.len() > 20, "the writers made progress: {}", acknowledged.len());
    for id in acknowledged.keys() {
        let r = client.get_reservation(id).await.unwrap_or_else(|e| panic!("{id}: {e}")).reservation.expect("held");
        assert_eq!(r.state(), pb::ReservationState::Pending, "{id}");
    }
    // The new replica holds every acknowledged unit; the old one is gone.
    let reserved_on = |id: u64| {
        cluster
            .node(id)
            .group(RIGHT)
            .map(|g| SKUS.iter().filter_map(|sku| g.state().read().position(&storage::model::PositionKey::new(*sku, LOC)).map(|p| p.reserved)).sum::<u64>())
    };
    let total = acknowledged.len() as u64;
    poll("node 1 caught up", Duration::from_secs(20), || async { reserved_on(1) == Some(total) }).await;
    let old = cluster.node(2).clone();
    poll("node 2 retired its replica", Duration::from_secs(20), || async { old.group(RIGHT).is_none() }).await;
    assert!(old.group(1).is_some(), "node 2 keeps its other group");
    // The same move again answers at once: it is done.
    let again = client.move_shard(RIGHT, 2, 1).await.expect("a repeated move");
    assert_eq!(again.range.expect("range").replicas, vec![1, 3, 4]);
    cluster.shutdown().await;
}

/// A move whose driver stops after the group's voters changed, before the
/// topology recorded them: the topology names node 2 still, which the group
/// no longer has. The group's leader records the voters by itself (after
/// `RECONCILE_AFTER`), node 2 retires its replica, and the next move of
/// that group, which would be refused while the topology named a
/// non-voter, works. No acknowledged reservation is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_stopped_before_the_topology_recorded_it_is_fixed_by_the_group_leader() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(4, test_config()).await;
    let mut feed = cluster.feed(2).await;
    receive(&mut feed, "stock-b-2", "b-2", LOC, 10).await;
    let mut c = cluster.client(2).await;
    reserve(&mut c, "held-across", vec![line("b-2", LOC, 3)], 600_000).await.expect("reserve");
    for id in 1..=4 {
        cluster.node(id).set_failpoint(Some("move-stop-before-record"));
    }
    let client = stockd_client::Client::new(&cluster.addrs).expect("client");
    let stopped = client.move_shard(RIGHT, 2, 1).await.expect_err("the driver stops before step 3");
    assert!(stopped.to_string().contains("failpoint"), "{stopped}");
    for id in 1..=4 {
        cluster.node(id).set_failpoint(None);
    }
    let node = cluster.node(3).clone();
    node.refresh_topology().await;
    let named = |node: &stockd::node::Node| node.topology().range(RIGHT).map(|r| r.replicas.clone()).unwrap_or_default();
    assert_eq!(named(&node), vec![2, 3, 4, 1], "the topology still names node 2 as well as node 1");
    poll("the leader recorded the voters", Duration::from_secs(60), || async { named(&node) == vec![1, 3, 4] }).await;
    let n2 = cluster.node(2).clone();
    poll("node 2 retired its replica", Duration::from_secs(20), || async { n2.group(RIGHT).is_none() }).await;
    // The group moves on as usual: node 3's replica to node 2.
    let moved = client.move_shard(RIGHT, 3, 2).await.expect("a move after the fix");
    assert_eq!(moved.range.expect("range").replicas, vec![1, 2, 4]);
    let r = client.get_reservation("held-across").await.expect("lookup").reservation.expect("held");
    assert_eq!(r.state(), pb::ReservationState::Pending);
    let p = common::position(&mut c, "b-2", LOC, pb::Consistency::Strong).await.position.expect("position");
    assert_eq!((p.on_hand, p.reserved), (10, 3));
    cluster.shutdown().await;
}

/// A group whose range changed (it split) moves a replica to a node that
/// had none: the new replica starts under today's range, so it is caught
/// up from a snapshot, not by replaying the log from its start (whose
/// commands, routed at the first epoch, today's range refuses). It ends
/// with the same records as the others, receipts made before the split
/// included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_of_a_split_group_moves_with_the_state_from_before_the_split() {
    let _serial = SERIAL.lock().await;
    // 4 nodes, 3 replicas: group 2 on nodes 2-4, none on node 1.
    let cluster = Cluster::start(4, test_config()).await;
    let mut feed = cluster.feed(2).await;
    for sku in SKUS {
        receive(&mut feed, &format!("stock-{sku}"), sku, LOC, 100).await;
    }
    let mut c = cluster.client(2).await;
    reserve(&mut c, "before-split", vec![line("b-2", LOC, 3)], 600_000).await.expect("reserve");
    let client = stockd_client::Client::new(&cluster.addrs).expect("client");
    client.split_shard(RIGHT, AT).await.expect("split");
    let epoch_on = |id: u64| cluster.node(id).topology().range(RIGHT).map(|r| r.epoch);
    poll("node 2 routes with the split's epoch", Duration::from_secs(10), || async { epoch_on(2) == Some(2) }).await;
    receive(&mut feed, "after-split-b-0", "b-0", LOC, 7).await;
    let moved = client.move_shard(RIGHT, 2, 1).await.expect("move");
    assert_eq!(moved.range.expect("range").replicas, vec![1, 3, 4]);
    let records = |id: u64| {
        cluster.node(id).group(RIGHT).map(|g| {
            let state = g.state().read();
            let positions: Vec<_> = state.positions().map(|(k, p)| (k.clone(), p.on_hand, p.reserved, p.committed)).collect();
            (positions, state.reservation("before-split").map(|r| r.state), state.last_applied_index())
        })
    };
    poll("node 1's new replica matches node 3's", Duration::from_secs(20), || async {
        matches!((records(1), records(3)), (Some(new), Some(old)) if new == old)
    })
    .await;
    let (positions, held, _) = records(1).expect("node 1's replica");
    assert!(positions.iter().any(|(k, on_hand, _, _)| k.sku == "b-0" && *on_hand == 107), "receipts from before and after the split: {positions:?}");
    assert!(positions.iter().any(|(k, _, reserved, _)| k.sku == "b-2" && *reserved == 3), "{positions:?}");
    assert_eq!(held, Some(storage::model::ReservationState::Pending));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leaders_own_replica_moves_away_under_load() {
    let _serial = SERIAL.lock().await;
    // 4 nodes, 3 replicas: group 2 on nodes 2-4, none on node 1.
    let cluster = Cluster::start(4, test_config()).await;
    let mut feed = cluster.feed(2).await;
    for sku in SKUS {
        receive(&mut feed, &format!("stock-{sku}"), sku, LOC, 1_000).await;
    }
    let leader = poll_ok("group 2 has a leader", Duration::from_secs(20), || async {
        cluster.node(2).group(RIGHT).and_then(|g| g.leader()).map(|(id, _)| id).ok_or("no leader yet")
    })
    .await;
    assert!((2..=4).contains(&leader), "group 2's leader is one of its replicas: {leader}");
    let client = stockd_client::Client::new(&cluster.addrs).expect("client");
    let stop = Arc::new(AtomicBool::new(false));
    let writing = writers(&cluster, &SKUS, &stop);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let moved = client.move_shard(RIGHT, leader, 1).await.expect("move the leader's replica");
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acknowledged = BTreeMap::new();
    for writer in writing {
        acknowledged.extend(writer.await.expect("writer"));
    }
    let mut expected: Vec<u64> = [1, 2, 3, 4].into_iter().filter(|id| *id != leader).collect();
    expected.sort_unstable();
    assert_eq!(moved.range.expect("range").replicas, expected);
    assert!(acknowledged.len() > 20, "the writers made progress: {}", acknowledged.len());
    for id in acknowledged.keys() {
        let r = client.get_reservation(id).await.unwrap_or_else(|e| panic!("{id}: {e}")).reservation.expect("held");
        assert_eq!(r.state(), pb::ReservationState::Pending, "{id}");
    }
    // The group is led by a node that still holds it; the old leader's
    // replica is gone and node 1's holds every acknowledged unit.
    let staying = expected[1];
    let now = poll_ok("group 2 has a new leader", Duration::from_secs(20), || async {
        cluster.node(staying).group(RIGHT).and_then(|g| g.leader()).map(|(id, _)| id).ok_or("no leader yet")
    })
    .await;
    assert!(expected.contains(&now), "led by {now}, replicas {expected:?}");
    let total = acknowledged.len() as u64;
    let reserved_on_1 = || {
        cluster
            .node(1)
            .group(RIGHT)
            .map(|g| SKUS.iter().filter_map(|sku| g.state().read().position(&storage::model::PositionKey::new(*sku, LOC)).map(|p| p.reserved)).sum::<u64>())
    };
    poll("node 1 caught up", Duration::from_secs(20), || async { reserved_on_1() == Some(total) }).await;
    let old = cluster.node(leader).clone();
    poll("the old leader retired its replica", Duration::from_secs(20), || async { old.group(RIGHT).is_none() }).await;
    // Still writable after the move.
    let mut c = cluster.client(now).await;
    reserve(&mut c, "after-leader-move", vec![line("b-8", LOC, 1)], 600_000).await.expect("reserve after the move");
    cluster.shutdown().await;
}

/// A node with no bootstrap list of its own (no `[cluster]` settings, no
/// `--peers`) joins through a node that itself joined later: it takes the
/// cluster's settings from it (its fingerprint is the cluster's), keeps
/// them, is listed, takes a replica, and restarts from the kept settings
/// while the node it joined through is down. mTLS: it asks with its node
/// certificate, which the settings call admits (operators too, no one
/// else).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_the_bootstrap_list_joins_through_any_node() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start_tls(3, test_config()).await;
    let mut feed = cluster.feed(1).await;
    receive(&mut feed, "stock-b-8", "b-8", LOC, 10).await;
    assert_eq!(cluster.join_node().await, 4);
    let n1 = cluster.node(1).clone();
    poll("node 4 joined", Duration::from_secs(20), || async { n1.topology().node(4).is_some() }).await;
    // Node 5 knows only node 4's address, which no bootstrap list names.
    assert_eq!(cluster.join_node_without_bootstrap_list(4).await, 5);
    assert_eq!(cluster.node(5).config.cluster_fingerprint, cluster.node(1).config.cluster_fingerprint, "the cluster's settings");
    assert_eq!(cluster.node(5).config.shard_map, cluster.node(1).config.shard_map);
    let kept = cluster.data_dir(5).join(stockd::join::CLUSTER_SETTINGS_FILE);
    assert_eq!(std::fs::read_to_string(&kept).expect("kept settings"), cluster.node(1).config.cluster_settings);
    poll("node 5 joined", Duration::from_secs(20), || async { n1.topology().node(5).is_some_and(|n| n.peer_addr.is_some()) }).await;
    let client = stockd_client::Client::with_config(
        &cluster.addrs,
        stockd_client::ClientConfig {
            tls: Some(stockd_client::TlsConfig::from_dir(cluster.certs.as_ref().expect("certs"), "operator").expect("tls")),
            ..Default::default()
        },
    )
    .expect("client");
    let moved = client.move_shard(RIGHT, 3, 5).await.expect("a replica to node 5");
    assert_eq!(moved.range.expect("range").replicas, vec![1, 2, 5]);
    let n5 = cluster.node(5).clone();
    poll("node 5 holds group 2's records", Duration::from_secs(20), || async {
        n5.group(RIGHT).and_then(|g| g.state().read().position(&storage::model::PositionKey::new("b-8", LOC)).map(|p| p.on_hand)) == Some(10)
    })
    .await;
    drop(n5);
    // Who may ask for the settings.
    for (role, allowed) in [("reader", false), ("checkout", false), ("operator", true), ("node-1", true)] {
        let mut admin = pb::admin_client::AdminClient::new(cluster.channel(1, Some(role)));
        let answer = admin.cluster_settings(pb::ClusterSettingsRequest {}).await;
        assert_eq!(answer.is_ok(), allowed, "{role}: {answer:?}");
    }
    // Restarted while node 4, which it joined through, is down: it starts
    // from the settings it kept, and serves group 2 again.
    cluster.stop_node(4).await;
    cluster.stop_node(5).await;
    cluster.restart_without_bootstrap_list(5, 4).await;
    let n5 = cluster.node(5).clone();
    poll("node 5 serves group 2 after its restart", Duration::from_secs(30), || async { n5.group(RIGHT).is_some_and(|g| g.leader().is_some()) }).await;
    let mut c = cluster.client(5).await;
    reserve(&mut c, "after-restart", vec![line("b-8", LOC, 1)], 600_000).await.expect("reserve through node 5");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_the_running_cluster_and_takes_a_replica() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(3, test_config()).await;
    let mut feed = cluster.feed(1).await;
    receive(&mut feed, "stock-b-8", "b-8", LOC, 10).await;
    let mut c = cluster.client(1).await;
    reserve(&mut c, "before-join", vec![line("b-8", LOC, 2)], 600_000).await.expect("reserve");
    let joined = cluster.join_node().await;
    assert_eq!(joined, 4);
    for id in 1..=4 {
        let n = cluster.node(id).clone();
        poll("every node's topology lists node 4", Duration::from_secs(20), || async {
            n.topology().node(4).is_some_and(|info| info.state == storage::topology::NodeState::Up && info.peer_addr.is_some())
        })
        .await;
    }
    assert!(cluster.node(4).groups().next().is_none(), "a joined node holds no replica");
    // Status on any node lists it; clients learn its address there.
    let mut admin = pb::admin_client::AdminClient::new(cluster.channel(2, Some("operator")));
    let status = admin.status(pb::StatusRequest {}).await.expect("status").into_inner();
    let four = status.nodes.iter().find(|n| n.id == 4).expect("node 4 in the status");
    assert_eq!((four.addr.as_str(), four.state.as_str()), (cluster.addrs[3].as_str(), "up"));

    // A replica moves to it: the other nodes reach it at the address it joined with.
    let client = stockd_client::Client::new(&cluster.addrs).expect("client");
    let moved = client.move_shard(RIGHT, 1, 4).await.expect("move to the joined node");
    assert!(moved.range.expect("range").replicas.contains(&4));
    {
        // (Scoped: a node kept alive here would keep its database locked
        // through the restart below.)
        let n4 = cluster.node(4).clone();
        let reserved_on_4 =
            || n4.group(RIGHT).and_then(|g| g.state().read().position(&storage::model::PositionKey::new("b-8", LOC)).map(|p| p.reserved)).unwrap_or(0);
        poll("node 4 caught up", Duration::from_secs(20), || async { reserved_on_4() == 2 }).await;
        // Served through the joined node's own address.
        let mut via_4 = cluster.client(4).await;
        reserve(&mut via_4, "after-join", vec![line("b-8", LOC, 3)], 600_000).await.expect("reserve through node 4");
        poll("node 4's replica applied it", Duration::from_secs(20), || async { reserved_on_4() == 5 }).await;
    }

    // Restarted with --join again: nothing changes, it serves its replica.
    let version = cluster.node(1).topology().version;
    cluster.stop_node(4).await;
    cluster.start_node(4).await;
    let back = cluster.node(4).clone();
    poll("node 4 serves its replica after a restart", Duration::from_secs(20), || async {
        back.is_joined() && back.group(RIGHT).is_some_and(|g| g.leader().is_some())
    })
    .await;
    cluster.node(1).refresh_topology().await;
    let after = cluster.node(1).topology();
    assert_eq!(after.nodes().count(), 4);
    assert!(after.version <= version + 1, "a repeated join adds no node: {} then {}", version, after.version);
    let r = client.get_reservation("after-join").await.expect("lookup").reservation.expect("held");
    assert_eq!(r.state(), pb::ReservationState::Pending);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_hands_its_replicas_to_a_joined_one_and_an_empty_node_is_removed() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(3, test_config()).await;
    let mut feed = cluster.feed(1).await;
    for sku in ["0-a", "b-8"] {
        receive(&mut feed, &format!("stock-{sku}"), sku, LOC, 10).await;
    }
    let mut c = cluster.client(1).await;
    reserve(&mut c, "before-drain", vec![line("b-8", LOC, 2)], 600_000).await.expect("reserve");
    assert_eq!(cluster.join_node().await, 4);
    let client = stockd_client::Client::new(&cluster.addrs).expect("client");
    let draining = client.drain_node(3).await.expect("drain node 3").node.expect("node");
    assert_eq!(draining.state, "draining");
    let node = cluster.node(1).clone();
    poll("node 3's replicas moved to node 4", Duration::from_secs(60), || async {
        node.topology().hosted_by(3).next().is_none() && node.topology().hosted_by(4).count() == 2
    })
    .await;
    // Its metadata replica goes last, to node 4 too (a node that holds no
    // replica of the metadata group).
    poll("node 3's metadata replica moved to node 4", Duration::from_secs(60), || async { node.topology().metadata_replicas() == [1, 2, 4] }).await;
    let n3 = cluster.node(3).clone();
    poll("node 3 retired its replicas, the metadata group's too", Duration::from_secs(20), || async { n3.all_groups().is_empty() }).await;
    drop(n3);
    assert!(cluster.node(4).group(METADATA_GROUP).is_some(), "node 4 replicates the metadata group");
    let r = client.get_reservation("before-drain").await.expect("lookup").reservation.expect("held");
    assert_eq!(r.state(), pb::ReservationState::Pending);
    let moved = client.move_shard(RIGHT, 1, 3).await.expect_err("a draining node takes no replica");
    assert!(moved.to_string().contains("draining"), "{moved}");
    // Node 3 holds nothing now: it is removed, and the metadata group,
    // on nodes 1, 2 and 4, records it.
    let removed = client.remove_node(3).await.expect("remove node 3").node.expect("node");
    assert_eq!((removed.id, removed.state.as_str()), (3, "removed"));
    let refused = client.remove_node(4).await.expect_err("node 4 holds replicas");
    assert!(refused.to_string().contains("drain it first"), "{refused}");
    // Node 4's replica is a voter of the metadata group: with node 1
    // stopped, nodes 2 and 4 are its quorum, and a node still joins.
    drop(node);
    cluster.stop_node(1).await;
    let node = cluster.node(2).clone();
    // A node with nothing on it drains at once and is removed.
    assert_eq!(cluster.join_node().await, 5);
    poll("node 5 joined", Duration::from_secs(30), || async { node.topology().node(5).is_some() }).await;
    client.drain_node(5).await.expect("drain node 5");
    let removed = client.remove_node(5).await.expect("remove node 5").node.expect("node");
    assert_eq!((removed.id, removed.state.as_str()), (5, "removed"));
    let refused = client.remove_node(9).await.expect_err("no node 9");
    assert!(refused.to_string().contains("no node 9"), "{refused}");
    // Node 4 restarts with its metadata replica (from its own disk).
    cluster.start_node(1).await;
    cluster.stop_node(4).await;
    cluster.start_node(4).await;
    let n4 = cluster.node(4).clone();
    poll("node 4 replicates the metadata group after a restart", Duration::from_secs(20), || async {
        n4.group(METADATA_GROUP).is_some_and(|g| g.leader().is_some()) && n4.topology().metadata_replicas() == [1, 2, 4]
    })
    .await;
    cluster.shutdown().await;
}

/// Leaders per running node, as each node's own replicas see themselves.
fn leaders_per_node(cluster: &Cluster, ids: &[u64]) -> Vec<usize> {
    ids.iter()
        .map(|&id| if cluster.is_running(id) { cluster.node(id).groups().filter(|g| g.id != METADATA_GROUP && g.is_leader()).count() } else { 0 })
        .collect()
}

fn spread(counts: &[usize]) -> usize {
    counts.iter().max().unwrap_or(&0) - counts.iter().min().unwrap_or(&0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaders_piled_on_one_node_spread_out_and_a_joined_node_takes_its_share() {
    let _serial = SERIAL.lock().await;
    let mut config = test_config();
    config.cluster.groups_per_region = 4;
    config.cluster.split_points = Some(vec!["4".into(), "8".into(), "c".into()]);
    let mut cluster = Cluster::start(3, config).await;
    const SPREAD: [&str; 8] = ["1-a", "3-b", "5-c", "7-d", "9-e", "b-f", "d-0", "f-1"];
    let mut feed = cluster.feed(1).await;
    for sku in SPREAD {
        receive(&mut feed, &format!("stock-{sku}"), sku, LOC, 100_000).await;
    }
    let client = stockd_client::Client::new(&cluster.addrs).expect("client");
    let groups: Vec<u32> = cluster.node(1).topology().ranges().map(|r| r.group).collect();
    assert_eq!(groups.len(), 4);
    let stop = Arc::new(AtomicBool::new(false));
    let writing = writers(&cluster, &SPREAD, &stop);

    // Leader moves, under load: every group ends up led by node 3.
    let node = cluster.node(1).clone();
    for &group in &groups {
        poll_ok(&format!("group {group}'s leader moved to node 3"), Duration::from_secs(30), || node.transfer_leader(group, 3)).await;
    }
    assert_eq!(leaders_per_node(&cluster, &[1, 2, 3]), vec![0, 0, 4]);
    let refused = node.transfer_leader(groups[0], 9).await.expect_err("node 9 replicates nothing");
    assert!(refused.to_string().contains("invalid to"), "{refused}");
    // With balancing off (the test default), they stay there.
    let status = client.status().await.expect("status");
    assert!(!status.balance_enabled);
    tokio::time::sleep(stockd::placement::PLACE_CHECK * 3).await;
    assert_eq!(leaders_per_node(&cluster, &[1, 2, 3]), vec![0, 0, 4], "nothing moves while balancing is off");

    let on = client.set_balance(true).await.expect("balance on");
    assert!(on.enabled);
    poll("leaders spread over the nodes", Duration::from_secs(60), || async { spread(&leaders_per_node(&cluster, &[1, 2, 3])) <= 1 }).await;

    // A restart piles the stopped node's leaders on the others; they spread again.
    cluster.stop_node(2).await;
    poll("node 2's groups elected other leaders", Duration::from_secs(30), || async { leaders_per_node(&cluster, &[1, 3]).iter().sum::<usize>() == 4 }).await;
    cluster.start_node(2).await;
    poll("leaders spread over the nodes after the restart", Duration::from_secs(60), || async {
        let counts = leaders_per_node(&cluster, &[1, 2, 3]);
        counts.iter().sum::<usize>() == 4 && spread(&counts) <= 1
    })
    .await;

    // A joined node takes a quarter of the 12 replicas, and leaders.
    assert_eq!(cluster.join_node().await, 4);
    let node = cluster.node(1).clone();
    poll("replicas and leaders spread over 4 nodes", Duration::from_secs(120), || async {
        let topology = node.topology();
        let replicas: Vec<usize> = (1..=4).map(|id| topology.hosted_by(id).count()).collect();
        let leaders = leaders_per_node(&cluster, &[1, 2, 3, 4]);
        replicas == vec![3, 3, 3, 3] && leaders.iter().sum::<usize>() == 4 && spread(&leaders) <= 1
    })
    .await;

    let off = client.set_balance(false).await.expect("balance off");
    assert!(!off.enabled && off.topology_version > on.topology_version);
    stop.store(true, Ordering::Relaxed);
    let mut acknowledged = BTreeMap::new();
    for writer in writing {
        acknowledged.extend(writer.await.expect("writer"));
    }
    assert!(acknowledged.len() > 50, "the writers made progress: {}", acknowledged.len());
    for id in acknowledged.keys() {
        let r = client.get_reservation(id).await.unwrap_or_else(|e| panic!("{id}: {e}")).reservation.expect("held");
        assert_eq!(r.state(), pb::ReservationState::Pending, "{id}");
    }
    let mut c = cluster.client(1).await;
    for sku in SPREAD {
        let held = acknowledged.values().filter(|s| **s == sku).count() as u64;
        let p = common::position(&mut c, sku, LOC, pb::Consistency::Strong).await.position.expect("position");
        // A write whose answer was lost may hold a unit too.
        assert!(p.reserved >= held, "{sku}: {} reserved, {held} acknowledged", p.reserved);
    }
    cluster.shutdown().await;
}

/// Polls `attempt` until it succeeds, panicking with its last error.
async fn poll_ok<T, E: std::fmt::Display, F, Fut>(what: &str, limit: Duration, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(e) if tokio::time::Instant::now() >= deadline => panic!("{what}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// The stored database of a stopped node.
fn open_engine(cluster: &Cluster, id: u64) -> std::sync::Arc<dyn storage::Engine> {
    std::sync::Arc::new(storage::rocks::RocksEngine::open(&cluster.data_dir(id).join("db")).expect("open the stopped node's database"))
}
