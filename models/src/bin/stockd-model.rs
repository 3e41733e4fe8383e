//! `stockd-model`: check and measure the model versions of a model directory.
//!
//! - `verify --model-dir DIR`: loads every version as the server does and
//!   prints the status as JSON; exits 1 when no version is valid.
//! - `bench --model-dir DIR [--requests N]`: latency of the serving version's
//!   model alone at batch 1 (direct session calls), then through the
//!   batcher, one caller at a time and with concurrent callers.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use clap::Subcommand;
use hdrhistogram::Histogram;
use models::features::FeatureVector;
use models::features::FEATURE_COUNT;
use models::manifest::read_verified;
use models::manifest::Golden;
use models::manifest::Manifest;
use models::registry::verify_version;
use models::runtime::Runtime;
use models::Scorer;
use models::ScoringConfig;

#[derive(Parser)]
#[command(name = "stockd-model", about = "Verify and benchmark stockd model versions")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load every version under the model directory and print the status.
    Verify {
        #[arg(long)]
        model_dir: PathBuf,
        /// The onnxruntime library (default: found in the repository's .venv).
        #[arg(long)]
        ort_dylib: Option<PathBuf>,
    },
    /// Measure inference latency of the serving version.
    Bench {
        #[arg(long)]
        model_dir: PathBuf,
        #[arg(long)]
        ort_dylib: Option<PathBuf>,
        /// Requests per measurement.
        #[arg(long, default_value_t = 10_000)]
        requests: u64,
        /// Concurrent callers of the batched measurement.
        #[arg(long, default_value_t = 32)]
        concurrency: u64,
        #[arg(long, default_value_t = ScoringConfig::default().batch_max)]
        batch_max: usize,
        #[arg(long, default_value_t = ScoringConfig::default().batch_wait_us)]
        batch_wait_us: u64,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_writer(std::io::stderr).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Verify { model_dir, ort_dylib } => verify(model_dir, ort_dylib),
        Command::Bench { model_dir, ort_dylib, requests, concurrency, batch_max, batch_wait_us } => {
            let config = ScoringConfig { model_dir, ort_dylib, batch_max, batch_wait_us, ..ScoringConfig::default() };
            bench(config, requests.max(1), concurrency.max(1))
        }
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("stockd-model: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn verify(model_dir: PathBuf, ort_dylib: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let scorer = Scorer::start(ScoringConfig { model_dir, ort_dylib, ..ScoringConfig::default() });
    let status = scorer.status();
    println!("{}", serde_json::to_string_pretty(&status).context("serialize the status")?);
    Ok(if status.versions.is_empty() { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 60_000_000, 3).context("create a histogram")
}

fn elapsed_us(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX).max(1)
}

fn report(label: &str, h: &Histogram<u64>, wall: Duration) {
    let rate = h.len() as f64 / wall.as_secs_f64().max(1e-9);
    println!(
        "{label:<44} n={:<7} p50={:>6} us  p99={:>6} us  max={:>6} us  {:>9.0} req/s",
        h.len(),
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.max(),
        rate
    );
}

fn bench(config: ScoringConfig, requests: u64, concurrency: u64) -> anyhow::Result<ExitCode> {
    config.validate().context("check the scoring config")?;
    let scorer = Scorer::start(config.clone());
    let status = scorer.status();
    let (Some(version), Some(dylib)) = (status.serving.clone(), status.runtime.dylib.clone()) else {
        anyhow::bail!("nothing to measure: {}", status.unavailable_reason.unwrap_or_default());
    };
    let dir = status.versions.iter().find(|v| v.version == version).map(|v| v.dir.clone()).context("find the serving version")?;
    let (manifest, _) = Manifest::read(&dir)?;
    let (golden_path, golden_bytes) = read_verified(&dir, &manifest.golden)?;
    let rows: Vec<[f32; FEATURE_COUNT]> = Golden::parse(&golden_path, &golden_bytes)?.rows.iter().map(|r| r.values()).collect();
    println!("version {version} from {}, onnxruntime {}, {} distinct input rows", dir.display(), dylib.display(), rows.len());
    println!("batcher: batch-max {} batch-wait-us {} deadline-us {}", config.batch_max, config.batch_wait_us, config.deadline_us);

    // The model alone: direct session calls at batch 1, no batcher.
    let runtime = Runtime::load(&dylib)?;
    let mut models = verify_version(&runtime, &dir)?.models;
    for (label, session) in [("primary model alone, batch 1", &mut models.primary), ("fallback model alone, batch 1", &mut models.fallback)] {
        for row in rows.iter().cycle().take(200) {
            session.run(std::slice::from_ref(row))?;
        }
        let mut h = histogram()?;
        let wall = Instant::now();
        for row in rows.iter().cycle().take(usize::try_from(requests).unwrap_or(usize::MAX)) {
            let started = Instant::now();
            session.run(std::slice::from_ref(row))?;
            h.saturating_record(elapsed_us(started));
        }
        report(label, &h, wall.elapsed());
    }

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().context("start tokio")?;
    runtime.block_on(async {
        let deadline = Duration::from_secs(1);
        let vector = |i: u64| FeatureVector { values: rows[(i % rows.len() as u64) as usize], out_of_range: Vec::new() };
        for i in 0..200 {
            scorer.score_within(&vector(i), "warm-up", deadline).await?;
        }

        let mut h = histogram()?;
        let wall = Instant::now();
        for i in 0..requests {
            let started = Instant::now();
            scorer.score_within(&vector(i), &format!("key-{i}"), deadline).await?;
            h.saturating_record(elapsed_us(started));
        }
        report("through the batcher, 1 caller", &h, wall.elapsed());

        let wall = Instant::now();
        let mut callers = Vec::new();
        for caller in 0..concurrency {
            let scorer = scorer.clone();
            let rows = rows.clone();
            callers.push(tokio::spawn(async move {
                let mut h = histogram()?;
                let mut i = caller;
                while i < requests {
                    let vector = FeatureVector { values: rows[(i % rows.len() as u64) as usize], out_of_range: Vec::new() };
                    let started = Instant::now();
                    scorer.score_within(&vector, &format!("key-{i}"), deadline).await?;
                    h.saturating_record(elapsed_us(started));
                    i += concurrency;
                }
                anyhow::Ok(h)
            }));
        }
        let mut h = histogram()?;
        for caller in callers {
            h.add(caller.await.context("join a caller")??).context("merge histograms")?;
        }
        report(&format!("through the batcher, {concurrency} callers"), &h, wall.elapsed());
        anyhow::Ok(())
    })?;
    let status = scorer.status();
    println!(
        "batches: {} mean size {:.2} p99 {} max {}; session calls p50 {} us p99 {} us max {} us; fallback used {}",
        status.batch_size.batches,
        status.batch_size.mean,
        status.batch_size.p99,
        status.batch_size.max,
        status.inference.p50_us,
        status.inference.p99_us,
        status.inference.max_us,
        status.counters.fallback_used
    );
    Ok(ExitCode::SUCCESS)
}
