//! `stockd start`: run one node. `stockd dev`: run a local cluster.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use clap::Subcommand;
use stockd::config::parse_peers;
use stockd::config::FileConfig;
use stockd::config::Overrides;
use stockd::node::Node;
use stockd::proto::v1::admin_client::AdminClient;
use stockd::proto::v1::ModelStatusRequest;
use stockd::proto::v1::StatusRequest;

#[derive(Parser)]
#[command(name = "stockd", version, about = "Distributed, replicated inventory engine")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one node of a cluster.
    Start {
        #[arg(long)]
        node_id: Option<u64>,
        /// Address to serve on (host:port); default: this node's peer address.
        #[arg(long)]
        listen: Option<String>,
        /// Every node of the cluster: 1=host:port,2=host:port,...
        #[arg(long)]
        peers: Option<String>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long)]
        region: Option<String>,
        /// Model versions, one directory each (default: this source tree's models/).
        #[arg(long)]
        model_dir: Option<PathBuf>,
        /// TOML configuration; flags override it.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run a local cluster: node i on 127.0.0.1:PORT+i, one process each.
    Dev {
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        #[arg(long, default_value = "./data")]
        data_dir: PathBuf,
        #[arg(long, default_value_t = 7100)]
        port: u16,
        /// TOML configuration passed to every node.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Model versions passed to every node (default: this source tree's models/).
        #[arg(long)]
        model_dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Cmd::Start { node_id, listen, peers, data_dir, region, model_dir, config } => {
                start(Overrides { node_id, listen, peers: None, data_dir, region, model_dir }, peers, config).await
            }
            Cmd::Dev { nodes, data_dir, port, config, model_dir } => dev(nodes, data_dir, port, config, model_dir).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init();
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; Ctrl-C still stops the node");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn start(mut overrides: Overrides, peers: Option<String>, config: Option<PathBuf>) -> anyhow::Result<()> {
    init_tracing();
    let file = match &config {
        Some(path) => FileConfig::load(path).map_err(anyhow::Error::msg)?,
        None => FileConfig::default(),
    };
    overrides.peers = peers.as_deref().map(parse_peers).transpose().map_err(anyhow::Error::msg)?;
    let config = file.validate(overrides).map_err(anyhow::Error::msg).context("invalid configuration")?;
    let node = Node::start(config).await.context("start the node")?;
    stockd::server::serve(node.clone(), shutdown_signal()).await.context("serve")?;
    node.shutdown().await;
    tracing::info!(node = node.id(), "stopped");
    Ok(())
}

struct Child {
    id: u64,
    addr: String,
    process: tokio::process::Child,
}

async fn dev(nodes: u64, data_dir: PathBuf, port: u16, config: Option<PathBuf>, model_dir: Option<PathBuf>) -> anyhow::Result<()> {
    anyhow::ensure!((1..=9).contains(&nodes), "--nodes must be between 1 and 9");
    anyhow::ensure!(nodes == 1 || nodes >= 3, "--nodes must be 1 or at least 3 (replication factor 3)");
    let exe = std::env::current_exe().context("find the stockd executable")?;
    let peers: Vec<(u64, String)> = (1..=nodes).map(|i| (i, format!("127.0.0.1:{}", port + i as u16))).collect();
    let peer_arg = peers.iter().map(|(i, a)| format!("{i}={a}")).collect::<Vec<_>>().join(",");
    let dev_config = match config {
        Some(c) => c,
        None if nodes == 1 => {
            std::fs::create_dir_all(&data_dir).context("create the data dir")?;
            let path = data_dir.join("dev-single.toml");
            std::fs::write(&path, "[cluster]\nreplication-factor = 1\n").context("write the single-node config")?;
            path
        }
        None => PathBuf::new(),
    };
    let mut children = Vec::new();
    for (id, addr) in &peers {
        let dir = data_dir.join(format!("node-{id}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("stockd.log")).context("open the node log")?;
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.arg("start").arg("--node-id").arg(id.to_string()).arg("--listen").arg(addr).arg("--peers").arg(&peer_arg).arg("--data-dir").arg(&dir);
        if !dev_config.as_os_str().is_empty() {
            cmd.arg("--config").arg(&dev_config);
        }
        if let Some(model_dir) = &model_dir {
            cmd.arg("--model-dir").arg(model_dir);
        }
        cmd.stdout(log.try_clone().context("clone the log handle")?).stderr(log).kill_on_drop(true);
        let process = cmd.spawn().context("spawn a node")?;
        children.push(Child { id: *id, addr: addr.clone(), process });
    }
    println!("stockd dev: {nodes} node(s), data in {}", data_dir.display());
    for c in &children {
        println!("  node {}  {}  log: {}", c.id, c.addr, data_dir.join(format!("node-{}", c.id)).join("stockd.log").display());
    }
    let addrs = children.iter().map(|c| c.addr.clone()).collect::<Vec<_>>().join(",");
    match wait_ready(&children, Duration::from_secs(60)).await {
        Ok(()) => {
            println!("ready: every group has a leader");
            if let Some(first) = children.first() {
                println!("{}", model_line(&first.addr).await);
            }
        }
        Err(e) => println!("not ready yet ({e}); the nodes keep trying"),
    }
    // Name stockctl the way the user can run it: ./bin/stockctl after
    // `make dev`, else the binary beside this one.
    let stockctl =
        if std::path::Path::new("bin/stockctl").exists() { "bin/stockctl".to_string() } else { exe.with_file_name("stockctl").display().to_string() };
    println!();
    println!("try:");
    println!("  {stockctl} --addr {addrs} status");
    println!("  {stockctl} --addr {addrs} adjust --event-id rcv-1 --sku a-100 --location wh1 --kind receipt --qty 10");
    println!("  {stockctl} --addr {addrs} reserve --id cart-1 --line a-100:wh1:2 --ttl 60s");
    println!("  {stockctl} --addr {addrs} get --sku a-100 --location wh1");
    println!("  {stockctl} --addr {addrs} check --sku a-100 --location wh1 --qty 1 --context checkout");
    println!("  {stockctl} --addr {addrs} model status");
    println!("Ctrl-C stops the cluster; running this again recovers the same data.");
    tokio::select! {
        _ = shutdown_signal() => println!("stopping..."),
        (id, status) = first_exit(&mut children) => {
            println!("node {id} exited ({status}); stopping the others...");
            if let Some(reason) = last_error_line(&data_dir.join(format!("node-{id}")).join("stockd.log")) {
                println!("  {reason}");
            }
        }
    }
    for c in &children {
        if let Some(pid) = c.process.id() {
            // SIGTERM: the node shuts its groups down cleanly.
            let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
        }
    }
    for c in &mut children {
        match tokio::time::timeout(Duration::from_secs(10), c.process.wait()).await {
            Ok(_) => {}
            Err(_) => {
                let _ = c.process.kill().await;
            }
        }
    }
    println!("stopped");
    Ok(())
}

/// The last `error:` line of a node's log: why it stopped.
fn last_error_line(log: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines().rev().find(|l| l.starts_with("error:")).map(str::to_string)
}

/// The first node process to exit, with its exit status.
async fn first_exit(children: &mut [Child]) -> (u64, std::process::ExitStatus) {
    loop {
        for c in children.iter_mut() {
            if let Ok(Some(status)) = c.process.try_wait() {
                return (c.id, status);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls every node's status until each hosted group reports a leader.
/// One line on the model serving of the node at `addr`.
async fn model_line(addr: &str) -> String {
    let status = match AdminClient::connect(format!("http://{addr}")).await {
        Ok(mut client) => client.model_status(ModelStatusRequest {}).await.map(|r| r.into_inner().status_json).map_err(|e| e.message().to_owned()),
        Err(e) => Err(e.to_string()),
    };
    let status: serde_json::Value = match status.map(|json| serde_json::from_str(&json)) {
        Ok(Ok(value)) => value,
        Ok(Err(e)) => return format!("model: unreadable status ({e})"),
        Err(e) => return format!("model: status unavailable ({e})"),
    };
    match status["serving"].as_str() {
        Some(version) => format!("model: {version} serving (runtime {})", status["runtime"]["dylib"].as_str().unwrap_or("?")),
        None => {
            format!("model: none serving, answers use the conservative rule ({})", status["unavailable_reason"].as_str().unwrap_or("no valid model version"))
        }
    }
}

async fn wait_ready(children: &[Child], limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let mut ready = true;
        for c in children {
            let ok = match AdminClient::connect(format!("http://{}", c.addr)).await {
                Ok(mut client) => match client.status(StatusRequest {}).await {
                    Ok(s) => s.get_ref().groups.iter().all(|g| g.leader != 0),
                    Err(_) => false,
                },
                Err(_) => false,
            };
            ready &= ok;
        }
        if ready {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "no leader everywhere after {}s", limit.as_secs());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
