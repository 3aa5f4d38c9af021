//! Argon2 for registration-lock PINs, with bounded cost: each hash takes
//! about 19 MiB and tens of milliseconds of a core, so at most
//! `argon2_parallel` run at once (one per core by default) on the blocking
//! pool, at most `argon2_queue` wait, and the rest are refused at once with
//! RATE_LIMITED instead of piling up memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use dak_proto::v1::ErrorCode;
use tokio::sync::Semaphore;

use crate::error::{ApiError, ApiResult};

pub struct PinHasher {
    running: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_waiting: usize,
}

impl PinHasher {
    pub fn new(parallel: u32, queue: u32) -> PinHasher {
        let parallel = match parallel {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n as usize,
        };
        PinHasher {
            running: Arc::new(Semaphore::new(parallel)),
            waiting: AtomicUsize::new(0),
            max_waiting: queue as usize,
        }
    }

    /// A place to run one hash: at once, after a bounded wait, or refused
    /// with RATE_LIMITED. Taken before anything is counted, so a busy
    /// server never costs a user an attempt.
    pub async fn slot(&self) -> ApiResult<HashSlot> {
        let busy = || {
            ApiError::new(
                ErrorCode::RateLimited,
                "the server is busy checking PINs; try again in a moment",
            )
            .retry_after(1)
        };
        if let Ok(p) = self.running.clone().try_acquire_owned() {
            return Ok(HashSlot(p));
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_waiting {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(busy());
        }
        // Counted out again even if this future is dropped while it waits.
        let _waiting = Waiting(&self.waiting);
        let p = self.running.clone().acquire_owned().await;
        p.map(HashSlot).map_err(|_| busy())
    }

    async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> ApiResult<T> {
        let slot = self.slot().await?;
        Self::run_in(slot, f).await
    }

    async fn run_in<T: Send + 'static>(
        slot: HashSlot,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> ApiResult<T> {
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            f()
        })
        .await
        .map_err(|_| ApiError::new(ErrorCode::Internal, "PIN hashing failed"))
    }

    /// Does `pin` match the PHC string `hash`, in a slot taken beforehand?
    pub async fn matches_in(slot: HashSlot, hash: String, pin: String) -> ApiResult<bool> {
        Self::run_in(slot, move || verify(&hash, &pin)).await
    }

    /// Does `pin` match the PHC string `hash`?
    pub async fn matches(&self, hash: String, pin: String) -> ApiResult<bool> {
        self.run(move || verify(&hash, &pin)).await
    }

    /// The PHC string for a new PIN.
    pub async fn hash(&self, pin: String) -> ApiResult<String> {
        self.run(move || {
            let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
            Argon2::default()
                .hash_password(pin.as_bytes(), &salt)
                .map(|h| h.to_string())
        })
        .await?
        .map_err(|_| ApiError::new(ErrorCode::Internal, "PIN hashing failed"))
    }
}

/// A running hash's share of the pool, held until the hash is done.
pub struct HashSlot(#[allow(dead_code)] tokio::sync::OwnedSemaphorePermit);

/// One waiter, counted out when it stops waiting (or is dropped).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn verify(hash: &str, pin: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(pin.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_the_queue_is_bounded() {
        let h = Arc::new(PinHasher::new(1, 1));
        let hash = h.hash("123456".into()).await.unwrap();
        assert!(h.matches(hash.clone(), "123456".into()).await.unwrap());
        assert!(!h.matches(hash.clone(), "654321".into()).await.unwrap());
        // One running, one waiting: of many at once, some are refused at once.
        let tries: Vec<_> = (0..8)
            .map(|_| {
                let (h, hash) = (h.clone(), hash.clone());
                tokio::spawn(async move { h.matches(hash, "000000".into()).await })
            })
            .collect();
        let mut refused = 0;
        for t in tries {
            if let Err(e) = t.await.unwrap() {
                assert_eq!(e.0.kind(), ErrorCode::RateLimited);
                refused += 1;
            }
        }
        assert!(refused > 0, "a bounded queue refuses some of 8 at once");
    }
}
