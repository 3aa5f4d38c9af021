//! Group invite links come from anywhere (a chat, a web page, a QR code):
//! parsing must never panic, and a link that parses must print back to a
//! link that parses to the same thing.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(link) = dak_proto::invite::InviteLink::parse(text) {
        let again = dak_proto::invite::InviteLink::parse(&link.to_string())
            .expect("a printed link must parse");
        assert_eq!(again, link, "the link changed in a round trip");
    }
});
