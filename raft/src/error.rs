//! The errors a group reports to its callers, split as openraft splits them:
//! definitely not applied, outcome unknown, fatal.

use serde::Deserialize;
use serde::Serialize;
use storage::model::GroupId;
use storage::model::RangeDesc;
use thiserror::Error;

use crate::NodeId;

/// Why a group could not serve a request. `NotLeader`, `Overloaded` and
/// `Invalid` mean the command was definitely not applied by this call;
/// `Unavailable` means its outcome is unknown (retry with the same id);
/// `Fatal` stops the group.
#[derive(Debug, Clone, Error, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupError {
    #[error("node is not the leader of group {group}")]
    NotLeader { group: GroupId, leader: Option<(NodeId, String)> },
    #[error("group {group} has too many proposals queued")]
    Overloaded { group: GroupId },
    #[error("group {group} is unavailable: {reason}")]
    Unavailable { group: GroupId, reason: String },
    #[error("group {group} stopped: {reason}")]
    Fatal { group: GroupId, reason: String },
    /// A node refused a forwarded command or read as invalid input, with the
    /// message a client would get for it (`invalid lines[0].quantity: ...`).
    #[error("{reason}")]
    Invalid { group: GroupId, reason: String },
    /// The group refused the command at apply: it was routed with epoch
    /// `routed_epoch` of the group's range, or a key of it is outside the
    /// range; `range` is the group's own. Definitely not applied: refresh
    /// the route and retry with the same id.
    #[error("stale route: {range}, the command was routed at epoch {routed_epoch}")]
    StaleRoute { group: GroupId, routed_epoch: u64, range: RangeDesc },
}

impl GroupError {
    /// True when the command was certainly not applied.
    pub fn definitely_not_applied(&self) -> bool {
        matches!(self, GroupError::Overloaded { .. } | GroupError::Invalid { .. } | GroupError::StaleRoute { .. })
    }
}
