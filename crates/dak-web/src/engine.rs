//! `Engine`: the one task that owns this browser's device. The page talks
//! to it only through `Command`s (from `api.rs`) and hears from it only
//! through JSON events, so no two calls from the page ever touch the
//! profile or the connection at once.
//!
//! Its states: `Idle(Profile)` (not registered yet, or offline) and
//! `Online(Client)`. Online it waits on either a command or a push from
//! the server (`recv_push` is cancel-safe; the push is then handled to
//! completion outside the wait, as the CLI's chat does). A connection
//! that worked and is lost is retried at once (a server restart); after a
//! failed attempt, or a connection that never handled anything, it waits
//! (1 s doubling to 30 s, jittered; at once when the page says the network
//! is back), and while waiting still answers the page: the chat list, a
//! chat's messages, and a text typed while offline, which is stored with
//! 🕓 and goes out when the connection returns. It answers nothing during
//! a connection attempt (each is bounded: 10 s to open a socket, the
//! core's timeouts after) or while a link code waits for its approval.
//!
//! Only the server saying this device is gone (`is_device_gone`) stops the
//! retries (`signed_out`); any other failure is `offline`.
//!
//! Events (one JSON object each, to the page's callback):
//! - `{"type":"status","state":"no_account"|"connecting"|"online"|"offline"|"signed_out","phone","device_id","detail"}`
//! - `{"type":"message","chat","from","text"}`: a new incoming message
//!   (the page may notify); followed by `changed`.
//! - `{"type":"security_notice","chat","phone"}`: `phone`'s devices or
//!   keys changed in this chat: the safety number changed.
//! - `{"type":"changed"}`: something shown may have changed (ticks, new
//!   messages, a group): the page reads the list and the open chat again.
//! - `{"type":"link_code","code","expires_in_secs"}`: show this code to
//!   the primary device (`dak devices approve CODE`).

use std::time::Duration;

use futures_channel::{mpsc, oneshot};
use futures_util::StreamExt;
use futures_util::future::{Either, select};
use serde_json::{Value, json};

use dak_core::{Client, ClientError, Event, Profile};

use crate::views;

/// How the engine answers a command: a JSON value, or an error.
pub type Reply = oneshot::Sender<Result<Value, Failure>>;

/// An error for the page: a stable code it can translate, and the core's
/// (English) words.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Failure {
    pub code: String,
    pub message: String,
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Failure {
        let code = match &e {
            ClientError::Server(s) => s.kind().as_str_name().to_string(),
            e if e.is_connection_lost() => "OFFLINE".into(),
            ClientError::NotRegistered => "NOT_REGISTERED".into(),
            ClientError::Usage(_) => "USAGE".into(),
            _ => "ERROR".into(),
        };
        Failure {
            code,
            message: e.to_string(),
        }
    }
}

pub enum Command {
    Status(Reply),
    RequestCode {
        server: String,
        phone: String,
        reply: Reply,
    },
    Verify {
        code: String,
        pin: String,
        device_name: String,
        reply: Reply,
    },
    Link {
        server: String,
        device_name: String,
        reply: Reply,
    },
    Chats(Reply),
    /// The operator's notices this device accepted (`dak notices`).
    Notices(Reply),
    /// A chat's newest `limit` messages (the page asks for more as the
    /// user scrolls back; at most `views::MAX_CHAT_PAGE`).
    Messages {
        chat: String,
        limit: usize,
        reply: Reply,
    },
    Send {
        chat: String,
        text: String,
        /// The message it answers (quoted), by id.
        reply_to: Option<String>,
        reply: Reply,
    },
    /// Anything else done to a message or a chat (`actions.rs`).
    Act {
        action: String,
        reply: Reply,
    },
    /// The chat is on screen and the tab visible: its messages are read.
    MarkRead {
        chat: String,
        reply: Reply,
    },
    /// The network is back (the browser's `online` event): retry now.
    Reconnect,
    /// The account's devices (`dak devices list`).
    Devices(Reply),
    /// Removes a linked device (this one, or any from the primary).
    RemoveDevice {
        device_id: u64,
        reply: Reply,
    },
    /// Approves a new device's link code (`dak devices approve CODE`).
    ApproveLink {
        code: String,
        reply: Reply,
    },
    /// A 1:1 chat's safety number (60 digits), to compare with the
    /// contact's, and how the chat is encrypted (`dak_core::Safety`).
    SafetyNumber {
        chat: String,
        reply: Reply,
    },
    /// A named group: its members, admins and settings (`GroupInfo`).
    GroupInfo {
        chat: String,
        reply: Reply,
    },
    CreateGroup {
        title: String,
        members: Vec<String>,
        reply: Reply,
    },
    AddMembers {
        chat: String,
        members: Vec<String>,
        reply: Reply,
    },
    RemoveMember {
        chat: String,
        member: String,
        reply: Reply,
    },
    /// A file: prepare, send, find or open one (`media.rs`).
    Media {
        request: crate::media::MediaRequest,
        reply: oneshot::Sender<Result<(Value, Vec<u8>), Failure>>,
    },
}

enum Device {
    Idle(Profile),
    Online(Client),
}

/// Waits between reconnection attempts: 1 s doubling to 30 s, each
/// jittered to 50-100% so that the tabs a server restart dropped do not
/// all come back in the same instant.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

fn jittered(profile: &Profile, d: Duration) -> Duration {
    let half = d / 2;
    half + Duration::from_millis(dak_core::env::random_below(
        profile.env(),
        half.as_millis() as u64 + 1,
    ))
}

pub struct Engine {
    commands: mpsc::UnboundedReceiver<Command>,
    emit: Box<dyn Fn(Value)>,
    /// Why the device cannot connect for good (revoked, unknown): no more
    /// retries until the page registers or links again.
    stopped: Option<Failure>,
    /// The last `status` event's state, for `Command::Status`.
    state: &'static str,
    /// The current connection handled a push or a command: it works.
    healthy: bool,
    /// Where the profile lives: `{"persistent": bool, "dropped_bytes": n}`.
    storage: Value,
    /// How big the profile's journal may grow before it is compacted
    /// (`journal::COMPACT_OVER_BYTES`, or the page's diagnostic).
    compact_over: usize,
    /// Files sealed and waiting for the worker to upload them.
    prepared: crate::media::Prepared,
    /// When the connection was last lost (ms; none while online): the page
    /// says since when it has been offline.
    offline_since_ms: Option<i64>,
}

impl Engine {
    pub fn new(
        commands: mpsc::UnboundedReceiver<Command>,
        emit: Box<dyn Fn(Value)>,
        storage: Value,
        compact_over: usize,
    ) -> Engine {
        Engine {
            commands,
            emit,
            stopped: None,
            offline_since_ms: None,
            state: "no_account",
            healthy: false,
            storage,
            compact_over,
            prepared: Default::default(),
        }
    }

    /// Runs until the page drops its `WebClient`.
    pub async fn run(mut self, profile: Profile) {
        let mut device = Device::Idle(profile);
        let mut backoff = FIRST_BACKOFF;
        // A connection was lost (or never made) since the last one that
        // worked: wait before the next attempt.
        let mut wait_first = false;
        loop {
            device = match device {
                Device::Online(client) => {
                    self.healthy = false;
                    match self.online(client).await {
                        Some(Device::Online(c)) => {
                            if self.healthy {
                                backoff = FIRST_BACKOFF;
                            }
                            Device::Online(c)
                        }
                        // Lost: reconnect at once if the connection had
                        // worked (a server restart), else after the backoff
                        // (a push that fails every time must not spin).
                        Some(Device::Idle(p)) => {
                            wait_first = !self.healthy;
                            Device::Idle(p)
                        }
                        None => return,
                    }
                }
                Device::Idle(profile) => {
                    let registered = profile.registration().is_ok();
                    if !registered || self.stopped.is_some() {
                        // Stopped: revoked or unknown to the server; the page
                        // offers to register or link again. Said once, not
                        // after every command (the page reads on each status).
                        let state = if registered {
                            "signed_out"
                        } else {
                            "no_account"
                        };
                        if self.state != state {
                            self.status(&profile, state, None);
                        }
                        match self.commands.next().await {
                            Some(cmd) => Device::Idle(self.idle_command(profile, cmd).await),
                            None => return,
                        }
                    } else {
                        let profile = if wait_first {
                            let wait = jittered(&profile, backoff);
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                            match self.wait_offline(profile, wait).await {
                                Some((p, reset)) => {
                                    if reset {
                                        backoff = FIRST_BACKOFF;
                                    }
                                    p
                                }
                                None => return,
                            }
                        } else {
                            profile
                        };
                        match self.connect(profile).await {
                            Ok(client) => {
                                wait_first = false;
                                Device::Online(client)
                            }
                            Err(profile) => {
                                wait_first = true;
                                Device::Idle(profile)
                            }
                        }
                    }
                }
            };
        }
    }

    /// One connection attempt; the profile comes back when it fails.
    /// Every step is bounded: the socket's opening (`socket.rs`) and each
    /// request (`Connection`'s own timeouts).
    async fn connect(&mut self, profile: Profile) -> Result<Client, Profile> {
        self.status(&profile, "connecting", None);
        match Client::try_connect(profile).await {
            Ok(mut client) => {
                self.status(client.profile(), "online", None);
                // The outbox went out on connecting: its ticks moved, and
                // what came up meanwhile is told now.
                let pending = client.take_pending_events();
                self.events(&pending);
                self.changed();
                Ok(client)
            }
            Err((profile, e)) => {
                let gone = e.is_device_gone();
                let failure = Failure::from(e);
                if gone {
                    self.status(&profile, "signed_out", Some(&failure));
                    self.stopped = Some(failure);
                } else {
                    // Anything else (the network, a full disk, a proxy
                    // that mangles frames) may pass: keep trying.
                    self.status(&profile, "offline", Some(&failure));
                }
                Err(profile)
            }
        }
    }
}

/// Why the connection is gone, if that is what `e` says (then the engine
/// goes offline and reconnects).
fn lost_connection(e: &ClientError) -> Option<Failure> {
    e.is_connection_lost().then(|| Failure {
        code: "OFFLINE".into(),
        message: e.to_string(),
    })
}

/// The link code as a QR code, as `dak link` shows it (`dak-link:CODE`):
/// its width and its modules row by row ("1" dark), for the page to draw.
fn link_qr(code: &str) -> Value {
    match qrcode::QrCode::new(format!("dak-link:{code}")) {
        Ok(qr) => json!({
            "width": qr.width(),
            "modules": qr
                .to_colors()
                .iter()
                .map(|c| if *c == qrcode::Color::Dark { '1' } else { '0' })
                .collect::<String>(),
        }),
        Err(_) => Value::Null,
    }
}

impl Engine {
    /// Online: one command or one push, then back to the loop. `None`
    /// when the page is gone.
    async fn online(&mut self, mut client: Client) -> Option<Device> {
        let wake = {
            let command = self.commands.next();
            let push = client.recv_push();
            futures_util::pin_mut!(push);
            match select(command, push).await {
                Either::Left((command, _)) => Either::Left(command),
                Either::Right((push, _)) => Either::Right(push),
            }
        };
        let lost = match wake {
            Either::Left(None) => {
                client.close().await;
                return None;
            }
            Either::Left(Some(command)) => {
                let lost = self.online_command(&mut client, command).await;
                // What arrived while the command waited on the server.
                let pending = client.take_pending_events();
                self.events(&pending);
                lost
            }
            Either::Right(Ok(body)) => match client.handle_push(body).await {
                Ok(mut events) => {
                    self.healthy = true;
                    // What the follow-up work (run after the push) found.
                    events.extend(client.take_pending_events());
                    self.events(&events);
                    None
                }
                Err(e) if e.is_retryable() => Some(Failure::from(e)),
                Err(e) => {
                    // Something in the store or the crypto failed on one
                    // push: it was not acked, so it comes again; say so.
                    tracing::warn!(error = %e, "a push could not be handled");
                    Some(Failure::from(e))
                }
            },
            Either::Right(Err(e)) => Some(Failure::from(e)),
        };
        self.upkeep(client.profile());
        match lost {
            None => Some(Device::Online(client)),
            Some(why) => {
                let profile = client.close().await;
                self.status(&profile, "offline", Some(&why));
                Some(Device::Idle(profile))
            }
        }
    }

    /// Handles a command with a connection; `Some` when the connection
    /// turned out to be lost.
    async fn online_command(&mut self, client: &mut Client, command: Command) -> Option<Failure> {
        match command {
            Command::Send {
                chat,
                text,
                reply_to,
                reply,
            } => {
                let (key, opts) = match send_target(client.profile(), &chat, reply_to.as_deref()) {
                    Ok(t) => t,
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                        return None;
                    }
                };
                let result = client.send_text_with(&key, &text, &opts).await;
                self.changed();
                match result {
                    Ok(outcome) => {
                        self.healthy = true;
                        let _ = reply.send(Ok(json!({
                            "chat": key,
                            "id": dak_core::format_id(&outcome.id),
                            "queued": false,
                        })));
                        None
                    }
                    // Kept in the outbox (🕓): it goes out on the next connection.
                    Err(e) if e.is_retryable() => {
                        let _ = reply.send(Ok(json!({"chat": key, "queued": true})));
                        lost_connection(&e)
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                        None
                    }
                }
            }
            Command::MarkRead { chat, reply } => {
                let result = self.mark_read(client, &chat).await;
                let lost = result.as_ref().err().and_then(lost_connection);
                if matches!(result, Ok(n) if n > 0) {
                    self.changed();
                }
                let _ = reply.send(result.map(|n| json!(n)).map_err(Failure::from));
                lost
            }
            Command::CreateGroup {
                title,
                members,
                reply,
            } => {
                let result = client.create_group(&title, &members, false).await;
                self.server_answer(reply, result.map(|g| json!(g)))
            }
            Command::AddMembers {
                chat,
                members,
                reply,
            } => {
                let result = client.add_members(&chat, &members).await;
                self.server_answer(reply, result.map(|()| json!(true)))
            }
            Command::RemoveMember {
                chat,
                member,
                reply,
            } => {
                let result = client.remove_member(&chat, &member).await;
                self.server_answer(reply, result.map(|()| json!(true)))
            }
            Command::Devices(reply) => {
                let me = client.device_id();
                let result = client.devices().await.map(|devices| {
                    json!(
                        devices
                            .iter()
                            .map(|d| json!({
                                "device_id": d.device_id,
                                "name": d.name,
                                "primary": d.primary,
                                "this_device": d.device_id == me,
                                "created_ms": d.created_ms,
                                "last_seen_ms": d.last_seen_ms,
                            }))
                            .collect::<Vec<_>>()
                    )
                });
                self.server_answer(reply, result)
            }
            Command::RemoveDevice { device_id, reply } => {
                let result = client.remove_device(device_id).await;
                self.server_answer(reply, result.map(|()| json!(true)))
            }
            Command::ApproveLink { code, reply } => {
                let result = match client.approve_link(code.trim()).await {
                    // Linked either way; the history is a best effort the
                    // page reports (the device still gets new messages).
                    Ok(d) => match client
                        .share_history(d.device_id, dak_core::HistoryLimits::default())
                        .await
                    {
                        Ok(h) => {
                            Ok(json!({"device_id": d.device_id, "name": d.name, "history": h}))
                        }
                        Err(e) if e.is_connection_lost() => Err(e),
                        Err(e) => Ok(
                            json!({"device_id": d.device_id, "name": d.name, "history_error": e.to_string()}),
                        ),
                    },
                    Err(e) => Err(e),
                };
                self.server_answer(reply, result)
            }
            Command::SafetyNumber { chat, reply } => {
                let result = client.safety(&chat).await;
                // Computing it may bring the chat up to date with the
                // contact's devices: the number shown already includes
                // that change, so no "changed" notice for it follows.
                if let Ok(key) = client.profile().resolve(&chat).map(|c| c.key()) {
                    let pending = client.take_pending_events();
                    let rest: Vec<Event> = pending
                        .into_iter()
                        .filter(|e| {
                            !matches!(e, Event::SecurityNotice { conversation, .. } if conversation.key() == key)
                        })
                        .collect();
                    self.events(&rest);
                }
                self.server_answer(
                    reply,
                    result.map(|s| {
                        let because: Vec<_> = s
                            .classic_because
                            .iter()
                            .map(|(phone, device)| json!({"phone": phone, "device_id": device}))
                            .collect();
                        json!({
                            "number": s.number,
                            "post_quantum": s.post_quantum,
                            "suite": s.suite,
                            "classic_because": because,
                            "server_chose_classic": s.server_chose_classic,
                            "key_transparency": s.key_transparency,
                        })
                    }),
                )
            }
            Command::Act { action, reply } => {
                let result = match crate::actions::parse(&action) {
                    Ok(action) => crate::actions::perform(client, action).await,
                    Err(e) => Err(e),
                };
                self.server_answer(reply, result)
            }
            Command::Media { request, reply } => {
                let result = crate::media::online(client, &mut self.prepared, request).await;
                self.changed();
                let lost = result.as_ref().err().and_then(lost_connection);
                let _ = reply.send(result.map_err(Failure::from));
                lost
            }
            Command::Reconnect => None,
            other => {
                let profile = client.profile();
                self.local_command(profile, other);
                None
            }
        }
    }

    /// Answers a command that needed the server (a group change, a safety
    /// number); `Some` when it failed for want of a connection.
    fn server_answer(&self, reply: Reply, result: Result<Value, ClientError>) -> Option<Failure> {
        self.changed();
        let lost = result.as_ref().err().and_then(lost_connection);
        let _ = reply.send(result.map_err(Failure::from));
        lost
    }

    async fn mark_read(&mut self, client: &mut Client, chat: &str) -> Result<usize, ClientError> {
        let key = client.profile().resolve(chat)?.key();
        let ids: Vec<Vec<u8>> = client
            .profile()
            .unread()?
            .into_iter()
            .filter(|m| m.conversation.key() == key)
            .map(|m| m.id)
            .collect();
        if ids.is_empty() {
            return Ok(0);
        }
        client.mark_read(Some(&ids)).await
    }

    /// Offline and registered: answer the page until `wait` has passed (or
    /// the page says the network is back: then `true`). `None` when the
    /// page is gone.
    async fn wait_offline(
        &mut self,
        mut profile: Profile,
        wait: Duration,
    ) -> Option<(Profile, bool)> {
        let env = profile.env_arc();
        let timer = env.sleep(wait);
        futures_util::pin_mut!(timer);
        loop {
            match select(self.commands.next(), timer.as_mut()).await {
                Either::Right(((), _)) => return Some((profile, false)),
                Either::Left((None, _)) => return None,
                Either::Left((Some(Command::Reconnect), _)) => return Some((profile, true)),
                Either::Left((Some(command), _)) => {
                    profile = self.idle_command(profile, command).await;
                }
            }
        }
    }

    /// Handles a command without a connection: registration and linking,
    /// reads, and texts typed offline (queued with 🕓).
    async fn idle_command(&mut self, profile: Profile, command: Command) -> Profile {
        match command {
            Command::RequestCode {
                server,
                phone,
                reply,
            } => {
                let result = Client::request_code(&profile, &server, &phone).await;
                let _ = reply.send(
                    result
                        .map(|secs| json!({"expires_in_secs": secs}))
                        .map_err(Failure::from),
                );
            }
            Command::Verify {
                code,
                pin,
                device_name,
                reply,
            } => {
                let result = Client::verify(&profile, &code, &pin, &device_name).await;
                self.registered(reply, result);
            }
            Command::Link {
                server,
                device_name,
                reply,
            } => {
                let emit = &self.emit;
                let result = Client::link(&profile, &server, &device_name, |code, secs| {
                    emit(json!({
                        "type": "link_code",
                        "code": code,
                        "expires_in_secs": secs,
                        "qr": link_qr(code),
                    }));
                })
                .await;
                self.registered(reply, result);
            }
            Command::Send {
                chat,
                text,
                reply_to,
                reply,
            } => {
                let result =
                    send_target(&profile, &chat, reply_to.as_deref()).and_then(|(key, opts)| {
                        let (id, _, _) = dak_core::queue_text_with(&profile, &key, &text, &opts)?;
                        Ok(json!({
                            "chat": key,
                            "id": dak_core::format_id(&id),
                            "queued": true,
                        }))
                    });
                let _ = reply.send(result.map_err(Failure::from));
                self.changed();
                if self.state == "offline" {
                    // One more waiting: the page's offline line counts it.
                    self.status(&profile, "offline", None);
                }
            }
            // Receipts need the server; the chat is still unread when it
            // is opened again online.
            Command::MarkRead { reply, .. } => {
                let _ = reply.send(Ok(json!(0)));
            }
            Command::Reconnect => {}
            other => self.local_command(&profile, other),
        }
        profile
    }

    /// Answers a registration or a link; once one succeeds the device may
    /// connect again, whatever stopped it before.
    fn registered(&mut self, reply: Reply, result: Result<dak_core::Registration, ClientError>) {
        if result.is_ok() {
            self.stopped = None;
        }
        let _ = reply.send(
            result
                .map(|r| json!({"phone": r.phone, "device_id": r.device_id}))
                .map_err(Failure::from),
        );
    }

    /// Commands answered from the profile alone, in any state.
    fn local_command(&self, profile: &Profile, command: Command) {
        let (reply, result) = match command {
            Command::Status(reply) => (reply, Ok(self.status_json(profile, None))),
            Command::Chats(reply) => (reply, views::chat_list(profile).map(|rows| json!(rows))),
            Command::Notices(reply) => {
                (reply, dak_core::notices::notices(profile).map(|n| json!(n)))
            }
            Command::GroupInfo { chat, reply } => (
                reply,
                dak_core::groups::group_info(profile, &chat).map(|g| json!(g)),
            ),
            Command::Messages { chat, limit, reply } => (
                reply,
                profile.resolve(&chat).map(|c| c.key()).and_then(|key| {
                    let limit = limit.clamp(1, views::MAX_CHAT_PAGE);
                    let rows = views::messages(profile, &key, limit)?;
                    // Fewer than asked: the chat's first message is shown.
                    // At the cap, the page shows no more (the newest
                    // MAX_CHAT_PAGE of a longer chat).
                    let complete = rows.len() < limit || limit == views::MAX_CHAT_PAGE;
                    Ok(json!({"chat": key, "messages": rows, "complete": complete}))
                }),
            ),
            // Group changes need the server: not while offline.
            Command::SafetyNumber { reply, .. }
            | Command::Devices(reply)
            | Command::RemoveDevice { reply, .. }
            | Command::ApproveLink { reply, .. }
            | Command::CreateGroup { reply, .. }
            | Command::AddMembers { reply, .. }
            | Command::RemoveMember { reply, .. }
            | Command::Act { reply, .. } => {
                let _ = reply.send(Err(Failure {
                    code: "OFFLINE".into(),
                    message: "not connected to the server".into(),
                }));
                return;
            }
            // Registration, linking and sends are the callers' business.
            Command::RequestCode { reply, .. }
            | Command::Verify { reply, .. }
            | Command::Link { reply, .. }
            | Command::Send { reply, .. }
            | Command::MarkRead { reply, .. } => {
                let _ = reply.send(Err(Failure {
                    code: "USAGE".into(),
                    message: "this browser is already registered".into(),
                }));
                return;
            }
            Command::Reconnect => return,
            Command::Media { request, reply } => {
                let _ = reply.send(crate::media::offline(profile, request).map_err(Failure::from));
                return;
            }
        };
        let _ = reply.send(result.map_err(Failure::from));
    }

    // ---- events ----

    fn events(&self, events: &[Event]) {
        let mut changed = false;
        for event in events {
            changed = true;
            match event {
                Event::Message(m) if !m.outgoing => (self.emit)(json!({
                    "type": "message",
                    "chat": m.conversation.key(),
                    "from": m.from,
                    "text": m.text,
                })),
                Event::SecurityNotice {
                    conversation,
                    phone,
                } => (self.emit)(json!({
                    "type": "security_notice",
                    "chat": conversation.key(),
                    "phone": phone,
                })),
                // The page shows these in its banner, outside every chat.
                Event::OperatorNotice(n) => {
                    let mut v = json!(n);
                    v["type"] = json!("operator_notice");
                    (self.emit)(v)
                }
                Event::NoticeRefused { reason } => (self.emit)(json!({
                    "type": "notice_refused",
                    "reason": reason,
                })),
                // In the same banner: about the user's own number.
                Event::KeyTransparency { phone, warning } => (self.emit)(json!({
                    "type": "key_transparency",
                    "phone": phone,
                    "warning": warning,
                })),
                _ => {}
            }
        }
        if changed {
            self.changed();
        }
    }

    /// Compacts the profile's journal once it has doubled since its last
    /// snapshot (and passed `compact_over`), so a tab left open for weeks
    /// does not grow it without end. A failure that makes writing unsafe
    /// leaves the journal refusing writes: the page says to reload.
    fn upkeep(&self, profile: &Profile) {
        match profile.compact(self.compact_over) {
            Ok(Some(bytes)) => tracing::info!(bytes, "the profile's journal was compacted"),
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "the profile's journal could not be compacted safely");
                (self.emit)(json!({
                    "type": "open_failed",
                    "code": "STORAGE_FAILED",
                    "message": e.to_string(),
                }));
            }
        }
    }

    fn changed(&self) {
        (self.emit)(json!({"type": "changed"}));
    }

    fn status(&mut self, profile: &Profile, state: &'static str, detail: Option<&Failure>) {
        self.state = state;
        // Kept in the profile (the CLI's key too), so a reload still says
        // since when; a failed write only loses that.
        match state {
            "offline" if self.offline_since_ms.is_none() => {
                let stored = profile
                    .get_str("unreachable_since")
                    .ok()
                    .flatten()
                    .and_then(|s| s.parse().ok());
                let since = stored.unwrap_or_else(|| {
                    let now = profile.now_ms();
                    let _ = profile.set("unreachable_since", now.to_string().as_bytes());
                    now
                });
                self.offline_since_ms = Some(since);
            }
            "online" => {
                self.offline_since_ms = None;
                let _ = profile.delete("unreachable_since");
            }
            _ => {}
        }
        let mut v = self.status_json(profile, detail);
        v["type"] = json!("status");
        (self.emit)(v);
    }

    fn status_json(&self, profile: &Profile, detail: Option<&Failure>) -> Value {
        let reg = profile.registration().ok();
        json!({
            "state": self.state,
            "registered": reg.is_some(),
            "phone": reg.as_ref().map(|r| r.phone.clone()),
            "device_id": reg.as_ref().map(|r| r.device_id),
            "detail": detail.or(self.stopped.as_ref()),
            "storage": self.storage,
            // What the page says while offline: since when, and how many
            // messages wait (🕓) to be sent.
            "offline_since_ms": self.offline_since_ms,
            "waiting": profile.store().outbox().map(|o| o.len()).unwrap_or(0),
        })
    }
}

/// Where a text from the page goes (the chat's key) and its options (the
/// id of the message it replies to), online or queued alike.
pub(crate) fn send_target(
    profile: &Profile,
    chat: &str,
    reply_to: Option<&str>,
) -> Result<(String, dak_core::TextOptions), ClientError> {
    let key = profile.resolve(chat)?.key();
    let opts = dak_core::TextOptions {
        reply_to: reply_to
            .filter(|id| !id.is_empty())
            .map(dak_core::parse_id)
            .transpose()?,
        ..Default::default()
    };
    Ok((key, opts))
}
