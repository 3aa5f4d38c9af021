//! Files in the CLI: `dak send --file/--voice`, the files `dak sync` and
//! `dak listen` save, and `dak media get`.
//!
//! Sending: the file is sealed into `PROFILE/media/outgoing/<blob>.sealed`
//! and recorded beside it (`<blob>.json`: the chat, the caption, the
//! attachment with its key, the upload token) before the first byte is
//! uploaded. An upload that stops (a cut network, a killed process) is
//! resumed from the server's offset by the next `dak sync` (or `dak send`),
//! which then sends the message; only then are both files removed.
//!
//! Receiving: each message with a file is downloaded into
//! `PROFILE/media/<name>.part` (resumed with Range after a cut), checked
//! and decrypted (`dak_client::blobs::open_file`), saved under its name
//! (never over another file), and reported to the server as fetched. The
//! path is remembered (`media.saved.<id>`), so `history` shows it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use dak_client::blobs::{self, BlobEndpoint, Progress};
use dak_client::{Attachment, Client, MessageView, TextOptions, format_id, human_size};
use dak_core::media::MediaKey;
use prost::Message as _;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// How long a file's message waits for a connection after its upload.
const RECONNECT: std::time::Duration = std::time::Duration::from_secs(30);

/// Where received files are saved, and outgoing ones wait.
pub fn media_dir(profile_dir: &Path) -> PathBuf {
    profile_dir.join("media")
}

fn outgoing_dir(profile_dir: &Path) -> PathBuf {
    media_dir(profile_dir).join("outgoing")
}

fn saved_key(id: &[u8]) -> String {
    format!("media.saved.{}", hex::encode(id))
}

/// Where this device saved a message's file, if it did.
pub fn saved_path(profile: &dak_client::Profile, id: &[u8]) -> Option<String> {
    profile.get_str(&saved_key(id)).ok().flatten()
}

/// An upload under way, as recorded on disk before it starts.
#[derive(Serialize, Deserialize)]
struct PendingUpload {
    to: String,
    caption: String,
    reply_to: Option<String>,
    /// The `v1::Attachment`, protobuf in hex (it holds the key).
    attachment: String,
    upload_token: String,
    /// The file as picked, shown for the sent message on this device.
    #[serde(default)]
    source: Option<String>,
}

/// What `--file` or `--voice` sends.
pub struct FileToSend<'a> {
    pub path: &'a Path,
    pub caption: &'a str,
    pub voice: bool,
    pub duration_ms: Option<u32>,
    pub reply_to: Option<Vec<u8>>,
    /// Wait for this tick (delivered, read) before returning, as long as this.
    pub wait: dak_client::TickState,
    pub timeout: std::time::Duration,
}

pub async fn send_file(dir: &Path, to: &str, f: FileToSend<'_>, json: bool) -> Result<()> {
    let name = f
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut client = Client::connect(crate::cli::open(dir)?)
        .await
        .context("sending a file needs the server (nothing was sent)")?;
    // Earlier uploads that stopped go first, in their order.
    resume_uploads(&mut client, dir, json).await?;
    let to = client.profile().resolve(to)?.key();
    let out = outgoing_dir(dir);
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut key = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut key);
    let mut capability = vec![0u8; dak_proto::blob::BLOB_SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut capability);
    let sealing = out.join(format!("sealing-{}", std::process::id()));
    let sealed = blobs::seal_file(&MediaKey(key), f.path, &sealing)?;
    let slot = match client
        .create_blob(sealed.length, &sealed.sha256, &capability)
        .await
    {
        Ok(slot) => slot,
        Err(e) => {
            let _ = std::fs::remove_file(&sealing);
            return Err(e.into());
        }
    };
    let media_type = media_type_of(f.path, f.voice);
    let head = read_head(f.path);
    let (width, height) = imagesize::blob_size(&head)
        .map(|s| (s.width as u32, s.height as u32))
        .unwrap_or((0, 0));
    let (wav_duration, waveform) = if f.voice {
        wav_info(f.path).unwrap_or_default()
    } else {
        (0, Vec::new())
    };
    let attachment = Attachment {
        blob_id: slot.blob_id.clone(),
        capability,
        key: key.to_vec(),
        sha256: sealed.sha256.to_vec(),
        size: sealed.size,
        media_type,
        file_name: if f.voice { String::new() } else { name },
        thumbnail: Vec::new(),
        width,
        height,
        duration_ms: f.duration_ms.unwrap_or(wav_duration),
        waveform,
        voice_note: f.voice,
    };
    let stem = hex::encode(&slot.blob_id);
    std::fs::rename(&sealing, out.join(format!("{stem}.sealed")))?;
    let pending = PendingUpload {
        to,
        caption: f.caption.to_string(),
        reply_to: f.reply_to.as_deref().map(format_id),
        attachment: hex::encode(attachment.to_proto().encode_to_vec()),
        upload_token: hex::encode(&slot.upload_token),
        source: std::fs::canonicalize(f.path)
            .ok()
            .map(|p| p.to_string_lossy().into_owned()),
    };
    write_pending(&out.join(format!("{stem}.json")), &pending)?;
    let id = finish_upload(&mut client, dir, &stem, json).await?;
    if f.wait > dak_client::TickState::Sent {
        let waited = tokio::time::timeout(
            f.timeout,
            client.wait_for_tick(&id, f.wait, |e| crate::show::print_event(e, json)),
        )
        .await;
        match waited {
            Ok(r) => r?,
            Err(_) => bail!(
                "the file's message is stored on the server (✓) but did not reach {:?} within {:?}",
                f.wait,
                f.timeout
            ),
        }
        let tick = client.tick(&id)?.state;
        if json {
            println!("{}", json!({"id": format_id(&id), "tick": tick}));
        } else {
            println!("{} {}", format_id(&id), crate::show::tick_symbol(tick));
        }
    }
    client.close().await;
    Ok(())
}

fn write_pending(path: &Path, p: &PendingUpload) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(p)?)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Uploads (or resumes) one recorded upload, then sends its message;
/// returns the message's id.
async fn finish_upload(client: &mut Client, dir: &Path, stem: &str, json: bool) -> Result<Vec<u8>> {
    let out = outgoing_dir(dir);
    let record = out.join(format!("{stem}.json"));
    let sealed = out.join(format!("{stem}.sealed"));
    let pending: PendingUpload = serde_json::from_slice(&std::fs::read(&record)?)
        .with_context(|| format!("{} is not an upload record", record.display()))?;
    let a = dak_proto::v1::Attachment::decode(&hex::decode(&pending.attachment)?[..])?;
    let attachment = Attachment::from_proto(a);
    let token = hex::decode(&pending.upload_token)?;
    let endpoint = BlobEndpoint::new(client.server(), &client.server_trust()?)?;
    let label = attachment.label();
    let progress = shown_progress("Uploading", &label, json);
    if let Err(e) = endpoint
        .upload(&attachment.blob_id, &token, &sealed, progress)
        .await
    {
        let at = endpoint
            .upload_offset(&attachment.blob_id, &token)
            .await
            .unwrap_or(0);
        bail!(
            "the upload of {label} stopped at {} of {} ({e}); `dak sync` resumes it",
            human_size(at),
            human_size(attachment.stored_len())
        );
    }
    if !json {
        eprintln!();
    }
    let opts = TextOptions {
        reply_to: pending
            .reply_to
            .as_deref()
            .map(dak_client::parse_id)
            .transpose()?,
        attachment: Some(Box::new(attachment)),
        ..Default::default()
    };
    // The message is in the outbox (🕓) before the record goes: from here
    // it is sent once, by this run or the next `sync`, never twice.
    let (id, _, _) =
        dak_client::queue_text_with(client.profile(), &pending.to, &pending.caption, &opts)?;
    if let Some(source) = &pending.source {
        client.profile().set(&saved_key(&id), source.as_bytes())?;
    }
    let _ = std::fs::remove_file(&record);
    let _ = std::fs::remove_file(&sealed);
    let mut flushed = client.flush_outbox().await;
    if matches!(&flushed, Err(e) if e.is_retryable()) {
        // The connection died while the file went up (a server restart,
        // a network change): connect again, as the upload did, and send.
        if let Ok(fresh) = Client::connect_patiently(crate::cli::open(dir)?, RECONNECT).await {
            *client = fresh;
            flushed = client.flush_outbox().await;
        }
    }
    let tick = client.tick(&id)?.state;
    if json {
        println!(
            "{}",
            json!({"id": format_id(&id), "tick": tick, "file": label})
        );
    } else {
        println!(
            "{} {} {label}",
            format_id(&id),
            crate::show::tick_symbol(tick)
        );
    }
    match flushed {
        Ok(_) => Ok(id),
        Err(e) if e.is_retryable() => bail!(
            "{e}; the file is uploaded and its message is queued (🕓): it goes out with your next `dak send`, `sync` or `listen`"
        ),
        Err(e) => Err(e.into()),
    }
}

/// Finishes every recorded upload, oldest first. Returns how many.
pub async fn resume_uploads(client: &mut Client, dir: &Path, json: bool) -> Result<usize> {
    let out = outgoing_dir(dir);
    let Ok(entries) = std::fs::read_dir(&out) else {
        return Ok(0);
    };
    let mut records: Vec<(std::time::SystemTime, String)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let stem = name.strip_suffix(".json")?.to_string();
            let at = e.metadata().and_then(|m| m.modified()).ok()?;
            Some((at, stem))
        })
        .collect();
    records.sort();
    for (_, stem) in &records {
        finish_upload(client, dir, stem, json).await?;
    }
    Ok(records.len())
}

/// Downloads, checks and saves the files of `messages` (those this device
/// has not saved yet). A file that cannot be fetched is reported and
/// skipped: `dak media get ID` tries again.
pub async fn save_received(client: &mut Client, dir: &Path, messages: &[MessageView], json: bool) {
    for m in messages {
        let Some(a) = &m.attachment else { continue };
        // As the profile has it now: deleted for everyone (or gone with
        // its timer) by a later message of the same sync, it is not fetched.
        let now = client.profile().message(&m.id).ok().flatten();
        if now.is_none_or(|n| n.deleted) || saved_path(client.profile(), &m.id).is_some() {
            continue;
        }
        match fetch(client, dir, m, a, None, json).await {
            Ok(path) => report_saved(m, &path, json),
            Err(e) => {
                if json {
                    println!(
                        "{}",
                        json!({"type": "media_error", "id": format_id(&m.id), "error": e.to_string()})
                    );
                } else {
                    eprintln!(
                        "{}: could not save {}: {e:#} (`dak media get {}` tries again)",
                        format_id(&m.id),
                        a.label(),
                        format_id(&m.id)
                    );
                }
            }
        }
    }
}

fn report_saved(m: &MessageView, path: &Path, json: bool) {
    if json {
        println!(
            "{}",
            json!({"type": "media_saved", "id": format_id(&m.id), "path": path})
        );
    } else {
        println!("{} saved to {}", format_id(&m.id), path.display());
    }
}

/// `dak media get ID [--to DIR]`: fetches a message's file again.
pub async fn get(dir: &Path, id: &str, to: Option<&Path>, json: bool) -> Result<()> {
    let mut client = crate::cli::connect(dir).await?;
    let id = dak_client::parse_id(id)?;
    let Some(m) = client.profile().message(&id)? else {
        bail!("no message {} here", format_id(&id));
    };
    let Some(a) = m.attachment.clone() else {
        bail!("message {} has no file", format_id(&id));
    };
    let path = fetch(&mut client, dir, &m, &a, to, json).await?;
    report_saved(&m, &path, json);
    client.close().await;
    Ok(())
}

async fn fetch(
    client: &mut Client,
    dir: &Path,
    m: &MessageView,
    a: &Attachment,
    to: Option<&Path>,
    json: bool,
) -> Result<PathBuf> {
    let folder = to.map(Path::to_path_buf).unwrap_or_else(|| media_dir(dir));
    std::fs::create_dir_all(&folder)
        .with_context(|| format!("cannot create {}", folder.display()))?;
    let part = media_dir(dir).join(format!("{}.part", hex::encode(&a.blob_id)));
    std::fs::create_dir_all(media_dir(dir))?;
    let endpoint = BlobEndpoint::new(client.server(), &client.server_trust()?)?;
    let progress = shown_progress("Downloading", &a.label(), json);
    endpoint.download(a, &part, progress).await?;
    if !json {
        eprintln!();
    }
    let dest = free_name(&folder, &file_name_for(m, a));
    let opened = blobs::open_file(a, &part, &dest);
    // A download that failed its check is not kept to be resumed: its
    // bytes are wrong, and the next try starts again.
    let _ = std::fs::remove_file(&part);
    opened?;
    client
        .profile()
        .set(&saved_key(&m.id), dest.to_string_lossy().as_bytes())?;
    if !m.outgoing || m.from_device != client.device_id() {
        // Told even when it fails: the file is saved, and the server's
        // retention deletes the blob in the end anyway.
        if let Err(e) = client.blob_fetched(&a.blob_id).await {
            tracing::warn!(error = %e, "could not tell the server the file was fetched");
        }
    }
    Ok(dest)
}

/// A name for a received file: the sender's, made safe (no folders, no
/// control characters, no leading dot), or one made from the message id.
fn file_name_for(m: &MessageView, a: &Attachment) -> String {
    let cleaned: String = a
        .file_name
        .chars()
        // No folders, no control characters, and no bidirectional
        // controls, which can make "exe.pdf" of "fdp.exe".
        .filter(|c| {
            !c.is_control()
                && !matches!(c, '/' | '\\' | ':' | '\0' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        })
        .collect();
    let cleaned = cleaned.trim().trim_start_matches('.').to_string();
    if !cleaned.is_empty() && cleaned.len() <= 200 {
        return cleaned;
    }
    let ext = extension_of(&a.media_type);
    let kind = if a.voice_note { "voice" } else { "file" };
    format!("{kind}-{}.{ext}", &hex::encode(&m.id)[..12])
}

/// `name`, or `name (1)`, `name (2)`, ... if taken.
fn free_name(folder: &Path, name: &str) -> PathBuf {
    let first = folder.join(name);
    if !first.exists() {
        return first;
    }
    let (stem, ext) = match name.rsplit_once('.') {
        Some((s, e)) if !s.is_empty() => (s.to_string(), format!(".{e}")),
        _ => (name.to_string(), String::new()),
    };
    (1..)
        .map(|n| folder.join(format!("{stem} ({n}){ext}")))
        .find(|p| !p.exists())
        .expect("some name is free")
}

/// Progress on stderr, one line rewritten, every whole percent.
fn shown_progress(verb: &'static str, label: &str, json: bool) -> Progress {
    if json {
        return blobs::quiet();
    }
    let label = label.to_string();
    let last = std::sync::atomic::AtomicU64::new(u64::MAX);
    Arc::new(move |done, total| {
        let pct = (done * 100).checked_div(total).unwrap_or(100);
        if last.swap(pct, std::sync::atomic::Ordering::Relaxed) != pct {
            eprint!(
                "\r{verb} {label}: {pct}% ({} of {})   ",
                human_size(done),
                human_size(total)
            );
        }
    })
}

/// The first bytes of a file (enough for image dimensions).
fn read_head(path: &Path) -> Vec<u8> {
    use std::io::Read;
    let mut head = vec![0u8; 64 * 1024];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .unwrap_or(0);
    head.truncate(n);
    head
}

/// A media type from the file's extension: what phones do for files
/// picked from storage.
pub fn media_type_of(path: &Path, voice: bool) -> String {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let t = match ext.as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "heic" => "image/heic",
        "mp4" => "video/mp4",
        "mov" => "video/quicktime",
        "webm" if voice => "audio/webm",
        "webm" => "video/webm",
        "mp3" => "audio/mpeg",
        "m4a" => "audio/mp4",
        "ogg" | "opus" => "audio/ogg",
        "wav" => "audio/wav",
        "pdf" => "application/pdf",
        "txt" => "text/plain",
        "doc" => "application/msword",
        "docx" => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "xls" => "application/vnd.ms-excel",
        "xlsx" => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "zip" => "application/zip",
        _ if voice => "audio/ogg",
        _ => "application/octet-stream",
    };
    t.to_string()
}

fn extension_of(media_type: &str) -> &'static str {
    match media_type {
        "image/jpeg" => "jpg",
        "image/png" => "png",
        "image/gif" => "gif",
        "image/webp" => "webp",
        "video/mp4" => "mp4",
        "audio/ogg" => "ogg",
        "audio/mpeg" => "mp3",
        "audio/wav" => "wav",
        "application/pdf" => "pdf",
        "text/plain" => "txt",
        _ => "bin",
    }
}

/// Steps in a voice note's waveform.
const WAVEFORM_STEPS: usize = 64;
/// The largest WAV read whole for its waveform.
const MAX_WAV_BYTES: u64 = 32 * 1024 * 1024;

/// A PCM WAV file's duration and loudness per step (0-255); None for any
/// other file. Hand-rolled: reading a RIFF header is a few lines, and no
/// audio crate is worth its weight for this alone.
fn wav_info(path: &Path) -> Option<(u32, Vec<u8>)> {
    if std::fs::metadata(path).ok()?.len() > MAX_WAV_BYTES {
        return None;
    }
    let bytes = std::fs::read(path).ok()?;
    if bytes.len() < 12 || &bytes[..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return None;
    }
    let (mut at, mut byte_rate, mut bits, mut data) = (12usize, 0u32, 0u16, None);
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().ok()?) as usize;
        let body = bytes.get(at + 8..(at + 8).checked_add(len)?.min(bytes.len()))?;
        match id {
            b"fmt " if body.len() >= 16 => {
                byte_rate = u32::from_le_bytes(body[8..12].try_into().ok()?);
                bits = u16::from_le_bytes(body[14..16].try_into().ok()?);
            }
            b"data" => data = Some(body),
            _ => {}
        }
        at += 8 + len + (len & 1);
    }
    let data = data?;
    if byte_rate == 0 {
        return None;
    }
    let duration_ms = (data.len() as u64 * 1000 / byte_rate as u64) as u32;
    let samples: Vec<u16> = if bits == 16 {
        data.chunks_exact(2)
            .map(|s| i16::from_le_bytes([s[0], s[1]]).unsigned_abs())
            .collect()
    } else {
        data.iter()
            .map(|b| (*b as i16 - 128).unsigned_abs() << 8)
            .collect()
    };
    let step = samples.len().div_ceil(WAVEFORM_STEPS).max(1);
    let waveform = samples
        .chunks(step)
        .map(|c| (c.iter().copied().max().unwrap_or(0) >> 7).min(255) as u8)
        .collect();
    Some((duration_ms, waveform))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_names_are_made_safe_and_never_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let m = MessageView {
            id: vec![0xab; 16],
            ..Default::default()
        };
        let named = |n: &str| Attachment {
            file_name: n.into(),
            media_type: "application/pdf".into(),
            ..Default::default()
        };
        assert_eq!(file_name_for(&m, &named("../../etc/passwd")), "etcpasswd");
        assert_eq!(file_name_for(&m, &named(".bashrc")), "bashrc");
        assert_eq!(
            file_name_for(&m, &named("photo\u{202e}gpj.exe")),
            "photogpj.exe"
        );
        assert_eq!(file_name_for(&m, &named("")), "file-abababababab.pdf");
        std::fs::write(dir.path().join("a.pdf"), b"x").unwrap();
        assert_eq!(free_name(dir.path(), "a.pdf"), dir.path().join("a (1).pdf"));
    }

    #[test]
    fn a_wav_file_gives_its_duration_and_waveform() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.wav");
        let rate = 8000u32;
        let samples: Vec<i16> = (0..rate * 2)
            .map(|i| ((i % 100) as i16 - 50) * 300)
            .collect();
        let mut wav = Vec::new();
        let data_len = (samples.len() * 2) as u32;
        wav.extend(b"RIFF");
        wav.extend((36 + data_len).to_le_bytes());
        wav.extend(b"WAVEfmt ");
        wav.extend(16u32.to_le_bytes());
        wav.extend(1u16.to_le_bytes()); // PCM
        wav.extend(1u16.to_le_bytes()); // mono
        wav.extend(rate.to_le_bytes());
        wav.extend((rate * 2).to_le_bytes());
        wav.extend(2u16.to_le_bytes());
        wav.extend(16u16.to_le_bytes());
        wav.extend(b"data");
        wav.extend(data_len.to_le_bytes());
        for s in samples {
            wav.extend(s.to_le_bytes());
        }
        std::fs::write(&path, wav).unwrap();
        let (ms, waveform) = wav_info(&path).unwrap();
        assert_eq!(ms, 2000);
        assert_eq!(waveform.len(), WAVEFORM_STEPS);
        assert!(waveform.iter().all(|v| *v > 100));
        std::fs::write(&path, b"not a wav").unwrap();
        assert!(wav_info(&path).is_none());
    }
}
