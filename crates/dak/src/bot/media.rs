//! Files from the service: `POST /v1/media` takes a file's bytes and keeps
//! them in `PROFILE/bot-media/<id>` (with its name and type beside it), and
//! `POST /v1/messages` with `"media_id"` sends it, encrypted for that one
//! message as any client's file is (docs/PROTOCOL.md §15): sealed under a
//! fresh key, uploaded to the Dak server's blob store, and the key in the
//! MLS message. One media id may be sent to many people; each send is its
//! own blob, as WhatsApp's Cloud API media ids are reusable.
//!
//! The upload runs beside the device task (which only hands out the blob
//! slot and sends the message), so a large file does not hold up the
//! events. A stored file is forgotten after `KEEP` (30 days).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use dak_client::blobs::{self, BlobEndpoint};
use dak_client::{Attachment, CertTrust};
use dak_core::media::MediaKey;
use rand::RngCore;
use serde::{Deserialize, Serialize};

/// How long an uploaded file may be sent before it is deleted.
pub const KEEP: Duration = Duration::from_secs(30 * 24 * 3600);

/// What is kept beside a file's bytes.
#[derive(Serialize, Deserialize)]
pub struct Stored {
    pub file_name: String,
    pub media_type: String,
    pub size: u64,
}

pub fn dir(profile: &Path) -> PathBuf {
    profile.join("bot-media")
}

/// A new media id: 16 random bytes in hex (a file name, nothing else).
pub fn new_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// The stored file for `id`, if `id` is one (32 hex digits) and it exists.
pub fn find(profile: &Path, id: &str) -> Option<(PathBuf, Stored)> {
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let d = dir(profile);
    let meta: Stored =
        serde_json::from_slice(&std::fs::read(d.join(format!("{id}.json"))).ok()?).ok()?;
    Some((d.join(format!("{id}.bin")), meta))
}

/// Records a file written at `bytes_path` (moved in) under `id`.
pub fn keep(profile: &Path, id: &str, bytes_path: &Path, meta: &Stored) -> Result<()> {
    let d = dir(profile);
    std::fs::rename(bytes_path, d.join(format!("{id}.bin")))?;
    let tmp = d.join(format!("{id}.json.tmp"));
    std::fs::write(&tmp, serde_json::to_vec(meta)?)?;
    std::fs::rename(&tmp, d.join(format!("{id}.json")))?;
    Ok(())
}

/// Deletes stored files older than `KEEP`, and half-written ones.
pub fn prune(profile: &Path) {
    let Ok(entries) = std::fs::read_dir(dir(profile)) else {
        return;
    };
    for e in entries.flatten() {
        let age = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .unwrap_or_default();
        let partial = e.file_name().to_string_lossy().ends_with(".part");
        if age > KEEP || (partial && age > Duration::from_secs(3600)) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Where a received message's file is kept once fetched and opened.
pub fn received_path(profile: &Path, message_id: &[u8]) -> PathBuf {
    dir(profile).join(format!("received-{}.bin", hex::encode(message_id)))
}

/// Downloads, checks and opens a received file into `received_path`.
pub async fn fetch(
    profile: &Path,
    server: &str,
    trust: &CertTrust,
    message: &dak_client::MessageView,
) -> Result<PathBuf> {
    let a = message.attachment.as_deref().context("no file")?;
    let dest = received_path(profile, &message.id);
    // Names of this fetch's own: two requests for one file at once each
    // fetch it, and the second rename replaces the first's equal copy.
    let own = new_id();
    let part = dest.with_extension(format!("{own}.ciphertext.part"));
    let endpoint = BlobEndpoint::new(server, trust)?;
    endpoint
        .download(a, &part, blobs::quiet())
        .await
        .context("the file could not be fetched from the Dak server")?;
    let opening = dest.with_extension(format!("{own}.bin.part"));
    let (a2, part2, opening2) = (a.clone(), part.clone(), opening.clone());
    let opened =
        tokio::task::spawn_blocking(move || blobs::open_file(&a2, &part2, &opening2)).await?;
    let _ = std::fs::remove_file(&part);
    opened?;
    std::fs::rename(&opening, &dest)?;
    Ok(dest)
}

/// A sealed copy of a stored file, ready to upload.
pub struct Sealed {
    pub sealed: blobs::SealedFile,
    pub key: [u8; 32],
    pub capability: Vec<u8>,
}

/// Seals `path` under a fresh key into a temporary file beside it.
pub fn seal(path: &Path) -> Result<Sealed> {
    let mut key = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut key);
    let mut capability = vec![0u8; dak_proto::blob::BLOB_SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut capability);
    let out = path.with_extension(format!("{}.sealed.part", new_id()));
    let sealed = blobs::seal_file(&MediaKey(key), path, &out)?;
    Ok(Sealed {
        sealed,
        key,
        capability,
    })
}

/// Uploads a sealed file to its slot; the attachment the message carries.
pub async fn upload(
    server: &str,
    trust: &CertTrust,
    s: &Sealed,
    slot: &dak_proto::v1::BlobSlot,
    meta: &Stored,
) -> Result<Attachment> {
    let endpoint = BlobEndpoint::new(server, trust)?;
    let done = endpoint
        .upload(
            &slot.blob_id,
            &slot.upload_token,
            &s.sealed.path,
            blobs::quiet(),
        )
        .await;
    let _ = std::fs::remove_file(&s.sealed.path);
    done.context("the upload to the Dak server failed")?;
    Ok(Attachment {
        blob_id: slot.blob_id.clone(),
        capability: s.capability.clone(),
        key: s.key.to_vec(),
        sha256: s.sealed.sha256.to_vec(),
        size: s.sealed.size,
        media_type: meta.media_type.clone(),
        file_name: meta.file_name.clone(),
        ..Default::default()
    })
}
