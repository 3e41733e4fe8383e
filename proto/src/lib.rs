//! stockd's public API, for services that call stockd and for stockd itself:
//! the generated `stockd.v1` messages and services ([`v1`]), the metadata keys
//! a node answers with ([`metadata`]), the public limits ([`limits`]) and the
//! role table ([`roles`]).
//!
//! Boundary: this crate depends on nothing server-side (no RocksDB, openraft,
//! ort, no tonic transport); the client crate and the server both build on it.

pub mod roles;

/// The home slot of a reservation id, as nodes compute it; clients use it
/// to send a cart to its home's leader (a crate of its own, which the state
/// machine shares).
pub use stockd_home as home;

/// Generated `stockd.v1` types, clients and service traits.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("stockd.v1");
}

/// Encoded file descriptors of the `stockd.v1` services, for gRPC server
/// reflection (the peer protocol is deliberately not in it).
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("stockd_v1_descriptor");

/// gRPC metadata a node sets on its answers.
pub mod metadata {
    /// On a "not leader" refusal: the node id of the group's leader.
    pub const LEADER_ID: &str = "stockd-leader-id";
    /// On a "not leader" refusal: the client address (`host:port`) of the
    /// group's leader.
    pub const LEADER_ADDR: &str = "stockd-leader-addr";
    /// Start of the FAILED_PRECONDITION message of a node that can neither
    /// serve nor forward a request; clients treat it as a redirect.
    pub const NOT_LEADER_PREFIX: &str = "not leader";
    /// Start of the ABORTED message of a command that a group refused at
    /// apply because it was routed with another epoch of the group's range
    /// (or a key of it is outside the range): definitely not applied; retry
    /// with the same id.
    pub const STALE_ROUTE_PREFIX: &str = "stale route";
    /// On a "stale route" refusal: the group's range epoch now.
    pub const EPOCH: &str = "stockd-epoch";
}

/// Limits every node enforces whatever its configuration (the configurable
/// input limits, such as units per line, are in the node's `[cluster]`
/// settings).
pub mod limits {
    /// Most reservations in one `BatchReserve` call.
    pub const BATCH_RESERVATIONS_MAX: usize = 1024;
    /// Most questions in one `CheckAvailabilityBatch` call.
    pub const BATCH_CHECKS_MAX: usize = 256;
    /// Longest A/B route key (`route_key` of availability questions and of a
    /// risk gate).
    pub const ROUTE_KEY_BYTES_MAX: usize = 256;
}
