//! What every connection shares: config, store, bus, SMS sender, limits,
//! metrics. Passed explicitly; there is no global state.

use std::sync::Arc;
use std::time::Duration;

use dak_bus::Bus;
use dak_proto::v1::ErrorCode;
use dak_store::Store;
use tokio::sync::watch;

use crate::config::Config;
use crate::edge::Admission;
use crate::error::{ApiError, ApiResult};
use crate::metrics::Metrics;
use crate::online::Online;
use crate::pin_hasher::PinHasher;
use crate::ratelimit::{IpPrefix, Limiter};
use crate::sms::SmsSender;

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub config: Config,
    pub store: Arc<dyn Store>,
    /// Media blobs' bytes (`media.rs`).
    pub blobs: Arc<dyn dak_store::BlobStore>,
    /// Media transfers under way on this node (`max_transfers`).
    pub transfers: Arc<tokio::sync::Semaphore>,
    pub media_requests: Limiter<IpPrefix>,
    pub media_networks: crate::media::NetworkTransfers,
    pub bus: Arc<dyn Bus>,
    pub sms: Arc<dyn SmsSender>,
    pub metrics: Metrics,
    /// Connection caps and pre-authentication deadlines (`edge.rs`).
    pub admission: Arc<Admission>,
    /// Connections per device (`online.rs`).
    pub online: Arc<Online>,
    /// This node's limits on work (cluster-wide ones are `Store::take_token`).
    pub device_requests: Limiter<u64>,
    /// A business device's requests, and a business account's messages
    /// per chat (`business.rs`).
    pub business_requests: Limiter<u64>,
    pub business_sends: Limiter<(u64, Vec<u8>)>,
    pub pin_changes: Limiter<u64>,
    pub link_starts: Limiter<IpPrefix>,
    /// This node's copies of the per-network code and verify budgets, in
    /// front of the store's: a flood is refused here without a store write.
    pub code_requests: Limiter<IpPrefix>,
    pub verify_requests: Limiter<IpPrefix>,
    /// Log lines about rejected input: a burst, then a few a second.
    pub rejected_logs: Limiter<()>,
    pub pin_hasher: PinHasher,
    /// A valid public key no device has: an unknown device id is checked
    /// against it, the same work as a known one with a wrong signature.
    pub decoy_key: [u8; 32],
    pub shutdown: watch::Receiver<bool>,
    pub probes: Probes,
    /// The operator's signed notice log (`notices.rs`).
    pub notices: Arc<crate::notices::NoticeBoard>,
    /// The key directory (`kt.rs`).
    pub kt: Arc<crate::kt::KeyDirectory>,
    /// Append-only proofs asked for per network (`GetKeyAudit`, before
    /// authentication).
    pub kt_audits: Limiter<IpPrefix>,
    /// Own-number history proofs per device (`GetKeyHistory`).
    pub kt_histories: Limiter<u64>,
    /// In what order the store hands committed envelopes to `online`
    /// (`HintOrder`): in commit order on SQLite; on PostgreSQL out of
    /// order, each device's seqs contiguous, so a session reads the store
    /// at a gap. None: it hands nothing over (`fast_path` is off).
    pub hint_order: Option<dak_store::HintOrder>,
}

/// What `/readyz` checks besides the store's answer to a read.
#[derive(Default)]
pub struct Probes {
    pub postgres: Option<dak_store::PgStore>,
    pub nats: Option<dak_bus::NatsBus>,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// The fast path is on: the store hands committed envelopes to
    /// `online`, and this node's connections need no mail wake for them
    /// (other nodes' do, over the bus).
    pub fn fast_path(&self) -> bool {
        self.hint_order.is_some()
    }

    // Each is a part the server was started with; a builder would only
    // rename the list.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Config,
        store: Arc<dyn Store>,
        blobs: Arc<dyn dak_store::BlobStore>,
        bus: Arc<dyn Bus>,
        sms: Arc<dyn SmsSender>,
        shutdown: watch::Receiver<bool>,
        probes: Probes,
        notices: Arc<crate::notices::NoticeBoard>,
        kt: Arc<crate::kt::KeyDirectory>,
    ) -> Self {
        let online = Arc::new(Online::default());
        let metrics = Metrics::default();
        // In a cluster the listener hears this node's commits only; it
        // passes them on to the other nodes (`cluster_hints.rs`).
        let hint_order = if bus.spans_nodes() {
            let hints = crate::cluster_hints::ClusterHints::new(
                online.clone(),
                bus.clone(),
                store.hint_secret(),
                config.cluster_hints,
            );
            let order = store.set_commit_listener(hints.clone());
            if let Some(order) = order {
                hints.installed(order, metrics.cluster_hints_refused.clone());
            }
            order
        } else {
            store.set_commit_listener(online.clone())
        };
        AppState(Arc::new(Inner {
            admission: Arc::new(Admission::new(&config)),
            online,
            hint_order,
            device_requests: Limiter::per_second(
                config.requests_per_device_per_sec,
                config.request_burst,
            ),
            business_requests: Limiter::per_second(
                config.business_requests_per_device_per_sec,
                config.business_requests_per_device_per_sec,
            ),
            business_sends: Limiter::new(
                Duration::from_secs(60) / config.business_messages_per_chat_per_minute,
                config.business_messages_per_chat_per_minute,
            ),
            pin_changes: Limiter::per_hour(
                config.pin_changes_per_hour,
                config.pin_changes_per_hour,
            ),
            link_starts: Limiter::per_hour(
                config.links_per_ip_per_hour,
                config.links_per_ip_per_hour,
            ),
            rejected_logs: Limiter::per_second(10, 50),
            // Not configurable: an auditor catching up reads one epoch a
            // request, and 20 a second per network is a day's epochs in a
            // minute while bounding what a flood of proofs costs the store.
            kt_audits: Limiter::per_second(20, 200),
            // A device checks its own history every 5 minutes at most.
            kt_histories: Limiter::per_hour(60, 10),
            transfers: Arc::new(tokio::sync::Semaphore::new(config.max_transfers as usize)),
            media_networks: Default::default(),
            media_requests: Limiter::per_second(
                config.media_requests_per_ip_per_sec,
                config.media_requests_per_ip_per_sec.saturating_mul(10),
            ),
            code_requests: Limiter::per_hour(
                config.codes_per_ip_per_hour,
                config.codes_per_ip_per_hour,
            ),
            verify_requests: Limiter::per_hour(
                config.verifies_per_ip_per_hour,
                config.verifies_per_ip_per_hour,
            ),
            pin_hasher: PinHasher::new(config.argon2_parallel, config.argon2_queue),
            decoy_key: ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng)
                .verifying_key()
                .to_bytes(),
            config,
            store,
            blobs,
            bus,
            sms,
            metrics,
            shutdown,
            probes,
            notices,
            kt,
        }))
    }
}

impl AppState {
    /// The network `ip` is counted under.
    pub fn prefix(&self, ip: std::net::IpAddr) -> IpPrefix {
        self.admission.prefix(ip)
    }

    /// The refusal when a limit is spent: RATE_LIMITED with when to retry,
    /// counted under `limit` in `dak_rate_limited_total`.
    pub fn limited(
        &self,
        limit: &str,
        message: impl Into<String>,
        retry_after_secs: u64,
    ) -> ApiError {
        self.metrics.limited.inc(limit);
        ApiError::new(ErrorCode::RateLimited, message).retry_after(retry_after_secs.max(1))
    }

    /// Takes a token of the cluster-wide bucket `key` (`Store::take_token`):
    /// a burst of `per_period`, then that many per `period`; or the
    /// `limited` refusal.
    pub async fn take_cluster_token(
        &self,
        key: &str,
        period: std::time::Duration,
        per_period: u32,
        burst: u32,
        limit: &str,
        message: &str,
    ) -> ApiResult<()> {
        let interval_ms = period.as_millis() as i64 / i64::from(per_period.max(1));
        match self
            .store
            .take_token(key, now_ms(), interval_ms, burst)
            .await?
        {
            None => Ok(()),
            Some(wait_ms) => {
                Err(self.limited(limit, message, (wait_ms.max(0) as u64).div_ceil(1000)))
            }
        }
    }

    /// Whether a line about rejected input may be logged now; counts the
    /// ones left out, so a flood of bad frames cannot flood the log.
    pub fn may_log_rejection(&self) -> bool {
        let ok = self.rejected_logs.check(()).is_ok();
        if !ok {
            Metrics::inc(&self.metrics.logs_suppressed);
        }
        ok
    }
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Drops expired envelopes once a minute (and once at start).
pub fn spawn_expiry(state: AppState) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            expire_once(&state).await;
            crate::media::sweep(&state).await;
        }
    });
}

/// One expiry pass. Nobody is told: an envelope a device had not acked by
/// then is simply never delivered. Envelopes that waited out the retention
/// period mean a device stayed away that long (and may no longer follow its
/// groups), so they are logged at info; disappearing messages going at
/// their own time are the normal case, counted and logged at debug only.
async fn expire_once(state: &AppState) {
    let retention_ms = i64::try_from(state.config.retention.as_millis()).unwrap_or(i64::MAX);
    let expired = match state.store.expire(now_ms(), retention_ms).await {
        Ok(expired) => expired,
        Err(e) => {
            tracing::warn!(error = %e, "expiry sweep failed; will retry");
            return;
        }
    };
    let past_retention = expired.envelopes.saturating_sub(expired.disappearing);
    Metrics::add(&state.metrics.expired_retention, past_retention);
    Metrics::add(&state.metrics.expired_disappearing, expired.disappearing);
    if past_retention > 0 {
        tracing::info!(
            envelopes = past_retention,
            "expired undelivered envelopes past retention"
        );
    }
    if expired.disappearing > 0 {
        tracing::debug!(
            envelopes = expired.disappearing,
            "dropped disappearing messages at their expiry"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dak_store::{NewEnvelope, SqliteStore};

    #[tokio::test]
    async fn the_sweep_counts_disappearing_messages_apart_from_retention() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("dak.db")).unwrap();
        let config = Config {
            retention: Duration::from_secs(3600),
            ..Config::default()
        };
        let bob = store
            .register_primary("+919800000002", &[2; 32], "p", 1)
            .await
            .unwrap()
            .device
            .id;
        let now = now_ms();
        let envelope = |id: u8, sent: i64, expires: i64| NewEnvelope {
            message_id: vec![id; 16],
            sender_phone: "+919800000001".into(),
            sender_device: 1,
            server_time_ms: sent,
            expires_ms: expires,
            body: b"secret body".to_vec(),
        };
        let hour = 3_600_000;
        for e in [
            envelope(1, now - 10_000, now - 5_000), // disappearing, 5 s
            envelope(2, now - hour - 1, now - 1),   // waited out retention
            envelope(3, now, now + hour),           // still within retention
        ] {
            store.enqueue(e, &[bob]).await.unwrap();
        }
        let (_tx, shutdown) = watch::channel(false);
        let state = AppState::new(
            config,
            Arc::new(store.clone()),
            Arc::new(dak_store::FsBlobStore::open(&dir.path().join("media")).unwrap()),
            Arc::new(dak_bus::LocalBus::new()),
            Arc::new(crate::sms::OutboxSender::new(dir.path().join("sms"))),
            shutdown,
            Probes::default(),
            crate::notices::NoticeBoard::open(
                &dir.path().join("notice.key"),
                &dir.path().join("notices.log"),
            )
            .unwrap(),
            crate::kt::KeyDirectory::open(Arc::new(store.clone()), [7; 32])
                .await
                .unwrap(),
        );
        expire_once(&state).await;
        let rendered = state.metrics.render();
        assert!(
            rendered.contains("dak_envelopes_expired_total{reason=\"retention\"} 1")
                && rendered.contains("dak_envelopes_expired_total{reason=\"disappearing\"} 1"),
            "{rendered}"
        );
        let left = store.fetch_mailbox(bob, 0, 10).await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].message_id, vec![3; 16]);
    }
}
