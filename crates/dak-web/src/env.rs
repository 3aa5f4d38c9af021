//! `BrowserEnvironment`: the core's clock, randomness, timers and network
//! from the browser: `Date.now()`, `crypto.getRandomValues` (through
//! getrandom's `js` backend), `setTimeout` and `BrowserSocket`.
//!
//! It works in a page and in a worker: `setTimeout` is taken from the
//! global scope, not from `window`.

use std::time::Duration;

use rand::RngCore;
use wasm_bindgen::prelude::*;

use dak_core::{CertTrust, ClientError, Environment, Opened};

use crate::socket::BrowserSocket;

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_name = setTimeout)]
    fn set_timeout(handler: &js_sys::Function, ms: i32) -> JsValue;
}

pub struct BrowserEnvironment;

#[async_trait::async_trait(?Send)]
impl Environment for BrowserEnvironment {
    fn now_ms(&self) -> i64 {
        js_sys::Date::now() as i64
    }

    fn fill_random(&self, buf: &mut [u8]) {
        rand::rngs::OsRng.fill_bytes(buf);
    }

    async fn sleep(&self, d: Duration) {
        let ms = d.as_millis().min(i32::MAX as u128) as i32;
        let promise = js_sys::Promise::new(&mut |resolve, _reject| {
            set_timeout(&resolve, ms);
        });
        // A timer cannot fail; a dropped sleep leaves the timer to fire into
        // a promise nobody waits for, which is harmless.
        let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
    }

    /// The browser judges the certificate (see `socket.rs`): `trust` has
    /// nothing to add, and there is no fingerprint to pin.
    async fn connect(&self, server: &str, _trust: &CertTrust) -> Result<Opened, ClientError> {
        Ok(Opened {
            transport: Box::new(BrowserSocket::open(server).await?),
            fingerprint: None,
        })
    }
}
