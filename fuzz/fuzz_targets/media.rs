//! A downloaded file (`dak_core::media::open`): whatever bytes the server
//! or the network hand over, and whatever size a message names, checking
//! and decrypting must not panic, and must never return bytes unless they
//! are exactly a file sealed under the key. The hash is taken from the
//! input itself, so the fuzzer gets past it to the chunks.
#![no_main]

use dak_core::media::{MediaKey, open, seal};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

fuzz_target!(|data: &[u8]| {
    let key = MediaKey([7; 32]);
    let (size, ciphertext) = match data.split_first_chunk::<4>() {
        Some((size, rest)) => (u32::from_le_bytes(*size) as u64 % (1 << 20), rest),
        None => return,
    };
    let sha: [u8; 32] = Sha256::digest(ciphertext).into();
    if let Ok(file) = open(&key, ciphertext, &sha, size) {
        // Only a real sealing of that file opens.
        let again = seal(&key, &file).expect("a file that opened seals again");
        assert_eq!(again.ciphertext, ciphertext);
    }
});
