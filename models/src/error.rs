//! Errors of the serving side.
//!
//! [`ModelError`] is what loading, verifying and operating models can go
//! wrong with; it carries the path, version or figure that failed so that an
//! operator can act on the message alone. [`ScoreError`] is what one scoring
//! call can return: every variant is retryable or means "decide without the
//! model", none of them is fatal to the node.

use std::path::PathBuf;

use serde::Serialize;

/// Loading, verification and operation errors.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("invalid scoring config: {reason}")]
    Config { reason: String },

    #[error("read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("parse {path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("invalid manifest {path}: {reason}")]
    Manifest { path: PathBuf, reason: String },

    #[error("checksum mismatch on {path}: manifest says sha256 {expected}, file has {actual}")]
    Checksum { path: PathBuf, expected: String, actual: String },

    #[error("feature list of {path} differs from the serving contract at column {index}: expected {expected:?}, found {found:?}")]
    Features { path: PathBuf, index: usize, expected: Option<String>, found: Option<String> },

    #[error("invalid calibration of the {model} model: {reason}")]
    Calibration { model: &'static str, reason: String },

    #[error("invalid reference bins {path}: {reason}")]
    ReferenceBins { path: PathBuf, reason: String },

    #[error("invalid golden file {path}: {reason}")]
    Golden { path: PathBuf, reason: String },

    #[error("{version} {model} model disagrees with golden row {row} on {field}: expected {expected}, computed {actual} (tolerance {tolerance})")]
    GoldenMismatch { version: String, model: &'static str, row: usize, field: &'static str, expected: f64, actual: f64, tolerance: f64 },

    #[error("onnxruntime library not found; tried {}", display_paths(tried))]
    RuntimeNotFound { tried: Vec<PathBuf> },

    #[error("load onnxruntime from {dylib}: {reason}")]
    RuntimeLoad { dylib: PathBuf, reason: String },

    #[error("onnxruntime is already loaded from {loaded} in this process; cannot also load {requested}")]
    RuntimeConflict { loaded: PathBuf, requested: PathBuf },

    #[error("onnxruntime is unavailable: {reason}")]
    RuntimeUnavailable { reason: String },

    #[error("create an onnxruntime session for {path}: {reason}")]
    Session { path: PathBuf, reason: String },

    #[error("model {path} does not have the expected signature: {reason}")]
    Signature { path: PathBuf, reason: String },

    #[error("run the model: {reason}")]
    Inference { reason: String },

    #[error("version {version} is already loaded from other bytes (loaded manifest sha256 {loaded_sha256}, new {new_sha256})")]
    VersionConflict { version: String, loaded_sha256: String, new_sha256: String },

    #[error("version {version} is not loaded")]
    UnknownVersion { version: String },

    #[error("{loaded} versions are loaded, the limit is {limit}")]
    TooManyVersions { loaded: usize, limit: usize },

    #[error("no previous version to roll back to")]
    NoPrevious,

    #[error("invalid candidate: {reason}")]
    Candidate { reason: String },

    #[error("the scoring worker has stopped")]
    WorkerStopped,
}

fn display_paths(paths: &[PathBuf]) -> String {
    if paths.is_empty() {
        return "no path".to_owned();
    }
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

/// Why one scoring call has no score. The caller decides without the model.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ScoreError {
    /// The deadline passed before the model answered.
    #[error("scoring timed out after {deadline_us} us")]
    Timeout { deadline_us: u64 },
    /// The request queue is full.
    #[error("scoring queue is full ({queue_max} requests)")]
    Overloaded { queue_max: usize },
    /// The kill switch is on.
    #[error("scoring is disabled by the kill switch")]
    Disabled,
    /// No runtime or no valid model: the reason says which.
    #[error("scoring unavailable: {reason}")]
    Unavailable { reason: String },
    /// Both the primary and the fallback model failed on this request.
    #[error("scoring failed: {reason}")]
    Failed { reason: String },
}
