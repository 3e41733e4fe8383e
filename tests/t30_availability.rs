//! The probable path end to end on a real node: CheckAvailability with the
//! shipped model, the kill switch and a missing model degrading to the
//! conservative rule, feature parity between the server and the export path,
//! and fulfilment ranking with its policy.

mod common;

use common::receive;
use common::reserve;
use common::test_config;
use common::Cluster;
use common::SERIAL;
use models::features;
use models::features::RequestContext;
use models::features::SellerType;
use stockd::config::FileConfig;
use stockd::proto::v1 as pb;
use stockd::proto::v1::admin_client::AdminClient;
use storage::model::PositionKey;
use tonic::transport::Channel;

const SKU: &str = "1-gadget";

fn single_node() -> FileConfig {
    let mut file = test_config();
    file.cluster.replication_factor = 1;
    file
}

async fn admin(cluster: &Cluster) -> AdminClient<Channel> {
    AdminClient::new(cluster.channel(1, Some("operator")))
}

fn request(location: &str, quantity: u64, context: pb::RequestContext) -> pb::CheckAvailabilityRequest {
    pb::CheckAvailabilityRequest {
        sku: SKU.into(),
        location: location.into(),
        quantity,
        context: context as i32,
        consistency: pb::Consistency::Strong as i32,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn check_scores_with_the_shipped_model_and_the_kill_switch_degrades_safely() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(1, single_node()).await;
    let mut client = cluster.client(1).await;
    let mut admin = admin(&cluster).await;
    receive(&mut client, "rcv-1", SKU, "dc-1", 50).await;

    let status: serde_json::Value =
        serde_json::from_str(&admin.model_status(pb::ModelStatusRequest {}).await.expect("status").into_inner().status_json).expect("json");
    assert_eq!(status["serving"], "v1", "the shipped model serves by default: {status}");

    let answer = client.check_availability(request("dc-1", 1, pb::RequestContext::ProductPage)).await.expect("check").into_inner();
    assert!(answer.scored, "{answer:?}");
    assert!(answer.p_sellable > 0.0 && answer.p_sellable <= 1.0, "{answer:?}");
    assert_eq!(answer.model_version, "v1");
    assert_eq!(answer.atp, 50);
    assert!(answer.degraded.is_empty(), "{answer:?}");
    assert_ne!(answer.decision, pb::Decision::Unavailable as i32, "50 fresh units for 1: {answer:?}");

    // The model never permits what exact ATP refuses.
    let too_many = client.check_availability(request("dc-1", 51, pb::RequestContext::Checkout)).await.expect("check").into_inner();
    assert_eq!(too_many.decision, pb::Decision::Unavailable as i32);
    assert!(too_many.rules.contains(&"INSUFFICIENT_ATP".to_owned()), "{too_many:?}");

    // Kill switch: the conservative rule answers, and says so.
    admin.set_model_disabled(pb::SetModelDisabledRequest { disabled: true }).await.expect("disable");
    let killed = client.check_availability(request("dc-1", 1, pb::RequestContext::Checkout)).await.expect("check").into_inner();
    assert!(!killed.scored);
    assert_eq!(killed.degraded, vec!["MODEL_DISABLED".to_owned()]);
    assert!(killed.rules.contains(&"CONSERVATIVE_RULE".to_owned()), "{killed:?}");
    assert_eq!(killed.decision, pb::Decision::Available as i32, "49 units left is past the margin");
    admin.set_model_disabled(pb::SetModelDisabledRequest { disabled: false }).await.expect("enable");
    let back = client.check_availability(request("dc-1", 1, pb::RequestContext::Checkout)).await.expect("check").into_inner();
    assert!(back.scored, "{back:?}");

    // Operator errors name what is wrong and change nothing.
    let unknown = admin.promote_model(pb::PromoteModelRequest { version: "v999".into() }).await.expect_err("unknown version");
    assert_eq!(unknown.code(), tonic::Code::NotFound, "{unknown:?}");
    let missing = admin.load_model(pb::LoadModelRequest { dir: "/nonexistent/v9".into() }).await.expect_err("missing dir");
    assert!(missing.message().contains("/nonexistent/v9"), "{missing:?}");
    let rollback = admin.rollback_model(pb::ModelStatusRequest {}).await.expect_err("nothing to roll back to");
    assert_eq!(rollback.code(), tonic::Code::FailedPrecondition, "{rollback:?}");

    let no_context = client.check_availability(request("dc-1", 1, pb::RequestContext::Unspecified)).await.expect_err("context is required");
    assert_eq!(no_context.code(), tonic::Code::InvalidArgument);
    assert!(no_context.message().contains("context"), "{no_context:?}");
    let zero = client.check_availability(request("dc-1", 0, pb::RequestContext::Checkout)).await.expect_err("quantity 0");
    assert!(zero.message().contains("quantity"), "{zero:?}");

    // A batch answers each question as CheckAvailability does, in order.
    let checks = vec![
        request("dc-1", 1, pb::RequestContext::ProductPage),
        request("dc-1", 51, pb::RequestContext::Checkout),
        request("dc-9", 1, pb::RequestContext::ProductPage),
    ];
    let batch = client.check_availability_batch(pb::CheckAvailabilityBatchRequest { checks: checks.clone() }).await.expect("batch").into_inner();
    assert_eq!(batch.answers.len(), 3, "{batch:?}");
    for (check, answer) in checks.into_iter().zip(&batch.answers) {
        let single = client.check_availability(check).await.expect("check").into_inner();
        assert_eq!((answer.decision, answer.atp, &answer.location, &answer.rules), (single.decision, single.atp, &single.location, &single.rules));
    }
    assert_eq!(batch.answers[1].decision, pb::Decision::Unavailable as i32);
    assert_eq!((batch.answers[2].atp, batch.answers[2].decision), (0, pb::Decision::Unavailable as i32), "no stock at dc-9");
    // One invalid question answers none, and is named by its index.
    let mut checks = vec![request("dc-1", 1, pb::RequestContext::ProductPage); 2];
    checks[1].quantity = 0;
    let invalid = client.check_availability_batch(pb::CheckAvailabilityBatchRequest { checks }).await.expect_err("invalid question");
    assert_eq!(invalid.code(), tonic::Code::InvalidArgument);
    assert!(invalid.message().contains("checks[1].quantity"), "{invalid:?}");
    let empty = client.check_availability_batch(pb::CheckAvailabilityBatchRequest { checks: Vec::new() }).await.expect_err("empty batch");
    assert!(empty.message().contains("checks"), "{empty:?}");
    let too_many = vec![request("dc-1", 1, pb::RequestContext::ProductPage); stockd_proto::limits::BATCH_CHECKS_MAX + 1];
    let too_many = client.check_availability_batch(pb::CheckAvailabilityBatchRequest { checks: too_many }).await.expect_err("too many");
    assert!(too_many.message().contains("1 to 256"), "{too_many:?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_missing_model_degrades_to_the_conservative_rule() {
    let _serial = SERIAL.lock().await;
    let empty = tempfile::tempdir().expect("tempdir");
    let mut file = single_node();
    file.model.model_dir = empty.path().to_path_buf();
    let cluster = Cluster::start(1, file).await;
    let mut client = cluster.client(1).await;
    receive(&mut client, "rcv-1", SKU, "dc-1", 10).await;
    receive(&mut client, "rcv-2", SKU, "dc-2", 2).await;

    let plenty = client.check_availability(request("dc-1", 1, pb::RequestContext::Checkout)).await.expect("check").into_inner();
    assert_eq!(plenty.decision, pb::Decision::Available as i32, "{plenty:?}");
    assert_eq!(plenty.degraded, vec!["MODEL_UNAVAILABLE".to_owned()]);
    assert!(!plenty.scored);
    // 2 units, 1 asked: 1 left is inside the margin of 2. Checkout refuses,
    // a product page shows low stock.
    let tight = client.check_availability(request("dc-2", 1, pb::RequestContext::Checkout)).await.expect("check").into_inner();
    assert_eq!(tight.decision, pb::Decision::Unavailable as i32, "{tight:?}");
    assert!(tight.rules.contains(&"CONSERVATIVE_RULE".to_owned()));
    let page = client.check_availability(request("dc-2", 1, pb::RequestContext::ProductPage)).await.expect("check").into_inner();
    assert_eq!(page.decision, pb::Decision::LowStock as i32, "{page:?}");
    // Without a location, the best one answers.
    let best = client.check_availability(request("", 1, pb::RequestContext::Checkout)).await.expect("check").into_inner();
    assert_eq!(best.location, "dc-1");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn served_features_equal_the_export_path_for_the_same_position() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(1, single_node()).await;
    let mut client = cluster.client(1).await;
    for (location, units) in [("dc-1", 30), ("3p-7", 12)] {
        receive(&mut client, &format!("rcv-{location}"), SKU, location, units).await;
        reserve(&mut client, &format!("cart-{location}"), vec![common::line(SKU, location, 2)], 60_000).await.expect("reserve");
    }
    for location in ["dc-1", "3p-7"] {
        let mut ask = request(location, 3, pb::RequestContext::Checkout);
        ask.explain = true;
        ask.promo = true;
        let answer = client.check_availability(ask).await.expect("check").into_inner();
        assert_eq!(answer.features.len(), features::FEATURE_COUNT);
        let node = cluster.node(1);
        let group = node.topology().group_for(&node.config.region, SKU).expect("a group").group;
        let position = node.group(group).expect("hosted").state().read().position(&PositionKey::new(SKU, location)).cloned();
        let seller_type = if location.starts_with("3p-") { SellerType::ThirdParty } else { SellerType::FirstParty };
        let context = RequestContext { quantity: 3, now_ms: answer.features_at_ms, replica_staleness_ms: answer.staleness_ms, seller_type, promo: true };
        let exported = features::compute(&features::input_from_position(position.as_ref(), &context));
        assert_eq!(answer.features, exported.values.to_vec(), "{location}");
        assert_eq!(answer.seller_type, seller_type.as_str());
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ranking_puts_eligible_locations_first_and_honours_residency() {
    let _serial = SERIAL.lock().await;
    let mut file = single_node();
    file.availability.residency_regions = vec!["local".into()];
    let cluster = Cluster::start(1, file).await;
    let mut client = cluster.client(1).await;
    receive(&mut client, "rcv-a", SKU, "dc-1", 20).await;
    receive(&mut client, "rcv-b", SKU, "3p-2", 20).await;
    receive(&mut client, "rcv-c", SKU, "dc-3", 1).await;

    let rank = |region: &str| pb::RankFulfillmentRequest { sku: SKU.into(), quantity: 2, destination_region: region.into(), route_key: String::new() };
    let ranked = client.rank_fulfillment(rank("local")).await.expect("rank").into_inner();
    let locations: Vec<&str> = ranked.candidates.iter().map(|c| c.location.as_str()).collect();
    assert_eq!(locations.len(), 3, "{ranked:?}");
    assert_eq!(locations[2], "dc-3", "the location that cannot cover 2 units ranks last");
    let last = &ranked.candidates[2];
    assert!(!last.eligible && last.reasons.contains(&"INSUFFICIENT_ATP".to_owned()), "{last:?}");
    assert!(ranked.candidates[..2].iter().all(|c| c.eligible), "{ranked:?}");
    assert!(ranked.candidates[0].score >= ranked.candidates[1].score);
    let third_party = ranked.candidates.iter().find(|c| c.location == "3p-2").expect("3p-2 ranked");
    assert!(third_party.reasons.contains(&"THIRD_PARTY_COST".to_owned()) && third_party.cost > 1.0, "{third_party:?}");

    let abroad = client.rank_fulfillment(rank("eu-west")).await.expect("rank").into_inner();
    assert!(abroad.candidates.iter().all(|c| !c.eligible && c.reasons.contains(&"RESIDENCY".to_owned())), "{abroad:?}");
    cluster.shutdown().await;
}

/// A copy of the shipped version under another name in `root`, as an
/// operator would stage a retrained model.
fn stage_copy_of_v1(root: &std::path::Path, as_version: &str) {
    let shipped = std::path::Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR")).join("models/v1");
    let dir = root.join(as_version);
    std::fs::create_dir(&dir).expect("mkdir");
    for entry in std::fs::read_dir(&shipped).expect("read models/v1") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), dir.join(entry.file_name())).expect("copy");
    }
    let manifest_path = dir.join("manifest.json");
    let mut manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest_path).expect("manifest")).expect("json");
    manifest["version"] = serde_json::json!(as_version);
    std::fs::write(&manifest_path, serde_json::to_vec_pretty(&manifest).expect("encode")).expect("write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_version_loads_promotes_and_rolls_back_without_a_restart() {
    let _serial = SERIAL.lock().await;
    let root = tempfile::tempdir().expect("model root");
    stage_copy_of_v1(root.path(), "v1");
    let mut file = single_node();
    file.model.model_dir = root.path().to_path_buf();
    let cluster = Cluster::start(1, file).await;
    let mut client = cluster.client(1).await;
    let mut admin = admin(&cluster).await;
    receive(&mut client, "rcv-1", SKU, "dc-1", 50).await;
    let version_of = |answer: &pb::CheckAvailabilityResponse| answer.model_version.clone();

    // Only directories under the node's model root load, named from the root.
    let outside = tempfile::tempdir().expect("elsewhere");
    stage_copy_of_v1(outside.path(), "v4");
    let absolute = outside.path().join("v4").display().to_string();
    let escape = format!("../{}/v4", outside.path().file_name().expect("name").to_string_lossy());
    for dir in [absolute, escape, ".".to_owned()] {
        let refused = admin.load_model(pb::LoadModelRequest { dir: dir.clone() }).await.expect_err("outside the model root");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{dir}: {refused:?}");
        assert!(refused.message().contains("invalid dir") && refused.message().contains("model root"), "{dir}: {refused:?}");
    }
    stage_copy_of_v1(root.path(), "v2");
    admin.load_model(pb::LoadModelRequest { dir: "v2".into() }).await.expect("load v2");
    let answer = client.check_availability(request("dc-1", 1, pb::RequestContext::Checkout)).await.expect("check").into_inner();
    assert_eq!(version_of(&answer), "v1", "loading does not change what serves");

    admin.promote_model(pb::PromoteModelRequest { version: "v2".into() }).await.expect("promote");
    let answer = client.check_availability(request("dc-1", 1, pb::RequestContext::Checkout)).await.expect("check").into_inner();
    assert_eq!(version_of(&answer), "v2");

    let status = admin.rollback_model(pb::ModelStatusRequest {}).await.expect("rollback").into_inner();
    let status: serde_json::Value = serde_json::from_str(&status.status_json).expect("json");
    assert_eq!(status["serving"], "v1", "{status}");
    let answer = client.check_availability(request("dc-1", 1, pb::RequestContext::Checkout)).await.expect("check").into_inner();
    assert_eq!(version_of(&answer), "v1");

    // A tampered copy is refused and changes nothing.
    stage_copy_of_v1(root.path(), "v3");
    let onnx = root.path().join("v3/model.onnx");
    let mut bytes = std::fs::read(&onnx).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&onnx, bytes).expect("write");
    let refused = admin.load_model(pb::LoadModelRequest { dir: root.path().join("v3").display().to_string() }).await.expect_err("checksum");
    assert!(refused.message().contains("model.onnx"), "{refused:?}");
    let status = admin.model_status(pb::ModelStatusRequest {}).await.expect("status").into_inner();
    let status: serde_json::Value = serde_json::from_str(&status.status_json).expect("json");
    assert_eq!(status["serving"], "v1");
    assert!(!status.to_string().contains("\"v4\""), "nothing from outside the root was loaded: {status}");
    cluster.shutdown().await;
}

fn gated(id: &str, lines: Vec<pb::Line>) -> pb::ReserveRequest {
    pb::ReserveRequest { reservation_id: id.into(), lines, ttl_ms: 0, risk_gate: Some(pb::RiskGate::default()) }
}

async fn reserved_at(client: &mut stockd::proto::v1::inventory_client::InventoryClient<Channel>, location: &str) -> u64 {
    common::position(client, SKU, location, pb::Consistency::Strong).await.position.expect("position").reserved
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_checkout_risk_gate_refuses_risky_carts_whole_and_logs_its_verdict() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(1, single_node()).await;
    let mut client = cluster.client(1).await;
    let mut admin = admin(&cluster).await;
    receive(&mut client, "rcv-1", SKU, "dc-1", 50).await;
    receive(&mut client, "rcv-2", SKU, "dc-2", 1).await;

    // Plenty of fresh stock: the gate lets it through, says why, and the
    // verdict is kept in the position's change history.
    let ok = client.reserve(gated("g-1", vec![common::line(SKU, "dc-1", 1)])).await.expect("reserve").into_inner();
    assert_eq!(ok.outcome, pb::Outcome::Ok as i32, "{ok:?}");
    assert_eq!(ok.risk.len(), 1, "{ok:?}");
    let verdict = &ok.risk[0];
    assert!(verdict.scored && verdict.p_sellable >= verdict.threshold, "{verdict:?}");
    assert_eq!((verdict.model_version.as_str(), verdict.refused_by.len()), ("v1", 0));
    let history = common::position(&mut client, SKU, "dc-1", pb::Consistency::Strong).await.position.expect("position").recent_changes;
    let change = history.last().expect("a change");
    assert_eq!((change.kind.as_str(), change.reference.as_str()), ("reserve", "g-1"));
    assert!(change.reason.starts_with(&format!("risk gate: p_sellable {:.3} (v1), threshold", verdict.p_sellable)), "{change:?}");

    // The last recorded unit: the model's checkout answer refuses it, so the
    // gate does, though exact ATP covers it; an ungated reserve still may.
    let check = client.check_availability(request("dc-2", 1, pb::RequestContext::Checkout)).await.expect("check").into_inner();
    assert!(check.rules.contains(&"MODEL_RISK".to_owned()), "the shipped model doubts a last unit: {check:?}");
    let risky = client.reserve(gated("g-2", vec![common::line(SKU, "dc-2", 1)])).await.expect("reserve").into_inner();
    assert_eq!(risky.outcome, pb::Outcome::RiskRefused as i32, "{risky:?}");
    assert_eq!(risky.reservation, None);
    assert_eq!(risky.risk[0].refused_by, vec!["MODEL_RISK".to_owned()]);
    assert!(risky.risk[0].p_sellable < risky.risk[0].threshold, "{risky:?}");
    // A cart with one risky line is refused whole.
    let cart = client.reserve(gated("g-3", vec![common::line(SKU, "dc-1", 2), common::line(SKU, "dc-2", 1)])).await.expect("reserve").into_inner();
    assert_eq!(cart.outcome, pb::Outcome::RiskRefused as i32, "{cart:?}");
    assert_eq!((cart.risk[0].refused_by.len(), cart.risk[1].refused_by.len()), (0, 1), "{cart:?}");
    assert_eq!((reserved_at(&mut client, "dc-1").await, reserved_at(&mut client, "dc-2").await), (1, 0), "nothing of a refused cart was reserved");
    let ungated = reserve(&mut client, "plain-2", vec![common::line(SKU, "dc-2", 1)], 0).await.expect("reserve");
    assert_eq!(ungated.outcome, pb::Outcome::Ok as i32, "the exact path alone is unchanged: {ungated:?}");
    assert!(ungated.risk.is_empty());

    // A retry of an accepted gated reserve is a replay.
    let again = client.reserve(gated("g-1", vec![common::line(SKU, "dc-1", 1)])).await.expect("reserve").into_inner();
    assert_eq!((again.outcome, again.replay), (pb::Outcome::Ok as i32, true), "{again:?}");
    assert_eq!(reserved_at(&mut client, "dc-1").await, 1);

    // Kill switch: the conservative rule decides for the gate and says so.
    admin.set_model_disabled(pb::SetModelDisabledRequest { disabled: true }).await.expect("disable");
    let plenty = client.reserve(gated("g-4", vec![common::line(SKU, "dc-1", 1)])).await.expect("reserve").into_inner();
    assert_eq!(plenty.outcome, pb::Outcome::Ok as i32, "{plenty:?}");
    assert!(!plenty.risk[0].scored);
    assert_eq!(plenty.risk[0].degraded, vec!["MODEL_DISABLED".to_owned()]);
    // 48 available, 47 asked: 1 left is inside the conservative margin of 2.
    let tight = client.reserve(gated("g-5", vec![common::line(SKU, "dc-1", 47)])).await.expect("reserve").into_inner();
    assert_eq!(tight.outcome, pb::Outcome::RiskRefused as i32, "{tight:?}");
    assert_eq!(tight.risk[0].refused_by, vec!["CONSERVATIVE_RULE".to_owned()]);
    // Exact ATP is still the exact path's: past it, the answer is a shortfall.
    let over = client.reserve(gated("g-6", vec![common::line(SKU, "dc-1", 49)])).await.expect("reserve").into_inner();
    assert_eq!(over.outcome, pb::Outcome::InsufficientStock as i32, "{over:?}");
    assert_eq!(over.shortfalls[0].atp, 48);
    admin.set_model_disabled(pb::SetModelDisabledRequest { disabled: false }).await.expect("enable");

    let mut long_key = gated("g-7", vec![common::line(SKU, "dc-1", 1)]);
    long_key.risk_gate = Some(pb::RiskGate { route_key: "k".repeat(stockd_proto::limits::ROUTE_KEY_BYTES_MAX + 1), promo: false });
    let invalid = client.reserve(long_key).await.expect_err("route key too long");
    assert_eq!(invalid.code(), tonic::Code::InvalidArgument);
    assert!(invalid.message().contains("risk_gate.route_key"), "{invalid:?}");
    cluster.shutdown().await;
}
