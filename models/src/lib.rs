//! The probable path's model side: the feature contract shared by the
//! simulator (training export) and the server (serving), the simulator, and
//! ONNX serving with `ort`.
//!
//! Invariant: features are computed by exactly one function,
//! [`features::compute`], whoever calls it. Boundary: this crate knows no
//! tonic and no openraft; it reads positions through `storage` types only.

pub mod features;
pub mod sim;
