//! dak-core in a real browser: built for wasm32-unknown-unknown and run in
//! headless Chromium by wasm-bindgen-test (`scripts/wasm-test.sh`).
//!
//! What the browser changes for the core is underneath it: randomness comes
//! from Web Crypto (`crypto.getRandomValues`) and the clock from `Date.now()`
//! instead of the OS, and there are no threads. These tests make sure the
//! store's behaviour and a whole MLS conversation hold there too.
//!
//! The file is empty on other targets (the `cfg` below), so a native
//! `cargo test -p dak-core` builds it as a test binary with no tests.
#![cfg(target_arch = "wasm32")]

use dak_core::memory::MemoryStore;
use dak_core::mls::Incoming;
use dak_core::testing::TestDevice;
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

/// Every `ProfileStore` conformance case, on the in-memory store (the
/// browser's store for now).
#[wasm_bindgen_test]
fn memory_store_passes_the_conformance_suite() {
    dak_core::conformance::run_all(&|| Box::new(MemoryStore::new()));
}

/// The browser's randomness and clock are wired up: without getrandom's and
/// uuid's JS backends these panic or fail to link on wasm32.
#[wasm_bindgen_test]
fn randomness_and_clock_come_from_the_browser() {
    let a = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let b = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    assert_ne!(a.to_bytes(), b.to_bytes());

    let id = uuid::Uuid::now_v7();
    assert_eq!(id.get_version_num(), 7);
    let (secs, _) = id.get_timestamp().expect("v7 has a timestamp").to_unix();
    // After 2024-01-01: the clock is real, not zero.
    assert!(secs > 1_704_067_200, "uuid clock says {secs}");
    assert_eq!(
        dak_core::parse_id(&dak_core::format_id(id.as_bytes())).unwrap(),
        id.as_bytes()
    );
    assert_ne!(uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
}

// ---- an MLS conversation through the core's engine ----

/// Alice starts a chat with bob and they talk both ways, through the core's
/// own engine (`Mls` over a `Profile` on a `MemoryStore`, with its group
/// cache); then bob's cache is dropped by a rolled-back transaction and he
/// reads the next message from his store alone; and a replay is refused
/// without changing his epoch.
#[wasm_bindgen_test]
fn mls_conversation_in_the_browser() {
    let alice = TestDevice::new("+919800000001", 1);
    let bob = TestDevice::new("+919800000002", 2);
    let (group, out) = alice.start_group_with(&bob).unwrap();
    let welcome = out.welcome.expect("a Welcome for bob");
    assert!(matches!(
        bob.mls().process(&welcome).unwrap(),
        Incoming::Joined { .. }
    ));
    let read = |to: &TestDevice, ct: &[u8]| match to.mls().process(ct).unwrap() {
        Incoming::Application { plaintext, .. } => plaintext,
        other => panic!("expected an application message, got {other:?}"),
    };
    let ct = alice
        .mls()
        .encrypt(&group, b"hello from the browser")
        .unwrap();
    assert_eq!(read(&bob, &ct), b"hello from the browser");
    let back = bob.mls().encrypt(&group, b"and back").unwrap();
    assert_eq!(read(&alice, &back), b"and back");

    // A failed transaction drops every decoded group: bob reads on from
    // what his store holds.
    let _ = bob
        .profile
        .transaction(|_| Err::<(), _>(dak_core::ClientError::Usage("roll back".into())));
    let ct = alice.mls().encrypt(&group, b"after a rollback").unwrap();
    assert_eq!(read(&bob, &ct), b"after a rollback");

    let epoch = bob.mls().epoch(&group).unwrap();
    assert!(bob.mls().process(&ct).is_err(), "a replay is refused");
    assert_eq!(bob.mls().epoch(&group).unwrap(), epoch);
    assert_eq!(
        alice.mls().authenticator(&group).unwrap(),
        bob.mls().authenticator(&group).unwrap()
    );
}
