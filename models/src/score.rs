//! What scoring one request gives: shared by the scoring worker (which makes
//! it) and the scorer (which hands it to callers).

use serde::Serialize;

use crate::registry::Arm;
use crate::registry::Variant;

/// One request's score.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Score {
    /// Calibrated P(sellable).
    pub p_sellable: f64,
    /// The model's own P(sellable), before calibration.
    pub raw: f64,
    pub model_version: String,
    pub variant: Variant,
    pub arm: Arm,
}
