//! The device's MLS engine, sans I/O: KeyPackages, groups (one per
//! conversation, 1:1 included, whose members are devices), commits, and
//! encrypting and decrypting. openmls does the cryptography; its state goes
//! through the profile's `ProfileStore` (`mls_storage`), written in the same
//! transaction as the messages it yields, so a crash never leaves a message
//! decrypted but unstored, or stored but with its key still unused.
//!
//! The device signs MLS with its identity key, the Ed25519 key the server
//! bound to its account at registration or linking, and its credential
//! names it ("<phone>/<device id>"), so the server can check both.
//!
//! Decoded groups are kept between messages in the profile's `GroupCache`:
//! reading a group back from storage (its whole ratchet tree) was most of a
//! message's cost in a large group. The cache holds only what storage
//! holds: a group goes back into it only after an operation succeeded, it is
//! emptied when any bracket rolls back, and when another process wrote the
//! profile (`ProfileStore::data_version` moved).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use dak_proto::mls::{CIPHERSUITE, PQ_CIPHERSUITE, credential_identity, parse_identity};
use openmls::prelude::tls_codec::{Deserialize, Serialize};
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::RustCrypto;
use openmls_traits::OpenMlsProvider;
use sha2::{Digest, Sha512};

use crate::error::ClientError;
use crate::mls_storage::MlsStorage;
use crate::profile::Profile;

/// Past epochs whose keys are kept: none. The server accepts a message only
/// at its group's current epoch and every mailbox holds a group's messages
/// and commits in the order they were accepted, and a device merges even
/// its own commit where its echo stands in its mailbox
/// (`Client::commit`), so a message always arrives at the epoch it was
/// sent in. Keeping past epochs would also keep their keys (less forward
/// secrecy), and openmls rewrites them, with every member of each, on every
/// message: at 1,024 members that was most of a message's cost.
const MAX_PAST_EPOCHS: usize = 0;

/// Groups kept decoded at most; past this the cache starts over. A group of
/// 1,024 devices is a few MB decoded.
const CACHED_GROUPS: usize = 16;

/// Decoded MLS groups, by group id, valid for one `data_version` of the
/// store. See the module's comment for when it is emptied.
#[derive(Default)]
pub struct GroupCache {
    inner: parking_lot::Mutex<CacheInner>,
}

#[derive(Default)]
struct CacheInner {
    version: Option<u64>,
    groups: HashMap<Vec<u8>, MlsGroup>,
}

impl GroupCache {
    pub(crate) fn clear(&self) {
        let mut inner = self.inner.lock();
        inner.groups.clear();
        inner.version = None;
    }

    /// Takes a group out (None: not cached), first dropping everything if
    /// the store changed under us.
    fn take(&self, group: &[u8], version: u64) -> Option<MlsGroup> {
        let mut inner = self.inner.lock();
        if inner.version != Some(version) {
            inner.groups.clear();
            inner.version = Some(version);
        }
        inner.groups.remove(group)
    }

    fn put(&self, group: Vec<u8>, g: MlsGroup, version: u64) {
        let mut inner = self.inner.lock();
        if inner.version != Some(version) {
            return;
        }
        if inner.groups.len() >= CACHED_GROUPS {
            inner.groups.clear();
        }
        inner.groups.insert(group, g);
    }

    fn forget(&self, group: &[u8]) {
        self.inner.lock().groups.remove(group);
    }
}

/// openmls's crypto and randomness, one for the process: it holds only a
/// generator (seeded from the platform) behind a lock.
fn crypto() -> &'static RustCrypto {
    static CRYPTO: std::sync::OnceLock<RustCrypto> = std::sync::OnceLock::new();
    CRYPTO.get_or_init(RustCrypto::default)
}

/// What openmls runs on: the process's crypto, and a store's MLS records.
pub struct Provider<'a> {
    crypto: &'a RustCrypto,
    storage: MlsStorage<'a>,
}

impl<'a> Provider<'a> {
    pub fn new(kv: &'a dyn crate::mls_storage::MlsKv) -> Provider<'a> {
        Provider {
            crypto: crypto(),
            storage: MlsStorage::new(kv),
        }
    }
}

impl<'a> OpenMlsProvider for Provider<'a> {
    type CryptoProvider = RustCrypto;
    type RandProvider = RustCrypto;
    type StorageProvider = MlsStorage<'a>;

    fn storage(&self) -> &Self::StorageProvider {
        &self.storage
    }

    fn crypto(&self) -> &Self::CryptoProvider {
        self.crypto
    }

    fn rand(&self) -> &Self::RandProvider {
        self.crypto
    }
}

fn mls_err(what: &str, e: impl std::fmt::Display) -> ClientError {
    ClientError::Crypto(format!("{what}: {e}"))
}

/// A member device of a group, read from its leaf's credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberDevice {
    pub phone: String,
    pub device_id: u64,
    pub leaf: LeafNodeIndex,
    pub signature_key: Vec<u8>,
}

/// A commit ready to send, with the Welcome for the devices it adds.
pub struct CommitToSend {
    pub commit: Vec<u8>,
    pub welcome: Option<Vec<u8>>,
}

/// Group ids: a 1:1 chat's has 16 bytes, a named group's (title, admins)
/// 32. A device joining from a Welcome must know which it is before any
/// message arrives. The server, which sees ids, learns from the length only
/// whether a two-account group is a chat or a named group; for three or
/// more accounts its member list already told it.
pub const CHAT_GROUP_ID_BYTES: usize = 16;
pub use dak_proto::invite::NAMED_GROUP_ID_BYTES;

pub fn is_named_group(group: &[u8]) -> bool {
    group.len() == NAMED_GROUP_ID_BYTES
}

/// What an incoming MLS message turned out to be.
#[derive(Debug)]
pub enum Incoming {
    Application {
        group: Vec<u8>,
        phone: String,
        device_id: u64,
        plaintext: Vec<u8>,
    },
    /// Another member's commit, merged. `changed` are the accounts whose
    /// devices were added or removed; `joined` and `left` those that became
    /// or stopped being members (all their devices added or removed).
    Commit {
        group: Vec<u8>,
        committer: String,
        changed: BTreeSet<String>,
        joined: BTreeSet<String>,
        left: BTreeSet<String>,
        removed_me: bool,
    },
    /// Our own commit came back (we lost the server's ack): now merged.
    OwnCommit {
        group: Vec<u8>,
    },
    Joined {
        group: Vec<u8>,
    },
}

/// The MLS engine for one device over its profile.
pub struct Mls<'a> {
    provider: Provider<'a>,
    profile: &'a Profile,
    signer: SignatureKeyPair,
    credential: CredentialWithKey,
}

/// What this device's leaves say it supports (RFC 9420 §7.2): the suites
/// it offers, and the last-resort extension its KeyPackages may carry. A
/// device that offers only the classic suite lists what openmls listed
/// before post-quantum suites, as such devices' leaves do.
fn capabilities(suites: &[Ciphersuite]) -> Capabilities {
    let listed = if suites.contains(&PQ_CIPHERSUITE) {
        suites.to_vec()
    } else {
        vec![
            CIPHERSUITE,
            Ciphersuite::MLS_128_DHKEMP256_AES128GCM_SHA256_P256,
            Ciphersuite::MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519,
        ]
    };
    Capabilities::builder()
        .ciphersuites(listed)
        .extensions(vec![ExtensionType::LastResort])
        .build()
}

fn create_config(suite: Ciphersuite, offered: &[Ciphersuite]) -> MlsGroupCreateConfig {
    MlsGroupCreateConfig::builder()
        .ciphersuite(suite)
        .capabilities(capabilities(offered))
        .use_ratchet_tree_extension(true)
        // Commits in the clear so the server can check their epoch; application
        // messages are always encrypted whatever this says.
        .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .build()
}

fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .use_ratchet_tree_extension(true)
        .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .build()
}

fn serialize(m: &MlsMessageOut) -> Result<Vec<u8>, ClientError> {
    m.tls_serialize_detached()
        .map_err(|e| mls_err("cannot encode an MLS message", e))
}

impl<'a> Mls<'a> {
    /// The engine of the device `identity` (`phone`/`device_id`) over
    /// `profile`'s store.
    pub fn new(
        profile: &'a Profile,
        identity: &ed25519_dalek::SigningKey,
        phone: &str,
        device_id: u64,
    ) -> Mls<'a> {
        let public = identity.verifying_key().to_bytes().to_vec();
        let signer = SignatureKeyPair::from_raw(
            SignatureScheme::ED25519,
            identity.as_bytes().to_vec(),
            public.clone(),
        );
        let credential = CredentialWithKey {
            credential: BasicCredential::new(credential_identity(phone, device_id)).into(),
            signature_key: public.into(),
        };
        Mls {
            provider: Provider::new(profile),
            profile,
            signer,
            credential,
        }
    }

    /// Runs `f` on the decoded group: from the cache, or read from storage.
    /// The group goes back into the cache only if `f` succeeded; on an
    /// error it is dropped (the caller's savepoint undoes what it wrote).
    fn with_group<T>(
        &self,
        group: &[u8],
        f: impl FnOnce(&mut MlsGroup) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let cache = &self.profile.groups;
        let version = self.profile.data_version()?;
        let mut g = match cache.take(group, version) {
            Some(g) => g,
            None => MlsGroup::load(self.provider.storage(), &GroupId::from_slice(group))
                .map_err(|e| mls_err("cannot read the group state", e))?
                .ok_or_else(|| ClientError::GroupMissing(crate::ids::format_id(group)))?,
        };
        let out = f(&mut g)?;
        cache.put(group.to_vec(), g, version);
        Ok(out)
    }

    /// One KeyPackage whose leaf says `capabilities` (this device's, read
    /// once per batch: they come from the profile).
    fn key_package(
        &self,
        suite: Ciphersuite,
        capabilities: &Capabilities,
        last_resort: bool,
    ) -> Result<Vec<u8>, ClientError> {
        // A leaf must list the extensions its KeyPackage carries (RFC 9420
        // §7.2), and the last-resort marker is one.
        let mut builder = KeyPackage::builder().leaf_node_capabilities(capabilities.clone());
        if last_resort {
            builder = builder.mark_as_last_resort();
        }
        let bundle = builder
            .build(suite, &self.provider, &self.signer, self.credential.clone())
            .map_err(|e| mls_err("cannot make a KeyPackage", e))?;
        serialize(&MlsMessageOut::from(bundle.key_package().clone()))
    }

    /// `n` one-time KeyPackages in `suite` (their private keys stay in the
    /// profile).
    pub fn key_packages(&self, suite: Ciphersuite, n: usize) -> Result<Vec<Vec<u8>>, ClientError> {
        let capabilities = capabilities(&self.profile.offered_suites()?);
        (0..n)
            .map(|_| self.key_package(suite, &capabilities, false))
            .collect()
    }

    pub fn last_resort_key_package(&self, suite: Ciphersuite) -> Result<Vec<u8>, ClientError> {
        let capabilities = capabilities(&self.profile.offered_suites()?);
        self.key_package(suite, &capabilities, true)
    }

    pub fn has_group(&self, group: &[u8]) -> Result<bool, ClientError> {
        match self.with_group(group, |g| Ok(g.is_active())) {
            Ok(active) => Ok(active),
            Err(ClientError::GroupMissing(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// A new group in `suite` with this device as its only member, at
    /// epoch 0.
    pub fn create_group(&self, suite: Ciphersuite) -> Result<Vec<u8>, ClientError> {
        self.create_group_with_id_len(CHAT_GROUP_ID_BYTES, suite)
    }

    /// A group with a title and admins (see `is_named_group`), in the
    /// classic suite: a group may grow to 1,024 devices, and post-quantum
    /// commits that large do not fit a frame (docs/BENCHMARKS.md).
    pub fn create_named_group(&self) -> Result<Vec<u8>, ClientError> {
        self.create_group_with_id_len(NAMED_GROUP_ID_BYTES, CIPHERSUITE)
    }

    fn create_group_with_id_len(
        &self,
        len: usize,
        suite: Ciphersuite,
    ) -> Result<Vec<u8>, ClientError> {
        let mut id = vec![0u8; len];
        self.profile.env().fill_random(&mut id);
        MlsGroup::new_with_group_id(
            &self.provider,
            &self.signer,
            &create_config(suite, &self.profile.offered_suites()?),
            GroupId::from_slice(&id),
            self.credential.clone(),
        )
        .map_err(|e| mls_err("cannot create a group", e))?;
        Ok(id.to_vec())
    }

    /// Reads a KeyPackage fetched from the directory, checking it is signed
    /// by the device the server says it belongs to.
    pub fn fetched_key_package(
        &self,
        bytes: &[u8],
        phone: &str,
        device_id: u64,
        identity_key: &[u8],
    ) -> Result<KeyPackage, ClientError> {
        dak_proto::mls::check_key_package(bytes, phone, device_id, identity_key)
            .map_err(|e| mls_err("the directory gave a bad KeyPackage", e))?;
        let msg =
            MlsMessageIn::tls_deserialize_exact(bytes).map_err(|e| mls_err("bad KeyPackage", e))?;
        match msg.extract() {
            MlsMessageBodyIn::KeyPackage(kp) => kp
                .validate(self.provider.crypto(), ProtocolVersion::Mls10)
                .map_err(|e| mls_err("bad KeyPackage", e)),
            _ => Err(ClientError::Crypto("not a KeyPackage".into())),
        }
    }

    /// A commit adding and removing devices (always with a path, so it
    /// also refreshes this device's keys). It stays pending until `merge`.
    pub fn commit(
        &self,
        group: &[u8],
        adds: Vec<KeyPackage>,
        removes: Vec<LeafNodeIndex>,
    ) -> Result<CommitToSend, ClientError> {
        self.with_group(group, |g| self.commit_in(g, adds, removes))
    }

    fn commit_in(
        &self,
        g: &mut MlsGroup,
        adds: Vec<KeyPackage>,
        removes: Vec<LeafNodeIndex>,
    ) -> Result<CommitToSend, ClientError> {
        // A commit that only adds needs no update path (RFC 9420 §12.4):
        // in a group just created, whose tree has no inner keys yet, a path
        // would be encrypted to every member, ~82 bytes each, and at a
        // thousand members it no longer fits beside its Welcome. Removals
        // and updates always carry one.
        let add_only = !adds.is_empty() && removes.is_empty();
        let bundle = g
            .commit_builder()
            .propose_adds(adds)
            .propose_removals(removes)
            .force_self_update(!add_only)
            .load_psks(self.provider.storage())
            .map_err(|e| mls_err("cannot load PSKs", e))?
            .build(
                self.provider.rand(),
                self.provider.crypto(),
                &self.signer,
                |_| true,
            )
            .map_err(|e| mls_err("cannot build a commit", e))?
            .stage_commit(&self.provider)
            .map_err(|e| mls_err("cannot stage a commit", e))?;
        let welcome = bundle.to_welcome_msg().map(|w| serialize(&w)).transpose()?;
        Ok(CommitToSend {
            commit: serialize(bundle.commit())?,
            welcome,
        })
    }

    pub fn merge_pending(&self, group: &[u8]) -> Result<(), ClientError> {
        self.with_group(group, |g| {
            g.merge_pending_commit(&self.provider)
                .map_err(|e| mls_err("cannot merge our commit", e))
        })
    }

    pub fn clear_pending(&self, group: &[u8]) -> Result<(), ClientError> {
        self.with_group(group, |g| {
            g.clear_pending_commit(self.provider.storage())
                .map_err(|e| mls_err("cannot drop our commit", e))
        })
    }

    pub fn has_pending(&self, group: &[u8]) -> Result<bool, ClientError> {
        self.with_group(group, |g| Ok(g.pending_commit().is_some()))
    }

    pub fn epoch(&self, group: &[u8]) -> Result<u64, ClientError> {
        self.with_group(group, |g| Ok(g.epoch().as_u64()))
    }

    /// The epoch authenticator: equal on two devices only if they share the
    /// same group state (RFC 9420 §8.7).
    pub fn authenticator(&self, group: &[u8]) -> Result<Vec<u8>, ClientError> {
        self.with_group(group, |g| Ok(g.epoch_authenticator().as_slice().to_vec()))
    }

    pub fn encrypt(&self, group: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, ClientError> {
        self.with_group(group, |g| {
            let out = g
                .create_message(&self.provider, &self.signer, plaintext)
                .map_err(|e| mls_err("cannot encrypt", e))?;
            serialize(&out)
        })
    }

    pub fn members(&self, group: &[u8]) -> Result<Vec<MemberDevice>, ClientError> {
        self.with_group(group, |g| {
            Ok(g.members().filter_map(member_device).collect())
        })
    }

    /// The group's ciphersuite, fixed when it was created.
    pub fn suite(&self, group: &[u8]) -> Result<Ciphersuite, ClientError> {
        self.with_group(group, |g| Ok(g.ciphersuite()))
    }

    /// The member devices whose leaves do not list the post-quantum suite:
    /// why a conversation stays classic.
    pub fn members_without_pq(&self, group: &[u8]) -> Result<Vec<MemberDevice>, ClientError> {
        self.with_group(group, |g| {
            Ok(g.members()
                .filter(|m| {
                    g.public_group().leaf(m.index).is_none_or(|leaf| {
                        !leaf
                            .capabilities()
                            .ciphersuites()
                            .iter()
                            .any(|c| Ciphersuite::try_from(*c).ok() == Some(PQ_CIPHERSUITE))
                    })
                })
                .filter_map(member_device)
                .collect())
        })
    }

    /// Handles one incoming MLS message (a Welcome, a commit or an
    /// application message). An error leaves the group as it was.
    pub fn process(&self, bytes: &[u8]) -> Result<Incoming, ClientError> {
        let msg = MlsMessageIn::tls_deserialize_exact(bytes)
            .map_err(|e| mls_err("not an MLS message", e))?;
        match msg.extract() {
            MlsMessageBodyIn::Welcome(w) => self.join(w),
            MlsMessageBodyIn::PrivateMessage(m) => self.process_protocol(m.into()),
            MlsMessageBodyIn::PublicMessage(m) => self.process_protocol(m.into()),
            _ => Err(ClientError::Crypto("unexpected MLS message type".into())),
        }
    }

    fn join(&self, welcome: Welcome) -> Result<Incoming, ClientError> {
        let processed = ProcessedWelcome::new_from_welcome(&self.provider, &join_config(), welcome)
            .map_err(|e| mls_err("cannot read the Welcome", e))?;
        // Added back to a group this device was removed from (or left): the
        // old state goes. A group still in use never does: a Welcome for it
        // is a replay (one made for our last-resort KeyPackage decrypts as
        // often as it is sent) and would take the device back to an old
        // epoch, forked from the rest.
        let id = processed.unverified_group_info().group_id().clone();
        self.profile.groups.forget(id.as_slice());
        if let Some(mut old) = MlsGroup::load(self.provider.storage(), &id)
            .map_err(|e| mls_err("cannot read the group state", e))?
        {
            let retired = self.profile.conversation_active(id.as_slice())? == Some(false);
            if old.is_active() && !retired {
                return Err(ClientError::Crypto(
                    "a Welcome to a group this device is still in (a replay); refused".into(),
                ));
            }
            tracing::info!(group = %hex::encode(id.as_slice()), "rejoining a group; its old state is dropped");
            let (epoch, leaf) = (old.epoch().as_u64(), old.own_leaf_index());
            old.delete(self.provider.storage())
                .map_err(|e| mls_err("cannot drop the old group state", e))?;
            // `delete` leaves the key pairs of the epoch before a removal
            // that this device merged: they go too.
            if epoch > 0 {
                use openmls_traits::storage::StorageProvider as _;
                self.provider
                    .storage()
                    .delete_encryption_epoch_key_pairs(
                        &id,
                        &GroupEpoch::from(epoch - 1),
                        leaf.u32(),
                    )
                    .map_err(|e| mls_err("cannot drop the old group's keys", e))?;
            }
        }
        let group = processed
            .into_staged_welcome(&self.provider, None)
            .map_err(|e| mls_err("cannot read the Welcome", e))?
            .into_group(&self.provider)
            .map_err(|e| mls_err("cannot join the group", e))?;
        Ok(Incoming::Joined {
            group: group.group_id().as_slice().to_vec(),
        })
    }

    fn process_protocol(&self, m: ProtocolMessage) -> Result<Incoming, ClientError> {
        let group_id = m.group_id().as_slice().to_vec();
        self.with_group(&group_id.clone(), |g| self.process_in(g, group_id, m))
    }

    fn process_in(
        &self,
        g: &mut MlsGroup,
        group_id: Vec<u8>,
        m: ProtocolMessage,
    ) -> Result<Incoming, ClientError> {
        let processed = g
            .process_message(&self.provider, m)
            .map_err(|e| mls_err("cannot decrypt", e))?;
        let sender = processed.credential().serialized_content().to_vec();
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(app) => {
                let Some((phone, device_id)) = parse_identity(&sender) else {
                    return Err(ClientError::Crypto(
                        "sender credential is not a Dak device".into(),
                    ));
                };
                Ok(Incoming::Application {
                    group: group_id,
                    phone,
                    device_id,
                    plaintext: app.into_bytes(),
                })
            }
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                let committer = parse_identity(&sender).map(|(p, _)| p).unwrap_or_default();
                let before = accounts(g);
                let mut changed = BTreeSet::new();
                for add in staged.add_proposals() {
                    let cred = add.add_proposal().key_package().leaf_node().credential();
                    changed.extend(parse_identity(cred.serialized_content()).map(|(p, _)| p));
                }
                for remove in staged.remove_proposals() {
                    let leaf = remove.remove_proposal().removed();
                    changed.extend(
                        g.member(leaf)
                            .and_then(|c| parse_identity(c.serialized_content()))
                            .map(|(p, _)| p),
                    );
                }
                let removed_me = staged.self_removed();
                g.merge_staged_commit(&self.provider, *staged)
                    .map_err(|e| mls_err("cannot apply a commit", e))?;
                let after = accounts(g);
                Ok(Incoming::Commit {
                    group: group_id,
                    committer,
                    changed,
                    joined: after.difference(&before).cloned().collect(),
                    left: before.difference(&after).cloned().collect(),
                    removed_me,
                })
            }
            ProcessedMessageContent::OwnPendingCommit => {
                g.merge_pending_commit(&self.provider)
                    .map_err(|e| mls_err("cannot merge our commit", e))?;
                Ok(Incoming::OwnCommit { group: group_id })
            }
            ProcessedMessageContent::OwnPrivateMessage => Err(ClientError::Crypto(
                "this device's own message came back to it; nothing to do".into(),
            )),
            ProcessedMessageContent::ProposalMessage(_)
            | ProcessedMessageContent::ExternalJoinProposalMessage(_) => {
                Err(ClientError::Crypto("proposals are not used in Dak".into()))
            }
        }
    }
}

/// The accounts with a device in the group.
fn accounts(g: &MlsGroup) -> BTreeSet<String> {
    g.members()
        .filter_map(|m| parse_identity(m.credential.serialized_content()).map(|(p, _)| p))
        .collect()
}

fn member_device(m: Member) -> Option<MemberDevice> {
    let (phone, device_id) = parse_identity(m.credential.serialized_content())?;
    Some(MemberDevice {
        phone,
        device_id,
        leaf: m.index,
        signature_key: m.signature_key,
    })
}

/// The security code of a conversation: 60 digits from both accounts'
/// device keys, the same on both sides, changing whenever either account's
/// devices change. Each half is Signal's construction (iterated SHA-512
/// over a version, the keys and the number), with all of an account's
/// device keys sorted in, since here a contact is a set of devices.
pub fn safety_number(members: &[MemberDevice]) -> String {
    let mut by_phone: BTreeMap<&str, Vec<&[u8]>> = BTreeMap::new();
    for m in members {
        by_phone.entry(&m.phone).or_default().push(&m.signature_key);
    }
    let halves: Vec<String> = by_phone
        .iter_mut()
        .map(|(phone, keys)| {
            keys.sort();
            fingerprint_half(phone, keys)
        })
        .collect();
    let digits = halves.concat();
    digits
        .as_bytes()
        .chunks(5)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn fingerprint_half(phone: &str, keys: &[&[u8]]) -> String {
    let mut keys_concat = Vec::new();
    for k in keys {
        keys_concat.extend_from_slice(k);
    }
    let mut hash = {
        let mut h = Sha512::new();
        h.update(b"dak-safety-number-v1\0");
        h.update(&keys_concat);
        h.update(phone.as_bytes());
        h.finalize().to_vec()
    };
    for _ in 0..5200 {
        let mut h = Sha512::new();
        h.update(&hash);
        h.update(&keys_concat);
        hash = h.finalize().to_vec();
    }
    hash.chunks(5)
        .take(6)
        .map(|c| {
            let n = c.iter().fold(0u64, |acc, b| (acc << 8) | *b as u64);
            format!("{:05}", n % 100_000)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(phone: &str, key: u8) -> MemberDevice {
        MemberDevice {
            phone: phone.into(),
            device_id: key as u64,
            leaf: LeafNodeIndex::new(key as u32),
            signature_key: vec![key; 32],
        }
    }

    use crate::testing::TestDevice as Device;

    #[test]
    fn a_conversation_from_welcome_to_removal() {
        let alice = Device::new("+911", 1);
        let bob = Device::new("+912", 2);
        let laptop = Device::new("+912", 3);
        // The server echoes the commit to alice; she merged it on the ack.
        let (group, out) = alice.start_group_with(&bob).unwrap();
        assert!(
            alice.mls().process(&out.commit).is_err(),
            "an echo after the merge is stale"
        );
        let joined = bob.mls().process(&out.welcome.unwrap()).unwrap();
        assert!(matches!(joined, Incoming::Joined { .. }));
        let ct = alice.mls().encrypt(&group, b"hello").unwrap();
        match bob.mls().process(&ct).unwrap() {
            Incoming::Application {
                phone,
                device_id,
                plaintext,
                ..
            } => {
                assert_eq!(
                    (phone.as_str(), device_id, plaintext.as_slice()),
                    ("+911", 1, &b"hello"[..])
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(bob.mls().process(&ct).is_err(), "a replay does not decrypt");

        // bob adds his laptop; a lost ack: the echo merges as his own commit.
        let out = bob
            .mls()
            .commit(
                &group,
                vec![laptop.key_package_for(&bob.mls()).unwrap()],
                vec![],
            )
            .unwrap();
        assert!(matches!(
            bob.mls().process(&out.commit).unwrap(),
            Incoming::OwnCommit { .. }
        ));
        match alice.mls().process(&out.commit).unwrap() {
            Incoming::Commit {
                changed,
                removed_me,
                ..
            } => {
                assert_eq!(
                    changed.into_iter().collect::<Vec<_>>(),
                    vec!["+912".to_string()]
                );
                assert!(!removed_me);
            }
            other => panic!("{other:?}"),
        }
        laptop.mls().process(&out.welcome.unwrap()).unwrap();
        assert_eq!(
            alice.mls().authenticator(&group).unwrap(),
            laptop.mls().authenticator(&group).unwrap()
        );
        assert_eq!(
            safety_number(&alice.mls().members(&group).unwrap()),
            safety_number(&bob.mls().members(&group).unwrap())
        );

        // alice removes the laptop; it cannot read what follows.
        let leaf = alice
            .mls()
            .members(&group)
            .unwrap()
            .into_iter()
            .find(|m| m.device_id == 3)
            .unwrap();
        let out = alice.mls().commit(&group, vec![], vec![leaf.leaf]).unwrap();
        alice.mls().merge_pending(&group).unwrap();
        bob.mls().process(&out.commit).unwrap();
        assert!(matches!(
            laptop.mls().process(&out.commit).unwrap(),
            Incoming::Commit {
                removed_me: true,
                ..
            }
        ));
        let ct = alice.mls().encrypt(&group, b"secret").unwrap();
        assert!(laptop.mls().process(&ct).is_err());
        assert!(matches!(
            bob.mls().process(&ct).unwrap(),
            Incoming::Application { .. }
        ));
    }

    /// Writes one real message of each kind the server reads as seeds for
    /// the `mls_message` fuzz target, into fuzz/seeds (committed); run with
    /// `--ignored` to refresh them.
    #[test]
    #[ignore]
    fn write_fuzz_seeds() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/mls_message");
        std::fs::create_dir_all(&dir).unwrap();
        let alice = Device::new("+919800000001", 1);
        let bob = Device::new("+919800000002", 2);
        let kp = alice.mls().key_packages(CIPHERSUITE, 1).unwrap().remove(0);
        let last = alice.mls().last_resort_key_package(CIPHERSUITE).unwrap();
        let (group, out) = alice.start_group_with(&bob).unwrap();
        let app = alice.mls().encrypt(&group, b"\x0a\x04\x0a\x02hi").unwrap();
        for (name, bytes) in [
            ("key_package", kp),
            ("last_resort", last),
            ("commit", out.commit),
            ("welcome", out.welcome.unwrap()),
            ("application", app),
        ] {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }

    #[test]
    fn safety_numbers_are_symmetric_and_change_with_devices() {
        let a = member("+911", 1);
        let b = member("+912", 2);
        let one = safety_number(&[a.clone(), b.clone()]);
        assert_eq!(one, safety_number(&[b.clone(), a.clone()]));
        assert_eq!(one.replace(' ', "").len(), 60);
        let more = safety_number(&[a, b, member("+912", 3)]);
        assert_ne!(one, more);
    }
}
