//! The peer plane's Raft stream (`RaftPeer/RaftStream`): the Raft messages,
//! forwarded commands and forwarded reads of every group from one node to
//! another travel on one long-lived gRPC stream instead of a call each
//! (TiKV's `BatchRaftMessage`). A call costs
//! an HTTP/2 stream of its own (headers, HPACK, a task on each side, the
//! security layer's check); on the stream a message is a few bytes of
//! framing, and the messages queued while a frame was being written go
//! together in the next one, and so do their replies.
//!
//! - Sender (`StreamHandle`, one per peer, opened on its first message):
//!   messages wait in a bounded queue (`STREAM_QUEUE_MAX`; a full queue
//!   refuses at once, and openraft sends again); a writer task takes what
//!   is queued into one frame; a reader task hands each reply to its
//!   caller by id. Every message keeps its own deadline: a caller that
//!   gives up forgets its id, and a late reply is dropped. When the stream
//!   ends (the peer stopped, the connection broke, certificates were
//!   reloaded) every message still waiting fails, and the next message
//!   opens a new stream.
//! - Receiver (`peer_service::serve_stream`): each message is handled on its own task, as the
//!   unary call would handle it (the same checks, with the caller the
//!   stream was opened by), within the sender's deadline, at most
//!   `STREAM_HANDLING_MAX` at once per stream; replies go back in frames as
//!   they complete, so one slow group holds back no other. The stream ends
//!   when the node stops.
//!
//! Messages of at most `STREAM_MESSAGE_BYTES_MAX` take the stream: a
//! snapshot chunk, a long catch-up batch or a merge keeps its own call, so
//! it never holds back the heartbeats queued behind it.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use raft::network::PeerRpc;
use raft::network::TransportError;
use raft::NodeId;
use storage::model::GroupId;
use tokio::sync::mpsc;
use tokio::sync::oneshot;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tonic::Code;
use tonic::Status;

use crate::proto::peer::raft_peer_client::RaftPeerClient;
use crate::proto::peer::RaftEnvelope;
use crate::proto::peer::RaftFrame;

/// Largest Raft message sent on the stream; a larger one takes a call of
/// its own.
pub const STREAM_MESSAGE_BYTES_MAX: usize = 256 << 10;
/// Most messages waiting for a frame, per peer; past it a message is
/// refused at once.
pub const STREAM_QUEUE_MAX: usize = 4096;
/// Most messages in one frame.
pub const FRAME_MESSAGES_MAX: usize = 256;
/// A frame takes no further message once its payloads reach this size.
pub const FRAME_BYTES_MAX: usize = 1 << 20;
/// Frames written but not yet taken by the connection; past it, HTTP/2
/// flow control holds the writer back and messages queue.
pub const FRAMES_QUEUED_MAX: usize = 16;
/// Most messages of one stream its receiver handles at once.
pub const STREAM_HANDLING_MAX: usize = 1024;
/// Longest a sender waits for its stream to open.
const OPEN_TIMEOUT: Duration = Duration::from_secs(2);

type Reply = oneshot::Sender<Result<Vec<u8>, Status>>;
type Pending = Arc<Mutex<HashMap<u64, Reply>>>;

fn lock(pending: &Pending) -> std::sync::MutexGuard<'_, HashMap<u64, Reply>> {
    pending.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a message of the stream asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamRpc {
    Raft(PeerRpc),
    /// A command forwarded to its group's leader (`RaftPeer/Propose`).
    Propose,
    /// A read forwarded to a replica (`RaftPeer/Read`).
    Read,
}

impl StreamRpc {
    fn code(self) -> u32 {
        match self {
            StreamRpc::Raft(PeerRpc::AppendEntries) => 1,
            StreamRpc::Raft(PeerRpc::Vote) => 2,
            StreamRpc::Raft(PeerRpc::InstallSnapshot) => 3,
            StreamRpc::Propose => 4,
            StreamRpc::Read => 5,
        }
    }

    /// The kinds a receiver takes on the stream.
    pub fn of(code: u32) -> Option<StreamRpc> {
        match code {
            1 => Some(StreamRpc::Raft(PeerRpc::AppendEntries)),
            2 => Some(StreamRpc::Raft(PeerRpc::Vote)),
            4 => Some(StreamRpc::Propose),
            5 => Some(StreamRpc::Read),
            _ => None,
        }
    }

    /// Whether a message of this kind with a payload of `bytes` goes on
    /// the stream.
    pub fn takes(self, bytes: usize) -> bool {
        !matches!(self, StreamRpc::Raft(PeerRpc::InstallSnapshot)) && bytes <= STREAM_MESSAGE_BYTES_MAX
    }
}

/// The stream to one peer, as the senders of its messages hold it.
#[derive(Clone)]
pub struct StreamHandle {
    queue: mpsc::Sender<RaftEnvelope>,
    pending: Pending,
    next_id: Arc<AtomicU64>,
    /// The TLS generation of the channel it runs on.
    generation: u64,
}

impl StreamHandle {
    /// Starts the stream's task; it opens the stream on the first message.
    pub fn start(target: NodeId, client: RaftPeerClient<Channel>, metadata: MetadataMap, generation: u64) -> StreamHandle {
        let (queue, rx) = mpsc::channel(STREAM_QUEUE_MAX);
        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        tokio::spawn(run(target, client, metadata, rx, pending.clone()));
        StreamHandle { queue, pending, next_id: Arc::new(AtomicU64::new(1)), generation }
    }

    /// False once the stream ended, or when certificates were reloaded since
    /// it started (`generation` is today's).
    pub fn is_usable(&self, generation: u64) -> bool {
        !self.queue.is_closed() && self.generation == generation
    }

    /// Sends one message of `group` to `target` and waits, at most
    /// `timeout`, for its reply: the payload, or the receiver's refusal
    /// (UNAVAILABLE when the message may not have reached it).
    pub async fn call(&self, target: NodeId, group: GroupId, rpc: StreamRpc, payload: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, Status> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, replied) = oneshot::channel();
        lock(&self.pending).insert(id, reply);
        let timeout_ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
        let envelope = RaftEnvelope { id, group_id: group, rpc: rpc.code(), payload, code: 0, error: String::new(), timeout_ms };
        if let Err(e) = self.queue.try_send(envelope) {
            lock(&self.pending).remove(&id);
            return Err(Status::unavailable(match e {
                mpsc::error::TrySendError::Full(_) => format!("the stream to node {target} has {STREAM_QUEUE_MAX} messages queued; not sent"),
                mpsc::error::TrySendError::Closed(_) => format!("the stream to node {target} ended; not sent"),
            }));
        }
        match tokio::time::timeout(timeout, replied).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Status::unavailable(format!("the stream to node {target} ended before the reply"))),
            Err(_) => {
                lock(&self.pending).remove(&id);
                Err(Status::deadline_exceeded(format!("no reply from node {target} on the stream within {} ms", timeout.as_millis())))
            }
        }
    }
}

/// The transport error of a Raft message's failed call, as openraft takes
/// it: UNAVAILABLE is an unreachable peer, anything else a failed call.
pub fn transport_error(target: NodeId, status: &Status) -> TransportError {
    match status.code() {
        Code::Unavailable => TransportError::Unreachable { target, reason: status.message().to_owned() },
        code => TransportError::Failed { target, reason: format!("{code:?}: {}", status.message()) },
    }
}

/// The stream's task: runs it until it ends, then fails every message
/// still waiting.
async fn run(target: NodeId, mut client: RaftPeerClient<Channel>, metadata: MetadataMap, mut rx: mpsc::Receiver<RaftEnvelope>, pending: Pending) {
    let why = carry(&mut client, metadata, &mut rx, &pending).await;
    tracing::debug!(target, reason = %why, "raft stream ended");
    rx.close();
    let mut failed: Vec<Reply> = Vec::new();
    {
        let mut waiting = lock(&pending);
        while let Ok(envelope) = rx.try_recv() {
            failed.extend(waiting.remove(&envelope.id));
        }
        failed.extend(waiting.drain().map(|(_, reply)| reply));
    }
    for reply in failed {
        let _ = reply.send(Err(Status::unavailable(format!("the stream to node {target}: {why}"))));
    }
}

/// Opens the stream on the first message, then writes frames and hands out
/// replies until either side ends; answers why it ended.
async fn carry(client: &mut RaftPeerClient<Channel>, metadata: MetadataMap, rx: &mut mpsc::Receiver<RaftEnvelope>, pending: &Pending) -> String {
    let Some(first) = rx.recv().await else { return "no sender is left".into() };
    let (frames, outbound) = mpsc::channel::<RaftFrame>(FRAMES_QUEUED_MAX);
    if frames.try_send(take_frame(first, rx)).is_err() {
        return "the first frame was not queued".into();
    }
    let mut request = tonic::Request::new(ReceiverStream::new(outbound));
    *request.metadata_mut() = metadata;
    let mut inbound = match tokio::time::timeout(OPEN_TIMEOUT, client.raft_stream(request)).await {
        Ok(Ok(response)) => response.into_inner(),
        Ok(Err(status)) => return format!("refused: {:?}: {}", status.code(), status.message()),
        Err(_) => return format!("not opened within {} ms", OPEN_TIMEOUT.as_millis()),
    };
    let replies = async {
        loop {
            match inbound.message().await {
                Ok(Some(frame)) => deliver(pending, frame),
                Ok(None) => return "the peer ended it".to_owned(),
                Err(status) => return format!("{:?}: {}", status.code(), status.message()),
            }
        }
    };
    let sends = async {
        while let Some(first) = rx.recv().await {
            if frames.send(take_frame(first, rx)).await.is_err() {
                return "the connection dropped it".to_owned();
            }
        }
        "no sender is left".to_owned()
    };
    tokio::select! {
        why = replies => why,
        why = sends => why,
    }
}

/// `first` and whatever else is queued, up to a frame's limits.
fn take_frame(first: RaftEnvelope, rx: &mut mpsc::Receiver<RaftEnvelope>) -> RaftFrame {
    let mut bytes = first.payload.len();
    let mut messages = vec![first];
    while messages.len() < FRAME_MESSAGES_MAX && bytes < FRAME_BYTES_MAX {
        match rx.try_recv() {
            Ok(next) => {
                bytes += next.payload.len();
                messages.push(next);
            }
            Err(_) => break,
        }
    }
    RaftFrame { messages }
}

/// Hands each reply of `frame` to the caller still waiting for it.
fn deliver(pending: &Pending, frame: RaftFrame) {
    let mut answered = Vec::with_capacity(frame.messages.len());
    {
        let mut waiting = lock(pending);
        for reply in frame.messages {
            if let Some(caller) = waiting.remove(&reply.id) {
                answered.push((caller, reply));
            }
        }
    }
    for (caller, reply) in answered {
        let result = match Code::from(reply.code) {
            Code::Ok => Ok(reply.payload),
            code => Err(Status::new(code, reply.error)),
        };
        let _ = caller.send(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_and_large_messages_keep_calls_of_their_own() {
        assert!(StreamRpc::Raft(PeerRpc::AppendEntries).takes(STREAM_MESSAGE_BYTES_MAX));
        assert!(!StreamRpc::Raft(PeerRpc::AppendEntries).takes(STREAM_MESSAGE_BYTES_MAX + 1));
        assert!(!StreamRpc::Raft(PeerRpc::InstallSnapshot).takes(1));
        for kind in [StreamRpc::Raft(PeerRpc::AppendEntries), StreamRpc::Raft(PeerRpc::Vote), StreamRpc::Propose, StreamRpc::Read] {
            assert_eq!(StreamRpc::of(kind.code()), Some(kind), "a receiver takes what a sender sends");
        }
        assert_eq!(StreamRpc::of(StreamRpc::Raft(PeerRpc::InstallSnapshot).code()), None);
    }

    #[tokio::test]
    async fn a_frame_takes_what_is_queued_up_to_its_limits() {
        let (tx, mut rx) = mpsc::channel(FRAME_MESSAGES_MAX * 2);
        let message = |id: u64, bytes: usize| RaftEnvelope { id, group_id: 1, rpc: 1, payload: vec![0; bytes], code: 0, error: String::new(), timeout_ms: 1 };
        for id in 1..=FRAME_MESSAGES_MAX as u64 + 10 {
            tx.try_send(message(id, 10)).expect("queued");
        }
        let first = rx.try_recv().expect("first");
        assert_eq!(take_frame(first, &mut rx).messages.len(), FRAME_MESSAGES_MAX, "at most FRAME_MESSAGES_MAX");
        let first = rx.try_recv().expect("next");
        assert_eq!(take_frame(first, &mut rx).messages.len(), 10, "then the rest");
        tx.try_send(message(900, FRAME_BYTES_MAX)).expect("queued");
        tx.try_send(message(901, 10)).expect("queued");
        let first = rx.try_recv().expect("large");
        assert_eq!(take_frame(first, &mut rx).messages.len(), 1, "a full frame takes no more");
    }
}
