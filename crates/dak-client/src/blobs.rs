//! Media on a native device (docs/PROTOCOL.md §15): sealing a file on disk
//! into its ciphertext and opening a downloaded one, both streaming, and
//! moving ciphertext to and from the server over HTTPS: tus PATCH uploads
//! that resume from the server's `Upload-Offset`, and GETs that resume
//! from what a `.part` file already holds with `Range`.
//!
//! Invariants:
//! - Memory per transfer is one chunk buffer, whatever the file's size.
//! - `open_file` writes nothing the user sees until every check passed:
//!   the ciphertext's hash first (one pass), then each chunk as it is
//!   decrypted into a temporary file, renamed into place at the end.
//! - The server's certificate is judged as the device's WebSocket judges
//!   it (`transport::tls_config`): a pin, or a public root.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use dak_core::media::{self, CHUNK_BYTES, MediaKey, Opener, Sealer, TAG_BYTES};
use dak_core::{Attachment, CertTrust, ClientError};
use sha2::{Digest, Sha256};

/// Bytes read from disk per step of an upload's body.
const READ_BYTES: usize = 64 * 1024;
/// Tries of one transfer before it is given up (each resumes).
pub const ATTEMPTS: u32 = 5;
/// An HTTP step that hears nothing for this long is cut and retried.
const STALL: Duration = Duration::from_secs(30);

fn io(what: &str, path: &Path, e: std::io::Error) -> ClientError {
    ClientError::Usage(format!("{what} {}: {e}", path.display()))
}

fn transport(e: impl std::fmt::Display) -> ClientError {
    ClientError::Transport(e.to_string())
}

/// A file sealed to disk: what `CreateBlob` asks for and the message says.
#[derive(Debug, Clone)]
pub struct SealedFile {
    pub path: PathBuf,
    pub sha256: [u8; 32],
    /// The file's true size.
    pub size: u64,
    /// The ciphertext's length (padded).
    pub length: u64,
}

/// Pads and encrypts `input` into `output`, chunk by chunk.
pub fn seal_file(key: &MediaKey, input: &Path, output: &Path) -> Result<SealedFile, ClientError> {
    let mut file = std::fs::File::open(input).map_err(|e| io("cannot read", input, e))?;
    let size = file
        .metadata()
        .map_err(|e| io("cannot read", input, e))?
        .len();
    if size > media::MAX_MEDIA_BYTES {
        return Err(ClientError::Usage(format!(
            "{} is {}; files can be at most {}",
            input.display(),
            dak_core::human_size(size),
            dak_core::human_size(media::MAX_MEDIA_BYTES)
        )));
    }
    let padded = media::padded_len(size);
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(output).map_err(|e| io("cannot write", output, e))?,
    );
    let mut sealer = Sealer::new(key);
    let mut hash = Sha256::new();
    let mut done = 0u64;
    let mut chunk = vec![0u8; CHUNK_BYTES];
    loop {
        let want = (padded - done).min(CHUNK_BYTES as u64) as usize;
        let real = (size.saturating_sub(done)).min(want as u64) as usize;
        file.read_exact(&mut chunk[..real])
            .map_err(|e| io("cannot read", input, e))?;
        chunk[real..want].fill(0);
        done += want as u64;
        let sealed = if done == padded {
            let last = std::mem::replace(&mut sealer, Sealer::new(key));
            last.finish(&chunk[..want])
        } else {
            sealer.push(&chunk[..want])
        };
        hash.update(&sealed);
        out.write_all(&sealed)
            .map_err(|e| io("cannot write", output, e))?;
        if done == padded {
            break;
        }
    }
    out.flush().map_err(|e| io("cannot write", output, e))?;
    let length = media::ciphertext_len(padded);
    Ok(SealedFile {
        path: output.to_path_buf(),
        sha256: hash.finalize().into(),
        size,
        length,
    })
}

/// Checks a downloaded ciphertext against its attachment and decrypts it
/// to `dest` (see the module's invariants).
pub fn open_file(a: &Attachment, ciphertext: &Path, dest: &Path) -> Result<(), ClientError> {
    let bad = |e: media::MediaError| {
        ClientError::Usage(format!(
            "the file from the server failed its check ({e}); it was not saved"
        ))
    };
    let mut file = std::fs::File::open(ciphertext).map_err(|e| io("cannot read", ciphertext, e))?;
    let len = file
        .metadata()
        .map_err(|e| io("cannot read", ciphertext, e))?
        .len();
    if len != a.stored_len() || a.key.len() != 32 {
        return Err(bad(media::MediaError::WrongSize));
    }
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; CHUNK_BYTES + TAG_BYTES];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| io("cannot read", ciphertext, e))?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    if hash.finalize().as_slice() != a.sha256.as_slice() {
        return Err(bad(media::MediaError::HashMismatch));
    }
    file.seek(SeekFrom::Start(0))
        .map_err(|e| io("cannot read", ciphertext, e))?;
    let key = MediaKey(a.key.as_slice().try_into().expect("checked above"));
    // A name of its own (no other file, no other opening), and at the end
    // a link that never replaces what is there.
    let tmp = {
        let mut name = dest.as_os_str().to_owned();
        name.push(format!(
            ".opening-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        PathBuf::from(name)
    };
    let result = (|| {
        let mut out = std::io::BufWriter::new(
            std::fs::File::create(&tmp).map_err(|e| io("cannot write", &tmp, e))?,
        );
        let mut opener = Opener::new(&key);
        let full = (CHUNK_BYTES + TAG_BYTES) as u64;
        let mut left = len;
        let mut written = 0u64;
        while left > 0 {
            let n = left.min(full) as usize;
            file.read_exact(&mut buf[..n])
                .map_err(|e| io("cannot read", ciphertext, e))?;
            left -= n as u64;
            let plain = if left == 0 {
                let last = std::mem::replace(&mut opener, Opener::new(&key));
                last.finish(&buf[..n]).map_err(bad)?
            } else {
                opener.push(&buf[..n]).map_err(bad)?
            };
            // The padding is zeros, and is not written.
            let keep = (a.size.saturating_sub(written)).min(plain.len() as u64) as usize;
            if plain[keep..].iter().any(|b| *b != 0) {
                return Err(bad(media::MediaError::WrongSize));
            }
            out.write_all(&plain[..keep])
                .map_err(|e| io("cannot write", &tmp, e))?;
            written += keep as u64;
        }
        if written != a.size {
            return Err(bad(media::MediaError::WrongSize));
        }
        out.flush().map_err(|e| io("cannot write", &tmp, e))?;
        std::fs::hard_link(&tmp, dest).map_err(|e| io("cannot write", dest, e))
    })();
    let _ = std::fs::remove_file(&tmp);
    result
}

/// The HTTPS side of one server: `/v1/blobs/<id>` on the WebSocket's
/// host and port.
pub struct BlobEndpoint {
    base: String,
    http: reqwest::Client,
}

impl BlobEndpoint {
    /// `server` is the WebSocket URL (`wss://host:port` or, for a local
    /// test server, `ws://`).
    pub fn new(server: &str, trust: &CertTrust) -> Result<BlobEndpoint, ClientError> {
        let base = if let Some(rest) = server.strip_prefix("wss://") {
            format!("https://{}", rest.trim_end_matches('/'))
        } else if let Some(rest) = server.strip_prefix("ws://") {
            format!("http://{}", rest.trim_end_matches('/'))
        } else {
            return Err(ClientError::Usage(format!(
                "server address {server:?} must start with wss://"
            )));
        };
        let mut tls = crate::transport::tls_config(trust)?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .http1_only()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(STALL)
            .build()
            .map_err(transport)?;
        Ok(BlobEndpoint { base, http })
    }

    pub fn url(&self, blob_id: &[u8]) -> String {
        format!("{}/v1/blobs/{}", self.base, hex::encode(blob_id))
    }

    /// Where the server's copy of an upload stands (tus HEAD).
    pub async fn upload_offset(&self, blob_id: &[u8], token: &[u8]) -> Result<u64, ClientError> {
        let r = self
            .http
            .head(self.url(blob_id))
            .bearer_auth(hex::encode(token))
            .header("tus-resumable", dak_proto::blob::TUS_VERSION)
            .send()
            .await
            .map_err(transport)?;
        check(&r)?;
        header_u64(&r, "upload-offset")
    }

    /// Sends the file's bytes from `offset` in one PATCH; returns the
    /// server's new offset.
    pub async fn patch_from(
        &self,
        blob_id: &[u8],
        token: &[u8],
        path: &Path,
        offset: u64,
        progress: Progress,
    ) -> Result<u64, ClientError> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(|e| io("cannot read", path, e))?;
        let len = file
            .metadata()
            .await
            .map_err(|e| io("cannot read", path, e))?
            .len();
        file.seek(SeekFrom::Start(offset))
            .await
            .map_err(|e| io("cannot read", path, e))?;
        let body = futures_util::stream::try_unfold((file, offset), move |(mut file, at)| {
            let progress = progress.clone();
            async move {
                if at >= len {
                    return Ok::<_, std::io::Error>(None);
                }
                let mut buf = vec![0u8; READ_BYTES.min((len - at) as usize)];
                file.read_exact(&mut buf).await?;
                let next = at + buf.len() as u64;
                progress(next, len);
                Ok(Some((bytes::Bytes::from(buf), (file, next))))
            }
        });
        let r = self
            .http
            .patch(self.url(blob_id))
            .bearer_auth(hex::encode(token))
            .header("tus-resumable", dak_proto::blob::TUS_VERSION)
            .header("upload-offset", offset)
            .header("content-type", "application/offset+octet-stream")
            .header("content-length", len - offset)
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await
            .map_err(transport)?;
        check(&r)?;
        header_u64(&r, "upload-offset")
    }

    /// Uploads the whole ciphertext at `path`, resuming from the server's
    /// offset after a cut, up to `ATTEMPTS` tries.
    pub async fn upload(
        &self,
        blob_id: &[u8],
        token: &[u8],
        path: &Path,
        progress: Progress,
    ) -> Result<(), ClientError> {
        let len = std::fs::metadata(path)
            .map_err(|e| io("cannot read", path, e))?
            .len();
        let mut last: Option<ClientError> = None;
        for attempt in 0..ATTEMPTS {
            // A pause only after a failure.
            if last.is_some() {
                tokio::time::sleep(Duration::from_millis(500 << attempt.min(4))).await;
            }
            let offset = match self.upload_offset(blob_id, token).await {
                Ok(o) => o,
                Err(e) if e.is_retryable() => {
                    last = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            if offset == len {
                return Ok(());
            }
            match self
                .patch_from(blob_id, token, path, offset, progress.clone())
                .await
            {
                Ok(at) if at == len => return Ok(()),
                Ok(_) => last = None,
                Err(e) if e.is_retryable() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Transport("the upload did not finish".into())))
    }

    /// Downloads the ciphertext into `part`, keeping what `part` already
    /// holds and asking for the rest with `Range`, up to `ATTEMPTS` tries.
    pub async fn download(
        &self,
        a: &Attachment,
        part: &Path,
        progress: Progress,
    ) -> Result<(), ClientError> {
        let len = a.stored_len();
        let mut last: Option<ClientError> = None;
        for attempt in 0..ATTEMPTS {
            // A pause only after a failure: a GET that ended early without
            // one (the server closed) is resumed at once.
            if last.is_some() {
                tokio::time::sleep(Duration::from_millis(500 << attempt.min(4))).await;
            }
            let have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
            if have == len {
                return Ok(());
            }
            if have > len {
                // Not this blob's bytes: start again.
                std::fs::remove_file(part).map_err(|e| io("cannot write", part, e))?;
                continue;
            }
            match self.get_from(a, part, have, len, &progress).await {
                Ok(()) => last = None,
                Err(e) if e.is_retryable() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        let have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
        if have == len {
            return Ok(());
        }
        Err(last.unwrap_or_else(|| ClientError::Transport("the download did not finish".into())))
    }

    async fn get_from(
        &self,
        a: &Attachment,
        part: &Path,
        from: u64,
        len: u64,
        progress: &Progress,
    ) -> Result<(), ClientError> {
        let mut request = self
            .http
            .get(self.url(&a.blob_id))
            .bearer_auth(hex::encode(&a.capability));
        if from > 0 {
            request = request.header("range", format!("bytes={from}-"));
        }
        let mut r = request.send().await.map_err(transport)?;
        check(&r)?;
        if from > 0 && r.status().as_u16() != 206 {
            return Err(ClientError::Transport(
                "the server did not resume the download".into(),
            ));
        }
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(part)
            .map_err(|e| io("cannot write", part, e))?;
        let mut at = from;
        while let Some(chunk) = r.chunk().await.map_err(transport)? {
            if at + chunk.len() as u64 > len {
                return Err(ClientError::Usage(
                    "the server sent more than the file's length".into(),
                ));
            }
            out.write_all(&chunk)
                .map_err(|e| io("cannot write", part, e))?;
            at += chunk.len() as u64;
            progress(at, len);
        }
        // No fsync: a `.part` that lost its tail in a power cut is resumed
        // short, and one that kept garbage fails the hash check and is
        // fetched again; `open_file` checks every byte before use.
        Ok(())
    }
}

/// Told (bytes done, bytes in all) as a transfer moves.
pub type Progress = std::sync::Arc<dyn Fn(u64, u64) + Send + Sync>;

/// No progress to show.
pub fn quiet() -> Progress {
    std::sync::Arc::new(|_, _| {})
}

fn check(r: &reqwest::Response) -> Result<(), ClientError> {
    let status = r.status();
    if status.is_success() {
        return Ok(());
    }
    Err(match status.as_u16() {
        404 => ClientError::Usage(
            "the file is no longer on the server (fetched by everyone, expired or deleted)".into(),
        ),
        460 => ClientError::Usage("the server refused the upload: its bytes did not match".into()),
        413 => ClientError::Usage("the file is too large for this server".into()),
        507 => ClientError::Transport("the server is out of room for files; try later".into()),
        409 | 429 | 500..=599 => ClientError::Transport(format!("the server said {status}")),
        _ => ClientError::Usage(format!("the server refused the transfer: {status}")),
    })
}

fn header_u64(r: &reqwest::Response, name: &str) -> Result<u64, ClientError> {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| ClientError::Transport(format!("the server's answer has no {name}")))
}
