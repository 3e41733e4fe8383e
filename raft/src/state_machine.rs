//! The openraft state machine adapter: applies committed batches to the
//! group's [`Inventory`], persists what changed, builds and installs
//! snapshots.
//!
//! The in-memory `Inventory` is the serving copy; the `state` table is its
//! durable image, written (buffered) in the same batch as the applied log id,
//! so a restarted node resumes from a consistent state and re-applies the
//! rest of its log. Snapshots are written with fsync, which also makes every
//! earlier buffered state write durable before the log can be purged.

use std::io::Cursor;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::RwLock;
use std::sync::RwLockReadGuard;
use std::sync::RwLockWriteGuard;

use openraft::storage::RaftStateMachine;
use openraft::storage::Snapshot;
use openraft::EntryPayload;
use openraft::ErrorSubject;
use openraft::ErrorVerb;
use openraft::OptionalSend;
use openraft::RaftSnapshotBuilder;
use openraft::SnapshotMeta;
use serde::Deserialize;
use serde::Serialize;
use storage::codec;
use storage::inventory::Inventory;
use storage::inventory::InventorySnapshot;
use storage::inventory::Records;
use storage::keys;
use storage::model::GroupId;
use storage::model::Limits;
use storage::model::RangeDesc;
use storage::Durability;
use storage::Engine;
use storage::Table;
use storage::WriteBatch;
use tokio::sync::mpsc;

use crate::log_store::io_err;
use crate::types::BatchResponse;
use crate::types::Entry;
use crate::types::LogId;
use crate::types::StorageError;
use crate::types::StoredMembership;
use crate::NodeId;
use crate::TypeConfig;

const APPLIED: &str = "applied";
const SNAPSHOT: &str = "snapshot";
const TOPOLOGY: &str = "topology";
const MERGE: &str = "merge";

/// A group split off by an applied `Command::Split`: its state was written
/// to the engine in the same atomic batch as the parent's apply, so it can
/// be opened and started (on the parent's voters) from here on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitApplied {
    pub parent: GroupId,
    /// The parent's log index of the split.
    pub log_index: u64,
    pub child: RangeDesc,
    /// The parent's voters when the split applied: the child's.
    pub voters: Vec<NodeId>,
}

/// State shared between the state machine (writer) and the request path
/// (readers).
pub struct GroupState {
    inventory: RwLock<Inventory>,
    applied_index: AtomicU64,
    /// Log time of the last applied entry (leader-proposed wall time).
    log_time_ms: AtomicU64,
}

impl GroupState {
    pub fn read(&self) -> RwLockReadGuard<'_, Inventory> {
        self.inventory.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inventory> {
        self.inventory.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn applied_index(&self) -> u64 {
        self.applied_index.load(Ordering::Acquire)
    }

    pub fn log_time_ms(&self) -> u64 {
        self.log_time_ms.load(Ordering::Acquire)
    }
}

/// What a snapshot carries.
#[derive(Serialize, Deserialize)]
struct SnapshotPayload {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    inventory: InventorySnapshot,
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, openraft::BasicNode>,
    data: Vec<u8>,
}

#[derive(Clone)]
pub struct StateMachineStore {
    engine: Arc<dyn Engine>,
    group: GroupId,
    limits: Limits,
    state: Arc<GroupState>,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    snapshot_seq: Arc<AtomicU64>,
    /// Where applied splits are reported (`report_splits`).
    splits: Option<mpsc::UnboundedSender<SplitApplied>>,
    /// `GroupConfig::skip_history` (a planted bug): this node, while no
    /// applied membership names it.
    skipping_for: Option<NodeId>,
}

impl StateMachineStore {
    /// Loads the group's state machine from the engine; a new one serves
    /// `range` (a stored state keeps the range its log set).
    pub fn open(engine: Arc<dyn Engine>, group: GroupId, limits: Limits, range: RangeDesc) -> Result<Self, StorageError> {
        let read_err = |e| io_err(ErrorSubject::StateMachine, ErrorVerb::Read, e);
        let scan = |tag: u8| engine.scan(Table::State, &keys::state_prefix(group, tag), &keys::state_prefix_end(group, tag), usize::MAX).map_err(read_err);
        let (last_applied, membership, log_time_ms, range): (Option<LogId>, StoredMembership, u64, RangeDesc) =
            match engine.get(Table::State, &keys::state_meta_key(group, APPLIED)).map_err(read_err)? {
                Some(bytes) => codec::decode(&bytes, "applied state").map_err(read_err)?,
                None => (None, StoredMembership::default(), 0, range),
            };
        let mut records = Records::default();
        for (_, value) in scan(keys::STATE_POSITION)? {
            records.positions.push(codec::decode(&value, "position").map_err(read_err)?);
        }
        for (_, value) in scan(keys::STATE_RESERVATION)? {
            let r: storage::model::Reservation = codec::decode(&value, "reservation").map_err(read_err)?;
            records.reservations.push((r.id.clone(), r));
        }
        for (_, value) in scan(keys::STATE_EVENT)? {
            records.events.push(codec::decode(&value, "event record").map_err(read_err)?);
        }
        for (_, value) in scan(keys::STATE_CART)? {
            let cart: storage::model::Cart = codec::decode(&value, "cart").map_err(read_err)?;
            records.carts.push((cart.id.clone(), cart));
        }
        for (_, value) in scan(keys::STATE_INTENT)? {
            records.intents.push(codec::decode(&value, "intent").map_err(read_err)?);
        }
        for (_, value) in scan(keys::STATE_LOCATOR)? {
            records.locators.push(codec::decode(&value, "locator").map_err(read_err)?);
        }
        if let Some(bytes) = engine.get(Table::State, &keys::state_meta_key(group, TOPOLOGY)).map_err(read_err)? {
            records.topology = Some(codec::decode(&bytes, "topology").map_err(read_err)?);
        }
        if let Some(bytes) = engine.get(Table::State, &keys::state_meta_key(group, MERGE)).map_err(read_err)? {
            records.merge = Some(codec::decode(&bytes, "merge state").map_err(read_err)?);
        }
        let applied_index = last_applied.map(|l| l.index).unwrap_or(0);
        let inventory = Inventory::load(limits.clone(), range, log_time_ms, applied_index, records);
        let state =
            Arc::new(GroupState { inventory: RwLock::new(inventory), applied_index: AtomicU64::new(applied_index), log_time_ms: AtomicU64::new(log_time_ms) });
        Ok(Self { engine, group, limits, state, last_applied, membership, snapshot_seq: Arc::new(AtomicU64::new(0)), splits: None, skipping_for: None })
    }

    pub fn state(&self) -> Arc<GroupState> {
        self.state.clone()
    }

    /// Reports every split this state machine applies from now on.
    pub fn report_splits(&mut self) -> mpsc::UnboundedReceiver<SplitApplied> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.report_splits_to(tx);
        rx
    }

    /// Reports every split this state machine applies from now on to `tx`
    /// (one per applied `Command::Split`: as many as the log holds).
    pub fn report_splits_to(&mut self, tx: mpsc::UnboundedSender<SplitApplied>) {
        self.splits = Some(tx);
    }

    /// The planted `move-skips-history` bug (`GroupConfig::skip_history`):
    /// a state machine that has applied nothing yet skips the commands of
    /// entries until a membership naming `node` applies.
    pub fn skip_history_of(&mut self, node: NodeId) {
        if self.last_applied.is_none() {
            self.skipping_for = Some(node);
        }
    }

    /// Writes every record the inventory changed, plus the applied log id,
    /// and the whole state of every group split off (`children`), in one
    /// atomic batch.
    ///
    /// A child starts as if its log had been applied and purged up to the
    /// split's index, under the parent's membership: its replicas elect a
    /// leader among themselves, and a replica without that state (one that
    /// learnt the parent from a later snapshot) can only catch up by a
    /// snapshot, never by replaying a log onto an empty state. A child
    /// already stored on this node (its replica started from a snapshot,
    /// or the split applied again after a restart) is never overwritten.
    fn persist(&self, inventory: &mut Inventory, children: Vec<(SplitApplied, Inventory)>) -> Result<Vec<SplitApplied>, StorageError> {
        let mut batch = WriteBatch::new();
        self.add_dirty(inventory, &mut batch);
        let mut splits = Vec::new();
        for (split, mut child) in children {
            let range = &split.child;
            let applied_key = keys::state_meta_key(range.group, APPLIED);
            if self.engine.get(Table::State, &applied_key).map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Read, e))?.is_some() {
                tracing::warn!(parent = self.group, child = range.group, "the split's child is stored here already; kept as it is");
                continue;
            }
            write_dirty(range.group, &mut child, &mut batch);
            let start = LogId::new(openraft::CommittedLeaderId::new(0, 0), split.log_index);
            let membership = StoredMembership::new(Some(start), self.membership.membership().clone());
            let applied: (Option<LogId>, &StoredMembership, u64, &RangeDesc) = (Some(start), &membership, child.log_time_ms(), range);
            batch.put(Table::State, applied_key, codec::encode(&applied));
            splits.push(split);
        }
        self.engine.write(batch, Durability::Buffered).map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Write, e))?;
        Ok(splits)
    }

    fn add_dirty(&self, inventory: &mut Inventory, batch: &mut WriteBatch) {
        write_dirty(self.group, inventory, batch);
        let applied = (self.last_applied, &self.membership, inventory.log_time_ms(), inventory.range());
        batch.put(Table::State, keys::state_meta_key(self.group, APPLIED), codec::encode(&applied));
    }

    fn publish(&self, inventory: &Inventory) {
        self.state.log_time_ms.store(inventory.log_time_ms(), Ordering::Release);
        self.state.applied_index.store(self.last_applied.map(|l| l.index).unwrap_or(0), Ordering::Release);
    }

    fn read_snapshot(&self) -> Result<Option<StoredSnapshot>, StorageError> {
        let read_err = |e| io_err(ErrorSubject::Snapshot(None), ErrorVerb::Read, e);
        match self.engine.get(Table::Meta, &keys::meta_key(self.group, SNAPSHOT)).map_err(read_err)? {
            Some(bytes) => Ok(Some(codec::decode(&bytes, "snapshot").map_err(read_err)?)),
            None => Ok(None),
        }
    }
}

/// Writes every record `inventory` changed under `group`'s keys.
fn write_dirty(group: GroupId, inventory: &mut Inventory, batch: &mut WriteBatch) {
    let dirty = inventory.take_dirty();
    for (key, position) in dirty.positions {
        let k = keys::position_key(group, &key);
        match position {
            Some(p) => batch.put(Table::State, k, codec::encode(&(key, p))),
            None => batch.delete(Table::State, k),
        }
    }
    for (id, reservation) in dirty.reservations {
        put_or_delete(batch, keys::reservation_key(group, &id), reservation.map(|r| codec::encode(&r)));
    }
    for (id, event) in dirty.events {
        put_or_delete(batch, keys::event_key(group, &id), event.map(|e| codec::encode(&(&id, e))));
    }
    for (id, cart) in dirty.carts {
        put_or_delete(batch, keys::record_key(group, keys::STATE_CART, &id), cart.map(|c| codec::encode(&c)));
    }
    for (id, intent) in dirty.intents {
        put_or_delete(batch, keys::record_key(group, keys::STATE_INTENT, &id), intent.map(|of| codec::encode(&(&id, of))));
    }
    for (id, locator) in dirty.locators {
        put_or_delete(batch, keys::record_key(group, keys::STATE_LOCATOR, &id), locator.map(|l| codec::encode(&(&id, l))));
    }
    if let Some(topology) = dirty.topology {
        batch.put(Table::State, keys::state_meta_key(group, TOPOLOGY), codec::encode(&topology));
    }
    if let Some(merge) = dirty.merge {
        batch.put(Table::State, keys::state_meta_key(group, MERGE), codec::encode(&merge));
    }
}

/// Writes a record, or deletes it when it is gone.
fn put_or_delete(batch: &mut WriteBatch, key: Vec<u8>, value: Option<Vec<u8>>) {
    match value {
        Some(value) => batch.put(Table::State, key, value),
        None => batch.delete(Table::State, key),
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let payload = {
            let inventory = self.state.read();
            SnapshotPayload { last_applied: self.last_applied, membership: self.membership.clone(), inventory: inventory.to_snapshot() }
        };
        let data = codec::encode(&payload);
        let seq = self.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match self.last_applied {
            Some(l) => format!("g{}-{}-{}-{}", self.group, l.leader_id, l.index, seq),
            None => format!("g{}-0-{}", self.group, seq),
        };
        let meta = SnapshotMeta { last_log_id: self.last_applied, last_membership: self.membership.clone(), snapshot_id };
        let stored = StoredSnapshot { meta: meta.clone(), data: data.clone() };
        let mut batch = WriteBatch::new();
        batch.put(Table::Meta, keys::meta_key(self.group, SNAPSHOT), codec::encode(&stored));
        // Synced: also makes the buffered state writes up to here durable,
        // which must hold before openraft purges the log behind the snapshot.
        self.engine.write(batch, Durability::Sync).map_err(|e| io_err(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<BatchResponse>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let state = self.state.clone();
        let mut inventory = state.write();
        let mut responses = Vec::new();
        let mut children = Vec::new();
        let mut entries = entries.into_iter().peekable();
        // Empty under a range that changed since the group began (a replica
        // new to a group that split or merged): the log from its start
        // cannot rebuild that state (commands routed at older epochs would
        // be refused, and the replica diverge), so it applies nothing until
        // a snapshot is installed (which sets `last_applied`).
        if self.last_applied.is_none() && inventory.range().epoch != storage::model::FIRST_EPOCH {
            if let Some(first) = entries.peek() {
                let reason = format!(
                    "group {}: a new replica under range epoch {} was sent log entry {} instead of a snapshot; it cannot rebuild the state from the log",
                    self.group,
                    inventory.range().epoch,
                    first.log_id.index
                );
                tracing::error!(group = self.group, "{reason}");
                return Err(io_err(ErrorSubject::StateMachine, ErrorVerb::Write, reason));
            }
        }
        for entry in entries {
            let index = entry.log_id.index;
            self.last_applied = Some(entry.log_id);
            let results = match entry.payload {
                EntryPayload::Blank => Vec::new(),
                EntryPayload::Normal(_) if self.skipping_for.is_some() => Vec::new(),
                EntryPayload::Normal(batch) => {
                    let results = inventory.apply_batch(index, &batch);
                    for child in inventory.take_split_children() {
                        let voters = self.membership.membership().voter_ids().collect();
                        children.push((SplitApplied { parent: self.group, log_index: index, child: child.range().clone(), voters }, child));
                    }
                    results
                }
                EntryPayload::Membership(membership) => {
                    if self.skipping_for.is_some_and(|me| membership.nodes().any(|(id, _)| *id == me)) {
                        self.skipping_for = None;
                    }
                    self.membership = StoredMembership::new(Some(entry.log_id), membership);
                    Vec::new()
                }
            };
            responses.push(BatchResponse { log_index: index, results });
        }
        let splits = self.persist(&mut inventory, children)?;
        self.publish(&inventory);
        if let Some(tx) = &self.splits {
            for split in splits {
                let _ = tx.send(split);
            }
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta<NodeId, openraft::BasicNode>, snapshot: Box<Cursor<Vec<u8>>>) -> Result<(), StorageError> {
        let read_err = |e| io_err(ErrorSubject::Snapshot(Some(meta.signature())), ErrorVerb::Read, e);
        let data = snapshot.into_inner();
        let payload: SnapshotPayload = codec::decode(&data, "received snapshot").map_err(read_err)?;
        let state = self.state.clone();
        let mut inventory = state.write();
        let mut fresh = Inventory::from_snapshot(self.limits.clone(), payload.inventory);
        // Replace the group's durable state wholesale in one atomic, synced
        // batch: drop every record, write the snapshot's records and keep
        // the snapshot itself.
        let mut batch = WriteBatch::new();
        batch.delete_range(Table::State, keys::group_prefix(self.group), keys::group_end(self.group));
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        for (key, p) in fresh.positions() {
            batch.put(Table::State, keys::position_key(self.group, key), codec::encode(&(key, p)));
        }
        for (id, r) in fresh.reservations() {
            batch.put(Table::State, keys::reservation_key(self.group, id), codec::encode(r));
        }
        for (id, e) in fresh.events() {
            batch.put(Table::State, keys::event_key(self.group, id), codec::encode(&(id, e)));
        }
        for (id, cart) in fresh.carts() {
            batch.put(Table::State, keys::record_key(self.group, keys::STATE_CART, id), codec::encode(cart));
        }
        for (id, of) in fresh.intents() {
            batch.put(Table::State, keys::record_key(self.group, keys::STATE_INTENT, id), codec::encode(&(id, of)));
        }
        for (id, locator) in fresh.locators() {
            batch.put(Table::State, keys::record_key(self.group, keys::STATE_LOCATOR, id), codec::encode(&(id, locator)));
        }
        if fresh.topology().is_bootstrapped() {
            batch.put(Table::State, keys::state_meta_key(self.group, TOPOLOGY), codec::encode(fresh.topology()));
        }
        batch.put(Table::State, keys::state_meta_key(self.group, MERGE), codec::encode(fresh.merge_state()));
        self.add_dirty(&mut fresh, &mut batch);
        let stored = StoredSnapshot { meta: meta.clone(), data };
        batch.put(Table::Meta, keys::meta_key(self.group, SNAPSHOT), codec::encode(&stored));
        self.engine.write(batch, Durability::Sync).map_err(|e| io_err(ErrorSubject::Snapshot(Some(meta.signature())), ErrorVerb::Write, e))?;
        *inventory = fresh;
        self.publish(&inventory);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(self.read_snapshot()?.map(|s| Snapshot { meta: s.meta, snapshot: Box::new(Cursor::new(s.data)) }))
    }
}
