//! The scoring worker: one OS thread that owns every ort session.
//!
//! Requests and control messages arrive on one bounded channel, in order, so
//! a version is installed before any request routed to it can arrive. The
//! worker takes the first job, then drains what is queued until it holds
//! `batch_max` requests, and runs one session call per version present in
//! the batch (one in steady state, two during an A/B split).
//!
//! Whether it also waits, at most `batch_wait` after the first request, for
//! more to arrive depends on the previous batch: after a batch of one
//! request (callers arrive one at a time, the queue was empty) it does not
//! wait, since a lone caller would only pay the wait; after a larger batch
//! (callers are concurrent) it does, so that batches fill. A batch-1 session
//! call takes a few microseconds, so under light load scoring is quickest
//! unbatched, and under heavy load the queue fills batches anyway. Requests whose caller already gave up
//! are dropped unscored. A primary model that fails scores the batch with
//! the version's fallback. Replies go out first; shadow scoring and drift
//! counting come after, off the callers' path.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::mpsc::TryRecvError;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::PoisonError;
use std::time::Duration;
use std::time::Instant;

use hdrhistogram::Histogram;
use tokio::sync::oneshot;

use crate::calibration::Calibration;
use crate::drift::DriftMonitor;
use crate::drift::DRIFT_WINDOW_REQUESTS;
use crate::error::ModelError;
use crate::error::ScoreError;
use crate::features::FEATURE_COUNT;
use crate::registry::Route;
use crate::registry::Variant;
use crate::registry::VersionModels;
use crate::score::Score;

/// Highest value the latency histogram tracks: 60 s in microseconds.
const LATENCY_US_MAX: u64 = 60_000_000;

/// One request for the worker.
pub(crate) struct ScoreRequest {
    pub features: [f32; FEATURE_COUNT],
    pub route: Route,
    pub reply: oneshot::Sender<Result<Score, ScoreError>>,
}

/// What the worker receives.
pub(crate) enum Job {
    Score(ScoreRequest),
    /// A verified version's sessions; requests may name it from now on.
    Install {
        version: String,
        models: Box<VersionModels>,
    },
    /// Makes the primary model of a version fail, to exercise the fallback.
    #[cfg(test)]
    FailPrimary {
        version: String,
        fail: bool,
    },
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub requests: AtomicU64,
    pub scored: AtomicU64,
    pub fallback_used: AtomicU64,
    pub timeouts: AtomicU64,
    pub overloaded: AtomicU64,
    pub disabled: AtomicU64,
    pub unavailable: AtomicU64,
    pub errors: AtomicU64,
}

pub(crate) fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

pub(crate) struct Histograms {
    /// Microseconds of each session call that answered callers.
    pub inference_us: Histogram<u64>,
    /// Requests per batch.
    pub batch_size: Histogram<u64>,
}

/// Comparisons of the two arms' scores on the same requests.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ShadowTally {
    pub compared: u64,
    /// Both scores on the same side of the serving version's checkout threshold.
    pub agreed: u64,
    pub abs_diff_sum: f64,
    /// Shadow session calls that failed (their requests are not compared).
    pub failed: u64,
}

/// What the worker reports to the status.
pub(crate) struct Telemetry {
    pub counters: Counters,
    pub histograms: Mutex<Histograms>,
    pub shadow: Mutex<ShadowTally>,
    pub drift: Mutex<DriftMonitor>,
}

impl Telemetry {
    pub fn new() -> Self {
        let histogram = || Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("constant histogram bounds are valid");
        Self {
            counters: Counters::default(),
            histograms: Mutex::new(Histograms { inference_us: histogram(), batch_size: histogram() }),
            shadow: Mutex::new(ShadowTally::default()),
            drift: Mutex::new(DriftMonitor::new(DRIFT_WINDOW_REQUESTS)),
        }
    }
}

/// Locks a mutex whose data stays consistent even if a holder panicked
/// (counters and histograms only).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) struct Worker {
    jobs: Receiver<Job>,
    models: HashMap<String, VersionModels>,
    telemetry: Arc<Telemetry>,
    batch_max: usize,
    batch_wait: Duration,
    /// The previous batch had more than one request: wait for more.
    concurrent: bool,
    #[cfg(test)]
    failing: std::collections::HashSet<String>,
}

/// The outcome of one request before it is sent.
struct Scored {
    raw: f64,
    p_sellable: f64,
    variant: Variant,
}

impl Worker {
    pub fn new(jobs: Receiver<Job>, telemetry: Arc<Telemetry>, batch_max: usize, batch_wait: Duration) -> Self {
        Self {
            jobs,
            models: HashMap::new(),
            telemetry,
            batch_max: batch_max.max(1),
            batch_wait,
            concurrent: false,
            #[cfg(test)]
            failing: std::collections::HashSet::new(),
        }
    }

    /// Runs until every sender is gone.
    pub fn run(mut self) {
        let mut batch: Vec<ScoreRequest> = Vec::with_capacity(self.batch_max);
        loop {
            let Ok(first) = self.jobs.recv() else { return };
            self.accept(first, &mut batch);
            let wait_until = Instant::now() + self.batch_wait;
            let mut open = true;
            while batch.len() < self.batch_max {
                let job = match self.jobs.try_recv() {
                    Ok(job) => job,
                    Err(TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                    Err(TryRecvError::Empty) => {
                        let now = Instant::now();
                        if batch.is_empty() || !self.concurrent || now >= wait_until {
                            break;
                        }
                        match self.jobs.recv_timeout(wait_until - now) {
                            Ok(job) => job,
                            Err(RecvTimeoutError::Timeout) => break,
                            Err(RecvTimeoutError::Disconnected) => {
                                open = false;
                                break;
                            }
                        }
                    }
                };
                self.accept(job, &mut batch);
            }
            if !batch.is_empty() {
                self.concurrent = batch.len() > 1;
                self.score_batch(&mut batch);
            }
            if !open {
                return;
            }
        }
    }

    fn accept(&mut self, job: Job, batch: &mut Vec<ScoreRequest>) {
        match job {
            Job::Score(request) => {
                if !request.reply.is_closed() {
                    batch.push(request);
                }
            }
            Job::Install { version, models } => {
                self.models.insert(version, *models);
            }
            #[cfg(test)]
            Job::FailPrimary { version, fail } => {
                if fail {
                    self.failing.insert(version);
                } else {
                    self.failing.remove(&version);
                }
            }
        }
    }

    fn score_batch(&mut self, batch: &mut Vec<ScoreRequest>) {
        batch.retain(|r| !r.reply.is_closed());
        if batch.is_empty() {
            return;
        }
        let telemetry = Arc::clone(&self.telemetry);
        let counters = &telemetry.counters;
        let mut outcomes: Vec<Option<Result<Scored, ScoreError>>> = (0..batch.len()).map(|_| None).collect();
        let mut call_us: Vec<u64> = Vec::with_capacity(2);
        for (version, indices) in group_by(batch.iter().map(|r| r.route.version.as_str())) {
            let rows: Vec<[f32; FEATURE_COUNT]> = indices.iter().map(|&i| batch[i].features).collect();
            let n = rows.len() as u64;
            let result = self.score_rows(version, &rows, &mut call_us);
            match result {
                Ok((variant, scores)) => {
                    if variant == Variant::Fallback {
                        bump(&counters.fallback_used, n);
                    }
                    for (&i, (raw, p_sellable)) in indices.iter().zip(scores) {
                        outcomes[i] = Some(Ok(Scored { raw, p_sellable, variant }));
                    }
                }
                Err(error) => {
                    if matches!(error, ScoreError::Failed { .. }) {
                        bump(&counters.fallback_used, n);
                    }
                    bump(&counters.errors, n);
                    for &i in &indices {
                        outcomes[i] = Some(Err(error.clone()));
                    }
                }
            }
        }

        // Counters and histograms before the replies, so that a caller that
        // has its score sees it counted.
        bump(&counters.scored, outcomes.iter().filter(|o| matches!(o, Some(Ok(_)))).count() as u64);
        {
            let mut histograms = lock(&telemetry.histograms);
            histograms.batch_size.saturating_record(batch.len() as u64);
            for us in call_us {
                histograms.inference_us.saturating_record(us.max(1));
            }
        }
        // Reply; keep what shadow scoring and drift need.
        let mut followups: Vec<([f32; FEATURE_COUNT], Route, f64)> = Vec::with_capacity(batch.len());
        for (request, outcome) in batch.drain(..).zip(outcomes) {
            let outcome = outcome.unwrap_or_else(|| Err(ScoreError::Failed { reason: "request was not scored".to_owned() }));
            let reply = match outcome {
                Ok(s) => {
                    followups.push((request.features, request.route.clone(), s.p_sellable));
                    Ok(Score { p_sellable: s.p_sellable, raw: s.raw, model_version: request.route.version, variant: s.variant, arm: request.route.arm })
                }
                Err(e) => Err(e),
            };
            // A caller that gave up meanwhile has dropped its receiver.
            let _ = request.reply.send(reply);
        }
        self.shadow(&followups);
        let mut drift = lock(&self.telemetry.drift);
        for (features, route, p) in &followups {
            drift.record(&route.version, features, *p);
        }
    }

    /// Scores rows with the version's primary model, or its fallback if the
    /// primary fails: the variant used and (raw, calibrated) per row.
    fn score_rows(&mut self, version: &str, rows: &[[f32; FEATURE_COUNT]], call_us: &mut Vec<u64>) -> Result<(Variant, Vec<(f64, f64)>), ScoreError> {
        #[cfg(test)]
        let fail_primary = self.failing.contains(version);
        #[cfg(not(test))]
        let fail_primary = false;
        let Some(models) = self.models.get_mut(version) else {
            return Err(ScoreError::Unavailable { reason: format!("version {version} has no sessions") });
        };
        let primary = if fail_primary {
            Err(ModelError::Inference { reason: "primary model failure injected by a test".to_owned() })
        } else {
            run_timed(models, Variant::Primary, rows, call_us)
        };
        match primary {
            Ok(scores) => Ok((Variant::Primary, scores)),
            Err(primary_error) => {
                tracing::warn!(version, error = %primary_error, rows = rows.len(), "primary model failed; scoring with the fallback");
                match run_timed(models, Variant::Fallback, rows, call_us) {
                    Ok(scores) => Ok((Variant::Fallback, scores)),
                    Err(fallback_error) => {
                        tracing::error!(version, error = %fallback_error, "fallback model failed too");
                        Err(ScoreError::Failed { reason: format!("primary: {primary_error}; fallback: {fallback_error}") })
                    }
                }
            }
        }
    }

    /// Scores each request with the other arm's version and tallies how the
    /// two compare. Only the primary model is used: a failing shadow call is
    /// counted, not retried.
    fn shadow(&mut self, followups: &[([f32; FEATURE_COUNT], Route, f64)]) {
        let with_shadow: Vec<&([f32; FEATURE_COUNT], Route, f64)> = followups.iter().filter(|f| f.1.shadow.is_some()).collect();
        if with_shadow.is_empty() {
            return;
        }
        let mut tally = ShadowTally::default();
        for (version, indices) in group_by(with_shadow.iter().map(|f| f.1.shadow.as_deref().unwrap_or_default())) {
            let Some(models) = self.models.get_mut(version) else {
                tally.failed += indices.len() as u64;
                continue;
            };
            let rows: Vec<[f32; FEATURE_COUNT]> = indices.iter().map(|&i| with_shadow[i].0).collect();
            let Ok(scores) = run_calibrated(&mut models.primary, &models.primary_calibration, &rows) else {
                tally.failed += indices.len() as u64;
                continue;
            };
            for (&i, (_, shadow_p)) in indices.iter().zip(scores) {
                let (_, route, served_p) = with_shadow[i];
                let threshold = route.checkout_threshold;
                tally.compared += 1;
                if (*served_p >= threshold) == (shadow_p >= threshold) {
                    tally.agreed += 1;
                }
                tally.abs_diff_sum += (served_p - shadow_p).abs();
            }
        }
        let mut shared = lock(&self.telemetry.shadow);
        shared.compared += tally.compared;
        shared.agreed += tally.agreed;
        shared.abs_diff_sum += tally.abs_diff_sum;
        shared.failed += tally.failed;
    }
}

fn run_timed(models: &mut VersionModels, variant: Variant, rows: &[[f32; FEATURE_COUNT]], call_us: &mut Vec<u64>) -> Result<Vec<(f64, f64)>, ModelError> {
    let (session, calibration) = models.session(variant);
    let started = Instant::now();
    let result = run_calibrated(session, calibration, rows);
    call_us.push(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
    result
}

fn run_calibrated(session: &mut crate::runtime::ModelSession, calibration: &Calibration, rows: &[[f32; FEATURE_COUNT]]) -> Result<Vec<(f64, f64)>, ModelError> {
    Ok(session.run(rows)?.into_iter().map(|raw| (raw, calibration.apply(raw))).collect())
}

/// Indices of equal keys, in order of first appearance.
fn group_by<'a>(keys: impl Iterator<Item = &'a str>) -> Vec<(&'a str, Vec<usize>)> {
    let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
    for (i, key) in keys.enumerate() {
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, indices)) => indices.push(i),
            None => groups.push((key, vec![i])),
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::registry::Arm;

    fn request(version: &str) -> (ScoreRequest, oneshot::Receiver<Result<Score, ScoreError>>) {
        let (reply, answer) = oneshot::channel();
        let route = Route { version: version.to_owned(), arm: Arm::Serving, shadow: None, checkout_threshold: 0.5 };
        (ScoreRequest { features: [0.0; FEATURE_COUNT], route, reply }, answer)
    }

    #[test]
    fn queued_requests_are_drained_in_batches_of_at_most_batch_max() {
        let (jobs, receiver) = std::sync::mpsc::sync_channel(64);
        let telemetry = Arc::new(Telemetry::new());
        let mut answers = Vec::new();
        for i in 0..40 {
            let (request, answer) = request("v1");
            if i == 5 {
                // A caller that gave up is not scored.
                drop(answer);
            } else {
                answers.push(answer);
            }
            jobs.send(Job::Score(request)).expect("queued");
        }
        drop(jobs);
        Worker::new(receiver, Arc::clone(&telemetry), 32, Duration::from_micros(200)).run();
        let histograms = lock(&telemetry.histograms);
        assert_eq!(histograms.batch_size.len(), 2, "39 live requests make two batches");
        assert_eq!(histograms.batch_size.max(), 32);
        assert_eq!(histograms.batch_size.min(), 7, "the request given up is not in a batch");
        for mut answer in answers {
            // No sessions were installed for v1: each request is answered.
            match answer.try_recv() {
                Ok(Err(ScoreError::Unavailable { reason })) => assert!(reason.contains("v1")),
                other => panic!("unexpected answer {other:?}"),
            }
        }
    }

    #[test]
    fn groups_keep_first_appearance_order() {
        let groups = group_by(["v1", "v2", "v1", "v3", "v2"].into_iter());
        assert_eq!(groups, vec![("v1", vec![0, 2]), ("v2", vec![1, 4]), ("v3", vec![3])]);
    }
}
