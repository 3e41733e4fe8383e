//! `stockctl bench`: stock SKUs, load the cluster with 1-unit reservations
//! from concurrent clients, then check that no unit was created or lost.
//!
//! Invariants checked at the end, on every stocked SKU, with STRONG reads:
//! - `on_hand` equals what was stocked (reservations never touch it);
//! - `ok_units <= reserved <= ok_units + unknown_units`, where unknown units
//!   are those of calls whose outcome is unknown (may or may not be applied);
//! - `reserved + committed <= on_hand` (nothing oversold).
//!
//! SKU names are unique per run (a run id) and start with a hex digit taken
//! from a hash of their index, so they spread over shard ranges split on the
//! first character.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::{self, StreamExt};
use hdrhistogram::Histogram;
use raft::group::wall_clock_ms;
use tokio::time::Instant;

use stockd_client::{Client, ClientError};
use stockd_proto::limits::BATCH_CHECKS_MAX;
use stockd_proto::v1::{
    AdjustRequest, AdjustmentKind, BatchReserveRequest, CheckAvailabilityBatchRequest, CheckAvailabilityRequest, Consistency, Decision, GetPositionRequest,
    Line, Outcome, RequestContext, ReserveRequest, ReserveResponse,
};

/// Units stocked on the one SKU of the hot workload.
pub const HOT_STOCK_UNITS: u64 = 50_000_000;
/// Units stocked on every SKU of the uniform workload, at least.
pub const UNIFORM_STOCK_UNITS_MIN: u64 = 100_000;
/// Units of one receipt event; larger stocks take several events.
pub const RECEIPT_UNITS_MAX: u64 = 1_000_000;
/// TTL of benchmark reservations: long enough that none expires before the check.
pub const RESERVATION_TTL_MS: u64 = 3_600_000;
/// Concurrent requests while stocking and checking.
pub const SETUP_CONCURRENCY: usize = 32;
/// Largest latency the histograms hold, in µs (anything slower is clamped).
pub const LATENCY_US_MAX: u64 = 3_600_000_000;
/// Feed source of the stocking receipts.
pub const STOCK_SOURCE: &str = "stockctl-bench";

/// Which SKUs the reservations go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Every reservation on one SKU (a flash sale).
    Hot,
    /// Reservations spread uniformly over many SKUs.
    Uniform,
    /// Carts of `--lines` distinct SKUs drawn from many (most in different
    /// shard groups): all-or-nothing reservations across groups.
    Cart,
    /// CheckAvailability (product page, local replica) over many SKUs: the
    /// probable path end to end (read, features, model, policy). Read-only
    /// after stocking.
    Check,
}

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchConfig {
    pub workload: Workload,
    /// SKUs of the uniform workload (the hot workload uses one).
    pub skus: u32,
    pub clients: u32,
    pub duration: Duration,
    pub location: String,
    /// Reservations per BatchReserve call (checks per CheckAvailabilityBatch
    /// call in the check workload); 1 sends plain calls.
    pub batch: u32,
    /// Lines per reservation: distinct SKUs (the cart workload), else 1.
    pub lines: u32,
    /// SKU names start with this (so that they fall in one range); default:
    /// a hex digit spreading them over the ranges.
    pub sku_prefix: Option<String>,
    /// Print the rate of answered reservations on stderr this often.
    pub report_every: Option<Duration>,
}

impl BenchConfig {
    /// Number of SKUs this run stocks and loads.
    pub fn sku_count(&self) -> u32 {
        match self.workload {
            Workload::Hot => 1,
            Workload::Uniform | Workload::Cart | Workload::Check => self.skus.max(1),
        }
    }

    /// Units stocked on each SKU.
    pub fn stock_per_sku(&self) -> u64 {
        match self.workload {
            Workload::Hot => HOT_STOCK_UNITS,
            Workload::Uniform | Workload::Cart | Workload::Check => UNIFORM_STOCK_UNITS_MIN.max(HOT_STOCK_UNITS / u64::from(self.sku_count())),
        }
    }
}

/// What a run measured and found.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    pub workload: Workload,
    pub clients: u32,
    pub batch: u32,
    pub skus: u32,
    /// Lines per reservation.
    pub lines: u32,
    /// Measured length of the load phase.
    pub duration: Duration,
    /// Calls answered (latency recorded).
    pub calls: u64,
    /// Reservations made.
    pub ok: u64,
    /// Reservations refused by a business rule.
    pub refused: u64,
    /// Reservations without an answer (including those with unknown outcome).
    pub errors: u64,
    /// Reservations whose outcome is unknown (a subset of `errors`).
    pub unknown: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    /// Check workload: answers that carried no model score (degraded).
    pub unscored: u64,
    /// The first call error seen, to tell what went wrong.
    pub first_error: Option<String>,
    /// Conservation violations found by the final check; empty when conserved.
    pub violations: Vec<String>,
}

impl BenchReport {
    pub fn conserved(&self) -> bool {
        self.violations.is_empty()
    }

    /// Reservations answered (made or refused) per second.
    pub fn ops_per_s(&self) -> f64 {
        per_second(self.ok + self.refused, self.duration)
    }

    /// Calls answered per second.
    pub fn calls_per_s(&self) -> f64 {
        per_second(self.calls, self.duration)
    }
}

fn per_second(count: u64, duration: Duration) -> f64 {
    let secs = duration.as_secs_f64();
    if secs > 0.0 {
        count as f64 / secs
    } else {
        0.0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("failed to stock {sku}: {source}")]
    Stock { sku: String, source: ClientError },
    #[error("stocking {sku} was refused: {outcome}")]
    StockRefused { sku: String, outcome: String },
    #[error("a request was refused as invalid: {0}")]
    InvalidArgument(String),
    #[error("failed to check {sku}: {source}")]
    Check { sku: String, source: ClientError },
    #[error("a client task failed: {0}")]
    Task(String),
}

impl BenchError {
    /// The error of the cluster behind this failure, if any.
    pub fn client_error(&self) -> Option<&ClientError> {
        match self {
            BenchError::Stock { source, .. } | BenchError::Check { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// A run id: the current time in ms since the epoch, in hex.
pub fn run_id() -> String {
    format!("{:x}", wall_clock_ms())
}

/// SplitMix64: a fixed, well mixed hash of a 64-bit value.
pub fn splitmix64(value: u64) -> u64 {
    let mut z = value.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Prints, every `every`, the reservations answered (made or refused) per
/// second since the last line, on stderr.
async fn report_rates(tally: Arc<Tally>, every: Duration, started: Instant) {
    let answered = || tally.ok.load(Ordering::Relaxed) + tally.refused.load(Ordering::Relaxed);
    let mut last = (started, answered());
    loop {
        tokio::time::sleep(every).await;
        let now = (Instant::now(), answered());
        let rate = per_second(now.1 - last.1, now.0.duration_since(last.0));
        eprintln!("bench: {:>6.1} s  {rate:>9.0} reservations/s", now.0.duration_since(started).as_secs_f64());
        last = now;
    }
}

/// Name of SKU `index` of run `run`: a leading hex digit from a hash of the
/// index (so SKUs spread over shard ranges), 7 more hash digits, the run id
/// and the index (so names are unique).
pub fn sku_name(run: &str, index: u32) -> String {
    let hash = splitmix64(u64::from(index));
    format!("{:x}{:07x}-b{run}-{index}", hash >> 60, (hash >> 32) & 0x0fff_ffff)
}

/// The clients of a benchmark: one stocks the SKUs as a feed would, the
/// other makes the load and the final reads (a checkout or a reader).
pub struct BenchClients {
    pub stock: Client,
    pub load: Client,
}

/// Stocks, loads and checks; see the module documentation.
pub async fn run(clients: &BenchClients, config: &BenchConfig) -> Result<BenchReport, BenchError> {
    let client = &clients.load;
    if config.workload == Workload::Check && config.batch as usize > BATCH_CHECKS_MAX {
        return Err(BenchError::InvalidArgument(format!("--batch: the check workload sends 1 to {} checks per call", BATCH_CHECKS_MAX)));
    }
    let run = run_id();
    let name = |index| match &config.sku_prefix {
        Some(prefix) => format!("{prefix}{:08x}-b{run}-{index}", splitmix64(u64::from(index)) >> 32),
        None => sku_name(&run, index),
    };
    let skus: Arc<Vec<String>> = Arc::new((0..config.sku_count()).map(name).collect());
    let stock = config.stock_per_sku();
    tracing::info!(run, skus = skus.len(), stock, "stocking");
    stock_all(&clients.stock, &run, &skus, &config.location, stock).await?;

    let tally = Arc::new(Tally::new(skus.len()));
    let end = Instant::now() + config.duration;
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(config.clients as usize);
    for task in 0..config.clients {
        let load = Load {
            client: client.clone(),
            run: run.clone(),
            task,
            skus: Arc::clone(&skus),
            location: config.location.clone(),
            batch: config.batch,
            lines: if config.workload == Workload::Cart { config.lines.max(1) } else { 1 },
            tally: Arc::clone(&tally),
            end,
        };
        tasks.push(if config.workload == Workload::Check { tokio::spawn(load.check()) } else { tokio::spawn(load.reserve()) });
    }
    let reporter = config.report_every.map(|every| tokio::spawn(report_rates(Arc::clone(&tally), every, started)));
    let mut latency = new_histogram();
    for task in tasks {
        let histogram = task.await.map_err(|error| BenchError::Task(error.to_string()))?;
        latency.add(&histogram).expect("histograms share their bounds");
    }
    let duration = started.elapsed();
    if let Some(reporter) = reporter {
        reporter.abort();
    }
    if let Some(message) = tally.fatal_message() {
        return Err(BenchError::InvalidArgument(message));
    }

    let violations = check_all(client, &skus, &config.location, stock, &tally).await?;
    Ok(BenchReport {
        workload: config.workload,
        clients: config.clients,
        batch: config.batch,
        skus: config.sku_count(),
        lines: if config.workload == Workload::Cart { config.lines.max(1) } else { 1 },
        duration,
        calls: latency.len(),
        ok: tally.ok.load(Ordering::Relaxed),
        refused: tally.refused.load(Ordering::Relaxed),
        errors: tally.errors.load(Ordering::Relaxed),
        unknown: tally.unknown.load(Ordering::Relaxed),
        p50_us: latency.value_at_quantile(0.50),
        p99_us: latency.value_at_quantile(0.99),
        p999_us: latency.value_at_quantile(0.999),
        max_us: latency.max(),
        unscored: tally.unscored.load(Ordering::Relaxed),
        first_error: tally.first_error(),
        violations,
    })
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("constant histogram bounds are valid")
}

/// Receipts `stock` units on every SKU, in events of at most
/// [`RECEIPT_UNITS_MAX`] sent in order per SKU (increasing `source_seq`).
async fn stock_all(client: &Client, run: &str, skus: &[String], location: &str, stock: u64) -> Result<(), BenchError> {
    let results: Vec<Result<(), BenchError>> = stream::iter(skus.iter().enumerate())
        .map(|(index, sku)| async move {
            let mut left = stock;
            let mut seq: u64 = 0;
            while left > 0 {
                let quantity = left.min(RECEIPT_UNITS_MAX);
                seq += 1;
                let request = AdjustRequest {
                    event_id: format!("bench-{run}-{index}-{seq}"),
                    sku: sku.clone(),
                    location: location.to_owned(),
                    kind: AdjustmentKind::Receipt as i32,
                    quantity,
                    reason: format!("stockctl bench {run}"),
                    source: STOCK_SOURCE.to_owned(),
                    source_seq: seq,
                    observed_at_ms: 0,
                };
                let response = client.adjust(request).await.map_err(|source| BenchError::Stock { sku: sku.clone(), source })?;
                if response.outcome() != Outcome::Ok {
                    return Err(BenchError::StockRefused { sku: sku.clone(), outcome: response.outcome().as_str_name().to_ascii_lowercase() });
                }
                left -= quantity;
            }
            Ok(())
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Reads every SKU with STRONG consistency and lists conservation violations.
async fn check_all(client: &Client, skus: &[String], location: &str, stock: u64, tally: &Tally) -> Result<Vec<String>, BenchError> {
    let results: Vec<Result<Option<String>, BenchError>> = stream::iter(skus.iter().enumerate())
        .map(|(index, sku)| async move {
            let request = GetPositionRequest { sku: sku.clone(), location: location.to_owned(), consistency: Consistency::Strong as i32, max_staleness_ms: 0 };
            let response = client.get_position(request).await.map_err(|source| BenchError::Check { sku: sku.clone(), source })?;
            let position = response.position.unwrap_or_default();
            let ok = tally.ok_units[index].load(Ordering::Relaxed);
            let unknown = tally.unknown_units[index].load(Ordering::Relaxed);
            Ok(conservation_violation(sku, stock, ok, unknown, position.on_hand, position.reserved, position.committed))
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .collect()
        .await;
    let mut violations = Vec::new();
    for result in results {
        if let Some(violation) = result? {
            violations.push(violation);
        }
    }
    violations.sort();
    Ok(violations)
}

/// Why a position breaks conservation, or `None` when it holds.
pub fn conservation_violation(sku: &str, stocked: u64, ok_units: u64, unknown_units: u64, on_hand: u64, reserved: u64, committed: u64) -> Option<String> {
    let mut broken = Vec::new();
    if on_hand != stocked {
        broken.push(format!("on_hand {on_hand} != stocked {stocked}"));
    }
    let reserved_max = ok_units.saturating_add(unknown_units);
    if reserved < ok_units || reserved > reserved_max {
        broken.push(format!("reserved {reserved} outside [{ok_units}, {reserved_max}]"));
    }
    if reserved.saturating_add(committed) > on_hand {
        broken.push(format!("reserved {reserved} + committed {committed} > on_hand {on_hand}"));
    }
    if broken.is_empty() {
        None
    } else {
        Some(format!("{sku}: {}", broken.join("; ")))
    }
}

/// Counters shared by the client tasks.
struct Tally {
    ok: AtomicU64,
    refused: AtomicU64,
    errors: AtomicU64,
    unknown: AtomicU64,
    unscored: AtomicU64,
    /// Per SKU: units reserved (outcome OK).
    ok_units: Vec<AtomicU64>,
    /// Per SKU: units of calls whose outcome is unknown.
    unknown_units: Vec<AtomicU64>,
    /// Set when the server refused the input: every task stops.
    fatal: AtomicBool,
    fatal_message: Mutex<Option<String>>,
    first_error: Mutex<Option<String>>,
}

impl Tally {
    fn new(skus: usize) -> Self {
        Self {
            ok: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            unknown: AtomicU64::new(0),
            unscored: AtomicU64::new(0),
            ok_units: (0..skus).map(|_| AtomicU64::new(0)).collect(),
            unknown_units: (0..skus).map(|_| AtomicU64::new(0)).collect(),
            fatal: AtomicBool::new(false),
            fatal_message: Mutex::new(None),
            first_error: Mutex::new(None),
        }
    }

    /// One reservation's answer; `sku_indexes`: its lines (one unit each).
    fn record_response(&self, sku_indexes: &[usize], response: &ReserveResponse) {
        if response.outcome() == Outcome::Ok {
            self.ok.fetch_add(1, Ordering::Relaxed);
            for &index in sku_indexes {
                self.ok_units[index].fetch_add(1, Ordering::Relaxed);
            }
        } else {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A call without an answer, for reservations of `lines` lines each
    /// (`sku_indexes`: all their lines).
    fn record_error(&self, sku_indexes: &[usize], lines: usize, error: &ClientError) {
        let reservations = (sku_indexes.len() / lines.max(1)) as u64;
        self.errors.fetch_add(reservations, Ordering::Relaxed);
        self.first_error.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get_or_insert_with(|| error.to_string());
        match error {
            // No retry can help: stop the run with the reason.
            ClientError::InvalidArgument(_) | ClientError::PermissionDenied(_) | ClientError::Unauthenticated(_) => {
                let message = match error {
                    ClientError::InvalidArgument(message) => message.clone(),
                    other => other.to_string(),
                };
                let mut fatal = self.fatal_message.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                fatal.get_or_insert(message);
                self.fatal.store(true, Ordering::Relaxed);
            }
            ClientError::InvalidAddress { .. } | ClientError::InvalidConfig(_) | ClientError::Unavailable { outcome_unknown: false, .. } => {}
            // The write may have been applied: count its units as unknown.
            ClientError::Unavailable { outcome_unknown: true, .. } | ClientError::Rpc { .. } => {
                self.unknown.fetch_add(reservations, Ordering::Relaxed);
                for &index in sku_indexes {
                    self.unknown_units[index].fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn first_error(&self) -> Option<String> {
        self.first_error.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    fn fatal_message(&self) -> Option<String> {
        self.fatal_message.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }
}

/// One client task of the load phase.
struct Load {
    client: Client,
    run: String,
    task: u32,
    skus: Arc<Vec<String>>,
    location: String,
    batch: u32,
    lines: u32,
    tally: Arc<Tally>,
    end: Instant,
}

impl Load {
    /// Reserves until `end`; returns the latency (µs) of every answered call.
    async fn reserve(self) -> Histogram<u64> {
        let mut latency = new_histogram();
        let mut random = splitmix64(wall_clock_ms() ^ (u64::from(self.task) << 32));
        let mut sequence: u64 = 0;
        let batch = self.batch.max(1) as usize;
        let per = (self.lines.max(1) as usize).min(self.skus.len());
        let mut sku_indexes: Vec<usize> = Vec::with_capacity(batch * per);
        let mut requests: Vec<ReserveRequest> = Vec::with_capacity(batch);
        while Instant::now() < self.end && !self.tally.fatal.load(Ordering::Relaxed) {
            sku_indexes.clear();
            requests.clear();
            for _ in 0..batch {
                let first = sku_indexes.len();
                while sku_indexes.len() < first + per {
                    random = splitmix64(random);
                    let index = (random % self.skus.len() as u64) as usize;
                    if !sku_indexes[first..].contains(&index) {
                        sku_indexes.push(index);
                    }
                }
                sequence += 1;
                requests.push(ReserveRequest {
                    reservation_id: format!("b{}-c{}-{sequence}", self.run, self.task),
                    lines: sku_indexes[first..]
                        .iter()
                        .map(|&index| Line { sku: self.skus[index].clone(), location: self.location.clone(), quantity: 1 })
                        .collect(),
                    ttl_ms: RESERVATION_TTL_MS,
                    risk_gate: None,
                });
            }
            let started = Instant::now();
            if batch == 1 {
                let request = requests.pop().expect("one request per call when batch is 1");
                match self.client.reserve(request).await {
                    Ok(response) => {
                        latency.saturating_record(elapsed_us(started));
                        self.tally.record_response(&sku_indexes, &response);
                    }
                    Err(error) => self.tally.record_error(&sku_indexes, per, &error),
                }
            } else {
                let request = BatchReserveRequest { reservations: std::mem::take(&mut requests) };
                match self.client.batch_reserve(request).await {
                    Ok(response) if response.results.len() == batch => {
                        latency.saturating_record(elapsed_us(started));
                        for (indexes, result) in sku_indexes.chunks(per).zip(&response.results) {
                            self.tally.record_response(indexes, result);
                        }
                    }
                    Ok(response) => {
                        let message = format!("BatchReserve answered {} results for {batch} reservations", response.results.len());
                        tracing::warn!(%message, "counting the batch as unknown");
                        let error = ClientError::Rpc { code: tonic::Code::Internal, message };
                        self.tally.record_error(&sku_indexes, per, &error);
                    }
                    Err(error) => self.tally.record_error(&sku_indexes, per, &error),
                }
            }
        }
        latency
    }

    /// Asks product-page availability of random SKUs until `end`, `batch`
    /// questions per call; returns the latency (µs) of every answered call.
    async fn check(self) -> Histogram<u64> {
        let mut latency = new_histogram();
        let mut random = splitmix64(wall_clock_ms() ^ (u64::from(self.task) << 32));
        let batch = self.batch.max(1) as usize;
        while Instant::now() < self.end && !self.tally.fatal.load(Ordering::Relaxed) {
            let mut indexes = Vec::with_capacity(batch);
            let mut checks = Vec::with_capacity(batch);
            for _ in 0..batch {
                random = splitmix64(random);
                let index = (random % self.skus.len() as u64) as usize;
                indexes.push(index);
                checks.push(CheckAvailabilityRequest {
                    sku: self.skus[index].clone(),
                    location: self.location.clone(),
                    quantity: 1,
                    context: RequestContext::ProductPage as i32,
                    consistency: Consistency::Any as i32,
                    route_key: format!("bench-{}-{random:x}", self.task),
                    ..Default::default()
                });
            }
            let started = Instant::now();
            let answers = if batch == 1 {
                let check = checks.pop().expect("one check per call when batch is 1");
                self.client.check_availability(check).await.map(|answer| vec![answer])
            } else {
                self.client.check_availability_batch(CheckAvailabilityBatchRequest { checks }).await.map(|r| r.answers)
            };
            match answers {
                Ok(answers) => {
                    latency.saturating_record(elapsed_us(started));
                    for answer in answers {
                        let counter = if answer.decision == Decision::Unavailable as i32 { &self.tally.refused } else { &self.tally.ok };
                        counter.fetch_add(1, Ordering::Relaxed);
                        if !answer.scored {
                            self.tally.unscored.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Err(error) => self.tally.record_error(&indexes, 1, &error),
            }
        }
        latency
    }
}

fn elapsed_us(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sku_names_are_unique_per_run_and_spread_over_leading_digits() {
        let names: Vec<String> = (0..256).map(|i| sku_name("18c2f", i)).collect();
        let unique: std::collections::HashSet<&String> = names.iter().collect();
        assert_eq!(unique.len(), names.len());
        let leading: std::collections::HashSet<char> = names.iter().filter_map(|n| n.chars().next()).collect();
        assert_eq!(leading.len(), 16, "all 16 hex digits lead some SKU: {leading:?}");
        assert!(names[7].ends_with("-b18c2f-7"), "{}", names[7]);
        assert_ne!(sku_name("a", 1), sku_name("b", 1));
    }

    #[test]
    fn conservation_allows_unknown_units_only() {
        assert_eq!(conservation_violation("s", 100, 10, 0, 100, 10, 0), None);
        assert_eq!(conservation_violation("s", 100, 10, 3, 100, 12, 0), None);
        assert!(conservation_violation("s", 100, 10, 3, 100, 14, 0).is_some());
        assert!(conservation_violation("s", 100, 10, 0, 100, 9, 0).is_some());
        assert!(conservation_violation("s", 100, 10, 0, 99, 10, 0).is_some());
        assert!(conservation_violation("s", 10, 10, 0, 10, 10, 1).is_some());
    }

    #[test]
    fn stock_covers_the_run() {
        let hot = BenchConfig {
            sku_prefix: None,
            report_every: None,
            workload: Workload::Hot,
            skus: 1000,
            clients: 64,
            duration: Duration::from_secs(10),
            location: "bench".to_owned(),
            batch: 1,
            lines: 1,
        };
        assert_eq!(hot.sku_count(), 1);
        assert_eq!(hot.stock_per_sku(), HOT_STOCK_UNITS);
        let uniform = BenchConfig { workload: Workload::Uniform, ..hot.clone() };
        assert_eq!(uniform.sku_count(), 1000);
        assert_eq!(uniform.stock_per_sku(), UNIFORM_STOCK_UNITS_MIN);
        let few = BenchConfig { workload: Workload::Uniform, skus: 2, ..hot };
        assert_eq!(few.stock_per_sku(), HOT_STOCK_UNITS / 2);
    }
}
