//! The Dak client core, shared by the CLI, bots and (later) the browser.
//!
//! - `transport`: the `Transport` trait (bytes in, bytes out) and the native
//!   WebSocket-over-TLS implementation. A wasm32 build plugs in the browser's
//!   WebSocket here.
//! - `connection`: request/response matching and pushes over a transport.
//! - `profile`: the device's local store (identity key, messages, outbox,
//!   ticks, dedup).
//! - `client`: what a user does: register, link, send, sync, read, status.
//!
//! - `mls`: the device's MLS state (openmls): every conversation is an MLS
//!   group of devices; message bodies (`dak_proto::v1::Content`) travel only
//!   as MLS ciphertext.

mod client;
mod connection;
mod error;
pub mod mls;
pub mod profile;
pub mod transport;

pub use client::{
    Client, Event, SendOutcome, Tick, TickState, format_id, parse_id, queue_text, tick_of,
};
pub use connection::Connection;
pub use error::ClientError;
pub use profile::{MessageView, Profile};
