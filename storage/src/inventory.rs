//! The deterministic inventory state machine of one Raft group.
//!
//! Invariant: [`Inventory::apply_batch`] is a pure function of the current
//! state and its arguments. It never reads the wall clock, a random source,
//! the network or the risk model: time enters as `Batch::proposed_at_ms`, so
//! the same log always produces the same state, byte for byte.
//!
//! Apply never fails on input: commands are validated before they are proposed
//! (`crate::validate`), and whatever still cannot be applied is refused with an
//! [`Outcome`] and leaves the state unchanged.
//!
//! Invariants kept after every batch (checked by [`Inventory::check_invariants`]):
//! - `position.reserved` is the sum of the line quantities of its `Pending`
//!   reservations, `position.committed` that of its `Committed` ones;
//! - a `Reserve` that succeeds leaves
//!   `reserved + committed + safety_stock + held <= on_hand` on every position
//!   it touches (no oversell); a count may later make a position short, which
//!   is flagged by `Position::is_short`, never hidden;
//! - the expiry index holds exactly the `Pending` reservations, the retention
//!   indexes exactly the finished reservations and the recorded feed events.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use serde::Deserialize;
use serde::Serialize;

use crate::model::Adjustment;
use crate::model::AdjustmentKind;
use crate::model::Batch;
use crate::model::Cart;
use crate::model::Change;
use crate::model::Command;
use crate::model::CommandResult;
use crate::model::GroupId;
use crate::model::IntentOf;
use crate::model::Limits;
use crate::model::Line;
use crate::model::LineRisk;
use crate::model::Locator;
use crate::model::Outcome;
use crate::model::Position;
use crate::model::PositionKey;
use crate::model::RangeDesc;
use crate::model::Reservation;
use crate::model::ReservationState;
use crate::model::RiskGate;
use crate::model::Shortfall;
use crate::model::Signals;
use crate::model::RELIABILITY_HALF_LIFE_MS;
use crate::model::VELOCITY_HALF_LIVES_MS;
use crate::topology::Topology;
use crate::topology::TopologyCommand;

/// Largest value `on_hand`, `held` or `safety_stock` may reach (2^62). An
/// adjustment that would go past it is refused with
/// `Outcome::InsufficientQuantity`, so quantities never saturate silently and
/// every delta fits in an `i64`.
pub const QUANTITY_MAX: u64 = 1 << 62;

/// Reason recorded on the audit trail when a reservation's TTL elapses.
pub const EXPIRE_REASON: &str = "ttl elapsed";

/// A feed event as it was applied, kept for `Limits::idempotency_retention_ms`
/// so that a retry of the same `event_id` is answered as a replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// The adjustment exactly as it was received (used to tell a retry from a
    /// reused id).
    pub adjustment: Adjustment,
    /// What applying it produced: `Ok`, `StaleEvent` or `InsufficientQuantity`.
    pub outcome: Outcome,
    /// Log time at which it was applied.
    pub applied_at_ms: u64,
}

/// Everything changed since the last [`Inventory::take_dirty`], with its
/// current value (`None`: deleted or pruned). Keys are sorted and unique.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dirty {
    pub positions: Vec<(PositionKey, Option<Position>)>,
    pub reservations: Vec<(String, Option<Reservation>)>,
    pub events: Vec<(String, Option<EventRecord>)>,
    pub carts: Vec<(String, Option<Cart>)>,
    pub intents: Vec<(String, Option<IntentOf>)>,
    pub locators: Vec<(String, Option<Locator>)>,
    /// The metadata group's topology, when it changed.
    pub topology: Option<Topology>,
    /// The group's merge state, when it changed.
    pub merge: Option<crate::range::MergeState>,
}

impl Dirty {
    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
            && self.reservations.is_empty()
            && self.events.is_empty()
            && self.carts.is_empty()
            && self.intents.is_empty()
            && self.locators.is_empty()
            && self.topology.is_none()
            && self.merge.is_none()
    }
}

/// The whole state of one group. Only ordered collections, so equal states
/// serialise to equal bytes. Indexes are derived and rebuilt on load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventorySnapshot {
    pub log_time_ms: u64,
    pub last_applied_index: u64,
    /// The group's range and its epoch.
    pub range: RangeDesc,
    pub positions: BTreeMap<PositionKey, Position>,
    pub reservations: BTreeMap<String, Reservation>,
    pub events: BTreeMap<String, EventRecord>,
    /// Home records of carts homed in this group.
    pub carts: BTreeMap<String, Cart>,
    /// Which of `reservations` are intents of carts, and of which record.
    pub intents: BTreeMap<String, IntentOf>,
    /// Where the one-group reservations whose home is this group live.
    pub locators: BTreeMap<String, Locator>,
    /// The metadata group's topology (empty in every other group).
    pub topology: Topology,
    /// Whether the group is frozen for a merge, and the merges it refused.
    pub merge: crate::range::MergeState,
}

/// Records to rebuild an inventory from (see [`Inventory::load`]).
#[derive(Debug, Default)]
pub struct Records {
    pub positions: Vec<(PositionKey, Position)>,
    pub reservations: Vec<(String, Reservation)>,
    pub events: Vec<(String, EventRecord)>,
    pub carts: Vec<(String, Cart)>,
    pub intents: Vec<(String, IntentOf)>,
    pub locators: Vec<(String, Locator)>,
    pub topology: Option<Topology>,
    pub merge: Option<crate::range::MergeState>,
}

/// Log position and log time of the batch being applied.
#[derive(Debug, Clone, Copy)]
pub(crate) struct At {
    pub(crate) log_index: u64,
    pub(crate) ms: u64,
}

/// The inventory state of one Raft group.
#[derive(Debug, Clone)]
pub struct Inventory {
    limits: Limits,
    /// Log time: the largest `proposed_at_ms` applied so far.
    log_time_ms: u64,
    last_applied_index: u64,
    /// The key range this group serves: apply refuses commands outside it
    /// or routed at another epoch.
    pub(crate) range: RangeDesc,
    pub(crate) positions: BTreeMap<PositionKey, Position>,
    pub(crate) reservations: BTreeMap<String, Reservation>,
    /// `(expires_at_ms, id)` of every `Pending` reservation that is not an
    /// intent (an intent expires when its home record says so).
    pub(crate) expiry_index: BTreeSet<(u64, String)>,
    /// `(finished_at_ms, id)` of every reservation in a final state.
    pub(crate) finished_index: BTreeSet<(u64, String)>,
    pub(crate) events: BTreeMap<String, EventRecord>,
    /// `(applied_at_ms, event_id)` of every event record.
    event_index: BTreeSet<(u64, String)>,
    /// Home records of carts homed here.
    pub(crate) carts: BTreeMap<String, Cart>,
    /// `(expires_at_ms, id)` of every preparing or pending cart.
    pub(crate) cart_expiry: BTreeSet<(u64, String)>,
    /// `(finished_at_ms, id)` of every final cart whose line groups all
    /// followed it (only those may be forgotten).
    pub(crate) cart_finished: BTreeSet<(u64, String)>,
    /// Ids of the carts that are unsettled (`Cart::is_unsettled`): what the
    /// resolver works on, without scanning every record.
    pub(crate) cart_unsettled: BTreeSet<String>,
    /// The reservations that are intents of carts, with their record.
    pub(crate) intents: BTreeMap<String, IntentOf>,
    /// Where the one-group reservations homed here live (`cart::locate`).
    pub(crate) locators: BTreeMap<String, Locator>,
    /// `(forget_at_ms, id)` of every locator.
    pub(crate) locator_expiry: BTreeSet<(u64, String)>,
    pub(crate) dirty_positions: BTreeSet<PositionKey>,
    pub(crate) dirty_reservations: BTreeSet<String>,
    pub(crate) dirty_events: BTreeSet<String>,
    pub(crate) dirty_carts: BTreeSet<String>,
    pub(crate) dirty_intents: BTreeSet<String>,
    pub(crate) dirty_locators: BTreeSet<String>,
    /// The metadata group's topology: empty (never bootstrapped) in every
    /// other group.
    pub(crate) topology: Topology,
    pub(crate) dirty_topology: bool,
    /// Frozen for a merge; merges refused at this epoch (`crate::split`).
    pub(crate) merge: crate::range::MergeState,
    pub(crate) dirty_merge: bool,
    /// Groups split off by the batch being applied, for the store to write
    /// and start (`take_split_children`). Not part of the state.
    pub(crate) split_children: Vec<Inventory>,
}

/// Equality of state: limits, log time and index, records and indexes. What is
/// pending for persistence (`take_dirty`) is not part of the state.
impl PartialEq for Inventory {
    fn eq(&self, other: &Self) -> bool {
        self.limits == other.limits
            && self.log_time_ms == other.log_time_ms
            && self.last_applied_index == other.last_applied_index
            && self.range == other.range
            && self.positions == other.positions
            && self.reservations == other.reservations
            && self.events == other.events
            && self.expiry_index == other.expiry_index
            && self.finished_index == other.finished_index
            && self.event_index == other.event_index
            && self.carts == other.carts
            && self.cart_expiry == other.cart_expiry
            && self.cart_finished == other.cart_finished
            && self.cart_unsettled == other.cart_unsettled
            && self.intents == other.intents
            && self.locators == other.locators
            && self.locator_expiry == other.locator_expiry
            && self.topology == other.topology
            && self.merge == other.merge
    }
}

impl Eq for Inventory {}

impl Inventory {
    /// An empty state machine serving all of the key space as group 0.
    pub fn new(limits: Limits) -> Self {
        Self::serving(limits, RangeDesc::whole(0))
    }

    /// An empty state machine serving `range`.
    pub fn serving(limits: Limits, range: RangeDesc) -> Self {
        Self {
            limits,
            log_time_ms: 0,
            last_applied_index: 0,
            range,
            positions: BTreeMap::new(),
            reservations: BTreeMap::new(),
            expiry_index: BTreeSet::new(),
            finished_index: BTreeSet::new(),
            events: BTreeMap::new(),
            event_index: BTreeSet::new(),
            carts: BTreeMap::new(),
            cart_expiry: BTreeSet::new(),
            cart_finished: BTreeSet::new(),
            cart_unsettled: BTreeSet::new(),
            intents: BTreeMap::new(),
            locators: BTreeMap::new(),
            locator_expiry: BTreeSet::new(),
            dirty_positions: BTreeSet::new(),
            dirty_reservations: BTreeSet::new(),
            dirty_events: BTreeSet::new(),
            dirty_carts: BTreeSet::new(),
            dirty_intents: BTreeSet::new(),
            dirty_locators: BTreeSet::new(),
            topology: Topology::default(),
            dirty_topology: false,
            merge: Default::default(),
            dirty_merge: false,
            split_children: Vec::new(),
        }
    }

    /// Rebuilds an inventory (with its indexes) from persisted records. Nothing
    /// is dirty afterwards.
    pub fn load(limits: Limits, range: RangeDesc, log_time_ms: u64, last_applied_index: u64, records: Records) -> Self {
        let mut inventory = Self::serving(limits, range);
        inventory.log_time_ms = log_time_ms;
        inventory.last_applied_index = last_applied_index;
        inventory.positions = records.positions.into_iter().collect();
        // Intents first: the reservation index leaves them out.
        inventory.intents = records.intents.into_iter().collect();
        for (id, reservation) in records.reservations {
            inventory.index_reservation(&id, &reservation);
            inventory.reservations.insert(id, reservation);
        }
        for (event_id, record) in records.events {
            inventory.event_index.insert((record.applied_at_ms, event_id.clone()));
            inventory.events.insert(event_id, record);
        }
        for (id, cart) in records.carts {
            inventory.index_cart(&cart);
            inventory.carts.insert(id, cart);
        }
        for (id, locator) in records.locators {
            inventory.locator_expiry.insert((locator.forget_at_ms, id.clone()));
            inventory.locators.insert(id, locator);
        }
        inventory.topology = records.topology.unwrap_or_default();
        inventory.merge = records.merge.unwrap_or_default();
        inventory
    }

    pub fn to_snapshot(&self) -> InventorySnapshot {
        InventorySnapshot {
            log_time_ms: self.log_time_ms,
            last_applied_index: self.last_applied_index,
            range: self.range.clone(),
            positions: self.positions.clone(),
            reservations: self.reservations.clone(),
            events: self.events.clone(),
            carts: self.carts.clone(),
            intents: self.intents.clone(),
            locators: self.locators.clone(),
            topology: self.topology.clone(),
            merge: self.merge.clone(),
        }
    }

    pub fn from_snapshot(limits: Limits, snapshot: InventorySnapshot) -> Self {
        let records = Records {
            positions: snapshot.positions.into_iter().collect(),
            reservations: snapshot.reservations.into_iter().collect(),
            events: snapshot.events.into_iter().collect(),
            carts: snapshot.carts.into_iter().collect(),
            intents: snapshot.intents.into_iter().collect(),
            locators: snapshot.locators.into_iter().collect(),
            topology: Some(snapshot.topology),
            merge: Some(snapshot.merge),
        };
        Self::load(limits, snapshot.range, snapshot.log_time_ms, snapshot.last_applied_index, records)
    }

    pub(crate) fn index_reservation(&mut self, id: &str, reservation: &Reservation) {
        match reservation.state {
            ReservationState::Pending if self.intents.contains_key(id) => {}
            ReservationState::Pending => {
                self.expiry_index.insert((reservation.expires_at_ms, id.to_owned()));
            }
            ReservationState::Committed => {}
            ReservationState::Released | ReservationState::Expired | ReservationState::Fulfilled | ReservationState::Cancelled => {
                // A final reservation always has `finished_at_ms`; fall back to
                // its creation time rather than keeping it forever.
                let finished_at_ms = reservation.finished_at_ms.unwrap_or(reservation.created_at_ms);
                self.finished_index.insert((finished_at_ms, id.to_owned()));
            }
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The key range this group serves, with its epoch.
    pub fn range(&self) -> &RangeDesc {
        &self.range
    }

    pub fn position(&self, key: &PositionKey) -> Option<&Position> {
        self.positions.get(key)
    }

    pub fn reservation(&self, id: &str) -> Option<&Reservation> {
        self.reservations.get(id)
    }

    pub fn event(&self, event_id: &str) -> Option<&EventRecord> {
        self.events.get(event_id)
    }

    /// Every position of `sku`, in location order.
    pub fn positions_of_sku<'a>(&'a self, sku: &'a str) -> impl Iterator<Item = (&'a PositionKey, &'a Position)> + 'a {
        self.positions.range(PositionKey::new(sku, "")..).take_while(move |(key, _)| key.sku == sku)
    }

    pub fn positions(&self) -> impl Iterator<Item = (&PositionKey, &Position)> + '_ {
        self.positions.iter()
    }

    pub fn reservations(&self) -> impl Iterator<Item = (&String, &Reservation)> + '_ {
        self.reservations.iter()
    }

    pub fn events(&self) -> impl Iterator<Item = (&String, &EventRecord)> + '_ {
        self.events.iter()
    }

    /// The home record of cart `id`, if it is homed here.
    pub fn cart(&self, id: &str) -> Option<&Cart> {
        self.carts.get(id)
    }

    pub fn carts(&self) -> impl Iterator<Item = (&String, &Cart)> + '_ {
        self.carts.iter()
    }

    /// The carts homed here that are undecided or not yet followed by every
    /// line group.
    pub fn unsettled_carts(&self) -> impl Iterator<Item = &Cart> + '_ {
        self.cart_unsettled.iter().filter_map(|id| self.carts.get(id))
    }

    /// The cart record an intent held here belongs to.
    pub fn intent_of(&self, id: &str) -> Option<IntentOf> {
        self.intents.get(id).copied()
    }

    pub fn intents(&self) -> impl Iterator<Item = (&String, &IntentOf)> + '_ {
        self.intents.iter()
    }

    pub fn log_time_ms(&self) -> u64 {
        self.log_time_ms
    }

    pub fn last_applied_index(&self) -> u64 {
        self.last_applied_index
    }

    /// Number of `Pending` reservations, cart intents included (their units
    /// are held here too).
    pub fn pending_count(&self) -> usize {
        let pending_intents = self.intents.keys().filter(|id| self.reservations.get(*id).is_some_and(|r| r.state == ReservationState::Pending)).count();
        self.expiry_index.len() + pending_intents
    }

    pub fn position_count(&self) -> usize {
        self.positions.len()
    }

    /// Number of reservations kept (pending, committed, and finished ones
    /// still within the retention window).
    pub fn reservation_count(&self) -> usize {
        self.reservations.len()
    }

    pub fn event_count(&self) -> usize {
        self.events.len()
    }

    /// Earliest expiry of a `Pending` reservation: the leader proposes a clock
    /// tick (an empty batch) once its clock passes it.
    pub fn next_expiry_ms(&self) -> Option<u64> {
        let reservation = self.expiry_index.first().map(|(expires_at_ms, _)| *expires_at_ms);
        let cart = self.cart_expiry.first().map(|(expires_at_ms, _)| *expires_at_ms);
        reservation.into_iter().chain(cart).min()
    }

    /// Records that a log entry carrying no batch (blank or membership entry)
    /// was applied.
    pub fn advance_applied_index(&mut self, log_index: u64) {
        debug_assert!(log_index >= self.last_applied_index);
        self.last_applied_index = self.last_applied_index.max(log_index);
    }

    /// Applies one Raft entry: advances log time, expires and prunes, then
    /// applies the commands in order. Returns one result per command.
    pub fn apply_batch(&mut self, log_index: u64, batch: &Batch) -> Vec<CommandResult> {
        debug_assert!(log_index >= self.last_applied_index);
        if let Some(frozen_at) = self.merge.frozen_at {
            // Frozen for a merge: not even the clock moves.
            let results = batch.commands.iter().map(|command| self.apply_frozen(frozen_at, batch.epoch, command)).collect();
            self.last_applied_index = log_index;
            return results;
        }
        self.log_time_ms = self.log_time_ms.max(batch.proposed_at_ms);
        let at = At { log_index, ms: self.log_time_ms };
        self.expire(at);
        self.expire_carts(at);
        self.prune(at.ms);
        self.prune_carts(at.ms);
        self.prune_locators(at.ms);
        let results = batch
            .commands
            .iter()
            .map(|command| match self.misrouted(batch.epoch, command) {
                None => self.apply_command(at, command),
                Some(outcome) => CommandResult { range: Some(self.range.clone()), ..CommandResult::bare(outcome) },
            })
            .collect();
        self.last_applied_index = log_index;
        results
    }

    /// Why `command`, routed at `epoch`, does not belong in this group, if
    /// it does not: another epoch of the range, or a key outside it. Keys
    /// are the SKUs of the lines the command moves here, and for a cart's
    /// record (and a locator) the id's home slot; other commands named by
    /// a reservation id find their record here or not at all, and the
    /// epoch tells whether that answer is this group's to give.
    fn misrouted(&self, epoch: u64, command: &Command) -> Option<Outcome> {
        if epoch != self.range.epoch {
            return Some(Outcome::EpochNotMatch);
        }
        // The metadata group applies topology commands and nothing else.
        if self.range.is_metadata() != matches!(command, Command::Topology(_)) {
            return Some(Outcome::KeyNotInRange);
        }
        let outside = |lines: &[Line]| lines.iter().any(|line| !self.range.contains(&line.sku));
        let misplaced = match command {
            Command::Reserve { lines, .. } | Command::ReserveGated { lines, .. } | Command::CartPrepare { lines, .. } => outside(lines),
            Command::Adjust(adjustment) => !self.range.contains(&adjustment.sku),
            Command::Split { at_sku, .. } => !self.range.contains(at_sku),
            Command::CartBegin { reservation_id, home, parts, .. } => {
                *home != self.range.group || !self.range.holds_home(reservation_id) || parts.get(home).is_some_and(|own| outside(own))
            }
            // Steps of a cart's record, and locators, belong in the id's home.
            Command::CartDecide { reservation_id, .. } | Command::CartFollowed { reservation_id, .. } | Command::Locate { reservation_id, .. } => {
                !self.range.holds_home(reservation_id)
            }
            Command::Commit { .. }
            | Command::Release { .. }
            | Command::Fulfill { .. }
            | Command::Cancel { .. }
            | Command::CartFollow { .. }
            | Command::Freeze
            | Command::Thaw { .. }
            // Adjacency is checked on the decoded state (`merge_right`).
            | Command::Merge { .. }
            | Command::Topology(_) => false,
        };
        misplaced.then_some(Outcome::KeyNotInRange)
    }

    fn apply_command(&mut self, at: At, command: &Command) -> CommandResult {
        use ReservationState::*;
        match command {
            Command::Reserve { reservation_id, lines, ttl_ms } => self.reserve(at, reservation_id, lines, *ttl_ms, None),
            Command::ReserveGated { reservation_id, lines, ttl_ms, gate } => self.reserve(at, reservation_id, lines, *ttl_ms, Some(gate)),
            Command::Commit { reservation_id } => self.client_transition(at, reservation_id, Pending, Committed),
            Command::Release { reservation_id } => self.client_transition(at, reservation_id, Pending, Released),
            Command::Fulfill { reservation_id } => self.client_transition(at, reservation_id, Committed, Fulfilled),
            Command::Cancel { reservation_id } => self.client_transition(at, reservation_id, Committed, Cancelled),
            Command::Adjust(adjustment) => self.adjust(at, adjustment),
            Command::CartBegin { reservation_id, lines, ttl_ms, home, parts, own_gate } => {
                self.cart_begin(at, reservation_id, lines, *ttl_ms, (*home, parts), own_gate.as_ref())
            }
            Command::CartPrepare { reservation_id, of, lines, expires_at_ms, gate } => {
                self.cart_prepare(at, reservation_id, *of, lines, *expires_at_ms, gate.as_ref())
            }
            Command::CartDecide { reservation_id, begin_index, hold, shortfalls } => self.cart_decide(at, reservation_id, *begin_index, *hold, shortfalls),
            Command::CartFollow { reservation_id, of, state } => self.cart_follow(at, reservation_id, *of, *state),
            Command::CartFollowed { reservation_id, begin_index, group, state } => self.cart_followed(at, reservation_id, *begin_index, *group, *state),
            Command::Locate { reservation_id, group, ttl_ms } => self.locate(at, reservation_id, *group, *ttl_ms),
            Command::Split { at_sku, child } => self.split(at_sku, *child),
            Command::Freeze => self.freeze(at.log_index),
            // Not frozen: nothing to lift.
            Command::Thaw { .. } => CommandResult { range: Some(self.range.clone()), ..CommandResult::bare(Outcome::Ok) },
            Command::Merge { right } => self.merge_right(right),
            Command::Topology(change) => self.change_topology(change),
        }
    }

    /// `Command::Topology`, in the metadata group: a refusal says why and
    /// changes nothing.
    fn change_topology(&mut self, change: &TopologyCommand) -> CommandResult {
        match self.topology.apply(change) {
            Ok(answer) => {
                self.dirty_topology = true;
                CommandResult { topology: Some(answer), ..CommandResult::bare(Outcome::Ok) }
            }
            Err(refusal) => CommandResult { refusal: Some(refusal.to_string()), ..CommandResult::bare(Outcome::InvalidState) },
        }
    }

    /// The topology this group holds: the metadata group's, else empty.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// `Command::Split`: the right part goes to `split_children`; a refusal
    /// says why and changes nothing.
    fn split(&mut self, at_sku: &str, child: GroupId) -> CommandResult {
        let result = match self.split_off(at_sku, child) {
            Ok(right) => {
                self.split_children.push(right);
                CommandResult::bare(Outcome::Ok)
            }
            Err(refusal) => CommandResult { refusal: Some(refusal.to_string()), ..CommandResult::bare(Outcome::InvalidState) },
        };
        CommandResult { range: Some(self.range.clone()), ..result }
    }

    /// The groups split off since the last call, each with all its records
    /// marked changed.
    pub fn take_split_children(&mut self) -> Vec<Inventory> {
        std::mem::take(&mut self.split_children)
    }

    /// Commit, release, fulfill, cancel from a client: on a cart's home
    /// record when the id is a cart homed here; never on an intent (its
    /// home record decides for it).
    fn client_transition(&mut self, at: At, id: &str, from: ReservationState, to: ReservationState) -> CommandResult {
        if self.carts.contains_key(id) {
            return self.cart_transition(at, id, to);
        }
        if self.intents.contains_key(id) {
            return CommandResult::bare(Outcome::NotFound);
        }
        self.advance(at, id, from, to)
    }

    /// Expires every `Pending` reservation whose `expires_at_ms <= at.ms`.
    fn expire(&mut self, at: At) {
        while self.expiry_index.first().is_some_and(|(expires_at_ms, _)| *expires_at_ms <= at.ms) {
            let Some((_, id)) = self.expiry_index.pop_first() else { break };
            let pending = self.reservations.get(&id).is_some_and(|reservation| reservation.state == ReservationState::Pending);
            debug_assert!(pending, "expiry index names {id}, which is not pending");
            if pending {
                self.transition(at, &id, ReservationState::Expired);
            }
        }
    }

    /// Forgets finished reservations and feed events older than the retention
    /// window.
    fn prune(&mut self, now_ms: u64) {
        let retention_ms = self.limits.idempotency_retention_ms;
        let expired = |(at_ms, _): &(u64, String)| at_ms.saturating_add(retention_ms) <= now_ms;
        while self.finished_index.first().is_some_and(expired) {
            let Some((_, id)) = self.finished_index.pop_first() else { break };
            self.reservations.remove(&id);
            if self.intents.remove(&id).is_some() {
                self.dirty_intents.insert(id.clone());
            }
            self.dirty_reservations.insert(id);
        }
        while self.event_index.first().is_some_and(expired) {
            let Some((_, event_id)) = self.event_index.pop_first() else { break };
            self.events.remove(&event_id);
            self.dirty_events.insert(event_id);
        }
    }

    /// Reserves every line or nothing. A retry of a stored reservation is a
    /// replay whatever its gate says now; otherwise a gate that refuses any
    /// line refuses the whole reservation before ATP is looked at.
    fn reserve(&mut self, at: At, id: &str, lines: &[Line], ttl_ms: u64, gate: Option<&RiskGate>) -> CommandResult {
        if let Some(cart) = self.carts.get(id) {
            return cart.replay(cart.lines == lines && cart.ttl_ms == ttl_ms);
        }
        self.forget_finished_intent(id);
        // The reservation held here answers for the id before a locator
        // does: a locator beside it was written while the two were in
        // different groups, which merges have made one since.
        if let Some(existing) = self.reservations.get(id) {
            if existing.lines == lines && existing.ttl_ms == ttl_ms && !self.intents.contains_key(id) {
                return reservation_result(Outcome::Ok, true, existing.clone());
            }
            return reservation_result(Outcome::IdempotencyConflict, false, existing.clone());
        }
        if let Some(conflict) = self.located_elsewhere(id) {
            return conflict;
        }
        if gate.is_some_and(|gate| gate.lines.iter().any(LineRisk::refuses)) {
            return CommandResult::bare(Outcome::RiskRefused);
        }
        let shortfalls = self.shortfalls(lines);
        if !shortfalls.is_empty() {
            return CommandResult { shortfalls, ..CommandResult::bare(Outcome::InsufficientStock) };
        }
        let reservation = self.hold(at, id, lines, ttl_ms, at.ms.saturating_add(ttl_ms), gate, None);
        reservation_result(Outcome::Ok, false, reservation)
    }

    /// The lines (summed per position) that do not fit in ATP.
    pub(crate) fn shortfalls(&self, lines: &[Line]) -> Vec<Shortfall> {
        line_totals(lines)
            .iter()
            .filter_map(|(key, &requested)| {
                let atp = self.positions.get(key).map_or(0, Position::atp);
                (requested > atp).then(|| Shortfall { sku: key.sku.clone(), location: key.location.clone(), requested, atp })
            })
            .collect()
    }

    /// A finished intent of an earlier cart under `id` gives way to a new
    /// use of the id (its units are long returned).
    pub(crate) fn forget_finished_intent(&mut self, id: &str) -> Vec<IntentOf> {
        let finished = self.reservations.get(id).is_some_and(|r| r.state.is_final());
        let mut retired = Vec::new();
        if finished {
            if let Some(of) = self.intents.remove(id) {
                if let Some(old) = self.reservations.remove(id) {
                    self.finished_index.remove(&(old.finished_at_ms.unwrap_or(old.created_at_ms), id.to_owned()));
                    retired = old.retired;
                }
                retired.push(of);
                let excess = retired.len().saturating_sub(crate::model::RETIRED_INTENTS_MAX);
                retired.drain(..excess);
                self.dirty_intents.insert(id.to_owned());
                self.dirty_reservations.insert(id.to_owned());
            }
        }
        retired
    }

    /// Gives the intent stored under `id` the earlier incarnations
    /// `retired` (what `forget_finished_intent` answered).
    pub(crate) fn remember_retired(&mut self, id: &str, retired: Vec<IntentOf>) {
        if retired.is_empty() {
            return;
        }
        if let Some(reservation) = self.reservations.get_mut(id).filter(|_| self.intents.contains_key(id)) {
            reservation.retired = retired;
            self.dirty_reservations.insert(id.to_owned());
        }
    }

    /// True when `of` is an earlier incarnation whose intent under `id`
    /// this group finished and replaced: its late messages change nothing.
    pub(crate) fn is_retired(&self, id: &str, of: IntentOf) -> bool {
        self.intents.contains_key(id) && self.reservations.get(id).is_some_and(|r| r.retired.contains(&of))
    }

    /// Holds `lines` (which fit) as a pending reservation, or as an intent of
    /// cart `of`. Returns the stored record.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn hold(
        &mut self,
        at: At,
        id: &str,
        lines: &[Line],
        ttl_ms: u64,
        expires_at_ms: u64,
        gate: Option<&RiskGate>,
        of: Option<IntentOf>,
    ) -> Reservation {
        let totals = line_totals(lines);
        for (key, quantity) in &totals {
            // The gate's evidence for this position's lines, as audit text.
            let reason = match (gate, of) {
                (Some(gate), _) => {
                    let texts: Vec<String> = lines.iter().zip(&gate.lines).filter(|(line, _)| line.key() == *key).map(|(_, risk)| risk.describe()).collect();
                    texts.join("; ")
                }
                (None, Some(of)) => of.audit_reason(),
                (None, None) => String::new(),
            };
            self.update_position(at, key, "reserve", id, &reason, |position| {
                position.reserved = position.reserved.saturating_add(*quantity);
                for (counter, half_life_ms) in position.signals.velocity.iter_mut().zip(VELOCITY_HALF_LIVES_MS) {
                    counter.add(at.ms, half_life_ms, *quantity);
                }
            });
        }
        let reservation = Reservation {
            id: id.to_owned(),
            state: ReservationState::Pending,
            lines: lines.to_vec(),
            ttl_ms,
            created_at_ms: at.ms,
            expires_at_ms,
            finished_at_ms: None,
            retired: Vec::new(),
        };
        self.store_reservation(reservation, of)
    }

    /// Stores a new reservation record (an intent of cart `of`, if given)
    /// with its indexes. Returns it.
    pub(crate) fn store_reservation(&mut self, reservation: Reservation, of: Option<IntentOf>) -> Reservation {
        let id = reservation.id.clone();
        if let Some(of) = of {
            self.intents.insert(id.clone(), of);
            self.dirty_intents.insert(id.clone());
        }
        self.index_reservation(&id, &reservation);
        self.reservations.insert(id.clone(), reservation.clone());
        self.dirty_reservations.insert(id);
        reservation
    }

    /// Moves a reservation `from -> to`; already in `to` is a replay, any other
    /// state is `InvalidState`.
    fn advance(&mut self, at: At, id: &str, from: ReservationState, to: ReservationState) -> CommandResult {
        let Some(existing) = self.reservations.get(id) else {
            return CommandResult::bare(Outcome::NotFound);
        };
        if existing.state == to {
            return reservation_result(Outcome::Ok, true, existing.clone());
        }
        if existing.state != from {
            return reservation_result(Outcome::InvalidState, false, existing.clone());
        }
        match self.transition(at, id, to) {
            Some(after) => reservation_result(Outcome::Ok, false, after),
            None => unreachable!("reservation {id} vanished during apply"),
        }
    }

    /// Performs a legal state transition of an existing reservation: moves its
    /// units, records the change on every position, keeps indexes up to date.
    pub(crate) fn transition(&mut self, at: At, id: &str, to: ReservationState) -> Option<Reservation> {
        use ReservationState::*;
        let reservation = self.reservations.get_mut(id)?;
        let from = reservation.state;
        reservation.state = to;
        reservation.finished_at_ms = Some(at.ms);
        let after = reservation.clone();
        self.dirty_reservations.insert(id.to_owned());
        if from == Pending {
            self.expiry_index.remove(&(after.expires_at_ms, id.to_owned()));
        }
        let kind_of_intent = self.intents.contains_key(id);
        if to.is_final() {
            self.finished_index.insert((at.ms, id.to_owned()));
        }
        let (kind, reason) = match to {
            Committed => ("commit", ""),
            Released if kind_of_intent => ("release", crate::model::INTENT_RELEASE_REASON),
            Released => ("release", ""),
            Expired => ("expire", EXPIRE_REASON),
            Fulfilled => ("fulfill", ""),
            Cancelled => ("cancel", ""),
            Pending => unreachable!("no transition leads back to pending"),
        };
        for (key, quantity) in line_totals(&after.lines) {
            self.update_position(at, &key, kind, id, reason, |position| match (from, to) {
                (Pending, Committed) => {
                    debug_assert!(position.reserved >= quantity);
                    position.reserved = position.reserved.saturating_sub(quantity);
                    position.committed = position.committed.saturating_add(quantity);
                    position.signals.committed.add(at.ms, RELIABILITY_HALF_LIFE_MS, quantity);
                }
                (Pending, _) => {
                    debug_assert!(position.reserved >= quantity);
                    position.reserved = position.reserved.saturating_sub(quantity);
                }
                (Committed, Fulfilled) => {
                    debug_assert!(position.committed >= quantity);
                    position.committed = position.committed.saturating_sub(quantity);
                    // After shrinkage on_hand may hold fewer units than were
                    // committed: ship what is there, never go below zero.
                    position.on_hand = position.on_hand.saturating_sub(quantity);
                }
                (Committed, _) => {
                    debug_assert!(position.committed >= quantity);
                    position.committed = position.committed.saturating_sub(quantity);
                    position.signals.cancelled.add(at.ms, RELIABILITY_HALF_LIFE_MS, quantity);
                }
                _ => unreachable!("illegal transition {from:?} -> {to:?}"),
            });
        }
        Some(after)
    }

    fn adjust(&mut self, at: At, adjustment: &Adjustment) -> CommandResult {
        let key = PositionKey::new(adjustment.sku.clone(), adjustment.location.clone());
        if let Some(record) = self.events.get(&adjustment.event_id) {
            let (outcome, replay) = if record.adjustment == *adjustment { (record.outcome, true) } else { (Outcome::IdempotencyConflict, false) };
            return self.adjustment_result(outcome, replay, &key);
        }
        let current = self.positions.get(&key);
        let last_seq = current.and_then(|position| position.source_seqs.get(&adjustment.source));
        let outcome = if last_seq.is_some_and(|&last_seq| adjustment.source_seq <= last_seq) {
            Outcome::StaleEvent
        } else {
            match planned_quantities(current, adjustment) {
                None => Outcome::InsufficientQuantity,
                Some(planned) => {
                    let reference = format!("{}/{}", adjustment.source, adjustment.event_id);
                    let kind = adjustment.kind.as_str();
                    self.update_position(at, &key, kind, &reference, &adjustment.reason, |p| {
                        record_feed_signals(&mut p.signals, at.ms, adjustment, p.on_hand);
                        p.on_hand = planned.on_hand;
                        p.held = planned.held;
                        p.safety_stock = planned.safety_stock;
                        p.source_seqs.insert(adjustment.source.clone(), adjustment.source_seq);
                    });
                    Outcome::Ok
                }
            }
        };
        let record = EventRecord { adjustment: adjustment.clone(), outcome, applied_at_ms: at.ms };
        self.event_index.insert((at.ms, adjustment.event_id.clone()));
        self.events.insert(adjustment.event_id.clone(), record);
        self.dirty_events.insert(adjustment.event_id.clone());
        self.adjustment_result(outcome, false, &key)
    }

    fn adjustment_result(&self, outcome: Outcome, replay: bool, key: &PositionKey) -> CommandResult {
        CommandResult { replay, position: Some(self.positions.get(key).cloned().unwrap_or_default()), ..CommandResult::bare(outcome) }
    }

    /// Mutates one position (creating it if needed) and records the change on
    /// its audit trail, with deltas computed from the quantities before and
    /// after.
    fn update_position(&mut self, at: At, key: &PositionKey, kind: &str, reference: &str, reason: &str, mutate: impl FnOnce(&mut Position)) {
        let recent_changes_max = self.limits.recent_changes_max;
        let position = self.positions.entry(key.clone()).or_default();
        let before = Quantities::of(position);
        mutate(position);
        let after = Quantities::of(position);
        position.recent_changes.push_back(Change {
            log_index: at.log_index,
            at_ms: at.ms,
            kind: kind.to_owned(),
            reference: reference.to_owned(),
            reason: reason.to_owned(),
            on_hand_delta: delta(before.on_hand, after.on_hand),
            reserved_delta: delta(before.reserved, after.reserved),
            committed_delta: delta(before.committed, after.committed),
            held_delta: delta(before.held, after.held),
            safety_stock_delta: delta(before.safety_stock, after.safety_stock),
        });
        while position.recent_changes.len() > recent_changes_max {
            position.recent_changes.pop_front();
        }
        self.dirty_positions.insert(key.clone());
    }

    /// Everything changed since the last call, with current values.
    pub fn take_dirty(&mut self) -> Dirty {
        let positions = std::mem::take(&mut self.dirty_positions)
            .into_iter()
            .map(|key| {
                let position = self.positions.get(&key).cloned();
                (key, position)
            })
            .collect();
        let reservations = std::mem::take(&mut self.dirty_reservations)
            .into_iter()
            .map(|id| {
                let reservation = self.reservations.get(&id).cloned();
                (id, reservation)
            })
            .collect();
        let events = std::mem::take(&mut self.dirty_events)
            .into_iter()
            .map(|event_id| {
                let record = self.events.get(&event_id).cloned();
                (event_id, record)
            })
            .collect();
        let carts = std::mem::take(&mut self.dirty_carts).into_iter().map(|id| (id.clone(), self.carts.get(&id).cloned())).collect();
        let intents = std::mem::take(&mut self.dirty_intents).into_iter().map(|id| (id.clone(), self.intents.get(&id).copied())).collect();
        let locators = std::mem::take(&mut self.dirty_locators).into_iter().map(|id| (id.clone(), self.locators.get(&id).copied())).collect();
        let topology = std::mem::take(&mut self.dirty_topology).then(|| self.topology.clone());
        let merge = std::mem::take(&mut self.dirty_merge).then(|| self.merge.clone());
        Dirty { positions, reservations, events, carts, intents, locators, topology, merge }
    }

    /// Verifies the invariants listed in the module documentation (quantity
    /// conservation and index consistency). Meant for tests and for checking
    /// state loaded from disk; apply keeps them by construction.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut reserved: BTreeMap<PositionKey, u64> = BTreeMap::new();
        let mut committed: BTreeMap<PositionKey, u64> = BTreeMap::new();
        let mut expiry_index = BTreeSet::new();
        let mut finished_index = BTreeSet::new();
        for (id, reservation) in &self.reservations {
            if *id != reservation.id {
                return Err(format!("reservation stored under {id} has id {}", reservation.id));
            }
            let sums = match reservation.state {
                ReservationState::Pending if self.intents.contains_key(id) => Some(&mut reserved),
                ReservationState::Pending => {
                    expiry_index.insert((reservation.expires_at_ms, id.clone()));
                    Some(&mut reserved)
                }
                ReservationState::Committed => Some(&mut committed),
                _ => {
                    let finished_at_ms = reservation.finished_at_ms.unwrap_or(reservation.created_at_ms);
                    finished_index.insert((finished_at_ms, id.clone()));
                    None
                }
            };
            if let Some(sums) = sums {
                for (key, quantity) in line_totals(&reservation.lines) {
                    let sum = sums.entry(key).or_default();
                    *sum = sum.saturating_add(quantity);
                }
            }
        }
        for (key, position) in &self.positions {
            let expected_reserved = reserved.remove(key).unwrap_or(0);
            let expected_committed = committed.remove(key).unwrap_or(0);
            if position.reserved != expected_reserved || position.committed != expected_committed {
                return Err(format!(
                    "position {key:?}: reserved {} committed {}, reservations say {} and {}",
                    position.reserved, position.committed, expected_reserved, expected_committed
                ));
            }
            if position.recent_changes.len() > self.limits.recent_changes_max {
                return Err(format!("position {key:?}: audit trail longer than its limit"));
            }
        }
        if let Some((key, _)) = reserved.iter().chain(committed.iter()).next() {
            return Err(format!("reservations hold units on missing position {key:?}"));
        }
        if expiry_index != self.expiry_index {
            return Err("expiry index does not match the pending reservations".to_owned());
        }
        if finished_index != self.finished_index {
            return Err("retention index does not match the finished reservations".to_owned());
        }
        let event_index: BTreeSet<(u64, String)> = self.events.iter().map(|(event_id, record)| (record.applied_at_ms, event_id.clone())).collect();
        if event_index != self.event_index {
            return Err("retention index does not match the event records".to_owned());
        }
        if let Some(id) = self.intents.keys().find(|id| !self.reservations.contains_key(*id)) {
            return Err(format!("intent {id} has no reservation record"));
        }
        let locator_expiry: BTreeSet<(u64, String)> = self.locators.iter().map(|(id, l)| (l.forget_at_ms, id.clone())).collect();
        if locator_expiry != self.locator_expiry {
            return Err("locator index does not match the locators".to_owned());
        }
        self.check_cart_invariants()
    }
}

/// The quantities of a position that changes are recorded for.
#[derive(Debug, Clone, Copy)]
struct Quantities {
    on_hand: u64,
    reserved: u64,
    committed: u64,
    held: u64,
    safety_stock: u64,
}

impl Quantities {
    fn of(position: &Position) -> Self {
        Self { on_hand: position.on_hand, reserved: position.reserved, committed: position.committed, held: position.held, safety_stock: position.safety_stock }
    }
}

/// `on_hand`, `held` and `safety_stock` after applying an adjustment, or
/// `None` if it cannot be applied (removing more than there is, or going past
/// [`QUANTITY_MAX`]).
fn planned_quantities(current: Option<&Position>, adjustment: &Adjustment) -> Option<Quantities> {
    let mut planned = current.map_or(Quantities { on_hand: 0, reserved: 0, committed: 0, held: 0, safety_stock: 0 }, Quantities::of);
    let quantity = adjustment.quantity;
    match adjustment.kind {
        AdjustmentKind::Receipt | AdjustmentKind::Return => {
            planned.on_hand = planned.on_hand.checked_add(quantity)?;
        }
        AdjustmentKind::Damage | AdjustmentKind::Shrink => {
            planned.on_hand = planned.on_hand.checked_sub(quantity)?;
        }
        AdjustmentKind::Count => planned.on_hand = quantity,
        AdjustmentKind::Hold => planned.held = planned.held.checked_add(quantity)?,
        AdjustmentKind::Unhold => planned.held = planned.held.checked_sub(quantity)?,
        AdjustmentKind::SafetyStock => planned.safety_stock = quantity,
    }
    let within_max = planned.on_hand <= QUANTITY_MAX && planned.held <= QUANTITY_MAX && planned.safety_stock <= QUANTITY_MAX;
    within_max.then_some(planned)
}

/// Requested units per position (lines on the same position are summed);
/// positions with nothing requested are left out.
/// Feed freshness and record reliability, from one applied feed event seen
/// against the position's `on_hand` before it.
fn record_feed_signals(signals: &mut Signals, at_ms: u64, adjustment: &Adjustment, on_hand_before: u64) {
    signals.last_feed_ms = Some(at_ms);
    signals.feed_lag_ms = adjustment.observed_at_ms.map_or(0, |observed_at_ms| at_ms.saturating_sub(observed_at_ms));
    match adjustment.kind {
        AdjustmentKind::Return => signals.returned.add(at_ms, RELIABILITY_HALF_LIFE_MS, adjustment.quantity),
        AdjustmentKind::Count => {
            signals.last_count_ms = Some(at_ms);
            let correction = on_hand_before.abs_diff(adjustment.quantity);
            signals.counted.add(at_ms, RELIABILITY_HALF_LIFE_MS, on_hand_before.max(adjustment.quantity).max(1));
            signals.corrected.add(at_ms, RELIABILITY_HALF_LIFE_MS, correction);
        }
        _ => {}
    }
}

pub(crate) fn line_totals(lines: &[Line]) -> BTreeMap<PositionKey, u64> {
    let mut totals: BTreeMap<PositionKey, u64> = BTreeMap::new();
    for line in lines {
        let total = totals.entry(line.key()).or_default();
        *total = total.saturating_add(line.quantity);
    }
    totals.retain(|_, total| *total > 0);
    totals
}

/// `after - before` as a signed delta (saturating at the `i64` bounds, which
/// quantities below [`QUANTITY_MAX`] never reach).
fn delta(before: u64, after: u64) -> i64 {
    if after >= before {
        i64::try_from(after - before).unwrap_or(i64::MAX)
    } else {
        i64::try_from(before - after).map_or(i64::MIN, |magnitude| -magnitude)
    }
}

pub(crate) fn reservation_result(outcome: Outcome, replay: bool, reservation: Reservation) -> CommandResult {
    CommandResult { replay, reservation: Some(reservation), ..CommandResult::bare(outcome) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::FIRST_EPOCH;

    const SKU: &str = "sku-1";
    const DC: &str = "dc-1";
    const TTL: u64 = 5_000;

    fn limits() -> Limits {
        Limits { idempotency_retention_ms: 60_000, recent_changes_max: 8 }
    }

    fn key(sku: &str, location: &str) -> PositionKey {
        PositionKey::new(sku, location)
    }

    fn line(sku: &str, location: &str, quantity: u64) -> Line {
        Line { sku: sku.to_owned(), location: location.to_owned(), quantity }
    }

    fn reserve(id: &str, lines: Vec<Line>, ttl_ms: u64) -> Command {
        Command::Reserve { reservation_id: id.to_owned(), lines, ttl_ms }
    }

    fn commit(id: &str) -> Command {
        Command::Commit { reservation_id: id.to_owned() }
    }

    fn release(id: &str) -> Command {
        Command::Release { reservation_id: id.to_owned() }
    }

    fn fulfill(id: &str) -> Command {
        Command::Fulfill { reservation_id: id.to_owned() }
    }

    fn cancel(id: &str) -> Command {
        Command::Cancel { reservation_id: id.to_owned() }
    }

    fn adjustment(event_id: &str, kind: AdjustmentKind, quantity: u64, source: &str, source_seq: u64) -> Adjustment {
        Adjustment {
            event_id: event_id.to_owned(),
            sku: SKU.to_owned(),
            location: DC.to_owned(),
            kind,
            quantity,
            reason: format!("{} of {quantity}", kind.as_str()),
            source: source.to_owned(),
            source_seq,
            observed_at_ms: None,
        }
    }

    fn adjust(event_id: &str, kind: AdjustmentKind, quantity: u64, source: &str, source_seq: u64) -> Command {
        Command::Adjust(adjustment(event_id, kind, quantity, source, source_seq))
    }

    fn apply(inventory: &mut Inventory, at_ms: u64, commands: Vec<Command>) -> Vec<CommandResult> {
        let log_index = inventory.last_applied_index() + 1;
        let results = inventory.apply_batch(log_index, &Batch::new(at_ms, FIRST_EPOCH, commands));
        assert_eq!(inventory.check_invariants(), Ok(()));
        results
    }

    fn apply_one(inventory: &mut Inventory, at_ms: u64, command: Command) -> CommandResult {
        let mut results = apply(inventory, at_ms, vec![command]);
        assert_eq!(results.len(), 1);
        results.remove(0)
    }

    fn tick(inventory: &mut Inventory, at_ms: u64) {
        assert!(apply(inventory, at_ms, Vec::new()).is_empty());
    }

    /// An inventory with `on_hand` units of SKU at DC, received at t=1000.
    fn stocked(on_hand: u64) -> Inventory {
        let mut inventory = Inventory::new(limits());
        let result = apply_one(&mut inventory, 1_000, adjust("stock", AdjustmentKind::Receipt, on_hand, "wms", 1));
        assert_eq!(result.outcome, Outcome::Ok);
        inventory
    }

    /// A group serving ["m", "t") at epoch 2, with 10 units of "p-1" at DC.
    fn ranged() -> Inventory {
        let range = RangeDesc { group: 4, start_sku: "m".into(), end_sku: Some("t".into()), epoch: 2, home_slots: stockd_home::ALL_SLOTS };
        let mut inventory = Inventory::serving(limits(), range);
        let receipt = Command::Adjust(Adjustment { sku: "p-1".into(), ..adjustment("stock", AdjustmentKind::Receipt, 10, "wms", 1) });
        let results = inventory.apply_batch(1, &Batch::new(1_000, 2, vec![receipt]));
        assert_eq!(results[0].outcome, Outcome::Ok);
        inventory
    }

    #[test]
    fn a_command_routed_at_another_epoch_is_refused_with_the_range_and_changes_nothing() {
        let mut inventory = ranged();
        let mut twin = inventory.clone();
        let stale = vec![
            reserve("r1", vec![line("p-1", DC, 1)], TTL),
            commit("r0"),
            Command::Adjust(Adjustment { sku: "p-1".into(), ..adjustment("e2", AdjustmentKind::Receipt, 5, "wms", 2) }),
        ];
        for epoch in [FIRST_EPOCH, 3] {
            let results = inventory.apply_batch(inventory.last_applied_index() + 1, &Batch::new(2_000, epoch, stale.clone()));
            assert_eq!(results.len(), 3);
            for result in &results {
                assert_eq!(result.outcome, Outcome::EpochNotMatch, "epoch {epoch}");
                assert_eq!(result.range.as_ref(), Some(inventory.range()), "the answer names the group's epoch");
            }
            twin.apply_batch(twin.last_applied_index() + 1, &Batch::tick(2_000));
            inventory.take_dirty();
            twin.take_dirty();
            assert_eq!(inventory, twin, "nothing applied");
        }
        // At the group's epoch the same reserve is applied.
        let results = inventory.apply_batch(inventory.last_applied_index() + 1, &Batch::new(3_000, 2, vec![reserve("r1", vec![line("p-1", DC, 1)], TTL)]));
        assert_eq!(results[0].outcome, Outcome::Ok);
        assert_eq!(results[0].range, None);
    }

    #[test]
    fn split_children_wait_for_the_store_across_batches() {
        let mut inventory = ranged();
        let split = |at: &str, child| Command::Split { at_sku: at.into(), child };
        let first = inventory.apply_batch(2, &Batch::new(2_000, 2, vec![split("q", 10), split("s", 11)]));
        assert_eq!((first[0].outcome, first[1].outcome), (Outcome::Ok, Outcome::EpochNotMatch), "the second was routed before the first applied");
        let refused = inventory.apply_batch(3, &Batch::new(2_100, 3, vec![split("a", 11)]));
        assert_eq!(refused[0].outcome, Outcome::KeyNotInRange);
        let outside = inventory.apply_batch(4, &Batch::new(2_200, 3, vec![split("m", 11)]));
        assert_eq!(outside[0].outcome, Outcome::InvalidState, "the range's own start is not a split key");
        assert!(outside[0].refusal.as_deref().is_some_and(|r| r.contains("not strictly inside")), "{:?}", outside[0].refusal);
        let second = inventory.apply_batch(5, &Batch::new(2_300, 3, vec![split("o", 11)]));
        assert_eq!(second[0].outcome, Outcome::Ok);
        let children: Vec<RangeDesc> = inventory.take_split_children().iter().map(|c| c.range().clone()).collect();
        assert_eq!(children.iter().map(|r| (r.group, r.start_sku.as_str(), r.epoch)).collect::<Vec<_>>(), vec![(10, "q", 3), (11, "o", 4)]);
        // Each split gave the child the upper half of the slots.
        assert_eq!(inventory.range(), &RangeDesc { group: 4, start_sku: "m".into(), end_sku: Some("o".into()), epoch: 4, home_slots: u64::from(u16::MAX) });
        assert!(inventory.take_split_children().is_empty());
    }

    #[test]
    fn pending_reservations_count_cart_intents() {
        let mut inventory = ranged();
        let prepare = |id: &str| Command::CartPrepare {
            reservation_id: id.into(),
            of: IntentOf { home: 5, begin_index: 9 },
            lines: vec![line("p-1", DC, 1)],
            expires_at_ms: 9_000,
            gate: None,
        };
        let reserve_one = reserve("r1", vec![line("p-1", DC, 1)], TTL);
        let results = inventory.apply_batch(2, &Batch::new(2_000, 2, vec![prepare("c1"), prepare("c2"), reserve_one]));
        assert!(results.iter().all(|r| r.outcome == Outcome::Ok), "{results:?}");
        assert_eq!(inventory.pending_count(), 3, "two intents and a reservation");
        let follow = Command::CartFollow { reservation_id: "c1".into(), of: IntentOf { home: 5, begin_index: 9 }, state: ReservationState::Released };
        assert_eq!(inventory.apply_batch(3, &Batch::new(2_100, 2, vec![follow]))[0].outcome, Outcome::Ok);
        assert_eq!(inventory.pending_count(), 2, "a released intent is no longer pending");
    }

    #[test]
    fn a_key_outside_the_range_is_refused_and_nothing_of_its_command_applied() {
        let mut inventory = ranged();
        let before = inventory.position(&key("p-1", DC)).cloned();
        let straddling = reserve("r1", vec![line("p-1", DC, 1), line("t", DC, 1)], TTL);
        let below = Command::Adjust(Adjustment { sku: "l-9".into(), ..adjustment("e2", AdjustmentKind::Receipt, 5, "wms", 2) });
        let elsewhere_home = Command::CartBegin {
            reservation_id: "c1".into(),
            lines: vec![line("p-1", DC, 1)],
            ttl_ms: TTL,
            home: 5,
            parts: BTreeMap::from([(5, vec![line("p-1", DC, 1)])]),
            own_gate: None,
        };
        let own_line_outside = Command::CartBegin {
            reservation_id: "c2".into(),
            lines: vec![line("a-1", DC, 1), line("z-1", DC, 1)],
            ttl_ms: TTL,
            home: 4,
            parts: BTreeMap::from([(4, vec![line("a-1", DC, 1)]), (6, vec![line("z-1", DC, 1)])]),
            own_gate: None,
        };
        let prepare = Command::CartPrepare {
            reservation_id: "c3".into(),
            of: IntentOf { home: 5, begin_index: 9 },
            lines: vec![line("s-1", DC, 1), line("u-1", DC, 1)],
            expires_at_ms: 9_000,
            gate: None,
        };
        let results = inventory.apply_batch(2, &Batch::new(2_000, 2, vec![straddling, below, elsewhere_home, own_line_outside, prepare]));
        for (i, result) in results.iter().enumerate() {
            assert_eq!(result.outcome, Outcome::KeyNotInRange, "command {i}");
            assert_eq!(result.range.as_ref(), Some(inventory.range()));
        }
        assert_eq!(inventory.position(&key("p-1", DC)).cloned(), before);
        assert!(inventory.reservation("r1").is_none() && inventory.cart("c1").is_none() && inventory.cart("c2").is_none());
        assert!(inventory.reservation("c3").is_none());
        assert!(inventory.position(&key("l-9", DC)).is_none());
        // The range survives a snapshot.
        assert_eq!(Inventory::from_snapshot(limits(), inventory.to_snapshot()).range(), inventory.range());
    }

    fn main_position(inventory: &Inventory) -> &Position {
        inventory.position(&key(SKU, DC)).expect("position exists")
    }

    fn last_change(inventory: &Inventory) -> &Change {
        main_position(inventory).recent_changes.back().expect("a change was recorded")
    }

    fn state(inventory: &Inventory, id: &str) -> ReservationState {
        inventory.reservation(id).expect("reservation exists").state
    }

    #[test]
    fn apply_keeps_the_signals_the_risk_model_reads() {
        let mut inventory = stocked(100);
        let signals = &main_position(&inventory).signals;
        assert_eq!(signals.last_feed_ms, Some(1_000));
        assert_eq!(signals.last_count_ms, None);
        apply(&mut inventory, 2_000, vec![reserve("r1", vec![line(SKU, DC, 4)], 60_000), reserve("r2", vec![line(SKU, DC, 2)], 60_000)]);
        apply(&mut inventory, 3_000, vec![commit("r1"), commit("r2")]);
        apply(&mut inventory, 4_000, vec![cancel("r2")]);
        let mut count = adjustment("count-1", AdjustmentKind::Count, 90, "wms", 2);
        count.observed_at_ms = Some(1_500);
        apply(&mut inventory, 5_000, vec![Command::Adjust(count), adjust("ret-1", AdjustmentKind::Return, 1, "wms", 3)]);
        let signals = &main_position(&inventory).signals;
        let velocity: Vec<f64> = signals.velocity.iter().zip(VELOCITY_HALF_LIVES_MS).map(|(v, h)| v.units_at(2_000, h)).collect();
        assert_eq!(velocity, vec![6.0, 6.0, 6.0]);
        assert!(signals.velocity[0].units_at(62_000, VELOCITY_HALF_LIVES_MS[0]) < 3.01);
        assert_eq!(signals.committed.units_at(3_000, RELIABILITY_HALF_LIFE_MS), 6.0);
        assert_eq!(signals.cancelled.units_at(4_000, RELIABILITY_HALF_LIFE_MS), 2.0);
        assert_eq!(signals.returned.units_at(5_000, RELIABILITY_HALF_LIFE_MS), 1.0);
        // The count found 90 where 100 were recorded: 10 corrected out of 100.
        assert_eq!(signals.counted.units_at(5_000, RELIABILITY_HALF_LIFE_MS), 100.0);
        assert_eq!(signals.corrected.units_at(5_000, RELIABILITY_HALF_LIFE_MS), 10.0);
        assert_eq!(signals.last_count_ms, Some(5_000));
        assert_eq!(signals.last_feed_ms, Some(5_000));
        assert_eq!(signals.feed_lag_ms, 0, "the newest event (the return) did not say when it was observed");
        // The risk path's copy keeps the quantities and signals, not the history.
        let position = main_position(&inventory);
        let slim = position.without_history();
        assert!(!position.recent_changes.is_empty() && !position.source_seqs.is_empty());
        assert!(slim.recent_changes.is_empty() && slim.source_seqs.is_empty());
        assert_eq!(
            (slim.on_hand, slim.reserved, slim.committed, slim.atp(), &slim.signals),
            (position.on_hand, position.reserved, position.committed, position.atp(), &position.signals)
        );
    }

    fn risk(p: Option<f64>, refused_by: &[&str]) -> LineRisk {
        LineRisk {
            p_sellable_ppm: p.map(|p| (p * 1e6) as u32),
            threshold_ppm: 900_000,
            model_version: if p.is_some() { "v1".to_owned() } else { String::new() },
            refused_by: refused_by.iter().map(|r| (*r).to_owned()).collect(),
            degraded: if p.is_some() { Vec::new() } else { vec!["MODEL_UNAVAILABLE".to_owned()] },
        }
    }

    fn reserve_gated(id: &str, lines: Vec<Line>, verdicts: Vec<LineRisk>) -> Command {
        Command::ReserveGated { reservation_id: id.to_owned(), lines, ttl_ms: TTL, gate: RiskGate { lines: verdicts } }
    }

    #[test]
    fn a_gate_that_refuses_any_line_refuses_the_reservation_and_changes_nothing() {
        let mut inventory = stocked(10);
        let before = main_position(&inventory).clone();
        let lines = vec![line(SKU, DC, 1), line("sku-2", DC, 1)];
        let result = apply_one(&mut inventory, 2_000, reserve_gated("r1", lines, vec![risk(Some(0.97), &[]), risk(Some(0.4), &["MODEL_RISK"])]));
        assert_eq!(result.outcome, Outcome::RiskRefused);
        assert_eq!(result.reservation, None);
        assert_eq!(inventory.reservation("r1"), None);
        assert_eq!(main_position(&inventory), &before, "nothing applied, not even an audit entry");
        assert_eq!(inventory.position(&key("sku-2", DC)), None);
        assert_eq!(inventory.pending_count(), 0);
    }

    #[test]
    fn a_gate_that_passes_reserves_as_usual_and_leaves_its_evidence_in_the_audit_trail() {
        let mut inventory = stocked(10);
        let result = apply_one(&mut inventory, 2_000, reserve_gated("r1", vec![line(SKU, DC, 3)], vec![risk(Some(0.975), &[])]));
        assert_eq!(result.outcome, Outcome::Ok);
        assert_eq!(main_position(&inventory).atp(), 7);
        let change = last_change(&inventory);
        assert_eq!((change.kind.as_str(), change.reserved_delta), ("reserve", 3));
        assert_eq!(change.reason, "risk gate: p_sellable 0.975 (v1), threshold 0.900");
        // Without a score the conservative rule's verdict is recorded the same way.
        apply_one(&mut inventory, 2_100, reserve_gated("r2", vec![line(SKU, DC, 1)], vec![risk(None, &[])]));
        assert_eq!(last_change(&inventory).reason, "risk gate: no score, threshold 0.900, degraded MODEL_UNAVAILABLE");
    }

    #[test]
    fn a_gated_retry_of_a_stored_reservation_replays_whatever_the_gate_says_now() {
        let mut inventory = stocked(10);
        assert_eq!(apply_one(&mut inventory, 2_000, reserve_gated("r1", vec![line(SKU, DC, 2)], vec![risk(Some(0.95), &[])])).outcome, Outcome::Ok);
        let retry = apply_one(&mut inventory, 2_500, reserve_gated("r1", vec![line(SKU, DC, 2)], vec![risk(Some(0.2), &["MODEL_RISK"])]));
        assert_eq!((retry.outcome, retry.replay), (Outcome::Ok, true));
        assert_eq!(main_position(&inventory).reserved, 2, "reserved once");
        // The gate passing does not let a reservation past exact ATP.
        let over = apply_one(&mut inventory, 3_000, reserve_gated("r2", vec![line(SKU, DC, 9)], vec![risk(Some(0.99), &[])]));
        assert_eq!(over.outcome, Outcome::InsufficientStock);
    }

    #[test]
    fn appended_variants_keep_the_encoding_of_earlier_commands_and_outcomes() {
        // bincode writes an enum's variant index first; logs and snapshots
        // written before the gate existed must still decode.
        let tag = |command: &Command| bincode::serialize(command).expect("serialize")[..4].to_vec();
        assert_eq!(tag(&reserve("r1", vec![line(SKU, DC, 1)], TTL)), 0u32.to_le_bytes());
        assert_eq!(tag(&adjust("a", AdjustmentKind::Count, 1, "wms", 1)), 5u32.to_le_bytes());
        assert_eq!(tag(&reserve_gated("r1", vec![line(SKU, DC, 1)], vec![risk(Some(0.9), &[])])), 6u32.to_le_bytes());
        assert_eq!(bincode::serialize(&Outcome::InsufficientQuantity).expect("serialize"), 6u32.to_le_bytes());
        assert_eq!(bincode::serialize(&Outcome::RiskRefused).expect("serialize"), 7u32.to_le_bytes());
    }

    #[test]
    fn reserve_takes_units_from_atp() {
        let mut inventory = stocked(10);
        let result = apply_one(&mut inventory, 2_000, reserve("r1", vec![line(SKU, DC, 3)], TTL));
        assert_eq!(result.outcome, Outcome::Ok);
        assert!(!result.replay);
        let reservation = result.reservation.expect("reservation returned");
        assert_eq!(reservation.state, ReservationState::Pending);
        assert_eq!(reservation.created_at_ms, 2_000);
        assert_eq!(reservation.expires_at_ms, 2_000 + TTL);
        assert_eq!(reservation.finished_at_ms, None);
        assert_eq!(inventory.reservation("r1"), Some(&reservation));
        let position = main_position(&inventory);
        assert_eq!((position.on_hand, position.reserved, position.atp()), (10, 3, 7));
        let change = last_change(&inventory);
        assert_eq!((change.kind.as_str(), change.reference.as_str()), ("reserve", "r1"));
        assert_eq!((change.reserved_delta, change.on_hand_delta), (3, 0));
        assert_eq!((change.log_index, change.at_ms), (2, 2_000));
        assert_eq!(inventory.pending_count(), 1);
        assert_eq!(inventory.next_expiry_ms(), Some(2_000 + TTL));
        assert_eq!(inventory.last_applied_index(), 2);
    }

    #[test]
    fn reserve_sums_lines_on_the_same_position() {
        let mut inventory = stocked(5);
        let before = inventory.clone();
        let result = apply_one(&mut inventory, 2_000, reserve("cart", vec![line(SKU, DC, 3), line(SKU, DC, 3)], TTL));
        assert_eq!(result.outcome, Outcome::InsufficientStock);
        assert_eq!(result.shortfalls, vec![Shortfall { sku: SKU.into(), location: DC.into(), requested: 6, atp: 5 }]);
        assert_eq!(result.reservation, None);
        assert_eq!(inventory.position(&key(SKU, DC)), before.position(&key(SKU, DC)));
        assert_eq!(inventory.reservation("cart"), None);

        let result = apply_one(&mut inventory, 2_000, reserve("cart", vec![line(SKU, DC, 2), line(SKU, DC, 3)], TTL));
        assert_eq!(result.outcome, Outcome::Ok);
        assert_eq!(main_position(&inventory).reserved, 5);
        assert_eq!(main_position(&inventory).atp(), 0);
        assert_eq!(last_change(&inventory).reserved_delta, 5);
    }

    #[test]
    fn reserve_reports_every_failing_position_and_changes_nothing() {
        let mut inventory = stocked(5);
        let result = apply_one(&mut inventory, 2_000, reserve("r1", vec![line(SKU, DC, 2), line("sku-2", DC, 1), line(SKU, "dc-9", 4)], TTL));
        assert_eq!(result.outcome, Outcome::InsufficientStock);
        assert_eq!(
            result.shortfalls,
            vec![
                Shortfall { sku: SKU.into(), location: "dc-9".into(), requested: 4, atp: 0 },
                Shortfall { sku: "sku-2".into(), location: DC.into(), requested: 1, atp: 0 },
            ]
        );
        assert_eq!(main_position(&inventory).reserved, 0);
        assert_eq!(inventory.position_count(), 1);
        assert_eq!(inventory.pending_count(), 0);
    }

    #[test]
    fn reserve_retry_is_a_replay_and_a_reused_id_conflicts() {
        let mut inventory = stocked(10);
        let request = reserve("r1", vec![line(SKU, DC, 4)], TTL);
        let first = apply_one(&mut inventory, 2_000, request.clone());
        assert_eq!(first.outcome, Outcome::Ok);

        let retry = apply_one(&mut inventory, 3_000, request.clone());
        assert_eq!(retry.outcome, Outcome::Ok);
        assert!(retry.replay);
        assert_eq!(retry.reservation, first.reservation);
        assert_eq!(main_position(&inventory).reserved, 4, "a replay reserves nothing more");

        let other_lines = apply_one(&mut inventory, 3_000, reserve("r1", vec![line(SKU, DC, 5)], TTL));
        assert_eq!(other_lines.outcome, Outcome::IdempotencyConflict);
        assert!(!other_lines.replay);
        assert_eq!(other_lines.reservation, first.reservation);
        let other_ttl = apply_one(&mut inventory, 3_000, reserve("r1", vec![line(SKU, DC, 4)], 9_000));
        assert_eq!(other_ttl.outcome, Outcome::IdempotencyConflict);
        assert_eq!(main_position(&inventory).reserved, 4);

        // Whatever happened since, the original outcome was Ok.
        assert_eq!(apply_one(&mut inventory, 3_000, commit("r1")).outcome, Outcome::Ok);
        let after_commit = apply_one(&mut inventory, 3_000, request);
        assert_eq!((after_commit.outcome, after_commit.replay), (Outcome::Ok, true));
        assert_eq!(after_commit.reservation.expect("reservation returned").state, ReservationState::Committed);
    }

    #[test]
    fn refused_reserve_retry_is_evaluated_afresh() {
        let mut inventory = stocked(2);
        let request = reserve("r1", vec![line(SKU, DC, 3)], TTL);
        assert_eq!(apply_one(&mut inventory, 2_000, request.clone()).outcome, Outcome::InsufficientStock);
        apply_one(&mut inventory, 2_000, adjust("more", AdjustmentKind::Receipt, 1, "wms", 2));
        let retry = apply_one(&mut inventory, 2_000, request);
        assert_eq!((retry.outcome, retry.replay), (Outcome::Ok, false));
        assert_eq!(main_position(&inventory).reserved, 3);
    }

    #[test]
    fn commit_moves_reserved_units_to_committed() {
        let mut inventory = stocked(10);
        apply_one(&mut inventory, 2_000, reserve("r1", vec![line(SKU, DC, 4)], TTL));
        let result = apply_one(&mut inventory, 3_000, commit("r1"));
        assert_eq!((result.outcome, result.replay), (Outcome::Ok, false));
        let reservation = result.reservation.expect("reservation returned");
        assert_eq!(reservation.state, ReservationState::Committed);
        assert_eq!(reservation.finished_at_ms, Some(3_000));
        let position = main_position(&inventory);
        assert_eq!((position.reserved, position.committed, position.atp()), (0, 4, 6));
        let change = last_change(&inventory);
        assert_eq!(change.kind, "commit");
        assert_eq!((change.reserved_delta, change.committed_delta), (-4, 4));
        assert_eq!(inventory.pending_count(), 0);
        assert_eq!(inventory.next_expiry_ms(), None);

        let retry = apply_one(&mut inventory, 3_000, commit("r1"));
        assert_eq!((retry.outcome, retry.replay), (Outcome::Ok, true));
        assert_eq!(main_position(&inventory).committed, 4);

        // A committed reservation never expires.
        tick(&mut inventory, 2_000 + TTL + 1);
        assert_eq!(state(&inventory, "r1"), ReservationState::Committed);

        let release_after_commit = apply_one(&mut inventory, 9_000, release("r1"));
        assert_eq!(release_after_commit.outcome, Outcome::InvalidState);
        assert_eq!(release_after_commit.reservation.expect("reservation returned").state, ReservationState::Committed);
        assert_eq!(main_position(&inventory).committed, 4);
    }

    #[test]
    fn release_returns_reserved_units() {
        let mut inventory = stocked(10);
        apply_one(&mut inventory, 2_000, reserve("r1", vec![line(SKU, DC, 4)], TTL));
        let result = apply_one(&mut inventory, 3_000, release("r1"));
        assert_eq!((result.outcome, result.replay), (Outcome::Ok, false));
        assert_eq!(state(&inventory, "r1"), ReservationState::Released);
        assert_eq!(main_position(&inventory).reserved, 0);
        assert_eq!(main_position(&inventory).atp(), 10);
        assert_eq!(last_change(&inventory).kind, "release");
        assert_eq!(last_change(&inventory).reserved_delta, -4);

        let retry = apply_one(&mut inventory, 3_000, release("r1"));
        assert_eq!((retry.outcome, retry.replay), (Outcome::Ok, true));
        let commit_after_release = apply_one(&mut inventory, 3_000, commit("r1"));
        assert_eq!(commit_after_release.outcome, Outcome::InvalidState);
        assert_eq!(main_position(&inventory).committed, 0);
    }

    #[test]
    fn fulfill_ships_committed_units() {
        let mut inventory = stocked(10);
        apply_one(&mut inventory, 2_000, reserve("r1", vec![line(SKU, DC, 4)], TTL));
        let early = apply_one(&mut inventory, 2_000, fulfill("r1"));
        assert_eq!(early.outcome, Outcome::InvalidState, "a pending reservation cannot ship");
        assert_eq!(main_position(&inventory).on_hand, 10);

        apply_one(&mut inventory, 2_000, commit("r1"));
        let result = apply_one(&mut inventory, 3_000, fulfill("r1"));
        assert_eq!((result.outcome, result.replay), (Outcome::Ok, false));
        assert_eq!(state(&inventory, "r1"), ReservationState::Fulfilled);
        let position = main_position(&inventory);
        assert_eq!((position.on_hand, position.committed, position.atp()), (6, 0, 6));
        let change = last_change(&inventory);
        assert_eq!((change.kind.as_str(), change.on_hand_delta, change.committed_delta), ("fulfill", -4, -4));

        let retry = apply_one(&mut inventory, 3_000, fulfill("r1"));
        assert_eq!((retry.outcome, retry.replay), (Outcome::Ok, true));
        assert_eq!(main_position(&inventory).on_hand, 6, "a replay ships nothing more");
        assert_eq!(apply_one(&mut inventory, 3_000, cancel("r1")).outcome, Outcome::InvalidState);
    }

    #[test]
    fn fulfill_after_shrinkage_never_takes_on_hand_below_zero() {
        let mut inventory = stocked(5);
        apply_one(&mut inventory, 2_000, reserve("r1", vec![line(SKU, DC, 4)], TTL));
        apply_one(&mut inventory, 2_000, commit("r1"));
        apply_one(&mut inventory, 2_000, adjust("count", AdjustmentKind::Count, 2, "wms", 2));
        assert!(main_position(&inventory).is_short());
        assert_eq!(apply_one(&mut inventory, 3_000, fulfill("r1")).outcome, Outcome::Ok);
        let position = main_position(&inventory);
        assert_eq!((position.on_hand, position.committed), (0, 0));
        assert!(!position.is_short());
        assert_eq!(last_change(&inventory).on_hand_delta, -2);
    }

    #[test]
    fn cancel_returns_committed_units() {
        let mut inventory = stocked(10);
        apply_one(&mut inventory, 2_000, reserve("r1", vec![line(SKU, DC, 4)], TTL));
        let early = apply_one(&mut inventory, 2_000, cancel("r1"));
        assert_eq!(early.outcome, Outcome::InvalidState, "only a committed order is cancelled");
        apply_one(&mut inventory, 2_000, commit("r1"));
        let result = apply_one(&mut inventory, 3_000, cancel("r1"));
        assert_eq!((result.outcome, result.replay), (Outcome::Ok, false));
        assert_eq!(state(&inventory, "r1"), ReservationState::Cancelled);
        let position = main_position(&inventory);
        assert_eq!((position.on_hand, position.committed, position.atp()), (10, 0, 10));
        assert_eq!(last_change(&inventory).kind, "cancel");

        let retry = apply_one(&mut inventory, 3_000, cancel("r1"));
        assert_eq!((retry.outcome, retry.replay), (Outcome::Ok, true));
        assert_eq!(apply_one(&mut inventory, 3_000, fulfill("r1")).outcome, Outcome::InvalidState);
        assert_eq!(main_position(&inventory).on_hand, 10);
    }

    #[test]
    fn unknown_reservation_is_not_found() {
        let mut inventory = stocked(10);
        for command in [commit("nope"), release("nope"), fulfill("nope"), cancel("nope")] {
            let result = apply_one(&mut inventory, 2_000, command);
            assert_eq!(result.outcome, Outcome::NotFound);
            assert_eq!(result.reservation, None);
        }
        assert_eq!(inventory.reservation_count(), 0);
    }

    #[test]
    fn expiry_frees_units_exactly_when_log_time_reaches_expires_at() {
        let mut inventory = stocked(10);
        apply_one(&mut inventory, 1_000, reserve("r1", vec![line(SKU, DC, 4)], TTL));
        apply_one(&mut inventory, 2_000, reserve("r2", vec![line(SKU, DC, 1)], TTL));
        assert_eq!(inventory.next_expiry_ms(), Some(6_000));

        tick(&mut inventory, 5_999);
        assert_eq!(state(&inventory, "r1"), ReservationState::Pending);
        assert_eq!(main_position(&inventory).reserved, 5);

        tick(&mut inventory, 6_000);
        let expired = inventory.reservation("r1").expect("kept for retention");
        assert_eq!(expired.state, ReservationState::Expired);
        assert_eq!(expired.finished_at_ms, Some(6_000));
        assert_eq!(state(&inventory, "r2"), ReservationState::Pending);
        assert_eq!(main_position(&inventory).reserved, 1);
        let change = last_change(&inventory);
        assert_eq!((change.kind.as_str(), change.reference.as_str()), ("expire", "r1"));
        assert_eq!((change.reserved_delta, change.reason.as_str()), (-4, EXPIRE_REASON));
        assert_eq!(inventory.next_expiry_ms(), Some(7_000));
        assert_eq!(inventory.pending_count(), 1);

        // Too late to commit or release; the retry of the reserve is still a replay.
        assert_eq!(apply_one(&mut inventory, 6_000, commit("r1")).outcome, Outcome::InvalidState);
        assert_eq!(apply_one(&mut inventory, 6_000, release("r1")).outcome, Outcome::InvalidState);
        let retry = apply_one(&mut inventory, 6_000, reserve("r1", vec![line(SKU, DC, 4)], TTL));
        assert_eq!((retry.outcome, retry.replay), (Outcome::Ok, true));
        assert_eq!(main_position(&inventory).reserved, 1);
    }

    #[test]
    fn expiry_runs_before_the_commands_of_a_batch() {
        let mut inventory = stocked(10);
        apply_one(&mut inventory, 1_000, reserve("r1", vec![line(SKU, DC, 10)], TTL));
        let results = apply(&mut inventory, 6_000, vec![commit("r1"), reserve("r2", vec![line(SKU, DC, 10)], TTL)]);
        assert_eq!(results[0].outcome, Outcome::InvalidState);
        assert_eq!(results[1].outcome, Outcome::Ok, "expired units are available to the same batch");
        assert_eq!(main_position(&inventory).reserved, 10);
    }

    #[test]
    fn log_time_never_goes_backwards() {
        let mut inventory = stocked(10);
        tick(&mut inventory, 10_000);
        let result = apply_one(&mut inventory, 4_000, reserve("r1", vec![line(SKU, DC, 1)], TTL));
        assert_eq!(inventory.log_time_ms(), 10_000);
        let reservation = result.reservation.expect("reservation returned");
        assert_eq!((reservation.created_at_ms, reservation.expires_at_ms), (10_000, 15_000));
        assert_eq!(last_change(&inventory).at_ms, 10_000);
        // An old proposal never expires anything early, nor moves time back.
        tick(&mut inventory, 14_999);
        tick(&mut inventory, 3_000);
        assert_eq!(state(&inventory, "r1"), ReservationState::Pending);
        assert_eq!(inventory.log_time_ms(), 14_999);
        tick(&mut inventory, 15_000);
        assert_eq!(state(&inventory, "r1"), ReservationState::Expired);
    }

    #[test]
    fn adjustments_apply_by_kind() {
        use AdjustmentKind::*;
        let mut inventory = Inventory::new(limits());
        let steps: [(AdjustmentKind, u64, [u64; 3]); 8] = [
            // kind, quantity, expected (on_hand, held, safety_stock)
            (Receipt, 10, [10, 0, 0]),
            (Return, 2, [12, 0, 0]),
            (Damage, 1, [11, 0, 0]),
            (Shrink, 3, [8, 0, 0]),
            (Count, 20, [20, 0, 0]),
            (Hold, 5, [20, 5, 0]),
            (Unhold, 2, [20, 3, 0]),
            (SafetyStock, 4, [20, 3, 4]),
        ];
        let mut previous = [0u64; 3];
        for (seq, (kind, quantity, expected)) in (1u64..).zip(steps) {
            let event_id = format!("e{seq}");
            let result = apply_one(&mut inventory, 1_000 * seq, adjust(&event_id, kind, quantity, "wms", seq));
            assert_eq!((result.outcome, result.replay), (Outcome::Ok, false), "{kind:?}");
            let position = result.position.expect("position returned");
            assert_eq!(&position, main_position(&inventory));
            assert_eq!([position.on_hand, position.held, position.safety_stock], expected, "{kind:?}");
            assert_eq!(position.source_seqs.get("wms"), Some(&seq));
            let change = last_change(&inventory);
            assert_eq!(change.kind, kind.as_str());
            assert_eq!(change.reference, format!("wms/{event_id}"));
            assert_eq!(change.reason, format!("{} of {quantity}", kind.as_str()));
            assert_eq!(change.at_ms, 1_000 * seq);
            let deltas = [change.on_hand_delta, change.held_delta, change.safety_stock_delta];
            let expected_deltas = [0, 1, 2].map(|i| expected[i] as i64 - previous[i] as i64);
            assert_eq!(deltas, expected_deltas, "{kind:?}");
            let record = inventory.event(&event_id).expect("event recorded");
            assert_eq!((record.outcome, record.applied_at_ms), (Outcome::Ok, 1_000 * seq));
            previous = expected;
        }
        assert_eq!(main_position(&inventory).atp(), 20 - 3 - 4);
    }

    #[test]
    fn removing_more_than_there_is_is_refused_and_recorded() {
        let mut inventory = stocked(3);
        let before = main_position(&inventory).clone();
        for (event_id, kind) in [("d", AdjustmentKind::Damage), ("s", AdjustmentKind::Shrink)] {
            let request = adjust(event_id, kind, 4, "wms", 9);
            let result = apply_one(&mut inventory, 2_000, request.clone());
            assert_eq!((result.outcome, result.replay), (Outcome::InsufficientQuantity, false));
            assert_eq!(result.position.as_ref(), Some(&before));
            assert_eq!(main_position(&inventory), &before, "neither quantity nor source_seq moves");
            let retry = apply_one(&mut inventory, 2_000, request);
            assert_eq!((retry.outcome, retry.replay), (Outcome::InsufficientQuantity, true));
        }
        let unhold = apply_one(&mut inventory, 2_000, adjust("u", AdjustmentKind::Unhold, 1, "wms", 9));
        assert_eq!(unhold.outcome, Outcome::InsufficientQuantity);
        assert_eq!(main_position(&inventory), &before);
        // The source's sequence did not advance, so seq 9 still applies.
        let damage = apply_one(&mut inventory, 2_000, adjust("d2", AdjustmentKind::Damage, 3, "wms", 9));
        assert_eq!(damage.outcome, Outcome::Ok);
        assert_eq!(main_position(&inventory).on_hand, 0);
    }

    #[test]
    fn adjustment_retry_is_a_replay_and_a_reused_event_id_conflicts() {
        let mut inventory = Inventory::new(limits());
        let request = adjust("e1", AdjustmentKind::Receipt, 5, "wms", 1);
        apply_one(&mut inventory, 1_000, request.clone());
        apply_one(&mut inventory, 1_500, adjust("e2", AdjustmentKind::Receipt, 1, "wms", 2));
        let retry = apply_one(&mut inventory, 2_000, request);
        assert_eq!((retry.outcome, retry.replay), (Outcome::Ok, true));
        assert_eq!(main_position(&inventory).on_hand, 6, "a replay receives nothing more");
        assert_eq!(retry.position.as_ref(), Some(main_position(&inventory)));

        let reused = apply_one(&mut inventory, 2_000, adjust("e1", AdjustmentKind::Receipt, 7, "wms", 3));
        assert_eq!((reused.outcome, reused.replay), (Outcome::IdempotencyConflict, false));
        assert_eq!(main_position(&inventory).on_hand, 6);
        assert_eq!(main_position(&inventory).source_seqs.get("wms"), Some(&2));
        assert_eq!(inventory.event("e1").expect("recorded").adjustment.quantity, 5);
    }

    #[test]
    fn delayed_scan_is_stale_and_its_retry_is_a_replay() {
        let mut inventory = Inventory::new(limits());
        apply_one(&mut inventory, 1_000, adjust("c5", AdjustmentKind::Count, 10, "wms", 5));
        let before = main_position(&inventory).clone();

        // Counted earlier, delivered late: must not overwrite the newer count.
        let delayed = adjust("c3", AdjustmentKind::Count, 50, "wms", 3);
        let result = apply_one(&mut inventory, 2_000, delayed.clone());
        assert_eq!((result.outcome, result.replay), (Outcome::StaleEvent, false));
        assert_eq!(main_position(&inventory), &before);
        assert_eq!(inventory.event("c3").expect("recorded").outcome, Outcome::StaleEvent);
        let retry = apply_one(&mut inventory, 3_000, delayed);
        assert_eq!((retry.outcome, retry.replay), (Outcome::StaleEvent, true));

        // Same sequence number again, any kind: stale too.
        let same_seq = apply_one(&mut inventory, 3_000, adjust("r5", AdjustmentKind::Receipt, 1, "wms", 5));
        assert_eq!(same_seq.outcome, Outcome::StaleEvent);
        assert_eq!(main_position(&inventory), &before);

        // Sequences are per source.
        let other_source = apply_one(&mut inventory, 3_000, adjust("s1", AdjustmentKind::Receipt, 1, "seller", 1));
        assert_eq!(other_source.outcome, Outcome::Ok);
        assert_eq!(main_position(&inventory).on_hand, 11);
        let newer = apply_one(&mut inventory, 3_000, adjust("c6", AdjustmentKind::Count, 7, "wms", 6));
        assert_eq!(newer.outcome, Outcome::Ok);
        assert_eq!(main_position(&inventory).on_hand, 7);
    }

    #[test]
    fn count_below_promised_units_marks_the_position_short() {
        let mut inventory = stocked(10);
        apply_one(&mut inventory, 2_000, reserve("r1", vec![line(SKU, DC, 4)], TTL));
        apply_one(&mut inventory, 2_000, commit("r1"));
        apply_one(&mut inventory, 2_000, reserve("r2", vec![line(SKU, DC, 3)], TTL));
        assert!(!main_position(&inventory).is_short());

        let result = apply_one(&mut inventory, 3_000, adjust("count", AdjustmentKind::Count, 5, "wms", 2));
        assert_eq!(result.outcome, Outcome::Ok);
        let position = result.position.expect("position returned");
        assert!(position.is_short());
        assert_eq!((position.on_hand, position.reserved, position.committed, position.atp()), (5, 3, 4, 0));
        assert_eq!(last_change(&inventory).on_hand_delta, -5);
        let more = apply_one(&mut inventory, 3_000, reserve("r3", vec![line(SKU, DC, 1)], TTL));
        assert_eq!(more.outcome, Outcome::InsufficientStock);
        assert_eq!(more.shortfalls[0].atp, 0);

        // Releasing the pending reservation makes it whole again.
        apply_one(&mut inventory, 3_000, release("r2"));
        assert!(!main_position(&inventory).is_short());
    }

    #[test]
    fn holds_and_safety_stock_are_not_available_to_promise() {
        let mut inventory = stocked(10);
        apply_one(&mut inventory, 2_000, adjust("h", AdjustmentKind::Hold, 3, "qa", 1));
        apply_one(&mut inventory, 2_000, adjust("ss", AdjustmentKind::SafetyStock, 2, "ops", 1));
        assert_eq!(main_position(&inventory).atp(), 5);
        let too_many = apply_one(&mut inventory, 2_000, reserve("r1", vec![line(SKU, DC, 6)], TTL));
        assert_eq!(too_many.outcome, Outcome::InsufficientStock);
        assert_eq!(too_many.shortfalls[0].atp, 5);
        let fits = apply_one(&mut inventory, 2_000, reserve("r2", vec![line(SKU, DC, 5)], TTL));
        assert_eq!(fits.outcome, Outcome::Ok);
    }

    #[test]
    fn finished_reservations_and_events_are_forgotten_after_retention() {
        let mut inventory = stocked(10);
        apply_one(&mut inventory, 2_000, reserve("done", vec![line(SKU, DC, 1)], TTL));
        apply_one(&mut inventory, 2_000, reserve("open", vec![line(SKU, DC, 2)], 60_000));
        apply_one(&mut inventory, 2_000, commit("open"));
        apply_one(&mut inventory, 3_000, release("done"));
        let retention = limits().idempotency_retention_ms;

        tick(&mut inventory, 1_000 + retention - 1);
        assert!(inventory.event("stock").is_some(), "applied at 1000, kept until 61000");
        tick(&mut inventory, 1_000 + retention);
        assert_eq!(inventory.event("stock"), None);
        tick(&mut inventory, 3_000 + retention - 1);
        assert!(inventory.reservation("done").is_some(), "released at 3000, kept until 63000");
        tick(&mut inventory, 3_000 + retention);
        assert_eq!(inventory.reservation("done"), None);
        assert_eq!(state(&inventory, "open"), ReservationState::Committed, "a committed reservation holds units and is never pruned");

        // Once forgotten, an id is new again.
        let reuse = apply_one(&mut inventory, 70_000, reserve("done", vec![line(SKU, DC, 8)], TTL));
        assert_eq!((reuse.outcome, reuse.replay), (Outcome::Ok, false));
        let event_again = apply_one(&mut inventory, 70_000, adjust("stock", AdjustmentKind::Receipt, 10, "wms", 1));
        assert_eq!((event_again.outcome, event_again.replay), (Outcome::StaleEvent, false), "the source sequence still guards a forgotten event");
        assert_eq!(main_position(&inventory).on_hand, 10);
    }

    #[test]
    fn audit_trail_keeps_the_newest_changes() {
        let mut inventory = Inventory::new(Limits { recent_changes_max: 3, ..limits() });
        for seq in 1..=5u64 {
            apply_one(&mut inventory, 1_000, adjust(&format!("e{seq}"), AdjustmentKind::Receipt, 1, "wms", seq));
        }
        let references: Vec<&str> = main_position(&inventory).recent_changes.iter().map(|change| change.reference.as_str()).collect();
        assert_eq!(references, ["wms/e3", "wms/e4", "wms/e5"]);
        assert_eq!(main_position(&inventory).on_hand, 5);
    }

    #[test]
    fn quantities_never_pass_their_ceiling() {
        let mut inventory = Inventory::new(limits());
        let full = apply_one(&mut inventory, 1_000, adjust("e1", AdjustmentKind::Receipt, QUANTITY_MAX, "wms", 1));
        assert_eq!(full.outcome, Outcome::Ok);
        let before = main_position(&inventory).clone();
        for (seq, kind, quantity) in [
            (2, AdjustmentKind::Receipt, 1),
            (3, AdjustmentKind::Return, u64::MAX),
            (4, AdjustmentKind::Count, QUANTITY_MAX + 1),
            (5, AdjustmentKind::Hold, u64::MAX),
            (6, AdjustmentKind::SafetyStock, u64::MAX),
        ] {
            let result = apply_one(&mut inventory, 1_000, adjust(&format!("e{seq}"), kind, quantity, "wms", seq));
            assert_eq!(result.outcome, Outcome::InsufficientQuantity, "{kind:?}");
            assert_eq!(main_position(&inventory), &before);
        }
        let huge = apply_one(&mut inventory, 1_000, reserve("r1", vec![line(SKU, DC, u64::MAX), line(SKU, DC, 5)], TTL));
        assert_eq!(huge.outcome, Outcome::InsufficientStock);
        assert_eq!(huge.shortfalls[0].requested, u64::MAX);
    }

    /// Runs a scenario touching every kind of record, including pruning.
    fn busy_inventory() -> (Inventory, Vec<Batch>) {
        let batches = vec![
            Batch::new(
                1_000,
                FIRST_EPOCH,
                vec![
                    adjust("e1", AdjustmentKind::Receipt, 10, "wms", 1),
                    reserve("r1", vec![line(SKU, DC, 2)], TTL),
                    reserve("r2", vec![line(SKU, DC, 3)], TTL),
                    reserve("r3", vec![line(SKU, DC, 1)], 20_000),
                ],
            ),
            Batch::new(2_000, FIRST_EPOCH, vec![commit("r1"), release("r2")]),
            Batch::new(500, FIRST_EPOCH, vec![adjust("e2", AdjustmentKind::Count, 8, "wms", 2)]),
            Batch::new(7_000, FIRST_EPOCH, vec![fulfill("r1")]),
            // r1 (fulfilled at 7000) is forgotten at 67000; r3 expires then.
            Batch::new(67_000, FIRST_EPOCH, vec![]),
        ];
        let mut inventory = Inventory::new(limits());
        for (log_index, batch) in (1u64..).zip(&batches) {
            inventory.apply_batch(log_index, batch);
            assert_eq!(inventory.check_invariants(), Ok(()));
        }
        (inventory, batches)
    }

    #[test]
    fn dirty_records_rebuild_the_same_state() {
        let mut inventory = Inventory::new(limits());
        let mut positions = BTreeMap::new();
        let mut reservations = BTreeMap::new();
        let mut events = BTreeMap::new();
        let (_, batches) = busy_inventory();
        let mut saw_deletion = false;
        for (log_index, batch) in (1u64..).zip(&batches) {
            inventory.apply_batch(log_index, batch);
            let dirty = inventory.take_dirty();
            assert!(!dirty.is_empty());
            for (key, position) in dirty.positions {
                match position {
                    Some(position) => positions.insert(key, position),
                    None => positions.remove(&key),
                };
            }
            for (id, reservation) in dirty.reservations {
                saw_deletion |= reservation.is_none();
                match reservation {
                    Some(reservation) => reservations.insert(id, reservation),
                    None => reservations.remove(&id),
                };
            }
            for (event_id, record) in dirty.events {
                saw_deletion |= record.is_none();
                match record {
                    Some(record) => events.insert(event_id, record),
                    None => events.remove(&event_id),
                };
            }
            assert!(inventory.take_dirty().is_empty(), "taking clears the dirty set");
            let records = Records {
                positions: positions.clone().into_iter().collect(),
                reservations: reservations.clone().into_iter().collect(),
                events: events.clone().into_iter().collect(),
                ..Records::default()
            };
            let loaded = Inventory::load(limits(), RangeDesc::whole(0), inventory.log_time_ms(), inventory.last_applied_index(), records);
            assert_eq!(loaded, inventory);
        }
        assert!(saw_deletion, "the scenario prunes records");
        assert_eq!(inventory.reservation("r1"), None);
        assert_eq!(state(&inventory, "r3"), ReservationState::Expired);
        assert_eq!(inventory.next_expiry_ms(), None);
    }

    #[test]
    fn loaded_state_keeps_expiring_reservations() {
        let mut inventory = stocked(10);
        apply_one(&mut inventory, 2_000, reserve("r1", vec![line(SKU, DC, 4)], TTL));
        let mut loaded = Inventory::from_snapshot(limits(), inventory.to_snapshot());
        assert_eq!(loaded.next_expiry_ms(), Some(7_000));
        tick(&mut loaded, 7_000);
        assert_eq!(state(&loaded, "r1"), ReservationState::Expired);
        assert_eq!(main_position(&loaded).reserved, 0);
    }

    #[test]
    fn snapshot_round_trips_byte_for_byte() {
        let (inventory, batches) = busy_inventory();
        let bytes = bincode::serialize(&inventory.to_snapshot()).expect("serialize snapshot");
        let decoded: InventorySnapshot = bincode::deserialize(&bytes).expect("deserialize snapshot");
        let restored = Inventory::from_snapshot(limits(), decoded);
        assert_eq!(restored, inventory);
        let again = bincode::serialize(&restored.to_snapshot()).expect("serialize snapshot");
        assert_eq!(again, bytes);

        let mut twin = Inventory::new(limits());
        for (log_index, batch) in (1u64..).zip(&batches) {
            twin.apply_batch(log_index, batch);
        }
        assert_eq!(bincode::serialize(&twin.to_snapshot()).expect("serialize snapshot"), bytes);
    }

    #[test]
    fn check_invariants_detects_inconsistent_records() {
        let (inventory, _) = busy_inventory();
        let mut snapshot = inventory.to_snapshot();
        snapshot.positions.get_mut(&key(SKU, DC)).expect("position").reserved += 1;
        let corrupted = Inventory::from_snapshot(limits(), snapshot);
        assert!(corrupted.check_invariants().is_err());
    }

    #[test]
    fn entries_without_a_batch_advance_the_applied_index() {
        let mut inventory = stocked(1);
        inventory.advance_applied_index(7);
        assert_eq!(inventory.last_applied_index(), 7);
        assert_eq!(inventory.log_time_ms(), 1_000);
    }
}
