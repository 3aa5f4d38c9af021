//! Dak's wire protocol: the protobuf types, the frame codec with its limits,
//! the error codes, and the small rules both ends share (phone numbers, what
//! a device signs). Pure: this crate does no I/O, so the codec can be fuzzed
//! and reused by every client, the browser included.

pub mod blob;
pub mod business;
pub mod cluster;
mod codec;
pub mod content;
pub mod interactive;
pub mod invite;
pub mod kt;
pub mod mls;
pub mod notices;
mod phone;

pub use codec::{
    FrameError, decode_client_frame, decode_content, decode_server_frame, encode, validate_client,
};
pub use phone::{PhoneError, normalize_phone};

/// The generated protobuf types (`proto/dak.proto`).
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/dak.v1.rs"));
}

/// Largest frame either side accepts. Message bodies are small MLS
/// ciphertexts; attachments will travel out of band.
pub const MAX_FRAME_BYTES: usize = 256 * 1024;
/// Largest opaque message body in a `SendMessage`.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Message ids are 16 random bytes chosen by the sender.
pub const MESSAGE_ID_BYTES: usize = 16;
/// Most sequence numbers in one `AckDeliveries`.
pub const MAX_ACKS_PER_FRAME: usize = 4096;
/// Longest free-text field (device names, link codes, PINs).
pub const MAX_SHORT_TEXT: usize = 64;
/// Most KeyPackages in one upload, and the group-id length we accept.
pub const MAX_KEY_PACKAGES_PER_UPLOAD: usize = 200;
pub const MAX_GROUP_ID_BYTES: usize = 64;
/// Most devices a client may name as known in one KeyPackage fetch.
pub const MAX_KNOWN_DEVICES: usize = 64;
/// Ed25519 public keys and signatures.
pub const IDENTITY_KEY_BYTES: usize = 32;
pub const SIGNATURE_BYTES: usize = 64;
/// Challenge nonces.
pub const NONCE_BYTES: usize = 32;
/// Most devices one commit may add or remove: a whole group of 1,024
/// accounts with every device each may have (a primary and up to seven
/// linked ones). The server checks its own, usually smaller, configured
/// product as well.
pub const MAX_COMMIT_DEVICES: usize = 1024 * 8;
/// Registration sessions (`CodeSent.session`).
pub const SESSION_BYTES: usize = 32;

/// What a device signs to prove it holds its identity key on this
/// connection: a context string, the server's nonce and what it claims.
/// The context keeps a signature made for one purpose from being replayed
/// for another; the nonce keeps it from being replayed on another connection.
pub fn auth_payload(purpose: AuthPurpose, nonce: &[u8], claim: &[u8]) -> Vec<u8> {
    let context: &[u8] = match purpose {
        AuthPurpose::Authenticate => b"dak-v1 authenticate\0",
        AuthPurpose::Register => b"dak-v1 register\0",
        AuthPurpose::Link => b"dak-v1 link\0",
    };
    let mut out = Vec::with_capacity(context.len() + nonce.len() + claim.len());
    out.extend_from_slice(context);
    out.extend_from_slice(nonce);
    out.extend_from_slice(claim);
    out
}

/// Why a device signs a challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthPurpose {
    /// Log in as an existing device; the claim is the device id (8 bytes, big endian).
    Authenticate,
    /// Register a new primary device; the claim is the phone number.
    Register,
    /// Start linking a new device; the claim is the identity key.
    Link,
}

impl v1::Error {
    pub fn new(code: v1::ErrorCode, message: impl Into<String>) -> Self {
        let retryable = matches!(
            code,
            v1::ErrorCode::RateLimited | v1::ErrorCode::Unavailable | v1::ErrorCode::Internal
        );
        v1::Error {
            code: code as i32,
            message: message.into(),
            retryable,
            retry_after_secs: 0,
            epoch: 0,
        }
    }

    /// The code, or `ErrorUnspecified` for a code this build does not know.
    pub fn kind(&self) -> v1::ErrorCode {
        v1::ErrorCode::try_from(self.code).unwrap_or(v1::ErrorCode::ErrorUnspecified)
    }
}

impl std::fmt::Display for v1::Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.kind().as_str_name())
    }
}

impl std::error::Error for v1::Error {}
