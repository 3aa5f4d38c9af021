//! What the server reads off client-sent MLS bytes (SendMessage bodies,
//! commits, Welcomes, KeyPackage uploads): classification and KeyPackage
//! checks and reading a commit's member changes must never panic, and
//! whatever passes must be one of the three kinds the Delivery Service
//! forwards.
#![no_main]

use dak_proto::mls::{MlsKind, check_key_package, inspect, read_commit};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = inspect(data) {
        match info.kind {
            MlsKind::Application | MlsKind::Commit => {
                assert!(!info.group_id.is_empty(), "a group message without a group")
            }
            MlsKind::Welcome => assert!(info.group_id.is_empty()),
        }
    }
    let _ = check_key_package(data, "+919800000001", 1, &[7; 32]);
    // The member changes the server reads from a commit: never a panic, and
    // a commit it reads is one `inspect` classifies as a commit of that group.
    if let Ok(changes) = read_commit(data) {
        let info = inspect(data).expect("a read commit is a message");
        assert_eq!(info.kind, MlsKind::Commit);
        assert_eq!(info.group_id, changes.group_id);
        assert_eq!(info.epoch, changes.epoch);
    }
});
