//! The probable path's model side: the feature contract shared by the
//! simulator (training export) and the server (serving), the simulator, and
//! ONNX serving with `ort`.
//!
//! Invariant: features are computed by exactly one function,
//! [`features::compute`], whoever calls it. Boundary: this crate knows no
//! tonic and no openraft; it reads positions through `storage` types only.

pub mod features;
pub mod policy;
pub mod sim;

// ONNX serving.
pub mod batcher;
pub mod calibration;
pub mod drift;
pub mod error;
pub mod manifest;
pub mod registry;
pub mod runtime;
pub mod score;
pub mod scorer;

pub use error::ModelError;
pub use error::ScoreError;
pub use manifest::Thresholds;
pub use registry::Arm;
pub use registry::Variant;
pub use score::Score;
pub use scorer::ModelStatus;
pub use scorer::Scorer;
pub use scorer::ScoringConfig;
