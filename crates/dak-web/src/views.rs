//! What the page shows, read from a `Profile`: the chat list and a chat's
//! messages with their ticks, as plain structs that serialise to the JSON
//! the page renders. Pure (no I/O, no browser), so they are tested
//! natively; `engine.rs` hands them to the page.
//!
//! Invariants:
//! - Every string here is data, never markup: the page puts each into a
//!   text node (`textContent`), whatever it contains.
//! - A chat is listed once, by its conversation key (a number for a 1:1
//!   chat, `group:<hex>` for a group), the key `send` and `messages` take.
//! - The list is ordered by its last message, newest first; chats with no
//!   message yet come last, by key.

use dak_core::mls::is_named_group;
use dak_core::{ClientError, MessageView, Profile, TickState, format_id, tick_of};
use serde::Serialize;

/// Messages a chat view loads at once (the newest); scrolling back asks
/// for twice as many each time, up to `MAX_CHAT_PAGE`.
pub const CHAT_PAGE: usize = 200;
pub const MAX_CHAT_PAGE: usize = 102_400;

/// One row of the chat list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatRow {
    pub key: String,
    /// The number for a 1:1 chat, the title for a group.
    pub title: String,
    pub is_group: bool,
    pub last_text: String,
    pub last_outgoing: bool,
    /// The last message was deleted for everyone (its text is gone).
    pub last_deleted: bool,
    /// 0 when the chat has no message.
    pub last_at_ms: i64,
    /// The last message's tick, when it is one of ours.
    pub last_tick: Option<TickState>,
    pub unread: usize,
    /// A number this account does not know wrote first: no read receipts go
    /// out until it is accepted.
    pub request: bool,
    /// The disappearing-message timer for new messages (0: off).
    pub timer_secs: u32,
    /// A 1:1 chat with a business, as last looked up (`{"do":
    /// "business"}` asks the server again).
    pub business: Option<BusinessRow>,
    /// A 1:1 chat whose number this account blocked.
    pub blocked: bool,
}

/// A business the page names by its checked name with a tick, or as a
/// business account by its number (`dak_core::business`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BusinessRow {
    pub verified: bool,
    /// The checked name; empty when not verified (never the name it gives itself).
    pub name: String,
    pub category: String,
    pub website: String,
}

/// One message of a chat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MessageRow {
    /// The message id in hex (`dak` prints the same).
    pub id: String,
    pub from: String,
    pub outgoing: bool,
    pub text: String,
    pub at_ms: i64,
    /// Ours only: 🕓 pending, ✓ sent, ✓✓ delivered, blue ✓✓ read.
    pub tick: Option<TickState>,
    pub read: bool,
    pub forwarded: Option<&'static str>,
    pub edited: bool,
    pub deleted: bool,
    pub reply_to: Option<String>,
    pub reactions: Vec<(String, String)>,
    /// Ours, not deleted, and still within the window to edit (15 minutes)
    /// or to delete for everyone (48 hours): the page offers those actions.
    pub can_edit: bool,
    pub can_delete: bool,
    /// A file it carries (its text is then the caption).
    pub attachment: Option<AttachmentRow>,
    /// A business's reply buttons or list (its text goes with them).
    pub interactive: Option<Box<dak_proto::v1::Interactive>>,
    /// This text answers a message's buttons or list (it is the title chosen).
    pub choice: bool,
}

/// A file as the page shows it before it is fetched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttachmentRow {
    /// "🖼 photo.jpg (1.2 MB)", "🎤 0:07 (9.0 kB)" (in no language).
    pub label: String,
    pub file_name: String,
    pub media_type: String,
    pub size: u64,
    pub voice_note: bool,
    pub duration_ms: u32,
    pub width: u32,
    pub height: u32,
    /// A small picture came with it (`fileInfo` gives its bytes).
    pub has_thumbnail: bool,
}

/// Every chat this device is in, newest first.
pub fn chat_list(profile: &Profile) -> Result<Vec<ChatRow>, ClientError> {
    let requests = dak_core::requests::message_requests(profile)?;
    // Unread messages per chat, counted once for the whole list.
    let mut unread = std::collections::HashMap::<String, usize>::new();
    for m in profile.unread()? {
        *unread.entry(m.conversation.key()).or_default() += 1;
    }
    let me = profile.registration().ok().map(|r| r.phone);
    let mut rows = Vec::new();
    for (group, peer) in profile.active_groups()? {
        let (key, title, is_group) = if is_named_group(&group) {
            let title = profile
                .group_state(&group)?
                .map(|s| s.title)
                .unwrap_or_default();
            (dak_core::group_key(&group), title, true)
        } else {
            (peer.clone(), peer, false)
        };
        let last = profile.conversation(&key, 1)?.pop();
        if last.is_none() && me.as_deref() == Some(key.as_str()) {
            // The note to self carries this account's linking and history
            // between its devices; it shows once the user writes there.
            continue;
        }
        let last_tick = match &last {
            Some(m) if m.outgoing => Some(tick_of(profile, &m.id)?.state),
            _ => None,
        };
        rows.push(ChatRow {
            unread: unread.get(&key).copied().unwrap_or(0),
            request: requests.contains_key(&key),
            last_text: last.as_ref().map(preview_text).unwrap_or_default(),
            last_outgoing: last.as_ref().is_some_and(|m| m.outgoing),
            last_deleted: last.as_ref().is_some_and(|m| m.deleted),
            last_at_ms: last.as_ref().map(MessageView::at_ms).unwrap_or(0),
            last_tick,
            timer_secs: dak_core::timer_of(profile, &key)?,
            business: if is_group {
                None
            } else {
                business_row(profile, &key)?
            },
            blocked: !is_group && dak_core::requests::is_blocked(profile, &key)?,
            key,
            title,
            is_group,
        });
    }
    rows.sort_by(|a, b| {
        b.last_at_ms
            .cmp(&a.last_at_ms)
            .then_with(|| a.key.cmp(&b.key))
    });
    Ok(rows)
}

/// The newest `limit` messages of `chat` (a key or anything
/// `Profile::resolve` takes), oldest first.
pub fn messages(
    profile: &Profile,
    chat: &str,
    limit: usize,
) -> Result<Vec<MessageRow>, ClientError> {
    let key = profile.resolve(chat)?.key();
    let now = profile.now_ms();
    profile
        .conversation(&key, limit)?
        .into_iter()
        .map(|m| {
            Ok(MessageRow {
                id: format_id(&m.id),
                tick: if m.outgoing {
                    Some(tick_of(profile, &m.id)?.state)
                } else {
                    None
                },
                reactions: profile.reactions(&m.id)?,
                from: m.from.clone(),
                outgoing: m.outgoing,
                text: shown_text(&m),
                at_ms: m.at_ms(),
                read: m.read_ms > 0,
                forwarded: m.forward_label(),
                edited: m.edited_ms > 0,
                deleted: m.deleted,
                reply_to: m.reply_to.as_ref().map(|q| q.snippet.clone()),
                can_edit: may_change(&m, now, dak_core::EDIT_WINDOW_MS),
                can_delete: may_change(&m, now, dak_core::DELETE_WINDOW_MS),
                attachment: m
                    .attachment
                    .as_ref()
                    .filter(|_| !m.deleted)
                    .map(|a| AttachmentRow {
                        label: a.label(),
                        file_name: a.file_name.clone(),
                        media_type: a.media_type.clone(),
                        size: a.size,
                        voice_note: a.voice_note,
                        duration_ms: a.duration_ms,
                        width: a.width,
                        height: a.height,
                        has_thumbnail: !a.thumbnail.is_empty(),
                    }),
                interactive: m.interactive.clone().filter(|_| !m.deleted),
                choice: m.choice.is_some(),
            })
        })
        .collect()
}

fn business_row(profile: &Profile, phone: &str) -> Result<Option<BusinessRow>, ClientError> {
    Ok(dak_core::business::cached_business(profile, phone)?
        .flatten()
        .map(|b| BusinessRow {
            verified: b.verified,
            name: if b.verified {
                b.display_name
            } else {
                String::new()
            },
            category: b.category,
            website: b.website,
        }))
}

/// Whether the page offers to edit or delete `m` (the core checks again).
fn may_change(m: &MessageView, now: i64, window_ms: i64) -> bool {
    m.outgoing && !m.deleted && now - m.at_ms() <= window_ms
}

/// A chat's last message in the list: a file shows as what it is.
fn preview_text(m: &MessageView) -> String {
    match &m.attachment {
        Some(a) if !m.deleted && m.text.is_empty() => a.label(),
        Some(a) if !m.deleted => format!("{} {}", a.label(), m.text),
        _ => shown_text(m),
    }
}

fn shown_text(m: &MessageView) -> String {
    if m.deleted {
        String::new()
    } else {
        m.text.clone()
    }
}
