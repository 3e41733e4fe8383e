//! Domain types of the inventory state machine: positions, reservations,
//! adjustments, the commands that enter the Raft log and their outcomes.
//!
//! Everything here is plain data: serde-serializable, ordered collections only
//! (`BTreeMap`), so that the same log always produces the same bytes.

use std::collections::BTreeMap;
use std::collections::VecDeque;

use serde::Deserialize;
use serde::Serialize;

pub use crate::range::GroupId;
pub use crate::range::RangeDesc;
pub use crate::range::FIRST_EPOCH;

/// A position within a group: one SKU at one location. The region is the
/// group's region.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PositionKey {
    pub sku: String,
    pub location: String,
}

impl PositionKey {
    pub fn new(sku: impl Into<String>, location: impl Into<String>) -> Self {
        Self { sku: sku.into(), location: location.into() }
    }
}

/// One recorded change of a position, kept in a bounded ring per position
/// (`Limits::recent_changes_max`) as its audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub log_index: u64,
    pub at_ms: u64,
    /// reserve, commit, release, expire, fulfill, cancel, or an adjustment
    /// kind's name (receipt, count, ...).
    pub kind: String,
    /// A reservation id, or `source/event_id` for adjustments.
    pub reference: String,
    pub reason: String,
    pub on_hand_delta: i64,
    pub reserved_delta: i64,
    pub committed_delta: i64,
    pub held_delta: i64,
    pub safety_stock_delta: i64,
}

/// Quantities of one position. All counts are whole units >= 0.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub on_hand: u64,
    pub reserved: u64,
    pub committed: u64,
    pub safety_stock: u64,
    pub held: u64,
    /// Newest `source_seq` applied per feed source.
    pub source_seqs: BTreeMap<String, u64>,
    /// Audit trail, newest last, at most `Limits::recent_changes_max`.
    pub recent_changes: VecDeque<Change>,
    /// What the risk model reads about this position besides its quantities.
    pub signals: Signals,
}

/// Half-lives of the reservation velocity counters: 1 min, 15 min, 1 h.
pub const VELOCITY_HALF_LIVES_MS: [u64; 3] = [60_000, 15 * 60_000, 60 * 60_000];

/// Half-life of the reliability counters (commits, cancellations, returns,
/// counts): 7 days.
pub const RELIABILITY_HALF_LIFE_MS: u64 = 7 * 24 * 60 * 60_000;

/// A unit count that halves every half-life of log time. Integer arithmetic
/// only (milli-units, a fixed-point table of `2^-x`), so every replica decays
/// it to the same bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decayed {
    pub milli_units: u64,
    /// Log time the value was last brought up to date.
    pub at_ms: u64,
}

/// `round(2^(-i/16) * 2^32)` for i in 0..=16.
const HALVING_TABLE: [u64; 17] = [
    4294967296, 4112874773, 3938502376, 3771522796, 3611622603, 3458501653, 3311872529, 3171459999, 3037000500, 2908241642, 2784941738, 2666869345, 2553802834,
    2445529972, 2341847524, 2242560872, 2147483648,
];

/// `milli_units * 2^(-elapsed / half_life)`, to within 0.1%.
pub fn decay(milli_units: u64, elapsed_ms: u64, half_life_ms: u64) -> u64 {
    debug_assert!(half_life_ms > 0);
    let half_life_ms = half_life_ms.max(1);
    let halvings = elapsed_ms / half_life_ms;
    if halvings >= 64 {
        return 0;
    }
    let value = u128::from(milli_units >> halvings);
    // The remaining fraction of a half-life, in 1/16 steps with linear
    // interpolation between table entries.
    let fraction = u128::from(elapsed_ms % half_life_ms) * 16;
    let half_life = u128::from(half_life_ms);
    let step = (fraction / half_life) as usize;
    let within = fraction % half_life;
    let high = u128::from(HALVING_TABLE[step]);
    let low = u128::from(HALVING_TABLE[(step + 1).min(16)]);
    let factor = high - (high - low) * within / half_life;
    ((value * factor) >> 32) as u64
}

impl Decayed {
    /// Units at `now_ms` (never earlier than the last update).
    pub fn units_at(&self, now_ms: u64, half_life_ms: u64) -> f64 {
        decay(self.milli_units, now_ms.saturating_sub(self.at_ms), half_life_ms) as f64 / 1000.0
    }

    pub fn add(&mut self, now_ms: u64, half_life_ms: u64, units: u64) {
        let now_ms = now_ms.max(self.at_ms);
        let current = decay(self.milli_units, now_ms - self.at_ms, half_life_ms);
        self.milli_units = current.saturating_add(units.saturating_mul(1000));
        self.at_ms = now_ms;
    }
}

/// Per-position history the availability model reads: demand velocity, feed
/// freshness and how far this location's records can be trusted. Updated by
/// apply from log time only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signals {
    /// Units reserved, decayed with [`VELOCITY_HALF_LIVES_MS`].
    pub velocity: [Decayed; 3],
    /// Reliability counters, decayed with [`RELIABILITY_HALF_LIFE_MS`]:
    /// units committed, cancelled after commit, returned, counted, and the
    /// absolute correction cycle counts made.
    pub committed: Decayed,
    pub cancelled: Decayed,
    pub returned: Decayed,
    pub counted: Decayed,
    pub corrected: Decayed,
    /// Log time of the newest applied feed event.
    pub last_feed_ms: Option<u64>,
    /// Log time of the newest applied cycle count.
    pub last_count_ms: Option<u64>,
    /// Lag of the newest applied feed event: its apply time minus the time
    /// the feed observed it (0 when the feed did not say).
    pub feed_lag_ms: u64,
}

impl Position {
    /// Available to promise:
    /// `max(0, on_hand - reserved - committed - safety_stock - held)`.
    pub fn atp(&self) -> u64 {
        self.on_hand.saturating_sub(self.reserved).saturating_sub(self.committed).saturating_sub(self.safety_stock).saturating_sub(self.held)
    }

    /// A count found fewer units than are promised: flagged, never hidden.
    pub fn is_short(&self) -> bool {
        self.on_hand < self.reserved.saturating_add(self.committed)
    }

    /// The quantities and signals without the audit trail and the feed
    /// sequences: what an availability answer reads, copied without their
    /// allocations.
    pub fn without_history(&self) -> Position {
        Position {
            on_hand: self.on_hand,
            reserved: self.reserved,
            committed: self.committed,
            safety_stock: self.safety_stock,
            held: self.held,
            source_seqs: BTreeMap::new(),
            recent_changes: VecDeque::new(),
            signals: self.signals.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub sku: String,
    pub location: String,
    pub quantity: u64,
}

impl Line {
    pub fn key(&self) -> PositionKey {
        PositionKey::new(self.sku.clone(), self.location.clone())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ReservationState {
    Pending,
    Committed,
    Released,
    Expired,
    Fulfilled,
    Cancelled,
}

impl ReservationState {
    /// No further transition is possible.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Released | Self::Expired | Self::Fulfilled | Self::Cancelled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Committed => "committed",
            Self::Released => "released",
            Self::Expired => "expired",
            Self::Fulfilled => "fulfilled",
            Self::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub id: String,
    pub state: ReservationState,
    /// Lines as requested (order kept), used to detect a reused id.
    pub lines: Vec<Line>,
    pub ttl_ms: u64,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    /// Log time at which it left `Pending` or `Committed` for a final state,
    /// or left `Pending` for `Committed`.
    pub finished_at_ms: Option<u64>,
    /// For a cart's intent: the earlier incarnations of carts under this id
    /// whose intents this group held and finished before this one took
    /// their place, oldest first, at most `RETIRED_INTENTS_MAX`. A late
    /// prepare or follow of one of them changes nothing. Empty otherwise.
    pub retired: Vec<IntentOf>,
}

/// Most earlier incarnations an intent remembers (`Reservation::retired`):
/// an id reused that many times within the retention window forgets its
/// oldest.
pub const RETIRED_INTENTS_MAX: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum AdjustmentKind {
    Receipt,
    Return,
    Damage,
    Shrink,
    Count,
    Hold,
    Unhold,
    SafetyStock,
}

impl AdjustmentKind {
    pub const ALL: [AdjustmentKind; 8] = [Self::Receipt, Self::Return, Self::Damage, Self::Shrink, Self::Count, Self::Hold, Self::Unhold, Self::SafetyStock];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Receipt => "receipt",
            Self::Return => "return",
            Self::Damage => "damage",
            Self::Shrink => "shrink",
            Self::Count => "count",
            Self::Hold => "hold",
            Self::Unhold => "unhold",
            Self::SafetyStock => "safety-stock",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

/// A warehouse or seller feed event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adjustment {
    pub event_id: String,
    pub sku: String,
    pub location: String,
    pub kind: AdjustmentKind,
    pub quantity: u64,
    pub reason: String,
    pub source: String,
    pub source_seq: u64,
    /// When the feed observed the event (Unix ms), if it says; gives the
    /// feed lag the risk model reads.
    pub observed_at_ms: Option<u64>,
}

/// One client command. Commands are validated (see `crate::validate`) before
/// they are proposed; apply still refuses nothing silently.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Reserve {
        reservation_id: String,
        lines: Vec<Line>,
        ttl_ms: u64,
    },
    Commit {
        reservation_id: String,
    },
    Release {
        reservation_id: String,
    },
    Fulfill {
        reservation_id: String,
    },
    Cancel {
        reservation_id: String,
    },
    Adjust(Adjustment),
    /// A `Reserve` behind the checkout risk gate: the gate's verdict for each
    /// line, computed by the proposing node before proposing, travels in the
    /// log as data, so every replica applies the same decision. (A variant of
    /// its own, appended, so logs written before it still decode.)
    ReserveGated {
        reservation_id: String,
        lines: Vec<Line>,
        ttl_ms: u64,
        gate: RiskGate,
    },
    /// Cart step 1, at the home group: the reservation record of a cart whose
    /// lines fall in several groups, with the home group's own lines held in
    /// the same apply. See `crate::cart`.
    CartBegin {
        reservation_id: String,
        lines: Vec<Line>,
        ttl_ms: u64,
        /// The group this command is applied in (the id's home).
        home: GroupId,
        /// The lines of each group, every line of `lines` in exactly one.
        parts: BTreeMap<GroupId, Vec<Line>>,
        /// The risk gate's verdicts on the home group's own lines (in the
        /// order of its part), for their audit trail.
        own_gate: Option<RiskGate>,
    },
    /// Cart step 2, at a line group: hold the group's lines as an intent
    /// pointing at the home record.
    CartPrepare {
        reservation_id: String,
        of: IntentOf,
        lines: Vec<Line>,
        /// The home record's expiry (home log time), for the line group's
        /// resolver; the line group never expires an intent by itself.
        expires_at_ms: u64,
        /// The risk gate's verdicts on these lines, for their audit trail.
        gate: Option<RiskGate>,
    },
    /// Cart step 3, at the home group: every prepare held (`hold`) or one was
    /// refused. Applies only to a `Preparing` record of that incarnation.
    CartDecide {
        reservation_id: String,
        begin_index: u64,
        hold: bool,
        shortfalls: Vec<Shortfall>,
    },
    /// Cart step 4, at a line group: the intent follows the home record's
    /// state (committed, released, expired, fulfilled, cancelled).
    CartFollow {
        reservation_id: String,
        of: IntentOf,
        state: ReservationState,
    },
    /// Cart step 5, at the home group: `group`'s intent is in `state`.
    CartFollowed {
        reservation_id: String,
        begin_index: u64,
        group: GroupId,
        state: ReservationState,
    },
    /// At the id's home group: `group` holds the one-group reservation
    /// `reservation_id` (see `storage::cart::locate`). Kept for `ttl_ms` and
    /// the idempotency retention window.
    Locate {
        reservation_id: String,
        group: GroupId,
        ttl_ms: u64,
    },
    /// Topology: `[at_sku, end)` of this group becomes group `child` (an id
    /// the metadata group allocated), on the same replicas, from this
    /// group's state at this index (`crate::split`). Routed like any other
    /// command, so a split proposed at a stale epoch is refused.
    Split {
        at_sku: String,
        child: GroupId,
    },
    /// Topology, in the right side of a merge: from this index on the group
    /// applies nothing (no command, no expiry, no clock), so its state is
    /// the same on every replica and can be taken into its left neighbour
    /// (`Merge`). Refused while a cart is in flight here or the state is
    /// larger than a merge carries (`crate::split::MERGE_RECORDS_MAX`).
    Freeze,
    /// Topology: the freeze at index `frozen_at` is lifted; only after the
    /// left neighbour refused the merge of that freeze for good.
    Thaw {
        frozen_at: u64,
    },
    /// Topology, in the left side of a merge: takes `right`, the frozen
    /// state of the adjacent range after this one (an `InventorySnapshot`
    /// encoded by `crate::codec`), and serves both ranges at the next
    /// epoch. The state travels in this entry, so every replica takes the
    /// same records whether or not it replicates the right side.
    Merge {
        right: Vec<u8>,
    },
    /// A change of the topology; applies in the metadata group only
    /// (`crate::topology`), and nothing else applies there.
    Topology(crate::topology::TopologyCommand),
}

impl Command {
    /// The first SKU a command touches, if it names any: what the load
    /// sampler counts.
    pub fn first_sku(&self) -> Option<&str> {
        match self {
            Command::Reserve { lines, .. } | Command::ReserveGated { lines, .. } | Command::CartPrepare { lines, .. } => {
                lines.first().map(|line| line.sku.as_str())
            }
            Command::Adjust(adjustment) => Some(&adjustment.sku),
            _ => None,
        }
    }

    /// The reservation id a command is about, if any.
    pub fn reservation_id(&self) -> Option<&str> {
        match self {
            Command::Reserve { reservation_id, .. }
            | Command::ReserveGated { reservation_id, .. }
            | Command::Commit { reservation_id }
            | Command::Release { reservation_id }
            | Command::Fulfill { reservation_id }
            | Command::Cancel { reservation_id }
            | Command::CartBegin { reservation_id, .. }
            | Command::CartPrepare { reservation_id, .. }
            | Command::CartDecide { reservation_id, .. }
            | Command::CartFollow { reservation_id, .. }
            | Command::CartFollowed { reservation_id, .. }
            | Command::Locate { reservation_id, .. } => Some(reservation_id),
            Command::Adjust(_) | Command::Split { .. } | Command::Freeze | Command::Thaw { .. } | Command::Merge { .. } | Command::Topology(_) => None,
        }
    }
}

/// At an id's home group: where the one-group reservation under the id
/// lives, so the id is found in one hop and reused ids are caught.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Locator {
    pub group: GroupId,
    /// Log time after which the home forgets it: TTL plus the idempotency
    /// retention window after it was written.
    pub forget_at_ms: u64,
}

/// Which cart record an intent belongs to: the home group and the log index
/// of the record's `CartBegin` there (an id reused after its record was
/// forgotten is another incarnation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct IntentOf {
    pub home: GroupId,
    pub begin_index: u64,
}

/// The state of a cart's home record. `Preparing` until every line group
/// answered; then as a reservation's, or `Aborted` when a line was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum CartState {
    Preparing,
    Pending,
    Committed,
    Released,
    Expired,
    Fulfilled,
    Cancelled,
    Aborted,
}

impl IntentOf {
    /// Audit text of a unit hold that is a cart's intent.
    pub fn audit_reason(self) -> String {
        format!("cart intent, home group {}", self.home)
    }
}

/// Reason on the audit trail when an intent is released because its cart
/// was released, aborted or refused elsewhere.
pub const INTENT_RELEASE_REASON: &str = "cart released by its home record";

impl CartState {
    pub fn is_final(self) -> bool {
        matches!(self, Self::Released | Self::Expired | Self::Fulfilled | Self::Cancelled | Self::Aborted)
    }

    /// The state every line group's intent must reach for this home state:
    /// `None` while preparing (intents are being placed).
    pub fn intent_state(self) -> Option<ReservationState> {
        match self {
            Self::Preparing => None,
            Self::Pending => Some(ReservationState::Pending),
            Self::Committed => Some(ReservationState::Committed),
            Self::Released | Self::Aborted => Some(ReservationState::Released),
            Self::Expired => Some(ReservationState::Expired),
            Self::Fulfilled => Some(ReservationState::Fulfilled),
            Self::Cancelled => Some(ReservationState::Cancelled),
        }
    }

    /// The reservation state clients see: a preparing cart is pending.
    pub fn as_reservation_state(self) -> ReservationState {
        self.intent_state().unwrap_or(ReservationState::Pending)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Preparing => "preparing",
            Self::Aborted => "aborted",
            other => other.as_reservation_state().as_str(),
        }
    }
}

/// One line group's share of a cart, as the home record knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartPart {
    pub lines: Vec<Line>,
    /// The newest intent state this group confirmed (`CartFollowed`); the
    /// home group's own part follows in the same apply.
    pub followed: Option<ReservationState>,
}

/// The home record of a cart: the commit point and the idempotency record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cart {
    pub id: String,
    pub state: CartState,
    /// Every line as requested (order kept).
    pub lines: Vec<Line>,
    pub ttl_ms: u64,
    pub home: GroupId,
    /// Log index of the `CartBegin` in the home group.
    pub begin_index: u64,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    pub finished_at_ms: Option<u64>,
    pub parts: BTreeMap<GroupId, CartPart>,
    /// Why it was aborted for stock.
    pub shortfalls: Vec<Shortfall>,
    /// The part under `home` (the lines held at begin) is no longer in the
    /// group that holds this record: a split put the two apart. It is then
    /// prepared and followed as any other line group's part, instead of
    /// moving in the same apply as the record.
    pub own_apart: bool,
}

impl Cart {
    pub fn of(&self) -> IntentOf {
        IntentOf { home: self.home, begin_index: self.begin_index }
    }

    /// Whether part `group` moves in the same apply as the record: the
    /// home's own lines, while they are held beside it.
    pub fn moves_with_record(&self, group: GroupId) -> bool {
        group == self.home && !self.own_apart
    }

    /// Parts (but the one held beside the record) whose intents have not
    /// yet confirmed the state the home record requires.
    pub fn unfollowed(&self) -> impl Iterator<Item = GroupId> + '_ {
        // Pending needs no follow: an intent holds from its prepare on.
        let want = self.state.intent_state().filter(|s| *s != ReservationState::Pending);
        self.parts.iter().filter(move |(g, part)| !self.moves_with_record(**g) && want.is_some() && part.followed != want).map(|(g, _)| *g)
    }

    /// A result carrying this record (and its reservation view).
    pub fn result(&self, outcome: Outcome, replay: bool) -> CommandResult {
        CommandResult { replay, reservation: Some(self.as_reservation()), cart: Some(self.clone()), ..CommandResult::bare(outcome) }
    }

    /// The answer to a repeated begin (or reserve) of this record: a replay
    /// of its outcome for the same payload, else a conflict.
    pub fn replay(&self, same_payload: bool) -> CommandResult {
        if !same_payload {
            return self.result(Outcome::IdempotencyConflict, false);
        }
        let outcome = if self.state == CartState::Aborted { Outcome::InsufficientStock } else { Outcome::Ok };
        CommandResult { shortfalls: self.shortfalls.clone(), ..self.result(outcome, true) }
    }

    /// Still needs work from someone: undecided, or a line group has not
    /// followed the record's state.
    pub fn is_unsettled(&self) -> bool {
        self.state == CartState::Preparing || self.unfollowed().next().is_some()
    }

    /// The cart as a reservation, for answers.
    pub fn as_reservation(&self) -> Reservation {
        Reservation {
            id: self.id.clone(),
            state: self.state.as_reservation_state(),
            lines: self.lines.clone(),
            ttl_ms: self.ttl_ms,
            created_at_ms: self.created_at_ms,
            expires_at_ms: self.expires_at_ms,
            finished_at_ms: self.finished_at_ms,
            retired: Vec::new(),
        }
    }
}

/// The risk gate's verdict on a reservation, one entry per line in line order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RiskGate {
    pub lines: Vec<LineRisk>,
}

/// The checkout decision for one line, as the gate saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineRisk {
    /// Calibrated probability the units can be fulfilled, in millionths;
    /// `None` when no model answered (the conservative rule decided).
    pub p_sellable_ppm: Option<u32>,
    /// The checkout threshold it was held to, in millionths.
    pub threshold_ppm: u32,
    /// The model version that scored it (empty without a score).
    pub model_version: String,
    /// The rules that refuse this line (empty: the gate lets it through).
    pub refused_by: Vec<String>,
    /// Why the answer was less informed than usual.
    pub degraded: Vec<String>,
}

impl LineRisk {
    pub fn refuses(&self) -> bool {
        !self.refused_by.is_empty()
    }

    /// The score as a probability, if there was one.
    pub fn p_sellable(&self) -> Option<f64> {
        self.p_sellable_ppm.map(|ppm| f64::from(ppm) / 1e6)
    }

    pub fn threshold(&self) -> f64 {
        f64::from(self.threshold_ppm) / 1e6
    }

    /// One line of audit text for the position's change history.
    pub fn describe(&self) -> String {
        let score = match self.p_sellable() {
            Some(p) => format!("p_sellable {p:.3} ({})", self.model_version),
            None => "no score".to_owned(),
        };
        let mut text = format!("risk gate: {score}, threshold {:.3}", self.threshold());
        if !self.degraded.is_empty() {
            text.push_str(&format!(", degraded {}", self.degraded.join("+")));
        }
        if self.refuses() {
            text.push_str(&format!(", refused by {}", self.refused_by.join("+")));
        }
        text
    }
}

/// The payload of one Raft entry: commands from many concurrent clients
/// (group commit), the range epoch they were routed at and the time the
/// leader proposed them at. An empty command list is a clock tick: it only
/// advances log time (and so expires reservations).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub proposed_at_ms: u64,
    /// The epoch of the group's range in the map that routed every command
    /// of the batch (see [`RangeDesc`]).
    pub epoch: u64,
    pub commands: Vec<Command>,
}

impl Batch {
    pub fn new(proposed_at_ms: u64, epoch: u64, commands: Vec<Command>) -> Self {
        Self { proposed_at_ms, epoch, commands }
    }

    /// A clock tick: no commands, so no epoch to check.
    pub fn tick(proposed_at_ms: u64) -> Self {
        Self { proposed_at_ms, epoch: 0, commands: Vec::new() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Ok,
    InsufficientStock,
    IdempotencyConflict,
    NotFound,
    InvalidState,
    StaleEvent,
    InsufficientQuantity,
    /// A gated reserve that the risk gate refused; nothing was applied.
    RiskRefused,
    /// Routed with another epoch of the group's range than the group's
    /// own: nothing was applied; `CommandResult::range` is the group's.
    EpochNotMatch,
    /// A key of the command is outside the group's range: nothing was
    /// applied; `CommandResult::range` is the group's.
    KeyNotInRange,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shortfall {
    pub sku: String,
    pub location: String,
    /// Sum of the requested units on this position.
    pub requested: u64,
    pub atp: u64,
}

/// What applying one command produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResult {
    pub outcome: Outcome,
    /// The stored outcome of an earlier identical command.
    pub replay: bool,
    /// For reservation commands: the reservation after the command (when it
    /// exists).
    pub reservation: Option<Reservation>,
    /// For `Reserve` refused with `InsufficientStock`.
    pub shortfalls: Vec<Shortfall>,
    /// For `Adjust`: the position after the command.
    pub position: Option<Position>,
    /// For commands on a cart's home record: the record after the command.
    pub cart: Option<Cart>,
    /// At an id's home group: the group a one-group reservation under the id
    /// lives in (`Locate`, or a reserve that conflicts with it).
    pub located: Option<GroupId>,
    /// For `EpochNotMatch`, `KeyNotInRange` and `Split`: the group's range
    /// now.
    pub range: Option<RangeDesc>,
    /// For a refused topology command: why.
    pub refusal: Option<String>,
    /// For an applied `Command::Topology`: its answer.
    pub topology: Option<crate::topology::TopologyAnswer>,
    /// For `Freeze` and any command refused by a frozen group: the log index
    /// of its freeze.
    pub frozen_at: Option<u64>,
}

impl CommandResult {
    /// An outcome with nothing attached.
    pub fn bare(outcome: Outcome) -> Self {
        Self {
            outcome,
            replay: false,
            reservation: None,
            shortfalls: Vec::new(),
            position: None,
            cart: None,
            located: None,
            range: None,
            refusal: None,
            topology: None,
            frozen_at: None,
        }
    }
}

/// Parameters of the state machine. Part of the cluster-wide configuration:
/// every replica of a group must use the same values, or apply would diverge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Finished reservations and applied feed events are remembered this long
    /// (log time) so retries are answered as replays.
    pub idempotency_retention_ms: u64,
    /// Audit ring size per position.
    pub recent_changes_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { idempotency_retention_ms: 24 * 60 * 60 * 1000, recent_changes_max: 16 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decay_halves_every_half_life_and_tracks_the_curve_between() {
        assert_eq!(decay(1_000_000, 0, 60_000), 1_000_000);
        assert_eq!(decay(1_000_000, 60_000, 60_000), 500_000);
        assert_eq!(decay(1_000_000, 120_000, 60_000), 250_000);
        assert_eq!(decay(u64::MAX, 64 * 60_000, 60_000), 0);
        for elapsed_ms in (0..300_000).step_by(7_919) {
            let exact = 1e9 * 2f64.powf(-(elapsed_ms as f64) / 60_000.0);
            let fixed = decay(1_000_000_000, elapsed_ms, 60_000) as f64;
            assert!((fixed - exact).abs() <= exact * 1e-3 + 1.0, "at {elapsed_ms} ms: {fixed} vs {exact}");
        }
    }

    #[test]
    fn decayed_counter_adds_after_decaying_and_never_runs_backwards() {
        let mut counter = Decayed::default();
        counter.add(0, 60_000, 10);
        counter.add(60_000, 60_000, 10);
        assert_eq!(counter.units_at(60_000, 60_000), 15.0);
        assert_eq!(counter.units_at(120_000, 60_000), 7.5);
        // A read at an earlier time than the last update sees the current value.
        assert_eq!(counter.units_at(0, 60_000), 15.0);
        counter.add(30_000, 60_000, 1);
        assert_eq!(counter.at_ms, 60_000, "log time never goes back");
        assert_eq!(counter.units_at(60_000, 60_000), 16.0);
    }
}
