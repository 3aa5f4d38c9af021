//! Media blobs on the server (docs/PROTOCOL.md §15): the WebSocket
//! requests that make, share, release and delete a blob, and the HTTPS
//! side that moves its bytes, `/v1/blobs/<hex id>`:
//!
//! - `OPTIONS`: tus 1.0 discovery (`Tus-Version`, `Tus-Max-Size`).
//! - `HEAD` with the upload token: where the upload stands
//!   (`Upload-Offset`, `Upload-Length`), to resume it.
//! - `PATCH` with the upload token, `Upload-Offset` and a body of
//!   `application/offset+octet-stream`: tus's core upload. The body is
//!   stored as it streams, in segments of `SEGMENT_BYTES`; a body cut off
//!   keeps what arrived, so the next PATCH starts there.
//! - `GET` with the download capability: the ciphertext, or one `Range`
//!   of it (206), streamed segment by segment.
//!
//! Invariants:
//! - **Nothing half-stored is offered.** A blob is served only once every
//!   byte arrived and the SHA-256 named at creation matched; a wrong hash
//!   deletes it. An unknown blob, a wrong secret and an unfinished upload
//!   all answer the same 404, so a guess learns nothing.
//! - **Bounded per transfer**: one segment buffer (`SEGMENT_BYTES`) per
//!   upload, one read buffer per download, `max_transfers` at once per
//!   node, `media_requests_per_ip_per_sec` per network. Uploads are
//!   authorised by a device's slot (`CreateBlob`, rate-limited and held to
//!   quotas in the store, atomically across nodes).
//! - The server never learns a file's name, type or content: it sees a
//!   padded length, a hash of ciphertext, and which group a blob was shared
//!   with.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use bytes::{Bytes, BytesMut};
use dak_proto::blob::{self as rules, BlobError};
use dak_proto::v1::{self, ErrorCode};
use dak_store::{Blob, BlobCreated, BlobQuota, BlobSegment, BlobShared, BlobStore, Device};
use futures_util::{StreamExt, TryStreamExt};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::edge::Peer;
use crate::error::{ApiError, ApiResult};
use crate::metrics::Metrics;
use crate::ratelimit::IpPrefix;
use crate::state::{AppState, now_ms};

/// Bytes of an upload held before they are stored as one segment: the
/// memory one upload costs.
pub const SEGMENT_BYTES: usize = 2 * 1024 * 1024;
/// Blobs the expiry sweep deletes per round.
const SWEEP_BATCH: u32 = 256;
/// An upload's body that sends nothing for this long is taken as cut.
const BODY_IDLE: Duration = Duration::from_secs(30);
/// Transfers one network may have at once on this node (of `max_transfers`).
const TRANSFERS_PER_NETWORK: u32 = 16;

/// The largest ciphertext a device may upload under the configuration.
pub fn max_blob_bytes(state: &AppState) -> u64 {
    rules::ciphertext_len(rules::padded_len(state.config.max_file_bytes))
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    Sha256::digest(bytes).to_vec()
}

fn not_found() -> ApiError {
    ApiError::new(
        ErrorCode::BlobNotFound,
        "no such file on the server (it may have been fetched by everyone, expired or deleted)",
    )
}

// ---- WebSocket requests ----

/// `CreateBlob`: a slot, if the device is within its rate and quotas.
pub async fn create(
    state: &AppState,
    device: &Device,
    r: v1::CreateBlob,
) -> ApiResult<v1::BlobSlot> {
    let max = max_blob_bytes(state);
    if r.length > max {
        return Err(ApiError::new(
            ErrorCode::BodyTooLarge,
            format!(
                "the file is too large: this server takes files up to {} MB",
                state.config.max_file_bytes / 1_000_000
            ),
        ));
    }
    state
        .take_cluster_token(
            &format!("uploads:{}", device.id),
            Duration::from_secs(3600),
            state.config.uploads_per_device_per_hour,
            state.config.uploads_per_device_per_hour,
            "uploads",
            "too many uploads from this device; try again later",
        )
        .await?;
    let mut id = [0u8; rules::BLOB_ID_BYTES];
    let mut token = [0u8; rules::BLOB_SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut id);
    rand::rngs::OsRng.fill_bytes(&mut token);
    let now = now_ms();
    let blob = Blob {
        id: id.to_vec(),
        owner_device: device.id,
        owner_account: device.account_id,
        length: r.length,
        received: 0,
        complete: false,
        sha256: r.sha256,
        upload_token_sha256: sha256(&token),
        capability_sha256: r.capability_sha256,
        created_ms: now,
        expires_ms: now.saturating_add(state.config.upload_ttl.as_millis() as i64),
    };
    let quota = BlobQuota {
        device_bytes: state.config.media_quota_device_bytes,
        account_bytes: state.config.media_quota_account_bytes,
    };
    let refused = |who: &str, used: u64, limit: u64| {
        Metrics::inc(&state.metrics.uploads_over_quota);
        ApiError::new(
            ErrorCode::QuotaExceeded,
            format!(
                "{who} has {} MB of files on the server waiting to be fetched (the limit is {} MB); \
                 try again once they are fetched or expired",
                used / 1_000_000,
                limit / 1_000_000
            ),
        )
    };
    match state.store.create_blob(blob, quota).await? {
        BlobCreated::Created => {}
        BlobCreated::DeviceQuota { used } => {
            return Err(refused("this device", used, quota.device_bytes));
        }
        BlobCreated::AccountQuota { used } => {
            return Err(refused("this account", used, quota.account_bytes));
        }
    }
    Metrics::inc(&state.metrics.uploads_started);
    Ok(v1::BlobSlot {
        blob_id: id.to_vec(),
        upload_token: token.to_vec(),
        max_chunk: r.length,
    })
}

/// `ShareBlob`: the group's other devices may fetch it, and it waits for them.
pub async fn share(state: &AppState, device: &Device, r: v1::ShareBlob) -> ApiResult<()> {
    let Some(blob) = state.store.blob(&r.blob_id).await? else {
        return Err(not_found());
    };
    if blob.capability_sha256 != sha256(&r.capability) {
        return Err(not_found());
    }
    match state
        .store
        .share_blob(&r.blob_id, &r.group_id, device.id)
        .await?
    {
        BlobShared::Shared { .. } => Ok(()),
        BlobShared::NotFound => Err(not_found()),
        BlobShared::NotMember => Err(ApiError::new(
            ErrorCode::NotAMember,
            "this device is not a member of that group",
        )),
    }
}

/// `BlobFetched`: this device has the bytes; the last one deletes the blob.
pub async fn fetched(state: &AppState, device: &Device, r: v1::BlobFetched) -> ApiResult<()> {
    if state.store.blob_fetched(&r.blob_id, device.id).await? {
        delete(state, &r.blob_id).await?;
        Metrics::inc(&state.metrics.blobs_fetched_by_all);
    }
    Ok(())
}

/// `DeleteBlob`: the uploading account takes its blob back.
pub async fn delete_for_everyone(
    state: &AppState,
    device: &Device,
    r: v1::DeleteBlob,
) -> ApiResult<()> {
    match state.store.blob(&r.blob_id).await? {
        Some(b) if b.owner_account == device.account_id => delete(state, &r.blob_id).await,
        _ => Err(not_found()),
    }
}

/// Forgets the blob, then deletes its bytes.
async fn delete(state: &AppState, id: &[u8]) -> ApiResult<()> {
    let segments = state.store.delete_blob(id).await?;
    for s in segments {
        if let Err(e) = state.blobs.delete(id, &s).await {
            // The record is gone, so nothing will offer these bytes; an
            // operator may find them under blobs/ (logged once each).
            tracing::warn!(error = %e, "could not delete a media segment");
        }
    }
    Ok(())
}

/// Deletes blobs past their retention (or unfinished past `upload_ttl`).
pub async fn sweep(state: &AppState) {
    loop {
        let ids = match state.store.expired_blobs(now_ms(), SWEEP_BATCH).await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, "media expiry sweep failed; will retry");
                return;
            }
        };
        let n = ids.len();
        for id in ids {
            if delete(state, &id).await.is_ok() {
                Metrics::inc(&state.metrics.blobs_expired);
            }
        }
        if n < SWEEP_BATCH as usize {
            return;
        }
    }
}

// ---- HTTPS ----

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/blobs/{id}", any(blob))
        .with_state(state)
}

/// An HTTP answer with tus's header and no caching, as every answer here.
fn answer(status: StatusCode, message: &str) -> Response {
    let mut r = (status, format!("{message}\n")).into_response();
    tus_headers(r.headers_mut());
    r
}

fn tus_headers(h: &mut HeaderMap) {
    h.insert(
        "tus-resumable",
        HeaderValue::from_static(rules::TUS_VERSION),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
}

fn refused(e: BlobError) -> Response {
    match e {
        BlobError::Unsatisfiable(len) => {
            let mut r = answer(StatusCode::RANGE_NOT_SATISFIABLE, &e.to_string());
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            r
        }
        BlobError::Missing("Authorization") => answer(StatusCode::UNAUTHORIZED, &e.to_string()),
        e => answer(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

fn unavailable(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "media request failed");
    let mut r = answer(
        StatusCode::SERVICE_UNAVAILABLE,
        "the server could not do this now; nothing was lost, try again",
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    r
}

fn offset_headers(r: &mut Response, blob: &Blob, received: u64) {
    let h = r.headers_mut();
    h.insert("upload-offset", HeaderValue::from(received));
    h.insert("upload-length", HeaderValue::from(blob.length));
}

async fn blob(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    let method = request.method().clone();
    if method == axum::http::Method::OPTIONS {
        let mut r = answer(StatusCode::NO_CONTENT, "");
        let h = r.headers_mut();
        h.insert("tus-version", HeaderValue::from_static(rules::TUS_VERSION));
        h.insert("tus-max-size", HeaderValue::from(max_blob_bytes(&state)));
        return r;
    }
    // Every other request costs its network a token before it is read.
    if let Err(secs) = state.media_requests.check(state.prefix(peer.0.peer.ip())) {
        state.metrics.limited.inc("media_requests");
        let mut r = answer(
            StatusCode::TOO_MANY_REQUESTS,
            "too many requests; slow down",
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        return r;
    }
    let id = match rules::parse_blob_id(&id) {
        Ok(id) => id,
        Err(e) => return refused(e),
    };
    let secret = match rules::parse_bearer(
        request
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes()),
    ) {
        Ok(s) => s,
        Err(e) => return refused(e),
    };
    let blob = match state.store.blob(&id).await {
        Ok(Some(b)) => b,
        Ok(None) => return answer(StatusCode::NOT_FOUND, "no such file"),
        Err(e) => return unavailable(e),
    };
    let hashed = sha256(&secret);
    let uploader = hashed == blob.upload_token_sha256;
    let reader = hashed == blob.capability_sha256 && blob.complete;
    if !uploader && !reader {
        Metrics::inc(&state.metrics.blob_secrets_wrong);
        return answer(StatusCode::NOT_FOUND, "no such file");
    }
    // The secret is as good as a device's signature for this transfer:
    // the connection is past the edge's pre-authentication deadline and
    // byte budget, but may not become a WebSocket.
    peer.0.media_transfer();
    let Some(network) = state.media_networks.take(state.prefix(peer.0.peer.ip())) else {
        state.metrics.limited.inc("media_transfers_per_network");
        let mut r = answer(
            StatusCode::TOO_MANY_REQUESTS,
            "too many transfers from your network at once; try again",
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
        return r;
    };
    let Ok(permit) = state.transfers.clone().try_acquire_owned() else {
        let mut r = answer(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is busy; try again",
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
        return r;
    };
    match method {
        m if m == axum::http::Method::HEAD && uploader => {
            // Every byte arrived but the check did not finish (the store
            // failed then): finish it now, so that "all there" always
            // means "served".
            if blob.received == blob.length
                && !blob.complete
                && let Err(r) = finish(&state, &blob, None).await
            {
                return r;
            }
            let mut r = answer(StatusCode::OK, "");
            offset_headers(&mut r, &blob, blob.received);
            r
        }
        m if m == axum::http::Method::HEAD => {
            let mut r = answer(StatusCode::OK, "");
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(blob.length));
            r.headers_mut()
                .insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            r
        }
        m if m == axum::http::Method::PATCH && uploader => {
            let r = upload(state, blob, request).await;
            drop((permit, network));
            r
        }
        m if m == axum::http::Method::GET && reader => {
            download(state, blob, request.headers(), (permit, network)).await
        }
        _ => answer(StatusCode::METHOD_NOT_ALLOWED, "not with this token"),
    }
}

/// tus PATCH: appends the body at `Upload-Offset`, segment by segment.
async fn upload(state: AppState, blob: Blob, request: Request) -> Response {
    let headers = request.headers();
    if headers.get("tus-resumable").map(|v| v.as_bytes()) != Some(rules::TUS_VERSION.as_bytes()) {
        let mut r = answer(StatusCode::PRECONDITION_FAILED, "send Tus-Resumable: 1.0.0");
        r.headers_mut()
            .insert("tus-version", HeaderValue::from_static(rules::TUS_VERSION));
        return r;
    }
    if headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes())
        != Some(b"application/offset+octet-stream")
    {
        return answer(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send Content-Type: application/offset+octet-stream",
        );
    }
    let offset = match rules::parse_upload_offset(
        headers.get("upload-offset").map(|v| v.as_bytes()),
        blob.length,
    ) {
        Ok(o) => o,
        Err(e) => return refused(e),
    };
    if offset != blob.received || blob.complete {
        let mut r = answer(
            StatusCode::CONFLICT,
            "the upload is not at that offset; ask with HEAD where it is",
        );
        offset_headers(&mut r, &blob, blob.received);
        return r;
    }
    // A declared length past the blob is refused before a byte is read.
    if let Some(n) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && n > blob.length - offset
    {
        return answer(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the body runs past the file's length",
        );
    }
    // Hashed as it arrives when this PATCH carries the whole file (the
    // common case); a resumed upload is hashed from the store at its end.
    let mut hasher = (offset == 0).then(Sha256::new);
    let mut body = request.into_body().into_data_stream();
    let mut buf = BytesMut::new();
    let mut at = offset;
    let mut cut = false;
    let mut over = false;
    loop {
        // A body that stops arriving is a cut network: keep what came.
        let chunk = match tokio::time::timeout(BODY_IDLE, body.next()).await {
            Ok(Some(Ok(c))) => c,
            Ok(Some(Err(_))) | Err(_) => {
                cut = true;
                break;
            }
            Ok(None) => break,
        };
        if at + (buf.len() + chunk.len()) as u64 > blob.length {
            over = true;
            break;
        }
        let mut rest = &chunk[..];
        while !rest.is_empty() {
            let take = rest.len().min(SEGMENT_BYTES - buf.len());
            buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if buf.len() == SEGMENT_BYTES {
                match store_segment(&state, &blob, at, buf.split().freeze(), &mut hasher).await {
                    Ok(next) => at = next,
                    Err(r) => return r,
                }
            }
        }
    }
    // What arrived is kept, even from a body cut off: the next PATCH
    // resumes after it.
    if !buf.is_empty() {
        match store_segment(&state, &blob, at, buf.split().freeze(), &mut hasher).await {
            Ok(next) => at = next,
            Err(r) => return r,
        }
    }
    if over {
        let mut r = answer(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the body runs past the file's length",
        );
        offset_headers(&mut r, &blob, at);
        return r;
    }
    if cut {
        Metrics::inc(&state.metrics.uploads_cut);
        let mut r = answer(
            StatusCode::BAD_REQUEST,
            "the body was cut off; resume from Upload-Offset",
        );
        offset_headers(&mut r, &blob, at);
        return r;
    }
    if at == blob.length
        && let Err(r) = finish(&state, &blob, hasher).await
    {
        return r;
    }
    let mut r = answer(StatusCode::NO_CONTENT, "");
    offset_headers(&mut r, &blob, at);
    r
}

/// Stores one segment, then records it; returns the new offset.
async fn store_segment(
    state: &AppState,
    blob: &Blob,
    at: u64,
    bytes: Bytes,
    hasher: &mut Option<Sha256>,
) -> Result<u64, Response> {
    let len = bytes.len() as u64;
    if let Some(h) = hasher.as_mut() {
        h.update(&bytes);
    }
    // This request's own object: a racing PATCH at the same offset writes
    // another, and only the one the store records is ever served.
    let segment = BlobSegment {
        offset: at,
        len,
        write: rand::rngs::OsRng.next_u64(),
    };
    match state.blobs.put(&blob.id, &segment, bytes).await {
        Ok(()) => {}
        Err(dak_store::BlobStoreError::Full) => {
            Metrics::inc(&state.metrics.media_store_full);
            tracing::error!("the media store is full; refusing uploads");
            return Err(answer(
                StatusCode::INSUFFICIENT_STORAGE,
                "the server is out of room for files; try again later",
            ));
        }
        Err(e) => return Err(unavailable(e)),
    }
    let recorded = state.store.add_blob_segment(&blob.id, segment).await;
    if !matches!(recorded, Ok(Some(_))) {
        // Not recorded: nothing will serve or delete it but this request.
        let _ = state.blobs.delete(&blob.id, &segment).await;
    }
    match recorded {
        Ok(Some(next)) => {
            Metrics::add(&state.metrics.media_bytes_in, len);
            Ok(next)
        }
        // Another PATCH of the same upload got there first, or the upload
        // was deleted meanwhile.
        Ok(None) => Err(answer(
            StatusCode::CONFLICT,
            "another request is uploading this file; ask with HEAD where it is",
        )),
        Err(e) => Err(unavailable(e)),
    }
}

/// Checks the whole ciphertext's hash, then offers the blob; a mismatch
/// deletes it (tus's checksum extension answers 460).
async fn finish(state: &AppState, blob: &Blob, hasher: Option<Sha256>) -> Result<(), Response> {
    let digest = match hasher {
        Some(h) => h.finalize().to_vec(),
        None => {
            let mut h = Sha256::new();
            let mut stream = match read(state, blob, 0..blob.length).await {
                Ok(s) => s,
                Err(e) => return Err(unavailable(e)),
            };
            while let Some(part) = stream.next().await {
                match part {
                    Ok(b) => h.update(&b),
                    Err(e) => return Err(unavailable(e)),
                }
            }
            h.finalize().to_vec()
        }
    };
    if digest != blob.sha256 {
        let _ = delete(state, &blob.id).await;
        Metrics::inc(&state.metrics.uploads_hash_wrong);
        let status = StatusCode::from_u16(460).unwrap_or(StatusCode::BAD_REQUEST);
        return Err(answer(
            status,
            "the file's bytes do not match the hash given for them; it was deleted, upload it again",
        ));
    }
    let expires = now_ms().saturating_add(state.config.retention.as_millis() as i64);
    match state.store.complete_blob(&blob.id, expires).await {
        Ok(_) => {
            Metrics::inc(&state.metrics.uploads_completed);
            Ok(())
        }
        Err(e) => Err(unavailable(e)),
    }
}

/// The bytes `range` of a blob, read segment after segment as the stream
/// is polled (one segment open at a time).
async fn read(
    state: &AppState,
    blob: &Blob,
    range: Range<u64>,
) -> Result<dak_store::blob_store::ByteStream, dak_store::StoreError> {
    let segments = state.store.blob_segments(&blob.id).await?;
    let pieces: Vec<(BlobSegment, Range<u64>)> = segments
        .iter()
        .filter(|s| s.offset < range.end && s.offset + s.len > range.start)
        .map(|s| {
            let start = range.start.max(s.offset) - s.offset;
            let end = range.end.min(s.offset + s.len) - s.offset;
            (*s, start..end)
        })
        .collect();
    let blobs: Arc<dyn BlobStore> = state.blobs.clone();
    let id = blob.id.clone();
    let stream = futures_util::stream::iter(pieces)
        .then(move |(segment, r)| {
            let (blobs, id) = (blobs.clone(), id.clone());
            async move { blobs.get(&id, &segment, r).await }
        })
        .try_flatten();
    Ok(stream.boxed())
}

/// GET: the whole ciphertext (200) or one range of it (206).
async fn download(
    state: AppState,
    blob: Blob,
    headers: &HeaderMap,
    permit: (tokio::sync::OwnedSemaphorePermit, NetworkSlot),
) -> Response {
    let range = match rules::parse_range(
        headers.get(header::RANGE).map(|v| v.as_bytes()),
        blob.length,
    ) {
        Ok(r) => r,
        Err(e) => return refused(e),
    };
    let partial = range != (0..blob.length);
    let len = range.end - range.start;
    let stream = match read(&state, &blob, range.clone()).await {
        Ok(s) => s,
        Err(e) => return unavailable(e),
    };
    let metrics_state = state.clone();
    // The transfer's slot is held until its last byte is sent.
    let counted = stream.inspect_ok(move |b| {
        let _held = &permit;
        Metrics::add(&metrics_state.metrics.media_bytes_out, b.len() as u64);
    });
    let mut r = Response::new(Body::from_stream(counted));
    *r.status_mut() = if partial {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let h = r.headers_mut();
    tus_headers(h);
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if partial
        && let Ok(v) = HeaderValue::from_str(&format!(
            "bytes {}-{}/{}",
            range.start,
            range.end - 1,
            blob.length
        ))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    Metrics::inc(&state.metrics.downloads);
    r
}

/// Transfers at once per network (`TRANSFERS_PER_NETWORK`), so that one
/// network holding slow transfers cannot take all of `max_transfers`.
#[derive(Default)]
pub struct NetworkTransfers(Arc<std::sync::Mutex<std::collections::HashMap<IpPrefix, u32>>>);

/// One transfer's place in its network's count; given back on drop.
pub struct NetworkSlot {
    counts: Arc<std::sync::Mutex<std::collections::HashMap<IpPrefix, u32>>>,
    network: IpPrefix,
}

impl NetworkTransfers {
    pub fn take(&self, network: IpPrefix) -> Option<NetworkSlot> {
        let mut counts = self.0.lock().ok()?;
        let n = counts.entry(network).or_insert(0);
        if *n >= TRANSFERS_PER_NETWORK {
            return None;
        }
        *n += 1;
        Some(NetworkSlot {
            counts: self.0.clone(),
            network,
        })
    }
}

impl Drop for NetworkSlot {
    fn drop(&mut self) {
        if let Ok(mut counts) = self.counts.lock()
            && let Some(n) = counts.get_mut(&self.network)
        {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.network);
            }
        }
    }
}
