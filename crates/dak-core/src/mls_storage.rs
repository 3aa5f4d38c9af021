//! openmls's `StorageProvider` over the profile's key-value records, so the
//! MLS state lives in the same store as the messages it yields.
//!
//! openmls asks for typed getters and setters (a group's tree, its context,
//! its message secrets, a KeyPackage by reference, …). `MlsStorage` turns
//! each into one record of `MlsKv`: a label naming the kind of record (see
//! `label`), a key (the openmls key's serialization) and a value, both
//! encoded by `encode`/`decode` (serde_json, as the SQLite codec did).
//!
//! Invariants:
//! - **Every read and write goes through the KV**, with no cache and no
//!   buffering here, so each write joins the caller's open bracket
//!   (`ProfileStore::begin`) and rolls back with it: a message is never
//!   stored without the ratchet step that decrypted it, or the reverse.
//! - **List records are read-modify-write**: a group's own leaf nodes and
//!   its proposal queue are each one record holding a JSON array; an emptied
//!   list is deleted, not kept as `[]`. The caller's bracket makes the
//!   read-modify-write atomic.
//! - **Deleting what is absent is `Ok`**, for every `delete_*`, `remove_*`
//!   and `clear_*`, as openmls expects when it cleans up.

use openmls_traits::storage::{CURRENT_VERSION, StorageProvider, traits};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::ClientError;
use crate::store::ProfileStore;

/// The key-value records openmls keeps; `label` names the kind of record.
pub trait MlsKv {
    fn mls_get(&self, label: &[u8], key: &[u8]) -> Result<Option<Vec<u8>>, crate::ClientError>;
    fn mls_put(&self, label: &[u8], key: &[u8], value: &[u8]) -> Result<(), crate::ClientError>;
    fn mls_delete(&self, label: &[u8], key: &[u8]) -> Result<(), crate::ClientError>;
}

impl<T: ProfileStore + ?Sized> MlsKv for T {
    fn mls_get(&self, label: &[u8], key: &[u8]) -> Result<Option<Vec<u8>>, ClientError> {
        ProfileStore::mls_get(self, label, key)
    }

    fn mls_put(&self, label: &[u8], key: &[u8], value: &[u8]) -> Result<(), ClientError> {
        ProfileStore::mls_put(self, label, key, value)
    }

    fn mls_delete(&self, label: &[u8], key: &[u8]) -> Result<(), ClientError> {
        ProfileStore::mls_delete(self, label, key)
    }
}

/// A profile is its store's records: `MlsStorage::new(profile)`. (A
/// `&dyn ProfileStore` does not coerce to a `&dyn MlsKv`: the traits are
/// unrelated, so there is no upcast.)
impl MlsKv for crate::Profile {
    fn mls_get(&self, label: &[u8], key: &[u8]) -> Result<Option<Vec<u8>>, ClientError> {
        ProfileStore::mls_get(self.store(), label, key)
    }

    fn mls_put(&self, label: &[u8], key: &[u8], value: &[u8]) -> Result<(), ClientError> {
        ProfileStore::mls_put(self.store(), label, key, value)
    }

    fn mls_delete(&self, label: &[u8], key: &[u8]) -> Result<(), ClientError> {
        ProfileStore::mls_delete(self.store(), label, key)
    }
}

/// The labels of openmls's records.
///
/// **On-disk format:** every profile ever written holds records under these
/// labels. Never change one, and never reuse one for another kind of record;
/// a new kind gets a new label. Public for the one other writer of these
/// records, the import of profiles from before `mls_kv`
/// (`dak_client`'s `legacy_mls`).
pub mod label {
    // Keyed by group id.
    pub const JOIN_CONFIG: &str = "join_config";
    pub const TREE: &str = "tree";
    pub const TRANSCRIPT_HASH: &str = "transcript_hash";
    pub const CONTEXT: &str = "context";
    pub const CONFIRMATION_TAG: &str = "confirmation_tag";
    pub const GROUP_STATE: &str = "group_state";
    pub const MESSAGE_SECRETS: &str = "message_secrets";
    pub const RESUMPTION_PSKS: &str = "resumption_psks";
    pub const OWN_LEAF_INDEX: &str = "own_leaf_index";
    pub const EPOCH_SECRETS: &str = "epoch_secrets";
    /// A list: the group's own leaf nodes, oldest first.
    pub const OWN_LEAF_NODES: &str = "own_leaf_nodes";
    /// A list: the references of the group's queued proposals, in the order
    /// they were queued, each once.
    pub const PROPOSAL_REFS: &str = "proposal_refs";
    // Keyed by `[group id, proposal ref]`: one queued proposal.
    pub const PROPOSAL: &str = "proposal";
    // Keyed by `[group id, epoch, leaf index]`: a list of HPKE key pairs,
    // always written whole.
    pub const EPOCH_KEY_PAIRS: &str = "epoch_key_pairs";
    // Keyed by a public key, a KeyPackage reference or a PSK id: not tied to
    // one group.
    pub const SIGNATURE_KEY: &str = "signature_key";
    pub const ENCRYPTION_KEY: &str = "encryption_key";
    pub const KEY_PACKAGE: &str = "key_package";
    pub const PSK: &str = "psk";
}

/// Why a read or write of MLS state failed.
#[derive(Debug, thiserror::Error)]
pub enum MlsStorageError {
    /// The profile store failed; the caller's bracket should roll back.
    #[error("MLS state: {0}")]
    Store(#[from] ClientError),
    /// A record could not be encoded, or a stored one decoded.
    #[error("MLS state: bad `{label}` record: {source}")]
    Codec {
        label: &'static str,
        source: serde_json::Error,
    },
    /// The proposal queue lists a proposal whose record is gone.
    #[error("MLS state: the proposal queue lists a proposal that is not stored")]
    MissingProposal,
}

/// How a record's key and value are encoded (serde_json, as the SQLite codec
/// did); `label` only names the record in an error. Public for the import of
/// old profiles, which must file a record under the very key a getter here
/// asks for: a composite key is the tuple the getter encodes, e.g.
/// `encode(label::EPOCH_KEY_PAIRS, &(group_id, epoch, leaf_index))`.
pub fn encode<T: Serialize + ?Sized>(
    label: &'static str,
    value: &T,
) -> Result<Vec<u8>, MlsStorageError> {
    serde_json::to_vec(value).map_err(|source| MlsStorageError::Codec { label, source })
}

fn decode<T: DeserializeOwned>(label: &'static str, bytes: &[u8]) -> Result<T, MlsStorageError> {
    serde_json::from_slice(bytes).map_err(|source| MlsStorageError::Codec { label, source })
}

/// openmls's storage over `MlsKv` (in practice a profile's `ProfileStore`).
/// Cheap to make: it only borrows the store.
#[derive(Clone, Copy)]
pub struct MlsStorage<'a> {
    kv: &'a dyn MlsKv,
}

impl<'a> MlsStorage<'a> {
    pub fn new(kv: &'a dyn MlsKv) -> Self {
        MlsStorage { kv }
    }

    fn read<V: DeserializeOwned>(
        &self,
        label: &'static str,
        key: &(impl Serialize + ?Sized),
    ) -> Result<Option<V>, MlsStorageError> {
        let key = encode(label, key)?;
        match self.kv.mls_get(label.as_bytes(), &key)? {
            Some(bytes) => decode(label, &bytes).map(Some),
            None => Ok(None),
        }
    }

    fn write(
        &self,
        label: &'static str,
        key: &(impl Serialize + ?Sized),
        value: &(impl Serialize + ?Sized),
    ) -> Result<(), MlsStorageError> {
        let key = encode(label, key)?;
        let value = encode(label, value)?;
        Ok(self.kv.mls_put(label.as_bytes(), &key, &value)?)
    }

    fn delete(
        &self,
        label: &'static str,
        key: &(impl Serialize + ?Sized),
    ) -> Result<(), MlsStorageError> {
        let key = encode(label, key)?;
        Ok(self.kv.mls_delete(label.as_bytes(), &key)?)
    }

    /// A list record, or an empty list where there is none.
    fn read_list<V: DeserializeOwned>(
        &self,
        label: &'static str,
        key: &(impl Serialize + ?Sized),
    ) -> Result<Vec<V>, MlsStorageError> {
        Ok(self.read(label, key)?.unwrap_or_default())
    }

    /// Read-modify-write of a list record, its items as JSON values (no
    /// item type is needed to append or to compare). `change` says whether
    /// it changed the list; an emptied list is deleted.
    fn update_list(
        &self,
        label: &'static str,
        key: &(impl Serialize + ?Sized),
        change: impl FnOnce(&mut Vec<Value>) -> bool,
    ) -> Result<(), MlsStorageError> {
        let key = encode(label, key)?;
        let mut list: Vec<Value> = match self.kv.mls_get(label.as_bytes(), &key)? {
            Some(bytes) => decode(label, &bytes)?,
            None => Vec::new(),
        };
        if !change(&mut list) {
            return Ok(());
        }
        if list.is_empty() {
            self.kv.mls_delete(label.as_bytes(), &key)?;
        } else {
            self.kv
                .mls_put(label.as_bytes(), &key, &encode(label, &list)?)?;
        }
        Ok(())
    }
}

/// An item as it will sit in a list record.
fn list_item(label: &'static str, item: &impl Serialize) -> Result<Value, MlsStorageError> {
    decode(label, &encode(label, item)?)
}

impl StorageProvider<CURRENT_VERSION> for MlsStorage<'_> {
    type Error = MlsStorageError;

    // ---- group state: writers ----

    fn write_mls_join_config<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        MlsGroupJoinConfig: traits::MlsGroupJoinConfig<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        config: &MlsGroupJoinConfig,
    ) -> Result<(), Self::Error> {
        self.write(label::JOIN_CONFIG, group_id, config)
    }

    fn append_own_leaf_node<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        LeafNode: traits::LeafNode<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        leaf_node: &LeafNode,
    ) -> Result<(), Self::Error> {
        let item = list_item(label::OWN_LEAF_NODES, leaf_node)?;
        self.update_list(label::OWN_LEAF_NODES, group_id, |list| {
            list.push(item);
            true
        })
    }

    /// The proposal goes under `[group, ref]` and its ref at the end of the
    /// group's queue. A ref already queued is not listed twice (same ref,
    /// same proposal): queueing is idempotent.
    fn queue_proposal<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
        QueuedProposal: traits::QueuedProposal<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        proposal_ref: &ProposalRef,
        proposal: &QueuedProposal,
    ) -> Result<(), Self::Error> {
        self.write(label::PROPOSAL, &(group_id, proposal_ref), proposal)?;
        let item = list_item(label::PROPOSAL_REFS, proposal_ref)?;
        self.update_list(label::PROPOSAL_REFS, group_id, |refs| {
            let absent = !refs.contains(&item);
            if absent {
                refs.push(item);
            }
            absent
        })
    }

    fn write_tree<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        TreeSync: traits::TreeSync<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        tree: &TreeSync,
    ) -> Result<(), Self::Error> {
        self.write(label::TREE, group_id, tree)
    }

    fn write_interim_transcript_hash<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        InterimTranscriptHash: traits::InterimTranscriptHash<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        interim_transcript_hash: &InterimTranscriptHash,
    ) -> Result<(), Self::Error> {
        self.write(label::TRANSCRIPT_HASH, group_id, interim_transcript_hash)
    }

    fn write_context<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        GroupContext: traits::GroupContext<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        group_context: &GroupContext,
    ) -> Result<(), Self::Error> {
        self.write(label::CONTEXT, group_id, group_context)
    }

    fn write_confirmation_tag<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ConfirmationTag: traits::ConfirmationTag<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        confirmation_tag: &ConfirmationTag,
    ) -> Result<(), Self::Error> {
        self.write(label::CONFIRMATION_TAG, group_id, confirmation_tag)
    }

    fn write_group_state<
        GroupState: traits::GroupState<CURRENT_VERSION>,
        GroupId: traits::GroupId<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        group_state: &GroupState,
    ) -> Result<(), Self::Error> {
        self.write(label::GROUP_STATE, group_id, group_state)
    }

    /// On every message sent or received: one encode of the key, one of the
    /// value, one put.
    fn write_message_secrets<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        MessageSecrets: traits::MessageSecrets<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        message_secrets: &MessageSecrets,
    ) -> Result<(), Self::Error> {
        self.write(label::MESSAGE_SECRETS, group_id, message_secrets)
    }

    fn write_resumption_psk_store<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ResumptionPskStore: traits::ResumptionPskStore<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        resumption_psk_store: &ResumptionPskStore,
    ) -> Result<(), Self::Error> {
        self.write(label::RESUMPTION_PSKS, group_id, resumption_psk_store)
    }

    fn write_own_leaf_index<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        LeafNodeIndex: traits::LeafNodeIndex<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        own_leaf_index: &LeafNodeIndex,
    ) -> Result<(), Self::Error> {
        self.write(label::OWN_LEAF_INDEX, group_id, own_leaf_index)
    }

    fn write_group_epoch_secrets<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        GroupEpochSecrets: traits::GroupEpochSecrets<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        group_epoch_secrets: &GroupEpochSecrets,
    ) -> Result<(), Self::Error> {
        self.write(label::EPOCH_SECRETS, group_id, group_epoch_secrets)
    }

    // ---- crypto objects: writers ----

    fn write_signature_key_pair<
        SignaturePublicKey: traits::SignaturePublicKey<CURRENT_VERSION>,
        SignatureKeyPair: traits::SignatureKeyPair<CURRENT_VERSION>,
    >(
        &self,
        public_key: &SignaturePublicKey,
        signature_key_pair: &SignatureKeyPair,
    ) -> Result<(), Self::Error> {
        self.write(label::SIGNATURE_KEY, public_key, signature_key_pair)
    }

    fn write_encryption_key_pair<
        EncryptionKey: traits::EncryptionKey<CURRENT_VERSION>,
        HpkeKeyPair: traits::HpkeKeyPair<CURRENT_VERSION>,
    >(
        &self,
        public_key: &EncryptionKey,
        key_pair: &HpkeKeyPair,
    ) -> Result<(), Self::Error> {
        self.write(label::ENCRYPTION_KEY, public_key, key_pair)
    }

    /// The whole list for `(group, epoch, leaf)`, replacing any before.
    fn write_encryption_epoch_key_pairs<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        EpochKey: traits::EpochKey<CURRENT_VERSION>,
        HpkeKeyPair: traits::HpkeKeyPair<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        epoch: &EpochKey,
        leaf_index: u32,
        key_pairs: &[HpkeKeyPair],
    ) -> Result<(), Self::Error> {
        self.write(
            label::EPOCH_KEY_PAIRS,
            &(group_id, epoch, leaf_index),
            key_pairs,
        )
    }

    fn write_key_package<
        HashReference: traits::HashReference<CURRENT_VERSION>,
        KeyPackage: traits::KeyPackage<CURRENT_VERSION>,
    >(
        &self,
        hash_ref: &HashReference,
        key_package: &KeyPackage,
    ) -> Result<(), Self::Error> {
        self.write(label::KEY_PACKAGE, hash_ref, key_package)
    }

    fn write_psk<
        PskId: traits::PskId<CURRENT_VERSION>,
        PskBundle: traits::PskBundle<CURRENT_VERSION>,
    >(
        &self,
        psk_id: &PskId,
        psk: &PskBundle,
    ) -> Result<(), Self::Error> {
        self.write(label::PSK, psk_id, psk)
    }

    // ---- group state: getters ----

    fn mls_group_join_config<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        MlsGroupJoinConfig: traits::MlsGroupJoinConfig<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<MlsGroupJoinConfig>, Self::Error> {
        self.read(label::JOIN_CONFIG, group_id)
    }

    fn own_leaf_nodes<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        LeafNode: traits::LeafNode<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Vec<LeafNode>, Self::Error> {
        self.read_list(label::OWN_LEAF_NODES, group_id)
    }

    fn queued_proposal_refs<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Vec<ProposalRef>, Self::Error> {
        self.read_list(label::PROPOSAL_REFS, group_id)
    }

    /// In the order they were queued.
    fn queued_proposals<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
        QueuedProposal: traits::QueuedProposal<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Vec<(ProposalRef, QueuedProposal)>, Self::Error> {
        let refs: Vec<ProposalRef> = self.read_list(label::PROPOSAL_REFS, group_id)?;
        let mut proposals = Vec::with_capacity(refs.len());
        for proposal_ref in refs {
            let proposal = self
                .read(label::PROPOSAL, &(group_id, &proposal_ref))?
                .ok_or(MlsStorageError::MissingProposal)?;
            proposals.push((proposal_ref, proposal));
        }
        Ok(proposals)
    }

    fn tree<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        TreeSync: traits::TreeSync<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<TreeSync>, Self::Error> {
        self.read(label::TREE, group_id)
    }

    fn group_context<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        GroupContext: traits::GroupContext<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<GroupContext>, Self::Error> {
        self.read(label::CONTEXT, group_id)
    }

    fn interim_transcript_hash<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        InterimTranscriptHash: traits::InterimTranscriptHash<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<InterimTranscriptHash>, Self::Error> {
        self.read(label::TRANSCRIPT_HASH, group_id)
    }

    fn confirmation_tag<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ConfirmationTag: traits::ConfirmationTag<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<ConfirmationTag>, Self::Error> {
        self.read(label::CONFIRMATION_TAG, group_id)
    }

    fn group_state<
        GroupState: traits::GroupState<CURRENT_VERSION>,
        GroupId: traits::GroupId<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<GroupState>, Self::Error> {
        self.read(label::GROUP_STATE, group_id)
    }

    fn message_secrets<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        MessageSecrets: traits::MessageSecrets<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<MessageSecrets>, Self::Error> {
        self.read(label::MESSAGE_SECRETS, group_id)
    }

    fn resumption_psk_store<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ResumptionPskStore: traits::ResumptionPskStore<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<ResumptionPskStore>, Self::Error> {
        self.read(label::RESUMPTION_PSKS, group_id)
    }

    fn own_leaf_index<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        LeafNodeIndex: traits::LeafNodeIndex<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<LeafNodeIndex>, Self::Error> {
        self.read(label::OWN_LEAF_INDEX, group_id)
    }

    fn group_epoch_secrets<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        GroupEpochSecrets: traits::GroupEpochSecrets<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<GroupEpochSecrets>, Self::Error> {
        self.read(label::EPOCH_SECRETS, group_id)
    }

    // ---- crypto objects: getters ----

    fn signature_key_pair<
        SignaturePublicKey: traits::SignaturePublicKey<CURRENT_VERSION>,
        SignatureKeyPair: traits::SignatureKeyPair<CURRENT_VERSION>,
    >(
        &self,
        public_key: &SignaturePublicKey,
    ) -> Result<Option<SignatureKeyPair>, Self::Error> {
        self.read(label::SIGNATURE_KEY, public_key)
    }

    fn encryption_key_pair<
        HpkeKeyPair: traits::HpkeKeyPair<CURRENT_VERSION>,
        EncryptionKey: traits::EncryptionKey<CURRENT_VERSION>,
    >(
        &self,
        public_key: &EncryptionKey,
    ) -> Result<Option<HpkeKeyPair>, Self::Error> {
        self.read(label::ENCRYPTION_KEY, public_key)
    }

    fn encryption_epoch_key_pairs<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        EpochKey: traits::EpochKey<CURRENT_VERSION>,
        HpkeKeyPair: traits::HpkeKeyPair<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        epoch: &EpochKey,
        leaf_index: u32,
    ) -> Result<Vec<HpkeKeyPair>, Self::Error> {
        self.read_list(label::EPOCH_KEY_PAIRS, &(group_id, epoch, leaf_index))
    }

    fn key_package<
        KeyPackageRef: traits::HashReference<CURRENT_VERSION>,
        KeyPackage: traits::KeyPackage<CURRENT_VERSION>,
    >(
        &self,
        hash_ref: &KeyPackageRef,
    ) -> Result<Option<KeyPackage>, Self::Error> {
        self.read(label::KEY_PACKAGE, hash_ref)
    }

    fn psk<PskBundle: traits::PskBundle<CURRENT_VERSION>, PskId: traits::PskId<CURRENT_VERSION>>(
        &self,
        psk_id: &PskId,
    ) -> Result<Option<PskBundle>, Self::Error> {
        self.read(label::PSK, psk_id)
    }

    // ---- group state: deleters ----

    /// Drops the ref from the queue and the proposal's record.
    fn remove_proposal<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        proposal_ref: &ProposalRef,
    ) -> Result<(), Self::Error> {
        let item = list_item(label::PROPOSAL_REFS, proposal_ref)?;
        self.update_list(label::PROPOSAL_REFS, group_id, |refs| {
            let before = refs.len();
            refs.retain(|r| r != &item);
            refs.len() != before
        })?;
        self.delete(label::PROPOSAL, &(group_id, proposal_ref))
    }

    fn delete_own_leaf_nodes<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete(label::OWN_LEAF_NODES, group_id)
    }

    fn delete_group_config<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete(label::JOIN_CONFIG, group_id)
    }

    fn delete_tree<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete(label::TREE, group_id)
    }

    fn delete_confirmation_tag<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete(label::CONFIRMATION_TAG, group_id)
    }

    fn delete_group_state<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete(label::GROUP_STATE, group_id)
    }

    fn delete_context<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete(label::CONTEXT, group_id)
    }

    fn delete_interim_transcript_hash<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete(label::TRANSCRIPT_HASH, group_id)
    }

    fn delete_message_secrets<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete(label::MESSAGE_SECRETS, group_id)
    }

    fn delete_all_resumption_psk_secrets<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete(label::RESUMPTION_PSKS, group_id)
    }

    fn delete_own_leaf_index<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete(label::OWN_LEAF_INDEX, group_id)
    }

    fn delete_group_epoch_secrets<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete(label::EPOCH_SECRETS, group_id)
    }

    /// Every queued proposal's record, then the queue.
    fn clear_proposal_queue<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        let refs: Vec<ProposalRef> = self.read_list(label::PROPOSAL_REFS, group_id)?;
        for proposal_ref in &refs {
            self.delete(label::PROPOSAL, &(group_id, proposal_ref))?;
        }
        self.delete(label::PROPOSAL_REFS, group_id)
    }

    // ---- crypto objects: deleters ----

    fn delete_signature_key_pair<
        SignaturePublicKey: traits::SignaturePublicKey<CURRENT_VERSION>,
    >(
        &self,
        public_key: &SignaturePublicKey,
    ) -> Result<(), Self::Error> {
        self.delete(label::SIGNATURE_KEY, public_key)
    }

    fn delete_encryption_key_pair<EncryptionKey: traits::EncryptionKey<CURRENT_VERSION>>(
        &self,
        public_key: &EncryptionKey,
    ) -> Result<(), Self::Error> {
        self.delete(label::ENCRYPTION_KEY, public_key)
    }

    fn delete_encryption_epoch_key_pairs<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        EpochKey: traits::EpochKey<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        epoch: &EpochKey,
        leaf_index: u32,
    ) -> Result<(), Self::Error> {
        self.delete(label::EPOCH_KEY_PAIRS, &(group_id, epoch, leaf_index))
    }

    fn delete_key_package<KeyPackageRef: traits::HashReference<CURRENT_VERSION>>(
        &self,
        hash_ref: &KeyPackageRef,
    ) -> Result<(), Self::Error> {
        self.delete(label::KEY_PACKAGE, hash_ref)
    }

    fn delete_psk<PskKey: traits::PskId<CURRENT_VERSION>>(
        &self,
        psk_id: &PskKey,
    ) -> Result<(), Self::Error> {
        self.delete(label::PSK, psk_id)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use dak_proto::mls::CIPHERSUITE;
    use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
    use openmls::prelude::{
        BasicCredential, CredentialWithKey, GroupEpoch, GroupId, KeyPackage, LeafNodeParameters,
        MIXED_PLAINTEXT_WIRE_FORMAT_POLICY, MlsGroup, MlsGroupCreateConfig, MlsGroupJoinConfig,
        MlsMessageBodyIn, MlsMessageIn, MlsMessageOut, ProcessedMessageContent, ProtocolMessage,
        ProtocolVersion, StagedWelcome,
    };
    use openmls_basic_credential::SignatureKeyPair;
    use openmls_rust_crypto::RustCrypto;
    use openmls_traits::OpenMlsProvider;
    use openmls_traits::storage::{CURRENT_VERSION, StorageProvider};
    use parking_lot::Mutex;

    use super::{MlsKv, MlsStorage, MlsStorageError, label};
    use crate::ClientError;
    use crate::mls::Provider;

    /// Every label whose records belong to one group.
    const GROUP_LABELS: &[&str] = &[
        label::JOIN_CONFIG,
        label::TREE,
        label::TRANSCRIPT_HASH,
        label::CONTEXT,
        label::CONFIRMATION_TAG,
        label::GROUP_STATE,
        label::MESSAGE_SECRETS,
        label::RESUMPTION_PSKS,
        label::OWN_LEAF_INDEX,
        label::EPOCH_SECRETS,
        label::OWN_LEAF_NODES,
        label::PROPOSAL_REFS,
        label::PROPOSAL,
        label::EPOCH_KEY_PAIRS,
    ];

    /// (label, key) → value.
    type Records = BTreeMap<(Vec<u8>, Vec<u8>), Vec<u8>>;

    #[derive(Default)]
    struct MapKv(Mutex<Records>);

    impl MlsKv for MapKv {
        fn mls_get(&self, label: &[u8], key: &[u8]) -> Result<Option<Vec<u8>>, ClientError> {
            Ok(self.0.lock().get(&(label.to_vec(), key.to_vec())).cloned())
        }

        fn mls_put(&self, label: &[u8], key: &[u8], value: &[u8]) -> Result<(), ClientError> {
            self.0
                .lock()
                .insert((label.to_vec(), key.to_vec()), value.to_vec());
            Ok(())
        }

        fn mls_delete(&self, label: &[u8], key: &[u8]) -> Result<(), ClientError> {
            self.0.lock().remove(&(label.to_vec(), key.to_vec()));
            Ok(())
        }
    }

    impl MapKv {
        fn count(&self, label: &str) -> usize {
            self.0
                .lock()
                .keys()
                .filter(|(l, _)| l == label.as_bytes())
                .count()
        }

        /// (label, records) of every label that has any.
        fn labels(&self) -> BTreeMap<String, usize> {
            let mut out = BTreeMap::new();
            for (l, _) in self.0.lock().keys() {
                *out.entry(String::from_utf8_lossy(l).into_owned())
                    .or_default() += 1;
            }
            out
        }

        fn group_records(&self) -> usize {
            GROUP_LABELS.iter().map(|l| self.count(l)).sum()
        }
    }

    struct Device {
        kv: MapKv,
        signer: SignatureKeyPair,
        credential: CredentialWithKey,
    }

    impl Device {
        fn new(name: &str) -> Device {
            let signer = SignatureKeyPair::new(CIPHERSUITE.signature_algorithm()).unwrap();
            let credential = CredentialWithKey {
                credential: BasicCredential::new(name.as_bytes().to_vec()).into(),
                signature_key: signer.public().into(),
            };
            Device {
                kv: MapKv::default(),
                signer,
                credential,
            }
        }

        fn provider(&self) -> Provider<'_> {
            Provider::new(&self.kv)
        }

        /// A KeyPackage as the directory hands it out: encoded, then
        /// decoded and validated by the one who adds this device.
        fn key_package(&self) -> KeyPackage {
            let bundle = KeyPackage::builder()
                .build(
                    CIPHERSUITE,
                    &self.provider(),
                    &self.signer,
                    self.credential.clone(),
                )
                .unwrap();
            let bytes = MlsMessageOut::from(bundle.key_package().clone())
                .tls_serialize_detached()
                .unwrap();
            match MlsMessageIn::tls_deserialize_exact(bytes)
                .unwrap()
                .extract()
            {
                MlsMessageBodyIn::KeyPackage(kp) => kp
                    .validate(&RustCrypto::default(), ProtocolVersion::Mls10)
                    .unwrap(),
                _ => panic!("not a KeyPackage"),
            }
        }

        fn load(&self, group: &GroupId) -> MlsGroup {
            MlsGroup::load(&MlsStorage::new(&self.kv), group)
                .unwrap()
                .expect("group stored")
        }
    }

    fn create_config() -> MlsGroupCreateConfig {
        MlsGroupCreateConfig::builder()
            .ciphersuite(CIPHERSUITE)
            .use_ratchet_tree_extension(true)
            .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
            .max_past_epochs(2)
            .build()
    }

    fn join_config() -> MlsGroupJoinConfig {
        MlsGroupJoinConfig::builder()
            .use_ratchet_tree_extension(true)
            .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
            .max_past_epochs(2)
            .build()
    }

    /// Over the wire and back.
    fn wire(m: &MlsMessageOut) -> MlsMessageIn {
        MlsMessageIn::tls_deserialize_exact(m.tls_serialize_detached().unwrap()).unwrap()
    }

    fn protocol(m: &MlsMessageOut) -> ProtocolMessage {
        wire(m).try_into_protocol_message().unwrap()
    }

    /// `from` encrypts `text` in its group; `to` decrypts it in its own.
    fn send(
        from: &Device,
        from_group: &mut MlsGroup,
        to: &Device,
        to_group: &mut MlsGroup,
        text: &[u8],
    ) {
        let out = from_group
            .create_message(&from.provider(), &from.signer, text)
            .unwrap();
        let processed = to_group
            .process_message(&to.provider(), protocol(&out))
            .unwrap();
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(app) => assert_eq!(app.into_bytes(), text),
            other => panic!("expected an application message, got {other:?}"),
        }
    }

    /// Alice creates a group and adds Bob, who joins from the Welcome.
    fn conversation(alice: &Device, bob: &Device) -> (MlsGroup, MlsGroup) {
        let ap = alice.provider();
        let bp = bob.provider();
        let bob_kp = bob.key_package();
        assert_eq!(bob.kv.count(label::KEY_PACKAGE), 1);
        let mut ag = MlsGroup::new(
            &ap,
            &alice.signer,
            &create_config(),
            alice.credential.clone(),
        )
        .unwrap();
        let (_commit, welcome, _) = ag.add_members(&ap, &alice.signer, &[bob_kp]).unwrap();
        ag.merge_pending_commit(&ap).unwrap();
        let MlsMessageBodyIn::Welcome(welcome) = wire(&welcome).extract() else {
            panic!("not a Welcome");
        };
        let bg = StagedWelcome::new_from_welcome(&bp, &join_config(), welcome, None)
            .unwrap()
            .into_group(&bp)
            .unwrap();
        // A one-time KeyPackage is used up by the join.
        assert_eq!(bob.kv.count(label::KEY_PACKAGE), 0);
        (ag, bg)
    }

    #[test]
    fn mls_storage_carries_a_conversation_across_reloads_until_a_removal() {
        let alice = Device::new("alice");
        let bob = Device::new("bob");
        let (mut ag, mut bg) = conversation(&alice, &bob);
        let group = ag.group_id().clone();
        assert_eq!(bg.group_id(), &group);

        send(&alice, &mut ag, &bob, &mut bg, b"hi bob");
        send(&bob, &mut bg, &alice, &mut ag, b"hi alice");
        send(&alice, &mut ag, &bob, &mut bg, b"how are you");

        // Everything needed is in storage: fresh groups from it carry on,
        // ratchets included (a replayed generation would fail to decrypt).
        drop((ag, bg));
        let mut ag = alice.load(&group);
        let mut bg = bob.load(&group);
        for i in 0..3 {
            send(&alice, &mut ag, &bob, &mut bg, format!("a{i}").as_bytes());
            send(&bob, &mut bg, &alice, &mut ag, format!("b{i}").as_bytes());
        }
        // And again, message by message, as a client that reloads per call.
        for i in 0..3 {
            send(
                &alice,
                &mut alice.load(&group),
                &bob,
                &mut bob.load(&group),
                format!("c{i}").as_bytes(),
            );
            send(
                &bob,
                &mut bob.load(&group),
                &alice,
                &mut alice.load(&group),
                format!("d{i}").as_bytes(),
            );
        }
        let mut ag = alice.load(&group);
        let mut bg = bob.load(&group);
        assert_eq!(
            ag.epoch_authenticator().as_slice(),
            bg.epoch_authenticator().as_slice()
        );

        // Alice removes Bob.
        let ap = alice.provider();
        let bp = bob.provider();
        let (commit, welcome, _) = ag
            .remove_members(&ap, &alice.signer, &[bg.own_leaf_index()])
            .unwrap();
        assert!(welcome.is_none());
        ag.merge_pending_commit(&ap).unwrap();
        let processed = bg.process_message(&bp, protocol(&commit)).unwrap();
        let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() else {
            panic!("expected a commit");
        };
        assert!(staged.self_removed());
        bg.merge_staged_commit(&bp, *staged).unwrap();
        assert!(!bg.is_active());
        // Both see it after a reload too.
        assert!(!bob.load(&group).is_active());
        let mut ag = alice.load(&group);
        assert!(ag.is_active());
        assert_eq!(ag.members().count(), 1);
        assert!(ag.create_message(&ap, &alice.signer, b"alone").is_ok());
    }

    #[test]
    fn mls_storage_group_delete_leaves_no_group_records() {
        let alice = Device::new("alice");
        let bob = Device::new("bob");
        let (mut ag, mut bg) = conversation(&alice, &bob);
        send(&alice, &mut ag, &bob, &mut bg, b"hi");
        let group = ag.group_id().clone();
        for l in [
            label::TREE,
            label::CONTEXT,
            label::GROUP_STATE,
            label::MESSAGE_SECRETS,
            label::EPOCH_SECRETS,
            label::OWN_LEAF_INDEX,
            label::EPOCH_KEY_PAIRS,
        ] {
            assert_eq!(alice.kv.count(l), 1, "{l}");
            assert_eq!(bob.kv.count(l), 1, "{l}");
        }

        ag.delete(&MlsStorage::new(&alice.kv)).unwrap();
        assert_eq!(alice.kv.group_records(), 0, "{:?}", alice.kv.labels());
        // Alice made no KeyPackage and stored no key: nothing at all is left.
        assert!(alice.kv.labels().is_empty(), "{:?}", alice.kv.labels());
        assert!(
            MlsGroup::load(&MlsStorage::new(&alice.kv), &group)
                .unwrap()
                .is_none()
        );

        bg.delete(&MlsStorage::new(&bob.kv)).unwrap();
        assert!(bob.kv.labels().is_empty(), "{:?}", bob.kv.labels());

        // Deleting again, with nothing there, is fine and writes nothing.
        let storage = MlsStorage::new(&alice.kv);
        <MlsStorage as StorageProvider<CURRENT_VERSION>>::delete_tree(&storage, &group).unwrap();
        storage.delete_own_leaf_nodes(&group).unwrap();
        storage
            .clear_proposal_queue::<GroupId, openmls::ciphersuite::hash_ref::ProposalRef>(&group)
            .unwrap();
        assert!(alice.kv.labels().is_empty());
    }

    /// openmls quirk: merging the commit that removes us moves the group to
    /// the new epoch without deleting the previous epoch's HPKE key pairs,
    /// and `MlsGroup::delete` deletes only the current epoch's. A removed
    /// member's cleanup must delete `(group, epoch - 1, own leaf)` itself.
    #[test]
    fn mls_storage_removed_member_keeps_last_epoch_key_pairs_until_deleted() {
        let alice = Device::new("alice");
        let bob = Device::new("bob");
        let (mut ag, mut bg) = conversation(&alice, &bob);
        let (commit, _, _) = ag
            .remove_members(&alice.provider(), &alice.signer, &[bg.own_leaf_index()])
            .unwrap();
        ag.merge_pending_commit(&alice.provider()).unwrap();
        let processed = bg
            .process_message(&bob.provider(), protocol(&commit))
            .unwrap();
        let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() else {
            panic!("expected a commit");
        };
        bg.merge_staged_commit(&bob.provider(), *staged).unwrap();
        let storage = MlsStorage::new(&bob.kv);
        bg.delete(&storage).unwrap();
        assert_eq!(
            bob.kv.labels(),
            BTreeMap::from([(label::EPOCH_KEY_PAIRS.to_string(), 1)])
        );
        let previous = GroupEpoch::from(bg.epoch().as_u64() - 1);
        storage
            .delete_encryption_epoch_key_pairs(bg.group_id(), &previous, bg.own_leaf_index().u32())
            .unwrap();
        assert!(bob.kv.labels().is_empty(), "{:?}", bob.kv.labels());
    }

    #[test]
    fn mls_storage_keeps_the_proposal_queue_and_own_leaf_nodes() {
        let alice = Device::new("alice");
        let bob = Device::new("bob");
        let carol = Device::new("carol");
        let (mut ag, mut bg) = conversation(&alice, &bob);
        let group = ag.group_id().clone();
        let ap = alice.provider();
        let bp = bob.provider();

        // Alice proposes an update of her own leaf and adding Carol, then
        // takes the second back.
        let (update, update_ref) = ag
            .propose_self_update(&ap, &alice.signer, LeafNodeParameters::default())
            .unwrap();
        assert_eq!(alice.kv.count(label::OWN_LEAF_NODES), 1);
        let (_, add_ref) = ag
            .propose_add_member(&ap, &alice.signer, &carol.key_package())
            .unwrap();
        assert_eq!(alice.kv.count(label::PROPOSAL), 2);
        let storage = ap.storage();
        let refs: Vec<openmls::ciphersuite::hash_ref::ProposalRef> =
            storage.queued_proposal_refs(&group).unwrap();
        assert_eq!(refs, vec![update_ref.clone(), add_ref.clone()]);
        ag.remove_pending_proposal(storage, &add_ref).unwrap();
        assert_eq!(alice.kv.count(label::PROPOSAL), 1);
        // Removing it again is fine.
        storage.remove_proposal(&group, &add_ref).unwrap();
        let refs: Vec<openmls::ciphersuite::hash_ref::ProposalRef> =
            storage.queued_proposal_refs(&group).unwrap();
        assert_eq!(refs, vec![update_ref.clone()]);

        // Alice's queue and pending leaf survive a reload.
        drop(ag);
        let mut ag = alice.load(&group);
        assert_eq!(ag.pending_proposals().count(), 1);

        // Bob queues the proposal; queueing the same one twice lists it once.
        let processed = bg.process_message(&bp, protocol(&update)).unwrap();
        let ProcessedMessageContent::ProposalMessage(proposal) = processed.into_content() else {
            panic!("expected a proposal");
        };
        bp.storage()
            .queue_proposal(&group, &update_ref, &*proposal)
            .unwrap();
        bg.store_pending_proposal(bp.storage(), *proposal).unwrap();
        assert_eq!(bob.kv.count(label::PROPOSAL), 1);
        let refs: Vec<openmls::ciphersuite::hash_ref::ProposalRef> =
            bp.storage().queued_proposal_refs(&group).unwrap();
        assert_eq!(refs, vec![update_ref]);
        drop(bg);
        let mut bg = bob.load(&group);
        assert_eq!(bg.pending_proposals().count(), 1);

        // Bob commits it; Alice, reloaded, applies it with the private key
        // of the leaf she proposed (kept in her own leaf nodes).
        let (commit, _, _) = bg.commit_to_pending_proposals(&bp, &bob.signer).unwrap();
        bg.merge_pending_commit(&bp).unwrap();
        assert_eq!(bob.kv.count(label::PROPOSAL), 0);
        assert_eq!(bob.kv.count(label::PROPOSAL_REFS), 0);
        let processed = ag.process_message(&ap, protocol(&commit)).unwrap();
        let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() else {
            panic!("expected a commit");
        };
        ag.merge_staged_commit(&ap, *staged).unwrap();
        assert_eq!(alice.kv.count(label::PROPOSAL), 0);
        assert_eq!(alice.kv.count(label::PROPOSAL_REFS), 0);
        assert_eq!(alice.kv.count(label::OWN_LEAF_NODES), 0);

        let mut ag = alice.load(&group);
        let mut bg = bob.load(&group);
        assert_eq!(
            ag.epoch_authenticator().as_slice(),
            bg.epoch_authenticator().as_slice()
        );
        send(&alice, &mut ag, &bob, &mut bg, b"after the update");
        send(&bob, &mut bg, &alice, &mut ag, b"got it");
    }

    struct BrokenKv;

    impl MlsKv for BrokenKv {
        fn mls_get(&self, _: &[u8], _: &[u8]) -> Result<Option<Vec<u8>>, ClientError> {
            Err(ClientError::Store {
                path: "broken".into(),
                message: "disk gone".into(),
            })
        }

        fn mls_put(&self, label: &[u8], key: &[u8], _: &[u8]) -> Result<(), ClientError> {
            self.mls_get(label, key).map(drop)
        }

        fn mls_delete(&self, label: &[u8], key: &[u8]) -> Result<(), ClientError> {
            self.mls_get(label, key).map(drop)
        }
    }

    #[test]
    fn mls_storage_errors_are_typed() {
        let group = GroupId::from_slice(b"group");
        let err = MlsGroup::load(&MlsStorage::new(&BrokenKv), &group).unwrap_err();
        assert!(
            matches!(err, MlsStorageError::Store(ClientError::Store { .. })),
            "{err:?}"
        );

        let kv = MapKv::default();
        let storage = MlsStorage::new(&kv);
        let key = serde_json::to_vec(&group).unwrap();
        kv.mls_put(label::TREE.as_bytes(), &key, b"not json")
            .unwrap();
        let err = MlsGroup::load(&storage, &group).unwrap_err();
        assert!(
            matches!(err, MlsStorageError::Codec { label: "tree", .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("`tree`"), "{err}");
    }
}
