//! What the page asks of a message or a chat besides sending a text:
//! react, edit, delete for everyone, forward, the disappearing-message
//! timer, and a group's title, admins, invite link and leaving. Each is one
//! JSON object (`{"do": "react", ...}`) decoded into `Action`, so the page
//! and the engine share one entry point (`WebClient.act`) instead of a
//! method per feature, and a malformed request is a typed error, not a
//! panic.
//!
//! Invariants:
//! - Every action needs the server (they are all encrypted sends or
//!   commits): offline the engine answers `OFFLINE` without touching the
//!   profile, and nothing is half done.
//! - The core checks every rule (only the author edits, within 15 minutes;
//!   only admins promote; forward limits); this file only translates.

use dak_core::{Client, ClientError, ForwardLimits, GroupEdit, parse_id};
use serde::Deserialize;
use serde_json::{Value, json};

/// The largest action the page may send (a forward to a few chats, an
/// edited text): anything longer is refused before it is parsed.
pub const MAX_ACTION_BYTES: usize = 128 * 1024;

#[derive(Debug, Deserialize)]
#[serde(tag = "do", rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    /// An emoji on a message of `chat`; empty takes it back.
    React {
        chat: String,
        id: String,
        emoji: String,
    },
    /// New text for one of our messages (within 15 minutes).
    Edit {
        id: String,
        text: String,
    },
    /// Takes back one of our messages for everyone (within 48 hours).
    Delete {
        id: String,
    },
    /// Sends a copy to up to five chats, labelled "Forwarded".
    Forward {
        id: String,
        chats: Vec<String>,
    },
    /// The chat's disappearing-message timer in seconds (0: off).
    SetTimer {
        chat: String,
        secs: u32,
    },
    /// A group's new title.
    Rename {
        chat: String,
        title: String,
    },
    /// Makes a member an admin of the group, or not.
    SetAdmin {
        chat: String,
        member: String,
        admin: bool,
    },
    /// Leaves a group.
    Leave {
        chat: String,
    },
    /// Makes (or replaces) the group's invite link.
    InviteLink {
        chat: String,
        approval: bool,
    },
    RevokeLink {
        chat: String,
    },
    /// Asks to join a group by its invite link.
    Join {
        link: String,
    },
    /// Lets in someone who asked to join by the link (admins).
    ApproveJoin {
        chat: String,
        member: String,
    },
    /// Answers a business's buttons or list: `choice` is the button's or
    /// row's id.
    Choose {
        id: String,
        choice: String,
    },
    /// Asks the server whether a chat's number is a business (the chat
    /// list then shows what it said).
    Business {
        chat: String,
    },
    /// Blocks a number (its messages stop reaching this account), or
    /// unblocks it.
    Block {
        chat: String,
        blocked: bool,
    },
    /// Reports a number for spam or abuse (the operator counts reports and
    /// never sees messages), and blocks it.
    Report {
        chat: String,
    },
}

/// Why an action from the page was not even tried.
pub fn parse(json: &str) -> Result<Action, ClientError> {
    if json.len() > MAX_ACTION_BYTES {
        return Err(ClientError::Usage(format!(
            "an action is at most {MAX_ACTION_BYTES} bytes"
        )));
    }
    serde_json::from_str(json).map_err(|e| ClientError::Usage(format!("not an action: {e}")))
}

/// Does `action` with a connected client; the JSON the page gets back.
pub async fn perform(client: &mut Client, action: Action) -> Result<Value, ClientError> {
    let key = |client: &Client, chat: &str| client.profile().resolve(chat).map(|c| c.key());
    Ok(match action {
        Action::Choose { id, choice } => {
            let sent = client.choose(&parse_id(&id)?, &choice).await?;
            json!(dak_core::format_id(&sent.id))
        }
        Action::Block { chat, blocked } => {
            client.block(&chat, blocked).await?;
            json!(true)
        }
        Action::Report { chat } => {
            client.report(&chat).await?;
            json!(true)
        }
        Action::Business { chat } => {
            let b = client.fetch_business(&chat).await?;
            json!(b.is_some())
        }
        Action::React { chat, id, emoji } => {
            let chat = key(client, &chat)?;
            client.react(&chat, &parse_id(&id)?, &emoji).await?;
            json!(true)
        }
        Action::Edit { id, text } => {
            client.edit_message(&parse_id(&id)?, &text).await?;
            json!(true)
        }
        Action::Delete { id } => {
            client.delete_for_everyone(&parse_id(&id)?).await?;
            json!(true)
        }
        Action::Forward { id, chats } => {
            let sent = client
                .forward(&parse_id(&id)?, &chats, ForwardLimits::default())
                .await?;
            json!(sent.len())
        }
        Action::SetTimer { chat, secs } => {
            let chat = key(client, &chat)?;
            client.set_timer(&chat, secs).await?;
            json!(true)
        }
        Action::Rename { chat, title } => {
            let chat = key(client, &chat)?;
            let edit = GroupEdit {
                title: Some(title),
                ..Default::default()
            };
            client.update_group(&chat, edit).await?;
            json!(true)
        }
        Action::SetAdmin {
            chat,
            member,
            admin,
        } => {
            let chat = key(client, &chat)?;
            client.set_admin(&chat, &member, admin).await?;
            json!(true)
        }
        Action::Leave { chat } => {
            let chat = key(client, &chat)?;
            client.leave_group(&chat).await?;
            json!(true)
        }
        Action::InviteLink { chat, approval } => {
            let chat = key(client, &chat)?;
            json!(client.create_invite_link(&chat, approval).await?)
        }
        Action::RevokeLink { chat } => {
            let chat = key(client, &chat)?;
            client.revoke_invite_link(&chat).await?;
            json!(true)
        }
        Action::Join { link } => {
            client.join_by_link(link.trim()).await?;
            json!(true)
        }
        Action::ApproveJoin { chat, member } => {
            let chat = key(client, &chat)?;
            client.approve_join(&chat, &member).await?;
            json!(true)
        }
    })
}
