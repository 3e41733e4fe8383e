//! Cluster behaviour with real nodes on loopback: routing through any node,
//! no oversell under concurrency, failover without losing acknowledged
//! reservations, catch-up from disk and by snapshot, expiry from log time.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::line;
use common::poll;
use common::position;
use common::receive;
use common::reserve;
use common::test_config;
use common::Cluster;
use common::SERIAL;
use stockd::proto::v1 as pb;

const SKU: &str = "1-widget";
const LOC: &str = "wh1";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn any_node_serves_or_forwards_every_request() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(3, test_config()).await;
    let leader = cluster.leader_of_sku(SKU).expect("leader");
    let follower = (1..=3).find(|n| *n != leader).expect("a follower");
    let mut via_follower = cluster.client(follower).await;

    let adjusted = receive(&mut via_follower, "rcv-1", SKU, LOC, 10).await;
    assert_eq!(adjusted.outcome, pb::Outcome::Ok as i32);
    assert_eq!(adjusted.position.as_ref().map(|p| p.on_hand), Some(10));

    let r = reserve(&mut via_follower, "cart-1", vec![line(SKU, LOC, 3)], 60_000).await.expect("reserve");
    assert_eq!(r.outcome, pb::Outcome::Ok as i32);
    assert!(!r.replay);

    for node in 1..=3 {
        let mut c = cluster.client(node).await;
        let p = position(&mut c, SKU, LOC, pb::Consistency::Strong).await;
        let pos = p.position.expect("position");
        assert_eq!((pos.on_hand, pos.reserved, pos.atp), (10, 3, 7), "strong read via node {node}");
        assert!(p.applied_index >= r.applied_index, "a strong read reflects the acknowledged write");
        assert_eq!(p.staleness_ms, 0);
        let got = c.get_reservation(pb::ReservationRef { reservation_id: "cart-1".into() }).await.expect("get").into_inner();
        assert_eq!(got.outcome, pb::Outcome::Ok as i32);
        assert_eq!(got.reservation.map(|r| r.state), Some(pb::ReservationState::Pending as i32));
    }

    // Commit through the third node, whichever it is.
    let other = (1..=3).find(|n| *n != leader && *n != follower).expect("third node");
    let mut c = cluster.client(other).await;
    let committed = c.commit(pb::ReservationRef { reservation_id: "cart-1".into() }).await.expect("commit").into_inner();
    assert_eq!(committed.outcome, pb::Outcome::Ok as i32);
    let again = c.commit(pb::ReservationRef { reservation_id: "cart-1".into() }).await.expect("commit").into_inner();
    assert!(again.replay, "a retried commit is a replay");
    let released = c.release(pb::ReservationRef { reservation_id: "cart-1".into() }).await.expect("release").into_inner();
    assert_eq!(released.outcome, pb::Outcome::InvalidState as i32, "a committed reservation cannot be released");
    let unknown = c.commit(pb::ReservationRef { reservation_id: "no-such".into() }).await.expect("commit").into_inner();
    assert_eq!(unknown.outcome, pb::Outcome::NotFound as i32);

    // The leader's status names the group's range as its state machine
    // holds it, at the first epoch, and the commands it proposed per second.
    let group_of_sku = cluster.node(leader).topology().group_for("local", SKU).expect("group").desc();
    let mut admin = stockd::proto::v1::admin_client::AdminClient::new(cluster.channel(leader, Some("operator")));
    poll("the leader's load to count the writes", Duration::from_secs(10), || {
        let mut admin = admin.clone();
        let expected = group_of_sku.clone();
        async move {
            let status = admin.status(pb::StatusRequest {}).await.expect("status").into_inner();
            let g = status.groups.iter().find(|g| g.group_id == expected.group).expect("the group is hosted");
            assert_eq!((g.start_sku.as_str(), g.end_sku.as_str(), g.epoch), (expected.start_sku.as_str(), expected.end_sku.as_deref().unwrap_or(""), 1));
            g.load_cmds_per_s > 0.0
        }
    })
    .await;
    let status = admin.status(pb::StatusRequest {}).await.expect("status").into_inner();
    assert!(status.groups.iter().filter(|g| g.group_id != group_of_sku.group).all(|g| g.load_cmds_per_s == 0.0), "only the written group has load");

    // Bounded and any reads on a follower report their staleness.
    let p = via_follower
        .get_position(pb::GetPositionRequest { sku: SKU.into(), location: LOC.into(), consistency: pb::Consistency::Bounded as i32, max_staleness_ms: 5_000 })
        .await
        .expect("bounded read")
        .into_inner();
    assert!(p.staleness_ms <= 5_000, "bounded read within its bound: {}", p.staleness_ms);
    assert_eq!(p.served_by, follower, "a fresh follower serves bounded reads itself");

    // gRPC health checking and server reflection are served.
    let channel = cluster.channel(1, None);
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let serving = health.check(tonic_health::pb::HealthCheckRequest { service: "stockd.v1.Inventory".into() }).await.expect("health").into_inner();
    assert_eq!(serving.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    let mut reflection = tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(channel);
    let list = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut replies = reflection.server_reflection_info(futures::stream::iter(vec![list])).await.expect("reflection").into_inner();
    let reply = replies.message().await.expect("reflection reply").expect("one reply");
    let services = match reply.message_response {
        Some(tonic_reflection::pb::v1::server_reflection_response::MessageResponse::ListServicesResponse(l)) => {
            l.service.into_iter().map(|s| s.name).collect::<Vec<_>>()
        }
        other => panic!("unexpected reflection reply {other:?}"),
    };
    assert!(services.contains(&"stockd.v1.Inventory".to_string()), "{services:?}");
    assert!(services.contains(&"stockd.v1.Admin".to_string()), "{services:?}");

    // A group that stops on a node (as on a fatal storage error) turns the
    // node's Inventory health to NOT_SERVING.
    let group = cluster.node(1).groups().next().expect("a group").clone();
    group.raft().shutdown().await.expect("stop one group");
    assert!(group.stopped().is_some());
    poll("Inventory health to turn NOT_SERVING", Duration::from_secs(10), || {
        let mut health = health.clone();
        async move {
            let status =
                health.check(tonic_health::pb::HealthCheckRequest { service: "stockd.v1.Inventory".into() }).await.expect("health").into_inner().status;
            status == tonic_health::pb::health_check_response::ServingStatus::NotServing as i32
        }
    })
    .await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_input_is_rejected_naming_the_field() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(3, test_config()).await;
    let mut c = cluster.client(1).await;
    let err = reserve(&mut c, "cart-x", vec![line(SKU, LOC, 0)], 60_000).await.expect_err("zero quantity");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("lines[0].quantity"), "{}", err.message());
    let err = reserve(&mut c, "cart-x", vec![line("1-a", LOC, 1), line("9 b", LOC, 1)], 60_000).await.expect_err("a sku with a space");
    assert!(err.message().contains("lines[1].sku"), "{}", err.message());
    let err = c
        .batch_reserve(pb::BatchReserveRequest {
            reservations: vec![
                pb::ReserveRequest { reservation_id: "ok-1".into(), lines: vec![line(SKU, LOC, 1)], ttl_ms: 0, risk_gate: None },
                pb::ReserveRequest { reservation_id: "bad id".into(), lines: vec![line(SKU, LOC, 1)], ttl_ms: 0, risk_gate: None },
            ],
        })
        .await
        .expect_err("invalid batch");
    assert!(err.message().contains("reservations[1].reservation_id"), "{}", err.message());
    // Nothing of the invalid batch was applied.
    let got = c.get_reservation(pb::ReservationRef { reservation_id: "ok-1".into() }).await.expect("get").into_inner();
    assert_eq!(got.outcome, pb::Outcome::NotFound as i32);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_reserves_on_one_hundred_units_sell_exactly_one_hundred() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(3, test_config()).await;
    let mut c = cluster.client(1).await;
    receive(&mut c, "rcv-hot", SKU, LOC, 100).await;
    let mut tasks = Vec::new();
    for i in 0..200u64 {
        let mut client = cluster.client(i % 3 + 1).await;
        tasks.push(tokio::spawn(async move { reserve(&mut client, &format!("hot-{i}"), vec![line(SKU, LOC, 1)], 600_000).await }));
    }
    let mut ok = 0;
    let mut refused = 0;
    for t in tasks {
        let r = t.await.expect("task").expect("reserve answered");
        match pb::Outcome::try_from(r.outcome).expect("outcome") {
            pb::Outcome::Ok => ok += 1,
            pb::Outcome::InsufficientStock => {
                refused += 1;
                assert_eq!(r.shortfalls.len(), 1);
                assert_eq!(r.shortfalls[0].atp, 0);
            }
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    assert_eq!((ok, refused), (100, 100));
    let p = position(&mut c, SKU, LOC, pb::Consistency::Strong).await.position.expect("position");
    assert_eq!((p.on_hand, p.reserved, p.atp), (100, 100, 0));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_loss_keeps_acknowledged_reservations() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(3, test_config()).await;
    let leader = cluster.leader_of_sku(SKU).expect("leader");
    let survivor = (1..=3).find(|n| *n != leader).expect("survivor");
    let mut c = cluster.client(survivor).await;
    receive(&mut c, "rcv-fo", SKU, LOC, 50).await;
    let mut acknowledged = BTreeSet::new();
    for i in 0..20 {
        let id = format!("fo-{i}");
        let r = reserve(&mut c, &id, vec![line(SKU, LOC, 1)], 600_000).await.expect("reserve");
        assert_eq!(r.outcome, pb::Outcome::Ok as i32);
        acknowledged.insert(id);
    }
    cluster.stop_node(leader).await;
    // A new leader serves within seconds.
    let mut c2 = cluster.client(survivor).await;
    poll("a new leader to accept reservations", Duration::from_secs(15), || {
        let mut c = c2.clone();
        async move { reserve(&mut c, "after-failover", vec![line(SKU, LOC, 1)], 600_000).await.map(|r| r.outcome == pb::Outcome::Ok as i32).unwrap_or(false) }
    })
    .await;
    let new_leader = cluster.leader_of_sku(SKU).expect("new leader");
    assert_ne!(new_leader, leader);
    for id in &acknowledged {
        let got = c2.get_reservation(pb::ReservationRef { reservation_id: id.clone() }).await.expect("get").into_inner();
        assert_eq!(got.reservation.map(|r| r.state), Some(pb::ReservationState::Pending as i32), "acknowledged {id} survives");
    }
    let p = position(&mut c2, SKU, LOC, pb::Consistency::Strong).await.position.expect("position");
    assert_eq!(p.reserved, 21);
    // The old leader comes back as a follower and catches up.
    cluster.start_node(leader).await;
    let node = cluster.node(leader).clone();
    poll("the old leader to catch up", Duration::from_secs(15), || {
        let g = node.topology().group_for("local", SKU).map(|r| r.group).and_then(|g| node.group(g));
        async move { g.map(|g| g.state().read().position(&storage::model::PositionKey::new(SKU, LOC)).map(|p| p.reserved) == Some(21)).unwrap_or(false) }
    })
    .await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarted_node_recovers_from_its_own_disk() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(3, test_config()).await;
    let mut c = cluster.client(1).await;
    receive(&mut c, "rcv-r", SKU, LOC, 30).await;
    reserve(&mut c, "before", vec![line(SKU, LOC, 5)], 600_000).await.expect("reserve");
    cluster.stop_node(3).await;
    reserve(&mut c, "while-down", vec![line(SKU, LOC, 2)], 600_000).await.expect("reserve");
    cluster.start_node(3).await;
    let node = cluster.node(3).clone();
    let key = storage::model::PositionKey::new(SKU, LOC);
    let group = node.topology().group_for("local", SKU).expect("range").group;
    // Right after restart the node already has what it applied before.
    let recovered = node.group(group).expect("group").state().read().position(&key).map(|p| p.on_hand);
    assert_eq!(recovered, Some(30), "state reloaded from RocksDB");
    poll("node 3 to catch up", Duration::from_secs(15), || {
        let g = node.group(group);
        let key = key.clone();
        async move { g.map(|g| g.state().read().position(&key).map(|p| p.reserved) == Some(7)).unwrap_or(false) }
    })
    .await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn far_behind_node_catches_up_by_snapshot() {
    let _serial = SERIAL.lock().await;
    let mut file = test_config();
    file.cluster.snapshot_logs_since_last = 40;
    file.cluster.logs_to_keep_after_snapshot = 5;
    let mut cluster = Cluster::start(3, file).await;
    let mut c = cluster.client(1).await;
    cluster.stop_node(3).await;
    for i in 0..150 {
        receive(&mut c, &format!("snap-{i}"), SKU, LOC, 1).await;
    }
    let leader = cluster.leader_of_sku(SKU).expect("leader");
    let group = cluster.node(leader).topology().group_for("local", SKU).expect("range").group;
    // The snapshot is built, and the log purged behind it, in the background.
    let raft = cluster.node(leader).group(group).expect("group").raft().clone();
    poll("the leader to purge its log behind a snapshot", Duration::from_secs(15), || {
        let purged = raft.metrics().borrow().purged.map_or(0, |l| l.index);
        async move { purged > 0 }
    })
    .await;
    cluster.start_node(3).await;
    let node = cluster.node(3).clone();
    poll("node 3 to install a snapshot and catch up", Duration::from_secs(20), || {
        let g = node.group(group);
        async move { g.map(|g| g.state().read().position(&storage::model::PositionKey::new(SKU, LOC)).map(|p| p.on_hand) == Some(150)).unwrap_or(false) }
    })
    .await;
    let snapshot = node.group(group).expect("group").raft().metrics().borrow().snapshot;
    assert!(snapshot.is_some(), "node 3 caught up through a snapshot");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reservations_expire_from_log_time_without_a_client_call() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(3, test_config()).await;
    let mut c = cluster.client(2).await;
    receive(&mut c, "rcv-e", SKU, LOC, 5).await;
    let r = reserve(&mut c, "short-lived", vec![line(SKU, LOC, 4)], 1_000).await.expect("reserve");
    assert_eq!(r.outcome, pb::Outcome::Ok as i32);
    let expires_at = r.reservation.expect("reservation").expires_at_ms;
    poll("the reservation to expire", Duration::from_secs(10), || {
        let mut c = c.clone();
        async move { position(&mut c, SKU, LOC, pb::Consistency::Strong).await.position.map(|p| p.reserved == 0).unwrap_or(false) }
    })
    .await;
    let got = c.get_reservation(pb::ReservationRef { reservation_id: "short-lived".into() }).await.expect("get").into_inner().reservation.expect("kept");
    assert_eq!(got.state, pb::ReservationState::Expired as i32);
    assert!(got.finished_at_ms >= expires_at, "expired at log time {} >= expires_at {expires_at}", got.finished_at_ms);
    let late = c.commit(pb::ReservationRef { reservation_id: "short-lived".into() }).await.expect("commit").into_inner();
    assert_eq!(late.outcome, pb::Outcome::InvalidState as i32, "an expired reservation cannot be committed");
    cluster.shutdown().await;
}
