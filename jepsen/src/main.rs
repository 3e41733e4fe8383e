//! `stockd-jepsen`: fault-injection tests of a real stockd cluster.
//!
//! `stockd-jepsen test ...` runs a test (or `--quick`: a few short ones);
//! `stockd-jepsen check --history FILE` checks a stored history again.
//! Exit status: 0 when every checker is satisfied, 1 on a violation (the
//! seed that replays it is printed), 2 when the harness itself failed.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use clap::Subcommand;
use jepsen::nemesis::FaultKind;
use jepsen::runner::NetMode;
use jepsen::runner::TestConfig;
use jepsen::workload::Workload;

#[derive(Parser)]
#[command(name = "stockd-jepsen", about = "Fault-injection tests of a real stockd cluster")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a test against a fresh cluster.
    Test(TestArgs),
    /// Run the checkers on a stored history.jsonl (and draw its timeline.png beside it).
    Check {
        #[arg(long)]
        history: PathBuf,
    },
}

#[derive(clap::Args)]
struct TestArgs {
    /// hot-sku or multi-sku.
    #[arg(long, default_value = "hot-sku")]
    workload: String,
    /// none, kill, pause, partition, clock, disk, rotate, all, or a comma-separated list.
    #[arg(long, default_value = "none")]
    nemesis: String,
    /// Seconds of workload (the final phase comes after).
    #[arg(long, default_value_t = 60)]
    time_limit: u64,
    /// Seed of the schedule and the clients' choices (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Directory of the run directories.
    #[arg(long, default_value = "store")]
    store: PathBuf,
    /// 3 or 5 nodes.
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Concurrent client processes (default: twice the nodes).
    #[arg(long)]
    concurrency: Option<u64>,
    /// TTL of the clients' reservations, in ms (default 1 h: nothing expires
    /// unless log time jumps by an hour). Short TTLs make reservations expire
    /// during the run; the checkers allow an expiry of a pending reservation
    /// at any point after its reserve. `--quick` uses 3 to 8 s in its clock run.
    #[arg(long, default_value_t = jepsen::workload::TTL_MS)]
    ttl_ms: u64,
    /// Largest clock offset of a `clock` fault, in s (offsets are 2 s up to
    /// this, ahead or behind). `--quick` uses twice the TTL in its clock run:
    /// skew about as large as the TTL moves expiry earlier or later, while
    /// skew of many TTLs leaves every expiry possible at any moment and the
    /// linearizability search can run out of steps (see jepsen/README.md).
    #[arg(long, default_value_t = jepsen::nemesis::SKEW_MAX_S)]
    skew_max_s: u64,
    /// A few short runs (under 5 minutes in total).
    #[arg(long)]
    quick: bool,
    /// Run against deliberately broken nodes: lost-ack (Reserve acknowledged
    /// without being proposed), peer-invalid-after-apply (a forwarded command
    /// applied, then reported invalid: an applied write reported failed),
    /// partial-cart (a cart's commit applied in one line group without its
    /// home record), split-drops-reservations (a split's new group starts
    /// without the reservations that moved to it), split-drops-homes (a
    /// split's new group starts without the cart records of the home slots
    /// it took), merge-without-freeze (a merge copies the right range
    /// without freezing it), move-skips-history (a moved replica skips the
    /// entries before it joined).
    #[arg(long)]
    bug: Option<String>,
    /// auto (namespaces when available), netns, or loopback.
    #[arg(long, default_value = "auto")]
    net: String,
    /// The stockd binary (default: the one beside this binary).
    #[arg(long)]
    stockd: Option<PathBuf>,
}

/// The planted bugs `--bug` can turn on (stockd's `src/failpoint.rs`).
const BUGS: &[&str] =
    &["lost-ack", "peer-invalid-after-apply", "partial-cart", "split-drops-reservations", "split-drops-homes", "merge-without-freeze", "move-skips-history"];

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Cmd::Test(args) => test(args).await,
            Cmd::Check { history } => check(&history),
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn default_stockd() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("find this executable")?;
    let beside = exe.with_file_name("stockd");
    anyhow::ensure!(beside.is_file(), "no stockd beside {}; build it (cargo build --workspace --bins) or pass --stockd", exe.display());
    Ok(beside)
}

async fn test(args: TestArgs) -> anyhow::Result<bool> {
    let workload = Workload::parse(&args.workload).with_context(|| format!("unknown --workload {:?} (hot-sku, multi-sku, cart)", args.workload))?;
    let nemesis = FaultKind::parse_list(&args.nemesis).with_context(|| format!("unknown --nemesis {:?}", args.nemesis))?;
    anyhow::ensure!(args.nodes == 3 || args.nodes == 5, "--nodes must be 3 or 5");
    anyhow::ensure!((1..=3600).contains(&args.time_limit), "--time-limit must be 1 to 3600 seconds");
    anyhow::ensure!(args.ttl_ms >= 1, "--ttl-ms must be at least 1");
    anyhow::ensure!((2..=3600).contains(&args.skew_max_s), "--skew-max-s must be 2 to 3600 seconds");
    if let Some(bug) = &args.bug {
        anyhow::ensure!(BUGS.contains(&bug.as_str()), "unknown --bug {bug:?} ({})", BUGS.join(", "));
    }
    let net = match args.net.as_str() {
        "auto" => NetMode::Auto,
        "netns" => NetMode::Netns,
        "loopback" => NetMode::Loopback,
        other => anyhow::bail!("unknown --net {other:?} (auto, netns, loopback)"),
    };
    let seed = args.seed.unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() % 1_000_000).unwrap_or(1));
    let base = TestConfig {
        workload,
        nemesis,
        nemesis_spec: args.nemesis.clone(),
        time_limit_s: args.time_limit,
        seed,
        store: args.store.clone(),
        nodes: args.nodes,
        concurrency: args.concurrency.unwrap_or(2 * args.nodes),
        ttl_ms: args.ttl_ms,
        skew_max_s: args.skew_max_s,
        bug: args.bug.clone(),
        net,
        stockd: match &args.stockd {
            Some(p) => p.clone(),
            None => default_stockd()?,
        },
    };
    let runs: Vec<TestConfig> = if !args.quick {
        vec![base]
    } else if let Some(bug) = base.bug.clone() {
        // A forwarded command needs a leader elsewhere than the node a
        // client prefers: many SKUs, whose groups' leaders are spread.
        let workload = match bug.as_str() {
            "peer-invalid-after-apply" => Workload::MultiSku,
            "partial-cart" | "split-drops-homes" => Workload::Cart,
            "split-drops-reservations" | "merge-without-freeze" | "move-skips-history" => Workload::MultiSku,
            _ => Workload::HotSku,
        };
        // A bug in splits or merges needs them to happen.
        let (nemesis, spec, secs) = match bug.as_str() {
            "split-drops-reservations" | "split-drops-homes" => (vec![FaultKind::Split], "split", 15),
            "merge-without-freeze" => (vec![FaultKind::Merge], "merge", 10),
            // A move needs a node without a replica of the group: 5 nodes.
            "move-skips-history" => (vec![FaultKind::Move], "move", 20),
            _ => (Vec::new(), "none", 10),
        };
        let nodes = if bug == "move-skips-history" { 5 } else { base.nodes };
        vec![TestConfig { workload, nemesis, nemesis_spec: spec.into(), time_limit_s: secs, concurrency: base.concurrency.max(2 * nodes), nodes, ..base }]
    } else {
        [
            (Workload::HotSku, "none", 10),
            (Workload::HotSku, "kill", 25),
            (Workload::MultiSku, "pause,rotate,split,merge", 25),
            (Workload::HotSku, "partition,clock", 25),
            (Workload::Cart, "kill,partition,split,merge", 25),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, (workload, spec, secs))| TestConfig {
            workload,
            nemesis: FaultKind::parse_list(spec).unwrap_or_default(),
            nemesis_spec: spec.into(),
            time_limit_s: secs,
            seed: base.seed + i as u64,
            // Clock skew on the leader against reservation expiry: short
            // TTLs (3 to 8 s) so that reservations do expire under it,
            // and skew up to twice the TTL.
            ttl_ms: if spec.contains("clock") { quick_ttl_ms(base.seed + i as u64) } else { base.ttl_ms },
            skew_max_s: if spec.contains("clock") { 2 * quick_ttl_ms(base.seed + i as u64) / 1_000 } else { base.skew_max_s },
            ..base.clone()
        })
        .collect()
    };
    let mut all_valid = true;
    let mut lines = Vec::new();
    for config in &runs {
        println!("== {} (seed {})", config.replay_command(), config.seed);
        let outcome = jepsen::runner::run_test(config).await?;
        println!("{}", outcome.summary);
        let verdict = if outcome.valid { "valid" } else { "INVALID" };
        println!("{verdict}: {}", outcome.dir.display());
        if !outcome.valid {
            println!("replay with: {}", config.replay_command());
        }
        all_valid &= outcome.valid;
        lines.push(format!("{verdict:<8} {}", config.replay_command()));
        for failed in &outcome.failed {
            lines.push(format!("         {failed}"));
        }
    }
    if runs.len() > 1 {
        println!("== summary");
        for line in lines {
            println!("{line}");
        }
    }
    Ok(all_valid)
}

/// The TTL of the quick clock run of `seed`: 3 to 8 s.
fn quick_ttl_ms(seed: u64) -> u64 {
    3_000 + seed % 6 * 1_000
}

fn check(path: &std::path::Path) -> anyhow::Result<bool> {
    let events = jepsen::history::read_jsonl(path)?;
    let ops = jepsen::history::operations(&events)?;
    let (valid, results) = jepsen::checks::check_all(&ops, &jepsen::checks::ClockFaults::from_events(&events), 20_000_000);
    let plot = path.with_file_name("timeline.png");
    if let Err(e) = jepsen::plot::timeline(&events, &plot) {
        println!("warning: no timeline plot: {e:#}");
    }
    println!("{}", serde_json::to_string_pretty(&results)?);
    println!("{}", if valid { "valid" } else { "INVALID" });
    Ok(valid)
}
