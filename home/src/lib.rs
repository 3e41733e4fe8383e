//! The home of a reservation id. Each region's hash space of ids is cut
//! into [`SLOTS`] fixed slots; each slot is held by one group of the region
//! (the topology says which), and that group holds the reservation's
//! record. A split hands half of the parent's slots to the child, a merge
//! gives the right side's to the left: a slot moves, an id never changes
//! slot. The state machine and the clients both compute it, so it lives in
//! a crate of its own with no dependencies.

/// Home slots per region.
pub const SLOTS: usize = 64;

/// Every slot, as a mask (bit `i` is slot `i`).
pub const ALL_SLOTS: u64 = u64::MAX;

/// FNV-1a, 64 bits, then MurmurHash3's 64-bit finalizer: stable across
/// versions and platforms, as a reservation's home must be. The finalizer
/// matters: FNV-1a alone leaves the high bits (which pick the slot) almost
/// unchanged between ids that differ only at the end, as sequential order
/// ids do.
pub fn id_hash(id: &str) -> u64 {
    let fnv = id.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3));
    let mut h = fnv ^ (fnv >> 33);
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The index among `slots` equal ranges of the hash space that holds `id`
/// (a region's home table has [`SLOTS`] entries).
pub fn slot(id: &str, slots: usize) -> usize {
    ((u128::from(id_hash(id)) * slots as u128) >> 64) as usize
}

/// The bit of `id`'s slot in a mask of [`SLOTS`] slots.
pub fn slot_bit(id: &str) -> u64 {
    1 << slot(id, SLOTS)
}

/// How a split shares the parent's slots `mask`: the parent keeps the lower
/// half (by slot index) and the child takes the upper half; with fewer than
/// two slots the parent keeps them all.
pub fn split_slots(mask: u64) -> (u64, u64) {
    let count = mask.count_ones();
    if count < 2 {
        return (mask, 0);
    }
    let mut kept = 0u64;
    let mut rest = mask;
    for _ in 0..count.div_ceil(2) {
        let lowest = rest & rest.wrapping_neg();
        kept |= lowest;
        rest &= !lowest;
    }
    (kept, rest)
}

/// The slots of group `i` of `groups` at a cluster's bootstrap: slot `s`
/// goes to group `s * groups / SLOTS`, so that with a number of groups that
/// divides [`SLOTS`] every group holds an equal share of the hash space.
pub fn bootstrap_slots(i: usize, groups: usize) -> u64 {
    (0..SLOTS).filter(|s| s * groups / SLOTS == i).fold(0, |mask, s| mask | 1 << s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_pinned() {
        // A reservation's slot must never change between versions.
        assert_eq!(id_hash(""), 0xefd0_1f60_ba99_2926);
        assert_eq!(id_hash("a"), 0x82a2_a958_a9be_ce5b);
        assert_eq!(slot("a", SLOTS), (0x82a2_a958_a9be_ce5b_u64 >> 58) as usize);
    }

    #[test]
    fn a_split_shares_the_slots_and_a_merge_gives_them_back() {
        assert_eq!(split_slots(ALL_SLOTS), (u64::from(u32::MAX), ALL_SLOTS << 32));
        assert_eq!(split_slots(0b1), (0b1, 0));
        assert_eq!(split_slots(0), (0, 0));
        assert_eq!(split_slots(0b111), (0b011, 0b100));
        for mask in [0b1011_0110u64, ALL_SLOTS, 0b11, 1 << 63 | 1, 0xdead_beef_0000_0001] {
            let (kept, moved) = split_slots(mask);
            assert_eq!(kept & moved, 0, "{mask:#x}");
            assert_eq!(kept | moved, mask, "{mask:#x}");
            assert!(kept.count_ones() >= moved.count_ones() && kept.count_ones() - moved.count_ones() <= 1, "{mask:#x}");
            assert!(moved != 0, "{mask:#x} has two slots or more");
            assert!(kept.leading_zeros() > 63 - moved.trailing_zeros(), "the child takes the upper slots: {mask:#x}");
        }
    }

    #[test]
    fn bootstrap_slots_tile_the_region() {
        for groups in [1, 2, 3, 5, 8, 64, 100] {
            let masks: Vec<u64> = (0..groups).map(|i| bootstrap_slots(i, groups)).collect();
            assert_eq!(masks.iter().fold(0, |a, m| a | m), ALL_SLOTS, "{groups} groups");
            assert_eq!(masks.iter().map(|m| m.count_ones()).sum::<u32>(), 64, "disjoint, {groups} groups");
        }
        // With a divisor of 64: the same homes as equal hash ranges per group.
        for id in ["order-1", "order-2", "x", ""] {
            let group = (0..8).find(|i| bootstrap_slots(*i, 8) & slot_bit(id) != 0);
            assert_eq!(group, Some(slot(id, 8)), "{id}");
        }
    }
}
