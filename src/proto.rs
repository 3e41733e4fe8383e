//! Generated gRPC code (see `proto/`).

#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod v1 {
    tonic::include_proto!("stockd.v1");
}

pub mod peer {
    tonic::include_proto!("stockd.peer.v1");
}

/// Encoded file descriptors of every service, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("stockd_descriptor");
