//! Ticks: ✓ (the server holds it), ✓✓ (every recipient device has it), blue
//! (every recipient account read it on some device), worked out from the
//! profile alone; and marking messages read, which sends read receipts.

use crate::ClientError;
use crate::client::Client;
use crate::events::{Event, Tick, TickState};
use crate::format_id;
use crate::{MessageView, Profile};
use dak_proto::v1::{self};
use std::collections::BTreeMap;

/// A message's tick from the profile alone (no connection needed).
pub fn tick_of(profile: &Profile, id: &[u8]) -> Result<Tick, ClientError> {
    let Some(m) = profile.message(id)? else {
        return Err(ClientError::Usage(format!(
            "no message {} in this profile",
            format_id(id)
        )));
    };
    let devices = profile.recipients(id)?;
    // Read when every recipient account has read it on some device (in a
    // 1:1 chat, the contact); delivered when every device has it.
    let mut read_by: BTreeMap<&str, bool> = BTreeMap::new();
    for d in &devices {
        *read_by.entry(d.phone.as_str()).or_default() |= d.read_ms > 0;
    }
    let state = if !m.acked {
        TickState::Pending
    } else if !read_by.is_empty() && read_by.values().all(|r| *r) {
        TickState::Read
    } else if !devices.is_empty() && devices.iter().all(|d| d.delivered_ms > 0) {
        TickState::Delivered
    } else {
        TickState::Sent
    };
    Ok(Tick { state, devices })
}

impl Client {
    /// Sends read receipts for the given incoming messages (all unread when None).
    pub async fn mark_read(&mut self, ids: Option<&[Vec<u8>]>) -> Result<usize, ClientError> {
        let unread = self.profile.unread()?;
        let chosen: Vec<MessageView> = match ids {
            None => unread,
            Some(ids) => unread.into_iter().filter(|m| ids.contains(&m.id)).collect(),
        };
        // A message request tells its sender nothing until it is accepted.
        let requests = crate::requests::message_requests(&self.profile)?;
        let chosen: Vec<MessageView> = chosen
            .into_iter()
            .filter(|m| !requests.contains_key(&m.conversation.key()))
            .collect();
        let now = self.profile.now_ms();
        let mut by_sender: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
        for m in &chosen {
            by_sender
                .entry(m.from.clone())
                .or_default()
                .push(m.id.clone());
        }
        self.send_receipts(v1::ReceiptType::Read, by_sender).await?;
        for m in &chosen {
            self.profile.mark_read(&m.id, now)?;
        }
        Ok(chosen.len())
    }

    /// The tick of an outgoing message, with per-device detail.
    pub fn tick(&self, id: &[u8]) -> Result<Tick, ClientError> {
        tick_of(&self.profile, id)
    }

    /// Handles pushes until the message reaches `want` (or better).
    pub async fn wait_for_tick(
        &mut self,
        id: &[u8],
        want: TickState,
        mut on_event: impl FnMut(&Event),
    ) -> Result<(), ClientError> {
        while self.tick(id)?.state < want {
            for event in self.next_events().await? {
                on_event(&event);
            }
        }
        Ok(())
    }
}
