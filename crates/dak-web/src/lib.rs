//! Dak Web: the client core (`dak-core`) in the browser.
//!
//! - `views`: the chat list and a chat's messages as the page shows them
//!   (pure; compiled and tested natively too);
//! - `actions`: reactions, edits, deletes, forwards, timers and group
//!   changes the page asks for, as one typed JSON `Action` (also native);
//! - `env`: `BrowserEnvironment`, the core's clock, randomness, timers and
//!   network from the browser; `socket`: `BrowserSocket`, the core's
//!   `Transport` over the browser's WebSocket;
//! - `opfs`: `OpfsJournal`, the profile's journal (`dak_core::journal`) in
//!   two files of the origin's private file system (one in use, one for the
//!   next compaction), through synchronous access handles (so the engine
//!   runs in a dedicated worker, `web/worker.js`);
//! - `engine`: the one task that owns the device (profile, connection) and
//!   answers the page's commands;
//! - `media`: files: sealing one and taking its upload slot, sending its
//!   message once `web/worker.js` uploaded it, opening a downloaded one;
//! - `api`: `WebClient`, the class the page's JavaScript uses.
//!
//! The page itself (HTML, CSS, JavaScript, the English, Hindi and Bengali
//! strings) is in `web/` at the repository's root; `scripts/web-build.sh`
//! builds this crate for wasm32 and puts both together, and `dak server
//! --web DIR` serves them.
//!
//! **Architecture invariant:** the page never renders anything from a
//! message as markup: `views` hands it strings, and it puts them in text
//! nodes.

pub mod actions;
pub mod views;

#[cfg(target_arch = "wasm32")]
mod api;
#[cfg(target_arch = "wasm32")]
mod engine;
#[cfg(target_arch = "wasm32")]
mod env;
#[cfg(target_arch = "wasm32")]
mod media;
#[cfg(target_arch = "wasm32")]
mod opfs;
#[cfg(target_arch = "wasm32")]
mod socket;

#[cfg(target_arch = "wasm32")]
pub use api::WebClient;
