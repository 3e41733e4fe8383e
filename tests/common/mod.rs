//! A cluster of real stockd nodes on loopback, in this process: each node has
//! its own RocksDB directory, gRPC server and Raft groups, and can be stopped
//! and restarted from its directory.

#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use stockd::config::FileConfig;
use stockd::config::Overrides;
use stockd::config::PeerArg;
use stockd::node::Node;
use stockd::proto::v1 as pb;
use stockd::proto::v1::inventory_client::InventoryClient;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// Tests in one binary share the machine's two cores: run clusters one at a
/// time.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Running {
    node: Arc<Node>,
    stop: oneshot::Sender<()>,
    server: JoinHandle<()>,
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub file: FileConfig,
    /// Client plane of each node.
    pub addrs: Vec<String>,
    /// Peer plane of each node.
    pub peer_addrs: Vec<String>,
    /// mTLS with the certificates of this directory; `None`: `--insecure`.
    pub certs: Option<PathBuf>,
    /// Nodes 1..=bootstrap are the bootstrap list; later ones joined.
    bootstrap: usize,
    running: Vec<Option<Running>>,
}

/// A port nothing listens on, below the kernel's ephemeral range (32768
/// and up), so that no outgoing connection of the tests' own clients can
/// take it between this check and the node's bind. Each process walks its
/// own stretch of 20000-32000.
fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let base = (std::process::id() * 131) % 12_000;
    loop {
        let port = (20_000 + (base + NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Cluster settings for tests: quick elections, quick clock ticks.
pub fn test_config() -> FileConfig {
    let mut f = FileConfig::default();
    f.cluster.groups_per_region = 2;
    f.cluster.split_points = Some(vec!["8".into()]);
    f.cluster.heartbeat_ms = 100;
    f.cluster.election_timeout_min_ms = 700;
    f.cluster.election_timeout_max_ms = 1400;
    f.cluster.clock_tick_ms = 100;
    // Tests name their groups: none is merged away unless a test asks.
    f.cluster.merge_cold_s = 0;
    // Nor does a replica or a leader move unless a test turns balancing on.
    f.cluster.balance = false;
    f.node.rpc_timeout_ms = 5_000;
    // Tests judge answers, not latency: a busy machine must not turn a
    // scored answer into MODEL_TIMEOUT.
    f.model.deadline_us = 2_000_000;
    f
}

impl Cluster {
    /// Nodes run `--insecure` (most tests judge inventory behaviour, not
    /// security).
    pub async fn start(nodes: usize, file: FileConfig) -> Cluster {
        Cluster::start_with(nodes, file, false).await
    }

    /// Nodes run with mTLS, certificates made by `stockd certs` in the
    /// cluster's directory (`certs/`).
    pub async fn start_tls(nodes: usize, file: FileConfig) -> Cluster {
        Cluster::start_with(nodes, file, true).await
    }

    async fn start_with(nodes: usize, file: FileConfig, tls: bool) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let addrs: Vec<String> = (0..nodes).map(|_| format!("127.0.0.1:{}", free_port())).collect();
        let peer_addrs: Vec<String> = (0..nodes).map(|_| format!("127.0.0.1:{}", free_port())).collect();
        let certs = tls.then(|| {
            let certs = dir.path().join("certs");
            let request = stockd::certs::CertRequest { out: certs.clone(), nodes: (1..=nodes as u64).collect(), hosts: Vec::new(), days: 2 };
            stockd::certs::create(&request).expect("test certificates");
            certs
        });
        let mut cluster = Cluster { dir, file, addrs, peer_addrs, certs, bootstrap: nodes, running: (0..nodes).map(|_| None).collect() };
        for id in 1..=nodes as u64 {
            cluster.start_node(id).await;
        }
        cluster.wait_for_leaders().await;
        cluster
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node-{id}"))
    }

    /// Addresses (and, on a TLS cluster, a certificate) for one more node;
    /// answers its id.
    fn add_node_slot(&mut self) -> u64 {
        let id = self.addrs.len() as u64 + 1;
        self.addrs.push(format!("127.0.0.1:{}", free_port()));
        self.peer_addrs.push(format!("127.0.0.1:{}", free_port()));
        self.running.push(None);
        if let Some(certs) = &self.certs {
            let request = stockd::certs::CertRequest { out: certs.clone(), nodes: vec![id], hosts: Vec::new(), days: 2 };
            stockd::certs::create(&request).expect("the joining node's certificate");
        }
        id
    }

    /// Starts one more node, not in the bootstrap list, with `--join`
    /// through node 1 (and its certificate, on a TLS cluster); answers its id.
    pub async fn join_node(&mut self) -> u64 {
        let id = self.add_node_slot();
        self.start_node(id).await;
        id
    }

    pub async fn start_node(&mut self, id: u64) {
        let peers = self
            .addrs
            .iter()
            .zip(&self.peer_addrs)
            .take(self.bootstrap)
            .enumerate()
            .map(|(i, (addr, peer))| PeerArg { id: i as u64 + 1, addr: addr.clone(), peer_addr: Some(peer.clone()) })
            .collect();
        let joins = id as usize > self.bootstrap;
        let overrides = Overrides {
            node_id: Some(id),
            peers: Some(peers),
            data_dir: Some(self.data_dir(id)),
            insecure: self.certs.is_none(),
            certs: self.certs.clone(),
            listen: joins.then(|| self.addrs[id as usize - 1].clone()),
            peer_listen: joins.then(|| self.peer_addrs[id as usize - 1].clone()),
            join: joins.then(|| vec![self.addrs[0].clone()]),
            ..Default::default()
        };
        let config = self.file.clone().validate(overrides).expect("valid test config");
        self.run_node(id, config).await;
    }

    /// Starts one more node as `stockd start --join` does when it has no
    /// bootstrap list: only node settings of its own, `--join` naming node
    /// `through` (any node of the running cluster); it asks that node for
    /// the cluster's settings before it starts. Answers its id.
    pub async fn join_node_without_bootstrap_list(&mut self, through: u64) -> u64 {
        let id = self.add_node_slot();
        self.restart_without_bootstrap_list(id, through).await;
        id
    }

    /// (Re)starts node `id` as `join_node_without_bootstrap_list` started
    /// it, joining through node `through`.
    pub async fn restart_without_bootstrap_list(&mut self, id: u64, through: u64) {
        let mut file = FileConfig { node: self.file.node.clone(), model: self.file.model.clone(), ..FileConfig::default() };
        let mut overrides = Overrides {
            node_id: Some(id),
            data_dir: Some(self.data_dir(id)),
            insecure: self.certs.is_none(),
            certs: self.certs.clone(),
            listen: Some(self.addrs[id as usize - 1].clone()),
            peer_listen: Some(self.peer_addrs[id as usize - 1].clone()),
            join: Some(vec![self.addrs[through as usize - 1].clone()]),
            ..Default::default()
        };
        let learnt = stockd::join::prepare_join(&mut file, &mut overrides).await.expect("the cluster's settings");
        let config = file.validate(overrides).expect("valid joining config");
        stockd::join::check_fingerprint(&config, &learnt).expect("the cluster's fingerprint");
        self.run_node(id, config).await;
    }

    async fn run_node(&mut self, id: u64, config: stockd::config::Config) {
        // A stopped node's database closes once its last task has ended.
        let deadline = Instant::now() + Duration::from_secs(10);
        let node = loop {
            match Node::start(config.clone()).await {
                Ok(node) => break node,
                Err(e) if e.to_string().contains("lock") && Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(e) => panic!("node {id} does not start: {e}"),
            }
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = node.clone();
        let server = tokio::spawn(async move {
            if let Err(e) = stockd::server::serve(serving, async {
                let _ = stopped.await;
            })
            .await
            {
                eprintln!("node {id} stopped serving: {e}");
            }
        });
        // The server binds after it has loaded its models: wait until it listens.
        let addr = self.addrs[id as usize - 1].clone();
        poll(&format!("node {id} listens on {addr}"), Duration::from_secs(20), || {
            let addr = addr.clone();
            async move { tokio::net::TcpStream::connect(&addr).await.is_ok() }
        })
        .await;
        self.running[id as usize - 1] = Some(Running { node, stop, server });
    }

    /// Stops a node: its server, its groups, and closes its database.
    pub async fn stop_node(&mut self, id: u64) {
        let Some(r) = self.running[id as usize - 1].take() else { return };
        let _ = r.stop.send(());
        let _ = r.server.await;
        r.node.shutdown().await;
    }

    pub fn node(&self, id: u64) -> &Arc<Node> {
        &self.running[id as usize - 1].as_ref().expect("node is running").node
    }

    pub fn is_running(&self, id: u64) -> bool {
        self.running[id as usize - 1].is_some()
    }

    /// A client of node `id` (on a TLS cluster, with the checkout role).
    pub async fn client(&self, id: u64) -> InventoryClient<Channel> {
        InventoryClient::new(self.channel(id, Some("checkout")))
    }

    /// A client of node `id` with the feed role, for adjustments.
    pub async fn feed(&self, id: u64) -> InventoryClient<Channel> {
        InventoryClient::new(self.channel(id, Some("feed")))
    }

    /// A channel to node `id`'s client plane: plaintext on an insecure
    /// cluster, else TLS with the certificate of `role` (`None`: anonymous).
    pub fn channel(&self, id: u64, role: Option<&str>) -> Channel {
        self.channel_to(&self.addrs[id as usize - 1], role)
    }

    /// A channel to `addr` (either plane of a node), as [`Cluster::channel`].
    pub fn channel_to(&self, addr: &str, role: Option<&str>) -> Channel {
        let Some(certs) = &self.certs else {
            return Channel::from_shared(format!("http://{addr}")).expect("uri").connect_lazy();
        };
        let tls = tls_config(certs, role);
        Channel::from_shared(format!("https://{addr}")).expect("uri").tls_config(tls).expect("tls settings").connect_lazy()
    }

    /// The leader of the group holding `sku`, as the running nodes see it.
    pub fn leader_of_sku(&self, sku: &str) -> Option<u64> {
        let running: Vec<&Running> = self.running.iter().flatten().collect();
        let node = &running.first()?.node;
        let group = node.topology().group_for("local", sku)?.group;
        running.iter().filter_map(|r| r.node.group(group)).find(|g| g.is_leader()).map(|g| g.node_id)
    }

    pub async fn wait_for_leaders(&self) {
        poll("every group (the metadata group's too) to have a leader", Duration::from_secs(30), || {
            let ok = self.running.iter().flatten().all(|r| r.node.all_groups().iter().all(|g| g.leader().is_some()));
            async move { ok }
        })
        .await;
    }

    pub async fn shutdown(mut self) {
        for id in 1..=self.addrs.len() as u64 {
            self.stop_node(id).await;
        }
    }
}

/// TLS settings with the CA of `certs` and the certificate of `role`
/// (`None`: anonymous, a CA only).
pub fn tls_config(certs: &std::path::Path, role: Option<&str>) -> tonic::transport::ClientTlsConfig {
    let read = |name: String| std::fs::read(certs.join(name)).expect("certificate file");
    let config = tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(read("ca.crt".into())));
    match role {
        Some(role) => config.identity(tonic::transport::Identity::from_pem(read(format!("{role}.crt")), read(format!("{role}.key")))),
        None => config,
    }
}

/// Polls `check` every 50 ms until it holds; panics after `limit`.
pub async fn poll<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn line(sku: &str, location: &str, quantity: u64) -> pb::Line {
    pb::Line { sku: sku.into(), location: location.into(), quantity }
}

pub async fn receive(client: &mut InventoryClient<Channel>, event_id: &str, sku: &str, location: &str, quantity: u64) -> pb::AdjustResponse {
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    client
        .adjust(pb::AdjustRequest {
            event_id: event_id.into(),
            sku: sku.into(),
            location: location.into(),
            kind: pb::AdjustmentKind::Receipt as i32,
            quantity,
            reason: "test stock".into(),
            source: "test".into(),
            source_seq: seq,
            observed_at_ms: 0,
        })
        .await
        .expect("adjust")
        .into_inner()
}

static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

pub async fn reserve(client: &mut InventoryClient<Channel>, id: &str, lines: Vec<pb::Line>, ttl_ms: u64) -> Result<pb::ReserveResponse, tonic::Status> {
    client.reserve(pb::ReserveRequest { reservation_id: id.into(), lines, ttl_ms, risk_gate: None }).await.map(|r| r.into_inner())
}

/// A read of one position; retried for a few seconds while its group has
/// no quorum (a leader that lost it to a new election answers UNAVAILABLE,
/// as to any client, which retries).
pub async fn position(client: &mut InventoryClient<Channel>, sku: &str, location: &str, consistency: pb::Consistency) -> pb::PositionResponse {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let request = pb::GetPositionRequest { sku: sku.into(), location: location.into(), consistency: consistency as i32, max_staleness_ms: 0 };
        match client.get_position(request).await {
            Ok(answer) => return answer.into_inner(),
            Err(e) if e.code() == tonic::Code::Unavailable && Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("get position: {e}"),
        }
    }
}
