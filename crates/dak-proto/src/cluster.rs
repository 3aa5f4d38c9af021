//! What one node tells the others of an envelope it committed (the cluster
//! fast path, ARCHITECTURE.md "In a cluster"): the envelope and the seq it
//! took in each device's mailbox, as one `v1::ClusterCommitted`.
//!
//! Only nodes send it, over NATS, with an HMAC in front that the receiving
//! node checks first (`dak-server`'s `cluster_hints.rs`), and a node
//! decodes it as untrusted input all the same: the length first, then
//! prost, then the fields' bounds. A hint
//! that decodes is still only a hint: a session pushes it only if its seq
//! is the next one of its device, and reads the store otherwise.

use prost::Message;

use crate::v1;
use crate::{MAX_COMMIT_DEVICES, MAX_FRAME_BYTES, MAX_SHORT_TEXT};

/// Largest encoded hint a node publishes or accepts: a whole frame's body
/// and a seq for each device of the largest commit fit; a bigger envelope
/// is announced by a plain mail wake instead. NATS's default payload limit
/// is 1 MiB.
pub const MAX_COMMITTED_BYTES: usize = 512 * 1024;

/// Longest message id a hint may carry (clients send 16 bytes; the store
/// does not insist, so neither does this, within reason).
const MAX_MESSAGE_ID_BYTES: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommittedError {
    #[error("cluster hint of {len} bytes is larger than the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("cluster hint is not a valid protobuf message: {0}")]
    Malformed(String),
    #[error("cluster hint is out of bounds: {0}")]
    Invalid(&'static str),
}

/// Decodes and checks a hint from another node.
pub fn decode_committed(bytes: &[u8]) -> Result<v1::ClusterCommitted, CommittedError> {
    if bytes.len() > MAX_COMMITTED_BYTES {
        return Err(CommittedError::TooLarge {
            len: bytes.len(),
            max: MAX_COMMITTED_BYTES,
        });
    }
    let c = v1::ClusterCommitted::decode(bytes)
        .map_err(|e| CommittedError::Malformed(e.to_string()))?;
    check_committed(&c)?;
    Ok(c)
}

/// The fields' bounds, for a hint decoded or about to be sent.
pub fn check_committed(c: &v1::ClusterCommitted) -> Result<(), CommittedError> {
    let invalid = |why| Err(CommittedError::Invalid(why));
    if c.devices.len() != c.seqs.len() {
        return invalid("devices and seqs differ in length");
    }
    if c.devices.is_empty() || c.devices.len() > MAX_COMMIT_DEVICES {
        return invalid("a hint names 1 to MAX_COMMIT_DEVICES devices");
    }
    if c.seqs.iter().any(|s| *s == 0 || *s > i64::MAX as u64) {
        return invalid("a seq is 1 to i64::MAX");
    }
    if c.body.len() > MAX_FRAME_BYTES {
        return invalid("body larger than a frame");
    }
    if c.message_id.len() > MAX_MESSAGE_ID_BYTES {
        return invalid("message id too long");
    }
    if c.sender_phone.len() > MAX_SHORT_TEXT {
        return invalid("sender phone too long");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hint() -> v1::ClusterCommitted {
        v1::ClusterCommitted {
            message_id: vec![1; 16],
            sender_phone: "+919800000001".into(),
            sender_device: 3,
            server_time_ms: 5,
            expires_ms: 6,
            body: vec![9; 100],
            devices: vec![4, 7],
            seqs: vec![10, 1],
        }
    }

    #[test]
    fn a_hint_round_trips() {
        let h = hint();
        assert_eq!(decode_committed(&h.encode_to_vec()), Ok(h));
    }

    #[test]
    fn bad_hints_get_their_own_errors() {
        let big = vec![0u8; MAX_COMMITTED_BYTES + 1];
        assert!(matches!(
            decode_committed(&big),
            Err(CommittedError::TooLarge { .. })
        ));
        assert!(matches!(
            decode_committed(&[0xff, 0xff]),
            Err(CommittedError::Malformed(_))
        ));
        for broken in [
            v1::ClusterCommitted {
                seqs: vec![1],
                ..hint()
            },
            v1::ClusterCommitted {
                devices: vec![],
                seqs: vec![],
                ..hint()
            },
            v1::ClusterCommitted {
                seqs: vec![0, 1],
                ..hint()
            },
            v1::ClusterCommitted {
                seqs: vec![u64::MAX, 1],
                ..hint()
            },
            v1::ClusterCommitted {
                message_id: vec![1; 65],
                ..hint()
            },
            v1::ClusterCommitted {
                body: vec![0; MAX_FRAME_BYTES + 1],
                ..hint()
            },
        ] {
            let refused = decode_committed(&broken.encode_to_vec());
            assert!(
                matches!(refused, Err(CommittedError::Invalid(_))),
                "{refused:?}"
            );
        }
    }
}
