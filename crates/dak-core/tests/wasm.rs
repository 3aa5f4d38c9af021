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
use dak_core::mls_storage::MlsStorage;
use dak_proto::mls::CIPHERSUITE;
use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::{
    BasicCredential, CredentialWithKey, GroupId, KeyPackage, MlsGroup, MlsGroupCreateConfig,
    MlsGroupJoinConfig, MlsMessageBodyIn, MlsMessageIn, MlsMessageOut, ProcessedMessageContent,
    ProtocolMessage, ProtocolVersion, StagedWelcome,
};
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::RustCrypto;
use openmls_traits::OpenMlsProvider;
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

// ---- an MLS conversation over `MlsStorage` on a `MemoryStore` ----

struct Provider<'a> {
    crypto: RustCrypto,
    storage: MlsStorage<'a>,
}

impl<'a> OpenMlsProvider for Provider<'a> {
    type CryptoProvider = RustCrypto;
    type RandProvider = RustCrypto;
    type StorageProvider = MlsStorage<'a>;

    fn storage(&self) -> &Self::StorageProvider {
        &self.storage
    }

    fn crypto(&self) -> &Self::CryptoProvider {
        &self.crypto
    }

    fn rand(&self) -> &Self::RandProvider {
        &self.crypto
    }
}

/// One device: its store (which holds its MLS state) and its signing key.
struct Device {
    store: MemoryStore,
    signer: SignatureKeyPair,
    credential: CredentialWithKey,
}

impl Device {
    fn new(name: &str) -> Device {
        let signer = SignatureKeyPair::new(CIPHERSUITE.signature_algorithm()).unwrap();
        let credential = CredentialWithKey {
            credential: BasicCredential::new(name.as_bytes().to_vec()).into(),
            signature_key: signer.public().into(),
        };
        Device {
            store: MemoryStore::new(),
            signer,
            credential,
        }
    }

    fn provider(&self) -> Provider<'_> {
        Provider {
            crypto: RustCrypto::default(),
            storage: MlsStorage::new(&self.store),
        }
    }

    /// A KeyPackage as the directory hands it out: encoded, then decoded
    /// and validated by whoever adds this device.
    fn key_package(&self) -> KeyPackage {
        let bundle = KeyPackage::builder()
            .build(
                CIPHERSUITE,
                &self.provider(),
                &self.signer,
                self.credential.clone(),
            )
            .unwrap();
        let bytes = MlsMessageOut::from(bundle.key_package().clone())
            .tls_serialize_detached()
            .unwrap();
        match MlsMessageIn::tls_deserialize_exact(bytes)
            .unwrap()
            .extract()
        {
            MlsMessageBodyIn::KeyPackage(kp) => kp
                .validate(&RustCrypto::default(), ProtocolVersion::Mls10)
                .unwrap(),
            _ => panic!("not a KeyPackage"),
        }
    }

    /// The group as it is in this device's store.
    fn load(&self, group: &GroupId) -> MlsGroup {
        MlsGroup::load(&MlsStorage::new(&self.store), group)
            .unwrap()
            .expect("group stored")
    }
}

/// Over the wire and back.
fn wire(m: &MlsMessageOut) -> MlsMessageIn {
    MlsMessageIn::tls_deserialize_exact(m.tls_serialize_detached().unwrap()).unwrap()
}

fn protocol(m: &MlsMessageOut) -> ProtocolMessage {
    wire(m).try_into_protocol_message().unwrap()
}

/// `from` encrypts `text` in its group; `to` decrypts it in its own.
fn send(
    from: &Device,
    from_group: &mut MlsGroup,
    to: &Device,
    to_group: &mut MlsGroup,
    text: &[u8],
) {
    let out = from_group
        .create_message(&from.provider(), &from.signer, text)
        .unwrap();
    let processed = to_group
        .process_message(&to.provider(), protocol(&out))
        .unwrap();
    match processed.into_content() {
        ProcessedMessageContent::ApplicationMessage(app) => assert_eq!(app.into_bytes(), text),
        other => panic!("expected an application message, got {other:?}"),
    }
}

/// Alice creates a group and adds Bob; Bob joins from the Welcome; they
/// talk both ways, then again from groups loaded afresh from their stores.
#[wasm_bindgen_test]
fn mls_conversation_in_the_browser() {
    let alice = Device::new("alice");
    let bob = Device::new("bob");
    let ap = alice.provider();
    let bp = bob.provider();

    let bob_kp = bob.key_package();
    let mut ag = MlsGroup::new(
        &ap,
        &alice.signer,
        &MlsGroupCreateConfig::builder()
            .ciphersuite(CIPHERSUITE)
            .use_ratchet_tree_extension(true)
            .build(),
        alice.credential.clone(),
    )
    .unwrap();
    let (_commit, welcome, _) = ag.add_members(&ap, &alice.signer, &[bob_kp]).unwrap();
    ag.merge_pending_commit(&ap).unwrap();
    let MlsMessageBodyIn::Welcome(welcome) = wire(&welcome).extract() else {
        panic!("not a Welcome");
    };
    let mut bg = StagedWelcome::new_from_welcome(
        &bp,
        &MlsGroupJoinConfig::builder()
            .use_ratchet_tree_extension(true)
            .build(),
        welcome,
        None,
    )
    .unwrap()
    .into_group(&bp)
    .unwrap();
    let group = ag.group_id().clone();
    assert_eq!(bg.group_id(), &group);
    assert_eq!(ag.members().count(), 2);
    assert_eq!(bg.members().count(), 2);

    send(&alice, &mut ag, &bob, &mut bg, b"hi bob, from the browser");
    send(&bob, &mut bg, &alice, &mut ag, "নমস্কার alice".as_bytes());

    // The state is in the stores: groups loaded from them carry on, ratchets
    // included (a replayed generation would fail to decrypt).
    drop((ag, bg));
    let mut ag = alice.load(&group);
    let mut bg = bob.load(&group);
    for i in 0..3 {
        send(&alice, &mut ag, &bob, &mut bg, format!("a{i}").as_bytes());
        send(&bob, &mut bg, &alice, &mut ag, format!("b{i}").as_bytes());
    }
    assert_eq!(
        ag.epoch_authenticator().as_slice(),
        bg.epoch_authenticator().as_slice()
    );
}
