//! Domain types of the inventory state machine: positions, reservations,
//! adjustments, the commands that enter the Raft log and their outcomes.
//!
//! Everything here is plain data: serde-serializable, ordered collections only
//! (`BTreeMap`), so that the same log always produces the same bytes.

use std::collections::BTreeMap;
use std::collections::VecDeque;

use serde::Deserialize;
use serde::Serialize;

/// Identifies a Raft group (one contiguous SKU range of one region).
pub type GroupId = u32;

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
}

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
}

/// One client command. Commands are validated (see `crate::validate`) before
/// they are proposed; apply still refuses nothing silently.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Reserve { reservation_id: String, lines: Vec<Line>, ttl_ms: u64 },
    Commit { reservation_id: String },
    Release { reservation_id: String },
    Fulfill { reservation_id: String },
    Cancel { reservation_id: String },
    Adjust(Adjustment),
}

/// The payload of one Raft entry: commands from many concurrent clients
/// (group commit) and the time the leader proposed them at. An empty command
/// list is a clock tick: it only advances log time (and so expires
/// reservations).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub proposed_at_ms: u64,
    pub commands: Vec<Command>,
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
