//! Security against real nodes with mTLS on both planes: each role reaches
//! exactly its row of the role table (and nobody else's), peer messages are
//! checked as client requests are, certificates rotate without a restart
//! (file change and SIGHUP), and expired or foreign certificates are
//! refused. Forwarding between nodes goes through the mTLS peer plane.

mod common;

use std::time::Duration;

use common::line;
use common::poll;
use common::position;
use common::receive;
use common::test_config;
use common::Cluster;
use common::SERIAL;
use stockd::config::FileConfig;
use stockd::proto::peer::raft_peer_client::RaftPeerClient;
use stockd::proto::peer::RaftMessage;
use stockd::proto::v1 as pb;
use storage::model::Command as Cmd;
use tonic::transport::Channel;

const SKU: &str = "1-widget";
const LOC: &str = "wh1";

fn single_node() -> FileConfig {
    let mut file = test_config();
    file.cluster.replication_factor = 1;
    file
}

/// What one call met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cell {
    /// It reached its handler (whatever the handler answered).
    Yes,
    /// PERMISSION_DENIED.
    Denied,
    /// UNAUTHENTICATED, or the TLS handshake refused the caller.
    Auth,
}

impl Cell {
    fn text(self) -> &'static str {
        match self {
            Cell::Yes => "yes",
            Cell::Denied => "-",
            Cell::Auth => "auth",
        }
    }
}

fn classify(status: &tonic::Status) -> Cell {
    match status.code() {
        tonic::Code::PermissionDenied => Cell::Denied,
        tonic::Code::Unauthenticated => Cell::Auth,
        // A status the client made because the connection was refused at
        // the handshake carries the transport error as its source.
        _ if std::error::Error::source(status).is_some() => Cell::Auth,
        _ => Cell::Yes,
    }
}

/// Calls `path` with an empty message (every request message of the table
/// accepts one: its fields are all optional) and says what it met.
async fn call(channel: Channel, path: &'static str) -> Cell {
    let mut grpc = tonic::client::Grpc::new(channel);
    if grpc.ready().await.is_err() {
        return Cell::Auth;
    }
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let request = tonic::Request::new(futures::stream::iter(vec![()]));
    let answer = tokio::time::timeout(Duration::from_secs(10), grpc.streaming(request, http::uri::PathAndQuery::from_static(path), codec)).await;
    match answer.expect("an answer within 10 s") {
        Err(status) => classify(&status),
        Ok(response) => match response.into_inner().message().await {
            Err(status) => classify(&status),
            Ok(_) => Cell::Yes,
        },
    }
}

/// The role table as a user must see it. Written out here, apart from the
/// source table, so that changing any cell there fails this test.
const EXPECTED: &str = "\
rpc                                                         anonymous  reader  checkout  feed  operator  peer
stockd.v1.Inventory/GetPosition                             auth       yes     yes       yes   -         -
stockd.v1.Inventory/CheckAvailability                       auth       yes     yes       yes   -         -
stockd.v1.Inventory/CheckAvailabilityBatch                  auth       yes     yes       yes   -         -
stockd.v1.Inventory/RankFulfillment                         auth       yes     yes       yes   -         -
stockd.v1.Inventory/GetReservation                          auth       yes     yes       yes   -         -
stockd.v1.Inventory/Reserve                                 auth       -       yes       -     -         -
stockd.v1.Inventory/BatchReserve                            auth       -       yes       -     -         -
stockd.v1.Inventory/Commit                                  auth       -       yes       -     -         -
stockd.v1.Inventory/Release                                 auth       -       yes       -     -         -
stockd.v1.Inventory/Fulfill                                 auth       -       yes       -     -         -
stockd.v1.Inventory/Cancel                                  auth       -       yes       -     -         -
stockd.v1.Inventory/Adjust                                  auth       -       -         yes   -         -
stockd.v1.Admin/Status                                      auth       yes     yes       yes   yes       -
stockd.v1.Admin/ModelStatus                                 auth       yes     yes       yes   yes       -
stockd.v1.Admin/LoadModel                                   auth       -       -         -     yes       -
stockd.v1.Admin/PromoteModel                                auth       -       -         -     yes       -
stockd.v1.Admin/RollbackModel                               auth       -       -         -     yes       -
stockd.v1.Admin/SetModelCandidate                           auth       -       -         -     yes       -
stockd.v1.Admin/SetModelDisabled                            auth       -       -         -     yes       -
stockd.v1.Admin/ClusterSettings                             auth       -       -         -     yes       yes
grpc.health.v1.Health/Check                                 yes        yes     yes       yes   yes       yes
grpc.reflection.v1.ServerReflection/ServerReflectionInfo    auth       yes     yes       yes   yes       -
grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo  auth    yes     yes       yes   yes       -
stockd.peer.v1.RaftPeer/AppendEntries                       auth       -       -         -     -         yes
stockd.peer.v1.RaftPeer/Vote                                auth       -       -         -     -         yes
stockd.peer.v1.RaftPeer/InstallSnapshot                     auth       -       -         -     -         yes
stockd.peer.v1.RaftPeer/Propose                             auth       -       -         -     -         yes
stockd.peer.v1.RaftPeer/Read                                auth       -       -         -     -         yes
stockd.peer.v1.RaftPeer/RaftStream                          auth       -       -         -     -         yes
";

const CLIENT_PLANE: &[&str] = &[
    "/stockd.v1.Inventory/GetPosition",
    "/stockd.v1.Inventory/CheckAvailability",
    "/stockd.v1.Inventory/CheckAvailabilityBatch",
    "/stockd.v1.Inventory/RankFulfillment",
    "/stockd.v1.Inventory/GetReservation",
    "/stockd.v1.Inventory/Reserve",
    "/stockd.v1.Inventory/BatchReserve",
    "/stockd.v1.Inventory/Commit",
    "/stockd.v1.Inventory/Release",
    "/stockd.v1.Inventory/Fulfill",
    "/stockd.v1.Inventory/Cancel",
    "/stockd.v1.Inventory/Adjust",
    "/stockd.v1.Admin/Status",
    "/stockd.v1.Admin/ModelStatus",
    "/stockd.v1.Admin/LoadModel",
    "/stockd.v1.Admin/PromoteModel",
    "/stockd.v1.Admin/RollbackModel",
    "/stockd.v1.Admin/SetModelCandidate",
    "/stockd.v1.Admin/SetModelDisabled",
    "/stockd.v1.Admin/ClusterSettings",
    "/grpc.health.v1.Health/Check",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

const PEER_PLANE: &[&str] = &[
    "/stockd.peer.v1.RaftPeer/AppendEntries",
    "/stockd.peer.v1.RaftPeer/Vote",
    "/stockd.peer.v1.RaftPeer/InstallSnapshot",
    "/stockd.peer.v1.RaftPeer/Propose",
    "/stockd.peer.v1.RaftPeer/Read",
    "/stockd.peer.v1.RaftPeer/RaftStream",
];

/// The certificate of each column: `None` is anonymous (the CA only).
const COLUMNS: &[Option<&str>] = &[None, Some("reader"), Some("checkout"), Some("feed"), Some("operator"), Some("node-1")];

fn normalized(table: &str) -> Vec<Vec<String>> {
    table.lines().map(|l| l.split_whitespace().map(str::to_owned).collect()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_role_reaches_exactly_its_row_of_the_table() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start_tls(1, single_node()).await;
    let mut observed = String::from("rpc anonymous reader checkout feed operator peer\n");
    let planes = [(CLIENT_PLANE, cluster.addrs[0].clone()), (PEER_PLANE, cluster.peer_addrs[0].clone())];
    for (paths, addr) in planes {
        for path in paths.iter() {
            let mut row = vec![path.trim_start_matches('/').to_owned()];
            for role in COLUMNS {
                row.push(call(cluster.channel_to(&addr, *role), path).await.text().to_owned());
            }
            observed.push_str(&row.join(" "));
            observed.push('\n');
        }
    }
    assert_eq!(normalized(&observed), normalized(EXPECTED), "observed table:\n{observed}");

    // The planes are apart: the client plane serves no peer RPC, the peer
    // plane no public one.
    let peer_on_client_plane = call(cluster.channel(1, Some("node-1")), "/stockd.peer.v1.RaftPeer/Propose").await;
    assert_eq!(peer_on_client_plane, Cell::Yes, "let through by the role table...");
    let mut raft = RaftPeerClient::new(cluster.channel(1, Some("node-1")));
    let unserved = raft.propose(RaftMessage { group_id: 1, payload: Vec::new() }).await.expect_err("not on the client plane");
    assert_eq!(unserved.code(), tonic::Code::Unimplemented, "...but not served there: {unserved:?}");
    let mut admin = pb::admin_client::AdminClient::new(cluster.channel_to(&cluster.peer_addrs[0], Some("reader")));
    let unserved = admin.status(pb::StatusRequest {}).await.expect_err("not on the peer plane");
    assert_eq!(unserved.code(), tonic::Code::Unimplemented, "{unserved:?}");

    // A refusal names the role and the RPC.
    let mut checkout = pb::admin_client::AdminClient::new(cluster.channel(1, Some("checkout")));
    let refused = checkout.set_model_disabled(pb::SetModelDisabledRequest { disabled: true }).await.expect_err("checkout is no operator");
    assert!(refused.message().contains("role checkout") && refused.message().contains("stockd.v1.Admin/SetModelDisabled"), "{refused:?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reflection_lists_only_the_public_services_in_both_versions() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start_tls(1, single_node()).await;
    use tonic_reflection::pb::v1 as r1;
    use tonic_reflection::pb::v1alpha as r0;
    let list =
        r1::ServerReflectionRequest { host: String::new(), message_request: Some(r1::server_reflection_request::MessageRequest::ListServices(String::new())) };
    let mut v1 = r1::server_reflection_client::ServerReflectionClient::new(cluster.channel(1, Some("reader")));
    let reply = v1.server_reflection_info(futures::stream::iter(vec![list])).await.expect("v1").into_inner().message().await.expect("reply").expect("one");
    let Some(r1::server_reflection_response::MessageResponse::ListServicesResponse(services)) = reply.message_response else { panic!("{reply:?}") };
    let mut names: Vec<String> = services.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(names, ["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "stockd.v1.Admin", "stockd.v1.Inventory"], "no peer service");

    let list =
        r0::ServerReflectionRequest { host: String::new(), message_request: Some(r0::server_reflection_request::MessageRequest::ListServices(String::new())) };
    let mut v0 = r0::server_reflection_client::ServerReflectionClient::new(cluster.channel(1, Some("reader")));
    let reply = v0.server_reflection_info(futures::stream::iter(vec![list])).await.expect("v1alpha").into_inner().message().await.expect("reply").expect("one");
    let Some(r0::server_reflection_response::MessageResponse::ListServicesResponse(services)) = reply.message_response else { panic!("{reply:?}") };
    let names: Vec<String> = services.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"stockd.v1.Inventory".to_owned()) && !names.iter().any(|n| n.contains("peer")), "{names:?}");
    cluster.shutdown().await;
}

/// A Propose as a node would send it: the fingerprint, a group, a payload.
fn propose(cluster: &Cluster, group: u32, payload: Vec<u8>) -> tonic::Request<RaftMessage> {
    let mut request = tonic::Request::new(RaftMessage { group_id: group, payload });
    let fingerprint = cluster.node(1).config.cluster_fingerprint.clone();
    request.metadata_mut().insert(stockd::peer_client::FINGERPRINT_METADATA, fingerprint.parse().expect("ascii"));
    request
}

fn reserve_command(id: &str, quantity: u64) -> Cmd {
    Cmd::Reserve { reservation_id: id.into(), lines: vec![storage::model::Line { sku: SKU.into(), location: LOC.into(), quantity }], ttl_ms: 60_000 }
}

/// A forwarded command's payload: routed at the first epoch.
fn routed(command: Cmd) -> (u64, Cmd) {
    (storage::model::FIRST_EPOCH, command)
}

fn gated_command(id: &str) -> Cmd {
    let verdict = storage::model::LineRisk {
        p_sellable_ppm: Some(999_999),
        threshold_ppm: 900_000,
        model_version: "v1".into(),
        refused_by: Vec::new(),
        degraded: Vec::new(),
    };
    Cmd::ReserveGated {
        reservation_id: id.into(),
        lines: vec![storage::model::Line { sku: SKU.into(), location: LOC.into(), quantity: 1 }],
        ttl_ms: 60_000,
        gate: storage::model::RiskGate { lines: vec![verdict] },
    }
}

/// A message of the Raft stream as a node would send it.
fn envelope(id: u64, group: u32, rpc: u32, payload: Vec<u8>) -> stockd::proto::peer::RaftEnvelope {
    stockd::proto::peer::RaftEnvelope { id, group_id: group, rpc, payload, code: 0, error: String::new(), timeout_ms: 5_000 }
}

/// The Raft stream takes a node's messages of every kind it carries and
/// checks each as its own call would: the stream needs the cluster's
/// fingerprint, a forwarded command above a limit is refused with the
/// field named and nothing applied, a kind the stream does not carry is
/// refused, and valid commands and reads are answered, each reply naming
/// its message.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_raft_stream_checks_each_message_as_its_call_would() {
    use stockd::proto::peer::RaftFrame;
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start_tls(1, single_node()).await;
    receive(&mut cluster.feed(1).await, "rcv-s", SKU, LOC, 10).await;
    let group = cluster.node(1).topology().group_for("local", SKU).expect("group").group;
    let mut peer = RaftPeerClient::new(cluster.channel_to(&cluster.peer_addrs[0], Some("node-1")));
    let open = |frames: Vec<RaftFrame>, fingerprint: String| {
        let mut request = tonic::Request::new(futures::stream::iter(frames));
        request.metadata_mut().insert(stockd::peer_client::FINGERPRINT_METADATA, fingerprint.parse().expect("ascii"));
        request
    };
    let ours = cluster.node(1).config.cluster_fingerprint.clone();
    let foreign = peer.raft_stream(open(Vec::new(), "0000000000000000".into())).await.expect_err("other cluster settings");
    assert!(foreign.code() == tonic::Code::FailedPrecondition && foreign.message().contains("fingerprint"), "{foreign:?}");

    let read = raft::wire::encode(&(stockd::read::ReadQuery::Position(storage::model::PositionKey::new(SKU, LOC)), stockd::read::Consistency::Strong));
    let frame = RaftFrame {
        messages: vec![
            envelope(1, group, 4, raft::wire::encode(&routed(reserve_command("stream-1", 2_000_000)))),
            envelope(2, group, 3, Vec::new()),
            envelope(3, group, 4, raft::wire::encode(&routed(reserve_command("stream-2", 3)))),
            envelope(4, group, 9, Vec::new()),
        ],
    };
    let mut replies = peer.raft_stream(open(vec![frame], ours.clone())).await.expect("opened").into_inner();
    let mut by_id = std::collections::BTreeMap::new();
    while by_id.len() < 4 {
        let frame = tokio::time::timeout(Duration::from_secs(10), replies.message()).await.expect("replies in time").expect("stream").expect("a frame");
        by_id.extend(frame.messages.into_iter().map(|m| (m.id, m)));
    }
    assert_eq!(tonic::Code::from(by_id[&1].code), tonic::Code::InvalidArgument);
    assert!(by_id[&1].error.contains("lines[0].quantity"), "{:?}", by_id[&1]);
    for id in [2, 4] {
        assert_eq!(tonic::Code::from(by_id[&id].code), tonic::Code::InvalidArgument, "{:?}", by_id[&id]);
        assert!(by_id[&id].error.contains("not taken on the raft stream"), "{:?}", by_id[&id]);
    }
    let taken: Result<(u64, storage::model::CommandResult), raft::GroupError> = raft::wire::decode(&by_id[&3].payload).expect("reply decodes");
    assert_eq!(taken.expect("applied").1.outcome, storage::model::Outcome::Ok);

    // A read on a stream of its own sees the reservation the other took.
    let mut replies = peer.raft_stream(open(vec![RaftFrame { messages: vec![envelope(7, group, 5, read)] }], ours)).await.expect("opened").into_inner();
    let frame = tokio::time::timeout(Duration::from_secs(10), replies.message()).await.expect("in time").expect("stream").expect("a frame");
    assert_eq!((frame.messages[0].id, tonic::Code::from(frame.messages[0].code)), (7, tonic::Code::Ok));
    let answer: Result<stockd::read::ReadAnswer, raft::GroupError> = raft::wire::decode(&frame.messages[0].payload).expect("decodes");
    let p = answer.expect("read").position.expect("position");
    assert_eq!((p.on_hand, p.reserved), (10, 3), "the refused command applied nothing, the valid one its 3 units");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peer_messages_are_checked_as_client_requests_are() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start_tls(1, single_node()).await;
    receive(&mut cluster.feed(1).await, "rcv-1", SKU, LOC, 10).await;
    let group = cluster.node(1).topology().group_for("local", SKU).expect("group").group;
    let mut peer = RaftPeerClient::new(cluster.channel_to(&cluster.peer_addrs[0], Some("node-1")));

    // Over the payload limit (a node's: a merge carries a range's state):
    // refused before it is decoded.
    let huge = vec![0u8; stockd::peer_service::PEER_MERGE_BYTES_MAX + 1];
    let refused = peer.propose(propose(&cluster, group, huge)).await.expect_err("too large");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("over its limit"), "{refused:?}");

    // Above the cluster's quantity limit: the error a client gets.
    let too_many = raft::wire::encode(&routed(reserve_command("forged-1", 2_000_000)));
    let refused = peer.propose(propose(&cluster, group, too_many)).await.expect_err("quantity above the limit");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("lines[0].quantity"), "{refused:?}");

    // A SKU outside the named group.
    let other_group = cluster.node(1).topology().group_for("local", "9-other").expect("group").group;
    assert_ne!(other_group, group);
    let misplaced = raft::wire::encode(&routed(reserve_command("forged-2", 1)));
    // Refused as a stale route in the answer (the sender's map disagrees
    // with this node's): not applied, and routed again by the sender.
    let answer = peer.propose(propose(&cluster, other_group, misplaced)).await.expect("an answer").into_inner();
    let refused: Result<(u64, storage::model::CommandResult), raft::GroupError> = raft::wire::decode(&answer.payload).expect("decode");
    assert!(matches!(refused, Err(raft::GroupError::StaleRoute { .. })), "{refused:?}");

    // No or another cluster fingerprint: refused whatever the payload.
    let mut foreign = propose(&cluster, group, raft::wire::encode(&routed(reserve_command("forged-3", 1))));
    foreign.metadata_mut().insert(stockd::peer_client::FINGERPRINT_METADATA, "0000000000000000".parse().expect("ascii"));
    let refused = peer.propose(foreign).await.expect_err("other cluster settings");
    assert!(refused.code() == tonic::Code::FailedPrecondition && refused.message().contains("fingerprint"), "{refused:?}");

    // Forged risk verdicts from a client certificate: refused on either plane.
    for addr in [&cluster.peer_addrs[0], &cluster.addrs[0]] {
        let mut forger = RaftPeerClient::new(cluster.channel_to(addr, Some("checkout")));
        let refused = forger.propose(propose(&cluster, group, raft::wire::encode(&routed(gated_command("forged-4"))))).await.expect_err("not a peer");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{addr}: {refused:?}");
        let mut raft_forger = RaftPeerClient::new(cluster.channel_to(addr, Some("operator")));
        let refused = raft_forger.append_entries(propose(&cluster, group, Vec::new())).await.expect_err("not a peer");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{addr}: {refused:?}");
    }
    let mut c = cluster.client(1).await;
    let p = position(&mut c, SKU, LOC, pb::Consistency::Strong).await.position.expect("position");
    assert_eq!((p.on_hand, p.reserved), (10, 0), "nothing refused was applied");
    for id in ["forged-1", "forged-2", "forged-3", "forged-4"] {
        let got = c.get_reservation(pb::ReservationRef { reservation_id: id.into() }).await.expect("lookup").into_inner();
        assert_eq!(got.outcome, pb::Outcome::NotFound as i32, "{id}");
    }

    // The same verdicts from an authenticated peer are taken.
    let reply = peer.propose(propose(&cluster, group, raft::wire::encode(&routed(gated_command("gated-ok"))))).await.expect("from a peer").into_inner();
    let result: Result<(u64, storage::model::CommandResult), raft::GroupError> = raft::wire::decode(&reply.payload).expect("reply decodes");
    assert_eq!(result.expect("applied").1.outcome, storage::model::Outcome::Ok);
    let p = position(&mut c, SKU, LOC, pb::Consistency::Strong).await.position.expect("position");
    assert_eq!(p.reserved, 1);

    // Routed with an epoch the group's range does not have: refused at
    // apply, named with the group's epoch, nothing applied.
    for epoch in [0, storage::model::FIRST_EPOCH + 1] {
        let stale = raft::wire::encode(&(epoch, reserve_command("stale-1", 1)));
        let reply = peer.propose(propose(&cluster, group, stale)).await.expect("answered").into_inner();
        let result: Result<(u64, storage::model::CommandResult), raft::GroupError> = raft::wire::decode(&reply.payload).expect("reply decodes");
        match result {
            Err(raft::GroupError::StaleRoute { routed_epoch, range, .. }) => {
                assert_eq!(routed_epoch, epoch);
                assert_eq!((range.group, range.epoch), (group, storage::model::FIRST_EPOCH));
                let status = stockd::status::group_error(raft::GroupError::StaleRoute { group, routed_epoch, range });
                assert_eq!(status.code(), tonic::Code::Aborted, "{status:?}");
                assert!(status.message().starts_with(stockd_proto::metadata::STALE_ROUTE_PREFIX), "{status:?}");
                assert_eq!(status.metadata().get(stockd_proto::metadata::EPOCH).and_then(|v| v.to_str().ok()), Some("1"));
            }
            other => panic!("epoch {epoch}: expected a stale route, got {other:?}"),
        }
    }
    let got = c.get_reservation(pb::ReservationRef { reservation_id: "stale-1".into() }).await.expect("lookup").into_inner();
    assert_eq!(got.outcome, pb::Outcome::NotFound as i32);
    let p = position(&mut c, SKU, LOC, pb::Consistency::Strong).await.position.expect("position");
    assert_eq!(p.reserved, 1, "a misrouted command holds nothing");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forwarding_between_nodes_goes_over_the_mtls_peer_plane() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start_tls(3, test_config()).await;
    let leader = cluster.leader_of_sku(SKU).expect("leader");
    let follower = (1..=3).find(|n| *n != leader).expect("a follower");
    let mut via_follower = cluster.client(follower).await;
    let received = receive(&mut cluster.feed(follower).await, "rcv-1", SKU, LOC, 10).await;
    assert_eq!(received.outcome, pb::Outcome::Ok as i32);
    // A risk-gated reserve through a follower: the follower scores the
    // lines and forwards ReserveGated to the leader, which takes it from an
    // authenticated peer.
    let gated =
        pb::ReserveRequest { reservation_id: "cart-g".into(), lines: vec![line(SKU, LOC, 2)], ttl_ms: 60_000, risk_gate: Some(pb::RiskGate::default()) };
    let answer = via_follower.reserve(gated).await.expect("gated reserve").into_inner();
    assert_eq!(answer.outcome, pb::Outcome::Ok as i32, "{answer:?}");
    assert_eq!(answer.risk.len(), 1);
    let mut on_leader = cluster.client(leader).await;
    let p = position(&mut on_leader, SKU, LOC, pb::Consistency::Strong).await.position.expect("position");
    assert_eq!((p.on_hand, p.reserved), (10, 2));
    cluster.shutdown().await;
}

/// A certificate for `role` signed by the CA in `certs`, valid in
/// `[not_before, not_after]` (days from now).
fn issue(certs: &std::path::Path, out: &std::path::Path, role: &str, not_before: i64, not_after: i64) {
    let ca_cert = std::fs::read_to_string(certs.join("ca.crt")).expect("ca");
    let ca_key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(certs.join("ca.key")).expect("ca key")).expect("key");
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_cert, ca_key).expect("issuer");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, role);
    params.distinguished_name.push(rcgen::DnType::OrganizationalUnitName, role);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now + time::Duration::days(not_before);
    params.not_after = now + time::Duration::days(not_after);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &issuer).expect("sign");
    std::fs::create_dir_all(out).expect("dir");
    std::fs::copy(certs.join("ca.crt"), out.join("ca.crt")).expect("ca");
    std::fs::write(out.join(format!("{role}.crt")), cert.pem()).expect("cert");
    std::fs::write(out.join(format!("{role}.key")), key.serialize_pem()).expect("key");
}

fn stock_client(cluster: &Cluster, certs: &std::path::Path, role: &str) -> stockd_client::Client {
    let config = stockd_client::ClientConfig {
        request_timeout: Duration::from_secs(2),
        total_deadline: Duration::from_secs(4),
        routes_max_age: None,
        tls: Some(stockd_client::TlsConfig::from_dir(certs, role).expect("tls files")),
        ..stockd_client::ClientConfig::default()
    };
    stockd_client::Client::with_config(&cluster.addrs, config).expect("client")
}

fn get(sku: &str) -> pb::GetPositionRequest {
    pb::GetPositionRequest { sku: sku.into(), location: LOC.into(), consistency: pb::Consistency::Strong as i32, max_staleness_ms: 0 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expired_and_foreign_certificates_are_refused_at_once() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start_tls(1, single_node()).await;
    let certs = cluster.certs.clone().expect("tls cluster");
    let scratch = tempfile::tempdir().expect("tempdir");
    stock_client(&cluster, &certs, "reader").get_position(get(SKU)).await.expect("the cluster's own certificate works");

    let expired = scratch.path().join("expired");
    issue(&certs, &expired, "checkout", -10, -1);
    let foreign = scratch.path().join("foreign");
    stockd::certs::create(&stockd::certs::CertRequest { out: foreign.clone(), nodes: vec![1], hosts: Vec::new(), days: 2 }).expect("another CA");
    let not_yet = scratch.path().join("not-yet");
    issue(&certs, &not_yet, "checkout", 5, 10);
    for (what, dir) in [("expired", &expired), ("another CA's", &foreign), ("not yet valid", &not_yet)] {
        let started = std::time::Instant::now();
        let refused = stock_client(&cluster, dir, "checkout")
            .reserve(pb::ReserveRequest { reservation_id: format!("r-{what}"), lines: vec![line(SKU, LOC, 1)], ttl_ms: 0, risk_gate: None })
            .await
            .expect_err(what);
        assert!(matches!(refused, stockd_client::ClientError::Unauthenticated(_)), "{what} certificate: {refused:?}");
        assert!(refused.to_string().contains("TLS handshake failed"), "{refused}");
        assert!(started.elapsed() < Duration::from_secs(4), "{what}: refused without retrying until the deadline");
    }
    let p = stock_client(&cluster, &certs, "reader").get_position(get(SKU)).await.expect("read");
    assert!(p.unknown_position, "nothing was reserved: {p:?}");
    cluster.shutdown().await;
}

/// Makes a new CA and node certificate in `into`, replacing what is there
/// (an operator rotating to a new CA).
fn rotate(into: &std::path::Path) -> tempfile::TempDir {
    let fresh = tempfile::tempdir().expect("tempdir");
    stockd::certs::create(&stockd::certs::CertRequest { out: fresh.path().to_path_buf(), nodes: vec![1], hosts: Vec::new(), days: 2 }).expect("new CA");
    for name in ["node-1.key", "node-1.crt", "ca.crt"] {
        let tmp = into.join(format!("{name}.new"));
        std::fs::copy(fresh.path().join(name), &tmp).expect("copy");
        std::fs::rename(&tmp, into.join(name)).expect("rename");
    }
    fresh
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn certificates_rotate_without_a_restart() {
    let _serial = SERIAL.lock().await;
    let mut file = single_node();
    file.node.tls_reload_ms = 100;
    let cluster = Cluster::start_tls(1, file).await;
    let certs = cluster.certs.clone().expect("tls cluster");
    let old = tempfile::tempdir().expect("tempdir");
    for name in ["ca.crt", "reader.crt", "reader.key"] {
        std::fs::copy(certs.join(name), old.path().join(name)).expect("keep the old certificates");
    }
    stock_client(&cluster, old.path(), "reader").get_position(get(SKU)).await.expect("old certificates work");
    let fresh = rotate(&certs);
    poll("the node to take the new certificates", Duration::from_secs(20), || {
        let client = stock_client(&cluster, fresh.path(), "reader");
        async move { client.get_position(get(SKU)).await.is_ok() }
    })
    .await;
    let refused = stock_client(&cluster, old.path(), "reader").get_position(get(SKU)).await.expect_err("the old CA is gone");
    assert!(matches!(refused, stockd_client::ClientError::Unauthenticated(_)), "{refused:?}");
    assert_eq!(cluster.node(1).tls().expect("tls").generation(), 1, "one reload");

    // A broken set (a key that is not the certificate's) is not taken: the
    // node keeps serving with the last good one.
    let other = tempfile::tempdir().expect("tempdir");
    stockd::certs::create(&stockd::certs::CertRequest { out: other.path().to_path_buf(), nodes: vec![1], hosts: Vec::new(), days: 2 }).expect("certs");
    std::fs::copy(other.path().join("node-1.key"), certs.join("node-1.key")).expect("a mismatched key");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stock_client(&cluster, fresh.path(), "reader").get_position(get(SKU)).await.expect("still the last good certificates");
    assert_eq!(cluster.node(1).tls().expect("tls").generation(), 1, "the broken set was refused");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_running_node_reloads_its_certificates_on_sighup() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    stockd::certs::create(&stockd::certs::CertRequest { out: certs.clone(), nodes: vec![1], hosts: Vec::new(), days: 2 }).expect("certs");
    let free = || std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let (port, peer_port) = (free(), free());
    // Files are checked only hourly here: the reload below is SIGHUP's.
    let config = dir.path().join("node.toml");
    std::fs::write(&config, "[cluster]\nreplication-factor = 1\n[node]\ntls-reload-ms = 3600000\n").expect("config");
    let mut node = std::process::Command::new(env!("CARGO_BIN_EXE_stockd"))
        .args(["start", "--node-id", "1", "--peers", &format!("1=127.0.0.1:{port}/127.0.0.1:{peer_port}")])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--certs")
        .arg(&certs)
        .arg("--config")
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start stockd");
    let addr = [format!("127.0.0.1:{port}")];
    let client_with = |dir: &std::path::Path| {
        let config = stockd_client::ClientConfig {
            request_timeout: Duration::from_secs(2),
            total_deadline: Duration::from_secs(2),
            routes_max_age: None,
            tls: Some(stockd_client::TlsConfig::from_dir(dir, "reader").expect("tls")),
            ..stockd_client::ClientConfig::default()
        };
        stockd_client::Client::with_config(&addr, config).expect("client")
    };
    let before = tempfile::tempdir().expect("tempdir");
    for name in ["ca.crt", "reader.crt", "reader.key"] {
        std::fs::copy(certs.join(name), before.path().join(name)).expect("copy");
    }
    poll("the node to serve", Duration::from_secs(30), || {
        let client = client_with(before.path());
        async move { client.status().await.is_ok() }
    })
    .await;
    let fresh = rotate(&certs);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(client_with(before.path()).status().await.is_ok(), "no reload before the signal");
    let pid = node.id().to_string();
    assert!(std::process::Command::new("kill").args(["-HUP", &pid]).status().expect("kill").success());
    poll("SIGHUP to install the new certificates", Duration::from_secs(10), || {
        let client = client_with(fresh.path());
        async move { client.status().await.is_ok() }
    })
    .await;
    assert!(node.try_wait().expect("wait").is_none(), "SIGHUP does not stop the node");
    let _ = std::process::Command::new("kill").args(["-TERM", &pid]).status();
    let _ = node.wait();
}

fn stockctl(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_stockctl"))
        .args(args)
        .env_remove("STOCKCTL_CERTS")
        .env_remove("STOCKCTL_ROLE")
        .output()
        .expect("run stockctl")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stockctl_picks_the_role_each_command_needs() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start_tls(1, single_node()).await;
    let certs = cluster.certs.clone().expect("tls cluster").display().to_string();
    let addr = cluster.addrs[0].as_str();
    let base = ["--addr", addr, "--certs", certs.as_str()];
    let run = |extra: &[&str]| stockctl(&[&base[..], extra].concat());
    let adjusted = run(&["adjust", "--event-id", "e1", "--sku", SKU, "--location", LOC, "--kind", "receipt", "--qty", "5"]);
    assert!(adjusted.status.success(), "adjust as feed: {}", String::from_utf8_lossy(&adjusted.stderr));
    let reserved = run(&["reserve", "--id", "c1", "--line", &format!("{SKU}:{LOC}:2")]);
    assert!(reserved.status.success(), "reserve as checkout: {}", String::from_utf8_lossy(&reserved.stderr));
    let denied = run(&["--role", "reader", "reserve", "--id", "c2", "--line", &format!("{SKU}:{LOC}:1")]);
    assert_eq!(denied.status.code(), Some(4), "a reader may not reserve");
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(stderr.contains("permission denied") && stderr.contains("role reader") && stderr.contains("Reserve"), "{stderr}");
    let anonymous = stockctl(&["--addr", addr, "--ca", &format!("{certs}/ca.crt"), "get", "--sku", SKU, "--location", LOC]);
    assert_eq!(anonymous.status.code(), Some(4), "{}", String::from_utf8_lossy(&anonymous.stderr));
    assert!(String::from_utf8_lossy(&anonymous.stderr).contains("not authenticated"));
    let plain = stockctl(&["--addr", addr, "--insecure", "--timeout", "500ms", "get", "--sku", SKU, "--location", LOC]);
    assert_ne!(plain.status.code(), Some(0), "plaintext reaches nothing on a TLS node");
    let mut c = cluster.client(1).await;
    let p = position(&mut c, SKU, LOC, pb::Consistency::Strong).await.position.expect("position");
    assert_eq!((p.on_hand, p.reserved), (5, 2), "only the allowed commands applied");
    cluster.shutdown().await;
}

#[test]
fn stockctl_roles_prints_the_table() {
    let out = stockctl(&["roles"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let reserve = text.lines().find(|l| l.starts_with("stockd.v1.Inventory/Reserve ")).expect("a Reserve line");
    assert_eq!(reserve.split_whitespace().collect::<Vec<_>>(), ["stockd.v1.Inventory/Reserve", "-", "yes", "-", "-", "-"], "{text}");
    let json: serde_json::Value = serde_json::from_slice(&stockctl(&["--json", "roles"]).stdout).expect("json");
    let adjust = json.as_array().expect("array").iter().find(|r| r["rpc"] == "stockd.v1.Inventory/Adjust").expect("Adjust");
    assert_eq!(adjust["roles"], serde_json::json!(["feed"]));
}

#[test]
fn stockd_certs_makes_a_directory_stockctl_and_nodes_use() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("certs");
    let made = std::process::Command::new(env!("CARGO_BIN_EXE_stockd"))
        .args(["certs", "--out", &out.display().to_string(), "--nodes", "1,2,3", "--hosts", "10.1.2.3,node.example"])
        .output()
        .expect("run stockd certs");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    for name in ["ca.crt", "node-1.crt", "node-3.key", "reader.crt", "checkout.crt", "feed.key", "operator.crt"] {
        assert!(out.join(name).exists(), "{name}");
    }
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_stockd")).args(["certs", "--out", "x", "--nodes", "0"]).output().expect("run");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid nodes"), "{}", String::from_utf8_lossy(&bad.stderr));
}
