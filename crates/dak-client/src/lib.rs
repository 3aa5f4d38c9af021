//! The Dak client core, shared by the CLI, bots and (later) the browser.
//!
//! - `transport`: the `Transport` trait (bytes in, bytes out) and the native
//!   WebSocket-over-TLS implementation. A wasm32 build plugs in the browser's
//!   WebSocket here.
//! - `connection`: request/response matching and pushes over a transport.
//! - `profile`: the device's local store (identity key, messages, outbox,
//!   ticks, dedup).
//! - `client`: what a user does: register, link, send, sync, read, status.
//! - `groups`: named groups (title, admins, invite links) and their rules.
//! - `incoming`: what each decrypted delivery does to the profile.
//! - `actions`: replies, edits, deletes, timers, forwards, broadcast lists.
//!
//! - `mls`: the device's MLS state (openmls): every conversation is an MLS
//!   group of devices; message bodies (`dak_proto::v1::Content`) travel only
//!   as MLS ciphertext.

mod actions;
mod client;
mod connection;
mod env;
pub mod groups;
mod incoming;
pub mod sqlite_profile;
pub mod transport;

pub use dak_core::{mls, profile};
pub use env::SystemEnvironment;
pub use sqlite_profile::{SqliteProfile, open_profile};

pub use actions::{ForwardLimits, MAX_BROADCAST_RECIPIENTS, save_broadcast_list};
pub use client::{
    Client, Event, SendOutcome, TextOptions, Tick, TickState, format_id, parse_id, queue_text,
    queue_text_with, tick_of, timer_of,
};
pub use groups::{GroupChange, GroupEdit, GroupInfo, GroupMember};
pub use incoming::{DELETE_WINDOW_MS, EDIT_WINDOW_MS};

pub use connection::Connection;
pub use dak_core::{
    ClientError, FREQUENTLY_FORWARDED, MessageView, Profile, Quote, RecipientState, group_key,
};
