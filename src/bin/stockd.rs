//! `stockd start`: run one node. `stockd dev`: run a local cluster (with
//! certificates made on first start). `stockd certs`: make a cluster's CA and
//! certificates.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use clap::Subcommand;
use stockd::certs;
use stockd::config::parse_peers;
use stockd::config::FileConfig;
use stockd::config::Overrides;
use stockd::config::PEER_PORT_OFFSET;
use stockd::node::Node;
use stockd_client::Client;
use stockd_client::ClientConfig;
use stockd_client::TlsConfig;

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
        /// Client plane (host:port); default: this node's address in --peers.
        #[arg(long)]
        listen: Option<String>,
        /// Peer plane (host:port); default: this node's peer address (its
        /// client port + 100 unless --peers gives one).
        #[arg(long)]
        peer_listen: Option<String>,
        /// Every node of the cluster: 1=host:port,2=host:port,... (each may
        /// add its peer address: 1=host:port/host:peerport).
        #[arg(long)]
        peers: Option<String>,
        /// Certificates made by `stockd certs`: ca.crt, node-<id>.crt/.key.
        #[arg(long, value_name = "DIR")]
        certs: Option<PathBuf>,
        /// Serve plaintext without authentication or roles (both planes).
        #[arg(long)]
        insecure: bool,
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
        /// Join a running cluster through these nodes (client-plane
        /// addresses from its bootstrap list, comma separated): this node,
        /// not in that list, runs with the cluster's [cluster] settings and
        /// --peers, with its own --node-id and --listen.
        #[arg(long, value_delimiter = ',', value_name = "ADDR,...")]
        join: Option<Vec<String>>,
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
        /// Plaintext, no certificates (default: mTLS with certificates made
        /// under DATA_DIR/certs on first start).
        #[arg(long)]
        insecure: bool,
        /// Grow the dev cluster already running from DATA_DIR (started with
        /// the same --nodes, --port and security) by one node: the lowest id
        /// above --nodes not running, joined through the others, in the
        /// foreground until Ctrl-C. Run it again to bring that node back.
        #[arg(long)]
        join: bool,
    },
    /// Make a CA (or reuse the one in DIR) and the certificates of a cluster:
    /// node-<id>.crt/.key per node, <role>.crt/.key per client role.
    Certs {
        /// Directory to write into (made if missing); a CA already there
        /// (ca.crt and ca.key) is reused.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Node ids, comma separated.
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<u64>,
        /// Extra host names or IP addresses of the nodes (beyond 127.0.0.1 and localhost).
        #[arg(long, value_delimiter = ',')]
        hosts: Vec<String>,
        /// Validity of the node and client certificates.
        #[arg(long, default_value_t = certs::LEAF_DAYS_DEFAULT)]
        days: u32,
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
            Cmd::Start { node_id, listen, peer_listen, peers, certs, insecure, data_dir, region, model_dir, config, join } => {
                start(
                    Overrides { node_id, listen, peer_listen, peers: None, certs, insecure, data_dir, region, model_dir, join, known_nodes: Vec::new() },
                    peers,
                    config,
                )
                .await
            }
            Cmd::Dev { nodes, data_dir, port, config, model_dir, insecure, join } => {
                let args = DevArgs { nodes, data_dir, port, config, model_dir, insecure };
                if join {
                    dev_join(args).await
                } else {
                    dev(args).await
                }
            }
            Cmd::Certs { out, nodes, hosts, days } => make_certs(&certs::CertRequest { out, nodes, hosts, days }),
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
    let mut file = file;
    let learnt = stockd::join::prepare_join(&mut file, &mut overrides).await.map_err(anyhow::Error::msg).context("join the cluster")?;
    let config = file.validate(overrides).map_err(anyhow::Error::msg).context("invalid configuration")?;
    stockd::join::check_fingerprint(&config, &learnt).map_err(anyhow::Error::msg)?;
    let node = Node::start(config).await.context("start the node")?;
    stockd::server::serve(node.clone(), shutdown_signal()).await.context("serve")?;
    node.shutdown().await;
    tracing::info!(node = node.id(), "stopped");
    Ok(())
}

fn make_certs(request: &certs::CertRequest) -> anyhow::Result<()> {
    let report = certs::create(request).context("make the certificates")?;
    let ca = if report.ca_reused { "reused the CA in" } else { "made a new CA in" };
    println!("stockd certs: {ca} {}", request.out.display());
    for path in &report.written {
        println!("  wrote {}", path.display());
    }
    println!("start each node with: stockd start --certs {} ...", request.out.display());
    println!("use stockctl with:    stockctl --certs {} [--role reader|checkout|feed|operator] ...", request.out.display());
    Ok(())
}

struct Child {
    id: u64,
    addr: String,
    process: tokio::process::Child,
}

struct DevArgs {
    nodes: u64,
    data_dir: PathBuf,
    port: u16,
    config: Option<PathBuf>,
    model_dir: Option<PathBuf>,
    insecure: bool,
}

async fn dev(args: DevArgs) -> anyhow::Result<()> {
    anyhow::ensure!((1..=9).contains(&args.nodes), "--nodes must be between 1 and 9");
    anyhow::ensure!(args.nodes == 1 || args.nodes >= 3, "--nodes must be 1 or at least 3 (replication factor 3)");
    anyhow::ensure!(
        u32::from(args.port) + 9 + u32::from(PEER_PORT_OFFSET) <= 65535,
        "--port leaves no room for the peer ports (port + node + {PEER_PORT_OFFSET})"
    );
    let certs = dev_certs(&args)?;
    let mut children = spawn_nodes(&args, certs.as_deref())?;
    println!("stockd dev: {} node(s), data in {}, {}", args.nodes, args.data_dir.display(), if certs.is_some() { "mTLS on" } else { "plaintext (--insecure)" });
    for c in &children {
        println!("  node {}  {}  log: {}", c.id, c.addr, args.data_dir.join(format!("node-{}", c.id)).join("stockd.log").display());
    }
    let client = dev_client(&children, certs.as_deref())?;
    match wait_ready(&client, Duration::from_secs(60)).await {
        Ok(()) => {
            println!("ready: every group has a leader");
            println!("{}", model_line(&client).await);
        }
        Err(e) => println!("not ready yet ({e}); the nodes keep trying"),
    }
    print_try_lines(&children, certs.as_deref());
    tokio::select! {
        _ = shutdown_signal() => println!("stopping..."),
        (id, status) = first_exit(&mut children) => {
            println!("node {id} exited ({status}); stopping the others...");
            if let Some(reason) = last_error_line(&args.data_dir.join(format!("node-{id}")).join("stockd.log")) {
                println!("  {reason}");
            }
        }
    }
    stop_nodes(&mut children).await;
    println!("stopped");
    Ok(())
}

/// The dev cluster's certificates, made under DATA_DIR/certs on first start
/// (and completed when more nodes are asked for); `None` with --insecure.
fn dev_certs(args: &DevArgs) -> anyhow::Result<Option<PathBuf>> {
    if args.insecure {
        return Ok(None);
    }
    let dir = stockd_client::tls::dev_certs_dir(&args.data_dir);
    let ids: Vec<u64> = (1..=args.nodes).collect();
    if !certs::complete(&dir, &ids) {
        certs::create(&certs::CertRequest { out: dir.clone(), nodes: ids, hosts: Vec::new(), days: certs::LEAF_DAYS_DEFAULT })
            .context("make the dev cluster's certificates")?;
        println!("stockd dev: made a CA and certificates in {}", dir.display());
    }
    Ok(Some(dir))
}

/// Client address of dev node `id`.
fn dev_addr(args: &DevArgs, id: u64) -> String {
    format!("127.0.0.1:{}", args.port + id as u16)
}

fn spawn_nodes(args: &DevArgs, certs: Option<&std::path::Path>) -> anyhow::Result<Vec<Child>> {
    (1..=args.nodes).map(|id| spawn_node(args, certs, id, &[])).collect()
}

/// The dev config `config` without its `[cluster]` section, written in
/// `dir` (an empty path when there is no config).
fn node_sections_of(config: &std::path::Path, dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    if config.as_os_str().is_empty() {
        return Ok(PathBuf::new());
    }
    let text = std::fs::read_to_string(config).with_context(|| format!("read {}", config.display()))?;
    let mut table: toml::Table = text.parse().with_context(|| format!("parse {}", config.display()))?;
    table.remove("cluster");
    let path = dir.join("node.toml");
    std::fs::write(&path, toml::to_string(&table).context("write the node's sections")?).with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

/// Starts dev node `id` (one of the bootstrap list, or one joining through
/// `join`), its output appended to its log.
fn spawn_node(args: &DevArgs, certs: Option<&std::path::Path>, id: u64, join: &[String]) -> anyhow::Result<Child> {
    let exe = std::env::current_exe().context("find the stockd executable")?;
    let peer_arg = (1..=args.nodes).map(|i| format!("{i}={}", dev_addr(args, i))).collect::<Vec<_>>().join(",");
    let dev_config = match &args.config {
        Some(c) => c.clone(),
        None if args.nodes == 1 => {
            std::fs::create_dir_all(&args.data_dir).context("create the data dir")?;
            let path = args.data_dir.join("dev-single.toml");
            std::fs::write(&path, "[cluster]\nreplication-factor = 1\n").context("write the single-node config")?;
            path
        }
        None => PathBuf::new(),
    };
    let addr = dev_addr(args, id);
    let dir = args.data_dir.join(format!("node-{id}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("stockd.log")).context("open the node log")?;
    let mut cmd = tokio::process::Command::new(&exe);
    cmd.arg("start").arg("--node-id").arg(id.to_string()).arg("--listen").arg(&addr).arg("--data-dir").arg(&dir);
    let dev_config = if join.is_empty() {
        cmd.arg("--peers").arg(&peer_arg);
        dev_config
    } else {
        // A joining node takes the cluster's settings from the nodes it
        // joins through: it gets the dev config's other sections only.
        cmd.arg("--join").arg(join.join(","));
        node_sections_of(&dev_config, &dir)?
    };
    match certs {
        Some(certs) => cmd.arg("--certs").arg(certs),
        None => cmd.arg("--insecure"),
    };
    if !dev_config.as_os_str().is_empty() {
        cmd.arg("--config").arg(&dev_config);
    }
    if let Some(model_dir) = &args.model_dir {
        cmd.arg("--model-dir").arg(model_dir);
    }
    cmd.stdout(log.try_clone().context("clone the log handle")?).stderr(log).kill_on_drop(true);
    let process = cmd.spawn().context("spawn a node")?;
    Ok(Child { id, addr, process })
}

/// `stockd dev --join`: one more node for the running dev cluster.
async fn dev_join(args: DevArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.nodes >= 3, "--join grows a cluster of at least 3 nodes (replication factor 3)");
    let running = |id: u64| std::net::TcpStream::connect_timeout(&dev_addr(&args, id).parse().expect("a dev address"), Duration::from_millis(200)).is_ok();
    let members: Vec<u64> = (1..=args.nodes).filter(|id| running(*id)).collect();
    anyhow::ensure!(
        !members.is_empty(),
        "no node of the dev cluster answers on 127.0.0.1:{}..{}; start it first with `stockd dev --nodes {}` (same --port and --data-dir)",
        args.port + 1,
        args.port + args.nodes as u16,
        args.nodes
    );
    let id = (args.nodes + 1..=9).find(|id| !running(*id)).context("every dev node id up to 9 runs already")?;
    let certs = if args.insecure {
        None
    } else {
        let dir = stockd_client::tls::dev_certs_dir(&args.data_dir);
        anyhow::ensure!(dir.join("ca.key").exists(), "no dev CA in {}: start the cluster with `stockd dev` first, or give --insecure", dir.display());
        if !certs::complete(&dir, &[id]) {
            certs::create(&certs::CertRequest { out: dir.clone(), nodes: vec![id], hosts: Vec::new(), days: certs::LEAF_DAYS_DEFAULT })
                .context("make the joining node's certificate")?;
        }
        Some(dir)
    };
    let join: Vec<String> = members.iter().map(|m| dev_addr(&args, *m)).collect();
    let mut child = spawn_node(&args, certs.as_deref(), id, &join)?;
    let log = args.data_dir.join(format!("node-{id}")).join("stockd.log");
    println!("stockd dev --join: node {id} on {} joins through {}; log: {}", child.addr, join.join(","), log.display());
    let client = dev_client(std::slice::from_ref(&child), certs.as_deref())?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(status)) = child.process.try_wait() {
            anyhow::bail!("node {id} exited ({status}){}", last_error_line(&log).map(|l| format!(": {l}")).unwrap_or_default());
        }
        let statuses = client.status_all().await;
        let newest = statuses.iter().filter_map(|r| r.result.as_ref().ok()).max_by_key(|s| s.topology_version);
        if let Some(status) = newest.filter(|s| s.nodes.iter().any(|n| n.id == id)) {
            let security = certs.as_ref().map_or_else(|| "--insecure".to_owned(), |d| format!("--certs {}", d.display()));
            let addrs = join.iter().cloned().chain([dev_addr(&args, id)]).collect::<Vec<_>>().join(",");
            if status.balance_enabled {
                println!("joined: the topology lists node {id}; the balancer moves replicas and leaders to it, one step every 2 s:");
                println!("  bin/stockctl --addr {addrs} {security} balance status");
            } else {
                println!("joined: the topology lists node {id}; balancing is off, so it holds no replica until one is moved to it:");
                println!("  bin/stockctl --addr {} {security} shard move --group G --from N --to {id}", join[0]);
            }
            break;
        }
        if Instant::now() >= deadline {
            println!("node {id} is not in the topology after 60 s; it keeps trying (see its log)");
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!("Ctrl-C stops node {id}; `stockd dev --join` again brings it back.");
    let mut children = vec![child];
    tokio::select! {
        _ = shutdown_signal() => println!("stopping node {id}..."),
        (id, status) = first_exit(&mut children) => {
            println!("node {id} exited ({status})");
            if let Some(reason) = last_error_line(&log) {
                println!("  {reason}");
            }
        }
    }
    stop_nodes(&mut children).await;
    println!("stopped");
    Ok(())
}

/// The client `stockd dev` watches the cluster with (the reader role).
fn dev_client(children: &[Child], certs: Option<&std::path::Path>) -> anyhow::Result<Client> {
    let tls = certs.map(|dir| TlsConfig::from_dir(dir, "reader")).transpose()?;
    let config = ClientConfig {
        request_timeout: Duration::from_secs(2),
        total_deadline: Duration::from_secs(2),
        attempts_max: 1,
        routes_max_age: None,
        tls,
        ..ClientConfig::default()
    };
    let addrs: Vec<&str> = children.iter().map(|c| c.addr.as_str()).collect();
    Ok(Client::with_config(&addrs, config)?)
}

fn print_try_lines(children: &[Child], certs: Option<&std::path::Path>) {
    // Name stockctl the way the user can run it: ./bin/stockctl after
    // `make dev`, else the binary beside this one.
    let exe = std::env::current_exe().unwrap_or_default();
    let stockctl =
        if std::path::Path::new("bin/stockctl").exists() { "bin/stockctl".to_string() } else { exe.with_file_name("stockctl").display().to_string() };
    let addrs = children.iter().map(|c| c.addr.clone()).collect::<Vec<_>>().join(",");
    let security = match certs {
        Some(dir) => format!("--certs {}", dir.display()),
        None => "--insecure".to_owned(),
    };
    let stockctl = format!("{stockctl} --addr {addrs} {security}");
    println!();
    match certs {
        Some(dir) => println!("stockctl picks the role each command needs from {} (or give --role):", dir.display()),
        None => println!("try:"),
    }
    println!("  {stockctl} status");
    println!("  {stockctl} adjust --event-id rcv-1 --sku a-100 --location wh1 --kind receipt --qty 10");
    println!("  {stockctl} reserve --id cart-1 --line a-100:wh1:2 --ttl 60s");
    println!("  {stockctl} get --sku a-100 --location wh1");
    println!("  {stockctl} check --sku a-100 --location wh1 --qty 1 --context checkout");
    println!("  {stockctl} model status");
    println!("Ctrl-C stops the cluster; running this again recovers the same data.");
}

async fn stop_nodes(children: &mut [Child]) {
    for c in children.iter() {
        if let Some(pid) = c.process.id() {
            // SIGTERM: the node shuts its groups down cleanly.
            let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
        }
    }
    for c in children.iter_mut() {
        if tokio::time::timeout(Duration::from_secs(10), c.process.wait()).await.is_err() {
            let _ = c.process.kill().await;
        }
    }
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

/// One line on the model serving of the first node that answers.
async fn model_line(client: &Client) -> String {
    let Some(addr) = client.addrs().into_iter().next() else { return "model: no node".to_owned() };
    let status = client.model_op_on(&addr, &stockd_client::ModelOp::Status).await.map(|r| r.status_json);
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

/// Polls every node's status until each hosted group reports a leader.
async fn wait_ready(client: &Client, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let reports = client.status_all().await;
        let ready = reports.iter().all(|r| r.result.as_ref().is_ok_and(|s| s.groups.iter().all(|g| g.leader != 0)));
        if ready {
            return Ok(());
        }
        // A refused certificate will not get better by waiting.
        if let Some(refused) = reports.iter().find_map(|r| r.result.as_ref().err().filter(|e| e.is_refusal())) {
            anyhow::bail!("the nodes refuse the dev certificates: {refused}");
        }
        anyhow::ensure!(Instant::now() < deadline, "no leader everywhere after {}s", limit.as_secs());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
