//! Moving frames natively: `dak_core::Transport` over a WebSocket over TLS.
//!
//! Server certificates: a certificate that chains to a public root is
//! accepted as usual. Otherwise (a self-signed server) the client trusts
//! the certificate it saw when the profile was registered or linked and
//! refuses any other later, as SSH does with host keys.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures_util::{SinkExt, StreamExt};
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use dak_core::ClientError;
pub use dak_core::{CertTrust, Transport};

/// Where `DAK_WIRE_TRACE` (or `trace_frames_to`) has every frame the server
/// sends appended, each as a 4-byte big-endian length and the frame: for
/// looking at exactly what crossed the wire (the tests check that no
/// plaintext ever does).
static WIRE_TRACE: Mutex<Option<std::fs::File>> = Mutex::new(None);
static WIRE_TRACE_ENV: std::sync::Once = std::sync::Once::new();

/// Appends every frame received from a server to `path` from now on.
pub fn trace_frames_to(path: &std::path::Path) -> std::io::Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    *WIRE_TRACE.lock().unwrap_or_else(|e| e.into_inner()) = Some(file);
    Ok(())
}

fn trace(frame: &[u8]) {
    WIRE_TRACE_ENV.call_once(|| {
        if let Some(path) = std::env::var_os("DAK_WIRE_TRACE")
            && let Err(e) = trace_frames_to(std::path::Path::new(&path))
        {
            tracing::warn!(error = %e, "cannot open DAK_WIRE_TRACE");
        }
    });
    let mut guard = WIRE_TRACE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(file) = guard.as_mut() {
        use std::io::Write;
        let _ = file
            .write_all(&(frame.len() as u32).to_be_bytes())
            .and_then(|_| file.write_all(frame));
    }
}

const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

pub struct WsTransport {
    ws: tokio_tungstenite::WebSocketStream<Box<dyn Stream>>,
    close_reason: Option<String>,
}

/// What a TLS connection saw: the fingerprint of the server's certificate.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    pub fingerprint: Option<String>,
}

impl WsTransport {
    /// Connects to `wss://host:port` or `ws://host:port` (loopback only).
    pub async fn connect(url: &str, trust: &CertTrust) -> Result<(WsTransport, Seen), ClientError> {
        Self::connect_from(url, trust, None).await
    }

    /// As `connect`, from a chosen local address. The load generator spreads
    /// connections over 127.0.0.x so that they are not capped by the
    /// ephemeral ports of one source address.
    pub async fn connect_from(
        url: &str,
        trust: &CertTrust,
        local: Option<std::net::IpAddr>,
    ) -> Result<(WsTransport, Seen), ClientError> {
        let (secure, authority) = if let Some(rest) = url.strip_prefix("wss://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("ws://") {
            (false, rest)
        } else {
            return Err(ClientError::Usage(format!(
                "server address {url:?} must start with wss:// (or ws:// for a local test server)"
            )));
        };
        let authority = authority.trim_end_matches('/');
        let (host, _) = authority.rsplit_once(':').ok_or_else(|| {
            ClientError::Usage(format!(
                "server address {url:?} needs a port, like wss://example.org:7443"
            ))
        })?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        // A host that is gone (not just a process that died) would otherwise
        // hold a failover for the kernel's TCP timeout, minutes.
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, dial(authority, local))
            .await
            .map_err(|_| {
                ClientError::Transport(format!("{authority}: no answer within {CONNECT_TIMEOUT:?}"))
            })?
            .map_err(|e| ClientError::Transport(format!("{authority}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let mut seen = Seen::default();
        let stream: Box<dyn Stream> = if secure {
            let verifier = Arc::new(PinningVerifier::new(trust.clone())?);
            let config = rustls::ClientConfig::builder_with_provider(provider())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .map_err(|e| ClientError::Transport(e.to_string()))?
                .dangerous()
                .with_custom_certificate_verifier(verifier.clone())
                .with_no_client_auth();
            let name = ServerName::try_from(host.clone())
                .map_err(|_| ClientError::Usage(format!("{host:?} is not a valid server name")))?;
            let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .map_err(|e| ClientError::Transport(format!("TLS with {authority}: {e}")))?;
            seen.fingerprint = verifier.seen.lock().ok().and_then(|s| s.clone());
            Box::new(tls)
        } else {
            Box::new(tcp)
        };
        let ws_url = format!("{}://{authority}/v1/ws", if secure { "wss" } else { "ws" });
        let mut config = WebSocketConfig::default();
        config.max_message_size = Some(dak_proto::MAX_FRAME_BYTES * 2);
        config.max_frame_size = Some(dak_proto::MAX_FRAME_BYTES * 2);
        // The default 128 KiB read buffer is reserved up front; a client (and
        // the load generator's thousands of them) needs far less.
        config.read_buffer_size = 8 * 1024;
        let (ws, _) = tokio_tungstenite::client_async_with_config(ws_url, stream, Some(config))
            .await
            .map_err(|e| {
                ClientError::Transport(format!("WebSocket handshake with {authority}: {e}"))
            })?;
        Ok((
            WsTransport {
                ws,
                close_reason: None,
            },
            seen,
        ))
    }
}

#[async_trait]
impl Transport for WsTransport {
    async fn send(&mut self, frame: Vec<u8>) -> Result<(), ClientError> {
        self.ws
            .send(Message::Binary(frame.into()))
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))
    }

    async fn recv(&mut self) -> Result<Option<Vec<u8>>, ClientError> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Binary(b))) => {
                    trace(&b);
                    return Ok(Some(b.to_vec()));
                }
                Some(Ok(Message::Close(frame))) => {
                    self.close_reason = frame.map(|f| f.reason.to_string());
                    return Ok(None);
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(ClientError::Transport(e.to_string())),
                None => return Ok(None),
            }
        }
    }

    async fn close(&mut self) {
        let _ = self.ws.close(None).await;
    }

    fn close_reason(&self) -> Option<String> {
        self.close_reason.clone().filter(|r| !r.is_empty())
    }
}

async fn dial(authority: &str, local: Option<std::net::IpAddr>) -> std::io::Result<TcpStream> {
    let Some(local) = local else {
        return TcpStream::connect(authority).await;
    };
    let remote = tokio::net::lookup_host(authority)
        .await?
        .find(|a| a.is_ipv4() == local.is_ipv4())
        .ok_or_else(|| std::io::Error::other("no address of the server's family"))?;
    let socket = if local.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.bind(std::net::SocketAddr::new(local, 0))?;
    socket.connect(remote).await
}

/// The TLS settings every connection to a Dak server uses (the WebSocket
/// and media transfers): TLS 1.3, the certificate judged by `trust`.
pub fn tls_config(trust: &CertTrust) -> Result<rustls::ClientConfig, ClientError> {
    let verifier = Arc::new(PinningVerifier::new(trust.clone())?);
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError::Transport(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// TLS to anything on the public internet that is not a Dak server (a
/// bot's webhook): the public roots only, TLS 1.2 or 1.3, no pinning.
pub fn public_tls_config() -> rustls::ClientConfig {
    let roots = rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[derive(Debug)]
struct PinningVerifier {
    trust: CertTrust,
    webpki: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    seen: Mutex<Option<String>>,
}

impl PinningVerifier {
    fn new(trust: CertTrust) -> Result<Self, ClientError> {
        let roots =
            rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .ok();
        Ok(PinningVerifier {
            trust,
            webpki,
            seen: Mutex::new(None),
        })
    }
}

pub fn fingerprint(cert: &[u8]) -> String {
    hex::encode(Sha256::digest(cert))
}

impl ServerCertVerifier for PinningVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let fp = fingerprint(end_entity.as_ref());
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(fp.clone());
        }
        if let Some(w) = &self.webpki
            && w.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
                .is_ok()
        {
            return Ok(ServerCertVerified::assertion());
        }
        match &self.trust {
            CertTrust::FirstUse => Ok(ServerCertVerified::assertion()),
            CertTrust::Pinned(p) if p.eq_ignore_ascii_case(&fp) => {
                Ok(ServerCertVerified::assertion())
            }
            CertTrust::Pinned(p) => Err(rustls::Error::General(format!(
                "the server's certificate changed (sha256 {fp}, this profile trusts {p}); \
                 if the operator replaced it on purpose, register or link this profile again"
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
