//! One WebSocket connection, from challenge to close.
//!
//! The connection starts unauthenticated with a fresh challenge nonce. It
//! becomes a device by `Authenticate`, by `VerifyCode` (a new primary) or by
//! its link request being approved. Once it is a device it pushes that
//! device's mailbox, at most `WINDOW` unacknowledged envelopes at a time, and
//! wakes on the bus when new mail arrives. A device can only read and ack its
//! own mailbox: the device id comes from the authentication, never a request.
//!
//! The fast path: the store hands every envelope this node commits to the
//! device's connections on this node (`inbox.rs`). A session that is
//! `synced` (its last mailbox read came back short, and no hint was dropped
//! since) pushes hints as they come, with no store read; one that is not
//! reads its mailbox as before, and hints at or below what it pushed are
//! skipped. On PostgreSQL hints come in any order, from this node and over
//! NATS from the others (`cluster_hints.rs`), and may be lost, so a hint is
//! pushed only if its seq is the next one (`inbox::pushable`); past a gap
//! the session reads the store. The store stays the truth: a hint only
//! saves reading back what was just written.
//!
//! Pipelining: a `SendMessage` is answered when its commit lands, but the
//! session reads on as soon as the store has queued it (`MAX_PIPELINED` at
//! most), so one connection fills a group commit. The store runs a group's
//! queued writes (its sends, and a commit submitted after them) in the
//! order they were queued, so a connection's sends keep their order in
//! each conversation (SQLite keeps it across conversations too); their
//! SendAcks go out in submission order. Other requests
//! are answered as before, possibly before an earlier send's SendAck.
//!
//! Acks: an `AckDeliveries` is answered at once and its seqs leave the
//! window at once; with the fast path the store deletes them in a batch
//! (`ACK_BATCH` seqs or `ACK_DELAY` after the first, and when the
//! connection ends), and the session reads on without waiting for the
//! delete's commit. One delete per connection is in flight: what is acked
//! meanwhile waits, and goes in the next delete, all of it, so the deletes
//! grow to the writer's pace instead of queueing behind one another in it
//! (`ACK_PENDING` seqs at most wait; past that the session waits for the
//! delete in flight). When the connection ends it waits for the last, so a
//! device that connects again is not sent what it acked. (A newer
//! connection that replaces this one may read before they land and send
//! some again.) A delete lost in a crash only means the device gets
//! those envelopes again at its next connect, which it drops by message id,
//! as after any lost ack. On PostgreSQL an ack is not held back for a
//! batch: a delete held back 10 ms met the partner's next send on the
//! device's `mailbox_heads` row and doubled `pairs` latency (measured,
//! docs/BENCHMARKS.md). Its delete starts at once unless one is in flight,
//! and the session does not wait for it either.
//!
//! Outgoing frames go through a bounded channel to a writer task. When the
//! client reads too slowly the channel fills and this task waits, so it also
//! stops reading the client's requests: backpressure reaches the client
//! instead of the server buffering for it. A queue that stays full for
//! `write_stall_timeout` closes the connection, so what a session holds for
//! a device that does not read is bounded: one fetch of at most `FETCH`
//! envelopes plus `OUTGOING_QUEUE` frames.
//!
//! Liveness: an authenticated connection is pinged every `ping_interval`
//! and closed when no complete frame (a pong counts) has arrived for
//! `idle_timeout`, which also ends a frame that stopped half-way. Before
//! authentication `edge.rs` holds the connection to its deadline and byte
//! budget.
//!
//! Work: every authenticated request but an ack takes a token of the
//! device's bucket (`requests_per_device_per_sec`); acks only take out
//! what this connection delivered, and the embedded store's check of them
//! reads at most one row more than they name
//! (`dak-store/src/sqlite/acks.rs`), so a client cannot inflate them.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::outgoing;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use dak_bus::Subscription;
use dak_proto::v1::{self, ErrorCode, client_frame::Request, server_frame::Body};
use dak_store::{Device, HintOrder, RevokeReason};
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use rand::RngCore;
use tokio::time::Instant;

use crate::blocks;
use crate::edge::Admitted;
use crate::error::{ApiError, ApiResult};
use crate::groups;
use crate::linking;
use crate::mailbox;
use crate::metrics::Metrics;
use crate::online::OnlineSlot;
use crate::registration;
use crate::state::{AppState, now_ms};

/// Unacknowledged envelopes pushed to one device.
const WINDOW: usize = 4096;
/// Envelopes read from the store per fetch (each at most a frame).
const FETCH: usize = 256;
const OUTGOING_QUEUE: usize = 64;
/// Queued frames the writer task writes before it flushes.
const WRITE_COALESCE: usize = 64;
/// Sends one connection may have submitted and not yet answered; past it
/// the session stops reading frames until the oldest commits.
const MAX_PIPELINED: usize = 64;
/// Acks are written to the store in batches: at most this many seqs wait,
/// for at most `ACK_DELAY` (see "Acks" above).
const ACK_BATCH: usize = 512;
const ACK_DELAY: Duration = Duration::from_millis(10);
/// Acked seqs that may wait while a delete is in flight (see "Acks"): 64
/// KiB of seqs. Past it the session waits for that delete, so a store that
/// falls behind slows the drain rather than letting the seqs grow.
const ACK_PENDING: usize = 2 * WINDOW;
/// Failed authentications tolerated on one connection before it is closed.
const MAX_AUTH_FAILURES: u32 = 3;
/// Requests one connection may make before it authenticates: enough to
/// register (a code, a few tries at it) or link, not to hammer the store.
const MAX_UNAUTHENTICATED_REQUESTS: u32 = 16;

const CLOSE_POLICY: u16 = 1008;
const CLOSE_TOO_BIG: u16 = 1009;
const CLOSE_GOING_AWAY: u16 = 1001;

/// What the session hands its writer task: a frame, a ping, or a close.
enum ToSocket {
    Frame(Vec<u8>),
    Ping,
    Close(u16, String),
}

enum Flow {
    Continue,
    Close,
}

/// What woke `Session::serve`.
enum Event {
    Socket(Option<Result<Message, axum::Error>>),
    Replaced,
    Answer(u64, ApiResult<Body>),
    Hinted,
    Mail(bool),
    Revoked,
    LinkApproved(bool),
    /// The operator's notice log grew.
    Notices,
    /// The earliest of the session's deadlines passed (see `Session::timer`).
    Timer,
    Shutdown,
}

/// A submitted send's answer, in submission order: (request id, answer).
type SendAnswer =
    std::pin::Pin<Box<dyn std::future::Future<Output = (u64, ApiResult<Body>)> + Send + Sync>>;

struct PendingLink {
    identity_key: Vec<u8>,
    sub: Subscription,
}

struct Session {
    state: AppState,
    admitted: Arc<Admitted>,
    peer: SocketAddr,
    nonce: [u8; dak_proto::NONCE_BYTES],
    out: outgoing::Sender<ToSocket>,
    device: Option<Device>,
    mail: Option<Subscription>,
    revoke: Option<Subscription>,
    link: Option<PendingLink>,
    /// This device's place among its connections; notified when replaced.
    online: Option<OnlineSlot>,
    deadline: Option<Instant>,
    auth_failures: u32,
    unauthenticated_requests: u32,
    /// When the last complete frame arrived, and whether the outgoing
    /// queue stayed full past its deadline.
    heard_at: Instant,
    stalled: bool,
    /// Highest seq pushed on this connection, the pushed-but-unacked seqs,
    /// and whether the client has been told it has everything.
    pushed_to: u64,
    in_flight: BTreeSet<u64>,
    told_empty: bool,
    /// Everything committed for this device up to now has been pushed, or
    /// is waiting in the inbox (see the fast path above).
    synced: bool,
    /// Sends queued in the store and not yet answered (see pipelining).
    sends: futures_util::stream::FuturesOrdered<SendAnswer>,
    /// Acked seqs not yet deleted from the store, and when to delete them.
    acked: Vec<u64>,
    ack_deadline: Option<Instant>,
    /// The delete of acked seqs under way (the fast path does not wait
    /// for it; see `flush_acks`).
    ack_task: Option<tokio::task::JoinHandle<()>>,
    /// When to look at the connection's liveness next (authenticated only;
    /// see `keepalive`).
    next_ping: Option<Instant>,
    /// The device's account is a business (a bot): its messages take the
    /// per-chat bucket; once the operator verified it, its requests take
    /// `business_requests_per_device_per_sec` (`business.rs`). Read at
    /// authentication and when it sets a profile.
    business: bool,
    business_verified: bool,
    /// The notice log's length as this device has been shown it (at the
    /// challenge, then at each push), and the board's wake (authenticated
    /// sessions only).
    notices_sent: u64,
    notices: Option<tokio::sync::watch::Receiver<u64>>,
    all_targeted: bool,
}

pub async fn run(state: AppState, socket: WebSocket, admitted: Arc<Admitted>) {
    let peer = admitted.peer;
    state
        .metrics
        .connections_open
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Metrics::inc(&state.metrics.connections_total);
    let (mut sink, mut stream) = socket.split();
    let (out, mut out_rx) = outgoing::channel::<ToSocket>(OUTGOING_QUEUE);
    // Every write has the stall deadline: a peer that stops reading (a TCP
    // window held at zero) cannot hold the writer, and with it the
    // connection's slots, forever.
    let stall = state.config.write_stall_timeout;
    // Frames already queued are written together and flushed once (up to
    // `WRITE_COALESCE`): one TLS record and one syscall for a SendAck, a
    // Deliver and a QueueEmpty that are ready at the same time, instead of
    // three.
    let writer = tokio::spawn(async move {
        'connection: while let Some(first) = out_rx.recv().await {
            let mut next = Some(first);
            let mut fed = 0;
            while let Some(item) = next.take() {
                let (message, last) = match item {
                    ToSocket::Frame(bytes) => (Message::Binary(bytes.into()), false),
                    ToSocket::Ping => (Message::Ping(Default::default()), false),
                    ToSocket::Close(code, reason) => (
                        Message::Close(Some(CloseFrame {
                            code,
                            reason: reason.into(),
                        })),
                        true,
                    ),
                };
                let fed_ok = tokio::time::timeout(stall, sink.feed(message)).await;
                if !matches!(fed_ok, Ok(Ok(()))) {
                    break 'connection;
                }
                if last {
                    let _ = tokio::time::timeout(stall, sink.flush()).await;
                    break 'connection;
                }
                fed += 1;
                if fed < WRITE_COALESCE {
                    next = out_rx.try_recv();
                }
            }
            let flushed = tokio::time::timeout(stall, sink.flush()).await;
            if !matches!(flushed, Ok(Ok(()))) {
                break;
            }
        }
        let _ = tokio::time::timeout(stall, sink.close()).await;
    });

    let mut nonce = [0u8; dak_proto::NONCE_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let mut session = Session {
        state: state.clone(),
        admitted,
        peer,
        nonce,
        out,
        device: None,
        mail: None,
        revoke: None,
        link: None,
        online: None,
        deadline: Some(Instant::now() + state.config.handshake_timeout),
        auth_failures: 0,
        unauthenticated_requests: 0,
        heard_at: Instant::now(),
        stalled: false,
        pushed_to: 0,
        in_flight: BTreeSet::new(),
        told_empty: false,
        synced: false,
        sends: futures_util::stream::FuturesOrdered::new(),
        acked: Vec::new(),
        ack_deadline: None,
        ack_task: None,
        next_ping: None,
        business: false,
        business_verified: false,
        notices_sent: 0,
        notices: None,
        all_targeted: false,
    };
    let log = state.notices.log();
    session.notices_sent = log.chain.length;
    session
        .push(Body::Challenge(v1::Challenge {
            nonce: nonce.to_vec(),
            server_version: env!("CARGO_PKG_VERSION").into(),
            max_frame_bytes: dak_proto::MAX_FRAME_BYTES as u32,
            notice_key: state.notices.key().to_bytes().to_vec(),
            notice_log_length: log.chain.length,
            notice_log_head: log.chain.head.to_vec(),
            key_directory_key: state.kt.public_key().to_vec(),
        }))
        .await;
    drop(log);
    session.serve(&mut stream).await;
    session.finish_acks().await;
    drop(session);
    // The writer sends what is queued, within the stall deadline per frame;
    // past one more deadline it is cut off, and dropping both halves closes
    // the socket.
    let mut writer = writer;
    if tokio::time::timeout(stall, &mut writer).await.is_err() {
        writer.abort();
        state.metrics.closed.inc("write_stall");
    }
    drop(stream);
    state
        .metrics
        .connections_open
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
}

/// Deletes a device's acked envelopes from the store.
async fn delete_acked(state: &AppState, device: u64, seqs: Vec<u64>) {
    match state.store.ack(device, &seqs).await {
        Ok(n) => {
            state
                .metrics
                .envelopes_acked
                .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        }
        // They stay in the store and come back at the next connect, where
        // the device drops them as duplicates.
        Err(e) => tracing::warn!(device, error = %e, "deleting acked envelopes failed"),
    }
}

/// A WebSocket close reason must fit in 123 bytes; cut at a char boundary.
fn close_reason(message: &str) -> String {
    let mut end = message.len().min(120);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message[..end].to_string()
}

/// Waits for a publish on an optional subscription; never, when absent.
async fn changed(sub: Option<&mut Subscription>) -> bool {
    match sub {
        Some(s) => s.changed().await,
        None => std::future::pending().await,
    }
}

/// Waits until the notice log's length changes; never, when not subscribed
/// (or once the board is gone).
async fn notices_grew(rx: Option<&mut tokio::sync::watch::Receiver<u64>>) {
    if let Some(rx) = rx
        && rx.changed().await.is_ok()
    {
        return;
    }
    std::future::pending().await
}

/// Resolves once the server starts shutting down.
pub async fn stopped(rx: &mut tokio::sync::watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// Waits until the store hands this connection something (the fast path).
async fn hinted(slot: Option<&OnlineSlot>) {
    match slot {
        Some(s) => s.inbox.ready.notified().await,
        None => std::future::pending().await,
    }
}

/// Waits until a newer connection of the same device replaces this one.
async fn replaced(slot: Option<&OnlineSlot>) {
    match slot {
        Some(s) => s.replaced.notified().await,
        None => std::future::pending().await,
    }
}

async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

impl Session {
    async fn serve(&mut self, stream: &mut futures_util::stream::SplitStream<WebSocket>) {
        let mut shutdown = self.state.shutdown.clone();
        loop {
            // Only the waiting is inline in this task; what an event makes
            // the session do (a request's handler and the store's futures
            // under it, kilobytes) is boxed for as long as it runs, so an
            // idle connection's task holds just the wait (BENCHMARKS.md,
            // "connect").
            let wake = self.timer();
            let event = tokio::select! {
                msg = stream.next(), if self.sends.len() < MAX_PIPELINED => Event::Socket(msg),
                _ = replaced(self.online.as_ref()) => Event::Replaced,
                Some((request_id, answer)) = self.sends.next(), if !self.sends.is_empty() => {
                    Event::Answer(request_id, answer)
                }
                _ = hinted(self.online.as_ref()) => Event::Hinted,
                ok = changed(self.mail.as_mut()) => Event::Mail(ok),
                _ = changed(self.revoke.as_mut()) => Event::Revoked,
                ok = changed(self.link.as_mut().map(|l| &mut l.sub)) => Event::LinkApproved(ok),
                _ = notices_grew(self.notices.as_mut()) => Event::Notices,
                _ = until(wake) => Event::Timer,
                _ = stopped(&mut shutdown) => Event::Shutdown,
            };
            let flow = Box::pin(self.on_event(event)).await;
            if self.stalled {
                self.state.metrics.closed.inc("write_stall");
                tracing::debug!(peer = %self.peer, "closing a connection that does not read");
                return;
            }
            if let Flow::Close = flow {
                return;
            }
        }
    }

    /// What the session does about one event of `serve`'s wait.
    async fn on_event(&mut self, event: Event) -> Flow {
        match event {
            Event::Socket(msg) => {
                if matches!(msg, Some(Ok(_))) {
                    self.heard_at = Instant::now();
                }
                match msg {
                    Some(Ok(Message::Binary(bytes))) => self.on_frame(&bytes).await,
                    Some(Ok(Message::Text(_))) => {
                        self.fail(
                            ErrorCode::MalformedFrame,
                            "Dak speaks binary protobuf frames, not text".into(),
                            CLOSE_POLICY,
                        )
                        .await
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => Flow::Continue,
                    Some(Ok(Message::Close(_))) | None => Flow::Close,
                    Some(Err(e)) => {
                        // tungstenite refuses frames beyond its size limit before
                        // buffering them; `edge.rs` ends a connection past its
                        // pre-authentication deadline or byte budget.
                        if self.state.may_log_rejection() {
                            tracing::debug!(peer = %self.peer, error = %e, "websocket error");
                        }
                        Metrics::inc(&self.state.metrics.frames_rejected);
                        self.state.metrics.closed.inc("websocket_error");
                        let _ = self
                            .out
                            .try_send(ToSocket::Close(CLOSE_POLICY, close_reason(&e.to_string())));
                        Flow::Close
                    }
                }
            }
            Event::Replaced => {
                self.state.metrics.closed.inc("replaced");
                self.push(Body::Notice(v1::Notice {
                    kind: v1::NoticeKind::Replaced as i32,
                    message: "this device connected again elsewhere (another window or process with this profile); this connection is closed".into(),
                }))
                .await;
                let _ = self.out.try_send(ToSocket::Close(
                    CLOSE_POLICY,
                    "replaced by a newer connection".into(),
                ));
                Flow::Close
            }
            Event::Answer(request_id, answer) => self.answer(request_id, answer).await,
            Event::Hinted => self.on_hints().await,
            Event::Mail(true) => self.pump().await,
            Event::Mail(false) | Event::LinkApproved(false) => Flow::Close,
            Event::Revoked => self.on_revoked().await,
            Event::LinkApproved(true) => self.on_link_approved().await,
            Event::Notices => self.push_notices().await,
            Event::Timer => self.on_timer().await,
            Event::Shutdown => {
                self.push(Body::Notice(v1::Notice {
                    kind: v1::NoticeKind::ServerDraining as i32,
                    message: "the server is restarting; reconnect".into(),
                }))
                .await;
                let _ = self
                    .out
                    .try_send(ToSocket::Close(CLOSE_GOING_AWAY, "server draining".into()));
                Flow::Close
            }
        }
    }

    /// The session's one timer: the earliest of the deadline (to
    /// authenticate, or a linked device's expiry), the batched acks' and
    /// the next ping. One `Sleep` in the wait instead of three (an
    /// `Interval` boxes one more), a few hundred bytes less in every idle
    /// connection (docs/BENCHMARKS.md, "connect").
    fn timer(&self) -> Option<Instant> {
        [self.deadline, self.ack_deadline, self.next_ping]
            .into_iter()
            .flatten()
            .min()
    }

    /// Whatever of the timer's deadlines has passed.
    async fn on_timer(&mut self) -> Flow {
        let now = Instant::now();
        if self.deadline.is_some_and(|at| at <= now) {
            return self.on_deadline().await;
        }
        if self.ack_deadline.is_some_and(|at| at <= now) {
            self.flush_acks().await;
        }
        if self.next_ping.is_some_and(|at| at <= now) {
            self.next_ping = Some(now + self.state.config.ping_interval);
            return self.keepalive();
        }
        Flow::Continue
    }

    /// Pings, or closes a connection that has sent nothing whole for too long.
    fn keepalive(&mut self) -> Flow {
        if self.heard_at.elapsed() >= self.state.config.idle_timeout {
            self.state.metrics.closed.inc("idle");
            let _ = self.out.try_send(ToSocket::Close(
                CLOSE_POLICY,
                "no complete frame in time (a dead connection, or a frame that stopped)".into(),
            ));
            return Flow::Close;
        }
        if self.heard_at.elapsed() >= self.state.config.ping_interval {
            let _ = self.out.try_send(ToSocket::Ping);
        }
        Flow::Continue
    }

    async fn send_frame(&mut self, frame: v1::ServerFrame) {
        if self.stalled {
            return;
        }
        // A closed channel means the writer is gone; the read loop ends soon.
        // A channel that stays full means the client does not read.
        let bytes = frame.encode_to_vec();
        match tokio::time::timeout(
            self.state.config.write_stall_timeout,
            self.out.send(ToSocket::Frame(bytes)),
        )
        .await
        {
            Ok(_) => {}
            Err(_) => self.stalled = true,
        }
    }

    async fn push(&mut self, body: Body) {
        self.send_frame(v1::ServerFrame {
            request_id: 0,
            body: Some(body),
        })
        .await;
    }

    /// Reports an error that ends the connection.
    async fn fail(&mut self, code: ErrorCode, message: String, close: u16) -> Flow {
        self.push(Body::Error(v1::Error::new(code, message.clone())))
            .await;
        // Never waits: a queue that is full stays full for a peer that
        // does not read, and the connection ends either way.
        let _ = self
            .out
            .try_send(ToSocket::Close(close, message.chars().take(120).collect()));
        Flow::Close
    }

    async fn on_frame(&mut self, bytes: &[u8]) -> Flow {
        Metrics::inc(&self.state.metrics.frames_in);
        let frame = match dak_proto::decode_client_frame(bytes) {
            Ok(f) => f,
            Err(e) => {
                Metrics::inc(&self.state.metrics.frames_rejected);
                if self.state.may_log_rejection() {
                    tracing::debug!(peer = %self.peer, error = %e, "rejected frame");
                }
                if e.is_fatal() {
                    let close = if e.code() == ErrorCode::FrameTooLarge {
                        CLOSE_TOO_BIG
                    } else {
                        CLOSE_POLICY
                    };
                    return self.fail(e.code(), e.to_string(), close).await;
                }
                // Parseable but invalid: answer that request and carry on.
                self.send_frame(v1::ServerFrame {
                    request_id: e.request_id(),
                    body: Some(Body::Error(e.to_wire())),
                })
                .await;
                return Flow::Continue;
            }
        };
        let Some(request) = frame.request else {
            return Flow::Continue; // validate_client guarantees a request
        };
        if self.device.is_none() {
            self.unauthenticated_requests += 1;
            if self.unauthenticated_requests > MAX_UNAUTHENTICATED_REQUESTS {
                // Counted as a refusal; the connection ends, so no retry_after.
                self.state.metrics.limited.inc("unauthenticated_requests");
                return self
                    .fail(
                        ErrorCode::RateLimited,
                        "too many requests before authenticating; connect again".into(),
                        CLOSE_POLICY,
                    )
                    .await;
            }
        }
        let result = match request {
            Request::SendMessage(r) => match self.submit_send(frame.request_id, r).await {
                Ok(()) => return Flow::Continue, // answered at its commit
                Err(e) => Err(e),
            },
            other => self.dispatch(other).await,
        };
        let body = match result {
            Ok(body) => body,
            Err(ApiError(e)) => {
                if e.kind() == ErrorCode::AuthFailed && self.device.is_none() {
                    Metrics::inc(&self.state.metrics.auth_failures);
                    self.auth_failures += 1;
                    if self.auth_failures >= MAX_AUTH_FAILURES {
                        self.send_frame(v1::ServerFrame {
                            request_id: frame.request_id,
                            body: Some(Body::Error(e)),
                        })
                        .await;
                        let _ = self.out.try_send(ToSocket::Close(
                            CLOSE_POLICY,
                            "too many failed authentications".into(),
                        ));
                        self.state.metrics.closed.inc("auth_failures");
                        return Flow::Close;
                    }
                }
                Body::Error(e)
            }
        };
        self.send_frame(v1::ServerFrame {
            request_id: frame.request_id,
            body: Some(body),
        })
        .await;
        // Refill once half the window is free, rather than waiting for all of it.
        if self.device.is_some()
            && self.mail.is_some()
            && !self.told_empty
            && self.in_flight.len() <= WINDOW / 2
        {
            return self.pump().await;
        }
        Flow::Continue
    }

    /// Queues a send in the store and its answer here (see pipelining).
    async fn submit_send(&mut self, request_id: u64, r: v1::SendMessage) -> ApiResult<()> {
        let device = self.device()?.clone();
        self.take_request_token(device.id)?;
        let answer = groups::submit_send(&self.state, &device, r, self.business).await?;
        self.sends.push_back(Box::pin(async move {
            (request_id, answer.await.map(Body::SendAck))
        }));
        Ok(())
    }

    /// Deletes the acked envelopes from the store (see "Acks"). On the
    /// fast path the session does not wait for the delete's commit: a
    /// device draining a full mailbox would otherwise stop at every batch
    /// for an fsync (BENCHMARKS.md, "offline"). While one delete is in
    /// flight the seqs wait for the next (looked at again at the next
    /// batch of acks or after `ACK_DELAY`), up to `ACK_PENDING`.
    async fn flush_acks(&mut self) {
        self.ack_deadline = None;
        let Some(id) = self.device.as_ref().map(|d| d.id) else {
            return;
        };
        if self.acked.is_empty() {
            return;
        }
        if !self.state.fast_path() {
            delete_acked(&self.state, id, std::mem::take(&mut self.acked)).await;
            return;
        }
        if let Some(task) = self.ack_task.take_if(|t| !t.is_finished()) {
            if self.acked.len() < ACK_PENDING {
                self.ack_task = Some(task);
                self.ack_deadline = Some(Instant::now() + ACK_DELAY);
                return;
            }
            let _ = task.await;
        }
        let seqs = std::mem::take(&mut self.acked);
        let state = self.state.clone();
        self.ack_task = Some(tokio::spawn(
            async move { delete_acked(&state, id, seqs).await },
        ));
    }

    /// Deletes what is acked and waits for it: a device that connects
    /// again is not sent what it acked on this connection.
    async fn finish_acks(&mut self) {
        if let Some(task) = self.ack_task.take() {
            let _ = task.await;
        }
        self.flush_acks().await;
        if let Some(task) = self.ack_task.take() {
            let _ = task.await;
        }
    }

    /// Sends a pipelined send's answer.
    async fn answer(&mut self, request_id: u64, answer: ApiResult<Body>) -> Flow {
        let body = answer.unwrap_or_else(|ApiError(e)| Body::Error(e));
        self.send_frame(v1::ServerFrame {
            request_id,
            body: Some(body),
        })
        .await;
        Flow::Continue
    }

    fn device(&self) -> ApiResult<&Device> {
        self.device.as_ref().ok_or_else(|| {
            ApiError::new(
                ErrorCode::NotAuthenticated,
                "authenticate this connection first",
            )
        })
    }

    /// Takes a token of the device's request bucket (not for acks).
    fn spend(&self, request: &Request) -> ApiResult<()> {
        let Some(device) = &self.device else {
            return Ok(()); // unauthenticated requests have limits of their own
        };
        if matches!(request, Request::AckDeliveries(_)) {
            return Ok(());
        }
        self.take_request_token(device.id)
    }

    /// One token of `device`'s request bucket, or RATE_LIMITED.
    fn take_request_token(&self, device: u64) -> ApiResult<()> {
        let bucket = if self.business_verified {
            &self.state.business_requests
        } else {
            &self.state.device_requests
        };
        bucket.check(device).map_err(|secs| {
            self.state.limited(
                "device_requests",
                "too many requests from this device; slow down",
                secs,
            )
        })
    }

    async fn dispatch(&mut self, request: Request) -> ApiResult<Body> {
        let ip = self.peer.ip();
        self.spend(&request)?;
        match request {
            Request::RequestCode(r) => Ok(Body::CodeSent(
                registration::request_code(&self.state, ip, &r.phone).await?,
            )),
            Request::VerifyCode(r) => {
                self.not_yet_device()?;
                let reg = registration::verify(&self.state, ip, &self.nonce, r).await?;
                let answer = v1::Registered {
                    phone: reg.device.phone.clone(),
                    device_id: reg.device.id,
                };
                self.become_device(reg.device);
                Ok(Body::Registered(answer))
            }
            Request::Authenticate(r) => {
                self.not_yet_device()?;
                let device = registration::authenticate(&self.state, &self.nonce, &r).await?;
                let mut stocks = Vec::new();
                for suite in dak_proto::mls::SUITES {
                    let code = u16::from(suite);
                    let stock = self.state.store.key_stock(device.id, code).await?;
                    stocks.push(v1::KeyPackageCount {
                        one_time: stock.one_time,
                        has_last_resort: stock.has_last_resort,
                        ciphersuite: u32::from(code),
                    });
                }
                let classic = stocks
                    .iter()
                    .find(|s| {
                        s.ciphersuite == dak_proto::mls::suite_code(dak_proto::mls::CIPHERSUITE)
                    })
                    .copied()
                    .unwrap_or_default();
                let answer = v1::Authenticated {
                    phone: device.phone.clone(),
                    device_id: device.id,
                    key_packages: classic.one_time,
                    has_last_resort: classic.has_last_resort,
                    stocks,
                };
                let business = self.state.store.business(device.account_id).await?;
                self.business = business.is_some();
                self.business_verified = business.is_some_and(|b| b.verified);
                self.become_device(device);
                Ok(Body::Authenticated(answer))
            }
            Request::LinkStart(r) => {
                self.not_yet_device()?;
                if self.link.is_some() {
                    return Err(ApiError::new(
                        ErrorCode::BadRequest,
                        "this connection already waits for a link approval",
                    ));
                }
                let sub_code = linking::start(&self.state, ip, &self.nonce, &r).await?;
                let sub = self.state.bus.subscribe(&dak_bus::link_topic(&sub_code));
                self.deadline = Some(Instant::now() + self.state.config.link_code_ttl);
                self.admitted.extend(self.state.config.link_code_ttl);
                self.link = Some(PendingLink {
                    identity_key: r.identity_key,
                    sub,
                });
                // No approval can precede the subscription: approving needs the
                // code, which only this answer reveals.
                Ok(Body::LinkCode(v1::LinkCode {
                    code: sub_code,
                    expires_in_secs: self.state.config.link_code_ttl.as_secs() as u32,
                }))
            }
            Request::SendMessage(_) => Err(ApiError::new(
                ErrorCode::Internal,
                "sends are submitted, not dispatched",
            )),
            Request::SendCommit(r) => {
                let device = self.device()?.clone();
                Ok(Body::SendAck(
                    groups::commit(&self.state, &device, r).await?,
                ))
            }
            Request::GetGroupEpoch(r) => {
                let device = self.device()?.clone();
                Ok(Body::GroupEpoch(
                    groups::epoch(&self.state, &device, r).await?,
                ))
            }
            Request::UploadKeyPackages(r) => {
                let device = self.device()?.clone();
                Ok(Body::KeyPackageCount(
                    groups::upload_key_packages(&self.state, &device, r).await?,
                ))
            }
            Request::FetchKeyPackages(r) => {
                let device = self.device()?.clone();
                Ok(Body::KeyPackages(
                    groups::fetch_key_packages(&self.state, &device, r).await?,
                ))
            }
            Request::AckDeliveries(r) => {
                let id = self.device()?.id;
                // Only what this connection delivered and is unacked: an ack
                // of anything else is already done (or never was).
                let seqs: Vec<u64> = r
                    .seqs
                    .iter()
                    .copied()
                    .filter(|s| self.in_flight.remove(s))
                    .collect();
                if seqs.is_empty() {
                    // Nothing of ours: it costs a token like any request,
                    // and does not wake the mailbox.
                    self.take_request_token(id)?;
                    return Ok(Body::Ok(v1::Ok {}));
                }
                self.acked.extend(seqs);
                // Held back for a batch on SQLite only (see "Acks").
                let batched = self.state.hint_order == Some(HintOrder::CommitOrder);
                if self.acked.len() >= ACK_BATCH || !batched {
                    self.flush_acks().await;
                } else if self.ack_deadline.is_none() {
                    self.ack_deadline = Some(Instant::now() + ACK_DELAY);
                }
                // Room in the window: read on if the last read stopped at it.
                if !self.synced {
                    self.told_empty = false;
                }
                Ok(Body::Ok(v1::Ok {}))
            }
            Request::SetPin(r) => {
                let device = self.device()?.clone();
                registration::set_pin(&self.state, &device, &r.pin).await?;
                Ok(Body::Ok(v1::Ok {}))
            }
            Request::ApproveLink(r) => {
                let device = self.device()?.clone();
                let linked = linking::approve(&self.state, &device, &r.code).await?;
                Ok(Body::DeviceLinked(linking::device_info(&linked)))
            }
            // Public, and allowed before authentication: a device checks the
            // log it is shown before it trusts a notice.
            Request::GetNotices(r) => Ok(Body::NoticeLog(self.state.notices.page(r.from))),
            // Public too, for outside auditors that never register.
            Request::GetKeyAudit(r) => {
                let prefix = self.state.prefix(ip);
                self.state.kt_audits.check(prefix).map_err(|secs| {
                    self.state.limited(
                        "kt_audits",
                        "too many key-directory proofs from this network; slow down",
                        secs,
                    )
                })?;
                Ok(Body::KeyAudit(self.state.kt.audit(r.from).await?))
            }
            Request::LookupKeys(r) => {
                let me = self.device()?.clone();
                Ok(Body::KeyLookup(
                    groups::lookup_keys(&self.state, &me, r).await?,
                ))
            }
            // A device's own number only: monitoring, not discovery.
            Request::GetKeyHistory(_) => {
                let me = self.device()?;
                let phone = me.phone.clone();
                self.state.kt_histories.check(me.id).map_err(|secs| {
                    self.state.limited(
                        "kt_histories",
                        "this device asked for its key history too often; a device checks it every few minutes",
                        secs,
                    )
                })?;
                Ok(Body::KeyHistory(self.state.kt.history(&phone).await?))
            }
            Request::ListDevices(_) => {
                let account = self.device()?.account_id;
                let devices = self.state.store.devices_of(account).await?;
                Ok(Body::DeviceList(v1::DeviceList {
                    devices: devices.iter().map(linking::device_info).collect(),
                }))
            }
            Request::RemoveDevice(r) => {
                let me = self.device()?.clone();
                self.remove_device(&me, r.device_id).await?;
                Ok(Body::Ok(v1::Ok {}))
            }
            Request::BlockAccount(r) => {
                let me = self.device()?.clone();
                blocks::block(&self.state, &me, &r.phone, r.blocked).await?;
                Ok(Body::Ok(v1::Ok {}))
            }
            Request::ReportAccount(r) => {
                let me = self.device()?.clone();
                blocks::report(&self.state, &me, &r.phone).await?;
                Ok(Body::Ok(v1::Ok {}))
            }
            Request::CreateBlob(r) => {
                let me = self.device()?.clone();
                Ok(Body::BlobSlot(
                    crate::media::create(&self.state, &me, r).await?,
                ))
            }
            Request::ShareBlob(r) => {
                let me = self.device()?.clone();
                crate::media::share(&self.state, &me, r).await?;
                Ok(Body::Ok(v1::Ok {}))
            }
            Request::BlobFetched(r) => {
                let me = self.device()?.clone();
                crate::media::fetched(&self.state, &me, r).await?;
                Ok(Body::Ok(v1::Ok {}))
            }
            Request::DeleteBlob(r) => {
                let me = self.device()?.clone();
                crate::media::delete_for_everyone(&self.state, &me, r).await?;
                Ok(Body::Ok(v1::Ok {}))
            }
            Request::SetBusinessProfile(r) => {
                let me = self.device()?.clone();
                crate::business::set(&self.state, &me, r).await?;
                let business = self.state.store.business(me.account_id).await?;
                self.business = business.is_some();
                self.business_verified = business.is_some_and(|b| b.verified);
                Ok(Body::Ok(v1::Ok {}))
            }
            Request::GetBusinessProfile(r) => {
                self.device()?;
                Ok(Body::BusinessInfo(
                    crate::business::get(&self.state, &r.phone).await?,
                ))
            }
        }
    }

    fn not_yet_device(&self) -> ApiResult<()> {
        if self.device.is_some() {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                "this connection is already authenticated",
            ));
        }
        Ok(())
    }

    async fn remove_device(&self, me: &Device, target: u64) -> ApiResult<()> {
        let device = self.state.store.device(target).await?;
        let Some(device) = device.filter(|d| d.account_id == me.account_id && d.revoked.is_none())
        else {
            return Err(ApiError::new(
                ErrorCode::UnknownDevice,
                format!("your account has no device {target}"),
            ));
        };
        if device.primary {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "the primary device cannot be removed; register the number on another phone instead",
            ));
        }
        if !me.primary && me.id != target {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "a linked device can only remove itself",
            ));
        }
        self.state
            .store
            .revoke_device(target, RevokeReason::Removed)
            .await?;
        self.state.kt.device_changed(&me.phone).await;
        self.state.bus.publish(&dak_bus::revoke_topic(target));
        Ok(())
    }

    /// Subscribes before the first fetch, so no mail can slip between them.
    fn become_device(&mut self, device: Device) {
        self.mail = Some(self.state.bus.subscribe(&dak_bus::mail_topic(device.id)));
        self.revoke = Some(self.state.bus.subscribe(&dak_bus::revoke_topic(device.id)));
        self.deadline = registration::link_deadline_ms(&self.state, &device).map(|at| {
            let wait = (at - now_ms()).max(0) as u64;
            Instant::now() + Duration::from_millis(wait)
        });
        self.link = None;
        let mut notices = self.state.notices.subscribe();
        notices.mark_changed(); // push what was published since the challenge
        self.notices = Some(notices);
        self.all_targeted = true;
        self.admitted.authenticated();
        self.online = Some(self.state.online.join(
            device.id,
            self.state.config.max_connections_per_device as usize,
        ));
        self.heard_at = Instant::now();
        tracing::debug!(peer = %self.peer, device = device.id, "device connected");
        self.device = Some(device);
        self.next_ping = Some(Instant::now() + self.state.config.ping_interval);
    }

    /// Pushes the notice log's entries this device has not been shown, a
    /// page per frame, and its account's targeted notices among them.
    async fn push_notices(&mut self) -> Flow {
        let Some((phone, account, device_since)) = self
            .device
            .as_ref()
            .map(|d| (d.phone.clone(), d.account_id, d.created_ms))
        else {
            return Flow::Continue;
        };
        if let Some(rx) = self.notices.as_mut() {
            rx.borrow_and_update();
        }
        let from = self.notices_sent;
        loop {
            let page = self.state.notices.page(self.notices_sent);
            if page.entries.is_empty() {
                break;
            }
            self.notices_sent += page.entries.len() as u64;
            self.push(Body::NoticeLog(page)).await;
        }
        // The first time after authentication, all of its account's
        // targeted notices (a device that was offline has not seen them;
        // it drops those it has); after that, those published since. Only
        // those whose log entry went out above, so a device always has the
        // entry before the notice.
        let from = if std::mem::take(&mut self.all_targeted) {
            0
        } else {
            from
        };
        let to = self.notices_sent;
        if self
            .state
            .notices
            .targeted_for(&phone, from, to, 0)
            .is_empty()
        {
            return Flow::Continue;
        }
        // Since the account's earliest active device: a device linked
        // after the attack is told too; a registration on a new phone
        // (which revokes the others, and is also what happens when the
        // number is given to someone new) starts over.
        let since_ms = match self.state.store.devices_of(account).await {
            Ok(devices) => devices
                .iter()
                .map(|d| d.created_ms)
                .min()
                .unwrap_or(device_since),
            Err(_) => device_since,
        };
        for t in self.state.notices.targeted_for(&phone, from, to, since_ms) {
            self.push(Body::TargetedNotice(t)).await;
        }
        Flow::Continue
    }

    /// Pushes as much of the mailbox as the window allows, reading the
    /// store; a short read means everything committed so far is pushed.
    async fn pump(&mut self) -> Flow {
        let Some(id) = self.device.as_ref().map(|d| d.id) else {
            return Flow::Continue;
        };
        loop {
            let room = WINDOW.saturating_sub(self.in_flight.len());
            if room == 0 {
                self.synced = false;
                return Flow::Continue;
            }
            let asked = room.min(FETCH);
            let entries = match self
                .state
                .store
                .fetch_mailbox(id, self.pushed_to, asked)
                .await
            {
                Ok(e) => e,
                Err(e) => {
                    // The envelopes stay in the store; the next wake-up or
                    // reconnect tries again.
                    self.synced = false;
                    tracing::warn!(device = id, error = %e, "mailbox fetch failed");
                    return Flow::Continue;
                }
            };
            let caught_up = entries.len() < asked;
            if self.deliver(entries).await {
                return Flow::Close;
            }
            if caught_up {
                self.synced = true;
                if !self.told_empty {
                    self.told_empty = true;
                    self.push(Body::QueueEmpty(v1::QueueEmpty {})).await;
                }
                return Flow::Continue;
            }
        }
    }

    /// Pushes what the store handed over since the last take, when this
    /// session is synced and has room; otherwise reads the store.
    async fn on_hints(&mut self) -> Flow {
        let Some(slot) = &self.online else {
            return Flow::Continue;
        };
        let taken = slot.inbox.take();
        if taken.lagged {
            self.synced = false;
        }
        if !self.synced {
            // The store has all of it; hints at or below what a read pushes
            // are skipped later.
            self.told_empty = false;
            return self.pump().await;
        }
        let room = WINDOW.saturating_sub(self.in_flight.len());
        let order = self.state.hint_order.unwrap_or(HintOrder::CommitOrder);
        let (hints, stopped) = crate::inbox::pushable(taken.hints, self.pushed_to, room, order);
        if stopped {
            // The window is full (these wait in the store until acks free
            // it), or a seq is missing or late: the store has them all.
            self.synced = false;
            self.told_empty = false;
        }
        let entries: Vec<_> = hints
            .iter()
            .map(|hint| {
                let e = &*hint.envelope;
                dak_store::MailboxEntry {
                    seq: hint.seq,
                    message_id: e.message_id.clone(),
                    sender_phone: e.sender_phone.clone(),
                    sender_device: e.sender_device,
                    server_time_ms: e.server_time_ms,
                    body: e.body.clone(),
                }
            })
            .collect();
        if !entries.is_empty() {
            Metrics::add(
                &self.state.metrics.envelopes_from_memory,
                entries.len() as u64,
            );
            if self.deliver(entries).await {
                return Flow::Close;
            }
        }
        if stopped {
            // Reads what is missing, if the window has room.
            return self.pump().await;
        }
        if hints.is_empty() {
            return Flow::Continue;
        }
        if self.synced {
            self.told_empty = true;
            self.push(Body::QueueEmpty(v1::QueueEmpty {})).await;
        }
        Flow::Continue
    }

    /// Pushes envelopes (in seq order, all above `pushed_to`) in Deliver
    /// frames and counts them in flight. True when the client stopped reading.
    async fn deliver(&mut self, entries: Vec<dak_store::MailboxEntry>) -> bool {
        let Some(last) = entries.last() else {
            return false;
        };
        self.pushed_to = last.seq;
        self.in_flight.extend(entries.iter().map(|e| e.seq));
        self.told_empty = false;
        self.state
            .metrics
            .envelopes_delivered
            .fetch_add(entries.len() as u64, std::sync::atomic::Ordering::Relaxed);
        for frame in mailbox::into_frames(entries) {
            self.push(Body::Deliver(frame)).await;
            if self.stalled {
                return true;
            }
        }
        false
    }

    async fn on_revoked(&mut self) -> Flow {
        let Some(id) = self.device.as_ref().map(|d| d.id) else {
            return Flow::Continue;
        };
        let reason = match self.state.store.device(id).await {
            Ok(Some(d)) => d.revoked,
            _ => None,
        };
        let Some(reason) = reason else {
            return Flow::Continue;
        };
        self.notify_revoked(reason).await
    }

    async fn notify_revoked(&mut self, reason: RevokeReason) -> Flow {
        let kind = match reason {
            RevokeReason::Removed => v1::NoticeKind::DeviceRemoved,
            RevokeReason::NumberMoved => v1::NoticeKind::NumberMoved,
            RevokeReason::LinkExpired => v1::NoticeKind::LinkExpired,
        };
        let (_, message) = registration::revoked_message(reason);
        self.push(Body::Notice(v1::Notice {
            kind: kind as i32,
            message: message.into(),
        }))
        .await;
        let _ = self
            .out
            .try_send(ToSocket::Close(CLOSE_POLICY, "device signed out".into()));
        Flow::Close
    }

    async fn on_link_approved(&mut self) -> Flow {
        let Some(link) = &self.link else {
            return Flow::Continue;
        };
        let device = match self.state.store.device_by_key(&link.identity_key).await {
            Ok(Some(d)) => d,
            Ok(None) => return Flow::Continue,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the linked device");
                return Flow::Continue;
            }
        };
        // Never the code: it is what approves a device.
        tracing::debug!(device = device.id, "link approved");
        let answer = v1::LinkApproved {
            phone: device.phone.clone(),
            device_id: device.id,
        };
        self.become_device(device);
        self.push(Body::LinkApproved(answer)).await;
        self.pump().await
    }

    async fn on_deadline(&mut self) -> Flow {
        match self.device.clone() {
            None => {
                self.fail(
                    ErrorCode::NotAuthenticated,
                    "no authentication (or link approval) in time; connect again".into(),
                    CLOSE_POLICY,
                )
                .await
            }
            Some(device) => {
                if let Err(e) = self
                    .state
                    .store
                    .revoke_device(device.id, RevokeReason::LinkExpired)
                    .await
                {
                    tracing::warn!(error = %e, "cannot expire linked device; will retry at next connect");
                } else {
                    self.state.kt.device_changed(&device.phone).await;
                }
                self.notify_revoked(RevokeReason::LinkExpired).await
            }
        }
    }
}
