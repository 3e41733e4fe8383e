//! stockd-sim: writes labelled training rows for the availability model.
//!
//! `stockd-sim --seed 7 --out data/sim/rows.csv` writes the rows and, next to
//! them, `rows.meta.json` with the simulator version, seed and parameters.

use std::fs::File;
use std::io::BufWriter;
use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use models::sim;

#[derive(Debug, Parser)]
#[command(name = "stockd-sim", about = "Simulate a marketplace's inventory streams and write labelled availability rows")]
struct Args {
    /// Seed of every random choice: the same seed writes the same rows.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Rows file (CSV); rows.meta.json is written beside it.
    #[arg(long, default_value = "data/sim/rows.csv")]
    out: PathBuf,
    /// Simulated hours written as rows (after the warm-up).
    #[arg(long)]
    hours: Option<u64>,
    #[arg(long)]
    skus: Option<usize>,
    #[arg(long)]
    locations: Option<usize>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut params = sim::SimParams::new(args.seed);
    params.hours = args.hours.unwrap_or(params.hours);
    params.skus = args.skus.unwrap_or(params.skus);
    params.locations = args.locations.unwrap_or(params.locations);
    anyhow::ensure!(params.hours >= 1 && params.hours <= 24 * 365, "--hours must be between 1 and 8760");
    anyhow::ensure!(params.skus >= 1 && params.skus <= 100_000, "--skus must be between 1 and 100000");
    anyhow::ensure!(params.locations >= 2 && params.locations <= 10_000, "--locations must be between 2 and 10000");
    if let Some(dir) = args.out.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let file = File::create(&args.out).with_context(|| format!("create {}", args.out.display()))?;
    let mut out = BufWriter::new(file);
    let summary = sim::run(&params, &mut out).with_context(|| format!("write {}", args.out.display()))?;
    out.flush().with_context(|| format!("write {}", args.out.display()))?;
    let meta = serde_json::json!({
        "simulator_version": sim::SIMULATOR_VERSION,
        "seed": params.seed,
        "params": params,
        "rows": summary.rows,
        "summary": summary,
    });
    let meta_path = args.out.with_file_name("rows.meta.json");
    std::fs::write(&meta_path, serde_json::to_string_pretty(&meta)? + "\n").with_context(|| format!("write {}", meta_path.display()))?;
    println!(
        "{} rows ({} sellable, rule promised {}), {} failed shipments, {} stale scans, {:.0}% of records inaccurate at the end -> {}",
        summary.rows,
        summary.positives,
        summary.rule_promises,
        summary.shipments_failed,
        summary.stale_scans,
        summary.inaccurate_record_share * 100.0,
        args.out.display()
    );
    Ok(())
}
