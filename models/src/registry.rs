//! Model versions: verifying one from its directory, and which loaded
//! version serves, which is the candidate, and which came before.
//!
//! A version is loaded only after every file matched its SHA-256, its
//! feature list matched [`crate::features::FEATURE_NAMES`], and the Rust-side
//! scores of every golden row matched the pipeline's: raw within
//! [`GOLDEN_RAW_TOLERANCE`], calibrated within [`GOLDEN_CALIBRATED_TOLERANCE`],
//! for the primary and the fallback model, in one batch and row 0 alone.
//!
//! Routing is plain data ([`Registry`]); the scorer holds it behind a lock and
//! resolves each request with [`Registry::route`]. The A/B arm of a request is
//! `fnv1a64(route_key) % 100 < ab_percent`: FNV-1a 64 (offset basis
//! 0xcbf29ce484222325, prime 0x100000001b3) over the key's UTF-8 bytes, so a
//! key stays on its arm across requests, processes and nodes.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

use crate::calibration::Calibration;
use crate::drift::ReferenceBins;
use crate::error::ModelError;
use crate::features::FEATURE_COUNT;
use crate::manifest::read_verified;
use crate::manifest::sha256_hex;
use crate::manifest::Golden;
use crate::manifest::Manifest;
use crate::manifest::Thresholds;
use crate::runtime::ModelSession;
use crate::runtime::Runtime;

/// Largest |Rust raw − golden raw| accepted.
pub const GOLDEN_RAW_TOLERANCE: f64 = 1e-5;
/// Largest |Rust calibrated − golden calibrated| accepted.
pub const GOLDEN_CALIBRATED_TOLERANCE: f64 = 1e-6;
/// Most versions loaded at once.
pub const VERSIONS_MAX: usize = 16;
/// One-line file in the model directory naming the version to serve at start.
pub const SERVING_FILE: &str = "SERVING";
/// Golden rows scored per session call while verifying.
const GOLDEN_BATCH_ROWS: usize = 256;

/// Which model of a version produced a score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    Primary,
    Fallback,
}

/// Which arm of an A/B split a request was routed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Arm {
    Serving,
    Candidate,
}

/// What the status shows of a loaded version.
#[derive(Debug, Clone, Serialize)]
pub struct VersionInfo {
    pub version: String,
    pub dir: PathBuf,
    pub created_at: String,
    /// SHA-256 of `manifest.json`, which pins every other file.
    pub manifest_sha256: String,
    /// SHA-256 of the primary model (`model.onnx`).
    pub model_sha256: String,
    pub fallback_sha256: String,
    pub primary_kind: String,
    pub fallback_kind: String,
    pub primary_calibration: &'static str,
    pub fallback_calibration: &'static str,
    pub thresholds: Thresholds,
    pub golden_rows: usize,
    #[serde(skip)]
    pub reference: Arc<ReferenceBins>,
}

/// The two sessions of a version and their calibrations.
#[derive(Debug)]
pub struct VersionModels {
    pub primary: ModelSession,
    pub fallback: ModelSession,
    pub primary_calibration: Calibration,
    pub fallback_calibration: Calibration,
}

impl VersionModels {
    pub fn session(&mut self, variant: Variant) -> (&mut ModelSession, &Calibration) {
        match variant {
            Variant::Primary => (&mut self.primary, &self.primary_calibration),
            Variant::Fallback => (&mut self.fallback, &self.fallback_calibration),
        }
    }
}

/// A version that passed every check.
#[derive(Debug)]
pub struct VerifiedVersion {
    pub info: VersionInfo,
    pub models: VersionModels,
}

/// Reads, checks and test-scores the version in `dir`.
pub fn verify_version(runtime: &Runtime, dir: &Path) -> Result<VerifiedVersion, ModelError> {
    let (manifest, manifest_bytes) = Manifest::read(dir)?;
    let (primary_path, primary_bytes) = read_verified(dir, &manifest.primary.artefact())?;
    let (fallback_path, fallback_bytes) = read_verified(dir, &manifest.fallback.artefact())?;
    let (golden_path, golden_bytes) = read_verified(dir, &manifest.golden)?;
    let (bins_path, bins_bytes) = read_verified(dir, &manifest.reference_bins)?;
    let (metrics_path, metrics_bytes) = read_verified(dir, &manifest.metrics)?;
    serde_json::from_slice::<serde_json::Value>(&metrics_bytes).map_err(|source| ModelError::Json { path: metrics_path, source })?;
    let golden = Golden::parse(&golden_path, &golden_bytes)?;
    let reference = ReferenceBins::parse(&bins_path, &bins_bytes)?;

    let mut models = VersionModels {
        primary: runtime.session(&primary_path, &primary_bytes, &manifest.primary.input, &manifest.primary.output)?,
        fallback: runtime.session(&fallback_path, &fallback_bytes, &manifest.fallback.input, &manifest.fallback.output)?,
        primary_calibration: manifest.primary.calibration.clone(),
        fallback_calibration: manifest.fallback.calibration.clone(),
    };
    check_golden(&manifest.version, &mut models, &golden)?;

    let info = VersionInfo {
        version: manifest.version.clone(),
        dir: dir.to_owned(),
        created_at: manifest.created_at.clone(),
        manifest_sha256: sha256_hex(&manifest_bytes),
        model_sha256: manifest.primary.sha256.to_ascii_lowercase(),
        fallback_sha256: manifest.fallback.sha256.to_ascii_lowercase(),
        primary_kind: manifest.primary.kind.clone(),
        fallback_kind: manifest.fallback.kind.clone(),
        primary_calibration: manifest.primary.calibration.method(),
        fallback_calibration: manifest.fallback.calibration.method(),
        thresholds: manifest.thresholds,
        golden_rows: golden.rows.len(),
        reference: Arc::new(reference),
    };
    Ok(VerifiedVersion { info, models })
}

fn check_golden(version: &str, models: &mut VersionModels, golden: &Golden) -> Result<(), ModelError> {
    let rows: Vec<[f32; FEATURE_COUNT]> = golden.rows.iter().map(|r| r.values()).collect();
    for variant in [Variant::Primary, Variant::Fallback] {
        let model = match variant {
            Variant::Primary => "primary",
            Variant::Fallback => "fallback",
        };
        let (session, calibration) = models.session(variant);
        let mut raw = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(GOLDEN_BATCH_ROWS) {
            raw.extend(session.run(chunk)?);
        }
        // Batch 1 is the common serving case: it must agree too.
        let alone = session.run(&rows[..1])?;
        raw.push(alone[0]);
        let expected_rows = golden.rows.iter().chain(std::iter::once(&golden.rows[0]));
        for (row, (expected, actual_raw)) in expected_rows.zip(raw).enumerate() {
            let row = row % golden.rows.len();
            let (want_raw, want_calibrated) = match variant {
                Variant::Primary => (expected.primary_raw, expected.primary_calibrated),
                Variant::Fallback => (expected.fallback_raw, expected.fallback_calibrated),
            };
            let mismatch =
                |field, expected, actual, tolerance| ModelError::GoldenMismatch { version: version.to_owned(), model, row, field, expected, actual, tolerance };
            if !within(actual_raw, want_raw, GOLDEN_RAW_TOLERANCE) {
                return Err(mismatch("raw", want_raw, actual_raw, GOLDEN_RAW_TOLERANCE));
            }
            let calibrated = calibration.apply(actual_raw);
            if !within(calibrated, want_calibrated, GOLDEN_CALIBRATED_TOLERANCE) {
                return Err(mismatch("calibrated", want_calibrated, calibrated, GOLDEN_CALIBRATED_TOLERANCE));
            }
        }
    }
    Ok(())
}

/// `|a − b| <= tolerance`; false if either is NaN.
fn within(a: f64, b: f64, tolerance: f64) -> bool {
    (a - b).abs() <= tolerance
}

/// FNV-1a 64 of `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The A/B bucket of a route key, in `0..100`.
pub fn ab_bucket(route_key: &str) -> u8 {
    // The remainder is below 100, so it fits.
    (fnv1a64(route_key.as_bytes()) % 100) as u8
}

/// Orders version names naturally: digit runs compare as numbers, so `v10`
/// is after `v9`; other characters compare as text.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for ((a_digit, a_text), (b_digit, b_text)) in ca.iter().zip(&cb) {
        let ordering = if *a_digit && *b_digit {
            let (a_trim, b_trim) = (a_text.trim_start_matches('0'), b_text.trim_start_matches('0'));
            a_trim.len().cmp(&b_trim.len()).then_with(|| a_trim.cmp(b_trim))
        } else {
            a_text.cmp(b_text)
        };
        if ordering != Ordering::Equal {
            return ordering;
        }
    }
    ca.len().cmp(&cb.len()).then_with(|| a.cmp(b))
}

/// Where one request goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub version: String,
    pub arm: Arm,
    /// The other arm's version, scored off the caller's path, when shadow is on.
    pub shadow: Option<String>,
    /// Calibrated P(sellable) at or above which the serving version lets a
    /// checkout through: shadow agreement is judged on it.
    pub checkout_threshold: f64,
}

/// Loaded versions and routing.
#[derive(Debug, Default)]
pub struct Registry {
    versions: BTreeMap<String, VersionInfo>,
    serving: Option<String>,
    previous: Option<String>,
    candidate: Option<String>,
    ab_percent: u8,
    shadow: bool,
}

impl Registry {
    pub fn get(&self, version: &str) -> Option<&VersionInfo> {
        self.versions.get(version)
    }

    pub fn versions(&self) -> impl Iterator<Item = &VersionInfo> {
        self.versions.values()
    }

    pub fn serving(&self) -> Option<&str> {
        self.serving.as_deref()
    }

    pub fn previous(&self) -> Option<&str> {
        self.previous.as_deref()
    }

    pub fn candidate(&self) -> Option<&str> {
        self.candidate.as_deref()
    }

    pub fn ab_percent(&self) -> u8 {
        self.ab_percent
    }

    pub fn shadow(&self) -> bool {
        self.shadow
    }

    /// Checks that `info` may be added: a new version under the limit. The
    /// same bytes again is `Ok(true)`: already loaded, nothing to do.
    pub fn admit(&self, info: &VersionInfo) -> Result<bool, ModelError> {
        if let Some(loaded) = self.versions.get(&info.version) {
            if loaded.manifest_sha256 == info.manifest_sha256 {
                return Ok(true);
            }
            return Err(ModelError::VersionConflict {
                version: info.version.clone(),
                loaded_sha256: loaded.manifest_sha256.clone(),
                new_sha256: info.manifest_sha256.clone(),
            });
        }
        if self.versions.len() >= VERSIONS_MAX {
            return Err(ModelError::TooManyVersions { loaded: self.versions.len(), limit: VERSIONS_MAX });
        }
        Ok(false)
    }

    /// Adds a version admitted by [`Self::admit`]. It does not serve.
    pub fn insert(&mut self, info: VersionInfo) {
        self.versions.insert(info.version.clone(), info);
    }

    /// The loaded version with the highest name ([`compare_versions`]).
    pub fn highest(&self) -> Option<&str> {
        self.versions.keys().max_by(|a, b| compare_versions(a, b)).map(String::as_str)
    }

    /// Serves `version`; the version serving until now becomes previous. A
    /// promoted candidate stops being the candidate.
    pub fn promote(&mut self, version: &str) -> Result<(), ModelError> {
        if !self.versions.contains_key(version) {
            return Err(ModelError::UnknownVersion { version: version.to_owned() });
        }
        if self.serving.as_deref() == Some(version) {
            return Ok(());
        }
        self.previous = self.serving.replace(version.to_owned());
        if self.candidate.as_deref() == Some(version) {
            self.clear_candidate();
        }
        Ok(())
    }

    /// Serves the previous version again; the one serving becomes previous, so
    /// a second rollback undoes the first. Returns the version now serving.
    pub fn rollback(&mut self) -> Result<String, ModelError> {
        let previous = self.previous.take().ok_or(ModelError::NoPrevious)?;
        self.previous = self.serving.replace(previous.clone());
        if self.candidate.as_deref() == Some(previous.as_str()) {
            self.clear_candidate();
        }
        Ok(previous)
    }

    /// Sets or clears the candidate. With a candidate, `ab_percent` (0 to
    /// 100) of route keys are scored by it and, with `shadow`, each request
    /// is also scored by the other arm's version off the caller's path.
    /// Without one, `ab_percent` must be 0 and `shadow` off.
    pub fn set_candidate(&mut self, version: Option<&str>, ab_percent: u8, shadow: bool) -> Result<(), ModelError> {
        if ab_percent > 100 {
            return Err(ModelError::Candidate { reason: format!("ab_percent {ab_percent} is above 100") });
        }
        let Some(version) = version else {
            if ab_percent != 0 || shadow {
                return Err(ModelError::Candidate { reason: "ab_percent and shadow need a candidate version".to_owned() });
            }
            self.clear_candidate();
            return Ok(());
        };
        if !self.versions.contains_key(version) {
            return Err(ModelError::UnknownVersion { version: version.to_owned() });
        }
        if self.serving.as_deref() == Some(version) {
            return Err(ModelError::Candidate { reason: format!("{version} is the serving version") });
        }
        if self.serving.is_none() {
            return Err(ModelError::Candidate { reason: "no version is serving".to_owned() });
        }
        self.candidate = Some(version.to_owned());
        self.ab_percent = ab_percent;
        self.shadow = shadow;
        Ok(())
    }

    fn clear_candidate(&mut self) {
        self.candidate = None;
        self.ab_percent = 0;
        self.shadow = false;
    }

    /// The version, arm and shadow version of a request; `None` when nothing
    /// serves.
    pub fn route(&self, route_key: &str) -> Option<Route> {
        let serving = self.serving.as_ref()?;
        let checkout_threshold = self.versions.get(serving).map_or(0.5, |v| v.thresholds.checkout);
        let Some(candidate) = &self.candidate else {
            return Some(Route { version: serving.clone(), arm: Arm::Serving, shadow: None, checkout_threshold });
        };
        let on_candidate = self.ab_percent > 0 && ab_bucket(route_key) < self.ab_percent;
        let (version, other, arm) = if on_candidate { (candidate, serving, Arm::Candidate) } else { (serving, candidate, Arm::Serving) };
        Some(Route { version: version.clone(), arm, shadow: self.shadow.then(|| other.clone()), checkout_threshold })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drift::Bins;

    fn info(version: &str, manifest_sha256: &str) -> VersionInfo {
        let bins = Bins { edges: vec![], fractions: vec![1.0] };
        VersionInfo {
            version: version.to_owned(),
            dir: PathBuf::from(version),
            created_at: String::new(),
            manifest_sha256: manifest_sha256.to_owned(),
            model_sha256: String::new(),
            fallback_sha256: String::new(),
            primary_kind: String::new(),
            fallback_kind: String::new(),
            primary_calibration: "identity",
            fallback_calibration: "identity",
            thresholds: Thresholds { checkout: 0.7, product_page: 0.5, cost_ratio: 2.0 },
            golden_rows: 1,
            reference: Arc::new(ReferenceBins { features: vec![bins.clone(); FEATURE_COUNT], score: bins }),
        }
    }

    fn registry(versions: &[&str]) -> Registry {
        let mut registry = Registry::default();
        for v in versions {
            let info = info(v, "sha");
            assert!(!registry.admit(&info).expect("admitted"));
            registry.insert(info);
        }
        registry
    }

    #[test]
    fn fnv1a64_matches_the_reference_values() {
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn versions_order_naturally() {
        assert_eq!(compare_versions("v9", "v10"), Ordering::Less);
        assert_eq!(compare_versions("v10", "v9"), Ordering::Greater);
        assert_eq!(compare_versions("v2", "v2"), Ordering::Equal);
        assert_eq!(compare_versions("v2", "v2a"), Ordering::Less);
        assert_eq!(compare_versions("2026-01-09", "2026-01-10"), Ordering::Less);
        assert_eq!(registry(&["v9", "v10", "v2"]).highest(), Some("v10"));
    }

    #[test]
    fn same_bytes_again_is_a_no_op_and_other_bytes_a_conflict() {
        let registry = registry(&["v1"]);
        assert!(registry.admit(&info("v1", "sha")).expect("same bytes"));
        let err = registry.admit(&info("v1", "other")).expect_err("other bytes");
        assert!(matches!(err, ModelError::VersionConflict { .. }), "{err}");
    }

    #[test]
    fn promote_and_rollback_keep_the_previous_version() {
        let mut registry = registry(&["v1", "v2"]);
        registry.promote("v1").expect("promote v1");
        assert!(matches!(registry.rollback(), Err(ModelError::NoPrevious)));
        registry.promote("v2").expect("promote v2");
        assert_eq!((registry.serving(), registry.previous()), (Some("v2"), Some("v1")));
        assert_eq!(registry.rollback().expect("rollback"), "v1");
        assert_eq!((registry.serving(), registry.previous()), (Some("v1"), Some("v2")));
        assert!(matches!(registry.promote("v3"), Err(ModelError::UnknownVersion { .. })));
    }

    #[test]
    fn candidate_is_bounds_checked() {
        let mut registry = registry(&["v1", "v2"]);
        assert!(registry.set_candidate(Some("v2"), 10, false).is_err(), "nothing serves yet");
        registry.promote("v1").expect("promote");
        assert!(registry.set_candidate(Some("v2"), 101, false).is_err());
        assert!(registry.set_candidate(Some("v1"), 10, false).is_err(), "serving cannot be its own candidate");
        assert!(registry.set_candidate(Some("v3"), 10, false).is_err());
        assert!(registry.set_candidate(None, 10, false).is_err());
        assert!(registry.set_candidate(None, 0, true).is_err());
        registry.set_candidate(Some("v2"), 10, true).expect("valid candidate");
        assert_eq!((registry.candidate(), registry.ab_percent(), registry.shadow()), (Some("v2"), 10, true));
        registry.promote("v2").expect("promote the candidate");
        assert_eq!((registry.candidate(), registry.ab_percent(), registry.shadow()), (None, 0, false));
    }

    #[test]
    fn ab_split_is_stable_and_near_the_percentage() {
        let mut registry = registry(&["v1", "v2"]);
        assert_eq!(registry.route("k"), None, "nothing serves");
        registry.promote("v1").expect("promote");
        registry.set_candidate(Some("v2"), 20, true).expect("candidate");
        let keys = 20_000;
        let mut on_candidate = 0;
        for i in 0..keys {
            let key = format!("checkout-{i}");
            let route = registry.route(&key).expect("serving");
            assert_eq!(registry.route(&key), Some(route.clone()), "a key keeps its arm");
            match route.arm {
                Arm::Candidate => {
                    on_candidate += 1;
                    assert_eq!((route.version.as_str(), route.shadow.as_deref()), ("v2", Some("v1")));
                }
                Arm::Serving => assert_eq!((route.version.as_str(), route.shadow.as_deref()), ("v1", Some("v2"))),
            }
            assert_eq!(route.checkout_threshold, 0.7);
        }
        let share = f64::from(on_candidate) / f64::from(keys);
        assert!((share - 0.20).abs() < 0.02, "candidate share {share}");

        registry.set_candidate(Some("v2"), 0, false).expect("shadow off, no traffic");
        let route = registry.route("checkout-1").expect("serving");
        assert_eq!((route.arm, route.shadow), (Arm::Serving, None));
    }
}
