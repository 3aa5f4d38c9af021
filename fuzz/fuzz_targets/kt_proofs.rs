//! Key-directory proofs and values as a device reads them from a server it
//! does not trust (PROTOCOL.md §18): decoding and verifying never panic,
//! whatever the bytes, and a device set that decodes is one the encoder
//! makes (sorted ids, whole entries, within the limit).
#![no_main]

use dak_proto::kt;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(devices) = kt::decode_devices(data) {
        assert!(devices.len() <= kt::MAX_DEVICES);
        assert_eq!(kt::encode_devices(&devices), data);
    }
    let _ = kt::decode_lookup_proof(data);
    let _ = kt::decode_history_proof(data);
    let _ = kt::decode_audit_proof(data);
    // Verification with a fixed key and root: a forged proof fails, it
    // never panics.
    let _ = kt::verify_lookup(&[7; 32], 3, &[1; 32], "+919800000001", data);
    let _ = kt::verify_history(&[7; 32], 3, &[1; 32], "+919800000001", data);
});
