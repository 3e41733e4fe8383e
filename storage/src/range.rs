//! Groups and their ranges: the ids and key ranges that the inventory, the
//! topology and the router all speak of.

use std::collections::BTreeSet;

use serde::Deserialize;
use serde::Serialize;

/// The metadata group's id: no range of keys ever has it.
pub const METADATA_GROUP: GroupId = 0;

/// Identifies a Raft group (one contiguous SKU range of one region).
pub type GroupId = u32;

/// The epoch of every range when its cluster is created.
pub const FIRST_EPOCH: u64 = 1;

/// The slice of the key space a group serves, as the group's own log last
/// set it. `epoch` grows with every change of the range (split, merge), so a
/// command routed with an older map is told apart at apply: it is refused
/// with `Outcome::EpochNotMatch` and this descriptor, never applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeDesc {
    pub group: GroupId,
    /// Inclusive; "" is the start of the key space.
    pub start_sku: String,
    /// Exclusive; `None` is unbounded.
    pub end_sku: Option<String>,
    pub epoch: u64,
    /// The home slots of its region this group holds (bit `i` is slot `i`
    /// of `stockd_home::SLOTS`): the records of the reservation ids hashed
    /// there. A split gives the child half of them, a merge gives the right
    /// side's to the left, both at a new epoch.
    pub home_slots: u64,
}

impl RangeDesc {
    /// All of the key space and every home slot, at the first epoch.
    pub fn whole(group: GroupId) -> Self {
        Self { group, start_sku: String::new(), end_sku: None, epoch: FIRST_EPOCH, home_slots: stockd_home::ALL_SLOTS }
    }

    /// The metadata group's: it holds no key and no home at all.
    pub fn metadata() -> Self {
        Self { group: METADATA_GROUP, start_sku: String::new(), end_sku: Some(String::new()), epoch: FIRST_EPOCH, home_slots: 0 }
    }

    /// True when this group holds reservation `id`'s record (its home slot).
    pub fn holds_home(&self, id: &str) -> bool {
        self.home_slots & stockd_home::slot_bit(id) != 0
    }

    /// True for the metadata group's range, which holds no key; a
    /// group 0 serving keys (as in tests of one state machine) is a data
    /// group.
    pub fn is_metadata(&self) -> bool {
        self.group == METADATA_GROUP && self.end_sku.as_deref() == Some(self.start_sku.as_str())
    }

    pub fn contains(&self, sku: &str) -> bool {
        sku >= self.start_sku.as_str() && self.end_sku.as_deref().is_none_or(|end| sku < end)
    }

    /// True when a split at `at` leaves keys on both sides: `at` is inside
    /// the range and not its start.
    pub fn splits_at(&self, at: &str) -> bool {
        at > self.start_sku.as_str() && self.contains(at)
    }

    /// True when the two ranges share a key.
    pub fn overlaps(&self, other: &RangeDesc) -> bool {
        let before_end = |start: &str, end: &Option<String>| end.as_deref().is_none_or(|end| start < end);
        before_end(&self.start_sku, &other.end_sku) && before_end(&other.start_sku, &self.end_sku)
    }
}

impl std::fmt::Display for RangeDesc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let end = self.end_sku.as_deref().map(|e| format!("{e:?}")).unwrap_or_else(|| "end".to_owned());
        write!(f, "group {} [{:?}, {end}) at epoch {}", self.group, self.start_sku, self.epoch)
    }
}

/// A group's part in merges: part of its replicated state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeState {
    /// The log index of this group's `Freeze`, while it is frozen.
    pub frozen_at: Option<u64>,
    /// `(right group, its freeze index)` of the merges this group refused
    /// at its current epoch: never taken afterwards, so the right side may
    /// thaw. Cleared when the epoch changes (a merge routed at the old one
    /// is refused by its epoch).
    pub refused: BTreeSet<(GroupId, u64)>,
}
