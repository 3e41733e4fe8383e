//! Property tests of the inventory state machine: random operation sequences
//! on a small universe (2 SKUs x 2 locations, 6 reservation ids, a pool of
//! reused event ids, clients retrying earlier commands, time moving forwards
//! and proposals arriving with older times).
//!
//! Every batch is applied three ways: whole to `whole`, whole to a fresh
//! `twin` (determinism), and as a clock tick followed by one single-command
//! batch per command to `stepped`, at the same log index and time. The stepped
//! run lets each command be checked against the exact state it saw; it must
//! end in the same state, with the same results, as the whole batch.

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use storage::inventory::EventRecord;
use storage::inventory::Inventory;
use storage::inventory::InventorySnapshot;
use storage::inventory::Records;
use storage::model::Adjustment;
use storage::model::AdjustmentKind;
use storage::model::Batch;
use storage::model::Command;
use storage::model::CommandResult;
use storage::model::Limits;
use storage::model::Line;
use storage::model::LineRisk;
use storage::model::Outcome;
use storage::model::Position;
use storage::model::PositionKey;
use storage::model::RangeDesc;
use storage::model::Reservation;
use storage::model::ReservationState;
use storage::model::RiskGate;
use storage::model::Shortfall;
use storage::model::FIRST_EPOCH;

const SKUS: [&str; 2] = ["sku-a", "sku-b"];
const LOCATIONS: [&str; 2] = ["dc-1", "dc-2"];
const POSITIONS: usize = 4;
const RESERVATION_IDS: usize = 6;
const POOLED_EVENT_IDS: usize = 6;
const SOURCES: [&str; 2] = ["wms", "seller"];
const TTLS: [u64; 3] = [2_000, 5_000, 15_000];

fn limits() -> Limits {
    Limits { idempotency_retention_ms: 8_000, recent_changes_max: 4 }
}

fn position_key(position: usize) -> PositionKey {
    PositionKey::new(SKUS[position % 2], LOCATIONS[(position / 2) % 2])
}

fn line(position: usize, quantity: u64) -> Line {
    let key = position_key(position);
    Line { sku: key.sku, location: key.location, quantity }
}

fn reservation_id(r: usize) -> String {
    format!("r{r}")
}

/// The cart a reservation id usually carries, so that reusing the id is most
/// often a retry (replay) and sometimes a conflict.
fn canonical_reserve(r: usize) -> Command {
    let lines = match r % RESERVATION_IDS {
        0 => vec![line(0, 1)],
        1 => vec![line(0, 1), line(0, 1)],
        2 => vec![line(1, 2), line(2, 1)],
        3 => vec![line(3, 3)],
        4 => vec![line(0, 2), line(3, 1)],
        _ => vec![line(2, 1), line(2, 2), line(1, 1)],
    };
    Command::Reserve { reservation_id: reservation_id(r), lines, ttl_ms: TTLS[r % TTLS.len()] }
}

/// The adjustment a pooled event id usually carries.
fn canonical_adjust(e: usize) -> Command {
    let (kind, quantity) = [
        (AdjustmentKind::Receipt, 10),
        (AdjustmentKind::Count, 4),
        (AdjustmentKind::Damage, 2),
        (AdjustmentKind::Hold, 1),
        (AdjustmentKind::Receipt, 6),
        (AdjustmentKind::SafetyStock, 1),
    ][e % POOLED_EVENT_IDS];
    adjustment(format!("pool-{e}"), e % POSITIONS, kind, quantity, SOURCES[e % 2], 1 + e as u64)
}

fn adjustment(event_id: String, position: usize, kind: AdjustmentKind, quantity: u64, source: &str, source_seq: u64) -> Command {
    let key = position_key(position);
    Command::Adjust(Adjustment {
        event_id,
        sku: key.sku,
        location: key.location,
        kind,
        quantity,
        reason: format!("{} by {source}", kind.as_str()),
        source: source.to_owned(),
        source_seq,
        observed_at_ms: None,
    })
}

/// One generated client operation, turned into a `Command` when the batch is
/// built (a retry needs the commands issued so far).
#[derive(Debug, Clone)]
enum Op {
    ReserveCanonical(usize),
    /// The canonical cart behind the risk gate; bit i of `refuse` makes the
    /// gate refuse line i.
    ReserveGated(usize, u8),
    Reserve {
        r: usize,
        lines: Vec<(usize, u64)>,
        ttl: usize,
    },
    Commit(usize),
    Release(usize),
    Fulfill(usize),
    Cancel(usize),
    AdjustCanonical(usize),
    /// `pooled`: reuse a pooled event id (likely a conflict); otherwise the
    /// event id is fresh. `seq_lag`: how far behind the source's current
    /// sequence the event is (a delayed scan).
    Adjust {
        pooled: Option<usize>,
        position: usize,
        kind: AdjustmentKind,
        quantity: u64,
        source: usize,
        seq_lag: u64,
    },
    /// Re-sends an earlier command verbatim.
    Retry(Index),
    /// Re-sends one of the last few commands (a client retrying an unknown
    /// outcome).
    RetryRecent(usize),
}

#[derive(Debug, Clone)]
struct GenBatch {
    time_delta_ms: i64,
    ops: Vec<Op>,
}

fn kind_strategy() -> impl Strategy<Value = AdjustmentKind> {
    prop_oneof![
        5 => Just(AdjustmentKind::Receipt),
        1 => Just(AdjustmentKind::Return),
        1 => Just(AdjustmentKind::Damage),
        1 => Just(AdjustmentKind::Shrink),
        2 => Just(AdjustmentKind::Count),
        1 => Just(AdjustmentKind::Hold),
        1 => Just(AdjustmentKind::Unhold),
        1 => Just(AdjustmentKind::SafetyStock),
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let r = 0..RESERVATION_IDS;
    prop_oneof![
        3 => r.clone().prop_map(Op::ReserveCanonical),
        2 => (r.clone(), prop_oneof![2 => Just(0u8), 1 => any::<u8>()]).prop_map(|(r, refuse)| Op::ReserveGated(r, refuse)),
        2 => (r.clone(), prop::collection::vec((0..POSITIONS, 1..=4u64), 1..=3), 0..TTLS.len())
            .prop_map(|(r, lines, ttl)| Op::Reserve { r, lines, ttl }),
        3 => r.clone().prop_map(Op::Commit),
        1 => r.clone().prop_map(Op::Release),
        2 => r.clone().prop_map(Op::Fulfill),
        2 => r.prop_map(Op::Cancel),
        1 => (0..POOLED_EVENT_IDS).prop_map(Op::AdjustCanonical),
        4 => (
            prop::option::weighted(0.15, 0..POOLED_EVENT_IDS),
            0..POSITIONS,
            kind_strategy(),
            0..=12u64,
            0..SOURCES.len(),
            prop_oneof![3 => Just(0u64), 1 => 1..=12u64],
        )
            .prop_map(|(pooled, position, kind, quantity, source, seq_lag)| Op::Adjust {
                pooled,
                position,
                kind,
                quantity,
                source,
                seq_lag,
            }),
        1 => any::<Index>().prop_map(Op::Retry),
        2 => (0..3usize).prop_map(Op::RetryRecent),
    ]
}

fn batches_strategy() -> impl Strategy<Value = Vec<GenBatch>> {
    // Time moves in steps of 250 ms so that log time often lands exactly on
    // an expiry or the end of a retention window.
    let batch = (-16i64..=24, prop::collection::vec(op_strategy(), 0..=4)).prop_map(|(steps, ops)| GenBatch { time_delta_ms: steps * 250, ops });
    prop::collection::vec(batch, 1..=30)
}

/// What the run saw, to prove the generator reaches every path.
#[derive(Debug, Default)]
struct Coverage {
    /// Count per "command outcome", e.g. "reserve Ok (replay)".
    outcomes: BTreeMap<String, usize>,
    expired: usize,
    pruned: usize,
    short: usize,
    backwards_proposals: usize,
}

/// Records as a storage engine would hold them after applying `take_dirty`.
#[derive(Debug, Default)]
struct Persisted {
    positions: BTreeMap<PositionKey, Position>,
    reservations: BTreeMap<String, Reservation>,
    events: BTreeMap<String, EventRecord>,
}

struct Harness {
    whole: Inventory,
    twin: Inventory,
    stepped: Inventory,
    persisted: Persisted,
    /// First successful (non-replay) reserve result per live id.
    original_reserves: BTreeMap<String, Reservation>,
    /// First outcome per live event id.
    original_adjusts: BTreeMap<String, Outcome>,
    history: Vec<Command>,
    log_index: u64,
    proposed_at_ms: u64,
    coverage: Coverage,
}

impl Harness {
    fn new() -> Self {
        Self {
            whole: Inventory::new(limits()),
            twin: Inventory::new(limits()),
            stepped: Inventory::new(limits()),
            persisted: Persisted::default(),
            original_reserves: BTreeMap::new(),
            original_adjusts: BTreeMap::new(),
            history: Vec::new(),
            log_index: 0,
            proposed_at_ms: 10_000,
            coverage: Coverage::default(),
        }
    }

    fn build_batch(&mut self, generated: &GenBatch) -> Batch {
        let proposed_at_ms = self.proposed_at_ms.saturating_add_signed(generated.time_delta_ms);
        if proposed_at_ms < self.whole.log_time_ms() {
            self.coverage.backwards_proposals += 1;
        }
        self.proposed_at_ms = proposed_at_ms;
        let mut commands = Vec::new();
        for (i, op) in generated.ops.iter().enumerate() {
            let command = match op {
                Op::ReserveCanonical(r) => canonical_reserve(*r),
                Op::ReserveGated(r, refuse) => {
                    let Command::Reserve { reservation_id, lines, ttl_ms } = canonical_reserve(*r) else { unreachable!("canonical reserves are reserves") };
                    let verdicts = (0..lines.len())
                        .map(|i| LineRisk {
                            p_sellable_ppm: Some(if refuse & (1 << i) != 0 { 100_000 } else { 990_000 }),
                            threshold_ppm: 900_000,
                            model_version: "v1".to_owned(),
                            refused_by: if refuse & (1 << i) != 0 { vec!["MODEL_RISK".to_owned()] } else { Vec::new() },
                            degraded: Vec::new(),
                        })
                        .collect();
                    Command::ReserveGated { reservation_id, lines, ttl_ms, gate: RiskGate { lines: verdicts } }
                }
                Op::Reserve { r, lines, ttl } => Command::Reserve {
                    reservation_id: reservation_id(*r),
                    lines: lines.iter().map(|(position, quantity)| line(*position, *quantity)).collect(),
                    ttl_ms: TTLS[*ttl],
                },
                Op::Commit(r) => Command::Commit { reservation_id: reservation_id(*r) },
                Op::Release(r) => Command::Release { reservation_id: reservation_id(*r) },
                Op::Fulfill(r) => Command::Fulfill { reservation_id: reservation_id(*r) },
                Op::Cancel(r) => Command::Cancel { reservation_id: reservation_id(*r) },
                Op::AdjustCanonical(e) => canonical_adjust(*e),
                Op::Adjust { pooled, position, kind, quantity, source, seq_lag } => {
                    let event_id = match pooled {
                        Some(e) => format!("pool-{e}"),
                        None => format!("ev-{}-{i}", self.log_index + 1),
                    };
                    // Sources number their events in order; a lag makes it a
                    // delayed one.
                    let current_seq = (self.log_index + 1) * 8 + i as u64;
                    let source_seq = current_seq.saturating_sub(*seq_lag).max(1);
                    // Stock arrives in bigger steps than it is held back or
                    // lost, so that reservations often fit.
                    let quantity = match kind {
                        AdjustmentKind::Receipt | AdjustmentKind::Return | AdjustmentKind::Count => *quantity,
                        _ => *quantity % 4,
                    };
                    adjustment(event_id, *position, *kind, quantity, SOURCES[*source], source_seq)
                }
                Op::Retry(index) => {
                    if self.history.is_empty() {
                        continue;
                    }
                    self.history[index.index(self.history.len())].clone()
                }
                Op::RetryRecent(back) => {
                    let Some(position) = self.history.len().checked_sub(1 + back) else {
                        continue;
                    };
                    self.history[position].clone()
                }
            };
            self.history.push(command.clone());
            commands.push(command);
        }
        Batch::new(proposed_at_ms, FIRST_EPOCH, commands)
    }

    fn run(&mut self, generated: &[GenBatch]) -> Result<(), TestCaseError> {
        // Opening stock, so that reservations have something to take.
        let opening = (0..POSITIONS).map(|p| adjustment(format!("opening-{p}"), p, AdjustmentKind::Receipt, 8, "dock", 1)).collect();
        self.apply(&Batch::new(self.proposed_at_ms, FIRST_EPOCH, opening))?;
        for generated_batch in generated {
            let batch = self.build_batch(generated_batch);
            self.apply(&batch)?;
        }
        Ok(())
    }

    fn apply(&mut self, batch: &Batch) -> Result<(), TestCaseError> {
        self.log_index += 1;
        let log_index = self.log_index;
        let results = self.whole.apply_batch(log_index, batch);
        prop_assert_eq!(results.len(), batch.commands.len());
        let twin_results = self.twin.apply_batch(log_index, batch);
        prop_assert_eq!(&twin_results, &results);

        // The stepped run: the clock tick first, then one command at a time.
        let before_tick = self.stepped.clone();
        let tick = Batch::new(batch.proposed_at_ms, FIRST_EPOCH, Vec::new());
        prop_assert!(self.stepped.apply_batch(log_index, &tick).is_empty());
        self.check_tick(&before_tick, batch.proposed_at_ms)?;
        let mut stepped_results = Vec::new();
        for command in &batch.commands {
            let pre = self.stepped.clone();
            let single = Batch::new(batch.proposed_at_ms, FIRST_EPOCH, vec![command.clone()]);
            let mut result = self.stepped.apply_batch(log_index, &single);
            prop_assert_eq!(result.len(), 1);
            let result = result.remove(0);
            self.check_command(&pre, command, &result)?;
            self.record_outcome(command, &result);
            stepped_results.push(result);
        }
        prop_assert_eq!(&stepped_results, &results, "a batch applies like its commands one by one");
        prop_assert!(self.stepped == self.whole, "stepped and whole runs diverged");

        self.check_after_batch()
    }

    /// (d) expiry frees exactly the expired units; pruning forgets exactly
    /// what left the retention window; log time never goes backwards.
    fn check_tick(&mut self, pre: &Inventory, proposed_at_ms: u64) -> Result<(), TestCaseError> {
        let post = &self.stepped;
        let now = pre.log_time_ms().max(proposed_at_ms);
        prop_assert_eq!(post.log_time_ms(), now);
        prop_assert!(post.log_time_ms() >= pre.log_time_ms());
        let retention = limits().idempotency_retention_ms;

        let mut freed: BTreeMap<PositionKey, u64> = BTreeMap::new();
        for (id, before) in pre.reservations() {
            let after = post.reservation(id);
            let pending = before.state == ReservationState::Pending;
            if pending && before.expires_at_ms <= now {
                let after = after.ok_or_else(|| TestCaseError::fail(format!("{id} vanished")))?;
                prop_assert_eq!(after.state, ReservationState::Expired);
                prop_assert_eq!(after.finished_at_ms, Some(now));
                for line in &before.lines {
                    *freed.entry(line.key()).or_default() += line.quantity;
                }
                self.coverage.expired += 1;
            } else if before.state.is_final() && before.finished_at_ms.unwrap_or(0) + retention <= now {
                prop_assert_eq!(after, None, "{} outlived its retention", id);
                self.coverage.pruned += 1;
            } else {
                prop_assert_eq!(after, Some(before), "{} changed on a tick", id);
            }
        }
        prop_assert!(post.reservation_count() <= pre.reservation_count());
        for (event_id, before) in pre.events() {
            let expected = (before.applied_at_ms + retention > now).then_some(before);
            prop_assert_eq!(post.event(event_id), expected);
        }
        prop_assert!(post.event_count() <= pre.event_count());
        for (key, before) in pre.positions() {
            let after = post.position(key).ok_or_else(|| TestCaseError::fail("position vanished"))?;
            let freed = freed.remove(key).unwrap_or(0);
            prop_assert_eq!(after.reserved, before.reserved - freed, "{:?}", key);
            prop_assert_eq!(
                (after.on_hand, after.committed, after.held, after.safety_stock),
                (before.on_hand, before.committed, before.held, before.safety_stock)
            );
        }
        prop_assert!(freed.is_empty(), "units freed on missing positions: {:?}", freed);
        prop_assert_eq!(post.position_count(), pre.position_count());
        Ok(())
    }

    /// Checks one command's result and effect against the state it saw.
    fn check_command(&self, pre: &Inventory, command: &Command, result: &CommandResult) -> Result<(), TestCaseError> {
        let post = &self.stepped;
        let now = post.log_time_ms();
        match command {
            Command::Reserve { reservation_id, lines, ttl_ms } | Command::ReserveGated { reservation_id, lines, ttl_ms, .. } => {
                let gate_refuses = matches!(command, Command::ReserveGated { gate, .. } if gate.lines.iter().any(LineRisk::refuses));
                if let Some(existing) = pre.reservation(reservation_id) {
                    prop_assert_eq!(result.reservation.as_ref(), Some(existing));
                    if existing.lines == *lines && existing.ttl_ms == *ttl_ms {
                        // (c) a retry answers with the original outcome.
                        prop_assert_eq!((result.outcome, result.replay), (Outcome::Ok, true));
                        let original = self.original_reserves.get(reservation_id).ok_or_else(|| TestCaseError::fail("replay of an unknown original"))?;
                        prop_assert_eq!(
                            (&existing.lines, existing.ttl_ms, existing.created_at_ms, existing.expires_at_ms),
                            (&original.lines, original.ttl_ms, original.created_at_ms, original.expires_at_ms)
                        );
                    } else {
                        prop_assert_eq!((result.outcome, result.replay), (Outcome::IdempotencyConflict, false));
                    }
                    prop_assert!(post == pre, "a replay or conflict changed state");
                    return Ok(());
                }
                if gate_refuses {
                    // (d) a refusing gate refuses the whole cart and changes nothing.
                    prop_assert_eq!((result.outcome, result.replay, result.reservation.as_ref()), (Outcome::RiskRefused, false, None));
                    prop_assert!(post == pre, "a gate refusal changed state");
                    return Ok(());
                }
                let mut totals: BTreeMap<PositionKey, u64> = BTreeMap::new();
                for line in lines {
                    *totals.entry(line.key()).or_default() += line.quantity;
                }
                let shortfalls: Vec<Shortfall> = totals
                    .iter()
                    .filter_map(|(key, &requested)| {
                        let atp = pre.position(key).map_or(0, Position::atp);
                        (requested > atp).then(|| Shortfall { sku: key.sku.clone(), location: key.location.clone(), requested, atp })
                    })
                    .collect();
                if !shortfalls.is_empty() {
                    prop_assert_eq!(result.outcome, Outcome::InsufficientStock);
                    prop_assert_eq!(&result.shortfalls, &shortfalls);
                    prop_assert!(post == pre, "a refused reserve changed state");
                    return Ok(());
                }
                prop_assert_eq!((result.outcome, result.replay), (Outcome::Ok, false));
                let stored = post.reservation(reservation_id).ok_or_else(|| TestCaseError::fail("reservation not stored"))?;
                prop_assert_eq!(result.reservation.as_ref(), Some(stored));
                prop_assert_eq!(stored.state, ReservationState::Pending);
                prop_assert_eq!((stored.created_at_ms, stored.expires_at_ms), (now, now + ttl_ms));
                for (key, total) in &totals {
                    let before = pre.position(key).map_or(0, |position| position.reserved);
                    let after = post.position(key).ok_or_else(|| TestCaseError::fail("no position"))?;
                    prop_assert_eq!(after.reserved, before + total);
                    // (b) no oversell.
                    prop_assert!(after.reserved + after.committed + after.safety_stock + after.held <= after.on_hand, "oversold {:?}: {:?}", key, after);
                }
                self.check_untouched_positions(pre, &totals)?;
            }
            Command::Commit { reservation_id }
            | Command::Release { reservation_id }
            | Command::Fulfill { reservation_id }
            | Command::Cancel { reservation_id } => {
                use ReservationState::*;
                let (from, to) = match command {
                    Command::Commit { .. } => (Pending, Committed),
                    Command::Release { .. } => (Pending, Released),
                    Command::Fulfill { .. } => (Committed, Fulfilled),
                    _ => (Committed, Cancelled),
                };
                let Some(existing) = pre.reservation(reservation_id) else {
                    prop_assert_eq!(result.outcome, Outcome::NotFound);
                    prop_assert!(post == pre);
                    return Ok(());
                };
                if existing.state != from {
                    let expected = if existing.state == to { (Outcome::Ok, true) } else { (Outcome::InvalidState, false) };
                    prop_assert_eq!((result.outcome, result.replay), expected);
                    prop_assert_eq!(result.reservation.as_ref(), Some(existing));
                    prop_assert!(post == pre);
                    return Ok(());
                }
                prop_assert_eq!((result.outcome, result.replay), (Outcome::Ok, false));
                let after = post.reservation(reservation_id).ok_or_else(|| TestCaseError::fail("reservation vanished"))?;
                prop_assert_eq!((after.state, after.finished_at_ms), (to, Some(now)));
                let mut totals: BTreeMap<PositionKey, u64> = BTreeMap::new();
                for line in &existing.lines {
                    *totals.entry(line.key()).or_default() += line.quantity;
                }
                for (key, quantity) in &totals {
                    let b = pre.position(key).ok_or_else(|| TestCaseError::fail("no position"))?;
                    let a = post.position(key).ok_or_else(|| TestCaseError::fail("no position"))?;
                    let expected = match to {
                        Committed => (b.on_hand, b.reserved - quantity, b.committed + quantity),
                        Released => (b.on_hand, b.reserved - quantity, b.committed),
                        Fulfilled => (b.on_hand - quantity.min(&b.on_hand), b.reserved, b.committed - quantity),
                        _ => (b.on_hand, b.reserved, b.committed - quantity),
                    };
                    prop_assert_eq!((a.on_hand, a.reserved, a.committed), expected, "{:?}", to);
                }
                self.check_untouched_positions(pre, &totals)?;
            }
            Command::Adjust(adjustment) => {
                let key = PositionKey::new(adjustment.sku.clone(), adjustment.location.clone());
                let before = pre.position(&key).cloned().unwrap_or_default();
                let after = post.position(&key).cloned().unwrap_or_default();
                prop_assert_eq!(result.position.as_ref(), Some(&after));
                if let Some(record) = pre.event(&adjustment.event_id) {
                    if record.adjustment == *adjustment {
                        prop_assert_eq!((result.outcome, result.replay), (record.outcome, true));
                        prop_assert_eq!(Some(&result.outcome), self.original_adjusts.get(&adjustment.event_id), "a replay returns the original outcome");
                    } else {
                        prop_assert_eq!((result.outcome, result.replay), (Outcome::IdempotencyConflict, false));
                    }
                    prop_assert!(post == pre);
                    return Ok(());
                }
                prop_assert!(!result.replay);
                let recorded = post.event(&adjustment.event_id).ok_or_else(|| TestCaseError::fail("event not recorded"))?;
                prop_assert_eq!((&recorded.adjustment, recorded.outcome), (adjustment, result.outcome));
                let last_seq = before.source_seqs.get(&adjustment.source).copied().unwrap_or(0);
                if adjustment.source_seq <= last_seq {
                    // (e) a delayed scan never changes the position.
                    prop_assert_eq!(result.outcome, Outcome::StaleEvent);
                    prop_assert_eq!(&after, &before);
                    return Ok(());
                }
                let q = adjustment.quantity;
                let planned = match adjustment.kind {
                    AdjustmentKind::Receipt | AdjustmentKind::Return => Some((before.on_hand + q, before.held, before.safety_stock)),
                    AdjustmentKind::Damage | AdjustmentKind::Shrink => before.on_hand.checked_sub(q).map(|on_hand| (on_hand, before.held, before.safety_stock)),
                    AdjustmentKind::Count => Some((q, before.held, before.safety_stock)),
                    AdjustmentKind::Hold => Some((before.on_hand, before.held + q, before.safety_stock)),
                    AdjustmentKind::Unhold => before.held.checked_sub(q).map(|held| (before.on_hand, held, before.safety_stock)),
                    AdjustmentKind::SafetyStock => Some((before.on_hand, before.held, q)),
                };
                match planned {
                    None => {
                        prop_assert_eq!(result.outcome, Outcome::InsufficientQuantity);
                        prop_assert_eq!(&after, &before);
                    }
                    Some(planned) => {
                        prop_assert_eq!(result.outcome, Outcome::Ok);
                        prop_assert_eq!((after.on_hand, after.held, after.safety_stock), planned);
                        prop_assert_eq!((after.reserved, after.committed), (before.reserved, before.committed));
                        prop_assert_eq!(after.source_seqs.get(&adjustment.source), Some(&adjustment.source_seq));
                        let change = after.recent_changes.back().ok_or_else(|| TestCaseError::fail("no change recorded"))?;
                        prop_assert_eq!(&change.kind, adjustment.kind.as_str());
                        prop_assert_eq!(change.on_hand_delta, after.on_hand as i64 - before.on_hand as i64);
                    }
                }
                self.check_untouched_positions(pre, &BTreeMap::from([(key, 0)]))?;
            }
            Command::CartBegin { .. }
            | Command::CartPrepare { .. }
            | Command::CartDecide { .. }
            | Command::CartFollow { .. }
            | Command::CartFollowed { .. }
            | Command::Locate { .. }
            | Command::Split { .. }
            | Command::Freeze
            | Command::Thaw { .. }
            | Command::Merge { .. }
            | Command::Topology(_) => {}
        }
        Ok(())
    }

    /// Positions a command does not name are left exactly as they were.
    fn check_untouched_positions(&self, pre: &Inventory, touched: &BTreeMap<PositionKey, u64>) -> Result<(), TestCaseError> {
        for (key, before) in pre.positions() {
            if !touched.contains_key(key) {
                prop_assert_eq!(self.stepped.position(key), Some(before));
            }
        }
        Ok(())
    }

    fn record_outcome(&mut self, command: &Command, result: &CommandResult) {
        let command_kind = match command {
            Command::Reserve { .. } => "reserve",
            Command::ReserveGated { .. } => "reserve-gated",
            Command::Commit { .. } => "commit",
            Command::Release { .. } => "release",
            Command::Fulfill { .. } => "fulfill",
            Command::Cancel { .. } => "cancel",
            Command::Adjust(_) => "adjust",
            // Carts across groups have their own property test (prop_carts).
            Command::CartBegin { .. }
            | Command::CartPrepare { .. }
            | Command::CartDecide { .. }
            | Command::CartFollow { .. }
            | Command::CartFollowed { .. }
            | Command::Locate { .. } => "cart",
            Command::Split { .. } | Command::Freeze | Command::Thaw { .. } | Command::Merge { .. } => "split-merge",
            Command::Topology(_) => "topology",
        };
        let replay = if result.replay { " (replay)" } else { "" };
        *self.coverage.outcomes.entry(format!("{command_kind} {:?}{replay}", result.outcome)).or_default() += 1;
        match command {
            Command::Reserve { reservation_id, .. } | Command::ReserveGated { reservation_id, .. } if result.outcome == Outcome::Ok && !result.replay => {
                if let Some(reservation) = &result.reservation {
                    self.original_reserves.insert(reservation_id.clone(), reservation.clone());
                }
            }
            Command::Adjust(adjustment) if !result.replay && result.outcome != Outcome::IdempotencyConflict => {
                self.original_adjusts.insert(adjustment.event_id.clone(), result.outcome);
            }
            _ => {}
        }
    }

    fn check_after_batch(&mut self) -> Result<(), TestCaseError> {
        // (a) conservation, computed independently of the state machine.
        let mut reserved: BTreeMap<PositionKey, u64> = BTreeMap::new();
        let mut committed: BTreeMap<PositionKey, u64> = BTreeMap::new();
        for (_, reservation) in self.whole.reservations() {
            let sums = match reservation.state {
                ReservationState::Pending => &mut reserved,
                ReservationState::Committed => &mut committed,
                _ => continue,
            };
            for line in &reservation.lines {
                *sums.entry(line.key()).or_default() += line.quantity;
            }
        }
        for (key, position) in self.whole.positions() {
            prop_assert_eq!(position.reserved, reserved.remove(key).unwrap_or(0), "reserved of {:?}", key);
            prop_assert_eq!(position.committed, committed.remove(key).unwrap_or(0), "committed of {:?}", key);
            prop_assert!(position.recent_changes.len() <= limits().recent_changes_max);
        }
        prop_assert!(reserved.is_empty() && committed.is_empty(), "units held on missing positions");
        prop_assert_eq!(self.whole.check_invariants(), Ok(()));
        self.coverage.short += self.whole.positions().filter(|(_, position)| position.is_short()).count();

        // (g) determinism: same log, same bytes.
        let snapshot = self.whole.to_snapshot();
        let bytes = bincode::serialize(&snapshot).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let twin_bytes = bincode::serialize(&self.twin.to_snapshot()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(bytes == twin_bytes, "two replicas diverged");

        // (f) snapshot -> bytes -> state -> bytes.
        let decoded: InventorySnapshot = bincode::deserialize(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let restored = Inventory::from_snapshot(limits(), decoded);
        prop_assert!(restored == self.whole, "snapshot restore differs");
        let again = bincode::serialize(&restored.to_snapshot()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(again == bytes, "re-serialised snapshot differs");

        // (f) incremental persistence: dirty records + load give the same state.
        let dirty = self.whole.take_dirty();
        for (key, position) in dirty.positions {
            match position {
                Some(position) => self.persisted.positions.insert(key, position),
                None => self.persisted.positions.remove(&key),
            };
        }
        for (id, reservation) in dirty.reservations {
            match reservation {
                Some(reservation) => self.persisted.reservations.insert(id, reservation),
                None => {
                    self.original_reserves.remove(&id);
                    self.persisted.reservations.remove(&id)
                }
            };
        }
        for (event_id, record) in dirty.events {
            match record {
                Some(record) => self.persisted.events.insert(event_id, record),
                None => {
                    self.original_adjusts.remove(&event_id);
                    self.persisted.events.remove(&event_id)
                }
            };
        }
        let records = Records {
            positions: self.persisted.positions.clone().into_iter().collect(),
            reservations: self.persisted.reservations.clone().into_iter().collect(),
            events: self.persisted.events.clone().into_iter().collect(),
            ..Records::default()
        };
        let loaded = Inventory::load(limits(), RangeDesc::whole(0), self.whole.log_time_ms(), self.whole.last_applied_index(), records);
        prop_assert!(loaded == self.whole, "state loaded from dirty records differs");
        prop_assert!(self.whole.take_dirty().is_empty());
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn random_operation_sequences_keep_the_invariants(generated in batches_strategy()) {
        Harness::new().run(&generated)?;
    }
}

/// The generator reaches every outcome and every time-driven path, so the
/// properties above are not vacuous.
#[test]
fn generated_sequences_cover_every_outcome() {
    let mut runner = TestRunner::deterministic();
    let strategy = batches_strategy();
    let mut coverage = Coverage::default();
    for _ in 0..64 {
        let generated = strategy.new_tree(&mut runner).expect("generate a sequence").current();
        let mut harness = Harness::new();
        harness.run(&generated).expect("properties hold");
        for (outcome, count) in harness.coverage.outcomes {
            *coverage.outcomes.entry(outcome).or_default() += count;
        }
        coverage.expired += harness.coverage.expired;
        coverage.pruned += harness.coverage.pruned;
        coverage.short += harness.coverage.short;
        coverage.backwards_proposals += harness.coverage.backwards_proposals;
    }
    // Every outcome of every command, replays included.
    for expected in [
        "reserve Ok",
        "reserve Ok (replay)",
        "reserve InsufficientStock",
        "reserve IdempotencyConflict",
        "reserve-gated Ok",
        "reserve-gated Ok (replay)",
        "reserve-gated RiskRefused",
        "reserve-gated InsufficientStock",
        "commit Ok",
        "commit Ok (replay)",
        "commit NotFound",
        "commit InvalidState",
        "release Ok",
        "release Ok (replay)",
        "release InvalidState",
        "fulfill Ok",
        "fulfill Ok (replay)",
        "fulfill InvalidState",
        "cancel Ok",
        "cancel Ok (replay)",
        "cancel InvalidState",
        "adjust Ok",
        "adjust Ok (replay)",
        "adjust IdempotencyConflict",
        "adjust StaleEvent",
        "adjust StaleEvent (replay)",
        "adjust InsufficientQuantity",
    ] {
        assert!(coverage.outcomes.get(expected).is_some_and(|count| *count > 0), "{expected} never produced: {coverage:#?}");
    }
    assert!(coverage.expired > 0, "{coverage:?}");
    assert!(coverage.pruned > 0, "{coverage:?}");
    assert!(coverage.short > 0, "{coverage:?}");
    assert!(coverage.backwards_proposals > 0, "{coverage:?}");
}
