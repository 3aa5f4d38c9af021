//! The client's MLS engine (`dak_core::mls`) on whatever arrives in a
//! mailbox. Once per process, alice and bob (each a `Profile` over a
//! `MemoryStore`) set up a real 1:1 group; every input goes to bob's
//! `process` inside a savepoint of a transaction, as the client reads its
//! mailbox. It must never panic; an input it refuses must leave bob's group
//! as it was (epoch and epoch authenticator); and every `CHECK_EVERY`
//! inputs alice and bob exchange a real message each way, which must
//! decrypt, with both still in step.
//!
//! The seeds are fuzz/seeds/mls_message's real messages (fuzz/seeds/
//! mls_engine links there), from a group at the same epoch as this one but
//! with another id. So that they and their mutations get past the group
//! lookup into openmls's decryption and signature checks, the target writes
//! this group's id over that id wherever an input holds it.
//!
//! State carries over from input to input (each exchange moves both
//! ratchets on), so a crash may need the inputs before it; the exchanges
//! are what keep that state honest.
#![no_main]

use std::sync::{Mutex, OnceLock};

use dak_core::memory::MemoryStore;
use dak_core::mls::{Incoming, Mls};
use dak_core::{ClientError, Profile, TestEnvironment};
use libfuzzer_sys::fuzz_target;

/// Inputs between two real exchanges.
const CHECK_EVERY: u64 = 16;

/// The group id of the seeds' messages.
fn seed_group() -> Vec<u8> {
    let application = include_bytes!("../seeds/mls_message/application");
    dak_proto::mls::inspect(application)
        .expect("the application seed is a message")
        .group_id
}

struct Device {
    profile: Profile,
    phone: &'static str,
    id: u64,
}

impl Device {
    fn new(phone: &'static str, id: u64) -> Device {
        let profile = Profile::new(
            Box::new(MemoryStore::new()),
            Box::new(TestEnvironment::new(id, 0)),
        );
        profile
            .save_registration("wss://fuzz.test:7443", phone, id)
            .unwrap();
        Device { profile, phone, id }
    }

    /// Runs `f` on this device's engine in a savepoint of a transaction,
    /// as the client processes each envelope. The store itself never fails.
    fn savepoint<T>(
        &self,
        f: impl FnOnce(&Mls<'_>) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        self.profile
            .transaction(|p| Ok(p.savepoint(|p| p.mls(f))))
            .expect("the memory store failed")
    }

    /// (epoch, epoch authenticator)
    fn view(&self, group: &[u8]) -> (u64, Vec<u8>) {
        self.savepoint(|m| Ok((m.epoch(group)?, m.authenticator(group)?)))
            .expect("the group is readable")
    }
}

struct World {
    alice: Device,
    bob: Device,
    group: Vec<u8>,
    seed_group: Vec<u8>,
    inputs: u64,
}

impl World {
    /// alice creates a group and adds bob, who joins from the Welcome.
    fn new() -> World {
        let alice = Device::new("+919800000001", 1);
        let bob = Device::new("+919800000002", 2);
        let group = alice
            .savepoint(|m| m.create_group(dak_proto::mls::CIPHERSUITE))
            .unwrap();
        let kp = bob
            .savepoint(|m| m.key_packages(dak_proto::mls::CIPHERSUITE, 1))
            .unwrap()
            .remove(0);
        let kp = alice
            .savepoint(|m| {
                let key = bob.profile.identity()?.verifying_key();
                m.fetched_key_package(&kp, bob.phone, bob.id, key.as_bytes())
            })
            .unwrap();
        let out = alice
            .savepoint(|m| m.commit(&group, vec![kp], vec![]))
            .unwrap();
        alice.savepoint(|m| m.merge_pending(&group)).unwrap();
        let joined = bob.savepoint(|m| m.process(&out.welcome.unwrap())).unwrap();
        assert!(matches!(joined, Incoming::Joined { .. }));
        let world = World {
            alice,
            bob,
            group: group.clone(),
            seed_group: Some(seed_group())
                .filter(|g| g.len() == group.len())
                .unwrap_or_default(),
            inputs: 0,
        };
        world.exchange();
        world
    }

    /// alice and bob each send a real message, which the other reads; they
    /// are still in the same state.
    fn exchange(&self) {
        let n = self.inputs;
        for (from, to) in [(&self.alice, &self.bob), (&self.bob, &self.alice)] {
            let text = format!("{} after {n} inputs", from.phone);
            let ct = from
                .savepoint(|m| m.encrypt(&self.group, text.as_bytes()))
                .unwrap();
            match to.savepoint(|m| m.process(&ct)) {
                Ok(Incoming::Application {
                    phone, plaintext, ..
                }) => {
                    assert_eq!(phone, from.phone);
                    assert_eq!(plaintext, text.as_bytes());
                }
                other => panic!("a real message from {} failed: {other:?}", from.phone),
            }
        }
        assert_eq!(
            self.alice.view(&self.group),
            self.bob.view(&self.group),
            "alice and bob forked"
        );
    }
}

fn world() -> &'static Mutex<World> {
    static WORLD: OnceLock<Mutex<World>> = OnceLock::new();
    WORLD.get_or_init(|| Mutex::new(World::new()))
}

/// `data` with every occurrence of `from` replaced by `to` (same length).
fn replace(data: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    let mut i = 0;
    while !from.is_empty() && i + from.len() <= out.len() {
        if out[i..i + from.len()] == *from {
            out[i..i + from.len()].copy_from_slice(to);
            i += from.len();
        } else {
            i += 1;
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let mut w = world().lock().unwrap();
    let input = replace(data, &w.seed_group, &w.group);
    let before = w.bob.view(&w.group);
    match w.bob.savepoint(|m| m.process(&input)) {
        Err(ClientError::Store { .. }) => panic!("the store failed"),
        Err(_) => assert_eq!(
            w.bob.view(&w.group),
            before,
            "a refused input changed bob's group"
        ),
        // Anyone holding a device's KeyPackage may add it to a new group,
        // so a Welcome could in principle be forged; nothing else can.
        Ok(Incoming::Joined { group }) if group != w.group => {}
        Ok(other) => panic!("bob accepted an input no member made: {other:?}"),
    }
    w.inputs += 1;
    if w.inputs % CHECK_EVERY == 0 {
        w.exchange();
    }
});
