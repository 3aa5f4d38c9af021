//! What every connection shares: config, store, bus, SMS sender, limits,
//! metrics. Passed explicitly; there is no global state.

use std::sync::Arc;
use std::time::Duration;

use dak_bus::Bus;
use dak_store::Store;
use tokio::sync::watch;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::ratelimit::IpLimiter;
use crate::sms::SmsSender;

const HOUR: Duration = Duration::from_secs(3600);

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn Bus>,
    pub sms: Arc<dyn SmsSender>,
    pub code_limiter: IpLimiter,
    pub verify_limiter: IpLimiter,
    pub metrics: Metrics,
    pub shutdown: watch::Receiver<bool>,
    pub probes: Probes,
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
    pub fn new(
        config: Config,
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        sms: Arc<dyn SmsSender>,
        shutdown: watch::Receiver<bool>,
        probes: Probes,
    ) -> Self {
        AppState(Arc::new(Inner {
            code_limiter: IpLimiter::new(config.codes_per_ip_per_hour, HOUR),
            verify_limiter: IpLimiter::new(config.verifies_per_ip_per_hour, HOUR),
            config,
            store,
            bus,
            sms,
            metrics: Metrics::default(),
            shutdown,
            probes,
        }))
    }
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Drops envelopes past retention once a minute.
pub fn spawn_expiry(state: AppState) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            match state.store.expire(now_ms()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    envelopes = n,
                    "expired undelivered envelopes past retention"
                ),
                Err(e) => tracing::warn!(error = %e, "expiry sweep failed; will retry"),
            }
        }
    });
}
