//! Any bytes a server may send: decoding must never panic, and a frame that
//! decodes must survive an encode/decode round trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = dak_proto::decode_server_frame(data) {
        let bytes = dak_proto::encode(&frame);
        let again =
            dak_proto::decode_server_frame(&bytes).expect("a re-encoded server frame must decode");
        assert_eq!(again, frame, "server frame changed in a round trip");
    }
});
