//! The core's one door to the network: `Transport` (bytes in, bytes out,
//! one connection) and `CertTrust` (how a connection must judge the server's
//! certificate). `Environment::connect` opens a transport; the native driver
//! does it with a WebSocket over TLS, the browser with its WebSocket, tests
//! with an in-memory delivery service.
//!
//! `MaybeSend`/`MaybeSync`: natively everything the core holds is `Send`, so
//! a `Client` can move between tokio's threads; in the browser nothing is
//! (a JS WebSocket is not), and nothing needs to be.

use async_trait::async_trait;

use crate::ClientError;

#[cfg(not(target_arch = "wasm32"))]
mod maybe {
    pub trait MaybeSend: Send {}
    impl<T: Send + ?Sized> MaybeSend for T {}
    pub trait MaybeSync: Sync {}
    impl<T: Sync + ?Sized> MaybeSync for T {}
}
#[cfg(target_arch = "wasm32")]
mod maybe {
    pub trait MaybeSend {}
    impl<T: ?Sized> MaybeSend for T {}
    pub trait MaybeSync {}
    impl<T: ?Sized> MaybeSync for T {}
}
pub use maybe::{MaybeSend, MaybeSync};

/// One connection to a server: whole binary frames each way.
#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
pub trait Transport: MaybeSend {
    async fn send(&mut self, frame: Vec<u8>) -> Result<(), ClientError>;
    /// The next binary frame; `Ok(None)` when the server closed the connection.
    async fn recv(&mut self) -> Result<Option<Vec<u8>>, ClientError>;
    async fn close(&mut self);
    /// Why the server closed the connection, if it said.
    fn close_reason(&self) -> Option<String> {
        None
    }
}

/// How to judge the server's certificate when no public root vouches for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertTrust {
    /// Accept only this SHA-256 fingerprint (hex).
    Pinned(String),
    /// Accept whatever is presented and remember it (first registration).
    FirstUse,
}

/// A fresh connection, and the fingerprint of a certificate that no public
/// root vouched for (what `CertTrust::FirstUse` pins).
pub struct Opened {
    pub transport: Box<dyn Transport>,
    pub fingerprint: Option<String>,
}
