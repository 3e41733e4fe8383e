//! Generated gRPC code: the public API comes from `stockd-proto`; the peer
//! protocol (`proto/stockd/peer/v1/peer.proto`), which only nodes speak, is
//! generated here.

pub use stockd_proto::v1;

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod peer {
    tonic::include_proto!("stockd.peer.v1");
}
