//! The artefacts of one model version, as the training pipeline writes them
//! into `models/<version>/`.
//!
//! `manifest.json` names every other file with its SHA-256; nothing is used
//! before its bytes match. Fields this side does not know are tolerated, so
//! the pipeline can add some without a release of the server.

use std::path::Path;
use std::path::PathBuf;

use serde::Deserialize;
use serde::Serialize;
use sha2::Digest;
use sha2::Sha256;

use crate::calibration::Calibration;
use crate::error::ModelError;
use crate::features::FEATURE_COUNT;
use crate::features::FEATURE_NAMES;

/// File name of the manifest inside a version directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Largest artefact file read, in bytes (a model is a few MB).
pub const ARTEFACT_BYTES_MAX: u64 = 256 * 1024 * 1024;

/// Longest version name.
pub const VERSION_LEN_MAX: usize = 64;

/// Most rows a golden file may hold.
pub const GOLDEN_ROWS_MAX: usize = 10_000;

#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub version: String,
    pub created_at: String,
    pub features: Vec<String>,
    pub primary: ModelSpec,
    pub fallback: ModelSpec,
    pub golden: ArtefactRef,
    pub reference_bins: ArtefactRef,
    pub metrics: ArtefactRef,
    pub thresholds: Thresholds,
    #[serde(default)]
    pub training: serde_json::Value,
}

/// One file of the version and its expected digest.
#[derive(Debug, Clone, Deserialize)]
pub struct ArtefactRef {
    pub file: String,
    pub sha256: String,
}

/// One ONNX model of the version.
#[derive(Debug, Clone, Deserialize)]
pub struct ModelSpec {
    pub file: String,
    pub sha256: String,
    pub kind: String,
    pub input: String,
    pub output: String,
    pub calibration: Calibration,
}

impl ModelSpec {
    pub fn artefact(&self) -> ArtefactRef {
        ArtefactRef { file: self.file.clone(), sha256: self.sha256.clone() }
    }
}

/// Decision thresholds the training pipeline chose for this version.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    /// Minimum calibrated P(sellable) to let a checkout take the probable path.
    pub checkout: f64,
    /// Minimum calibrated P(sellable) to show a product page as available.
    pub product_page: f64,
    /// Cost of an oversell relative to a lost sale.
    pub cost_ratio: f64,
}

/// `golden.json`: inputs and the scores the pipeline computed for them.
#[derive(Debug, Clone, Deserialize)]
pub struct Golden {
    pub rows: Vec<GoldenRow>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct GoldenRow {
    pub features: Vec<f32>,
    pub primary_raw: f64,
    pub primary_calibrated: f64,
    pub fallback_raw: f64,
    pub fallback_calibrated: f64,
}

impl GoldenRow {
    /// The features as a model input row; `Golden::parse` checked the length.
    pub fn values(&self) -> [f32; FEATURE_COUNT] {
        let mut values = [0.0f32; FEATURE_COUNT];
        for (slot, v) in values.iter_mut().zip(&self.features) {
            *slot = *v;
        }
        values
    }
}

impl Golden {
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Self, ModelError> {
        let golden: Golden = serde_json::from_slice(bytes).map_err(|source| ModelError::Json { path: path.to_owned(), source })?;
        let invalid = |reason: String| ModelError::Golden { path: path.to_owned(), reason };
        if golden.rows.is_empty() {
            return Err(invalid("no rows".to_owned()));
        }
        if golden.rows.len() > GOLDEN_ROWS_MAX {
            return Err(invalid(format!("{} rows, the limit is {GOLDEN_ROWS_MAX}", golden.rows.len())));
        }
        for (i, row) in golden.rows.iter().enumerate() {
            if row.features.len() != FEATURE_COUNT {
                return Err(invalid(format!("row {i} has {} features, expected {FEATURE_COUNT}", row.features.len())));
            }
            if row.features.iter().any(|v| !v.is_finite()) {
                return Err(invalid(format!("row {i} has a feature that is not finite")));
            }
        }
        Ok(golden)
    }
}

impl Manifest {
    /// Reads and checks `<dir>/manifest.json`; returns it with its raw bytes
    /// (their digest identifies the version's content).
    pub fn read(dir: &Path) -> Result<(Manifest, Vec<u8>), ModelError> {
        let path = dir.join(MANIFEST_FILE);
        let bytes = read_bounded(&path)?;
        let manifest = Self::parse(&path, &bytes)?;
        Ok((manifest, bytes))
    }

    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Manifest, ModelError> {
        let manifest: Manifest = serde_json::from_slice(bytes).map_err(|source| ModelError::Json { path: path.to_owned(), source })?;
        manifest.validate(path)?;
        Ok(manifest)
    }

    fn validate(&self, path: &Path) -> Result<(), ModelError> {
        let invalid = |reason: String| ModelError::Manifest { path: path.to_owned(), reason };
        validate_version(&self.version).map_err(invalid)?;
        for index in 0..self.features.len().max(FEATURE_COUNT) {
            let expected = FEATURE_NAMES.get(index).map(|name| (*name).to_owned());
            let found = self.features.get(index).cloned();
            if found != expected {
                return Err(ModelError::Features { path: path.to_owned(), index, expected, found });
            }
        }
        let files = [
            ("primary", self.primary.artefact()),
            ("fallback", self.fallback.artefact()),
            ("golden", self.golden.clone()),
            ("reference_bins", self.reference_bins.clone()),
            ("metrics", self.metrics.clone()),
        ];
        for (field, artefact) in &files {
            validate_file_name(&artefact.file).map_err(|reason| invalid(format!("{field}.file: {reason}")))?;
            validate_sha256(&artefact.sha256).map_err(|reason| invalid(format!("{field}.sha256: {reason}")))?;
        }
        for (field, spec) in [("primary", &self.primary), ("fallback", &self.fallback)] {
            if spec.input.is_empty() || spec.output.is_empty() {
                return Err(invalid(format!("{field}: input and output names must not be empty")));
            }
        }
        self.primary.calibration.validate().map_err(|reason| ModelError::Calibration { model: "primary", reason })?;
        self.fallback.calibration.validate().map_err(|reason| ModelError::Calibration { model: "fallback", reason })?;
        let t = &self.thresholds;
        for (field, value) in [("checkout", t.checkout), ("product_page", t.product_page)] {
            if !(0.0..=1.0).contains(&value) {
                return Err(invalid(format!("thresholds.{field} = {value} is not a probability")));
            }
        }
        if !(t.cost_ratio.is_finite() && t.cost_ratio > 0.0) {
            return Err(invalid(format!("thresholds.cost_ratio = {} must be positive", t.cost_ratio)));
        }
        Ok(())
    }
}

/// A version name is 1 to 64 characters of `[A-Za-z0-9._-]`, not starting
/// with a dot.
pub fn validate_version(version: &str) -> Result<(), String> {
    if version.is_empty() || version.len() > VERSION_LEN_MAX {
        return Err(format!("version {version:?} must have 1 to {VERSION_LEN_MAX} characters"));
    }
    if version.starts_with('.') || !version.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
        return Err(format!("version {version:?} may only use letters, digits, '.', '_' and '-', and not start with '.'"));
    }
    Ok(())
}

fn validate_file_name(file: &str) -> Result<(), String> {
    if file.is_empty() || file.starts_with('.') || file.contains(['/', '\\']) {
        return Err(format!("{file:?} must be a plain file name inside the version directory"));
    }
    Ok(())
}

fn validate_sha256(hex: &str) -> Result<(), String> {
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!("{hex:?} is not 64 hex digits"));
    }
    Ok(())
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut hex = String::with_capacity(64);
    for byte in digest {
        hex.push(char::from(b"0123456789abcdef"[usize::from(byte >> 4)]));
        hex.push(char::from(b"0123456789abcdef"[usize::from(byte & 0xf)]));
    }
    hex
}

/// Reads a file of at most [`ARTEFACT_BYTES_MAX`] bytes.
pub fn read_bounded(path: &Path) -> Result<Vec<u8>, ModelError> {
    let io = |source| ModelError::Io { path: path.to_owned(), source };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > ARTEFACT_BYTES_MAX {
        return Err(ModelError::Manifest { path: path.to_owned(), reason: format!("{len} bytes, the limit is {ARTEFACT_BYTES_MAX}") });
    }
    std::fs::read(path).map_err(io)
}

/// Reads `<dir>/<artefact.file>` and checks its SHA-256.
pub fn read_verified(dir: &Path, artefact: &ArtefactRef) -> Result<(PathBuf, Vec<u8>), ModelError> {
    let path = dir.join(&artefact.file);
    let bytes = read_bounded(&path)?;
    let actual = sha256_hex(&bytes);
    if !actual.eq_ignore_ascii_case(&artefact.sha256) {
        return Err(ModelError::Checksum { path, expected: artefact.sha256.to_ascii_lowercase(), actual });
    }
    Ok((path, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest_json(features: &[&str]) -> String {
        let sha = "ab".repeat(32);
        serde_json::json!({
            "version": "v1", "created_at": "2026-11-23T00:00:00Z", "features": features,
            "primary": {"file": "model.onnx", "sha256": sha, "kind": "lightgbm", "input": "input", "output": "probabilities",
                        "calibration": {"method": "platt", "a": 1.0, "b": 0.0}},
            "fallback": {"file": "fallback.onnx", "sha256": sha, "kind": "logistic-regression", "input": "input", "output": "probabilities",
                         "calibration": {"method": "identity"}},
            "golden": {"file": "golden.json", "sha256": sha},
            "reference_bins": {"file": "reference_bins.json", "sha256": sha},
            "metrics": {"file": "metrics.json", "sha256": sha},
            "thresholds": {"checkout": 0.8, "product_page": 0.5, "cost_ratio": 3.0},
            "training": {"rows": 10},
            "a_field_added_later": true
        })
        .to_string()
    }

    #[test]
    fn parses_a_manifest_and_tolerates_unknown_fields() {
        let manifest = Manifest::parse(Path::new("m.json"), manifest_json(&FEATURE_NAMES).as_bytes()).expect("valid manifest");
        assert_eq!(manifest.version, "v1");
        assert_eq!(manifest.thresholds.checkout, 0.8);
        assert_eq!(manifest.fallback.calibration, Calibration::Identity);
    }

    #[test]
    fn refuses_a_feature_list_other_than_the_contract() {
        let mut swapped = FEATURE_NAMES;
        swapped.swap(0, 1);
        let err = Manifest::parse(Path::new("m.json"), manifest_json(&swapped).as_bytes()).expect_err("swapped columns");
        assert!(matches!(err, ModelError::Features { index: 0, .. }), "{err}");
        let short = &FEATURE_NAMES[..FEATURE_COUNT - 1];
        let err = Manifest::parse(Path::new("m.json"), manifest_json(short).as_bytes()).expect_err("missing column");
        assert!(matches!(err, ModelError::Features { index: 19, found: None, .. }), "{err}");
        let mut long = FEATURE_NAMES.to_vec();
        long.push("extra");
        let err = Manifest::parse(Path::new("m.json"), manifest_json(&long).as_bytes()).expect_err("extra column");
        assert!(matches!(err, ModelError::Features { index: 20, expected: None, .. }), "{err}");
    }

    #[test]
    fn refuses_paths_outside_the_version_directory() {
        let json = manifest_json(&FEATURE_NAMES).replace("\"golden.json\"", "\"../golden.json\"");
        let err = Manifest::parse(Path::new("m.json"), json.as_bytes()).expect_err("path traversal");
        assert!(err.to_string().contains("golden.file"), "{err}");
    }

    #[test]
    fn version_names_are_restricted() {
        assert!(validate_version("v1").is_ok());
        assert!(validate_version("2026-11-23.a_b").is_ok());
        assert!(validate_version("").is_err());
        assert!(validate_version("../v1").is_err());
        assert!(validate_version(".hidden").is_err());
    }

    #[test]
    fn sha256_is_lower_case_hex() {
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn read_verified_detects_a_changed_byte() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("f.bin"), b"abc").expect("write");
        let good = ArtefactRef { file: "f.bin".to_owned(), sha256: sha256_hex(b"abc") };
        assert!(read_verified(dir.path(), &good).is_ok());
        std::fs::write(dir.path().join("f.bin"), b"abd").expect("write");
        let err = read_verified(dir.path(), &good).expect_err("changed byte");
        assert!(matches!(err, ModelError::Checksum { .. }), "{err}");
    }
}
