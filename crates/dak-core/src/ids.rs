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

/// A conversation: a 1:1 chat with an account (its E.164 number) or a named
/// group (its 32-byte MLS group id). Stored and shown by `key`: the number,
/// or `group:` and the id in hex.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ConversationId {
    Direct(String),
    Group(Vec<u8>),
}

impl ConversationId {
    /// The stored form: the number, or `group:<hex id>`.
    pub fn key(&self) -> String {
        match self {
            ConversationId::Direct(phone) => phone.clone(),
            ConversationId::Group(id) => crate::group_key(id),
        }
    }

    /// Reads a stored key back (anything not `group:<hex>` is a number).
    pub fn from_key(key: &str) -> ConversationId {
        match crate::parse_group_key(key) {
            Some(id) => ConversationId::Group(id),
            None => ConversationId::Direct(key.to_string()),
        }
    }

    pub fn is_group(&self) -> bool {
        matches!(self, ConversationId::Group(_))
    }
}

impl std::fmt::Display for ConversationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.key())
    }
}

/// Serialized as its key, as the CLI's `--json` has always shown it.
impl serde::Serialize for ConversationId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.key())
    }
}

impl PartialEq<str> for ConversationId {
    fn eq(&self, other: &str) -> bool {
        match self {
            ConversationId::Direct(p) => p == other,
            ConversationId::Group(id) => crate::parse_group_key(other).is_some_and(|o| &o == id),
        }
    }
}

impl PartialEq<&str> for ConversationId {
    fn eq(&self, other: &&str) -> bool {
        self == *other
    }
}

impl PartialEq<String> for ConversationId {
    fn eq(&self, other: &String) -> bool {
        self == other.as_str()
    }
}

/// From a stored key (see `ConversationId::from_key`).
impl From<&str> for ConversationId {
    fn from(key: &str) -> ConversationId {
        ConversationId::from_key(key)
    }
}

impl From<String> for ConversationId {
    fn from(key: String) -> ConversationId {
        ConversationId::from_key(&key)
    }
}

/// An empty number: only for `MessageView::default()` in tests.
impl Default for ConversationId {
    fn default() -> ConversationId {
        ConversationId::Direct(String::new())
    }
}
