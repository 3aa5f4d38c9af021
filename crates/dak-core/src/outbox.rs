//! The outbox: what the user sends is stored (with its message row) before it
//! is sent, and leaves only on the server's ack or a permanent refusal.
//! Texts, replies, forwards, reactions, receipts and group state all go
//! through `push_outgoing`.

use crate::ClientError;
use crate::ConversationId;
use crate::OutboxEntry;
use crate::client::Client;
use crate::format_id;
use crate::ids::phone;
use crate::{MessageView, Profile, Quote, parse_group_key, ser_id};
use dak_proto::v1::{self, content::Kind};
use prost::Message;
use serde::Serialize;
use std::collections::BTreeMap;

/// Largest encoded content: MLS adds a header, a signature and the AEAD tag
/// (about 150 bytes), and the ciphertext must fit the server's body limit.
pub(crate) const MAX_PLAINTEXT_BYTES: usize = dak_proto::MAX_BODY_BYTES - 1024;

#[derive(Debug, Clone, Serialize)]
pub struct SendOutcome {
    #[serde(serialize_with = "ser_id")]
    pub id: Vec<u8>,
    pub server_time_ms: i64,
    pub recipient_devices: usize,
}

pub(crate) fn queue_receipts(
    p: &Profile,
    kind: v1::ReceiptType,
    by_sender: BTreeMap<String, Vec<Vec<u8>>>,
) -> Result<Vec<OutboxEntry>, ClientError> {
    let mut queued = Vec::new();
    // What this device was told by the operator, for the other side to
    // compare (notices.rs, "gossip").
    let (notice_log_length, head) = crate::notices::log_state(p)?;
    let notice_log_head = if notice_log_length > 0 {
        head.to_vec()
    } else {
        Vec::new()
    };
    for (to, ids) in by_sender {
        for chunk in ids.chunks(256) {
            let content = v1::Content {
                kind: Some(Kind::Receipt(v1::Receipt {
                    r#type: kind as i32,
                    message_ids: chunk.to_vec(),
                    notice_log_length,
                    notice_log_head: notice_log_head.clone(),
                })),
            };
            let id = p.new_message_id();
            let body = content.encode_to_vec();
            p.queue_outgoing(&id, &to, &body)?;
            queued.push((id, to.clone(), body));
        }
    }
    Ok(queued)
}

/// What a text carries besides its words.
#[derive(Debug, Clone, Default)]
pub struct TextOptions {
    /// The message it replies to (it quotes it).
    pub reply_to: Option<Vec<u8>>,
    /// Times it was forwarded before (see `Client::forward`).
    pub forwarded: u32,
    /// A file already uploaded (`Client::create_blob`); the text is its caption.
    pub attachment: Option<Box<crate::Attachment>>,
    /// Reply buttons or a list (a business's message); the text goes with them.
    pub interactive: Option<Box<v1::Interactive>>,
    /// The answer to a message's buttons or list; the text is the title
    /// chosen (`Client::choose` fills both).
    pub choice: Option<v1::Choice>,
}

/// Stores a text as the user's and puts it in the outbox (🕓), without a
/// connection: it leaves with the next `connect`. Returns the outbox entry.
pub fn queue_text(profile: &Profile, to: &str, text: &str) -> Result<OutboxEntry, ClientError> {
    queue_text_with(profile, to, text, &TextOptions::default())
}

/// `queue_text` with a reply or a forward count. `to` is a number or a
/// group (see `Profile::resolve`).
pub fn queue_text_with(
    profile: &Profile,
    to: &str,
    text: &str,
    opts: &TextOptions,
) -> Result<OutboxEntry, ClientError> {
    let reg = profile.registration()?;
    let to = profile.resolve(to)?;
    crate::requests::accept_by_writing(profile, &to)?;
    let id = profile.new_message_id();
    let sent_at_ms = profile.now_ms();
    let reply_to = opts
        .reply_to
        .as_ref()
        .map(|q| quote_of(profile, q))
        .transpose()?;
    let expire_secs = timer_of(profile, &to.key())?;
    let content = v1::Content {
        kind: Some(Kind::Text(v1::Text {
            body: text.into(),
            sent_at_ms,
            reply_to: reply_to.clone().map(|q| v1::Quote {
                message_id: q.id,
                sender_phone: q.from,
                snippet: q.snippet,
            }),
            forwarded: opts.forwarded,
            expire_secs,
            attachment: opts.attachment.as_ref().map(|a| a.to_proto()),
            interactive: opts.interactive.clone(),
            choice: opts.choice.clone().map(Box::new),
        })),
    };
    // The receiver's rules, so an honest message is never refused there.
    dak_proto::content::validate_content(&content)
        .map_err(|e| ClientError::Usage(e.to_string()))?;
    let body = content.encode_to_vec();
    check_plaintext_size(&body)?;
    let view = MessageView {
        id: id.clone(),
        conversation: to.clone(),
        from: reg.phone,
        from_device: reg.device_id,
        outgoing: true,
        text: text.into(),
        sent_at_ms,
        reply_to,
        forwarded: opts.forwarded,
        attachment: opts.attachment.clone(),
        interactive: opts.interactive.clone(),
        choice: opts.choice.clone().map(Box::new),
        expires_at_ms: if expire_secs > 0 {
            sent_at_ms + expire_secs as i64 * 1000
        } else {
            0
        },
        ..Default::default()
    };
    profile.transaction(|p| {
        p.insert_message(&view)?;
        p.queue_outgoing(&id, &to.key(), &body)
    })?;
    Ok((id, to.key(), body))
}

pub(crate) fn check_plaintext_size(body: &[u8]) -> Result<(), ClientError> {
    if body.len() > MAX_PLAINTEXT_BYTES {
        return Err(ClientError::Usage(format!(
            "the message is {} bytes; the limit is {MAX_PLAINTEXT_BYTES} bytes",
            body.len(),
        )));
    }
    Ok(())
}

/// How much of a quoted text a reply carries.
pub(crate) use dak_proto::content::QUOTE_CHARS;

pub(crate) fn quote_of(profile: &Profile, id: &[u8]) -> Result<Quote, ClientError> {
    match profile.message(id)? {
        Some(m) if !m.deleted => Ok(Quote {
            id: id.to_vec(),
            from: m.from,
            snippet: m.text.chars().take(QUOTE_CHARS).collect(),
        }),
        _ => Err(ClientError::Usage(format!(
            "no message {} to reply to in this profile",
            format_id(id)
        ))),
    }
}

/// The conversation's disappearing-message timer in seconds (0: off).
pub fn timer_of(profile: &Profile, conversation: &str) -> Result<u32, ClientError> {
    if parse_group_key(conversation).is_none() {
        return profile.chat_timer(conversation);
    }
    let Some(group) = profile.group_for(conversation)? else {
        return Ok(0);
    };
    Ok(profile
        .group_state(&group)?
        .map(|s| s.expire_secs)
        .unwrap_or(0))
}

/// The disappearing-message time a content asks the server for.
pub(crate) fn expires_in(plaintext: &[u8]) -> u32 {
    match dak_proto::decode_content(plaintext) {
        Ok(v1::Content {
            kind: Some(Kind::Text(t)),
        }) => t.expire_secs,
        _ => 0,
    }
}

impl Client {
    /// Sends a text. Returns once the server has acknowledged it (✓).
    pub async fn send_text(&mut self, to: &str, text: &str) -> Result<SendOutcome, ClientError> {
        self.send_text_with(to, text, &TextOptions::default()).await
    }

    /// Sends a text that replies to a message or is forwarded.
    pub async fn send_text_with(
        &mut self,
        to: &str,
        text: &str,
        opts: &TextOptions,
    ) -> Result<SendOutcome, ClientError> {
        let entry = queue_text_with(&self.profile, to, text, opts)?;
        self.send_queued(entry).await
    }

    /// Sends, now, an entry that `queue_text_with` put in the outbox: the
    /// second half of `send_text_with`, for a front end that must know the
    /// message's id even when the send fails (`dak bot serve`).
    pub async fn send_queued(&mut self, entry: OutboxEntry) -> Result<SendOutcome, ClientError> {
        let (id, to, body) = entry;
        let ack = self
            .push_outgoing(&id, &ConversationId::from_key(&to), body)
            .await?;
        Ok(SendOutcome {
            id,
            server_time_ms: ack.server_time_ms,
            recipient_devices: ack.recipients.len(),
        })
    }

    /// Sends one outbox entry; on a permanent refusal it leaves the outbox.
    pub(crate) async fn push_outgoing(
        &mut self,
        id: &[u8],
        to: &ConversationId,
        body: Vec<u8>,
    ) -> Result<v1::SendAck, ClientError> {
        let ack = match self.send_encrypted(id, to, &body).await {
            Ok(ack) => ack,
            Err(e) => {
                if !e.is_retryable() && matches!(e, ClientError::Server(_)) {
                    // Refused for good (unknown number, too large): it will never
                    // be sent, so it is not kept as if it were waiting.
                    self.profile.transaction(|p| {
                        p.remove_outgoing(id)?;
                        p.delete_message(id)
                    })?;
                }
                return Err(e);
            }
        };
        self.profile.transaction(|p| {
            // Receipts have no message row; their recipients are never shown.
            if p.mark_acked(id, ack.server_time_ms)? {
                for r in &ack.recipients {
                    p.add_recipient(id, &r.phone, r.device_id)?;
                }
            }
            p.remove_outgoing(id)
        })?;
        self.run_work().await;
        Ok(ack)
    }

    /// Sends a named group's settings again (to devices just added).
    pub(crate) async fn reshare_state(&mut self, group: &[u8]) -> Result<(), ClientError> {
        let Some(state) = self.profile.group_state(group)? else {
            return Ok(());
        };
        let content = v1::Content {
            kind: Some(Kind::GroupState(state)),
        };
        self.send_content(&ConversationId::Group(group.to_vec()), content)
            .await
            .map(|_| ())
    }

    /// Sends everything queued and not yet acked, oldest first.
    pub async fn flush_outbox(&mut self) -> Result<usize, ClientError> {
        let items = self.profile.outbox()?;
        let n = items.len();
        for (id, to, body) in items {
            match self
                .push_outgoing(&id, &ConversationId::from_key(&to), body)
                .await
            {
                Ok(_) => {}
                Err(e) if e.is_retryable() => return Err(e),
                Err(e) => {
                    tracing::warn!(id = %format_id(&id), error = %e, "an outbox entry could not be sent now; it stays queued unless the server refused it for good")
                }
            }
        }
        Ok(n)
    }

    /// Sends receipts through the outbox: queued first, so a failure to
    /// send now means they go out on the next connection.
    pub(crate) async fn send_receipts(
        &mut self,
        kind: v1::ReceiptType,
        by_sender: BTreeMap<String, Vec<Vec<u8>>>,
    ) -> Result<(), ClientError> {
        let queued = self
            .profile
            .transaction(|p| queue_receipts(p, kind, by_sender))?;
        self.push_queued(queued).await
    }

    pub(crate) async fn push_queued(
        &mut self,
        queued: Vec<OutboxEntry>,
    ) -> Result<(), ClientError> {
        for (id, to, body) in queued {
            self.push_outgoing(&id, &ConversationId::from_key(&to), body)
                .await?;
        }
        Ok(())
    }

    /// Sends a reaction to a message in the conversation `to` (a number or a group).
    pub async fn react(
        &mut self,
        to: &str,
        message_id: &[u8],
        emoji: &str,
    ) -> Result<SendOutcome, ClientError> {
        let to = self.profile.resolve(to)?;
        let content = v1::Content {
            kind: Some(Kind::Reaction(v1::Reaction {
                message_id: message_id.to_vec(),
                emoji: emoji.into(),
            })),
        };
        let sent = self.send_content(&to, content).await?;
        self.profile
            .set_reaction(message_id, &self.reg.phone, emoji, sent.server_time_ms)?;
        Ok(sent)
    }

    /// Sends receipts of `kind` for `ids` to `to` (a sender).
    pub async fn send_receipt(
        &mut self,
        to: &str,
        kind: v1::ReceiptType,
        ids: Vec<Vec<u8>>,
    ) -> Result<(), ClientError> {
        let to = phone(to)?;
        self.send_receipts(kind, BTreeMap::from([(to, ids)])).await
    }

    /// Sends content that has no message row (through the outbox).
    pub(crate) async fn send_content(
        &mut self,
        to: &ConversationId,
        content: v1::Content,
    ) -> Result<SendOutcome, ClientError> {
        let id = self.profile.new_message_id();
        let body = content.encode_to_vec();
        check_plaintext_size(&body)?;
        self.profile.queue_outgoing(&id, &to.key(), &body)?;
        let ack = self.push_outgoing(&id, to, body).await?;
        Ok(SendOutcome {
            id,
            server_time_ms: ack.server_time_ms,
            recipient_devices: ack.recipients.len(),
        })
    }
}
