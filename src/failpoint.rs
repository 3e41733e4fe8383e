//! Test-only failpoints for the fault-injection harness (`jepsen/`,
//! `stockd-jepsen test --bug NAME`): a node whose environment has
//! `STOCKD_FAILPOINT=NAME` misbehaves on purpose, and the checkers must catch
//! it. Never set outside that harness.
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

use std::sync::OnceLock;

/// Environment variable naming the active failpoint.
pub const ENV: &str = "STOCKD_FAILPOINT";
pub const LOST_ACK: &str = "lost-ack";
pub const PEER_INVALID_AFTER_APPLY: &str = "peer-invalid-after-apply";
pub const PARTIAL_CART: &str = "partial-cart";

/// True when `name` is this process's failpoint.
pub fn active(name: &str) -> bool {
    static ACTIVE: OnceLock<Option<String>> = OnceLock::new();
    ACTIVE.get_or_init(|| std::env::var(ENV).ok()).as_deref() == Some(name)
}
