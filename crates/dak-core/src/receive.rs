//! Receiving: each push from the server is stored in one profile transaction
//! (every envelope in its own savepoint) before it is acked, and the work it
//! calls for (receipts, KeyPackages, group follow-ups) is done after.

use crate::ClientError;
use crate::Profile;
use crate::client::Client;
use crate::events::{Event, Undecodable};
use crate::format_id;
use crate::incoming::{self, Delivered};
use crate::mls::Incoming;
use crate::outbox::queue_receipts;
use crate::work::Work;
use dak_proto::v1::{self, ErrorCode, client_frame::Request, server_frame::Body};

/// How long message ids are remembered for dedup: twice the default retention.
pub(crate) const SEEN_KEEP_MS: i64 = 60 * 24 * 3600 * 1000;

/// Whether an envelope is for a conversation this device has left (a
/// Welcome, which names no group in the clear, never is).
pub(crate) fn addressed_to_retired(p: &Profile, body: &[u8]) -> Result<bool, ClientError> {
    match dak_proto::mls::inspect(body) {
        Ok(info) if info.kind != dak_proto::mls::MlsKind::Welcome => {
            Ok(p.conversation_active(&info.group_id)? == Some(false))
        }
        _ => Ok(false),
    }
}

impl Client {
    /// Waits for the next push and handles it. Not cancel-safe (a batch may
    /// be stored and its events dropped): to time out or `select!`, use
    /// `recv_push` and `handle_push`.
    pub async fn next_events(&mut self) -> Result<Vec<Event>, ClientError> {
        if !self.pending_events.is_empty() {
            return Ok(std::mem::take(&mut self.pending_events));
        }
        let body = self.conn.next_push().await?;
        self.handle_push(body).await
    }

    /// Events that came up inside another step (messages handled while a
    /// send waited for its answer, a contact's changed devices) and were
    /// not given out yet: a front end that waits with `recv_push` takes
    /// them after each of its own calls, or they wait for the next push.
    pub fn take_pending_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.pending_events)
    }

    /// Waits for the next push without handling it. Cancel-safe, so it can
    /// sit in a `select!` beside user input; pass the result to `handle_push`.
    pub async fn recv_push(&mut self) -> Result<Body, ClientError> {
        self.conn.next_push().await
    }

    /// Stores, acks and answers (receipts) one push. Not cancel-safe: let it finish.
    pub async fn handle_push(&mut self, body: Body) -> Result<Vec<Event>, ClientError> {
        // The push first: if it fails, the events saved earlier stay saved.
        let new = self.handle_push_inner(body).await?;
        let mut events = std::mem::take(&mut self.pending_events);
        events.extend(new);
        self.run_work().await;
        Ok(events)
    }

    /// Handles one push without sending anything (a send may be waiting on it).
    pub(crate) async fn handle_push_inner(
        &mut self,
        body: Body,
    ) -> Result<Vec<Event>, ClientError> {
        match body {
            Body::Deliver(d) => self.on_deliver(d).await,
            Body::QueueEmpty(_) => Ok(vec![Event::QueueEmpty]),
            Body::Notice(n) => {
                let code = match v1::NoticeKind::try_from(n.kind) {
                    Ok(v1::NoticeKind::NumberMoved | v1::NoticeKind::DeviceRemoved) => {
                        ErrorCode::DeviceRevoked
                    }
                    Ok(v1::NoticeKind::LinkExpired) => ErrorCode::LinkExpired,
                    Ok(v1::NoticeKind::ServerDraining) => ErrorCode::Unavailable,
                    // Not retryable: reconnecting would only replace the
                    // newer connection in turn.
                    Ok(v1::NoticeKind::Replaced) => ErrorCode::ConnectionReplaced,
                    // A notice this build does not know (from a newer server): not a reason to stop.
                    _ => {
                        tracing::info!(kind = n.kind, message = %n.message, "server notice");
                        return Ok(Vec::new());
                    }
                };
                Err(ClientError::Server(v1::Error::new(code, n.message)))
            }
            Body::NoticeLog(l) => crate::notices::apply_entries(&self.profile, &l.entries),
            Body::TargetedNotice(t) => {
                crate::notices::apply_targeted(&self.profile, &self.reg.phone, &t)
            }
            Body::Error(e) => Err(ClientError::Server(e)),
            _ => Ok(Vec::new()),
        }
    }

    pub(crate) async fn on_deliver(&mut self, d: v1::Deliver) -> Result<Vec<Event>, ClientError> {
        let me = self.reg.phone.clone();
        let my_device = self.reg.device_id;
        let now = self.profile.now_ms();
        let seqs: Vec<u64> = d.envelopes.iter().map(|e| e.seq).collect();
        let mut out = Delivered::default();
        let receipts = self.profile.transaction(|p| {
            for e in d.envelopes {
                if !p.first_sight(&e.message_id, now)? {
                    continue;
                }
                if addressed_to_retired(p, &e.body)? {
                    // A group this account left or was removed from.
                    continue;
                }
                // Each message in its own savepoint: a failure leaves the
                // group state as it was and the batch goes on.
                let incoming = match p.savepoint(|p| p.mls(|m| m.process(&e.body))) {
                    Ok(i) => i,
                    // The profile itself failed: store nothing, ack nothing;
                    // the server redelivers.
                    Err(err @ ClientError::Store { .. }) => return Err(err),
                    Err(err) => {
                        if e.sender_device == my_device {
                            // Our own commit, echoed after we merged it on the ack.
                            continue;
                        }
                        out.undecodable += 1;
                        tracing::warn!(id = %format_id(&e.message_id), from = %e.sender_phone, error = %err, "undecryptable message");
                        out.events.push(Event::Undecodable { id: e.message_id, from: e.sender_phone, reason: Undecodable::of(&err) });
                        continue;
                    }
                };
                let (group, phone, device, plaintext) = match incoming {
                    Incoming::Application { group, phone, device_id, plaintext } => (group, phone, device_id, plaintext),
                    Incoming::Joined { group } => {
                        incoming::on_joined(p, &me, &group, &e.sender_phone, now, &mut out)?;
                        continue;
                    }
                    Incoming::Commit { group, committer, changed, joined, left, removed_me } => {
                        let seen = incoming::CommitSeen { committer, changed, joined, left, removed_me };
                        incoming::on_commit(p, &me, &group, seen, &mut out)?;
                        continue;
                    }
                    Incoming::OwnCommit { .. } => continue,
                };
                if phone != e.sender_phone || device != e.sender_device {
                    out.undecodable += 1;
                    tracing::warn!(id = %format_id(&e.message_id), "message refused: the encrypted sender differs from the server's envelope");
                    out.events.push(Event::Undecodable { id: e.message_id, from: e.sender_phone, reason: Undecodable::SenderMismatch });
                    continue;
                }
                if crate::requests::is_blocked(p, &phone)? {
                    // Blocked: dropped unseen (the server stops new ones).
                    continue;
                }
                let content = match dak_proto::decode_content(&plaintext) {
                    Ok(c) => c,
                    Err(err) => {
                        out.undecodable += 1;
                        tracing::warn!(id = %format_id(&e.message_id), error = %err, "undecodable message body");
                        out.events.push(Event::Undecodable { id: e.message_id, from: e.sender_phone, reason: Undecodable::BadContent { detail: err.to_string() } });
                        continue;
                    }
                };
                let from = incoming::Sender {
                    id: &e.message_id,
                    phone: &phone,
                    device,
                    server_time_ms: e.server_time_ms,
                    now,
                };
                incoming::on_content(p, &me, my_device, &group, &from, content, &mut out)?;
            }
            p.purge_expired(now)?;
            queue_receipts(p, v1::ReceiptType::Delivered, std::mem::take(&mut out.to_confirm))
        })?;
        self.undecodable += out.undecodable;
        let mut events = out.events;
        out.ticked.dedup();
        for id in out.ticked {
            let state = self.tick(&id)?.state;
            events.push(Event::Tick { id, state });
        }
        // Stored, with their receipts queued: now the server may forget them.
        // If the connection fails from here on, the events are still the
        // user's (a redelivery would be dropped as already seen) and the
        // receipts leave from the outbox on the next connection.
        // The work they call for is queued first: after a failed ack the
        // server redelivers them, and the copies are skipped as seen.
        if out.joined {
            self.work.push(Work::TopUpKeyPackages);
        }
        if !receipts.is_empty() {
            self.work.push(Work::Receipts(receipts));
        }
        self.work
            .extend(out.follow_ups.into_iter().map(Work::Group));
        let acked = self
            .conn
            .call(Request::AckDeliveries(v1::AckDeliveries { seqs }))
            .await;
        if let Err(e) = acked {
            tracing::debug!(error = %e, "ack failed; the server will redeliver and we will drop the copies");
            return Ok(events);
        }
        Ok(events)
    }

    /// Receives everything waiting, calling `on_event` for each event, and
    /// returns once the server says the mailbox is empty.
    pub async fn sync(&mut self, mut on_event: impl FnMut(&Event)) -> Result<(), ClientError> {
        loop {
            // Every event of a batch is the user's, those after an empty
            // mailbox's marker too.
            let mut empty = false;
            for event in self.next_events().await? {
                match event {
                    Event::QueueEmpty => empty = true,
                    other => on_event(&other),
                }
            }
            if empty {
                return Ok(());
            }
        }
    }
}
