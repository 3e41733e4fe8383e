//! The nemesis: a seeded schedule of faults, each recorded in the history
//! (an `invoke` when it starts, an `info` with the nodes it hit; the same
//! for its heal). The kinds come in a seeded round-robin order. Faults:
//! - `kill`: SIGKILL one node, the leader of the current SKU's group, or a
//!   majority; restarted at the heal;
//! - `pause`: SIGSTOP the same targets; SIGCONT at the heal;
//! - `partition`: isolate the leader, random halves, a bridge (two halves
//!   sharing one node), one-way (the leader's packets in are dropped);
//!   nftables rules in the nodes' network namespaces, dropped at the heal;
//! - `clock`: the leader restarted under libfaketime with a skewed clock
//!   (forward or back); restarted with the true clock at the heal;
//! - `disk`: a node restarted under libfiu, its fsync / fdatasync calls
//!   failing at random; restarted without at the heal;
//! - `split`: the group of a workload SKU split at that SKU (so that its
//!   records move), or just after it when its range starts there (so that
//!   it ends up alone), through the operator API under load; nothing to
//!   heal (a refusal, such as a key that would cut a live reservation, is
//!   recorded as it came);
//! - `merge`: the group of a workload SKU merged into the range before it
//!   (so that its records move; into the range after it when it is the
//!   first), through the operator API under load; nothing to heal (a
//!   refusal, such as a cart in flight there, is recorded as it came);
//! - `move`: a replica of a workload SKU's group (one time in three, of the
//!   metadata group) moved from one of its nodes to a node that holds none
//!   (so it needs `--nodes` above the replication factor of 3), through the
//!   operator API under load; nothing to heal.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use serde_json::Value;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::cluster::Cluster;
use crate::cluster::Wrapper;
use crate::history::Kind;
use crate::history::Process;
use crate::net::Net;
use crate::rng::Rng;
use crate::workload::Shared;
use crate::workload::Workload;

/// A kind of fault the nemesis may inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    Kill,
    Pause,
    Partition,
    Clock,
    Disk,
    /// New certificates (same CA) and SIGHUP to every node, under load.
    Rotate,
    /// A range split at a workload SKU (`Admin/SplitShard`), under load.
    Split,
    /// A workload SKU's range merged with a neighbour (`Admin/MergeShard`).
    Merge,
    /// A replica of a workload SKU's group moved to another node
    /// (`Admin/MoveShard`).
    Move,
}

impl FaultKind {
    /// `none`, one kind, `all`, or a comma-separated list.
    pub fn parse_list(spec: &str) -> Option<Vec<FaultKind>> {
        let mut out = Vec::new();
        for part in spec.split(',') {
            match part.trim() {
                "none" => {}
                "all" => out.extend([
                    FaultKind::Kill,
                    FaultKind::Pause,
                    FaultKind::Partition,
                    FaultKind::Clock,
                    FaultKind::Disk,
                    FaultKind::Rotate,
                    FaultKind::Split,
                    FaultKind::Merge,
                    FaultKind::Move,
                ]),
                "kill" => out.push(FaultKind::Kill),
                "pause" => out.push(FaultKind::Pause),
                "partition" => out.push(FaultKind::Partition),
                "clock" => out.push(FaultKind::Clock),
                "disk" => out.push(FaultKind::Disk),
                "rotate" => out.push(FaultKind::Rotate),
                "split" => out.push(FaultKind::Split),
                "merge" => out.push(FaultKind::Merge),
                "move" => out.push(FaultKind::Move),
                _ => return None,
            }
        }
        out.dedup();
        Some(out)
    }

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::Partition => "partition",
            FaultKind::Clock => "clock",
            FaultKind::Disk => "disk",
            FaultKind::Rotate => "rotate",
            FaultKind::Split => "split",
            FaultKind::Merge => "merge",
            FaultKind::Move => "move",
        }
    }
}

/// Bounds of the schedule.
const QUIET_MIN_MS: u64 = 2_000;
const QUIET_MAX_MS: u64 = 4_000;
const FAULT_MIN_MS: u64 = 3_000;
const FAULT_MAX_MS: u64 = 7_000;
/// No new fault starts closer than this to the end of the run.
const TAIL_MS: u64 = 4_000;

/// Default largest clock offset of a `clock` fault, s.
pub const SKEW_MAX_S: u64 = 60;

/// What the nemesis needs.
pub struct Nemesis {
    pub shared: Arc<Shared>,
    pub cluster: Arc<Mutex<Cluster>>,
    pub net: Option<Arc<Net>>,
    pub faults: Vec<FaultKind>,
    pub workload: Workload,
    pub skus: Arc<Vec<String>>,
    pub faketime_lib: Option<std::path::PathBuf>,
    /// Largest offset of a clock fault, s (at least 2).
    pub skew_max_s: u64,
}

/// An active fault, to heal.
enum Active {
    Killed(Vec<u64>),
    Paused(Vec<u64>),
    Partitioned,
    Wrapped(Vec<u64>),
    /// Nothing to heal: the new certificates (or ranges) stay.
    Lasting,
}

impl Nemesis {
    fn record(&self, kind: Kind, f: &str, value: Value) {
        self.shared.record(kind, f, value, Process::NEMESIS);
    }

    /// Runs the schedule until `deadline`; every fault is healed before it
    /// returns.
    pub async fn run(&self, mut rng: Rng, deadline: Instant) -> anyhow::Result<()> {
        if self.faults.is_empty() {
            return Ok(());
        }
        let mut queue: Vec<FaultKind> = Vec::new();
        loop {
            let quiet = Duration::from_millis(rng.range(QUIET_MIN_MS, QUIET_MAX_MS));
            self.sleep_until((Instant::now() + quiet).min(deadline)).await;
            if deadline.saturating_duration_since(Instant::now()) < Duration::from_millis(TAIL_MS) {
                return Ok(());
            }
            // Seeded round-robin over a shuffled list: every kind of fault
            // comes up once before any comes up again.
            if queue.is_empty() {
                queue = self.faults.clone();
                for i in (1..queue.len()).rev() {
                    queue.swap(i, rng.below(i as u64 + 1) as usize);
                }
            }
            let fault = queue.remove(0);
            let active = self.start(fault, &mut rng).await?;
            let hold = Duration::from_millis(rng.range(FAULT_MIN_MS, FAULT_MAX_MS));
            self.sleep_until((Instant::now() + hold).min(deadline)).await;
            self.heal(active).await?;
        }
    }

    /// Sleeps until `until`, recording any node that exits by itself.
    async fn sleep_until(&self, until: Instant) {
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(250).min(until.saturating_duration_since(Instant::now()))).await;
            for (id, status) in self.cluster.lock().await.exited() {
                self.record(Kind::Info, "crash", json!({"nodes": [id], "status": status}));
            }
        }
    }

    async fn leader(&self, rng: &mut Rng) -> u64 {
        let sku = self.workload.sku_at(&self.skus, self.shared.started.elapsed(), rng);
        let cluster = self.cluster.lock().await;
        match cluster.leader_of(&sku).await {
            Some(id) => id,
            None => *rng.pick(&cluster.ids()),
        }
    }

    /// Targets: one random node, the leader, or a majority (the leader and others).
    async fn targets(&self, rng: &mut Rng) -> (String, Vec<u64>) {
        let ids = self.cluster.lock().await.ids();
        match rng.below(3) {
            0 => ("one".into(), vec![*rng.pick(&ids)]),
            1 => ("leader".into(), vec![self.leader(rng).await]),
            _ => {
                let leader = self.leader(rng).await;
                let mut chosen = vec![leader];
                let mut others: Vec<u64> = ids.iter().copied().filter(|i| *i != leader).collect();
                while chosen.len() < ids.len() / 2 + 1 {
                    let i = rng.below(others.len() as u64) as usize;
                    chosen.push(others.remove(i));
                }
                chosen.sort_unstable();
                ("majority".into(), chosen)
            }
        }
    }

    async fn start(&self, fault: FaultKind, rng: &mut Rng) -> anyhow::Result<Active> {
        let f = fault.name();
        match fault {
            FaultKind::Kill | FaultKind::Pause => {
                let (target, nodes) = self.targets(rng).await;
                self.record(Kind::Invoke, f, json!({"target": target}));
                let mut cluster = self.cluster.lock().await;
                for id in &nodes {
                    if fault == FaultKind::Kill {
                        cluster.kill(*id).await?;
                    } else {
                        cluster.pause(*id, true)?;
                    }
                }
                self.record(Kind::Info, f, json!({"target": target, "nodes": nodes}));
                Ok(if fault == FaultKind::Kill { Active::Killed(nodes) } else { Active::Paused(nodes) })
            }
            FaultKind::Partition => {
                let Some(net) = &self.net else { return Ok(Active::Partitioned) };
                let ids = self.cluster.lock().await.ids();
                let leader = self.leader(rng).await;
                let (name, grudge) = crate::net::choose_partition(rng, &ids, leader);
                self.record(Kind::Invoke, f, json!({"kind": name}));
                net.apply(&grudge).await?;
                self.record(Kind::Info, f, json!({"kind": name, "drops": grudge.iter().map(|(a, b)| format!("{a}->{b}")).collect::<Vec<_>>()}));
                Ok(Active::Partitioned)
            }
            FaultKind::Clock => {
                let Some(lib) = self.faketime_lib.clone() else { return Ok(Active::Wrapped(Vec::new())) };
                let leader = self.leader(rng).await;
                let magnitude = rng.range(2, self.skew_max_s.max(2)) as i64;
                let offset_s = if rng.chance(0.5) { magnitude } else { -magnitude };
                self.record(Kind::Invoke, f, json!({"target": "leader", "offset_s": offset_s}));
                let mut cluster = self.cluster.lock().await;
                cluster.kill(leader).await?;
                cluster.start(leader, Wrapper::Faketime { offset_s, lib })?;
                self.record(Kind::Info, f, json!({"target": "leader", "nodes": [leader], "offset_s": offset_s}));
                Ok(Active::Wrapped(vec![leader]))
            }
            FaultKind::Split => {
                let sku = self.workload.sku_at(&self.skus, self.shared.started.elapsed(), rng);
                let client = self.operator_client().await?;
                let ranges = ranges(&client).await;
                let range = ranges.iter().find(|g| g.contains(&sku)).map(|g| (g.group, g.start.clone()));
                let group = range.as_ref().map(|(group, _)| *group);
                // At the SKU, so its records move; once its range starts
                // there, just after it, so it ends up alone.
                let at = match &range {
                    Some((_, start)) if *start == sku => format!("{sku}~"),
                    _ => sku.clone(),
                };
                self.record(Kind::Invoke, f, json!({"sku": sku, "at": at, "group": group}));
                let result = match group {
                    None => json!({"at": at, "outcome": "no-route"}),
                    Some(group) => match client.split_shard(group, &at).await {
                        Ok(done) => json!({"at": at, "group": group, "outcome": "split", "child": done.child.map(|c| c.group_id)}),
                        Err(e) => json!({"at": at, "group": group, "outcome": "refused", "error": e.to_string()}),
                    },
                };
                self.record(Kind::Info, f, result);
                Ok(Active::Lasting)
            }
            FaultKind::Merge => {
                let sku = self.workload.sku_at(&self.skus, self.shared.started.elapsed(), rng);
                let client = self.operator_client().await?;
                let ranges = ranges(&client).await;
                // The left one of the pair: the range before the SKU's, so
                // that the SKU's records move; the SKU's own when it is first.
                let left = ranges.iter().position(|g| g.contains(&sku)).and_then(|i| match i {
                    0 => ranges.get(1).map(|_| &ranges[0]),
                    i => ranges.get(i - 1),
                });
                let group = left.map(|g| g.group);
                self.record(Kind::Invoke, f, json!({"sku": sku, "group": group}));
                let result = match group {
                    None => json!({"outcome": "no-route"}),
                    Some(group) => match client.merge_shard(group).await {
                        Ok(done) => json!({"group": group, "outcome": "merged", "retired": done.retired_group_id}),
                        Err(e) => json!({"group": group, "outcome": "refused", "error": e.to_string()}),
                    },
                };
                self.record(Kind::Info, f, result);
                Ok(Active::Lasting)
            }
            FaultKind::Move => {
                let sku = self.workload.sku_at(&self.skus, self.shared.started.elapsed(), rng);
                let client = self.operator_client().await?;
                let ids = self.cluster.lock().await.ids();
                let statuses: Vec<_> = client.status_all().await.into_iter().filter_map(|report| report.result.ok()).collect();
                // One time in three the metadata group's replica, as the
                // newest topology places it; else the SKU's group and its
                // replicas, as any node hosting it reports them.
                let metadata = statuses.iter().max_by_key(|s| s.topology_version).map(|s| s.metadata_replicas.clone()).unwrap_or_default();
                let hosting = if rng.chance(1.0 / 3.0) && !metadata.is_empty() {
                    Some((0, metadata))
                } else {
                    statuses.into_iter().find_map(|status| {
                        status
                            .groups
                            .into_iter()
                            .find(|g| g.group_id != 0 && g.start_sku.as_str() <= sku.as_str() && (g.end_sku.is_empty() || sku < g.end_sku))
                            .map(|g| (g.group_id, g.replicas))
                    })
                };
                let plan = hosting.and_then(|(group, replicas)| {
                    let spare: Vec<u64> = ids.iter().copied().filter(|id| !replicas.contains(id)).collect();
                    (!spare.is_empty() && !replicas.is_empty()).then(|| (group, *rng.pick(&replicas), *rng.pick(&spare)))
                });
                let Some((group, from, to)) = plan else {
                    self.record(Kind::Invoke, f, json!({"sku": sku}));
                    self.record(Kind::Info, f, json!({"outcome": "no-target"}));
                    return Ok(Active::Lasting);
                };
                self.record(Kind::Invoke, f, json!({"sku": sku, "group": group, "from": from, "to": to}));
                let result = match client.move_shard(group, from, to).await {
                    Ok(done) => json!({"group": group, "outcome": "moved", "replicas": done.range.map(|r| r.replicas)}),
                    Err(e) => json!({"group": group, "outcome": "refused", "error": e.to_string()}),
                };
                self.record(Kind::Info, f, result);
                Ok(Active::Lasting)
            }
            FaultKind::Rotate => {
                self.record(Kind::Invoke, f, json!({}));
                let nodes = self.cluster.lock().await.rotate_certs()?;
                self.record(Kind::Info, f, json!({"nodes": nodes}));
                Ok(Active::Lasting)
            }
            FaultKind::Disk => {
                let ids = self.cluster.lock().await.ids();
                let node = if rng.chance(0.5) { self.leader(rng).await } else { *rng.pick(&ids) };
                let probability = 0.05;
                self.record(Kind::Invoke, f, json!({"nodes": [node], "fault": crate::cluster::FIU_FAULT, "probability": probability}));
                let mut cluster = self.cluster.lock().await;
                cluster.kill(node).await?;
                cluster.start(node, Wrapper::Fiu { probability })?;
                self.record(Kind::Info, f, json!({"nodes": [node], "fault": crate::cluster::FIU_FAULT, "probability": probability}));
                Ok(Active::Wrapped(vec![node]))
            }
        }
    }

    /// A client with the operator role, patient enough for a topology change.
    async fn operator_client(&self) -> anyhow::Result<stockd_client::Client> {
        let config = stockd_client::ClientConfig {
            connect_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_secs(8),
            total_deadline: Duration::from_secs(8),
            ..stockd_client::ClientConfig::default()
        };
        self.cluster.lock().await.client("operator", config)
    }

    async fn heal(&self, active: Active) -> anyhow::Result<()> {
        match active {
            Active::Killed(nodes) => {
                self.record(Kind::Invoke, "restart", json!({"nodes": nodes}));
                let mut cluster = self.cluster.lock().await;
                for id in &nodes {
                    cluster.start(*id, Wrapper::Plain)?;
                }
                self.record(Kind::Info, "restart", json!({"nodes": nodes}));
            }
            Active::Paused(nodes) => {
                self.record(Kind::Invoke, "resume", json!({"nodes": nodes}));
                let mut cluster = self.cluster.lock().await;
                for id in &nodes {
                    cluster.pause(*id, false)?;
                }
                self.record(Kind::Info, "resume", json!({"nodes": nodes}));
            }
            Active::Partitioned => {
                if let Some(net) = &self.net {
                    self.record(Kind::Invoke, "heal-partition", json!({}));
                    net.heal().await?;
                    self.record(Kind::Info, "heal-partition", json!({}));
                }
            }
            Active::Lasting => {}
            Active::Wrapped(nodes) => {
                if nodes.is_empty() {
                    return Ok(());
                }
                self.record(Kind::Invoke, "unwrap", json!({"nodes": nodes}));
                let mut cluster = self.cluster.lock().await;
                for id in &nodes {
                    cluster.kill(*id).await?;
                    cluster.start(*id, Wrapper::Plain)?;
                }
                self.record(Kind::Info, "unwrap", json!({"nodes": nodes}));
            }
        }
        Ok(())
    }

    /// The final heal: every node running, unpaused, unwrapped, connected.
    pub async fn heal_all(&self) -> anyhow::Result<()> {
        self.record(Kind::Invoke, "heal", json!({}));
        if let Some(net) = &self.net {
            net.heal().await?;
        }
        let mut cluster = self.cluster.lock().await;
        for (id, status) in cluster.exited() {
            self.record(Kind::Info, "crash", json!({"nodes": [id], "status": status}));
        }
        let mut restarted = Vec::new();
        for id in cluster.ids() {
            let (running, paused, wrapped) = {
                let node = cluster.nodes.iter().find(|n| n.id == id).ok_or_else(|| anyhow::anyhow!("node {id} vanished"))?;
                (node.is_running(), node.paused, node.wrapper != Wrapper::Plain)
            };
            if paused {
                cluster.pause(id, false)?;
            }
            if wrapped {
                cluster.kill(id).await?;
            }
            if !running || wrapped {
                cluster.start(id, Wrapper::Plain)?;
                restarted.push(id);
            }
        }
        self.record(Kind::Info, "heal", json!({"restarted": restarted}));
        Ok(())
    }
}

/// One range as a node's status shows it.
struct Range {
    group: u32,
    start: String,
    /// Empty: unbounded.
    end: String,
}

impl Range {
    fn contains(&self, sku: &str) -> bool {
        self.start.as_str() <= sku && (self.end.is_empty() || sku < self.end.as_str())
    }
}

/// The ranges of the region, in key order, as the nodes that answer report
/// them (each node lists the groups it hosts; the newest epoch of each group
/// is kept, and a range a newer one overlaps is dropped: a replica not yet
/// retired). None when no node answers.
async fn ranges(client: &stockd_client::Client) -> Vec<Range> {
    let mut newest: std::collections::BTreeMap<u32, (u64, Range)> = std::collections::BTreeMap::new();
    for status in client.status_all().await.into_iter().filter_map(|report| report.result.ok()) {
        for g in status.groups.into_iter().filter(|g| g.group_id != 0) {
            if newest.get(&g.group_id).is_none_or(|(epoch, _)| *epoch < g.epoch) {
                newest.insert(g.group_id, (g.epoch, Range { group: g.group_id, start: g.start_sku, end: g.end_sku }));
            }
        }
    }
    let all: Vec<(u64, Range)> = newest.into_values().collect();
    let overlaps = |a: &Range, b: &Range| (b.end.is_empty() || a.start < b.end) && (a.end.is_empty() || b.start < a.end);
    let mut ranges: Vec<Range> = all
        .iter()
        .filter(|(epoch, r)| !all.iter().any(|(other_epoch, o)| o.group != r.group && other_epoch > epoch && overlaps(r, o)))
        .map(|(_, r)| Range { group: r.group, start: r.start.clone(), end: r.end.clone() })
        .collect();
    ranges.sort_by(|a, b| a.start.cmp(&b.start));
    ranges
}
