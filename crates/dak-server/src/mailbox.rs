//! Accepting a message (fan-out into mailboxes, then the single tick) and
//! reading a device's mailbox back out in frames that respect the size limit.

use dak_proto::v1::{self, ErrorCode};
use dak_store::{Device, MailboxEntry, NewEnvelope};

use crate::error::{ApiError, ApiResult};
use crate::metrics::Metrics;
use crate::registration::{link_expired, parse_phone};
use crate::state::{AppState, now_ms};

/// Room left in a Deliver frame for everything but the bodies' bytes.
const ENVELOPE_OVERHEAD: usize = 160;
const FRAME_BUDGET: usize = dak_proto::MAX_FRAME_BYTES - 1024;

fn address(d: &Device) -> v1::DeviceAddress {
    v1::DeviceAddress {
        phone: d.phone.clone(),
        device_id: d.id,
    }
}

/// Stores the envelope in every device's mailbox of the addressee and of the
/// sender's other devices, and only then returns the ack.
pub async fn send(state: &AppState, from: &Device, req: v1::SendMessage) -> ApiResult<v1::SendAck> {
    let to = parse_phone(&req.to_phone)?;
    let now = now_ms();
    let live = |d: &Device| !link_expired(state, d, now);
    let fanout = state.store.fanout(from.account_id, &to).await?;
    let own: Vec<Device> = fanout
        .own
        .into_iter()
        .filter(|d| d.id != from.id && live(d))
        .collect();
    let recipients: Vec<Device> = if to == from.phone {
        Vec::new() // a note to self reaches the sender's other devices only
    } else {
        let Some(devices) = fanout.recipients else {
            return Err(ApiError::new(
                ErrorCode::UnknownAccount,
                format!("{to} is not on Dak; check the number or invite them"),
            ));
        };
        let devices: Vec<Device> = devices.into_iter().filter(live).collect();
        if devices.is_empty() {
            return Err(ApiError::new(
                ErrorCode::UnknownAccount,
                format!("{to} has no active devices"),
            ));
        }
        devices
    };
    let targets: Vec<u64> = recipients.iter().chain(&own).map(|d| d.id).collect();
    let envelope = NewEnvelope {
        message_id: req.message_id.clone(),
        sender_phone: from.phone.clone(),
        sender_device: from.id,
        conversation_phone: to,
        server_time_ms: now,
        expires_ms: now + state.config.retention.as_millis() as i64,
        body: req.body,
    };
    state.store.enqueue(envelope, &targets).await?;
    for t in &targets {
        state.bus.publish(&dak_bus::mail_topic(*t));
    }
    Metrics::inc(&state.metrics.messages_accepted);
    Ok(v1::SendAck {
        message_id: req.message_id,
        server_time_ms: now,
        recipients: recipients.iter().map(address).collect(),
        own_devices: own.iter().map(address).collect(),
    })
}

/// Splits mailbox entries into Deliver frames that each fit the frame limit.
pub fn into_frames(entries: Vec<MailboxEntry>) -> Vec<v1::Deliver> {
    let mut frames = Vec::new();
    let mut current = v1::Deliver::default();
    let mut size = 0;
    for e in entries {
        let cost =
            e.body.len() + e.sender_phone.len() + e.conversation_phone.len() + ENVELOPE_OVERHEAD;
        if size + cost > FRAME_BUDGET && !current.envelopes.is_empty() {
            frames.push(std::mem::take(&mut current));
            size = 0;
        }
        size += cost;
        current.envelopes.push(v1::Envelope {
            seq: e.seq,
            message_id: e.message_id,
            sender_phone: e.sender_phone,
            sender_device: e.sender_device,
            conversation_phone: e.conversation_phone,
            server_time_ms: e.server_time_ms,
            body: e.body,
        });
    }
    if !current.envelopes.is_empty() {
        frames.push(current);
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn large_bodies_are_split_into_frames_within_the_limit() {
        let entries: Vec<MailboxEntry> = (0..20)
            .map(|i| MailboxEntry {
                seq: i,
                message_id: vec![0; 16],
                sender_phone: "+919800000001".into(),
                sender_device: 1,
                conversation_phone: "+919800000002".into(),
                server_time_ms: 0,
                body: vec![0xab; dak_proto::MAX_BODY_BYTES],
            })
            .collect();
        let frames = into_frames(entries);
        assert!(frames.len() >= 5);
        assert_eq!(frames.iter().map(|f| f.envelopes.len()).sum::<usize>(), 20);
        for f in frames {
            let frame = v1::ServerFrame {
                request_id: 0,
                body: Some(v1::server_frame::Body::Deliver(f)),
            };
            assert!(frame.encoded_len() <= dak_proto::MAX_FRAME_BYTES);
        }
    }
}
