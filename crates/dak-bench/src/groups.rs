//! MLS for the simulated devices, used only in the setup phase of a
//! scenario (not measured). Each device has its own `dak_client::mls::Mls`
//! engine over an in-memory SQLite database and signs with its registration
//! identity key, as the real client does: it uploads KeyPackages, a sender
//! fetches its partner's, creates the conversation's group with an epoch-0
//! commit and the partner's Welcome, and merges on the ack; the partner
//! joins from the Welcome. Then each sender encrypts a small pool of
//! application messages that the timed phase sends in turn (see `POOL`).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use dak_client::Connection;
use dak_client::mls::{Incoming, Mls};
use dak_proto::mls::{CIPHERSUITE, MlsKind};
use dak_proto::v1::{self, client_frame::Request, server_frame::Body};
use prost::Message;

use crate::device::Device;

/// One-time KeyPackages each device uploads besides its last-resort one.
const ONE_TIME_KEY_PACKAGES: usize = 2;

/// Distinct ciphertexts each sender encrypts before the timed phase and then
/// sends in turn. Pre-encrypting keeps the bench measuring the server and
/// not its own CPU: the bench and the server share a small machine, and an
/// MLS encrypt (openmls loading and saving the group state in SQLite) costs
/// far more than the server's work per message. The server reads only a
/// PrivateMessage's group and epoch (it cannot see generations, so it
/// cannot tell a resent ciphertext from a fresh one); the recipients ack
/// without decrypting. The bytes on the wire are real MLS ciphertext of the
/// right size for the right group and epoch.
pub const POOL: usize = 16;

/// How long setup waits for a push (a Welcome, an echoed commit).
const SETUP_WAIT: Duration = Duration::from_secs(30);

/// A device with its MLS state.
pub struct MlsDevice {
    pub device: Device,
    profile: dak_client::Profile,
}

impl MlsDevice {
    pub fn new(device: Device) -> Result<Self> {
        // The bench's own members keep their state in memory: what is
        // measured is the server, not their storage.
        let profile = dak_client::Profile::new(
            Box::new(dak_core::memory::MemoryStore::new()),
            Box::new(dak_client::SystemEnvironment),
        );
        Ok(MlsDevice { device, profile })
    }

    /// The device's MLS engine over its own database.
    pub fn engine(&self) -> Mls<'_> {
        Mls::new(
            &self.profile,
            &self.device.key,
            &self.device.phone,
            self.device.id,
        )
    }

    /// Uploads a last-resort KeyPackage (which makes the device addable)
    /// and a few one-time ones. (`&mut self` here and below only so that
    /// these futures are `Send`.)
    pub async fn upload_keys(&mut self, conn: &mut Connection) -> Result<()> {
        let (key_packages, last_resort) = {
            let m = self.engine();
            (
                m.key_packages(CIPHERSUITE, ONE_TIME_KEY_PACKAGES)?,
                m.last_resort_key_package(CIPHERSUITE)?,
            )
        };
        match conn
            .call(Request::UploadKeyPackages(v1::UploadKeyPackages {
                key_packages,
                last_resort,
                ciphersuite: 0,
            }))
            .await?
        {
            Body::KeyPackageCount(c) if c.has_last_resort => Ok(()),
            other => bail!("unexpected answer to UploadKeyPackages: {other:?}"),
        }
    }

    /// Creates a group with every device of `peer` (the Welcome goes with
    /// the epoch-0 commit) and merges the commit on the ack.
    pub async fn start_group(&mut self, conn: &mut Connection, peer: &str) -> Result<Vec<u8>> {
        let answer = conn
            .call(Request::FetchKeyPackages(v1::FetchKeyPackages {
                phone: peer.into(),
                known_devices: Vec::new(),
                ciphersuites: Vec::new(),
            }))
            .await?;
        let Body::KeyPackages(k) = answer else {
            bail!("unexpected answer to FetchKeyPackages")
        };
        let (group, out, added_devices) = {
            let m = self.engine();
            let mut adds = Vec::new();
            let mut added = Vec::new();
            for d in k.devices.iter().filter(|d| !d.key_package.is_empty()) {
                adds.push(m.fetched_key_package(
                    &d.key_package,
                    &k.phone,
                    d.device_id,
                    &d.identity_key,
                )?);
                added.push(d.device_id);
            }
            if adds.is_empty() {
                bail!("{peer} has no device with a KeyPackage");
            }
            let group = m.create_group(CIPHERSUITE)?;
            let out = m.commit(&group, adds, Vec::new())?;
            (group, out, added)
        };
        let answer = conn
            .call(Request::SendCommit(v1::SendCommit {
                message_id: rand::random::<[u8; 16]>().to_vec(),
                commit: out.commit,
                welcome: out.welcome.unwrap_or_default(),
                added_devices,
                removed_devices: Vec::new(),
            }))
            .await?;
        let Body::SendAck(_) = answer else {
            bail!("unexpected answer to SendCommit")
        };
        self.engine().merge_pending(&group)?;
        Ok(group)
    }

    /// Reads pushes until `envelopes` envelopes have arrived, joins the
    /// groups whose Welcomes are among them (other envelopes, such as the
    /// creator's own commit echoed back, are only acked) and acks them all.
    /// Returns the groups joined.
    pub async fn settle(
        &mut self,
        conn: &mut Connection,
        envelopes: usize,
    ) -> Result<Vec<Vec<u8>>> {
        let mut joined = Vec::new();
        let mut seen = 0;
        while seen < envelopes {
            let body = tokio::time::timeout(SETUP_WAIT, conn.next_push())
                .await
                .with_context(|| {
                    format!(
                        "{}: waited {SETUP_WAIT:?} for {} more setup envelope(s)",
                        self.device.phone,
                        envelopes - seen
                    )
                })??;
            let Body::Deliver(d) = body else { continue };
            for e in &d.envelopes {
                let welcome =
                    dak_proto::mls::inspect(&e.body).is_ok_and(|i| i.kind == MlsKind::Welcome);
                if welcome && let Incoming::Joined { group } = self.engine().process(&e.body)? {
                    joined.push(group);
                }
            }
            seen += d.envelopes.len();
            let seqs = d.envelopes.iter().map(|e| e.seq).collect();
            conn.call(Request::AckDeliveries(v1::AckDeliveries { seqs }))
                .await?;
        }
        Ok(joined)
    }

    /// `n` application messages for `group`, each a `Content` text of
    /// `size` bytes, encrypted now at the group's current epoch.
    pub fn pool(&self, group: &[u8], size: usize, n: usize) -> Result<Vec<Vec<u8>>> {
        let m = self.engine();
        (0..n)
            .map(|i| {
                let content = v1::Content {
                    kind: Some(v1::content::Kind::Text(v1::Text {
                        body: "x".repeat(size),
                        sent_at_ms: i as i64,
                        ..Default::default()
                    })),
                };
                Ok(m.encrypt(group, &content.encode_to_vec())?)
            })
            .collect()
    }
}

/// A 1:1 conversation between `a` and `b` (both connected and
/// authenticated): both upload KeyPackages, `a` creates the group adding
/// `b`'s device, `b` joins from the Welcome, and each encrypts `pool`
/// messages of `size` text bytes (the scenarios use `POOL`), each a
/// distinct ciphertext. Returns the connections and the pools.
pub async fn conversation(
    a: Device,
    b: Device,
    mut ca: Connection,
    mut cb: Connection,
    size: usize,
    pool: usize,
) -> Result<((Connection, Vec<Vec<u8>>), (Connection, Vec<Vec<u8>>))> {
    let mut ma = MlsDevice::new(a)?;
    let mut mb = MlsDevice::new(b)?;
    ma.upload_keys(&mut ca).await?;
    mb.upload_keys(&mut cb).await?;
    let peer = mb.device.phone.clone();
    let group = ma.start_group(&mut ca, &peer).await?;
    // b's mailbox holds the Welcome; a's holds its own commit (an epoch-0
    // commit goes back to its sender too). Both are acked here so that the
    // timed phase sees only its own messages.
    let joined = mb.settle(&mut cb, 1).await?;
    if joined != [group.clone()] {
        bail!("{peer} did not join the group from the Welcome");
    }
    ma.settle(&mut ca, 1).await?;
    let pa = ma.pool(&group, size, pool)?;
    let pb = mb.pool(&group, size, pool)?;
    Ok(((ca, pa), (cb, pb)))
}
