//! The system's clock, randomness, timers and network, for the core's
//! `Environment`: what the CLI and `dak bench` run on.

use std::time::Duration;

use async_trait::async_trait;
use dak_core::{CertTrust, ClientError, Environment, Opened};
use rand::RngCore;

use crate::transport::WsTransport;

/// The OS clock (UTC), the OS random generator, tokio's timers and
/// `WsTransport`.
pub struct SystemEnvironment;

#[async_trait]
impl Environment for SystemEnvironment {
    fn now_ms(&self) -> i64 {
        chrono::Utc::now().timestamp_millis()
    }

    fn fill_random(&self, buf: &mut [u8]) {
        rand::rngs::OsRng.fill_bytes(buf);
    }

    async fn sleep(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }

    async fn connect(&self, server: &str, trust: &CertTrust) -> Result<Opened, ClientError> {
        let (transport, seen) = WsTransport::connect(server, trust).await?;
        Ok(Opened {
            transport: Box::new(transport),
            fingerprint: seen.fingerprint,
        })
    }
}
