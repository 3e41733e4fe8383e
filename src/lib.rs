//! stockd: a distributed, replicated inventory engine. This root crate holds
//! the node (routing, forwarding), the gRPC services, the client library and
//! the binaries. It is the only crate that knows tonic.

pub mod availability;
pub mod bench;
pub mod cli;
pub mod client;
pub mod config;
pub mod convert;
pub mod node;
pub mod peer;
pub mod proto;
pub mod server;
pub mod shard_map;
pub mod status;
