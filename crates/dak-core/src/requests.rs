//! Message requests and blocking, as in Signal and WhatsApp: a conversation
//! a stranger starts (a 1:1 chat, or a group a stranger adds this account
//! to) arrives as a request the user accepts, blocks or reports.
//!
//! Invariants:
//! - A conversation joined by a Welcome from a number this account does
//!   not know is a request until the user accepts it or writes in it.
//! - While it is a request, no read receipts go out for it (the stranger
//!   learns nothing of whether it was read); delivery receipts do, as they
//!   do for every device that received a message.
//! - A blocked number's messages are dropped on arrival. The server stops
//!   them too (`BlockAccount`), but copies already in the mailbox still come.
//! - Known numbers: one this account wrote to, added to a group or
//!   accepted, and any number it already had a 1:1 chat with.
//!
//! Kept in the profile's settings, so every backend has them: the requests
//! as one JSON map (conversation key → the stranger's number), and one key
//! per known or blocked number (looked up on every arrival).

use std::collections::BTreeMap;

use dak_proto::v1::{self, client_frame::Request, server_frame::Body};

use crate::client::Client;
use crate::connection::unexpected;
use crate::error::ClientError;
use crate::events::Event;
use crate::ids::ConversationId;
use crate::profile::Profile;

const REQUESTS: &str = "message_requests";

fn contact_key(phone: &str) -> String {
    format!("contact:{phone}")
}

fn blocked_key(phone: &str) -> String {
    format!("blocked:{phone}")
}

/// The open requests: conversation key → the number that started it.
pub fn message_requests(p: &Profile) -> Result<BTreeMap<String, String>, ClientError> {
    match p.get(REQUESTS)? {
        None => Ok(BTreeMap::new()),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| p.err(format!("the stored message requests are unreadable: {e}"))),
    }
}

fn save_requests(p: &Profile, requests: &BTreeMap<String, String>) -> Result<(), ClientError> {
    if requests.is_empty() {
        return p.delete(REQUESTS);
    }
    let bytes = serde_json::to_vec(requests).map_err(|e| p.err(e.to_string()))?;
    p.set(REQUESTS, &bytes)
}

/// Whether `conversation` is a request not yet accepted.
pub fn is_request(p: &Profile, conversation: &str) -> Result<bool, ClientError> {
    Ok(message_requests(p)?.contains_key(conversation))
}

pub fn is_blocked(p: &Profile, phone: &str) -> Result<bool, ClientError> {
    Ok(p.get(&blocked_key(phone))?.is_some())
}

/// Whether this account knows `phone` (see the invariants above).
pub fn is_known(p: &Profile, phone: &str) -> Result<bool, ClientError> {
    if p.get(&contact_key(phone))?.is_some() {
        return Ok(true);
    }
    // A 1:1 chat from before requests were kept, and not itself a request.
    Ok(!p.conversation(phone, 1)?.is_empty() && !is_request(p, phone)?)
}

/// This account reached out to `phone` (wrote, added it to a group).
pub(crate) fn mark_known(p: &Profile, phone: &str) -> Result<(), ClientError> {
    p.set(&contact_key(phone), b"1")
}

/// Writing in a conversation accepts it.
pub(crate) fn accept_by_writing(p: &Profile, to: &ConversationId) -> Result<(), ClientError> {
    if let ConversationId::Direct(phone) = to {
        mark_known(p, phone)?;
    }
    let key = to.key();
    let mut requests = message_requests(p)?;
    if let Some(from) = requests.remove(&key) {
        mark_known(p, &from)?;
        save_requests(p, &requests)?;
    }
    Ok(())
}

/// A Welcome from `from` added this account to `conversation`: a request
/// when `from` is a stranger. Returns the event to show, if any.
pub(crate) fn on_joined_by(
    p: &Profile,
    me: &str,
    conversation: &str,
    from: &str,
) -> Result<Option<Event>, ClientError> {
    if from.is_empty() || from == me || is_known(p, from)? {
        return Ok(None);
    }
    let mut requests = message_requests(p)?;
    requests.insert(conversation.to_string(), from.to_string());
    save_requests(p, &requests)?;
    Ok(Some(Event::MessageRequest {
        conversation: ConversationId::from_key(conversation),
        from: from.to_string(),
    }))
}

impl Client {
    /// Accepts a message request: the conversation becomes an ordinary one
    /// (read receipts go out from now on) and its sender a known number.
    pub fn accept_request(&mut self, conversation: &str) -> Result<(), ClientError> {
        let key = self.profile.resolve(conversation)?.key();
        let mut requests = message_requests(&self.profile)?;
        let Some(from) = requests.remove(&key) else {
            return Err(ClientError::Usage(format!(
                "{conversation} is not a message request (see `dak requests`)"
            )));
        };
        self.profile.transaction(|p| {
            mark_known(p, &from)?;
            save_requests(p, &requests)
        })
    }

    /// Blocks (or, with `blocked` false, unblocks) a number: the server
    /// stops its messages to every device of this account and its adding
    /// this account to groups; this device also drops any that still
    /// arrive. A request it started stays, for the user to delete.
    pub async fn block(&mut self, phone: &str, blocked: bool) -> Result<(), ClientError> {
        let phone = crate::ids::phone(phone)?;
        let answer = self
            .conn
            .call(Request::BlockAccount(v1::BlockAccount {
                phone: phone.clone(),
                blocked,
            }))
            .await?;
        let Body::Ok(_) = answer else {
            return Err(unexpected(answer));
        };
        if blocked {
            self.profile.set(&blocked_key(&phone), b"1")
        } else {
            self.profile.delete(&blocked_key(&phone))
        }
    }

    /// Reports a number for spam or abuse (the server counts it for its
    /// operator and never sees the messages) and blocks it.
    pub async fn report(&mut self, phone: &str) -> Result<(), ClientError> {
        let phone = crate::ids::phone(phone)?;
        let answer = self
            .conn
            .call(Request::ReportAccount(v1::ReportAccount {
                phone: phone.clone(),
            }))
            .await?;
        let Body::Ok(_) = answer else {
            return Err(unexpected(answer));
        };
        self.profile.set(&blocked_key(&phone), b"1")
    }
}
