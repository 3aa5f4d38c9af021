//! Recent history for a newly linked device, as WhatsApp gives its
//! companion devices. The device that approves a link (`share_history`):
//! 1. waits until the new device has uploaded its KeyPackages, and adds it
//!    to the account's note-to-self conversation;
//! 2. adds it at once to each recent conversation (instead of at the next
//!    message someone sends there), so the new device holds every group it
//!    will show, with the title and admins a named group reshares;
//! 3. sends it the last messages of each of those chats, with their ticks
//!    and reactions, as `HistoryBundle` parts in the note-to-self
//!    conversation. Only this account's devices are in it, so the server
//!    relays ciphertext it cannot tell from a note to self.
//!
//! Invariants:
//! - A bundle is taken only from this account's own devices, in the
//!   note-to-self conversation, only by the device it names (the account's
//!   other devices drop it), and only by a device that was linked (not
//!   registered) and within `HISTORY_WINDOW` of its linking, by the
//!   server's time of the part. So a device of the account cannot rewrite
//!   another's history later; and in a 1:1 chat a message's sender must be
//!   this account or the contact.
//! - Import never overwrites: a message this device already holds (it came
//!   the normal way) is kept as it is. A deletion for everyone that reached
//!   this device before the message it deletes (the new device is in the
//!   chat before its history arrives) is remembered during the window and
//!   applied when the message is imported.
//! - Each part is one message body (`PART_BYTES`); a chat continues in the
//!   next part rather than losing messages. A message too large for a part
//!   goes without its receipts and reactions, and if even that does not
//!   fit (a text at the size limit) it is left out and counted.
//! - Bundles go through the outbox, so a lost connection sends them later.

use dak_proto::v1::{self, content::Kind};
use prost::Message as _;

use crate::ClientError;
use crate::ConversationId;
use crate::client::Client;
use crate::events::Event;
use crate::format_id;
use crate::{MessageView, Profile, Quote};

/// How much history a new device gets. WhatsApp gives companions the
/// recent months; a count is what a user can reason about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// The most recent chats (by their last message).
    pub chats: usize,
    /// The last messages of each chat.
    pub messages_per_chat: usize,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        HistoryLimits {
            chats: 100,
            messages_per_chat: 100,
        }
    }
}

/// What `share_history` sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct HistoryShared {
    pub chats: usize,
    pub messages: usize,
    pub parts: usize,
    /// Messages too large for a part even without their receipts.
    pub left_out: usize,
}

/// How long after its linking a device takes history, by the server's time
/// of each part: the approving device sends it right away, and a device
/// that was offline since still gets it from its mailbox later.
pub const HISTORY_WINDOW_MS: i64 = 60 * 60 * 1000;
/// Where a linked device keeps when it was linked (its own clock).
const LINKED_AT: &str = "history.linked_at_ms";
/// Slack for the difference between this device's clock and the server's.
const CLOCK_SLACK_MS: i64 = 10 * 60 * 1000;

/// Marks a just-linked device as expecting history (see `HISTORY_WINDOW_MS`).
pub(crate) fn expect_history(profile: &Profile) -> Result<(), ClientError> {
    profile.set(LINKED_AT, profile.now_ms().to_string().as_bytes())
}

/// Whether a part the server stored at `server_time_ms` is in this
/// device's window for history.
pub(crate) fn in_window(p: &Profile, server_time_ms: i64) -> Result<bool, ClientError> {
    let Some(linked) = p.get_str(LINKED_AT)?.and_then(|s| s.parse::<i64>().ok()) else {
        return Ok(false);
    };
    Ok(server_time_ms >= linked - CLOCK_SLACK_MS
        && server_time_ms <= linked + HISTORY_WINDOW_MS + CLOCK_SLACK_MS)
}

/// A deletion for everyone of a message this device does not hold, kept
/// while history may still bring that message.
pub(crate) fn remember_deletion(p: &Profile, id: &[u8], by: &str) -> Result<(), ClientError> {
    p.set(&deletion_key(id), by.as_bytes())
}

fn deletion_key(id: &[u8]) -> String {
    format!("history.deleted.{}", hex::encode(id))
}

/// The most a part's encoded content may take: one message body, with room
/// for the part numbers written after packing.
const PART_BYTES: usize = crate::outbox::MAX_PLAINTEXT_BYTES - 64;

/// How long the approving device waits for the new one's KeyPackages.
const NEW_DEVICE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);
const NEW_DEVICE_POLL: std::time::Duration = std::time::Duration::from_millis(500);

impl Client {
    /// Gives the newly linked `device` this account's recent chats and
    /// their last messages (see the module comment). Call it right after
    /// `approve_link`.
    pub async fn share_history(
        &mut self,
        device: u64,
        limits: HistoryLimits,
    ) -> Result<HistoryShared, ClientError> {
        let me = ConversationId::Direct(self.reg.phone.clone());
        self.add_new_device(&me, device).await?;
        let chats = recent_chats(&self.profile, limits.chats)?;
        for (group, key) in &chats {
            if let Err(e) = self.reconcile(group).await {
                // It joins there with the next message anyone sends.
                tracing::warn!(conversation = %key, error = %e, "the new device was not added to a conversation now");
            }
        }
        self.run_work().await;
        let (parts, left_out) = pack(
            &self.profile,
            device,
            chats.iter().map(|(_, key)| key.as_str()),
            limits.messages_per_chat,
        )?;
        let shared = HistoryShared {
            chats: chats.len(),
            messages: parts
                .iter()
                .flat_map(|p| &p.chats)
                .map(|c| c.messages.len())
                .sum(),
            parts: parts.len(),
            left_out,
        };
        for part in parts {
            let content = v1::Content {
                kind: Some(Kind::History(part)),
            };
            self.send_content(&me, content).await?;
        }
        Ok(shared)
    }

    /// Waits until `device` has KeyPackages and is in the note-to-self
    /// conversation `me` (creating that conversation if this account has none).
    async fn add_new_device(
        &mut self,
        me: &ConversationId,
        device: u64,
    ) -> Result<(), ClientError> {
        let deadline = self.profile.now_ms() + NEW_DEVICE_WAIT.as_millis() as i64;
        loop {
            let group = self.group_with(me).await?;
            self.reconcile(&group).await?;
            let members = self.profile.mls(|m| m.members(&group))?;
            if members
                .iter()
                .any(|m| m.phone == self.reg.phone && m.device_id == device)
            {
                return Ok(());
            }
            if self.profile.now_ms() > deadline {
                return Err(ClientError::Timeout(format!(
                    "device {device} did not come online to receive the history; it gets new messages only"
                )));
            }
            self.profile.env().sleep(NEW_DEVICE_POLL).await;
        }
    }
}

/// This device's chats with their last message, newest first, at most `n`
/// (the note to self among them when it holds messages).
fn recent_chats(profile: &Profile, n: usize) -> Result<Vec<(Vec<u8>, String)>, ClientError> {
    let mut chats = Vec::new();
    for (group, peer) in profile.active_groups()? {
        let key = if crate::mls::is_named_group(&group) {
            crate::group_key(&group)
        } else {
            peer
        };
        let Some(last) = profile.conversation(&key, 1)?.pop() else {
            continue;
        };
        chats.push((last.at_ms(), group, key));
    }
    chats.sort_by_key(|c| std::cmp::Reverse(c.0));
    Ok(chats
        .into_iter()
        .take(n)
        .map(|(_, group, key)| (group, key))
        .collect())
}

/// The chats' last messages as bundle parts for `device`, each within
/// `PART_BYTES`, and how many messages did not fit even alone.
fn pack<'a>(
    profile: &Profile,
    device: u64,
    chats: impl Iterator<Item = &'a str>,
    messages_per_chat: usize,
) -> Result<(Vec<v1::HistoryBundle>, usize), ClientError> {
    let mut left_out = 0;
    let empty = || v1::HistoryBundle {
        for_device: device,
        part: 0,
        parts: 0,
        chats: Vec::new(),
    };
    // Whether `m` still fits `part` (8 bytes: its tag and length prefixes).
    let fits = |part: &v1::HistoryBundle, m: &v1::HistoryMessage| {
        part.encoded_len() + m.encoded_len() + 8 <= PART_BYTES
    };
    let mut parts = vec![empty()];
    for key in chats {
        let timer_secs = profile.chat_timer(key)?;
        let chat = || v1::HistoryChat {
            conversation: key.to_string(),
            timer_secs,
            messages: Vec::new(),
        };
        let mut open = false;
        for m in profile.conversation(key, messages_per_chat)? {
            let mut m = history_message(profile, &m)?;
            let part = parts.last_mut().expect("there is always a part");
            if !open {
                part.chats.push(chat());
                open = true;
            }
            if !fits(part, &m) {
                if part.chats.last().is_some_and(|c| c.messages.is_empty()) {
                    part.chats.pop();
                }
                if !part.chats.is_empty() {
                    parts.push(empty());
                }
                let part = parts.last_mut().expect("just pushed");
                part.chats.push(chat());
                if !fits(part, &m) {
                    // A big group's per-device receipts: the text matters more.
                    m.receipts.clear();
                    m.reactions.clear();
                }
                if !fits(part, &m) {
                    tracing::warn!(id = %format_id(&m.id), "a message too large for a history part was left out");
                    left_out += 1;
                    continue;
                }
            }
            let part = parts.last_mut().expect("there is always a part");
            part.chats
                .last_mut()
                .expect("a chat is open")
                .messages
                .push(m);
        }
    }
    parts.retain(|p| p.chats.iter().any(|c| !c.messages.is_empty()));
    let n = parts.len() as u32;
    for (i, p) in parts.iter_mut().enumerate() {
        p.part = i as u32 + 1;
        p.parts = n;
    }
    Ok((parts, left_out))
}

fn history_message(profile: &Profile, m: &MessageView) -> Result<v1::HistoryMessage, ClientError> {
    let receipts = if m.outgoing {
        profile
            .recipients(&m.id)?
            .into_iter()
            .map(|r| v1::HistoryReceipt {
                phone: r.phone,
                device_id: r.device_id,
                delivered_ms: r.delivered_ms,
                read_ms: r.read_ms,
            })
            .collect()
    } else {
        Vec::new()
    };
    Ok(v1::HistoryMessage {
        id: m.id.clone(),
        sender_phone: m.from.clone(),
        sender_device: m.from_device,
        body: m.text.clone(),
        sent_at_ms: m.sent_at_ms,
        server_time_ms: m.server_time_ms,
        read_ms: m.read_ms,
        reply_to: m.reply_to.as_ref().map(|q| v1::Quote {
            message_id: q.id.clone(),
            sender_phone: q.from.clone(),
            snippet: q.snippet.clone(),
        }),
        forwarded: m.forwarded,
        attachment: m.attachment.as_ref().map(|a| a.to_proto()),
        interactive: m.interactive.clone(),
        choice: m.choice.clone(),
        edited_ms: m.edited_ms,
        deleted: m.deleted,
        expires_at_ms: m.expires_at_ms,
        pending: m.outgoing && !m.acked,
        receipts,
        reactions: profile
            .reactions(&m.id)?
            .into_iter()
            .map(|(phone, emoji)| v1::HistoryReaction { phone, emoji })
            .collect(),
    })
}

/// Stores a bundle part from `from_device` (another device of this
/// account, `me`), keeping whatever this device already holds. Inside the
/// batch's transaction.
pub(crate) fn import(
    p: &Profile,
    me: &str,
    from_device: u64,
    bundle: v1::HistoryBundle,
) -> Result<Event, ClientError> {
    let mut chats = 0;
    let mut messages = 0;
    for chat in bundle.chats {
        let conversation = match (
            dak_proto::normalize_phone(&chat.conversation),
            crate::parse_group_key(&chat.conversation),
        ) {
            (Ok(phone), _) => Some(ConversationId::Direct(phone)),
            (_, Some(group)) => Some(ConversationId::Group(group)),
            _ => None,
        };
        let Some(conversation) = conversation else {
            tracing::warn!(conversation = %chat.conversation, "a history chat with an unreadable name was skipped");
            continue;
        };
        let key = conversation.key();
        chats += 1;
        if chat.timer_secs > 0 && !conversation.is_group() && p.chat_timer(&key)? == 0 {
            p.set_chat_timer(&key, chat.timer_secs)?;
        }
        for h in chat.messages {
            if p.message(&h.id)?.is_some() {
                continue;
            }
            let outgoing = h.sender_phone == me;
            // In a 1:1 chat only its two accounts write.
            if let ConversationId::Direct(peer) = &conversation
                && !outgoing
                && h.sender_phone != *peer
            {
                tracing::warn!(conversation = %key, "a history message from outside its chat was skipped");
                continue;
            }
            let deleted_meanwhile = p
                .get_str(&deletion_key(&h.id))?
                .is_some_and(|by| by == h.sender_phone);
            let deleted = h.deleted || deleted_meanwhile;
            let view = MessageView {
                id: h.id,
                conversation: conversation.clone(),
                from: h.sender_phone,
                from_device: h.sender_device,
                outgoing,
                text: if deleted { String::new() } else { h.body },
                sent_at_ms: h.sent_at_ms,
                server_time_ms: h.server_time_ms,
                // Ours and still queued on the sending device: 🕓 here too
                // until that device's send is confirmed by receipts.
                acked: outgoing && !h.pending,
                read_ms: h.read_ms,
                reply_to: h.reply_to.map(|q| Quote {
                    id: q.message_id,
                    from: q.sender_phone,
                    snippet: q.snippet,
                }),
                forwarded: h.forwarded,
                attachment: if deleted {
                    None
                } else {
                    h.attachment
                        .map(|a| Box::new(crate::Attachment::from_proto(a)))
                },
                interactive: if deleted { None } else { h.interactive },
                choice: h.choice,
                edited_ms: h.edited_ms,
                deleted,
                expires_at_ms: h.expires_at_ms,
            };
            p.insert_message(&view)?;
            if outgoing {
                for r in h.receipts {
                    p.add_recipient(&view.id, &r.phone, r.device_id)?;
                    if r.delivered_ms > 0 {
                        p.update_receipt(&view.id, r.device_id, false, r.delivered_ms)?;
                    }
                    if r.read_ms > 0 {
                        p.update_receipt(&view.id, r.device_id, true, r.read_ms)?;
                    }
                }
            }
            for r in h.reactions {
                p.set_reaction(&view.id, &r.phone, &r.emoji, view.server_time_ms)?;
            }
            messages += 1;
        }
    }
    Ok(Event::History {
        from_device,
        part: bundle.part,
        parts: bundle.parts,
        chats,
        messages,
    })
}
