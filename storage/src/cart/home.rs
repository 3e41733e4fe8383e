//! The home record's own transitions: a client's commit, release, fulfill
//! or cancel, and TTL expiry, all decided in the home group's log.
//!
//! - Commit: `Pending -> Committed`. A `Preparing` record answers
//!   `InvalidState` (state preparing): the caller decides it first (repeats
//!   the prepares, then step 3) and commits again.
//! - Release: `Pending | Preparing -> Released`. Releasing a preparing cart
//!   is safe: every line group follows to released, and a prepare that
//!   arrives later finds the tombstone.
//! - Fulfill, cancel: `Committed -> Fulfilled | Cancelled`.
//! - Expiry: a `Preparing` or `Pending` record whose `expires_at_ms` is at or
//!   before the home's log time becomes `Expired` at the start of the next
//!   applied entry, as a plain reservation does.
//! - Every transition moves the home's own intent in the same apply, while
//!   it is held beside the record; the other line groups follow (step 4),
//!   driven by the caller and, if it dies, by the home group's leader. Once
//!   a split has put the own intent in another group (`Cart::own_apart`),
//!   it follows as theirs do.
//! - An aborted record answers a client as a refused reserve does: not found.

use std::collections::BTreeSet;

use crate::inventory::At;
use crate::inventory::Inventory;
use crate::model::Cart;
use crate::model::CartState;
use crate::model::CommandResult;
use crate::model::Outcome;
use crate::model::ReservationState;

impl Inventory {
    pub(crate) fn cart_transition(&mut self, at: At, id: &str, to: ReservationState) -> CommandResult {
        let Some(cart) = self.carts.get(id) else { return CommandResult::bare(Outcome::NotFound) };
        let target = match to {
            ReservationState::Committed => CartState::Committed,
            ReservationState::Released => CartState::Released,
            ReservationState::Fulfilled => CartState::Fulfilled,
            ReservationState::Cancelled => CartState::Cancelled,
            ReservationState::Pending | ReservationState::Expired => return cart.result(Outcome::InvalidState, false),
        };
        let allowed = match target {
            CartState::Committed => cart.state == CartState::Pending,
            CartState::Released => matches!(cart.state, CartState::Pending | CartState::Preparing),
            _ => cart.state == CartState::Committed,
        };
        if cart.state == CartState::Aborted {
            return CommandResult::bare(Outcome::NotFound);
        }
        if cart.state == target {
            return cart.result(Outcome::Ok, true);
        }
        if !allowed {
            return cart.result(Outcome::InvalidState, false);
        }
        self.set_cart_state(at, id, target);
        match self.carts.get(id) {
            Some(cart) => cart.result(Outcome::Ok, false),
            None => unreachable!("cart {id} vanished during apply"),
        }
    }

    /// Changes a record's state and keeps everything derived from it: the
    /// home's own intent, the expiry and retention indexes.
    pub(crate) fn set_cart_state(&mut self, at: At, id: &str, state: CartState) {
        let Some(cart) = self.carts.get_mut(id) else { return };
        let before = cart.state;
        cart.state = state;
        if state != CartState::Pending {
            cart.finished_at_ms = Some(at.ms);
        }
        let want = state.intent_state();
        let home = cart.home;
        let beside = cart.moves_with_record(home);
        let own = cart.parts.get_mut(&home).filter(|_| beside).map(|part| {
            part.followed = want;
        });
        let expires_at_ms = cart.expires_at_ms;
        let done = state.is_final() && cart.unfollowed().next().is_none();
        let finished_at_ms = cart.finished_at_ms.unwrap_or(at.ms);
        let live = |s: CartState| matches!(s, CartState::Preparing | CartState::Pending);
        if live(before) && !live(state) {
            self.cart_expiry.remove(&(expires_at_ms, id.to_owned()));
        }
        if done {
            self.cart_finished.insert((finished_at_ms, id.to_owned()));
        }
        if let (Some(()), Some(want)) = (own, want) {
            let moved = self.follow_intent(at, id, want);
            debug_assert!(moved.is_some(), "the home's own intent of {id} cannot follow to {want:?}");
        }
        self.note_unsettled(id);
        self.dirty_carts.insert(id.to_owned());
    }

    /// Keeps `id`'s membership of the unsettled index true to its record.
    pub(crate) fn note_unsettled(&mut self, id: &str) {
        if self.carts.get(id).is_some_and(Cart::is_unsettled) {
            self.cart_unsettled.insert(id.to_owned());
        } else {
            self.cart_unsettled.remove(id);
        }
    }

    /// Puts a loaded record in the indexes its state calls for.
    pub(crate) fn index_cart(&mut self, cart: &Cart) {
        if matches!(cart.state, CartState::Preparing | CartState::Pending) {
            self.cart_expiry.insert((cart.expires_at_ms, cart.id.clone()));
        }
        if cart.state.is_final() && cart.unfollowed().next().is_none() {
            self.cart_finished.insert((cart.finished_at_ms.unwrap_or(cart.created_at_ms), cart.id.clone()));
        }
        if cart.is_unsettled() {
            self.cart_unsettled.insert(cart.id.clone());
        }
    }

    /// Expires every preparing or pending record whose TTL has passed.
    pub(crate) fn expire_carts(&mut self, at: At) {
        while self.cart_expiry.first().is_some_and(|(expires_at_ms, _)| *expires_at_ms <= at.ms) {
            let Some((_, id)) = self.cart_expiry.pop_first() else { break };
            self.set_cart_state(at, &id, CartState::Expired);
        }
    }

    /// Forgets final records that every line group followed, once the
    /// retention window has passed.
    pub(crate) fn prune_carts(&mut self, now_ms: u64) {
        let retention_ms = self.limits().idempotency_retention_ms;
        while self.cart_finished.first().is_some_and(|(at_ms, _)| at_ms.saturating_add(retention_ms) <= now_ms) {
            let Some((_, id)) = self.cart_finished.pop_first() else { break };
            self.carts.remove(&id);
            self.cart_unsettled.remove(&id);
            self.dirty_carts.insert(id);
        }
    }

    /// Home records and their indexes agree; the home's own intent, while
    /// it is held beside its record, is in the state the record asks for.
    pub(crate) fn check_cart_invariants(&self) -> Result<(), String> {
        let mut expiry = BTreeSet::new();
        let mut finished = BTreeSet::new();
        let mut unsettled = BTreeSet::new();
        for (id, cart) in &self.carts {
            if cart.is_unsettled() {
                unsettled.insert(id.clone());
            }
            if *id != cart.id {
                return Err(format!("cart stored under {id} has id {}", cart.id));
            }
            if matches!(cart.state, CartState::Preparing | CartState::Pending) {
                expiry.insert((cart.expires_at_ms, id.clone()));
            }
            if cart.state.is_final() && cart.unfollowed().next().is_none() {
                finished.insert((cart.finished_at_ms.unwrap_or(cart.created_at_ms), id.clone()));
            }
            let own = self.intents.get(id).filter(|of| **of == cart.of()).and_then(|_| self.reservations.get(id));
            let want = cart.state.intent_state().unwrap_or(ReservationState::Pending);
            if let (Some(_), Some(own), false) = (cart.parts.get(&cart.home), own, cart.own_apart) {
                if own.state != want {
                    return Err(format!("cart {id} is {} but its home intent is {}", cart.state.as_str(), own.state.as_str()));
                }
            }
        }
        if expiry != self.cart_expiry {
            return Err("cart expiry index does not match the live carts".to_owned());
        }
        if finished != self.cart_finished {
            return Err("cart retention index does not match the finished carts".to_owned());
        }
        if unsettled != self.cart_unsettled {
            return Err("unsettled-cart index does not match the records".to_owned());
        }
        Ok(())
    }
}
