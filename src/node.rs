//! A stockd node: the groups it replicates, and the routing that lets any
//! node accept any request. A command goes to its group's leader: locally
//! when this node leads, otherwise forwarded over the peer connection
//! (following at most a few leader hints); reads are served by the replica
//! the requested consistency allows.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::RwLock;
use std::time::Duration;
use std::time::Instant;

use openraft::BasicNode;
use raft::network::PeerTransport;
use raft::state_machine::SplitApplied;
use raft::wal_sync::WalSyncer;
use raft::Group;
use raft::GroupError;
use raft::NodeId;
use storage::codec;
use storage::keys;
use storage::model::Command;
use storage::model::CommandResult;
use storage::model::GroupId;
use storage::model::PositionKey;
use storage::model::RangeDesc;
use storage::topology::NodeState;
use storage::topology::Topology;
use storage::topology::METADATA_GROUP;
use storage::Durability;
use storage::Engine;
use storage::RocksEngine;
use storage::Table;
use storage::WriteBatch;
use thiserror::Error;

use crate::config::Config;
use crate::config::Security;
use crate::peer_client::PeerNetwork;
use crate::read::Consistency;
use crate::read::ReadAnswer;
use crate::read::ReadQuery;
use crate::shard_map::ShardMap;
use crate::tls::CertFiles;
use crate::tls::NodeTls;

const SHARD_MAP_KEY: &str = "shard-map";
const FORMAT_KEY: &str = "format";

/// The layout of the records a node stores (log entries, state, shard map).
/// A data directory written with another layout is refused at start, never
/// half-read. 2: ranges with epochs (the entry and state layouts changed).
/// 3: the metadata group (the topology in its state), children of splits.
/// 4: merges (a group's merge state in its snapshots and its log).
/// 5: the balancing switch in the topology. 6: home slots that move with
/// splits and merges (in every range), a cart's own lines apart from it.
/// 7: the metadata group's replicas in the topology (they move).
/// 8: a cart's intent remembers the incarnations it replaced.
pub const DATA_FORMAT: u32 = 8;
/// Most attempts one request makes to reach its group's leader: leader-hint
/// hops and waits out elections (`ELECTION_BACKOFF` each) together; the
/// request's deadline (`rpc-timeout-ms`) bounds them too.
const ROUTE_ATTEMPTS_MAX: usize = 12;
/// Log appends waiting for the node's next fsync. openraft 0.9 waits for
/// each append's flush before the next one of its group, so at most one per
/// hosted group waits: a sender never blocks while groups <= this bound.
const WAL_SYNC_QUEUE_MAX: usize = 16_384;
const _: () = assert!(WAL_SYNC_QUEUE_MAX >= crate::config::GROUPS_PER_REGION_MAX as usize);
/// Pause before retrying while a group elects a leader.
const ELECTION_BACKOFF: Duration = Duration::from_millis(50);

#[derive(Debug, Error)]
pub enum NodeError {
    #[error("failed to open storage in {dir}: {reason}")]
    Storage { dir: String, reason: String },
    #[error("shard map stored in {dir} differs from the configured one; ranges cannot change by configuration")]
    ShardMapChanged { dir: String },
    #[error(
        "{dir} holds data of format {found} and this build reads format {DATA_FORMAT} only; start with an empty data directory or run the build that wrote it"
    )]
    DataFormat { dir: String, found: u32 },
    #[error("failed to start group {group}: {source}")]
    Group { group: GroupId, source: GroupError },
    #[error("failed to load the TLS certificates: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("invalid peer settings: {0}")]
    Peers(String),
    #[error("invalid cluster: {0}")]
    Topology(String),
}

/// Where one routing attempt goes.
pub(crate) enum Target {
    Local,
    Peer(NodeId),
}

/// Most decides of carts a node runs after answering them (`crate::cart`;
/// beyond it, a cart is decided before its answer).
pub const DECIDES_IN_FLIGHT_MAX: usize = 1024;

/// Most locators a node writes back at once after lookups that asked every
/// group; beyond it the write is skipped (the next lookup of that id asks
/// every group again, and may write it then).
pub const LOCATES_IN_FLIGHT_MAX: usize = 256;

pub struct Node {
    pub config: Config,
    /// The groups this node replicates, the metadata group's included;
    /// children of splits and new replicas join while the node runs.
    groups: RwLock<BTreeMap<GroupId, Arc<Group>>>,
    /// This node's copy of the topology (kept fresh by `Node::watch_topology`): the bootstrap
    /// input until the metadata group answers, then its latest version.
    topology: RwLock<Arc<Topology>>,
    /// What a group is started with.
    engine: Arc<dyn Engine>,
    syncer: Arc<WalSyncer>,
    transport: Arc<dyn PeerTransport>,
    splits: tokio::sync::mpsc::UnboundedSender<SplitApplied>,
    /// One group start or retirement at a time (a message and a split may
    /// race to start the same child; a replica moved back must not start
    /// while its old copy is being deleted).
    pub(crate) starting: tokio::sync::Mutex<()>,
    /// Wakes the topology watcher before its next round (a stale answer).
    pub(crate) topology_stale: tokio::sync::Notify,
    pub(crate) peers: Arc<PeerNetwork>,
    /// `None` on an `--insecure` node.
    tls: Option<Arc<NodeTls>>,
    /// The certificate reloader, stopped with the node.
    tls_reloader: Option<tokio::task::JoinHandle<()>>,
    /// Background tasks started for this node, stopped with it.
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// This node, for the tasks it starts.
    me: std::sync::Weak<Node>,
    /// Reservation lookups that the id's home could not answer, so that
    /// every group was asked (see [`Node::locate_reservation`]).
    lookups_everywhere: std::sync::atomic::AtomicU64,
    /// The test-only failpoint this node runs with (`crate::failpoint`).
    failpoint: std::sync::RwLock<Option<String>>,
    /// Slots for the decides of carts already answered (`crate::cart`).
    pub(crate) decides_in_flight: Arc<tokio::sync::Semaphore>,
    /// Slots for locator writes (`spawn_locate`).
    locates_in_flight: Arc<tokio::sync::Semaphore>,
}

impl Node {
    /// Opens the node's database, checks the shard map and starts every
    /// group this node replicates.
    pub async fn start(config: Config) -> Result<Arc<Node>, NodeError> {
        let dir = config.data_dir.display().to_string();
        std::fs::create_dir_all(&config.data_dir).map_err(|e| NodeError::Storage { dir: dir.clone(), reason: e.to_string() })?;
        let engine: Arc<dyn Engine> =
            Arc::new(RocksEngine::open(&config.data_dir.join("db")).map_err(|e| NodeError::Storage { dir: dir.clone(), reason: e.to_string() })?);
        check_shard_map(engine.as_ref(), &config.shard_map, &dir)?;
        let (tls, tls_reloader) = match &config.security {
            Security::Tls { certs, reload_ms } => {
                let tls = NodeTls::load(CertFiles::in_dir(certs, config.node_id))?;
                let reloader = tls.spawn_reloader(Duration::from_millis(*reload_ms));
                (Some(tls), Some(reloader))
            }
            Security::Insecure => {
                tracing::warn!(
                    node = config.node_id,
                    "--insecure: both planes serve plaintext and check no certificate or role; anyone who reaches them can read, write and send Raft messages"
                );
                (None, None)
            }
        };
        let mut peer_addrs: BTreeMap<NodeId, String> = config.known_peers.clone();
        peer_addrs.extend(config.nodes.values().chain([&config.me]).filter_map(|n| n.peer_addr.clone().map(|a| (n.id, a))));
        let peers = Arc::new(PeerNetwork::new(peer_addrs, tls.clone(), config.rpc_timeout_ms, &config.cluster_fingerprint).map_err(NodeError::Peers)?);
        let transport: Arc<dyn PeerTransport> = peers.clone();
        let syncer = WalSyncer::start(engine.clone(), WAL_SYNC_QUEUE_MAX);
        let topology = crate::bootstrap::initial_topology(&config, engine.as_ref()).map_err(NodeError::Topology)?;
        peers.learn(topology.nodes());
        // What this node replicates: its groups in the topology, every group
        // whose state it stores (a split's child the topology does not record
        // yet) and the metadata group on its replicas.
        let mut hosted: BTreeMap<GroupId, RangeDesc> = topology.hosted_by(config.node_id).map(|r| (r.group, r.desc())).collect();
        for group in crate::bootstrap::stored_groups(engine.as_ref()).map_err(|reason| NodeError::Storage { dir: dir.clone(), reason })? {
            hosted.entry(group).or_insert_with(|| RangeDesc { group, ..RangeDesc::metadata() });
        }
        if topology.metadata_replicas().contains(&config.node_id) {
            hosted.insert(METADATA_GROUP, RangeDesc::metadata());
        }
        let (splits, split_reports) = tokio::sync::mpsc::unbounded_channel();
        let mut groups = BTreeMap::new();
        for (id, range) in hosted {
            let group = Group::start(config.node_id, range, engine.clone(), syncer.clone(), transport.clone(), &config.group, splits.clone())
                .await
                .map_err(|source| NodeError::Group { group: id, source })?;
            groups.insert(id, Arc::new(group));
        }
        let node = Arc::new_cyclic(|me| Node {
            config,
            groups: RwLock::new(groups),
            topology: RwLock::new(Arc::new(topology)),
            engine,
            syncer,
            transport,
            splits,
            starting: tokio::sync::Mutex::new(()),
            topology_stale: tokio::sync::Notify::new(),
            peers,
            tls,
            tls_reloader,
            tasks: std::sync::Mutex::new(Vec::new()),
            me: me.clone(),
            lookups_everywhere: std::sync::atomic::AtomicU64::new(0),
            failpoint: std::sync::RwLock::new(crate::failpoint::from_env()),
            decides_in_flight: Arc::new(tokio::sync::Semaphore::new(DECIDES_IN_FLIGHT_MAX)),
            locates_in_flight: Arc::new(tokio::sync::Semaphore::new(LOCATES_IN_FLIGHT_MAX)),
        });
        node.initialize_groups().await?;
        node.add_task(tokio::spawn(Node::start_children(node.me.clone(), split_reports)));
        node.add_task(tokio::spawn(Node::watch_topology(node.me.clone())));
        node.add_task(tokio::spawn(Node::split_when_due(node.me.clone())));
        node.add_task(tokio::spawn(Node::merge_when_due(node.me.clone())));
        node.add_task(tokio::spawn(Node::place_when_due(node.me.clone())));
        node.add_task(tokio::spawn(Node::reconcile_replicas_when_due(node.me.clone())));
        if !node.config.join.is_empty() {
            node.add_task(tokio::spawn(Node::join_when_started(node.me.clone())));
        }
        Ok(node)
    }

    /// The first replica of each group (rotated per group, so leaders start
    /// spread over the nodes) makes the replicas its
    /// voters when the group is new; openraft refuses (harmlessly) when the
    /// group already has a membership.
    async fn initialize_groups(&self) -> Result<(), NodeError> {
        // The metadata group from the bootstrap list only while this node
        // has never seen the group answer (its voters may have moved since).
        let first_start = self.topology().version <= crate::bootstrap::BOOTSTRAP_VERSION;
        let metadata = first_start.then(|| (METADATA_GROUP, crate::bootstrap::metadata_replicas(&self.config)));
        let bootstrap = self.config.shard_map.hosted_by(self.config.node_id).map(|r| (r.group, r.replicas.clone()));
        for (id, replicas) in metadata.into_iter().chain(bootstrap) {
            if replicas.first() != Some(&self.config.node_id) {
                continue;
            }
            let Some(group) = self.group(id) else { continue };
            let members: BTreeMap<NodeId, BasicNode> =
                replicas.iter().filter_map(|id| self.config.nodes.get(id).map(|n| (*id, BasicNode::new(n.addr.clone())))).collect();
            group.initialize(members).await.map_err(|source| NodeError::Group { group: id, source })?;
        }
        Ok(())
    }

    /// Starts replica `range.group` here unless it runs already; a new one
    /// starts from the state stored under its id (a split's child), else
    /// empty, to be caught up by a snapshot from its leader.
    pub(crate) async fn start_group(&self, range: RangeDesc) -> Result<Arc<Group>, GroupError> {
        let _one_at_a_time = self.starting.lock().await;
        if let Some(group) = self.group(range.group) {
            return Ok(group);
        }
        let id = range.group;
        let mut config = self.config.group.clone();
        config.skip_history = self.failpoint(crate::failpoint::MOVE_SKIPS_HISTORY);
        let group = Group::start(self.id(), range, self.engine.clone(), self.syncer.clone(), self.transport.clone(), &config, self.splits.clone()).await?;
        let group = Arc::new(group);
        self.groups.write().unwrap_or_else(|p| p.into_inner()).insert(id, group.clone());
        tracing::info!(node = self.id(), group = id, range = %group.range(), "replica started");
        Ok(group)
    }

    /// Stops routing to this node's replica of `id` (retired by a merge).
    pub(crate) fn remove_group(&self, id: GroupId) -> Option<Arc<Group>> {
        self.groups.write().unwrap_or_else(|p| p.into_inner()).remove(&id)
    }

    /// This node's copy of the topology.
    pub fn topology(&self) -> Arc<Topology> {
        self.topology.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Takes `topology` as this node's copy if it is newer, and returns it
    /// then.
    pub(crate) fn install_topology(&self, topology: Topology) -> Option<Arc<Topology>> {
        let mut current = self.topology.write().unwrap_or_else(|p| p.into_inner());
        if topology.version <= current.version {
            return None;
        }
        self.peers.learn(topology.nodes());
        *current = Arc::new(topology);
        Some(current.clone())
    }

    pub(crate) fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    pub fn id(&self) -> NodeId {
        self.config.node_id
    }

    /// The replica of group `id` this node runs, if any.
    pub fn group(&self, id: GroupId) -> Option<Arc<Group>> {
        self.groups.read().unwrap_or_else(|p| p.into_inner()).get(&id).cloned()
    }

    /// The node's certificates; `None` when it runs `--insecure`.
    pub fn tls(&self) -> Option<&Arc<NodeTls>> {
        self.tls.as_ref()
    }

    /// Refuses a command that does not belong in `group`: a SKU outside its
    /// range, or a cart's record or step for an id whose home is another
    /// group. Nothing is ever proposed to the wrong group.
    pub fn check_command_in_group(&self, group: GroupId, command: &Command) -> Result<(), GroupError> {
        let skus_in = |lines: &[storage::model::Line], group: GroupId| lines.iter().try_for_each(|line| self.check_sku_in_group(group, &line.sku));
        let id = command.reservation_id().unwrap_or_default();
        match command {
            Command::Reserve { lines, .. } | Command::ReserveGated { lines, .. } => skus_in(lines, group),
            Command::Adjust(adjustment) => self.check_sku_in_group(group, &adjustment.sku),
            // A one-group reservation lives in its lines' group; apply finds
            // a cart's record only in its home.
            Command::Commit { .. } | Command::Release { .. } | Command::Fulfill { .. } | Command::Cancel { .. } => Ok(()),
            Command::CartDecide { .. } | Command::CartFollowed { .. } => self.check_home(group, id),
            Command::Locate { group: located, .. } => {
                self.check_home(group, id)?;
                if *located == group || self.topology().range(*located).is_none() {
                    return Err(GroupError::Invalid { group, reason: format!("invalid group: a locator of group {group} names group {located}") });
                }
                Ok(())
            }
            Command::CartBegin { home, parts, .. } => {
                self.check_home(group, id)?;
                if *home != group {
                    return Err(GroupError::Invalid { group, reason: format!("invalid home: a cart record of group {group} names home {home}") });
                }
                parts.iter().try_for_each(|(part_group, lines)| skus_in(lines, *part_group))
            }
            // `of.home` names the record's first home, which a split may
            // have moved since: an intent is matched to its record by `of`.
            Command::CartPrepare { lines, .. } => skus_in(lines, group),
            Command::CartFollow { .. } => Ok(()),
            Command::Split { at_sku, .. } => self.check_sku_in_group(group, at_sku),
            // Apply checks that the right side is frozen and adjacent.
            Command::Freeze | Command::Thaw { .. } | Command::Merge { .. } => Ok(()),
            Command::Topology(_) if group == METADATA_GROUP => Ok(()),
            Command::Topology(_) => {
                Err(GroupError::Invalid { group, reason: format!("invalid group_id: topology changes go to group {METADATA_GROUP}, not {group}") })
            }
        }
    }

    /// The group that holds reservation `id`'s record, in this node's region.
    pub fn home_of(&self, id: &str) -> Option<GroupId> {
        self.topology().home_for(&self.config.region, id).map(|r| r.group)
    }

    /// Refuses `group` unless it is reservation `id`'s home.
    fn check_home(&self, group: GroupId, id: &str) -> Result<(), GroupError> {
        let topology = self.topology();
        // A node replicates groups of its own region only.
        let region = topology.range(group).map_or_else(|| self.config.region.clone(), |r| r.region.clone());
        match topology.home_for(&region, id) {
            Some(home) if home.group == group => Ok(()),
            Some(home) => Err(GroupError::Invalid { group, reason: format!("invalid reservation_id: its home is group {}, not group {group}", home.group) }),
            None => Err(GroupError::Invalid { group, reason: format!("invalid group_id: no group {group} in the shard map") }),
        }
    }

    /// Refuses `sku` unless `group` holds its range: as this node's replica
    /// of the group applied it, else as its copy of the topology says. A
    /// SKU outside is a stale route (the sender's map and this node's
    /// differ, around a split); a group this node knows nothing of is "not
    /// leader here", which the sender retries elsewhere. Neither is applied.
    pub fn check_sku_in_group(&self, group: GroupId, sku: &str) -> Result<(), GroupError> {
        let range = match self.group(group) {
            Some(replica) => Some(replica.range()),
            None => self.topology().range(group).map(|r| r.desc()),
        };
        match range {
            Some(range) if range.contains(sku) => Ok(()),
            Some(range) => Err(GroupError::StaleRoute { group, routed_epoch: self.route_epoch(group), range }),
            None => Err(GroupError::NotLeader { group, leader: None }),
        }
    }

    /// The data groups this node replicates (the metadata group aside).
    pub fn groups(&self) -> impl Iterator<Item = Arc<Group>> {
        self.all_groups().into_iter().filter(|g| g.id != METADATA_GROUP)
    }

    /// Every group this node replicates, the metadata group's included.
    pub fn all_groups(&self) -> Vec<Arc<Group>> {
        self.groups.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }

    fn deadline(&self) -> Instant {
        Instant::now() + Duration::from_millis(self.config.rpc_timeout_ms)
    }

    /// Where to send a request for `group` next: the hinted leader, else the
    /// known leader, else replicas in turn.
    fn next_target(&self, group: GroupId, hint: Option<NodeId>, attempt: usize) -> Option<NodeId> {
        if hint.is_some() {
            return hint;
        }
        if let Some((leader, _)) = self.group(group).and_then(|g| g.leader()) {
            return Some(leader);
        }
        let replicas = match group {
            // Its replicas first, then every other node: a copy of the
            // topology from before a move may name none that has it now.
            METADATA_GROUP => {
                let topology = self.topology();
                let mut replicas = topology.metadata_replicas().to_vec();
                replicas.extend(topology.nodes().filter(|n| n.state != NodeState::Removed && !replicas.contains(&n.id)).map(|n| n.id).collect::<Vec<_>>());
                replicas
            }
            _ => self.topology().range(group)?.replicas.clone(),
        };
        replicas.get(attempt % replicas.len().max(1)).copied()
    }

    /// Proposes `command` to `group`'s leader, wherever it is, and returns
    /// the applied log index with the command's result.
    pub async fn propose(&self, group: GroupId, command: Command) -> Result<(u64, CommandResult), GroupError> {
        let limit = Duration::from_millis(self.config.rpc_timeout_ms);
        match tokio::time::timeout(limit, self.propose_routed(group, command)).await {
            Ok(Err(stale @ GroupError::StaleRoute { .. })) => {
                // The group's range changed: refresh the routes now.
                self.topology_stale.notify_one();
                Err(stale)
            }
            Ok(result) => result,
            Err(_) => Err(GroupError::Unavailable { group, reason: format!("no outcome within {} ms", limit.as_millis()) }),
        }
    }

    /// The epoch of `group`'s range in this node's map: what a command
    /// routed here carries.
    fn route_epoch(&self, group: GroupId) -> u64 {
        self.topology().range(group).map(|r| r.epoch).unwrap_or(storage::model::FIRST_EPOCH)
    }

    async fn propose_routed(&self, group: GroupId, command: Command) -> Result<(u64, CommandResult), GroupError> {
        let epoch = self.route_epoch(group);
        self.toward_leader(group, |target| {
            let command = command.clone();
            async move {
                match target {
                    Target::Local => match self.group(group) {
                        Some(g) => g.propose(command, epoch).await,
                        None => Err(GroupError::Unavailable { group, reason: "group not hosted here".into() }),
                    },
                    Target::Peer(id) => self.peers.propose(id, group, epoch, &command).await,
                }
            }
        })
        .await
    }

    /// Runs `attempt` against the node believed to lead `group` (this node
    /// or a peer), following "not leader" hints and waiting out elections
    /// until the request's deadline.
    pub(crate) async fn toward_leader<T, F, Fut>(&self, group: GroupId, attempt: F) -> Result<T, GroupError>
    where
        F: Fn(Target) -> Fut,
        Fut: std::future::Future<Output = Result<T, GroupError>>,
    {
        let deadline = self.deadline();
        let mut hint = None;
        let mut tries = 0;
        loop {
            tries += 1;
            let target = self.next_target(group, hint.take(), tries);
            let result = match target {
                Some(t) if t == self.id() => attempt(Target::Local).await,
                Some(t) => attempt(Target::Peer(t)).await,
                None => Err(GroupError::NotLeader { group, leader: None }),
            };
            match result {
                Err(GroupError::NotLeader { leader, .. }) if tries < ROUTE_ATTEMPTS_MAX && Instant::now() < deadline => {
                    hint = leader.map(|(id, _)| id).filter(|id| Some(*id) != target);
                    if hint.is_none() {
                        tokio::time::sleep(ELECTION_BACKOFF).await;
                    }
                }
                other => return other,
            }
        }
    }

    /// Serves a command forwarded by a peer, routed there at `epoch`: only
    /// on this node, no further forwarding (the peer follows the hint in a
    /// refusal).
    pub async fn propose_local(&self, group: GroupId, epoch: u64, command: Command) -> Result<(u64, CommandResult), GroupError> {
        match self.group(group) {
            Some(g) => g.propose(command, epoch).await,
            None => Err(GroupError::NotLeader { group, leader: None }),
        }
    }

    /// Reads on this node only, as `consistency` allows.
    pub async fn read_local(&self, group: GroupId, query: &ReadQuery, consistency: Consistency) -> Result<ReadAnswer, GroupError> {
        let g = self.group(group).ok_or(GroupError::NotLeader { group, leader: None })?;
        let staleness_ms = match consistency {
            Consistency::Strong => {
                g.ensure_linearizable().await?;
                0
            }
            Consistency::Bounded { max_staleness_ms } => {
                let staleness = g.staleness_ms();
                if staleness > max_staleness_ms {
                    // Only the leader can serve fresher data.
                    g.ensure_linearizable().await?;
                    0
                } else {
                    staleness
                }
            }
            Consistency::Any => g.staleness_ms(),
        };
        let inventory = g.state().read();
        // A SKU this replica's range does not hold (a split moved it, or
        // the router's map is stale) is not answered "absent": the read is
        // refused as misrouted, like a command, and routed again.
        if query.sku().is_some_and(|sku| !inventory.range().contains(sku)) {
            return Err(GroupError::StaleRoute { group, routed_epoch: self.route_epoch(group), range: inventory.range().clone() });
        }
        // A group frozen for a merge may have handed its records to its left
        // neighbour already (the merge applied there; this node's map does
        // not show it yet), and it cannot know: its records are not
        // answered, at any consistency, like its commands. The read is
        // routed again, to the merged range once the topology shows it, or
        // here again once a refused merge thaws it.
        if query.reads_records() && inventory.frozen_at().is_some() {
            return Err(GroupError::StaleRoute { group, routed_epoch: self.route_epoch(group), range: inventory.range().clone() });
        }
        let (position, reservation, positions) = match query {
            ReadQuery::Position(key) => (inventory.position(key).cloned(), None, Vec::new()),
            ReadQuery::Reservation(id) => (None, inventory.reservation(id).filter(|_| inventory.intent_of(id).is_none()).cloned(), Vec::new()),
            ReadQuery::SkuPositions { sku, location: Some(location), .. } => {
                let positions = inventory
                    .position(&PositionKey::new(sku.as_str(), location.as_str()))
                    .map(|p| (location.clone(), p.without_history()))
                    .into_iter()
                    .collect();
                (None, None, positions)
            }
            ReadQuery::SkuPositions { sku, location: None, locations_max } => {
                let positions =
                    inventory.positions_of_sku(sku).take(*locations_max).map(|(key, position)| (key.location.clone(), position.without_history())).collect();
                (None, None, positions)
            }
            ReadQuery::Topology { .. } | ReadQuery::Range | ReadQuery::SplitKey | ReadQuery::Frozen => (None, None, Vec::new()),
        };
        let (cart, located) = match query {
            ReadQuery::Reservation(id) => (inventory.cart(id).cloned(), inventory.locator(id).map(|l| l.group)),
            _ => (None, None),
        };
        Ok(ReadAnswer {
            position,
            reservation,
            cart,
            located,
            positions,
            topology: match query {
                ReadQuery::Topology { newer_than } => {
                    let topology = inventory.topology();
                    (topology.version > *newer_than || !topology.is_bootstrapped()).then(|| Box::new(topology.clone()))
                }
                _ => None,
            },
            range: Some(inventory.range().clone()),
            split_key: if matches!(query, ReadQuery::SplitKey) { inventory.middle_sku() } else { None },
            frozen: match query {
                ReadQuery::Frozen => match inventory.frozen_at() {
                    Some(index) => Some((index, storage::codec::encode(&inventory.to_snapshot()))),
                    None if self.failpoint(crate::failpoint::MERGE_WITHOUT_FREEZE) => {
                        let mut copy = inventory.to_snapshot();
                        copy.merge.frozen_at = Some(crate::failpoint::MERGE_WITHOUT_FREEZE_INDEX);
                        Some((crate::failpoint::MERGE_WITHOUT_FREEZE_INDEX, storage::codec::encode(&copy)))
                    }
                    None => None,
                },
                _ => None,
            },
            position_count: if matches!(query, ReadQuery::Range) { inventory.position_count() as u64 } else { 0 },
            load_cmds_per_s: if matches!(query, ReadQuery::Range) { g.load_per_second().round() as u64 } else { 0 },
            applied_index: g.state().applied_index(),
            staleness_ms,
            served_by: self.id(),
            leader: g.leader().map(|(id, _)| id),
        })
    }

    /// Reads `query` from `group` with the requested consistency, here when
    /// this node can, else from a replica that can.
    pub async fn read(&self, group: GroupId, query: ReadQuery, consistency: Consistency) -> Result<ReadAnswer, GroupError> {
        let limit = Duration::from_millis(self.config.rpc_timeout_ms);
        match tokio::time::timeout(limit, self.read_routed(group, query, consistency)).await {
            Ok(Err(stale @ GroupError::StaleRoute { .. })) => {
                self.topology_stale.notify_one();
                Err(stale)
            }
            Ok(result) => result,
            Err(_) => Err(GroupError::Unavailable { group, reason: format!("no answer within {} ms", limit.as_millis()) }),
        }
    }

    async fn read_routed(&self, group: GroupId, query: ReadQuery, consistency: Consistency) -> Result<ReadAnswer, GroupError> {
        let local_ok = match (consistency, self.group(group)) {
            (_, None) => false,
            (Consistency::Any, Some(_)) => true,
            (Consistency::Bounded { max_staleness_ms }, Some(g)) => g.staleness_ms() <= max_staleness_ms || g.is_leader(),
            (Consistency::Strong, Some(g)) => g.is_leader(),
        };
        if local_ok {
            match self.read_local(group, &query, consistency).await {
                Err(GroupError::NotLeader { .. }) => {}
                other => return other,
            }
        }
        self.toward_leader(group, |target| {
            let query = query.clone();
            async move {
                match target {
                    Target::Local => self.read_local(group, &query, consistency).await,
                    Target::Peer(id) => self.peers.read(id, group, &query, consistency).await,
                }
            }
        })
        .await
    }

    /// Where reservation `id`'s record is: the group of a one-group
    /// reservation, or the home group of a cart. Local replicas first (a
    /// cart's intent names its home; free when this node replicates the
    /// group), then one strong read of the id's home (a cart's record, or a
    /// locator naming a one-group reservation's group), then strong reads of
    /// every group of the region; a one-group reservation found that way
    /// gets a locator at its home, so the next lookup takes one read.
    pub async fn locate_reservation(&self, id: &str) -> Result<Option<GroupId>, GroupError> {
        if let Some(g) = self.locate_locally(id, None) {
            return Ok(Some(g));
        }
        let home = self.home_of(id);
        if let Some(home) = home {
            // The epoch the map had when the read was sent: the map may
            // learn the change while the read is under way.
            let routed_epoch = self.route_epoch(home);
            let answer = self.read(home, ReadQuery::Reservation(id.to_string()), Consistency::Strong).await?;
            if answer.reservation.is_some() || answer.cart.is_some() {
                return Ok(Some(home));
            }
            // A home that split or merged since this node's map was made
            // may have handed the record on: not "absent", a stale route.
            if let Some(range) = answer.range.filter(|r| r.epoch > routed_epoch && !r.holds_home(id)) {
                self.topology_stale.notify_one();
                return Err(GroupError::StaleRoute { group: home, routed_epoch, range });
            }
            // A locator naming a group merged away since (into a third
            // group) would route to no replica: the reservation is asked
            // for everywhere instead.
            if let Some(group) = answer.located.filter(|g| self.topology().range(*g).is_some()) {
                return Ok(Some(group));
            }
        }
        self.locate_everywhere(id, home, home).await
    }

    /// Asks every group of the region but `except` for reservation `id`
    /// (strong reads); a one-group reservation found that way gets a
    /// locator at `home`. For a lookup whose shortcut named a group that
    /// does not hold the id (a stale local replica, or a locator written
    /// before a split moved the reservation), `except` is that group.
    pub async fn locate_everywhere(&self, id: &str, home: Option<GroupId>, except: Option<GroupId>) -> Result<Option<GroupId>, GroupError> {
        self.lookups_everywhere.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // The groups and their epochs from one copy of the map: a split
        // that the map learns while the reads are under way must still
        // show as a stale route, since its child was not asked.
        let groups: Vec<(GroupId, u64)> =
            self.topology().groups_in(&self.config.region).filter(|r| Some(r.group) != except).map(|r| (r.group, r.epoch)).collect();
        let reads = groups.iter().map(|(g, _)| self.read(*g, ReadQuery::Reservation(id.to_string()), Consistency::Strong));
        let answers = futures::future::join_all(reads).await;
        let mut first_error = None;
        for ((group, routed_epoch), answer) in groups.iter().zip(answers) {
            match answer {
                Ok(a) if a.cart.is_some() => return Ok(Some(*group)),
                Ok(ReadAnswer { reservation: Some(plain), .. }) => {
                    if let Some(home) = home {
                        self.spawn_locate(home, *group, plain.id.clone(), plain.ttl_ms);
                    }
                    return Ok(Some(*group));
                }
                // A replica whose range changed since this node's map was
                // made (a split) may have handed the id to a group the map
                // does not list yet: not "absent", a stale route.
                Ok(ReadAnswer { range: Some(range), .. }) if range.epoch > *routed_epoch => {
                    self.topology_stale.notify_one();
                    let stale = GroupError::StaleRoute { group: *group, routed_epoch: *routed_epoch, range };
                    first_error = first_error.or(Some(stale));
                }
                Ok(_) => {}
                Err(e) => first_error = first_error.or(Some(e)),
            }
        }
        // A group we could not ask, or asked with a stale map, might hold
        // it: the answer is unknown.
        match first_error {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }

    /// True when this node runs with failpoint `name` (`crate::failpoint`).
    pub fn failpoint(&self, name: &str) -> bool {
        self.failpoint.read().unwrap_or_else(|p| p.into_inner()).as_deref() == Some(name)
    }

    /// Test only: sets this node's failpoint (`None` clears it).
    pub fn set_failpoint(&self, name: Option<&str>) {
        *self.failpoint.write().unwrap_or_else(|p| p.into_inner()) = name.map(str::to_owned);
    }

    /// Lookups the id's home could not answer (every group was asked).
    pub fn lookups_everywhere(&self) -> u64 {
        self.lookups_everywhere.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Writes the locator of a one-group reservation found without one,
    /// unless `LOCATES_IN_FLIGHT_MAX` writes are under way.
    fn spawn_locate(&self, home: GroupId, group: GroupId, reservation_id: String, ttl_ms: u64) {
        let Some(node) = self.me() else { return };
        let Ok(slot) = self.locates_in_flight.clone().try_acquire_owned() else {
            tracing::debug!(group = home, "locator not written: too many under way; the next lookup asks every group");
            return;
        };
        tokio::spawn(async move {
            let command = Command::Locate { reservation_id, group, ttl_ms };
            if let Err(e) = node.propose(home, command).await {
                tracing::debug!(error = %e, "locator not written again; the next lookup asks every group");
            }
            drop(slot);
        });
    }

    /// The group whose record of `id` a local replica holds, other than
    /// `except`: a one-group reservation's group, or a cart's home (from its
    /// record or from one of its intents). Replicas frozen for a merge are
    /// not asked.
    pub fn locate_locally(&self, id: &str, except: Option<GroupId>) -> Option<GroupId> {
        self.groups.read().unwrap_or_else(|p| p.into_inner()).iter().filter(|(g, _)| Some(**g) != except).find_map(|(g, group)| {
            let inventory = group.state().read();
            if inventory.frozen_at().is_some() {
                // Its records may be the merged range's already.
                None
            } else if inventory.cart(id).is_some() {
                Some(*g)
            } else if let Some(of) = inventory.intent_of(id) {
                // The record's home now: a split may have moved it.
                Some(self.home_of(id).unwrap_or(of.home))
            } else {
                inventory.reservation(id).map(|_| *g)
            }
        })
    }

    /// Keeps a background task to stop with the node.
    pub fn add_task(&self, task: tokio::task::JoinHandle<()>) {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner()).push(task);
    }

    /// This node as an `Arc`, while it runs.
    pub fn me(&self) -> Option<Arc<Node>> {
        self.me.upgrade()
    }

    pub async fn shutdown(&self) {
        if let Some(reloader) = &self.tls_reloader {
            reloader.abort();
        }
        for task in self.tasks.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            task.abort();
        }
        for g in self.all_groups() {
            g.shutdown().await;
        }
    }
}

fn check_shard_map(engine: &dyn Engine, map: &ShardMap, dir: &str) -> Result<(), NodeError> {
    let key = keys::meta_key(keys::NODE_GROUP, SHARD_MAP_KEY);
    let format_key = keys::meta_key(keys::NODE_GROUP, FORMAT_KEY);
    let storage_err = |e: storage::StorageError| NodeError::Storage { dir: dir.to_string(), reason: e.to_string() };
    let format: Option<u32> =
        engine.get(Table::Meta, &format_key).map_err(storage_err)?.map(|b| codec::decode(&b, "data format")).transpose().map_err(storage_err)?;
    match engine.get(Table::Meta, &key).map_err(storage_err)? {
        Some(bytes) => {
            // Directories written before the format was recorded are format 1.
            let found = format.unwrap_or(1);
            if found != DATA_FORMAT {
                return Err(NodeError::DataFormat { dir: dir.to_string(), found });
            }
            let stored: ShardMap = codec::decode(&bytes, "shard map").map_err(storage_err)?;
            if &stored != map {
                return Err(NodeError::ShardMapChanged { dir: dir.to_string() });
            }
        }
        None => {
            let mut batch = WriteBatch::new();
            batch.put(Table::Meta, format_key, codec::encode(&DATA_FORMAT));
            batch.put(Table::Meta, key, codec::encode(map));
            engine.write(batch, Durability::Sync).map_err(storage_err)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(groups: u32) -> ShardMap {
        let splits = (1..groups).map(|i| format!("{i:02}")).collect();
        ShardMap::build((1..=3).map(|id| (id, "local")), groups, Some(splits), 3).expect("map")
    }

    #[test]
    fn a_data_directory_is_read_only_with_its_own_format_and_shard_map() {
        let engine = storage::MemEngine::new();
        check_shard_map(&engine, &map(8), "d").expect("a new directory takes the map");
        check_shard_map(&engine, &map(8), "d").expect("the same map again");
        let changed = check_shard_map(&engine, &map(4), "d").expect_err("another map");
        assert!(matches!(changed, NodeError::ShardMapChanged { .. }), "{changed}");

        // A directory written before formats were recorded: format 1.
        let mut batch = WriteBatch::new();
        batch.delete(Table::Meta, keys::meta_key(keys::NODE_GROUP, FORMAT_KEY));
        engine.write(batch, Durability::Sync).expect("write");
        let old = check_shard_map(&engine, &map(8), "d").expect_err("format 1");
        assert!(matches!(old, NodeError::DataFormat { found: 1, .. }), "{old}");
        assert!(old.to_string().contains("format 1") && old.to_string().contains(&format!("format {DATA_FORMAT}")), "{old}");
    }
}
