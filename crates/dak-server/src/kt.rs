//! Key transparency on the server's side (PROTOCOL.md §18): akd's
//! auditable key directory, kept in the store, mapping each number to its
//! account's active devices (`dak_proto::kt::encode_devices`).
//!
//! Invariants:
//! - The directory lives in the store (`kt_*` tables, through `KtDb`), so
//!   every node of a cluster serves the same one; no node caches it
//!   (akd's `StorageManager::new_no_cache`), so a lookup on one node sees
//!   what another published.
//! - An epoch is published in one store transaction that also moves the
//!   directory's epoch from the one it was built on (`Store::kt_write`'s
//!   `advance`). Two nodes publishing at once: one wins, the other writes
//!   nothing and publishes again on top of the winner. On one node,
//!   publishes are one at a time (`publishing`), and callers that arrive
//!   while one runs are folded into the next (a group commit).
//! - What is published for a number is always read from the store at
//!   publish time, never carried from the caller, so a late publish can
//!   never put back an older device set.
//! - A lookup first makes sure the directory says what the store says
//!   (publishing if not): after a crash between a device change and its
//!   publish, the first lookup of that number mends it. A device change
//!   answers its device only after the publish (register, link, remove).
//! - The VRF key (32 bytes) is made at first start beside the notice key
//!   and is the same on every node of a cluster (`kt_key` in the config).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use akd::directory::{Directory, ReadOnlyDirectory};
use akd::ecvrf::{VRFKeyStorage, VrfError};
use akd::errors::StorageError;
use akd::storage::types::{DbRecord, KeyData, StorageType, ValueState, ValueStateRetrievalFlag};
use akd::storage::{Database, DbSetState, Storable, StorageManager};
use akd::{AkdLabel, AkdValue, Configuration, HistoryParams, NodeLabel, WhatsAppV1Configuration};
use async_trait::async_trait;
use dak_proto::kt::{DeviceKey, encode_devices, label};
use dak_proto::v1;
use dak_store::{KtRecord, KtValueState, Store};

use crate::error::{ApiError, ApiResult};
use dak_proto::v1::ErrorCode;

type Dir = Directory<WhatsAppV1Configuration, KtDb, VrfKey>;
type ReadDir = ReadOnlyDirectory<WhatsAppV1Configuration, KtDb, VrfKey>;

/// Most numbers published in one epoch: an epoch's append-only proof must
/// fit a frame for the auditors (`dak_proto::kt::MAX_AUDIT_PROOF_BYTES`).
const MAX_PER_EPOCH: usize = 64;
/// How often a publish that lost to another node is tried again.
const PUBLISH_TRIES: usize = 8;
/// The `kt_records` kind of an epoch's root hash (id: the epoch, 8 bytes
/// big-endian). akd keeps only the latest root; auditors need each one.
const ROOT_KIND: u8 = 100;
/// The kind of an epoch's append-only proof from the epoch before (id: the
/// epoch), made once and served to every auditor.
const PROOF_KIND: u8 = 102;
/// The kind of the directory's VRF public key (id `vrf`): a node with
/// another key refuses to start rather than write into the directory.
const VRF_KIND: u8 = 103;

/// akd's storage on the project's store (SQLite or PostgreSQL).
#[derive(Clone)]
pub struct KtDb {
    store: Arc<dyn Store>,
}

fn storage_error(e: dak_store::StoreError) -> StorageError {
    match e {
        dak_store::StoreError::Unavailable(m) => StorageError::Connection(m),
        other => StorageError::Other(other.to_string()),
    }
}

fn encode(record: &DbRecord) -> Result<Vec<u8>, StorageError> {
    postcard::to_stdvec(record).map_err(|e| StorageError::Other(format!("encoding a record: {e}")))
}

fn decode(body: &[u8]) -> Result<DbRecord, StorageError> {
    postcard::from_bytes(body)
        .map_err(|e| StorageError::Other(format!("a key-directory record does not read: {e}")))
}

fn decode_state(body: &[u8]) -> Result<ValueState, StorageError> {
    match decode(body)? {
        DbRecord::ValueState(v) => Ok(v),
        _ => Err(StorageError::Other(
            "a value state row holds another record".into(),
        )),
    }
}

fn kind(record: &DbRecord) -> u8 {
    match record {
        DbRecord::Azks(_) => StorageType::Azks as u8,
        DbRecord::TreeNode(_) => StorageType::TreeNode as u8,
        DbRecord::ValueState(_) => StorageType::ValueState as u8,
    }
}

/// The state of `states` (one label's, oldest first) that `flag` asks for.
fn pick(states: &[ValueState], flag: ValueStateRetrievalFlag) -> Option<&ValueState> {
    match flag {
        ValueStateRetrievalFlag::MaxEpoch => states.iter().max_by_key(|s| s.epoch),
        ValueStateRetrievalFlag::MinEpoch => states.iter().min_by_key(|s| s.epoch),
        ValueStateRetrievalFlag::SpecificVersion(v) => states.iter().find(|s| s.version == v),
        ValueStateRetrievalFlag::SpecificEpoch(e) => states.iter().find(|s| s.epoch == e),
        ValueStateRetrievalFlag::LeqEpoch(e) => states
            .iter()
            .filter(|s| s.epoch <= e)
            .max_by_key(|s| s.epoch),
    }
}

impl KtDb {
    async fn states(
        &self,
        labels: &[AkdLabel],
    ) -> Result<HashMap<Vec<u8>, Vec<ValueState>>, StorageError> {
        let raw: Vec<Vec<u8>> = labels.iter().map(|l| l.0.clone()).collect();
        let mut by_label: HashMap<Vec<u8>, Vec<ValueState>> = HashMap::new();
        for chunk in raw.chunks(dak_store::KT_MAX_READ) {
            for row in self.store.kt_states(chunk).await.map_err(storage_error)? {
                by_label
                    .entry(row.label)
                    .or_default()
                    .push(decode_state(&row.body)?);
            }
        }
        Ok(by_label)
    }
}

#[async_trait]
impl Database for KtDb {
    async fn set(&self, record: DbRecord) -> Result<(), StorageError> {
        self.batch_set(vec![record], DbSetState::General).await
    }

    async fn batch_set(
        &self,
        records: Vec<DbRecord>,
        state: DbSetState,
    ) -> Result<(), StorageError> {
        // A transaction's commit (a publish) moves the epoch to its Azks
        // record's, only from the one before it.
        // Writes outside a publish are akd's setup of an empty directory
        // (`Directory::new`): only while it is at epoch 0, so a node that
        // starts late never puts back an epoch-0 head over a published one.
        let (advance, setup) = match state {
            DbSetState::TransactionCommit => (
                records.iter().find_map(|r| match r {
                    DbRecord::Azks(a) if a.latest_epoch > 0 => {
                        Some((a.latest_epoch - 1, a.latest_epoch))
                    }
                    _ => None,
                }),
                false,
            ),
            DbSetState::General => (Some((0, 0)), true),
        };
        let mut rows = Vec::new();
        let mut states = Vec::new();
        // The epoch's root goes in with the epoch itself: akd keeps only
        // the latest, and a root read back later can be a later epoch's
        // (a node keeps one previous version), so this is the one moment
        // it is surely this epoch's.
        let epoch = match advance {
            Some((_, to)) => to,
            None => 0,
        };
        for record in &records {
            if let DbRecord::TreeNode(n) = record
                && n.label == NodeLabel::root()
            {
                let root = WhatsAppV1Configuration::compute_root_hash_from_val(&n.latest_node.hash);
                rows.push(root_record(epoch, &root));
            }
            let body = encode(record)?;
            match record {
                DbRecord::ValueState(v) => states.push(KtValueState {
                    label: v.username.0.clone(),
                    epoch: v.epoch,
                    version: v.version,
                    body,
                }),
                _ => rows.push(KtRecord {
                    kind: kind(record),
                    id: record.get_full_binary_id(),
                    body,
                }),
            }
        }
        let written = self
            .store
            .kt_write(rows, states, advance)
            .await
            .map_err(storage_error)?;
        if !written && setup {
            return Ok(()); // another node has published since: nothing to set up
        }
        if !written {
            return Err(StorageError::Transaction(
                "another node published this epoch first".into(),
            ));
        }
        Ok(())
    }

    async fn get<St: Storable>(&self, id: &St::StorageKey) -> Result<DbRecord, StorageError> {
        self.batch_get::<St>(std::slice::from_ref(id))
            .await?
            .pop()
            .ok_or_else(|| StorageError::NotFound(format!("{:?} {id:?}", St::data_type())))
    }

    async fn batch_get<St: Storable>(
        &self,
        ids: &[St::StorageKey],
    ) -> Result<Vec<DbRecord>, StorageError> {
        if St::data_type() == StorageType::ValueState {
            let mut wanted = Vec::new();
            for id in ids {
                let key = ValueState::key_from_full_binary(&St::get_full_binary_key_id(id))
                    .map_err(StorageError::Other)?;
                wanted.push(key);
            }
            let labels: Vec<AkdLabel> = wanted.iter().map(|k| AkdLabel(k.0.clone())).collect();
            let states = self.states(&labels).await?;
            return Ok(wanted
                .iter()
                .filter_map(|k| {
                    states
                        .get(&k.0)
                        .and_then(|s| s.iter().find(|s| s.epoch == k.1))
                        .map(|s| DbRecord::ValueState(s.clone()))
                })
                .collect());
        }
        let kind = St::data_type() as u8;
        let keys: Vec<Vec<u8>> = ids.iter().map(St::get_full_binary_key_id).collect();
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(dak_store::KT_MAX_READ) {
            for row in self
                .store
                .kt_records(kind, chunk)
                .await
                .map_err(storage_error)?
            {
                out.push(decode(&row.body)?);
            }
        }
        Ok(out)
    }

    async fn get_user_data(&self, username: &AkdLabel) -> Result<KeyData, StorageError> {
        let mut states = self.states(std::slice::from_ref(username)).await?;
        match states.remove(&username.0) {
            Some(mut states) if !states.is_empty() => {
                states.sort_by_key(|s| s.epoch);
                Ok(KeyData { states })
            }
            _ => Err(StorageError::NotFound(format!("ValueState {username:?}"))),
        }
    }

    async fn get_user_state(
        &self,
        username: &AkdLabel,
        flag: ValueStateRetrievalFlag,
    ) -> Result<ValueState, StorageError> {
        let states = self.get_user_data(username).await?.states;
        pick(&states, flag)
            .cloned()
            .ok_or_else(|| StorageError::NotFound(format!("ValueState {username:?}")))
    }

    async fn get_user_state_versions(
        &self,
        usernames: &[AkdLabel],
        flag: ValueStateRetrievalFlag,
    ) -> Result<HashMap<AkdLabel, (u64, AkdValue)>, StorageError> {
        let states = self.states(usernames).await?;
        Ok(states
            .into_iter()
            .filter_map(|(label, s)| {
                pick(&s, flag).map(|s| (AkdLabel(label), (s.version, s.value.clone())))
            })
            .collect())
    }
}

/// The VRF key, read from the data directory at start.
#[derive(Clone)]
pub struct VrfKey(Vec<u8>);

#[async_trait]
impl VRFKeyStorage for VrfKey {
    async fn retrieve(&self) -> Result<Vec<u8>, VrfError> {
        Ok(self.0.clone())
    }
}

/// The key directory every connection of this node uses.
pub struct KeyDirectory {
    /// Publishes only (its storage holds a publish's transaction).
    dir: Dir,
    /// Everything else: its own storage, so that a lookup never reads a
    /// publish's uncommitted records.
    reader: ReadDir,
    /// The store as akd reads it, for the one question akd's API has no
    /// call for: a number's latest published value.
    db: KtDb,
    store: Arc<dyn Store>,
    public_key: Vec<u8>,
    /// Numbers waiting for the next publish.
    waiting: std::sync::Mutex<BTreeSet<String>>,
    /// Held while this node publishes.
    publishing: tokio::sync::Mutex<()>,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %e, "key directory: {what}");
    ApiError::new(
        ErrorCode::Unavailable,
        format!("the key directory cannot {what} just now; try again"),
    )
}

impl KeyDirectory {
    /// Opens the directory in `store` (making it on first use) with the VRF
    /// key `vrf_seed`.
    pub async fn open(store: Arc<dyn Store>, vrf_seed: [u8; 32]) -> anyhow::Result<Arc<Self>> {
        let vrf = VrfKey(vrf_seed.to_vec());
        let public_key = vrf
            .get_vrf_public_key()
            .await
            .map_err(|e| anyhow::anyhow!("the key directory's VRF key: {e}"))?
            .as_bytes()
            .to_vec();
        check_vrf_key(store.as_ref(), &public_key).await?;
        let db = KtDb {
            store: store.clone(),
        };
        let dir = Directory::new(
            StorageManager::new_no_cache(db.clone()),
            vrf.clone(),
            Default::default(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("cannot open the key directory: {e}"))?;
        let reader = ReadOnlyDirectory::new(
            StorageManager::new_no_cache(db.clone()),
            vrf,
            Default::default(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("cannot open the key directory: {e}"))?;
        let directory = Arc::new(KeyDirectory {
            dir,
            reader,
            db,
            store,
            public_key,
            waiting: Default::default(),
            publishing: Default::default(),
        });
        Ok(directory)
    }

    /// Keeps the append-only proof from `epoch - 1` to `epoch` for the
    /// auditors, once it checks against the roots kept with both epochs
    /// (a proof read while other nodes publish can mix later nodes in; it
    /// is then made again when an auditor asks). Returns its encoding.
    async fn prove_step(&self, epoch: u64) -> ApiResult<Option<Vec<u8>>> {
        if epoch == 0 {
            return Ok(None);
        }
        let proof = self
            .reader
            .audit(epoch - 1, epoch)
            .await
            .map_err(|e| unavailable("prove an epoch", e))?;
        let Some(step) = proof.proofs.first() else {
            return Ok(None);
        };
        let [from_root, to_root] = self.roots([epoch - 1, epoch]).await?;
        let (Ok(from_root), Ok(to_root)) = (
            <[u8; 32]>::try_from(from_root.as_slice()),
            <[u8; 32]>::try_from(to_root.as_slice()),
        ) else {
            return Err(unavailable(
                "prove an epoch",
                format!("no root kept for epoch {epoch}"),
            ));
        };
        akd::auditor::verify_consecutive_append_only::<WhatsAppV1Configuration>(
            step, from_root, to_root, epoch,
        )
        .await
        .map_err(|e| unavailable("prove an epoch", e))?;
        let body = dak_proto::kt::encode_audit_proof(step);
        self.store
            .kt_write(
                vec![KtRecord {
                    kind: PROOF_KIND,
                    id: epoch.to_be_bytes().to_vec(),
                    body: body.clone(),
                }],
                vec![],
                None,
            )
            .await?;
        Ok(Some(body))
    }

    /// The roots kept for these epochs (empty where none is).
    async fn roots(&self, epochs: [u64; 2]) -> ApiResult<[Vec<u8>; 2]> {
        let ids: Vec<Vec<u8>> = epochs.iter().map(|e| e.to_be_bytes().to_vec()).collect();
        let rows = self.store.kt_records(ROOT_KIND, &ids).await?;
        Ok(epochs.map(|e| {
            rows.iter()
                .find(|r| r.id == e.to_be_bytes())
                .map(|r| r.body.clone())
                .unwrap_or_default()
        }))
    }

    /// The VRF public key devices pin (`Challenge.key_directory_key`).
    pub fn public_key(&self) -> &[u8] {
        &self.public_key
    }

    /// The number's devices as the store has them now, as the directory's value.
    async fn current_value(&self, phone: &str) -> ApiResult<AkdValue> {
        let devices = match self.store.account_by_phone(phone).await? {
            Some(account) => self.store.devices_of(account.id).await?,
            None => Vec::new(),
        };
        let keys: Vec<DeviceKey> = devices
            .into_iter()
            .filter(|d| d.revoked.is_none())
            .map(|d| DeviceKey {
                device_id: d.id,
                identity_key: d.identity_key,
            })
            .collect();
        Ok(AkdValue(encode_devices(&keys)))
    }

    /// Publishes the numbers' devices as the store has them, and returns
    /// once an epoch holding them is committed (by this call or a
    /// concurrent one). Numbers whose value did not change cost nothing.
    pub async fn publish(&self, phones: &[String]) -> ApiResult<()> {
        self.waiting
            .lock()
            .expect("waiting")
            .extend(phones.iter().cloned());
        let _turn = self.publishing.lock().await;
        loop {
            let batch: Vec<String> = {
                let mut waiting = self.waiting.lock().expect("waiting");
                let batch: Vec<String> = waiting.iter().take(MAX_PER_EPOCH).cloned().collect();
                for p in &batch {
                    waiting.remove(p);
                }
                batch
            };
            if batch.is_empty() {
                return Ok(());
            }
            if let Err(e) = self.publish_batch(&batch).await {
                // Back in line: a caller waiting for one of these must not
                // be told it is published.
                self.waiting.lock().expect("waiting").extend(batch);
                return Err(e);
            }
            // Ours were in the first batch taken (or an earlier publisher
            // took them); later arrivals are published by their own callers.
            if phones
                .iter()
                .all(|p| !self.waiting.lock().expect("waiting").contains(p))
            {
                return Ok(());
            }
        }
    }

    async fn publish_batch(&self, phones: &[String]) -> ApiResult<()> {
        let mut last = None;
        // A node started at the same moment as another with another key
        // may have passed `check_vrf_key`; it never writes.
        let vrf = self.store.kt_records(VRF_KIND, &[b"vrf".to_vec()]).await?;
        if vrf.first().map(|r| r.body.as_slice()) != Some(self.public_key.as_slice()) {
            return Err(unavailable(
                "publish",
                "the store's directory has another VRF key than this node (kt_key)",
            ));
        }
        for _ in 0..PUBLISH_TRIES {
            let mut updates = Vec::with_capacity(phones.len());
            for phone in phones {
                updates.push((AkdLabel(label(phone)), self.current_value(phone).await?));
            }
            match self.dir.publish(updates).await {
                Ok(epoch) => {
                    tracing::debug!(
                        epoch = epoch.epoch(),
                        numbers = phones.len(),
                        "key directory published"
                    );
                    if let Err(e) = self.prove_step(epoch.epoch()).await {
                        // The epoch stands (its root went in with it); its
                        // proof is made when an auditor asks.
                        tracing::warn!(error = %e.0.message, "key directory: epoch published, its append-only proof not kept yet");
                    }
                    return Ok(());
                }
                // Another node moved the epoch: build on top of it.
                Err(akd::errors::AkdError::Storage(StorageError::Transaction(e))) => {
                    last = Some(e);
                }
                Err(e) => return Err(unavailable("publish", e)),
            }
        }
        Err(unavailable(
            "publish",
            last.unwrap_or_else(|| "too many concurrent publishes".into()),
        ))
    }

    /// `publish` for a device change that has already committed: a failure
    /// is logged, not returned, as the change stands and the number's next
    /// lookup publishes it.
    pub async fn device_changed(&self, phone: &str) {
        if let Err(e) = self.publish(&[phone.to_string()]).await {
            tracing::warn!(error = %e.0.message, "a device change is not in the key directory yet; its next lookup publishes it");
        }
    }

    /// The lookup proof for `phone`, once the directory says what the store
    /// says about its devices, and the devices it proves.
    pub async fn lookup(&self, phone: &str) -> ApiResult<(v1::KeyDirectoryProof, Vec<DeviceKey>)> {
        for _ in 0..3 {
            let current = self.current_value(phone).await?;
            match self.reader.lookup(AkdLabel(label(phone))).await {
                Ok((proof, epoch)) if proof.value == current => {
                    let answer = v1::KeyDirectoryProof {
                        epoch: epoch.epoch(),
                        root_hash: epoch.hash().to_vec(),
                        proof: dak_proto::kt::encode_lookup_proof(&proof),
                    };
                    // Checked as the device will: a proof read while two
                    // publishes landed can mix a later epoch's nodes in.
                    match dak_proto::kt::verify_lookup(
                        &self.public_key,
                        answer.epoch,
                        &answer.root_hash,
                        phone,
                        &answer.proof,
                    ) {
                        Ok(proven) => return Ok((answer, proven.devices)),
                        Err(e) => {
                            tracing::debug!(error = %e, "key directory: a lookup proof did not check; again")
                        }
                    }
                }
                // Behind the store (a publish lost to a crash), or never
                // published (an account from before key transparency).
                Ok(_) | Err(akd::errors::AkdError::Storage(StorageError::NotFound(_))) => {
                    self.publish(&[phone.to_string()]).await?;
                }
                Err(e) => return Err(unavailable("look up a number", e)),
            }
        }
        Err(unavailable(
            "look up a number",
            "its devices changed during the lookup, or its proof did not check",
        ))
    }

    /// The history proof of `phone`'s most recent values.
    pub async fn history(&self, phone: &str) -> ApiResult<v1::KeyDirectoryProof> {
        // The caller's own devices are published first, as for a lookup,
        // from one read of the latest value (not a whole lookup proof).
        let latest = self
            .db
            .get_user_state(&AkdLabel(label(phone)), ValueStateRetrievalFlag::MaxEpoch)
            .await
            .map(|s| s.value);
        match latest {
            Ok(value) if value == self.current_value(phone).await? => {}
            Ok(_) | Err(StorageError::NotFound(_)) => self.publish(&[phone.to_string()]).await?,
            Err(e) => return Err(unavailable("prove a number's history", e)),
        }
        let params = HistoryParams::MostRecent(dak_proto::kt::HISTORY_UPDATES);
        let mut last = String::new();
        for _ in 0..3 {
            let (proof, epoch) = self
                .reader
                .key_history(&AkdLabel(label(phone)), params)
                .await
                .map_err(|e| unavailable("prove a number's history", e))?;
            let answer = v1::KeyDirectoryProof {
                epoch: epoch.epoch(),
                root_hash: epoch.hash().to_vec(),
                proof: dak_proto::kt::encode_history_proof(&proof),
            };
            // Checked as the device will (see `lookup`).
            match dak_proto::kt::verify_history(
                &self.public_key,
                answer.epoch,
                &answer.root_hash,
                phone,
                &answer.proof,
            ) {
                Ok(_) => return Ok(answer),
                Err(e) => last = e.to_string(),
            }
        }
        Err(unavailable("prove a number's history", last))
    }

    /// One step of the append-only proof, from `from` to `from + 1`, with
    /// both roots; only the latest epoch when `from` is not below it. Read
    /// from the rows each publish keeps; a step missing there (its node
    /// crashed right after publishing) is proven once and kept.
    pub async fn audit(&self, from: u64) -> ApiResult<v1::KeyAudit> {
        let latest = self.store.kt_epoch().await?;
        let mut answer = v1::KeyAudit {
            from,
            latest_epoch: latest,
            ..Default::default()
        };
        if from >= latest {
            return Ok(answer);
        }
        let to = from + 1;
        let [from_root, to_root] = self.roots([from, to]).await?;
        answer.from_root = from_root;
        answer.to_root = to_root;
        let stored = self
            .store
            .kt_records(PROOF_KIND, &[to.to_be_bytes().to_vec()])
            .await?;
        answer.proof = match stored.into_iter().next() {
            Some(row) => row.body,
            None => self.prove_step(to).await?.unwrap_or_default(),
        };
        Ok(answer)
    }
}

fn root_record(epoch: u64, root: &[u8; 32]) -> KtRecord {
    KtRecord {
        kind: ROOT_KIND,
        id: epoch.to_be_bytes().to_vec(),
        body: root.to_vec(),
    }
}

/// Keeps the directory's VRF public key in the store at first start, and
/// refuses to go on with another one: every node of a cluster must use the
/// same key (`kt_key`), or the directory's labels would mix two keys.
async fn check_vrf_key(store: &dyn Store, public_key: &[u8]) -> anyhow::Result<()> {
    // The first node's key stays: two nodes starting at once get the same
    // answer, one of them a refusal.
    let stored = store
        .kt_put_first(KtRecord {
            kind: VRF_KIND,
            id: b"vrf".to_vec(),
            body: public_key.to_vec(),
        })
        .await?;
    if stored != public_key {
        anyhow::bail!(
            "the key directory in the store was made with another VRF key than this node's \
             (kt_key): copy the first node's kt-vrf.key to every node"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(epoch: u64, version: u64) -> ValueState {
        let mut s = DbRecord::build_user_state(
            b"+919800000001".to_vec(),
            vec![version as u8],
            version,
            0,
            [0; 32],
            epoch,
        );
        s.version = version;
        s
    }

    /// Two nodes on one store (two directories, as a cluster has): they
    /// publish in turn and at once without forking the directory, every
    /// epoch's step checks against the roots kept with it, both serve the
    /// latest devices, and a node with another VRF key is refused.
    #[tokio::test]
    async fn two_nodes_share_one_directory_and_another_vrf_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(dak_store::SqliteStore::open(&dir.path().join("s.db")).unwrap());
        let (p1, p2) = ("+919800000001".to_string(), "+919800000002".to_string());
        for (p, k) in [(&p1, 1u8), (&p2, 2)] {
            store.register_primary(p, &[k; 32], "p", 1).await.unwrap();
        }
        let a = KeyDirectory::open(store.clone(), [7; 32]).await.unwrap();
        let b = KeyDirectory::open(store.clone(), [7; 32]).await.unwrap();
        a.publish(std::slice::from_ref(&p1)).await.unwrap();
        b.publish(std::slice::from_ref(&p2)).await.unwrap();
        for (p, k) in [(&p1, 3u8), (&p2, 4)] {
            store.register_primary(p, &[k; 32], "p", 1).await.unwrap();
        }
        let (x, y) = tokio::join!(
            a.publish(std::slice::from_ref(&p1)),
            b.publish(std::slice::from_ref(&p2))
        );
        x.unwrap();
        y.unwrap();
        let epoch = store.kt_epoch().await.unwrap();
        assert_eq!(epoch, 4);
        for from in 0..epoch {
            let step = b.audit(from).await.unwrap();
            let proof = dak_proto::kt::decode_audit_proof(&step.proof).unwrap();
            akd::auditor::verify_consecutive_append_only::<WhatsAppV1Configuration>(
                &proof,
                step.from_root.as_slice().try_into().unwrap(),
                step.to_root.as_slice().try_into().unwrap(),
                from + 1,
            )
            .await
            .unwrap_or_else(|e| panic!("step {from}: {e}"));
        }
        for (node, p, k) in [(&a, &p2, 4u8), (&b, &p1, 3)] {
            let (_, devices) = node.lookup(p).await.unwrap();
            assert_eq!(devices.len(), 1);
            assert_eq!(devices[0].identity_key, vec![k; 32]);
        }
        let refused = KeyDirectory::open(store.clone(), [8; 32])
            .await
            .err()
            .unwrap();
        assert!(refused.to_string().contains("another VRF key"), "{refused}");
    }

    #[test]
    fn a_label_state_is_picked_as_akd_asks() {
        let states = vec![state(2, 1), state(5, 2), state(9, 3)];
        let epoch = |f| pick(&states, f).map(|s| s.epoch);
        assert_eq!(epoch(ValueStateRetrievalFlag::MaxEpoch), Some(9));
        assert_eq!(epoch(ValueStateRetrievalFlag::MinEpoch), Some(2));
        assert_eq!(epoch(ValueStateRetrievalFlag::LeqEpoch(8)), Some(5));
        assert_eq!(epoch(ValueStateRetrievalFlag::LeqEpoch(5)), Some(5));
        assert_eq!(epoch(ValueStateRetrievalFlag::LeqEpoch(1)), None);
        assert_eq!(epoch(ValueStateRetrievalFlag::SpecificEpoch(5)), Some(5));
        assert_eq!(epoch(ValueStateRetrievalFlag::SpecificEpoch(6)), None);
        assert_eq!(epoch(ValueStateRetrievalFlag::SpecificVersion(3)), Some(9));
    }
}
