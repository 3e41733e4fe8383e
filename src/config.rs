//! Configuration: a TOML file (kebab-case keys, unknown keys rejected) whose
//! values command-line flags override, validated into [`Config`].
//!
//! `[cluster]` settings must be identical on every node (they shape the shard
//! map and the state machine): they travel as a fingerprint with every peer
//! message, and a node refuses a peer whose fingerprint differs. `[node]`
//! settings are this process's own.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::path::PathBuf;

use raft::GroupConfig;
use raft::NodeId;
use serde::Deserialize;
use serde::Serialize;
use storage::model::Limits;
use storage::validate::InputLimits;

use models::features::SellerType;
use models::policy::PolicyConfig;
use models::ScoringConfig;

use crate::shard_map::ShardMap;

/// A node's peer plane listens this many ports above its client address
/// unless its `peer-addr` says otherwise.
pub const PEER_PORT_OFFSET: u16 = 100;

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    #[serde(default)]
    pub cluster: ClusterFile,
    #[serde(default)]
    pub node: NodeFile,
    /// Model serving on this node.
    #[serde(default)]
    pub model: ScoringConfig,
    /// Business rules of availability answers and fulfilment ranking.
    #[serde(default)]
    pub availability: AvailabilityFile,
}

/// Policy of the probable path. Per node, but every node of a region should
/// use the same values or answers differ by node.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct AvailabilityFile {
    /// Cost of an oversell relative to a lost sale. Unset: the serving model
    /// version's own checkout threshold; set: threshold = ratio / (1 + ratio).
    pub checkout_cost_ratio: Option<f64>,
    /// Locations whose id starts with one of these are third-party sellers
    /// (60 s feed freshness SLA); all others are first-party (5 s).
    pub third_party_location_prefixes: Vec<String>,
    /// Largest order a third-party seller location takes.
    pub third_party_order_units_max: u64,
    /// Units that must remain beyond the request when no model answers, or
    /// the read is stale, or the feed lags.
    pub conservative_margin_units: u64,
    /// A product page shows low stock at or below this many units left.
    pub low_stock_units: u64,
    /// Staleness beyond which a read is too old for the context.
    pub checkout_staleness_ms_max: u64,
    pub product_page_staleness_ms_max: u64,
    /// SKU prefixes that may not be sold in this region (compliance).
    pub blocked_sku_prefixes: Vec<String>,
    /// Regions whose orders must be fulfilled in-region (data residency).
    pub residency_regions: Vec<String>,
    /// Ranking cost proxy: third-party location, shipping across regions.
    pub third_party_cost: f64,
    pub cross_region_cost: f64,
    /// Weight of cost against p_sellable in the ranking score.
    pub cost_weight: f64,
    /// Most locations of one SKU looked at by one request.
    pub locations_max: usize,
}

impl Default for AvailabilityFile {
    fn default() -> Self {
        let policy = PolicyConfig::default();
        Self {
            checkout_cost_ratio: None,
            third_party_location_prefixes: vec!["3p-".to_owned()],
            third_party_order_units_max: policy.third_party_order_units_max,
            conservative_margin_units: policy.conservative_margin_units,
            low_stock_units: policy.low_stock_units,
            checkout_staleness_ms_max: policy.checkout_staleness_ms_max,
            product_page_staleness_ms_max: policy.product_page_staleness_ms_max,
            blocked_sku_prefixes: Vec::new(),
            residency_regions: Vec::new(),
            third_party_cost: 0.3,
            cross_region_cost: 1.0,
            cost_weight: 0.1,
            locations_max: 64,
        }
    }
}

impl AvailabilityFile {
    pub fn policy(&self) -> PolicyConfig {
        PolicyConfig {
            blocked_sku_prefixes: self.blocked_sku_prefixes.clone(),
            third_party_order_units_max: self.third_party_order_units_max,
            conservative_margin_units: self.conservative_margin_units,
            low_stock_units: self.low_stock_units,
            checkout_staleness_ms_max: self.checkout_staleness_ms_max,
            product_page_staleness_ms_max: self.product_page_staleness_ms_max,
        }
    }

    pub fn seller_type(&self, location: &str) -> SellerType {
        if self.third_party_location_prefixes.iter().any(|prefix| location.starts_with(prefix.as_str())) {
            SellerType::ThirdParty
        } else {
            SellerType::FirstParty
        }
    }

    fn validate(&self) -> Result<(), String> {
        if let Some(ratio) = self.checkout_cost_ratio {
            if !(ratio.is_finite() && ratio > 0.0 && ratio <= 1e6) {
                return Err(format!("availability.checkout-cost-ratio must be in (0, 1e6], not {ratio}"));
            }
        }
        for (name, value) in [("third-party-cost", self.third_party_cost), ("cross-region-cost", self.cross_region_cost), ("cost-weight", self.cost_weight)] {
            if !(value.is_finite() && (0.0..=100.0).contains(&value)) {
                return Err(format!("availability.{name} must be in [0, 100], not {value}"));
            }
        }
        if self.locations_max == 0 || self.locations_max > 1024 {
            return Err(format!("availability.locations-max must be in 1..=1024, not {}", self.locations_max));
        }
        if self.third_party_order_units_max == 0 {
            return Err("availability.third-party-order-units-max must be at least 1".into());
        }
        Ok(())
    }
}

/// The default of `[cluster] metadata-replicas`, and its most.
pub const METADATA_REPLICAS_DEFAULT: usize = 5;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClusterFile {
    /// Every node: id, address and region.
    #[serde(default)]
    pub nodes: Vec<NodeEntry>,
    /// Raft groups (SKU ranges) per region at bootstrap; default 1, which
    /// size and load splits then shape.
    pub groups_per_region: u32,
    /// SKU split points (groups_per_region - 1 of them, ascending), needed
    /// for more than one group.
    #[serde(default)]
    pub split_points: Option<Vec<String>>,
    /// Replicas per group (3 or 5), all in the group's region.
    pub replication_factor: usize,
    pub reservation_ttl_ms_default: u64,
    pub reservation_ttl_ms_max: u64,
    pub reservation_lines_max: usize,
    pub line_quantity_max: u64,
    pub adjust_quantity_max: u64,
    pub idempotency_retention_ms: u64,
    pub recent_changes_max: usize,
    pub batch_commands_max: usize,
    pub proposals_inflight_max: usize,
    pub proposal_queue_max: usize,
    pub clock_tick_ms: u64,
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    pub snapshot_logs_since_last: u64,
    pub logs_to_keep_after_snapshot: u64,
    /// A group holding more positions than this is split at its middle SKU
    /// (0: never by size).
    pub split_positions_max: u64,
    /// A group whose leader proposes more commands per second than this
    /// (over the last 10 s) is split where its sampled load is; a SKU with
    /// most of it ends up alone in its range (0: never by load).
    pub split_load_cmds_per_s: u64,
    /// A range whose load stays under a tenth of `split-load-cmds-per-s`
    /// for this many seconds is merged into its left neighbour, when the
    /// two hold fewer than half of `split-positions-max` positions together
    /// (0: never by itself).
    pub merge_cold_s: u64,
    /// Whether a new cluster's placement loop balances replicas and leaders
    /// per node (`stockctl balance on|off` changes it later; the topology
    /// holds it, this is only the bootstrap input).
    pub balance: bool,
    /// Most replicas of a new cluster's metadata group: the first nodes by
    /// id, an odd number of them (1, 3 or 5); moves change them later.
    pub metadata_replicas: usize,
}

impl Default for ClusterFile {
    fn default() -> Self {
        let input = InputLimits::default();
        let group = GroupConfig::default();
        Self {
            nodes: Vec::new(),
            groups_per_region: 1,
            split_points: None,
            replication_factor: 3,
            reservation_ttl_ms_default: input.ttl_ms_default,
            reservation_ttl_ms_max: input.ttl_ms_max,
            reservation_lines_max: input.lines_max,
            line_quantity_max: input.line_quantity_max,
            adjust_quantity_max: input.adjust_quantity_max,
            idempotency_retention_ms: group.limits.idempotency_retention_ms,
            recent_changes_max: group.limits.recent_changes_max,
            batch_commands_max: group.batch_commands_max,
            proposals_inflight_max: group.proposals_inflight_max,
            proposal_queue_max: group.proposal_queue_max,
            clock_tick_ms: group.clock_tick_ms,
            heartbeat_ms: group.heartbeat_ms,
            election_timeout_min_ms: group.election_timeout_min_ms,
            election_timeout_max_ms: group.election_timeout_max_ms,
            snapshot_logs_since_last: group.snapshot_logs_since_last,
            logs_to_keep_after_snapshot: group.logs_to_keep_after_snapshot,
            split_positions_max: SplitPolicy::default().positions_max,
            split_load_cmds_per_s: SplitPolicy::default().load_cmds_per_s,
            merge_cold_s: SplitPolicy::default().merge_cold_s,
            balance: true,
            metadata_replicas: METADATA_REPLICAS_DEFAULT,
        }
    }
}

/// When a group's leader splits it, or merges it into its left neighbour,
/// by itself (`[cluster]` `split-positions-max`, `split-load-cmds-per-s`,
/// `merge-cold-s`; 0 turns a trigger off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitPolicy {
    pub positions_max: u64,
    pub load_cmds_per_s: u64,
    pub merge_cold_s: u64,
}

impl Default for SplitPolicy {
    fn default() -> Self {
        Self { positions_max: 100_000, load_cmds_per_s: 1_000, merge_cold_s: 60 }
    }
}

impl SplitPolicy {
    /// Commands/s under which a range counts as cold for a merge.
    pub fn cold_cmds_per_s(&self) -> f64 {
        self.load_cmds_per_s as f64 / 10.0
    }

    /// Most positions two ranges may hold together to be merged.
    pub fn merged_positions_max(&self) -> u64 {
        match self.positions_max {
            0 => u64::MAX,
            max => max / 2,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NodeEntry {
    pub id: NodeId,
    /// Client plane (`host:port`): the public API, and the address leader
    /// hints name.
    pub addr: String,
    /// Peer plane (`host:port`): Raft and forwarded requests between nodes.
    /// Default: the client address's port + 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_addr: Option<String>,
    #[serde(default = "default_region")]
    pub region: String,
}

impl NodeEntry {
    /// The peer-plane address: the explicit one, else the client port + 100.
    pub fn resolved_peer_addr(&self) -> Result<String, String> {
        if let Some(addr) = &self.peer_addr {
            return Ok(addr.clone());
        }
        let (host, port) = self.addr.rsplit_once(':').ok_or_else(|| format!("node {}: address `{}` is not HOST:PORT", self.id, self.addr))?;
        let port: u16 = port.parse().map_err(|_| format!("node {}: address `{}` has no valid port", self.id, self.addr))?;
        let peer_port = port
            .checked_add(PEER_PORT_OFFSET)
            .ok_or_else(|| format!("node {}: client port {port} + {PEER_PORT_OFFSET} is past 65535; give its peer address", self.id))?;
        Ok(format!("{host}:{peer_port}"))
    }
}

fn default_region() -> String {
    "local".to_string()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct NodeFile {
    pub id: Option<NodeId>,
    pub listen: Option<String>,
    /// Where the peer plane binds; default: this node's peer address.
    pub peer_listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub region: Option<String>,
    /// Deadline for a forwarded client request or a peer RPC.
    pub rpc_timeout_ms: u64,
    /// Directory made by `stockd certs`: `ca.crt`, `node-<id>.crt/.key`.
    pub certs: Option<PathBuf>,
    /// Serve plaintext and check no certificate or role (both planes).
    pub insecure: bool,
    /// How often the certificate files are checked for a change (SIGHUP
    /// reloads at once).
    pub tls_reload_ms: u64,
}

impl Default for NodeFile {
    fn default() -> Self {
        Self {
            id: None,
            listen: None,
            peer_listen: None,
            data_dir: None,
            region: None,
            rpc_timeout_ms: 5_000,
            certs: None,
            insecure: false,
            tls_reload_ms: 2_000,
        }
    }
}

/// How a node secures its two planes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Security {
    /// mTLS with the certificates of this directory, reloaded when they
    /// change.
    Tls { certs: PathBuf, reload_ms: u64 },
    /// Plaintext, nobody authenticated (`--insecure`).
    Insecure,
}

/// One node of `--peers`: `ID=HOST:PORT` or `ID=HOST:PORT/PEER_HOST:PEER_PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerArg {
    pub id: NodeId,
    pub addr: String,
    pub peer_addr: Option<String>,
}

impl NodeFile {
    /// How the node secures its planes once `o` applies (`--certs`,
    /// `--insecure`).
    pub fn security_with(&self, o: &Overrides) -> Result<Security, String> {
        let mut node = self.clone();
        if let Some(certs) = &o.certs {
            node.certs = Some(certs.clone());
        }
        node.insecure |= o.insecure;
        node.security()
    }

    fn security(&self) -> Result<Security, String> {
        match (&self.certs, self.insecure) {
            (Some(_), true) => Err("give either --certs DIR or --insecure, not both".into()),
            (None, true) => Ok(Security::Insecure),
            (Some(certs), false) => {
                if !(100..=3_600_000).contains(&self.tls_reload_ms) {
                    return Err(format!("tls-reload-ms must be in 100..=3600000, not {}", self.tls_reload_ms));
                }
                Ok(Security::Tls { certs: certs.clone(), reload_ms: self.tls_reload_ms })
            }
            (None, false) => Err("TLS is on by default: give --certs DIR (made by `stockd certs`), or --insecure for plaintext without authentication".into()),
        }
    }
}

/// Most Raft groups per region (a node hosts groups of its region only).
pub const GROUPS_PER_REGION_MAX: u32 = 1024;

/// Command-line overrides (all optional).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub node_id: Option<NodeId>,
    pub listen: Option<String>,
    pub peer_listen: Option<String>,
    pub peers: Option<Vec<PeerArg>>,
    pub certs: Option<PathBuf>,
    pub insecure: bool,
    pub data_dir: Option<PathBuf>,
    pub region: Option<String>,
    pub model_dir: Option<PathBuf>,
    /// `--join ADDR,...`: this node is not in the cluster's bootstrap list
    /// and joins the running cluster through these nodes (client-plane
    /// addresses of nodes in that list).
    pub join: Option<Vec<String>>,
    /// The nodes of the running cluster a joining node learnt from the node
    /// it asked (`join::learn_cluster`): `--join` may name any of them, and
    /// their peer addresses are known from the start.
    pub known_nodes: Vec<NodeEntry>,
}

/// Most addresses `--join` takes.
pub const JOIN_ADDRS_MAX: usize = 16;

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub node_id: NodeId,
    /// Client plane.
    pub listen: SocketAddr,
    /// Peer plane.
    pub peer_listen: SocketAddr,
    pub security: Security,
    /// Digest of the `[cluster]` settings (nodes included), compared on every
    /// peer message.
    pub cluster_fingerprint: String,
    /// Those settings as the fingerprint digests them (JSON): what a joining
    /// node takes (`Admin/ClusterSettings`).
    pub cluster_settings: String,
    pub data_dir: PathBuf,
    pub region: String,
    pub rpc_timeout_ms: u64,
    /// The cluster's bootstrap list (`[cluster] nodes` or `--peers`); a
    /// node that joined later is not in it (see `me`).
    pub nodes: BTreeMap<NodeId, NodeEntry>,
    /// This node as the topology knows it.
    pub me: NodeEntry,
    /// Nodes to join the running cluster through (`--join`); empty for a
    /// node of the bootstrap list.
    pub join: Vec<NodeId>,
    /// Peer addresses of nodes outside the bootstrap list that a joining
    /// node learnt before it started.
    pub known_peers: BTreeMap<NodeId, String>,
    pub shard_map: ShardMap,
    pub input_limits: InputLimits,
    pub group: GroupConfig,
    pub split: SplitPolicy,
    /// `[cluster] balance`: a new cluster's balancing switch.
    pub balance: bool,
    /// `[cluster] metadata-replicas`.
    pub metadata_replicas: usize,
    pub scoring: ScoringConfig,
    pub availability: AvailabilityFile,
}

/// The model directory used when the configured one is relative and absent
/// from the working directory: this source tree's committed `models/`.
pub fn builtin_model_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/models"))
}

/// Parses `1=host:port,2=host:port` (each optionally `/peer_host:peer_port`).
pub fn parse_peers(text: &str) -> Result<Vec<PeerArg>, String> {
    text.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|pair| {
            let (id, addrs) = pair.split_once('=').ok_or_else(|| format!("--peers: `{pair}` is not ID=HOST:PORT[/PEER_HOST:PEER_PORT]"))?;
            let id: NodeId = id.trim().parse().map_err(|_| format!("--peers: `{id}` is not a node id"))?;
            let (addr, peer_addr) = match addrs.split_once('/') {
                Some((addr, peer)) => (addr.trim(), Some(peer.trim().to_string())),
                None => (addrs.trim(), None),
            };
            if addr.is_empty() || peer_addr.as_deref().is_some_and(str::is_empty) {
                return Err(format!("--peers: `{pair}` has an empty address"));
            }
            Ok(PeerArg { id, addr: addr.to_string(), peer_addr })
        })
        .collect()
}

/// The nodes named by `--join` addresses (their client-plane addresses),
/// in the order given: nodes of the bootstrap list, or nodes the joining
/// node learnt from the cluster (`known`).
fn join_through(addrs: &[String], nodes: &BTreeMap<NodeId, NodeEntry>, known: &[NodeEntry]) -> Result<Vec<NodeId>, String> {
    if addrs.len() > JOIN_ADDRS_MAX {
        return Err(format!("--join takes at most {JOIN_ADDRS_MAX} addresses, not {}", addrs.len()));
    }
    addrs
        .iter()
        .map(|addr| {
            nodes.values().chain(known).find(|n| n.addr == addr.trim()).map(|n| n.id).ok_or_else(|| {
                let known = nodes.values().chain(known).map(|n| n.addr.as_str()).collect::<Vec<_>>().join(", ");
                format!("--join: {addr} is no node of the cluster ({known})")
            })
        })
        .collect()
}

/// The cluster-wide settings every node must share, as one text (JSON, the
/// bootstrap list resolved), and its digest: the cluster fingerprint.
fn cluster_settings(cluster: &ClusterFile, nodes: &BTreeMap<NodeId, NodeEntry>) -> (String, String) {
    use sha2::Digest;
    let settings = ClusterFile { nodes: nodes.values().cloned().collect(), ..cluster.clone() };
    let text = serde_json::to_string(&settings).expect("the cluster settings serialize");
    let digest = sha2::Sha256::digest(text.as_bytes());
    let fingerprint = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    (text, fingerprint)
}

/// Largest cluster settings text a joining node takes.
pub const CLUSTER_SETTINGS_BYTES_MAX: usize = 1 << 20;

impl FileConfig {
    /// True when this configuration names the cluster's bootstrap list
    /// (`[cluster] nodes`), so it carries the cluster's settings itself.
    pub fn has_bootstrap_list(&self) -> bool {
        !self.cluster.nodes.is_empty()
    }

    /// Takes the cluster's settings as another node runs them (`settings`,
    /// the text of `Admin/ClusterSettings`), for a node that joins without
    /// a bootstrap list of its own. Refused when this configuration sets
    /// any `[cluster]` value itself: one node's settings must never quietly
    /// differ from the cluster's.
    pub fn take_cluster_settings(&mut self, settings: &str) -> Result<(), String> {
        if settings.len() > CLUSTER_SETTINGS_BYTES_MAX {
            return Err(format!("the cluster settings are {} bytes, over the limit of {CLUSTER_SETTINGS_BYTES_MAX}", settings.len()));
        }
        let defaults = serde_json::to_string(&ClusterFile::default()).expect("the cluster settings serialize");
        let mine = serde_json::to_string(&self.cluster).expect("the cluster settings serialize");
        if mine != defaults {
            return Err("--join without a bootstrap list takes the cluster's [cluster] settings from the node it joins through; \
                        this configuration sets [cluster] values of its own: remove them, or give the whole [cluster] section with its nodes"
                .into());
        }
        self.cluster = serde_json::from_str(settings).map_err(|e| format!("invalid cluster settings from the cluster: {e}"))?;
        Ok(())
    }

    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("invalid config {}: {e}", path.display()))
    }

    /// Applies overrides and checks every value and every relation between
    /// values.
    pub fn validate(mut self, o: Overrides) -> Result<Config, String> {
        if let Some(v) = o.node_id {
            self.node.id = Some(v);
        }
        if let Some(v) = o.listen {
            self.node.listen = Some(v);
        }
        if let Some(v) = o.peer_listen {
            self.node.peer_listen = Some(v);
        }
        if let Some(v) = o.certs {
            self.node.certs = Some(v);
        }
        self.node.insecure |= o.insecure;
        if let Some(v) = o.data_dir {
            self.node.data_dir = Some(v);
        }
        if let Some(v) = o.region {
            self.node.region = Some(v);
        }
        if let Some(v) = o.model_dir {
            self.model.model_dir = v;
        }
        if self.model.model_dir.is_relative() && !self.model.model_dir.exists() {
            self.model.model_dir = builtin_model_dir();
        }
        self.model.validate().map_err(|e| format!("invalid [model]: {e}"))?;
        self.availability.validate()?;
        let region = self.node.region.clone().unwrap_or_else(default_region);
        if let Some(peers) = o.peers {
            self.cluster.nodes = peers.into_iter().map(|p| NodeEntry { id: p.id, addr: p.addr, peer_addr: p.peer_addr, region: region.clone() }).collect();
        }
        let c = &self.cluster;
        let node_id = self.node.id.ok_or("node id is required (--node-id or [node] id)")?;
        let data_dir = self.node.data_dir.clone().ok_or("data dir is required (--data-dir or [node] data-dir)")?;
        let mut nodes = BTreeMap::new();
        for n in &c.nodes {
            if n.id == 0 {
                return Err("node ids start at 1 (0 means unknown in the API)".into());
            }
            let resolved = NodeEntry { peer_addr: Some(n.resolved_peer_addr()?), ..n.clone() };
            if nodes.insert(n.id, resolved).is_some() {
                return Err(format!("node {} is listed twice in peers", n.id));
            }
        }
        let join = join_through(o.join.as_deref().unwrap_or_default(), &nodes, &o.known_nodes)?;
        let me = match nodes.get(&node_id) {
            Some(_) if !join.is_empty() => {
                return Err(format!("--join: node {node_id} is in the cluster's bootstrap list; --join is for a node that is not"));
            }
            Some(me) => me.clone(),
            None if !join.is_empty() => {
                let addr =
                    self.node.listen.clone().ok_or("--join needs --listen: a joining node is not in the bootstrap list, which gives the others' addresses")?;
                let entry = NodeEntry { id: node_id, addr, peer_addr: self.node.peer_listen.clone(), region: region.clone() };
                NodeEntry { peer_addr: Some(entry.resolved_peer_addr()?), ..entry }
            }
            None => return Err(format!("node {node_id} is not among the peers (a node that joins a running cluster is started with --join)")),
        };
        if me.region != region {
            return Err(format!("node {node_id} is in region {} in the peer list but --region is {region}", me.region));
        }
        let listen_text = self.node.listen.clone().unwrap_or_else(|| me.addr.clone());
        let listen: SocketAddr = listen_text.parse().map_err(|e| format!("listen address `{listen_text}`: {e}"))?;
        let peer_listen_text = self.node.peer_listen.clone().or_else(|| me.peer_addr.clone()).unwrap_or_default();
        let peer_listen: SocketAddr = peer_listen_text.parse().map_err(|e| format!("peer listen address `{peer_listen_text}`: {e}"))?;
        if !join.is_empty() && nodes.values().any(|n| n.addr == me.addr || n.peer_addr == me.peer_addr) {
            return Err(format!("--join: node {node_id}'s addresses {} / {} are a bootstrap node's", me.addr, me.peer_addr.as_deref().unwrap_or_default()));
        }
        if let Some(other) = o.known_nodes.iter().find(|n| n.id != node_id && (n.addr == me.addr || n.peer_addr == me.peer_addr)) {
            return Err(format!("--join: node {node_id}'s addresses {} / {} are node {}'s", me.addr, me.peer_addr.as_deref().unwrap_or_default(), other.id));
        }
        if peer_listen == listen {
            return Err(format!("the peer plane ({peer_listen}) needs an address of its own, apart from the client plane"));
        }
        let security = self.node.security()?;
        if !(c.replication_factor == 1 || c.replication_factor == 3 || c.replication_factor == 5) {
            return Err(format!("replication-factor must be 1, 3 or 5, not {}", c.replication_factor));
        }
        let input_limits = InputLimits {
            lines_max: c.reservation_lines_max,
            line_quantity_max: c.line_quantity_max,
            adjust_quantity_max: c.adjust_quantity_max,
            ttl_ms_default: c.reservation_ttl_ms_default,
            ttl_ms_max: c.reservation_ttl_ms_max,
            ..InputLimits::default()
        };
        input_limits.validate().map_err(|e| format!("invalid limits: {e}"))?;
        if c.adjust_quantity_max > (1u64 << 40) {
            return Err("adjust-quantity-max must be at most 2^40 so quantities never overflow".into());
        }
        let group = GroupConfig {
            batch_commands_max: c.batch_commands_max,
            proposals_inflight_max: c.proposals_inflight_max,
            proposal_queue_max: c.proposal_queue_max,
            clock_tick_ms: c.clock_tick_ms,
            heartbeat_ms: c.heartbeat_ms,
            election_timeout_min_ms: c.election_timeout_min_ms,
            election_timeout_max_ms: c.election_timeout_max_ms,
            snapshot_logs_since_last: c.snapshot_logs_since_last,
            logs_to_keep_after_snapshot: c.logs_to_keep_after_snapshot,
            limits: Limits { idempotency_retention_ms: c.idempotency_retention_ms, recent_changes_max: c.recent_changes_max },
            skip_history: false,
        };
        for (name, v) in [
            ("batch-commands-max", group.batch_commands_max as u64),
            ("proposals-inflight-max", group.proposals_inflight_max as u64),
            ("proposal-queue-max", group.proposal_queue_max as u64),
            ("clock-tick-ms", group.clock_tick_ms),
            ("heartbeat-ms", group.heartbeat_ms),
            ("snapshot-logs-since-last", group.snapshot_logs_since_last),
            ("recent-changes-max", group.limits.recent_changes_max as u64),
        ] {
            if v == 0 {
                return Err(format!("{name} must be greater than 0"));
            }
        }
        if group.election_timeout_min_ms <= 2 * group.heartbeat_ms || group.election_timeout_max_ms <= group.election_timeout_min_ms {
            return Err("need heartbeat-ms * 2 < election-timeout-min-ms < election-timeout-max-ms".into());
        }
        if group.limits.idempotency_retention_ms < input_limits.ttl_ms_max {
            return Err("idempotency-retention-ms must be at least reservation-ttl-ms-max, or a retry could outlive its record".into());
        }
        if self.node.rpc_timeout_ms < group.election_timeout_max_ms {
            return Err("rpc-timeout-ms must be at least election-timeout-max-ms so a forwarded request can outlive a leader change".into());
        }
        if ![1, 3, 5].contains(&c.metadata_replicas) {
            return Err(format!("metadata-replicas must be 1, 3 or 5, not {}", c.metadata_replicas));
        }
        if c.groups_per_region > GROUPS_PER_REGION_MAX {
            return Err(format!("groups-per-region must be at most {GROUPS_PER_REGION_MAX}, not {}", c.groups_per_region));
        }
        let members = nodes.values().map(|n| (n.id, n.region.as_str()));
        let shard_map = ShardMap::build(members, c.groups_per_region, c.split_points.clone(), c.replication_factor)?;
        let (cluster_settings, cluster_fingerprint) = cluster_settings(c, &nodes);
        let known_peers =
            o.known_nodes.iter().filter(|n| n.id != node_id && !nodes.contains_key(&n.id)).filter_map(|n| Some((n.id, n.peer_addr.clone()?))).collect();
        Ok(Config {
            node_id,
            listen,
            peer_listen,
            security,
            cluster_fingerprint,
            cluster_settings,
            data_dir,
            region,
            rpc_timeout_ms: self.node.rpc_timeout_ms,
            nodes,
            me,
            join,
            known_peers,
            shard_map,
            input_limits,
            group,
            split: SplitPolicy { positions_max: c.split_positions_max, load_cmds_per_s: c.split_load_cmds_per_s, merge_cold_s: c.merge_cold_s },
            balance: c.balance,
            metadata_replicas: c.metadata_replicas,
            scoring: self.model,
            availability: self.availability,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers() -> Overrides {
        Overrides {
            node_id: Some(1),
            peers: Some(parse_peers("1=127.0.0.1:7101,2=127.0.0.1:7102,3=127.0.0.1:7103").expect("peers")),
            data_dir: Some("d".into()),
            insecure: true,
            ..Default::default()
        }
    }

    #[test]
    fn defaults_with_peers_validate() {
        let c = FileConfig::default().validate(peers()).expect("valid");
        assert_eq!(c.listen.port(), 7101);
        assert_eq!(c.peer_listen.port(), 7201, "the peer plane is 100 ports up");
        assert_eq!(c.nodes[&2].peer_addr.as_deref(), Some("127.0.0.1:7202"));
        assert_eq!(c.shard_map.ranges.len(), 1, "a region starts as one range");
        assert_eq!(c.region, "local");
        assert_eq!(c.security, Security::Insecure);
    }

    #[test]
    fn peer_addresses_can_be_given_and_planes_stay_apart() {
        let peers = parse_peers("1=127.0.0.1:7101/127.0.0.1:9001,2=h2:7102,3=h3:7103").expect("peers");
        assert_eq!(peers[0].peer_addr.as_deref(), Some("127.0.0.1:9001"));
        assert_eq!(peers[1].peer_addr, None);
        assert!(parse_peers("1=a:1/").is_err());
        let c = FileConfig::default().validate(Overrides { peers: Some(peers.clone()), ..peers_with(1) }).expect("valid");
        assert_eq!(c.peer_listen.port(), 9001);
        let same = Overrides { peer_listen: Some("127.0.0.1:7101".into()), peers: Some(peers), ..peers_with(1) };
        assert!(FileConfig::default().validate(same).expect_err("same port").contains("peer plane"));
    }

    fn peers_with(id: NodeId) -> Overrides {
        Overrides { node_id: Some(id), ..peers() }
    }

    #[test]
    fn tls_needs_certificates_or_an_explicit_insecure() {
        let neither = Overrides { insecure: false, ..peers() };
        assert!(FileConfig::default().validate(neither.clone()).expect_err("no certs").contains("--certs"));
        let both = Overrides { insecure: true, certs: Some("c".into()), ..peers() };
        assert!(FileConfig::default().validate(both).expect_err("both").contains("not both"));
        let tls = FileConfig::default().validate(Overrides { certs: Some("c".into()), ..neither }).expect("tls");
        assert_eq!(tls.security, Security::Tls { certs: "c".into(), reload_ms: 2_000 });
    }

    #[test]
    fn nodes_with_other_cluster_settings_have_another_fingerprint() {
        let a = FileConfig::default().validate(peers()).expect("valid");
        let b = FileConfig::default().validate(peers_with(2)).expect("valid");
        assert_eq!(a.cluster_fingerprint, b.cluster_fingerprint, "per-node settings do not count");
        let mut other = FileConfig::default();
        other.cluster.line_quantity_max = 10;
        let c = other.validate(peers()).expect("valid");
        assert_ne!(a.cluster_fingerprint, c.cluster_fingerprint);
    }

    #[test]
    fn a_joining_node_is_outside_the_bootstrap_list_and_keeps_its_fingerprint() {
        let joining = |id, listen: Option<&str>, join: &[&str]| Overrides {
            listen: listen.map(str::to_owned),
            join: Some(join.iter().map(|a| a.to_string()).collect()),
            ..peers_with(id)
        };
        let c = FileConfig::default().validate(joining(4, Some("127.0.0.1:7104"), &["127.0.0.1:7102", "127.0.0.1:7101"])).expect("valid");
        assert_eq!(c.join, vec![2, 1]);
        assert_eq!((c.me.id, c.me.addr.as_str(), c.me.peer_addr.as_deref()), (4, "127.0.0.1:7104", Some("127.0.0.1:7204")));
        assert!(!c.nodes.contains_key(&4), "the bootstrap list is the cluster's");
        let member = FileConfig::default().validate(peers()).expect("valid");
        assert_eq!(c.cluster_fingerprint, member.cluster_fingerprint, "the same [cluster] settings");
        assert_eq!(member.me, member.nodes[&1]);
        let err = |o| FileConfig::default().validate(o).expect_err("refused");
        assert!(err(joining(4, None, &["127.0.0.1:7101"])).contains("--join needs --listen"));
        assert!(err(joining(4, Some("127.0.0.1:7104"), &["127.0.0.1:9999"])).contains("127.0.0.1:9999 is no node"));
        assert!(err(joining(2, Some("127.0.0.1:7104"), &["127.0.0.1:7101"])).contains("bootstrap list; --join is for"));
        assert!(err(joining(4, Some("127.0.0.1:7101"), &["127.0.0.1:7102"])).contains("are a bootstrap node's"));
        assert!(err(peers_with(4)).contains("started with --join"));
    }

    #[test]
    fn a_node_without_a_bootstrap_list_takes_the_clusters_settings_and_fingerprint() {
        let mut cluster = FileConfig::default();
        cluster.cluster.line_quantity_max = 10;
        let member = cluster.validate(peers()).expect("valid");
        // The joining node's own file has node settings only.
        let mut mine = FileConfig::default();
        assert!(!mine.has_bootstrap_list());
        mine.take_cluster_settings(&member.cluster_settings).expect("taken");
        assert!(mine.has_bootstrap_list());
        // --join may name a node the bootstrap list does not (node 7, which
        // joined later), and its peer address is known from the start.
        let seven = NodeEntry { id: 7, addr: "127.0.0.1:7107".into(), peer_addr: Some("127.0.0.1:7207".into()), region: "local".into() };
        let overrides = Overrides {
            node_id: Some(8),
            data_dir: Some("d".into()),
            insecure: true,
            listen: Some("127.0.0.1:7108".into()),
            join: Some(vec!["127.0.0.1:7107".into()]),
            known_nodes: vec![seven.clone()],
            ..Default::default()
        };
        let joined = mine.clone().validate(overrides.clone()).expect("valid");
        assert_eq!(joined.cluster_fingerprint, member.cluster_fingerprint, "the cluster's settings, bootstrap list included");
        assert_eq!(joined.cluster_settings, member.cluster_settings);
        assert_eq!(joined.join, vec![7]);
        assert_eq!(joined.known_peers.get(&7).map(String::as_str), Some("127.0.0.1:7207"));
        let taken_twice = mine.take_cluster_settings(&member.cluster_settings).expect_err("settings of its own");
        assert!(taken_twice.contains("[cluster] values of its own"), "{taken_twice}");
        let mut garbled = FileConfig::default();
        assert!(garbled.take_cluster_settings("{\"no-such-key\": 1}").expect_err("invalid").contains("invalid cluster settings"));
        let clash = Overrides { listen: Some("127.0.0.1:7107".into()), ..overrides };
        assert!(FileConfig::default().validate(Overrides { known_nodes: vec![seven], ..clash }).expect_err("taken").contains("are node 7's"));
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = toml::from_str::<FileConfig>("[node]\nid = 1\nlisten-adress = \"x\"\n").expect_err("typo must fail");
        assert!(err.to_string().contains("listen-adress"), "{err}");
    }

    #[test]
    fn file_values_are_overridden_by_flags() {
        let toml = "[node]\nid = 2\ndata-dir = \"/tmp/x\"\n[cluster]\ngroups-per-region = 4\nsplit-points = [\"d\", \"h\", \"p\"]\n";
        let f: FileConfig = toml::from_str(toml).expect("parses");
        assert_eq!(f.cluster.replication_factor, 3, "unset keys keep defaults");
        let c = f.validate(peers()).expect("valid");
        assert_eq!(c.node_id, 1);
        assert_eq!(c.shard_map.ranges.len(), 4);
        assert_eq!(FileConfig::default().validate(peers()).expect("valid").shard_map.ranges.len(), 1, "one range by default");
    }

    #[test]
    fn relations_between_limits_are_checked() {
        let mut f = FileConfig::default();
        f.cluster.idempotency_retention_ms = 10;
        assert!(f.validate(peers()).expect_err("retention < ttl").contains("idempotency-retention-ms"));
        let mut f = FileConfig::default();
        f.cluster.groups_per_region = GROUPS_PER_REGION_MAX + 1;
        assert!(f.validate(peers()).expect_err("too many groups").contains("groups-per-region"));
        for even in [0, 2, 4, 7] {
            let mut f = FileConfig::default();
            f.cluster.metadata_replicas = even;
            assert!(f.validate(peers()).expect_err("not 1, 3 or 5").contains("metadata-replicas must be 1, 3 or 5"));
        }
        let mut f = FileConfig::default();
        f.cluster.metadata_replicas = 1;
        assert_eq!(f.validate(peers()).expect("one metadata replica").metadata_replicas, 1);
        let mut f = FileConfig::default();
        f.cluster.election_timeout_min_ms = 150;
        assert!(f.validate(peers()).is_err());
        assert!(parse_peers("1=a,x=b").is_err());
        let mut o = peers();
        o.node_id = Some(9);
        assert!(FileConfig::default().validate(o).expect_err("not a peer").contains("not among the peers"));
    }
}
