//! A device for tests and benchmarks: a `Profile` over `MemoryStore` on a
//! `TestEnvironment`, its identity key, and its MLS engine. The core's own
//! tests, the browser tests (tests/wasm.rs) and the benches build their
//! devices from this, so a test's alice is everyone's alice.

use ed25519_dalek::SigningKey;
use openmls::prelude::KeyPackage;

use crate::memory::MemoryStore;
use crate::mls::{CommitToSend, Mls};
use crate::{ClientError, Profile, ProfileStore, TestEnvironment};
use crate::{ConversationId, MessageView};

/// One device of `phone`, id `id`, registered and with its key.
pub struct TestDevice {
    pub profile: Profile,
    pub key: SigningKey,
    pub phone: String,
    pub id: u64,
}

impl TestDevice {
    /// A fresh device; the environment's seed is the device id, so runs
    /// repeat (openmls's own randomness still comes from the platform).
    pub fn new(phone: &str, id: u64) -> TestDevice {
        TestDevice::on(Box::new(MemoryStore::new()), phone, id)
    }

    /// The same on a store of the caller's (a benchmark's in-memory SQLite).
    pub fn on(store: Box<dyn ProfileStore>, phone: &str, id: u64) -> TestDevice {
        let profile = Profile::new(store, Box::new(TestEnvironment::new(id, 1_700_000_000_000)));
        let key = profile
            .identity()
            .unwrap_or_else(|e| panic!("identity: {e}"));
        profile
            .save_registration("wss://127.0.0.1:7443", phone, id)
            .unwrap_or_else(|e| panic!("registration: {e}"));
        TestDevice {
            profile,
            key,
            phone: phone.to_string(),
            id,
        }
    }

    pub fn mls(&self) -> Mls<'_> {
        Mls::new(&self.profile, &self.key, &self.phone, self.id)
    }

    /// One of this device's one-time KeyPackages as `by` (an engine) reads
    /// it from the directory (signature and credential checked).
    pub fn key_package_for(&self, by: &Mls<'_>) -> Result<KeyPackage, ClientError> {
        let bytes = self
            .mls()
            .key_packages(dak_proto::mls::CIPHERSUITE, 1)?
            .remove(0);
        by.fetched_key_package(
            &bytes,
            &self.phone,
            self.id,
            self.key.verifying_key().as_bytes(),
        )
    }

    /// A 1:1 group this device creates with `other`, its commit merged as
    /// on the server's ack; the group and the commit with its Welcome.
    pub fn start_group_with(
        &self,
        other: &TestDevice,
    ) -> Result<(Vec<u8>, CommitToSend), ClientError> {
        let group = self.mls().create_group(dak_proto::mls::CIPHERSUITE)?;
        let out = self
            .mls()
            .commit(&group, vec![other.key_package_for(&self.mls())?], vec![])?;
        self.mls().merge_pending(&group)?;
        Ok((group, out))
    }
}

/// A plain text as a store keeps it: acked, unread, not a reply, not
/// forwarded, edited, deleted or expiring; at `at_ms` on both clocks.
pub fn text_message(
    id: Vec<u8>,
    conversation: ConversationId,
    from: &str,
    outgoing: bool,
    text: &str,
    at_ms: i64,
) -> MessageView {
    MessageView {
        id,
        conversation,
        from: from.into(),
        from_device: 1,
        outgoing,
        text: text.into(),
        sent_at_ms: at_ms,
        server_time_ms: at_ms,
        acked: true,
        read_ms: 0,
        reply_to: None,
        forwarded: 0,
        edited_ms: 0,
        deleted: false,
        expires_at_ms: 0,
        attachment: None,
        interactive: None,
        choice: None,
    }
}
