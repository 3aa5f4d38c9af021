//! What the client tells its user: `Event`s, structured data for a front
//! end to word (in its own language).

use crate::MessageView;
use serde::Serialize;

use crate::{ConversationId, RecipientState};

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
        reason: Undecodable,
    },
    /// A contact's devices or keys changed in a conversation: the safety
    /// number changed (`dak safety`).
    SecurityNotice {
        conversation: ConversationId,
        phone: String,
    },
    /// Something happened in a group (`by` did it; empty when unknown).
    Group {
        conversation: ConversationId,
        by: String,
        change: GroupChange,
    },
    /// An emoji on a message (empty: taken back).
    Reaction {
        conversation: ConversationId,
        id: Vec<u8>,
        from: String,
        emoji: String,
    },
    /// The sender edited a message.
    Edited {
        conversation: ConversationId,
        id: Vec<u8>,
        text: String,
    },
    /// The sender deleted a message for everyone.
    Deleted {
        conversation: ConversationId,
        id: Vec<u8>,
    },
    /// A number this account does not know started a conversation (a 1:1
    /// chat, or added it to a group): accept, block or report it
    /// (`requests.rs`). No read receipts go out until it is accepted.
    MessageRequest {
        conversation: ConversationId,
        from: String,
    },
    /// Another device of this account sent this (newly linked) device part
    /// of its recent history (`history.rs`): `messages` were new here.
    History {
        from_device: u64,
        part: u32,
        parts: u32,
        chats: usize,
        messages: usize,
    },
    /// A notice from the server's operator (an incident, maintenance, a
    /// security breach, or an attack on this account), signed with the
    /// key this device pinned and in the log it checked (`notices.rs`).
    /// Show it where no chat message can appear.
    OperatorNotice(crate::notices::NoticeView),
    /// Key transparency found something the user must know about their
    /// own number (a device key they may not have added) or could not
    /// check it (`kt.rs`). Show it where no chat message can appear.
    KeyTransparency {
        phone: String,
        warning: String,
    },
    /// The server showed a notice this device could not check (a forged
    /// signature, a notice missing from the log, a rewritten log): it is
    /// not shown; the user is told that it was refused.
    NoticeRefused {
        reason: String,
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
        changes: Vec<SettingChange>,
    },
    /// A member did what the group's rules do not allow it to.
    RuleBroken {
        breach: RuleBreach,
    },
    /// Someone asks to join by the invite link (approval is on).
    JoinRequest {
        phone: String,
    },
}

/// Why a message could not be shown (`Event::Undecodable`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Undecodable {
    /// This device has no state for the conversation (restored from an old
    /// copy, say): the sender's next message starts a new one.
    LostState,
    /// MLS refused it: corrupted, replayed, or from an epoch this device
    /// no longer has keys for. `detail` is openmls's word, for logs.
    Crypto { detail: String },
    /// The encrypted sender is not the one the server's envelope names.
    SenderMismatch,
    /// It decrypted, but the content inside is not a valid `Content`.
    BadContent { detail: String },
}

impl Undecodable {
    pub(crate) fn of(e: &crate::ClientError) -> Undecodable {
        match e {
            crate::ClientError::GroupMissing(_) => Undecodable::LostState,
            other => Undecodable::Crypto {
                detail: other.to_string(),
            },
        }
    }
}

/// One change to a group's (or a 1:1 chat's) settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SettingChange {
    Title {
        title: String,
    },
    Description {
        description: String,
    },
    Avatar {
        bytes: usize,
    },
    AdminAdded {
        phone: String,
    },
    AdminRemoved {
        phone: String,
    },
    /// Only admins may add members and change settings (or, off, everyone).
    AdminsOnly {
        on: bool,
    },
    /// The disappearing-message timer, in seconds (0: off).
    Timer {
        secs: u32,
    },
    /// A new invite link was made, or (revoked) the link was revoked.
    InviteLink {
        revoked: bool,
    },
}

/// How a member broke a group's rules (see `groups::may_change`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RuleBreach {
    /// `by` is not an admin but changed the admins, the rules or the link.
    AdminSettings { by: String },
    /// `by` is not an admin but changed the settings of an admins-only group.
    LockedSettings { by: String },
    /// `by` is not an admin but added members to an admins-only group.
    LockedMembers { by: String },
    /// `by` is not an admin but removed `phone`, who had not asked to leave.
    Removed { by: String, phone: String },
}
