//! The Dak gateway. It authenticates devices, stores envelopes durably in
//! per-device mailboxes, pushes them to connected devices and deletes them
//! on ack. It never parses a message body.
//!
//! Start reading at `Server::start`, then `session.rs` (one WebSocket
//! connection's state machine), `registration.rs`, `mailbox.rs`, `linking.rs`.

mod blocks;
mod business;
mod cluster_hints;
pub mod config;
mod edge;
mod error;
mod groups;
mod http;
mod inbox;
pub mod kt;
mod linking;
mod mailbox;
mod media;
pub mod metrics;
pub mod notices;
mod online;
mod outgoing;
mod pin_hasher;
mod ratelimit;
mod registration;
mod session;
pub mod sms;
mod sms_budget;
mod state;
mod status;
mod tls;
mod tls_stream;
pub mod web;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::sync::watch;

pub use config::{Config, SmsConfig};
pub use state::AppState;
/// A time as `/status` and the admin commands print it (UTC).
pub use status::format_ms as status_time;

/// Installs ring as the process's rustls provider. Call once at start; safe to repeat.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A URL with its password (if any) hidden, for messages and logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// A running server.
pub struct Server {
    pub local_addr: SocketAddr,
    /// `wss://HOST:PORT` or `ws://HOST:PORT`.
    pub url: String,
    /// SHA-256 of the TLS certificate, hex; None when insecure.
    pub cert_fingerprint: Option<String>,
    /// Where `/metrics` is served (plain HTTP; loopback unless configured).
    pub metrics_addr: SocketAddr,
    /// The web client's bundle hash (`web.rs`), when it serves one.
    pub web_bundle: Option<String>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<()>>,
}

/// The configured store: PostgreSQL when `store` is set, else SQLite in
/// the data directory. The server opens it, and so do the operator's
/// commands (`dak admin`), beside a running server.
pub async fn open_store(
    config: &Config,
    pg_connections: u32,
) -> Result<(Arc<dyn dak_store::Store>, Option<dak_store::PgStore>)> {
    Ok(match &config.store {
        Some(url) => {
            let pg = dak_store::PgStore::connect(url, pg_connections)
                .await
                .with_context(|| format!("cannot open the PostgreSQL store at {}", redact(url)))?;
            (Arc::new(pg.clone()), Some(pg))
        }
        None => {
            let sqlite = dak_store::SqliteStore::open(&config.data.join("dak.db"))
                .with_context(|| format!("cannot open the store in {}", config.data.display()))?;
            (Arc::new(sqlite), None)
        }
    })
}

impl Server {
    /// Opens the store, binds the socket and starts serving in the background.
    pub async fn start(config: Config) -> Result<Server> {
        install_crypto();
        config.validate()?;
        std::fs::create_dir_all(&config.data)
            .with_context(|| format!("cannot create data directory {}", config.data.display()))?;
        let (store, pg) = open_store(&config, 16).await?;
        let blobs: Arc<dyn dak_store::BlobStore> =
            match &config.media_s3 {
                Some(s3) => Arc::new(dak_store::S3BlobStore::new(s3).with_context(|| {
                    format!("cannot use the S3 bucket {:?} for media", s3.bucket)
                })?),
                None => {
                    let dir = config.data.join("media");
                    Arc::new(
                        dak_store::FsBlobStore::open(&dir)
                            .with_context(|| format!("cannot keep media in {}", dir.display()))?,
                    )
                }
            };
        tracing::info!(media = %blobs.describe(), "media store");
        let (bus, nats): (Arc<dyn dak_bus::Bus>, _) = match &config.bus {
            Some(url) => {
                let nats = dak_bus::NatsBus::connect(url, &config.cluster).await?;
                (Arc::new(nats.clone()), Some(nats))
            }
            None => (Arc::new(dak_bus::LocalBus::new()), None),
        };
        let sms: Arc<dyn sms::SmsSender> = match &config.sms {
            SmsConfig::Outbox => {
                Arc::new(sms::OutboxSender::new(config.data.join("sms-outbox.jsonl")))
            }
            SmsConfig::Http { url, token } => {
                Arc::new(sms::HttpSender::new(url.clone(), token.clone())?)
            }
        };
        let tls = if config.insecure {
            None
        } else {
            Some(tls::load_or_create(
                &config.data,
                config.tls_cert.as_deref(),
                config.tls_key.as_deref(),
            )?)
        };
        let web = match &config.web {
            Some(dir) => Some(Arc::new(web::WebAssets::load(dir)?)),
            None => None,
        };
        let web_bundle = web.as_ref().map(|w| w.bundle_sha256.clone());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let probes = state::Probes { postgres: pg, nats };
        let notices =
            notices::NoticeBoard::open(&config.notice_key_path(), &config.notices_path())?;
        notices.spawn_poll();
        let kt_seed = notices::load_or_create_key(&config.kt_key_path())?.to_bytes();
        let kt = kt::KeyDirectory::open(store.clone(), kt_seed).await?;
        let state = AppState::new(
            config.clone(),
            store,
            blobs,
            bus,
            sms,
            shutdown_rx,
            probes,
            notices,
            kt,
        );
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let local_addr = listener.local_addr()?;
        let metrics_listen = config.metrics_listen.unwrap_or_else(|| {
            let port = match local_addr.port() {
                0 | u16::MAX => 0,
                p => p + 1,
            };
            SocketAddr::from(([127, 0, 0, 1], port))
        });
        let metrics_listener = match tokio::net::TcpListener::bind(metrics_listen).await {
            Ok(l) => l,
            // The next port is taken (another server's, say): any free one.
            Err(_) if config.metrics_listen.is_none() => {
                tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cannot serve metrics on {metrics_listen}"));
            }
        };
        let metrics_addr = metrics_listener.local_addr()?;
        let scheme = if tls.is_some() { "wss" } else { "ws" };
        let url = format!("{scheme}://{local_addr}");
        let cert_fingerprint = tls.as_ref().map(|t| t.fingerprint.clone());
        state::spawn_expiry(state.clone());
        tokio::spawn(http::serve_metrics(metrics_listener, state.clone()));
        let task = tokio::spawn(http::serve(listener, tls.map(|t| t.config), state, web));
        Ok(Server {
            metrics_addr,
            local_addr,
            url,
            cert_fingerprint,
            web_bundle,
            shutdown,
            task,
        })
    }

    /// Tells connected devices to reconnect, stops accepting, and waits.
    pub async fn shutdown(self) -> Result<()> {
        let _ = self.shutdown.send(true);
        self.task.await.context("server task panicked")?
    }

    /// Serves until the server stops on its own (it does not, short of an error).
    pub async fn wait(self) -> Result<()> {
        self.task.await.context("server task panicked")?
    }

    /// A sender that starts the same graceful shutdown as `shutdown`.
    pub fn shutdown_handle(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }
}
