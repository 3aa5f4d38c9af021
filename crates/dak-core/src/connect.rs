//! How a `Client` comes to exist: registering a number (`request_code`,
//! `verify`), linking a new device (`link`), and connecting a registered
//! one (`connect`, `connect_patiently`): a random node of the cluster first,
//! the next on a retryable failure, then authentication, KeyPackages and
//! the outbox. Every connection is opened through the profile's
//! `Environment`, pinning the certificate the profile trusts.

use crate::ClientError;
use crate::connection::{Connection, unexpected};
use crate::key_packages::{refresh_all, stocks, top_up_key_packages};
use crate::receive::SEEN_KEEP_MS;
use crate::transport::CertTrust;
use crate::{Profile, Registration};
use dak_proto::AuthPurpose;
use dak_proto::v1::{self, client_frame::Request, server_frame::Body};

use crate::client::Client;
use crate::ids::phone;

/// Opens a connection through the profile's environment, pinning the
/// certificate if the profile knows one.
pub(crate) async fn open(
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
pub(crate) async fn open_first(
    profile: &Profile,
    servers: &str,
) -> Result<(Connection, Option<String>), ClientError> {
    open_any(profile, servers, CertTrust::FirstUse).await
}

pub(crate) async fn open_any(
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

pub(crate) fn trust_for(profile: &Profile, key: &str) -> Result<CertTrust, ClientError> {
    // No pin stored means the certificate must chain to a public root.
    Ok(CertTrust::Pinned(profile.get_str(key)?.unwrap_or_default()))
}

/// An outside auditor's connection (`dak audit`): with `profile` as its
/// memory, it pins the server's certificate at its first run and holds it
/// to that pin after; it never authenticates.
pub(crate) async fn open_auditor(
    profile: &Profile,
    servers: &str,
) -> Result<Connection, ClientError> {
    let pinned_cert = profile.get_str("cert")?;
    let trust = match &pinned_cert {
        Some(_) => trust_for(profile, "cert")?,
        None => CertTrust::FirstUse,
    };
    let (conn, fingerprint) = open_any(profile, servers, trust).await?;
    if pinned_cert.is_none()
        && let Some(f) = fingerprint
    {
        profile.set("cert", f.as_bytes())?;
    }
    Ok(conn)
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
        let notice_key = conn.notice_log().0;
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
        crate::notices::pin_key(profile, "pending_notice_key", &notice_key)?;
        // Only this profile can use the code: the server binds it to the session.
        profile.set("pending_session", &sent.session)?;
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
                session: profile.get("pending_session")?.unwrap_or_default(),
            }))
            .await?;
        let Body::Registered(r) = answer else {
            return Err(unexpected(answer));
        };
        let cert = profile.get("pending_cert")?.unwrap_or_default();
        profile.set("cert", &cert)?;
        crate::notices::confirm_pending_key(profile)?;
        profile.save_registration(&server, &r.phone, r.device_id)?;
        for k in [
            "pending_server",
            "pending_phone",
            "pending_cert",
            "pending_session",
        ] {
            profile.delete(k)?;
        }
        // Ready for encrypted chats before anyone writes: if this fails, the
        // next connect uploads them.
        if let Err(e) = refresh_all(profile, &mut conn).await {
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
        crate::notices::pin_key(profile, "notice_key", &conn.notice_log().0)?;
        profile.save_registration(server, &approved.phone, approved.device_id)?;
        // The approving device's history is taken for a while from now.
        crate::history::expect_history(profile)?;
        if let Err(e) = refresh_all(profile, &mut conn).await {
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
    /// with the error, so the caller can try again (or answer its user from
    /// the profile meanwhile, as the browser's engine does while offline).
    pub async fn try_connect(profile: Profile) -> Result<Client, (Profile, ClientError)> {
        let servers = match profile.registration() {
            Ok(reg) => reg.servers(),
            Err(e) => return Err((profile, e)),
        };
        let start = crate::env::random_below(profile.env(), servers.len() as u64) as usize;
        let mut last = ClientError::Transport("no server address in this profile".into());
        // Notice events read on a node that then failed are kept for the
        // node that works (which finds nothing new to say).
        let mut notices = Vec::new();
        for i in 0..servers.len() {
            let server = &servers[(start + i) % servers.len()];
            match Self::authenticate_at(&profile, server, &mut notices).await {
                Ok((conn, reg, auth)) => {
                    return Self::finish_connect(profile, conn, reg, auth, notices, server).await;
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
        notices: &mut Vec<crate::Event>,
    ) -> Result<(Connection, Registration, v1::Authenticated), ClientError> {
        let reg = profile.registration()?;
        let key = profile.identity()?;
        let (mut conn, _) = open(profile, server, trust_for(profile, "cert")?).await?;
        // The operator's notices first, before authentication: during an
        // outage that stops authentication they are what the user needs.
        notices.extend(crate::notices::sync(profile, &mut conn).await);
        let auth = conn.authenticate(&key, reg.device_id).await?;
        Ok((conn, reg, auth))
    }

    /// Sends the outbox on the fresh connection; on failure the profile comes back.
    async fn finish_connect(
        profile: Profile,
        mut conn: Connection,
        reg: Registration,
        auth: v1::Authenticated,
        notices: Vec<crate::Event>,
        server: &str,
    ) -> Result<Client, (Profile, ClientError)> {
        let stocks = match stocks(&profile, &auth) {
            Ok(s) => s,
            Err(e) => return Err((profile, e)),
        };
        for (suite, stock) in stocks {
            if let Err(e) = top_up_key_packages(&profile, &mut conn, suite, &stock).await {
                return Err((profile, e));
            }
        }
        // Redeliveries can only come within the server's retention (30 days
        // by default), so older dedup entries can go.
        if let Err(e) = profile.prune_seen(profile.now_ms() - SEEN_KEEP_MS) {
            return Err((profile, e));
        }

        let mut notices = notices;
        notices.extend(crate::kt::monitor(&profile, &mut conn, reg.device_id).await);
        let mut client = Client {
            profile,
            conn,
            reg,
            server: server.to_string(),
            undecodable: 0,
            pending_events: notices,
            work: Vec::new(),
            working: Default::default(),
        };
        match client.flush_outbox().await {
            Ok(_) => Ok(client),
            Err(e) => Err((client.profile, e)),
        }
    }
}
