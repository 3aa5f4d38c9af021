//! "Device D has new mail" notifications. A connection subscribes to its
//! device's topic; whoever commits an envelope to a mailbox publishes. A
//! notification carries no data and may be lost or coalesced: the mailbox in
//! the store is the truth, and a woken connection re-reads it. That is what
//! lets the NATS backend (cluster mode) be at-most-once without losing mail.
//!
//! This crate holds the trait, the in-process backend for one node, and the
//! NATS backend for a cluster.

mod nats;

pub use nats::{NatsBus, NatsError};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// Topics are plain strings, e.g. `mail.42` or `link.ABCD1234`, so they map
/// one-to-one onto NATS subjects.
pub trait Bus: Send + Sync + 'static {
    /// Wakes every subscriber of `topic` on every node.
    fn publish(&self, topic: &str);
    /// A receiver that changes whenever `topic` is published. Dropping it
    /// unsubscribes.
    fn subscribe(&self, topic: &str) -> Subscription;
    /// Whether a publish can reach other nodes (a cluster's bus). When it
    /// cannot, a node may deliver new mail to its own connections by other
    /// means (the server's fast path) and skip the mail wake.
    fn spans_nodes(&self) -> bool {
        true
    }
}

/// Wakes on each publish; several publishes before a wait count as one,
/// which is exactly the coalescing a mailbox reader wants.
/// Field order matters: `rx` drops before `_guard`, so the guard sees the
/// receiver count without this subscription.
pub struct Subscription {
    rx: watch::Receiver<u64>,
    _guard: Option<Box<dyn Send + Sync>>,
}

impl Subscription {
    pub fn new(rx: watch::Receiver<u64>, guard: Option<Box<dyn Send + Sync>>) -> Self {
        Subscription { rx, _guard: guard }
    }

    /// Waits for the next publish. Returns false if the bus has gone away.
    pub async fn changed(&mut self) -> bool {
        self.rx.changed().await.is_ok()
    }
}

/// The bus for a single node: a map of topic to a watch channel.
#[derive(Clone, Default)]
pub struct LocalBus {
    topics: Arc<Mutex<HashMap<String, watch::Sender<u64>>>>,
}

impl LocalBus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Topics with at least one live subscriber (for metrics and tests).
    pub fn live_topics(&self) -> usize {
        self.prune();
        self.topics.lock().map(|t| t.len()).unwrap_or(0)
    }

    /// Wakes every subscriber (after a bus outage, when notifications may
    /// have been lost).
    pub fn wake_all(&self) {
        if let Ok(t) = self.topics.lock() {
            for tx in t.values() {
                tx.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
    }

    fn prune(&self) {
        if let Ok(mut t) = self.topics.lock() {
            t.retain(|_, tx| tx.receiver_count() > 0);
        }
    }
}

struct Unsubscribe {
    bus: LocalBus,
    topic: String,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        if let Ok(mut t) = self.bus.topics.lock()
            && let Some(tx) = t.get(&self.topic)
            && tx.receiver_count() == 0
        {
            t.remove(&self.topic);
        }
    }
}

impl Bus for LocalBus {
    fn spans_nodes(&self) -> bool {
        false
    }

    fn publish(&self, topic: &str) {
        if let Ok(t) = self.topics.lock()
            && let Some(tx) = t.get(topic)
        {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    fn subscribe(&self, topic: &str) -> Subscription {
        let rx = match self.topics.lock() {
            Ok(mut t) => t
                .entry(topic.to_owned())
                .or_insert_with(|| watch::channel(0).0)
                .subscribe(),
            Err(_) => watch::channel(0).1,
        };
        let guard = Unsubscribe {
            bus: self.clone(),
            topic: topic.to_owned(),
        };
        Subscription::new(rx, Some(Box::new(guard)))
    }
}

/// The topic a device's connection listens on for new mail.
pub fn mail_topic(device: u64) -> String {
    format!("mail.{device}")
}

/// The topic a device waiting to be linked listens on.
pub fn link_topic(code: &str) -> String {
    format!("link.{code}")
}

/// The topic a device listens on for being revoked (unlinked, number moved).
pub fn revoke_topic(device: u64) -> String {
    format!("revoke.{device}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn publish_wakes_subscriber_and_coalesces() {
        let bus = LocalBus::new();
        let mut sub = bus.subscribe("mail.1");
        bus.publish("mail.1");
        bus.publish("mail.1");
        assert!(sub.changed().await);
        let woke = tokio::time::timeout(std::time::Duration::from_millis(50), sub.changed()).await;
        assert!(woke.is_err(), "two publishes before a wait wake once");
    }

    #[tokio::test]
    async fn dropping_the_last_subscription_forgets_the_topic() {
        let bus = LocalBus::new();
        let a = bus.subscribe("mail.2");
        let b = bus.subscribe("mail.2");
        assert_eq!(bus.live_topics(), 1);
        drop(a);
        assert_eq!(bus.live_topics(), 1);
        drop(b);
        assert_eq!(bus.live_topics(), 0);
        bus.publish("mail.2"); // no subscriber: nothing happens
    }
}
