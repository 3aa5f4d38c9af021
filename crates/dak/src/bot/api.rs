//! The bot's HTTP API for the service's backend (docs/BOTS.md, "API"):
//!
//! - `POST /v1/messages`: a text, a text with reply buttons or a list,
//!   or a template; answers 201 with the message's id once the Dak server
//!   holds it (✓).
//! - `GET /v1/messages/{id}`: its ticks, per recipient device.
//! - `POST /v1/messages/{id}/read`: mark a user's message read (blue ticks).
//! - `GET /v1/health`: connected or not, and the webhook queue.
//!
//! Invariants:
//! - Every request but health carries `Authorization: Bearer <token>`.
//! - Bodies are limited to 64 KiB and decoded with unknown fields refused;
//!   an interactive message is checked by the receivers' own rules
//!   (`dak_proto::interactive`) before it is sent.
//! - Free-form messages go only to users who wrote in the last 24 hours;
//!   others get templates only, and none after they opted out (STOP).
//!   Groups the bot was added to are not limited here.
//! - Every error is JSON: `{"error": {"code": "...", "message": "..."}}`,
//!   with a status that says whether retrying can help (503) or not (4xx).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use dak_client::{ClientError, TextOptions, format_id, parse_id};
use dak_proto::v1;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use super::Command;
use super::queue::BotDb;
use super::templates::Templates;

/// Free-form messages may go to a user this long after they last wrote.
pub const WINDOW_MS: i64 = 24 * 3600 * 1000;
const BODY_LIMIT: usize = 64 * 1024;
/// How long a send may wait for the device (reconnecting, say) before the
/// API answers 503; a send not started by then is never started.
const SEND_DEADLINE: Duration = Duration::from_secs(20);
/// The most plain text one message carries.
const MAX_TEXT_CHARS: usize = 4096;

#[derive(Clone)]
pub(crate) struct ApiState {
    pub commands: mpsc::Sender<Command>,
    pub db: Arc<BotDb>,
    pub token: Vec<u8>,
    pub templates: Arc<Templates>,
    pub me: String,
}

pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/v1/messages", post(send))
        .route("/v1/messages/{id}", get(status))
        .route("/v1/messages/{id}/read", post(read))
        .route("/v1/health", get(health))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state);
    axum::serve(listener, app).await?;
    Ok(())
}

/// An error as the API answers it.
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid", message)
    }

    fn unavailable() -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the bot is not connected to the Dak server right now; try again",
        )
    }
}

impl From<ClientError> for ApiError {
    fn from(e: ClientError) -> ApiError {
        if e.is_retryable() {
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            );
        }
        match e {
            ClientError::Usage(m) => ApiError::invalid(m),
            ClientError::Server(s) if s.kind() == v1::ErrorCode::UnknownAccount => {
                ApiError::new(StatusCode::NOT_FOUND, "unknown_recipient", s.message)
            }
            ClientError::Server(s) if s.kind() == v1::ErrorCode::RateLimited => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", s.message)
            }
            other => ApiError::new(StatusCode::BAD_GATEWAY, "refused", other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({"error": {"code": self.code, "message": self.message}}));
        let mut response = (self.status, body).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("5"));
        }
        response
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Compares digests, so the time taken says nothing about the token.
fn authorize(state: &ApiState, headers: &HeaderMap) -> ApiResult<()> {
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if Sha256::digest(given.as_bytes()) != Sha256::digest(&state.token) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "give the bot's token: Authorization: Bearer <token>",
        ));
    }
    Ok(())
}

/// `POST /v1/messages`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SendRequest {
    /// A number (+91…) or a group the bot is in (`group:<hex>`).
    to: String,
    #[serde(default)]
    text: Option<String>,
    /// Reply buttons or a list, with `text`.
    #[serde(default)]
    interactive: Option<v1::Interactive>,
    /// Instead of `text`: a template and its parameters.
    #[serde(default)]
    template: Option<TemplateUse>,
    /// The id of a message this one replies to (it is quoted).
    #[serde(default)]
    reply_to: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateUse {
    name: String,
    #[serde(default)]
    params: Vec<String>,
}

async fn send(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    authorize(&state, &headers)?;
    let req: SendRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid(format!("the request is not a message: {e}")))?;
    let to = recipient(&req.to)?;
    let text = match (&req.text, &req.template) {
        (Some(_), Some(_)) => return Err(ApiError::invalid("give text or template, not both")),
        (None, None) => return Err(ApiError::invalid("give text or template")),
        (Some(t), None) => {
            if t.trim().is_empty() || t.chars().count() > MAX_TEXT_CHARS {
                return Err(ApiError::invalid(format!(
                    "text must be 1 to {MAX_TEXT_CHARS} characters"
                )));
            }
            t.clone()
        }
        (None, Some(t)) => {
            if req.interactive.is_some() {
                return Err(ApiError::invalid("a template has no buttons or list"));
            }
            state
                .templates
                .fill(&t.name, &t.params)
                .map_err(ApiError::invalid)?
        }
    };
    if let Some(i) = &req.interactive {
        dak_proto::interactive::validate_interactive(i)
            .and_then(|()| dak_proto::interactive::validate_interactive_body(&text))
            .map_err(|e| ApiError::invalid(e.to_string()))?;
    }
    if !to.starts_with("group:") {
        let (last_in_ms, opted_out) = state.db.contact(&to).map_err(internal)?;
        if req.template.is_some() {
            if opted_out {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "opted_out",
                    format!("{to} sent STOP: no templates until they send START"),
                ));
            }
        } else if super::webhook::now_ms() - last_in_ms > WINDOW_MS {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "outside_window",
                format!("{to} has not written in the last 24 hours: send a template"),
            ));
        }
    }
    let reply_to = req
        .reply_to
        .as_deref()
        .map(parse_id)
        .transpose()
        .map_err(|e| ApiError::invalid(format!("reply_to: {e}")))?;
    let opts = TextOptions {
        reply_to,
        interactive: req.interactive.map(Box::new),
        ..Default::default()
    };
    let (reply, answer) = oneshot::channel();
    let cmd = Command::Send {
        to: to.clone(),
        text,
        opts,
        deadline: Instant::now() + SEND_DEADLINE,
        reply,
    };
    let sent = ask(&state, cmd, answer).await??;
    state
        .db
        .record_sent(&sent.id, &to, super::webhook::now_ms())
        .map_err(internal)?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "id": format_id(&sent.id),
            "to": to,
            "status": "sent",
            "server_time_ms": sent.server_time_ms,
            "recipient_devices": sent.recipient_devices,
        })),
    ))
}

/// Sends a command to the device and waits for its answer; 503 if the
/// device did not take it in time (it then never runs it).
async fn ask<T>(state: &ApiState, cmd: Command, answer: oneshot::Receiver<T>) -> ApiResult<T> {
    state
        .commands
        .try_send(cmd)
        .map_err(|_| ApiError::unavailable())?;
    // Longer than the deadline: a send the device started is waited for.
    match tokio::time::timeout(SEND_DEADLINE + Duration::from_secs(120), answer).await {
        Ok(Ok(v)) => Ok(v),
        _ => Err(ApiError::unavailable()),
    }
}

/// A number in international form or a group key.
fn recipient(to: &str) -> ApiResult<String> {
    if let Some(hex) = to.strip_prefix("group:") {
        if dak_client::parse_group_key(to).is_none() {
            return Err(ApiError::invalid("to: a group is group: and its id in hex"));
        }
        return Ok(format!("group:{}", hex.to_ascii_lowercase()));
    }
    dak_proto::normalize_phone(to).map_err(|e| ApiError::invalid(format!("to: {e}")))
}

fn internal(e: anyhow::Error) -> ApiError {
    tracing::error!(error = %e, "the bot's store failed");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "the bot's store failed",
    )
}

fn message_id(id: &str) -> ApiResult<Vec<u8>> {
    parse_id(id).map_err(|e| ApiError::invalid(format!("message id: {e}")))
}

/// `GET /v1/messages/{id}`.
async fn status(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    authorize(&state, &headers)?;
    let id = message_id(&id)?;
    let (reply, answer) = oneshot::channel();
    let (m, tick) = ask(&state, Command::Status { id, reply }, answer)
        .await?
        .map_err(|e| match e {
            ClientError::Usage(m) => ApiError::new(StatusCode::NOT_FOUND, "not_found", m),
            e => e.into(),
        })?;
    if !m.outgoing {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "ticks are kept for the bot's own messages",
        ));
    }
    Ok(Json(json!({
        "id": format_id(&m.id),
        "to": m.conversation.key(),
        "status": tick.state,
        "devices": tick.devices.iter().map(|d| json!({
            "phone": d.phone,
            "device_id": d.device_id,
            "delivered_ms": d.delivered_ms,
            "read_ms": d.read_ms,
        })).collect::<Vec<_>>(),
    })))
}

/// `POST /v1/messages/{id}/read`.
async fn read(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    authorize(&state, &headers)?;
    let id = message_id(&id)?;
    let (reply, answer) = oneshot::channel();
    let n = ask(&state, Command::Read { id, reply }, answer).await??;
    Ok(Json(json!({"marked_read": n})))
}

/// `GET /v1/health`: no token, nothing private.
async fn health(State(state): State<ApiState>) -> ApiResult<Json<serde_json::Value>> {
    let counts = state.db.counts().map_err(internal)?;
    Ok(Json(json!({"phone": state.me, "queue": counts})))
}
