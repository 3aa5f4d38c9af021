//! The web client's files, served on the same listener as the WebSocket:
//! `/` is its page and `/web/NAME` each of its files (what
//! `scripts/web-build.sh` puts in one directory: the page, its script and
//! style, and the client core as WebAssembly with wasm-bindgen's glue).
//!
//! Invariants:
//! - **Read once, at start.** The directory's plain files are read into
//!   memory when the server starts and never again: no request names a
//!   path on disk, so there is nothing to traverse, and what is served is
//!   exactly what was hashed. A name outside `[A-Za-z0-9._-]`, a
//!   subdirectory, or more than `MAX_BUNDLE_BYTES` in all refuses to start.
//! - **One hash names the bundle.** `bundle_sha256` is SHA-256 over every
//!   file's name, length and bytes in name order; the server logs it,
//!   `/web/bundle.json` lists it with each file's own hash, and the page
//!   shows it, so anyone can compare the served code with a published
//!   build (WhatsApp's Code Verify answers the same worry).
//! - **Strict headers on everything.** A Content-Security-Policy allows
//!   scripts only from this origin (plus the compilation of WebAssembly,
//!   which `'wasm-unsafe-eval'` permits and nothing else: no `eval`), no
//!   inline script or style, connections only to this origin (its
//!   WebSocket), and no framing; `nosniff`, no referrer. Responses carry
//!   the file's hash as ETag and are revalidated on each load.
//! - **Compressed once.** Each file is gzipped when it is read (the
//!   WebAssembly shrinks to about a third) and sent so to a browser that
//!   accepts gzip: a request costs no compression, so asking again and
//!   again costs an attacker more than it costs the server.
//! - **Slow networks finish.** A file's response lifts the pre-authentication
//!   deadline (`edge.rs`) for as long as the file needs at 16 KiB/s, so a
//!   phone on a poor network can fetch the WebAssembly, but never past 5
//!   minutes after the connection was accepted; the connection still holds
//!   its network's unauthenticated slot meanwhile.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::extract::{ConnectInfo, Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

use crate::edge::Peer;

/// What one web client bundle may weigh in all.
pub const MAX_BUNDLE_BYTES: u64 = 64 * 1024 * 1024;
/// Files a bundle may have.
const MAX_FILES: usize = 64;
/// The slowest download a file's deadline allows for.
const SLOW_NETWORK_BYTES_PER_SEC: u64 = 16 * 1024;
/// However many files it asks for, an unauthenticated connection is cut
/// this long after it was accepted.
const MAX_DOWNLOAD_TIME: Duration = Duration::from_secs(300);

pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; \
     script-src 'self' 'wasm-unsafe-eval'; \
     style-src 'self'; \
     img-src 'self' data: blob:; \
     media-src blob:; \
     connect-src 'self'; \
     worker-src 'self'; \
     manifest-src 'self'; \
     base-uri 'none'; \
     form-action 'none'; \
     frame-ancestors 'none'";

struct Asset {
    bytes: axum::body::Bytes,
    /// The same, gzipped, when that is smaller, with its own ETag (a strong
    /// ETag names one representation).
    gzipped: Option<(axum::body::Bytes, HeaderValue)>,
    content_type: &'static str,
    etag: HeaderValue,
}

fn gzip(bytes: &[u8]) -> Option<axum::body::Bytes> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes).ok()?;
    let out = encoder.finish().ok()?;
    (out.len() < bytes.len()).then(|| out.into())
}

/// The bundle, in memory.
pub struct WebAssets {
    files: BTreeMap<String, Asset>,
    pub bundle_sha256: String,
}

impl WebAssets {
    /// Reads every plain file of `dir` (see the invariants).
    pub fn load(dir: &Path) -> Result<WebAssets> {
        let mut found = BTreeMap::new();
        let mut total = 0u64;
        let entries = std::fs::read_dir(dir).with_context(|| {
            format!(
                "cannot read the web client in {} (build it with scripts/web-build.sh)",
                dir.display()
            )
        })?;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !entry.file_type()?.is_file() {
                bail!(
                    "{}: the web client's directory holds only files",
                    entry.path().display()
                );
            }
            if name.is_empty()
                || name.starts_with('.')
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            {
                bail!(
                    "{}: a web client file name is letters, digits, '.', '_' and '-'",
                    entry.path().display()
                );
            }
            let bytes = std::fs::read(entry.path())?;
            total += bytes.len() as u64;
            if total > MAX_BUNDLE_BYTES || found.len() >= MAX_FILES {
                bail!(
                    "{}: the web client is over {} MiB or {MAX_FILES} files",
                    dir.display(),
                    MAX_BUNDLE_BYTES >> 20
                );
            }
            found.insert(name, bytes);
        }
        if !found.contains_key("index.html") {
            bail!(
                "{}: no index.html (build it with scripts/web-build.sh)",
                dir.display()
            );
        }
        let mut bundle = Sha256::new();
        let mut files = BTreeMap::new();
        let mut listing = serde_json::Map::new();
        for (name, bytes) in found {
            bundle.update((name.len() as u64).to_le_bytes());
            bundle.update(name.as_bytes());
            bundle.update((bytes.len() as u64).to_le_bytes());
            bundle.update(&bytes);
            let sha = hex::encode(Sha256::digest(&bytes));
            listing.insert(name.clone(), serde_json::Value::String(sha.clone()));
            files.insert(
                name.clone(),
                Asset {
                    content_type: content_type(&name),
                    etag: HeaderValue::from_str(&format!("\"{sha}\""))?,
                    gzipped: match gzip(&bytes) {
                        Some(gz) => Some((gz, HeaderValue::from_str(&format!("\"{sha}-gzip\""))?)),
                        None => None,
                    },
                    bytes: bytes.into(),
                },
            );
        }
        let bundle_sha256 = hex::encode(bundle.finalize());
        let manifest = serde_json::json!({"sha256": bundle_sha256, "files": listing}).to_string();
        let sha = hex::encode(Sha256::digest(manifest.as_bytes()));
        files.insert(
            "bundle.json".into(),
            Asset {
                content_type: "application/json",
                etag: HeaderValue::from_str(&format!("\"{sha}\""))?,
                gzipped: None,
                bytes: manifest.into(),
            },
        );
        Ok(WebAssets {
            files,
            bundle_sha256,
        })
    }

    fn respond(&self, name: &str, request: &HeaderMap, peer: &Peer) -> Response {
        let Some(asset) = self.files.get(name) else {
            return (StatusCode::NOT_FOUND, security_headers(), "no such file\n").into_response();
        };
        let (body, etag, gzipped) = match &asset.gzipped {
            Some((gz, tag)) if accepts_gzip(request) => (gz.clone(), tag, true),
            _ => (asset.bytes.clone(), &asset.etag, false),
        };
        let mut headers = security_headers();
        headers.insert(header::ETAG, etag.clone());
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
        if request.get(header::IF_NONE_MATCH) == Some(etag) {
            return (StatusCode::NOT_MODIFIED, headers).into_response();
        }
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
        if gzipped {
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        let wait = body.len() as u64 / SLOW_NETWORK_BYTES_PER_SEC;
        peer.0
            .extend_for_download(Duration::from_secs(10 + wait), MAX_DOWNLOAD_TIME);
        (StatusCode::OK, headers, body).into_response()
    }
}

/// Whether the request's `Accept-Encoding` lists gzip (not refused with q=0).
fn accepts_gzip(request: &HeaderMap) -> bool {
    request
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or_default();
            let refused = parts.any(|p| {
                p.replace(' ', "")
                    .strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    == Some(0.0)
            });
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        })
}

/// `/` and `/web/NAME`; without a bundle, `/` says how to get one.
pub fn router(assets: Option<Arc<WebAssets>>) -> Router {
    match assets {
        Some(assets) => Router::new()
            .route("/", get(index))
            .route("/web/{name}", get(file))
            .with_state(assets),
        None => Router::new().route("/", get(not_built)),
    }
}

async fn index(
    State(assets): State<Arc<WebAssets>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    request: HeaderMap,
) -> Response {
    assets.respond("index.html", &request, &peer)
}

async fn file(
    State(assets): State<Arc<WebAssets>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    UrlPath(name): UrlPath<String>,
    request: HeaderMap,
) -> Response {
    assets.respond(&name, &request, &peer)
}

async fn not_built() -> impl IntoResponse {
    (
        StatusCode::NOT_FOUND,
        security_headers(),
        "This Dak server does not serve the web client. Build it with scripts/web-build.sh \
         and start the server with --web target/web (scripts/run-server.sh does both).\n",
    )
}

fn security_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next().unwrap_or_default() {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "wasm" => "application/wasm",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_is_read_whole_and_hashed_by_name_and_content() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("index.html"), "<!doctype html>").unwrap();
        std::fs::write(dir.path().join("app.js"), "export {}").unwrap();
        let a = WebAssets::load(dir.path()).unwrap();
        assert!(a.files.contains_key("bundle.json"));
        assert_eq!(
            a.files["app.js"].content_type,
            "text/javascript; charset=utf-8"
        );
        std::fs::write(dir.path().join("app.js"), "export {} ").unwrap();
        let b = WebAssets::load(dir.path()).unwrap();
        assert_ne!(
            a.bundle_sha256, b.bundle_sha256,
            "one byte more is another bundle"
        );
        // What compresses is kept gzipped too, and that decompresses back.
        let big = "let x = 1;\n".repeat(1000);
        std::fs::write(dir.path().join("app.js"), &big).unwrap();
        let c = WebAssets::load(dir.path()).unwrap();
        let (gz, tag) = c.files["app.js"].gzipped.clone().expect("gzipped");
        assert_ne!(
            tag, c.files["app.js"].etag,
            "each representation its own ETag"
        );
        assert!(gz.len() < big.len() / 10);
        let mut back = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gz[..]), &mut back)
            .unwrap();
        assert_eq!(back, big);
    }

    #[test]
    fn gzip_is_sent_only_to_who_accepts_it() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
            m
        };
        assert!(accepts_gzip(&h("gzip, deflate, br, zstd")));
        assert!(accepts_gzip(&h("br;q=1.0, gzip;q=0.8")));
        assert!(accepts_gzip(&h("*")));
        assert!(!accepts_gzip(&h("gzip;q=0")));
        assert!(!accepts_gzip(&h("gzip; q=0.0, br")));
        assert!(!accepts_gzip(&h("br")));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn odd_names_subdirectories_and_missing_pages_refuse_to_start() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("app.js"), "").unwrap();
        let e = WebAssets::load(dir.path()).err().unwrap().to_string();
        assert!(e.contains("no index.html"), "{e}");
        std::fs::write(dir.path().join("index.html"), "").unwrap();
        std::fs::write(dir.path().join("a b.js"), "").unwrap();
        let e = WebAssets::load(dir.path()).err().unwrap().to_string();
        assert!(e.contains("letters, digits"), "{e}");
        std::fs::remove_file(dir.path().join("a b.js")).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let e = WebAssets::load(dir.path()).err().unwrap().to_string();
        assert!(e.contains("only files"), "{e}");
    }
}
