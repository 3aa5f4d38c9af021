//! Reading a device's mailbox back out in frames that respect the size limit.
//! (Messages get in through `groups`.)

use dak_proto::v1;
use dak_store::MailboxEntry;

/// Room left in a Deliver frame for everything but the bodies' bytes.
const ENVELOPE_OVERHEAD: usize = 160;
const FRAME_BUDGET: usize = dak_proto::MAX_FRAME_BYTES - 1024;

/// Splits mailbox entries into Deliver frames that each fit the frame limit.
pub fn into_frames(entries: Vec<MailboxEntry>) -> Vec<v1::Deliver> {
    let mut frames = Vec::new();
    let mut current = v1::Deliver::default();
    let mut size = 0;
    for e in entries {
        let cost = e.body.len() + e.sender_phone.len() + ENVELOPE_OVERHEAD;
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
