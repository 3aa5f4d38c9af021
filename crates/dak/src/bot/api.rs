//! The bot's HTTP API for the service's backend (docs/BOTS.md, "API"):
//!
//! - `POST /v1/media`: a file's bytes, kept to be sent (`media.rs`).
//! - `POST /v1/messages`: a text, a text with reply buttons or a list, a
//!   file with a caption, or a template; answers 201 with the message's id
//!   once the Dak server holds it (✓).
//! - `GET /v1/messages/{id}`: its ticks, per recipient device.
//! - `POST /v1/messages/{id}/read`: mark a user's message read (blue ticks).
//! - `GET /v1/health`: the webhook queue.
//! - `GET /v1/openapi.json`: all of this as an OpenAPI 3.1 document,
//!   generated from the code below (utoipa), so it cannot drift from it.
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
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use utoipa::{OpenApi, ToSchema};

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
    pub commands: mpsc::Sender<super::Job>,
    pub db: Arc<BotDb>,
    pub token: Vec<u8>,
    pub templates: Arc<Templates>,
    pub me: String,
    /// The bot's profile directory (its files for `/v1/media`).
    pub dir: std::path::PathBuf,
}

pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/messages", post(send))
        // Streamed to a file, its size checked as it comes (`upload_media`).
        .route("/v1/media", post(upload_media))
        .route("/v1/messages/{id}", get(status))
        .route("/v1/messages/{id}/read", post(read))
        .route("/v1/messages/{id}/media", get(received_media))
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
        if let ClientError::Server(s) = &e
            && s.kind() == v1::ErrorCode::RateLimited
        {
            return ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                s.message.clone(),
            );
        }
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
            other => ApiError::new(StatusCode::BAD_GATEWAY, "refused", other.to_string()),
        }
    }
}

/// Every error's body.
#[derive(Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
struct ErrorDetail {
    /// invalid, unauthorized, outside_window, opted_out, not_found,
    /// unknown_recipient, rate_limited, refused, unavailable, internal.
    code: String,
    /// What went wrong, in English, for the service's logs.
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(ErrorBody {
            error: ErrorDetail {
                code: self.code.into(),
                message: self.message,
            },
        });
        let mut response = (self.status, body).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE
            || self.status == StatusCode::TOO_MANY_REQUESTS
        {
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

/// `POST /v1/messages`: a text (with buttons or a list), or a template.
#[derive(Debug, Deserialize, ToSchema)]
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
    /// A file from `POST /v1/media`; `text`, if given, is its caption.
    #[serde(default)]
    media_id: Option<String>,
}

/// A template of the bot's `--templates` file and its parameters.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct TemplateUse {
    name: String,
    /// `{{1}}`, `{{2}}`, …: each 1 to 256 characters on one line.
    #[serde(default)]
    params: Vec<String>,
}

/// A message the Dak server holds (✓).
#[derive(Serialize, ToSchema)]
struct Sent {
    /// The message's id (32 hex digits).
    id: String,
    to: String,
    /// Always "sent" here; later ticks come to the webhook.
    status: Tick,
    server_time_ms: i64,
    /// The recipient devices it was stored for.
    recipient_devices: usize,
}

/// A message's tick: pending (🕓), sent (✓), delivered (✓✓), read (blue ✓✓).
#[derive(Serialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum Tick {
    Pending,
    Sent,
    Delivered,
    Read,
}

impl From<dak_client::TickState> for Tick {
    fn from(t: dak_client::TickState) -> Tick {
        match t {
            dak_client::TickState::Pending => Tick::Pending,
            dak_client::TickState::Sent => Tick::Sent,
            dak_client::TickState::Delivered => Tick::Delivered,
            dak_client::TickState::Read => Tick::Read,
        }
    }
}

/// A message's ticks, per recipient device.
#[derive(Serialize, ToSchema)]
struct MessageStatus {
    id: String,
    to: String,
    status: Tick,
    devices: Vec<DeviceTick>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct DeviceTick {
    pub phone: String,
    pub device_id: u64,
    /// 0: not yet.
    pub delivered_ms: i64,
    /// 0: not yet.
    pub read_ms: i64,
}

#[derive(Serialize, ToSchema)]
struct MarkedRead {
    /// Messages newly marked read (0 if it was already, or is not the bot's to read).
    marked_read: usize,
}

#[derive(Serialize, ToSchema)]
struct Health {
    phone: String,
    queue: super::queue::QueueCounts,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Dak bot API",
        description = "What `dak bot serve` offers the service behind a bot (docs/BOTS.md). Events come to the service's webhook, signed.",
        version = "1"
    ),
    paths(send, upload_media, received_media, status, read, health),
    modifiers(&Bearer)
)]
struct ApiDoc;

struct Bearer;

impl utoipa::Modify for Bearer {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI 3.1 document of this API.
pub(crate) fn openapi_document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(openapi_document())
}

/// Send a text, a text with reply buttons or a list, or a template.
#[utoipa::path(
    post,
    path = "/v1/messages",
    tag = "messages",
    request_body = SendRequest,
    responses(
        (status = 201, description = "The Dak server holds it (✓)", body = Sent),
        (status = 202, description = "The connection was lost as it went: it may be on the server, and goes again with the same id when the bot reconnects (people never see it twice); status pending", body = Sent),
        (status = 400, description = "Malformed, or against the rules of interactive messages or templates", body = ErrorBody),
        (status = 401, description = "No token, or the wrong one", body = ErrorBody),
        (status = 403, description = "Free text outside the 24-hour window (`outside_window`), or a template to someone who sent STOP (`opted_out`)", body = ErrorBody),
        (status = 404, description = "No such number on Dak", body = ErrorBody),
        (status = 429, description = "The Dak server limits this bot's sending (per chat, and overall): nothing was sent; try again after Retry-After seconds", body = ErrorBody),
        (status = 500, description = "The bot's own store failed", body = ErrorBody),
        (status = 502, description = "The Dak server refused it", body = ErrorBody),
        (status = 503, description = "The bot is not connected to the Dak server right now; nothing was sent", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn send(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<Sent>)> {
    authorize(&state, &headers)?;
    let req: SendRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid(format!("the request is not a message: {e}")))?;
    let to = recipient(&req.to)?;
    let media = match &req.media_id {
        None => None,
        Some(_) if req.template.is_some() || req.interactive.is_some() => {
            return Err(ApiError::invalid(
                "a file goes with a caption only: no template, buttons or list",
            ));
        }
        Some(id) => Some(super::media::find(&state.dir, id).ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no file {id:?}: upload it with POST /v1/media (files are kept 30 days)"),
            )
        })?),
    };
    let text = match (&req.text, &req.template) {
        (Some(_), Some(_)) => return Err(ApiError::invalid("give text or template, not both")),
        (None, None) if media.is_some() => String::new(),
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
    let attachment = match media {
        Some((path, meta)) => Some(Box::new(send_file(&state, path, meta).await?)),
        None => None,
    };
    let opts = TextOptions {
        reply_to,
        interactive: req.interactive.map(Box::new),
        attachment,
        ..Default::default()
    };
    let (reply, answer) = oneshot::channel();
    let cmd = Command::Send {
        to: to.clone(),
        text,
        opts,
        reply,
    };
    let (code, id, sent) = match ask(&state, cmd, answer).await?? {
        super::SendResult::Sent(sent) => (
            StatusCode::CREATED,
            sent.id.clone(),
            Sent {
                id: format_id(&sent.id),
                to: to.clone(),
                status: Tick::Sent,
                server_time_ms: sent.server_time_ms,
                recipient_devices: sent.recipient_devices,
            },
        ),
        super::SendResult::Pending(id) => (
            StatusCode::ACCEPTED,
            id.clone(),
            Sent {
                id: format_id(&id),
                to: to.clone(),
                status: Tick::Pending,
                server_time_ms: 0,
                recipient_devices: 0,
            },
        ),
    };
    state
        .db
        .record_sent(&id, &to, super::webhook::now_ms())
        .map_err(internal)?;
    Ok((code, Json(sent)))
}

/// Seals a stored file for one message, has the device take a slot for
/// it and uploads it: the attachment the message carries.
async fn send_file(
    state: &ApiState,
    path: std::path::PathBuf,
    meta: super::media::Stored,
) -> ApiResult<dak_client::Attachment> {
    let sealed = tokio::task::spawn_blocking(move || super::media::seal(&path))
        .await
        .map_err(|e| internal(e.into()))?
        .map_err(internal)?;
    let (reply, answer) = oneshot::channel();
    let cmd = Command::Slot {
        length: sealed.sealed.length,
        sha256: sealed.sealed.sha256,
        capability: sealed.capability.clone(),
        reply,
    };
    let slot = match ask(state, cmd, answer).await {
        Ok(Ok(slot)) => slot,
        other => {
            let _ = std::fs::remove_file(&sealed.sealed.path);
            return Err(match other {
                Ok(Err(e)) => e.into(),
                Err(e) => e,
                Ok(Ok(_)) => unreachable!(),
            });
        }
    };
    super::media::upload(&slot.server, &slot.trust, &sealed, &slot.slot, &meta)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("{e:#}; nothing was sent"),
            )
        })
}

/// A file's bytes, as `POST /v1/media` takes them.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)] // only its schema is used
struct FileBytes(Vec<u8>);

/// A stored file, as `POST /v1/media` answers.
#[derive(Serialize, ToSchema)]
struct MediaStored {
    /// Give it as `media_id` to `POST /v1/messages`, for 30 days.
    media_id: String,
    size: u64,
}

/// Upload a file to send: the body is its bytes (up to 100 MB).
#[utoipa::path(
    post,
    path = "/v1/media",
    tag = "media",
    request_body(content = FileBytes, content_type = "application/octet-stream", description = "The file's bytes. Give its type as Content-Type (e.g. image/png) and its name in X-File-Name."),
    params(("X-File-Name" = Option<String>, Header, description = "The file's name as people see it")),
    responses(
        (status = 201, description = "Kept; send it with its media_id", body = MediaStored),
        (status = 400, description = "Empty, or a bad name or type", body = ErrorBody),
        (status = 401, description = "No token, or the wrong one", body = ErrorBody),
        (status = 413, description = "Larger than 100 MB", body = ErrorBody),
        (status = 500, description = "The bot's own store failed", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn upload_media(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> ApiResult<(StatusCode, Json<MediaStored>)> {
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    authorize(&state, &headers)?;
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let media_type = match header("content-type")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
    {
        "" => "application/octet-stream".to_string(),
        t => t.to_ascii_lowercase(),
    };
    let meta = super::media::Stored {
        file_name: header("x-file-name"),
        media_type,
        size: 0,
    };
    // The receivers' rules for a descriptor's type and name, checked now.
    dak_proto::blob::validate_type_and_name(&meta.media_type, &meta.file_name)
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    if meta.file_name.chars().any(char::is_control) {
        return Err(ApiError::invalid("X-File-Name holds a control character"));
    }
    let id = super::media::new_id();
    let part = super::media::dir(&state.dir).join(format!("{id}.part"));
    let mut file = tokio::fs::File::create(&part)
        .await
        .map_err(|e| internal(e.into()))?;
    let mut size = 0u64;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                let _ = tokio::fs::remove_file(&part).await;
                return Err(ApiError::invalid(format!("the upload stopped: {e}")));
            }
        };
        size += chunk.len() as u64;
        if size > dak_proto::blob::MAX_FILE_BYTES {
            drop(file);
            let _ = tokio::fs::remove_file(&part).await;
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!(
                    "files can be at most {} MB",
                    dak_proto::blob::MAX_FILE_BYTES / 1_000_000
                ),
            ));
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| internal(e.into()))?;
    }
    file.sync_all().await.map_err(|e| internal(e.into()))?;
    drop(file);
    if size == 0 {
        let _ = tokio::fs::remove_file(&part).await;
        return Err(ApiError::invalid("the file is empty"));
    }
    let meta = super::media::Stored { size, ..meta };
    super::media::keep(&state.dir, &id, &part, &meta).map_err(internal)?;
    Ok((
        StatusCode::CREATED,
        Json(MediaStored { media_id: id, size }),
    ))
}

/// The file a person sent with a message: fetched from the Dak server,
/// checked and decrypted on first asking, then kept 30 days.
#[utoipa::path(
    get,
    path = "/v1/messages/{id}/media",
    tag = "media",
    params(("id" = String, Path, description = "The id of a message the bot received with a file")),
    responses(
        (status = 200, description = "The file, with its type and name", body = FileBytes, content_type = "application/octet-stream"),
        (status = 400, description = "Not a message id", body = ErrorBody),
        (status = 401, description = "No token, or the wrong one", body = ErrorBody),
        (status = 404, description = "No file came with such a message", body = ErrorBody),
        (status = 503, description = "The file could not be fetched now", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn received_media(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    authorize(&state, &headers)?;
    let id = message_id(&id)?;
    let (reply, answer) = oneshot::channel();
    let (m, server, trust) = ask(
        &state,
        Command::Received {
            id: id.clone(),
            reply,
        },
        answer,
    )
    .await?
    .map_err(|e| match e {
        ClientError::Usage(m) => ApiError::new(StatusCode::NOT_FOUND, "not_found", m),
        e => e.into(),
    })?;
    let a = m.attachment.as_deref().expect("checked by the device");
    let mut path = super::media::received_path(&state.dir, &id);
    if !path.exists() {
        path = super::media::fetch(&state.dir, &server, &trust, &m)
            .await
            .map_err(|e| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    format!("{e:#}"),
                )
            })?;
        let (started, _) = oneshot::channel();
        let _ = state.commands.try_send(super::Job {
            deadline: Instant::now() + Duration::from_secs(3600),
            started,
            cmd: Command::Fetched {
                blob_id: a.blob_id.clone(),
            },
        });
    }
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| internal(e.into()))?;
    let stream = futures_util::stream::unfold(file, |mut f| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 64 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(axum::body::Bytes::from(buf)), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    });
    let media_type = if a.media_type.is_empty() {
        "application/octet-stream"
    } else {
        &a.media_type
    };
    // The name as an RFC 6266 filename*, percent-encoded: it came from a
    // stranger, so nothing of it is trusted in the header.
    let name: String = a
        .file_name
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    Response::builder()
        .header(axum::http::header::CONTENT_TYPE, media_type)
        .header(
            axum::http::header::CONTENT_DISPOSITION,
            format!("attachment; filename*=UTF-8''{name}"),
        )
        .header("x-content-type-options", "nosniff")
        .body(axum::body::Body::from_stream(stream))
        .map_err(|e| internal(e.into()))
}

/// Sends a command to the device and waits for its answer: 503 at the
/// deadline if the device has not started it (it then never will), else
/// its answer (a started send has its own timeouts in the client core).
async fn ask<T>(state: &ApiState, cmd: Command, answer: oneshot::Receiver<T>) -> ApiResult<T> {
    let (started, on_start) = oneshot::channel();
    let job = super::Job {
        deadline: Instant::now() + SEND_DEADLINE,
        started,
        cmd,
    };
    state
        .commands
        .try_send(job)
        .map_err(|_| ApiError::unavailable())?;
    match tokio::time::timeout(SEND_DEADLINE, on_start).await {
        Ok(Ok(())) => {}
        _ => return Err(ApiError::unavailable()),
    }
    match tokio::time::timeout(Duration::from_secs(120), answer).await {
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

/// A message's ticks, per recipient device.
#[utoipa::path(
    get,
    path = "/v1/messages/{id}",
    tag = "messages",
    params(("id" = String, Path, description = "The message's id, as sending answered")),
    responses(
        (status = 200, description = "Its ticks", body = MessageStatus),
        (status = 400, description = "Not a message id", body = ErrorBody),
        (status = 401, description = "No token, or the wrong one", body = ErrorBody),
        (status = 404, description = "The bot sent no such message", body = ErrorBody),
        (status = 503, description = "The bot is busy reconnecting", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn status(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<MessageStatus>> {
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
    Ok(Json(MessageStatus {
        id: format_id(&m.id),
        to: m.conversation.key(),
        status: tick.state.into(),
        devices: tick.devices.iter().map(device_tick).collect(),
    }))
}

pub(crate) fn device_tick(d: &dak_client::RecipientState) -> DeviceTick {
    DeviceTick {
        phone: d.phone.clone(),
        device_id: d.device_id,
        delivered_ms: d.delivered_ms,
        read_ms: d.read_ms,
    }
}

/// Mark a user's message read: their ticks turn blue.
#[utoipa::path(
    post,
    path = "/v1/messages/{id}/read",
    tag = "messages",
    params(("id" = String, Path, description = "The id of a message the bot received")),
    responses(
        (status = 200, description = "Done", body = MarkedRead),
        (status = 400, description = "Not a message id", body = ErrorBody),
        (status = 401, description = "No token, or the wrong one", body = ErrorBody),
        (status = 503, description = "The bot is not connected to the Dak server right now", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn read(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<MarkedRead>> {
    authorize(&state, &headers)?;
    let id = message_id(&id)?;
    let (reply, answer) = oneshot::channel();
    let n = ask(&state, Command::Read { id, reply }, answer).await??;
    Ok(Json(MarkedRead { marked_read: n }))
}

/// The bot's number and its webhook queue (no token: nothing private).
#[utoipa::path(
    get,
    path = "/v1/health",
    tag = "bot",
    responses(
        (status = 200, description = "The queue's counts", body = Health),
        (status = 500, description = "The bot's own store failed", body = ErrorBody),
    )
)]
async fn health(State(state): State<ApiState>) -> ApiResult<Json<Health>> {
    let queue = state.db.counts().map_err(internal)?;
    Ok(Json(Health {
        phone: state.me.clone(),
        queue,
    }))
}
