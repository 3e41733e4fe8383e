//! Carts across groups: one reservation whose lines live in several Raft
//! groups, reserved all or nothing. The state is in the logs, never only in
//! a coordinator's memory, so any node can finish an interrupted protocol.
//!
//! Every reservation id has one *home group* (a function of the id, chosen
//! by the router). A cart whose lines all fall in one group is a plain
//! reservation there (one command, one round trip); the home may keep a
//! *locator* naming that group, once a lookup had to look for it
//! ([`locate`]). Any other cart has:
//! - a *home record* ([`crate::model::Cart`]) in the home group: all lines,
//!   the TTL from the home's log time, the state, and per line group what it
//!   confirmed. It is the commit point and the idempotency record;
//! - an *intent* in each line group: a pending reservation of that group's
//!   lines, marked with the record it belongs to ([`crate::model::IntentOf`]).
//!   It holds units like any reservation, so reads count them as reserved.
//!
//! One file per step, each with its precondition, effect and recovery:
//!
//! | step | where | file |
//! |------|-------|------|
//! | 1 begin: create the record `Preparing`, hold the home's own lines | home | [`begin`] |
//! | 2 prepare: hold a group's lines as an intent, or leave a refusal tombstone | line group | [`prepare`] |
//! | 3 decide: `Preparing -> Pending` (all held) or `-> Aborted` (one refused) | home | [`decide`] |
//! | client commit / release / fulfill / cancel, and TTL expiry | home | [`home`] |
//! | 4 follow: the intent takes the record's state | line group | [`follow`] |
//! | 5 followed: the record notes the group's confirmation | home | [`follow`] |
//! | a one-group reservation found elsewhere: the home's locator | home | [`locate`] |
//!
//! Home record states:
//!
//! ```text
//! Preparing --decide(hold)--> Pending --commit--> Committed --fulfill--> Fulfilled
//!     |                          |                    '------cancel---> Cancelled
//!     |--decide(abort)--> Aborted |--release--> Released
//!     |--release--> Released      '--ttl------> Expired
//!     '--ttl------> Expired
//! ```
//!
//! Why no unit is ever reserved twice or lost:
//! - Units move only inside one group's apply, by the same transitions as a
//!   plain reservation's, so each group conserves its units on its own.
//! - An intent changes state only when its home record says so (`follow`),
//!   never on its own: no TTL of its own, no client command reaches it. So
//!   a line group cannot free units that a committed cart still needs, and
//!   every line group ends in the state the record decided.
//! - The record changes state exactly once per transition, in the home's
//!   log; `Committed` is reachable only from `Pending`, which `decide(hold)`
//!   sets only after every line group answered that its intent holds. So no
//!   line is committed while another was refused.
//! - Every message is idempotent by (reservation id, group, incarnation):
//!   a repeated prepare or follow is answered from the intent; a prepare or
//!   follow for an intent that was already released (or refused) finds its
//!   tombstone and changes nothing, so a late, duplicated or reordered
//!   message cannot hold units again after they were freed.
//! - A client hears "reserved" only after every prepare held, so a later
//!   recovery (which replays the prepares) also finds every intent holding
//!   and decides `Pending`; a client that heard nothing may see either
//!   decision, taken once, on its retry.
//! - Expiry is decided by the home group from its log time (`Preparing` and
//!   `Pending` records expire at `expires_at_ms`); the line groups follow.

pub mod begin;
pub mod decide;
pub mod follow;
pub mod home;
pub mod locate;
pub mod prepare;

use crate::model::ReservationState;

/// The reservation states an intent passes through from `from` to `to`, or
/// `None` when `to` cannot follow `from`.
pub fn intent_path(from: ReservationState, to: ReservationState) -> Option<&'static [ReservationState]> {
    use ReservationState::*;
    match (from, to) {
        (Pending, Committed) => Some(&[Committed]),
        (Pending, Released) => Some(&[Released]),
        (Pending, Expired) => Some(&[Expired]),
        (Pending, Fulfilled) => Some(&[Committed, Fulfilled]),
        (Pending, Cancelled) => Some(&[Committed, Cancelled]),
        (Committed, Fulfilled) => Some(&[Fulfilled]),
        (Committed, Cancelled) => Some(&[Cancelled]),
        _ => None,
    }
}
