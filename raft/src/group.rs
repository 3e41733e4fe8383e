//! One Raft group: its openraft instance, the proposer that batches
//! concurrent commands into shared entries (group commit), the clock ticker
//! that carries leader time into the log, and its reads.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

use openraft::error::CheckIsLeaderError;
use openraft::error::ClientWriteError;
use openraft::error::ForwardToLeader;
use openraft::error::RaftError;
use openraft::BasicNode;
use openraft::ServerState;
use openraft::SnapshotPolicy;
use storage::model::Batch;
use storage::model::Command;
use storage::model::CommandResult;
use storage::model::GroupId;
use storage::model::Limits;
use storage::model::Outcome;
use storage::model::RangeDesc;
use storage::Engine;
use tokio::sync::mpsc;
use tokio::sync::oneshot;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::group_engine::GroupEngine;
use crate::load::KeySampler;
use crate::load::LoadMeter;
use crate::log_store::LogStore;
use crate::network::GroupNetwork;
use crate::network::PeerRpc;
use crate::network::PeerTransport;
use crate::state_machine::GroupState;
use crate::state_machine::SplitApplied;
use crate::state_machine::StateMachineStore;
use crate::types::Raft;
use crate::wal_sync::WalSyncer;
use crate::wire;
use crate::GroupError;
use crate::NodeId;

/// Longest wait, each, for the snapshot and the log purge that come before
/// a replica new to a group whose range changed (`purge_to_a_snapshot`);
/// past it the move answers unavailable and can be repeated.
const SNAPSHOT_BEFORE_NEW_REPLICA_WAIT: Duration = Duration::from_secs(10);

/// Per-group settings. Cluster-wide: every replica uses the same values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    /// Most commands carried by one Raft entry.
    pub batch_commands_max: usize,
    /// Most Raft entries proposed and not yet applied, per group.
    pub proposals_inflight_max: usize,
    /// Most commands waiting for a batch; beyond, requests are refused as
    /// overloaded (definitely not applied).
    pub proposal_queue_max: usize,
    /// The leader proposes its clock at least this often (expiry, staleness).
    pub clock_tick_ms: u64,
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many entries since the last one.
    pub snapshot_logs_since_last: u64,
    /// Entries kept behind a snapshot for lagging followers.
    pub logs_to_keep_after_snapshot: u64,
    pub limits: Limits,
    /// Test only, the planted `move-skips-history` bug: a replica started
    /// empty takes the commands of the entries before the membership that
    /// names it as applied, without applying them.
    pub skip_history: bool,
}

impl Default for GroupConfig {
    fn default() -> Self {
        Self {
            batch_commands_max: 1024,
            proposals_inflight_max: 2,
            proposal_queue_max: 65_536,
            clock_tick_ms: 250,
            heartbeat_ms: 100,
            election_timeout_min_ms: 800,
            election_timeout_max_ms: 1600,
            snapshot_logs_since_last: 20_000,
            logs_to_keep_after_snapshot: 2_000,
            limits: Limits::default(),
            skip_history: false,
        }
    }
}

struct Proposal {
    command: Command,
    /// The epoch of the group's range the command was routed at.
    epoch: u64,
    reply: oneshot::Sender<Result<(u64, CommandResult), GroupError>>,
}

/// Role and progress of a group as seen from this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupProgress {
    pub leader: Option<NodeId>,
    pub term: u64,
    pub role: &'static str,
    pub last_log_index: u64,
    pub committed_index: u64,
    pub applied_index: u64,
    /// (follower, matched index), when this node leads.
    pub replication: Vec<(NodeId, u64)>,
    pub voters: Vec<NodeId>,
}

/// A group's voters and learners, and whether a joint change (two voter
/// sets at once) is under way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub voters: std::collections::BTreeSet<NodeId>,
    pub learners: std::collections::BTreeSet<NodeId>,
    pub joint: bool,
}

pub struct Group {
    pub id: GroupId,
    pub node_id: NodeId,
    raft: Raft,
    state: Arc<GroupState>,
    proposals: mpsc::Sender<Proposal>,
    committed: Arc<AtomicU64>,
    /// Commands this node proposed to the group (as its leader).
    load: Arc<LoadMeter>,
    /// The keys of a sample of those commands.
    keys: KeySampler,
    /// Entries the proposer may have in flight; a leader move takes them
    /// all, so that nothing new is proposed while it runs.
    inflight: Arc<Semaphore>,
    inflight_max: u32,
    /// Set while a leader move runs: the clock ticker proposes nothing.
    transferring: Arc<AtomicBool>,
    /// The term this node leads, and since when (as the ticker saw it).
    leading_since: LeadingSince,
    /// openraft's leader lease: a voter refuses another candidate for this
    /// long after it last heard from its leader.
    lease: Duration,
    tasks: Vec<JoinHandle<()>>,
    /// The group's view of the engine, closed when its records are deleted.
    storage: Arc<GroupEngine>,
}

/// The term a node leads and since when, as its clock ticker saw it.
type LeadingSince = Arc<Mutex<Option<(u64, Instant)>>>;

/// Most voters of a group whose leadership can be moved: the candidate and
/// the old leader, which grants once its own lease expired, must be a
/// quorum (the other voters refuse any candidate while they hear from a
/// leader).
pub const LEADER_MOVE_VOTERS_MAX: usize = 3;

/// Longest a leader move holds new proposals back.
pub const LEADER_MOVE_PAUSE_MAX: Duration = Duration::from_secs(1);
/// Of that, longest it waits for the new leader to hold the whole log.
pub const LEADER_MOVE_CATCH_UP_MAX: Duration = Duration::from_millis(300);
/// A leader move starts only when its target trails by at most this many
/// entries (a node cut off or down trails more after a few clock ticks, and
/// waiting for it would only hold proposals back).
pub const LEADER_MOVE_LAG_MAX: u64 = 4;

/// The wall clock, Unix ms (0 before 1970).
pub fn wall_clock_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn not_leader(group: GroupId, f: ForwardToLeader<NodeId, BasicNode>) -> GroupError {
    let leader = match (f.leader_id, f.leader_node) {
        (Some(id), Some(node)) => Some((id, node.addr)),
        _ => None,
    };
    GroupError::NotLeader { group, leader }
}

impl Group {
    /// Opens the group's storage and starts its Raft instance and tasks. A
    /// new group serves `range`; a stored one, the range its log set. Every
    /// split it applies is reported to `splits`.
    pub async fn start(
        node_id: NodeId,
        range: RangeDesc,
        engine: Arc<dyn Engine>,
        syncer: Arc<WalSyncer>,
        transport: Arc<dyn PeerTransport>,
        config: &GroupConfig,
        splits: mpsc::UnboundedSender<SplitApplied>,
    ) -> Result<Group, GroupError> {
        let id = range.group;
        let fatal = |reason: String| GroupError::Fatal { group: id, reason };
        let raft_config = openraft::Config {
            cluster_name: format!("stockd-group-{id}"),
            heartbeat_interval: config.heartbeat_ms,
            election_timeout_min: config.election_timeout_min_ms,
            election_timeout_max: config.election_timeout_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_logs_since_last),
            max_in_snapshot_log_to_keep: config.logs_to_keep_after_snapshot,
            ..Default::default()
        }
        .validate()
        .map_err(|e| fatal(format!("invalid raft config: {e}")))?;
        let storage = GroupEngine::new(id, engine);
        let log_store = LogStore::new(storage.clone(), id, syncer);
        let committed = log_store.committed_index();
        let mut sm =
            StateMachineStore::open(storage.clone(), id, config.limits.clone(), range).map_err(|e| fatal(format!("cannot open the state machine: {e}")))?;
        sm.report_splits_to(splits);
        if config.skip_history {
            sm.skip_history_of(node_id);
        }
        let state = sm.state();
        let raft = Raft::new(node_id, Arc::new(raft_config), GroupNetwork::new(transport, id), log_store, sm)
            .await
            .map_err(|e| fatal(format!("cannot start raft: {e}")))?;
        let (tx, rx) = mpsc::channel(config.proposal_queue_max);
        let last_proposed = Arc::new(AtomicU64::new(0));
        let load = Arc::new(LoadMeter::new());
        let inflight_max = config.proposals_inflight_max.clamp(1, Semaphore::MAX_PERMITS) as u32;
        let inflight = Arc::new(Semaphore::new(inflight_max as usize));
        let transferring = Arc::new(AtomicBool::new(false));
        let leading_since = Arc::new(Mutex::new(None));
        let proposer = tokio::spawn(run_proposer(id, raft.clone(), rx, config.clone(), inflight.clone(), (last_proposed.clone(), load.clone())));
        let ticker = tokio::spawn(run_ticker(id, raft.clone(), config.clock_tick_ms, last_proposed, (transferring.clone(), leading_since.clone())));
        Ok(Group {
            id,
            node_id,
            raft,
            state,
            proposals: tx,
            committed,
            load,
            keys: KeySampler::default(),
            inflight,
            inflight_max,
            transferring,
            leading_since,
            lease: Duration::from_millis(config.election_timeout_max_ms),
            tasks: vec![proposer, ticker],
            storage,
        })
    }

    /// Makes `members` the group's voters if the group has never been
    /// initialised (anywhere); a no-op otherwise.
    pub async fn initialize(&self, members: BTreeMap<NodeId, BasicNode>) -> Result<(), GroupError> {
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(_not_allowed)) => Ok(()),
            Err(RaftError::Fatal(f)) => Err(GroupError::Fatal { group: self.id, reason: f.to_string() }),
        }
    }

    /// The group's membership as this replica last applied it.
    pub fn membership(&self) -> Membership {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        Membership { voters: membership.voter_ids().collect(), learners: membership.learner_ids().collect(), joint: membership.get_joint_config().len() > 1 }
    }

    /// On the leader: takes the learners `ids` out of the membership (a
    /// move's new replica that an abandoned move left behind).
    pub async fn remove_learners(&self, ids: std::collections::BTreeSet<NodeId>) -> Result<(), GroupError> {
        let group = self.id;
        let learners = self.membership().learners;
        if ids.iter().any(|id| !learners.contains(id)) {
            return Err(GroupError::Invalid {
                group,
                reason: format!("invalid learners: {ids:?} are not all learners of group {group} (learners: {learners:?})"),
            });
        }
        match self.raft.change_membership(openraft::ChangeMembers::RemoveNodes(ids), false).await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(not_leader(group, f)),
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                Err(GroupError::Invalid { group, reason: format!("invalid membership change: {e}") })
            }
            Err(RaftError::Fatal(f)) => Err(GroupError::Fatal { group, reason: f.to_string() }),
        }
    }

    /// On the leader: moves the voter `from` to node `to` (client address
    /// `addr`). `to` is added as a learner and caught up (by the log, or a
    /// snapshot when the log behind it was purged), then the voters become
    /// the current ones without `from` and with `to`, through openraft's
    /// joint consensus (a config of both sets, then the new one). Answers
    /// the voters after the change. Repeating a move that completed answers
    /// at once; one interrupted between the two configs completes.
    pub async fn replace_voter(&self, from: NodeId, to: NodeId, addr: String) -> Result<std::collections::BTreeSet<NodeId>, GroupError> {
        let voters: std::collections::BTreeSet<NodeId> = self.raft.metrics().borrow().membership_config.membership().voter_ids().collect();
        let mut next = voters.clone();
        next.remove(&from);
        next.insert(to);
        let write_error = |group: GroupId, e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>| match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => not_leader(group, f),
            RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => GroupError::Invalid { group, reason: format!("invalid membership change: {e}") },
            RaftError::Fatal(f) => GroupError::Fatal { group, reason: f.to_string() },
        };
        let joint = self.raft.metrics().borrow().membership_config.membership().get_joint_config().len() > 1;
        if voters == next && !joint {
            return Ok(voters);
        }
        if !voters.contains(&from) && !joint {
            return Err(GroupError::Invalid { group: self.id, reason: format!("invalid from: node {from} is not a voter of group {}", self.id) });
        }
        if voters.contains(&to) && voters.contains(&from) && !joint {
            return Err(GroupError::Invalid { group: self.id, reason: format!("invalid to: node {to} is a voter of group {} already", self.id) });
        }
        let known = self.raft.metrics().borrow().membership_config.membership().nodes().any(|(id, _)| *id == to);
        if !known {
            self.purge_to_a_snapshot().await?;
        }
        self.raft.add_learner(to, BasicNode::new(addr), true).await.map_err(|e| write_error(self.id, e))?;
        self.raft.change_membership(next.clone(), false).await.map_err(|e| write_error(self.id, e))?;
        Ok(next)
    }

    /// Before a replica joins: a new replica starts empty under the group's
    /// range of today, so once that range has changed (a split or merge
    /// since the group began) the log from its start cannot rebuild the
    /// state there (the commands routed at older epochs would be refused).
    /// The log up to a fresh snapshot is purged, and the new replica is
    /// caught up from the snapshot. A group still at its first range
    /// replays its log as it is.
    async fn purge_to_a_snapshot(&self) -> Result<(), GroupError> {
        if self.state.read().range().epoch == storage::model::FIRST_EPOCH {
            return Ok(());
        }
        let Some(applied) = self.raft.metrics().borrow().last_applied else { return Ok(()) };
        let fatal = |e: openraft::error::Fatal<NodeId>| GroupError::Fatal { group: self.id, reason: e.to_string() };
        let waited = |e: openraft::metrics::WaitError| GroupError::Unavailable { group: self.id, reason: format!("before adding a replica: {e}") };
        let wait = Some(SNAPSHOT_BEFORE_NEW_REPLICA_WAIT);
        self.raft.trigger().snapshot().await.map_err(fatal)?;
        let metrics =
            self.raft.wait(wait).metrics(|m| m.snapshot.is_some_and(|s| s.index >= applied.index), "a snapshot for the new replica").await.map_err(waited)?;
        let upto = metrics.snapshot.map_or(applied.index, |s| s.index);
        self.raft.trigger().purge_log(upto).await.map_err(fatal)?;
        self.raft.wait(wait).metrics(|m| m.purged.is_some_and(|p| p.index >= upto), "the log purged up to the snapshot").await.map_err(waited)?;
        Ok(())
    }

    /// Proposes `command`, routed with `epoch` of the group's range, and
    /// waits until it is committed and applied here. Returns the log index
    /// of the entry and the command's result; a command refused at apply as
    /// misrouted is `GroupError::StaleRoute`.
    pub async fn propose(&self, command: Command, epoch: u64) -> Result<(u64, CommandResult), GroupError> {
        self.keys.offer(command.first_sku());
        let (reply, rx) = oneshot::channel();
        self.proposals.try_send(Proposal { command, epoch, reply }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => GroupError::Overloaded { group: self.id },
            mpsc::error::TrySendError::Closed(_) => GroupError::Fatal { group: self.id, reason: "proposer stopped".into() },
        })?;
        rx.await.map_err(|_| GroupError::Unavailable { group: self.id, reason: "proposal dropped before its outcome was known".into() })?
    }

    /// Waits until this node, as leader, has confirmed its leadership with a
    /// quorum and applied everything committed before the call (read index).
    pub async fn ensure_linearizable(&self) -> Result<(), GroupError> {
        match self.raft.ensure_linearizable().await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => Err(not_leader(self.id, f)),
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q))) => Err(GroupError::Unavailable { group: self.id, reason: q.to_string() }),
            Err(RaftError::Fatal(f)) => Err(GroupError::Fatal { group: self.id, reason: f.to_string() }),
        }
    }

    pub fn state(&self) -> &GroupState {
        &self.state
    }

    /// Commands per second this node proposed to the group over the last
    /// seconds (`load::LOAD_WINDOW_S`): the group's load when it leads.
    pub fn load_per_second(&self) -> f64 {
        self.load.per_second()
    }

    /// The keys of a sample of the commands proposed here since the last
    /// call (`load::KeySampler`).
    pub fn take_key_sample(&self) -> std::collections::BTreeMap<String, u64> {
        self.keys.take()
    }

    /// Starts an election here at once (a new group's first leader, rather
    /// than after an election timeout).
    pub async fn campaign(&self) {
        if let Err(e) = self.raft.trigger().elect().await {
            tracing::debug!(group = self.id, error = %e, "no election started");
        }
    }

    /// On the leader: hands the leadership to voter `to`, without an
    /// election timeout anyone could see. `campaign` makes `to` start an
    /// election (a peer RPC to it).
    ///
    /// 1. New proposals are held back (the proposer waits for the entries
    ///    in flight to apply and proposes nothing more; no clock tick), for
    ///    at most `LEADER_MOVE_PAUSE_MAX`; only when `to` trails by at most
    ///    `LEADER_MOVE_LAG_MAX` entries, and it must then catch up within
    ///    `LEADER_MOVE_CATCH_UP_MAX`.
    /// 2. Once `to` holds the whole log, `campaign` runs: `to` asks for
    ///    votes at the next term. This node grants (its own lease expired,
    ///    the logs match) and so `to` has a quorum of a group of up to
    ///    `LEADER_MOVE_VOTERS_MAX` voters.
    /// 3. The held proposals then go on: to `to` when it won (this node
    ///    answers them "not leader", with `to` as the hint; none was
    ///    proposed, so a retry is safe), or here again when it did not.
    ///
    /// Refused (nothing changed) when this node does not lead, `to` is not
    /// another voter, the group is too large, or this node has led for
    /// less than a lease (it would refuse the vote itself).
    pub async fn transfer_leader<F>(&self, to: NodeId, campaign: F) -> Result<(), GroupError>
    where
        F: std::future::Future<Output = Result<(), GroupError>>,
    {
        let group = self.id;
        let invalid = |reason: String| GroupError::Invalid { group, reason };
        let (term, voters, joint, lag) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            if m.state != ServerState::Leader {
                return Err(GroupError::NotLeader { group, leader: self.leader() });
            }
            let membership = m.membership_config.membership();
            let matched = m.replication.as_ref().and_then(|r| r.get(&to)).and_then(|l| l.map(|l| l.index)).unwrap_or(0);
            (
                m.current_term,
                membership.voter_ids().collect::<Vec<_>>(),
                membership.get_joint_config().len() > 1,
                m.last_log_index.unwrap_or(0).saturating_sub(matched),
            )
        };
        if to == self.node_id {
            return Ok(());
        }
        if !voters.contains(&to) || joint {
            return Err(invalid(format!("invalid to: node {to} is not a voter of group {group}")));
        }
        if voters.len() > LEADER_MOVE_VOTERS_MAX {
            return Err(invalid(format!("group {group} has {} voters; a leader move needs at most {LEADER_MOVE_VOTERS_MAX} in this version", voters.len())));
        }
        let led_for = self.leading_since.lock().unwrap_or_else(|p| p.into_inner()).filter(|(t, _)| *t == term).map(|(_, since)| since.elapsed());
        if led_for.is_none_or(|d| d <= self.lease) {
            return Err(GroupError::Unavailable {
                group,
                reason: format!("this node has led group {group} for less than its lease ({} ms); move its leader later", self.lease.as_millis()),
            });
        }
        if lag > LEADER_MOVE_LAG_MAX {
            return Err(GroupError::Unavailable {
                group,
                reason: format!("node {to} trails the leader by {lag} entries; a leader move waits until it keeps up (at most {LEADER_MOVE_LAG_MAX})"),
            });
        }
        let deadline = tokio::time::Instant::now() + LEADER_MOVE_PAUSE_MAX;
        let paused = tokio::time::timeout_at(deadline, self.inflight.acquire_many(self.inflight_max))
            .await
            .map_err(|_| GroupError::Unavailable { group, reason: "the entries in flight did not apply in time for a leader move".into() })?
            .map_err(|_| GroupError::Fatal { group, reason: "proposer stopped".into() })?;
        let started = Instant::now();
        self.transferring.store(true, Ordering::Release);
        let outcome = self.hand_over(to, term, deadline, campaign).await;
        self.transferring.store(false, Ordering::Release);
        drop(paused);
        let held_ms = started.elapsed().as_millis() as u64;
        match &outcome {
            Ok(()) => tracing::info!(group, to, held_ms, "leadership handed over; proposals were held back meanwhile"),
            Err(e) => tracing::info!(group, to, held_ms, error = %e, "leadership not handed over"),
        }
        outcome
    }

    async fn hand_over<F>(&self, to: NodeId, term: u64, deadline: tokio::time::Instant, campaign: F) -> Result<(), GroupError>
    where
        F: std::future::Future<Output = Result<(), GroupError>>,
    {
        let group = self.id;
        let late = |what: &str| GroupError::Unavailable { group, reason: format!("leader move to node {to}: {what} in time") };
        let mut metrics = self.raft.metrics();
        let caught_up = |m: &openraft::RaftMetrics<NodeId, BasicNode>| {
            m.state != ServerState::Leader
                || m.current_term != term
                || m.replication
                    .as_ref()
                    .and_then(|r| r.get(&to))
                    .is_some_and(|matched| matched.map(|l| l.index) == m.last_log_index && m.last_applied.map(|l| l.index) == m.last_log_index)
        };
        let catch_up = deadline.min(tokio::time::Instant::now() + LEADER_MOVE_CATCH_UP_MAX);
        tokio::time::timeout_at(catch_up, metrics.wait_for(caught_up))
            .await
            .map_err(|_| late("the log did not reach it"))?
            .map_err(|_| late("the group stopped"))?;
        if !self.is_leader() || self.raft.metrics().borrow().current_term != term {
            return Err(GroupError::NotLeader { group, leader: self.leader() });
        }
        tokio::time::timeout_at(deadline, campaign).await.map_err(|_| late("its election did not start"))??;
        let elected = |m: &openraft::RaftMetrics<NodeId, BasicNode>| m.current_term > term && m.current_leader.is_some_and(|l| l != self.node_id);
        tokio::time::timeout_at(deadline, metrics.wait_for(elected)).await.map_err(|_| late("it was not elected"))?.map_err(|_| late("the group stopped"))?;
        match self.raft.metrics().borrow().current_leader {
            Some(l) if l == to => Ok(()),
            other => Err(GroupError::Unavailable { group, reason: format!("leader move to node {to}: node {other:?} was elected instead") }),
        }
    }

    /// The group's range as this replica last applied it.
    pub fn range(&self) -> RangeDesc {
        self.state.read().range().clone()
    }

    /// Upper bound, in ms, on how far this replica's state trails the
    /// leader: entries proposed before the last applied log time are here.
    pub fn staleness_ms(&self) -> u64 {
        wall_clock_ms().saturating_sub(self.state.log_time_ms())
    }

    /// Why this replica stopped serving (a fatal storage error, a shutdown),
    /// if it did: it stays stopped until the node restarts.
    pub fn stopped(&self) -> Option<String> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        match (&m.running_state, m.state) {
            (Err(fatal), _) => Some(fatal.to_string()),
            (Ok(()), ServerState::Shutdown) => Some("shut down".to_owned()),
            (Ok(()), _) => None,
        }
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// The leader this node knows of, with its address.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let id = m.current_leader?;
        let addr = m.membership_config.membership().get_node(&id).map(|n| n.addr.clone())?;
        Some((id, addr))
    }

    pub fn progress(&self) -> GroupProgress {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        let replication = m.replication.as_ref().map(|r| r.iter().map(|(id, log)| (*id, log.map(|l| l.index).unwrap_or(0))).collect()).unwrap_or_default();
        GroupProgress {
            leader: m.current_leader,
            term: m.current_term,
            role,
            last_log_index: m.last_log_index.unwrap_or(0),
            committed_index: self.committed.load(Ordering::Relaxed).max(m.last_applied.map(|l| l.index).unwrap_or(0)),
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            replication,
            voters: m.membership_config.membership().voter_ids().collect(),
        }
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Serves one peer RPC addressed to this group.
    pub async fn handle_peer_rpc(&self, rpc: PeerRpc, payload: &[u8]) -> Result<Vec<u8>, String> {
        Ok(match rpc {
            PeerRpc::AppendEntries => wire::encode(&self.raft.append_entries(wire::decode(payload)?).await),
            PeerRpc::Vote => wire::encode(&self.raft.vote(wire::decode(payload)?).await),
            PeerRpc::InstallSnapshot => wire::encode(&self.raft.install_snapshot(wire::decode(payload)?).await),
        })
    }

    /// Deletes the records of this replica (log, metadata, state), after
    /// `shutdown`: no write of the stopped group lands after it.
    pub fn delete_records(&self) -> Result<(), storage::StorageError> {
        self.storage.delete_group()
    }

    pub async fn shutdown(&self) {
        for task in &self.tasks {
            task.abort();
        }
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(group = self.id, error = %e, "raft shutdown failed");
        }
    }
}

async fn run_proposer(
    group: GroupId,
    raft: Raft,
    mut rx: mpsc::Receiver<Proposal>,
    config: GroupConfig,
    inflight: Arc<Semaphore>,
    meters: (Arc<AtomicU64>, Arc<LoadMeter>),
) {
    let (last_proposed, load) = meters;
    let mut next = None;
    loop {
        let first = match next.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        // Wait for a free slot first: while earlier entries are being
        // replicated and fsynced, new commands accumulate into this batch.
        let Ok(permit) = inflight.clone().acquire_owned().await else { return };
        let epoch = first.epoch;
        let mut proposals = vec![first];
        while proposals.len() < config.batch_commands_max {
            match rx.try_recv() {
                // A batch carries one epoch: a command routed at another
                // starts the next batch.
                Ok(p) if p.epoch != epoch => {
                    next = Some(p);
                    break;
                }
                Ok(p) => proposals.push(p),
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        let now = wall_clock_ms();
        last_proposed.store(now, Ordering::Relaxed);
        load.record(proposals.len() as u64);
        tokio::spawn(async move {
            let (commands, replies): (Vec<Command>, Vec<_>) = proposals.into_iter().map(|p| (p.command, p.reply)).unzip();
            let count = commands.len();
            let outcome = raft.client_write(Batch::new(now, epoch, commands)).await;
            drop(permit);
            match outcome {
                Ok(response) => {
                    let index = response.log_id.index;
                    debug_assert_eq!(response.data.results.len(), count, "one result per command");
                    for (reply, result) in replies.into_iter().zip(response.data.results) {
                        let _ = reply.send(routed(group, epoch, index, result));
                    }
                }
                Err(e) => {
                    let error = match e {
                        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => not_leader(group, f),
                        RaftError::APIError(other) => GroupError::Unavailable { group, reason: other.to_string() },
                        RaftError::Fatal(f) => GroupError::Unavailable { group, reason: f.to_string() },
                    };
                    for reply in replies {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
            }
        });
    }
}

/// A command's applied result, or the refusal of a misrouted one.
fn routed(group: GroupId, epoch: u64, index: u64, result: CommandResult) -> Result<(u64, CommandResult), GroupError> {
    match (result.outcome, &result.range) {
        (Outcome::EpochNotMatch | Outcome::KeyNotInRange, Some(range)) => Err(GroupError::StaleRoute { group, routed_epoch: epoch, range: range.clone() }),
        _ => Ok((index, result)),
    }
}

async fn run_ticker(group: GroupId, raft: Raft, tick_ms: u64, last_proposed: Arc<AtomicU64>, leading: (Arc<AtomicBool>, LeadingSince)) {
    let (transferring, leading_since) = leading;
    let mut interval = tokio::time::interval(Duration::from_millis(tick_ms));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let (state, term) = {
            let m = raft.metrics();
            let m = m.borrow();
            (m.state, m.current_term)
        };
        if state != ServerState::Leader {
            *leading_since.lock().unwrap_or_else(|p| p.into_inner()) = None;
            continue;
        }
        {
            let mut since = leading_since.lock().unwrap_or_else(|p| p.into_inner());
            if since.is_none_or(|(t, _)| t != term) {
                *since = Some((term, Instant::now()));
            }
        }
        if transferring.load(Ordering::Acquire) {
            continue;
        }
        let now = wall_clock_ms();
        if now.saturating_sub(last_proposed.load(Ordering::Relaxed)) < tick_ms {
            continue;
        }
        last_proposed.store(now, Ordering::Relaxed);
        let raft = raft.clone();
        tokio::spawn(async move {
            if let Err(e) = raft.client_write(Batch::tick(now)).await {
                tracing::debug!(group, error = %e, "clock tick not committed");
            }
        });
    }
}
