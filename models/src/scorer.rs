//! The scorer the server calls: start, score, operate, report.
//!
//! [`Scorer::start`] never fails. Without the onnxruntime library, without a
//! valid model version, or with an invalid config, the scorer is up and
//! degraded: [`Scorer::score`] answers [`ScoreError::Unavailable`] with the
//! reason, which [`Scorer::status`] shows too, and the caller decides
//! without the model.
//!
//! Every version directory under `model_dir` that has a `manifest.json` is
//! verified and loaded (see [`crate::registry`]); a failing one is skipped
//! and its error kept in the status. The version serving at start is the one
//! named in `<model_dir>/SERVING` if that file exists (if it names a version
//! that did not load, nothing serves and the status says why), else the
//! highest version name.
//!
//! Scoring goes through the worker of [`crate::batcher`]. Loaded versions are
//! never unloaded, and a request is routed to a version before it is queued,
//! so promote, rollback and candidate changes take effect for the next
//! request without dropping any in flight.

use std::collections::BTreeMap;
use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::mpsc::SyncSender;
use std::sync::mpsc::TrySendError;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::PoisonError;
use std::sync::RwLock;
use std::sync::RwLockReadGuard;
use std::sync::RwLockWriteGuard;
use std::time::Duration;
use std::time::Instant;

use serde::Deserialize;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::batcher::bump;
use crate::batcher::lock;
use crate::batcher::Job;
use crate::batcher::ScoreRequest;
use crate::batcher::Telemetry;
use crate::batcher::Worker;
use crate::drift::DriftStatus;
use crate::error::ModelError;
use crate::error::ScoreError;
use crate::features::FeatureVector;
use crate::manifest::Thresholds;
use crate::manifest::MANIFEST_FILE;
use crate::registry::compare_versions;
use crate::registry::verify_version;
use crate::registry::Registry;
use crate::registry::VersionInfo;
use crate::registry::SERVING_FILE;
use crate::runtime::Runtime;
use crate::runtime::SESSION_ROWS_MAX;
pub use crate::score::Score;

/// Largest `batch_max`.
pub const BATCH_MAX_LIMIT: usize = 1_024;
/// Largest `queue_max`.
pub const QUEUE_MAX_LIMIT: usize = 1 << 20;
/// Largest `deadline_us`: 10 s.
pub const DEADLINE_US_LIMIT: u64 = 10_000_000;
/// Most version directories looked at under `model_dir` at start.
pub const MODEL_DIR_ENTRIES_MAX: usize = 1_000;

/// Per-node settings of model serving.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct ScoringConfig {
    /// Directory holding one subdirectory per version (`models/`).
    pub model_dir: PathBuf,
    /// The onnxruntime library; found in the repository's `.venv` if unset
    /// (see [`crate::runtime`]).
    pub ort_dylib: Option<PathBuf>,
    /// Most requests scored in one session call.
    pub batch_max: usize,
    /// Longest wait for more requests after the first of a batch (0: none).
    pub batch_wait_us: u64,
    /// Time a caller waits for its score before giving up.
    pub deadline_us: u64,
    /// Most requests queued for the worker.
    pub queue_max: usize,
}

impl Default for ScoringConfig {
    fn default() -> Self {
        Self { model_dir: PathBuf::from("models"), ort_dylib: None, batch_max: 32, batch_wait_us: 200, deadline_us: 3_000, queue_max: 4_096 }
    }
}

impl ScoringConfig {
    /// Checks each limit and the relations between them.
    pub fn validate(&self) -> Result<(), ModelError> {
        let invalid = |reason: String| Err(ModelError::Config { reason });
        let batch_limit = BATCH_MAX_LIMIT.min(SESSION_ROWS_MAX);
        if self.batch_max == 0 || self.batch_max > batch_limit {
            return invalid(format!("batch-max = {} must be in 1..={batch_limit}", self.batch_max));
        }
        if self.queue_max < self.batch_max || self.queue_max > QUEUE_MAX_LIMIT {
            return invalid(format!("queue-max = {} must be in batch-max ({})..={QUEUE_MAX_LIMIT}", self.queue_max, self.batch_max));
        }
        if self.deadline_us == 0 || self.deadline_us > DEADLINE_US_LIMIT {
            return invalid(format!("deadline-us = {} must be in 1..={DEADLINE_US_LIMIT}", self.deadline_us));
        }
        if self.batch_wait_us >= self.deadline_us {
            return invalid(format!("batch-wait-us = {} must be below deadline-us = {}", self.batch_wait_us, self.deadline_us));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RuntimeStatus {
    /// The library loaded (canonical path).
    pub dylib: Option<PathBuf>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadErrorStatus {
    pub dir: PathBuf,
    pub error: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ShadowStats {
    pub compared: u64,
    pub agreed: u64,
    pub failed: u64,
    /// Share of compared requests on which both arms fell on the same side of
    /// the serving version's checkout threshold.
    pub agreement_rate: Option<f64>,
    /// Mean |serving p − candidate p| (calibrated).
    pub mean_abs_diff: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CounterStatus {
    /// Calls of `score`.
    pub requests: u64,
    /// Requests the worker answered with a score.
    pub scored: u64,
    /// Requests whose primary model failed and that went to the fallback.
    pub fallback_used: u64,
    pub timeouts: u64,
    pub overloaded: u64,
    pub disabled: u64,
    pub unavailable: u64,
    /// Requests that both models failed on.
    pub errors: u64,
}

/// Microseconds, since start.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyStatus {
    pub count: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BatchStatus {
    pub batches: u64,
    pub mean: f64,
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}

/// Everything an operator needs to know about model serving.
#[derive(Debug, Clone, Serialize)]
pub struct ModelStatus {
    /// Whether a request can be scored now (kill switch aside).
    pub available: bool,
    pub unavailable_reason: Option<String>,
    /// The kill switch.
    pub disabled: bool,
    pub config: ScoringConfig,
    pub runtime: RuntimeStatus,
    pub versions: Vec<VersionInfo>,
    pub serving: Option<String>,
    pub candidate: Option<String>,
    pub previous: Option<String>,
    pub ab_percent: u8,
    pub shadow: bool,
    pub shadow_stats: ShadowStats,
    pub load_errors: Vec<LoadErrorStatus>,
    pub counters: CounterStatus,
    /// fallback_used / scored.
    pub fallback_rate: f64,
    /// Session calls that answered callers.
    pub inference: LatencyStatus,
    pub batch_size: BatchStatus,
    pub drift: DriftStatus,
}

/// Model serving; cheap to clone, every clone is the same scorer.
#[derive(Clone)]
pub struct Scorer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Scorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scorer").field("model_dir", &self.inner.config.model_dir).finish_non_exhaustive()
    }
}

struct Inner {
    config: ScoringConfig,
    config_error: Option<String>,
    runtime: Result<Arc<Runtime>, String>,
    jobs: Option<SyncSender<Job>>,
    worker_error: Option<String>,
    registry: RwLock<Registry>,
    load_errors: Mutex<BTreeMap<PathBuf, String>>,
    /// Why the version named by `SERVING` does not serve.
    serving_error: Mutex<Option<String>>,
    disabled: AtomicBool,
    telemetry: Arc<Telemetry>,
    /// Serialises `load`, so two loads of one version cannot both install.
    load_lock: Mutex<()>,
}

impl Scorer {
    /// Starts the worker and loads every version under `config.model_dir`.
    /// Never fails: what went wrong shows in [`Self::status`].
    pub fn start(config: ScoringConfig) -> Scorer {
        let telemetry = Arc::new(Telemetry::new());
        let config_error = config.validate().err().map(|e| e.to_string());
        let runtime = match &config_error {
            Some(error) => Err(format!("not loaded: {error}")),
            None => Runtime::discover_here(config.ort_dylib.as_deref(), &config.model_dir).and_then(|dylib| Runtime::load(&dylib)).map_err(|e| e.to_string()),
        };
        if let Err(error) = &runtime {
            tracing::warn!(%error, "model scoring degraded: no onnxruntime");
        }
        let (jobs, worker_error) = if config_error.is_none() && runtime.is_ok() {
            let (sender, receiver) = std::sync::mpsc::sync_channel(config.queue_max);
            let worker = Worker::new(receiver, Arc::clone(&telemetry), config.batch_max, Duration::from_micros(config.batch_wait_us));
            match std::thread::Builder::new().name("stockd-scorer".to_owned()).spawn(move || worker.run()) {
                Ok(_) => (Some(sender), None),
                Err(error) => {
                    tracing::error!(%error, "model scoring degraded: cannot start the scoring thread");
                    (None, Some(format!("start the scoring thread: {error}")))
                }
            }
        } else {
            (None, None)
        };
        let scorer = Scorer {
            inner: Arc::new(Inner {
                config,
                config_error,
                runtime,
                jobs,
                worker_error,
                registry: RwLock::new(Registry::default()),
                load_errors: Mutex::new(BTreeMap::new()),
                serving_error: Mutex::new(None),
                disabled: AtomicBool::new(false),
                telemetry,
                load_lock: Mutex::new(()),
            }),
        };
        if scorer.inner.jobs.is_some() {
            scorer.load_model_dir();
        }
        scorer
    }

    fn load_model_dir(&self) {
        let model_dir = self.inner.config.model_dir.clone();
        let entries = match std::fs::read_dir(&model_dir) {
            Ok(entries) => entries,
            Err(error) => {
                let error = ModelError::Io { path: model_dir.clone(), source: error };
                tracing::warn!(%error, "no model versions loaded");
                lock(&self.inner.load_errors).insert(model_dir, error.to_string());
                return;
            }
        };
        let mut dirs: Vec<PathBuf> =
            entries.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.join(MANIFEST_FILE).is_file()).take(MODEL_DIR_ENTRIES_MAX).collect();
        dirs.sort();
        for dir in dirs {
            // A failure is logged and kept in load_errors by `load`.
            let _ = self.load(&dir);
        }
        let serving_file = model_dir.join(SERVING_FILE);
        let chosen = match std::fs::read_to_string(&serving_file) {
            Ok(text) => Some(text.trim().to_owned()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => self.registry().highest().map(str::to_owned),
            Err(error) => {
                let reason = ModelError::Io { path: serving_file.clone(), source: error }.to_string();
                *lock(&self.inner.serving_error) = Some(reason);
                None
            }
        };
        let Some(version) = chosen else { return };
        match self.promote(&version) {
            Ok(()) => tracing::info!(version, "serving model version"),
            Err(error) => {
                let reason = format!("{} names version {version:?}, which does not serve: {error}", serving_file.display());
                tracing::warn!(%reason, "no model version serves");
                *lock(&self.inner.serving_error) = Some(reason);
            }
        }
    }

    fn registry(&self) -> RwLockReadGuard<'_, Registry> {
        self.inner.registry.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn registry_mut(&self) -> RwLockWriteGuard<'_, Registry> {
        self.inner.registry.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Scores one request within the configured deadline. `route_key` picks
    /// the A/B arm (use the checkout or session id so a buyer stays on one).
    pub async fn score(&self, features: &FeatureVector, route_key: &str) -> Result<Score, ScoreError> {
        self.score_within(features, route_key, Duration::from_micros(self.inner.config.deadline_us)).await
    }

    /// [`Self::score`] with an explicit deadline, for a caller whose own
    /// budget is shorter than the configured one.
    pub async fn score_within(&self, features: &FeatureVector, route_key: &str, deadline: Duration) -> Result<Score, ScoreError> {
        let started = Instant::now();
        let counters = &self.inner.telemetry.counters;
        bump(&counters.requests, 1);
        if self.inner.disabled.load(Ordering::Relaxed) {
            bump(&counters.disabled, 1);
            return Err(ScoreError::Disabled);
        }
        let (Some(jobs), Some(route)) = (&self.inner.jobs, self.registry().route(route_key)) else {
            bump(&counters.unavailable, 1);
            return Err(ScoreError::Unavailable { reason: self.unavailable_reason().unwrap_or_default() });
        };
        let timeout = || {
            bump(&counters.timeouts, 1);
            ScoreError::Timeout { deadline_us: u64::try_from(deadline.as_micros()).unwrap_or(u64::MAX) }
        };
        // A deadline too far to represent waits a day: no score takes that long.
        let until = started.checked_add(deadline).unwrap_or_else(|| started + Duration::from_secs(86_400));
        if Instant::now() >= until {
            return Err(timeout());
        }
        let (reply, answer) = oneshot::channel();
        match jobs.try_send(Job::Score(ScoreRequest { features: features.values, route, reply })) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                bump(&counters.overloaded, 1);
                return Err(ScoreError::Overloaded { queue_max: self.inner.config.queue_max });
            }
            Err(TrySendError::Disconnected(_)) => {
                bump(&counters.unavailable, 1);
                return Err(ScoreError::Unavailable { reason: "the scoring worker has stopped".to_owned() });
            }
        }
        match tokio::time::timeout_at(tokio::time::Instant::from_std(until), answer).await {
            // The timer is coarser than a microsecond deadline: an answer
            // that came too late is still a timeout.
            Ok(Ok(_)) if Instant::now() > until => Err(timeout()),
            Ok(Ok(result)) => result,
            Ok(Err(_)) => {
                bump(&counters.unavailable, 1);
                Err(ScoreError::Unavailable { reason: "the scoring worker has stopped".to_owned() })
            }
            Err(_) => Err(timeout()),
        }
    }

    /// Verifies and loads the version in `dir` without serving it; returns
    /// its name. Loading the same bytes again is a no-op; another version
    /// under a loaded name is refused. Blocking (reads files, creates
    /// sessions, scores the golden rows): call it off async worker threads.
    pub fn load(&self, dir: &Path) -> Result<String, ModelError> {
        let result = self.load_inner(dir);
        let mut load_errors = lock(&self.inner.load_errors);
        match &result {
            Ok(version) => {
                load_errors.remove(dir);
                tracing::info!(version, dir = %dir.display(), "loaded model version");
            }
            Err(error) => {
                tracing::warn!(dir = %dir.display(), %error, "model version not loaded");
                load_errors.insert(dir.to_owned(), error.to_string());
            }
        }
        result
    }

    fn load_inner(&self, dir: &Path) -> Result<String, ModelError> {
        let runtime = self.inner.runtime.as_ref().map_err(|reason| ModelError::RuntimeUnavailable { reason: reason.clone() })?;
        let jobs = self.inner.jobs.as_ref().ok_or(ModelError::WorkerStopped)?;
        let _serial = lock(&self.inner.load_lock);
        let verified = verify_version(runtime, dir)?;
        let version = verified.info.version.clone();
        if self.registry().admit(&verified.info)? {
            return Ok(version);
        }
        // Installed before the registry knows it: no request can name the
        // version before its sessions are in the worker.
        jobs.send(Job::Install { version: version.clone(), models: Box::new(verified.models) }).map_err(|_| ModelError::WorkerStopped)?;
        self.registry_mut().insert(verified.info);
        Ok(version)
    }

    /// Serves `version` from the next request on; the version serving until
    /// now becomes the previous one.
    pub fn promote(&self, version: &str) -> Result<(), ModelError> {
        let mut registry = self.registry_mut();
        let before = registry.serving().map(str::to_owned);
        registry.promote(version)?;
        if before.as_deref() != Some(version) {
            self.reset_drift(&registry);
            tracing::info!(version, previous = before.as_deref().unwrap_or("none"), "promoted model version");
        }
        Ok(())
    }

    /// Serves the previous version again; returns it.
    pub fn rollback(&self) -> Result<String, ModelError> {
        let mut registry = self.registry_mut();
        let version = registry.rollback()?;
        self.reset_drift(&registry);
        tracing::warn!(version, "rolled back model version");
        Ok(version)
    }

    fn reset_drift(&self, registry: &Registry) {
        let serving = registry.serving().and_then(|v| registry.get(v)).map(|info| (info.version.clone(), Arc::clone(&info.reference)));
        lock(&self.inner.telemetry.drift).reset(serving);
    }

    /// Sets (or, with `None`, clears) the candidate version, the percentage
    /// of route keys it scores (0 to 100) and shadow scoring. Shadow
    /// statistics start over.
    pub fn set_candidate(&self, version: Option<&str>, ab_percent: u8, shadow: bool) -> Result<(), ModelError> {
        self.registry_mut().set_candidate(version, ab_percent, shadow)?;
        *lock(&self.inner.telemetry.shadow) = Default::default();
        tracing::info!(candidate = version.unwrap_or("none"), ab_percent, shadow, "set model candidate");
        Ok(())
    }

    /// The kill switch: while on, `score` answers [`ScoreError::Disabled`].
    pub fn set_disabled(&self, disabled: bool) {
        let was = self.inner.disabled.swap(disabled, Ordering::Relaxed);
        if was != disabled {
            tracing::warn!(disabled, "model scoring kill switch");
        }
    }

    /// Decision thresholds of the serving version.
    pub fn thresholds(&self) -> Option<Thresholds> {
        let registry = self.registry();
        registry.serving().and_then(|v| registry.get(v)).map(|info| info.thresholds)
    }

    /// Why a request cannot be scored now, kill switch aside.
    fn unavailable_reason(&self) -> Option<String> {
        if let Some(error) = &self.inner.config_error {
            return Some(format!("invalid scoring config: {error}"));
        }
        if let Err(error) = &self.inner.runtime {
            return Some(format!("onnxruntime unavailable: {error}"));
        }
        if let Some(error) = &self.inner.worker_error {
            return Some(error.clone());
        }
        if self.registry().serving().is_some() {
            return None;
        }
        if let Some(error) = lock(&self.inner.serving_error).as_ref() {
            return Some(error.clone());
        }
        let load_errors = lock(&self.inner.load_errors);
        if load_errors.is_empty() {
            return Some(format!("no model version under {}", self.inner.config.model_dir.display()));
        }
        let errors: Vec<String> = load_errors.iter().map(|(dir, error)| format!("{}: {error}", dir.display())).collect();
        Some(format!("no model version serves; {}", errors.join("; ")))
    }

    pub fn status(&self) -> ModelStatus {
        let unavailable_reason = self.unavailable_reason();
        let telemetry = &self.inner.telemetry;
        let c = &telemetry.counters;
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let counters = CounterStatus {
            requests: read(&c.requests),
            scored: read(&c.scored),
            fallback_used: read(&c.fallback_used),
            timeouts: read(&c.timeouts),
            overloaded: read(&c.overloaded),
            disabled: read(&c.disabled),
            unavailable: read(&c.unavailable),
            errors: read(&c.errors),
        };
        let fallback_rate = if counters.scored == 0 { 0.0 } else { counters.fallback_used as f64 / counters.scored as f64 };
        let (inference, batch_size) = {
            let h = lock(&telemetry.histograms);
            let inference = LatencyStatus {
                count: h.inference_us.len(),
                p50_us: h.inference_us.value_at_quantile(0.5),
                p99_us: h.inference_us.value_at_quantile(0.99),
                max_us: h.inference_us.max(),
            };
            let batch = BatchStatus {
                batches: h.batch_size.len(),
                mean: h.batch_size.mean(),
                p50: h.batch_size.value_at_quantile(0.5),
                p99: h.batch_size.value_at_quantile(0.99),
                max: h.batch_size.max(),
            };
            (inference, batch)
        };
        let shadow_stats = {
            let t = *lock(&telemetry.shadow);
            let compared = (t.compared > 0).then_some(t.compared as f64);
            ShadowStats {
                compared: t.compared,
                agreed: t.agreed,
                failed: t.failed,
                agreement_rate: compared.map(|n| t.agreed as f64 / n),
                mean_abs_diff: compared.map(|n| t.abs_diff_sum / n),
            }
        };
        let drift = lock(&telemetry.drift).status();
        let registry = self.registry();
        let mut versions: Vec<VersionInfo> = registry.versions().cloned().collect();
        versions.sort_by(|a, b| compare_versions(&a.version, &b.version));
        let load_errors = lock(&self.inner.load_errors).iter().map(|(dir, error)| LoadErrorStatus { dir: dir.clone(), error: error.clone() }).collect();
        ModelStatus {
            available: unavailable_reason.is_none(),
            unavailable_reason,
            disabled: self.inner.disabled.load(Ordering::Relaxed),
            config: self.inner.config.clone(),
            runtime: match &self.inner.runtime {
                Ok(runtime) => RuntimeStatus { dylib: Some(runtime.dylib().to_owned()), error: None },
                Err(error) => RuntimeStatus { dylib: None, error: Some(error.clone()) },
            },
            versions,
            serving: registry.serving().map(str::to_owned),
            candidate: registry.candidate().map(str::to_owned),
            previous: registry.previous().map(str::to_owned),
            ab_percent: registry.ab_percent(),
            shadow: registry.shadow(),
            shadow_stats,
            load_errors,
            counters,
            fallback_rate,
            inference,
            batch_size,
            drift,
        }
    }

    #[cfg(test)]
    fn fail_primary(&self, version: &str, fail: bool) {
        if let Some(jobs) = &self.inner.jobs {
            jobs.send(Job::FailPrimary { version: version.to_owned(), fail }).expect("worker runs");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::FEATURE_COUNT;
    use crate::registry::Variant;

    #[test]
    fn default_config_is_valid_and_bad_relations_are_refused() {
        assert!(ScoringConfig::default().validate().is_ok());
        let bad = [
            ScoringConfig { batch_max: 0, ..Default::default() },
            ScoringConfig { batch_max: BATCH_MAX_LIMIT + 1, queue_max: QUEUE_MAX_LIMIT, ..Default::default() },
            ScoringConfig { queue_max: 16, batch_max: 32, ..Default::default() },
            ScoringConfig { deadline_us: 0, batch_wait_us: 0, ..Default::default() },
            ScoringConfig { deadline_us: 200, batch_wait_us: 200, ..Default::default() },
            ScoringConfig { deadline_us: DEADLINE_US_LIMIT + 1, ..Default::default() },
        ];
        for config in bad {
            let err = config.validate().expect_err("invalid");
            assert!(matches!(err, ModelError::Config { .. }), "{err}");
        }
    }

    #[test]
    fn config_reads_kebab_case_and_refuses_unknown_keys() {
        let config: ScoringConfig = serde_json::from_str(r#"{"model-dir": "m", "batch-max": 8}"#).expect("valid");
        assert_eq!((config.model_dir, config.batch_max, config.queue_max), (PathBuf::from("m"), 8, 4_096));
        assert!(serde_json::from_str::<ScoringConfig>(r#"{"batch_size": 8}"#).is_err());
    }

    #[tokio::test]
    async fn invalid_config_degrades_instead_of_failing() {
        let scorer = Scorer::start(ScoringConfig { batch_max: 0, ..Default::default() });
        let status = scorer.status();
        assert!(!status.available);
        assert!(status.unavailable_reason.as_deref().unwrap_or_default().contains("batch-max"), "{status:?}");
        let features = FeatureVector { values: [0.0; FEATURE_COUNT], out_of_range: Vec::new() };
        let err = scorer.score(&features, "k").await.expect_err("unavailable");
        assert!(matches!(err, ScoreError::Unavailable { ref reason } if reason.contains("batch-max")), "{err}");
    }

    /// The repository's committed model directory and its runtime, if the
    /// `.venv` is there (`make test` creates it first).
    fn repo_scorer() -> Scorer {
        // At run time: a test binary may be shared by clones with one target dir.
        let model_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
        let scorer = Scorer::start(ScoringConfig { model_dir, ..Default::default() });
        let status = scorer.status();
        assert!(status.available, "the repository's models must serve: {:?}", status.unavailable_reason);
        scorer
    }

    #[tokio::test]
    async fn a_failing_primary_model_falls_back_for_the_whole_batch() {
        let scorer = repo_scorer();
        let version = scorer.status().serving.expect("serving");
        let features = FeatureVector { values: [1.0; FEATURE_COUNT], out_of_range: Vec::new() };
        let long = Duration::from_secs(5);
        let primary = scorer.score_within(&features, "k", long).await.expect("scored");
        assert_eq!(primary.variant, Variant::Primary);

        scorer.fail_primary(&version, true);
        let fallback = scorer.score_within(&features, "k", long).await.expect("scored by the fallback");
        assert_eq!((fallback.variant, fallback.model_version.as_str()), (Variant::Fallback, version.as_str()));
        assert_ne!(fallback.raw, primary.raw, "a different model answered");
        let status = scorer.status();
        assert_eq!(status.counters.fallback_used, 1);
        assert!(status.fallback_rate > 0.0);

        scorer.fail_primary(&version, false);
        let again = scorer.score_within(&features, "k", long).await.expect("scored");
        assert_eq!(again.variant, Variant::Primary);
        assert_eq!(again.raw, primary.raw);
    }
}
