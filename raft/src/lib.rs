//! stockd Raft layer: openraft type configuration, the RocksDB-backed log
//! store and state machine adapters, the transport-agnostic network adapter,
//! and the per-group proposer that batches concurrent commands into shared
//! Raft entries (group commit).
//!
//! Invariant: every mutation of a position goes through a group's Raft log;
//! apply is driven only by committed entries. Boundary: no tonic here — the
//! node's peer transport (gRPC, in the root crate) implements
//! [`network::PeerTransport`].

// openraft's traits return its `StorageError` (over 200 bytes); our helpers
// return the same type so `?` carries it unchanged.
#![allow(clippy::result_large_err)]

pub mod error;
pub mod group;
pub mod group_engine;
pub mod load;
pub mod log_store;
pub mod network;
pub mod state_machine;
pub mod types;
pub mod wal_sync;
pub mod wire;

pub use error::GroupError;
pub use group::Group;
pub use group::GroupConfig;
pub use group::LEADER_MOVE_VOTERS_MAX;
pub use types::NodeId;
pub use types::TypeConfig;
