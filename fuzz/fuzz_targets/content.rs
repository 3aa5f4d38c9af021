//! Any decrypted message body: decoding must never panic, and content that
//! decodes must survive an encode/decode round trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(content) = dak_proto::decode_content(data) {
        let bytes = dak_proto::encode(&content);
        let again = dak_proto::decode_content(&bytes).expect("re-encoded content must decode");
        assert_eq!(again, content, "content changed in a round trip");
    }
});
