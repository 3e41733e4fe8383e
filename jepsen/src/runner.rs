//! One test: start the cluster, run the clients and the nemesis for the
//! time limit, heal, make the final reads, stop, check, write the run
//! directory:
//!
//! ```text
//! STORE/<workload>-<nemesis>-s<seed>-<unix ms>/
//!   config.json    the test's parameters (with the seed)
//!   n1/stockd.log  node logs (n1/data: its data dir)
//!   history.jsonl  the history
//!   results.json   every checker's verdict, errors and statistics
//!   timeline.png   throughput and latency over time, nemesis windows shaded
//! ```

use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use serde_json::json;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::checks;
use crate::cluster::Cluster;
use crate::cluster::NodeAddrs;
use crate::cluster::READY_TIMEOUT;
use crate::history;
use crate::history::Kind;
use crate::nemesis::FaultKind;
use crate::nemesis::Nemesis;
use crate::net::Net;
use crate::rng::Rng;
use crate::workload;
use crate::workload::Clients;
use crate::workload::Endpoints;
use crate::workload::Op;
use crate::workload::Shared;
use crate::workload::Workload;

/// Network mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NetMode {
    /// Namespaces when available, else loopback.
    Auto,
    Netns,
    Loopback,
}

/// A test's parameters.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TestConfig {
    pub workload: Workload,
    pub nemesis: Vec<FaultKind>,
    pub nemesis_spec: String,
    pub time_limit_s: u64,
    pub seed: u64,
    pub store: PathBuf,
    pub nodes: u64,
    pub concurrency: u64,
    /// TTL of every reservation the clients make.
    pub ttl_ms: u64,
    /// Largest offset of a clock fault, s.
    pub skew_max_s: u64,
    pub bug: Option<String>,
    pub net: NetMode,
    pub stockd: PathBuf,
}

impl TestConfig {
    /// The command that replays this test.
    pub fn replay_command(&self) -> String {
        let mut cmd = format!(
            "stockd-jepsen test --workload {} --nemesis {} --time-limit {} --seed {} --nodes {} --concurrency {}",
            self.workload.name(),
            self.nemesis_spec,
            self.time_limit_s,
            self.seed,
            self.nodes,
            self.concurrency
        );
        if self.ttl_ms != workload::TTL_MS {
            cmd.push_str(&format!(" --ttl-ms {}", self.ttl_ms));
        }
        if self.skew_max_s != crate::nemesis::SKEW_MAX_S {
            cmd.push_str(&format!(" --skew-max-s {}", self.skew_max_s));
        }
        if let Some(bug) = &self.bug {
            cmd.push_str(&format!(" --bug {bug}"));
        }
        cmd
    }
}

/// What a test found.
#[derive(Debug)]
pub struct TestOutcome {
    pub valid: bool,
    pub dir: PathBuf,
    pub summary: String,
    /// The checkers that did not pass, each with its first error: what a
    /// one-line verdict names.
    pub failed: Vec<String>,
}

/// Limits of the phases around the workload.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Each final read is retried for this long from its own first attempt
/// (not from the heal: a slow machine takes longer than that over a run's
/// thousand lookups without any of them failing)...
const FINAL_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// ... and the final phase stops retrying after this long in all; a read
/// started later gets one attempt.
const FINAL_PHASE_TIMEOUT: Duration = Duration::from_secs(180);
const FINAL_CONCURRENCY: usize = 4;
/// Pause before the final reads of a cart run (the resolver's period is
/// 300 ms; follows of carts whose answers were lost land within it).
const CART_SETTLE: Duration = Duration::from_secs(2);
/// A cart run with a TTL up to this also waits the TTL out before the final
/// phase, so no cart expires between its lookup and the reads.
const CART_SETTLE_TTL_MAX: Duration = Duration::from_secs(60);
/// Steps one SKU's linearizability search may take.
const SEARCH_BUDGET: u64 = 20_000_000;

/// The libfaketime preload for multi-threaded programs, if installed.
pub fn faketime_lib() -> Option<PathBuf> {
    ["/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1", "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1", "/usr/lib/faketime/libfaketimeMT.so.1"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

fn has_program(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
}

/// Installs the Debian packages the requested faults need, when missing.
pub fn ensure_packages(faults: &[FaultKind], net: NetMode) {
    let mut missing = Vec::new();
    if net != NetMode::Loopback && !has_program("nft") {
        missing.push("nftables");
    }
    if faults.contains(&FaultKind::Clock) && faketime_lib().is_none() {
        missing.push("faketime");
    }
    if faults.contains(&FaultKind::Disk) && !has_program("fiu-run") {
        missing.push("fiu-utils");
    }
    if missing.is_empty() {
        return;
    }
    println!("installing {}", missing.join(" "));
    let quiet =
        |args: &[&str]| std::process::Command::new("apt-get").args(args).env("DEBIAN_FRONTEND", "noninteractive").stdout(std::process::Stdio::null()).status();
    let _ = quiet(&["update", "-qq"]);
    let mut args = vec!["install", "-y", "-qq"];
    args.extend(&missing);
    match quiet(&args) {
        Ok(s) if s.success() => {}
        other => println!("warning: could not install {} ({other:?}); those faults are skipped", missing.join(" ")),
    }
}

/// Runs one test.
pub async fn run_test(config: &TestConfig) -> anyhow::Result<TestOutcome> {
    let started_wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    let dir = config.store.join(format!("{}-{}-s{}-{started_wall}", config.workload.name(), config.nemesis_spec.replace(',', "+"), config.seed));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(config)?).context("write config.json")?;
    let latest = config.store.join("latest");
    let _ = std::fs::remove_file(&latest);
    #[cfg(unix)]
    let _ = std::os::unix::fs::symlink(dir.file_name().unwrap_or_default(), &latest);

    ensure_packages(&config.nemesis, config.net);
    let ids: Vec<u64> = (1..=config.nodes).collect();
    let use_netns = match config.net {
        NetMode::Loopback => false,
        NetMode::Netns => true,
        NetMode::Auto => Net::available().await,
    };
    let net = if use_netns { Some(Arc::new(Net::setup(&ids).await.context("set up network namespaces")?)) } else { None };
    let mut faults = config.nemesis.clone();
    let mut notes = Vec::new();
    if net.is_none() && faults.contains(&FaultKind::Partition) {
        faults.retain(|f| *f != FaultKind::Partition);
        notes.push("partition skipped: loopback mode (no network namespaces)".to_owned());
    }
    let faketime = faketime_lib();
    if faketime.is_none() && faults.contains(&FaultKind::Clock) {
        faults.retain(|f| *f != FaultKind::Clock);
        notes.push("clock skipped: libfaketime not installed".to_owned());
    }
    if !has_program("fiu-run") && faults.contains(&FaultKind::Disk) {
        faults.retain(|f| *f != FaultKind::Disk);
        notes.push("disk skipped: fiu-utils not installed".to_owned());
    }
    for note in &notes {
        println!("note: {note}");
    }

    let addrs: Vec<NodeAddrs> = if net.is_some() {
        let at = |id: u64, port: u16| format!("{}:{port}", crate::net::node_ip(id));
        ids.iter().map(|id| NodeAddrs { addr: at(*id, 7100), peer_addr: at(*id, 7200), netns: Some(Net::netns(*id)) }).collect()
    } else {
        let ports = crate::cluster::free_ports(2 * ids.len())?;
        ports.chunks(2).map(|p| NodeAddrs { addr: format!("127.0.0.1:{}", p[0]), peer_addr: format!("127.0.0.1:{}", p[1]), netns: None }).collect()
    };
    let env = match config.bug.as_deref() {
        None => Vec::new(),
        Some(bug) => vec![("STOCKD_FAILPOINT".to_owned(), bug.to_owned())],
    };
    let cluster = Arc::new(Mutex::new(Cluster::new(config.stockd.clone(), addrs, &dir, env)?));
    let result = drive(config, &dir, cluster.clone(), net.clone(), faults, faketime, &notes).await;
    cluster.lock().await.stop_all().await;
    if let Some(net) = &net {
        net.teardown().await;
    }
    result
}

async fn drive(
    config: &TestConfig,
    dir: &Path,
    cluster: Arc<Mutex<Cluster>>,
    net: Option<Arc<Net>>,
    faults: Vec<FaultKind>,
    faketime: Option<PathBuf>,
    notes: &[String],
) -> anyhow::Result<TestOutcome> {
    let root = Rng::new(config.seed);
    {
        let mut c = cluster.lock().await;
        for id in c.ids() {
            c.start(id, crate::cluster::Wrapper::Plain)?;
        }
        let waited = c.wait_ready(READY_TIMEOUT).await.context("wait for the cluster")?;
        println!("cluster of {} ready in {} ms: {}", config.nodes, waited.as_millis(), c.addrs().join(" "));
    }
    let endpoints = {
        let c = cluster.lock().await;
        Endpoints { addrs: c.addrs(), certs: c.certs.clone() }
    };
    let shared = Shared::new(std::time::Instant::now());
    let skus = Arc::new(config.workload.skus(config.time_limit_s));

    // Setup: the initial stock of every SKU, retried with the same event id.
    let setup_deadline = Instant::now() + SETUP_TIMEOUT;
    for sku in skus.iter() {
        let op = Op::Receipt { sku: sku.clone(), event: format!("initial-{sku}"), qty: workload::INITIAL_STOCK };
        loop {
            let process = shared.new_process();
            let clients = Clients::connect(&endpoints)?;
            if workload::run_op(&shared, &clients, process, &op, false).await.0 == Kind::Ok {
                break;
            }
            anyhow::ensure!(Instant::now() < setup_deadline, "could not receive the initial stock of {sku}");
        }
    }

    let deadline = Instant::now() + Duration::from_secs(config.time_limit_s);
    let mut tasks = tokio::task::JoinSet::new();
    for slot in 0..config.concurrency {
        tasks.spawn(workload::run_slot(shared.clone(), endpoints.clone(), config.workload, skus.clone(), root.fork(slot + 1), deadline, config.ttl_ms));
    }
    let nemesis = Arc::new(Nemesis {
        shared: shared.clone(),
        cluster: cluster.clone(),
        net,
        faults,
        workload: config.workload,
        skus: skus.clone(),
        faketime_lib: faketime,
        skew_max_s: config.skew_max_s,
    });
    {
        let nemesis = nemesis.clone();
        let rng = root.fork(0);
        tasks.spawn(async move { nemesis.run(rng, deadline).await });
    }
    let join_limit = Duration::from_secs(config.time_limit_s) + Duration::from_secs(60);
    let joined = tokio::time::timeout(join_limit, async {
        while let Some(result) = tasks.join_next().await {
            result.context("join a task")??;
        }
        anyhow::Ok(())
    })
    .await;
    match joined {
        Ok(result) => result?,
        Err(_) => anyhow::bail!("clients or nemesis still running {} s after the time limit", 60),
    }

    // Final phase: heal, wait for leaders, strong final reads.
    nemesis.heal_all().await?;
    let ready = cluster.lock().await.wait_ready(READY_TIMEOUT).await;
    let recovery_ms = match &ready {
        Ok(d) => Some(d.as_millis() as u64),
        Err(e) => {
            println!("warning: {e:#}");
            None
        }
    };
    if config.workload == Workload::Cart {
        // Line groups follow a cart whose answer was lost within the
        // resolver's period, and carts with a short TTL expire during the
        // final phase: let both settle before the final lookups and reads.
        let ttl = Duration::from_millis(config.ttl_ms);
        tokio::time::sleep(CART_SETTLE + if ttl <= CART_SETTLE_TTL_MAX { ttl } else { Duration::ZERO }).await;
    }
    final_reads(&shared, &endpoints).await?;
    {
        let mut c = cluster.lock().await;
        c.stop_all().await;
    }

    let events =
        std::mem::replace(&mut *shared.recorder.lock().unwrap_or_else(|p| p.into_inner()), history::Recorder::new(std::time::Instant::now())).into_events();
    history::write_jsonl(&dir.join("history.jsonl"), &events)?;
    let ops = history::operations(&events)?;
    let clock = checks::ClockFaults::from_events(&events);
    let cart_run = config.workload == Workload::Cart;
    let (valid, mut results) =
        tokio::task::spawn_blocking(move || if cart_run { crate::carts::check_cart_run(&ops) } else { checks::check_all(&ops, &clock, SEARCH_BUDGET) })
            .await
            .context("run the checkers")?;
    results["valid"] = json!(valid);
    results["seed"] = json!(config.seed);
    results["replay"] = json!(config.replay_command());
    results["recovery_after_heal_ms"] = json!(recovery_ms);
    results["notes"] = json!(notes);
    std::fs::write(dir.join("results.json"), serde_json::to_vec_pretty(&results)?).context("write results.json")?;
    if let Err(e) = crate::plot::timeline(&events, &dir.join("timeline.png")) {
        println!("warning: no timeline plot: {e:#}");
    }
    let summary = summarize(&results);
    let failed = failed_checkers(&results);
    Ok(TestOutcome { valid, dir: dir.to_path_buf(), summary, failed })
}

/// Strong reads of every SKU and lookups of every reservation id, each
/// retried until it succeeds or its deadline passes; every attempt is in
/// the history with `final: true`.
async fn final_reads(shared: &Arc<Shared>, endpoints: &Endpoints) -> anyhow::Result<()> {
    let mut targets: Vec<Op> = Vec::new();
    {
        let recorder = shared.recorder.lock().unwrap_or_else(|p| p.into_inner());
        let mut seen = std::collections::HashSet::new();
        let mut skus = std::collections::BTreeSet::new();
        for e in recorder.events().iter().filter(|e| e.kind == Kind::Invoke) {
            if e.f == "cart" {
                let lines = e.value.get("lines").and_then(|v| v.as_array()).cloned().unwrap_or_default();
                skus.extend(lines.iter().filter_map(|l| l.get(0).and_then(|s| s.as_str()).map(str::to_owned)));
                if let Some(id) = e.value.get("id").and_then(|v| v.as_str()) {
                    if seen.insert(id.to_owned()) {
                        targets.push(Op::CartLookup { id: id.to_owned() });
                    }
                }
                continue;
            }
            let Some(sku) = e.value.get("sku").and_then(|v| v.as_str()) else { continue };
            skus.insert(sku.to_owned());
            if e.f == "reserve" {
                if let Some(id) = e.value.get("id").and_then(|v| v.as_str()) {
                    if seen.insert(id.to_owned()) {
                        targets.push(Op::Lookup { sku: sku.to_owned(), id: id.to_owned() });
                    }
                }
            }
        }
        targets.extend(skus.into_iter().map(|sku| Op::Read { sku }));
    }
    let phase_deadline = Instant::now() + FINAL_PHASE_TIMEOUT;
    let clients = Clients::connect(endpoints)?;
    futures::stream::iter(targets)
        .for_each_concurrent(FINAL_CONCURRENCY, |op| {
            let (shared, client) = (shared.clone(), clients.clone());
            async move {
                let deadline = (Instant::now() + FINAL_READ_TIMEOUT).min(phase_deadline);
                loop {
                    let process = shared.new_process();
                    if workload::run_op(&shared, &client, process, &op, true).await.0 == Kind::Ok || Instant::now() >= deadline {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        })
        .await;
    Ok(())
}

/// The checkers whose verdict is not `valid`, as `name: first error`, the
/// error cut to 240 characters.
fn failed_checkers(results: &serde_json::Value) -> Vec<String> {
    CHECKERS
        .iter()
        .filter(|checker| !results[**checker].is_null() && results[**checker]["valid"].as_str() != Some("valid"))
        .map(|checker| {
            let first = results[*checker]["errors"].get(0).and_then(|e| e.as_str()).unwrap_or("no error given").replace('\n', " ");
            let cut: String = first.chars().take(240).collect();
            format!("{checker}: {cut}")
        })
        .collect()
}

const CHECKERS: [&str; 5] = ["linearizable", "conservation", "no_lost_acks", "all_or_nothing", "availability"];

fn summarize(results: &serde_json::Value) -> String {
    let mut out = String::new();
    for checker in CHECKERS {
        let r = &results[checker];
        if r.is_null() {
            continue;
        }
        out.push_str(&format!("  {checker:<13} {}\n", r["valid"].as_str().unwrap_or("?")));
        if let Some(errors) = r["errors"].as_array() {
            for e in errors.iter().take(5) {
                out.push_str(&format!("    {}\n", e.as_str().unwrap_or_default().replace('\n', "\n    ")));
            }
            if errors.len() > 5 {
                out.push_str(&format!("    ... {} more in results.json\n", errors.len() - 5));
            }
        }
    }
    out.push_str(&format!("  operations    {}\n", results["stats"]));
    out
}
