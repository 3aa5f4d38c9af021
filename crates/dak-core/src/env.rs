//! `Environment`: everything the core takes from the platform besides
//! storage: the clock, randomness, waiting, and opening a connection. The
//! native driver passes the system's (`dak_client::SystemEnvironment`:
//! tokio, a WebSocket over TLS), the browser its own, and tests a clock that
//! moves only when told and a seeded generator (`TestEnvironment`).
//!
//! openmls draws its own randomness through its `OpenMlsRand` trait
//! (openmls_rust_crypto, seeded from the platform: getrandom natively,
//! `crypto.getRandomValues` on wasm32); this trait covers everything else
//! the core draws: identity keys, group ids, message ids, invite secrets,
//! jitter.

use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use rand::{RngCore, SeedableRng};

use crate::ClientError;
use crate::transport::{CertTrust, MaybeSend, MaybeSync, Opened};

#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
pub trait Environment: MaybeSend + MaybeSync {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
    /// Fills `buf` with cryptographically secure random bytes.
    fn fill_random(&self, buf: &mut [u8]);
    /// Resolves once `d` has passed.
    async fn sleep(&self, d: Duration);
    /// Opens a connection to `server` (a `wss://` address), judging its
    /// certificate by `trust`.
    async fn connect(&self, server: &str, trust: &CertTrust) -> Result<Opened, ClientError>;
}

/// A random number in `0..n` (0 when `n` is 0), from the environment.
pub fn random_below(env: &dyn Environment, n: u64) -> u64 {
    let mut b = [0u8; 8];
    env.fill_random(&mut b);
    u64::from_le_bytes(b).checked_rem(n).unwrap_or(0)
}

/// Runs `f` for at most `d`: `None` if the time ran out first (and `f` was
/// dropped, as `tokio::time::timeout` does).
pub async fn timeout<F: Future>(env: &dyn Environment, d: Duration, f: F) -> Option<F::Output> {
    let f = std::pin::pin!(f);
    let sleep = env.sleep(d);
    match futures_util::future::select(f, sleep).await {
        futures_util::future::Either::Left((v, _)) => Some(v),
        futures_util::future::Either::Right(_) => None,
    }
}

/// A clock that moves only when told (or when something sleeps on it), and
/// a generator from a seed: a test replays exactly. It has no network.
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

#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
impl Environment for TestEnvironment {
    fn now_ms(&self) -> i64 {
        self.now_ms.load(Ordering::SeqCst)
    }

    fn fill_random(&self, buf: &mut [u8]) {
        self.rng.lock().fill_bytes(buf);
    }

    /// Virtual time: the clock jumps, nothing waits. So a `timeout` here
    /// fires as soon as what it waits on is not ready at once: tests drive
    /// in-memory peers that answer at once.
    async fn sleep(&self, d: Duration) {
        self.advance(d.as_millis() as i64);
    }

    async fn connect(&self, _server: &str, _trust: &CertTrust) -> Result<Opened, ClientError> {
        Err(ClientError::Transport(
            "this test environment has no network".into(),
        ))
    }
}
