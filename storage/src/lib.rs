//! stockd storage: the deterministic inventory state machine and the storage
//! engines it persists to.
//!
//! Invariant: nothing in this crate reads the clock, a random source, the
//! network or a model; `Inventory::apply_batch` is a pure function of the
//! state and the batch. Boundary: no openraft, tonic or ort here — the Raft
//! layer (`raft`) drives this crate, never the other way round.

pub mod cart;
pub mod codec;
pub mod engine;
pub mod error;
pub mod keys;
pub mod mem;
pub mod model;
#[cfg(feature = "rocks")]
pub mod rocks;

pub use engine::Durability;
pub use engine::Engine;
pub use engine::Table;
pub use engine::WriteBatch;
pub use error::StorageError;
pub use mem::MemEngine;
#[cfg(feature = "rocks")]
pub use rocks::RocksEngine;
pub mod inventory;
pub mod range;
pub mod split;
pub mod topology;
pub mod validate;
