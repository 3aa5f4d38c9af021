//! Phone numbers are account names: normalizing must never panic, its output
//! must be a fixed point, and it must look like E.164 (`+`, at most 15 digits).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = dak_proto::normalize_phone(input) {
        assert_eq!(
            dak_proto::normalize_phone(&p),
            Ok(p.clone()),
            "normalize_phone is not idempotent on {input:?}"
        );
        assert!(p.starts_with('+'), "{p:?} does not start with '+'");
        assert!(p.len() <= 16, "{p:?} is longer than 16 bytes");
    }
});
