//! Moving openmls_sqlite_storage's tables into `mls_kv`.
//!
//! Profiles written before `mls_kv` keep their MLS state in the tables the
//! `openmls_sqlite_storage` 0.3 crate created in `profile.db` (`openmls_*`,
//! its migrations recorded in `openmls_sqlite_storage_migrations`), values
//! and keys encoded by a serde_json codec. Nothing reads those tables any
//! more: `dak_core::mls_storage::MlsStorage` reads `mls_kv`. `migrate`, run
//! each time a profile is opened, moves such a profile's records over once.
//!
//! The values are the same JSON in both stores, so moving is re-keying:
//! - a row of `openmls_group_data` is one record keyed by its group id,
//!   under the label its `data_type` maps to (`GROUP_DATA`);
//! - a row of a crypto-object table is one record under the same key (a
//!   public key, a KeyPackage reference, a PSK id; `BY_KEY`);
//! - a group's own leaf nodes (oldest first) and its proposal references (in
//!   the order they were queued) become one list record each, and each
//!   proposal is keyed `[group, proposal ref]`;
//! - epoch key pairs are keyed `[group, epoch, leaf index]`.
//!
//! Keys are encoded by `mls_storage::encode` from the openmls key types
//! (decoded from the old columns), so a moved record sits under the very key
//! `MlsStorage`'s getter asks for.
//!
//! Invariants:
//! - **One transaction** (`BEGIN IMMEDIATE`, so two processes opening the
//!   profile cannot both move it): every record is copied and every old table
//!   dropped, or nothing changes and the open fails with `ClientError::Store`.
//! - **Once**: the old tables go, so the next open finds nothing to do; a
//!   profile without them is not touched (one look at `sqlite_master`).
//! - **Nothing is dropped unmoved**: a row this module cannot map (a
//!   `data_type` with no label, a row in a table of the crate's
//!   virtual-clients feature, which dak never enabled) fails the migration.
//!   Rows of another provider version, which the crate never read, are not
//!   moved.
//! - **`mls_kv` wins**: a record already there under the same key is newer
//!   than the old tables and is kept.

use std::collections::BTreeMap;
use std::path::Path;

use dak_core::ClientError;
use dak_core::mls_storage::{MlsStorageError, encode, label};
use openmls::ciphersuite::hash_ref::ProposalRef;
use openmls::prelude::{GroupEpoch, GroupId};
use openmls_traits::storage::CURRENT_VERSION;
use rusqlite::{Connection, TransactionBehavior, params};
use serde_json::Value;

/// `openmls_group_data.data_type` → the label of its records. The crate's
/// other two types (`use_ratchet_tree_extension`, never written by 0.3, and
/// `application_export_tree`, behind a feature dak never enabled) have none.
const GROUP_DATA: &[(&str, &str)] = &[
    ("join_group_config", label::JOIN_CONFIG),
    ("tree", label::TREE),
    ("interim_transcript_hash", label::TRANSCRIPT_HASH),
    ("context", label::CONTEXT),
    ("confirmation_tag", label::CONFIRMATION_TAG),
    ("group_state", label::GROUP_STATE),
    ("message_secrets", label::MESSAGE_SECRETS),
    ("resumption_psk_store", label::RESUMPTION_PSKS),
    ("own_leaf_index", label::OWN_LEAF_INDEX),
    ("group_epoch_secrets", label::EPOCH_SECRETS),
];

/// Tables of records not tied to a group: (table, key column, value column,
/// label). Key and value move as they are.
const BY_KEY: &[(&str, &str, &str, &str)] = &[
    (
        "openmls_signature_keys",
        "public_key",
        "signature_key",
        label::SIGNATURE_KEY,
    ),
    (
        "openmls_encryption_keys",
        "public_key",
        "key_pair",
        label::ENCRYPTION_KEY,
    ),
    (
        "openmls_key_packages",
        "key_package_ref",
        "key_package",
        label::KEY_PACKAGE,
    ),
    ("openmls_psks", "psk_id", "psk_bundle", label::PSK),
];

/// The provider version the crate wrote (its `STORAGE_PROVIDER_VERSION`),
/// and the only one it read: rows of another were invisible to it and are not
/// moved. Its records are those of openmls's current storage version, whose
/// JSON `MlsStorage` reads.
const VERSION: u16 = 1;
const _: () = assert!(VERSION == CURRENT_VERSION);

const GROUP_DATA_TABLE: &str = "openmls_group_data";
const OWN_LEAF_NODES_TABLE: &str = "openmls_own_leaf_nodes";
const PROPOSALS_TABLE: &str = "openmls_proposals";
const EPOCH_KEY_PAIRS_TABLE: &str = "openmls_epoch_keys_pairs";

/// Tables the crate's migrations create for its virtual-clients feature
/// (which dak never enabled): dropped when empty, never moved.
const UNUSED_TABLES: &[&str] = &[
    "vc_emulation_group_secrets",
    "vc_emulation_bindings",
    "vc_operation_trees",
    "vc_retained_key_package_material",
    "registered_vc_emulation_epochs",
];

/// refinery's record of the crate's migrations (the name its
/// `run_migrations` sets, which is what dak called).
const MIGRATIONS_TABLE: &str = "openmls_sqlite_storage_migrations";

/// Every table the crate created: all go once their records have moved.
fn old_tables() -> impl Iterator<Item = &'static str> {
    BY_KEY
        .iter()
        .map(|t| t.0)
        .chain([
            GROUP_DATA_TABLE,
            OWN_LEAF_NODES_TABLE,
            PROPOSALS_TABLE,
            EPOCH_KEY_PAIRS_TABLE,
        ])
        .chain(UNUSED_TABLES.iter().copied())
        .chain([MIGRATIONS_TABLE])
}

/// Why the old tables could not be moved.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("{0}")]
    Sql(#[from] rusqlite::Error),
    #[error("a key in `{table}` does not decode: {source}")]
    Key {
        table: &'static str,
        source: serde_json::Error,
    },
    #[error("a value in `{table}` is not JSON: {source}")]
    Value {
        table: &'static str,
        source: serde_json::Error,
    },
    #[error("{0}")]
    Encode(#[from] MlsStorageError),
    #[error("`{table}` holds {what}, which has no place in mls_kv")]
    Unmapped { table: &'static str, what: String },
    #[error("a leaf index in `{EPOCH_KEY_PAIRS_TABLE}` is out of range: {0}")]
    LeafIndex(i64),
}

/// Moves a profile's MLS state out of openmls_sqlite_storage's tables into
/// `mls_kv` and drops them, in one transaction. `Ok(true)` if there were old
/// tables (now gone), `Ok(false)` if there were none (nothing was touched).
pub(crate) fn migrate(conn: &mut Connection, path: &Path) -> Result<bool, ClientError> {
    run(conn).map_err(|e| ClientError::Store {
        path: path.display().to_string(),
        message: format!(
            "moving the MLS state from openmls_sqlite_storage's tables into mls_kv failed, \
             so the profile was left as it was: {e}"
        ),
    })
}

fn run(conn: &mut Connection) -> Result<bool, Failure> {
    if present(conn)?.is_empty() {
        return Ok(false);
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Again under the write lock: another process may have moved them.
    let tables = present(&tx)?;
    if tables.is_empty() {
        return Ok(false);
    }
    let has = |t: &str| tables.iter().any(|p| p == t);
    for table in UNUSED_TABLES.iter().copied().filter(|t| has(t)) {
        let rows: i64 = tx.query_row(&format!("SELECT count(*) FROM \"{table}\""), [], |r| {
            r.get(0)
        })?;
        if rows > 0 {
            return Err(Failure::Unmapped {
                table,
                what: format!("{rows} rows"),
            });
        }
    }
    if has(GROUP_DATA_TABLE) {
        move_group_data(&tx)?;
    }
    if has(OWN_LEAF_NODES_TABLE) {
        move_own_leaf_nodes(&tx)?;
    }
    if has(PROPOSALS_TABLE) {
        move_proposals(&tx)?;
    }
    if has(EPOCH_KEY_PAIRS_TABLE) {
        move_epoch_key_pairs(&tx)?;
    }
    for &(table, key, value, label) in BY_KEY.iter().filter(|t| has(t.0)) {
        for (k, v) in select::<(Vec<u8>, Vec<u8>)>(
            &tx,
            &format!("SELECT {key}, {value} FROM {table} WHERE provider_version = ?1"),
            [VERSION],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )? {
            put(&tx, label, &k, &v)?;
        }
    }
    for table in &tables {
        tx.execute_batch(&format!("DROP TABLE \"{table}\""))?;
    }
    tx.commit()?;
    Ok(true)
}

/// The crate's tables this profile has.
fn present(conn: &Connection) -> Result<Vec<String>, Failure> {
    let names = select::<String>(
        conn,
        "SELECT name FROM sqlite_master WHERE type = 'table'",
        [],
        |r| r.get(0),
    )?;
    Ok(names
        .into_iter()
        .filter(|n| old_tables().any(|t| t == n))
        .collect())
}

fn select<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    row: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>, Failure> {
    let mut stmt = conn.prepare(sql)?;
    let rows = stmt
        .query_map(params, row)?
        .collect::<rusqlite::Result<Vec<T>>>()?;
    Ok(rows)
}

fn put(conn: &Connection, label: &str, key: &[u8], value: &[u8]) -> Result<(), Failure> {
    conn.prepare_cached(
        "INSERT INTO mls_kv (label, key, value) VALUES (?1, ?2, ?3) \
         ON CONFLICT(label, key) DO NOTHING",
    )?
    .execute(params![label.as_bytes(), key, value])?;
    Ok(())
}

fn group_id(table: &'static str, bytes: &[u8]) -> Result<GroupId, Failure> {
    serde_json::from_slice(bytes).map_err(|source| Failure::Key { table, source })
}

fn json(table: &'static str, bytes: &[u8]) -> Result<Value, Failure> {
    serde_json::from_slice(bytes).map_err(|source| Failure::Value { table, source })
}

fn move_group_data(tx: &Connection) -> Result<(), Failure> {
    let rows = select::<(Vec<u8>, String, Vec<u8>)>(
        tx,
        "SELECT group_id, data_type, group_data FROM openmls_group_data \
         WHERE provider_version = ?1",
        [VERSION],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    for (group, data_type, value) in rows {
        let Some(&(_, label)) = GROUP_DATA.iter().find(|(t, _)| *t == data_type) else {
            return Err(Failure::Unmapped {
                table: GROUP_DATA_TABLE,
                what: format!("`{data_type}` data"),
            });
        };
        let key = encode(label, &group_id(GROUP_DATA_TABLE, &group)?)?;
        put(tx, label, &key, &value)?;
    }
    Ok(())
}

/// Each group's list record, from rows in list order (`rows` yields the
/// group id's column and an item).
fn put_lists(
    tx: &Connection,
    table: &'static str,
    label: &'static str,
    rows: Vec<(Vec<u8>, Value)>,
) -> Result<(), Failure> {
    let mut lists: BTreeMap<Vec<u8>, Vec<Value>> = BTreeMap::new();
    for (group, item) in rows {
        lists.entry(group).or_default().push(item);
    }
    for (group, list) in lists {
        let key = encode(label, &group_id(table, &group)?)?;
        put(tx, label, &key, &encode(label, &list)?)?;
    }
    Ok(())
}

/// Oldest first: `id` is the crate's AUTOINCREMENT.
fn move_own_leaf_nodes(tx: &Connection) -> Result<(), Failure> {
    let rows = select::<(Vec<u8>, Vec<u8>)>(
        tx,
        "SELECT group_id, leaf_node FROM openmls_own_leaf_nodes \
         WHERE provider_version = ?1 ORDER BY id",
        [VERSION],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let rows = rows
        .into_iter()
        .map(|(g, leaf)| Ok((g, json(OWN_LEAF_NODES_TABLE, &leaf)?)))
        .collect::<Result<Vec<_>, Failure>>()?;
    put_lists(tx, OWN_LEAF_NODES_TABLE, label::OWN_LEAF_NODES, rows)
}

/// In the order they were queued: rows were only ever inserted (`INSERT OR
/// IGNORE`) or deleted, so rowid order is queue order.
fn move_proposals(tx: &Connection) -> Result<(), Failure> {
    let rows = select::<(Vec<u8>, Vec<u8>, Vec<u8>)>(
        tx,
        "SELECT group_id, proposal_ref, proposal FROM openmls_proposals \
         WHERE provider_version = ?1 ORDER BY rowid",
        [VERSION],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let mut refs = Vec::with_capacity(rows.len());
    for (group, proposal_ref, proposal) in rows {
        let gid = group_id(PROPOSALS_TABLE, &group)?;
        let pref: ProposalRef =
            serde_json::from_slice(&proposal_ref).map_err(|source| Failure::Key {
                table: PROPOSALS_TABLE,
                source,
            })?;
        put(
            tx,
            label::PROPOSAL,
            &encode(label::PROPOSAL, &(&gid, &pref))?,
            &proposal,
        )?;
        refs.push((group, json(PROPOSALS_TABLE, &proposal_ref)?));
    }
    put_lists(tx, PROPOSALS_TABLE, label::PROPOSAL_REFS, refs)
}

fn move_epoch_key_pairs(tx: &Connection) -> Result<(), Failure> {
    let rows = select::<(Vec<u8>, Vec<u8>, i64, Vec<u8>)>(
        tx,
        "SELECT group_id, epoch_id, leaf_index, key_pairs FROM openmls_epoch_keys_pairs \
         WHERE provider_version = ?1",
        [VERSION],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    for (group, epoch, leaf, key_pairs) in rows {
        let gid = group_id(EPOCH_KEY_PAIRS_TABLE, &group)?;
        let epoch: GroupEpoch = serde_json::from_slice(&epoch).map_err(|source| Failure::Key {
            table: EPOCH_KEY_PAIRS_TABLE,
            source,
        })?;
        let leaf = u32::try_from(leaf).map_err(|_| Failure::LeafIndex(leaf))?;
        let key = encode(label::EPOCH_KEY_PAIRS, &(&gid, &epoch, leaf))?;
        put(tx, label::EPOCH_KEY_PAIRS, &key, &key_pairs)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use dak_core::mls::Provider;
    use dak_core::mls_storage::MlsStorage;
    use dak_core::{ClientError, ProfileStore};
    use dak_proto::mls::CIPHERSUITE;
    use openmls::ciphersuite::hash_ref::ProposalRef;
    use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
    use openmls::prelude::{
        BasicCredential, CredentialWithKey, GroupEpoch, GroupId, KeyPackage, LeafNodeParameters,
        MlsGroup, MlsGroupCreateConfig, MlsGroupJoinConfig, MlsMessageBodyIn, MlsMessageIn,
        MlsMessageOut, ProcessedMessageContent, ProtocolVersion, StagedWelcome,
    };
    use openmls_basic_credential::SignatureKeyPair;
    use openmls_rust_crypto::RustCrypto;
    use openmls_traits::OpenMlsProvider;
    use rusqlite::{Connection, params};
    use serde_json::Value;

    use crate::SqliteProfile;

    /// openmls_sqlite_storage 0.3's tables as its migrations left them
    /// (V1, V2's widened `data_type` check left out), a table of its
    /// virtual-clients feature and refinery's record of the migrations.
    const OLD_SCHEMA: &str = r#"
CREATE TABLE openmls_encryption_keys (
    provider_version INTEGER NOT NULL, public_key BLOB PRIMARY KEY, key_pair BLOB NOT NULL);
CREATE TABLE openmls_epoch_keys_pairs (
    provider_version INTEGER NOT NULL, group_id BLOB NOT NULL, epoch_id BLOB NOT NULL,
    leaf_index INTEGER NOT NULL, key_pairs BLOB NOT NULL,
    PRIMARY KEY (group_id, epoch_id, leaf_index));
CREATE TABLE openmls_group_data (
    provider_version INTEGER NOT NULL, group_id BLOB NOT NULL, data_type TEXT NOT NULL,
    group_data BLOB NOT NULL, PRIMARY KEY (group_id, data_type));
CREATE TABLE openmls_key_packages (
    provider_version INTEGER NOT NULL, key_package_ref BLOB PRIMARY KEY,
    key_package BLOB NOT NULL);
CREATE TABLE openmls_own_leaf_nodes (
    provider_version INTEGER NOT NULL, id INTEGER PRIMARY KEY AUTOINCREMENT,
    group_id BLOB NOT NULL, leaf_node BLOB NOT NULL);
CREATE TABLE openmls_proposals (
    provider_version INTEGER NOT NULL, group_id BLOB NOT NULL, proposal_ref BLOB NOT NULL,
    proposal BLOB NOT NULL, PRIMARY KEY (group_id, proposal_ref));
CREATE TABLE openmls_psks (
    provider_version INTEGER NOT NULL, psk_id BLOB PRIMARY KEY, psk_bundle BLOB NOT NULL);
CREATE TABLE openmls_signature_keys (
    provider_version INTEGER NOT NULL, public_key BLOB PRIMARY KEY,
    signature_key BLOB NOT NULL);
CREATE TABLE vc_emulation_bindings (
    provider_version INTEGER NOT NULL, group_id BLOB NOT NULL, bindings BLOB NOT NULL,
    PRIMARY KEY (group_id));
CREATE TABLE openmls_sqlite_storage_migrations (
    version INT4 PRIMARY KEY, name VARCHAR(255), applied_on VARCHAR(255),
    checksum VARCHAR(255));
INSERT INTO openmls_sqlite_storage_migrations VALUES (1, 'initial', '', '0');
"#;

    /// The old `data_type` of each group label, written out here rather than
    /// taken from `GROUP_DATA`, so a wrong pairing there shows.
    const OLD_GROUP_DATA: &[(&str, &str)] = &[
        ("join_config", "join_group_config"),
        ("tree", "tree"),
        ("transcript_hash", "interim_transcript_hash"),
        ("context", "context"),
        ("confirmation_tag", "confirmation_tag"),
        ("group_state", "group_state"),
        ("message_secrets", "message_secrets"),
        ("resumption_psks", "resumption_psk_store"),
        ("own_leaf_index", "own_leaf_index"),
        ("epoch_secrets", "group_epoch_secrets"),
    ];

    /// (label, key) → value.
    type Records = BTreeMap<(String, Vec<u8>), Vec<u8>>;

    fn db(dir: &Path) -> Connection {
        Connection::open(dir.join("profile.db")).unwrap()
    }

    fn records(conn: &Connection) -> Records {
        let mut stmt = conn
            .prepare("SELECT label, key, value FROM mls_kv")
            .unwrap();
        stmt.query_map([], |r| {
            let label: Vec<u8> = r.get(0)?;
            Ok(((String::from_utf8(label).unwrap(), r.get(1)?), r.get(2)?))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    }

    /// Every schema object, and every record.
    fn everything(conn: &Connection) -> (Vec<(String, String)>, Records) {
        let mut stmt = conn
            .prepare("SELECT name, ifnull(sql, '') FROM sqlite_master ORDER BY name")
            .unwrap();
        let schema = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        (schema, records(conn))
    }

    fn old_tables_left(conn: &Connection) -> Vec<String> {
        everything(conn)
            .0
            .into_iter()
            .map(|(name, _)| name)
            .filter(|n| n.starts_with("openmls_") || n.starts_with("vc_"))
            .collect()
    }

    /// Files `records` (as `MlsStorage` wrote them) the way
    /// openmls_sqlite_storage did, in the old tables.
    fn write_old_tables(conn: &Connection, records: &Records) {
        conn.execute_batch(OLD_SCHEMA).unwrap();
        let group = |key: &[u8]| -> Vec<u8> {
            let gid: GroupId = serde_json::from_slice(key).unwrap();
            serde_json::to_vec(&gid).unwrap()
        };
        for ((label, key), value) in records {
            if let Some((_, old)) = OLD_GROUP_DATA.iter().find(|(l, _)| l == label) {
                conn.execute(
                    "INSERT INTO openmls_group_data VALUES (1, ?1, ?2, ?3)",
                    params![group(key), old, value],
                )
                .unwrap();
                continue;
            }
            match label.as_str() {
                "own_leaf_nodes" => {
                    let leaves: Vec<Value> = serde_json::from_slice(value).unwrap();
                    for leaf in leaves {
                        conn.execute(
                            "INSERT INTO openmls_own_leaf_nodes \
                             (provider_version, group_id, leaf_node) VALUES (1, ?1, ?2)",
                            params![group(key), serde_json::to_vec(&leaf).unwrap()],
                        )
                        .unwrap();
                    }
                }
                // Queue order: the proposals go in by the list.
                "proposal_refs" => {
                    let refs: Vec<ProposalRef> = serde_json::from_slice(value).unwrap();
                    for r in refs {
                        let gid: GroupId = serde_json::from_slice(key).unwrap();
                        let proposal = &records[&(
                            "proposal".to_string(),
                            serde_json::to_vec(&(&gid, &r)).unwrap(),
                        )];
                        conn.execute(
                            "INSERT INTO openmls_proposals VALUES (1, ?1, ?2, ?3)",
                            params![group(key), serde_json::to_vec(&r).unwrap(), proposal],
                        )
                        .unwrap();
                    }
                }
                "proposal" => {}
                "epoch_key_pairs" => {
                    let (gid, epoch, leaf): (GroupId, GroupEpoch, u32) =
                        serde_json::from_slice(key).unwrap();
                    conn.execute(
                        "INSERT INTO openmls_epoch_keys_pairs VALUES (1, ?1, ?2, ?3, ?4)",
                        params![
                            serde_json::to_vec(&gid).unwrap(),
                            serde_json::to_vec(&epoch).unwrap(),
                            leaf,
                            value
                        ],
                    )
                    .unwrap();
                }
                other => {
                    let table = match other {
                        "signature_key" => "openmls_signature_keys",
                        "encryption_key" => "openmls_encryption_keys",
                        "key_package" => "openmls_key_packages",
                        "psk" => "openmls_psks",
                        _ => panic!("a record under `{other}`"),
                    };
                    conn.execute(
                        &format!("INSERT INTO {table} VALUES (1, ?1, ?2)"),
                        params![key, value],
                    )
                    .unwrap();
                }
            }
        }
    }

    fn provider(store: &SqliteProfile) -> Provider<'_> {
        Provider::new(store)
    }

    fn identity(name: &str) -> (SignatureKeyPair, CredentialWithKey) {
        let signer = SignatureKeyPair::new(CIPHERSUITE.signature_algorithm()).unwrap();
        let credential = CredentialWithKey {
            credential: BasicCredential::new(name.as_bytes().to_vec()).into(),
            signature_key: signer.public().into(),
        };
        (signer, credential)
    }

    fn key_package(
        store: &SqliteProfile,
        signer: &SignatureKeyPair,
        credential: &CredentialWithKey,
    ) -> KeyPackage {
        let bundle = KeyPackage::builder()
            .build(CIPHERSUITE, &provider(store), signer, credential.clone())
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

    fn wire(m: &MlsMessageOut) -> MlsMessageIn {
        MlsMessageIn::tls_deserialize_exact(m.tls_serialize_detached().unwrap()).unwrap()
    }

    fn load(store: &SqliteProfile, group: &GroupId) -> MlsGroup {
        MlsGroup::load(&MlsStorage::new(store), group)
            .unwrap()
            .expect("group stored")
    }

    /// `from` encrypts `text`; `to` decrypts it, both from their stores.
    fn send(
        from: &SqliteProfile,
        signer: &SignatureKeyPair,
        to: &SqliteProfile,
        group: &GroupId,
        text: &[u8],
    ) {
        let out = load(from, group)
            .create_message(&provider(from), signer, text)
            .unwrap();
        let processed = load(to, group)
            .process_message(
                &provider(to),
                wire(&out).try_into_protocol_message().unwrap(),
            )
            .unwrap();
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(m) => assert_eq!(m.into_bytes(), text),
            other => panic!("expected an application message, got {other:?}"),
        }
    }

    /// Alice (her profile in `dir`) and Bob (in memory) in a conversation;
    /// Alice has sent a message and proposed updating her leaf, so her store
    /// holds every kind of record but a PSK: group data, epoch key pairs, a
    /// queued proposal and her own leaf node, a published KeyPackage, keys.
    struct Conversation {
        alice: SqliteProfile,
        alice_signer: SignatureKeyPair,
        bob: SqliteProfile,
        bob_signer: SignatureKeyPair,
        group: GroupId,
        /// Alice's self-update proposal, for Bob.
        proposal: MlsMessageOut,
    }

    fn conversation(dir: &Path) -> Conversation {
        let alice = SqliteProfile::open(dir).unwrap();
        let bob = SqliteProfile::open_in_memory().unwrap();
        let (alice_signer, alice_cred) = identity("alice");
        let (bob_signer, bob_cred) = identity("bob");
        alice_signer.store(provider(&alice).storage()).unwrap();
        key_package(&alice, &alice_signer, &alice_cred);
        let bob_kp = key_package(&bob, &bob_signer, &bob_cred);
        let config = MlsGroupCreateConfig::builder()
            .ciphersuite(CIPHERSUITE)
            .use_ratchet_tree_extension(true)
            .max_past_epochs(2)
            .build();
        let ap = provider(&alice);
        let mut ag = MlsGroup::new(&ap, &alice_signer, &config, alice_cred).unwrap();
        let (_, welcome, _) = ag.add_members(&ap, &alice_signer, &[bob_kp]).unwrap();
        ag.merge_pending_commit(&ap).unwrap();
        let MlsMessageBodyIn::Welcome(welcome) = wire(&welcome).extract() else {
            panic!("not a Welcome");
        };
        let join = MlsGroupJoinConfig::builder()
            .use_ratchet_tree_extension(true)
            .max_past_epochs(2)
            .build();
        let bp = provider(&bob);
        StagedWelcome::new_from_welcome(&bp, &join, welcome, None)
            .unwrap()
            .into_group(&bp)
            .unwrap();
        let group = ag.group_id().clone();
        send(&alice, &alice_signer, &bob, &group, b"before");
        let (proposal, _) = load(&alice, &group)
            .propose_self_update(&ap, &alice_signer, LeafNodeParameters::default())
            .unwrap();
        Conversation {
            alice,
            alice_signer,
            bob,
            bob_signer,
            group,
            proposal,
        }
    }

    #[test]
    fn old_tables_move_once_into_the_records_mls_storage_reads() {
        let dir = tempfile::tempdir().unwrap();
        let c = conversation(dir.path());
        let written = records(&db(dir.path()));
        let labels: Vec<&str> = written.keys().map(|(l, _)| l.as_str()).collect();
        for l in [
            "tree",
            "own_leaf_nodes",
            "proposal_refs",
            "proposal",
            "epoch_key_pairs",
            "key_package",
            "encryption_key",
            "signature_key",
        ] {
            assert!(labels.contains(&l), "no `{l}` record: {labels:?}");
        }

        // The same state as openmls_sqlite_storage kept it, and mls_kv
        // emptied: what a profile of the previous release holds.
        let Conversation {
            alice,
            alice_signer,
            bob,
            bob_signer,
            group,
            proposal,
        } = c;
        drop(alice);
        {
            let conn = db(dir.path());
            write_old_tables(&conn, &written);
            conn.execute("DELETE FROM mls_kv", []).unwrap();
        }

        // Opening moves it: record for record what MlsStorage wrote.
        let alice = SqliteProfile::open(dir.path()).unwrap();
        let mut conn = db(dir.path());
        assert_eq!(records(&conn), written);
        assert_eq!(old_tables_left(&conn), Vec::<String>::new());

        // Once: opening again, or migrating again, changes nothing.
        let after = everything(&conn);
        drop(SqliteProfile::open(dir.path()).unwrap());
        assert!(!super::migrate(&mut conn, dir.path()).unwrap());
        assert_eq!(everything(&conn), after);

        // And openmls carries on from it: Bob commits Alice's proposal, which
        // she applies with the leaf she kept, then they talk.
        let bp = provider(&bob);
        let mut bg = load(&bob, &group);
        let processed = bg
            .process_message(&bp, wire(&proposal).try_into_protocol_message().unwrap())
            .unwrap();
        let ProcessedMessageContent::ProposalMessage(p) = processed.into_content() else {
            panic!("expected a proposal");
        };
        bg.store_pending_proposal(bp.storage(), *p).unwrap();
        let (commit, _, _) = bg.commit_to_pending_proposals(&bp, &bob_signer).unwrap();
        bg.merge_pending_commit(&bp).unwrap();
        let ap = provider(&alice);
        let mut ag = load(&alice, &group);
        assert_eq!(ag.pending_proposals().count(), 1);
        let processed = ag
            .process_message(&ap, wire(&commit).try_into_protocol_message().unwrap())
            .unwrap();
        let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() else {
            panic!("expected a commit");
        };
        ag.merge_staged_commit(&ap, *staged).unwrap();
        send(&alice, &alice_signer, &bob, &group, b"after");
        send(&bob, &bob_signer, &alice, &group, b"got it");
    }

    #[test]
    fn a_row_that_cannot_move_leaves_the_profile_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        drop(SqliteProfile::open(dir.path()).unwrap());
        let before = {
            let conn = db(dir.path());
            let group = serde_json::to_vec(&GroupId::from_slice(b"g")).unwrap();
            write_old_tables(&conn, &Records::new());
            for (data_type, value) in [("tree", "{}"), ("use_ratchet_tree_extension", "true")] {
                conn.execute(
                    "INSERT INTO openmls_group_data VALUES (1, ?1, ?2, ?3)",
                    params![&group, data_type, value.as_bytes()],
                )
                .unwrap();
            }
            everything(&conn)
        };
        match SqliteProfile::open(dir.path()) {
            Err(ClientError::Store { message, .. }) => {
                assert!(message.contains("use_ratchet_tree_extension"), "{message}")
            }
            Err(e) => panic!("expected a store error, got {e:?}"),
            Ok(_) => panic!("expected the open to fail"),
        }
        let conn = db(dir.path());
        assert_eq!(everything(&conn), before);
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM openmls_group_data", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 2);
    }

    #[test]
    fn a_profile_without_old_tables_is_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let profile = SqliteProfile::open(dir.path()).unwrap();
        profile.mls_put(b"tree", b"\"g\"", b"{}").unwrap();
        drop(profile);
        let before = everything(&db(dir.path()));

        drop(SqliteProfile::open(dir.path()).unwrap());
        let mut conn = db(dir.path());
        assert!(!super::migrate(&mut conn, dir.path()).unwrap());
        assert_eq!(everything(&conn), before);
    }
}
