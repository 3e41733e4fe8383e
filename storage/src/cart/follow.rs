//! Steps 4 and 5: a line group's intent follows its home record, and the
//! home record notes that it did.
//!
//! Step 4, `CartFollow`, in a line group:
//! - Precondition: the home record is in a state whose intent state is
//!   `state` (the sender read it there, or applied it).
//! - Effect: the intent moves to `state` through the legal transitions
//!   (pending -> committed -> fulfilled, ...), moving units as a plain
//!   reservation's transitions do. No intent yet and `state` released or
//!   expired: a tombstone, so a late prepare holds nothing. A follow of an
//!   earlier incarnation whose intent was replaced (`Reservation::retired`)
//!   is a replay that changes nothing.
//! - Idempotency: an intent already in `state` is a replay (released and
//!   expired are the same to it: both hold nothing); a transition the
//!   record can never ask for (released -> committed, or committing an intent
//!   that never held) is refused with `InvalidState` and changes nothing.
//! - Recovery: the home group's leader repeats it until step 5 is applied.
//!
//! Step 5, `CartFollowed`, in the home group:
//! - Effect: the part of `group` is marked as having reached `state`, if that
//!   is still what the record asks for. A final record whose parts all
//!   followed may then be forgotten after the retention window.

use crate::cart::intent_path;
use crate::inventory::reservation_result;
use crate::inventory::At;
use crate::inventory::Inventory;
use crate::model::CommandResult;
use crate::model::GroupId;
use crate::model::IntentOf;
use crate::model::Outcome;
use crate::model::ReservationState;

impl Inventory {
    pub(crate) fn cart_follow(&mut self, at: At, id: &str, of: IntentOf, state: ReservationState) -> CommandResult {
        let tombstone_allowed = matches!(state, ReservationState::Released | ReservationState::Expired);
        match self.intents.get(id) {
            Some(existing) if *existing == of => match self.follow_intent(at, id, state) {
                Some((reservation, replay)) => reservation_result(Outcome::Ok, replay, reservation),
                None => {
                    self.reservations.get(id).cloned().map_or(CommandResult::bare(Outcome::NotFound), |r| reservation_result(Outcome::InvalidState, false, r))
                }
            },
            // A late follow of an incarnation this group finished and
            // replaced since: it was followed, and changes nothing now.
            Some(_) if self.is_retired(id, of) => CommandResult { replay: true, ..CommandResult::bare(Outcome::Ok) },
            Some(_) => {
                // Another record's intent: only a finished one gives way, to
                // a tombstone that remembers it; a live one, or a state no
                // tombstone takes, is refused and changes nothing.
                if let Some(existing) = self.reservations.get(id).filter(|r| !(r.state.is_final() && tombstone_allowed)) {
                    return reservation_result(Outcome::InvalidState, false, existing.clone());
                }
                if !tombstone_allowed {
                    return CommandResult::bare(Outcome::InvalidState);
                }
                let retired = self.forget_finished_intent(id);
                self.tombstone(at, id, of, &[], state);
                self.remember_retired(id, retired);
                let Some(tombstone) = self.reservations.get(id) else { unreachable!("tombstone {id} without its reservation") };
                reservation_result(Outcome::Ok, false, tombstone.clone())
            }
            None => match self.reservations.get(id) {
                Some(plain) => reservation_result(Outcome::InvalidState, false, plain.clone()),
                None if tombstone_allowed => reservation_result(Outcome::Ok, false, self.tombstone(at, id, of, &[], state)),
                None => CommandResult::bare(Outcome::InvalidState),
            },
        }
    }

    /// Moves intent `id` to `state`. Returns the intent after and whether it
    /// was there already, or `None` when `state` cannot follow its state.
    pub(crate) fn follow_intent(&mut self, at: At, id: &str, state: ReservationState) -> Option<(crate::model::Reservation, bool)> {
        let current = self.reservations.get(id)?;
        // Released and expired both mean "holds nothing": an intent refused
        // at prepare (released) has followed a record that expired.
        let freed = |s: ReservationState| matches!(s, ReservationState::Released | ReservationState::Expired);
        if current.state == state || (freed(current.state) && freed(state)) {
            return Some((current.clone(), true));
        }
        let path = intent_path(current.state, state)?;
        let mut after = None;
        for step in path {
            after = self.transition(at, id, *step);
        }
        after.map(|reservation| (reservation, false))
    }

    pub(crate) fn cart_followed(&mut self, at: At, id: &str, begin_index: u64, group: GroupId, state: ReservationState) -> CommandResult {
        let Some(cart) = self.carts.get_mut(id) else { return CommandResult::bare(Outcome::NotFound) };
        if cart.begin_index != begin_index {
            return cart.result(Outcome::InvalidState, false);
        }
        let wanted = cart.state.intent_state() == Some(state);
        let Some(part) = cart.parts.get_mut(&group) else { return cart.result(Outcome::InvalidState, false) };
        if !wanted {
            return cart.result(Outcome::InvalidState, false);
        }
        let replay = part.followed == Some(state);
        part.followed = Some(state);
        let done = cart.state.is_final() && cart.unfollowed().next().is_none();
        let finished_at_ms = cart.finished_at_ms.unwrap_or(at.ms);
        let after = cart.clone();
        if done {
            self.cart_finished.insert((finished_at_ms, id.to_owned()));
        }
        self.note_unsettled(id);
        self.dirty_carts.insert(id.to_owned());
        after.result(Outcome::Ok, replay)
    }
}
