//! What a user does to messages besides writing them: edit and delete
//! their own, set a chat's disappearing-message timer, forward (with
//! WhatsApp's limits against mass forwarding), and broadcast lists (one
//! text to many 1:1 chats). Every change travels as encrypted content.

use dak_proto::v1::{self, content::Kind};

use crate::ClientError;
use crate::MessageView;
use crate::client::Client;
use crate::format_id;
use crate::incoming::{DELETE_WINDOW_MS, EDIT_WINDOW_MS};
use crate::outbox::{SendOutcome, TextOptions};

/// Recipients of one broadcast list (WhatsApp's limit).
pub const MAX_BROADCAST_RECIPIENTS: usize = 256;

/// How many chats one forward may reach. WhatsApp's answer to rumours
/// spreading: a message forwarded `FREQUENTLY_FORWARDED` times or more goes
/// to one chat at a time, any other to five. The count travels inside the
/// encrypted content, so only the members' clients know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardLimits {
    pub max_chats: usize,
    pub max_chats_when_frequent: usize,
}

impl Default for ForwardLimits {
    fn default() -> Self {
        ForwardLimits {
            max_chats: 5,
            max_chats_when_frequent: 1,
        }
    }
}

fn usage(msg: impl Into<String>) -> ClientError {
    ClientError::Usage(msg.into())
}

impl Client {
    /// One of this account's messages, still there to change.
    fn own_message(
        &self,
        id: &[u8],
        window_ms: i64,
        what: &str,
    ) -> Result<MessageView, ClientError> {
        let m = self
            .profile()
            .message(id)?
            .ok_or_else(|| usage(format!("no message {} in this profile", format_id(id))))?;
        if !m.outgoing {
            return Err(usage(format!("only the sender may {what} a message")));
        }
        if m.deleted {
            return Err(usage("that message was deleted"));
        }
        let sent = m.at_ms();
        if self.profile().now_ms() - sent > window_ms {
            return Err(usage(format!(
                "a message can be {what}ed only within {} of sending",
                humantime::format_duration(std::time::Duration::from_millis(window_ms as u64))
            )));
        }
        Ok(m)
    }

    /// Replaces the text of one of our messages (within 15 minutes).
    pub async fn edit_message(
        &mut self,
        id: &[u8],
        text: &str,
    ) -> Result<SendOutcome, ClientError> {
        let m = self.own_message(id, EDIT_WINDOW_MS, "edit")?;
        let content = v1::Content {
            kind: Some(Kind::Edit(v1::Edit {
                message_id: id.to_vec(),
                body: text.into(),
            })),
        };
        let sent = self.send_content(&m.conversation, content).await?;
        self.profile().edit_message(id, text, sent.server_time_ms)?;
        Ok(sent)
    }

    /// Deletes one of our messages for everyone (within 48 hours).
    pub async fn delete_for_everyone(&mut self, id: &[u8]) -> Result<SendOutcome, ClientError> {
        let m = self.own_message(id, DELETE_WINDOW_MS, "delet")?;
        let content = v1::Content {
            kind: Some(Kind::Delete(v1::Delete {
                message_id: id.to_vec(),
            })),
        };
        let sent = self.send_content(&m.conversation, content).await?;
        self.profile().tombstone_message(id)?;
        // Its file goes from the server too, if this account uploaded it
        // (a forwarded file is someone else's: the server says not found).
        if let Some(a) = &m.attachment
            && let Err(e) = self.delete_blob(&a.blob_id).await
            && e.code() != Some(v1::ErrorCode::BlobNotFound)
        {
            tracing::warn!(error = %e, "the message was deleted; its file stays on the server until it expires");
        }
        Ok(sent)
    }

    /// Answers a message's reply buttons or list: `choice` is the number
    /// shown beside it (from 1) or its id. The answer is a text in the
    /// message's chat whose body is the choice's title, carrying a
    /// `Choice` that names the message and the id (PROTOCOL.md §16).
    pub async fn choose(
        &mut self,
        message_id: &[u8],
        choice: &str,
    ) -> Result<SendOutcome, ClientError> {
        let m = self.profile().message(message_id)?.ok_or_else(|| {
            usage(format!(
                "no message {} in this profile",
                format_id(message_id)
            ))
        })?;
        let Some(interactive) = m.interactive.as_deref().filter(|_| !m.deleted) else {
            return Err(usage("that message has no buttons or list to choose from"));
        };
        if m.outgoing {
            return Err(usage("that message's choices are for its recipients"));
        }
        let choices = interactive.choices();
        let (id, title) = choice
            .parse::<usize>()
            .ok()
            .and_then(|n| n.checked_sub(1))
            .and_then(|i| choices.get(i).copied())
            .or_else(|| choices.iter().find(|(id, _)| *id == choice).copied())
            .ok_or_else(|| {
                usage(format!(
                    "no choice {choice:?}: give a number from 1 to {} or a choice's id",
                    choices.len()
                ))
            })?;
        let opts = TextOptions {
            choice: Some(v1::Choice {
                message_id: message_id.to_vec(),
                id: id.to_string(),
            }),
            ..Default::default()
        };
        let (title, key) = (title.to_string(), m.conversation.key());
        self.send_text_with(&key, &title, &opts).await
    }

    /// Sets a chat's disappearing-message timer (0 turns it off). In a
    /// group it is a group setting (see `update_group`).
    pub async fn set_timer(&mut self, conversation: &str, secs: u32) -> Result<(), ClientError> {
        let conversation = self.profile().resolve(conversation)?;
        if conversation.is_group() {
            return self
                .update_group(
                    &conversation.key(),
                    crate::groups::GroupEdit {
                        expire_secs: Some(secs),
                        ..Default::default()
                    },
                )
                .await;
        }
        let content = v1::Content {
            kind: Some(Kind::SetTimer(v1::SetTimer { expire_secs: secs })),
        };
        self.send_content(&conversation, content).await?;
        self.profile().set_chat_timer(&conversation.key(), secs)
    }

    /// Forwards a message to several chats, labelled as forwarded, within
    /// `limits`. All targets are checked before anything is sent.
    pub async fn forward(
        &mut self,
        id: &[u8],
        targets: &[String],
        limits: ForwardLimits,
    ) -> Result<Vec<SendOutcome>, ClientError> {
        let m = self
            .profile()
            .message(id)?
            .filter(|m| !m.deleted)
            .ok_or_else(|| usage(format!("no message {} to forward", format_id(id))))?;
        let frequent = m.forwarded >= crate::FREQUENTLY_FORWARDED;
        let max = if frequent {
            limits.max_chats_when_frequent
        } else {
            limits.max_chats
        };
        let mut chats = Vec::new();
        for t in targets {
            let c = self.profile().resolve(t)?;
            if !chats.contains(&c) {
                chats.push(c);
            }
        }
        if chats.is_empty() {
            return Err(usage("say which chats to forward to"));
        }
        if chats.len() > max {
            return Err(usage(if frequent {
                format!(
                    "this message was forwarded many times: it can be forwarded to {max} chat at a time"
                )
            } else {
                format!("a message can be forwarded to at most {max} chats at a time")
            }));
        }
        // A file goes as the same blob: nothing is uploaded again.
        let opts = TextOptions {
            reply_to: None,
            forwarded: m.forwarded.saturating_add(1),
            attachment: m.attachment.clone(),
            // Buttons are for the chat they were sent to: a forward
            // carries the text only, as WhatsApp's does.
            ..Default::default()
        };
        let mut sent = Vec::new();
        for c in chats {
            sent.push(self.send_text_with(&c.key(), &m.text, &opts).await?);
        }
        Ok(sent)
    }

    /// Sends one text to each member of a broadcast list, each in their
    /// own 1:1 chat (they see an ordinary message).
    pub async fn broadcast(
        &mut self,
        list: &str,
        text: &str,
    ) -> Result<Vec<SendOutcome>, ClientError> {
        let members = self
            .profile()
            .broadcast_lists()?
            .into_iter()
            .find(|(name, _)| name == list)
            .map(|(_, m)| m)
            .ok_or_else(|| {
                usage(format!(
                    "no broadcast list {list:?} (see `dak broadcast list`)"
                ))
            })?;
        let mut sent = Vec::new();
        for phone in members {
            sent.push(self.send_text(&phone, text).await?);
        }
        Ok(sent)
    }
}

/// Creates or replaces a broadcast list.
pub fn save_broadcast_list(
    profile: &crate::Profile,
    name: &str,
    phones: &[String],
) -> Result<Vec<String>, ClientError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(usage("a broadcast list needs a name"));
    }
    let mut members = Vec::new();
    for p in phones {
        let p = dak_proto::normalize_phone(p)
            .map_err(|e| usage(format!("{p:?} is not a phone number: {e}")))?;
        if !members.contains(&p) {
            members.push(p);
        }
    }
    if members.is_empty() || members.len() > MAX_BROADCAST_RECIPIENTS {
        return Err(usage(format!(
            "a broadcast list has 1 to {MAX_BROADCAST_RECIPIENTS} numbers"
        )));
    }
    profile.set_broadcast_list(name, &members)?;
    Ok(members)
}
