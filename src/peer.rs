//! Node-to-node gRPC: one HTTP/2 channel per peer, shared by every Raft
//! group and by forwarded client requests.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use raft::network::PeerRpc;
use raft::network::PeerTransport;
use raft::network::TransportError;
use raft::network::TransportFuture;
use raft::wire;
use raft::GroupError;
use raft::NodeId;
use storage::model::Command;
use storage::model::CommandResult;
use storage::model::GroupId;
use tonic::transport::Channel;
use tonic::transport::Endpoint;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use crate::node::Consistency;
use crate::node::Node;
use crate::node::ReadAnswer;
use crate::node::ReadQuery;
use crate::proto::peer::raft_peer_client::RaftPeerClient;
use crate::proto::peer::raft_peer_server::RaftPeer;
use crate::proto::peer::RaftMessage;

/// Largest peer message (snapshot chunks, big append batches).
pub const PEER_MESSAGE_BYTES_MAX: usize = 64 << 20;

pub struct PeerNetwork {
    channels: Mutex<HashMap<String, Channel>>,
    rpc_timeout: Duration,
}

impl PeerNetwork {
    pub fn new(rpc_timeout_ms: u64) -> Self {
        Self { channels: Mutex::new(HashMap::new()), rpc_timeout: Duration::from_millis(rpc_timeout_ms) }
    }

    fn client(&self, addr: &str) -> Result<RaftPeerClient<Channel>, String> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let channel = match channels.get(addr) {
            Some(c) => c.clone(),
            None => {
                let endpoint = Endpoint::from_shared(format!("http://{addr}"))
                    .map_err(|e| format!("bad peer address {addr}: {e}"))?
                    .connect_timeout(Duration::from_millis(500))
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(10))
                    .keep_alive_while_idle(true);
                let c = endpoint.connect_lazy();
                channels.insert(addr.to_string(), c.clone());
                c
            }
        };
        Ok(RaftPeerClient::new(channel).max_decoding_message_size(PEER_MESSAGE_BYTES_MAX).max_encoding_message_size(PEER_MESSAGE_BYTES_MAX))
    }

    async fn call_raw(&self, target: NodeId, addr: &str, group: GroupId, rpc: Rpc, payload: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, TransportError> {
        let client = self.client(addr).map_err(|reason| TransportError::Unreachable { target, reason })?;
        send(client, target, addr.to_string(), group, rpc, payload, timeout).await
    }

    /// Forwards a command to `target` (believed to lead `group`).
    pub async fn propose(&self, target: NodeId, addr: &str, group: GroupId, command: &Command) -> Result<(u64, CommandResult), GroupError> {
        let reply = self
            .call_raw(target, addr, group, Rpc::Propose, wire::encode(command), self.rpc_timeout)
            .await
            .map_err(|e| GroupError::Unavailable { group, reason: e.to_string() })?;
        wire::decode::<Result<(u64, CommandResult), GroupError>>(&reply).map_err(|reason| GroupError::Unavailable { group, reason })?
    }

    /// Forwards a read to `target`.
    pub async fn read(&self, target: NodeId, addr: &str, group: GroupId, query: &ReadQuery, consistency: Consistency) -> Result<ReadAnswer, GroupError> {
        let reply = self
            .call_raw(target, addr, group, Rpc::Read, wire::encode(&(query, consistency)), self.rpc_timeout)
            .await
            .map_err(|e| GroupError::Unavailable { group, reason: e.to_string() })?;
        wire::decode::<Result<ReadAnswer, GroupError>>(&reply).map_err(|reason| GroupError::Unavailable { group, reason })?
    }
}

#[derive(Debug, Clone, Copy)]
enum Rpc {
    Raft(PeerRpc),
    Propose,
    Read,
}

async fn send(
    mut client: RaftPeerClient<Channel>,
    target: NodeId,
    addr: String,
    group: GroupId,
    rpc: Rpc,
    payload: Vec<u8>,
    timeout: Duration,
) -> Result<Vec<u8>, TransportError> {
    let mut request = Request::new(RaftMessage { group_id: group, payload });
    request.set_timeout(timeout);
    let reply = match rpc {
        Rpc::Raft(PeerRpc::AppendEntries) => client.append_entries(request).await,
        Rpc::Raft(PeerRpc::Vote) => client.vote(request).await,
        Rpc::Raft(PeerRpc::InstallSnapshot) => client.install_snapshot(request).await,
        Rpc::Propose => client.propose(request).await,
        Rpc::Read => client.read(request).await,
    };
    match reply {
        Ok(r) => Ok(r.into_inner().payload),
        Err(s) if s.code() == tonic::Code::Unavailable => Err(TransportError::Unreachable { target, reason: format!("{addr}: {}", s.message()) }),
        Err(s) => Err(TransportError::Failed { target, reason: format!("{addr}: {}: {}", s.code(), s.message()) }),
    }
}

impl PeerTransport for PeerNetwork {
    fn call(&self, target: NodeId, addr: &str, group: GroupId, rpc: PeerRpc, payload: Vec<u8>, timeout: Duration) -> TransportFuture {
        let client = self.client(addr);
        let addr = addr.to_string();
        Box::pin(async move {
            let client = client.map_err(|reason| TransportError::Unreachable { target, reason })?;
            send(client, target, addr, group, Rpc::Raft(rpc), payload, timeout).await
        })
    }
}

/// Server side of the peer protocol.
pub struct PeerService {
    pub node: Arc<Node>,
}

impl PeerService {
    async fn raft_rpc(&self, rpc: PeerRpc, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let m = request.into_inner();
        let group = self.node.group(m.group_id).ok_or_else(|| Status::not_found(format!("group {} is not hosted on node {}", m.group_id, self.node.id())))?;
        let payload = group.handle_peer_rpc(rpc, &m.payload).await.map_err(Status::invalid_argument)?;
        Ok(Response::new(RaftMessage { group_id: m.group_id, payload }))
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
        let m = request.into_inner();
        let command: Command = wire::decode(&m.payload).map_err(Status::invalid_argument)?;
        let result = self.node.propose_local(m.group_id, command).await;
        Ok(Response::new(RaftMessage { group_id: m.group_id, payload: wire::encode(&result) }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(group = request.get_ref().group_id))]
    async fn read(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let m = request.into_inner();
        let (query, consistency): (ReadQuery, Consistency) = wire::decode(&m.payload).map_err(Status::invalid_argument)?;
        let result = self.node.read_local(m.group_id, &query, consistency).await;
        Ok(Response::new(RaftMessage { group_id: m.group_id, payload: wire::encode(&result) }))
    }
}
