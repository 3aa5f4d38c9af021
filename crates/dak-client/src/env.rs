//! The system's clock and randomness, for the core's `Environment`.

use dak_core::Environment;
use rand::RngCore;

/// The OS clock (UTC) and the OS random generator.
pub struct SystemEnvironment;

impl Environment for SystemEnvironment {
    fn now_ms(&self) -> i64 {
        chrono::Utc::now().timestamp_millis()
    }

    fn fill_random(&self, buf: &mut [u8]) {
        rand::rngs::OsRng.fill_bytes(buf);
    }
}
