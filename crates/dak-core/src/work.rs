//! Work that something the client handled calls for, queued on the
//! `Client` and done by `Client::run_work` after the step that called for
//! it, never inside it: a delivery is stored and acked first, a send gets
//! its ack first. Queued work that fails waits (receipts stay in the
//! outbox, KeyPackages are topped up on the next connection, group work is
//! called for again by the next delivery that needs it).

use crate::OutboxEntry;

/// Work a delivery calls for in a group; `incoming` returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FollowUp {
    /// Add someone who asked with the invite link this device made.
    AddJoiner { group: Vec<u8>, phone: String },
    /// Remove the devices of members who left.
    RemoveLeavers { group: Vec<u8> },
    /// A commit changed these numbers' devices in the group: check them
    /// against the key directory (`kt.rs`).
    CheckKeys { group: Vec<u8>, phones: Vec<String> },
}

/// One piece of queued work, done in the order queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Work {
    /// A Welcome used one of this device's KeyPackages: top up the stock.
    TopUpKeyPackages,
    /// Receipts already in the outbox: send them now.
    Receipts(Vec<OutboxEntry>),
    /// Group work a delivery called for.
    Group(FollowUp),
    /// Devices were just added to a named group: send them its settings
    /// (title, admins), which they cannot read from the commit.
    ReshareState { group: Vec<u8> },
}

/// Rounds of `run_work` at most: work can queue more work (a reshare's send
/// may reconcile the group and queue another), and a bug there must not
/// spin forever.
pub(crate) const MAX_WORK_ROUNDS: usize = 8;
