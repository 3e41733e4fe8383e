//! Step 3, in the home group: `CartDecide` ends the `Preparing` state.
//!
//! - Precondition: the coordinator (or a recovering node) has an answer from
//!   every line group's prepare: all held (`hold`), or one refused.
//! - Effect: `Preparing -> Pending` (the cart holds every line until its TTL)
//!   or `Preparing -> Aborted` (the shortfalls kept; the home's own intent
//!   released in the same apply; the other intents follow in step 4).
//! - Exactly once: only a `Preparing` record of the same incarnation
//!   changes; any later decide answers with the record as it is, so two
//!   nodes deciding at once agree on the first decision in the log.
//! - Recovery: none needed; a lost decide leaves the record `Preparing`,
//!   which the next request that needs it decides again, or its TTL ends.

use crate::inventory::At;
use crate::inventory::Inventory;
use crate::model::CartState;
use crate::model::CommandResult;
use crate::model::Outcome;
use crate::model::ReservationState;
use crate::model::Shortfall;

impl Inventory {
    pub(crate) fn cart_decide(&mut self, at: At, id: &str, begin_index: u64, hold: bool, shortfalls: &[Shortfall]) -> CommandResult {
        let Some(cart) = self.carts.get(id) else { return CommandResult::bare(Outcome::NotFound) };
        if cart.begin_index != begin_index {
            return cart.result(Outcome::InvalidState, false);
        }
        if cart.state != CartState::Preparing {
            return cart.result(Outcome::Ok, true);
        }
        if hold {
            // Every line group answered that its intent holds.
            if let Some(cart) = self.carts.get_mut(id) {
                cart.parts.values_mut().for_each(|part| part.followed = Some(ReservationState::Pending));
            }
            self.set_cart_state(at, id, CartState::Pending);
        } else {
            if let Some(cart) = self.carts.get_mut(id) {
                cart.shortfalls = shortfalls.to_vec();
            }
            self.set_cart_state(at, id, CartState::Aborted);
        }
        match self.carts.get(id) {
            Some(cart) => cart.result(Outcome::Ok, false),
            None => unreachable!("cart {id} vanished during apply"),
        }
    }
}
