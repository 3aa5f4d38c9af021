//! The browser's profile journal (`dak_core::journal`): whatever bytes a
//! file holds (torn, damaged, hostile), `inspect` and replay must not
//! panic; `inspect` stays within the input; replay must keep
//! exactly a prefix of whole frames (kept + dropped = the input), and a
//! replay of just that prefix must keep all of it.
#![no_main]

use dak_core::journal::{inspect, replay};
use dak_core::memory::MemoryStore;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Which of two files to open is decided on this alone.
    let i = inspect(data);
    assert!(i.valid_bytes <= data.len() && i.snapshot_bytes <= i.valid_bytes);
    let Ok(r) = replay(&MemoryStore::new(), data) else {
        // A frame that decodes but cannot be applied: a clear error.
        return;
    };
    assert_eq!(r.kept_bytes + r.dropped_bytes, data.len());
    let again =
        replay(&MemoryStore::new(), &data[..r.kept_bytes]).expect("the kept prefix replays");
    assert_eq!(again.kept_bytes, r.kept_bytes);
    assert_eq!(again.frames, r.frames);
    assert_eq!(again.dropped_bytes, 0);
});
