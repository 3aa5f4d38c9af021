//! Files in the browser (PROTOCOL.md §15), the core's half: sealing a
//! picked file and asking for its upload slot, sending the message once
//! the worker uploaded it, and checking and opening a downloaded one. The
//! bytes move in `web/worker.js` with the browser's `fetch` (tus PATCHes
//! in slices, resumed from `HEAD`; GETs resumed with `Range`), so this
//! module never waits on a transfer and the engine keeps answering.
//!
//! Invariants:
//! - A prepared file's key and capability stay here (`Prepared`) until its
//!   message is sent; the worker sees only the ciphertext, the blob's id
//!   and the upload token.
//! - `open` returns bytes only after the hash, every chunk and the padding
//!   checked (`dak_core::media::open`).

use std::collections::VecDeque;

use dak_core::media::{self, MediaKey};
use dak_core::{Attachment, Client, ClientError, Profile, format_id};
use serde_json::{Value, json};

/// Files sealed and waiting for their upload; the oldest is forgotten
/// past this many (its upload then cannot be sent, and is retried whole).
const PREPARED_MAX: usize = 16;

/// What the page asks of a file.
pub enum MediaRequest {
    /// Seal a picked file and take an upload slot: answers the slot and
    /// the ciphertext.
    Prepare {
        bytes: Vec<u8>,
        name: String,
        media_type: String,
        voice_note: bool,
        duration_ms: u32,
        /// A small JPEG the worker drew (empty: none), and the picture's size.
        thumbnail: Vec<u8>,
        width: u32,
        height: u32,
    },
    /// Send the message of a prepared file, now uploaded.
    Send {
        blob_id: String,
        chat: String,
        caption: String,
        reply_to: Option<String>,
    },
    /// Where a message's file is, to download it; the bytes are its
    /// thumbnail.
    Info { id: String },
    /// Check and open a message's downloaded ciphertext.
    Open { id: String, ciphertext: Vec<u8> },
}

/// A JSON answer and, for `Prepare` and `Open`, bytes.
pub type MediaAnswer = Result<(Value, Vec<u8>), ClientError>;

#[derive(Default)]
pub struct Prepared(VecDeque<(String, Attachment)>);

impl Prepared {
    fn keep(&mut self, blob_id: String, a: Attachment) {
        if self.0.len() >= PREPARED_MAX {
            self.0.pop_front();
        }
        self.0.push_back((blob_id, a));
    }

    fn take(&mut self, blob_id: &str) -> Option<Attachment> {
        let at = self.0.iter().position(|(id, _)| id == blob_id)?;
        self.0.remove(at).map(|(_, a)| a)
    }
}

fn usage(what: impl Into<String>) -> ClientError {
    ClientError::Usage(what.into())
}

/// A request with the server at hand.
pub async fn online(
    client: &mut Client,
    prepared: &mut Prepared,
    request: MediaRequest,
) -> MediaAnswer {
    match request {
        MediaRequest::Prepare {
            bytes,
            name,
            media_type,
            voice_note,
            duration_ms,
            thumbnail,
            width,
            height,
        } => {
            if thumbnail.len() > dak_proto::blob::MAX_THUMBNAIL_BYTES {
                return Err(usage("the thumbnail is too large"));
            }
            let key = MediaKey::generate(client.profile().env());
            let sealed = media::seal(&key, &bytes).map_err(|e| usage(e.to_string()))?;
            drop(bytes);
            let capability = dak_core::new_capability(client.profile().env());
            let slot = client
                .create_blob(sealed.ciphertext.len() as u64, &sealed.sha256, &capability)
                .await?;
            let blob_id = hex::encode(&slot.blob_id);
            prepared.keep(
                blob_id.clone(),
                Attachment {
                    blob_id: slot.blob_id,
                    capability,
                    key: key.0.to_vec(),
                    sha256: sealed.sha256.to_vec(),
                    size: sealed.size,
                    media_type,
                    file_name: name,
                    voice_note,
                    duration_ms,
                    thumbnail,
                    width,
                    height,
                    ..Default::default()
                },
            );
            Ok((
                json!({"blob_id": blob_id, "token": hex::encode(&slot.upload_token)}),
                sealed.ciphertext,
            ))
        }
        MediaRequest::Send {
            blob_id,
            chat,
            caption,
            reply_to,
        } => {
            let a = prepared
                .take(&blob_id)
                .ok_or_else(|| usage("that file is no longer prepared here; attach it again"))?;
            let (key, mut opts) =
                crate::engine::send_target(client.profile(), &chat, reply_to.as_deref())?;
            opts.attachment = Some(Box::new(a));
            let sent = client.send_text_with(&key, &caption, &opts).await?;
            Ok((json!({"chat": key, "id": format_id(&sent.id)}), Vec::new()))
        }
        MediaRequest::Info { id } => info(client.profile(), &id),
        MediaRequest::Open { id, ciphertext } => {
            let (bytes, a) = open(client.profile(), &id, &ciphertext)?;
            drop(ciphertext);
            // The server may forget it for this device (best effort: its
            // retention deletes it in the end anyway).
            if let Err(e) = client.blob_fetched(&a.blob_id).await {
                tracing::warn!(error = %e, "could not tell the server a file was fetched");
            }
            Ok((
                json!({"media_type": a.media_type, "file_name": a.file_name}),
                bytes,
            ))
        }
    }
}

/// A request without the server: only what the profile answers.
pub fn offline(profile: &Profile, request: MediaRequest) -> MediaAnswer {
    match request {
        MediaRequest::Info { id } => info(profile, &id),
        MediaRequest::Open { id, ciphertext } => {
            let (bytes, a) = open(profile, &id, &ciphertext)?;
            Ok((
                json!({"media_type": a.media_type, "file_name": a.file_name}),
                bytes,
            ))
        }
        MediaRequest::Prepare { .. } | MediaRequest::Send { .. } => {
            Err(ClientError::Transport("not connected to the server".into()))
        }
    }
}

fn attachment_of(profile: &Profile, id: &str) -> Result<Attachment, ClientError> {
    let id = dak_core::parse_id(id)?;
    profile
        .message(&id)?
        .filter(|m| !m.deleted)
        .and_then(|m| m.attachment)
        .map(|a| *a)
        .ok_or_else(|| usage("that message has no file"))
}

fn info(profile: &Profile, id: &str) -> Result<(Value, Vec<u8>), ClientError> {
    let a = attachment_of(profile, id)?;
    let info = json!({
        "blob_id": hex::encode(&a.blob_id),
        "capability": hex::encode(&a.capability),
        "length": a.stored_len(),
        "media_type": a.media_type,
        "file_name": a.file_name,
    });
    Ok((info, a.thumbnail))
}

fn open(
    profile: &Profile,
    id: &str,
    ciphertext: &[u8],
) -> Result<(Vec<u8>, Attachment), ClientError> {
    let a = attachment_of(profile, id)?;
    let key = MediaKey(
        a.key
            .as_slice()
            .try_into()
            .map_err(|_| usage("the file's key is damaged"))?,
    );
    let sha: [u8; 32] = a
        .sha256
        .as_slice()
        .try_into()
        .map_err(|_| usage("the file's hash is damaged"))?;
    let bytes = media::open(&key, ciphertext, &sha, a.size)
        .map_err(|e| usage(format!("the file from the server failed its check ({e})")))?;
    Ok((bytes, a))
}
