//! The HTTP side: the WebSocket endpoint `/v1/ws`, `/healthz`,
//! `/readyz`, `/status` (`status.rs`) and the web client (`web.rs`), served over TLS (or plain on loopback with --insecure) through
//! the admission rules of `edge.rs`; and `/metrics` on a listener of its
//! own, loopback by default, so the public port does not tell an attacker
//! how its attack is going.

use std::sync::Arc;

use anyhow::Result;
use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::edge::{EdgeListener, Peer};
use crate::state::AppState;

/// Per-connection WebSocket buffers; see docs/BENCHMARKS.md for what they cost.
/// The read buffer is what tungstenite allocates up front and reads at most
/// per call: 512 B holds a typical frame (a 1:1 message is ~450 B) and
/// costs an idle connection an eighth of 4 KiB. A larger frame is reserved
/// whole once its header is read and copied out of rustls's plaintext in
/// 512 B steps (memory copies under TLS; on a plain ws:// listener, one
/// read call per 512 B of a large frame).
const WS_READ_BUFFER: usize = 512;
const WS_WRITE_BUFFER: usize = 8 * 1024;

pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    state: AppState,
    web: Option<Arc<crate::web::WebAssets>>,
) -> Result<()> {
    let mut shutdown = state.shutdown.clone();
    let signal = async move { crate::session::stopped(&mut shutdown).await };
    let edge = EdgeListener::spawn(listener, tls, state.clone())?;
    let app = router(state.clone())
        .merge(crate::media::router(state))
        .merge(crate::web::router(web))
        .into_make_service_with_connect_info::<Peer>();
    axum::serve(edge, app)
        .with_graceful_shutdown(signal)
        .await?;
    Ok(())
}

/// `/metrics` alone, plain HTTP, for the operator's scraper.
pub async fn serve_metrics(listener: TcpListener, state: AppState) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .with_state(state);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!(error = %e, "the metrics listener stopped");
    }
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/ws", get(websocket))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/status", get(crate::status::status))
        .with_state(state)
}

async fn websocket(
    ws: WebSocketUpgrade,
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
) -> axum::response::Response {
    // A connection that showed a blob's secret carries transfers only.
    if peer.0.is_media_only() {
        return (
            StatusCode::FORBIDDEN,
            "this connection carries file transfers; open a new one\n",
        )
            .into_response();
    }
    // The protocol's own limit: a larger frame is refused by tungstenite
    // before it is buffered whole, and the connection closed with 1009
    // (message too big). Before authentication `edge.rs` allows far less.
    ws.max_message_size(dak_proto::MAX_FRAME_BYTES)
        .max_frame_size(dak_proto::MAX_FRAME_BYTES)
        // tungstenite reserves its read buffer up front (128 KiB by default),
        // which dominated an idle connection's memory; frames larger than
        // this still arrive, the buffer grows for them.
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(WS_WRITE_BUFFER)
        .on_upgrade(move |socket| crate::session::run(state, socket, peer.0))
        .into_response()
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
