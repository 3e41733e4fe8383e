//! Real `stockd` processes: one per node, each with its own data dir and
//! log, started, killed (SIGKILL), paused (SIGSTOP / SIGCONT) and restarted
//! under a wrapper (libfaketime for clock skew, libfiu for disk faults).
//! In network-namespace mode each node runs inside its own namespace
//! (`ip netns exec`), in loopback mode on 127.0.0.1.

use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use stockd_client::Client;
use stockd_client::ClientConfig;
use stockd_client::TlsConfig;
use tokio::time::Instant;

/// How a node process is started.
#[derive(Debug, Clone, PartialEq)]
pub enum Wrapper {
    Plain,
    /// libfaketime with a clock offset in seconds (may be negative).
    Faketime {
        offset_s: i64,
        lib: PathBuf,
    },
    /// libfiu: random fsync / fdatasync errors with this probability.
    Fiu {
        probability: f64,
    },
}

/// The libfiu failure points of the disk fault: the syncs that make writes
/// durable. (Failing every `write` also fails the runtime's wake-up eventfd
/// writes, which makes tokio panic: a fault of the harness, not of a disk.)
pub const FIU_FAULT: &str = "posix/io/sync/*";

/// Where one node listens.
#[derive(Debug, Clone)]
pub struct NodeAddrs {
    /// Client plane, `host:port`.
    pub addr: String,
    /// Peer plane, `host:port`.
    pub peer_addr: String,
    /// Network namespace the node runs in (`None` in loopback mode).
    pub netns: Option<String>,
}

/// One node of the cluster.
#[derive(Debug)]
pub struct Node {
    pub id: u64,
    /// `host:port` of the node's client plane (its peer plane is in `peers`).
    pub addr: String,
    /// Network namespace the node runs in (`None` in loopback mode).
    pub netns: Option<String>,
    pub dir: PathBuf,
    pub wrapper: Wrapper,
    pub paused: bool,
    child: Option<tokio::process::Child>,
}

impl Node {
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(tokio::process::Child::id)
    }
}

/// The cluster's processes.
#[derive(Debug)]
pub struct Cluster {
    pub exe: PathBuf,
    pub nodes: Vec<Node>,
    peers: String,
    /// Certificates of every node and client role (`stockd certs`).
    pub certs: PathBuf,
    /// Host names the node certificates name.
    cert_hosts: Vec<String>,
    /// Extra environment of every node process (the failpoint of `--bug`).
    env: Vec<(String, String)>,
    /// The nodes' `--config`: the layout the workloads' SKUs expect.
    config: PathBuf,
}

/// Every run starts with eight ranges, one per first character of the
/// workloads' SKUs (`0-sku`, `2-sku`, ...), so carts span groups from the
/// first operation; a cluster's default of one range would hold them all.
/// The metadata group starts on three nodes, so that with `--nodes 5` the
/// `move` nemesis has nodes to move its replicas to.
const CLUSTER_CONFIG: &str = "[cluster]\ngroups-per-region = 8\nsplit-points = [\"2\", \"4\", \"6\", \"8\", \"a\", \"c\", \"e\"]\nmetadata-replicas = 3\n";

/// Limits of the cluster's waits.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

impl Cluster {
    /// Describes (does not start) nodes `1..=addrs.len()` under `dir`, and
    /// makes their certificates (`stockd certs`, SANs for every node host):
    /// every run goes through mTLS.
    pub fn new(exe: PathBuf, addrs: Vec<NodeAddrs>, dir: &Path, env: Vec<(String, String)>) -> anyhow::Result<Cluster> {
        let peers = addrs.iter().enumerate().map(|(i, a)| format!("{}={}/{}", i + 1, a.addr, a.peer_addr)).collect::<Vec<_>>().join(",");
        let certs = dir.join("certs");
        let mut cert_hosts: Vec<String> = addrs.iter().filter_map(|a| a.addr.rsplit_once(':').map(|(host, _)| host.to_owned())).collect();
        cert_hosts.sort_unstable();
        cert_hosts.dedup();
        make_certs(&exe, &certs, addrs.len(), &cert_hosts)?;
        let config = dir.join("cluster.toml");
        std::fs::write(&config, CLUSTER_CONFIG).with_context(|| format!("write {}", config.display()))?;
        let mut nodes = Vec::new();
        for (i, a) in addrs.into_iter().enumerate() {
            let id = i as u64 + 1;
            let node_dir = dir.join(format!("n{id}"));
            std::fs::create_dir_all(node_dir.join("data")).with_context(|| format!("create {}", node_dir.display()))?;
            nodes.push(Node { id, addr: a.addr, netns: a.netns, dir: node_dir, wrapper: Wrapper::Plain, paused: false, child: None });
        }
        Ok(Cluster { exe, nodes, peers, certs, cert_hosts, env, config })
    }

    /// New node and client certificates from the same CA, then SIGHUP to
    /// every running node: they reload while serving. Returns the nodes
    /// signalled.
    pub fn rotate_certs(&self) -> anyhow::Result<Vec<u64>> {
        make_certs(&self.exe, &self.certs, self.nodes.len(), &self.cert_hosts)?;
        let running: Vec<u64> = self.nodes.iter().filter(|n| n.is_running()).map(|n| n.id).collect();
        for node in self.nodes.iter().filter(|n| n.is_running()) {
            signal(node.pid(), "HUP");
        }
        Ok(running)
    }

    /// A client of this cluster with the certificate of `role`.
    pub fn client(&self, role: &str, config: ClientConfig) -> anyhow::Result<Client> {
        client_for(&self.addrs(), &self.certs, role, config)
    }

    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    fn node_mut(&mut self, id: u64) -> anyhow::Result<&mut Node> {
        self.nodes.iter_mut().find(|n| n.id == id).with_context(|| format!("no node {id}"))
    }

    /// Starts node `id` (if not running) under `wrapper`.
    pub fn start(&mut self, id: u64, wrapper: Wrapper) -> anyhow::Result<()> {
        let exe = self.exe.clone();
        let peers = self.peers.clone();
        let certs = self.certs.clone();
        let env = self.env.clone();
        let config = self.config.clone();
        let node = self.node_mut(id)?;
        if node.child.is_some() {
            return Ok(());
        }
        let log_path = node.dir.join("stockd.log");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).with_context(|| format!("open {}", log_path.display()))?;
        use std::io::Write;
        writeln!(&log, "--- jepsen: starting node {id} ({wrapper:?})").context("write the node log")?;
        let mut program: Vec<String> = Vec::new();
        if let Some(ns) = &node.netns {
            program.extend(["ip", "netns", "exec", ns].map(String::from));
        }
        if let Wrapper::Fiu { probability } = &wrapper {
            program.extend(["fiu-run", "-x", "-c"].map(String::from));
            program.push(format!("enable_random name={FIU_FAULT},probability={probability}"));
        }
        program.push(exe.display().to_string());
        program.extend(["start", "--node-id"].map(String::from));
        program.push(id.to_string());
        program.push("--listen".into());
        program.push(node.addr.clone());
        program.push("--peers".into());
        program.push(peers);
        program.push("--data-dir".into());
        program.push(node.dir.join("data").display().to_string());
        program.push("--certs".into());
        program.push(certs.display().to_string());
        program.push("--config".into());
        program.push(config.display().to_string());
        let mut cmd = tokio::process::Command::new(&program[0]);
        cmd.args(&program[1..]);
        for (k, v) in &env {
            cmd.env(k, v);
        }
        if let Wrapper::Faketime { offset_s, lib } = &wrapper {
            cmd.env("LD_PRELOAD", lib).env("FAKETIME", format!("{offset_s:+}s")).env("FAKETIME_DONT_RESET", "1").env("FAKETIME_NO_CACHE", "1");
        }
        cmd.env("RUST_LOG", "info,openraft=warn");
        cmd.stdin(std::process::Stdio::null()).stdout(log.try_clone().context("clone the log handle")?).stderr(log).kill_on_drop(true);
        let child = cmd.spawn().with_context(|| format!("spawn node {id}: {}", program.join(" ")))?;
        node.child = Some(child);
        node.wrapper = wrapper;
        node.paused = false;
        Ok(())
    }

    /// SIGKILL, then reap.
    pub async fn kill(&mut self, id: u64) -> anyhow::Result<()> {
        let node = self.node_mut(id)?;
        if let Some(mut child) = node.child.take() {
            if node.paused {
                signal(child.id(), "CONT");
            }
            child.start_kill().ok();
            tokio::time::timeout(STOP_TIMEOUT, child.wait()).await.context("reap a killed node")?.context("wait for a killed node")?;
        }
        node.paused = false;
        Ok(())
    }

    /// SIGSTOP (`pause`) or SIGCONT.
    pub fn pause(&mut self, id: u64, pause: bool) -> anyhow::Result<()> {
        let node = self.node_mut(id)?;
        if let Some(pid) = node.pid() {
            signal(Some(pid), if pause { "STOP" } else { "CONT" });
            node.paused = pause;
        }
        Ok(())
    }

    /// Nodes whose process exited by itself (a crash), with their status.
    pub fn exited(&mut self) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        for node in &mut self.nodes {
            if let Some(child) = node.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    out.push((node.id, status.to_string()));
                    node.child = None;
                }
            }
        }
        out
    }

    /// SIGTERM every node, then SIGKILL what is left after a bound.
    pub async fn stop_all(&mut self) {
        for node in &mut self.nodes {
            if node.paused {
                signal(node.pid(), "CONT");
                node.paused = false;
            }
            signal(node.pid(), "TERM");
        }
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                if tokio::time::timeout(STOP_TIMEOUT, child.wait()).await.is_err() {
                    child.start_kill().ok();
                    let _ = tokio::time::timeout(STOP_TIMEOUT, child.wait()).await;
                }
            }
        }
    }

    /// Waits until every running node reports a leader for each of its
    /// groups; `Err` names what was missing at the deadline.
    pub async fn wait_ready(&self, limit: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let deadline = started + limit;
        let config = ClientConfig {
            connect_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_secs(1),
            total_deadline: Duration::from_secs(1),
            ..ClientConfig::default()
        };
        let client = self.client("reader", config).context("make a status client")?;
        loop {
            let mut missing = Vec::new();
            for node in self.nodes.iter().filter(|n| n.is_running()) {
                match client.status_of(&node.addr).await {
                    Ok(status) if status.groups.iter().all(|g| g.leader != 0) => {}
                    Ok(status) => missing.push(format!("node {}: {} groups without leader", node.id, status.groups.iter().filter(|g| g.leader == 0).count())),
                    Err(e) => missing.push(format!("node {}: {e}", node.id)),
                }
            }
            if missing.is_empty() {
                return Ok(started.elapsed());
            }
            anyhow::ensure!(Instant::now() < deadline, "not ready after {} s: {}", limit.as_secs(), missing.join("; "));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The leader of the group holding `sku`, as a running node reports it.
    pub async fn leader_of(&self, sku: &str) -> Option<u64> {
        let config = ClientConfig {
            connect_timeout: Duration::from_millis(300),
            request_timeout: Duration::from_millis(700),
            total_deadline: Duration::from_millis(700),
            ..ClientConfig::default()
        };
        let client = self.client("reader", config).ok()?;
        for node in self.nodes.iter().filter(|n| n.is_running() && !n.paused) {
            let Ok(status) = client.status_of(&node.addr).await else { continue };
            let group = status.groups.iter().find(|g| g.start_sku.as_str() <= sku && (g.end_sku.is_empty() || sku < g.end_sku.as_str()));
            if let Some(g) = group.filter(|g| g.leader != 0) {
                return Some(g.leader);
            }
        }
        None
    }
}

fn signal(pid: Option<u32>, name: &str) {
    if let Some(pid) = pid {
        let _ = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// A client of the nodes at `addrs` with the certificate of `role` from
/// `certs`.
pub fn client_for(addrs: &[String], certs: &Path, role: &str, config: ClientConfig) -> anyhow::Result<Client> {
    let tls = TlsConfig::from_dir(certs, role).with_context(|| format!("read the {role} certificate"))?;
    Client::with_config(addrs, ClientConfig { tls: Some(tls), ..config }).context("make a client")
}

/// `stockd certs` for nodes `1..=nodes` at `hosts` (the CA in `out` is
/// reused when there is one).
fn make_certs(exe: &Path, out: &Path, nodes: usize, hosts: &[String]) -> anyhow::Result<()> {
    let nodes = (1..=nodes).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("certs").arg("--out").arg(out).arg("--nodes").arg(&nodes).arg("--days").arg("2");
    if !hosts.is_empty() {
        cmd.arg("--hosts").arg(hosts.join(","));
    }
    let output = cmd.output().with_context(|| format!("run {} certs", exe.display()))?;
    anyhow::ensure!(output.status.success(), "stockd certs failed: {}", String::from_utf8_lossy(&output.stderr).trim());
    Ok(())
}

/// `n` free TCP ports on 127.0.0.1 (bound, then released).
pub fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners: Vec<std::net::TcpListener> =
        (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0")).collect::<Result<_, _>>().context("find free ports")?;
    listeners.iter().map(|l| Ok(l.local_addr().context("read a port")?.port())).collect()
}
