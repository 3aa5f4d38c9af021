//! Media transfer, the rules both ends share (docs/PROTOCOL.md §15): the
//! blob's names and secrets, the attachment descriptor's limits, and the
//! decoders of the HTTP headers an upload or download carries (tus 1.0's
//! `Upload-Offset`, `Range`, `Authorization: Bearer`). Every one of them
//! reads untrusted input, length first, and returns a typed `BlobError`;
//! each has a fuzz target (`fuzz/fuzz_targets/blob_headers.rs`).
//!
//! Invariants:
//! - A blob id is 16 random bytes and a secret (upload token, download
//!   capability) 32: ids name, secrets authorise, and neither is derived
//!   from the file, so the server cannot tell two uploads of one file apart.
//! - A range is resolved against the blob's length here, once: what comes
//!   out is a non-empty `start..end` within it, or an error.

use std::ops::Range;

use crate::v1;
use crate::{FrameError, MAX_GROUP_ID_BYTES, MAX_SHORT_TEXT};

pub const BLOB_ID_BYTES: usize = 16;
/// Upload tokens and download capabilities.
pub const BLOB_SECRET_BYTES: usize = 32;
pub const SHA256_BYTES: usize = 32;
pub const MEDIA_KEY_BYTES: usize = 32;
/// The largest file a device sends (100 MB, as WhatsApp's documents were at
/// their start). The server's own limit, on the ciphertext, is configured.
pub const MAX_FILE_BYTES: u64 = 100 * 1024 * 1024;
/// A thumbnail travels inside the message, so it must leave room in it.
pub const MAX_THUMBNAIL_BYTES: usize = 16 * 1024;
/// A voice note's waveform: one loudness byte per step.
pub const MAX_WAVEFORM_BYTES: usize = 256;
pub const MAX_FILE_NAME_CHARS: usize = 255;
/// Plaintext bytes per encrypted chunk; each ciphertext chunk is
/// `TAG_BYTES` more (dak-core's `media.rs` does the encryption).
pub const CHUNK_BYTES: usize = 64 * 1024;
/// Poly1305's tag.
pub const TAG_BYTES: usize = 16;
/// Padding buckets (Signal's shape): sizes 1.05× apart, the smallest 541 bytes.
const MIN_PADDED: u64 = 541;

/// The size a file of `len` bytes is padded to before encryption: the
/// smallest bucket that holds it, buckets starting at 541 bytes, each the
/// last × 21/20 rounded up. Integers only, so every device (natively or in
/// WebAssembly) finds the same bucket; at most ~250 steps up to the limit.
pub fn padded_len(len: u64) -> u64 {
    let mut bucket = MIN_PADDED;
    while bucket < len {
        bucket = (bucket * 21).div_ceil(20);
    }
    bucket
}

/// The ciphertext's length for a plaintext padded to `padded` bytes.
pub fn ciphertext_len(padded: u64) -> u64 {
    let chunks = padded.div_ceil(CHUNK_BYTES as u64).max(1);
    padded + chunks * TAG_BYTES as u64
}

/// The tus protocol version served.
pub const TUS_VERSION: &str = "1.0.0";
/// Longest header value any decoder here reads.
const MAX_HEADER_BYTES: usize = 256;

/// Why a header, id or descriptor was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlobError {
    #[error("{0} is missing")]
    Missing(&'static str),
    #[error("{0} is malformed")]
    Malformed(&'static str),
    #[error("{0} is longer than {1} bytes")]
    TooLong(&'static str, usize),
    #[error("the range is not within the blob's {0} bytes")]
    Unsatisfiable(u64),
}

/// A blob's name in a URL: 32 lowercase hex digits.
pub fn parse_blob_id(s: &str) -> Result<[u8; BLOB_ID_BYTES], BlobError> {
    hex_array(s, "blob id")
}

/// `Authorization: Bearer <64 hex digits>`.
pub fn parse_bearer(header: Option<&[u8]>) -> Result<[u8; BLOB_SECRET_BYTES], BlobError> {
    let v = text(header, "Authorization")?;
    let Some(token) = v.strip_prefix("Bearer ") else {
        return Err(BlobError::Malformed("Authorization"));
    };
    hex_array(token.trim(), "Authorization")
}

/// `Upload-Offset: <decimal>` (tus), at most `limit`.
pub fn parse_upload_offset(header: Option<&[u8]>, limit: u64) -> Result<u64, BlobError> {
    let v = text(header, "Upload-Offset")?;
    let n = decimal(v).ok_or(BlobError::Malformed("Upload-Offset"))?;
    if n > limit {
        return Err(BlobError::Malformed("Upload-Offset"));
    }
    Ok(n)
}

/// `Range: bytes=a-b`, `bytes=a-` or `bytes=-n` (one range; several are
/// refused rather than served as multipart), resolved against `len`.
/// No header: the whole blob.
pub fn parse_range(header: Option<&[u8]>, len: u64) -> Result<Range<u64>, BlobError> {
    if header.is_none() {
        return Ok(0..len);
    }
    let v = text(header, "Range")?;
    let spec = v
        .strip_prefix("bytes=")
        .ok_or(BlobError::Malformed("Range"))?
        .trim();
    let (a, b) = spec.split_once('-').ok_or(BlobError::Malformed("Range"))?;
    let range = match (a.trim(), b.trim()) {
        ("", n) => {
            let n = decimal(n).ok_or(BlobError::Malformed("Range"))?;
            if n == 0 {
                return Err(BlobError::Unsatisfiable(len));
            }
            len.saturating_sub(n)..len
        }
        (a, "") => decimal(a).ok_or(BlobError::Malformed("Range"))?..len,
        (a, b) => {
            let (a, b) = (
                decimal(a).ok_or(BlobError::Malformed("Range"))?,
                decimal(b).ok_or(BlobError::Malformed("Range"))?,
            );
            if b < a {
                return Err(BlobError::Malformed("Range"));
            }
            a..b.saturating_add(1).min(len)
        }
    };
    if range.start >= len {
        return Err(BlobError::Unsatisfiable(len));
    }
    Ok(range)
}

fn text<'a>(header: Option<&'a [u8]>, name: &'static str) -> Result<&'a str, BlobError> {
    let v = header.ok_or(BlobError::Missing(name))?;
    if v.len() > MAX_HEADER_BYTES {
        return Err(BlobError::TooLong(name, MAX_HEADER_BYTES));
    }
    std::str::from_utf8(v).map_err(|_| BlobError::Malformed(name))
}

/// Digits only (no sign, no spaces), at most 19 of them: fits a u64.
fn decimal(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn hex_array<const N: usize>(s: &str, name: &'static str) -> Result<[u8; N], BlobError> {
    if s.len() != 2 * N {
        return Err(BlobError::Malformed(name));
    }
    let mut out = [0u8; N];
    for (i, pair) in s.as_bytes().chunks_exact(2).enumerate() {
        let hi = hex_digit(pair[0]).ok_or(BlobError::Malformed(name))?;
        let lo = hex_digit(pair[1]).ok_or(BlobError::Malformed(name))?;
        out[i] = hi << 4 | lo;
    }
    Ok(out)
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Lowercase hex, as blob ids appear in URLs.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

fn bad(what: impl Into<String>) -> FrameError {
    FrameError::invalid(v1::ErrorCode::BadRequest, what)
}

fn exact(name: &str, v: &[u8], n: usize) -> Result<(), FrameError> {
    if v.len() != n {
        return Err(bad(format!("{name} must be {n} bytes")));
    }
    Ok(())
}

/// The attachment descriptor's rules, checked by the receiver after it
/// decrypts (as part of `validate_content`) and kept by every sender.
pub fn validate_attachment(a: &v1::Attachment) -> Result<(), FrameError> {
    exact("attachment.blob_id", &a.blob_id, BLOB_ID_BYTES)?;
    exact("attachment.capability", &a.capability, BLOB_SECRET_BYTES)?;
    exact("attachment.key", &a.key, MEDIA_KEY_BYTES)?;
    exact("attachment.sha256", &a.sha256, SHA256_BYTES)?;
    if a.size > MAX_FILE_BYTES {
        return Err(bad(format!(
            "attachment.size is over {MAX_FILE_BYTES} bytes"
        )));
    }
    validate_type_and_name(&a.media_type, &a.file_name)?;
    if a.thumbnail.len() > MAX_THUMBNAIL_BYTES {
        return Err(bad(format!(
            "attachment.thumbnail is longer than {MAX_THUMBNAIL_BYTES} bytes"
        )));
    }
    if a.waveform.len() > MAX_WAVEFORM_BYTES {
        return Err(bad(format!(
            "attachment.waveform is longer than {MAX_WAVEFORM_BYTES} bytes"
        )));
    }
    Ok(())
}

/// A file's media type and name as a descriptor may carry them (also
/// what `dak bot serve` checks of a file it is given to send).
pub fn validate_type_and_name(media_type: &str, file_name: &str) -> Result<(), FrameError> {
    if media_type.len() > MAX_SHORT_TEXT * 2
        || !media_type
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    {
        return Err(bad("attachment.media_type is not a media type"));
    }
    if file_name.len() > MAX_FILE_NAME_CHARS * 4 || file_name.chars().count() > MAX_FILE_NAME_CHARS
    {
        return Err(bad(format!(
            "attachment.file_name is longer than {MAX_FILE_NAME_CHARS} characters"
        )));
    }
    Ok(())
}

/// The sizes of the media requests (`validate_client`).
pub(crate) fn validate_request(r: &v1::client_frame::Request) -> Result<(), FrameError> {
    use v1::client_frame::Request;
    match r {
        Request::CreateBlob(c) => {
            exact("sha256", &c.sha256, SHA256_BYTES)?;
            exact("capability_sha256", &c.capability_sha256, SHA256_BYTES)?;
            if c.length == 0 {
                return Err(bad("an empty blob"));
            }
            Ok(())
        }
        Request::ShareBlob(s) => {
            exact("blob_id", &s.blob_id, BLOB_ID_BYTES)?;
            exact("capability", &s.capability, BLOB_SECRET_BYTES)?;
            if s.group_id.is_empty() || s.group_id.len() > MAX_GROUP_ID_BYTES {
                return Err(bad(format!(
                    "group_id must be 1 to {MAX_GROUP_ID_BYTES} bytes"
                )));
            }
            Ok(())
        }
        Request::BlobFetched(f) => exact("blob_id", &f.blob_id, BLOB_ID_BYTES),
        Request::DeleteBlob(d) => exact("blob_id", &d.blob_id, BLOB_ID_BYTES),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_resolve_within_the_blob() {
        let r = |h: &str, len| parse_range(Some(h.as_bytes()), len);
        assert_eq!(parse_range(None, 10), Ok(0..10));
        assert_eq!(r("bytes=0-4", 10), Ok(0..5));
        assert_eq!(r("bytes=5-", 10), Ok(5..10));
        assert_eq!(r("bytes=-3", 10), Ok(7..10));
        assert_eq!(r("bytes=-30", 10), Ok(0..10));
        assert_eq!(r("bytes=8-100", 10), Ok(8..10));
        assert_eq!(r("bytes=10-", 10), Err(BlobError::Unsatisfiable(10)));
        assert_eq!(r("bytes=-0", 10), Err(BlobError::Unsatisfiable(10)));
        assert_eq!(r("bytes=5-4", 10), Err(BlobError::Malformed("Range")));
        assert_eq!(r("bytes=0-1,3-4", 10), Err(BlobError::Malformed("Range")));
        assert_eq!(r("bytes=+1-2", 10), Err(BlobError::Malformed("Range")));
        assert_eq!(r("items=0-1", 10), Err(BlobError::Malformed("Range")));
        assert_eq!(
            r("bytes=99999999999999999999-", 10),
            Err(BlobError::Malformed("Range"))
        );
    }

    #[test]
    fn offsets_tokens_and_ids_are_read_strictly() {
        assert_eq!(parse_upload_offset(Some(b"42"), 100), Ok(42));
        assert!(parse_upload_offset(Some(b"101"), 100).is_err());
        assert!(parse_upload_offset(Some(b"-1"), 100).is_err());
        assert!(parse_upload_offset(Some(b" 1"), 100).is_err());
        assert_eq!(
            parse_upload_offset(None, 1),
            Err(BlobError::Missing("Upload-Offset"))
        );
        let token = [7u8; 32];
        let header = format!("Bearer {}", to_hex(&token));
        assert_eq!(parse_bearer(Some(header.as_bytes())), Ok(token));
        assert!(parse_bearer(Some(b"Basic abc")).is_err());
        assert!(parse_bearer(Some(format!("Bearer {}", to_hex(&[1; 31])).as_bytes())).is_err());
        assert!(parse_bearer(Some(&[b'x'; 1000])).is_err());
        let id = [0xabu8; 16];
        assert_eq!(parse_blob_id(&to_hex(&id)), Ok(id));
        assert!(parse_blob_id("zz").is_err());
    }
}
