//! Carts across shard groups on a real cluster (3 nodes, 8 groups): one
//! reservation whose lines live in several Raft groups, all or nothing,
//! found by id from any node, and finished by the resolver when its
//! coordinator is gone.

mod common;

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::time::Duration;

use tonic::transport::Channel;

use common::line;
use common::poll;
use common::receive;
use common::reserve;
use common::test_config;
use common::Cluster;
use common::SERIAL;
use stockd::proto::v1 as pb;
use stockd::proto::v1::inventory_client::InventoryClient;
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
    f.cluster.split_points = Some(["2", "4", "6", "8", "a", "c", "e"].map(String::from).to_vec());
    f
}

async fn stock(cluster: &Cluster, units: u64) {
    let mut feed = cluster.feed(1).await;
    for sku in SKUS {
        receive(&mut feed, &format!("stock-{sku}"), sku, LOC, units).await;
    }
}

/// A strong read through node 2 (node 1 is the one the tests stop),
/// retried while a group elects a new leader.
async fn quantities(cluster: &Cluster, sku: &str) -> (u64, u64) {
    let mut c = cluster.client(2).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let request = pb::GetPositionRequest { sku: sku.into(), location: LOC.into(), consistency: pb::Consistency::Strong as i32, max_staleness_ms: 0 };
        match c.get_position(request).await {
            Ok(answer) => {
                let p = answer.into_inner().position.expect("position");
                return (p.reserved, p.committed);
            }
            Err(e) if e.code() == tonic::Code::Unavailable && std::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("get position of {sku}: {e}"),
        }
    }
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
            parts.entry(node.topology().group_for("local", &l.sku).expect("group").group).or_default().push(l.clone());
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

/// A one-group reservation stays one command in its group. Its id reused
/// for lines in another group (alone or in a cart) is refused, with nothing
/// held there; it is found from every node without asking every group; and
/// an id nobody reserved is looked for everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_one_group_reservation_is_found_without_asking_every_group_and_its_id_is_not_reused_elsewhere() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(3, eight_groups()).await;
    cluster.wait_for_leaders().await;
    stock(&cluster, 10).await;
    let node = cluster.node(2).clone();
    let group_of = |sku: &str| node.topology().group_for("local", sku).expect("group").group;
    let away = |id: &String| node.home_of(id).is_some_and(|home| SKUS[..3].iter().all(|sku| group_of(sku) != home));
    let id = (0..).map(|i| format!("order-{i}")).find(away).expect("an id homed away from the first three groups");
    let everywhere = || (1..=3).map(|n| cluster.node(n).lookups_everywhere()).sum::<u64>();

    let mut c = cluster.client(2).await;
    let first = reserve(&mut c, &id, vec![line(SKUS[0], LOC, 2)], 30_000).await.expect("reserve");
    assert_eq!(first.outcome, pb::Outcome::Ok as i32, "{first:?}");
    // Node 2 checks reused ids against its own replicas: wait until its
    // replica of the group has applied the reservation.
    let held_here = || node.group(group_of(SKUS[0])).is_some_and(|g| g.state().read().reservation(&id).is_some());
    poll("node 2 applied the reservation", Duration::from_secs(5), || async { held_here() }).await;

    let alone = reserve(&mut c, &id, vec![line(SKUS[1], LOC, 1)], 30_000).await.expect("reserve");
    assert_eq!(alone.outcome, pb::Outcome::IdempotencyConflict as i32, "{alone:?}");
    let shown = alone.reservation.expect("the conflict shows the reservation under the id");
    assert_eq!((shown.lines[0].sku.as_str(), shown.home_group), (SKUS[0], group_of(SKUS[0])));
    let in_cart = reserve(&mut c, &id, vec![line(SKUS[1], LOC, 1), line(SKUS[2], LOC, 1)], 30_000).await.expect("reserve");
    assert_eq!(in_cart.outcome, pb::Outcome::IdempotencyConflict as i32, "{in_cart:?}");
    for sku in &SKUS[1..3] {
        assert_eq!(quantities(&cluster, sku).await, (0, 0), "{sku}");
    }
    assert_eq!(quantities(&cluster, SKUS[0]).await, (2, 0));

    let before = everywhere();
    let got = c.get_reservation(pb::ReservationRef { reservation_id: id.clone() }).await.expect("get").into_inner();
    assert_eq!(got.reservation.map(|r| r.lines.len()), Some(1));
    let committed = c.commit(pb::ReservationRef { reservation_id: id.clone() }).await.expect("commit").into_inner();
    assert_eq!(committed.outcome, pb::Outcome::Ok as i32, "{committed:?}");
    assert_eq!(quantities(&cluster, SKUS[0]).await, (0, 2));
    assert_eq!(everywhere(), before, "found without asking every group");

    let unknown = c.get_reservation(pb::ReservationRef { reservation_id: "never-reserved".into() }).await.expect("get").into_inner();
    assert_eq!(unknown.outcome, pb::Outcome::NotFound as i32);
    assert!(everywhere() > before, "an id nobody holds is looked for in every group");
    cluster.shutdown().await;
}

/// A one-group reservation in a group the asking node does not replicate
/// (replication factor 1) is found by asking every group once; then its
/// home keeps a locator naming the group, and the next lookup takes one read
/// of the home.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reservation_found_by_asking_every_group_gets_a_locator_at_its_home() {
    let _serial = SERIAL.lock().await;
    let mut config = eight_groups();
    config.cluster.replication_factor = 1;
    let cluster = Cluster::start(3, config).await;
    cluster.wait_for_leaders().await;
    stock(&cluster, 10).await;
    let node = cluster.node(2).clone();
    let group_of = |sku: &str| node.topology().group_for("local", sku).expect("group").group;
    let sku = *SKUS.iter().find(|sku| node.group(group_of(sku)).is_none()).expect("a group node 2 does not replicate");
    let group = group_of(sku);
    let id = (0..).map(|i| format!("order-{i}")).find(|id| node.home_of(id).is_some_and(|home| home != group)).expect("an id homed elsewhere");
    let home = node.home_of(&id).expect("home");

    let mut c = cluster.client(2).await;
    let held = reserve(&mut c, &id, vec![line(sku, LOC, 1)], 30_000).await.expect("reserve");
    assert_eq!(held.outcome, pb::Outcome::Ok as i32, "{held:?}");
    let before = node.lookups_everywhere();
    let get = |c: &mut InventoryClient<Channel>| {
        let mut c = c.clone();
        let id = id.clone();
        async move { c.get_reservation(pb::ReservationRef { reservation_id: id }).await.expect("get").into_inner() }
    };
    assert_eq!(get(&mut c).await.outcome, pb::Outcome::Ok as i32);
    assert_eq!(node.lookups_everywhere(), before + 1, "no local replica and no locator: every group asked");
    let located = || async {
        let answer = node.read(home, stockd::read::ReadQuery::Reservation(id.clone()), stockd::read::Consistency::Strong).await;
        answer.is_ok_and(|a| a.located == Some(group))
    };
    poll("the home keeps a locator", Duration::from_secs(5), located).await;
    assert_eq!(get(&mut c).await.outcome, pb::Outcome::Ok as i32);
    let committed = c.commit(pb::ReservationRef { reservation_id: id.clone() }).await.expect("commit").into_inner();
    assert_eq!(committed.outcome, pb::Outcome::Ok as i32, "{committed:?}");
    assert_eq!(node.lookups_everywhere(), before + 1, "found through the home's locator since");
    cluster.shutdown().await;
}

/// Sets node 1's failpoint, sends `request` through it (the coordinator
/// stops at the failpoint and answers UNAVAILABLE), then stops the node as
/// if it died there. The rest is up to the other nodes' resolvers.
async fn kill_coordinator_at(cluster: &mut Cluster, failpoint: &str, request: impl std::future::Future<Output = Result<(), tonic::Status>>) {
    cluster.node(1).set_failpoint(Some(failpoint));
    let answer = request.await;
    assert_eq!(answer.err().map(|s| s.code()), Some(tonic::Code::Unavailable), "the coordinator stops at {failpoint}");
    cluster.stop_node(1).await;
}

async fn reserve_at(mut c: InventoryClient<Channel>, id: &'static str, lines: Vec<pb::Line>, ttl_ms: u64) -> Result<(), tonic::Status> {
    reserve(&mut c, id, lines, ttl_ms).await.map(|_| ())
}

async fn commit_at(mut c: InventoryClient<Channel>, id: &'static str) -> Result<(), tonic::Status> {
    c.commit(pb::ReservationRef { reservation_id: id.into() }).await.map(|_| ())
}

/// Killing the coordinating node after each step of the protocol (a
/// failpoint per step, then the node stopped) leaves every line either held
/// and committable, or freed once the TTL has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_coordinating_node_after_any_step_leaves_every_line_held_or_freed() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(3, eight_groups()).await;
    cluster.wait_for_leaders().await;
    stock(&cluster, 10).await;
    const SHORT_TTL_MS: u64 = 3_000;
    let settle = Duration::from_millis(SHORT_TTL_MS + 8_000);

    // After step 1 (the record, nothing prepared), short TTL: freed.
    let request = reserve_at(cluster.client(1).await, "killed-after-begin", cart(1), SHORT_TTL_MS);
    kill_coordinator_at(&mut cluster, "cart-stop-after-begin", request).await;
    wait_for_quantities(&cluster, "a record left after begin expires", (0, 0), settle).await;
    cluster.start_node(1).await;

    // After step 2 (every line held, no decide): held and committable.
    let request = reserve_at(cluster.client(1).await, "killed-after-prepare", cart(1), 60_000);
    kill_coordinator_at(&mut cluster, "cart-stop-after-prepare", request).await;
    for sku in SKUS {
        assert_eq!(quantities(&cluster, sku).await, (1, 0), "{sku} held while undecided");
    }
    let mut c = cluster.client(2).await;
    let committed = c.commit(pb::ReservationRef { reservation_id: "killed-after-prepare".into() }).await.expect("commit").into_inner();
    assert_eq!(committed.outcome, pb::Outcome::Ok as i32, "{committed:?}");
    wait_for_quantities(&cluster, "the undecided cart committed", (0, 1), settle).await;
    cluster.start_node(1).await;

    // After the decide of a refused cart (one line short, not in the home
    // group), before any line group followed: nothing stays held.
    let node = cluster.node(2).clone();
    let home = node.home_of("killed-after-abort").expect("home");
    let short_line = SKUS.iter().position(|sku| node.topology().group_for("local", sku).map(|r| r.group) != Some(home)).expect("a line group");
    let mut short = cart(1);
    short[short_line].quantity = 100;
    let request = reserve_at(cluster.client(1).await, "killed-after-abort", short, 60_000);
    kill_coordinator_at(&mut cluster, "cart-stop-before-follow", request).await;
    wait_for_quantities(&cluster, "the aborted cart freed", (0, 1), settle).await;
    cluster.start_node(1).await;

    // After the home committed, before any line group followed: every line
    // ends committed.
    let mut c = cluster.client(2).await;
    let held = reserve(&mut c, "killed-after-commit", cart(1), 60_000).await.expect("reserve");
    assert_eq!(held.outcome, pb::Outcome::Ok as i32, "{held:?}");
    let request = commit_at(cluster.client(1).await, "killed-after-commit");
    kill_coordinator_at(&mut cluster, "cart-stop-before-follow", request).await;
    wait_for_quantities(&cluster, "the commit followed", (0, 2), settle).await;
    cluster.shutdown().await;
}
