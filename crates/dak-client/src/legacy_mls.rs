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
