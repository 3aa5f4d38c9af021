//! `dak server`: build the config from file, env and flags, start the
//! server, print where it listens, and drain on SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use dak_server::{Config, Server};

#[derive(Args, Debug)]
pub struct ServerArgs {
    /// TOML config file; DAK_* variables and these flags override it.
    #[arg(long, env = "DAK_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory: store, TLS certificate, SMS outbox [default: ./dak-data]
    #[arg(long)]
    data: Option<PathBuf>,
    /// Address to listen on, e.g. 0.0.0.0:7443 or 127.0.0.1:0 for any free port.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Cluster mode: a shared PostgreSQL store, e.g. postgres://dak@db1/dak (default: embedded SQLite in --data).
    #[arg(long)]
    store: Option<String>,
    /// Cluster mode: NATS for new-mail notifications between nodes, e.g. nats://127.0.0.1:4222.
    #[arg(long)]
    bus: Option<String>,
    /// Cluster mode: names this cluster's NATS subjects, so clusters can share a NATS [default: dak].
    #[arg(long)]
    cluster: Option<String>,
    /// Serve plain ws:// (only allowed on a loopback address; for development and tests).
    #[arg(long)]
    insecure: bool,
    /// PEM certificate chain (with --tls-key) instead of the self-signed one.
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// Serve the web client from this directory at https://HOST:PORT/ (what scripts/web-build.sh writes to target/web).
    #[arg(long)]
    web: Option<PathBuf>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum LogFormat {
    Text,
    Json,
}

impl ServerArgs {
    fn config(&self) -> Result<Config> {
        // DAK_DATA is the documented name for the data directory.
        let mut config = Config::load(self.config.as_deref())?;
        if let Some(d) = &self.data {
            config.data = d.clone();
        }
        if let Some(l) = self.listen {
            config.listen = l;
        }
        if self.insecure {
            config.insecure = true;
        }
        if self.store.is_some() {
            config.store = self.store.clone();
        }
        if self.bus.is_some() {
            config.bus = self.bus.clone();
        }
        if let Some(c) = &self.cluster {
            config.cluster = c.clone();
        }
        if self.tls_cert.is_some() {
            config.tls_cert = self.tls_cert.clone();
        }
        if self.tls_key.is_some() {
            config.tls_key = self.tls_key.clone();
        }
        if self.web.is_some() {
            config.web = self.web.clone();
        }
        config.validate()?;
        Ok(config)
    }
}

pub async fn run(args: ServerArgs) -> Result<()> {
    let config = args.config()?;
    if args.print_config {
        print!("{}", config.to_toml());
        return Ok(());
    }
    init_logging(args.log_format);
    let server = Server::start(config.clone()).await?;
    // The first line on stdout is the contract scripts and tests rely on.
    println!("listening on {}", server.url);
    eprintln!("metrics on http://{}/metrics", server.metrics_addr);
    if let Some(fp) = &server.cert_fingerprint {
        eprintln!("TLS certificate sha256 {fp} (clients pin it on first use)");
    }
    if let Some(sha) = &server.web_bundle {
        let page = server.url.replacen("ws", "http", 1);
        eprintln!("web client at {page}/ (bundle sha256 {sha})");
    }
    tracing::info!(url = %server.url, data = %config.data.display(), "dak server started");
    let stop = server.shutdown_handle();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: telling clients to reconnect");
        let _ = stop.send(true);
    });
    server.wait().await
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DAK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal, not in files and journals.
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
