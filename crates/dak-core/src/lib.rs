//! Dak's client core, sans I/O: what every client (the CLI, the browser,
//! bots) shares and none of them may do differently.
//!
//! - `store`: the `ProfileStore` trait, the one seam to a device's local
//!   storage, with the rows it keeps (`MessageView`, `RecipientState`, …).
//!   `memory` is the in-memory backend (tests, and the browser for now);
//!   `dak-client` has the SQLite one. `conformance` is the behaviour every
//!   backend must show.
//! - `profile`: `Profile`, the device's store as the rest of the core sees
//!   it: transactions, the registration and identity key, lookups built from
//!   the trait's primitives.
//! - `mls_storage`: openmls's `StorageProvider` over the same trait, so MLS
//!   state commits and rolls back with the messages it yields.
//! - `mls`: the device's MLS engine (openmls) and the cache of decoded
//!   groups.
//! - `env`: the clock and randomness, behind `Environment`.
//! - `ids`: message ids.
//!
//! **Architecture Invariant:** nothing here does I/O. No tokio, rusqlite or
//! tungstenite; no clock read from the OS (callers pass `now_ms`); storage
//! only through `ProfileStore`. That is what lets the same code run natively,
//! in a browser (wasm32) and in tests with no server and no sockets.

pub mod conformance;
pub mod env;
mod error;
pub mod ids;
pub mod memory;
pub mod mls;
pub mod mls_storage;
pub mod profile;
pub mod store;

pub use env::{Environment, TestEnvironment};
pub use error::ClientError;
pub use ids::{format_id, parse_id, ser_id};
pub use profile::{Profile, Registration, split_servers};
pub use store::{
    Bracket, MessageView, OutboxEntry, ProfileStore, Quote, RecipientState, group_key,
    parse_group_key,
};

/// From this many forwards a message is "Forwarded many times" and may go
/// to only one chat at a time (see `ForwardLimits`).
pub const FREQUENTLY_FORWARDED: u32 = 5;
