//! Key layout. Every key starts with the 4-byte big-endian group id, so one
//! engine holds many groups and a group's keys form one contiguous range.
//!
//! | table | key                         | value                          |
//! |-------|-----------------------------|--------------------------------|
//! | log   | group, index (u64 BE)       | Raft entry                     |
//! | meta  | group, name                 | vote, committed, purged, snapshot |
//! | meta  | NODE_GROUP, name            | node records (shard map)       |
//! | state | group, b'p', sku 0 location | Position                       |
//! | state | group, b'r', id             | Reservation                    |
//! | state | group, b'e', event id       | adjustment event record        |
//! | state | group, b'c', id             | cart home record               |
//! | state | group, b'i', id             | intent mark (which cart record) |
//! | state | group, b'm', name           | applied log id, log time, membership |

use crate::model::GroupId;
use crate::model::PositionKey;

/// Pseudo-group for node-wide records (the shard map).
pub const NODE_GROUP: GroupId = u32::MAX;

pub const STATE_POSITION: u8 = b'p';
pub const STATE_RESERVATION: u8 = b'r';
pub const STATE_EVENT: u8 = b'e';
pub const STATE_META: u8 = b'm';
pub const STATE_CART: u8 = b'c';
pub const STATE_INTENT: u8 = b'i';
pub const STATE_LOCATOR: u8 = b'l';

pub fn group_prefix(group: GroupId) -> Vec<u8> {
    group.to_be_bytes().to_vec()
}

/// First key after every key of `group`.
pub fn group_end(group: GroupId) -> Vec<u8> {
    match group.checked_add(1) {
        Some(next) => next.to_be_bytes().to_vec(),
        None => vec![0xff; 5],
    }
}

pub fn log_key(group: GroupId, index: u64) -> Vec<u8> {
    let mut k = group_prefix(group);
    k.extend_from_slice(&index.to_be_bytes());
    k
}

pub fn log_index_of(key: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = key.get(4..12)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

pub fn meta_key(group: GroupId, name: &str) -> Vec<u8> {
    let mut k = group_prefix(group);
    k.extend_from_slice(name.as_bytes());
    k
}

pub fn state_prefix(group: GroupId, tag: u8) -> Vec<u8> {
    let mut k = group_prefix(group);
    k.push(tag);
    k
}

/// End of the `[state_prefix(group, tag), ..)` range.
pub fn state_prefix_end(group: GroupId, tag: u8) -> Vec<u8> {
    let mut k = group_prefix(group);
    k.push(tag + 1);
    k
}

/// Position keys order by sku, then location: the separator 0 sorts before
/// every character validation allows in a sku.
pub fn position_key(group: GroupId, key: &PositionKey) -> Vec<u8> {
    let mut k = state_prefix(group, STATE_POSITION);
    k.extend_from_slice(key.sku.as_bytes());
    k.push(0);
    k.extend_from_slice(key.location.as_bytes());
    k
}

pub fn reservation_key(group: GroupId, id: &str) -> Vec<u8> {
    let mut k = state_prefix(group, STATE_RESERVATION);
    k.extend_from_slice(id.as_bytes());
    k
}

pub fn event_key(group: GroupId, event_id: &str) -> Vec<u8> {
    let mut k = state_prefix(group, STATE_EVENT);
    k.extend_from_slice(event_id.as_bytes());
    k
}

/// The key of record `id` under `tag` (reservations, events, carts, intents).
pub fn record_key(group: GroupId, tag: u8, id: &str) -> Vec<u8> {
    let mut k = state_prefix(group, tag);
    k.extend_from_slice(id.as_bytes());
    k
}

pub fn state_meta_key(group: GroupId, name: &str) -> Vec<u8> {
    let mut k = state_prefix(group, STATE_META);
    k.extend_from_slice(name.as_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keys_order_by_group_then_index() {
        assert!(log_key(1, u64::MAX) < log_key(2, 0));
        assert!(log_key(1, 9) < log_key(1, 10));
        assert_eq!(log_index_of(&log_key(3, 42)), Some(42));
        assert!(group_end(7) > log_key(7, u64::MAX));
    }

    #[test]
    fn position_keys_order_by_sku_then_location() {
        let a = position_key(1, &PositionKey::new("a", "z"));
        let ab = position_key(1, &PositionKey::new("ab", "a"));
        assert!(a < ab);
        assert!(position_key(1, &PositionKey::new("zz", "zz")) < state_prefix_end(1, STATE_POSITION));
    }
}
