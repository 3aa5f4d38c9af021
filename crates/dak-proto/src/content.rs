//! The rules every `Content` must keep, checked by the receiver after it
//! decrypts (`decode_content`) and met by every honest sender: a modified
//! client can encrypt anything, so a device never stores or shows a field
//! past these limits. The sender's own checks are the same numbers
//! (re-exported by dak-core), so an honest message is never refused.
//!
//! Limits are in bytes unless named `_CHARS` (Unicode scalar values).

use crate::invite::{INVITE_SECRET_BYTES, NAMED_GROUP_ID_BYTES};
use crate::v1::{self, content::Kind};
use crate::{FrameError, MAX_SHORT_TEXT, MESSAGE_ID_BYTES};

/// A group's title, description and avatar.
pub const MAX_TITLE_CHARS: usize = 100;
pub const MAX_DESCRIPTION_CHARS: usize = 512;
/// An avatar travels inside the group's state, which must fit one message.
pub const MAX_AVATAR_BYTES: usize = 48 * 1024;
/// Admins a group state may name (one per member account at most).
pub const MAX_ADMINS: usize = 1024;
/// Message ids in one receipt (senders send them in chunks of this many).
pub const MAX_RECEIPT_IDS: usize = 256;
/// A reply quotes the first this many characters of what it answers.
pub const QUOTE_CHARS: usize = 100;
/// A chat's name in a history bundle: a number or `group:` and 64 hex digits.
pub const MAX_CONVERSATION_KEY_BYTES: usize = 6 + 2 * crate::MAX_GROUP_ID_BYTES;

fn bad(what: impl Into<String>) -> FrameError {
    FrameError::invalid(v1::ErrorCode::BadRequest, what)
}

fn id(name: &str, v: &[u8]) -> Result<(), FrameError> {
    if v.len() != MESSAGE_ID_BYTES {
        return Err(bad(format!("{name} must be {MESSAGE_ID_BYTES} bytes")));
    }
    Ok(())
}

fn bytes_at_most(name: &str, v: usize, max: usize) -> Result<(), FrameError> {
    if v > max {
        return Err(bad(format!("{name} is longer than {max} bytes")));
    }
    Ok(())
}

fn chars_at_most(name: &str, v: &str, max: usize) -> Result<(), FrameError> {
    // Bytes bound chars from above (4 per char), so a long string is refused
    // without counting it.
    if v.len() > max * 4 || v.chars().count() > max {
        return Err(bad(format!("{name} is longer than {max} characters")));
    }
    Ok(())
}

fn quote(q: &v1::Quote) -> Result<(), FrameError> {
    id("reply_to.message_id", &q.message_id)?;
    bytes_at_most(
        "reply_to.sender_phone",
        q.sender_phone.len(),
        MAX_SHORT_TEXT,
    )?;
    chars_at_most("reply_to.snippet", &q.snippet, QUOTE_CHARS)
}

/// Buttons or a list with their text, or an answer to them; one text is
/// never both.
fn interactive(
    body: &str,
    i: Option<&v1::Interactive>,
    c: Option<&v1::Choice>,
) -> Result<(), FrameError> {
    use crate::interactive as ia;
    match (i, c) {
        (Some(_), Some(_)) => Err(bad("a text is buttons or an answer to them, not both")),
        (Some(i), None) => {
            ia::validate_interactive(i)?;
            ia::validate_interactive_body(body)
        }
        (None, Some(c)) => ia::validate_choice(c),
        (None, None) => Ok(()),
    }
}

/// Whether a decoded `Content` keeps the limits above.
pub fn validate_content(c: &v1::Content) -> Result<(), FrameError> {
    match &c.kind {
        // A kind this build does not know (from a newer client): the caller
        // counts it and shows nothing; not an error here.
        None => Ok(()),
        Some(Kind::Text(t)) => {
            t.reply_to.as_ref().map_or(Ok(()), quote)?;
            t.attachment
                .as_ref()
                .map_or(Ok(()), crate::blob::validate_attachment)?;
            interactive(&t.body, t.interactive.as_deref(), t.choice.as_deref())
        }
        Some(Kind::History(h)) => {
            if h.part == 0 || h.part > h.parts {
                return Err(bad("a history part is numbered 1 to its count of parts"));
            }
            for chat in &h.chats {
                bytes_at_most(
                    "history conversation",
                    chat.conversation.len(),
                    MAX_CONVERSATION_KEY_BYTES,
                )?;
                for m in &chat.messages {
                    id("history message id", &m.id)?;
                    bytes_at_most("history sender", m.sender_phone.len(), MAX_SHORT_TEXT)?;
                    m.reply_to.as_ref().map_or(Ok(()), quote)?;
                    m.attachment
                        .as_ref()
                        .map_or(Ok(()), crate::blob::validate_attachment)?;
                    interactive(&m.body, m.interactive.as_deref(), m.choice.as_deref())?;
                    for r in &m.receipts {
                        bytes_at_most("history receipt phone", r.phone.len(), MAX_SHORT_TEXT)?;
                    }
                    for r in &m.reactions {
                        bytes_at_most("history reaction phone", r.phone.len(), MAX_SHORT_TEXT)?;
                        bytes_at_most("history reaction emoji", r.emoji.len(), MAX_SHORT_TEXT)?;
                    }
                }
            }
            Ok(())
        }
        Some(Kind::Receipt(r)) => {
            if r.message_ids.is_empty() || r.message_ids.len() > MAX_RECEIPT_IDS {
                return Err(bad(format!(
                    "a receipt names 1 to {MAX_RECEIPT_IDS} messages"
                )));
            }
            if !(r.notice_log_head.is_empty()
                || r.notice_log_head.len() == crate::notices::NOTICE_HASH_BYTES)
            {
                return Err(bad("a receipt's notice log head is 32 bytes or none"));
            }
            r.message_ids.iter().try_for_each(|m| id("receipt id", m))
        }
        Some(Kind::Reaction(r)) => {
            id("reaction.message_id", &r.message_id)?;
            bytes_at_most("reaction.emoji", r.emoji.len(), MAX_SHORT_TEXT)
        }
        Some(Kind::GroupState(s)) => {
            chars_at_most("title", &s.title, MAX_TITLE_CHARS)?;
            chars_at_most("description", &s.description, MAX_DESCRIPTION_CHARS)?;
            bytes_at_most("avatar", s.avatar.len(), MAX_AVATAR_BYTES)?;
            if s.admins.len() > MAX_ADMINS {
                return Err(bad(format!("more than {MAX_ADMINS} admins")));
            }
            s.admins
                .iter()
                .try_for_each(|a| bytes_at_most("admin", a.len(), MAX_SHORT_TEXT))?;
            if !s.invite_secret.is_empty() && s.invite_secret.len() != INVITE_SECRET_BYTES {
                return Err(bad(format!(
                    "invite_secret must be empty or {INVITE_SECRET_BYTES} bytes"
                )));
            }
            bytes_at_most("invite_owner", s.invite_owner.len(), MAX_SHORT_TEXT)
        }
        Some(Kind::Edit(e)) => id("edit.message_id", &e.message_id),
        Some(Kind::Delete(d)) => id("delete.message_id", &d.message_id),
        Some(Kind::Leave(_)) | Some(Kind::SetTimer(_)) => Ok(()),
        Some(Kind::JoinRequest(j)) => {
            if j.group_id.len() != NAMED_GROUP_ID_BYTES
                || j.invite_secret.len() != INVITE_SECRET_BYTES
            {
                return Err(bad("a join request names a group id and an invite secret"));
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_reply(snippet: &str) -> v1::Content {
        v1::Content {
            kind: Some(Kind::Text(v1::Text {
                body: "hi".into(),
                reply_to: Some(v1::Quote {
                    message_id: vec![1; 16],
                    sender_phone: "+919800000001".into(),
                    snippet: snippet.into(),
                }),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn honest_content_passes_and_oversized_fields_do_not() {
        assert!(validate_content(&text_reply(&"é".repeat(QUOTE_CHARS))).is_ok());
        assert!(validate_content(&text_reply(&"é".repeat(QUOTE_CHARS + 1))).is_err());
        let state = |title: String, avatar: usize| v1::Content {
            kind: Some(Kind::GroupState(v1::GroupState {
                title,
                avatar: vec![0; avatar],
                ..Default::default()
            })),
        };
        assert!(validate_content(&state("Family".into(), MAX_AVATAR_BYTES)).is_ok());
        assert!(validate_content(&state("x".repeat(MAX_TITLE_CHARS + 1), 0)).is_err());
        assert!(validate_content(&state("Family".into(), MAX_AVATAR_BYTES + 1)).is_err());
        let receipt = |n: usize, len: usize| v1::Content {
            kind: Some(Kind::Receipt(v1::Receipt {
                r#type: v1::ReceiptType::Read as i32,
                message_ids: vec![vec![7; len]; n],
                ..Default::default()
            })),
        };
        let mut bad_head = receipt(1, 16);
        if let Some(Kind::Receipt(r)) = bad_head.kind.as_mut() {
            r.notice_log_length = 1;
            r.notice_log_head = vec![1; 31];
        }
        assert!(validate_content(&bad_head).is_err(), "a head is 32 bytes");
        assert!(validate_content(&receipt(MAX_RECEIPT_IDS, 16)).is_ok());
        assert!(validate_content(&receipt(MAX_RECEIPT_IDS + 1, 16)).is_err());
        assert!(validate_content(&receipt(1, 17)).is_err());
        assert!(validate_content(&receipt(0, 16)).is_err());
        assert!(validate_content(&v1::Content { kind: None }).is_ok());
        let history = |part: u32, parts: u32, id_len: usize| v1::Content {
            kind: Some(Kind::History(v1::HistoryBundle {
                for_device: 2,
                part,
                parts,
                chats: vec![v1::HistoryChat {
                    conversation: "+919800000001".into(),
                    timer_secs: 0,
                    messages: vec![v1::HistoryMessage {
                        id: vec![3; id_len],
                        ..Default::default()
                    }],
                }],
            })),
        };
        assert!(validate_content(&history(1, 1, 16)).is_ok());
        assert!(validate_content(&history(0, 1, 16)).is_err());
        assert!(validate_content(&history(2, 1, 16)).is_err());
        assert!(validate_content(&history(1, 1, 15)).is_err());
    }
}
