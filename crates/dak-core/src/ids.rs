//! Message ids: 16 bytes, UUIDv7 (time-ordered), shown as UUIDs.

use crate::ClientError;

/// Message ids are shown as UUIDs (they are UUIDv7: time-ordered).
pub fn format_id(id: &[u8]) -> String {
    uuid::Uuid::from_slice(id)
        .map(|u| u.to_string())
        .unwrap_or_else(|_| hex::encode(id))
}

pub fn parse_id(s: &str) -> Result<Vec<u8>, ClientError> {
    uuid::Uuid::parse_str(s.trim())
        .map(|u| u.as_bytes().to_vec())
        .map_err(|_| {
            ClientError::Usage(format!(
                "{s:?} is not a message id (a UUID, as `dak send` prints)"
            ))
        })
}

pub fn ser_id<S: serde::Serializer>(id: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_id(id))
}
