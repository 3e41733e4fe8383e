//! Encoding of messages between peers: bincode, the same on both ends because
//! every node runs the same build. Every decode is bounded: a peer payload
//! larger than its limit is refused before it is read.

use bincode::Options;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Largest encoded Raft message (append batches, snapshot chunks).
pub const RAFT_MESSAGE_BYTES_MAX: usize = 64 << 20;

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serialize(value).expect("openraft messages are serializable")
}

/// Decodes a Raft message of at most [`RAFT_MESSAGE_BYTES_MAX`] bytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    decode_bounded(bytes, RAFT_MESSAGE_BYTES_MAX)
}

/// Decodes a message of at most `limit` bytes, in the format of [`encode`];
/// no length inside it can make the decoder read or allocate past `limit`.
pub fn decode_bounded<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, String> {
    if bytes.len() > limit {
        return Err(format!("a peer message of {} bytes is over its limit of {limit} bytes", bytes.len()));
    }
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes()
        .with_limit(limit as u64)
        .deserialize(bytes)
        .map_err(|e| format!("cannot decode a peer message: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_decoding_reads_what_encode_wrote_and_refuses_more() {
        let value = (7u64, "sku-1".to_owned(), vec![1u32, 2, 3]);
        let bytes = encode(&value);
        assert_eq!(decode_bounded::<(u64, String, Vec<u32>)>(&bytes, bytes.len()), Ok(value));
        assert!(decode_bounded::<(u64, String, Vec<u32>)>(&bytes, bytes.len() - 1).expect_err("over").contains("over its limit"));
        // A length prefix that claims 2^40 bytes of string in a short message.
        let mut forged = (1u64 << 40).to_le_bytes().to_vec();
        forged.extend_from_slice(b"abc");
        assert!(decode_bounded::<String>(&forged, 1024).is_err());
    }
}
