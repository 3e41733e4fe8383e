//! The one place where errors become `tonic::Status`.
//!
//! | error                         | code                | client should        |
//! |-------------------------------|---------------------|----------------------|
//! | invalid input                 | INVALID_ARGUMENT    | fix the request      |
//! | not leader (hint in metadata) | FAILED_PRECONDITION | follow the hint      |
//! | proposal queue full           | RESOURCE_EXHAUSTED  | back off, retry      |
//! | outcome unknown / no leader   | UNAVAILABLE         | retry with same id   |
//! | group stopped                 | UNAVAILABLE         | try another node     |
//! | refused by a peer as invalid  | INVALID_ARGUMENT    | fix the request      |
//! | misrouted (epoch in metadata) | ABORTED             | retry with same id   |
//!
//! The security layer's refusals (UNAUTHENTICATED, PERMISSION_DENIED) are
//! made in `security.rs`, before any handler runs.

use raft::GroupError;
use storage::validate::InvalidInput;
use tonic::metadata::MetadataValue;
use tonic::Status;

use stockd_proto::metadata::EPOCH;
use stockd_proto::metadata::LEADER_ADDR;
use stockd_proto::metadata::LEADER_ID;
use stockd_proto::metadata::NOT_LEADER_PREFIX;
use stockd_proto::metadata::STALE_ROUTE_PREFIX;

pub fn invalid(e: InvalidInput) -> Status {
    Status::invalid_argument(e.to_string())
}

pub fn invalid_field(field: &str, reason: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("invalid {field}: {reason}"))
}

/// Names the field of an invalid-argument error as one of a batch
/// (`prefix` = `checks[3].`); other errors pass unchanged.
pub fn prefixed(prefix: &str, e: Status) -> Status {
    match e.message().strip_prefix("invalid ") {
        Some(rest) if e.code() == tonic::Code::InvalidArgument => Status::invalid_argument(format!("invalid {prefix}{rest}")),
        _ => e,
    }
}

pub fn model_error(e: models::ModelError) -> Status {
    use models::ModelError;
    match e {
        ModelError::Config { .. } | ModelError::Candidate { .. } => Status::invalid_argument(e.to_string()),
        ModelError::UnknownVersion { .. } => Status::not_found(e.to_string()),
        _ => Status::failed_precondition(e.to_string()),
    }
}

pub fn group_error(e: GroupError) -> Status {
    match e {
        GroupError::NotLeader { group, leader } => {
            let mut status = Status::failed_precondition(format!("{NOT_LEADER_PREFIX} for group {group}"));
            if let Some((id, addr)) = leader {
                if let Ok(v) = MetadataValue::try_from(id.to_string()) {
                    status.metadata_mut().insert(LEADER_ID, v);
                }
                if let Ok(v) = MetadataValue::try_from(addr) {
                    status.metadata_mut().insert(LEADER_ADDR, v);
                }
            }
            status
        }
        GroupError::Overloaded { group } => Status::resource_exhausted(format!("group {group} is overloaded; not applied, retry later")),
        GroupError::Unavailable { group, reason } => Status::unavailable(format!("group {group}: outcome unknown, retry with the same id: {reason}")),
        GroupError::Fatal { group, reason } => Status::unavailable(format!("group {group} stopped on this node: {reason}")),
        GroupError::Invalid { reason, .. } => Status::invalid_argument(reason),
        GroupError::StaleRoute { routed_epoch, range, .. } => {
            let mut status =
                Status::aborted(format!("{STALE_ROUTE_PREFIX}: {range}; the request was routed at epoch {routed_epoch}; not applied, retry with the same id"));
            if let Ok(v) = MetadataValue::try_from(range.epoch.to_string()) {
                status.metadata_mut().insert(EPOCH, v);
            }
            status
        }
    }
}
