//! openraft's type configuration for stockd: node ids, the entry payload
//! (a batch of commands) and what applying one returns.

use std::io::Cursor;

use serde::Deserialize;
use serde::Serialize;
use storage::model::Batch;
use storage::model::CommandResult;

pub type NodeId = u64;

/// The result of applying one Raft entry: one result per command of the
/// batch, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchResponse {
    pub log_index: u64,
    pub results: Vec<CommandResult>,
}

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Batch,
        R = BatchResponse,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
pub type StorageError = openraft::StorageError<NodeId>;
