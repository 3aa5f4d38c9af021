//! Attachments: a photo, video, document or voice note in a message
//! (docs/PROTOCOL.md §15). A text carries at most one `Attachment`, and
//! its body is then the caption, so replies, forwards, edits (of the
//! caption), deletion, disappearing timers and history work for files as
//! for texts.
//!
//! The flow, split so that the core does no I/O:
//! 1. The device seals the file (`media::Sealer`, a fresh `MediaKey`) and
//!    picks a download capability (`new_capability`).
//! 2. `Client::create_blob` asks for an upload slot; the driver uploads the
//!    ciphertext over HTTPS (dak-client's `blobs.rs`, the browser's fetch).
//! 3. `Client::send_text_with` with `TextOptions::attachment` sends the
//!    message; just before it leaves, `send_encrypted` shares the blob with
//!    the conversation's group (`ShareBlob`), so the server keeps it until
//!    each recipient device fetched it.
//! 4. A receiving driver downloads, checks and decrypts (`media::Opener`),
//!    then calls `Client::blob_fetched`.
//!
//! Invariant: the key, capability and hash never leave the device except
//! inside an MLS message; they are not in `MessageView`'s JSON.

use dak_proto::v1::{self, client_frame::Request, server_frame::Body};

use crate::Client;
use crate::ClientError;
use crate::connection::unexpected;
use crate::env::Environment;
use crate::ids::ser_id;

/// A file in a message, as the device keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct Attachment {
    #[serde(serialize_with = "ser_id")]
    pub blob_id: Vec<u8>,
    #[serde(skip)]
    pub capability: Vec<u8>,
    #[serde(skip)]
    pub key: Vec<u8>,
    #[serde(skip)]
    pub sha256: Vec<u8>,
    /// The file's true size in bytes.
    pub size: u64,
    pub media_type: String,
    pub file_name: String,
    #[serde(skip)]
    pub thumbnail: Vec<u8>,
    pub width: u32,
    pub height: u32,
    pub duration_ms: u32,
    pub waveform: Vec<u8>,
    pub voice_note: bool,
}

impl Attachment {
    pub fn from_proto(a: v1::Attachment) -> Attachment {
        Attachment {
            blob_id: a.blob_id,
            capability: a.capability,
            key: a.key,
            sha256: a.sha256,
            size: a.size,
            media_type: a.media_type,
            file_name: a.file_name,
            thumbnail: a.thumbnail,
            width: a.width,
            height: a.height,
            duration_ms: a.duration_ms,
            waveform: a.waveform,
            voice_note: a.voice_note,
        }
    }

    pub fn to_proto(&self) -> v1::Attachment {
        v1::Attachment {
            blob_id: self.blob_id.clone(),
            capability: self.capability.clone(),
            key: self.key.clone(),
            sha256: self.sha256.clone(),
            size: self.size,
            media_type: self.media_type.clone(),
            file_name: self.file_name.clone(),
            thumbnail: self.thumbnail.clone(),
            width: self.width,
            height: self.height,
            duration_ms: self.duration_ms,
            waveform: self.waveform.clone(),
            voice_note: self.voice_note,
        }
    }

    /// The ciphertext's length on the server.
    pub fn stored_len(&self) -> u64 {
        crate::media::ciphertext_len(crate::media::padded_len(self.size))
    }

    /// What a list shows for it, in no language: "📎 report.pdf (1.2 MB)",
    /// "🎤 0:07 (9.0 kB)" for a voice note.
    pub fn label(&self) -> String {
        let size = human_size(self.size);
        if self.voice_note {
            let secs = self.duration_ms / 1000;
            return format!("🎤 {}:{:02} ({size})", secs / 60, secs % 60);
        }
        let icon = match self.media_type.split('/').next() {
            Some("image") => "🖼",
            Some("video") => "🎞",
            Some("audio") => "🎵",
            _ => "📎",
        };
        let name = if self.file_name.is_empty() {
            self.media_type.as_str()
        } else {
            self.file_name.as_str()
        };
        format!("{icon} {name} ({size})")
    }
}

/// "812 B", "14.2 kB", "3.4 MB": decimal units, as phones show sizes.
pub fn human_size(n: u64) -> String {
    match n {
        0..1_000 => format!("{n} B"),
        1_000..1_000_000 => format!("{:.1} kB", n as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} MB", n as f64 / 1e6),
        _ => format!("{:.2} GB", n as f64 / 1e9),
    }
}

/// A fresh download capability: 32 random bytes, which the server knows
/// only by their SHA-256.
pub fn new_capability(env: &dyn Environment) -> Vec<u8> {
    let mut c = vec![0u8; dak_proto::blob::BLOB_SECRET_BYTES];
    env.fill_random(&mut c);
    c
}

/// The attachment a plaintext content carries, if it is a text with one.
pub(crate) fn attachment_of(plaintext: &[u8]) -> Option<v1::Attachment> {
    match dak_proto::decode_content(plaintext) {
        Ok(v1::Content {
            kind: Some(v1::content::Kind::Text(t)),
        }) => t.attachment,
        _ => None,
    }
}

impl Client {
    /// How media transfers judge the server's certificate: as this
    /// device's WebSocket does (the pin taken at registration).
    pub fn server_trust(&self) -> Result<crate::CertTrust, ClientError> {
        crate::connect::trust_for(&self.profile, "cert")
    }

    /// Asks the server for an upload slot for `length` bytes of ciphertext
    /// whose SHA-256 is `sha256`; it will serve them to whoever shows
    /// `capability`.
    pub async fn create_blob(
        &mut self,
        length: u64,
        sha256: &[u8],
        capability: &[u8],
    ) -> Result<v1::BlobSlot, ClientError> {
        use sha2::Digest;
        let answer = self
            .conn
            .call(Request::CreateBlob(v1::CreateBlob {
                length,
                sha256: sha256.to_vec(),
                capability_sha256: sha2::Sha256::digest(capability).to_vec(),
            }))
            .await?;
        match answer {
            Body::BlobSlot(slot) => Ok(slot),
            other => Err(unexpected(other)),
        }
    }

    /// Tells the server this device has the blob's bytes (the last
    /// recipient to say so lets it be deleted).
    pub async fn blob_fetched(&mut self, blob_id: &[u8]) -> Result<(), ClientError> {
        self.ok(Request::BlobFetched(v1::BlobFetched {
            blob_id: blob_id.to_vec(),
        }))
        .await
    }

    /// Deletes an uploaded blob for everyone (the uploading account only).
    pub async fn delete_blob(&mut self, blob_id: &[u8]) -> Result<(), ClientError> {
        self.ok(Request::DeleteBlob(v1::DeleteBlob {
            blob_id: blob_id.to_vec(),
        }))
        .await
    }

    /// Lets the group's devices fetch the attachment (before the message
    /// that names it is sent). A blob the server no longer has is not an
    /// error here: the message still goes, and its recipients are told the
    /// file is gone when they try to fetch it.
    pub(crate) async fn share_attachment(
        &mut self,
        group: &[u8],
        a: &v1::Attachment,
    ) -> Result<(), ClientError> {
        let shared = self
            .ok(Request::ShareBlob(v1::ShareBlob {
                blob_id: a.blob_id.clone(),
                capability: a.capability.clone(),
                group_id: group.to_vec(),
            }))
            .await;
        match shared {
            Err(e) if e.code() == Some(v1::ErrorCode::BlobNotFound) => {
                tracing::warn!(
                    "a forwarded file is no longer on the server; sending its message anyway"
                );
                Ok(())
            }
            other => other,
        }
    }

    async fn ok(&mut self, request: Request) -> Result<(), ClientError> {
        match self.conn.call(request).await? {
            Body::Ok(_) => Ok(()),
            other => Err(unexpected(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_say_what_the_file_is() {
        let doc = Attachment {
            size: 1_234_567,
            media_type: "application/pdf".into(),
            file_name: "certificate.pdf".into(),
            ..Default::default()
        };
        assert_eq!(doc.label(), "📎 certificate.pdf (1.2 MB)");
        let voice = Attachment {
            size: 9_000,
            media_type: "audio/ogg".into(),
            duration_ms: 67_000,
            voice_note: true,
            ..Default::default()
        };
        assert_eq!(voice.label(), "🎤 1:07 (9.0 kB)");
        let round = Attachment::from_proto(doc.to_proto());
        assert_eq!(round, doc);
    }
}
