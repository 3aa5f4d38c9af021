//! Handing queued events to the service's webhook: one POST per event, in
//! queue order, signed, retried with backoff until `retry_for` has passed.
//!
//! The signature (docs/BOTS.md, "Webhooks"): `Dak-Signature: v1=<hex>`,
//! the HMAC-SHA256 under the shared secret of `<Dak-Timestamp>.<raw body>`.
//! The timestamp (Unix seconds, of this attempt) is what WhatsApp's
//! `X-Hub-Signature-256` lacks: a receiver refuses one older than its
//! replay window (5 minutes is what we suggest) and remembers event ids
//! (`Dak-Event-Id`) for that long, so a captured request cannot be played
//! again.
//!
//! The receiver is untrusted: each attempt has a timeout, redirects are
//! not followed, the answer's body is never read past 1 KiB, and the
//! number of attempts is bounded by `retry_for`. The bot runs beside the
//! service, on the service's network; the Dak server never calls a
//! webhook, so a webhook URL cannot reach into the server's network.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::Notify;

use super::queue::{BotDb, Pending};

pub const SIGNATURE_HEADER: &str = "Dak-Signature";
pub const TIMESTAMP_HEADER: &str = "Dak-Timestamp";
pub const EVENT_ID_HEADER: &str = "Dak-Event-Id";

/// Events read from the queue at a time; their delivery is recorded in
/// one write.
const BATCH: usize = 64;

/// First retry after this long, doubling per failure up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(600);

/// `v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Whether `header` is a valid signature of `body` at `timestamp`, in
/// constant time: what a receiver does (docs/BOTS.md shows it in Python).
#[cfg(test)]
pub fn verify(secret: &[u8], timestamp: i64, body: &[u8], header: &str) -> bool {
    let Some(hex_sig) = header.strip_prefix("v1=") else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

/// The wait before attempt `attempts + 1`, jittered by up to a fifth so
/// that many bots restarted together do not retry in step.
pub fn backoff(attempts: u32) -> Duration {
    let base = FIRST_BACKOFF
        .saturating_mul(1u32.checked_shl(attempts.min(20)).unwrap_or(u32::MAX))
        .min(MAX_BACKOFF);
    let jitter = base.mul_f64(rand::random::<f64>() * 0.2);
    base + jitter
}

pub struct Webhook {
    pub url: reqwest::Url,
    pub secret: Vec<u8>,
    pub timeout: Duration,
    pub retry_for: Duration,
}

/// Delivers events until the process ends. `wake` is notified when new
/// events are queued.
pub async fn deliver(db: Arc<BotDb>, hook: Webhook, wake: Arc<Notify>, drained: Arc<Notify>) {
    let http = match reqwest::Client::builder()
        .use_preconfigured_tls(dak_client::transport::public_tls_config())
        .redirect(reqwest::redirect::Policy::none())
        .timeout(hook.timeout)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the webhook's HTTP client");
            return;
        }
    };
    loop {
        let batch = match db.head_batch(BATCH) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the event queue");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let Some(first) = batch.first() else {
            drained.notify_waiters();
            // A notify_one permit is kept when no one waits, so an event
            // queued between `head_batch` and here is not missed.
            wake.notified().await;
            continue;
        };
        let now = now_ms();
        if first.next_at_ms > now {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis((first.next_at_ms - now) as u64)) => {}
                _ = wake.notified() => {}
            }
            continue;
        }
        // In order; the first failure ends the batch (it holds back the rest).
        let mut delivered = Vec::with_capacity(batch.len());
        let mut failure = None;
        for event in &batch {
            if event.next_at_ms > now_ms() {
                break;
            }
            match attempt(&http, &hook, event).await {
                Ok(()) => delivered.push(event.seq),
                Err(error) => {
                    failure = Some((event, error));
                    break;
                }
            }
        }
        if let Some((event, Failure::Unsendable(why))) = &failure {
            // No retry can help: give it up now, not after a day of
            // holding back every event behind it.
            tracing::error!(event = %event.id, %why, "an event that cannot be sent was given up");
            let r = db
                .delivered_many(&delivered)
                .and_then(|()| db.give_up(event.seq, why));
            if let Err(e) = r {
                tracing::error!(error = %e, "cannot update the event queue");
            }
            continue;
        }
        // One write for the batch: a crash before it delivers these again
        // (at least once; receivers dedup by event id).
        let mut result = db.delivered_many(&delivered);
        if let Some((event, Failure::Failed(error))) = failure {
            let age =
                Duration::from_millis(now_ms().saturating_sub(event.created_ms).max(0) as u64);
            result = result.and_then(|()| {
                if age >= hook.retry_for {
                    tracing::warn!(event = %event.id, attempts = event.attempts + 1, %error, "the webhook did not take this event for {}; given up", humantime::format_duration(hook.retry_for));
                    db.give_up(event.seq, &error)
                } else {
                    let wait = backoff(event.attempts);
                    tracing::info!(event = %event.id, attempts = event.attempts + 1, %error, retry_in_ms = wait.as_millis() as u64, "the webhook failed; retrying");
                    db.failed(event.seq, now_ms() + wait.as_millis() as i64, &error)
                }
            });
        }
        if let Err(e) = result {
            tracing::error!(error = %e, "cannot update the event queue");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Why an attempt failed: the webhook's answer (retried), or a request
/// that cannot be made at all (given up at once).
enum Failure {
    Failed(String),
    Unsendable(String),
}

async fn attempt(http: &reqwest::Client, hook: &Webhook, event: &Pending) -> Result<(), Failure> {
    let timestamp = now_ms() / 1000;
    let signature = sign(&hook.secret, timestamp, event.body.as_bytes());
    let id = reqwest::header::HeaderValue::from_str(&event.id).map_err(|_| {
        Failure::Unsendable(format!("the event id {:?} is not a header value", event.id))
    })?;
    let mut response = http
        .post(hook.url.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(EVENT_ID_HEADER, id)
        .header(TIMESTAMP_HEADER, timestamp.to_string())
        .header(SIGNATURE_HEADER, signature)
        .body(event.body.clone())
        .send()
        .await
        .map_err(|e| Failure::Failed(format!("{e}")))?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let mut detail = String::new();
    if let Ok(Some(chunk)) = response.chunk().await {
        detail = String::from_utf8_lossy(&chunk[..chunk.len().min(1024)]).into_owned();
    }
    Err(Failure::Failed(format!("HTTP {status} {}", detail.trim())))
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_checks_only_with_its_secret_timestamp_and_body() {
        let s = sign(b"secret", 1700000000, b"{}");
        assert!(verify(b"secret", 1700000000, b"{}", &s));
        assert!(!verify(b"other", 1700000000, b"{}", &s));
        assert!(!verify(b"secret", 1700000001, b"{}", &s));
        assert!(!verify(b"secret", 1700000000, b"{ }", &s));
        assert!(!verify(b"secret", 1700000000, b"{}", "v1=zz"));
        assert!(!verify(b"secret", 1700000000, b"{}", &s[3..]));
    }

    #[test]
    fn backoff_doubles_and_stops_growing() {
        assert!(backoff(0) >= Duration::from_secs(1) && backoff(0) < Duration::from_millis(1201));
        assert!(backoff(3) >= Duration::from_secs(8));
        assert!(backoff(40) <= MAX_BACKOFF.mul_f64(1.2));
    }
}
