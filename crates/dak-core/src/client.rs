//! What a user does with a device: register, link, send, receive, read, and
//! the ticks that follow. Every incoming batch is stored in the profile in
//! one transaction before it is acked to the server, and every outgoing
//! message sits in the outbox until the server acks it, so neither a crash
//! of the client nor of the server loses a message; redeliveries are
//! dropped by message id.

use std::collections::{BTreeMap, BTreeSet};

use dak_proto::v1::{self, ErrorCode, client_frame::Request, content::Kind, server_frame::Body};
use dak_proto::{AuthPurpose, normalize_phone};
use ed25519_dalek::SigningKey;
use prost::Message;
use serde::Serialize;

use crate::ClientError;
use crate::connection::{Connection, unexpected};
use crate::groups::{FollowUp, GroupChange};
use crate::incoming::{self, Delivered};
use crate::mls::{Incoming, MemberDevice};
use crate::transport::CertTrust;
use crate::{MessageView, Profile, Quote, RecipientState, Registration, parse_group_key, ser_id};

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
    /// A message that could not be decrypted or decoded (corrupted, from a
    /// wrong epoch, replayed, or this device lost its keys): counted, acked
    /// and shown as a state; it never blocks the messages after it.
    Undecodable {
        id: Vec<u8>,
        from: String,
        reason: String,
    },
    /// A contact's devices or keys changed in a conversation: the safety
    /// number changed (`dak safety`).
    SecurityNotice {
        conversation: String,
        phone: String,
    },
    /// Something happened in a group (`by` did it; empty when unknown).
    Group {
        conversation: String,
        by: String,
        change: GroupChange,
    },
    /// An emoji on a message (empty: taken back).
    Reaction {
        conversation: String,
        id: Vec<u8>,
        from: String,
        emoji: String,
    },
    /// The sender edited a message.
    Edited {
        conversation: String,
        id: Vec<u8>,
        text: String,
    },
    /// The sender deleted a message for everyone.
    Deleted {
        conversation: String,
        id: Vec<u8>,
    },
}

/// Largest encoded content: MLS adds a header, a signature and the AEAD tag
/// (about 150 bytes), and the ciphertext must fit the server's body limit.
const MAX_PLAINTEXT_BYTES: usize = dak_proto::MAX_BODY_BYTES - 1024;

/// One-time KeyPackages a device keeps on the server, and when to top up.
const KEY_PACKAGE_TARGET: u32 = 40;
const KEY_PACKAGE_LOW: u32 = 10;
/// How often a send retries after the group moved on or its devices changed.
const GROUP_RETRIES: usize = 6;
/// Room in a frame for a SendCommit's other fields (ids, device lists).
pub(crate) const COMMIT_FRAME_OVERHEAD: usize = 4 * 1024;
/// How long to wait for the commit that won an epoch to arrive.
const CATCH_UP_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// What the key directory holds for one account.
pub(crate) struct Fetched {
    /// Its active devices that can be in groups.
    pub active: Vec<u64>,
    /// KeyPackages for those the caller did not name as known.
    pub packages: Vec<(u64, openmls::prelude::KeyPackage)>,
}

/// The state of this device's group with a contact, for tests and `dak safety`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CryptoState {
    pub group_id: Vec<u8>,
    pub epoch: u64,
    pub authenticator: Vec<u8>,
    pub members: Vec<(String, u64)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SendOutcome {
    #[serde(serialize_with = "ser_id")]
    pub id: Vec<u8>,
    pub server_time_ms: i64,
    pub recipient_devices: usize,
}

pub use crate::format_id;

/// How long message ids are remembered for dedup: twice the default retention.
const SEEN_KEEP_MS: i64 = 60 * 24 * 3600 * 1000;

fn phone(raw: &str) -> Result<String, ClientError> {
    normalize_phone(raw)
        .map_err(|e| ClientError::Server(v1::Error::new(ErrorCode::InvalidPhone, e.to_string())))
}

/// Opens a connection through the profile's environment, pinning the
/// certificate if the profile knows one.
async fn open(
    profile: &Profile,
    server: &str,
    trust: CertTrust,
) -> Result<(Connection, Option<String>), ClientError> {
    let opened = profile.env().connect(server, &trust).await?;
    Ok((
        Connection::open(opened.transport, profile.env_arc()).await?,
        opened.fingerprint,
    ))
}

/// The first node of a comma-separated list that answers, trusting its
/// certificate on first use. The nodes of a cluster share one certificate.
async fn open_first(
    profile: &Profile,
    servers: &str,
) -> Result<(Connection, Option<String>), ClientError> {
    open_any(profile, servers, CertTrust::FirstUse).await
}

async fn open_any(
    profile: &Profile,
    servers: &str,
    trust: CertTrust,
) -> Result<(Connection, Option<String>), ClientError> {
    let mut last =
        ClientError::Usage("give a server address, like wss://chat.example.org:7443".into());
    for server in crate::split_servers(servers) {
        match open(profile, &server, trust.clone()).await {
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
    /// Events handled while waiting for a commit (see `catch_up`), given
    /// out by the next `next_events`.
    backlog: Vec<Event>,
    /// Receipts queued by deliveries handled while catching up; sent by
    /// the next `handle_push` (they are in the outbox meanwhile).
    unsent_receipts: Vec<OutboxEntry>,
    /// A Welcome used one of our KeyPackages since the last top-up.
    keys_used: bool,
    /// Group work deliveries called for, done by the next `answer`.
    follow_ups: Vec<FollowUp>,
    /// Named groups that gained devices: their state is sent again once
    /// the send in progress is done.
    reshare: Vec<Vec<u8>>,
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
        let (mut conn, fingerprint) = open_first(profile, server).await?;
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
        let (mut conn, _) = open_any(profile, &server, trust_for(profile, "pending_cert")?).await?;
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
        let Body::Registered(r) = answer else {
            return Err(unexpected(answer));
        };
        let cert = profile.get("pending_cert")?.unwrap_or_default();
        profile.set("cert", &cert)?;
        profile.save_registration(&server, &r.phone, r.device_id)?;
        for k in ["pending_server", "pending_phone", "pending_cert"] {
            profile.delete(k)?;
        }
        // Ready for encrypted chats before anyone writes: if this fails, the
        // next connect uploads them.
        if let Err(e) = top_up_key_packages(profile, &mut conn, 0, false).await {
            tracing::warn!(error = %e, "KeyPackages not uploaded yet; the next connection will");
        }
        conn.close().await;
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
        let (mut conn, fingerprint) = open_first(profile, server).await?;
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
        let approved = crate::env::timeout(profile.env(), wait, async {
            loop {
                match conn.next_push().await? {
                    Body::LinkApproved(a) => return Ok(a),
                    Body::Error(e) => return Err(ClientError::Server(e)),
                    _ => continue,
                }
            }
        })
        .await
        .ok_or_else(|| {
            ClientError::Timeout(
                "the link code expired before it was approved; run `dak link` again".into(),
            )
        })??;
        profile.set("cert", fingerprint.unwrap_or_default().as_bytes())?;
        profile.save_registration(server, &approved.phone, approved.device_id)?;
        if let Err(e) = top_up_key_packages(profile, &mut conn, 0, false).await {
            tracing::warn!(error = %e, "KeyPackages not uploaded yet; the next connection will");
        }
        conn.close().await;
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
        let deadline = profile.now_ms().saturating_add(patience.as_millis() as i64);
        let mut backoff = std::time::Duration::from_millis(100);
        loop {
            match Self::try_connect(profile).await {
                Ok(c) => return Ok(c),
                Err((p, e))
                    if e.is_retryable()
                        && p.now_ms().saturating_add(backoff.as_millis() as i64) < deadline =>
                {
                    // Jitter (50-100% of the backoff): clients that lost the same
                    // node do not all come back in the same instant.
                    let half = backoff / 2;
                    let wait = half
                        + std::time::Duration::from_millis(crate::env::random_below(
                            p.env(),
                            half.as_millis() as u64 + 1,
                        ));
                    tracing::debug!(error = %e, ?wait, "no node reachable; backing off");
                    p.env().sleep(wait).await;
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
        let start = crate::env::random_below(profile.env(), servers.len() as u64) as usize;
        let mut last = ClientError::Transport("no server address in this profile".into());
        for i in 0..servers.len() {
            let server = &servers[(start + i) % servers.len()];
            match Self::authenticate_at(&profile, server).await {
                Ok((conn, reg, auth)) => {
                    return Self::finish_connect(profile, conn, reg, auth, server).await;
                }
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
    ) -> Result<(Connection, Registration, v1::Authenticated), ClientError> {
        let reg = profile.registration()?;
        let key = profile.identity()?;
        let (mut conn, _) = open(profile, server, trust_for(profile, "cert")?).await?;
        let auth = conn.authenticate(&key, reg.device_id).await?;
        Ok((conn, reg, auth))
    }

    /// Sends the outbox on the fresh connection; on failure the profile comes back.
    async fn finish_connect(
        profile: Profile,
        mut conn: Connection,
        reg: Registration,
        auth: v1::Authenticated,
        server: &str,
    ) -> Result<Client, (Profile, ClientError)> {
        if let Err(e) =
            top_up_key_packages(&profile, &mut conn, auth.key_packages, auth.has_last_resort).await
        {
            return Err((profile, e));
        }
        // Redeliveries can only come within the server's retention (30 days
        // by default), so older dedup entries can go.
        if let Err(e) = profile.prune_seen(profile.now_ms() - SEEN_KEEP_MS) {
            return Err((profile, e));
        }
        let mut client = Client {
            profile,
            conn,
            reg,
            server: server.to_string(),
            undecodable: 0,
            backlog: Vec::new(),
            unsent_receipts: Vec::new(),
            keys_used: false,
            follow_ups: Vec::new(),
            reshare: Vec::new(),
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
        self.send_text_with(to, text, &TextOptions::default()).await
    }

    /// Sends a text that replies to a message or is forwarded.
    pub async fn send_text_with(
        &mut self,
        to: &str,
        text: &str,
        opts: &TextOptions,
    ) -> Result<SendOutcome, ClientError> {
        let (id, to, body) = queue_text_with(&self.profile, to, text, opts)?;
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
        for group in std::mem::take(&mut self.reshare) {
            if let Err(e) = Box::pin(self.reshare_state(&group)).await {
                tracing::warn!(group = %format_id(&group), error = %e, "group settings not sent to new devices yet");
            }
        }
        Ok(ack)
    }

    /// Sends a named group's settings again (to devices just added).
    async fn reshare_state(&mut self, group: &[u8]) -> Result<(), ClientError> {
        let Some(state) = self.profile.group_state(group)? else {
            return Ok(());
        };
        let content = v1::Content {
            kind: Some(Kind::GroupState(state)),
        };
        self.send_content(&crate::group_key(group), content)
            .await
            .map(|_| ())
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
                    tracing::warn!(id = %format_id(&id), error = %e, "an outbox entry could not be sent now; it stays queued unless the server refused it for good")
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

    async fn push_queued(&mut self, queued: Vec<OutboxEntry>) -> Result<(), ClientError> {
        for (id, to, body) in queued {
            self.push_outgoing(&id, &to, body).await?;
        }
        Ok(())
    }

    /// Waits for the next push and handles it. Not cancel-safe (a batch may
    /// be stored and its events dropped): to time out or `select!`, use
    /// `recv_push` and `handle_push`.
    pub async fn next_events(&mut self) -> Result<Vec<Event>, ClientError> {
        if !self.backlog.is_empty() {
            return Ok(std::mem::take(&mut self.backlog));
        }
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
        let mut events = std::mem::take(&mut self.backlog);
        events.extend(self.handle_push_inner(body).await?);
        self.answer().await;
        Ok(events)
    }

    /// Sends the receipts and KeyPackages that deliveries called for.
    /// Failures wait: receipts stay in the outbox, keys are topped up later.
    async fn answer(&mut self) {
        if std::mem::take(&mut self.keys_used)
            && let Err(e) = self.refresh_key_packages().await
        {
            tracing::debug!(error = %e, "KeyPackage top-up postponed");
        }
        let receipts = std::mem::take(&mut self.unsent_receipts);
        if let Err(e) = self.push_queued(receipts).await {
            tracing::debug!(error = %e, "receipts stay in the outbox");
        }
        let mut work = std::mem::take(&mut self.follow_ups);
        work.dedup();
        for w in work {
            if let Err(e) = self.follow_up(w.clone()).await {
                tracing::warn!(error = %e, work = ?w, "group work postponed");
            }
        }
    }

    /// Handles one push without sending anything (a send may be waiting on it).
    async fn handle_push_inner(&mut self, body: Body) -> Result<Vec<Event>, ClientError> {
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
                        out.events.push(Event::Undecodable { id: e.message_id, from: e.sender_phone, reason: err.to_string() });
                        continue;
                    }
                };
                let (group, phone, device, plaintext) = match incoming {
                    Incoming::Application { group, phone, device_id, plaintext } => (group, phone, device_id, plaintext),
                    Incoming::Joined { group } => {
                        incoming::on_joined(p, &me, &group, now, &mut out)?;
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
                    let reason = "the encrypted sender differs from the server's envelope".to_string();
                    tracing::warn!(id = %format_id(&e.message_id), %reason, "message refused");
                    out.events.push(Event::Undecodable { id: e.message_id, from: e.sender_phone, reason });
                    continue;
                }
                let content = match dak_proto::decode_content(&plaintext) {
                    Ok(c) => c,
                    Err(err) => {
                        out.undecodable += 1;
                        tracing::warn!(id = %format_id(&e.message_id), error = %err, "undecodable message body");
                        out.events.push(Event::Undecodable { id: e.message_id, from: e.sender_phone, reason: err.to_string() });
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
                incoming::on_content(p, &me, &group, &from, content, &mut out)?;
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
        let acked = self
            .conn
            .call(Request::AckDeliveries(v1::AckDeliveries { seqs }))
            .await;
        if let Err(e) = acked {
            tracing::debug!(error = %e, "ack failed; the server will redeliver and we will drop the copies");
            return Ok(events);
        }
        self.keys_used |= out.joined;
        self.unsent_receipts.extend(receipts);
        self.follow_ups.extend(out.follow_ups);
        Ok(events)
    }

    // ---- MLS: groups, commits and the key directory ----

    /// Encrypts for the conversation with `to` and sends, bringing the
    /// group up to date first when the server says it moved on.
    async fn send_encrypted(
        &mut self,
        id: &[u8],
        to: &str,
        plaintext: &[u8],
    ) -> Result<v1::SendAck, ClientError> {
        let mut last = None;
        for _ in 0..GROUP_RETRIES {
            let group = self.group_with(to).await?;
            let body = self
                .profile
                .transaction(|p| p.mls(|m| m.encrypt(&group, plaintext)))?;
            let request = Request::SendMessage(v1::SendMessage {
                message_id: id.to_vec(),
                body,
                expires_in_secs: expires_in(plaintext),
            });
            match self.conn.call(request).await {
                Ok(Body::SendAck(ack)) => return Ok(ack),
                Ok(other) => return Err(unexpected(other)),
                Err(e) => {
                    if !self.recover(&group, &e).await? {
                        return Err(e);
                    }
                    last = Some(e.to_string());
                }
            }
        }
        // Retryable: the message stays in the outbox for the next attempt.
        Err(ClientError::Timeout(format!(
            "the conversation kept changing ({}); the message stays queued",
            last.unwrap_or_default()
        )))
    }

    /// Acts on a group refusal so that a retry can succeed. False for any
    /// other error: there is nothing to fix, the caller gives up.
    async fn recover(&mut self, group: &[u8], e: &ClientError) -> Result<bool, ClientError> {
        match e.code() {
            Some(ErrorCode::StaleEpoch) => {
                let epoch = match e {
                    ClientError::Server(s) => s.epoch,
                    _ => 0,
                };
                self.catch_up(group, epoch).await?;
            }
            Some(ErrorCode::GroupDevicesChanged) => self.reconcile(group).await?,
            Some(ErrorCode::NotAMember) => self.profile.retire_conversation(group)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The group for the conversation with `peer` (a number, or a named
    /// group's key), a 1:1 one started if there is none.
    async fn group_with(&mut self, peer: &str) -> Result<Vec<u8>, ClientError> {
        if parse_group_key(peer).is_some() {
            return self.named_group_for_send(peer).await;
        }
        if let Some(group) = self.profile.group_for(peer)? {
            if self.profile.mls(|m| m.has_group(&group))? && self.settle(&group).await? {
                return Ok(group);
            }
            tracing::warn!(group = %format_id(&group), "conversation state unusable; starting a new one");
            self.profile.retire_conversation(&group)?;
        }
        self.start_group(peer).await
    }

    /// A named group, ready to send in: pending commits settled and members
    /// who left removed.
    async fn named_group_for_send(&mut self, key: &str) -> Result<Vec<u8>, ClientError> {
        let gone = || ClientError::Usage(format!("you are not a member of the group {key}"));
        let group = self.profile.group_for(key)?.ok_or_else(gone)?;
        if !self.profile.mls(|m| m.has_group(&group))? || !self.settle(&group).await? {
            self.profile.retire_conversation(&group)?;
            return Err(gone());
        }
        self.remove_leavers(&group).await?;
        Ok(group)
    }

    /// Creates a group with every device of `peer` and this account's other
    /// devices: the Welcome goes with the first commit, so the first message
    /// needs nothing back from the recipient.
    async fn start_group(&mut self, peer: &str) -> Result<Vec<u8>, ClientError> {
        let me = self.reg.phone.clone();
        let mut adds = Vec::new();
        if peer != me {
            let theirs = self.fetch_key_packages(peer, &[]).await?;
            if theirs.packages.is_empty() {
                return Err(ClientError::Usage(format!(
                    "{peer} has no device ready for encrypted chat yet; ask them to open Dak once"
                )));
            }
            adds.extend(theirs.packages);
        }
        adds.extend(
            self.fetch_key_packages(&me, &[self.reg.device_id])
                .await?
                .packages,
        );
        let group = self.profile.transaction(|p| {
            let group = p.mls(|m| m.create_group())?;
            p.add_conversation(&group, peer, p.now_ms())?;
            Ok(group)
        })?;
        self.commit(&group, adds, Vec::new()).await?;
        Ok(group)
    }

    /// Resolves a commit left pending by a lost connection: if the server
    /// took it, it is in our mailbox and merges as our own; if not, it is
    /// dropped. False when the group does not exist on the server.
    async fn settle(&mut self, group: &[u8]) -> Result<bool, ClientError> {
        if !self.profile.mls(|m| m.has_pending(group))? {
            return Ok(true);
        }
        let server = match self
            .conn
            .call(Request::GetGroupEpoch(v1::GetGroupEpoch {
                group_id: group.to_vec(),
            }))
            .await?
        {
            Body::GroupEpoch(g) => g,
            other => return Err(unexpected(other)),
        };
        let local = self.profile.mls(|m| m.epoch(group))?;
        if server.exists && server.epoch > local {
            self.catch_up(group, server.epoch).await?;
        }
        if self.profile.mls(|m| m.has_pending(group))? {
            self.profile
                .transaction(|p| p.mls(|m| m.clear_pending(group)))?;
        }
        Ok(server.exists)
    }

    /// Handles pushes until the group reaches `epoch` (the commit that won
    /// is in our mailbox, behind whatever came before it).
    async fn catch_up(&mut self, group: &[u8], epoch: u64) -> Result<(), ClientError> {
        let deadline = self.profile.now_ms() + CATCH_UP_WAIT.as_millis() as i64;
        loop {
            let (active, local) = self.profile.mls(|m| {
                let active = m.has_group(group)?;
                Ok((active, if active { m.epoch(group)? } else { 0 }))
            })?;
            if !active || local >= epoch {
                return Ok(());
            }
            let left = deadline - self.profile.now_ms();
            let pushed = if left > 0 {
                let wait = std::time::Duration::from_millis(left as u64);
                crate::env::timeout(self.profile.env(), wait, self.conn.next_push()).await
            } else {
                None
            };
            let body = pushed.ok_or_else(|| {
                ClientError::Timeout(format!(
                    "the commit for epoch {epoch} of a conversation did not arrive"
                ))
            })??;
            let events = self.handle_push_inner(body).await?;
            self.backlog.extend(events);
        }
    }

    /// Brings the group's devices in line with the directory: adds the
    /// member accounts' new devices and removes their unlinked ones.
    async fn reconcile(&mut self, group: &[u8]) -> Result<(), ClientError> {
        for _ in 0..GROUP_RETRIES {
            let members = self.profile.mls(|m| m.members(group))?;
            let phones: BTreeSet<String> = members.iter().map(|m| m.phone.clone()).collect();
            let mut adds = Vec::new();
            let mut removes = Vec::new();
            let mut changed = Vec::new();
            for phone in phones {
                let known: Vec<u64> = members
                    .iter()
                    .filter(|m| m.phone == phone)
                    .map(|m| m.device_id)
                    .collect();
                let fetched = self.fetch_key_packages(&phone, &known).await?;
                let before = adds.len() + removes.len();
                adds.extend(fetched.packages);
                removes.extend(
                    members
                        .iter()
                        .filter(|m| {
                            m.phone == phone
                                && !fetched.active.contains(&m.device_id)
                                && m.device_id != self.reg.device_id
                        })
                        .cloned(),
                );
                if adds.len() + removes.len() > before && phone != self.reg.phone {
                    changed.push(phone);
                }
            }
            if adds.is_empty() && removes.is_empty() {
                return Ok(());
            }
            let added = !adds.is_empty();
            match self.commit(group, adds, removes).await {
                Ok(()) => {
                    if added && crate::mls::is_named_group(group) {
                        // The new devices learn the title and admins from this.
                        self.reshare.push(group.to_vec());
                    }
                    // The contact's devices changed: so did the safety number.
                    let conversation = self.profile.peer_of(group)?.unwrap_or_default();
                    self.backlog
                        .extend(changed.into_iter().map(|phone| Event::SecurityNotice {
                            conversation: conversation.clone(),
                            phone,
                        }));
                    return Ok(());
                }
                Err(e) if e.code() == Some(ErrorCode::StaleEpoch) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(ClientError::Protocol(
            "the conversation kept changing; try again".into(),
        ))
    }

    /// Sends a commit; merges it on the ack. On STALE_EPOCH it is dropped
    /// and the winner processed (the caller redoes its change); on a lost
    /// connection it stays pending for `settle`.
    pub(crate) async fn commit(
        &mut self,
        group: &[u8],
        adds: Vec<(u64, openmls::prelude::KeyPackage)>,
        removes: Vec<MemberDevice>,
    ) -> Result<(), ClientError> {
        let added_devices: Vec<u64> = adds.iter().map(|(d, _)| *d).collect();
        let removed_devices: Vec<u64> = removes.iter().map(|m| m.device_id).collect();
        let out = self.profile.transaction(|p| {
            p.mls(|m| {
                m.commit(
                    group,
                    adds.into_iter().map(|(_, kp)| kp).collect(),
                    removes.iter().map(|r| r.leaf).collect(),
                )
            })
        })?;
        let welcome = out.welcome.unwrap_or_default();
        let size = out.commit.len() + welcome.len();
        if size + COMMIT_FRAME_OVERHEAD > dak_proto::MAX_FRAME_BYTES
            || welcome.len() > dak_proto::mls::MAX_MLS_BYTES
        {
            self.profile
                .transaction(|p| p.mls(|m| m.clear_pending(group)))?;
            return Err(ClientError::TooLarge(format!(
                "a commit with its Welcome is {size} bytes for {} new devices; one frame holds {}",
                added_devices.len(),
                dak_proto::MAX_FRAME_BYTES
            )));
        }
        let request = Request::SendCommit(v1::SendCommit {
            message_id: self.profile.new_message_id(),
            commit: out.commit,
            welcome,
            added_devices,
            removed_devices,
        });
        match self.conn.call(request).await {
            Ok(Body::SendAck(_)) => self
                .profile
                .transaction(|p| p.mls(|m| m.merge_pending(group))),
            Ok(other) => Err(unexpected(other)),
            Err(e) if !matches!(e, ClientError::Server(_)) => Err(e),
            Err(e) => {
                self.profile
                    .transaction(|p| p.mls(|m| m.clear_pending(group)))?;
                if let ClientError::Server(s) = &e
                    && s.kind() == ErrorCode::StaleEpoch
                {
                    self.catch_up(group, s.epoch).await?;
                }
                Err(e)
            }
        }
    }

    /// KeyPackages for `phone`'s devices not in `known`, each checked to be
    /// signed by the identity key the server bound to that device.
    pub(crate) async fn fetch_key_packages(
        &mut self,
        phone: &str,
        known: &[u64],
    ) -> Result<Fetched, ClientError> {
        let answer = self
            .conn
            .call(Request::FetchKeyPackages(v1::FetchKeyPackages {
                phone: phone.into(),
                known_devices: known.to_vec(),
            }))
            .await?;
        let Body::KeyPackages(k) = answer else {
            return Err(unexpected(answer));
        };
        let mut fetched = Fetched {
            active: k.devices.iter().map(|d| d.device_id).collect(),
            packages: Vec::new(),
        };
        for d in k.devices.into_iter().filter(|d| !d.key_package.is_empty()) {
            let kp = self.profile.mls(|m| {
                m.fetched_key_package(&d.key_package, &k.phone, d.device_id, &d.identity_key)
            })?;
            fetched.packages.push((d.device_id, kp));
        }
        Ok(fetched)
    }

    /// Uploads KeyPackages if the server holds few.
    async fn refresh_key_packages(&mut self) -> Result<(), ClientError> {
        let answer = self
            .conn
            .call(Request::UploadKeyPackages(v1::UploadKeyPackages::default()))
            .await?;
        let Body::KeyPackageCount(c) = answer else {
            return Err(unexpected(answer));
        };
        top_up_key_packages(&self.profile, &mut self.conn, c.one_time, c.has_last_resort).await
    }

    /// Makes a commit that only refreshes this device's keys in the
    /// conversation with `peer` (post-compromise security), retrying if
    /// another device's commit wins the epoch.
    pub async fn self_update(&mut self, peer: &str) -> Result<(), ClientError> {
        let peer = phone(peer)?;
        for _ in 0..GROUP_RETRIES {
            let group = self.group_with(&peer).await?;
            match self.commit(&group, Vec::new(), Vec::new()).await {
                Ok(()) => return Ok(()),
                Err(e) if e.code() == Some(ErrorCode::StaleEpoch) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(ClientError::Protocol(
            "the conversation kept changing; try again".into(),
        ))
    }

    /// This device's view of the conversation with `peer`, if it has one.
    pub fn crypto_state(&self, peer: &str) -> Result<Option<CryptoState>, ClientError> {
        let peer = phone(peer)?;
        let Some(group) = self.profile.group_for(&peer)? else {
            return Ok(None);
        };
        self.profile.mls(|m| {
            Ok(Some(CryptoState {
                epoch: m.epoch(&group)?,
                authenticator: m.authenticator(&group)?,
                members: m
                    .members(&group)?
                    .into_iter()
                    .map(|d| (d.phone, d.device_id))
                    .collect(),
                group_id: group.clone(),
            }))
        })
    }

    /// The conversation's safety number (see `mls::safety_number`): compare
    /// it with the contact's, in person or by a call.
    pub async fn safety_number(&mut self, peer: &str) -> Result<String, ClientError> {
        let peer = phone(peer)?;
        let group = self.group_with(&peer).await?;
        self.reconcile(&group).await?;
        let members = self.profile.mls(|m| m.members(&group))?;
        Ok(crate::mls::safety_number(&members))
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
        to: &str,
        content: v1::Content,
    ) -> Result<SendOutcome, ClientError> {
        let id = self.profile.new_message_id();
        let body = content.encode_to_vec();
        check_plaintext_size(&body)?;
        self.profile.queue_outgoing(&id, to, &body)?;
        let ack = self.push_outgoing(&id, to, body).await?;
        Ok(SendOutcome {
            id,
            server_time_ms: ack.server_time_ms,
            recipient_devices: ack.recipients.len(),
        })
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

    /// Unlinks a device, then removes its leaves from every conversation
    /// this device is in (any that fail here are fixed on their next send).
    pub async fn remove_device(&mut self, device_id: u64) -> Result<(), ClientError> {
        self.call_ok(Request::RemoveDevice(v1::RemoveDevice { device_id }))
            .await?;
        if device_id == self.reg.device_id {
            return Ok(());
        }
        for (group, _) in self.profile.active_groups()? {
            if let Err(e) = self.reconcile(&group).await {
                tracing::warn!(group = %format_id(&group), error = %e, "device removal postponed in a conversation");
            }
        }
        Ok(())
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

use crate::OutboxEntry;

fn queue_receipts(
    p: &Profile,
    kind: v1::ReceiptType,
    by_sender: BTreeMap<String, Vec<Vec<u8>>>,
) -> Result<Vec<OutboxEntry>, ClientError> {
    let mut queued = Vec::new();
    for (to, ids) in by_sender {
        for chunk in ids.chunks(256) {
            let content = v1::Content {
                kind: Some(Kind::Receipt(v1::Receipt {
                    r#type: kind as i32,
                    message_ids: chunk.to_vec(),
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
    let id = profile.new_message_id();
    let sent_at_ms = profile.now_ms();
    let reply_to = opts
        .reply_to
        .as_ref()
        .map(|q| quote_of(profile, q))
        .transpose()?;
    let expire_secs = timer_of(profile, &to)?;
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
        })),
    };
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
        expires_at_ms: if expire_secs > 0 {
            sent_at_ms + expire_secs as i64 * 1000
        } else {
            0
        },
        ..Default::default()
    };
    profile.transaction(|p| {
        p.insert_message(&view)?;
        p.queue_outgoing(&id, &to, &body)
    })?;
    Ok((id, to, body))
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
const QUOTE_CHARS: usize = 100;

fn quote_of(profile: &Profile, id: &[u8]) -> Result<Quote, ClientError> {
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

/// Uploads enough one-time KeyPackages to reach the target, and a
/// last-resort one if the server has none.
async fn top_up_key_packages(
    profile: &Profile,
    conn: &mut Connection,
    one_time: u32,
    has_last_resort: bool,
) -> Result<(), ClientError> {
    if one_time >= KEY_PACKAGE_LOW && has_last_resort {
        return Ok(());
    }
    let want = KEY_PACKAGE_TARGET.saturating_sub(one_time) as usize;
    let (key_packages, last_resort) = profile.transaction(|p| {
        p.mls(|m| {
            let last = if has_last_resort {
                Vec::new()
            } else {
                m.last_resort_key_package()?
            };
            Ok((m.key_packages(want)?, last))
        })
    })?;
    let answer = conn
        .call(Request::UploadKeyPackages(v1::UploadKeyPackages {
            key_packages,
            last_resort,
        }))
        .await?;
    match answer {
        Body::KeyPackageCount(_) => Ok(()),
        other => Err(unexpected(other)),
    }
}

/// The disappearing-message time a content asks the server for.
fn expires_in(plaintext: &[u8]) -> u32 {
    match dak_proto::decode_content(plaintext) {
        Ok(v1::Content {
            kind: Some(Kind::Text(t)),
        }) => t.expire_secs,
        _ => 0,
    }
}

/// Whether an envelope is for a conversation this device has left (a
/// Welcome, which names no group in the clear, never is).
fn addressed_to_retired(p: &Profile, body: &[u8]) -> Result<bool, ClientError> {
    match dak_proto::mls::inspect(body) {
        Ok(info) if info.kind != dak_proto::mls::MlsKind::Welcome => {
            Ok(p.conversation_active(&info.group_id)? == Some(false))
        }
        _ => Ok(false),
    }
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
