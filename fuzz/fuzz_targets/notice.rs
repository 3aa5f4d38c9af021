//! An operator notice, as a device reads it from the server: decoding a
//! `SignedNotice`, appending it to a log, and opening a targeted notice
//! against it never panic; an entry the chain accepts keeps the fields'
//! limits and moves the chain by exactly one; one it refuses changes
//! nothing. The fixed key means almost every input fails the signature
//! check, so the input also goes through the field rules directly.
#![no_main]

use dak_proto::notices::{
    MAX_NOTICE_TEXT_CHARS, MAX_NOTICE_TITLE_CHARS, NoticeChain, check_fields, decode_signed_notice,
    open_targeted,
};
use dak_proto::v1;
use ed25519_dalek::SigningKey;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let key = SigningKey::from_bytes(&[7; 32]).verifying_key();
    if let Ok(entry) = decode_signed_notice(data) {
        let mut chain = NoticeChain::default();
        let before = chain;
        match chain.append(&key, &entry) {
            Ok(n) => {
                assert_eq!(chain.length, 1);
                assert!(n.title.chars().count() <= MAX_NOTICE_TITLE_CHARS);
            }
            Err(_) => assert_eq!(chain, before),
        }
    }
    if let Ok(n) = v1::OperatorNotice::decode(data)
        && check_fields(&n).is_ok()
    {
        assert!(n.title.chars().count() <= MAX_NOTICE_TITLE_CHARS);
        assert!(n.advice.chars().count() <= MAX_NOTICE_TEXT_CHARS);
        assert!(n.thread <= n.index);
        assert!(!n.title.chars().any(|c| c.is_control()));
        // A targeted entry opens only what it commits to.
        let _ = open_targeted(&n, data, "+919800000001");
    }
});
