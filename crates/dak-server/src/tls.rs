//! TLS for the gateway: a certificate from the operator, or a self-signed
//! one made on first start and kept in the data directory so that clients
//! that pinned it keep trusting the server across restarts.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

pub struct Tls {
    pub config: Arc<rustls::ServerConfig>,
    /// SHA-256 of the leaf certificate, hex: what clients pin.
    pub fingerprint: String,
}

pub fn load_or_create(data: &Path, cert: Option<&Path>, key: Option<&Path>) -> Result<Tls> {
    let (cert_path, key_path) = match (cert, key) {
        (Some(c), Some(k)) => (c.to_owned(), k.to_owned()),
        _ => {
            let c = data.join("tls-cert.pem");
            let k = data.join("tls-key.pem");
            if !c.exists() || !k.exists() {
                create_self_signed(&c, &k)?;
            }
            (c, k)
        }
    };
    let certs: Vec<CertificateDer<'static>> =
        rustls_pemfile::certs(&mut read(&cert_path)?.as_slice())
            .collect::<Result<_, _>>()
            .with_context(|| {
                format!("{} holds no readable PEM certificate", cert_path.display())
            })?;
    let leaf = certs
        .first()
        .with_context(|| format!("{} holds no certificate", cert_path.display()))?;
    let fingerprint = hex::encode(Sha256::digest(leaf.as_ref()));
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut read(&key_path)?.as_slice())
        .with_context(|| format!("{} is not a PEM private key", key_path.display()))?
        .with_context(|| format!("{} holds no private key", key_path.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 unavailable")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("certificate and key do not match")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Tls {
        config: Arc::new(config),
        fingerprint,
    })
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

fn create_self_signed(cert_path: &Path, key_path: &Path) -> Result<()> {
    let names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let certified = rcgen::generate_simple_self_signed(names)
        .context("cannot generate a self-signed certificate")?;
    std::fs::write(cert_path, certified.cert.pem())
        .with_context(|| format!("cannot write {}", cert_path.display()))?;
    write_private(key_path, certified.signing_key.serialize_pem().as_bytes())?;
    tracing::info!(cert = %cert_path.display(), "generated a self-signed TLS certificate");
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}
