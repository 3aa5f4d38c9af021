//! `dak bench`: drives a real Dak server over real sockets with simulated
//! devices that register through the development SMS outbox, authenticate
//! with real identity keys and speak the real protocol (`dak_client`'s
//! transport and connection). Nothing here is mocked: what it measures is
//! what a client would see.
//!
//! - `target`: the server under test (spawned with a fresh data directory,
//!   or an existing one), its resident memory from /proc.
//! - `device`: a simulated device and registering many of them.
//! - `groups`: the devices' MLS setup (KeyPackages, a group per
//!   conversation, pre-encrypted application messages).
//! - `scenarios`: connect, pairs, offline.
//! - `large_group`: the group scenario: creating a group of up to 1024
//!   member devices, fan-out to all of them, and what a removal costs
//!   next to Sender Keys.
//! - `media`: a large file sealed, opened, uploaded and downloaded, next
//!   to curl moving the same bytes over the same listener.
//! - `bot`: a real `dak bot serve` between people and a webhook: messages
//!   a second each way, send-to-webhook latency, memory per conversation.
//! - `report`: latency histograms, the table and the JSON result.

pub mod bot;
pub mod device;
pub mod groups;
pub mod large_group;
pub mod media;
pub mod report;
pub mod scenarios;
pub mod target;

pub use report::Report;
pub use scenarios::{Params, Scenario, run};
