//! stockd: a distributed, replicated inventory engine. This root crate holds
//! the node (routing, forwarding), its two planes (the gRPC services, the
//! peer protocol), their security (mTLS, roles), the operator CLI and the
//! binaries. Of the server crates it is the only one that knows tonic.

pub mod availability;
pub mod bench;
pub mod bootstrap;
pub mod cart;
pub mod certs;
pub mod cli;
pub mod cli_access;
pub mod config;
pub mod convert;
pub mod failpoint;
pub mod join;
pub mod merge;
pub mod metadata;
pub mod node;
pub mod peer_client;
pub mod peer_service;
pub mod peer_stream;
pub mod placement;
pub mod proto;
pub mod read;
pub mod security;
pub mod server;
pub mod shard_map;
pub mod status;
pub mod tls;
