//! Message ids: 16 bytes, UUIDv7 (time-ordered), shown as UUIDs.

use dak_proto::normalize_phone;
use dak_proto::v1::{self, ErrorCode};

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

/// A phone number as the user typed it, normalized to E.164, or the
/// server's error for an invalid number.
pub(crate) fn phone(raw: &str) -> Result<String, ClientError> {
    normalize_phone(raw)
        .map_err(|e| ClientError::Server(v1::Error::new(ErrorCode::InvalidPhone, e.to_string())))
}
