//! Locators: the home group's entry for a one-group reservation that lives
//! in another group, so that a lookup by id takes one read of the home. A
//! one-group reservation stays one command in its own group; a router that
//! had to ask every group to find it writes its locator afterwards (writing
//! one beside every reserve cost a third of the one-group rate).
//!
//! `Locate`, in the id's home group:
//! - Effect: the home notes that `group` holds the reservation, until the
//!   TTL and the idempotency retention window have passed.
//! - Idempotency: the same group again is a replay (kept from the latest
//!   write). Another group, a cart record or a plain reservation of the home
//!   under the id is a conflict, and nothing changes.
//! - The other way round, a `Reserve` or `CartBegin` here under an id that a
//!   locator names is a conflict too, unless a reservation under the id is
//!   held here (merges brought it beside its locator): that one answers.
//! - A merge drops the locators naming either of its groups, and those
//!   beside the reservation they locate.
//! - Recovery: none needed. A locator only speeds a lookup up: one naming a
//!   group without the reservation (forgotten there) finds nothing, which is
//!   the truth, and a reservation without one is found by asking every group.

use crate::inventory::reservation_result;
use crate::inventory::At;
use crate::inventory::Inventory;
use crate::model::CommandResult;
use crate::model::GroupId;
use crate::model::Locator;
use crate::model::Outcome;

impl Inventory {
    pub(crate) fn locate(&mut self, at: At, id: &str, group: GroupId, ttl_ms: u64) -> CommandResult {
        if let Some(cart) = self.carts.get(id) {
            return cart.replay(false);
        }
        self.forget_finished_intent(id);
        if let Some(existing) = self.reservations.get(id) {
            return reservation_result(Outcome::IdempotencyConflict, false, existing.clone());
        }
        let forget_at_ms = at.ms.saturating_add(ttl_ms).saturating_add(self.limits().idempotency_retention_ms);
        let replay = match self.locators.get(id).copied() {
            Some(existing) if existing.group != group => {
                return CommandResult { located: Some(existing.group), ..CommandResult::bare(Outcome::IdempotencyConflict) };
            }
            Some(existing) if existing.forget_at_ms >= forget_at_ms => {
                return CommandResult { located: Some(group), replay: true, ..CommandResult::bare(Outcome::Ok) };
            }
            Some(existing) => {
                // Written again later (a retry, or a repair after a lookup):
                // kept from the latest write.
                self.locator_expiry.remove(&(existing.forget_at_ms, id.to_owned()));
                true
            }
            None => false,
        };
        self.locators.insert(id.to_owned(), Locator { group, forget_at_ms });
        self.locator_expiry.insert((forget_at_ms, id.to_owned()));
        self.dirty_locators.insert(id.to_owned());
        CommandResult { located: Some(group), replay, ..CommandResult::bare(Outcome::Ok) }
    }

    /// The conflict a record under `id` meets here when a locator says a
    /// one-group reservation under the id lives in another group. A locator
    /// naming this group (kept from before a merge) names no other.
    pub(crate) fn located_elsewhere(&self, id: &str) -> Option<CommandResult> {
        let locator = self.locators.get(id).filter(|locator| locator.group != self.range.group)?;
        Some(CommandResult { located: Some(locator.group), ..CommandResult::bare(Outcome::IdempotencyConflict) })
    }

    /// Forgets the locators whose time is up.
    pub(crate) fn prune_locators(&mut self, now_ms: u64) {
        while self.locator_expiry.first().is_some_and(|(forget_at_ms, _)| *forget_at_ms <= now_ms) {
            let Some((_, id)) = self.locator_expiry.pop_first() else { break };
            self.locators.remove(&id);
            self.dirty_locators.insert(id);
        }
    }

    /// The group a locator here names for reservation `id`.
    pub fn locator(&self, id: &str) -> Option<&Locator> {
        self.locators.get(id)
    }

    pub fn locators(&self) -> impl Iterator<Item = (&String, &Locator)> + '_ {
        self.locators.iter()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::inventory::Inventory;
    use crate::inventory::Records;
    use crate::model::AdjustmentKind;
    use crate::model::Batch;
    use crate::model::Command;
    use crate::model::CommandResult;
    use crate::model::GroupId;
    use crate::model::Limits;
    use crate::model::Line;
    use crate::model::Outcome;
    use crate::model::RangeDesc;
    use crate::model::FIRST_EPOCH;

    const HOME: GroupId = 3;
    const TTL: u64 = 5_000;
    const RETENTION: u64 = 60_000;

    fn apply(inventory: &mut Inventory, at_ms: u64, command: Command) -> CommandResult {
        let log_index = inventory.last_applied_index() + 1;
        let mut results = inventory.apply_batch(log_index, &Batch::new(at_ms, FIRST_EPOCH, vec![command]));
        assert_eq!(inventory.check_invariants(), Ok(()));
        results.remove(0)
    }

    fn locate(id: &str, group: GroupId) -> Command {
        Command::Locate { reservation_id: id.to_owned(), group, ttl_ms: TTL }
    }

    fn line(sku: &str) -> Line {
        Line { sku: sku.to_owned(), location: "wh1".to_owned(), quantity: 1 }
    }

    fn home() -> Inventory {
        let mut inventory = Inventory::serving(Limits { idempotency_retention_ms: RETENTION, recent_changes_max: 8 }, RangeDesc::whole(HOME));
        let receipt = crate::model::Adjustment {
            event_id: "e1".to_owned(),
            sku: "h-1".to_owned(),
            location: "wh1".to_owned(),
            kind: AdjustmentKind::Receipt,
            quantity: 10,
            reason: String::new(),
            source: "wms".to_owned(),
            source_seq: 1,
            observed_at_ms: None,
        };
        apply(&mut inventory, 1_000, Command::Adjust(receipt));
        inventory
    }

    #[test]
    fn a_locator_names_one_group_and_any_other_is_a_conflict() {
        let mut inventory = home();
        let first = apply(&mut inventory, 2_000, locate("o1", 5));
        assert_eq!((first.outcome, first.replay, first.located), (Outcome::Ok, false, Some(5)));
        let again = apply(&mut inventory, 2_100, locate("o1", 5));
        assert_eq!((again.outcome, again.replay, again.located), (Outcome::Ok, true, Some(5)));
        let other = apply(&mut inventory, 2_200, locate("o1", 6));
        assert_eq!((other.outcome, other.located), (Outcome::IdempotencyConflict, Some(5)));
        assert_eq!(inventory.locator("o1").map(|l| l.group), Some(5), "a conflict changes nothing");
    }

    #[test]
    fn records_of_the_home_and_locators_exclude_each_other() {
        let mut inventory = home();
        apply(&mut inventory, 2_000, locate("elsewhere", 5));
        let plain = apply(&mut inventory, 2_100, Command::Reserve { reservation_id: "elsewhere".into(), lines: vec![line("h-1")], ttl_ms: TTL });
        assert_eq!((plain.outcome, plain.located), (Outcome::IdempotencyConflict, Some(5)));
        let mut parts = BTreeMap::new();
        parts.insert(HOME, vec![line("h-1")]);
        parts.insert(5, vec![line("x-1")]);
        let begin = Command::CartBegin {
            reservation_id: "elsewhere".into(),
            lines: vec![line("h-1"), line("x-1")],
            ttl_ms: TTL,
            home: HOME,
            parts: parts.clone(),
            own_gate: None,
        };
        let begun = apply(&mut inventory, 2_200, begin);
        assert_eq!((begun.outcome, begun.located), (Outcome::IdempotencyConflict, Some(5)));
        assert_eq!(inventory.position(&crate::model::PositionKey::new("h-1", "wh1")).map(|p| p.reserved), Some(0), "a conflict holds nothing");

        let held = apply(&mut inventory, 2_300, Command::Reserve { reservation_id: "here".into(), lines: vec![line("h-1")], ttl_ms: TTL });
        assert_eq!(held.outcome, Outcome::Ok);
        assert_eq!(apply(&mut inventory, 2_400, locate("here", 5)).outcome, Outcome::IdempotencyConflict);
        let begin = Command::CartBegin { reservation_id: "cart".into(), lines: vec![line("h-1"), line("x-1")], ttl_ms: TTL, home: HOME, parts, own_gate: None };
        assert_eq!(apply(&mut inventory, 2_500, begin).outcome, Outcome::Ok);
        let conflict = apply(&mut inventory, 2_600, locate("cart", 5));
        assert_eq!(conflict.outcome, Outcome::IdempotencyConflict);
        assert!(conflict.cart.is_some(), "the conflict shows the record");
        assert!(inventory.locator("here").is_none() && inventory.locator("cart").is_none());
    }

    #[test]
    fn a_locator_is_kept_for_the_ttl_and_the_retention_window_and_persists() {
        let mut inventory = home();
        apply(&mut inventory, 2_000, locate("o1", 5));
        let dirty = inventory.take_dirty();
        assert_eq!(dirty.locators.len(), 1);
        let records = Records { locators: dirty.locators.into_iter().filter_map(|(id, l)| l.map(|l| (id, l))).collect(), ..Records::default() };
        let loaded = Inventory::load(inventory.limits().clone(), inventory.range().clone(), 2_000, inventory.last_applied_index(), records);
        assert_eq!(loaded.locator("o1"), inventory.locator("o1"));
        assert_eq!(Inventory::from_snapshot(inventory.limits().clone(), inventory.to_snapshot()), inventory);

        // A later write of the same locator keeps it longer.
        apply(&mut inventory, 3_000, locate("o1", 5));
        apply(&mut inventory, 2_000 + TTL + RETENTION, Command::Locate { reservation_id: "tick".into(), group: 6, ttl_ms: TTL });
        assert!(inventory.locator("o1").is_some(), "kept from its latest write");
        apply(&mut inventory, 3_000 + TTL + RETENTION, Command::Locate { reservation_id: "tick2".into(), group: 6, ttl_ms: TTL });
        assert!(inventory.locator("o1").is_none(), "forgotten after the TTL and the retention window");
        assert!(inventory.take_dirty().locators.iter().any(|(id, l)| id == "o1" && l.is_none()), "and deleted from disk");
        assert_eq!(apply(&mut inventory, 3_000 + TTL + RETENTION + 1, locate("o1", 6)).outcome, Outcome::Ok, "the id can be used again");
    }
}
