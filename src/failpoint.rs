//! Test-only failpoints: a node whose environment has `STOCKD_FAILPOINT=NAME`
//! (the fault-injection harness, `stockd-jepsen test --bug NAME`), or whose
//! failpoint a cluster test set (`Node::set_failpoint`), misbehaves on
//! purpose, and the checkers or the test must catch it. Never set outside
//! tests. Planted bugs:
//!
//! - `lost-ack`: every Reserve is acknowledged as OK without being proposed
//!   (a lost acknowledged write).
//! - `peer-invalid-after-apply`: a Commit or Release forwarded over the peer
//!   plane is applied, then answered INVALID_ARGUMENT, which the forwarding
//!   node reports to its client as definitely not applied (an applied write
//!   reported as failed).
//! - `partial-cart`: a Commit of a cart across groups commits the lines of
//!   one line group and answers OK, without the home record (which stays
//!   pending, then expires and frees the other lines).
//! - `split-drops-reservations`: a split's child starts without the
//!   reservations and intents that moved to it (their positions keep the
//!   units held): acknowledged reservations lost in a split.
//! - `split-drops-homes`: a split's child starts without the cart records
//!   and locators of the home slots it took (their intents keep the units
//!   held): acknowledged carts whose record is lost in a split.
//! - `merge-without-freeze`: a merge copies the right range's state without
//!   freezing it first, so whatever the right range acknowledges between
//!   the copy and its retirement is lost (the pitfall the freeze exists
//!   for); its driver waits a second after the copy, as a slow one would.
//! - `move-skips-history`: a replica started empty on a node (the target
//!   of a move) takes the entries from before it was added as applied,
//!   without applying them, so it starts without the group's records; the
//!   move's driver then hands it the group's leadership, as the balancer
//!   may.
//!
//! A coordinator that stops (as if its node died) after one step of a cart
//! across groups, answering `UNAVAILABLE`; the rest is left to the
//! resolvers of the other nodes:
//! - `cart-stop-after-begin`: after the home record is created;
//! - `cart-stop-after-prepare`: after every line group held its lines,
//!   before the decide;
//! - `cart-stop-before-follow`: after the home decided a final state
//!   (abort, commit, release...), before any line group followed it.
//!
//! A move's driver that stops after the group's voters changed, before the
//! topology recorded them (`move-stop-before-record`), answering
//! `UNAVAILABLE`: the group's leader must make the topology say what the
//! group is (`placement::reconcile_replicas_when_due`).

/// Environment variable naming the active failpoint.
pub const ENV: &str = "STOCKD_FAILPOINT";
pub const LOST_ACK: &str = "lost-ack";
pub const PEER_INVALID_AFTER_APPLY: &str = "peer-invalid-after-apply";
pub const PARTIAL_CART: &str = "partial-cart";
pub const SPLIT_DROPS_RESERVATIONS: &str = "split-drops-reservations";
pub const SPLIT_DROPS_HOMES: &str = "split-drops-homes";
pub const MERGE_WITHOUT_FREEZE: &str = "merge-without-freeze";
/// The freeze index `merge-without-freeze` claims for a range it never froze.
pub const MERGE_WITHOUT_FREEZE_INDEX: u64 = 0;
/// How long `merge-without-freeze`'s driver waits between the copy and the
/// merge: the window in which the right range still acknowledges writes
/// that the copy misses (a 10 s run with one merge must show a loss). 1 s
/// was too short: a run whose right range was out of stock for that second
/// acknowledged only refusals there, which change nothing, and passed.
pub const MERGE_WITHOUT_FREEZE_PAUSE: std::time::Duration = std::time::Duration::from_secs(3);
pub const MOVE_SKIPS_HISTORY: &str = "move-skips-history";
pub const CART_STOP_AFTER_BEGIN: &str = "cart-stop-after-begin";
pub const CART_STOP_AFTER_PREPARE: &str = "cart-stop-after-prepare";
pub const CART_STOP_BEFORE_FOLLOW: &str = "cart-stop-before-follow";
pub const MOVE_STOP_BEFORE_RECORD: &str = "move-stop-before-record";

/// The failpoint of this process's environment, if any.
pub fn from_env() -> Option<String> {
    std::env::var(ENV).ok().filter(|name| !name.is_empty())
}
