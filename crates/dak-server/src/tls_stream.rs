//! The server's TLS stream: rustls's unbuffered connection
//! (`UnbufferedServerConnection`) under tokio's `AsyncRead`/`AsyncWrite`,
//! holding no buffer while its connection is idle.
//!
//! Why not tokio-rustls: it wraps rustls's buffered connection, which keeps
//! a 4 KiB read buffer for the life of the connection (it shrinks to 4 KiB,
//! never below). An idle device's connection is most of what a node holds
//! (issue 18: 13.7 KiB per idle connection, 7.3 KiB of it rustls's), and the
//! unbuffered API lets the caller own the buffers and drop them.
//!
//! Invariants:
//! - Bytes from the socket are read into a buffer on the stack, and records
//!   are decrypted from there; only the tail of a record not yet complete
//!   is copied to `incoming`, which is empty (no allocation) whenever what
//!   was read so far is whole records. It never holds more than
//!   `MAX_INCOMING`.
//! - `plaintext[taken..]` is decrypted data the reader has not taken yet;
//!   the socket is read again only once it is all taken, and the vector is
//!   released then.
//! - Everything rustls asks to send (handshake records, session tickets, a
//!   key update's answer) and every encrypted write is appended to
//!   `outgoing` in the order it is produced; `TransmitTlsData::done` is
//!   called at once, since nothing appended later can overtake it.
//!   `outgoing[written..]` goes to the socket on flush (or when more than
//!   `MAX_OUTGOING` waits), and the vector is released once all is written.
//! - Only the writer writes to the socket and only the reader reads it: a
//!   key update's answer, produced while reading, goes out before the next
//!   write's data (rustls puts it first) with the next flush (TLS 1.3 asks
//!   only that it precede the next application data). A
//!   reader that wrote would take the writer's place as the one the socket
//!   wakes when writable, and the writer would sleep for ever.
//! - A handshake that fails sends rustls's alert (protocol_version,
//!   decrypt_error, …) if the socket takes it at once, so a client learns
//!   why; `edge.rs` holds the whole handshake to the connection's deadline.
//! - After the peer's close_notify nothing more is read from the socket:
//!   reads answer end of stream. A socket that ends without one is an
//!   `UnexpectedEof` error, as rustls's own reader says it.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read from the socket at once, on the stack: one whole record (16
/// KiB of payload and its overhead) and then some.
const READ_CHUNK: usize = 17 * 1024;
/// The most a partial record (or, in the handshake, a handshake message
/// spanning records: rustls allows 64 KiB) may hold in `incoming`.
const MAX_INCOMING: usize = 64 * 1024 + READ_CHUNK;
/// Encrypted bytes waiting for the socket before a write waits for it too.
const MAX_OUTGOING: usize = 64 * 1024;
/// The most plaintext one `poll_write` takes.
const MAX_WRITE: usize = 64 * 1024;

/// A server-side TLS 1.3 stream over `IO`, made by [`accept`].
pub struct TlsStream<IO> {
    io: IO,
    conn: UnbufferedServerConnection,
    incoming: Vec<u8>,
    plaintext: Vec<u8>,
    taken: usize,
    outgoing: Vec<u8>,
    written: usize,
    /// The peer's close_notify has arrived.
    peer_closed: bool,
    /// The socket ended.
    eof: bool,
    /// Our close_notify is in `outgoing` (or sent).
    close_queued: bool,
}

/// Where processing the received records stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// More bytes from the peer are needed.
    Read,
    /// Application data may be written (the handshake may still wait for
    /// the client's Finished: see `is_handshaking`).
    Ready,
    /// Both sides sent close_notify.
    Closed,
}

/// What to encrypt when the connection is ready for it.
enum Write<'a> {
    Nothing,
    Data(&'a [u8]),
    CloseNotify,
}

/// Does the server's side of the handshake on `io` and returns the stream
/// once the client's Finished has arrived and everything the server had to
/// send (its tickets too) is written.
pub async fn accept<IO>(config: Arc<rustls::ServerConfig>, io: IO) -> io::Result<TlsStream<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
    let mut stream = TlsStream {
        io,
        conn,
        incoming: Vec::new(),
        plaintext: Vec::new(),
        taken: 0,
        outgoing: Vec::new(),
        written: 0,
        peer_closed: false,
        eof: false,
        close_queued: false,
    };
    // Reads and writes at once: a client may write (a ChangeCipherSpec)
    // before it reads the rest of the server's flight, and a server that
    // only wrote would wait for a client that waits for it.
    let done = std::future::poll_fn(|cx| {
        loop {
            let sent = stream.poll_send(cx)?;
            if !stream.conn.is_handshaking() {
                return sent.map(Ok);
            }
            if stream.peer_closed {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed the connection during the TLS handshake",
                )));
            }
            match ready!(stream.poll_fill(cx)) {
                Ok(0) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the connection ended during the TLS handshake",
                    )));
                }
                Ok(_) => {}
                Err(e) => {
                    stream.queue_alert();
                    // One try, without waiting: the client may be gone.
                    let _ = stream.poll_send(cx);
                    return Poll::Ready(Err(e));
                }
            }
        }
    })
    .await;
    done.map(|()| stream)
}

impl<IO> TlsStream<IO> {
    /// After rustls refused the peer's records: the alert it queued, in
    /// `outgoing` (it hands queued records out before it reports the
    /// error again).
    fn queue_alert(&mut self) {
        for _ in 0..4 {
            let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut []);
            match state {
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    let _ = append(
                        &mut self.outgoing,
                        64,
                        |out| encode.encode(out),
                        encode_short,
                    );
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => transmit.done(),
                _ => return,
            }
        }
    }

    /// The capacity of the buffers the stream holds: all zero while idle.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.incoming.capacity() + self.plaintext.capacity() + self.outgoing.capacity()
    }

    /// Processes the records in `incoming` (the handshake's, and any
    /// application data after it) and, when the connection is ready for
    /// it, encrypts `write`. Errs when the peer breaks the protocol or the
    /// write cannot be made (the connection is closing).
    fn process_incoming(&mut self, write: Write<'_>) -> io::Result<()> {
        let used = process(
            &mut self.conn,
            &mut self.incoming,
            write,
            &mut self.plaintext,
            &mut self.outgoing,
            &mut self.peer_closed,
        )?;
        self.incoming.drain(..used);
        if self.incoming.is_empty() {
            self.incoming = Vec::new();
        } else if self.incoming.capacity() > 2 * self.incoming.len() {
            // Only a record's tail waits: give back what held the rest.
            self.incoming.shrink_to_fit();
        }
        Ok(())
    }
}

impl<IO: AsyncRead + Unpin> TlsStream<IO> {
    /// Reads what the socket has (up to `READ_CHUNK`) and processes it:
    /// the number of bytes read, 0 at the socket's end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut buf = ReadBuf::uninit(&mut chunk);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
        let read = buf.filled().len();
        if read == 0 {
            self.eof = true;
            return Poll::Ready(Ok(0));
        }
        if self.incoming.is_empty() {
            // Whole records are decrypted from the stack; only a partial
            // one's tail is kept.
            let fresh = buf.filled_mut();
            let used = process(
                &mut self.conn,
                fresh,
                Write::Nothing,
                &mut self.plaintext,
                &mut self.outgoing,
                &mut self.peer_closed,
            )?;
            if used < read {
                self.incoming.extend_from_slice(&fresh[used..]);
            }
        } else {
            if self.incoming.len() + read > MAX_INCOMING {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a TLS record or handshake message larger than TLS allows",
                )));
            }
            self.incoming.extend_from_slice(buf.filled());
            self.process_incoming(Write::Nothing)?;
        }
        Poll::Ready(Ok(read))
    }
}

impl<IO: AsyncWrite + Unpin> TlsStream<IO> {
    /// Writes `outgoing[written..]` to the socket; Ready once all is
    /// written (and the vector released).
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.outgoing.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.outgoing[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.outgoing = Vec::new();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

/// Runs rustls over `incoming` until it needs more bytes or is ready for
/// application data, appending decrypted data to `plaintext` and whatever
/// it must send to `outgoing`; encrypts `write` once it is ready. Returns
/// how many bytes at the front of `incoming` are done with.
fn process(
    conn: &mut UnbufferedServerConnection,
    incoming: &mut [u8],
    mut write: Write<'_>,
    plaintext: &mut Vec<u8>,
    outgoing: &mut Vec<u8>,
    peer_closed: &mut bool,
) -> io::Result<usize> {
    let mut used = 0;
    loop {
        let UnbufferedStatus { mut discard, state } =
            conn.process_tls_records(&mut incoming[used..]);
        let stop = match state.map_err(tls_error)? {
            ConnectionState::ReadTraffic(mut traffic) => {
                while let Some(record) = traffic.next_record() {
                    let record = record.map_err(tls_error)?;
                    discard += record.discard;
                    plaintext.extend_from_slice(record.payload);
                }
                None
            }
            ConnectionState::EncodeTlsData(mut encode) => {
                // AlreadyEncoded: nothing is left to append.
                let _ = append(outgoing, 1024, |out| encode.encode(out), encode_short);
                None
            }
            // Appended in order: sent before anything encoded after it.
            ConnectionState::TransmitTlsData(transmit) => {
                transmit.done();
                None
            }
            ConnectionState::BlockedHandshake => Some(Stop::Read),
            ConnectionState::WriteTraffic(mut traffic) => {
                // A record's overhead is 22 bytes (header, content type,
                // tag) and a key update may come first; rustls says so
                // when the room is short.
                let written = match std::mem::replace(&mut write, Write::Nothing) {
                    Write::Nothing => Ok(()),
                    Write::Data(data) => {
                        let room = data.len() + 64 * (data.len() / (16 * 1024) + 2);
                        append(
                            outgoing,
                            room,
                            |out| traffic.encrypt(data, out),
                            encrypt_short,
                        )
                    }
                    Write::CloseNotify => append(
                        outgoing,
                        64,
                        |out| traffic.queue_close_notify(out),
                        encrypt_short,
                    ),
                };
                written.map_err(|_| io::Error::other("the TLS connection's keys are exhausted"))?;
                Some(Stop::Ready)
            }
            ConnectionState::PeerClosed => {
                *peer_closed = true;
                None
            }
            ConnectionState::Closed => {
                *peer_closed = true;
                Some(Stop::Closed)
            }
            ConnectionState::ReadEarlyData(_) => {
                // The server's config accepts none (max_early_data_size 0).
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "TLS early data is not accepted",
                ));
            }
            other => {
                return Err(io::Error::other(format!("unexpected TLS state {other:?}")));
            }
        };
        used += discard;
        if let Some(stop) = stop {
            if !matches!(write, Write::Nothing) && stop != Stop::Ready {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the TLS connection is closed for writing",
                ));
            }
            return Ok(used);
        }
    }
}

/// Appends to `outgoing` what `produce` writes into the room it is given:
/// `room` bytes first, then as many as rustls says it needs (`short`).
/// Any other error is handed back, with nothing appended.
fn append<E>(
    outgoing: &mut Vec<u8>,
    mut room: usize,
    mut produce: impl FnMut(&mut [u8]) -> Result<usize, E>,
    short: fn(&E) -> Option<usize>,
) -> Result<(), E> {
    let at = outgoing.len();
    loop {
        outgoing.resize(at + room, 0);
        match produce(&mut outgoing[at..]) {
            Ok(n) => {
                outgoing.truncate(at + n);
                return Ok(());
            }
            Err(e) => {
                outgoing.truncate(at);
                match short(&e) {
                    Some(required) if required > room => room = required,
                    _ => return Err(e),
                }
            }
        }
    }
}

fn encode_short(e: &EncodeError) -> Option<usize> {
    match e {
        EncodeError::InsufficientSize(e) => Some(e.required_size),
        EncodeError::AlreadyEncoded => None,
    }
}

fn encrypt_short(e: &EncryptError) -> Option<usize> {
    match e {
        EncryptError::InsufficientSize(e) => Some(e.required_size),
        EncryptError::EncryptExhausted => None,
    }
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.taken < this.plaintext.len() {
                let n = buf.remaining().min(this.plaintext.len() - this.taken);
                buf.put_slice(&this.plaintext[this.taken..this.taken + n]);
                this.taken += n;
                if this.taken == this.plaintext.len() {
                    this.plaintext = Vec::new();
                    this.taken = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.peer_closed || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed the connection without sending TLS close_notify",
                )));
            }
            ready!(this.poll_fill(cx))?;
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.close_queued {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the TLS connection is closed for writing",
            )));
        }
        if this.outgoing.len() - this.written >= MAX_OUTGOING {
            ready!(this.poll_send(cx))?;
        }
        let data = &buf[..buf.len().min(MAX_WRITE)];
        this.process_incoming(Write::Data(data))?;
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_queued {
            this.close_queued = true;
            // A connection the peer closed both ways takes no close_notify.
            if this.process_incoming(Write::CloseNotify).is_err() {
                tracing::trace!("no close_notify: the TLS connection is closed");
            }
        }
        ready!(this.poll_send(cx))?;
        match ready!(Pin::new(&mut this.io).poll_shutdown(cx)) {
            // The peer is gone already: shut down, as tokio-rustls says too.
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Poll::Ready(Ok(())),
            other => Poll::Ready(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    struct Pair {
        server: TlsStream<TcpStream>,
        client: tokio_rustls::client::TlsStream<TcpStream>,
    }

    fn configs() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let cert = CertificateDer::from(made.cert.der().to_vec());
        let key = PrivateKeyDer::try_from(made.signing_key.serialize_der()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    /// A listener whose one connection's handshake is the task's result.
    async fn handshake_one() -> (
        std::net::SocketAddr,
        tokio::task::JoinHandle<io::Result<()>>,
    ) {
        let (server_config, _) = configs();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            accept(server_config, tcp).await.map(|_| ())
        });
        (addr, server)
    }

    async fn pair() -> Pair {
        let (server_config, client_config) = configs();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            accept(server_config, tcp).await.unwrap()
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let client = tokio_rustls::TlsConnector::from(client_config)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        Pair {
            server: server.await.unwrap(),
            client,
        }
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[tokio::test]
    async fn bytes_cross_both_ways_through_small_reads_and_the_stream_holds_nothing_after() {
        let Pair { mut server, client } = pair().await;
        assert_eq!(server.held(), 0, "a finished handshake holds no buffer");
        // 1 MiB each way, in writes of odd sizes, read back 7 bytes at a
        // time on the server (records split over reads and reads over
        // records).
        let up = pattern(1 << 20, 1);
        let down = pattern(1 << 20, 2);
        let (up2, down2) = (up.clone(), down.clone());
        let client_task = tokio::spawn(async move {
            let (mut r, mut w) = tokio::io::split(client);
            let writer = tokio::spawn(async move {
                for piece in up2.chunks(3001) {
                    w.write_all(piece).await.unwrap();
                }
                w.flush().await.unwrap();
                w
            });
            let mut got = vec![0; down2.len()];
            r.read_exact(&mut got).await.unwrap();
            assert!(got == down2, "the client read what the server wrote");
            let w = writer.await.unwrap();
            r.unsplit(w)
        });
        let mut got = Vec::with_capacity(up.len());
        let mut small = [0u8; 7];
        let mut sent = 0;
        while got.len() < up.len() {
            let n = server.read(&mut small).await.unwrap();
            assert!(n > 0, "no end of stream in the middle");
            got.extend_from_slice(&small[..n]);
            // Answer as we go, so both directions run at once.
            if sent < down.len() {
                let end = (sent + 20_000).min(down.len());
                server.write_all(&down[sent..end]).await.unwrap();
                server.flush().await.unwrap();
                sent = end;
            }
        }
        server.write_all(&down[sent..]).await.unwrap();
        server.flush().await.unwrap();
        assert!(got == up, "the server read what the client wrote");
        let _client = client_task.await.unwrap();
        assert_eq!(server.held(), 0, "an idle stream holds no buffer");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stream_split_between_a_reader_and_a_writer_task_loses_no_wakeup() {
        // As the server uses it: the WebSocket's halves in two tasks.
        let Pair { server, client } = pair().await;
        let (mut server_r, mut server_w) = tokio::io::split(server);
        let (mut client_r, mut client_w) = tokio::io::split(client);
        let up = pattern(2 << 20, 3);
        let down = pattern(2 << 20, 4);
        let (up2, down2) = (up.clone(), down.clone());
        let writers = tokio::spawn(async move {
            let server_writes = async {
                for piece in down2.chunks(777) {
                    server_w.write_all(piece).await.unwrap();
                    if piece[0] % 5 == 0 {
                        server_w.flush().await.unwrap();
                    }
                }
                server_w.flush().await.unwrap();
            };
            let client_writes = async {
                for piece in up2.chunks(1500) {
                    client_w.write_all(piece).await.unwrap();
                }
                client_w.flush().await.unwrap();
            };
            tokio::join!(server_writes, client_writes);
            (server_w, client_w)
        });
        let server_reads = tokio::spawn(async move {
            let mut got = vec![0; up.len()];
            server_r.read_exact(&mut got).await.unwrap();
            assert!(got == up, "the server read what the client wrote");
            server_r
        });
        let mut got = vec![0; down.len()];
        tokio::time::timeout(Duration::from_secs(60), client_r.read_exact(&mut got))
            .await
            .expect("no stall")
            .unwrap();
        assert!(got == down, "the client read what the server wrote");
        let server_r = server_reads.await.unwrap();
        let (server_w, _) = writers.await.unwrap();
        let server = server_r.unsplit(server_w);
        assert_eq!(server.held(), 0);
    }

    #[tokio::test]
    async fn a_writer_ahead_of_a_slow_reader_waits_instead_of_buffering() {
        let Pair {
            mut server,
            mut client,
        } = pair().await;
        let down = pattern(4 << 20, 5);
        let down2 = down.clone();
        let reader = tokio::spawn(async move {
            let mut got = vec![0; down2.len()];
            for chunk in got.chunks_mut(64 * 1024) {
                tokio::time::sleep(Duration::from_millis(2)).await;
                client.read_exact(chunk).await.unwrap();
            }
            assert!(got == down2);
        });
        // Written without a flush: the stream must send on its own once
        // more than MAX_OUTGOING waits, and never hold much more.
        let mut most = 0;
        for piece in down.chunks(16 * 1024) {
            server.write_all(piece).await.unwrap();
            most = most.max(server.outgoing.len() - server.written);
        }
        server.flush().await.unwrap();
        reader.await.unwrap();
        assert!(most <= MAX_OUTGOING + MAX_WRITE + 1024, "held {most} bytes");
    }

    #[tokio::test]
    async fn records_that_arrive_a_few_bytes_at_a_time_are_put_together() {
        // A pipe of 5 bytes: the ClientHello, every handshake message and
        // every record reach the server in pieces across many reads.
        let (server_config, client_config) = configs();
        let (server_io, client_io) = tokio::io::duplex(5);
        let server = tokio::spawn(async move {
            let mut s = accept(server_config, server_io).await.unwrap();
            let mut got = vec![0; 50_000];
            s.read_exact(&mut got).await.unwrap();
            s.write_all(&got).await.unwrap();
            s.flush().await.unwrap();
            s
        });
        let mut client = tokio_rustls::TlsConnector::from(client_config)
            .connect(ServerName::try_from("localhost").unwrap(), client_io)
            .await
            .unwrap();
        let sent = pattern(50_000, 6);
        let (mut r, mut w) = tokio::io::split(&mut client);
        let echo = async {
            let mut back = vec![0; sent.len()];
            r.read_exact(&mut back).await.unwrap();
            back
        };
        let send = async {
            w.write_all(&sent).await.unwrap();
            w.flush().await.unwrap();
        };
        let (back, ()) = tokio::join!(echo, send);
        assert!(back == sent);
        let server = server.await.unwrap();
        assert_eq!(server.held(), 0);
    }

    #[tokio::test]
    async fn a_client_the_server_cannot_serve_is_told_why() {
        // A TLS 1.2-only client: the server (TLS 1.3 only) answers with
        // rustls's alert, not a bare disconnect.
        let (addr, server) = handshake_one().await;
        let client_config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let err = tokio_rustls::TlsConnector::from(Arc::new(client_config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap_err();
        assert!(
            format!("{err:?}").contains("AlertReceived(ProtocolVersion)"),
            "the client got: {err:?}"
        );
        assert!(server.await.unwrap().is_err());
    }

    #[tokio::test]
    async fn close_notify_ends_the_stream_cleanly_both_ways() {
        let Pair {
            mut server,
            mut client,
        } = pair().await;
        client.write_all(b"last words").await.unwrap();
        client.shutdown().await.unwrap();
        let mut all = Vec::new();
        server.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"last words");
        // The server may still answer, then closes in turn.
        server.write_all(b"goodbye").await.unwrap();
        server.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"goodbye");
    }

    #[tokio::test]
    async fn a_connection_cut_without_close_notify_is_an_error_not_an_end() {
        let Pair { mut server, client } = pair().await;
        // A FIN with no close_notify before it (shut down, not dropped: a
        // socket dropped with the server's tickets unread sends a reset).
        let (mut tcp, _) = client.into_inner();
        tcp.shutdown().await.unwrap();
        let mut all = Vec::new();
        let err = server.read_to_end(&mut all).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        drop(tcp);
    }

    #[tokio::test]
    async fn a_key_update_from_the_client_is_followed() {
        let Pair {
            mut server,
            mut client,
        } = pair().await;
        for round in 0..3u8 {
            client.get_mut().1.refresh_traffic_keys().unwrap();
            client.write_all(&[round; 100]).await.unwrap();
            client.flush().await.unwrap();
            let mut got = [0u8; 100];
            server.read_exact(&mut got).await.unwrap();
            assert_eq!(got, [round; 100]);
            server.write_all(&[round + 10; 50]).await.unwrap();
            server.flush().await.unwrap();
            let mut back = [0u8; 50];
            client.read_exact(&mut back).await.unwrap();
            assert_eq!(back, [round + 10; 50]);
        }
    }

    #[tokio::test]
    async fn bytes_that_are_not_tls_fail_the_handshake() {
        let (addr, server) = handshake_one().await;
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let err = server.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        // A client that goes away mid-handshake is an error too.
        let (addr, server) = handshake_one().await;
        drop(TcpStream::connect(addr).await.unwrap());
        let err = server.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
    }
}
