//! A hint from another node of the cluster (`dak_proto::cluster`):
//! decoding never panics, and what decodes keeps the bounds a session
//! relies on (one seq per device, each a positive i64, bodies within a
//! frame), and encodes back to a hint that decodes the same.
#![no_main]

use dak_proto::cluster::{MAX_COMMITTED_BYTES, decode_committed};
use dak_proto::{MAX_COMMIT_DEVICES, MAX_FRAME_BYTES};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = decode_committed(data) {
        assert!(data.len() <= MAX_COMMITTED_BYTES);
        assert_eq!(c.devices.len(), c.seqs.len());
        assert!(!c.devices.is_empty() && c.devices.len() <= MAX_COMMIT_DEVICES);
        assert!(c.seqs.iter().all(|s| *s >= 1 && *s <= i64::MAX as u64));
        assert!(c.body.len() <= MAX_FRAME_BYTES);
        assert_eq!(decode_committed(&c.encode_to_vec()), Ok(c));
    }
});
