//! The cluster's half of the fast path (ARCHITECTURE.md, "In a cluster"):
//! each envelope this node's store commits goes to this node's connections
//! (`Online`) and, as one `v1::ClusterCommitted` over the bus, to every
//! other node, whose sink offers it to the connections it holds there.
//!
//! Invariants:
//! - A hint is only a hint. With `HintOrder::ContiguousSeqs` a session
//!   pushes one only if its seq is the next of its device
//!   (`inbox::pushable`), so a hint that is lost, late or repeated makes a
//!   session read the store, never skip or double an envelope.
//! - Every committed envelope reaches the other nodes as a hint or, when
//!   it cannot go as one (outside `check_committed`'s bounds, larger than
//!   the bus takes, the bus's queue full, a store whose seqs a remote node
//!   cannot check, or hints turned off for a rolling upgrade:
//!   `Config::cluster_hints`), as a mail wake for each of its devices.
//! - A hint is pushed only if its HMAC-SHA-256, keyed by the store's
//!   `hint_secret` (random, in the shared database), checks out: a hint
//!   forged by whatever can publish on NATS, or one from another cluster
//!   on the same NATS under the same `cluster` name, would be pushed if its
//!   seq were next, and the device's ack of it would delete the real
//!   envelope at that seq, never shown. What fails the check, or then
//!   `decode_committed`, is dropped and counted.
//!
//! Hints go to every node, not only the one that holds a device: fine for
//! a cluster of a few nodes; a larger one wants a device-to-node directory.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};

use dak_bus::Bus;
use dak_proto::cluster::{MAX_COMMITTED_BYTES, check_committed, decode_committed};
use dak_proto::v1;
use dak_store::{CommitListener, CommittedEnvelope, HintOrder, NewEnvelope};
use hmac::{Hmac, Mac};
use prost::Message;

type HintMac = Hmac<sha2::Sha256>;

/// Bytes of the HMAC in front of each hint.
const TAG: usize = 32;

use crate::online::Online;

/// The commit listener of a node whose bus reaches other nodes.
pub struct ClusterHints {
    online: Arc<Online>,
    bus: Arc<dyn Bus>,
    /// The store's order, known once the listener is installed: other
    /// nodes can check a hint only against contiguous seqs.
    order: OnceLock<HintOrder>,
    /// `Store::hint_secret`: the hints' HMAC key.
    key: Vec<u8>,
    /// Send hints (else wakes): `Config::cluster_hints`.
    send: bool,
}

impl ClusterHints {
    /// `secret`: the store's `hint_secret`; without one no hint is sent
    /// or taken (mail wakes go instead).
    pub fn new(
        online: Arc<Online>,
        bus: Arc<dyn Bus>,
        secret: Option<&str>,
        send: bool,
    ) -> Arc<Self> {
        let key = secret.map(|s| s.as_bytes().to_vec()).unwrap_or_default();
        Arc::new(ClusterHints {
            online,
            bus,
            order: OnceLock::new(),
            send: send && !key.is_empty(),
            key,
        })
    }

    /// Records the store's order and, with contiguous seqs, starts taking
    /// other nodes' hints for this node's connections.
    pub fn installed(&self, order: HintOrder, refused: Arc<AtomicU64>) {
        let _ = self.order.set(order);
        if order != HintOrder::ContiguousSeqs || self.key.is_empty() {
            return;
        }
        let (online, key) = (self.online.clone(), self.key.clone());
        let taken = self
            .bus
            .on_committed(Box::new(move |payload| match open(&key, payload) {
                Ok(c) => online.committed(&[c]),
                Err(why) => {
                    crate::metrics::Metrics::inc(&refused);
                    tracing::debug!(why, "a cluster hint was refused");
                }
            }));
        if !taken {
            tracing::warn!("the bus already has a hint sink; other nodes' hints go elsewhere");
        }
    }

    /// Tells the other nodes of one envelope: as a hint, or by waking its
    /// devices there.
    fn tell_others(&self, e: &CommittedEnvelope) {
        if self.send
            && self.order.get() == Some(&HintOrder::ContiguousSeqs)
            && let Some(sealed) = seal(&self.key, e)
            && self.bus.publish_committed(sealed)
        {
            return;
        }
        for (device, _) in &e.placed {
            self.bus.publish_elsewhere(&dak_bus::mail_topic(*device));
        }
    }
}

impl CommitListener for ClusterHints {
    fn committed(&self, envelopes: &[CommittedEnvelope]) {
        self.online.committed(envelopes);
        for e in envelopes {
            self.tell_others(e);
        }
    }
}

/// The hint for `c` with its HMAC in front; None when it is outside what
/// a receiving node takes (`check_committed`, `MAX_COMMITTED_BYTES`).
fn seal(key: &[u8], c: &CommittedEnvelope) -> Option<Vec<u8>> {
    let hint = to_hint(c);
    check_committed(&hint).ok()?;
    let body = hint.encode_to_vec();
    if body.len() > MAX_COMMITTED_BYTES {
        return None;
    }
    let mut mac = HintMac::new_from_slice(key).ok()?;
    mac.update(&body);
    let mut sealed = mac.finalize().into_bytes().to_vec();
    sealed.extend_from_slice(&body);
    Some(sealed)
}

/// A hint from another node, if its HMAC checks out (in constant time,
/// before anything is decoded) and it decodes within bounds.
fn open(key: &[u8], payload: &[u8]) -> Result<CommittedEnvelope, &'static str> {
    if payload.len() < TAG {
        return Err("shorter than its HMAC");
    }
    let (tag, body) = payload.split_at(TAG);
    let mut mac = HintMac::new_from_slice(key).map_err(|_| "no key")?;
    mac.update(body);
    mac.verify_slice(tag)
        .map_err(|_| "wrong HMAC: forged, damaged, or another cluster's")?;
    decode_committed(body)
        .map(from_hint)
        .map_err(|_| "does not decode within bounds")
}

fn to_hint(c: &CommittedEnvelope) -> v1::ClusterCommitted {
    let e = &c.envelope;
    v1::ClusterCommitted {
        message_id: e.message_id.clone(),
        sender_phone: e.sender_phone.clone(),
        sender_device: e.sender_device,
        server_time_ms: e.server_time_ms,
        expires_ms: e.expires_ms,
        body: e.body.clone(),
        devices: c.placed.iter().map(|(d, _)| *d).collect(),
        seqs: c.placed.iter().map(|(_, s)| *s).collect(),
    }
}

fn from_hint(c: v1::ClusterCommitted) -> CommittedEnvelope {
    CommittedEnvelope {
        placed: c.devices.into_iter().zip(c.seqs).collect(),
        envelope: Arc::new(NewEnvelope {
            message_id: c.message_id,
            sender_phone: c.sender_phone,
            sender_device: c.sender_device,
            server_time_ms: c.server_time_ms,
            expires_ms: c.expires_ms,
            body: c.body,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committed() -> CommittedEnvelope {
        CommittedEnvelope {
            envelope: Arc::new(NewEnvelope {
                message_id: vec![3; 16],
                sender_phone: "+919800000001".into(),
                sender_device: 9,
                server_time_ms: 11,
                expires_ms: 12,
                body: vec![5; 40],
            }),
            placed: vec![(4, 17), (8, 2)],
        }
    }

    #[test]
    fn a_hint_carries_the_envelope_and_every_seq_across() {
        let c = committed();
        let sealed = seal(b"cluster secret", &c).expect("within bounds");
        let back = open(b"cluster secret", &sealed).expect("opens");
        assert_eq!(back.placed, c.placed);
        assert_eq!(back.envelope.body, c.envelope.body);
        assert_eq!(back.envelope.message_id, c.envelope.message_id);
        assert_eq!(back.envelope.sender_phone, c.envelope.sender_phone);
        assert_eq!(
            (
                back.envelope.sender_device,
                back.envelope.server_time_ms,
                back.envelope.expires_ms
            ),
            (9, 11, 12)
        );
    }

    #[test]
    fn a_forged_damaged_or_foreign_hint_is_refused() {
        let sealed = seal(b"cluster secret", &committed()).expect("within bounds");
        assert!(open(b"another cluster", &sealed).is_err(), "another key");
        let mut damaged = sealed.clone();
        *damaged.last_mut().unwrap() ^= 1;
        assert!(open(b"cluster secret", &damaged).is_err(), "a flipped bit");
        // A well-formed hint with no valid tag: what a NATS publisher
        // without the secret can make.
        let mut forged = vec![0u8; TAG];
        forged.extend(to_hint(&committed()).encode_to_vec());
        assert!(open(b"cluster secret", &forged).is_err(), "forged");
        assert!(open(b"cluster secret", &sealed[..TAG - 1]).is_err());
    }

    #[test]
    fn a_hint_beyond_the_bounds_is_not_sealed() {
        let mut c = committed();
        c.placed = Vec::new();
        assert!(seal(b"cluster secret", &c).is_none(), "no device");
    }
}
