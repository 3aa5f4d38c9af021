//! The cluster bus: notifications cross nodes through NATS.
//!
//! Each node holds one NATS subscription (`CLUSTER.>`), not one per device, and
//! hands what arrives to its `LocalBus`, where the device connections wait.
//! A publish wakes local subscribers at once and goes to NATS without echo,
//! so the other nodes wake theirs. NATS is at-most-once here, and that is
//! enough: a notification only says "read your mailbox". When the NATS
//! connection comes back after a break, every local subscriber is woken,
//! because notifications may have been lost meanwhile.
//!
//! The same subscription carries committed hints (`CLUSTER.committed`: an
//! envelope another node committed, with its seqs), handed to the sink the
//! server installs (`Bus::on_committed`). They are at-most-once too: a
//! session pushes a hint only if its seq is the next one, so a lost hint
//! shows as a gap at the next and the store is read.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::{Bus, CommittedSink, LocalBus, Subscription};

/// The topic of committed hints, under the cluster's prefix; no wake topic
/// (`mail.`, `link.`, `revoke.`) can be this.
const COMMITTED: &str = "committed";

/// Publishes waiting for the NATS client. When full, a notification is
/// dropped (with a debug log): the recipient still gets the mail on its next read.
const OUTGOING: usize = 65_536;

/// Bytes of committed hints waiting for the NATS client or being handed to
/// it. Past it a hint is refused, and the server wakes its devices instead.
const OUTGOING_HINT_BYTES: usize = 64 << 20;

/// The NATS client's own queues, in messages, set below their defaults
/// (2,048 out, 65,536 in) because a message can now carry an envelope: at
/// most 256 × 512 KiB = 128 MiB of hints waiting to go out, and 2,048 ×
/// the server's max_payload (1 MiB by default) arriving in the worst case,
/// where the defaults allowed 1 GiB and 64 GiB. An inbound queue that
/// overflows drops messages (a slow consumer), and every local device is
/// woken to read its mailbox.
const CLIENT_OUT: usize = 256;
const CLIENT_IN: usize = 2048;

#[derive(Debug, thiserror::Error)]
#[error("cannot connect to NATS at {url}: {message}")]
pub struct NatsError {
    pub url: String,
    pub message: String,
}

#[derive(Clone)]
pub struct NatsBus {
    local: LocalBus,
    /// (topic, payload): empty for a wake.
    outgoing: mpsc::Sender<(String, Bytes)>,
    client: async_nats::Client,
    committed: Arc<OnceLock<CommittedSink>>,
    /// Bytes of hints in `outgoing` (at most `OUTGOING_HINT_BYTES`).
    hint_bytes: Arc<AtomicUsize>,
}

impl NatsBus {
    /// `cluster` names the subject space (`CLUSTER.mail.42`), so several
    /// clusters can share one NATS.
    pub async fn connect(url: &str, cluster: &str) -> Result<NatsBus, NatsError> {
        let prefix = format!("{cluster}.");
        let local = LocalBus::new();
        let on_event = local.clone();
        let client = async_nats::ConnectOptions::new()
            .no_echo()
            .retry_on_initial_connect()
            .client_capacity(CLIENT_OUT)
            .subscription_capacity(CLIENT_IN)
            .event_callback(move |event| {
                let local = on_event.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            tracing::info!(
                                "NATS connected; waking every local device to re-read its mailbox"
                            );
                            local.wake_all();
                        }
                        async_nats::Event::Disconnected => {
                            tracing::warn!("NATS disconnected; reconnecting")
                        }
                        async_nats::Event::SlowConsumer(_) => {
                            tracing::warn!(
                                "NATS dropped messages for this node (too slow to take them); waking every local device to re-read its mailbox"
                            );
                            local.wake_all();
                        }
                        other => tracing::debug!(event = %other, "NATS event"),
                    }
                }
            })
            .connect(url)
            .await
            .map_err(|e| NatsError {
                url: url.into(),
                message: e.to_string(),
            })?;
        let mut incoming = client
            .subscribe(format!("{prefix}>"))
            .await
            .map_err(|e| NatsError {
                url: url.into(),
                message: e.to_string(),
            })?;
        let committed: Arc<OnceLock<CommittedSink>> = Arc::default();
        let (relay, strip, sink) = (local.clone(), prefix.clone(), committed.clone());
        tokio::spawn(async move {
            while let Some(msg) = incoming.next().await {
                match msg.subject.as_str().strip_prefix(strip.as_str()) {
                    Some(COMMITTED) => {
                        if let Some(sink) = sink.get() {
                            sink(&msg.payload);
                        }
                    }
                    Some(topic) => relay.publish(topic),
                    None => {}
                }
            }
        });
        let (outgoing, mut rx) = mpsc::channel::<(String, Bytes)>(OUTGOING);
        let hint_bytes = Arc::new(AtomicUsize::new(0));
        let (publisher, subject_prefix, sent) =
            (client.clone(), prefix.clone(), hint_bytes.clone());
        tokio::spawn(async move {
            while let Some((topic, payload)) = rx.recv().await {
                let len = payload.len();
                if let Err(e) = publisher
                    .publish(format!("{subject_prefix}{topic}"), payload)
                    .await
                {
                    tracing::debug!(error = %e, "NATS publish failed; the mailbox still holds the mail");
                }
                sent.fetch_sub(len, Ordering::Relaxed);
            }
        });
        Ok(NatsBus {
            local,
            outgoing,
            client,
            committed,
            hint_bytes,
        })
    }

    /// Whether the NATS connection is up (for /readyz).
    pub fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }
}

impl Bus for NatsBus {
    fn publish(&self, topic: &str) {
        self.local.publish(topic);
        self.publish_elsewhere(topic);
    }

    fn publish_elsewhere(&self, topic: &str) {
        if self
            .outgoing
            .try_send((topic.to_owned(), Bytes::new()))
            .is_err()
        {
            tracing::debug!("NATS publish queue full; a notification was dropped");
        }
    }

    fn publish_committed(&self, payload: Vec<u8>) -> bool {
        let len = payload.len();
        // What the server would refuse (its max_payload) goes as wakes.
        if len > self.client.max_payload() {
            return false;
        }
        if self.hint_bytes.fetch_add(len, Ordering::Relaxed) + len > OUTGOING_HINT_BYTES {
            self.hint_bytes.fetch_sub(len, Ordering::Relaxed);
            return false;
        }
        if self
            .outgoing
            .try_send((COMMITTED.to_owned(), Bytes::from(payload)))
            .is_err()
        {
            self.hint_bytes.fetch_sub(len, Ordering::Relaxed);
            return false;
        }
        true
    }

    fn on_committed(&self, sink: CommittedSink) -> bool {
        self.committed.set(sink).is_ok()
    }

    fn subscribe(&self, topic: &str) -> Subscription {
        self.local.subscribe(topic)
    }
}
