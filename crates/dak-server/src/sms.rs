//! Sending one-time codes. The server only knows the `SmsSender` trait; the
//! development sender writes to a file, a deployment points at a gateway.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use async_trait::async_trait;

#[derive(Debug, thiserror::Error)]
#[error("could not send the SMS: {0}")]
pub struct SmsError(pub String);

#[async_trait]
pub trait SmsSender: Send + Sync + 'static {
    async fn send_code(&self, to: &str, code: &str) -> Result<(), SmsError>;
}

/// Appends `{"to", "code", "at"}` lines to `DATA/sms-outbox.jsonl`.
pub struct OutboxSender {
    path: PathBuf,
    lock: Mutex<()>,
}

impl OutboxSender {
    pub fn new(path: PathBuf) -> Self {
        OutboxSender {
            path,
            lock: Mutex::new(()),
        }
    }
}

#[async_trait]
impl SmsSender for OutboxSender {
    async fn send_code(&self, to: &str, code: &str) -> Result<(), SmsError> {
        let line = serde_json::json!({
            "to": to,
            "code": code,
            "at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        })
        .to_string();
        {
            let _guard = self
                .lock
                .lock()
                .map_err(|_| SmsError("outbox lock poisoned".into()))?;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .map_err(|e| SmsError(format!("{}: {e}", self.path.display())))?;
            writeln!(f, "{line}").map_err(|e| SmsError(e.to_string()))?;
        }
        tracing::info!(to = %mask(to), outbox = %self.path.display(), "verification code written to the SMS outbox");
        Ok(())
    }
}

/// POSTs to an HTTP SMS gateway.
pub struct HttpSender {
    client: reqwest::Client,
    url: String,
    token: Option<String>,
}

impl HttpSender {
    /// Needs a process-wide rustls provider (`dak_server::install_crypto`).
    pub fn new(url: String, token: Option<String>) -> Result<Self, SmsError> {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| SmsError(e.to_string()))?;
        Ok(HttpSender { client, url, token })
    }
}

#[async_trait]
impl SmsSender for HttpSender {
    async fn send_code(&self, to: &str, code: &str) -> Result<(), SmsError> {
        let mut req = self.client.post(&self.url).json(&serde_json::json!({
            "to": to,
            "text": format!("Your Dak code is {code}. Do not share it with anyone."),
        }));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| SmsError(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(SmsError(format!("gateway answered {}", resp.status())));
        }
        tracing::info!(to = %mask(to), "verification code handed to the SMS gateway");
        Ok(())
    }
}

/// Phone numbers in logs show only their last three digits.
pub fn mask(phone: &str) -> String {
    let tail: String = phone
        .chars()
        .rev()
        .take(3)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("+…{tail}")
}
