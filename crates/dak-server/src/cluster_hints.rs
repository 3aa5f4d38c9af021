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
//! - What arrives is decoded as untrusted input (`decode_committed`); one
//!   that does not decode, or comes from another store (two clusters on
//!   one NATS under the same `cluster` name: pushed, it could make a device
//!   ack, and so delete, an envelope it was never given), is dropped and
//!   counted.
//!
//! Hints go to every node, not only the one that holds a device: fine for
//! a cluster of a few nodes; a larger one wants a device-to-node directory.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use dak_bus::Bus;
use dak_proto::cluster::{MAX_COMMITTED_BYTES, check_committed, decode_committed};
use dak_proto::v1;
use dak_store::{CommitListener, CommittedEnvelope, HintOrder, NewEnvelope};
use prost::Message;

use crate::online::Online;

/// The commit listener of a node whose bus reaches other nodes.
pub struct ClusterHints {
    online: Arc<Online>,
    bus: Arc<dyn Bus>,
    /// The store's order, known once the listener is installed: other
    /// nodes can check a hint only against contiguous seqs.
    order: OnceLock<HintOrder>,
    /// `Store::identity`: sent in each hint, required of each one taken.
    store: String,
    /// Send hints (else wakes): `Config::cluster_hints`.
    send: bool,
}

impl ClusterHints {
    pub fn new(online: Arc<Online>, bus: Arc<dyn Bus>, store: &str, send: bool) -> Arc<Self> {
        Arc::new(ClusterHints {
            online,
            bus,
            order: OnceLock::new(),
            store: store.to_owned(),
            send,
        })
    }

    /// Records the store's order and, with contiguous seqs, starts taking
    /// other nodes' hints for this node's connections.
    pub fn installed(&self, order: HintOrder, refused: Arc<AtomicU64>) {
        let _ = self.order.set(order);
        if order != HintOrder::ContiguousSeqs {
            return;
        }
        let (online, store) = (self.online.clone(), self.store.clone());
        let taken = self.bus.on_committed(Box::new(move |payload| {
            match decode_committed(payload) {
                Ok(c) if c.store == store => online.committed(&[from_hint(c)]),
                Ok(_) => {
                    refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        "a cluster hint from another store: two clusters share this NATS and its `cluster` name"
                    );
                }
                Err(e) => {
                    refused.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %e, "a cluster hint was refused");
                }
            }
        }));
        if !taken {
            tracing::warn!("the bus already has a hint sink; other nodes' hints go elsewhere");
        }
    }

    /// Tells the other nodes of one envelope: as a hint, or by waking its
    /// devices there.
    fn tell_others(&self, e: &CommittedEnvelope) {
        if self.send && self.order.get() == Some(&HintOrder::ContiguousSeqs) {
            let hint = to_hint(e, &self.store);
            if check_committed(&hint).is_ok() {
                let bytes = hint.encode_to_vec();
                if bytes.len() <= MAX_COMMITTED_BYTES && self.bus.publish_committed(bytes) {
                    return;
                }
            }
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

fn to_hint(c: &CommittedEnvelope, store: &str) -> v1::ClusterCommitted {
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
        store: store.to_owned(),
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

    #[test]
    fn a_hint_carries_the_envelope_and_every_seq_across() {
        let c = CommittedEnvelope {
            envelope: Arc::new(NewEnvelope {
                message_id: vec![3; 16],
                sender_phone: "+919800000001".into(),
                sender_device: 9,
                server_time_ms: 11,
                expires_ms: 12,
                body: vec![5; 40],
            }),
            placed: vec![(4, 17), (8, 2)],
        };
        let bytes = to_hint(&c, "store-1").encode_to_vec();
        let hint = decode_committed(&bytes).expect("decodes");
        assert_eq!(hint.store, "store-1");
        let back = from_hint(hint);
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
}
