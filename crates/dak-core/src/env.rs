//! `Environment`: the clock and the randomness the core uses, behind a
//! trait, so the core reads neither from the OS itself. The native driver
//! passes the system's (`dak_client::SystemEnvironment`), the browser its
//! own, and tests a fixed clock and a seeded generator (`TestEnvironment`).
//!
//! openmls draws its own randomness through its `OpenMlsRand` trait
//! (openmls_rust_crypto, seeded from the platform: getrandom natively,
//! `crypto.getRandomValues` on wasm32); this trait covers everything else
//! the core draws: identity keys, group ids, invite secrets.

use std::sync::atomic::{AtomicI64, Ordering};

use rand::{RngCore, SeedableRng};

pub trait Environment: Send + Sync {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
    /// Fills `buf` with cryptographically secure random bytes.
    fn fill_random(&self, buf: &mut [u8]);
}

/// A clock that moves only when told, and a generator from a seed: a test
/// replays exactly.
pub struct TestEnvironment {
    now_ms: AtomicI64,
    rng: parking_lot::Mutex<rand::rngs::StdRng>,
}

impl TestEnvironment {
    pub fn new(seed: u64, now_ms: i64) -> TestEnvironment {
        TestEnvironment {
            now_ms: AtomicI64::new(now_ms),
            rng: parking_lot::Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)),
        }
    }

    pub fn advance(&self, ms: i64) {
        self.now_ms.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Environment for TestEnvironment {
    fn now_ms(&self) -> i64 {
        self.now_ms.load(Ordering::SeqCst)
    }

    fn fill_random(&self, buf: &mut [u8]) {
        self.rng.lock().fill_bytes(buf);
    }
}
