//! Input and score drift of the serving version against its training data.
//!
//! `reference_bins.json` holds, for every feature and for the calibrated
//! score, the bin edges and the fraction of training rows in each bin. A
//! value falls in bin `i` = the number of edges strictly less than it (numpy
//! `searchsorted(side="left")`), so there is one bin more than edges.
//!
//! The monitor counts served requests into the same bins over a tumbling
//! window of [`DRIFT_WINDOW_REQUESTS`] requests. When a window is full its
//! PSI figures become the last window's, any PSI above [`PSI_ALERT`] is logged
//! with `tracing::warn`, and the counts start again from zero. The running
//! window's figures are reported too once it has [`DRIFT_MIN_REQUESTS`]
//! requests (fewer are noise). Promoting or rolling back resets the monitor
//! to the new serving version's reference.
//!
//! PSI = Σ (a − e) · ln(a / e) over the bins, `a` the observed fraction and
//! `e` the reference one, each raised to at least [`PSI_EPSILON`] so an empty
//! bin counts as rare rather than impossible.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use serde::Serialize;

use crate::error::ModelError;
use crate::features::FEATURE_COUNT;
use crate::features::FEATURE_NAMES;

/// Floor of a bin fraction in the PSI sum.
pub const PSI_EPSILON: f64 = 1e-4;
/// PSI above which a distribution is reported as shifted.
pub const PSI_ALERT: f64 = 0.25;
/// Requests in one drift window.
pub const DRIFT_WINDOW_REQUESTS: u64 = 5_000;
/// Requests the running window needs before its PSI is reported.
pub const DRIFT_MIN_REQUESTS: u64 = 500;
/// Most bin edges of one distribution.
pub const BIN_EDGES_MAX: usize = 1_000;

/// The binned reference distribution of one value.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Bins {
    pub edges: Vec<f64>,
    pub fractions: Vec<f64>,
}

impl Bins {
    /// Bin of `v`: the number of edges strictly less than `v`.
    pub fn index(&self, v: f64) -> usize {
        self.edges.partition_point(|&edge| edge < v)
    }

    fn validate(&self) -> Result<(), String> {
        if self.edges.len() > BIN_EDGES_MAX {
            return Err(format!("{} edges, the limit is {BIN_EDGES_MAX}", self.edges.len()));
        }
        if self.fractions.len() != self.edges.len() + 1 {
            return Err(format!("{} fractions for {} edges, expected one more fraction than edges", self.fractions.len(), self.edges.len()));
        }
        if self.edges.iter().any(|e| !e.is_finite()) {
            return Err("an edge is not finite".to_owned());
        }
        if let Some(i) = self.edges.windows(2).position(|w| w[1] < w[0]) {
            return Err(format!("edges must be non-decreasing, edge {} > edge {}", i, i + 1));
        }
        if let Some(i) = self.fractions.iter().position(|f| !(0.0..=1.0).contains(f)) {
            return Err(format!("fraction {i} = {} is not in [0, 1]", self.fractions[i]));
        }
        let sum: f64 = self.fractions.iter().sum();
        if (sum - 1.0).abs() > 1e-3 {
            return Err(format!("fractions sum to {sum}, not 1"));
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
struct ReferenceBinsFile {
    features: BTreeMap<String, Bins>,
    score: Bins,
}

/// The reference distributions of a version, features in tensor order.
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceBins {
    pub features: Vec<Bins>,
    pub score: Bins,
}

impl ReferenceBins {
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Self, ModelError> {
        let mut file: ReferenceBinsFile = serde_json::from_slice(bytes).map_err(|source| ModelError::Json { path: path.to_owned(), source })?;
        let invalid = |reason: String| ModelError::ReferenceBins { path: path.to_owned(), reason };
        let mut features = Vec::with_capacity(FEATURE_COUNT);
        for name in FEATURE_NAMES {
            let bins = file.features.remove(name).ok_or_else(|| invalid(format!("no bins for feature {name}")))?;
            bins.validate().map_err(|reason| invalid(format!("feature {name}: {reason}")))?;
            features.push(bins);
        }
        file.score.validate().map_err(|reason| invalid(format!("score: {reason}")))?;
        Ok(Self { features, score: file.score })
    }
}

/// PSI of observed bin counts against reference fractions (see the module
/// documentation). An empty observation has no drift: 0.
pub fn psi(counts: &[u64], reference: &[f64]) -> f64 {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return 0.0;
    }
    counts
        .iter()
        .zip(reference)
        .map(|(&count, &expected)| {
            let a = (count as f64 / total as f64).max(PSI_EPSILON);
            let e = expected.max(PSI_EPSILON);
            (a - e) * (a / e).ln()
        })
        .sum()
}

/// PSI of one feature.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeaturePsi {
    pub feature: &'static str,
    pub psi: f64,
}

/// PSI figures of one window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DriftReport {
    pub requests: u64,
    pub features: Vec<FeaturePsi>,
    pub score_psi: f64,
    pub max_feature_psi: f64,
    /// Features (and `score`) whose PSI is above [`PSI_ALERT`].
    pub alerts: Vec<&'static str>,
}

/// Drift as the status shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DriftStatus {
    /// Version whose reference the counts are compared with.
    pub version: Option<String>,
    pub window_requests: u64,
    pub alert_psi: f64,
    pub windows_completed: u64,
    pub current_requests: u64,
    pub last_window: Option<DriftReport>,
    /// The running window, once it has enough requests.
    pub current_window: Option<DriftReport>,
}

/// Counts of served requests per reference bin, for the serving version.
#[derive(Debug)]
pub struct DriftMonitor {
    version: Option<String>,
    reference: Option<Arc<ReferenceBins>>,
    window: u64,
    feature_counts: Vec<Vec<u64>>,
    score_counts: Vec<u64>,
    requests: u64,
    windows_completed: u64,
    last: Option<DriftReport>,
}

impl DriftMonitor {
    /// A monitor with no reference: it counts nothing until [`Self::reset`].
    pub fn new(window: u64) -> Self {
        Self {
            version: None,
            reference: None,
            window: window.max(1),
            feature_counts: Vec::new(),
            score_counts: Vec::new(),
            requests: 0,
            windows_completed: 0,
            last: None,
        }
    }

    /// Starts over against `version`'s reference.
    pub fn reset(&mut self, version: Option<(String, Arc<ReferenceBins>)>) {
        let window = self.window;
        *self = Self::new(window);
        if let Some((version, reference)) = version {
            self.feature_counts = reference.features.iter().map(|bins| vec![0; bins.fractions.len()]).collect();
            self.score_counts = vec![0; reference.score.fractions.len()];
            self.version = Some(version);
            self.reference = Some(reference);
        }
    }

    pub fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }

    /// Counts one request scored by `version`; requests of other versions are
    /// not compared with this reference and are ignored.
    pub fn record(&mut self, version: &str, features: &[f32; FEATURE_COUNT], score: f64) {
        let Some(reference) = &self.reference else { return };
        if self.version.as_deref() != Some(version) {
            return;
        }
        for ((bins, counts), value) in reference.features.iter().zip(&mut self.feature_counts).zip(features) {
            counts[bins.index(f64::from(*value))] += 1;
        }
        self.score_counts[reference.score.index(score)] += 1;
        self.requests += 1;
        if self.requests >= self.window {
            let report = self.report();
            for feature in &report.alerts {
                let psi = report.features.iter().find(|f| f.feature == *feature).map_or(report.score_psi, |f| f.psi);
                tracing::warn!(version, feature, psi, requests = report.requests, "model input drift above the alert PSI");
            }
            self.last = Some(report);
            self.windows_completed += 1;
            self.requests = 0;
            self.feature_counts.iter_mut().for_each(|c| c.fill(0));
            self.score_counts.fill(0);
        }
    }

    fn report(&self) -> DriftReport {
        let mut features = Vec::with_capacity(FEATURE_COUNT);
        let mut alerts = Vec::new();
        let mut max_feature_psi = 0.0f64;
        let mut score_psi = 0.0;
        if let Some(reference) = &self.reference {
            for ((name, bins), counts) in FEATURE_NAMES.iter().zip(&reference.features).zip(&self.feature_counts) {
                let value = psi(counts, &bins.fractions);
                max_feature_psi = max_feature_psi.max(value);
                if value > PSI_ALERT {
                    alerts.push(*name);
                }
                features.push(FeaturePsi { feature: name, psi: value });
            }
            score_psi = psi(&self.score_counts, &reference.score.fractions);
            if score_psi > PSI_ALERT {
                alerts.push("score");
            }
        }
        DriftReport { requests: self.requests, features, score_psi, max_feature_psi, alerts }
    }

    pub fn status(&self) -> DriftStatus {
        DriftStatus {
            version: self.version.clone(),
            window_requests: self.window,
            alert_psi: PSI_ALERT,
            windows_completed: self.windows_completed,
            current_requests: self.requests,
            last_window: self.last.clone(),
            current_window: (self.requests >= DRIFT_MIN_REQUESTS.min(self.window)).then(|| self.report()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uniform_bins() -> Bins {
        // Ten equal bins over [0, 1).
        Bins { edges: (1..10).map(|i| f64::from(i) / 10.0).collect(), fractions: vec![0.1; 10] }
    }

    fn reference() -> Arc<ReferenceBins> {
        Arc::new(ReferenceBins { features: vec![uniform_bins(); FEATURE_COUNT], score: uniform_bins() })
    }

    /// Deterministic values spread evenly over [0, 1), shifted by `shift`.
    fn values(n: u64, shift: f64) -> impl Iterator<Item = f64> {
        (0..n).map(move |i| ((i * 7919 % n) as f64 + 0.5) / n as f64 * (1.0 - shift) + shift)
    }

    #[test]
    fn bin_index_is_searchsorted_left() {
        let bins = Bins { edges: vec![1.0, 2.0, 2.0, 3.0], fractions: vec![0.2; 5] };
        assert_eq!(bins.index(0.5), 0);
        assert_eq!(bins.index(1.0), 0, "an edge equal to the value is not below it");
        assert_eq!(bins.index(1.5), 1);
        assert_eq!(bins.index(2.0), 1);
        assert_eq!(bins.index(2.5), 3);
        assert_eq!(bins.index(3.0), 3);
        assert_eq!(bins.index(9.0), 4);
    }

    #[test]
    fn psi_of_the_reference_distribution_is_about_zero() {
        let bins = uniform_bins();
        let mut counts = vec![0u64; 10];
        for v in values(10_000, 0.0) {
            counts[bins.index(v)] += 1;
        }
        let value = psi(&counts, &bins.fractions);
        assert!(value.abs() < 1e-3, "psi {value}");
    }

    #[test]
    fn psi_of_a_shifted_distribution_is_above_the_alert() {
        let bins = uniform_bins();
        let mut counts = vec![0u64; 10];
        for v in values(10_000, 0.5) {
            counts[bins.index(v)] += 1;
        }
        let value = psi(&counts, &bins.fractions);
        assert!(value > PSI_ALERT, "psi {value}");
        assert!(psi(&[], &[]) == 0.0);
    }

    #[test]
    fn psi_follows_the_formula_with_an_epsilon_for_empty_bins() {
        let value = psi(&[3, 1, 0], &[0.5, 0.25, 0.25]);
        let expected = (0.75f64 - 0.5) * (0.75f64 / 0.5).ln() + 0.0 + (PSI_EPSILON - 0.25) * (PSI_EPSILON / 0.25).ln();
        assert!((value - expected).abs() < 1e-12, "{value} vs {expected}");
    }

    #[test]
    fn monitor_reports_windows_and_flags_shifted_features() {
        let mut monitor = DriftMonitor::new(1_000);
        monitor.reset(Some(("v1".to_owned(), reference())));
        let mut row = [0.0f32; FEATURE_COUNT];
        for (i, v) in values(1_000, 0.0).enumerate() {
            row.fill(v as f32);
            // quantity is shifted to the top half of its range.
            row[0] = (0.5 + (i as f64 / 2_000.0)) as f32;
            monitor.record("v1", &row, v);
            monitor.record("v2", &row, 0.99);
        }
        let status = monitor.status();
        assert_eq!(status.windows_completed, 1);
        assert_eq!(status.current_requests, 0);
        let last = status.last_window.expect("a full window");
        assert_eq!(last.requests, 1_000);
        assert_eq!(last.alerts, vec!["quantity"], "{last:?}");
        assert!(last.score_psi < 0.01, "{}", last.score_psi);
        assert!(last.features[1].psi < 0.01);
        assert!(last.max_feature_psi > PSI_ALERT);
    }

    #[test]
    fn reference_bins_parse_checks_every_feature() {
        let bins = serde_json::json!({"edges": [0.5], "fractions": [0.5, 0.5]});
        let mut features = serde_json::Map::new();
        for name in FEATURE_NAMES {
            features.insert(name.to_owned(), bins.clone());
        }
        let good = serde_json::json!({"features": features, "score": bins});
        let parsed = ReferenceBins::parse(Path::new("r.json"), good.to_string().as_bytes()).expect("valid bins");
        assert_eq!(parsed.features.len(), FEATURE_COUNT);

        let mut missing = good.clone();
        missing["features"].as_object_mut().expect("object").remove("promo");
        let err = ReferenceBins::parse(Path::new("r.json"), missing.to_string().as_bytes()).expect_err("missing feature");
        assert!(err.to_string().contains("promo"), "{err}");

        let mut uneven = good;
        uneven["score"] = serde_json::json!({"edges": [0.5], "fractions": [1.0]});
        assert!(ReferenceBins::parse(Path::new("r.json"), uneven.to_string().as_bytes()).is_err());
    }
}
