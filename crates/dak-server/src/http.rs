//! The HTTP side: the WebSocket endpoint `/v1/ws`, `/healthz`, `/readyz`
//! and `/metrics`, served over TLS (or plain on loopback with --insecure).
//!
//! TLS handshakes run in their own tasks, so one slow or hostile client
//! cannot hold up accepting others; finished streams are handed to axum
//! through a `Listener`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use axum::Router;
use axum::extract::connect_info::Connected;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::serve::{IncomingStream, Listener};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::state::AppState;

/// Handshakes that may be waiting to be picked up by axum.
const HANDSHAKE_QUEUE: usize = 1024;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Per-connection WebSocket buffers; see docs/BENCHMARKS.md for what they cost.
const WS_READ_BUFFER: usize = 4 * 1024;
const WS_WRITE_BUFFER: usize = 8 * 1024;

/// The remote address of a connection, for per-IP limits.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

impl Connected<IncomingStream<'_, TcpListener>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    state: AppState,
) -> Result<()> {
    let mut shutdown = state.shutdown.clone();
    let signal = async move { crate::session::stopped(&mut shutdown).await };
    let app = router(state).into_make_service_with_connect_info::<PeerAddr>();
    match tls {
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(signal)
                .await?
        }
        Some(config) => {
            let tls_listener = TlsListener::spawn(listener, config)?;
            axum::serve(tls_listener, app)
                .with_graceful_shutdown(signal)
                .await?
        }
    }
    Ok(())
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/ws", get(websocket))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn websocket(
    ws: WebSocketUpgrade,
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
) -> impl IntoResponse {
    // Above our own limit so that a frame a little too large still gets a
    // clear FRAME_TOO_LARGE answer from the codec; far beyond it, tungstenite
    // closes the connection with 1009 (message too big) on its own.
    ws.max_message_size(dak_proto::MAX_FRAME_BYTES * 4)
        .max_frame_size(dak_proto::MAX_FRAME_BYTES * 4)
        // tungstenite reserves its read buffer up front (128 KiB by default),
        // which dominated an idle connection's memory; frames larger than
        // this still arrive, the buffer grows for them.
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(WS_WRITE_BUFFER)
        .on_upgrade(move |socket| crate::session::run(state, socket, peer.0))
}

async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    if *state.shutdown.borrow() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n");
    }
    if let Some(pg) = &state.probes.postgres
        && pg.ping().await.is_err()
    {
        return (StatusCode::SERVICE_UNAVAILABLE, "postgres unreachable\n");
    }
    if let Some(nats) = &state.probes.nats
        && !nats.connected()
    {
        return (StatusCode::SERVICE_UNAVAILABLE, "nats unreachable\n");
    }
    match state.store.mailbox_len(0).await {
        Ok(_) => (StatusCode::OK, "ready\n"),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n"),
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    fn spawn(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> Result<Self> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(HANDSHAKE_QUEUE);
        let acceptor = TlsAcceptor::from(config);
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Usually EMFILE: wait for descriptors to free up.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let (acceptor, ready_tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = ready_tx.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
                if tx.is_closed() {
                    return;
                }
            }
        });
        Ok(TlsListener { ready, local })
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(pair) => pair,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
