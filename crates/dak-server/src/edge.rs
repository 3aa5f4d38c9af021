//! Admission at the edge: what a TCP connection may cost before it is a
//! device.
//!
//! Every accepted connection takes a slot of `max_connections` (derived from
//! the descriptor limit, so `accept` never fails for want of descriptors:
//! beyond the cap a connection is closed at once) and, until it
//! authenticates, a slot of its network's `max_unauthenticated_per_ip`.
//! Until then it also lives under one deadline for the TLS handshake, the
//! HTTP upgrade and authentication together, and may send at most
//! `PRE_AUTH_BYTES`: a silent, dribbling or oversized client is cut off by
//! the stream itself, whatever layer (rustls, hyper, the WebSocket) is
//! reading it.
//!
//! `Admitted` is shared by the stream and the session: the session calls
//! `authenticated` (which frees the network slot and lifts the deadline and
//! the byte budget) or `extend` (a device waiting for its link approval).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::{Instant, Sleep};

use crate::metrics::Metrics;
use crate::ratelimit::IpPrefix;
use crate::state::AppState;
use crate::tls_stream::{self, TlsStream};

/// Bytes a connection may send before it authenticates: TLS handshake,
/// HTTP upgrade request and the registration or link frames, with room to
/// spare. A frame that big cannot be a request an unauthenticated client has.
pub const PRE_AUTH_BYTES: u64 = 64 * 1024;
/// Descriptors kept back from the connection cap for the store, the bus,
/// log files and the metrics listener.
const RESERVED_FDS: u64 = 256;
/// Finished handshakes waiting for the HTTP server to pick them up.
const READY_QUEUE: usize = 1024;

/// The connection cap: the configured one, or most of the descriptor limit
/// (raised to its hard limit first, as a server should).
pub fn connection_cap(configured: u32) -> usize {
    if configured > 0 {
        return configured as usize;
    }
    let limit = raise_fd_limit();
    limit.saturating_sub(RESERVED_FDS).max(16) as usize
}

fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    // A hard limit of "infinity" is not a count; stay with something sane.
    let want = hard.min(1 << 20);
    if want > soft && setrlimit(Resource::RLIMIT_NOFILE, want, hard).is_ok() {
        return want;
    }
    soft
}

/// The caps shared by every connection of this node.
pub struct Admission {
    total: Arc<Semaphore>,
    cap: usize,
    per_network: Mutex<HashMap<IpPrefix, u32>>,
    max_per_network: u32,
    v4_bits: u8,
    v6_bits: u8,
    timeout: Duration,
    /// The instant deadlines are counted from (they are stored as millis).
    epoch: Instant,
}

impl Admission {
    pub fn new(config: &crate::Config) -> Admission {
        let cap = connection_cap(config.max_connections);
        Admission {
            total: Arc::new(Semaphore::new(cap)),
            cap,
            per_network: Mutex::new(HashMap::new()),
            max_per_network: config.max_unauthenticated_per_ip,
            v4_bits: config.ipv4_prefix_len,
            v6_bits: config.ipv6_prefix_len,
            timeout: config.handshake_timeout,
            epoch: Instant::now(),
        }
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    pub fn open(&self) -> usize {
        self.cap - self.total.available_permits()
    }

    pub fn prefix(&self, ip: std::net::IpAddr) -> IpPrefix {
        IpPrefix::of(ip, self.v4_bits, self.v6_bits)
    }

    /// A slot for a new connection from `peer`, or why there is none.
    pub fn admit(self: &Arc<Self>, peer: SocketAddr) -> Result<Arc<Admitted>, Refused> {
        let permit = self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refused::Full)?;
        let network = self.prefix(peer.ip());
        {
            let Ok(mut counts) = self.per_network.lock() else {
                return Err(Refused::Full);
            };
            let n = counts.entry(network).or_insert(0);
            if *n >= self.max_per_network {
                return Err(Refused::Network);
            }
            *n += 1;
        }
        let admitted = Arc::new(Admitted {
            admission: self.clone(),
            network,
            peer,
            authenticated: AtomicBool::new(false),
            media_only: AtomicBool::new(false),
            released: AtomicBool::new(false),
            deadline_ms: AtomicU64::new(0),
            accepted_ms: self.now_ms(),
            _permit: permit,
        });
        admitted.extend(self.timeout);
        Ok(admitted)
    }

    fn release(&self, network: IpPrefix) {
        if let Ok(mut counts) = self.per_network.lock()
            && let Some(n) = counts.get_mut(&network)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&network);
            }
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The node holds `max_connections` already.
    Full,
    /// The network holds `max_unauthenticated_per_ip` unauthenticated ones.
    Network,
}

/// One admitted connection's slots and deadline.
pub struct Admitted {
    admission: Arc<Admission>,
    network: IpPrefix,
    pub peer: SocketAddr,
    authenticated: AtomicBool,
    media_only: AtomicBool,
    released: AtomicBool,
    /// Millis since `Admission::epoch`; 0 once authenticated.
    deadline_ms: AtomicU64,
    /// When the connection was accepted, in the same millis.
    accepted_ms: u64,
    _permit: OwnedSemaphorePermit,
}

impl Admitted {
    /// The connection is a device now: no deadline, no byte budget, and its
    /// network's unauthenticated slot is free.
    pub fn authenticated(&self) {
        self.authenticated.store(true, Ordering::Release);
        self.deadline_ms.store(0, Ordering::Release);
        self.release_network();
    }

    /// A media request showed a blob's secret: no deadline and no byte
    /// budget for its transfer, but this connection may not become a
    /// device's WebSocket (`is_media_only`): the secret opens one blob,
    /// not the server.
    pub fn media_transfer(&self) {
        if !self.is_authenticated() {
            self.media_only.store(true, Ordering::Release);
        }
        self.authenticated();
    }

    pub fn is_media_only(&self) -> bool {
        self.media_only.load(Ordering::Acquire)
    }

    /// Moves the pre-authentication deadline to `wait` from now.
    pub fn extend(&self, wait: Duration) {
        if !self.authenticated.load(Ordering::Acquire) {
            let at = self.admission.now_ms() + wait.as_millis() as u64;
            self.deadline_ms.store(at.max(1), Ordering::Release);
        }
    }

    /// Moves the deadline to `wait` from now for a download (the web
    /// client's files), but never past `cap` after the connection was
    /// accepted: asking for file after file does not keep an
    /// unauthenticated connection for ever.
    pub fn extend_for_download(&self, wait: Duration, cap: Duration) {
        let now = self.admission.now_ms();
        let want = now + wait.as_millis() as u64;
        let limit = self.accepted_ms + cap.as_millis() as u64;
        let current = self.deadline_ms.load(Ordering::Acquire);
        if current != 0 && want.min(limit) > current {
            self.extend(Duration::from_millis(want.min(limit) - now));
        }
    }

    pub fn is_authenticated(&self) -> bool {
        self.authenticated.load(Ordering::Acquire)
    }

    fn deadline(&self) -> Option<Instant> {
        match self.deadline_ms.load(Ordering::Acquire) {
            0 => None,
            ms => Some(self.admission.epoch + Duration::from_millis(ms)),
        }
    }

    fn release_network(&self) {
        if !self.released.swap(true, Ordering::AcqRel) {
            self.admission.release(self.network);
        }
    }
}

impl std::fmt::Debug for Admitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admitted")
            .field("peer", &self.peer)
            .field("authenticated", &self.is_authenticated())
            .finish()
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.release_network();
    }
}

/// A plain or TLS stream held to its connection's admission rules.
pub struct Guarded {
    inner: Inner,
    admitted: Arc<Admitted>,
    read: u64,
    /// The pre-authentication deadline's timer and the instant it is set
    /// for: made at the first read before authentication, dropped at the
    /// first read after it, so an authenticated connection holds none.
    timer: Option<(Pin<Box<Sleep>>, Instant)>,
}

enum Inner {
    Plain(TcpStream),
    /// TLS over a guarded TCP stream: the inner guard counts bytes on the
    /// wire (the handshake included), the outer one what hyper reads.
    Tls(Box<TlsStream<Guarded>>),
}

impl Guarded {
    fn new(inner: Inner, admitted: Arc<Admitted>) -> Guarded {
        Guarded {
            inner,
            admitted,
            read: 0,
            timer: None,
        }
    }

    /// Err once the pre-authentication deadline has passed; otherwise arms
    /// the timer so that a silent peer is woken and refused at the deadline.
    fn check_deadline(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let Some(deadline) = self.admitted.deadline() else {
            return Ok(());
        };
        let timer = match &mut self.timer {
            Some((timer, at)) => {
                if *at != deadline {
                    timer.as_mut().reset(deadline);
                    *at = deadline;
                }
                timer
            }
            None => {
                let timer = Box::pin(tokio::time::sleep_until(deadline));
                &mut self.timer.insert((timer, deadline)).0
            }
        };
        if timer.as_mut().poll(cx).is_ready() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "not authenticated in time",
            ));
        }
        Ok(())
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let pre_auth = !this.admitted.is_authenticated();
        if !pre_auth {
            this.timer = None;
        }
        if pre_auth {
            this.check_deadline(cx)?;
            if this.read >= PRE_AUTH_BYTES {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "too much data before authentication",
                )));
            }
        }
        let before = buf.filled().len();
        let result = match &mut this.inner {
            Inner::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        this.read += (buf.filled().len() - before) as u64;
        result
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.inner {
            Inner::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.inner {
            Inner::Plain(s) => Pin::new(s).poll_flush(cx),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.inner {
            Inner::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// What a request handler learns of its connection.
#[derive(Clone)]
pub struct Peer(pub Arc<Admitted>);

impl Connected<IncomingStream<'_, EdgeListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, EdgeListener>) -> Self {
        Peer(stream.remote_addr().clone())
    }
}

/// Accepts TCP connections under the admission rules, does the TLS
/// handshake (when serving TLS) in a task of its own so that one slow
/// client holds up no other, and hands finished streams to axum.
pub struct EdgeListener {
    ready: mpsc::Receiver<(Guarded, Arc<Admitted>)>,
}

impl EdgeListener {
    pub fn spawn(
        listener: TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
        state: AppState,
    ) -> io::Result<Self> {
        let (tx, ready) = mpsc::channel(READY_QUEUE);
        let admission = state.admission.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Should not happen under the cap; wait rather than spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let admitted = match admission.admit(peer) {
                    Ok(a) => a,
                    Err(why) => {
                        // Closed at once: the cheapest polite answer there is.
                        state.metrics.refused(why);
                        drop(tcp);
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let (tls, ready_tx) = (tls.clone(), tx.clone());
                tokio::spawn(async move {
                    let stream = match tls {
                        None => Guarded::new(Inner::Plain(tcp), admitted.clone()),
                        Some(config) => {
                            // The handshake reads through the guard, so the
                            // deadline and byte budget hold during it too.
                            let guarded = Guarded::new(Inner::Plain(tcp), admitted.clone());
                            match tls_over(config, guarded).await {
                                Ok(s) => s,
                                Err(e) => {
                                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                    return;
                                }
                            }
                        }
                    };
                    let _ = ready_tx.send((stream, admitted)).await;
                });
                if tx.is_closed() {
                    return;
                }
            }
        });
        Ok(EdgeListener { ready })
    }
}

async fn tls_over(config: Arc<rustls::ServerConfig>, tcp: Guarded) -> io::Result<Guarded> {
    let admitted = tcp.admitted.clone();
    // The guard checks the deadline when the handshake reads; this holds
    // it to the deadline while it waits to write, too.
    let handshake = tls_stream::accept(config, tcp);
    let tls = match admitted.deadline() {
        Some(deadline) => tokio::time::timeout_at(deadline, handshake)
            .await
            .map_err(|_| {
                io::Error::new(io::ErrorKind::TimedOut, "TLS handshake not done in time")
            })??,
        None => handshake.await?,
    };
    Ok(Guarded::new(Inner::Tls(Box::new(tls)), admitted))
}

impl Listener for EdgeListener {
    type Io = Guarded;
    type Addr = Arc<Admitted>;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(pair) => pair,
            None => std::future::pending().await,
        }
    }

    /// The "address" of a listener whose addresses are connections: axum
    /// asks for it only through `Serve::local_addr`, which Dak does not use
    /// (`Server::local_addr` is the TCP listener's).
    fn local_addr(&self) -> io::Result<Self::Addr> {
        Err(io::Error::other("an edge listener has no single address"))
    }
}

impl Metrics {
    pub fn refused(&self, why: Refused) {
        Metrics::inc(match why {
            Refused::Full => &self.connections_refused_full,
            Refused::Network => &self.connections_refused_network,
        });
    }
}
