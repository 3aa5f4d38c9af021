//! What the client tells its user: `Event`s, structured data for a front
//! end to word (in its own language).

use crate::MessageView;
use serde::Serialize;

use crate::RecipientState;

#[derive(Debug, Clone)]
pub enum Event {
    Message(MessageView),
    Tick {
        id: Vec<u8>,
        state: TickState,
    },
    /// Everything waiting on the server has been received.
    QueueEmpty,
    /// A message that could not be decrypted or decoded (corrupted, from a
    /// wrong epoch, replayed, or this device lost its keys): counted, acked
    /// and shown as a state; it never blocks the messages after it.
    Undecodable {
        id: Vec<u8>,
        from: String,
        reason: String,
    },
    /// A contact's devices or keys changed in a conversation: the safety
    /// number changed (`dak safety`).
    SecurityNotice {
        conversation: String,
        phone: String,
    },
    /// Something happened in a group (`by` did it; empty when unknown).
    Group {
        conversation: String,
        by: String,
        change: GroupChange,
    },
    /// An emoji on a message (empty: taken back).
    Reaction {
        conversation: String,
        id: Vec<u8>,
        from: String,
        emoji: String,
    },
    /// The sender edited a message.
    Edited {
        conversation: String,
        id: Vec<u8>,
        text: String,
    },
    /// The sender deleted a message for everyone.
    Deleted {
        conversation: String,
        id: Vec<u8>,
    },
}

/// The ticks, in the order they become true.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TickState {
    /// Still in the outbox: the server has not acknowledged it.
    Pending,
    /// ✓ the server holds it durably.
    Sent,
    /// ✓✓ every recipient device has it.
    Delivered,
    /// blue ✓✓ the recipient has read it.
    Read,
}

impl TickState {
    pub fn symbol(self) -> &'static str {
        match self {
            TickState::Pending => "🕓",
            TickState::Sent => "✓",
            TickState::Delivered => "✓✓",
            TickState::Read => "✓✓ (read)",
        }
    }
}

/// A tick of one message and the per-device detail behind it.
#[derive(Debug, Clone, Serialize)]
pub struct Tick {
    pub state: TickState,
    pub devices: Vec<RecipientState>,
}

/// A change in a group, as shown to the user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum GroupChange {
    /// This device was added.
    Joined,
    Added {
        phones: Vec<String>,
    },
    Removed {
        phones: Vec<String>,
    },
    /// This account was removed (or left): nothing more arrives.
    RemovedMe,
    Left {
        phone: String,
    },
    Settings {
        changes: Vec<String>,
    },
    /// A member did what the group's rules do not allow it to.
    RuleBroken {
        reason: String,
    },
    /// Someone asks to join by the invite link (approval is on).
    JoinRequest {
        phone: String,
    },
}
