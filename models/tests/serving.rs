//! Serving the committed model version: golden parity, degraded starts,
//! hot swap, A/B routing, kill switch, deadlines and overload.
//!
//! The runtime is found as the server finds it (the repository's `.venv`,
//! which `make test` creates first); versions are copied into temporary
//! directories before anything is changed in them.

use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;
use std::time::Instant;

use models::features::FeatureVector;
use models::features::FEATURE_COUNT;
use models::features::FEATURE_NAMES;
use models::manifest::sha256_hex;
use models::manifest::Golden;
use models::registry::verify_version;
use models::registry::GOLDEN_CALIBRATED_TOLERANCE;
use models::registry::GOLDEN_RAW_TOLERANCE;
use models::runtime::Runtime;
use models::Arm;
use models::ModelError;
use models::ScoreError;
use models::Scorer;
use models::ScoringConfig;
use models::Variant;

const LONG: Duration = Duration::from_secs(5);

/// This crate's directory, read at run time: one test binary may serve
/// several clones that share a target dir.
fn models_dir() -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
}

/// The committed version every test starts from.
fn committed_version() -> PathBuf {
    models_dir().join("v1")
}

fn golden() -> Golden {
    let path = committed_version().join("golden.json");
    let bytes = std::fs::read(&path).expect("read the committed golden.json");
    Golden::parse(&path, &bytes).expect("golden.json parses")
}

fn copy_version(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).expect("create the version dir");
    for entry in std::fs::read_dir(src).expect("read the version dir") {
        let entry = entry.expect("dir entry");
        if entry.file_type().expect("file type").is_file() {
            std::fs::copy(entry.path(), dst.join(entry.file_name())).expect("copy a file");
        }
    }
}

/// Rewrites `<dir>/manifest.json` with `edit`.
fn edit_manifest(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("manifest.json");
    let mut manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).expect("read manifest")).expect("manifest is JSON");
    edit(&mut manifest);
    std::fs::write(&path, serde_json::to_vec_pretty(&manifest).expect("serialize")).expect("write manifest");
}

/// A model directory holding copies of the committed version under `names`
/// (the manifest's version rewritten to each name).
fn model_dir(names: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for name in names {
        let version = dir.path().join(name);
        copy_version(&committed_version(), &version);
        edit_manifest(&version, |m| m["version"] = serde_json::json!(name));
    }
    dir
}

fn config(model_dir: &Path) -> ScoringConfig {
    ScoringConfig { model_dir: model_dir.to_owned(), ..ScoringConfig::default() }
}

fn features(values: [f32; FEATURE_COUNT]) -> FeatureVector {
    FeatureVector { values, out_of_range: Vec::new() }
}

fn golden_features(i: usize) -> FeatureVector {
    let golden = golden();
    features(golden.rows[i % golden.rows.len()].values())
}

async fn assert_unavailable(scorer: &Scorer, reason_part: &str) {
    let status = scorer.status();
    assert!(!status.available, "{status:?}");
    let reason = status.unavailable_reason.clone().unwrap_or_default();
    assert!(reason.contains(reason_part), "status reason {reason:?} should mention {reason_part:?}");
    match scorer.score(&golden_features(0), "k").await {
        Err(ScoreError::Unavailable { reason }) => assert!(reason.contains(reason_part), "{reason}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert_eq!(scorer.status().counters.unavailable, 1);
}

#[tokio::test]
async fn rust_scores_match_the_golden_rows() {
    let scorer = Scorer::start(config(&models_dir()));
    let status = scorer.status();
    assert!(status.available, "{:?} {:?}", status.unavailable_reason, status.load_errors);
    assert_eq!(status.serving.as_deref(), Some("v1"));
    let golden = golden();
    // Primary, through the batcher.
    for (i, row) in golden.rows.iter().enumerate() {
        let score = scorer.score_within(&features(row.values()), "golden", LONG).await.expect("scored");
        assert_eq!((score.variant, score.arm, score.model_version.as_str()), (Variant::Primary, Arm::Serving, "v1"));
        assert!((score.raw - row.primary_raw).abs() <= GOLDEN_RAW_TOLERANCE, "row {i}: raw {} vs {}", score.raw, row.primary_raw);
        assert!(
            (score.p_sellable - row.primary_calibrated).abs() <= GOLDEN_CALIBRATED_TOLERANCE,
            "row {i}: calibrated {} vs {}",
            score.p_sellable,
            row.primary_calibrated
        );
    }
    // Both models, direct session calls over all rows in one batch.
    let dylib = status.runtime.dylib.clone().expect("runtime loaded");
    let runtime = Runtime::load(&dylib).expect("same runtime");
    let mut models = verify_version(&runtime, &committed_version()).expect("verifies").models;
    let rows: Vec<[f32; FEATURE_COUNT]> = golden.rows.iter().map(|r| r.values()).collect();
    let primary = models.primary.run(&rows).expect("primary runs");
    let fallback = models.fallback.run(&rows).expect("fallback runs");
    for (i, row) in golden.rows.iter().enumerate() {
        assert!((primary[i] - row.primary_raw).abs() <= GOLDEN_RAW_TOLERANCE, "row {i} primary raw");
        assert!((fallback[i] - row.fallback_raw).abs() <= GOLDEN_RAW_TOLERANCE, "row {i} fallback raw");
        let cal = models.primary_calibration.apply(primary[i]);
        assert!((cal - row.primary_calibrated).abs() <= GOLDEN_CALIBRATED_TOLERANCE, "row {i} primary calibrated");
        let cal = models.fallback_calibration.apply(fallback[i]);
        assert!((cal - row.fallback_calibrated).abs() <= GOLDEN_CALIBRATED_TOLERANCE, "row {i} fallback calibrated");
    }
    let thresholds = scorer.thresholds().expect("serving thresholds");
    assert!(thresholds.checkout > 0.0 && thresholds.checkout <= 1.0);
    let v1 = status.versions.iter().find(|v| v.version == "v1").expect("v1 listed");
    let model_bytes = std::fs::read(committed_version().join("model.onnx")).expect("read model.onnx");
    assert_eq!(v1.model_sha256, sha256_hex(&model_bytes));
    serde_json::to_value(&status).expect("status serializes");
}

#[tokio::test]
async fn a_flipped_byte_in_the_model_degrades() {
    let dir = model_dir(&["v1"]);
    let model = dir.path().join("v1/model.onnx");
    let mut bytes = std::fs::read(&model).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&model, bytes).expect("write");
    let scorer = Scorer::start(config(dir.path()));
    assert_unavailable(&scorer, "checksum mismatch").await;
    let status = scorer.status();
    assert!(status.versions.is_empty());
    assert_eq!(status.load_errors.len(), 1);
    assert!(status.load_errors[0].error.contains("model.onnx"), "{:?}", status.load_errors);
}

#[tokio::test]
async fn a_missing_model_dir_degrades() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("no-such-dir");
    let scorer = Scorer::start(config(&missing));
    assert_unavailable(&scorer, "no-such-dir").await;
}

#[tokio::test]
async fn an_empty_model_dir_degrades() {
    let dir = tempfile::tempdir().expect("tempdir");
    let scorer = Scorer::start(config(dir.path()));
    assert_unavailable(&scorer, "no model version under").await;
}

#[tokio::test]
async fn a_wrong_feature_list_degrades() {
    let dir = model_dir(&["v1"]);
    edit_manifest(&dir.path().join("v1"), |m| {
        let mut names: Vec<&str> = FEATURE_NAMES.to_vec();
        names.swap(3, 4);
        m["features"] = serde_json::json!(names);
    });
    let scorer = Scorer::start(config(dir.path()));
    assert_unavailable(&scorer, "feature list").await;
}

#[tokio::test]
async fn a_golden_row_the_model_disagrees_with_degrades() {
    let dir = model_dir(&["v1"]);
    let version = dir.path().join("v1");
    let golden_path = version.join("golden.json");
    let mut golden: serde_json::Value = serde_json::from_slice(&std::fs::read(&golden_path).expect("read")).expect("JSON");
    let raw = golden["rows"][0]["primary_raw"].as_f64().expect("a number");
    golden["rows"][0]["primary_raw"] = serde_json::json!(if raw > 0.5 { raw - 0.001 } else { raw + 0.001 });
    let bytes = serde_json::to_vec(&golden).expect("serialize");
    std::fs::write(&golden_path, &bytes).expect("write");
    edit_manifest(&version, |m| m["golden"]["sha256"] = serde_json::json!(sha256_hex(&bytes)));
    let scorer = Scorer::start(config(dir.path()));
    assert_unavailable(&scorer, "disagrees with golden row 0 on raw").await;
}

#[tokio::test]
async fn a_missing_runtime_library_degrades() {
    let dir = model_dir(&["v1"]);
    let dylib = dir.path().join("lib/libonnxruntime.so");
    let scorer = Scorer::start(ScoringConfig { ort_dylib: Some(dylib.clone()), ..config(dir.path()) });
    assert_unavailable(&scorer, &dylib.display().to_string()).await;
    let status = scorer.status();
    assert!(status.runtime.dylib.is_none());
    assert!(status.runtime.error.expect("runtime error").contains("not found"));
    let err = scorer.load(&dir.path().join("v1")).expect_err("no runtime to load with");
    assert!(matches!(err, ModelError::RuntimeUnavailable { .. }), "{err}");
}

#[tokio::test]
async fn hot_swap_and_rollback_keep_requests_flowing() {
    let dir = model_dir(&["v1"]);
    let other = model_dir(&["v2"]);
    let scorer = Scorer::start(config(dir.path()));
    assert_eq!(scorer.status().serving.as_deref(), Some("v1"));
    let row = golden_features(0);
    let before = scorer.score_within(&row, "k", LONG).await.expect("scored");
    assert_eq!(before.model_version, "v1");

    assert_eq!(scorer.load(&other.path().join("v2")).expect("v2 loads"), "v2");
    assert_eq!(scorer.status().serving.as_deref(), Some("v1"), "loading does not serve");
    scorer.promote("v2").expect("promote");
    let after = scorer.score_within(&row, "k", LONG).await.expect("scored");
    assert_eq!(after.model_version, "v2");
    assert_eq!(after.raw, before.raw, "the same model under another name");
    let status = scorer.status();
    assert_eq!((status.serving.as_deref(), status.previous.as_deref()), (Some("v2"), Some("v1")));
    assert_eq!(status.drift.version.as_deref(), Some("v2"), "drift follows the serving version");

    assert_eq!(scorer.rollback().expect("rollback"), "v1");
    assert_eq!(scorer.score_within(&row, "k", LONG).await.expect("scored").model_version, "v1");

    // Swaps while requests are in flight drop none of them.
    let mut callers = Vec::new();
    for caller in 0..8 {
        let scorer = scorer.clone();
        callers.push(tokio::spawn(async move {
            let mut versions = Vec::new();
            for i in 0..150 {
                let score = scorer.score_within(&golden_features(i), &format!("c{caller}-{i}"), LONG).await.expect("no request dropped");
                versions.push(score.model_version);
            }
            versions
        }));
    }
    for i in 0..40 {
        if i % 2 == 0 {
            scorer.promote("v2").expect("promote");
        } else {
            scorer.rollback().expect("rollback");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut seen = std::collections::BTreeSet::new();
    for caller in callers {
        seen.extend(caller.await.expect("caller finished"));
    }
    assert!(seen.iter().all(|v| v == "v1" || v == "v2"), "{seen:?}");
    let status = scorer.status();
    assert_eq!(status.counters.errors + status.counters.timeouts + status.counters.unavailable, 0, "{:?}", status.counters);
}

#[tokio::test]
async fn loading_other_bytes_under_a_loaded_version_is_refused() {
    let dir = model_dir(&["v1"]);
    let scorer = Scorer::start(config(dir.path()));
    assert_eq!(scorer.load(&dir.path().join("v1")).expect("same bytes again"), "v1");
    let other = model_dir(&["v1"]);
    edit_manifest(&other.path().join("v1"), |m| m["training"]["note"] = serde_json::json!("retrained"));
    let err = scorer.load(&other.path().join("v1")).expect_err("other bytes, same version");
    assert!(matches!(err, ModelError::VersionConflict { ref version, .. } if version == "v1"), "{err}");
    assert_eq!(scorer.status().load_errors.len(), 1);
    assert!(matches!(scorer.promote("v9"), Err(ModelError::UnknownVersion { .. })));
}

#[tokio::test]
async fn serving_file_names_the_version_at_start() {
    let dir = model_dir(&["v1", "v2"]);
    let highest = Scorer::start(config(dir.path()));
    assert_eq!(highest.status().serving.as_deref(), Some("v2"), "highest name without SERVING");

    std::fs::write(dir.path().join("SERVING"), "v1\n").expect("write SERVING");
    let pinned = Scorer::start(config(dir.path()));
    assert_eq!(pinned.status().serving.as_deref(), Some("v1"));
    assert_eq!(pinned.score_within(&golden_features(1), "k", LONG).await.expect("scored").model_version, "v1");

    std::fs::write(dir.path().join("SERVING"), "v9\n").expect("write SERVING");
    let unknown = Scorer::start(config(dir.path()));
    assert_eq!(unknown.status().versions.len(), 2);
    assert_unavailable(&unknown, "\"v9\"").await;
}

#[tokio::test]
async fn ab_split_is_near_the_percentage_and_stable_per_key() {
    let dir = model_dir(&["v1", "v2"]);
    std::fs::write(dir.path().join("SERVING"), "v1").expect("write SERVING");
    let scorer = Scorer::start(config(dir.path()));
    assert!(matches!(scorer.set_candidate(Some("v2"), 101, false), Err(ModelError::Candidate { .. })));
    scorer.set_candidate(Some("v2"), 30, true).expect("candidate");
    let row = golden_features(2);
    let keys: u32 = 2_000;
    let mut on_candidate = 0;
    for i in 0..keys {
        let key = format!("checkout-{i}");
        let first = scorer.score_within(&row, &key, LONG).await.expect("scored");
        let second = scorer.score_within(&row, &key, LONG).await.expect("scored");
        assert_eq!((first.arm, &first.model_version), (second.arm, &second.model_version), "key {key} changed arm");
        match first.arm {
            Arm::Candidate => {
                on_candidate += 1;
                assert_eq!(first.model_version, "v2");
            }
            Arm::Serving => assert_eq!(first.model_version, "v1"),
        }
    }
    let share = f64::from(on_candidate) / f64::from(keys);
    assert!((share - 0.30).abs() < 0.04, "candidate share {share}");

    // Shadow results are recorded after the replies: poll for them.
    let until = Instant::now() + LONG;
    let stats = loop {
        let stats = scorer.status().shadow_stats;
        if stats.compared == 2 * u64::from(keys) || Instant::now() > until {
            break stats;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(stats.compared, 2 * u64::from(keys));
    assert_eq!(stats.agreement_rate, Some(1.0), "identical models agree");
    assert_eq!(stats.mean_abs_diff, Some(0.0));

    scorer.set_candidate(None, 0, false).expect("clear");
    let score = scorer.score_within(&row, "checkout-1", LONG).await.expect("scored");
    assert_eq!((score.arm, score.model_version.as_str()), (Arm::Serving, "v1"));
    assert_eq!(scorer.status().shadow_stats.compared, 0, "stats start over with the candidate");
}

#[tokio::test]
async fn kill_switch_disables_scoring() {
    let dir = model_dir(&["v1"]);
    let scorer = Scorer::start(config(dir.path()));
    let row = golden_features(0);
    scorer.set_disabled(true);
    assert_eq!(scorer.score(&row, "k").await, Err(ScoreError::Disabled));
    let status = scorer.status();
    assert!(status.disabled);
    assert_eq!(status.counters.disabled, 1);
    scorer.set_disabled(false);
    assert!(scorer.score_within(&row, "k", LONG).await.is_ok());
}

#[tokio::test]
async fn a_deadline_too_short_times_out() {
    let dir = model_dir(&["v1"]);
    let scorer = Scorer::start(config(dir.path()));
    let row = golden_features(0);
    assert_eq!(scorer.score_within(&row, "k", Duration::ZERO).await, Err(ScoreError::Timeout { deadline_us: 0 }));
    assert_eq!(scorer.score_within(&row, "k", Duration::from_micros(1)).await, Err(ScoreError::Timeout { deadline_us: 1 }));
    let configured = Scorer::start(ScoringConfig { deadline_us: 1, batch_wait_us: 0, ..config(dir.path()) });
    assert_eq!(configured.score(&row, "k").await, Err(ScoreError::Timeout { deadline_us: 1 }));
    assert_eq!(scorer.status().counters.timeouts, 2);
    assert!(scorer.score_within(&row, "k", LONG).await.is_ok(), "a later request with time is scored");
    assert!(scorer.score_within(&row, "k", Duration::MAX).await.is_ok(), "an unbounded deadline does not overflow");
}

#[tokio::test]
async fn a_full_queue_is_overloaded() {
    let dir = model_dir(&["v1"]);
    let scorer = Scorer::start(ScoringConfig { batch_max: 1, queue_max: 1, batch_wait_us: 0, ..config(dir.path()) });
    let row = golden_features(0);
    let calls = (0..1_000).map(|i| {
        let (scorer, row) = (scorer.clone(), row.clone());
        async move { scorer.score_within(&row, &format!("k{i}"), LONG).await }
    });
    let results = futures::future::join_all(calls).await;
    let overloaded = results.iter().filter(|r| matches!(r, Err(ScoreError::Overloaded { queue_max: 1 }))).count();
    let scored = results.iter().filter(|r| r.is_ok()).count();
    assert!(overloaded > 0, "a queue of one cannot take 1000 requests at once");
    assert_eq!(overloaded + scored, 1_000, "every request is either scored or refused");
    assert_eq!(scorer.status().counters.overloaded, overloaded as u64);
}

#[tokio::test]
async fn status_reports_latency_batches_and_drift() {
    let dir = model_dir(&["v1"]);
    let scorer = Scorer::start(config(dir.path()));
    let golden = golden();
    let calls = (0..64).map(|i| {
        let scorer = scorer.clone();
        let row = features(golden.rows[i % golden.rows.len()].values());
        async move { scorer.score_within(&row, &format!("k{i}"), LONG).await }
    });
    for result in futures::future::join_all(calls).await {
        result.expect("scored");
    }
    let status = scorer.status();
    assert_eq!(status.counters.requests, 64);
    assert_eq!(status.counters.scored, 64);
    assert!(status.inference.count >= 1 && status.inference.p50_us >= 1 && status.inference.max_us >= status.inference.p99_us);
    let batched = status.batch_size.mean * status.batch_size.batches as f64;
    assert_eq!(batched.round(), 64.0, "every request went through a batch: {:?}", status.batch_size);
    assert!(status.batch_size.max >= 1 && status.batch_size.max <= 32, "{:?}", status.batch_size);
    assert_eq!(status.fallback_rate, 0.0);
    // Drift is counted after the replies: poll for it.
    let until = Instant::now() + LONG;
    let drift = loop {
        let drift = scorer.status().drift;
        if drift.current_requests == 64 || Instant::now() > until {
            break drift;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(drift.version.as_deref(), Some("v1"));
    assert_eq!(drift.current_requests, 64);
}
