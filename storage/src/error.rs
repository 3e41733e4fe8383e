//! The one error type of the storage crate: every storage failure is fatal
//! for the group that meets it.

use thiserror::Error;

/// Errors of the storage engines. Every one is fatal for the group that hit
/// it: a node cannot serve a group whose storage fails or lies.
#[derive(Debug, Error)]
pub enum StorageError {
    #[error("failed to {op} in the storage engine: {reason}")]
    Io { op: &'static str, reason: String },
    #[error("corrupt record {what}: {reason}")]
    Corrupt { what: String, reason: String },
}
