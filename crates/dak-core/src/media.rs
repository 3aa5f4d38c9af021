//! Encrypted media, the cryptography (issue 15's first part): how a file
//! is encrypted on the sending device before it is uploaded, and checked
//! on the receiving device before a byte of it is shown. The key, the
//! ciphertext's hash and the true size travel inside the MLS message; the
//! server only ever stores the ciphertext (PROTOCOL.md, "Media").
//!
//! The construction is the STREAM online AEAD (Hoang, Reyhanitabar,
//! Rogaway, Vizár 2015), as age and Tink's streaming AEAD use it:
//! ChaCha20-Poly1305 (the RustCrypto crate, as elsewhere in the MLS stack)
//! over chunks of `CHUNK_BYTES`, each sealed with the nonce
//! `counter (u64 BE) || 0 0 0 || last (1 byte)` under a key used for this
//! one file only.
//!
//! Invariants:
//! - **Each chunk is checked before it is used**, so a download can be
//!   shown (or resumed) as it arrives: a flipped bit, a reordered,
//!   repeated or missing chunk fails that chunk (its counter is in its
//!   nonce), and a stream cut at a chunk boundary fails at its end (only
//!   the last chunk carries the flag, and `finish` wants it).
//! - **The size leaks only as a bucket**: the plaintext is padded with
//!   zeros to `padded_len` (Signal's buckets: 1.05× apart, at least 541
//!   bytes), and the true size, inside the encrypted message, is checked
//!   against the padding on decryption (padding must be zeros).
//! - **A fresh random key per file**, so counter nonces never repeat under
//!   one key, and forwarding a file re-sends its key, not its bytes.
//! - Nothing here does I/O; randomness comes from `Environment`.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use sha2::{Digest, Sha256};

use crate::env::Environment;

// The sizes both ends must agree on (the server checks an upload's
// length against them) live in dak-proto.
pub use dak_proto::blob::{CHUNK_BYTES, TAG_BYTES, ciphertext_len, padded_len};
/// The largest file Dak encrypts (WhatsApp's first limit for documents).
pub const MAX_MEDIA_BYTES: u64 = dak_proto::blob::MAX_FILE_BYTES;

/// Why a file could not be encrypted or decrypted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    #[error("the file is {0} bytes; the limit is {MAX_MEDIA_BYTES}")]
    TooLarge(u64),
    #[error("chunk {0} of the file is damaged, out of order or not for this key")]
    BadChunk(u64),
    #[error("the file ends early (its last chunk is missing)")]
    Truncated,
    #[error("the file goes on after its last chunk")]
    TrailingData,
    #[error("the file's bytes are not the ones its message names")]
    HashMismatch,
    #[error("the file's size does not match its message")]
    WrongSize,
}

/// A file's key: 32 random bytes, sent inside the MLS message.
#[derive(Clone, PartialEq, Eq)]
pub struct MediaKey(pub [u8; 32]);

impl std::fmt::Debug for MediaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MediaKey(…)")
    }
}

impl MediaKey {
    pub fn generate(env: &dyn Environment) -> MediaKey {
        let mut key = [0u8; 32];
        env.fill_random(&mut key);
        MediaKey(key)
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(Key::from_slice(&self.0))
    }
}

fn nonce(counter: u64, last: bool) -> Nonce {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&counter.to_be_bytes());
    n[11] = last as u8;
    *Nonce::from_slice(&n)
}

/// Encrypts a stream chunk by chunk: `push` each full `CHUNK_BYTES` of
/// plaintext, then `finish` with the rest (possibly empty).
pub struct Sealer {
    cipher: ChaCha20Poly1305,
    counter: u64,
}

impl Sealer {
    pub fn new(key: &MediaKey) -> Sealer {
        Sealer {
            cipher: key.cipher(),
            counter: 0,
        }
    }

    fn seal(&mut self, chunk: &[u8], last: bool) -> Vec<u8> {
        let sealed = self
            .cipher
            .encrypt(
                &nonce(self.counter, last),
                Payload {
                    msg: chunk,
                    aad: &[],
                },
            )
            .expect("ChaCha20-Poly1305 encrypts any chunk of this size");
        self.counter += 1;
        sealed
    }

    /// One full chunk that is not the last.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        debug_assert_eq!(chunk.len(), CHUNK_BYTES);
        self.seal(chunk, false)
    }

    /// The last chunk (at most `CHUNK_BYTES`).
    pub fn finish(mut self, chunk: &[u8]) -> Vec<u8> {
        debug_assert!(chunk.len() <= CHUNK_BYTES);
        self.seal(chunk, true)
    }
}

/// Decrypts a stream chunk by chunk, each checked before it is returned.
pub struct Opener {
    cipher: ChaCha20Poly1305,
    counter: u64,
}

impl Opener {
    pub fn new(key: &MediaKey) -> Opener {
        Opener {
            cipher: key.cipher(),
            counter: 0,
        }
    }

    fn open(&mut self, chunk: &[u8], last: bool) -> Result<Vec<u8>, MediaError> {
        let opened = self
            .cipher
            .decrypt(
                &nonce(self.counter, last),
                Payload {
                    msg: chunk,
                    aad: &[],
                },
            )
            .map_err(|_| MediaError::BadChunk(self.counter))?;
        self.counter += 1;
        Ok(opened)
    }

    /// A full ciphertext chunk (`CHUNK_BYTES + TAG_BYTES`) that is not the last.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<u8>, MediaError> {
        if chunk.len() != CHUNK_BYTES + TAG_BYTES {
            return Err(MediaError::BadChunk(self.counter));
        }
        self.open(chunk, false)
    }

    /// The last ciphertext chunk.
    pub fn finish(mut self, chunk: &[u8]) -> Result<Vec<u8>, MediaError> {
        if chunk.len() < TAG_BYTES || chunk.len() > CHUNK_BYTES + TAG_BYTES {
            return Err(MediaError::Truncated);
        }
        self.open(chunk, true)
    }
}

/// A file encrypted whole: what is uploaded, and what its message says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub ciphertext: Vec<u8>,
    /// SHA-256 of `ciphertext`.
    pub sha256: [u8; 32],
    /// The file's true size.
    pub size: u64,
}

/// Pads and encrypts a whole file (see the module comment).
pub fn seal(key: &MediaKey, file: &[u8]) -> Result<Sealed, MediaError> {
    let size = file.len() as u64;
    if size > MAX_MEDIA_BYTES {
        return Err(MediaError::TooLarge(size));
    }
    let mut padded = file.to_vec();
    padded.resize(padded_len(size) as usize, 0);
    let mut sealer = Sealer::new(key);
    let mut ciphertext = Vec::with_capacity(ciphertext_len(padded.len() as u64) as usize);
    let mut chunks = padded.chunks(CHUNK_BYTES).peekable();
    while let Some(chunk) = chunks.next() {
        if chunks.peek().is_none() {
            // A file of a whole number of chunks ends with a full last one.
            ciphertext.extend(sealer.finish(chunk));
            break;
        }
        ciphertext.extend(sealer.push(chunk));
    }
    let sha256 = Sha256::digest(&ciphertext).into();
    Ok(Sealed {
        ciphertext,
        sha256,
        size,
    })
}

/// Checks and decrypts a whole downloaded file against what its message
/// names (`sha256`, `size`); nothing is returned unless every check holds.
pub fn open(
    key: &MediaKey,
    ciphertext: &[u8],
    sha256: &[u8; 32],
    size: u64,
) -> Result<Vec<u8>, MediaError> {
    if size > MAX_MEDIA_BYTES {
        return Err(MediaError::TooLarge(size));
    }
    if ciphertext.len() as u64 != ciphertext_len(padded_len(size)) {
        return Err(MediaError::WrongSize);
    }
    if Sha256::digest(ciphertext).as_slice() != sha256 {
        return Err(MediaError::HashMismatch);
    }
    let mut opener = Opener::new(key);
    let mut file = Vec::with_capacity(padded_len(size) as usize);
    let full = CHUNK_BYTES + TAG_BYTES;
    let mut rest = ciphertext;
    while rest.len() > full {
        let (chunk, tail) = rest.split_at(full);
        file.extend(opener.push(chunk)?);
        rest = tail;
    }
    file.extend(opener.finish(rest)?);
    if file.len() as u64 != padded_len(size) || file[size as usize..].iter().any(|b| *b != 0) {
        return Err(MediaError::WrongSize);
    }
    file.truncate(size as usize);
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestEnvironment;

    fn file(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + 7) as u8).collect()
    }

    #[test]
    fn files_of_every_shape_round_trip_and_their_size_shows_only_as_a_bucket() {
        let env = TestEnvironment::new(1, 0);
        for len in [
            0,
            1,
            540,
            541,
            542,
            CHUNK_BYTES - 1,
            CHUNK_BYTES,
            CHUNK_BYTES + 1,
            3 * CHUNK_BYTES + 5,
        ] {
            let key = MediaKey::generate(&env);
            let plain = file(len);
            let sealed = seal(&key, &plain).unwrap();
            assert_eq!(
                sealed.ciphertext.len() as u64,
                ciphertext_len(padded_len(len as u64)),
                "{len}"
            );
            assert_eq!(
                open(&key, &sealed.ciphertext, &sealed.sha256, sealed.size).unwrap(),
                plain
            );
        }
        // Files of nearby sizes share a bucket; buckets grow by about 5%.
        assert_eq!(padded_len(1000), padded_len(1001));
        for len in [600u64, 10_000, 1_000_000, MAX_MEDIA_BYTES] {
            let p = padded_len(len);
            assert!(p >= len && p <= len + len / 20 + 1, "{len} → {p}");
        }
    }

    #[test]
    fn damage_reordering_truncation_and_a_wrong_key_or_size_are_refused() {
        let env = TestEnvironment::new(2, 0);
        let key = MediaKey::generate(&env);
        let sealed = seal(&key, &file(3 * CHUNK_BYTES + 100)).unwrap();
        let full = CHUNK_BYTES + TAG_BYTES;
        let rehash = |c: &[u8]| -> [u8; 32] { Sha256::digest(c).into() };
        let try_open = |c: &[u8]| open(&key, c, &rehash(c), sealed.size);

        let mut flipped = sealed.ciphertext.clone();
        flipped[full + 10] ^= 1;
        assert_eq!(try_open(&flipped), Err(MediaError::BadChunk(1)));

        let mut swapped = sealed.ciphertext.clone();
        let (a, b) = swapped.split_at_mut(full);
        a.swap_with_slice(&mut b[..full]);
        assert_eq!(try_open(&swapped), Err(MediaError::BadChunk(0)));

        // Cut after a whole chunk: the stream's end is not marked there.
        let mut opener = Opener::new(&key);
        opener.push(&sealed.ciphertext[..full]).unwrap();
        assert_eq!(
            opener.finish(&sealed.ciphertext[full..2 * full]),
            Err(MediaError::BadChunk(1))
        );
        assert_eq!(
            try_open(&sealed.ciphertext[..2 * full]),
            Err(MediaError::WrongSize)
        );

        // The hash the message names is checked first; then the key.
        let mut other = sealed.ciphertext.clone();
        other[0] ^= 1;
        assert_eq!(
            open(&key, &other, &sealed.sha256, sealed.size),
            Err(MediaError::HashMismatch)
        );
        let wrong = MediaKey::generate(&env);
        assert_eq!(
            open(&wrong, &sealed.ciphertext, &sealed.sha256, sealed.size),
            Err(MediaError::BadChunk(0))
        );
        // A size that names another bucket, or one the padding contradicts.
        assert_eq!(
            open(&key, &sealed.ciphertext, &sealed.sha256, sealed.size / 2),
            Err(MediaError::WrongSize)
        );
        assert_eq!(
            open(&key, &sealed.ciphertext, &sealed.sha256, sealed.size - 1),
            Err(MediaError::WrongSize),
            "the padding's first byte is the file's last"
        );
        assert_eq!(
            seal(&key, &[]).map(|s| s.size),
            Ok(0),
            "an empty file is one padded chunk"
        );
        assert!(matches!(
            open(&key, &[], &rehash(&[]), MAX_MEDIA_BYTES + 1),
            Err(MediaError::TooLarge(_))
        ));
    }
}
