//! Key transparency on the device (PROTOCOL.md §18): the checks that keep
//! the server from swapping or adding a device key unseen.
//!
//! Invariants:
//! - The directory's VRF key is pinned at the first connection that
//!   announces one (registration, in practice); a later connection with
//!   another key fails every check, it does not replace the pin.
//! - Every KeyPackages answer from a server with a directory carries a
//!   lookup proof; every device in the answer must be in the device set
//!   it proves, with the same key, or the whole answer is refused
//!   (`ClientError::KeyTransparency`) and nothing is added to any group.
//! - The directory never goes back: an answer at an epoch below the
//!   highest this device has seen, or with another root at that epoch, is
//!   refused as a split view.
//! - What was verified, or why it failed, is kept per number for `safety`.
//! - The device monitors its own number (`monitor`, at most every
//!   `MONITOR_EVERY_MS` at connect): a device key published for it that
//!   this device has not seen before is told to the user, except those it
//!   approved itself (`approved`).

use dak_proto::kt::{DeviceKey, Lookup};
use dak_proto::v1;
use dak_proto::v1::client_frame::Request;
use dak_proto::v1::server_frame::Body;

use crate::connection::Connection;
use crate::error::ClientError;
use crate::events::Event;
use crate::profile::Profile;

const PIN: &str = "kt_key";
const HIGHEST: &str = "kt_highest";
const OWN_SEEN: &str = "kt_own_seen";
const APPROVED: &str = "kt_approved";
const OWN_CHECKED: &str = "kt_own_checked_ms";
const OWN_VERSION: &str = "kt_own_version";
/// How often a connecting device checks its own number's history.
pub const MONITOR_EVERY_MS: i64 = 5 * 60 * 1000;

/// Forgets what this profile pinned and saw of a key directory: it is
/// registered again, with another number or on another server.
pub(crate) fn forget(profile: &Profile) -> Result<(), ClientError> {
    for key in [PIN, HIGHEST, OWN_SEEN, APPROVED, OWN_CHECKED, OWN_VERSION] {
        profile.delete(key)?;
    }
    profile.delete(&status_key(DIRECTORY))?;
    Ok(())
}

/// What this device knows of a number's keys, for `safety`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum KtStatus {
    /// The devices the server gave were all in the directory's proven set.
    Verified { epoch: u64 },
    /// The server has no key directory (a server from before it).
    NotOffered,
    /// A proof did not check, or the server named a device the directory
    /// does not show: nothing from that answer was used.
    Failed { reason: String },
}

fn status_key(phone: &str) -> String {
    format!("kt_status:{phone}")
}

/// Where a failure of the whole directory is kept (a proof that does not
/// check with the pinned key, a directory that went back): it stands for
/// every number until an answer checks again.
const DIRECTORY: &str = "*";

/// The status kept for `phone` (NotOffered when nothing was checked): the
/// directory's own failure first, if there is one.
pub fn status(profile: &Profile, phone: &str) -> Result<KtStatus, ClientError> {
    let directory = stored_status(profile, DIRECTORY)?;
    if matches!(directory, KtStatus::Failed { .. }) {
        return Ok(directory);
    }
    stored_status(profile, phone)
}

fn stored_status(profile: &Profile, phone: &str) -> Result<KtStatus, ClientError> {
    Ok(match profile.get_str(&status_key(phone))? {
        Some(s) => match s.split_once(' ') {
            Some(("ok", epoch)) => KtStatus::Verified {
                epoch: epoch.parse().unwrap_or(0),
            },
            Some(("fail", reason)) => KtStatus::Failed {
                reason: reason.to_string(),
            },
            _ => KtStatus::NotOffered,
        },
        None => KtStatus::NotOffered,
    })
}

fn set_status(profile: &Profile, phone: &str, status: &KtStatus) -> Result<(), ClientError> {
    let text = match status {
        KtStatus::Verified { epoch } => format!("ok {epoch}"),
        KtStatus::Failed { reason } => format!("fail {reason}"),
        KtStatus::NotOffered => return profile.delete(&status_key(phone)),
    };
    profile.set(&status_key(phone), text.as_bytes())
}

/// The pinned VRF key, pinning `announced` when none is yet.
fn pinned_key(profile: &Profile, announced: &[u8]) -> Result<Vec<u8>, ClientError> {
    if let Some(k) = profile.get(PIN)?.filter(|k| !k.is_empty()) {
        return Ok(k);
    }
    profile.set(PIN, announced)?;
    Ok(announced.to_vec())
}

/// Refuses a directory that went back or split: `epoch` below the highest
/// seen, or another root at it. Records it as the highest otherwise.
fn check_fresh(profile: &Profile, epoch: u64, root: &[u8]) -> Result<(), String> {
    let seen = profile.get(HIGHEST).ok().flatten().unwrap_or_default();
    if seen.len() > 8 {
        let (e, r) = seen.split_at(8);
        let e = u64::from_be_bytes(e.try_into().expect("8 bytes"));
        if epoch < e {
            return Err(format!(
                "the server showed the key directory at epoch {epoch}, older than epoch {e} it showed before"
            ));
        }
        if epoch == e && r != root {
            return Err(format!(
                "the server showed two different key directories for epoch {epoch}"
            ));
        }
        if epoch == e {
            return Ok(());
        }
    }
    let mut v = epoch.to_be_bytes().to_vec();
    v.extend_from_slice(root);
    profile.set(HIGHEST, &v).map_err(|e| e.to_string())
}

/// Refuses an answer about `phone`, recording why for it, and for every
/// number when the whole directory is in question (`directory`).
fn refuse(profile: &Profile, phone: &str, reason: String, directory: bool) -> ClientError {
    let failed = KtStatus::Failed {
        reason: reason.clone(),
    };
    let _ = set_status(profile, phone, &failed);
    if directory {
        let _ = set_status(profile, DIRECTORY, &failed);
    }
    tracing::warn!(%phone, %reason, "key transparency refused an answer");
    ClientError::KeyTransparency(format!("{phone}: {reason}"))
}

/// Checks a KeyPackages answer against its lookup proof (module
/// invariants); Ok when every device in it is proven, or when the server
/// has no directory at all.
pub(crate) fn check_key_packages(
    profile: &Profile,
    conn: &Connection,
    k: &v1::KeyPackages,
) -> Result<(), ClientError> {
    let devices: Vec<(u64, &[u8])> = k
        .devices
        .iter()
        .map(|d| (d.device_id, d.identity_key.as_slice()))
        .collect();
    check_devices(
        profile,
        conn,
        &k.phone,
        k.key_directory.as_ref(),
        &devices,
        "the server named",
    )
}

/// Checks that every one of `devices` (id, identity key) of `phone` is in
/// the set `proof` proves (None: the server sent no proof), recording the
/// outcome for `safety`. `who` says who named the devices, for the reason.
fn check_devices(
    profile: &Profile,
    conn: &Connection,
    phone: &str,
    proof: Option<&v1::KeyDirectoryProof>,
    devices: &[(u64, &[u8])],
    who: &str,
) -> Result<(), ClientError> {
    let announced = conn.key_directory_key();
    let Some(proof) = proof else {
        if announced.is_empty() && profile.get(PIN)?.is_none() {
            set_status(profile, phone, &KtStatus::NotOffered)?;
            return Ok(());
        }
        return Err(refuse(
            profile,
            phone,
            "the server sent keys without the key directory's proof".into(),
            true,
        ));
    };
    let key = pinned_key(profile, announced)?;
    let lookup =
        dak_proto::kt::verify_lookup(&key, proof.epoch, &proof.root_hash, phone, &proof.proof)
            .map_err(|e| refuse(profile, phone, e.to_string(), true))?;
    check_fresh(profile, proof.epoch, &proof.root_hash)
        .map_err(|r| refuse(profile, phone, r, true))?;
    for (device_id, identity_key) in devices {
        let listed = lookup
            .devices
            .iter()
            .any(|p| p.device_id == *device_id && p.identity_key == *identity_key);
        if !listed {
            return Err(refuse(
                profile,
                phone,
                format!(
                    "{who} device {device_id} with key {} that the key directory does not show \
                     for this number (epoch {})",
                    short(identity_key),
                    lookup.epoch
                ),
                false,
            ));
        }
    }
    set_status(
        profile,
        phone,
        &KtStatus::Verified {
            epoch: lookup.epoch,
        },
    )?;
    set_status(profile, DIRECTORY, &KtStatus::NotOffered)?;
    Ok(())
}

/// Most numbers one commit's key check looks up: a commit adding a whole
/// crowd is checked for its first ones (each lookup takes from the
/// account's daily budget of different numbers).
pub(crate) const MAX_CHECKED_PER_COMMIT: usize = 16;

impl crate::Client {
    /// Checks the devices `phones` have in `group` against the key
    /// directory (a commit just added or removed some): a device the
    /// directory does not show is told to the user
    /// (`Event::KeyTransparency`) and kept as the number's failure.
    pub(crate) async fn check_group_keys(
        &mut self,
        group: &[u8],
        phones: &[String],
    ) -> Result<(), ClientError> {
        if self.conn.key_directory_key().is_empty() && self.profile.get(PIN)?.is_none() {
            return Ok(()); // a server without a directory
        }
        let members = self.profile.mls(|m| m.members(group))?;
        for phone in phones.iter().take(MAX_CHECKED_PER_COMMIT) {
            let answer = self
                .conn
                .call(Request::LookupKeys(v1::LookupKeys {
                    phone: phone.clone(),
                }))
                .await?;
            let Body::KeyLookup(proof) = answer else {
                return Err(crate::connection::unexpected(answer));
            };
            let devices: Vec<(u64, &[u8])> = members
                .iter()
                .filter(|m| m.phone == *phone)
                .map(|m| (m.device_id, m.signature_key.as_slice()))
                .collect();
            if let Err(ClientError::KeyTransparency(reason)) = check_devices(
                &self.profile,
                &self.conn,
                phone,
                Some(&proof),
                &devices,
                "a member added",
            ) {
                let place = if crate::mls::is_named_group(group) {
                    format!("in a group ({})", crate::format_id(group))
                } else {
                    format!("in your chat with {phone}")
                };
                self.pending_events.push(Event::KeyTransparency {
                    phone: phone.clone(),
                    warning: format!(
                        "{place}, devices of {phone} were added that could not be checked against \
                         the key directory ({reason}); messages you send there reach them"
                    ),
                });
            }
        }
        Ok(())
    }
}

fn short(key: &[u8]) -> String {
    hex::encode(&key[..key.len().min(8)])
}

/// A set of devices kept in the profile, as (id, key in hex) pairs: one
/// id may appear with two keys (a swapped key is what monitoring is for).
fn read_set(profile: &Profile, name: &str) -> Result<Vec<DeviceKey>, ClientError> {
    let pairs: Vec<(u64, String)> = match profile.get(name)? {
        Some(b) => serde_json::from_slice(&b).unwrap_or_default(),
        None => Vec::new(),
    };
    Ok(pairs
        .into_iter()
        .filter_map(|(device_id, key)| {
            Some(DeviceKey {
                device_id,
                identity_key: hex::decode(key).ok()?,
            })
        })
        .collect())
}

/// Keeps `set` (its newest `MAX_DEVICES * 4` entries by id).
fn write_set(profile: &Profile, name: &str, mut set: Vec<DeviceKey>) -> Result<(), ClientError> {
    set.sort();
    set.dedup();
    let keep = set.len().saturating_sub(dak_proto::kt::MAX_DEVICES * 4);
    let pairs: Vec<(u64, String)> = set[keep..]
        .iter()
        .map(|d| (d.device_id, hex::encode(&d.identity_key)))
        .collect();
    profile.set(name, &serde_json::to_vec(&pairs).unwrap_or_default())
}

/// Records a device this (primary) device approved, so that monitoring
/// does not warn about it.
pub(crate) fn approved(
    profile: &Profile,
    device_id: u64,
    identity_key: &[u8],
) -> Result<(), ClientError> {
    let mut set = read_set(profile, APPROVED)?;
    set.retain(|d| d.device_id != device_id);
    set.push(DeviceKey {
        device_id,
        identity_key: identity_key.to_vec(),
    });
    write_set(profile, APPROVED, set)
}

/// Checks this account's own number in the directory (module invariants)
/// and returns what the user must be told; never fails the connection.
pub(crate) async fn monitor(
    profile: &Profile,
    conn: &mut Connection,
    own_device: u64,
) -> Vec<Event> {
    let pinned = profile.get(PIN).ok().flatten().filter(|k| !k.is_empty());
    if conn.key_directory_key().is_empty() && pinned.is_none() {
        return Vec::new(); // a server without a directory, as ever
    }
    let now = profile.now_ms();
    let last: i64 = profile
        .get_str(OWN_CHECKED)
        .ok()
        .flatten()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if now.saturating_sub(last) < MONITOR_EVERY_MS && last <= now {
        return Vec::new();
    }
    let phone = profile.registration().map(|r| r.phone).unwrap_or_default();
    if let Some(pinned) = &pinned
        && pinned.as_slice() != conn.key_directory_key()
    {
        // Checked as often as the history, so it is said, not repeated at
        // every reconnect.
        let _ = profile.set(OWN_CHECKED, now.to_string().as_bytes());
        return vec![Event::KeyTransparency {
            phone,
            warning: "the server no longer shows the key directory this device pinned (its key \
                      is missing or another): your number's keys cannot be checked"
                .into(),
        }];
    }
    match monitor_once(profile, conn, own_device).await {
        Ok(events) => {
            let _ = profile.set(OWN_CHECKED, now.to_string().as_bytes());
            events
        }
        // Only a check that failed is the user's business; a server that
        // is down or busy is asked again at the next connect.
        Err(ClientError::KeyTransparency(reason)) => {
            // Said again at the next check, not at every reconnect.
            let _ = profile.set(OWN_CHECKED, now.to_string().as_bytes());
            vec![Event::KeyTransparency {
                phone,
                warning: format!("your number's key history could not be checked: {reason}"),
            }]
        }
        Err(e) => {
            tracing::debug!(error = %e, "own key history not checked this time");
            Vec::new()
        }
    }
}

async fn monitor_once(
    profile: &Profile,
    conn: &mut Connection,
    own_device: u64,
) -> Result<Vec<Event>, ClientError> {
    let phone = profile.registration()?.phone;
    let answer = conn
        .call(Request::GetKeyHistory(v1::GetKeyHistory {}))
        .await?;
    let Body::KeyHistory(proof) = answer else {
        return Err(ClientError::Protocol("expected the key history".into()));
    };
    let key = pinned_key(profile, conn.key_directory_key())?;
    let values: Vec<Lookup> =
        dak_proto::kt::verify_history(&key, proof.epoch, &proof.root_hash, &phone, &proof.proof)
            .map_err(|e| ClientError::KeyTransparency(e.to_string()))?;
    check_fresh(profile, proof.epoch, &proof.root_hash).map_err(ClientError::KeyTransparency)?;
    let mut seen = read_set(profile, OWN_SEEN)?;
    let first_check = seen.is_empty();
    let approved = read_set(profile, APPROVED)?;
    let mut events = Vec::new();
    // Versions count every change of the number's devices from 1; the proof
    // holds the newest `HISTORY_UPDATES`. Changes this device has not seen
    // must all be there, or some were kept from it.
    let known: u64 = profile
        .get_str(OWN_VERSION)?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let newest = values.first().map(|v| v.version).unwrap_or(0);
    let oldest = values.last().map(|v| v.version).unwrap_or(0);
    if newest < known {
        events.push(Event::KeyTransparency {
            phone: phone.clone(),
            warning: format!(
                "the key directory shows your number at version {newest}, older than version \
                 {known} this device saw: the server went back on it"
            ),
        });
    } else if known > 0 && oldest > known + 1 {
        events.push(Event::KeyTransparency {
            phone: phone.clone(),
            warning: format!(
                "{} changes of your number's devices (versions {} to {}) happened since this \
                 device last looked and were not all shown; check your linked devices",
                oldest - known - 1,
                known + 1,
                oldest - 1
            ),
        });
    }
    // Oldest first, so a device is reported at the epoch it appeared.
    for value in values.iter().rev() {
        for d in &value.devices {
            if seen.contains(d) {
                continue;
            }
            let mine = d.device_id == own_device
                && profile.identity()?.verifying_key().as_bytes() == d.identity_key.as_slice();
            if !first_check && !mine && !approved.contains(d) {
                events.push(Event::KeyTransparency {
                    phone: phone.clone(),
                    warning: format!(
                        "a new device (device {}, key {}) was registered for your number at key \
                         directory epoch {}. If you did not link it, remove it (`dak devices`) \
                         and register your number again",
                        d.device_id,
                        short(&d.identity_key),
                        value.published
                    ),
                });
            }
            seen.push(d.clone());
        }
    }
    write_set(profile, OWN_SEEN, seen)?;
    profile.set(OWN_VERSION, newest.max(known).to_string().as_bytes())?;
    Ok(events)
}

/// The check of one append-only step (akd's auditor, which does I/O-free
/// work but is not built for the browser, so the native client passes it
/// in: `dak_client::kt_audit`): the encoded proof, the roots at `to - 1`
/// and `to`, and `to`.
pub type AppendOnlyCheck = dyn Fn(
        Vec<u8>,
        [u8; 32],
        [u8; 32],
        u64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>
    + Send
    + Sync;

/// What an outside audit of a server's key directory found (`audit`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyAudit {
    /// The epoch this auditor had checked up to before (0: first run).
    pub before: u64,
    /// The epoch it has checked up to now.
    pub after: u64,
    /// The latest epoch the server announced.
    pub latest: u64,
    /// Why the directory was refused; None when every step checked.
    pub problem: Option<String>,
}

const AUDITED: &str = "kt_audited";

/// Audits a server's key directory as an outside party would, with
/// `profile` as the auditor's memory (a profile that never registers,
/// one per server): asks for the append-only proof of every epoch after
/// the one it checked last, before authentication, checks each with
/// `check`, and keeps the last checked epoch and root, after every step.
/// It fails when a step does not check, when the root the server gives
/// for the epoch it checked last is another one, or when the directory is
/// behind it (a rebuilt history). Reading stops at the latest epoch the
/// first answer announced, so a server cannot keep it reading.
/// `progress` gets the epochs checked and the latest.
pub async fn audit(
    profile: &Profile,
    servers: &str,
    check: &AppendOnlyCheck,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<KeyAudit, ClientError> {
    let mut conn = crate::connect::open_auditor(profile, servers).await?;
    if conn.key_directory_key().is_empty() {
        return Err(ClientError::Usage(
            "this server keeps no key directory (a server from before key transparency)".into(),
        ));
    }
    let (before, mut root) = match profile.get(AUDITED)? {
        Some(b) if b.len() == 40 => {
            let epoch = u64::from_be_bytes(b[..8].try_into().expect("8 bytes"));
            (
                epoch,
                Some(<[u8; 32]>::try_from(&b[8..]).expect("32 bytes")),
            )
        }
        _ => (0, None),
    };
    let mut audit = KeyAudit {
        before,
        after: before,
        latest: before,
        problem: None,
    };
    let mut limit = None;
    loop {
        let from = audit.after;
        let answer = match conn
            .call(Request::GetKeyAudit(v1::GetKeyAudit { from }))
            .await?
        {
            Body::KeyAudit(a) => a,
            other => return Err(crate::connection::unexpected(other)),
        };
        let latest = *limit.get_or_insert(answer.latest_epoch);
        audit.latest = answer.latest_epoch;
        if answer.latest_epoch < audit.before {
            audit.problem = Some(format!(
                "the directory is at epoch {}, behind epoch {} this auditor checked before: its \
                 history was rebuilt or cut",
                answer.latest_epoch, audit.before
            ));
            break;
        }
        if from >= latest.min(answer.latest_epoch) {
            break;
        }
        if answer.from != from {
            return Err(ClientError::Protocol(format!(
                "asked for the step from epoch {from}, the server answered from {}",
                answer.from
            )));
        }
        let (Ok(from_root), Ok(to_root)) = (
            <[u8; 32]>::try_from(answer.from_root.as_slice()),
            <[u8; 32]>::try_from(answer.to_root.as_slice()),
        ) else {
            audit.problem = Some(format!(
                "the server has no root for epoch {from} or {}",
                from + 1
            ));
            break;
        };
        if root.is_some_and(|r| r != from_root) {
            audit.problem = Some(format!(
                "the server's root for epoch {from} is not the one this auditor checked: the \
                 directory's history was rewritten"
            ));
            break;
        }
        if let Err(e) = check(answer.proof, from_root, to_root, from + 1).await {
            audit.problem = Some(format!(
                "the step from epoch {from} to {} is not append-only: {e}",
                from + 1
            ));
            break;
        }
        audit.after = from + 1;
        root = Some(to_root);
        let mut kept = audit.after.to_be_bytes().to_vec();
        kept.extend_from_slice(&to_root);
        profile.set(AUDITED, &kept)?;
        progress(audit.after, latest);
    }
    conn.close().await;
    Ok(audit)
}
