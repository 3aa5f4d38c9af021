//! The native driver of `dak_core`: what the CLI, the terminal chat and
//! `dak bench` run the client core on.
//!
//! - `transport`: the WebSocket over TLS (`WsTransport`), with certificate
//!   pinning (`PinningVerifier`) and the wire trace.
//! - `env`: `SystemEnvironment`: the OS clock and randomness, tokio's timers,
//!   and connecting with `WsTransport`.
//! - `sqlite_profile`: `SqliteProfile`, the profile on disk, and
//!   `open_profile`.
//! - `kt_audit`: the outside auditor of a server's key directory, with
//!   akd's append-only check (which does not build for the browser).
//!
//! Everything else (conversations, ticks, groups, MLS) is `dak_core`,
//! re-exported here under the names the CLI has always used.

pub mod blobs;
mod env;
pub mod kt_audit;
mod legacy_mls;
pub mod sqlite_profile;
pub mod transport;

pub use dak_core::{
    Attachment, BusinessView, HistoryLimits, HistoryShared, NoticeView, business, human_size, kt,
    notices, parse_group_key,
};
pub use dak_core::{
    CertTrust, Client, ClientError, Connection, CryptoState, DELETE_WINDOW_MS, EDIT_WINDOW_MS,
    Event, FREQUENTLY_FORWARDED, ForwardLimits, GroupChange, GroupEdit, GroupInfo, GroupMember,
    MAX_BROADCAST_RECIPIENTS, MessageView, Profile, Quote, RecipientState, Safety, SendOutcome,
    TextOptions, Tick, TickState, group_key, groups, mls, profile, queue_text, queue_text_with,
    requests, save_broadcast_list, tick_of, timer_of,
};
pub use dak_core::{ConversationId, RuleBreach, SettingChange, Undecodable, format_id, parse_id};
pub use env::SystemEnvironment;
pub use sqlite_profile::{SqliteProfile, open_profile};
