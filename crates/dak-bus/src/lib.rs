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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Takes the payload of a committed hint from another node.
pub type CommittedSink = Box<dyn Fn(&[u8]) + Send + Sync>;

/// Topics are plain strings, e.g. `mail.42` or `link.ABCD1234`, so they map
/// one-to-one onto NATS subjects.
pub trait Bus: Send + Sync + 'static {
    /// Wakes every subscriber of `topic` on every node.
    fn publish(&self, topic: &str);
    /// A receiver that changes whenever `topic` is published. Dropping it
    /// unsubscribes.
    fn subscribe(&self, topic: &str) -> Subscription;
    /// Wakes the subscribers of `topic` on the other nodes only: for mail
    /// this node has already handed to its own connections (the server's
    /// fast path). A bus that reaches no other node does nothing.
    fn publish_elsewhere(&self, topic: &str) {
        if self.spans_nodes() {
            self.publish(topic);
        }
    }
    /// Sends `payload` (an encoded `dak_proto::v1::ClusterCommitted`) to
    /// every other node's committed-hint sink, at most once: it may be
    /// lost on the way. False when it was not even queued (the bus reaches
    /// no other node, or its queue is full): then the caller wakes the
    /// devices instead.
    fn publish_committed(&self, _payload: Vec<u8>) -> bool {
        false
    }
    /// Where hints that other nodes publish go on this node (one sink; a
    /// second call replaces nothing and returns false). The sink runs on
    /// the bus's receiving task: it must not block.
    fn on_committed(&self, _sink: CommittedSink) -> bool {
        false
    }
    /// Whether a publish can reach other nodes (a cluster's bus). When it
    /// cannot, a node may deliver new mail to its own connections by other
    /// means (the server's fast path) and skip the mail wake.
    fn spans_nodes(&self) -> bool {
        true
    }
}

/// One topic on this node: a publish count and its waiters. Lighter than a
/// `tokio::sync::watch` channel (whose shared state with eight notifiers is
/// ~340 bytes): every authenticated connection holds two topics, so this is
/// per-connection memory (docs/BENCHMARKS.md, "connect").
#[derive(Default)]
struct Topic {
    published: AtomicU64,
    waiters: Notify,
}

/// Wakes on each publish; several publishes before a wait count as one,
/// which is exactly the coalescing a mailbox reader wants. Dropping it
/// unsubscribes; the last one out removes its topic from the bus.
pub struct Subscription {
    /// None: a subscription made when the bus was unusable, which reports
    /// the bus gone; also None once dropped.
    topic: Option<Arc<Topic>>,
    /// The publish count this subscription has seen.
    seen: u64,
    /// Where to remove the topic from, and its name.
    bus: Option<(LocalBus, Box<str>)>,
}

impl Subscription {
    /// Waits for the next publish. Returns false if the bus has gone away.
    pub async fn changed(&mut self) -> bool {
        let Some(topic) = &self.topic else {
            return false;
        };
        loop {
            // Enabled before the count is read, so a publish between the
            // read and the wait still wakes it.
            let woken = topic.waiters.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let now = topic.published.load(Ordering::Acquire);
            if now != self.seen {
                self.seen = now;
                return true;
            }
            woken.await;
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let (Some(mine), Some((bus, name))) = (self.topic.take(), &self.bus) else {
            return;
        };
        // Under the lock this subscription's reference goes too, so two
        // last subscribers dropping at once cannot each see the other.
        if let Ok(mut t) = bus.topics.lock() {
            if let Some(topic) = t.get(&**name)
                && Arc::ptr_eq(topic, &mine)
                // The map's reference and this one: no other subscriber.
                && Arc::strong_count(&mine) == 2
            {
                t.remove(&**name);
            }
            drop(mine);
        }
    }
}

/// The bus for a single node: a map of topic to its publish count.
#[derive(Clone, Default)]
pub struct LocalBus {
    topics: Arc<Mutex<HashMap<Box<str>, Arc<Topic>>>>,
}

impl LocalBus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Topics with at least one live subscriber (for metrics and tests).
    pub fn live_topics(&self) -> usize {
        self.topics.lock().map(|t| t.len()).unwrap_or(0)
    }

    /// Wakes every subscriber (after a bus outage, when notifications may
    /// have been lost).
    pub fn wake_all(&self) {
        if let Ok(t) = self.topics.lock() {
            for topic in t.values() {
                wake(topic);
            }
        }
    }
}

fn wake(topic: &Topic) {
    topic.published.fetch_add(1, Ordering::Release);
    topic.waiters.notify_waiters();
}

impl Bus for LocalBus {
    fn spans_nodes(&self) -> bool {
        false
    }

    fn publish(&self, topic: &str) {
        if let Ok(t) = self.topics.lock()
            && let Some(topic) = t.get(topic)
        {
            wake(topic);
        }
    }

    fn subscribe(&self, name: &str) -> Subscription {
        let Ok(mut t) = self.topics.lock() else {
            return Subscription {
                topic: None,
                seen: 0,
                bus: None,
            };
        };
        let topic = t.entry(name.into()).or_default().clone();
        let seen = topic.published.load(Ordering::Acquire);
        Subscription {
            topic: Some(topic),
            seen,
            bus: Some((self.clone(), name.into())),
        }
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

    #[tokio::test]
    async fn a_publish_while_a_subscriber_waits_wakes_it_and_every_subscriber() {
        let bus = LocalBus::new();
        let mut a = bus.subscribe("mail.3");
        let mut b = bus.subscribe("mail.3");
        let waiting = tokio::spawn(async move { a.changed().await });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        bus.publish("mail.3");
        let woke = tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await;
        assert!(
            woke.expect("woken").expect("task"),
            "the waiting subscriber"
        );
        assert!(b.changed().await, "the other saw the publish too");
        bus.wake_all();
        assert!(b.changed().await, "wake_all wakes every topic");
    }

    #[test]
    fn subscribers_dropping_on_many_threads_leave_no_topic_behind() {
        let bus = LocalBus::new();
        for _ in 0..200 {
            let subs: Vec<_> = (0..4).map(|_| bus.subscribe("mail.4")).collect();
            std::thread::scope(|s| {
                for sub in subs {
                    s.spawn(move || drop(sub));
                }
            });
            assert_eq!(bus.live_topics(), 0);
        }
    }
}
