//! Step 2, in a line group: `CartPrepare` holds the group's lines for a cart.
//!
//! - Precondition: every line is in this group's range (checked before
//!   proposing); the home record exists (`CartBegin` was applied first).
//! - Effect: the lines fit in ATP: an intent (a pending reservation marked
//!   with its record, no TTL of its own) holds them. They do not fit: a
//!   *tombstone* (a released intent holding nothing) records the refusal, so
//!   that a later repeat of this prepare cannot hold them after the cart was
//!   aborted.
//! - Idempotency: a prepare for an intent of the same record answers from it
//!   (holding: a replay; released or refused: `InvalidState`). A finished
//!   intent of another record under the id gives way, and the new intent
//!   remembers it (`Reservation::retired`): a prepare of a record whose
//!   intent was replaced that way arrives late (a message delayed across
//!   the id's reuse) and holds nothing (`InvalidState`). A live intent, or a
//!   plain reservation under the id, is a conflict.
//! - Recovery: repeating the prepare is always safe, which is how a node
//!   that finds a `Preparing` record decides it.

use crate::inventory::reservation_result;
use crate::inventory::At;
use crate::inventory::Inventory;
use crate::model::CommandResult;
use crate::model::IntentOf;
use crate::model::Line;
use crate::model::Outcome;
use crate::model::Reservation;
use crate::model::ReservationState;
use crate::model::RiskGate;

impl Inventory {
    pub(crate) fn cart_prepare(&mut self, at: At, id: &str, of: IntentOf, lines: &[Line], expires_at_ms: u64, gate: Option<&RiskGate>) -> CommandResult {
        if self.intents.get(id) == Some(&of) {
            let Some(existing) = self.reservations.get(id) else { unreachable!("intent {id} without its reservation") };
            let outcome = if existing.state.is_final() { Outcome::InvalidState } else { Outcome::Ok };
            return reservation_result(outcome, true, existing.clone());
        }
        if self.is_retired(id, of) {
            // A late prepare of an incarnation this group finished and has
            // since replaced: it must hold nothing (its record will never
            // ask this group to follow it again).
            let Some(existing) = self.reservations.get(id) else { unreachable!("intent {id} without its reservation") };
            return reservation_result(Outcome::InvalidState, false, existing.clone());
        }
        let retired = self.forget_finished_intent(id);
        if let Some(existing) = self.reservations.get(id) {
            return reservation_result(Outcome::IdempotencyConflict, false, existing.clone());
        }
        let ttl_ms = expires_at_ms.saturating_sub(at.ms);
        let shortfalls = self.shortfalls(lines);
        if !shortfalls.is_empty() {
            self.tombstone(at, id, of, lines, ReservationState::Released);
            self.remember_retired(id, retired);
            return CommandResult { shortfalls, ..CommandResult::bare(Outcome::InsufficientStock) };
        }
        self.hold(at, id, lines, ttl_ms, expires_at_ms, gate, Some(of));
        self.remember_retired(id, retired);
        let Some(reservation) = self.reservations.get(id) else { unreachable!("intent {id} held without its reservation") };
        reservation_result(Outcome::Ok, false, reservation.clone())
    }

    /// Records an intent that holds nothing, in final state `state`: a
    /// refused prepare, or a release that reached a group before (or
    /// instead of) its prepare.
    pub(crate) fn tombstone(&mut self, at: At, id: &str, of: IntentOf, lines: &[Line], state: ReservationState) -> Reservation {
        debug_assert!(state.is_final());
        let reservation = Reservation {
            id: id.to_owned(),
            state,
            lines: lines.to_vec(),
            ttl_ms: 0,
            created_at_ms: at.ms,
            expires_at_ms: at.ms,
            finished_at_ms: Some(at.ms),
            retired: Vec::new(),
        };
        self.store_reservation(reservation, Some(of))
    }
}
