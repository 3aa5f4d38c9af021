//! What a user does with a device: register, link, send, receive, read, and
//! the ticks that follow. Every incoming batch is stored in the profile in
//! one transaction before it is acked to the server, and every outgoing
//! message sits in the outbox until the server acks it, so neither a crash
//! of the client nor of the server loses a message; redeliveries are
//! dropped by message id.

use std::collections::BTreeMap;

use dak_proto::v1::{self, ErrorCode, client_frame::Request, content::Kind, server_frame::Body};
use dak_proto::{AuthPurpose, normalize_phone};
use ed25519_dalek::SigningKey;
use prost::Message;
use serde::Serialize;

use crate::connection::{Connection, unexpected};
use crate::error::ClientError;
use crate::profile::{MessageView, Profile, RecipientState, Registration, ser_id};
use crate::transport::{CertTrust, WsTransport};

/// The ticks, in the order they become true.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TickState {
    /// Still in the outbox: the server has not acknowledged it.
    Pending,
    /// ✓ the server holds it durably.
    Sent,
    /// ✓✓ every recipient device has it.
    Delivered,
    /// blue ✓✓ the recipient has read it.
    Read,
}

impl TickState {
    pub fn symbol(self) -> &'static str {
        match self {
            TickState::Pending => "🕓",
            TickState::Sent => "✓",
            TickState::Delivered => "✓✓",
            TickState::Read => "✓✓ (read)",
        }
    }
}

/// A tick of one message and the per-device detail behind it.
#[derive(Debug, Clone, Serialize)]
pub struct Tick {
    pub state: TickState,
    pub devices: Vec<RecipientState>,
}

#[derive(Debug, Clone)]
pub enum Event {
    Message(MessageView),
    Tick {
        id: Vec<u8>,
        state: TickState,
    },
    /// Everything waiting on the server has been received.
    QueueEmpty,
    /// A body that would not decode: counted, acked, shown as a state.
    Undecodable {
        id: Vec<u8>,
        from: String,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct SendOutcome {
    #[serde(serialize_with = "ser_id")]
    pub id: Vec<u8>,
    pub server_time_ms: i64,
    pub recipient_devices: usize,
}

/// Message ids are shown as UUIDs (they are UUIDv7: time-ordered).
pub fn format_id(id: &[u8]) -> String {
    uuid::Uuid::from_slice(id)
        .map(|u| u.to_string())
        .unwrap_or_else(|_| hex::encode(id))
}

pub fn parse_id(s: &str) -> Result<Vec<u8>, ClientError> {
    uuid::Uuid::parse_str(s.trim())
        .map(|u| u.as_bytes().to_vec())
        .map_err(|_| {
            ClientError::Usage(format!(
                "{s:?} is not a message id (a UUID, as `dak send` prints)"
            ))
        })
}

fn new_id() -> Vec<u8> {
    uuid::Uuid::now_v7().as_bytes().to_vec()
}

/// How long message ids are remembered for dedup: twice the default retention.
const SEEN_KEEP_MS: i64 = 60 * 24 * 3600 * 1000;

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn phone(raw: &str) -> Result<String, ClientError> {
    normalize_phone(raw)
        .map_err(|e| ClientError::Server(v1::Error::new(ErrorCode::InvalidPhone, e.to_string())))
}

/// Opens a connection, pinning the certificate if the profile knows one.
async fn open(server: &str, trust: CertTrust) -> Result<(Connection, Option<String>), ClientError> {
    let (transport, seen) = WsTransport::connect(server, &trust).await?;
    Ok((
        Connection::open(Box::new(transport)).await?,
        seen.fingerprint,
    ))
}

/// The first node of a comma-separated list that answers, trusting its
/// certificate on first use. The nodes of a cluster share one certificate.
async fn open_first(servers: &str) -> Result<(Connection, Option<String>), ClientError> {
    open_any(servers, CertTrust::FirstUse).await
}

async fn open_any(
    servers: &str,
    trust: CertTrust,
) -> Result<(Connection, Option<String>), ClientError> {
    let mut last =
        ClientError::Usage("give a server address, like wss://chat.example.org:7443".into());
    for server in crate::profile::split_servers(servers) {
        match open(&server, trust.clone()).await {
            Ok(c) => return Ok(c),
            Err(e) if e.is_retryable() => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

fn trust_for(profile: &Profile, key: &str) -> Result<CertTrust, ClientError> {
    // No pin stored means the certificate must chain to a public root.
    Ok(CertTrust::Pinned(profile.get_str(key)?.unwrap_or_default()))
}

pub struct Client {
    profile: Profile,
    conn: Connection,
    reg: Registration,
    /// The node this connection went to.
    server: String,
    undecodable: u64,
}

impl Client {
    // ---- registration and linking (before there is a device) ----

    /// Asks the server to text a code to `phone`. Returns seconds until it expires.
    pub async fn request_code(
        profile: &Profile,
        server: &str,
        raw_phone: &str,
    ) -> Result<u32, ClientError> {
        let number = phone(raw_phone)?;
        let (mut conn, fingerprint) = open_first(server).await?;
        let answer = conn
            .call(Request::RequestCode(v1::RequestCode {
                phone: number.clone(),
            }))
            .await?;
        conn.close().await;
        let Body::CodeSent(sent) = answer else {
            return Err(unexpected(answer));
        };
        profile.set("pending_server", server.as_bytes())?;
        profile.set("pending_phone", number.as_bytes())?;
        profile.set("pending_cert", fingerprint.unwrap_or_default().as_bytes())?;
        Ok(sent.expires_in_secs)
    }

    /// Completes registration with the texted code (and PIN, if the number has one).
    pub async fn verify(
        profile: &Profile,
        code: &str,
        pin: &str,
        device_name: &str,
    ) -> Result<Registration, ClientError> {
        let (Some(server), Some(number)) = (
            profile.get_str("pending_server")?,
            profile.get_str("pending_phone")?,
        ) else {
            return Err(ClientError::Usage(
                "no registration is in progress in this profile: run `dak register` first".into(),
            ));
        };
        let (mut conn, _) = open_any(&server, trust_for(profile, "pending_cert")?).await?;
        let key = profile.identity()?;
        let signature = conn.sign(&key, AuthPurpose::Register, number.as_bytes());
        let answer = conn
            .call(Request::VerifyCode(v1::VerifyCode {
                phone: number.clone(),
                code: code.trim().to_string(),
                identity_key: key.verifying_key().to_bytes().to_vec(),
                signature,
                pin: pin.to_string(),
                device_name: device_name.to_string(),
            }))
            .await?;
        conn.close().await;
        let Body::Registered(r) = answer else {
            return Err(unexpected(answer));
        };
        let cert = profile.get("pending_cert")?.unwrap_or_default();
        profile.set("cert", &cert)?;
        profile.save_registration(&server, &r.phone, r.device_id)?;
        for k in ["pending_server", "pending_phone", "pending_cert"] {
            profile.delete(k)?;
        }
        profile.registration()
    }

    /// Asks to link this profile as a new device; `show_code` displays the
    /// code for the primary device; waits until approved or expired.
    pub async fn link(
        profile: &Profile,
        server: &str,
        device_name: &str,
        show_code: impl FnOnce(&str, u32),
    ) -> Result<Registration, ClientError> {
        let (mut conn, fingerprint) = open_first(server).await?;
        let key = profile.new_identity()?;
        let identity_key = key.verifying_key().to_bytes().to_vec();
        let signature = conn.sign(&key, AuthPurpose::Link, &identity_key);
        let answer = conn
            .call(Request::LinkStart(v1::LinkStart {
                identity_key,
                signature,
                device_name: device_name.into(),
            }))
            .await?;
        let Body::LinkCode(code) = answer else {
            return Err(unexpected(answer));
        };
        show_code(&code.code, code.expires_in_secs);
        let wait = std::time::Duration::from_secs(code.expires_in_secs as u64 + 5);
        let approved = tokio::time::timeout(wait, async {
            loop {
                match conn.next_push().await? {
                    Body::LinkApproved(a) => return Ok(a),
                    Body::Error(e) => return Err(ClientError::Server(e)),
                    _ => continue,
                }
            }
        })
        .await
        .map_err(|_| {
            ClientError::Timeout(
                "the link code expired before it was approved; run `dak link` again".into(),
            )
        })??;
        conn.close().await;
        profile.set("cert", fingerprint.unwrap_or_default().as_bytes())?;
        profile.save_registration(server, &approved.phone, approved.device_id)?;
        profile.registration()
    }

    // ---- a registered device ----

    /// Connects and authenticates as this profile's device, then sends
    /// whatever the outbox still holds. With several nodes it starts at a
    /// random one (spreading devices over the cluster) and moves on to the
    /// next when one cannot be reached; the last error is returned when
    /// none can.
    pub async fn connect(profile: Profile) -> Result<Client, ClientError> {
        Self::try_connect(profile).await.map_err(|(_, e)| e)
    }

    /// As `connect`, with backoff (100 ms doubling to 10 s, jittered) between
    /// rounds over all the nodes, for up to `patience`: what a device that
    /// must stay online does.
    pub async fn connect_patiently(
        mut profile: Profile,
        patience: std::time::Duration,
    ) -> Result<Client, ClientError> {
        let deadline = tokio::time::Instant::now() + patience;
        let mut backoff = std::time::Duration::from_millis(100);
        loop {
            match Self::try_connect(profile).await {
                Ok(c) => return Ok(c),
                Err((p, e))
                    if e.is_retryable() && tokio::time::Instant::now() + backoff < deadline =>
                {
                    // Jitter (50-100% of the backoff): clients that lost the same
                    // node do not all come back in the same instant.
                    let wait = backoff.mul_f64(0.5 + rand::random::<f64>() / 2.0);
                    tracing::debug!(error = %e, ?wait, "no node reachable; backing off");
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(10));
                    profile = p;
                }
                Err((_, e)) => return Err(e),
            }
        }
    }

    /// One round over the profile's nodes; on failure the profile comes back
    /// with the error, so the caller can try again.
    async fn try_connect(profile: Profile) -> Result<Client, (Profile, ClientError)> {
        let servers = match profile.registration() {
            Ok(reg) => reg.servers(),
            Err(e) => return Err((profile, e)),
        };
        let start = rand::random::<u32>() as usize % servers.len().max(1);
        let mut last = ClientError::Transport("no server address in this profile".into());
        for i in 0..servers.len() {
            let server = &servers[(start + i) % servers.len()];
            match Self::authenticate_at(&profile, server).await {
                Ok((conn, reg)) => return Self::finish_connect(profile, conn, reg, server).await,
                Err(e) if e.is_retryable() => {
                    tracing::debug!(%server, error = %e, "node unreachable; trying the next");
                    last = e;
                }
                Err(e) => return Err((profile, e)),
            }
        }
        Err((profile, last))
    }

    async fn authenticate_at(
        profile: &Profile,
        server: &str,
    ) -> Result<(Connection, Registration), ClientError> {
        let reg = profile.registration()?;
        let key = profile.identity()?;
        let (mut conn, _) = open(server, trust_for(profile, "cert")?).await?;
        conn.authenticate(&key, reg.device_id).await?;
        Ok((conn, reg))
    }

    /// Sends the outbox on the fresh connection; on failure the profile comes back.
    async fn finish_connect(
        profile: Profile,
        conn: Connection,
        reg: Registration,
        server: &str,
    ) -> Result<Client, (Profile, ClientError)> {
        // Redeliveries can only come within the server's retention (30 days
        // by default), so older dedup entries can go.
        if let Err(e) = profile.prune_seen(now_ms() - SEEN_KEEP_MS) {
            return Err((profile, e));
        }
        let mut client = Client {
            profile,
            conn,
            reg,
            server: server.to_string(),
            undecodable: 0,
        };
        match client.flush_outbox().await {
            Ok(_) => Ok(client),
            Err(e) => Err((client.profile, e)),
        }
    }

    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// The node this client is connected to.
    pub fn server(&self) -> &str {
        &self.server
    }

    pub fn phone(&self) -> &str {
        &self.reg.phone
    }

    pub fn device_id(&self) -> u64 {
        self.reg.device_id
    }

    /// Bodies that failed to decode since this client started.
    pub fn undecodable(&self) -> u64 {
        self.undecodable
    }

    pub fn identity(&self) -> Result<SigningKey, ClientError> {
        self.profile.identity()
    }

    /// Sends a text. Returns once the server has acknowledged it (✓).
    pub async fn send_text(&mut self, to: &str, text: &str) -> Result<SendOutcome, ClientError> {
        let (id, to, body) = queue_text(&self.profile, to, text)?;
        let ack = self.push_outgoing(&id, &to, body).await?;
        Ok(SendOutcome {
            id,
            server_time_ms: ack.server_time_ms,
            recipient_devices: ack.recipients.len(),
        })
    }

    /// Sends one outbox entry; on a permanent refusal it leaves the outbox.
    async fn push_outgoing(
        &mut self,
        id: &[u8],
        to: &str,
        body: Vec<u8>,
    ) -> Result<v1::SendAck, ClientError> {
        let request = Request::SendMessage(v1::SendMessage {
            message_id: id.to_vec(),
            to_phone: to.into(),
            body,
        });
        let ack = match self.conn.call(request).await {
            Ok(Body::SendAck(ack)) => ack,
            Ok(other) => return Err(unexpected(other)),
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
        Ok(ack)
    }

    /// Sends everything queued and not yet acked, oldest first.
    pub async fn flush_outbox(&mut self) -> Result<usize, ClientError> {
        let items = self.profile.outbox()?;
        let n = items.len();
        for (id, to, body) in items {
            match self.push_outgoing(&id, &to, body).await {
                Ok(_) => {}
                Err(e) if e.is_retryable() => return Err(e),
                Err(e) => {
                    tracing::warn!(id = %format_id(&id), error = %e, "dropped an unsendable outbox entry")
                }
            }
        }
        Ok(n)
    }

    /// Sends receipts through the outbox: queued first, so a failure to
    /// send now means they go out on the next connection.
    async fn send_receipts(
        &mut self,
        kind: v1::ReceiptType,
        by_sender: BTreeMap<String, Vec<Vec<u8>>>,
    ) -> Result<(), ClientError> {
        let queued = self
            .profile
            .transaction(|p| queue_receipts(p, kind, by_sender))?;
        self.push_queued(queued).await
    }

    async fn push_queued(&mut self, queued: Vec<Outgoing>) -> Result<(), ClientError> {
        for (id, to, body) in queued {
            self.push_outgoing(&id, &to, body).await?;
        }
        Ok(())
    }

    /// Waits for the next push and handles it. Not cancel-safe (a batch may
    /// be stored and its events dropped): to time out or `select!`, use
    /// `recv_push` and `handle_push`.
    pub async fn next_events(&mut self) -> Result<Vec<Event>, ClientError> {
        let body = self.conn.next_push().await?;
        self.handle_push(body).await
    }

    /// Waits for the next push without handling it. Cancel-safe, so it can
    /// sit in a `select!` beside user input; pass the result to `handle_push`.
    pub async fn recv_push(&mut self) -> Result<Body, ClientError> {
        self.conn.next_push().await
    }

    /// Stores, acks and answers (receipts) one push. Not cancel-safe: let it finish.
    pub async fn handle_push(&mut self, body: Body) -> Result<Vec<Event>, ClientError> {
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
                    // A notice this build does not know (from a newer server): not a reason to stop.
                    _ => {
                        tracing::info!(kind = n.kind, message = %n.message, "server notice");
                        return Ok(Vec::new());
                    }
                };
                Err(ClientError::Server(v1::Error::new(code, n.message)))
            }
            Body::Error(e) => Err(ClientError::Server(e)),
            _ => Ok(Vec::new()),
        }
    }

    async fn on_deliver(&mut self, d: v1::Deliver) -> Result<Vec<Event>, ClientError> {
        let me = self.reg.phone.clone();
        let now = now_ms();
        let seqs: Vec<u64> = d.envelopes.iter().map(|e| e.seq).collect();
        let mut events = Vec::new();
        let mut to_confirm: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
        let mut ticked: Vec<Vec<u8>> = Vec::new();
        let mut undecodable = 0;
        let receipts = self.profile.transaction(|p| {
            for e in d.envelopes {
                if !p.first_sight(&e.message_id, now)? {
                    continue;
                }
                let content = match dak_proto::decode_content(&e.body) {
                    Ok(c) => c,
                    Err(err) => {
                        undecodable += 1;
                        tracing::warn!(id = %format_id(&e.message_id), error = %err, "undecodable message body");
                        events.push(Event::Undecodable { id: e.message_id, from: e.sender_phone });
                        continue;
                    }
                };
                let outgoing = e.sender_phone == me;
                match content.kind {
                    Some(Kind::Text(t)) => {
                        let view = MessageView {
                            id: e.message_id.clone(),
                            conversation: if outgoing { e.conversation_phone.clone() } else { e.sender_phone.clone() },
                            from: e.sender_phone.clone(),
                            from_device: e.sender_device,
                            outgoing,
                            text: t.body,
                            sent_at_ms: t.sent_at_ms,
                            server_time_ms: e.server_time_ms,
                            acked: outgoing,
                            read_ms: 0,
                        };
                        p.insert_message(&view)?;
                        if !outgoing {
                            to_confirm.entry(e.sender_phone.clone()).or_default().push(e.message_id.clone());
                        }
                        events.push(Event::Message(view));
                    }
                    Some(Kind::Receipt(r)) => {
                        let read = r.r#type == v1::ReceiptType::Read as i32;
                        for id in r.message_ids {
                            if outgoing {
                                // Another of my devices read it: it is read here too.
                                if read {
                                    p.mark_read(&id, e.server_time_ms)?;
                                }
                            } else if p.record_receipt(&id, &e.sender_phone, e.sender_device, read, e.server_time_ms)? {
                                ticked.push(id);
                            }
                        }
                    }
                    None => undecodable += 1,
                }
            }
            queue_receipts(p, v1::ReceiptType::Delivered, std::mem::take(&mut to_confirm))
        })?;
        self.undecodable += undecodable;
        ticked.dedup();
        for id in ticked {
            let state = self.tick(&id)?.state;
            events.push(Event::Tick { id, state });
        }
        // Stored, with their receipts queued: now the server may forget them.
        // If the connection fails from here on, the events are still the
        // user's (a redelivery would be dropped as already seen) and the
        // receipts leave from the outbox on the next connection.
        let acked = self
            .conn
            .call(Request::AckDeliveries(v1::AckDeliveries { seqs }))
            .await;
        if let Err(e) = acked {
            tracing::debug!(error = %e, "ack failed; the server will redeliver and we will drop the copies");
            return Ok(events);
        }
        if let Err(e) = self.push_queued(receipts).await {
            tracing::debug!(error = %e, "receipts stay in the outbox");
        }
        Ok(events)
    }

    /// Receives everything waiting, calling `on_event` for each event, and
    /// returns once the server says the mailbox is empty.
    pub async fn sync(&mut self, mut on_event: impl FnMut(&Event)) -> Result<(), ClientError> {
        loop {
            for event in self.next_events().await? {
                if let Event::QueueEmpty = event {
                    return Ok(());
                }
                on_event(&event);
            }
        }
    }

    /// Sends read receipts for the given incoming messages (all unread when None).
    pub async fn mark_read(&mut self, ids: Option<&[Vec<u8>]>) -> Result<usize, ClientError> {
        let unread = self.profile.unread()?;
        let chosen: Vec<MessageView> = match ids {
            None => unread,
            Some(ids) => unread.into_iter().filter(|m| ids.contains(&m.id)).collect(),
        };
        let now = now_ms();
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

    pub async fn devices(&mut self) -> Result<Vec<v1::DeviceInfo>, ClientError> {
        match self
            .conn
            .call(Request::ListDevices(v1::ListDevices {}))
            .await?
        {
            Body::DeviceList(l) => Ok(l.devices),
            other => Err(unexpected(other)),
        }
    }

    pub async fn approve_link(&mut self, code: &str) -> Result<v1::DeviceInfo, ClientError> {
        match self
            .conn
            .call(Request::ApproveLink(v1::ApproveLink { code: code.into() }))
            .await?
        {
            Body::DeviceLinked(d) => Ok(d),
            other => Err(unexpected(other)),
        }
    }

    pub async fn remove_device(&mut self, device_id: u64) -> Result<(), ClientError> {
        self.call_ok(Request::RemoveDevice(v1::RemoveDevice { device_id }))
            .await
    }

    pub async fn set_pin(&mut self, pin: &str) -> Result<(), ClientError> {
        self.call_ok(Request::SetPin(v1::SetPin { pin: pin.into() }))
            .await
    }

    /// A request whose only good answer is `Ok`.
    async fn call_ok(&mut self, request: Request) -> Result<(), ClientError> {
        match self.conn.call(request).await? {
            Body::Ok(_) => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    pub async fn close(self) -> Profile {
        self.conn.close().await;
        self.profile
    }
}

use crate::profile::OutboxEntry as Outgoing;

fn queue_receipts(
    p: &Profile,
    kind: v1::ReceiptType,
    by_sender: BTreeMap<String, Vec<Vec<u8>>>,
) -> Result<Vec<Outgoing>, ClientError> {
    let mut queued = Vec::new();
    for (to, ids) in by_sender {
        for chunk in ids.chunks(256) {
            let content = v1::Content {
                kind: Some(Kind::Receipt(v1::Receipt {
                    r#type: kind as i32,
                    message_ids: chunk.to_vec(),
                })),
            };
            let id = new_id();
            let body = content.encode_to_vec();
            p.queue_outgoing(&id, &to, &body)?;
            queued.push((id, to.clone(), body));
        }
    }
    Ok(queued)
}

/// Stores a text as the user's and puts it in the outbox (🕓), without a
/// connection: it leaves with the next `connect`. Returns the outbox entry.
pub fn queue_text(profile: &Profile, to: &str, text: &str) -> Result<Outgoing, ClientError> {
    let reg = profile.registration()?;
    let to = phone(to)?;
    let id = new_id();
    let sent_at_ms = now_ms();
    let content = v1::Content {
        kind: Some(Kind::Text(v1::Text {
            body: text.into(),
            sent_at_ms,
        })),
    };
    let body = content.encode_to_vec();
    if body.len() > dak_proto::MAX_BODY_BYTES {
        return Err(ClientError::Usage(format!(
            "the message is {} bytes; the limit is {} bytes",
            body.len(),
            dak_proto::MAX_BODY_BYTES
        )));
    }
    let view = MessageView {
        id: id.clone(),
        conversation: to.clone(),
        from: reg.phone,
        from_device: reg.device_id,
        outgoing: true,
        text: text.into(),
        sent_at_ms,
        server_time_ms: 0,
        acked: false,
        read_ms: 0,
    };
    profile.transaction(|p| {
        p.insert_message(&view)?;
        p.queue_outgoing(&id, &to, &body)
    })?;
    Ok((id, to, body))
}

/// A message's tick from the profile alone (no connection needed).
pub fn tick_of(profile: &Profile, id: &[u8]) -> Result<Tick, ClientError> {
    let Some(m) = profile.message(id)? else {
        return Err(ClientError::Usage(format!(
            "no message {} in this profile",
            format_id(id)
        )));
    };
    let devices = profile.recipients(id)?;
    let state = if !m.acked {
        TickState::Pending
    } else if devices.iter().any(|d| d.read_ms > 0) {
        TickState::Read
    } else if !devices.is_empty() && devices.iter().all(|d| d.delivered_ms > 0) {
        TickState::Delivered
    } else {
        TickState::Sent
    };
    Ok(Tick { state, devices })
}
