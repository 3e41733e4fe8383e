//! Encoding of openraft messages between peers: bincode, the same on both
//! ends because every node runs the same build.

use serde::de::DeserializeOwned;
use serde::Serialize;

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serialize(value).expect("openraft messages are serializable")
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    bincode::deserialize(bytes).map_err(|e| format!("cannot decode a peer message: {e}"))
}
