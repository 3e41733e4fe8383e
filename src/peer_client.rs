//! The client side of the peer plane: one HTTP/2 channel per peer, shared by
//! every Raft group and by forwarded requests; mTLS with this node's
//! certificate (reconnecting after a certificate reload), or plaintext on an
//! `--insecure` node. Every message carries this node's cluster fingerprint,
//! which the receiver compares with its own.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
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
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;
use tonic::transport::Endpoint;
use tonic::Request;
use tonic::Status;

use crate::peer_stream::StreamHandle;
use crate::peer_stream::StreamRpc;
use crate::proto::peer::raft_peer_client::RaftPeerClient;
use crate::proto::peer::RaftMessage;
use crate::read::Consistency;
use crate::read::ReadAnswer;
use crate::read::ReadQuery;
use crate::tls::NodeTls;

/// Metadata of every peer message: the sender's cluster fingerprint.
pub const FINGERPRINT_METADATA: &str = "stockd-cluster-fingerprint";

/// Channels to the peers, made for one TLS generation.
#[derive(Default)]
struct Channels {
    generation: u64,
    by_node: HashMap<NodeId, Channel>,
}

pub struct PeerNetwork {
    /// Peer-plane address of every node: the bootstrap list's, then the
    /// topology's (nodes join while the cluster runs).
    addrs: std::sync::RwLock<BTreeMap<NodeId, String>>,
    tls: Option<Arc<NodeTls>>,
    channels: Mutex<Channels>,
    rpc_timeout: Duration,
    fingerprint: AsciiMetadataValue,
    /// The Raft stream to each peer (`peer_stream`), opened on its first
    /// message.
    streams: Mutex<HashMap<NodeId, StreamHandle>>,
}

impl PeerNetwork {
    pub fn new(addrs: BTreeMap<NodeId, String>, tls: Option<Arc<NodeTls>>, rpc_timeout_ms: u64, fingerprint: &str) -> Result<Self, String> {
        let fingerprint = AsciiMetadataValue::try_from(fingerprint).map_err(|e| format!("cluster fingerprint `{fingerprint}`: {e}"))?;
        Ok(Self {
            addrs: std::sync::RwLock::new(addrs),
            tls,
            channels: Mutex::new(Channels::default()),
            rpc_timeout: Duration::from_millis(rpc_timeout_ms),
            fingerprint,
            streams: Mutex::new(HashMap::new()),
        })
    }

    /// Takes the peer addresses of `nodes` (from a newer topology): a node
    /// that joined is reachable from then on; a changed address gets a new
    /// channel.
    pub fn learn<'a>(&self, nodes: impl Iterator<Item = &'a storage::topology::NodeInfo>) {
        let mut addrs = self.addrs.write().unwrap_or_else(|p| p.into_inner());
        for node in nodes {
            let Some(addr) = &node.peer_addr else { continue };
            if addrs.get(&node.id) != Some(addr) {
                addrs.insert(node.id, addr.clone());
                self.channels.lock().unwrap_or_else(|p| p.into_inner()).by_node.remove(&node.id);
                self.streams.lock().unwrap_or_else(|p| p.into_inner()).remove(&node.id);
            }
        }
    }

    fn client(&self, target: NodeId) -> Result<RaftPeerClient<Channel>, String> {
        let addr = self.addrs.read().unwrap_or_else(|p| p.into_inner()).get(&target).cloned().ok_or_else(|| format!("node {target} has no peer address"))?;
        let generation = self.tls.as_ref().map_or(0, |tls| tls.generation());
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if channels.generation != generation {
            // Certificates were reloaded: new connections present the new ones.
            *channels = Channels { generation, by_node: HashMap::new() };
        }
        let channel = match channels.by_node.get(&target) {
            Some(c) => c.clone(),
            None => {
                let c = self.endpoint(&addr)?.connect_lazy();
                channels.by_node.insert(target, c.clone());
                c
            }
        };
        Ok(RaftPeerClient::new(channel).max_decoding_message_size(wire::RAFT_MESSAGE_BYTES_MAX).max_encoding_message_size(wire::RAFT_MESSAGE_BYTES_MAX))
    }

    fn endpoint(&self, addr: &str) -> Result<Endpoint, String> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}")).map_err(|e| format!("bad peer address {addr}: {e}"))?;
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.peer_client_config()).map_err(|e| format!("peer TLS settings for {addr}: {e}"))?;
        }
        Ok(endpoint
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_while_idle(true))
    }

    async fn call_raw(&self, target: NodeId, group: GroupId, rpc: Rpc, payload: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, Status> {
        let on_stream = match rpc {
            Rpc::Propose => Some(StreamRpc::Propose),
            Rpc::Read => Some(StreamRpc::Read),
            _ => None,
        };
        if let Some(kind) = on_stream.filter(|kind| kind.takes(payload.len())) {
            let stream = self.stream_to(target).map_err(Status::unavailable)?;
            return stream.call(target, group, kind, payload, timeout).await;
        }
        let client = self.client(target).map_err(Status::unavailable)?;
        send(client, self.fingerprint.clone(), group, rpc, payload, timeout).await
    }

    /// Forwards a command to `target` (believed to lead `group`).
    /// Forwards `command`, routed at `epoch` of `group`'s range, to `target`.
    pub async fn propose(&self, target: NodeId, group: GroupId, epoch: u64, command: &Command) -> Result<(u64, CommandResult), GroupError> {
        let reply = self
            .call_raw(target, group, Rpc::Propose, wire::encode(&(epoch, command)), self.rpc_timeout)
            .await
            .map_err(|s| forward_error(group, target, &s))?;
        wire::decode::<Result<(u64, CommandResult), GroupError>>(&reply).map_err(|reason| GroupError::Unavailable { group, reason })?
    }

    /// Forwards a replica move of `group` to `target` (believed to lead it).
    pub async fn move_replica(&self, target: NodeId, group: GroupId, from: NodeId, to: NodeId, timeout: Duration) -> Result<BTreeSet<NodeId>, GroupError> {
        let reply = self.call_raw(target, group, Rpc::MoveReplica, wire::encode(&(from, to)), timeout).await.map_err(|s| forward_error(group, target, &s))?;
        wire::decode::<Result<BTreeSet<NodeId>, GroupError>>(&reply).map_err(|reason| GroupError::Unavailable { group, reason })?
    }

    /// Forwards a leader move of `group` to `target` (believed to lead it).
    pub async fn transfer_leader(&self, target: NodeId, group: GroupId, to: NodeId, timeout: Duration) -> Result<(), GroupError> {
        let reply = self.call_raw(target, group, Rpc::TransferLeader, wire::encode(&to), timeout).await.map_err(|s| forward_error(group, target, &s))?;
        wire::decode::<Result<(), GroupError>>(&reply).map_err(|reason| GroupError::Unavailable { group, reason })?
    }

    /// Asks `target` to start an election in `group` now.
    pub async fn campaign(&self, target: NodeId, group: GroupId) -> Result<(), GroupError> {
        let reply = self.call_raw(target, group, Rpc::Campaign, Vec::new(), self.rpc_timeout).await.map_err(|s| forward_error(group, target, &s))?;
        wire::decode::<Result<(), GroupError>>(&reply).map_err(|reason| GroupError::Unavailable { group, reason })?
    }

    /// The leaders `target` knows of: (group, leader, term) per replica.
    pub async fn leaders(&self, target: NodeId, timeout: Duration) -> Result<Vec<(GroupId, Option<NodeId>, u64)>, String> {
        let reply = self.call_raw(target, 0, Rpc::Leaders, Vec::new(), timeout).await.map_err(|s| format!("node {target}: {:?}: {}", s.code(), s.message()))?;
        wire::decode(&reply)
    }

    /// Forwards a read to `target`.
    pub async fn read(&self, target: NodeId, group: GroupId, query: &ReadQuery, consistency: Consistency) -> Result<ReadAnswer, GroupError> {
        let reply = self
            .call_raw(target, group, Rpc::Read, wire::encode(&(query, consistency)), self.rpc_timeout)
            .await
            .map_err(|s| forward_error(group, target, &s))?;
        wire::decode::<Result<ReadAnswer, GroupError>>(&reply).map_err(|reason| GroupError::Unavailable { group, reason })?
    }
}

/// A forwarded request's failure: the peer's refusal of invalid input
/// passes through as the client would see it; anything else leaves the
/// outcome unknown.
fn forward_error(group: GroupId, target: NodeId, status: &Status) -> GroupError {
    match status.code() {
        tonic::Code::InvalidArgument => GroupError::Invalid { group, reason: status.message().to_owned() },
        code => GroupError::Unavailable { group, reason: format!("forwarded to node {target}: {code:?}: {}", status.message()) },
    }
}

#[derive(Debug, Clone, Copy)]
enum Rpc {
    Raft(PeerRpc),
    Propose,
    Read,
    MoveReplica,
    TransferLeader,
    Campaign,
    Leaders,
}

async fn send(
    mut client: RaftPeerClient<Channel>,
    fingerprint: AsciiMetadataValue,
    group: GroupId,
    rpc: Rpc,
    payload: Vec<u8>,
    timeout: Duration,
) -> Result<Vec<u8>, Status> {
    let mut request = Request::new(RaftMessage { group_id: group, payload });
    request.set_timeout(timeout);
    request.metadata_mut().insert(FINGERPRINT_METADATA, fingerprint);
    let reply = match rpc {
        Rpc::Raft(PeerRpc::AppendEntries) => client.append_entries(request).await,
        Rpc::Raft(PeerRpc::Vote) => client.vote(request).await,
        Rpc::Raft(PeerRpc::InstallSnapshot) => client.install_snapshot(request).await,
        Rpc::Propose => client.propose(request).await,
        Rpc::Read => client.read(request).await,
        Rpc::MoveReplica => client.move_replica(request).await,
        Rpc::TransferLeader => client.transfer_leader(request).await,
        Rpc::Campaign => client.campaign(request).await,
        Rpc::Leaders => client.leaders(request).await,
    };
    reply.map(|r| r.into_inner().payload)
}

impl PeerNetwork {
    /// The Raft stream to `target`: the running one, or a new one when it
    /// ended or certificates were reloaded since it started.
    fn stream_to(&self, target: NodeId) -> Result<StreamHandle, String> {
        let generation = self.tls.as_ref().map_or(0, |tls| tls.generation());
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(stream) = streams.get(&target).filter(|s| s.is_usable(generation)) {
            return Ok(stream.clone());
        }
        let mut metadata = tonic::metadata::MetadataMap::new();
        metadata.insert(FINGERPRINT_METADATA, self.fingerprint.clone());
        let stream = StreamHandle::start(target, self.client(target)?, metadata, generation);
        streams.insert(target, stream.clone());
        Ok(stream)
    }
}

impl PeerTransport for PeerNetwork {
    fn call(&self, target: NodeId, group: GroupId, rpc: PeerRpc, payload: Vec<u8>, timeout: Duration) -> TransportFuture {
        if StreamRpc::Raft(rpc).takes(payload.len()) {
            let stream = self.stream_to(target);
            return Box::pin(async move {
                let stream = stream.map_err(|reason| TransportError::Unreachable { target, reason })?;
                stream.call(target, group, StreamRpc::Raft(rpc), payload, timeout).await.map_err(|s| crate::peer_stream::transport_error(target, &s))
            });
        }
        let client = self.client(target);
        let fingerprint = self.fingerprint.clone();
        Box::pin(async move {
            let client = client.map_err(|reason| TransportError::Unreachable { target, reason })?;
            send(client, fingerprint, group, Rpc::Raft(rpc), payload, timeout).await.map_err(|s| crate::peer_stream::transport_error(target, &s))
        })
    }
}
