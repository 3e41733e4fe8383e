//! Carts across shard groups on a real cluster (3 nodes, 8 groups): one
//! reservation whose lines live in several Raft groups, all or nothing,
//! found by id in one hop, and finished by the resolver when its
//! coordinator is gone.

mod common;

use std::collections::BTreeMap;
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
use storage::model::CartState;
use storage::model::Command;
use storage::model::Line;
use storage::model::Outcome;

const LOC: &str = "wh1";
/// One SKU in each of six of the eight groups (split points 2,4,6,8,a,c,e).
const SKUS: [&str; 6] = ["0-a", "2-b", "4-c", "6-d", "8-e", "a-f"];

fn eight_groups() -> stockd::config::FileConfig {
    let mut f = test_config();
    f.cluster.groups_per_region = 8;
    f.cluster.split_points = None;
    f
}

async fn stock(cluster: &Cluster, units: u64) {
    let mut feed = cluster.feed(1).await;
    for sku in SKUS {
        receive(&mut feed, &format!("stock-{sku}"), sku, LOC, units).await;
    }
}

async fn quantities(cluster: &Cluster, sku: &str) -> (u64, u64) {
    let mut c = cluster.client(1).await;
    let p = position(&mut c, sku, LOC, pb::Consistency::Strong).await.position.expect("position");
    (p.reserved, p.committed)
}

/// Polls until every SKU shows `(reserved, committed)`.
async fn wait_for_quantities(cluster: &Cluster, what: &str, want: (u64, u64), limit: Duration) {
    for sku in SKUS {
        poll(&format!("{what} on {sku}"), limit, || async move { quantities(cluster, sku).await == want }).await;
    }
}

fn cart(quantity: u64) -> Vec<pb::Line> {
    SKUS.iter().map(|sku| line(sku, LOC, quantity)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_six_sku_cart_across_groups_reserves_commits_releases_and_expires() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(3, eight_groups()).await;
    stock(&cluster, 10).await;
    let mut c = cluster.client(2).await;

    let r = reserve(&mut c, "order-1", cart(2), 60_000).await.expect("reserve");
    assert_eq!(r.outcome, pb::Outcome::Ok as i32, "{r:?}");
    let held = r.reservation.expect("reservation");
    let groups: BTreeSet<u32> = held.parts.iter().map(|p| p.group_id).collect();
    assert_eq!(groups.len(), 6, "one part per group: {:?}", held.parts);
    for sku in SKUS {
        assert_eq!(quantities(&cluster, sku).await, (2, 0), "{sku} holds the cart's units as reserved");
    }

    // Found by id from any node, in one hop at its home group.
    let mut other = cluster.client(3).await;
    let got = other.get_reservation(pb::ReservationRef { reservation_id: "order-1".into() }).await.expect("get").into_inner();
    let got = got.reservation.expect("found");
    assert_eq!(got.state, pb::ReservationState::Pending as i32);
    assert_eq!(got.home_group, held.home_group);
    assert_eq!(got.lines.len(), 6);

    // Idempotent by id: the same cart is a replay, another is a conflict.
    let again = reserve(&mut c, "order-1", cart(2), 60_000).await.expect("retry");
    assert_eq!((again.outcome, again.replay), (pb::Outcome::Ok as i32, true));
    let reused = reserve(&mut c, "order-1", cart(1), 60_000).await.expect("reused id");
    assert_eq!(reused.outcome, pb::Outcome::IdempotencyConflict as i32);
    // A single-line reserve under the id is caught at the home too.
    let reused = reserve(&mut c, "order-1", vec![line(SKUS[0], LOC, 1)], 60_000).await.expect("reused id");
    assert_eq!(reused.outcome, pb::Outcome::IdempotencyConflict as i32);

    let committed = c.commit(pb::ReservationRef { reservation_id: "order-1".into() }).await.expect("commit").into_inner();
    assert_eq!(committed.outcome, pb::Outcome::Ok as i32, "{committed:?}");
    wait_for_quantities(&cluster, "the commit to reach every group", (0, 2), Duration::from_secs(5)).await;
    let got = other.get_reservation(pb::ReservationRef { reservation_id: "order-1".into() }).await.expect("get").into_inner().reservation.expect("found");
    assert_eq!(got.state, pb::ReservationState::Committed as i32);
    assert!(got.parts.iter().all(|p| p.state == pb::ReservationState::Committed as i32), "every group confirmed: {:?}", got.parts);

    let r = reserve(&mut c, "order-2", cart(3), 60_000).await.expect("reserve");
    assert_eq!(r.outcome, pb::Outcome::Ok as i32);
    wait_for_quantities(&cluster, "order-2 held", (3, 2), Duration::from_secs(5)).await;
    let released = c.release(pb::ReservationRef { reservation_id: "order-2".into() }).await.expect("release").into_inner();
    assert_eq!(released.outcome, pb::Outcome::Ok as i32);
    wait_for_quantities(&cluster, "the release to reach every group", (0, 2), Duration::from_secs(5)).await;
    let late = c.commit(pb::ReservationRef { reservation_id: "order-2".into() }).await.expect("commit").into_inner();
    assert_eq!(late.outcome, pb::Outcome::InvalidState as i32, "a released cart cannot be committed");

    let r = reserve(&mut c, "order-3", cart(1), 1_000).await.expect("reserve");
    assert_eq!(r.outcome, pb::Outcome::Ok as i32);
    wait_for_quantities(&cluster, "order-3 to expire everywhere", (0, 2), Duration::from_secs(10)).await;
    let got = c.get_reservation(pb::ReservationRef { reservation_id: "order-3".into() }).await.expect("get").into_inner().reservation.expect("kept");
    assert_eq!(got.state, pb::ReservationState::Expired as i32);

    let fulfilled = c.fulfill(pb::ReservationRef { reservation_id: "order-1".into() }).await.expect("fulfill").into_inner();
    assert_eq!(fulfilled.outcome, pb::Outcome::Ok as i32);
    wait_for_quantities(&cluster, "the fulfilment to reach every group", (0, 0), Duration::from_secs(5)).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cart_with_one_short_line_holds_nothing_anywhere() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(3, eight_groups()).await;
    stock(&cluster, 2).await;
    let mut c = cluster.client(1).await;
    let mut lines = cart(2);
    lines[4].quantity = 3;
    let r = reserve(&mut c, "short-cart", lines.clone(), 60_000).await.expect("reserve");
    assert_eq!(r.outcome, pb::Outcome::InsufficientStock as i32, "{r:?}");
    assert_eq!(r.shortfalls.len(), 1, "{:?}", r.shortfalls);
    assert_eq!(r.shortfalls[0].sku, SKUS[4]);
    assert_eq!((r.shortfalls[0].requested, r.shortfalls[0].atp), (3, 2));
    for sku in SKUS {
        assert_eq!(quantities(&cluster, sku).await, (0, 0), "{sku} holds nothing of a refused cart");
    }
    let got = c.get_reservation(pb::ReservationRef { reservation_id: "short-cart".into() }).await.expect("get").into_inner();
    assert_eq!(got.outcome, pb::Outcome::NotFound as i32, "a refused cart is not a reservation");
    // Once the stock is there, the same request succeeds, as a refused
    // single-group reserve would.
    let mut feed = cluster.feed(1).await;
    receive(&mut feed, "more", SKUS[4], LOC, 1).await;
    let r = reserve(&mut c, "short-cart", lines, 60_000).await.expect("retry");
    assert_eq!(r.outcome, pb::Outcome::Ok as i32, "{r:?}");
    cluster.shutdown().await;
}

/// The coordinator dies after each step in turn (the test plays it, then
/// stops): the resolver leaves every line either held and committable, or
/// freed within the TTL and a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_coordinator_lost_at_any_step_leaves_the_cart_whole() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(3, eight_groups()).await;
    cluster.wait_for_leaders().await;
    stock(&cluster, 10).await;
    let node = cluster.node(1).clone();
    let lines: Vec<Line> = SKUS.iter().map(|sku| Line { sku: sku.to_string(), location: LOC.into(), quantity: 1 }).collect();
    let plan = |id: &str| {
        let home = node.home_of(id).expect("home");
        let mut parts: BTreeMap<u32, Vec<Line>> = BTreeMap::new();
        for l in &lines {
            parts.entry(node.shard_map().group_for("local", &l.sku).expect("group").group).or_default().push(l.clone());
        }
        (home, parts)
    };
    const TTL_MS: u64 = 3_000;

    // Lost after step 1: nothing prepared. The resolver decides the record
    // (it prepares every line itself) and the cart holds until its TTL.
    let (home, parts) = plan("lost-after-begin");
    let begin =
        Command::CartBegin { reservation_id: "lost-after-begin".into(), lines: lines.clone(), ttl_ms: TTL_MS, home, parts: parts.clone(), own_gate: None };
    let (_, begun) = node.propose(home, begin).await.expect("begin");
    let record = begun.cart.expect("record");
    assert_eq!(record.state, CartState::Preparing);

    // Lost after step 2 in half of the groups, with a long TTL: the resolver
    // prepares the rest and the cart stays committable.
    let (home2, parts2) = plan("lost-mid-prepare");
    let begin = Command::CartBegin {
        reservation_id: "lost-mid-prepare".into(),
        lines: lines.clone(),
        ttl_ms: 60_000,
        home: home2,
        parts: parts2.clone(),
        own_gate: None,
    };
    let (_, begun) = node.propose(home2, begin).await.expect("begin");
    let record2 = begun.cart.expect("record");
    for (group, part) in parts2.iter().filter(|(g, _)| **g != home2).take(3) {
        let prepare = Command::CartPrepare {
            reservation_id: record2.id.clone(),
            of: record2.of(),
            lines: part.clone(),
            expires_at_ms: record2.expires_at_ms,
            gate: None,
        };
        let (_, prepared) = node.propose(*group, prepare).await.expect("prepare");
        assert_eq!(prepared.outcome, Outcome::Ok);
    }

    let c = cluster.client(2).await;
    for id in ["lost-after-begin", "lost-mid-prepare"] {
        poll(&format!("{id} decided by the resolver"), Duration::from_secs(8), || {
            let mut c = c.clone();
            async move {
                let got = c.get_reservation(pb::ReservationRef { reservation_id: id.into() }).await.ok().and_then(|r| r.into_inner().reservation);
                got.is_some_and(|r| r.parts.iter().all(|p| p.state != pb::ReservationState::Unspecified as i32))
            }
        })
        .await;
    }
    let mut c = c.clone();
    let committed = c.commit(pb::ReservationRef { reservation_id: "lost-mid-prepare".into() }).await.expect("commit").into_inner();
    assert_eq!(committed.outcome, pb::Outcome::Ok as i32, "{committed:?}");
    // The short-lived one is freed everywhere, the committed one holds.
    wait_for_quantities(&cluster, "lost carts settled", (0, 1), Duration::from_millis(TTL_MS + 6_000)).await;
    cluster.shutdown().await;
}
