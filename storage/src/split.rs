//! Split and merge of one group's state, at apply: no copy over the network.
//!
//! A split at SKU `at` leaves `[start, at)` in the group and moves `[at, end)`
//! to a new group with everything that belongs to its positions: the
//! positions (with their per-source feed sequences and change history),
//! the reservations and cart intents whose lines all fall there, and the feed
//! event records of its SKUs. Both sides take the next epoch, so a command
//! routed with the old map is refused by either (`Outcome::EpochNotMatch`).
//!
//! Home records of carts and locators are homed by their id, not by SKU:
//! they go with their home slot (`stockd_home::split_slots`: the new group
//! takes the upper half of the parent's slots, the same split that the
//! topology records). A record whose own lines (held at begin, beside it)
//! end up on the other side is marked `own_apart`: from then on that part
//! is prepared and followed as any other group's.
//!
//! What stays in the group whatever its keys:
//! - finished reservations whose lines fall on both sides (kept for
//!   idempotent answers only: they hold no units).
//!
//! A split refuses a key that would cut a live reservation (pending or
//! committed, intents included) in two: its units would be held by two groups
//! that no single record decides for. The caller picks another key.
//!
//! A merge takes back the right neighbour's records (adjacent ranges only;
//! an id or event id held by both refuses the merge, except the finished
//! parts of one cart, which become one record). Split then merge gives
//! back the same records and indexes (`storage/tests/prop_split.rs`).
//!
//! A merge of two groups is three commands, each in one group's log:
//! 1. `Freeze` in the right group: from that index it applies nothing, not
//!    even expiry, so its state is the same on every replica that applied
//!    the freeze. Refused while a cart is in flight there (a live intent or
//!    an unsettled home record) or when the state is larger than one log
//!    entry should carry (`MERGE_RECORDS_MAX`, `MERGE_BYTES_MAX`).
//! 2. `Merge` in the left group, carrying that frozen state: every replica
//!    of the left takes the same records, whether or not it replicates the
//!    right (the right's records travel through the left's log, so the two
//!    need not share replicas, and no replica waits for another to catch
//!    up). The left decides once: taken, or refused for good (a record held
//!    by both sides), and a refusal is remembered at that epoch so the same
//!    frozen state is never taken later.
//! 3. After a refusal only, `Thaw` in the right group lifts its freeze.
//!
//! The freeze is the commit point of nothing: a frozen group whose merge
//! was not proposed (its driver stopped) is merged by whichever node leads
//! it next, into whatever group then ends where it starts.

use std::collections::BTreeMap;

use crate::inventory::Inventory;
use crate::inventory::InventorySnapshot;
use crate::model::Command;
use crate::model::CommandResult;
use crate::model::GroupId;
use crate::model::Line;
use crate::model::Outcome;
use crate::model::PositionKey;
use crate::model::RangeDesc;
use crate::model::ReservationState;

/// Most records (positions, reservations, events, carts, intents, locators)
/// a group may hold to be frozen for a merge: its state travels in one log
/// entry of its left neighbour.
pub const MERGE_RECORDS_MAX: usize = 20_000;
/// Most encoded bytes of that state.
pub const MERGE_BYTES_MAX: usize = 8 << 20;
/// Most refused merges a group remembers at one epoch; past it, it refuses
/// merges without remembering them (their right sides then stay frozen
/// until a merge is taken).
pub const MERGE_REFUSALS_MAX: usize = 256;

pub use crate::range::MergeState;

/// Why a split or merge was refused; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyRefusal {
    #[error("split key {at:?} is not strictly inside {range}")]
    KeyOutside { at: String, range: Box<RangeDesc> },
    #[error("split key {at:?} cuts live reservation {id} in two")]
    Straddles { at: String, id: String },
    #[error("{left} and {right} are not adjacent")]
    NotAdjacent { left: Box<RangeDesc>, right: Box<RangeDesc> },
    #[error("{what} {id} is held by both sides of the merge")]
    Collides { what: &'static str, id: String },
}

/// Where a record's lines fall against the split key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Left,
    Right,
    Both,
}

fn side_of(lines: &[Line], at: &str) -> Side {
    let right = lines.iter().filter(|line| line.sku.as_str() >= at).count();
    match right {
        0 => Side::Left,
        n if n == lines.len() => Side::Right,
        _ => Side::Both,
    }
}

fn live(state: ReservationState) -> bool {
    matches!(state, ReservationState::Pending | ReservationState::Committed)
}

impl Inventory {
    /// A key that splits this group's SKUs in two halves by count: the
    /// median distinct SKU, when the group holds at least two.
    pub fn middle_sku(&self) -> Option<String> {
        let mut skus: Vec<&str> = Vec::new();
        for key in self.positions.keys() {
            if skus.last() != Some(&key.sku.as_str()) {
                skus.push(&key.sku);
            }
        }
        (skus.len() >= 2).then(|| skus[skus.len() / 2].to_owned())
    }

    /// Records of every kind this group holds.
    pub fn record_count(&self) -> usize {
        self.positions.len() + self.reservations.len() + self.events.len() + self.carts.len() + self.intents.len() + self.locators.len()
    }

    /// The log index of this group's freeze, while it is frozen for a merge.
    pub fn frozen_at(&self) -> Option<u64> {
        self.merge.frozen_at
    }

    pub fn merge_state(&self) -> &MergeState {
        &self.merge
    }

    /// Why this group cannot be frozen for a merge now, if it cannot.
    pub fn freeze_refusal(&self) -> Option<String> {
        if let Some((id, _)) = self.intents.iter().find(|(id, _)| self.reservations.get(*id).is_some_and(|r| live(r.state))) {
            return Some(format!("cart {id} holds units here: a group is merged with no cart in flight"));
        }
        if let Some(id) = self.cart_unsettled.iter().next() {
            return Some(format!("cart {id} is homed here and not settled: a group is merged with no cart in flight"));
        }
        let records = self.record_count();
        if records > MERGE_RECORDS_MAX {
            return Some(format!("the group holds {records} records; a merge carries at most {MERGE_RECORDS_MAX}"));
        }
        let bytes = crate::codec::encode(&self.to_snapshot()).len();
        (bytes > MERGE_BYTES_MAX).then(|| format!("the group's state is {bytes} bytes; a merge carries at most {MERGE_BYTES_MAX}"))
    }

    /// `Command::Freeze` at `log_index`.
    pub(crate) fn freeze(&mut self, log_index: u64) -> CommandResult {
        let result = match self.freeze_refusal() {
            Some(refusal) => CommandResult { refusal: Some(refusal), ..CommandResult::bare(Outcome::InvalidState) },
            None => {
                self.merge.frozen_at = Some(log_index);
                self.dirty_merge = true;
                CommandResult { frozen_at: Some(log_index), ..CommandResult::bare(Outcome::Ok) }
            }
        };
        CommandResult { range: Some(self.range.clone()), ..result }
    }

    /// A command in a frozen group: a repeated freeze answers its index, a
    /// thaw of this freeze lifts it, anything else is refused as routed to a
    /// range that is going away (retried once the merge is in the topology).
    pub(crate) fn apply_frozen(&mut self, frozen_at: u64, epoch: u64, command: &Command) -> CommandResult {
        let range = self.range.clone();
        let answer = |outcome| CommandResult { range: Some(range.clone()), frozen_at: Some(frozen_at), ..CommandResult::bare(outcome) };
        match command {
            _ if epoch != self.range.epoch => answer(Outcome::EpochNotMatch),
            Command::Freeze => CommandResult { replay: true, ..answer(Outcome::Ok) },
            Command::Thaw { frozen_at: named } if *named == frozen_at => {
                self.merge.frozen_at = None;
                self.dirty_merge = true;
                CommandResult { frozen_at: None, ..answer(Outcome::Ok) }
            }
            Command::Thaw { .. } => answer(Outcome::InvalidState),
            _ => answer(Outcome::EpochNotMatch),
        }
    }

    /// `Command::Merge`: takes the frozen `right` or refuses it for good.
    /// A refusal that is remembered answers `frozen_at` (the right side may
    /// thaw); one that is not (the right side is not frozen, or the list of
    /// refusals is full) answers none.
    pub(crate) fn merge_right(&mut self, encoded: &[u8]) -> CommandResult {
        let refuse = |refusal: String, remembered: Option<u64>| CommandResult {
            refusal: Some(refusal),
            frozen_at: remembered,
            ..CommandResult::bare(Outcome::InvalidState)
        };
        let right: InventorySnapshot = match crate::codec::decode(encoded, "merged state") {
            Ok(right) => right,
            Err(e) => return CommandResult { range: Some(self.range.clone()), ..refuse(e.to_string(), None) },
        };
        if self.range.end_sku.as_deref() != Some(right.range.start_sku.as_str()) {
            // Routed to a group that no longer ends where the right side starts.
            return CommandResult { range: Some(self.range.clone()), ..CommandResult::bare(Outcome::KeyNotInRange) };
        }
        let group = right.range.group;
        let result = match right.merge.frozen_at {
            None => refuse(format!("group {group} is not frozen: only a frozen state can be merged"), None),
            Some(f) if self.merge.refused.contains(&(group, f)) => refuse(format!("the merge of group {group} frozen at {f} was refused here before"), Some(f)),
            Some(f) => {
                let theirs = InventorySnapshot { merge: MergeState::default(), ..right };
                match self.merge(Inventory::from_snapshot(self.limits().clone(), theirs)) {
                    Ok(()) => CommandResult::bare(Outcome::Ok),
                    Err(refusal) if self.merge.refused.len() < MERGE_REFUSALS_MAX => {
                        self.merge.refused.insert((group, f));
                        self.dirty_merge = true;
                        refuse(refusal.to_string(), Some(f))
                    }
                    Err(refusal) => refuse(refusal.to_string(), None),
                }
            }
        };
        CommandResult { range: Some(self.range.clone()), ..result }
    }

    /// Splits `[at, end)` off into a new inventory serving it as group
    /// `child`; this one keeps `[start, at)`. Both take the next epoch.
    /// Everything moved is marked changed on both sides (deleted here,
    /// written there), on top of what was already pending here.
    pub fn split_off(&mut self, at: &str, child: GroupId) -> Result<Inventory, TopologyRefusal> {
        let range = self.range.clone();
        if !range.splits_at(at) {
            return Err(TopologyRefusal::KeyOutside { at: at.to_owned(), range: Box::new(range) });
        }
        if let Some((id, _)) = self.reservations.iter().find(|(_, r)| live(r.state) && side_of(&r.lines, at) == Side::Both) {
            return Err(TopologyRefusal::Straddles { at: at.to_owned(), id: id.clone() });
        }
        let epoch = range.epoch + 1;
        let (kept_slots, moved_slots) = stockd_home::split_slots(range.home_slots);
        let child_range = RangeDesc { group: child, start_sku: at.to_owned(), end_sku: range.end_sku.clone(), epoch, home_slots: moved_slots };
        let homed_right = |id: &str| child_range.holds_home(id);
        let mut left = self.to_snapshot();
        let mut right = InventorySnapshot {
            log_time_ms: left.log_time_ms,
            last_applied_index: 0,
            range: child_range.clone(),
            positions: left.positions.split_off(&PositionKey::new(at, "")),
            reservations: take_where(&mut left.reservations, |_, r| side_of(&r.lines, at) == Side::Right),
            events: take_where(&mut left.events, |_, e| e.adjustment.sku.as_str() >= at),
            carts: take_where(&mut left.carts, |id, _| homed_right(id)),
            intents: BTreeMap::new(),
            locators: take_where(&mut left.locators, |id, _| homed_right(id)),
            topology: Default::default(),
            merge: MergeState::default(),
        };
        right.intents = take_where(&mut left.intents, |id, _| right.reservations.contains_key(id));
        // A record whose own lines are now on the other side follows them
        // from now on as it follows any other group's.
        mark_own_apart(&mut left, &right);
        mark_own_apart(&mut right, &left);
        rejoin_own_parts(&mut left);
        rejoin_own_parts(&mut right);
        left.range = RangeDesc { end_sku: Some(at.to_owned()), epoch, home_slots: kept_slots, ..range };
        // A new epoch: merges refused at the old one are refused by it.
        left.merge.refused.clear();
        let mut child_inventory = Inventory::from_snapshot(self.limits().clone(), right);
        child_inventory.mark_all_dirty();
        let mut kept = Inventory::from_snapshot(self.limits().clone(), left);
        kept.take_dirty_of(self);
        kept.dirty_merge = true;
        kept.mark_dirty_like(&child_inventory);
        *self = kept;
        Ok(child_inventory)
    }

    /// Takes back the records of `right`, the adjacent range after this one:
    /// this group then serves both ranges, at the next epoch of either.
    pub fn merge(&mut self, right: Inventory) -> Result<(), TopologyRefusal> {
        let (l, r) = (self.range.clone(), right.range.clone());
        if l.end_sku.as_deref() != Some(r.start_sku.as_str()) {
            return Err(TopologyRefusal::NotAdjacent { left: Box::new(l), right: Box::new(r) });
        }
        let mut merged = self.to_snapshot();
        let mut theirs = right.to_snapshot();
        one_record_per_cart_part(&mut merged, &mut theirs);
        absorb(&mut merged.positions, theirs.positions, "position")?;
        absorb(&mut merged.reservations, theirs.reservations, "reservation")?;
        absorb(&mut merged.events, theirs.events, "event")?;
        absorb(&mut merged.carts, theirs.carts, "cart")?;
        absorb(&mut merged.intents, theirs.intents, "intent")?;
        absorb(&mut merged.locators, theirs.locators, "locator")?;
        // A locator naming either side names this group now, and one beside
        // the reservation it locates (moved here by earlier merges) names a
        // group it left: either would answer lookups with a group that
        // holds nothing, or refuse the reservation's own retry.
        let sides = [l.group, r.group];
        let merged_away: Vec<String> = merged
            .locators
            .iter()
            .filter(|(id, locator)| sides.contains(&locator.group) || merged.reservations.contains_key(*id))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &merged_away {
            merged.locators.remove(id);
        }
        rejoin_own_parts(&mut merged);
        merged.log_time_ms = merged.log_time_ms.max(theirs.log_time_ms);
        merged.range = RangeDesc { end_sku: r.end_sku, epoch: l.epoch.max(r.epoch) + 1, home_slots: l.home_slots | r.home_slots, ..l };
        merged.merge = MergeState::default();
        let mut kept = Inventory::from_snapshot(self.limits().clone(), merged);
        kept.take_dirty_of(self);
        kept.mark_dirty_like(&right);
        kept.dirty_locators.extend(merged_away);
        kept.dirty_merge = true;
        *self = kept;
        Ok(())
    }

    /// Marks every record changed (a new group writes all it holds).
    fn mark_all_dirty(&mut self) {
        self.dirty_positions.extend(self.positions.keys().cloned());
        self.dirty_reservations.extend(self.reservations.keys().cloned());
        self.dirty_events.extend(self.events.keys().cloned());
        self.dirty_carts.extend(self.carts.keys().cloned());
        self.dirty_intents.extend(self.intents.keys().cloned());
        self.dirty_locators.extend(self.locators.keys().cloned());
        self.dirty_merge = true;
    }

    /// Marks changed every key that `other` holds.
    fn mark_dirty_like(&mut self, other: &Inventory) {
        self.dirty_positions.extend(other.positions.keys().cloned());
        self.dirty_reservations.extend(other.reservations.keys().cloned());
        self.dirty_events.extend(other.events.keys().cloned());
        self.dirty_carts.extend(other.carts.keys().cloned());
        self.dirty_intents.extend(other.intents.keys().cloned());
        self.dirty_locators.extend(other.locators.keys().cloned());
    }

    /// Keeps what `before` still had to persist, and the groups it split off
    /// that the store has not taken yet.
    fn take_dirty_of(&mut self, before: &mut Inventory) {
        self.split_children.append(&mut before.split_children);
        self.dirty_merge |= before.dirty_merge;
        self.dirty_topology |= before.dirty_topology;
        self.dirty_positions.append(&mut before.dirty_positions);
        self.dirty_reservations.append(&mut before.dirty_reservations);
        self.dirty_events.append(&mut before.dirty_events);
        self.dirty_carts.append(&mut before.dirty_carts);
        self.dirty_intents.append(&mut before.dirty_intents);
        self.dirty_locators.append(&mut before.dirty_locators);
    }
}

/// The parts of one cart on both sides (intents of the same record, kept
/// after the cart finished for idempotent answers; the cart itself is
/// answered by its home) become one record: the live one if one is, else
/// the left one. Two live parts are left to collide (a merge's right side
/// holds no live intent, so only a direct merge meets them).
fn one_record_per_cart_part(left: &mut InventorySnapshot, right: &mut InventorySnapshot) {
    let shared: Vec<String> = right.intents.iter().filter(|(id, of)| left.intents.get(*id) == Some(*of)).map(|(id, _)| id.clone()).collect();
    for id in shared {
        let live_in = |side: &InventorySnapshot| side.reservations.get(&id).is_some_and(|r| live(r.state));
        match (live_in(left), live_in(right)) {
            (_, false) => {
                right.reservations.remove(&id);
                right.intents.remove(&id);
            }
            (false, true) => {
                left.reservations.remove(&id);
                left.intents.remove(&id);
            }
            (true, true) => {}
        }
    }
}

/// Marks the records of `side` whose own intent went to `other`.
fn mark_own_apart(side: &mut InventorySnapshot, other: &InventorySnapshot) {
    for (id, cart) in side.carts.iter_mut() {
        if cart.parts.contains_key(&cart.home) && other.intents.get(id) == Some(&cart.of()) {
            cart.own_apart = true;
        }
    }
}

/// A record whose own lines a split had put apart holds them beside it
/// again once a merge brings them back in the state the record asks for:
/// they move in the same apply as the record from then on, as before the
/// split (so a split then a merge gives back the same records).
fn rejoin_own_parts(state: &mut InventorySnapshot) {
    for (id, cart) in state.carts.iter_mut().filter(|(_, c)| c.own_apart) {
        let want = cart.state.as_reservation_state();
        // Held here in that state, or finished and forgotten on both sides.
        let held = match state.intents.get(id) {
            Some(of) if *of == cart.of() => state.reservations.get(id).is_some_and(|r| r.state == want),
            Some(_) => false,
            None => cart.state.is_final() && !state.reservations.contains_key(id),
        };
        let noted = cart.parts.get(&cart.home).is_some_and(|part| part.followed == Some(want));
        if held && noted {
            cart.own_apart = false;
        }
    }
}

/// Removes and returns the entries of `map` that `moves`.
fn take_where<K: Ord + Clone, V>(map: &mut BTreeMap<K, V>, moves: impl Fn(&K, &V) -> bool) -> BTreeMap<K, V> {
    let keys: Vec<K> = map.iter().filter(|(k, v)| moves(k, v)).map(|(k, _)| k.clone()).collect();
    keys.into_iter().filter_map(|k| map.remove(&k).map(|v| (k, v))).collect()
}

/// Moves every entry of `from` into `into`; a key held by both is named.
fn absorb<K: Ord + std::fmt::Debug, V>(into: &mut BTreeMap<K, V>, from: BTreeMap<K, V>, what: &'static str) -> Result<(), TopologyRefusal> {
    if let Some(key) = from.keys().find(|k| into.contains_key(*k)) {
        return Err(TopologyRefusal::Collides { what, id: format!("{key:?}") });
    }
    into.extend(from);
    Ok(())
}
