//! Step 1, in the home group: `CartBegin` creates the home record.
//!
//! - Precondition: the command is applied in the id's home group (the router
//!   and the peer plane check it); every line is in exactly one part.
//! - Effect: a new record `Preparing`, expiring at log time + TTL; the home
//!   group's own lines are held in the same apply as an intent. If the own
//!   lines do not fit, nothing is stored (as a refused plain reserve).
//! - Idempotency: the same id and payload is a replay of the record (the
//!   coordinator then repeats the prepares, which are replays too); another
//!   payload, a plain reservation under the id, or a locator naming
//!   another group (`locate`), is a conflict. An aborted
//!   record that every line group followed gives way to a new attempt.
//! - Recovery: a coordinator that dies after this step leaves a `Preparing`
//!   record; it expires at its TTL, or a later request decides it by
//!   repeating the prepares.

use std::collections::BTreeMap;

use crate::inventory::reservation_result;
use crate::inventory::At;
use crate::inventory::Inventory;
use crate::model::Cart;
use crate::model::CartPart;
use crate::model::CartState;
use crate::model::CommandResult;
use crate::model::GroupId;
use crate::model::IntentOf;
use crate::model::Line;
use crate::model::Outcome;
use crate::model::ReservationState;
use crate::model::RiskGate;

impl Inventory {
    pub(crate) fn cart_begin(
        &mut self,
        at: At,
        id: &str,
        lines: &[Line],
        ttl_ms: u64,
        (home, parts): (GroupId, &BTreeMap<GroupId, Vec<Line>>),
        own_gate: Option<&RiskGate>,
    ) -> CommandResult {
        if let Some(cart) = self.carts.get(id) {
            let same = cart.lines == lines && cart.ttl_ms == ttl_ms;
            let retry_allowed = same && cart.state == CartState::Aborted && cart.unfollowed().next().is_none();
            if !retry_allowed {
                return cart.replay(same);
            }
            self.forget_cart(id);
        }
        if let Some(conflict) = self.located_elsewhere(id) {
            return conflict;
        }
        let finished_intent = self.intents.contains_key(id) && self.reservations.get(id).is_some_and(|r| r.state.is_final());
        if let Some(existing) = self.reservations.get(id).filter(|_| !finished_intent) {
            return reservation_result(Outcome::IdempotencyConflict, false, existing.clone());
        }
        let own = parts.get(&home);
        if let Some(own) = own {
            let shortfalls = self.shortfalls(own);
            if !shortfalls.is_empty() {
                return CommandResult { shortfalls, ..CommandResult::bare(Outcome::InsufficientStock) };
            }
        }
        // A finished intent of an earlier record gives way, remembered by
        // the new one.
        let retired = self.forget_finished_intent(id);
        let expires_at_ms = at.ms.saturating_add(ttl_ms);
        let of = IntentOf { home, begin_index: at.log_index };
        let cart = Cart {
            id: id.to_owned(),
            state: CartState::Preparing,
            lines: lines.to_vec(),
            ttl_ms,
            home,
            begin_index: at.log_index,
            created_at_ms: at.ms,
            expires_at_ms,
            finished_at_ms: None,
            parts: parts
                .iter()
                .map(|(group, lines)| {
                    let followed = (*group == home).then_some(ReservationState::Pending);
                    (*group, CartPart { lines: lines.clone(), followed })
                })
                .collect(),
            shortfalls: Vec::new(),
            own_apart: false,
        };
        if let Some(own) = own {
            self.hold(at, id, own, ttl_ms, expires_at_ms, own_gate, Some(of));
            self.remember_retired(id, retired);
        }
        self.cart_expiry.insert((expires_at_ms, id.to_owned()));
        self.carts.insert(id.to_owned(), cart.clone());
        self.note_unsettled(id);
        self.dirty_carts.insert(id.to_owned());
        cart.result(Outcome::Ok, false)
    }

    /// Drops a home record (and its indexes) so the id can be used again.
    pub(crate) fn forget_cart(&mut self, id: &str) {
        if let Some(cart) = self.carts.remove(id) {
            self.cart_expiry.remove(&(cart.expires_at_ms, id.to_owned()));
            self.cart_finished.remove(&(cart.finished_at_ms.unwrap_or(cart.created_at_ms), id.to_owned()));
            self.cart_unsettled.remove(id);
            self.dirty_carts.insert(id.to_owned());
        }
    }
}
