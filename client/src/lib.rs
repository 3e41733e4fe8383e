//! stockd-client: the Rust client of stockd. One lazily connected gRPC
//! channel per node (TLS with the caller's certificate, or plaintext against
//! nodes run `--insecure`), leader hints followed, unavailable nodes skipped,
//! idempotent retries, writes routed to their range's leader, availability
//! reads spread over the replicas.
//!
//! Invariants:
//! - A request is retried only with the very same message, so its idempotency
//!   key (`reservation_id`, `event_id`) travels with every attempt.
//! - Every call is bounded: by `request_timeout` per attempt, by
//!   `total_deadline` overall, by `attempts_max` attempts and by
//!   `leader_hops_max` "not leader" redirections.
//! - UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED and broken
//!   connections (a CANCELLED/UNKNOWN/INTERNAL status made by this client, not
//!   by a server) are retried on the next node after a backoff; a "not leader"
//!   answer is retried at once on the hinted leader, or after a backoff on the
//!   next node without a hint; a "stale route" (ABORTED: refused at apply as
//!   routed with an older shard map, never applied) after a backoff.
//! - A refused certificate or role (UNAUTHENTICATED, PERMISSION_DENIED, a
//!   failed TLS handshake) is never retried: another node would refuse it too.
//! - Business refusals are not errors: they come back in the response's
//!   `outcome`. Only transport, permission and input failures become
//!   [`ClientError`].
//!
//! Boundary: depends on `stockd-proto` and tonic's client side only (no
//! RocksDB, openraft, ort or server code; `tests/tidy.rs` checks it); callers
//! see prost messages and [`ClientError`].

pub mod tls;

pub use tls::TlsConfig;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::future::join_all;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use stockd_proto::v1::admin_client::AdminClient;
use stockd_proto::v1::inventory_client::InventoryClient;
use stockd_proto::v1::{
    AdjustRequest, AdjustResponse, BatchReserveRequest, BatchReserveResponse, ClusterSettingsRequest, ClusterSettingsResponse, Consistency, GetPositionRequest,
    GroupStatus, MergeShardRequest, MergeShardResponse, MoveShardRequest, MoveShardResponse, NodeRequest, NodeResponse, PositionResponse, ReservationRef,
    ReservationResponse, ReserveRequest, ReserveResponse, SetBalanceRequest, SetBalanceResponse, SplitShardRequest, SplitShardResponse, StatusRequest,
    StatusResponse,
};
use stockd_proto::v1::{
    CheckAvailabilityBatchRequest, CheckAvailabilityBatchResponse, CheckAvailabilityRequest, CheckAvailabilityResponse, LoadModelRequest, ModelStatusRequest,
    ModelStatusResponse, PromoteModelRequest, RankFulfillmentRequest, RankFulfillmentResponse, SetModelCandidateRequest, SetModelDisabledRequest,
};

/// gRPC metadata key carrying the address (`host:port`) of the group leader.
pub const LEADER_ADDR_METADATA: &str = stockd_proto::metadata::LEADER_ADDR;
/// gRPC metadata key carrying the node id of the group leader.
pub const LEADER_ID_METADATA: &str = stockd_proto::metadata::LEADER_ID;
/// Prefix of the FAILED_PRECONDITION message of a node that is not the leader.
pub const NOT_LEADER_PREFIX: &str = stockd_proto::metadata::NOT_LEADER_PREFIX;
/// Prefix of the ABORTED message of a command refused at apply as misrouted.
pub const STALE_ROUTE_PREFIX: &str = stockd_proto::metadata::STALE_ROUTE_PREFIX;

/// Limits of a [`Client`]. Every field is a bound; see [`ClientConfig::validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Time allowed to open a TCP connection to one node.
    pub connect_timeout: Duration,
    /// Time allowed for one attempt of one request (sent as `grpc-timeout`).
    pub request_timeout: Duration,
    /// Time allowed for one call, all attempts and backoffs included.
    pub total_deadline: Duration,
    /// Most "not leader" redirections followed by one call.
    pub leader_hops_max: u32,
    /// Most attempts of one call, redirections included.
    pub attempts_max: u32,
    /// First pause before retrying on another node; doubles each time.
    pub backoff_initial: Duration,
    /// Longest pause between two attempts.
    pub backoff_max: Duration,
    /// Most node addresses known (configured plus learned from leader hints).
    pub nodes_max: usize,
    /// Age after which the table of range leaders (from `Admin/Status`) is
    /// refreshed in the background; `None` turns leader routing off (writes
    /// then go to the node that answered last, which forwards them).
    pub routes_max_age: Option<Duration>,
    /// Availability reads (CheckAvailability, CheckAvailabilityBatch,
    /// RankFulfillment) start at each known node in turn instead of the one
    /// that answered last, so their load spreads over the replicas; a node
    /// that just failed is passed over for [`FAILED_NODE_PAUSE`].
    pub spread_reads: bool,
    /// TLS (`https://`) with this CA and certificate; `None`: plaintext
    /// (`http://`), for nodes started with `--insecure`.
    pub tls: Option<TlsConfig>,
}

/// How long a node whose attempt failed is passed over by spread reads.
pub const FAILED_NODE_PAUSE: Duration = Duration::from_secs(2);

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(5),
            total_deadline: Duration::from_secs(10),
            leader_hops_max: 5,
            attempts_max: 32,
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(1),
            nodes_max: 64,
            routes_max_age: Some(Duration::from_secs(1)),
            spread_reads: true,
            tls: None,
        }
    }
}

impl ClientConfig {
    /// Checks the relations between the limits.
    pub fn validate(&self) -> Result<(), ClientError> {
        let invalid = |message: &str| Err(ClientError::InvalidConfig(message.to_owned()));
        if self.connect_timeout.is_zero() {
            return invalid("connect_timeout must be > 0");
        }
        if self.request_timeout.is_zero() {
            return invalid("request_timeout must be > 0");
        }
        if self.total_deadline < self.request_timeout {
            return invalid("total_deadline must be >= request_timeout");
        }
        if self.attempts_max == 0 {
            return invalid("attempts_max must be >= 1");
        }
        if self.backoff_max < self.backoff_initial {
            return invalid("backoff_max must be >= backoff_initial");
        }
        if self.routes_max_age.is_some_and(|age| age.is_zero()) {
            return invalid("routes_max_age must be > 0 (or None to turn leader routing off)");
        }
        if self.nodes_max == 0 {
            return invalid("nodes_max must be >= 1");
        }
        Ok(())
    }
}

/// A model-serving operation of `Admin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelOp {
    Status,
    Load { dir: String },
    Promote { version: String },
    Rollback,
    Candidate { version: String, ab_percent: u32, shadow: bool },
    Disabled { disabled: bool },
}

/// The error of a call made once to one node (reads, no retry).
fn one_shot_error(status: &tonic::Status) -> ClientError {
    if let Some(refused) = refusal(status) {
        return refused;
    }
    match status.code() {
        code if is_retryable(code) || is_transport_failure(status) => ClientError::Unavailable { outcome_unknown: false, message: message_or_code(status) },
        code => ClientError::Rpc { code, message: status.message().to_owned() },
    }
}

/// Why a call did not produce a response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// A node address could not be parsed.
    #[error("invalid address {addr:?}: {message}")]
    InvalidAddress { addr: String, message: String },
    /// The client limits are inconsistent.
    #[error("invalid client config: {0}")]
    InvalidConfig(String),
    /// The server refused the input (INVALID_ARGUMENT); the message names the
    /// field. Never retried.
    #[error("{0}")]
    InvalidArgument(String),
    /// No node gave an answer within the limits. When `outcome_unknown` is
    /// true the write may have been applied: retry it with the same id.
    #[error("unavailable{}: {message}", unknown_suffix(.outcome_unknown))]
    Unavailable { outcome_unknown: bool, message: String },
    /// The node refused this client's role for the RPC (PERMISSION_DENIED);
    /// the message names the role and the RPC. Never retried.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// No usable client certificate: none was presented (UNAUTHENTICATED), or
    /// the TLS handshake failed (a certificate not signed by the CA the other
    /// side trusts, expired, or for another host). Never retried.
    #[error("not authenticated: {0}")]
    Unauthenticated(String),
    /// Any other gRPC status.
    #[error("{code:?}: {message}")]
    Rpc { code: Code, message: String },
}

/// The error of an answer no other node or attempt would change: invalid
/// input, a refused role or certificate.
fn refusal(status: &tonic::Status) -> Option<ClientError> {
    match status.code() {
        Code::InvalidArgument => Some(ClientError::InvalidArgument(status.message().to_owned())),
        Code::PermissionDenied => Some(ClientError::PermissionDenied(status.message().to_owned())),
        Code::Unauthenticated => Some(ClientError::Unauthenticated(status.message().to_owned())),
        _ if is_tls_failure(status) => Some(ClientError::Unauthenticated(format!("TLS handshake failed: {}", tls_failure_detail(status)))),
        _ => None,
    }
}

/// The error of a write's later attempt: after an attempt that may have
/// been applied, a retry's error (an invalid argument included: a node may
/// judge a SKU by a newer map) says nothing of that one, so the outcome
/// stays unknown. A refused certificate or role is the exception: every
/// attempt of the call carried the same identity, so none was served (a
/// first attempt's refused TLS handshake often shows only as a broken
/// connection).
fn after_unknown(maybe_applied: bool, rpc: &str, error: ClientError) -> ClientError {
    let identity_refused = matches!(error, ClientError::Unauthenticated(_) | ClientError::PermissionDenied(_));
    if maybe_applied && !identity_refused {
        ClientError::Unavailable { outcome_unknown: true, message: format!("{rpc}: an earlier attempt may have been applied; a retry got: {error}") }
    } else {
        error
    }
}

fn unknown_suffix(outcome_unknown: &bool) -> &'static str {
    if *outcome_unknown {
        " (outcome unknown)"
    } else {
        ""
    }
}

impl ClientError {
    /// True when a write may have been applied although no answer came back.
    pub fn is_outcome_unknown(&self) -> bool {
        matches!(self, ClientError::Unavailable { outcome_unknown: true, .. })
    }

    /// True when asking again cannot help: invalid input, or a refused
    /// certificate or role.
    pub fn is_refusal(&self) -> bool {
        matches!(self, ClientError::InvalidArgument(_) | ClientError::PermissionDenied(_) | ClientError::Unauthenticated(_))
    }
}

/// Whether a request changes state: a write whose answer is lost has an
/// unknown outcome, a read never has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    Read,
    Write,
}

/// The answer of one node to `Admin.Status`, for [`Client::status_all`].
#[derive(Debug)]
pub struct NodeStatusReport {
    /// Address as configured (`http://host:port`).
    pub addr: String,
    pub result: Result<StatusResponse, ClientError>,
}

struct Node {
    /// Normalized URI, `http://host:port`.
    addr: String,
    channel: Channel,
    /// Milliseconds since the client's `epoch` before which spread reads pass
    /// this node over (0: never failed).
    failed_until_ms: AtomicU64,
}

impl Node {
    fn new(addr: String, channel: Channel) -> Node {
        Node { addr, channel, failed_until_ms: AtomicU64::new(0) }
    }
}

struct Inner {
    config: ClientConfig,
    nodes: RwLock<Vec<Node>>,
    /// Index of the node that answered last; calls start there.
    preferred: AtomicUsize,
    /// Turn of the next spread read.
    next_read: AtomicUsize,
    /// Time origin of `Node::failed_until_ms`.
    epoch: Instant,
    /// Which node leads which SKU range, learned from `Admin.Status`, so
    /// that writes go straight to the leader instead of being forwarded.
    routes: RwLock<Routes>,
    refreshing: AtomicBool,
}

#[derive(Default)]
struct Routes {
    /// (start_sku, end_sku or "" for unbounded, leader node index)
    ranges: Vec<(String, String, usize)>,
    /// The leader node index of each group of the routes' region, in
    /// ascending group id (the shard map's order): the homes of reservation
    /// ids (`stockd_proto::home`).
    homes: Vec<Option<usize>>,
    refreshed: Option<Instant>,
}

impl Routes {
    fn range_of(&self, sku: &str) -> Option<usize> {
        self.ranges.iter().position(|(start, end, _)| sku >= start.as_str() && (end.is_empty() || sku < end.as_str()))
    }

    fn leader_for(&self, sku: &str) -> Option<usize> {
        self.range_of(sku).map(|i| self.ranges[i].2)
    }

    /// Where a reserve starts: a one-range reservation at its range's
    /// leader; a cart across ranges at its id's home leader, which then
    /// begins and decides it without a hop.
    fn start_for(&self, id: &str, skus: &[&str]) -> Option<usize> {
        let first = self.range_of(skus.first()?)?;
        if skus.iter().all(|sku| self.range_of(sku) == Some(first)) || self.homes.is_empty() {
            return Some(self.ranges[first].2);
        }
        self.homes.get(stockd_proto::home::slot(id, self.homes.len())).copied().flatten().or(Some(self.ranges[first].2))
    }
}

/// A stockd client. Cheap to clone: clones share channels.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("addrs", &self.addrs()).finish()
    }
}

/// Turns `host:port` into `https://host:port` (TLS) or `http://host:port`;
/// an explicit scheme must agree with `tls`.
pub fn normalize_addr(addr: &str, tls: bool) -> Result<String, ClientError> {
    let addr = addr.trim().trim_end_matches('/');
    let scheme = if tls { "https://" } else { "http://" };
    let other = if tls { "http://" } else { "https://" };
    if addr.starts_with(other) {
        let message = if tls {
            "plaintext address for a TLS client (drop the scheme)"
        } else {
            "TLS address for a plaintext client (drop the scheme, or give the client TLS)"
        };
        return Err(ClientError::InvalidAddress { addr: addr.to_owned(), message: message.to_owned() });
    }
    Ok(if addr.starts_with(scheme) { addr.to_owned() } else { format!("{scheme}{addr}") })
}

impl Client {
    /// A client with the default limits. Channels connect lazily, so this
    /// never touches the network, but it must run inside a tokio runtime.
    pub fn new<S: AsRef<str>>(addrs: &[S]) -> Result<Client, ClientError> {
        Client::with_config(addrs, ClientConfig::default())
    }

    /// A client with the given limits; see [`Client::new`].
    pub fn with_config<S: AsRef<str>>(addrs: &[S], config: ClientConfig) -> Result<Client, ClientError> {
        config.validate()?;
        if addrs.is_empty() {
            return Err(ClientError::InvalidAddress { addr: String::new(), message: "no node address given".to_owned() });
        }
        if addrs.len() > config.nodes_max {
            return Err(ClientError::InvalidAddress { addr: addrs.len().to_string(), message: format!("more than nodes_max={} addresses", config.nodes_max) });
        }
        let mut nodes: Vec<Node> = Vec::with_capacity(addrs.len());
        for addr in addrs {
            let addr = normalize_addr(addr.as_ref(), config.tls.is_some())?;
            if nodes.iter().any(|node| node.addr == addr) {
                continue;
            }
            let channel = open_channel(&addr, &config)?;
            nodes.push(Node::new(addr, channel));
        }
        Ok(Client {
            inner: Arc::new(Inner {
                config,
                nodes: RwLock::new(nodes),
                preferred: AtomicUsize::new(0),
                next_read: AtomicUsize::new(0),
                epoch: Instant::now(),
                routes: RwLock::new(Routes::default()),
                refreshing: AtomicBool::new(false),
            }),
        })
    }

    /// The limits of this client.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// Known node addresses (`http://host:port`), configured ones first.
    pub fn addrs(&self) -> Vec<String> {
        self.read_nodes().iter().map(|node| node.addr.clone()).collect()
    }

    pub async fn reserve(&self, request: ReserveRequest) -> Result<ReserveResponse, ClientError> {
        let skus: Vec<&str> = request.lines.iter().map(|l| l.sku.as_str()).collect();
        let start = self.route_with(|routes| routes.start_for(&request.reservation_id, &skus));
        self.call_from(start, "Reserve", Effect::Write, request, |channel, request| async move { InventoryClient::new(channel).reserve(request).await }).await
    }

    pub async fn batch_reserve(&self, request: BatchReserveRequest) -> Result<BatchReserveResponse, ClientError> {
        let start = self.route(request.reservations.first().and_then(|r| r.lines.first()).map(|l| l.sku.as_str()));
        self.call_from(
            start,
            "BatchReserve",
            Effect::Write,
            request,
            |channel, request| async move { InventoryClient::new(channel).batch_reserve(request).await },
        )
        .await
    }

    pub async fn commit(&self, reservation_id: &str) -> Result<ReservationResponse, ClientError> {
        self.call(
            "Commit",
            Effect::Write,
            reservation_ref(reservation_id),
            |channel, request| async move { InventoryClient::new(channel).commit(request).await },
        )
        .await
    }

    pub async fn release(&self, reservation_id: &str) -> Result<ReservationResponse, ClientError> {
        self.call(
            "Release",
            Effect::Write,
            reservation_ref(reservation_id),
            |channel, request| async move { InventoryClient::new(channel).release(request).await },
        )
        .await
    }

    pub async fn fulfill(&self, reservation_id: &str) -> Result<ReservationResponse, ClientError> {
        self.call(
            "Fulfill",
            Effect::Write,
            reservation_ref(reservation_id),
            |channel, request| async move { InventoryClient::new(channel).fulfill(request).await },
        )
        .await
    }

    pub async fn cancel(&self, reservation_id: &str) -> Result<ReservationResponse, ClientError> {
        self.call(
            "Cancel",
            Effect::Write,
            reservation_ref(reservation_id),
            |channel, request| async move { InventoryClient::new(channel).cancel(request).await },
        )
        .await
    }

    pub async fn get_reservation(&self, reservation_id: &str) -> Result<ReservationResponse, ClientError> {
        self.call("GetReservation", Effect::Read, reservation_ref(reservation_id), |channel, request| async move {
            InventoryClient::new(channel).get_reservation(request).await
        })
        .await
    }

    pub async fn adjust(&self, request: AdjustRequest) -> Result<AdjustResponse, ClientError> {
        let start = self.route(Some(&request.sku));
        self.call_from(start, "Adjust", Effect::Write, request, |channel, request| async move { InventoryClient::new(channel).adjust(request).await }).await
    }

    pub async fn get_position(&self, request: GetPositionRequest) -> Result<PositionResponse, ClientError> {
        // Strong reads are served by the leader; weaker ones by any replica.
        let strong = matches!(Consistency::try_from(request.consistency), Ok(Consistency::Strong | Consistency::Unspecified));
        let start = if strong { self.route(Some(&request.sku)) } else { None };
        self.call_from(start, "GetPosition", Effect::Read, request, |channel, request| async move { InventoryClient::new(channel).get_position(request).await })
            .await
    }

    /// `Admin.Status` of one node: the first that answers, starting with the
    /// preferred one.
    pub async fn status(&self) -> Result<StatusResponse, ClientError> {
        self.call("Status", Effect::Read, StatusRequest {}, |channel, request| async move { AdminClient::new(channel).status(request).await }).await
    }

    /// `Admin.SplitShard`: splits `group_id` at `at_sku` (empty: its middle
    /// SKU). Sent once (`send_once`): a repeat would split the new group
    /// once more.
    pub async fn split_shard(&self, group_id: u32, at_sku: &str) -> Result<SplitShardResponse, ClientError> {
        let request = SplitShardRequest { group_id, at_sku: at_sku.to_owned() };
        self.send_once(request, |channel, call| async move { AdminClient::new(channel).split_shard(call).await }).await
    }

    /// `Admin.MergeShard`: merges `group_id` with the range after it. Sent
    /// once (`send_once`): a repeat would merge the next range as well.
    pub async fn merge_shard(&self, group_id: u32) -> Result<MergeShardResponse, ClientError> {
        let request = MergeShardRequest { group_id };
        self.send_once(request, |channel, call| async move { AdminClient::new(channel).merge_shard(call).await }).await
    }

    /// `Admin.MoveShard`: moves `group_id`'s replica from node `from` to node
    /// `to`. Sent once (`send_once`); the same move again completes one that
    /// stopped half way, and answers at once when it is done.
    pub async fn move_shard(&self, group_id: u32, from: u64, to: u64) -> Result<MoveShardResponse, ClientError> {
        let request = MoveShardRequest { group_id, from_node: from, to_node: to };
        self.send_once(request, |channel, call| async move { AdminClient::new(channel).move_shard(call).await }).await
    }

    /// `Admin.DrainNode`: marks node `node_id` draining (its replicas then
    /// move away). Repeatable: draining a draining node changes nothing.
    pub async fn drain_node(&self, node_id: u64) -> Result<NodeResponse, ClientError> {
        let request = NodeRequest { node_id };
        self.send_once(request, |channel, call| async move { AdminClient::new(channel).drain_node(call).await }).await
    }

    /// `Admin.RemoveNode`: forgets node `node_id`, which must hold no replica.
    pub async fn remove_node(&self, node_id: u64) -> Result<NodeResponse, ClientError> {
        let request = NodeRequest { node_id };
        self.send_once(request, |channel, call| async move { AdminClient::new(channel).remove_node(call).await }).await
    }

    /// `Admin.SetBalance`: turns the balancing of replicas and leaders on or
    /// off. Repeatable.
    pub async fn set_balance(&self, enabled: bool) -> Result<SetBalanceResponse, ClientError> {
        let request = SetBalanceRequest { enabled };
        self.send_once(request, |channel, call| async move { AdminClient::new(channel).set_balance(call).await }).await
    }

    /// An admin change that must not be applied twice: sent to the next
    /// node only when a node could not be reached; once a node took it,
    /// never again, so a lost answer is reported as an unknown outcome
    /// (`stockctl shard list` tells).
    async fn send_once<Req, Resp, F, Fut>(&self, request: Req, send: F) -> Result<Resp, ClientError>
    where
        Req: Clone,
        F: Fn(Channel, tonic::Request<Req>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let timeout = self.inner.config.request_timeout;
        let lost = |message: String| ClientError::Unavailable { outcome_unknown: true, message };
        let mut unreachable = Vec::new();
        for index in 0..self.node_count() {
            let (addr, channel) = self.node(index);
            let mut call = tonic::Request::new(request.clone());
            call.set_timeout(timeout);
            match tokio::time::timeout(timeout, send(channel, call)).await {
                Ok(Ok(response)) => return Ok(response.into_inner()),
                Ok(Err(status)) if never_sent(&status) => unreachable.push(format!("{addr}: {}", status.message())),
                Ok(Err(status)) => {
                    return Err(match one_shot_error(&status) {
                        ClientError::Unavailable { message, .. } => lost(message),
                        other => other,
                    })
                }
                Err(_elapsed) => return Err(lost(format!("{addr}: no answer within {} ms", timeout.as_millis()))),
            }
        }
        Err(ClientError::Unavailable { outcome_unknown: false, message: format!("no node reached: {}", unreachable.join("; ")) })
    }

    /// `Admin.Status` of the node at `addr` only (one attempt, no failover).
    pub async fn status_of(&self, addr: &str) -> Result<StatusResponse, ClientError> {
        let index = self.index_of_or_add(addr)?;
        let (_, channel) = self.node(index);
        let timeout = self.inner.config.request_timeout;
        let mut request = tonic::Request::new(StatusRequest {});
        request.set_timeout(timeout);
        let answer = tokio::time::timeout(timeout, AdminClient::new(channel).status(request)).await;
        match answer {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(one_shot_error(&status)),
            Err(_elapsed) => Err(ClientError::Unavailable { outcome_unknown: false, message: format!("no answer within {} ms", timeout.as_millis()) }),
        }
    }

    /// One model-serving operation on the node at `addr` (one attempt, no
    /// failover: each node serves its own models).
    pub async fn model_op_on(&self, addr: &str, op: &ModelOp) -> Result<ModelStatusResponse, ClientError> {
        let index = self.index_of_or_add(addr)?;
        let (_, channel) = self.node(index);
        let timeout = self.inner.config.request_timeout;
        let mut admin = AdminClient::new(channel);
        let call = async {
            match op.clone() {
                ModelOp::Status => admin.model_status(ModelStatusRequest {}).await,
                ModelOp::Load { dir } => admin.load_model(LoadModelRequest { dir }).await,
                ModelOp::Promote { version } => admin.promote_model(PromoteModelRequest { version }).await,
                ModelOp::Rollback => admin.rollback_model(ModelStatusRequest {}).await,
                ModelOp::Candidate { version, ab_percent, shadow } => admin.set_model_candidate(SetModelCandidateRequest { version, ab_percent, shadow }).await,
                ModelOp::Disabled { disabled } => admin.set_model_disabled(SetModelDisabledRequest { disabled }).await,
            }
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(one_shot_error(&status)),
            Err(_elapsed) => Err(ClientError::Unavailable { outcome_unknown: false, message: format!("no answer within {} ms", timeout.as_millis()) }),
        }
    }

    pub async fn check_availability(&self, request: CheckAvailabilityRequest) -> Result<CheckAvailabilityResponse, ClientError> {
        self.call_from(self.spread(), "CheckAvailability", Effect::Read, request, |channel, request| async move {
            InventoryClient::new(channel).check_availability(request).await
        })
        .await
    }

    pub async fn check_availability_batch(&self, request: CheckAvailabilityBatchRequest) -> Result<CheckAvailabilityBatchResponse, ClientError> {
        self.call_from(self.spread(), "CheckAvailabilityBatch", Effect::Read, request, |channel, request| async move {
            InventoryClient::new(channel).check_availability_batch(request).await
        })
        .await
    }

    pub async fn rank_fulfillment(&self, request: RankFulfillmentRequest) -> Result<RankFulfillmentResponse, ClientError> {
        self.call_from(self.spread(), "RankFulfillment", Effect::Read, request, |channel, request| async move {
            InventoryClient::new(channel).rank_fulfillment(request).await
        })
        .await
    }

    /// `Admin.ClusterSettings`: the cluster-wide settings and the nodes of
    /// the topology, as the first node that answers has them.
    pub async fn cluster_settings(&self) -> Result<ClusterSettingsResponse, ClientError> {
        self.call("ClusterSettings", Effect::Read, ClusterSettingsRequest {}, |channel, request| async move {
            AdminClient::new(channel).cluster_settings(request).await
        })
        .await
    }

    /// `Admin.Status` of every known node, concurrently; a down node gives an
    /// error in its report instead of failing the whole call. Reports come in
    /// the order of [`Client::addrs`].
    pub async fn status_all(&self) -> Vec<NodeStatusReport> {
        let addrs = self.addrs();
        let answers = join_all(addrs.iter().map(|addr| self.status_of(addr))).await;
        addrs.into_iter().zip(answers).map(|(addr, result)| NodeStatusReport { addr, result }).collect()
    }

    /// Sends `request` until a node answers, following leader hints and
    /// skipping unavailable nodes, within the limits of the config.
    async fn call<Req, Resp, F, Fut>(&self, rpc: &'static str, effect: Effect, request: Req, send: F) -> Result<Resp, ClientError>
    where
        Req: Clone,
        F: Fn(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        self.call_from(None, rpc, effect, request, send).await
    }

    /// Where a spread read starts: the next node in turn that has not just
    /// failed. `None` (start at the preferred node) when spreading is off or
    /// every node failed recently.
    fn spread(&self) -> Option<usize> {
        if !self.inner.config.spread_reads {
            return None;
        }
        let now_ms = self.inner.epoch.elapsed().as_millis() as u64;
        let nodes = self.read_nodes();
        let first = self.inner.next_read.fetch_add(1, Ordering::Relaxed);
        (0..nodes.len()).map(|k| (first + k) % nodes.len()).find(|&i| nodes[i].failed_until_ms.load(Ordering::Relaxed) <= now_ms)
    }

    /// Spread reads pass node `index` over for a while.
    fn mark_failed(&self, index: usize) {
        let until_ms = (self.inner.epoch.elapsed() + FAILED_NODE_PAUSE).as_millis() as u64;
        let nodes = self.read_nodes();
        if let Some(node) = nodes.get(index % nodes.len().max(1)) {
            node.failed_until_ms.store(until_ms, Ordering::Relaxed);
        }
    }

    /// The node believed to lead the range of `sku`, refreshing the route
    /// table in the background when it is old. `None`: no route known.
    fn route(&self, sku: Option<&str>) -> Option<usize> {
        let sku = sku?;
        self.route_with(|routes| routes.leader_for(sku))
    }

    /// What `find` says of the route table, refreshing it in the background
    /// when it is old.
    fn route_with(&self, find: impl FnOnce(&Routes) -> Option<usize>) -> Option<usize> {
        let max_age = self.inner.config.routes_max_age?;
        let (found, stale) = {
            let routes = self.inner.routes.read().unwrap_or_else(|p| p.into_inner());
            (find(&routes), routes.refreshed.is_none_or(|at| at.elapsed() > max_age))
        };
        if stale && !self.inner.refreshing.swap(true, Ordering::AcqRel) {
            let client = self.clone();
            tokio::spawn(async move {
                client.refresh_routes().await;
                client.inner.refreshing.store(false, Ordering::Release);
            });
        }
        found
    }

    /// Learns the routes from the status of every known node: each node
    /// reports the groups it replicates and their leaders, so with more
    /// nodes than replicas no single node knows every range. For each group
    /// the report of its newest range (epoch), then of the newest term,
    /// wins; the home slots come from the newest topology answered.
    async fn refresh_routes(&self) {
        let reports = self.status_all().await;
        let answered: Vec<&StatusResponse> = reports.iter().filter_map(|r| r.result.as_ref().ok()).collect();
        let Some(newest) = answered.iter().copied().max_by_key(|s| s.topology_version) else {
            // Try another node first next time.
            let index = self.inner.preferred.load(Ordering::Relaxed);
            self.inner.preferred.store((index + 1) % self.node_count().max(1), Ordering::Relaxed);
            return;
        };
        let best = newest_groups(&answered);
        let mut ranges = Vec::new();
        let mut leaders = std::collections::BTreeMap::new();
        for (group_id, (status, group)) in &best {
            let leader = status.nodes.iter().find(|n| n.id == group.leader && group.leader != 0).and_then(|leader| self.index_of_or_add(&leader.addr).ok());
            leaders.insert(*group_id, leader);
            let Some(leader_index) = leader else { continue };
            ranges.push((group.start_sku.clone(), group.end_sku.clone(), leader_index));
        }
        // The home slots in slot order; a node that does not list them
        // (an older one) homes ids over its region's groups by id.
        let slots: Vec<u32> = if newest.home_slots.is_empty() {
            best.values().filter(|(_, g)| g.region == newest.region).map(|(_, g)| g.group_id).collect()
        } else {
            newest.home_slots.clone()
        };
        let homes = slots.iter().map(|g| leaders.get(g).copied().flatten()).collect();
        let mut routes = self.inner.routes.write().unwrap_or_else(|p| p.into_inner());
        *routes = Routes { ranges, homes, refreshed: Some(Instant::now()) };
    }

    /// Like [`Client::call`], starting at node `start` when given.
    async fn call_from<Req, Resp, F, Fut>(&self, start: Option<usize>, rpc: &'static str, effect: Effect, request: Req, send: F) -> Result<Resp, ClientError>
    where
        Req: Clone,
        F: Fn(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let config = &self.inner.config;
        let started = Instant::now();
        let deadline = started + config.total_deadline;
        let mut index = start.unwrap_or_else(|| self.inner.preferred.load(Ordering::Relaxed));
        let mut backoff = config.backoff_initial;
        let mut attempts: u32 = 0;
        let mut hops: u32 = 0;
        let mut maybe_applied = false;
        let mut last_failure = String::from("no attempt made");

        while attempts < config.attempts_max {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            attempts += 1;
            let (addr, channel) = self.node(index);
            let timeout = config.request_timeout.min(remaining);
            let mut attempt = tonic::Request::new(request.clone());
            attempt.set_timeout(timeout);
            let status = match tokio::time::timeout(timeout, send(channel, attempt)).await {
                Ok(Ok(response)) => {
                    if start.is_none() {
                        self.inner.preferred.store(index, Ordering::Relaxed);
                    }
                    return Ok(response.into_inner());
                }
                Ok(Err(status)) => status,
                Err(_elapsed) => tonic::Status::deadline_exceeded(format!("no answer within {} ms", timeout.as_millis())),
            };
            if let Some(refused) = refusal(&status) {
                return Err(after_unknown(maybe_applied, rpc, refused));
            }
            match status.code() {
                Code::FailedPrecondition if status.message().starts_with(NOT_LEADER_PREFIX) => {
                    // Definitely not applied: the node neither served nor forwarded it.
                    hops += 1;
                    last_failure = format!("{addr}: {}{}", status.message(), leader_hint_suffix(&status));
                    if hops > config.leader_hops_max {
                        last_failure = format!("gave up after {} leader hops; last: {last_failure}", hops - 1);
                        break;
                    }
                    match self.leader_hint(&status) {
                        Some(hinted) if hinted != index => {
                            tracing::debug!(rpc, from = %addr, hops, "following leader hint");
                            index = hinted;
                            continue;
                        }
                        // No leader known yet (election under way): wait and try elsewhere.
                        _ => {}
                    }
                }
                // The server refused to queue it (overloaded): not applied, back off.
                Code::ResourceExhausted => last_failure = format!("{addr}: {}", describe(&status)),
                // Refused at apply as routed with an older shard map: not
                // applied; the node routes the retry with its refreshed map.
                Code::Aborted if status.message().starts_with(STALE_ROUTE_PREFIX) => last_failure = format!("{addr}: {}", describe(&status)),
                code if is_retryable(code) || is_transport_failure(&status) => {
                    if effect == Effect::Write && !never_sent(&status) {
                        maybe_applied = true;
                    }
                    self.mark_failed(index);
                    last_failure = format!("{addr}: {}", describe(&status));
                }
                code => return Err(after_unknown(maybe_applied, rpc, ClientError::Rpc { code, message: status.message().to_owned() })),
            }
            tracing::debug!(rpc, addr = %addr, attempts, failure = %last_failure, "retrying on the next node");
            let pause = backoff.min(deadline.saturating_duration_since(Instant::now()));
            tokio::time::sleep(pause).await;
            backoff = (backoff * 2).min(config.backoff_max);
            index = (index + 1) % self.node_count();
        }
        Err(ClientError::Unavailable {
            outcome_unknown: maybe_applied,
            message: format!("{rpc} got no answer after {attempts} attempts in {} ms: {last_failure}", started.elapsed().as_millis()),
        })
    }

    /// The node a leader hint points to, added to the known nodes if new.
    fn leader_hint(&self, status: &tonic::Status) -> Option<usize> {
        let hint = status.metadata().get(LEADER_ADDR_METADATA)?.to_str().ok()?.trim();
        if hint.is_empty() {
            return None;
        }
        match self.index_of_or_add(hint) {
            Ok(index) => Some(index),
            Err(error) => {
                tracing::debug!(%error, hint, "ignoring leader hint");
                None
            }
        }
    }

    fn index_of_or_add(&self, addr: &str) -> Result<usize, ClientError> {
        let addr = normalize_addr(addr, self.inner.config.tls.is_some())?;
        if let Some(index) = self.read_nodes().iter().position(|node| node.addr == addr) {
            return Ok(index);
        }
        let mut nodes = self.inner.nodes.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(index) = nodes.iter().position(|node| node.addr == addr) {
            return Ok(index);
        }
        if nodes.len() >= self.inner.config.nodes_max {
            return Err(ClientError::InvalidAddress { addr, message: format!("already {} nodes known (nodes_max)", nodes.len()) });
        }
        let channel = open_channel(&addr, &self.inner.config)?;
        nodes.push(Node::new(addr, channel));
        Ok(nodes.len() - 1)
    }

    fn read_nodes(&self) -> std::sync::RwLockReadGuard<'_, Vec<Node>> {
        self.inner.nodes.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn node_count(&self) -> usize {
        self.read_nodes().len()
    }

    /// Address and channel of node `index` (taken modulo the node count).
    fn node(&self, index: usize) -> (String, Channel) {
        let nodes = self.read_nodes();
        assert!(!nodes.is_empty(), "a client always knows at least one node");
        let node = &nodes[index % nodes.len()];
        (node.addr.clone(), node.channel.clone())
    }
}

fn open_channel(addr: &str, config: &ClientConfig) -> Result<Channel, ClientError> {
    let mut endpoint =
        Endpoint::from_shared(addr.to_owned()).map_err(|error| ClientError::InvalidAddress { addr: addr.to_owned(), message: error.to_string() })?;
    if let Some(tls) = &config.tls {
        endpoint =
            endpoint.tls_config(tls.tonic_config()).map_err(|error| ClientError::InvalidConfig(format!("TLS ({}): {}", tls.source(), error_chain(&error))))?;
    }
    Ok(endpoint.connect_timeout(config.connect_timeout).tcp_nodelay(true).connect_lazy())
}

/// An error and its sources, `: `-separated (tonic's own messages are short:
/// "transport error").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// What a refused certificate looks like in the error a TLS handshake gives:
/// the other side's certificate refused here ("invalid peer certificate:
/// UnknownIssuer"), or ours there (the alert it sent: "received fatal alert:
/// CertificateRequired"). Only certificate alerts count: another fatal
/// alert could come after requests were served.
const CERTIFICATE_REFUSALS: &[&str] = &[
    "invalid peer certificate",
    "alert: certificaterequired",
    "alert: badcertificate",
    "alert: unsupportedcertificate",
    "alert: certificaterevoked",
    "alert: certificateexpired",
    "alert: certificateunknown",
    "alert: unknownca",
    "alert: accessdenied",
];

/// True when a status made by this client says the TLS handshake refused a
/// certificate. Nothing was served: a server reads no request before its
/// handshake completes.
fn is_tls_failure(status: &tonic::Status) -> bool {
    if !status.metadata().is_empty() {
        return false;
    }
    let detail = tls_failure_detail(status).to_ascii_lowercase();
    CERTIFICATE_REFUSALS.iter().any(|needle| detail.contains(needle))
}

/// The message of `status` with the sources of the error under it.
fn tls_failure_detail(status: &tonic::Status) -> String {
    match std::error::Error::source(status) {
        Some(source) => format!("{}: {}", status.message(), error_chain(source)),
        None => status.message().to_owned(),
    }
}

fn reservation_ref(reservation_id: &str) -> ReservationRef {
    ReservationRef { reservation_id: reservation_id.to_owned() }
}

/// Codes a server uses for "try again, maybe elsewhere" with an outcome it
/// cannot vouch for.
fn is_retryable(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::DeadlineExceeded)
}

/// True when `status` was made by this client because the connection broke
/// under the request (hyper: "operation was canceled", h2 resets): the server
/// may or may not have applied it. A status from a server carries response
/// headers (at least `content-type`) in its metadata; these carry none.
fn is_transport_failure(status: &tonic::Status) -> bool {
    matches!(status.code(), Code::Cancelled | Code::Unknown | Code::Internal) && status.metadata().is_empty()
}

/// True when `status` was made by the client because no connection could be
/// opened: the request never left this process, so it cannot have been
/// applied. A status from a server always carries response headers.
fn never_sent(status: &tonic::Status) -> bool {
    status.code() == Code::Unavailable && status.metadata().is_empty() && is_connect_failure_message(status.message())
}

/// Messages tonic/hyper give to a failed connection attempt ("tcp connect
/// error", "client error (Connect)", "connection refused"...).
fn is_connect_failure_message(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    message.contains("connect error") || message.contains("(connect)") || message.contains("connection refused")
}

fn describe(status: &tonic::Status) -> String {
    let message = status.message();
    if message.is_empty() {
        format!("{:?}", status.code())
    } else {
        format!("{:?}: {message}", status.code())
    }
}

fn message_or_code(status: &tonic::Status) -> String {
    if status.message().is_empty() {
        format!("{:?}", status.code())
    } else {
        status.message().to_owned()
    }
}

fn leader_hint_suffix(status: &tonic::Status) -> String {
    let metadata = status.metadata();
    let id = metadata.get(LEADER_ID_METADATA).and_then(|v| v.to_str().ok());
    let addr = metadata.get(LEADER_ADDR_METADATA).and_then(|v| v.to_str().ok());
    match (id, addr) {
        (Some(id), Some(addr)) => format!(" (leader {id} at {addr})"),
        (None, Some(addr)) => format!(" (leader at {addr})"),
        (Some(id), None) => format!(" (leader {id})"),
        (None, None) => String::new(),
    }
}

/// Each group as the node reporting its newest range (epoch), then its
/// newest term, then a leader, reports it; with the report it came in.
fn newest_groups<'a>(answered: &[&'a StatusResponse]) -> std::collections::BTreeMap<u32, (&'a StatusResponse, &'a GroupStatus)> {
    let mut best: std::collections::BTreeMap<u32, (&StatusResponse, &GroupStatus)> = std::collections::BTreeMap::new();
    for status in answered {
        for group in &status.groups {
            let newer =
                best.get(&group.group_id).is_none_or(|(_, seen)| (group.epoch, group.term, group.leader != 0) > (seen.epoch, seen.term, seen.leader != 0));
            if newer {
                best.insert(group.group_id, (status, group));
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_find_the_leader_of_a_sku_range() {
        let routes = Routes {
            ranges: vec![(String::new(), "4".into(), 0), ("4".into(), "8".into(), 2), ("8".into(), String::new(), 1)],
            homes: vec![Some(0), Some(2), Some(1)],
            refreshed: None,
        };
        assert_eq!(routes.leader_for("0abc"), Some(0));
        assert_eq!(routes.leader_for("4"), Some(2), "start is inclusive");
        assert_eq!(routes.leader_for("7zzz"), Some(2));
        assert_eq!(routes.leader_for("8"), Some(1), "end is exclusive");
        assert_eq!(routes.leader_for("ffff"), Some(1), "an empty end is unbounded");
        assert_eq!(Routes::default().leader_for("a"), None);
    }

    #[test]
    fn a_cart_across_ranges_starts_at_its_home_leader() {
        let routes = Routes {
            ranges: vec![(String::new(), "4".into(), 0), ("4".into(), "8".into(), 2), ("8".into(), String::new(), 1)],
            homes: vec![Some(0), Some(2), Some(1)],
            refreshed: None,
        };
        assert_eq!(routes.start_for("order-1", &["5a", "6b"]), Some(2), "one range: its leader");
        // An id homed in the first group, and one homed in the last.
        let homed = |slot: usize| (0..).map(|i| format!("order-{i}")).find(|id| stockd_proto::home::slot(id, 3) == slot).expect("an id");
        assert_eq!(routes.start_for(&homed(0), &["5a", "9b"]), Some(0), "a cart: its home's leader");
        assert_eq!(routes.start_for(&homed(2), &["0a", "5b"]), Some(1));
        let unknown_home = Routes { homes: vec![None, None, None], ..routes };
        assert_eq!(unknown_home.start_for(&homed(0), &["5a", "9b"]), Some(2), "no home leader known: the first line's");
    }

    #[test]
    fn routes_merge_what_every_node_reports_of_its_own_groups() {
        let group = |id: u32, start: &str, end: &str, epoch: u64, term: u64, leader: u64| GroupStatus {
            group_id: id,
            start_sku: start.into(),
            end_sku: end.into(),
            epoch,
            term,
            leader,
            ..GroupStatus::default()
        };
        // Node 1 holds groups 1 and 2; node 4 holds 2 and 3, and saw group
        // 2 split (epoch 2) and a newer term of it.
        let one = StatusResponse { node_id: 1, groups: vec![group(1, "", "4", 1, 3, 1), group(2, "4", "", 1, 2, 2)], ..StatusResponse::default() };
        let four = StatusResponse { node_id: 4, groups: vec![group(2, "4", "8", 2, 3, 4), group(3, "8", "", 2, 1, 0)], ..StatusResponse::default() };
        let best = newest_groups(&[&one, &four]);
        let seen: Vec<(u32, u64, &str, u64)> = best.iter().map(|(id, (status, g))| (*id, status.node_id, g.end_sku.as_str(), g.leader)).collect();
        assert_eq!(seen, vec![(1, 1, "4", 1), (2, 4, "8", 4), (3, 4, "", 0)], "every group, each from its newest report");
    }

    #[test]
    fn addresses_get_a_scheme_once() {
        assert_eq!(normalize_addr("127.0.0.1:7101", false), Ok("http://127.0.0.1:7101".to_owned()));
        assert_eq!(normalize_addr(" http://h:1/ ", false), Ok("http://h:1".to_owned()));
        assert_eq!(normalize_addr("h:1", true), Ok("https://h:1".to_owned()));
        assert_eq!(normalize_addr("https://h:1", true), Ok("https://h:1".to_owned()));
        assert!(normalize_addr("https://h:1", false).is_err(), "a TLS address for a plaintext client");
        assert!(normalize_addr("http://h:1", true).is_err(), "a plaintext address for a TLS client");
    }

    #[test]
    fn default_config_is_valid_and_inconsistent_ones_are_not() {
        assert_eq!(ClientConfig::default().validate(), Ok(()));
        let short_deadline = ClientConfig { total_deadline: Duration::from_secs(1), ..ClientConfig::default() };
        assert!(matches!(short_deadline.validate(), Err(ClientError::InvalidConfig(_))));
        let no_attempts = ClientConfig { attempts_max: 0, ..ClientConfig::default() };
        assert!(matches!(no_attempts.validate(), Err(ClientError::InvalidConfig(_))));
    }

    #[test]
    fn connect_failures_made_locally_are_never_sent() {
        assert!(never_sent(&tonic::Status::unavailable("tcp connect error")));
        assert!(!never_sent(&tonic::Status::unavailable("raft group unavailable")));
        assert!(!never_sent(&tonic::Status::deadline_exceeded("tcp connect error")));
        let mut from_server = tonic::Status::unavailable("tcp connect error");
        from_server.metadata_mut().insert("content-type", tonic::metadata::MetadataValue::from_static("application/grpc"));
        assert!(!never_sent(&from_server));
    }

    #[test]
    fn only_refused_certificates_count_as_tls_refusals() {
        assert!(is_tls_failure(&tonic::Status::unavailable("tcp connect error: invalid peer certificate: UnknownIssuer")));
        assert!(is_tls_failure(&tonic::Status::unknown("connection error: received fatal alert: CertificateRequired")));
        assert!(!is_tls_failure(&tonic::Status::unknown("connection error: received fatal alert: DecryptError")), "not a certificate refusal");
        let mut from_server = tonic::Status::unavailable("invalid peer certificate");
        from_server.metadata_mut().insert("content-type", tonic::metadata::MetadataValue::from_static("application/grpc"));
        assert!(!is_tls_failure(&from_server), "a server's own message");
        assert!(matches!(refusal(&tonic::Status::unavailable("x: invalid peer certificate: Expired")), Some(ClientError::Unauthenticated(_))));
    }

    #[test]
    fn broken_connections_are_told_apart_from_server_errors() {
        assert!(is_transport_failure(&tonic::Status::cancelled("operation was canceled")));
        assert!(is_transport_failure(&tonic::Status::unknown("transport error")));
        let mut from_server = tonic::Status::internal("bug");
        from_server.metadata_mut().insert("content-type", tonic::metadata::MetadataValue::from_static("application/grpc"));
        assert!(!is_transport_failure(&from_server));
        assert!(!is_transport_failure(&tonic::Status::not_found("x")));
    }

    #[tokio::test]
    async fn hinted_addresses_are_added_once_and_bounded() {
        let config = ClientConfig { nodes_max: 2, ..ClientConfig::default() };
        let client = Client::with_config(&["127.0.0.1:1"], config).expect("valid client");
        assert_eq!(client.index_of_or_add("127.0.0.1:1").expect("known"), 0);
        assert_eq!(client.index_of_or_add("127.0.0.1:2").expect("added"), 1);
        assert_eq!(client.index_of_or_add("http://127.0.0.1:2").expect("known"), 1);
        assert!(client.index_of_or_add("127.0.0.1:3").is_err());
        assert_eq!(client.addrs(), vec!["http://127.0.0.1:1", "http://127.0.0.1:2"]);
    }

    /// In-process fake servers for the retry logic.
    mod fake {
        use std::sync::{Arc, Mutex};

        use tonic::{Request, Response, Status};

        use stockd_proto::v1::inventory_server::{Inventory, InventoryServer};
        use stockd_proto::v1::*;

        /// What a fake node answers to its n-th Reserve (the last one repeats).
        #[derive(Clone, Debug)]
        pub enum Reply {
            Ok,
            NotLeader(Option<String>),
            Unavailable,
            InvalidArgument,
            PermissionDenied,
        }

        #[derive(Clone, Default)]
        struct State {
            script: Arc<Mutex<Vec<Reply>>>,
            seen: Arc<Mutex<Vec<String>>>,
        }

        /// A running fake node.
        pub struct Node {
            pub addr: String,
            state: State,
        }

        impl Node {
            pub fn set_script(&self, script: Vec<Reply>) {
                *self.state.script.lock().expect("lock") = script;
            }

            /// Reservation ids received, in order.
            pub fn seen(&self) -> Vec<String> {
                self.state.seen.lock().expect("lock").clone()
            }
        }

        /// Starts a node answering `script`.
        pub async fn start(script: Vec<Reply>) -> Node {
            let incoming = tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
            let addr = incoming.local_addr().expect("local addr").to_string();
            let state = State::default();
            *state.script.lock().expect("lock") = script;
            let router = tonic::transport::Server::builder().add_service(InventoryServer::new(state.clone()));
            tokio::spawn(router.serve_with_incoming(incoming));
            Node { addr, state }
        }

        fn unimplemented<T>() -> Result<Response<T>, Status> {
            Err(Status::unimplemented("fake"))
        }

        #[tonic::async_trait]
        impl Inventory for State {
            async fn reserve(&self, request: Request<ReserveRequest>) -> Result<Response<ReserveResponse>, Status> {
                let count = {
                    let mut seen = self.seen.lock().expect("lock");
                    seen.push(request.get_ref().reservation_id.clone());
                    seen.len()
                };
                let reply = {
                    let script = self.script.lock().expect("lock");
                    script.get(count - 1).or(script.last()).cloned().unwrap_or(Reply::Ok)
                };
                match reply {
                    Reply::Ok => Ok(Response::new(ReserveResponse { outcome: Outcome::Ok as i32, ..Default::default() })),
                    Reply::NotLeader(hint) => {
                        let mut status = Status::failed_precondition("not leader for group 1");
                        if let Some(hint) = hint {
                            status.metadata_mut().insert("stockd-leader-addr", hint.parse().expect("ascii"));
                            status.metadata_mut().insert("stockd-leader-id", "2".parse().expect("ascii"));
                        }
                        Err(status)
                    }
                    Reply::Unavailable => Err(Status::unavailable("group 1: outcome unknown, retry with the same id")),
                    Reply::InvalidArgument => Err(Status::invalid_argument("invalid lines[0].quantity: must be between 1 and 1000000")),
                    Reply::PermissionDenied => Err(Status::permission_denied("role reader may not call Reserve")),
                }
            }
            async fn batch_reserve(&self, _: Request<BatchReserveRequest>) -> Result<Response<BatchReserveResponse>, Status> {
                unimplemented()
            }
            async fn commit(&self, _: Request<ReservationRef>) -> Result<Response<ReservationResponse>, Status> {
                unimplemented()
            }
            async fn release(&self, _: Request<ReservationRef>) -> Result<Response<ReservationResponse>, Status> {
                unimplemented()
            }
            async fn fulfill(&self, _: Request<ReservationRef>) -> Result<Response<ReservationResponse>, Status> {
                unimplemented()
            }
            async fn cancel(&self, _: Request<ReservationRef>) -> Result<Response<ReservationResponse>, Status> {
                unimplemented()
            }
            async fn get_reservation(&self, _: Request<ReservationRef>) -> Result<Response<ReservationResponse>, Status> {
                unimplemented()
            }
            async fn adjust(&self, _: Request<AdjustRequest>) -> Result<Response<AdjustResponse>, Status> {
                unimplemented()
            }
            async fn get_position(&self, _: Request<GetPositionRequest>) -> Result<Response<PositionResponse>, Status> {
                unimplemented()
            }
            async fn check_availability(&self, request: Request<CheckAvailabilityRequest>) -> Result<Response<CheckAvailabilityResponse>, Status> {
                self.seen.lock().expect("lock").push(format!("check {}", request.get_ref().sku));
                Ok(Response::new(CheckAvailabilityResponse::default()))
            }
            async fn check_availability_batch(&self, _: Request<CheckAvailabilityBatchRequest>) -> Result<Response<CheckAvailabilityBatchResponse>, Status> {
                unimplemented()
            }
            async fn rank_fulfillment(&self, _: Request<RankFulfillmentRequest>) -> Result<Response<RankFulfillmentResponse>, Status> {
                unimplemented()
            }
        }
    }

    fn cart(id: &str) -> ReserveRequest {
        ReserveRequest {
            reservation_id: id.to_owned(),
            lines: vec![stockd_proto::v1::Line { sku: "a".into(), location: "dc".into(), quantity: 1 }],
            ttl_ms: 0,
            risk_gate: None,
        }
    }

    fn quick() -> ClientConfig {
        ClientConfig {
            request_timeout: Duration::from_millis(500),
            total_deadline: Duration::from_millis(800),
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(50),
            ..ClientConfig::default()
        }
    }

    /// An address where nothing listens: a port bound, then released.
    fn closed_addr() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").to_string()
    }

    #[tokio::test]
    async fn a_leader_hint_is_followed_to_an_unlisted_node() {
        let leader = fake::start(vec![fake::Reply::Ok]).await;
        let follower = fake::start(vec![fake::Reply::NotLeader(Some(leader.addr.clone()))]).await;
        let client = Client::with_config(&[follower.addr.as_str()], quick()).expect("client");
        let response = client.reserve(cart("r1")).await.expect("answered by the hinted leader");
        assert_eq!(response.outcome(), stockd_proto::v1::Outcome::Ok);
        assert_eq!(follower.seen(), vec!["r1"]);
        assert_eq!(leader.seen(), vec!["r1"], "the same id is sent to the leader");
        assert_eq!(client.addrs(), vec![format!("http://{}", follower.addr), format!("http://{}", leader.addr)]);
        client.reserve(cart("r2")).await.expect("second call");
        assert_eq!(follower.seen(), vec!["r1"], "the node that answered is preferred next time");
    }

    #[tokio::test]
    async fn leader_hops_are_bounded() {
        let a = fake::start(vec![]).await;
        let b = fake::start(vec![fake::Reply::NotLeader(Some(a.addr.clone()))]).await;
        a.set_script(vec![fake::Reply::NotLeader(Some(b.addr.clone()))]);
        let client = Client::with_config(&[a.addr.as_str()], quick()).expect("client");
        let error = client.reserve(cart("r1")).await.expect_err("no leader ever answers");
        assert!(matches!(&error, ClientError::Unavailable { outcome_unknown: false, .. }), "{error:?}");
        assert!(error.to_string().contains("leader hops"), "{error}");
        let calls = a.seen().len() + b.seen().len();
        assert_eq!(calls, quick().leader_hops_max as usize + 1, "first attempt + leader_hops_max redirections");
    }

    #[tokio::test]
    async fn without_a_hint_not_leader_tries_the_next_node() {
        let lost = fake::start(vec![fake::Reply::NotLeader(None)]).await;
        let up = fake::start(vec![fake::Reply::Ok]).await;
        let client = Client::with_config(&[lost.addr.as_str(), up.addr.as_str()], quick()).expect("client");
        client.reserve(cart("r1")).await.expect("the next node answers");
        assert_eq!((lost.seen(), up.seen()), (vec!["r1".to_owned()], vec!["r1".to_owned()]));
    }

    fn check(sku: &str) -> CheckAvailabilityRequest {
        CheckAvailabilityRequest { sku: sku.to_owned(), ..Default::default() }
    }

    #[tokio::test]
    async fn availability_reads_spread_over_the_nodes_unless_turned_off() {
        let a = fake::start(vec![]).await;
        let b = fake::start(vec![]).await;
        let client = Client::with_config(&[a.addr.as_str(), b.addr.as_str()], quick()).expect("client");
        for i in 0..10 {
            client.check_availability(check(&format!("s{i}"))).await.expect("answer");
        }
        assert_eq!((a.seen().len(), b.seen().len()), (5, 5), "in turn");
        let sticky = Client::with_config(&[a.addr.as_str(), b.addr.as_str()], ClientConfig { spread_reads: false, ..quick() }).expect("client");
        for i in 0..4 {
            sticky.check_availability(check(&format!("t{i}"))).await.expect("answer");
        }
        assert_eq!((a.seen().len(), b.seen().len()), (9, 5), "all to the node that answered last");
    }

    #[tokio::test]
    async fn spread_reads_pass_over_a_node_that_just_failed() {
        let up = fake::start(vec![]).await;
        let client = Client::with_config(&[closed_addr(), up.addr.clone()], quick()).expect("client");
        client.check_availability(check("first")).await.expect("answered by the live node after the closed one");
        // Two turns in a row: neither starts at the closed node (index 0).
        assert_eq!((client.spread(), client.spread()), (Some(1), Some(1)), "the failed node is passed over");
        for i in 0..6 {
            client.check_availability(check(&format!("s{i}"))).await.expect("answer");
        }
        assert_eq!(up.seen().len(), 7);
    }

    #[tokio::test]
    async fn a_down_node_is_skipped() {
        let up = fake::start(vec![fake::Reply::Ok]).await;
        let client = Client::with_config(&[closed_addr(), up.addr.clone()], quick()).expect("client");
        client.reserve(cart("r1")).await.expect("the second node answers");
        assert_eq!(up.seen(), vec!["r1"]);
    }

    #[tokio::test]
    async fn unknown_outcomes_are_retried_with_the_same_id_then_reported() {
        let flaky = fake::start(vec![fake::Reply::Unavailable, fake::Reply::Unavailable, fake::Reply::Ok]).await;
        let client = Client::with_config(&[flaky.addr.as_str()], quick()).expect("client");
        client.reserve(cart("r1")).await.expect("third attempt answers");
        assert_eq!(flaky.seen(), vec!["r1", "r1", "r1"]);

        let down = fake::start(vec![fake::Reply::Unavailable]).await;
        let client = Client::with_config(&[down.addr.as_str()], quick()).expect("client");
        let error = client.reserve(cart("r2")).await.expect_err("never answers");
        assert!(error.is_outcome_unknown(), "the server may have applied it: {error:?}");
        let attempts = down.seen();
        assert!(attempts.len() >= 2 && attempts.iter().all(|id| id == "r2"), "{attempts:?}");
    }

    #[tokio::test]
    async fn a_refused_connection_is_not_an_unknown_outcome() {
        let client = Client::with_config(&[closed_addr()], quick()).expect("client");
        let error = client.reserve(cart("r1")).await.expect_err("nobody listens");
        assert!(matches!(error, ClientError::Unavailable { outcome_unknown: false, .. }), "{error:?}");
    }

    #[tokio::test]
    async fn invalid_arguments_are_never_retried() {
        let node = fake::start(vec![fake::Reply::InvalidArgument]).await;
        let client = Client::with_config(&[node.addr.as_str()], quick()).expect("client");
        let error = client.reserve(cart("r1")).await.expect_err("invalid");
        assert_eq!(error, ClientError::InvalidArgument("invalid lines[0].quantity: must be between 1 and 1000000".into()));
        assert_eq!(node.seen().len(), 1);
    }

    #[tokio::test]
    async fn a_refused_retry_after_an_unknown_attempt_stays_unknown() {
        let node = fake::start(vec![fake::Reply::Unavailable, fake::Reply::InvalidArgument]).await;
        let client = Client::with_config(&[node.addr.as_str()], quick()).expect("client");
        let error = client.reserve(cart("r1")).await.expect_err("refused on the retry");
        assert!(error.is_outcome_unknown(), "the first attempt may have been applied: {error:?}");
        assert!(error.to_string().contains("invalid lines[0].quantity"), "the retry's refusal is named: {error}");
        assert_eq!(node.seen(), vec!["r1", "r1"]);

        // A refused role was refused for every attempt: none was served.
        let node = fake::start(vec![fake::Reply::Unavailable, fake::Reply::PermissionDenied]).await;
        let client = Client::with_config(&[node.addr.as_str()], quick()).expect("client");
        let error = client.reserve(cart("r2")).await.expect_err("refused on the retry");
        assert!(matches!(&error, ClientError::PermissionDenied(_)), "{error:?}");
    }

    #[tokio::test]
    async fn empty_address_list_is_refused() {
        let none: [&str; 0] = [];
        assert!(matches!(Client::new(&none), Err(ClientError::InvalidAddress { .. })));
        assert!(matches!(Client::new(&["http://bad host:1"]), Err(ClientError::InvalidAddress { .. })));
    }
}
