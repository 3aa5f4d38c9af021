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
//! - `journal`: `JournaledStore`, any store made durable by a journal of
//!   its committed writes (the browser's profile: an OPFS file).
//! - `mls_storage`: openmls's `StorageProvider` over the same trait, so MLS
//!   state commits and rolls back with the messages it yields.
//! - `mls`: the device's MLS engine (openmls) and the cache of decoded
//!   groups.
//! - `env`: the clock, randomness, waiting and connecting, behind
//!   `Environment`; `transport`: the `Transport` trait (one connection's
//!   frames) and `CertTrust`.
//! - `connection`: request/response matching and pushes over a transport.
//! - `client`: the `Client` (a connected device): registering, linking,
//!   connecting, devices and PIN. Its other methods are by concept in
//!   `outbox` (sending), `receive` (pushes, stored then acked), `ticks`,
//!   `group_sync` (keeping a conversation's MLS group in step with the
//!   server) and `key_packages`; `events` is what it tells the user.
//! - `groups`: named groups (title, admins, invite links) and their rules.
//! - `incoming`: what each decrypted delivery does to the profile.
//! - `history`: a newly linked device's recent chats, sent by the device
//!   that approved it.
//! - `actions`: replies, edits, deletes, timers, forwards, broadcast lists.
//! - `media`: encrypted media's cryptography (chunked AEAD, padding
//!   buckets, the ciphertext's hash), before any upload exists.
//! - `business`: business accounts (bots) as a client names them.
//! - `ids`: message ids.
//!
//! **Architecture Invariant:** nothing here does I/O itself. No tokio,
//! rusqlite or tungstenite; the clock, randomness, sleeping and connecting
//! come from `Environment`, storage from `ProfileStore`, frames from
//! `Transport`. That is what lets the same code run natively, in a browser
//! (wasm32) and in tests with no server and no sockets.

mod actions;
pub mod attachments;
pub mod business;
mod client;
pub mod conformance;
mod connect;
mod connection;
pub mod env;
mod error;
mod events;
mod group_sync;
pub mod groups;
pub mod history;
pub mod ids;
mod incoming;
pub mod journal;
mod key_packages;
pub mod kt;
pub mod media;
pub mod memory;
pub mod mls;
pub mod mls_storage;
pub mod notices;
mod outbox;
pub mod profile;
mod receive;
pub mod requests;
pub mod store;
#[doc(hidden)]
pub mod testing;
mod ticks;
pub mod transport;
mod work;

pub use actions::{ForwardLimits, MAX_BROADCAST_RECIPIENTS, save_broadcast_list};
pub use attachments::{Attachment, human_size, new_capability};
pub use business::BusinessView;
pub use client::Client;
pub use connection::Connection;
pub use events::Event;
pub use events::{GroupChange, RuleBreach, SettingChange, Tick, TickState, Undecodable};
pub use group_sync::{CryptoState, Safety};
pub use groups::{GroupEdit, GroupInfo, GroupMember};
pub use history::{HistoryLimits, HistoryShared};
pub use incoming::{DELETE_WINDOW_MS, EDIT_WINDOW_MS};
pub use notices::NoticeView;
pub use outbox::{SendOutcome, TextOptions, queue_text, queue_text_with, timer_of};
pub use ticks::tick_of;
pub use transport::{CertTrust, Opened, Transport};

pub use env::{Environment, TestEnvironment};
pub use error::ClientError;
pub use ids::{ConversationId, format_id, parse_id, ser_id};
pub use profile::{Profile, Registration, split_servers};
pub use store::{
    Bracket, MessageView, OutboxEntry, ProfileStore, Quote, RecipientState, group_key,
    parse_group_key,
};

/// From this many forwards a message is "Forwarded many times" and may go
/// to only one chat at a time (see `ForwardLimits`).
pub const FREQUENTLY_FORWARDED: u32 = 5;
