//! The server side of the peer plane (`stockd.peer.v1.RaftPeer`), served on
//! its own listener. The security layer lets only certificates with the peer
//! role in; then every message is checked as a client request would be:
//!
//! - the sender's cluster fingerprint equals this node's (FAILED_PRECONDITION
//!   otherwise: two nodes with different `[cluster]` settings never work
//!   together);
//! - every payload is decoded within a named bound ([`PEER_COMMAND_BYTES_MAX`]
//!   for forwarded commands and reads, [`PEER_MERGE_BYTES_MAX`] for a
//!   command from an authenticated peer, which may be a merge carrying a
//!   range's state, `raft::wire::RAFT_MESSAGE_BYTES_MAX` for Raft messages);
//! - a forwarded command passes `validate_command` with this node's limits
//!   (the same errors a client gets) and names only keys of its group;
//! - a `ReserveGated` (risk verdicts going into the log) is taken only from
//!   an authenticated peer.
//!
//! The Raft stream (`serve_stream`, see `peer_stream`) carries Raft
//! messages, forwarded commands and forwarded reads of every group; each of
//! its messages goes through the same checks as its own call, with the
//! caller the stream was opened by.

use std::sync::Arc;
use std::sync::Weak;
use std::time::Duration;

use raft::network::PeerRpc;
use raft::wire;
use raft::GroupError;
use storage::model::Command;
use storage::model::GroupId;
use storage::validate::check_token;
use storage::validate::validate_command;
use tokio::sync::mpsc;
use tokio::sync::watch;
use tokio::sync::Semaphore;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::Request;
use tonic::Response;
use tonic::Status;
use tonic::Streaming;

use crate::failpoint;
use crate::node::Node;
use crate::peer_client::FINGERPRINT_METADATA;
use crate::peer_stream::StreamRpc;
use crate::peer_stream::FRAMES_QUEUED_MAX;
use crate::peer_stream::FRAME_MESSAGES_MAX;
use crate::peer_stream::STREAM_HANDLING_MAX;
use crate::proto::peer::raft_peer_server::RaftPeer;
use crate::proto::peer::RaftEnvelope;
use crate::proto::peer::RaftFrame;
use crate::proto::peer::RaftMessage;
use crate::read::Consistency;
use crate::read::ReadQuery;
use crate::security;
use crate::status;

/// Largest forwarded command or read: a reservation of the most lines at the
/// longest ids, SKUs and locations, with its risk verdicts, is a few tens of
/// KiB.
pub const PEER_COMMAND_BYTES_MAX: usize = 1 << 20;
/// Largest command forwarded by an authenticated peer: a merge carries the
/// frozen state of a range (`storage::split::MERGE_BYTES_MAX`).
pub const PEER_MERGE_BYTES_MAX: usize = 2 * storage::split::MERGE_BYTES_MAX;

pub struct PeerService {
    pub node: Arc<Node>,
    /// Turns true when the node stops: its Raft streams end then.
    pub stopped: tokio::sync::watch::Receiver<bool>,
}

impl PeerService {
    /// Refuses a topology step (`what`) from a node with other cluster
    /// settings or without a peer certificate.
    fn check_trusted_peer<T>(&self, request: &Request<T>, what: &str) -> Result<(), Status> {
        self.check_fingerprint(request)?;
        let caller = security::caller(request);
        if !caller.is_trusted_peer() {
            return Err(Status::permission_denied(format!("{what} are taken from authenticated peers only, not from {}", caller.subject)));
        }
        Ok(())
    }

    /// Refuses a message from a node with other cluster settings.
    fn check_fingerprint<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let ours = &self.node.config.cluster_fingerprint;
        match request.metadata().get(FINGERPRINT_METADATA).and_then(|v| v.to_str().ok()) {
            Some(theirs) if theirs == ours => Ok(()),
            theirs => Err(Status::failed_precondition(format!(
                "cluster settings differ: this node's [cluster] fingerprint is {ours}, the sender's {}; every node must run identical [cluster] settings",
                theirs.unwrap_or("missing")
            ))),
        }
    }

    async fn raft_rpc(&self, rpc: PeerRpc, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.check_fingerprint(&request)?;
        let m = request.into_inner();
        let group = match self.node.group(m.group_id) {
            Some(group) => group,
            None => self.node.replica_for_message(m.group_id).await?,
        };
        let payload = group.handle_peer_rpc(rpc, &m.payload).await.map_err(Status::invalid_argument)?;
        Ok(Response::new(RaftMessage { group_id: m.group_id, payload }))
    }
}

/// A forwarded command and the epoch it was routed at, checked exactly
/// as the client's request was.
fn checked_command(node: &Node, caller: &security::Caller, payload: &[u8]) -> Result<(u64, Command), Status> {
    // Only a node forwards a merge, whose command carries a range's state.
    let bound = if caller.is_trusted_peer() { PEER_MERGE_BYTES_MAX } else { PEER_COMMAND_BYTES_MAX };
    let (epoch, command): (u64, Command) = wire::decode_bounded(payload, bound).map_err(Status::invalid_argument)?;
    validate_command(&command, &node.config.input_limits).map_err(status::invalid)?;
    if matches!(command, Command::ReserveGated { .. }) && !caller.is_trusted_peer() {
        return Err(Status::permission_denied(format!("risk verdicts are taken from authenticated peers only, not from {}", caller.subject)));
    }
    let cart_step = matches!(
        command,
        Command::CartBegin { .. }
            | Command::CartPrepare { .. }
            | Command::CartDecide { .. }
            | Command::CartFollow { .. }
            | Command::CartFollowed { .. }
            | Command::Locate { .. }
            | Command::Split { .. }
            | Command::Freeze
            | Command::Thaw { .. }
            | Command::Merge { .. }
            | Command::Topology(_)
    );
    if cart_step && !caller.is_trusted_peer() {
        return Err(Status::permission_denied(format!(
            "cart protocol steps and topology commands are taken from authenticated peers only, not from {}",
            caller.subject
        )));
    }
    Ok((epoch, command))
}

/// A forwarded read, bounded as the client's request was.
fn checked_read(node: &Node, payload: &[u8]) -> Result<(ReadQuery, Consistency), Status> {
    let (query, consistency): (ReadQuery, Consistency) = wire::decode_bounded(payload, PEER_COMMAND_BYTES_MAX).map_err(Status::invalid_argument)?;
    let limits = &node.config.input_limits;
    let invalid = |e| status::invalid(e);
    let sku = match &query {
        ReadQuery::Position(key) => {
            check_token("location", &key.location, limits.location_bytes_max).map_err(invalid)?;
            Some(key.sku.as_str())
        }
        ReadQuery::Reservation(id) => {
            check_token("reservation_id", id, limits.id_bytes_max).map_err(invalid)?;
            None
        }
        ReadQuery::SkuPositions { sku, location, locations_max } => {
            if let Some(location) = location {
                check_token("location", location, limits.location_bytes_max).map_err(invalid)?;
            }
            let max = node.config.availability.locations_max;
            if *locations_max == 0 || *locations_max > max {
                return Err(status::invalid_field("locations_max", format!("must be between 1 and {max}")));
            }
            Some(sku.as_str())
        }
        ReadQuery::Topology { .. } | ReadQuery::Range | ReadQuery::SplitKey | ReadQuery::Frozen => None,
    };
    if let Some(sku) = sku {
        check_token("sku", sku, limits.sku_bytes_max).map_err(invalid)?;
    }
    Ok((query, consistency))
}

/// A command forwarded to this node for `group`, checked as the client's
/// request was and proposed here: the encoded result (or the group's
/// refusal, which the sender routes on), or the caller's invalid input.
pub(crate) async fn forwarded_proposal(node: &Node, caller: &security::Caller, group: GroupId, payload: &[u8]) -> Result<Vec<u8>, Status> {
    let (epoch, command) = checked_command(node, caller, payload)?;
    let transition = matches!(command, Command::Commit { .. } | Command::Release { .. });
    let result = match routed_here(node.check_command_in_group(group, &command))? {
        Ok(()) => node.propose_local(group, epoch, command).await,
        Err(not_here) => Err(not_here),
    };
    if transition && result.is_ok() && node.failpoint(failpoint::PEER_INVALID_AFTER_APPLY) {
        return Err(Status::invalid_argument("invalid command: refused after it was applied (failpoint)"));
    }
    Ok(wire::encode(&result))
}

/// A read forwarded to this node for `group`, bounded as the client's
/// request was: the encoded answer or the group's refusal.
pub(crate) async fn forwarded_read(node: &Node, group: GroupId, payload: &[u8]) -> Result<Vec<u8>, Status> {
    let (query, consistency) = checked_read(node, payload)?;
    let result = match routed_here(query.sku().map_or(Ok(()), |sku| node.check_sku_in_group(group, sku)))? {
        Ok(()) => node.read_local(group, &query, consistency).await,
        Err(not_here) => Err(not_here),
    };
    Ok(wire::encode(&result))
}

/// The receiving side of one stream (the peer has passed the security
/// layer and the fingerprint check): handles its messages and answers them
/// on the returned stream until the sender ends it or `stopped` turns true.
pub fn serve_stream(
    node: Weak<Node>,
    caller: Arc<security::Caller>,
    mut inbound: Streaming<RaftFrame>,
    stopped: watch::Receiver<bool>,
) -> ReceiverStream<Result<RaftFrame, Status>> {
    let (frames, outbound) = mpsc::channel(FRAMES_QUEUED_MAX);
    let (replies, mut replies_rx) = mpsc::channel::<RaftEnvelope>(STREAM_HANDLING_MAX);
    let handling = Arc::new(Semaphore::new(STREAM_HANDLING_MAX));
    let mut stop_reading = stopped.clone();
    tokio::spawn(async move {
        loop {
            let frame = tokio::select! {
                frame = inbound.message() => frame,
                _ = stop_reading.wait_for(|stop| *stop) => return,
            };
            let Ok(Some(frame)) = frame else { return };
            for envelope in frame.messages {
                let Ok(permit) = handling.clone().acquire_owned().await else { return };
                let (node, caller, replies) = (node.clone(), caller.clone(), replies.clone());
                tokio::spawn(async move {
                    let reply = handle(node, &caller, envelope).await;
                    let _ = replies.send(reply).await;
                    drop(permit);
                });
            }
        }
    });
    let mut stop_writing = stopped;
    tokio::spawn(async move {
        loop {
            let first = tokio::select! {
                first = replies_rx.recv() => first,
                _ = stop_writing.wait_for(|stop| *stop) => None,
            };
            let Some(first) = first else { return };
            let mut messages = vec![first];
            while messages.len() < FRAME_MESSAGES_MAX {
                match replies_rx.try_recv() {
                    Ok(next) => messages.push(next),
                    Err(_) => break,
                }
            }
            if frames.send(Ok(RaftFrame { messages })).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(outbound)
}

/// Longest a receiver works on one message, whatever its sender's
/// deadline.
pub const STREAM_HANDLING_TIMEOUT_MAX: Duration = Duration::from_secs(60);

/// One message of a stream, handled as its unary call would be, within its
/// sender's deadline.
async fn handle(node: Weak<Node>, caller: &security::Caller, message: RaftEnvelope) -> RaftEnvelope {
    let (id, group_id) = (message.id, message.group_id);
    let refused = |code: Code, error: String| RaftEnvelope { id, group_id, rpc: 0, payload: Vec::new(), code: code as i32, error, timeout_ms: 0 };
    let Some(rpc) = StreamRpc::of(message.rpc) else {
        return refused(Code::InvalidArgument, format!("invalid rpc: {} is not taken on the raft stream", message.rpc));
    };
    let Some(node) = node.upgrade() else { return refused(Code::Unavailable, "the node is stopping".into()) };
    let limit = Duration::from_millis(u64::from(message.timeout_ms)).min(STREAM_HANDLING_TIMEOUT_MAX);
    let work = async {
        match rpc {
            StreamRpc::Raft(rpc) => {
                let group = match node.group(group_id) {
                    Some(group) => group,
                    None => node.replica_for_message(group_id).await?,
                };
                group.handle_peer_rpc(rpc, &message.payload).await.map_err(Status::invalid_argument)
            }
            StreamRpc::Propose => forwarded_proposal(&node, caller, group_id, &message.payload).await,
            StreamRpc::Read => forwarded_read(&node, group_id, &message.payload).await,
        }
    };
    match tokio::time::timeout(limit, work).await {
        Ok(Ok(payload)) => RaftEnvelope { id, group_id, rpc: 0, payload, code: Code::Ok as i32, error: String::new(), timeout_ms: 0 },
        Ok(Err(status)) => refused(status.code(), status.message().to_owned()),
        Err(_) => refused(Code::DeadlineExceeded, format!("not handled within the sender's {} ms", limit.as_millis())),
    }
}

/// Whether a forwarded request belongs in the group it names here. A
/// stale route or a group unknown here goes back in the answer, as a
/// refusal of the group would (the sender routes again; nothing was
/// applied); any other refusal is the caller's invalid input.
fn routed_here(check: Result<(), GroupError>) -> Result<Result<(), GroupError>, Status> {
    match check {
        Ok(()) => Ok(Ok(())),
        Err(e @ (GroupError::StaleRoute { .. } | GroupError::NotLeader { .. })) => Ok(Err(e)),
        Err(e) => Err(status::group_error(e)),
    }
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    #[tracing::instrument(level = "trace", skip_all, fields(group = request.get_ref().group_id))]
    async fn append_entries(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.raft_rpc(PeerRpc::AppendEntries, request).await
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.raft_rpc(PeerRpc::Vote, request).await
    }

    async fn install_snapshot(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.raft_rpc(PeerRpc::InstallSnapshot, request).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(group = request.get_ref().group_id))]
    async fn propose(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.check_fingerprint(&request)?;
        let caller = security::caller(&request);
        let m = request.into_inner();
        let payload = forwarded_proposal(&self.node, &caller, m.group_id, &m.payload).await?;
        Ok(Response::new(RaftMessage { group_id: m.group_id, payload }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(group = request.get_ref().group_id))]
    async fn read(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.check_fingerprint(&request)?;
        let m = request.into_inner();
        let payload = forwarded_read(&self.node, m.group_id, &m.payload).await?;
        Ok(Response::new(RaftMessage { group_id: m.group_id, payload }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(group = request.get_ref().group_id))]
    async fn move_replica(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.check_trusted_peer(&request, "replica moves")?;
        let m = request.into_inner();
        let (from, to): (raft::NodeId, raft::NodeId) = wire::decode_bounded(&m.payload, PEER_COMMAND_BYTES_MAX).map_err(Status::invalid_argument)?;
        let result = self.node.move_replica_here(m.group_id, from, to).await;
        Ok(Response::new(RaftMessage { group_id: m.group_id, payload: wire::encode(&result) }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(group = request.get_ref().group_id))]
    async fn transfer_leader(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.check_trusted_peer(&request, "leader moves")?;
        let m = request.into_inner();
        let to: raft::NodeId = wire::decode_bounded(&m.payload, PEER_COMMAND_BYTES_MAX).map_err(Status::invalid_argument)?;
        let result = self.node.transfer_leader_here(m.group_id, to).await;
        Ok(Response::new(RaftMessage { group_id: m.group_id, payload: wire::encode(&result) }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(group = request.get_ref().group_id))]
    async fn campaign(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.check_trusted_peer(&request, "elections")?;
        let group = request.get_ref().group_id;
        let result = match self.node.group(group) {
            Some(replica) => {
                replica.campaign().await;
                Ok(())
            }
            None => Err(GroupError::NotLeader { group, leader: None }),
        };
        Ok(Response::new(RaftMessage { group_id: group, payload: wire::encode(&result) }))
    }

    type RaftStreamStream = ReceiverStream<Result<RaftFrame, Status>>;

    async fn raft_stream(&self, request: Request<Streaming<RaftFrame>>) -> Result<Response<Self::RaftStreamStream>, Status> {
        self.check_fingerprint(&request)?;
        let caller = security::caller(&request);
        Ok(Response::new(serve_stream(Arc::downgrade(&self.node), caller, request.into_inner(), self.stopped.clone())))
    }

    async fn leaders(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.check_trusted_peer(&request, "leader views")?;
        Ok(Response::new(RaftMessage { group_id: 0, payload: wire::encode(&self.node.local_leaders()) }))
    }
}
