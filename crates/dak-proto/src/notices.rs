//! Operator notices (PROTOCOL.md §17): the rules the operator's tooling,
//! the server and every client share for the signed, append-only notice
//! log.
//!
//! Invariants:
//! - An entry is an encoded `OperatorNotice` and an Ed25519 signature by
//!   the operator's notice key over `SIGNING_CONTEXT || notice bytes`. The
//!   notice names its own `index` and the log's head before it
//!   (`prev_hash`), so a signature vouches for one place in one history.
//! - The head after an entry is `SHA-256(HEAD_CONTEXT || notice bytes)`;
//!   the empty log's head is 32 zero bytes. A log is accepted only entry by
//!   entry through `NoticeChain::append`, which checks the signature, the
//!   index, the previous head and the fields' limits, in that order after
//!   the length.
//! - A targeted-attack entry carries no text and no account: only a
//!   commitment, `SHA-256(TARGET_CONTEXT || sealed TargetedNoticeBody)`.
//!   The body goes to its account's devices alone (`open_targeted`).
//!
//! Nothing here does I/O; the decoders check lengths before parsing.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use prost::Message;
use sha2::{Digest, Sha256};

use crate::v1::{self, NoticeState, OperatorNoticeKind};

/// Largest encoded `SignedNotice` (and `TargetedNoticeBody`).
pub const MAX_NOTICE_BYTES: usize = 8 * 1024;
/// Longest title, in characters.
pub const MAX_NOTICE_TITLE_CHARS: usize = 120;
/// Longest of the other texts, in characters.
pub const MAX_NOTICE_TEXT_CHARS: usize = 1500;
/// Most entries in one `NoticeLog`.
pub const NOTICES_PER_PAGE: usize = 64;
/// Head hashes, commitments and `prev_hash`.
pub const NOTICE_HASH_BYTES: usize = 32;
/// The random part of a targeted notice.
pub const TARGET_NONCE_BYTES: usize = 16;

const SIGNING_CONTEXT: &[u8] = b"dak-v1 operator notice\0";
const HEAD_CONTEXT: &[u8] = b"dak-v1 notice log head\0";
const TARGET_CONTEXT: &[u8] = b"dak-v1 targeted notice\0";

/// Why a notice was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoticeError {
    #[error("a notice of {0} bytes is larger than the limit of {MAX_NOTICE_BYTES}")]
    TooLarge(usize),
    #[error("the notice does not decode: {0}")]
    Malformed(String),
    #[error("the notice's {field} {reason}")]
    Field {
        field: &'static str,
        reason: &'static str,
    },
    #[error("the notice key is not a valid Ed25519 public key")]
    BadKey,
    #[error("the notice is not signed by the operator's notice key this device pinned")]
    BadSignature,
    #[error("notice {got} is not the next entry of the log (that is {expected})")]
    OutOfOrder { expected: u64, got: u64 },
    #[error(
        "notice {index} does not extend the log this device has seen: the server shows a different history"
    )]
    Forked { index: u64 },
    #[error("the targeted notice does not match the commitment in log entry {0}")]
    NotCommitted(u64),
    #[error("the targeted notice is for another account")]
    NotForThisAccount,
}

/// The verifying key from its 32 bytes.
pub fn notice_key(bytes: &[u8]) -> Result<VerifyingKey, NoticeError> {
    let bytes: [u8; 32] = bytes.try_into().map_err(|_| NoticeError::BadKey)?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| NoticeError::BadKey)
}

/// The head after an entry whose encoded notice is `notice`.
pub fn head_after(notice: &[u8]) -> [u8; NOTICE_HASH_BYTES] {
    let mut h = Sha256::new();
    h.update(HEAD_CONTEXT);
    h.update(notice);
    h.finalize().into()
}

/// What a targeted notice's log entry commits to.
pub fn commitment(sealed: &[u8]) -> [u8; NOTICE_HASH_BYTES] {
    let mut h = Sha256::new();
    h.update(TARGET_CONTEXT);
    h.update(sealed);
    h.finalize().into()
}

fn signing_payload(notice: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(SIGNING_CONTEXT.len() + notice.len());
    out.extend_from_slice(SIGNING_CONTEXT);
    out.extend_from_slice(notice);
    out
}

/// Signs a notice (the operator's tooling). Checks its fields first, so
/// nothing the clients would refuse is ever signed.
pub fn sign_notice(
    key: &SigningKey,
    notice: &v1::OperatorNotice,
) -> Result<v1::SignedNotice, NoticeError> {
    check_fields(notice)?;
    let bytes = notice.encode_to_vec();
    let signed = v1::SignedNotice {
        signature: key.sign(&signing_payload(&bytes)).to_bytes().to_vec(),
        notice: bytes,
    };
    if signed.encoded_len() > MAX_NOTICE_BYTES {
        return Err(NoticeError::TooLarge(signed.encoded_len()));
    }
    Ok(signed)
}

/// Decodes one stored or received entry, length first.
pub fn decode_signed_notice(bytes: &[u8]) -> Result<v1::SignedNotice, NoticeError> {
    if bytes.len() > MAX_NOTICE_BYTES {
        return Err(NoticeError::TooLarge(bytes.len()));
    }
    v1::SignedNotice::decode(bytes).map_err(|e| NoticeError::Malformed(e.to_string()))
}

/// A log as far as it was checked: its length and head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoticeChain {
    pub length: u64,
    pub head: [u8; NOTICE_HASH_BYTES],
}

impl Default for NoticeChain {
    fn default() -> Self {
        NoticeChain {
            length: 0,
            head: [0; NOTICE_HASH_BYTES],
        }
    }
}

impl NoticeChain {
    /// A chain known to be at `length` with `head` (as a client stored it).
    pub fn at(length: u64, head: &[u8]) -> Result<NoticeChain, NoticeError> {
        let head = head.try_into().map_err(|_| NoticeError::Field {
            field: "head",
            reason: "is not 32 bytes",
        })?;
        Ok(NoticeChain { length, head })
    }

    /// Checks that `entry` is this log's next entry, signed by `key`, and
    /// moves the chain past it. On error the chain is unchanged.
    pub fn append(
        &mut self,
        key: &VerifyingKey,
        entry: &v1::SignedNotice,
    ) -> Result<v1::OperatorNotice, NoticeError> {
        let size = entry.encoded_len();
        if size > MAX_NOTICE_BYTES {
            return Err(NoticeError::TooLarge(size));
        }
        let signature =
            Signature::from_slice(&entry.signature).map_err(|_| NoticeError::Field {
                field: "signature",
                reason: "is not 64 bytes",
            })?;
        key.verify(&signing_payload(&entry.notice), &signature)
            .map_err(|_| NoticeError::BadSignature)?;
        let notice = v1::OperatorNotice::decode(entry.notice.as_slice())
            .map_err(|e| NoticeError::Malformed(e.to_string()))?;
        if notice.index != self.length {
            return Err(NoticeError::OutOfOrder {
                expected: self.length,
                got: notice.index,
            });
        }
        if notice.prev_hash != self.head {
            return Err(NoticeError::Forked {
                index: notice.index,
            });
        }
        check_fields(&notice)?;
        self.length += 1;
        self.head = head_after(&entry.notice);
        Ok(notice)
    }
}

fn text(field: &'static str, value: &str, max: usize) -> Result<(), NoticeError> {
    if value.chars().count() > max {
        return Err(NoticeError::Field {
            field,
            reason: "is too long",
        });
    }
    // Control characters (other than line breaks in the long texts) could
    // redraw a terminal or fake the frame clients draw around a notice.
    let allowed_break = max == MAX_NOTICE_TEXT_CHARS;
    if value
        .chars()
        .any(|c| c.is_control() && !(allowed_break && c == '\n'))
    {
        return Err(NoticeError::Field {
            field,
            reason: "holds control characters",
        });
    }
    Ok(())
}

/// The limits and rules of a notice's fields, apart from its place.
pub fn check_fields(n: &v1::OperatorNotice) -> Result<(), NoticeError> {
    let kind = OperatorNoticeKind::try_from(n.kind).unwrap_or(OperatorNoticeKind::Unspecified);
    if kind == OperatorNoticeKind::Unspecified {
        return Err(NoticeError::Field {
            field: "kind",
            reason: "is not one this version knows",
        });
    }
    if NoticeState::try_from(n.state).unwrap_or(NoticeState::Unspecified)
        == NoticeState::Unspecified
    {
        return Err(NoticeError::Field {
            field: "state",
            reason: "is neither ongoing nor resolved",
        });
    }
    if n.prev_hash.len() != NOTICE_HASH_BYTES {
        return Err(NoticeError::Field {
            field: "prev_hash",
            reason: "is not 32 bytes",
        });
    }
    if n.thread > n.index {
        return Err(NoticeError::Field {
            field: "thread",
            reason: "points past the notice itself",
        });
    }
    text("title", &n.title, MAX_NOTICE_TITLE_CHARS)?;
    for (field, value) in [
        ("what_happened", &n.what_happened),
        ("affected", &n.affected),
        ("not_affected", &n.not_affected),
        ("advice", &n.advice),
    ] {
        text(field, value, MAX_NOTICE_TEXT_CHARS)?;
    }
    if kind == OperatorNoticeKind::TargetedAttack {
        // The public log says only that such a notice went out.
        if n.commitment.len() != NOTICE_HASH_BYTES {
            return Err(NoticeError::Field {
                field: "commitment",
                reason: "is not 32 bytes",
            });
        }
        if !(n.title.is_empty()
            && n.what_happened.is_empty()
            && n.affected.is_empty()
            && n.not_affected.is_empty()
            && n.advice.is_empty())
        {
            return Err(NoticeError::Field {
                field: "text",
                reason: "must be empty in a targeted notice's public entry",
            });
        }
    } else {
        if !n.commitment.is_empty() {
            return Err(NoticeError::Field {
                field: "commitment",
                reason: "belongs to targeted notices only",
            });
        }
        if n.title.trim().is_empty() {
            return Err(NoticeError::Field {
                field: "title",
                reason: "is empty",
            });
        }
    }
    Ok(())
}

/// The rules of a targeted notice's body: its nonce, its size, its texts.
pub fn check_targeted_body(body: &v1::TargetedNoticeBody) -> Result<(), NoticeError> {
    if body.encoded_len() > MAX_NOTICE_BYTES {
        return Err(NoticeError::TooLarge(body.encoded_len()));
    }
    if body.nonce.len() != TARGET_NONCE_BYTES {
        return Err(NoticeError::Field {
            field: "nonce",
            reason: "is not 16 bytes",
        });
    }
    if body.phone.is_empty() {
        return Err(NoticeError::Field {
            field: "phone",
            reason: "is empty",
        });
    }
    if body.title.trim().is_empty() {
        return Err(NoticeError::Field {
            field: "title",
            reason: "is empty",
        });
    }
    text("title", &body.title, MAX_NOTICE_TITLE_CHARS)?;
    text("what_happened", &body.what_happened, MAX_NOTICE_TEXT_CHARS)?;
    text("advice", &body.advice, MAX_NOTICE_TEXT_CHARS)
}

/// Checks a targeted notice against the (already verified) log entry it
/// names and the account that received it; returns what it says.
pub fn open_targeted(
    entry: &v1::OperatorNotice,
    sealed: &[u8],
    my_phone: &str,
) -> Result<v1::TargetedNoticeBody, NoticeError> {
    if sealed.len() > MAX_NOTICE_BYTES {
        return Err(NoticeError::TooLarge(sealed.len()));
    }
    if entry.kind != OperatorNoticeKind::TargetedAttack as i32
        || entry.commitment != commitment(sealed)
    {
        return Err(NoticeError::NotCommitted(entry.index));
    }
    let body = v1::TargetedNoticeBody::decode(sealed)
        .map_err(|e| NoticeError::Malformed(e.to_string()))?;
    if body.phone != my_phone {
        return Err(NoticeError::NotForThisAccount);
    }
    check_targeted_body(&body)?;
    Ok(body)
}

/// The word for a kind, as the CLI and `/status` print it.
pub fn kind_name(kind: i32) -> &'static str {
    match OperatorNoticeKind::try_from(kind) {
        Ok(OperatorNoticeKind::Incident) => "incident",
        Ok(OperatorNoticeKind::Maintenance) => "maintenance",
        Ok(OperatorNoticeKind::Security) => "security",
        Ok(OperatorNoticeKind::TargetedAttack) => "targeted-attack",
        _ => "unknown",
    }
}

/// The word for a state.
pub fn state_name(state: i32) -> &'static str {
    match NoticeState::try_from(state) {
        Ok(NoticeState::Resolved) => "resolved",
        Ok(NoticeState::Ongoing) => "ongoing",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn notice(chain: &NoticeChain, title: &str) -> v1::OperatorNotice {
        v1::OperatorNotice {
            index: chain.length,
            prev_hash: chain.head.to_vec(),
            kind: OperatorNoticeKind::Incident as i32,
            thread: chain.length,
            state: NoticeState::Ongoing as i32,
            published_ms: 1,
            title: title.into(),
            what_happened: "the store stopped\nwe are on it".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_chain_of_signed_notices_is_accepted_in_order() {
        let k = key(1);
        let mut writer = NoticeChain::default();
        let mut reader = NoticeChain::default();
        for title in ["one", "two", "three"] {
            let signed = sign_notice(&k, &notice(&writer, title)).unwrap();
            writer.append(&k.verifying_key(), &signed).unwrap();
            let got = reader.append(&k.verifying_key(), &signed).unwrap();
            assert_eq!(got.title, title);
        }
        assert_eq!(reader, writer);
        assert_eq!(reader.length, 3);
    }

    #[test]
    fn another_key_a_gap_a_fork_and_a_replay_are_refused() {
        let k = key(1);
        let mut chain = NoticeChain::default();
        let first = sign_notice(&k, &notice(&chain, "one")).unwrap();
        // Signed by someone else.
        let forged = sign_notice(&key(2), &notice(&chain, "one")).unwrap();
        assert_eq!(
            chain.clone().append(&k.verifying_key(), &forged),
            Err(NoticeError::BadSignature)
        );
        chain.append(&k.verifying_key(), &first).unwrap();
        let before = chain;
        // The same entry again.
        assert!(matches!(
            chain.append(&k.verifying_key(), &first),
            Err(NoticeError::OutOfOrder {
                expected: 1,
                got: 0
            })
        ));
        // The right index on another history.
        let mut other = notice(&chain, "two");
        other.prev_hash = vec![7; 32];
        let other = sign_notice(&k, &other).unwrap();
        assert_eq!(
            chain.append(&k.verifying_key(), &other),
            Err(NoticeError::Forked { index: 1 })
        );
        // Tampered bytes break the signature.
        let mut tampered = sign_notice(&k, &notice(&chain, "two")).unwrap();
        let last = tampered.notice.len() - 1;
        tampered.notice[last] ^= 1;
        assert_eq!(
            chain.append(&k.verifying_key(), &tampered),
            Err(NoticeError::BadSignature)
        );
        assert_eq!(chain, before, "a refused entry changes nothing");
    }

    #[test]
    fn fields_are_checked_before_signing() {
        let k = key(1);
        let chain = NoticeChain::default();
        let mut n = notice(&chain, "");
        assert!(matches!(
            sign_notice(&k, &n),
            Err(NoticeError::Field { field: "title", .. })
        ));
        n.title = "x".repeat(MAX_NOTICE_TITLE_CHARS + 1);
        assert!(sign_notice(&k, &n).is_err());
        n.title = "fake\x1b[2Jframe".into();
        assert!(matches!(
            sign_notice(&k, &n),
            Err(NoticeError::Field {
                reason: "holds control characters",
                ..
            })
        ));
        n.title = "ok".into();
        n.kind = 99;
        assert!(sign_notice(&k, &n).is_err());
        n.kind = OperatorNoticeKind::Maintenance as i32;
        n.thread = 5;
        assert!(sign_notice(&k, &n).is_err());
    }

    #[test]
    fn a_targeted_notice_opens_only_for_its_account_and_commitment() {
        let k = key(1);
        let mut chain = NoticeChain::default();
        let body = v1::TargetedNoticeBody {
            nonce: vec![3; TARGET_NONCE_BYTES],
            phone: "+919800000001".into(),
            title: "Your phone may have been attacked".into(),
            what_happened: "a spyware campaign".into(),
            advice: "update the app".into(),
        }
        .encode_to_vec();
        let entry = v1::OperatorNotice {
            index: 0,
            prev_hash: chain.head.to_vec(),
            kind: OperatorNoticeKind::TargetedAttack as i32,
            state: NoticeState::Ongoing as i32,
            commitment: commitment(&body).to_vec(),
            ..Default::default()
        };
        let signed = sign_notice(&k, &entry).unwrap();
        let entry = chain.append(&k.verifying_key(), &signed).unwrap();
        let opened = open_targeted(&entry, &body, "+919800000001").unwrap();
        assert_eq!(opened.advice, "update the app");
        assert_eq!(
            open_targeted(&entry, &body, "+919800000002"),
            Err(NoticeError::NotForThisAccount)
        );
        let mut other = body.clone();
        other[5] ^= 1;
        assert_eq!(
            open_targeted(&entry, &other, "+919800000001"),
            Err(NoticeError::NotCommitted(0))
        );
        // A public entry with text, or a commitment on a public kind, is refused.
        let mut leaky = v1::OperatorNotice::decode(signed.notice.as_slice()).unwrap();
        leaky.title = "+919800000001 was attacked".into();
        assert!(sign_notice(&k, &leaky).is_err());
    }

    #[test]
    fn oversized_input_is_refused_before_parsing() {
        let big = vec![0u8; MAX_NOTICE_BYTES + 1];
        assert_eq!(
            decode_signed_notice(&big),
            Err(NoticeError::TooLarge(MAX_NOTICE_BYTES + 1))
        );
        assert!(matches!(
            decode_signed_notice(&[0xff, 0xff]),
            Err(NoticeError::Malformed(_))
        ));
    }
}
