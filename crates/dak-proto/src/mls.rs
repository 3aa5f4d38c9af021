//! The MLS rules both ends share: the ciphersuite, what a device's
//! credential says, and what the server (the MLS Delivery Service) may learn
//! from a message: its kind, group and epoch, which RFC 9420 leaves in the
//! clear. Decoding is openmls's; this module only decides what to accept.
//! Pure, like the rest of the crate, so the fuzz targets can reach it.

use openmls::prelude::tls_codec::Deserialize;
use openmls::prelude::{
    ContentType, KeyPackage, KeyPackageIn, MlsMessageBodyIn, MlsMessageIn, ProtocolMessage,
    ProtocolVersion, Sender,
};
use openmls_rust_crypto::RustCrypto;

pub use openmls::prelude::Ciphersuite;

/// X25519, AES-128-GCM, SHA-256 and Ed25519: Ed25519 is already each
/// device's identity key, so the device signs MLS with the key the server
/// bound to its account at registration or linking.
pub const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

/// Largest MLS message the server takes (a commit with its Welcome).
pub const MAX_MLS_BYTES: usize = crate::MAX_FRAME_BYTES - 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MlsCheckError {
    #[error("not an MLS message: {0}")]
    Undecodable(String),
    #[error("{0}")]
    Refused(&'static str),
    #[error("KeyPackage signature or contents invalid: {0}")]
    BadKeyPackage(String),
}

/// The identity in a device's basic credential: "<phone>/<device id>".
pub fn credential_identity(phone: &str, device_id: u64) -> Vec<u8> {
    format!("{phone}/{device_id}").into_bytes()
}

/// Reads a credential identity back; None when it is not one of ours.
pub fn parse_identity(identity: &[u8]) -> Option<(String, u64)> {
    let s = std::str::from_utf8(identity).ok()?;
    let (phone, device) = s.rsplit_once('/')?;
    if !phone.starts_with('+') {
        return None;
    }
    Some((phone.to_owned(), device.parse().ok()?))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MlsKind {
    /// An encrypted application message (PrivateMessage).
    Application,
    /// A commit sent as a PublicMessage by a member.
    Commit,
    Welcome,
}

/// What the Delivery Service reads off a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MlsInfo {
    pub kind: MlsKind,
    /// Empty for a Welcome (its group is encrypted).
    pub group_id: Vec<u8>,
    pub epoch: u64,
}

fn parse(bytes: &[u8]) -> Result<MlsMessageIn, MlsCheckError> {
    if bytes.len() > MAX_MLS_BYTES {
        return Err(MlsCheckError::Refused("MLS message too large"));
    }
    MlsMessageIn::tls_deserialize_exact(bytes)
        .map_err(|e| MlsCheckError::Undecodable(e.to_string()))
}

/// Classifies a message. Only the three kinds the server forwards pass:
/// application messages must be encrypted, commits must come from a member
/// in the clear (so their epoch can be checked), proposals are not used.
pub fn inspect(bytes: &[u8]) -> Result<MlsInfo, MlsCheckError> {
    match parse(bytes)?.extract() {
        MlsMessageBodyIn::PrivateMessage(m) => {
            let m = ProtocolMessage::from(m);
            if m.content_type() != ContentType::Application {
                return Err(MlsCheckError::Refused(
                    "handshake messages must be sent as PublicMessage",
                ));
            }
            info(MlsKind::Application, &m)
        }
        MlsMessageBodyIn::PublicMessage(m) => {
            if m.content_type() != ContentType::Commit {
                return Err(MlsCheckError::Refused(
                    "only commits may be sent in the clear",
                ));
            }
            if !matches!(m.sender(), Sender::Member(_)) {
                return Err(MlsCheckError::Refused("commits must come from a member"));
            }
            info(MlsKind::Commit, &ProtocolMessage::from(m))
        }
        MlsMessageBodyIn::Welcome(_) => Ok(MlsInfo {
            kind: MlsKind::Welcome,
            group_id: Vec::new(),
            epoch: 0,
        }),
        _ => Err(MlsCheckError::Refused(
            "expected an application message, a commit or a Welcome",
        )),
    }
}

fn info(kind: MlsKind, m: &ProtocolMessage) -> Result<MlsInfo, MlsCheckError> {
    let group_id = m.group_id().as_slice().to_vec();
    if group_id.is_empty() || group_id.len() > crate::MAX_GROUP_ID_BYTES {
        return Err(MlsCheckError::Refused("group id must be 1 to 64 bytes"));
    }
    Ok(MlsInfo {
        kind,
        group_id,
        epoch: m.epoch().as_u64(),
    })
}

/// Checks an uploaded KeyPackage: its signatures (openmls), our ciphersuite,
/// a credential naming this device, and the device's own identity key as
/// its signature key. Returns whether it is marked last-resort.
pub fn check_key_package(
    bytes: &[u8],
    phone: &str,
    device_id: u64,
    identity_key: &[u8],
) -> Result<bool, MlsCheckError> {
    let kp = match parse(bytes)?.extract() {
        MlsMessageBodyIn::KeyPackage(kp) => kp,
        _ => return Err(MlsCheckError::Refused("expected a KeyPackage")),
    };
    let kp = validate(kp)?;
    if kp.ciphersuite() != CIPHERSUITE {
        return Err(MlsCheckError::Refused(
            "KeyPackage uses another ciphersuite than MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519",
        ));
    }
    let leaf = kp.leaf_node();
    if leaf.credential().serialized_content() != credential_identity(phone, device_id) {
        return Err(MlsCheckError::Refused(
            "KeyPackage credential does not name this device",
        ));
    }
    if leaf.signature_key().as_slice() != identity_key {
        return Err(MlsCheckError::Refused(
            "KeyPackage is not signed with this device's identity key",
        ));
    }
    Ok(kp.last_resort())
}

fn validate(kp: KeyPackageIn) -> Result<KeyPackage, MlsCheckError> {
    kp.validate(&RustCrypto::default(), ProtocolVersion::Mls10)
        .map_err(|e| MlsCheckError::BadKeyPackage(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_round_trip_and_reject_strangers() {
        let id = credential_identity("+919800000001", 42);
        assert_eq!(parse_identity(&id), Some(("+919800000001".into(), 42)));
        assert_eq!(parse_identity(b"alice"), None);
        assert_eq!(parse_identity(b"+91/x"), None);
        assert_eq!(parse_identity(&[0xff, 0xfe]), None);
    }

    #[test]
    fn garbage_is_not_an_mls_message() {
        assert!(matches!(
            inspect(&[1, 2, 3]),
            Err(MlsCheckError::Undecodable(_))
        ));
        assert!(inspect(&[]).is_err());
        assert!(check_key_package(&[0; 40], "+1", 1, &[0; 32]).is_err());
    }
}
