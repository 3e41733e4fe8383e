//! openraft's network traits over a transport the node provides. All groups
//! between two nodes share the transport's single connection per peer; each
//! message names its group.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::InstallSnapshotError;
use openraft::error::NetworkError;
use openraft::error::RPCError;
use openraft::error::RaftError;
use openraft::error::RemoteError;
use openraft::error::Unreachable;
use openraft::network::RPCOption;
use openraft::network::RaftNetwork;
use openraft::network::RaftNetworkFactory;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::InstallSnapshotRequest;
use openraft::raft::InstallSnapshotResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use storage::model::GroupId;

use crate::wire;
use crate::NodeId;
use crate::TypeConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerRpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    /// Nothing was delivered (connection refused, peer down).
    #[error("peer {target} unreachable: {reason}")]
    Unreachable { target: NodeId, reason: String },
    /// The request may or may not have been delivered.
    #[error("rpc to peer {target} failed: {reason}")]
    Failed { target: NodeId, reason: String },
}

pub type TransportFuture = Pin<Box<dyn Future<Output = Result<Vec<u8>, TransportError>> + Send>>;

/// Sends one encoded Raft RPC of `group` to node `target` and returns the
/// encoded reply. Implemented by the node over gRPC; the node knows where
/// its peers listen (their peer-plane address, not the client address that
/// the membership records for leader hints).
pub trait PeerTransport: Send + Sync + 'static {
    fn call(&self, target: NodeId, group: GroupId, rpc: PeerRpc, payload: Vec<u8>, timeout: Duration) -> TransportFuture;
}

/// Creates per-target network clients for one group.
#[derive(Clone)]
pub struct GroupNetwork {
    transport: Arc<dyn PeerTransport>,
    group: GroupId,
}

impl GroupNetwork {
    pub fn new(transport: Arc<dyn PeerTransport>, group: GroupId) -> Self {
        Self { transport, group }
    }
}

impl RaftNetworkFactory<TypeConfig> for GroupNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> PeerClient {
        PeerClient { transport: self.transport.clone(), group: self.group, target }
    }
}

pub struct PeerClient {
    transport: Arc<dyn PeerTransport>,
    group: GroupId,
    target: NodeId,
}

impl PeerClient {
    async fn send<Req, Resp, E>(&self, rpc: PeerRpc, req: &Req, option: &RPCOption) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let reply = self.transport.call(self.target, self.group, rpc, wire::encode(req), option.hard_ttl()).await.map_err(|e| match e {
            TransportError::Unreachable { .. } => RPCError::Unreachable(Unreachable::new(&e)),
            TransportError::Failed { .. } => RPCError::Network(NetworkError::new(&e)),
        })?;
        let decoded: Result<Resp, RaftError<NodeId, E>> = wire::decode(&reply).map_err(|reason| {
            let e = TransportError::Failed { target: self.target, reason };
            RPCError::Network(NetworkError::new(&e))
        })?;
        decoded.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.send(PeerRpc::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>> {
        self.send(PeerRpc::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.send(PeerRpc::Vote, &rpc, &option).await
    }
}
