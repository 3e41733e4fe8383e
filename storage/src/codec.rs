//! Checksummed record encoding: `crc32 (LE, 4 bytes) || bincode(value)`.
//! Every record written through the codec is verified when it is read back.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::StorageError;

const CRC_BYTES: usize = 4;

/// Encodes `value` with a leading CRC-32 of its bincode bytes.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    // bincode only fails on unsupported types (e.g. maps with non-string keys
    // are fine); our records are plain data, so a failure is a programming
    // error.
    let body = bincode::serialize(value).expect("record types are bincode-serializable");
    let mut out = Vec::with_capacity(CRC_BYTES + body.len());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Decodes a record written by [`encode`], verifying its checksum. `what`
/// names the record in the error.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, StorageError> {
    if bytes.len() < CRC_BYTES {
        return Err(StorageError::Corrupt { what: what.to_string(), reason: format!("{} bytes is shorter than the checksum", bytes.len()) });
    }
    let (crc, body) = bytes.split_at(CRC_BYTES);
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let actual = crc32fast::hash(body);
    if stored != actual {
        return Err(StorageError::Corrupt { what: what.to_string(), reason: format!("checksum {actual:08x} does not match stored {stored:08x}") });
    }
    bincode::deserialize(body).map_err(|e| StorageError::Corrupt { what: what.to_string(), reason: format!("cannot decode: {e}") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_detects_corruption() {
        let value = (7u64, "sku-1".to_string());
        let mut bytes = encode(&value);
        let back: (u64, String) = decode(&bytes, "test").expect("decodes");
        assert_eq!(back, value);
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        let err = decode::<(u64, String)>(&bytes, "test").expect_err("flipped bit must be caught");
        assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
        assert!(decode::<u64>(&[1, 2], "short").is_err());
    }
}
