//! The cluster bus: notifications cross nodes through NATS.
//!
//! Each node holds one NATS subscription (`CLUSTER.>`), not one per device, and
//! hands what arrives to its `LocalBus`, where the device connections wait.
//! A publish wakes local subscribers at once and goes to NATS without echo,
//! so the other nodes wake theirs. NATS is at-most-once here, and that is
//! enough: a notification only says "read your mailbox". When the NATS
//! connection comes back after a break, every local subscriber is woken,
//! because notifications may have been lost meanwhile.

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::{Bus, LocalBus, Subscription};

/// Publishes waiting for the NATS client. When full, a notification is
/// dropped (with a debug log): the recipient still gets the mail on its next read.
const OUTGOING: usize = 65_536;

#[derive(Debug, thiserror::Error)]
#[error("cannot connect to NATS at {url}: {message}")]
pub struct NatsError {
    pub url: String,
    pub message: String,
}

#[derive(Clone)]
pub struct NatsBus {
    local: LocalBus,
    outgoing: mpsc::Sender<String>,
    client: async_nats::Client,
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
        let (relay, strip) = (local.clone(), prefix.clone());
        tokio::spawn(async move {
            while let Some(msg) = incoming.next().await {
                if let Some(topic) = msg.subject.as_str().strip_prefix(strip.as_str()) {
                    relay.publish(topic);
                }
            }
        });
        let (outgoing, mut rx) = mpsc::channel::<String>(OUTGOING);
        let (publisher, subject_prefix) = (client.clone(), prefix.clone());
        tokio::spawn(async move {
            while let Some(topic) = rx.recv().await {
                if let Err(e) = publisher
                    .publish(format!("{subject_prefix}{topic}"), Bytes::new())
                    .await
                {
                    tracing::debug!(error = %e, "NATS publish failed; the mailbox still holds the mail");
                }
            }
        });
        Ok(NatsBus {
            local,
            outgoing,
            client,
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
        if self.outgoing.try_send(topic.to_owned()).is_err() {
            tracing::debug!("NATS publish queue full; a notification was dropped");
        }
    }

    fn subscribe(&self, topic: &str) -> Subscription {
        self.local.subscribe(topic)
    }
}
