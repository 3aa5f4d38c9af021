//! The cluster store: PostgreSQL, shared by every gateway node.
//!
//! Same schema and behaviour as the SQLite store (the conformance suite
//! holds both to it). Durability is PostgreSQL's: a write returns after its
//! transaction commits, and PostgreSQL folds concurrent commits into one
//! WAL flush on its own. Migrations run under an advisory lock, so nodes
//! that start together apply them once.
//!
//! The mailbox table is keyed by (device_id, seq): the key a distributed
//! PostgreSQL-compatible engine would shard it by (see docs/OPERATIONS.md).
//!
//! Counters that guard a limit are bumped by one statement that also checks
//! the limit (rate-limit buckets, code and PIN attempts), or under a row
//! lock held until commit (the device row for the KeyPackage cap, the
//! mailbox heads for the quota), so nodes racing each other never pass a
//! limit together.
//!
//! Mailbox heads and lock order: a device's `mailbox_heads` row holds its
//! next seq and its usage (envelopes, body bytes). Every statement that
//! inserts into a mailbox updates the heads (in device-id order) in the same
//! statement; every statement that deletes from one subtracts exactly what
//! it deleted, and only after its delete has finished. So the usage is
//! exact, and nobody holding a head ever waits for a mailbox row: with heads
//! always taken in ascending device order, the locks cannot form a cycle.

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, Postgres, Row, Transaction};

use crate::sql::{
    BLOB_COLS, DEVICE_COLS, MAILBOX_BODY, MEMBER_COLS, STORED_BODY_BYTES, SWEEP_SHARED_BODIES,
};
use crate::*;

mod send_cache;
mod sends;

// The dynamic SQL here only splices in the constant column list
// (`DEVICE_COLS`); every value is a bind parameter.

/// How long a node's connection may sit idle inside a transaction before
/// PostgreSQL ends its session, rolling the transaction back and releasing
/// its locks. Every transaction here runs its statements back to back, so
/// only a node that stopped half-way (frozen, or cut off by the network,
/// which PostgreSQL would otherwise notice only when TCP gives up, hours
/// later) stays idle that long; meanwhile the groups and mailbox heads it
/// locked stall every node's sends to them. Its transaction is rolled back,
/// its callers (if it wakes) get an error, and the clients send again.
const STALLED_TRANSACTION_MS: u32 = 10_000;

/// Arbitrary, fixed: identifies Dak's migration lock among advisory locks.
const MIGRATION_LOCK: i64 = 0x64616b_6d6967; // "dak mig"

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS accounts (
        id BIGSERIAL PRIMARY KEY,
        phone TEXT NOT NULL UNIQUE,
        pin_hash TEXT,
        pin_failures INT NOT NULL DEFAULT 0,
        pin_locked_until_ms BIGINT NOT NULL DEFAULT 0,
        created_ms BIGINT NOT NULL DEFAULT 0)",
    "CREATE TABLE IF NOT EXISTS devices (
        id BIGSERIAL PRIMARY KEY,
        account_id BIGINT NOT NULL REFERENCES accounts(id),
        identity_key BYTEA NOT NULL,
        name TEXT NOT NULL DEFAULT '',
        is_primary BOOLEAN NOT NULL DEFAULT FALSE,
        created_ms BIGINT NOT NULL DEFAULT 0,
        last_seen_ms BIGINT NOT NULL DEFAULT 0,
        revoked SMALLINT NOT NULL DEFAULT 0)",
    "CREATE INDEX IF NOT EXISTS devices_by_account ON devices(account_id, revoked)",
    "CREATE INDEX IF NOT EXISTS devices_by_key ON devices(identity_key)",
    // Codes were keyed by phone alone before they were bound to sessions
    // (with the hourly send count, now a rate limit). That table only ever
    // holds codes that live minutes, so it is dropped, not converted.
    "DO $$ BEGIN
        IF EXISTS (SELECT 1 FROM information_schema.tables
                   WHERE table_schema = current_schema() AND table_name = 'verifications')
           AND NOT EXISTS (SELECT 1 FROM information_schema.columns
                   WHERE table_schema = current_schema() AND table_name = 'verifications'
                   AND column_name = 'session') THEN
            DROP TABLE verifications;
        END IF;
    END $$",
    "CREATE TABLE IF NOT EXISTS verifications (
        phone TEXT NOT NULL,
        session BYTEA NOT NULL,
        code_hash TEXT NOT NULL,
        expires_ms BIGINT NOT NULL,
        attempts INT NOT NULL DEFAULT 0,
        PRIMARY KEY (phone, session))",
    "CREATE INDEX IF NOT EXISTS verifications_by_expiry ON verifications(expires_ms)",
    // GCRA buckets: each key's theoretical arrival time. No row is a full bucket.
    "CREATE TABLE IF NOT EXISTS rate_limits (
        key TEXT PRIMARY KEY,
        tat_ms BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS rate_limits_by_tat ON rate_limits(tat_ms)",
    "CREATE TABLE IF NOT EXISTS link_requests (
        code TEXT PRIMARY KEY,
        identity_key BYTEA NOT NULL,
        device_name TEXT NOT NULL DEFAULT '',
        expires_ms BIGINT NOT NULL)",
    // Each device's next mailbox position. Taking it locks the device's row
    // until commit, so a device's envelopes commit in seq order: a reader
    // that fetches `seq > last seen` can never skip one that commits late.
    // It also holds the mailbox's usage for the quota (see the module comment).
    "CREATE TABLE IF NOT EXISTS mailbox_heads (
        device_id BIGINT PRIMARY KEY,
        next BIGINT NOT NULL,
        envelopes BIGINT NOT NULL DEFAULT 0,
        bytes BIGINT NOT NULL DEFAULT 0)",
    "CREATE TABLE IF NOT EXISTS mailbox (
        device_id BIGINT NOT NULL,
        seq BIGINT NOT NULL,
        message_id BYTEA NOT NULL,
        sender_phone TEXT NOT NULL,
        sender_device BIGINT NOT NULL,
        server_time_ms BIGINT NOT NULL,
        expires_ms BIGINT NOT NULL,
        body BYTEA NOT NULL,
        PRIMARY KEY (device_id, seq))",
    "CREATE INDEX IF NOT EXISTS mailbox_by_expiry ON mailbox(expires_ms)",
    // Stores made before the quota: add the usage and fill it from the
    // mailboxes, once, with the mailbox table locked against writers so the
    // counts start exact.
    "DO $$ BEGIN
        IF NOT EXISTS (SELECT 1 FROM information_schema.columns
                WHERE table_schema = current_schema() AND table_name = 'mailbox_heads'
                AND column_name = 'envelopes') THEN
            LOCK TABLE mailbox IN SHARE MODE;
            ALTER TABLE mailbox_heads
                ADD COLUMN envelopes BIGINT NOT NULL DEFAULT 0,
                ADD COLUMN bytes BIGINT NOT NULL DEFAULT 0;
            INSERT INTO mailbox_heads (device_id, next, envelopes, bytes)
                SELECT device_id, MAX(seq), COUNT(*), SUM(length(body)) FROM mailbox GROUP BY device_id
                ON CONFLICT (device_id) DO UPDATE
                SET envelopes = EXCLUDED.envelopes, bytes = EXCLUDED.bytes;
        END IF;
    END $$",
    // Written empty since MLS (the server does not know a conversation);
    // dropped from stores made before.
    "ALTER TABLE mailbox DROP COLUMN IF EXISTS conversation_phone",
    // Bodies stored once (`crate::shares_body`): a row refers to its shared
    // body, or keeps its body inline (`shared_body` NULL, `shared_len` 0,
    // which is what rows from before are). The heads count `shared_len`
    // in each device's bytes as they count an inline body.
    "ALTER TABLE mailbox ADD COLUMN IF NOT EXISTS shared_body BIGINT",
    "ALTER TABLE mailbox ADD COLUMN IF NOT EXISTS shared_len BIGINT NOT NULL DEFAULT 0",
    "CREATE TABLE IF NOT EXISTS shared_bodies (
        id BIGSERIAL PRIMARY KEY,
        body BYTEA NOT NULL)",
    "CREATE INDEX IF NOT EXISTS mailbox_by_shared_body ON mailbox(shared_body)
        WHERE shared_body IS NOT NULL",
    // The MLS key directory: one-time KeyPackages are deleted when claimed;
    // a device's last-resort one stays until replaced.
    "CREATE TABLE IF NOT EXISTS key_packages (
        id BIGSERIAL PRIMARY KEY,
        device_id BIGINT NOT NULL,
        last_resort BOOLEAN NOT NULL DEFAULT FALSE,
        data BYTEA NOT NULL)",
    "CREATE INDEX IF NOT EXISTS key_packages_by_device ON key_packages(device_id, last_resort, id)",
    // Packages are kept per ciphersuite (its RFC 9420 code point); those
    // stored before are all in the classic suite, 1.
    "ALTER TABLE key_packages ADD COLUMN IF NOT EXISTS suite INTEGER NOT NULL DEFAULT 1",
    "CREATE INDEX IF NOT EXISTS key_packages_by_suite ON key_packages(device_id, suite, last_resort, id)",
    // The Delivery Service's groups. A group's row is the lock that orders
    // its commits and messages.
    "CREATE TABLE IF NOT EXISTS mls_groups (
        group_id BYTEA PRIMARY KEY,
        epoch BIGINT NOT NULL,
        created_ms BIGINT NOT NULL DEFAULT 0)",
    // Bumped, with the group's row locked, by every write that changes what
    // a send to the group is checked against other than its epoch (a member
    // account's device revoked or made ready, a block between members): the
    // send workers' caches on every node compare it (`bump_send_checks`).
    "ALTER TABLE mls_groups ADD COLUMN IF NOT EXISTS checks_version BIGINT NOT NULL DEFAULT 0",
    "CREATE TABLE IF NOT EXISTS group_members (
        group_id BYTEA NOT NULL,
        device_id BIGINT NOT NULL,
        leaf_index BIGINT,
        PRIMARY KEY (group_id, device_id))",
    // Stores made before the leaf indices were kept: the column is added,
    // NULL (unknown) for the members already there, whose groups go on as
    // legacy groups (`group_rules::apply_commit`).
    "ALTER TABLE group_members ADD COLUMN IF NOT EXISTS leaf_index BIGINT",
    "CREATE INDEX IF NOT EXISTS group_members_by_device ON group_members(device_id)",
    // Who blocked whom (account ids). Read by blocked account on every
    // group message, hence the second index.
    "CREATE TABLE IF NOT EXISTS blocks (
        account_id BIGINT NOT NULL,
        blocked_id BIGINT NOT NULL,
        created_ms BIGINT NOT NULL,
        PRIMARY KEY (account_id, blocked_id))",
    "CREATE INDEX IF NOT EXISTS blocks_by_blocked ON blocks(blocked_id, account_id)",
    // One row per (reporter, reported) pair; a repeat updates its time.
    "CREATE TABLE IF NOT EXISTS reports (
        reporter_id BIGINT NOT NULL,
        reported_id BIGINT NOT NULL,
        created_ms BIGINT NOT NULL,
        PRIMARY KEY (reporter_id, reported_id))",
    "CREATE INDEX IF NOT EXISTS reports_by_reported ON reports(reported_id)",
    // Business accounts' public profiles (docs/BOTS.md).
    "CREATE TABLE IF NOT EXISTS businesses (
        account_id BIGINT PRIMARY KEY,
        profile BYTEA NOT NULL,
        display_name TEXT NOT NULL,
        verified BOOLEAN NOT NULL DEFAULT FALSE,
        updated_ms BIGINT NOT NULL)",
    // Media blobs: their bytes are in the BlobStore, as segments.
    "CREATE TABLE IF NOT EXISTS blobs (
        id BYTEA PRIMARY KEY,
        owner_device BIGINT NOT NULL,
        owner_account BIGINT NOT NULL,
        length BIGINT NOT NULL,
        received BIGINT NOT NULL DEFAULT 0,
        complete BOOLEAN NOT NULL DEFAULT FALSE,
        shared BOOLEAN NOT NULL DEFAULT FALSE,
        sha256 BYTEA NOT NULL,
        upload_token_sha256 BYTEA NOT NULL,
        capability_sha256 BYTEA NOT NULL,
        created_ms BIGINT NOT NULL,
        expires_ms BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS blobs_by_device ON blobs(owner_device)",
    "CREATE INDEX IF NOT EXISTS blobs_by_account ON blobs(owner_account)",
    "CREATE INDEX IF NOT EXISTS blobs_by_expiry ON blobs(expires_ms)",
    "CREATE TABLE IF NOT EXISTS blob_segments (
        blob_id BYTEA NOT NULL,
        seg_offset BIGINT NOT NULL,
        len BIGINT NOT NULL,
        write_id BIGINT NOT NULL,
        PRIMARY KEY (blob_id, seg_offset))",
    "CREATE TABLE IF NOT EXISTS blob_fetchers (
        blob_id BYTEA NOT NULL,
        device_id BIGINT NOT NULL,
        PRIMARY KEY (blob_id, device_id))",
    "CREATE TABLE IF NOT EXISTS kt_records (
        kind SMALLINT NOT NULL,
        id BYTEA NOT NULL,
        body BYTEA NOT NULL,
        PRIMARY KEY (kind, id))",
    "CREATE TABLE IF NOT EXISTS kt_states (
        label BYTEA NOT NULL,
        epoch BIGINT NOT NULL,
        version BIGINT NOT NULL,
        body BYTEA NOT NULL,
        PRIMARY KEY (label, epoch))",
    "CREATE TABLE IF NOT EXISTS kt_head (
        id SMALLINT PRIMARY KEY CHECK (id = 1),
        epoch BIGINT NOT NULL)",
    // `Store::hint_secret`: made once, by whichever node migrates first
    // (under the migration lock), from PostgreSQL's strong random source:
    // two version-4 UUIDs, 244 random bits.
    "CREATE TABLE IF NOT EXISTS hint_secret (
        one SMALLINT PRIMARY KEY CHECK (one = 1),
        secret TEXT NOT NULL)",
    "INSERT INTO hint_secret (one, secret)
        VALUES (1, gen_random_uuid()::text || gen_random_uuid()::text)
        ON CONFLICT (one) DO NOTHING",
];

#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    /// Told of each envelope after its transaction commits
    /// (`HintOrder::ContiguousSeqs`: this node's transactions commit
    /// concurrently, and other nodes' commits are not seen here at all).
    listener: Arc<OnceLock<Arc<dyn CommitListener>>>,
    /// `Store::hint_secret`, read at connect.
    hint_secret: Arc<str>,
    /// Group sends, committed together (the node-level group commit).
    sends: Arc<sends::SendBatcher>,
}

fn backend(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Tls(_) => StoreError::Unavailable(e.to_string()),
        sqlx::Error::Database(db) if db.code().as_deref() == Some("53100") => StoreError::Full, // disk_full
        sqlx::Error::Database(db)
            if db
                .code()
                .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")) =>
        {
            StoreError::Unavailable(e.to_string()) // connection exceptions, admin shutdown
        }
        _ => StoreError::Backend(e.to_string()),
    }
}

impl PgStore {
    /// The options every connection of a node opens with: `url`'s, and
    /// the stalled-transaction timeout (`STALLED_TRANSACTION_MS`).
    pub fn connect_options(url: &str) -> Result<PgConnectOptions> {
        let options: PgConnectOptions = url.parse().map_err(backend)?;
        Ok(options.options([(
            "idle_in_transaction_session_timeout",
            STALLED_TRANSACTION_MS,
        )]))
    }

    /// Connects and migrates. `url` is `postgres://user@host:port/db`.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect_with(Self::connect_options(url)?)
            .await
            .map_err(backend)?;
        let listener = Arc::default();
        // A worker holds one connection while its batch runs; the rest of
        // the pool stays for everything else.
        let workers = (max_connections as usize / 4).clamp(1, 4);
        let sends = Arc::new(sends::SendBatcher::start(&pool, &listener, workers));
        let mut store = PgStore {
            pool,
            listener,
            hint_secret: Arc::from(""),
            sends,
        };
        store.migrate().await?;
        let secret: String = sqlx::query_scalar("SELECT secret FROM hint_secret WHERE one = 1")
            .fetch_one(&store.pool)
            .await
            .map_err(backend)?;
        store.hint_secret = Arc::from(secret);
        Ok(store)
    }

    async fn migrate(&self) -> Result<()> {
        let mut conn = self.pool.acquire().await.map_err(backend)?;
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *conn)
            .await
            .map_err(backend)?;
        let mut result = Ok(());
        for stmt in SCHEMA {
            if let Err(e) = sqlx::query(*stmt).execute(&mut *conn).await {
                result = Err(backend(e));
                break;
            }
        }
        let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *conn)
            .await;
        result
    }

    /// How many times this node's send workers read a group's checks from
    /// PostgreSQL because their cache had none at the group's current stamp
    /// (`postgres/send_cache.rs`): once per group and change, not per send.
    pub fn send_check_reads(&self) -> u64 {
        self.sends.check_reads()
    }

    /// Whether the database answers (for /readyz).
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(backend)
    }

    async fn begin(&self) -> Result<Transaction<'static, Postgres>> {
        self.pool.begin().await.map_err(backend)
    }
}

fn row_blob(r: &PgRow) -> Blob {
    Blob {
        id: r.get(0),
        owner_device: r.get::<i64, _>(1) as u64,
        owner_account: r.get::<i64, _>(2) as u64,
        length: r.get::<i64, _>(3) as u64,
        received: r.get::<i64, _>(4) as u64,
        complete: r.get(5),
        sha256: r.get(6),
        upload_token_sha256: r.get(7),
        capability_sha256: r.get(8),
        created_ms: r.get(9),
        expires_ms: r.get(10),
    }
}

/// Takes the blob's row lock for the rest of the transaction.
async fn lock_blob(tx: &mut Transaction<'static, Postgres>, id: &[u8]) -> Result<()> {
    sqlx::query("SELECT 1 FROM blobs WHERE id = $1 FOR UPDATE")
        .bind(id)
        .execute(&mut **tx)
        .await
        .map(|_| ())
        .map_err(backend)
}

fn row_segment(r: &PgRow) -> BlobSegment {
    BlobSegment {
        offset: r.get::<i64, _>(0) as u64,
        len: r.get::<i64, _>(1) as u64,
        write: r.get::<i64, _>(2) as u64,
    }
}

fn row_device(r: &PgRow) -> Device {
    Device {
        id: r.get::<i64, _>(0) as u64,
        account_id: r.get::<i64, _>(1) as u64,
        phone: r.get(2),
        identity_key: r.get(3),
        name: r.get(4),
        primary: r.get(5),
        created_ms: r.get(6),
        last_seen_ms: r.get(7),
        revoked: RevokeReason::from_i64(r.get::<i16, _>(8) as i64),
    }
}

async fn devices_of_account<'e, E: sqlx::PgExecutor<'e>>(
    ex: E,
    account: AccountId,
) -> Result<Vec<Device>> {
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT {DEVICE_COLS} WHERE d.account_id = $1 AND d.revoked = 0 ORDER BY d.id"
    )))
    .bind(account as i64)
    .fetch_all(ex)
    .await
    .map_err(backend)?;
    Ok(rows.iter().map(row_device).collect())
}

/// Revokes the device: its mailbox and KeyPackages go, its row stays. The
/// caller locks its account and bumps its groups first, in the same
/// transaction, if it was active (its groups' sends must now be refused
/// until it is removed): `lock_changing_accounts`, `bump_send_checks`.
async fn revoke(
    tx: &mut Transaction<'static, Postgres>,
    id: DeviceId,
    reason: RevokeReason,
) -> Result<()> {
    // The device's row first, as a KeyPackage upload takes it before the
    // packages (the other way round, the two could wait for each other).
    sqlx::query("SELECT 1 FROM devices WHERE id = $1 FOR NO KEY UPDATE")
        .bind(id as i64)
        .execute(&mut **tx)
        .await
        .map_err(backend)?;
    delete_from_mailbox(&mut **tx, id, None).await?;
    // Its group memberships stay until a member commits its removal: that is
    // how the groups learn (send_group refuses until then).
    sqlx::query("DELETE FROM key_packages WHERE device_id = $1")
        .bind(id as i64)
        .execute(&mut **tx)
        .await
        .map_err(backend)?;
    sqlx::query("UPDATE devices SET revoked = $2 WHERE id = $1")
        .bind(id as i64)
        .bind(reason as i16)
        .execute(&mut **tx)
        .await
        .map_err(backend)?;
    Ok(())
}

/// The first step of a write that may change what sends to some groups are
/// checked against (a device revoked or made ready, a block): locks these
/// accounts' rows, in account order, before any group or mailbox head (the
/// lock order is accounts, groups, heads). The write then decides, under
/// these locks, whether it changes anything, and if it does calls
/// `bump_send_checks` for the same accounts.
///
/// Why the account lock: a commit that adds one of the account's devices to
/// a group (or creates a group with the account in it) takes the account's
/// row in share mode before its group (`lock_joining_accounts`). So either
/// that commit ran first, and the bump (a later statement, with a later
/// snapshot) finds the group among the account's; or this transaction
/// commits first, and the commit reads the change under its group lock (and
/// moves the epoch, which the caches compare too). Without it a group joined
/// meanwhile could keep a cached check that misses the change.
async fn lock_changing_accounts(
    tx: &mut Transaction<'static, Postgres>,
    accounts: &[AccountId],
) -> Result<()> {
    let ids: Vec<i64> = accounts.iter().map(|a| *a as i64).collect();
    sqlx::query("SELECT 1 FROM accounts WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE")
        .bind(&ids)
        .execute(&mut **tx)
        .await
        .map_err(backend)?;
    Ok(())
}

/// Tells the send caches of every node (`postgres/send_cache.rs`) that what
/// a send is checked against changes in this transaction, in every group in
/// which each of `accounts` has a member device (one account: its groups; a
/// block: the groups the two share): bumps those groups' `checks_version`,
/// locking them in group-id order as a send batch does. Called after
/// `lock_changing_accounts` of the same accounts and before any mailbox
/// head, in the transaction that makes the change.
async fn bump_send_checks(
    tx: &mut Transaction<'static, Postgres>,
    accounts: &[AccountId],
) -> Result<()> {
    let mut ids: Vec<i64> = accounts.iter().map(|a| *a as i64).collect();
    ids.sort_unstable();
    ids.dedup();
    sqlx::query(
        "UPDATE mls_groups SET checks_version = checks_version + 1 WHERE group_id IN (
            SELECT g.group_id FROM mls_groups g
            WHERE g.group_id IN (SELECT m.group_id FROM group_members m
                                 JOIN devices d ON d.id = m.device_id
                                 WHERE d.account_id = ANY($1) GROUP BY m.group_id
                                 HAVING COUNT(DISTINCT d.account_id) = cardinality($1))
            ORDER BY g.group_id FOR UPDATE)",
    )
    .bind(&ids)
    .execute(&mut **tx)
    .await
    .map_err(backend)?;
    Ok(())
}

/// `lock_changing_accounts` for the account of `device`, found in the
/// same statement: returns that account and whether the device is active
/// (not revoked), or None when there is no such device. (A revoked device
/// stays revoked; one read as active may be revoked by the time its
/// account is locked, which costs no more than a needless bump.)
async fn lock_account_of(
    tx: &mut Transaction<'static, Postgres>,
    device: DeviceId,
) -> Result<Option<(AccountId, bool)>> {
    let row: Option<(i64, bool)> = sqlx::query_as(
        "SELECT a.id, d.revoked = 0 FROM devices d JOIN accounts a ON a.id = d.account_id
         WHERE d.id = $1 FOR NO KEY UPDATE OF a",
    )
    .bind(device as i64)
    .fetch_optional(&mut **tx)
    .await
    .map_err(backend)?;
    Ok(row.map(|(account, active)| (account as u64, active)))
}

/// For a commit, before it takes its group: the accounts of the devices it
/// may bring into the group (`devices`: the added ones, and a new group's
/// creator), locked in share mode in account order, so that a concurrent
/// change to their send checks (`lock_changing_accounts`) either finishes
/// first or finds the group once this commit has committed. Returns the
/// devices whose
/// accounts it locked: those that existed as of this statement. The commit
/// takes no other device in (one made since is unknown to it, and refused
/// as any unknown device is), so every account it brings in was locked.
async fn lock_joining_accounts(
    tx: &mut Transaction<'static, Postgres>,
    devices: &[DeviceId],
) -> Result<Vec<DeviceId>> {
    if devices.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = devices.iter().map(|d| *d as i64).collect();
    let locked: Vec<i64> = sqlx::query_scalar(
        "SELECT d.id FROM devices d JOIN accounts a ON a.id = d.account_id
         WHERE d.id = ANY($1) ORDER BY a.id FOR SHARE OF a",
    )
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await
    .map_err(backend)?;
    Ok(locked.into_iter().map(|d| d as u64).collect())
}

async fn insert_device(
    tx: &mut Transaction<'static, Postgres>,
    account: AccountId,
    key: &[u8],
    name: &str,
    primary: bool,
    now_ms: i64,
) -> Result<Device> {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO devices (account_id, identity_key, name, is_primary, created_ms, last_seen_ms) VALUES ($1, $2, $3, $4, $5, $5) RETURNING id",
    )
    .bind(account as i64)
    .bind(key)
    .bind(name)
    .bind(primary)
    .bind(now_ms)
    .fetch_one(&mut **tx)
    .await
    .map_err(backend)?;
    let row = sqlx::query(AssertSqlSafe(format!(
        "SELECT {DEVICE_COLS} WHERE d.id = $1"
    )))
    .bind(id)
    .fetch_one(&mut **tx)
    .await
    .map_err(backend)?;
    Ok(row_device(&row))
}

/// Deletes envelopes from one device's mailbox (those with these seqs, or
/// all) and subtracts them from its usage, in one statement; returns how
/// many went. The head is updated from the delete's totals, so the delete
/// has finished before the head is locked (see the module comment).
async fn delete_from_mailbox<'e, E: sqlx::PgExecutor<'e>>(
    ex: E,
    device: DeviceId,
    seqs: Option<&[i64]>,
) -> Result<u64> {
    // Two texts rather than `$2 IS NULL OR ...`, so an ack's plan is
    // always the (device_id, seq) key lookup.
    const SOME: &str = "WITH gone AS (
            DELETE FROM mailbox WHERE device_id = $1 AND seq = ANY($2) RETURNING length(body) + shared_len AS bytes),
         total AS (SELECT COUNT(*) AS envelopes, COALESCE(SUM(bytes), 0) AS bytes FROM gone),
         freed AS (
            UPDATE mailbox_heads h SET envelopes = h.envelopes - t.envelopes, bytes = h.bytes - t.bytes
            FROM total t WHERE h.device_id = $1 AND t.envelopes > 0)
         SELECT envelopes FROM total";
    const ALL: &str = "WITH gone AS (
            DELETE FROM mailbox WHERE device_id = $1 RETURNING length(body) + shared_len AS bytes),
         total AS (SELECT COUNT(*) AS envelopes, COALESCE(SUM(bytes), 0) AS bytes FROM gone),
         freed AS (
            UPDATE mailbox_heads h SET envelopes = h.envelopes - t.envelopes, bytes = h.bytes - t.bytes
            FROM total t WHERE h.device_id = $1 AND t.envelopes > 0)
         SELECT envelopes FROM total";
    let query = match seqs {
        Some(seqs) => sqlx::query_scalar(SOME).bind(device as i64).bind(seqs),
        None => sqlx::query_scalar(ALL).bind(device as i64),
    };
    let gone: i64 = query.fetch_one(ex).await.map_err(backend)?;
    Ok(gone as u64)
}

/// Appends the envelope to every listed device's mailbox, each at its
/// device's next seq. Heads are taken in device order, so two transactions
/// writing to overlapping devices lock them in the same order and cannot
/// deadlock; each head stays locked until the caller's transaction ends.
/// The heads count the envelope into each device's usage. Returns the seq
/// each device's mailbox gave it (for the commit listener).
async fn insert_envelope<'e, E: sqlx::PgExecutor<'e>>(
    ex: E,
    e: &NewEnvelope,
    devices: &[DeviceId],
) -> Result<Vec<(DeviceId, u64)>> {
    if devices.is_empty() {
        return Ok(Vec::new());
    }
    let mut ids: Vec<i64> = devices.iter().map(|d| *d as i64).collect();
    ids.sort_unstable();
    // One statement for every recipient: unnest the device ids. A body for
    // more than one device is inserted once ($8) and referred to.
    sqlx::query(
        "WITH shared AS (
            INSERT INTO shared_bodies (body) SELECT $7 WHERE $8 RETURNING id),
         heads AS (
            INSERT INTO mailbox_heads (device_id, next, envelopes, bytes)
            SELECT d, 1, 1, length($7) FROM unnest($1::BIGINT[]) AS d ORDER BY d
            ON CONFLICT (device_id) DO UPDATE SET next = mailbox_heads.next + 1,
                envelopes = mailbox_heads.envelopes + 1, bytes = mailbox_heads.bytes + EXCLUDED.bytes
            RETURNING device_id, next)
         INSERT INTO mailbox (device_id, seq, message_id, sender_phone, sender_device, server_time_ms, expires_ms,
                              body, shared_body, shared_len)
         SELECT device_id, next, $2, $3, $4, $5, $6,
                CASE WHEN $8 THEN ''::BYTEA ELSE $7 END, (SELECT id FROM shared),
                CASE WHEN $8 THEN length($7) ELSE 0 END
         FROM heads
         RETURNING device_id, seq",
    )
    .bind(&ids)
    .bind(&e.message_id)
    .bind(&e.sender_phone)
    .bind(e.sender_device as i64)
    .bind(e.server_time_ms)
    .bind(e.expires_ms)
    .bind(&e.body)
    .bind(crate::shares_body(ids.len()))
    .fetch_all(ex)
    .await
    .map(|rows| {
        rows.iter()
            .map(|r| (r.get::<i64, _>(0) as u64, r.get::<i64, _>(1) as u64))
            .collect()
    })
    .map_err(backend)
}

/// Locks these devices' mailbox heads (creating missing ones) in device
/// order until the transaction ends, for a transaction that will then call
/// `insert_envelope` more than once: without it, each call would lock its
/// own devices in order but the union would not be, and two transactions
/// could each hold a head the other waits for. Returns each device's
/// usage (envelopes, bytes) as of now, which holds until the transaction
/// ends: no one else can add to or take from these mailboxes meanwhile.
async fn lock_heads(
    tx: &mut Transaction<'static, Postgres>,
    devices: &[DeviceId],
) -> Result<Vec<(DeviceId, u64, u64)>> {
    let mut ids: Vec<i64> = devices.iter().map(|d| *d as i64).collect();
    ids.sort_unstable();
    ids.dedup();
    // `next` is the last seq used: 0 for a new head, so that the
    // enqueue's increment then hands out 1, as a first insert would.
    let rows = sqlx::query(
        "INSERT INTO mailbox_heads (device_id, next)
         SELECT d, 0 FROM unnest($1::BIGINT[]) AS d ORDER BY d
         ON CONFLICT (device_id) DO UPDATE SET next = mailbox_heads.next
         RETURNING device_id, envelopes, bytes",
    )
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await
    .map_err(backend)?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get::<i64, _>(0) as u64,
                r.get::<i64, _>(1).max(0) as u64,
                r.get::<i64, _>(2).max(0) as u64,
            )
        })
        .collect())
}

async fn key_stock<'e, E: sqlx::PgExecutor<'e>>(
    ex: E,
    device: DeviceId,
    suite: Suite,
) -> Result<KeyStock> {
    let row = sqlx::query(
        "SELECT COUNT(*) FILTER (WHERE NOT last_resort), COALESCE(BOOL_OR(last_resort), FALSE)
         FROM key_packages WHERE device_id = $1 AND suite = $2",
    )
    .bind(device as i64)
    .bind(i32::from(suite))
    .fetch_one(ex)
    .await
    .map_err(backend)?;
    Ok(KeyStock {
        one_time: row.get::<i64, _>(0) as u32,
        has_last_resort: row.get(1),
    })
}

/// Active devices of these accounts that have a last-resort KeyPackage in
/// the classic suite, i.e. that can always be added to a group (see the
/// SQLite store's `ready_devices`); by account, then device.
async fn ready_devices<'e, E: sqlx::PgExecutor<'e>>(
    ex: E,
    accounts: &[AccountId],
) -> Result<Vec<Device>> {
    if accounts.is_empty() {
        return Ok(Vec::new());
    }
    let accounts: Vec<i64> = accounts.iter().map(|a| *a as i64).collect();
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT {DEVICE_COLS} WHERE d.account_id = ANY($1) AND d.revoked = 0
         AND EXISTS (SELECT 1 FROM key_packages k WHERE k.device_id = d.id AND k.suite = 1 AND k.last_resort)
         ORDER BY d.account_id, d.id"
    )))
    .bind(&accounts)
    .fetch_all(ex)
    .await
    .map_err(backend)?;
    Ok(rows.iter().map(row_device).collect())
}

/// Takes one KeyPackage of the device in `suite`: with `one_time`, the
/// oldest one-time one, deleted (a row another transaction is taking is
/// skipped, so concurrent claimers on any node never get the same one);
/// else, or when none is left, the last-resort one, kept.
async fn take_key_package(
    tx: &mut Transaction<'static, Postgres>,
    device: DeviceId,
    suite: Suite,
    one_time: bool,
) -> Result<Option<Vec<u8>>> {
    if !one_time {
        return last_resort_package(&mut **tx, device, suite).await;
    }
    let one_time: Option<Vec<u8>> = sqlx::query_scalar(
        "DELETE FROM key_packages WHERE id = (
            SELECT id FROM key_packages WHERE device_id = $1 AND suite = $2 AND NOT last_resort
            ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
         RETURNING data",
    )
    .bind(device as i64)
    .bind(i32::from(suite))
    .fetch_optional(&mut **tx)
    .await
    .map_err(backend)?;
    if one_time.is_some() {
        return Ok(one_time);
    }
    last_resort_package(&mut **tx, device, suite).await
}

async fn last_resort_package<'e, E: sqlx::PgExecutor<'e>>(
    ex: E,
    device: DeviceId,
    suite: Suite,
) -> Result<Option<Vec<u8>>> {
    sqlx::query_scalar(
        "SELECT data FROM key_packages WHERE device_id = $1 AND suite = $2 AND last_resort
         ORDER BY id DESC LIMIT 1",
    )
    .bind(device as i64)
    .bind(i32::from(suite))
    .fetch_optional(ex)
    .await
    .map_err(backend)
}

/// The suites each device has a last-resort package in (those it can be
/// added in), in the order of `devices`; one statement.
async fn last_resort_suites<'e, E: sqlx::PgExecutor<'e>>(
    ex: E,
    devices: &[DeviceId],
) -> Result<Vec<Vec<Suite>>> {
    let ids: Vec<i64> = devices.iter().map(|d| *d as i64).collect();
    let rows: Vec<(i64, i32)> = sqlx::query_as(
        "SELECT DISTINCT device_id, suite FROM key_packages
         WHERE device_id = ANY($1) AND last_resort ORDER BY device_id, suite",
    )
    .bind(&ids)
    .fetch_all(ex)
    .await
    .map_err(backend)?;
    Ok(devices
        .iter()
        .map(|d| {
            rows.iter()
                .filter(|(id, _)| *id == *d as i64)
                .map(|(_, s)| *s as Suite)
                .collect()
        })
        .collect())
}

/// Locks the group's row until the transaction ends and returns its epoch;
/// None when there is no such group.
async fn lock_group(
    tx: &mut Transaction<'static, Postgres>,
    group_id: &[u8],
) -> Result<Option<u64>> {
    let epoch: Option<i64> =
        sqlx::query_scalar("SELECT epoch FROM mls_groups WHERE group_id = $1 FOR UPDATE")
            .bind(group_id)
            .fetch_optional(&mut **tx)
            .await
            .map_err(backend)?;
    Ok(epoch.map(|e| e as u64))
}

/// Member devices, revoked ones included (they stay until removed by commit).
async fn group_members(
    tx: &mut Transaction<'static, Postgres>,
    group_id: &[u8],
) -> Result<Vec<Device>> {
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT {DEVICE_COLS} JOIN group_members m ON m.device_id = d.id WHERE m.group_id = $1 ORDER BY d.id"
    )))
    .bind(group_id)
    .fetch_all(&mut **tx)
    .await
    .map_err(backend)?;
    Ok(rows.iter().map(row_device).collect())
}

/// Member devices as `group_members` has them, each with its leaf index
/// (None when unknown: a group from before leaf indices were kept).
async fn group_members_with_leaves(
    tx: &mut Transaction<'static, Postgres>,
    group_id: &[u8],
) -> Result<Vec<group_rules::Member>> {
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT {MEMBER_COLS} WHERE m.group_id = $1 ORDER BY d.id"
    )))
    .bind(group_id)
    .fetch_all(&mut **tx)
    .await
    .map_err(backend)?;
    Ok(rows
        .iter()
        .map(|r| {
            let leaf: Option<i64> = r.get(9);
            (row_device(r), leaf.and_then(|l| u32::try_from(l).ok()))
        })
        .collect())
}

/// Any of these devices, revoked ones included, in id order.
async fn devices_by_ids(
    tx: &mut Transaction<'static, Postgres>,
    ids: &[DeviceId],
) -> Result<Vec<Device>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = ids.iter().map(|d| *d as i64).collect();
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT {DEVICE_COLS} WHERE d.id = ANY($1) ORDER BY d.id"
    )))
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await
    .map_err(backend)?;
    Ok(rows.iter().map(row_device).collect())
}

fn member_accounts(members: &[Device]) -> Vec<AccountId> {
    let mut accounts: Vec<AccountId> = members.iter().map(|d| d.account_id).collect();
    accounts.sort_unstable();
    accounts.dedup();
    accounts
}

/// The accounts that blocked `account` (itself never counts); one
/// statement on the `blocks_by_blocked` index.
async fn blockers_of(
    tx: &mut Transaction<'static, Postgres>,
    account: AccountId,
) -> Result<Vec<AccountId>> {
    let rows: Vec<i64> = sqlx::query_scalar(
        "SELECT account_id FROM blocks WHERE blocked_id = $1 AND account_id <> $1 ORDER BY account_id",
    )
    .bind(account as i64)
    .fetch_all(&mut **tx)
    .await
    .map_err(backend)?;
    Ok(rows.into_iter().map(|a| a as u64).collect())
}

/// Makes (`on`) or lifts `account`'s block of `blocked`, first in the
/// caller's transaction: both accounts are locked before anything else
/// (`lock_changing_accounts`), and the groups the two share are bumped
/// when the block changed (`bump_send_checks`).
async fn write_block(
    tx: &mut Transaction<'static, Postgres>,
    account: AccountId,
    blocked: AccountId,
    on: bool,
    now_ms: i64,
) -> Result<()> {
    lock_changing_accounts(tx, &[account, blocked]).await?;
    let query = if on {
        sqlx::query(
            "INSERT INTO blocks (account_id, blocked_id, created_ms) VALUES ($1, $2, $3)
             ON CONFLICT (account_id, blocked_id) DO NOTHING",
        )
        .bind(account as i64)
        .bind(blocked as i64)
        .bind(now_ms)
    } else {
        sqlx::query("DELETE FROM blocks WHERE account_id = $1 AND blocked_id = $2")
            .bind(account as i64)
            .bind(blocked as i64)
    };
    let changed = query
        .execute(&mut **tx)
        .await
        .map_err(backend)?
        .rows_affected()
        > 0;
    // A block of oneself counts for nothing.
    if changed && account != blocked {
        bump_send_checks(tx, &[account, blocked]).await?;
    }
    Ok(())
}

/// Hands committed envelopes to the listener, if one is set and there are
/// any. Called after `commit()` returned, so each hint is durable; the
/// envelopes are only made when someone listens.
fn tell(
    listener: &OnceLock<Arc<dyn CommitListener>>,
    envelopes: impl FnOnce() -> Vec<CommittedEnvelope>,
) {
    if let Some(listener) = listener.get() {
        let envelopes = envelopes();
        if !envelopes.is_empty() {
            listener.committed(&envelopes);
        }
    }
}

/// `Store::commit_group` in a transaction of its own, run by the group's
/// send worker. Returns the outcome and the envelopes to tell the listener
/// of (after the caller is answered).
async fn commit_alone(
    pool: &PgPool,
    c: GroupCommit,
) -> Result<(GroupOutcome, Vec<CommittedEnvelope>)> {
    let mut tx = pool.begin().await.map_err(backend)?;
    // The accounts this commit may bring into the group, before the group
    // (see `lock_changing_accounts`): the added devices', and a new group's
    // creator's.
    let joining: Vec<DeviceId> = c
        .added
        .iter()
        .copied()
        .chain((c.epoch == 0).then_some(c.commit.sender_device))
        .collect();
    let known = lock_joining_accounts(&mut tx, &joining).await?;
    // A commit at epoch 0 may create the group. Its row goes in first:
    // a concurrent creator's insert waits on ours, finds the row once we
    // commit and then reads the epoch we set (or, if we roll back, goes
    // on to create the group itself). Either way one creator wins.
    let created = if c.epoch == 0 {
        sqlx::query(
            "INSERT INTO mls_groups (group_id, epoch, created_ms) VALUES ($1, 0, $2)
             ON CONFLICT (group_id) DO NOTHING",
        )
        .bind(&c.group_id)
        .bind(c.commit.server_time_ms)
        .execute(&mut *tx)
        .await
        .map_err(backend)?
        .rows_affected()
            == 1
    } else {
        false
    };
    // Everything below is read under the group's lock, so commits and
    // messages of one group are accepted, and enqueued, one at a time.
    let locked = lock_group(&mut tx, &c.group_id).await?;
    let current = if created { None } else { locked };
    let members = group_members_with_leaves(&mut tx, &c.group_id).await?;
    let mut added = devices_by_ids(&mut tx, &c.added).await?;
    added.retain(|d| known.contains(&d.id));
    let ready: Vec<DeviceId> = ready_devices(&mut *tx, &member_accounts(&added))
        .await?
        .iter()
        .map(|d| d.id)
        .collect();
    // A new group's first member is the committer, whose account counts.
    let sender = match current {
        None => devices_by_ids(&mut tx, &[c.commit.sender_device])
            .await?
            .pop(),
        Some(_) => None,
    };
    let next =
        match group_rules::apply_commit(current, &c, &members, &added, &ready, sender.as_ref()) {
            Ok(next) => next,
            Err(outcome) => return Ok((refuse(tx, outcome).await?, Vec::new())),
        };
    if !added.is_empty() {
        // apply_commit found the committer among the members (or it is
        // the new group's creator, read above).
        let committer = members
            .iter()
            .map(|(d, _)| d)
            .chain(sender.as_ref())
            .find(|d| d.id == c.commit.sender_device)
            .map(|d| d.account_id);
        if let Some(committer) = committer {
            let blockers = blockers_of(&mut tx, committer).await?;
            if let Some(refusal) = group_rules::check_adds_not_blocked(&added, &blockers) {
                return Ok((refuse(tx, refusal).await?, Vec::new()));
            }
        }
    }
    sqlx::query("UPDATE mls_groups SET epoch = $2 WHERE group_id = $1")
        .bind(&c.group_id)
        .bind((c.epoch + 1) as i64)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
    sqlx::query("DELETE FROM group_members WHERE group_id = $1")
        .bind(&c.group_id)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
    let next_ids: Vec<i64> = next.iter().map(|(d, _)| *d as i64).collect();
    let next_leaves: Vec<Option<i64>> = next.iter().map(|(_, leaf)| leaf.map(i64::from)).collect();
    sqlx::query(
        "INSERT INTO group_members (group_id, device_id, leaf_index)
         SELECT $1, d, l FROM unnest($2::BIGINT[], $3::BIGINT[]) AS t(d, l)",
    )
    .bind(&c.group_id)
    .bind(&next_ids)
    .bind(&next_leaves)
    .execute(&mut *tx)
    .await
    .map_err(backend)?;
    let everyone = group_members(&mut tx, &c.group_id).await?;
    // Old members (removed ones too) get the commit; added ones join by the Welcome.
    let told: Vec<DeviceId> = members
        .iter()
        .filter(|(d, _)| d.revoked.is_none())
        .map(|(d, _)| d.id)
        .chain(current.is_none().then_some(c.commit.sender_device))
        .collect();
    if c.welcome.is_some() {
        // Two envelopes to two sets of devices: take every head first,
        // in one device order, as a single enqueue would.
        let mut all: Vec<DeviceId> = told.iter().chain(c.added.iter()).copied().collect();
        all.sort_unstable();
        all.dedup();
        lock_heads(&mut tx, &all).await?;
    }
    let commit_placed = insert_envelope(&mut *tx, &c.commit, &told).await?;
    let welcome_placed = match &c.welcome {
        Some(w) => insert_envelope(&mut *tx, w, &c.added).await?,
        None => Vec::new(),
    };
    tx.commit().await.map_err(backend)?;
    let recipients = everyone
        .into_iter()
        .filter(|d| d.revoked.is_none() && d.id != c.commit.sender_device)
        .collect();
    let mut told = vec![CommittedEnvelope {
        envelope: Arc::new(c.commit),
        placed: commit_placed,
    }];
    if let Some(w) = c.welcome {
        told.push(CommittedEnvelope {
            envelope: Arc::new(w),
            placed: welcome_placed,
        });
    }
    Ok((GroupOutcome::Accepted { recipients }, told))
}

/// Ends a transaction that wrote nothing that should stay (a refusal), so
/// its locks are released before the caller hears the outcome.
async fn refuse(tx: Transaction<'static, Postgres>, outcome: GroupOutcome) -> Result<GroupOutcome> {
    tx.rollback().await.map_err(backend)?;
    Ok(outcome)
}

#[async_trait]
impl Store for PgStore {
    fn hint_secret(&self) -> Option<&str> {
        Some(&self.hint_secret)
    }

    fn set_commit_listener(&self, listener: Arc<dyn CommitListener>) -> Option<HintOrder> {
        self.listener
            .set(listener)
            .is_ok()
            .then_some(HintOrder::ContiguousSeqs)
    }

    async fn token_state(&self, key: &str) -> Result<Option<i64>> {
        sqlx::query_scalar("SELECT tat_ms FROM rate_limits WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)
    }

    async fn take_token(
        &self,
        key: &str,
        now_ms: i64,
        interval_ms: i64,
        burst: u32,
    ) -> Result<Option<i64>> {
        let (interval, tolerance) = gcra::limits(interval_ms, burst);
        if burst == 0 {
            return Ok(Some(interval));
        }
        // A new bucket starts full: its first token always passes (burst >= 1).
        // The row lock taken by the upsert orders racing callers on any node;
        // a refused one leaves the row as it was.
        let taken: Option<i64> = sqlx::query_scalar(
            "INSERT INTO rate_limits (key, tat_ms) VALUES ($1, $2 + $3)
             ON CONFLICT (key) DO UPDATE SET tat_ms = GREATEST(rate_limits.tat_ms, $2) + $3
             WHERE GREATEST(rate_limits.tat_ms, $2) + $3 - $2 <= $4
             RETURNING tat_ms",
        )
        .bind(key)
        .bind(now_ms)
        .bind(interval)
        .bind(tolerance)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        if taken.is_some() {
            return Ok(None);
        }
        let tat: Option<i64> = sqlx::query_scalar("SELECT tat_ms FROM rate_limits WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        Ok(Some(gcra::retry_after(tat, now_ms, interval, tolerance)))
    }

    async fn put_verification(&self, v: Verification) -> Result<()> {
        sqlx::query(
            "INSERT INTO verifications (phone, session, code_hash, expires_ms, attempts) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (phone, session) DO UPDATE SET code_hash = EXCLUDED.code_hash,
             expires_ms = EXCLUDED.expires_ms, attempts = EXCLUDED.attempts",
        )
        .bind(&v.phone)
        .bind(&v.session)
        .bind(&v.code_hash)
        .bind(v.expires_ms)
        .bind(v.attempts.min(i32::MAX as u32) as i32)
        .execute(&self.pool)
        .await
        .map(|_| ())
        .map_err(backend)
    }

    async fn take_code_attempt(
        &self,
        phone: &str,
        session: &[u8],
        now_ms: i64,
        max_attempts: u32,
    ) -> Result<CodeAttempt> {
        let counted = sqlx::query(
            "UPDATE verifications SET attempts = attempts + 1
             WHERE phone = $1 AND session = $2 AND expires_ms > $3 AND attempts < $4
             RETURNING code_hash, attempts",
        )
        .bind(phone)
        .bind(session)
        .bind(now_ms)
        .bind(i64::from(max_attempts))
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        if let Some(r) = counted {
            return Ok(CodeAttempt::Counted {
                code_hash: r.get(0),
                attempts: r.get::<i32, _>(1) as u32,
            });
        }
        let row = sqlx::query(
            "SELECT expires_ms, attempts FROM verifications WHERE phone = $1 AND session = $2",
        )
        .bind(phone)
        .bind(session)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        Ok(CodeAttempt::refused(
            row.map(|r| (r.get(0), r.get::<i32, _>(1) as u32)),
            now_ms,
        ))
    }

    async fn delete_verifications(&self, phone: &str) -> Result<()> {
        sqlx::query("DELETE FROM verifications WHERE phone = $1")
            .bind(phone)
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(backend)
    }

    async fn account_by_phone(&self, phone: &str) -> Result<Option<Account>> {
        let row = sqlx::query("SELECT id, phone, pin_hash, pin_failures, pin_locked_until_ms FROM accounts WHERE phone = $1")
            .bind(phone)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        Ok(row.map(|r| Account {
            id: r.get::<i64, _>(0) as u64,
            phone: r.get(1),
            pin_hash: r.get(2),
            pin_failures: r.get::<i32, _>(3) as u32,
            pin_locked_until_ms: r.get(4),
        }))
    }

    async fn register_primary(
        &self,
        phone: &str,
        identity_key: &[u8],
        name: &str,
        now_ms: i64,
    ) -> Result<Registration> {
        let mut tx = self.begin().await?;
        sqlx::query("INSERT INTO accounts (phone, created_ms) VALUES ($1, $2) ON CONFLICT (phone) DO NOTHING")
            .bind(phone)
            .bind(now_ms)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        // Lock the account row: two registrations of one number serialise here.
        let account_id: i64 =
            sqlx::query_scalar("SELECT id FROM accounts WHERE phone = $1 FOR UPDATE")
                .bind(phone)
                .fetch_one(&mut *tx)
                .await
                .map_err(backend)?;
        let account_id = account_id as u64;
        let old = devices_of_account(&mut *tx, account_id).await?;
        if !old.is_empty() {
            // Locked above (FOR UPDATE), as `lock_changing_accounts` would.
            bump_send_checks(&mut tx, &[account_id]).await?;
        }
        for d in &old {
            revoke(&mut tx, d.id, RevokeReason::NumberMoved).await?;
        }
        sqlx::query("UPDATE accounts SET pin_failures = 0, pin_locked_until_ms = 0 WHERE id = $1")
            .bind(account_id as i64)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let device = insert_device(&mut tx, account_id, identity_key, name, true, now_ms).await?;
        tx.commit().await.map_err(backend)?;
        Ok(Registration {
            account_id,
            device,
            revoked: old.into_iter().map(|d| d.id).collect(),
        })
    }

    async fn set_pin(&self, account: AccountId, pin_hash: Option<String>) -> Result<()> {
        sqlx::query("UPDATE accounts SET pin_hash = $2, pin_failures = 0, pin_locked_until_ms = 0 WHERE id = $1")
            .bind(account as i64)
            .bind(pin_hash)
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(backend)
    }

    async fn take_pin_attempt(
        &self,
        account: AccountId,
        now_ms: i64,
        max_attempts: u32,
        lockout_ms: i64,
    ) -> Result<PinAttempt> {
        let max_attempts = i64::from(max_attempts.max(1));
        // The UPDATE counts and checks in one step under the row lock. When
        // it counts nothing the account was locked; the lock is read back.
        // Only register_primary and set_pin clear a lock, so if one did in
        // between, the count is simply tried again.
        for _ in 0..3 {
            let counted: Option<i32> = sqlx::query_scalar(
                "UPDATE accounts SET
                     pin_failures = CASE WHEN pin_locked_until_ms <> 0 THEN 1 ELSE pin_failures + 1 END,
                     pin_locked_until_ms = CASE
                         WHEN (CASE WHEN pin_locked_until_ms <> 0 THEN 1 ELSE pin_failures + 1 END) >= $3
                         THEN $2 + $4 ELSE 0 END
                 WHERE id = $1 AND pin_locked_until_ms <= $2
                 RETURNING pin_failures",
            )
            .bind(account as i64)
            .bind(now_ms)
            .bind(max_attempts)
            .bind(lockout_ms)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
            if let Some(attempt) = counted {
                return Ok(PinAttempt::Counted {
                    attempt: attempt as u32,
                });
            }
            let until_ms: i64 =
                sqlx::query_scalar("SELECT pin_locked_until_ms FROM accounts WHERE id = $1")
                    .bind(account as i64)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(backend)?
                    .ok_or(StoreError::NotFound("account"))?;
            if until_ms > now_ms {
                return Ok(PinAttempt::Locked { until_ms });
            }
        }
        Err(StoreError::Unavailable(
            "the PIN lock keeps changing; try again".into(),
        ))
    }

    async fn device(&self, id: DeviceId) -> Result<Option<Device>> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {DEVICE_COLS} WHERE d.id = $1"
        )))
        .bind(id as i64)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        Ok(row.as_ref().map(row_device))
    }

    async fn device_by_key(&self, identity_key: &[u8]) -> Result<Option<Device>> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {DEVICE_COLS} WHERE d.identity_key = $1 AND d.revoked = 0"
        )))
        .bind(identity_key)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        Ok(row.as_ref().map(row_device))
    }

    async fn devices_of(&self, account: AccountId) -> Result<Vec<Device>> {
        devices_of_account(&self.pool, account).await
    }

    async fn add_linked_device(
        &self,
        account: AccountId,
        identity_key: &[u8],
        name: &str,
        now_ms: i64,
        max_linked: u32,
    ) -> Result<Device> {
        let mut tx = self.begin().await?;
        // The account row lock makes the count and the insert one step across nodes.
        sqlx::query("SELECT id FROM accounts WHERE id = $1 FOR UPDATE")
            .bind(account as i64)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let linked: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM devices WHERE account_id = $1 AND NOT is_primary AND revoked = 0",
        )
        .bind(account as i64)
        .fetch_one(&mut *tx)
        .await
        .map_err(backend)?;
        if linked >= max_linked as i64 {
            return Err(StoreError::TooManyDevices { max: max_linked });
        }
        let device = insert_device(&mut tx, account, identity_key, name, false, now_ms).await?;
        tx.commit().await.map_err(backend)?;
        Ok(device)
    }

    async fn revoke_device(&self, id: DeviceId, reason: RevokeReason) -> Result<()> {
        let mut tx = self.begin().await?;
        if let Some((account, true)) = lock_account_of(&mut tx, id).await? {
            bump_send_checks(&mut tx, &[account]).await?;
        }
        revoke(&mut tx, id, reason).await?;
        tx.commit().await.map_err(backend)
    }

    async fn touch_device(&self, id: DeviceId, now_ms: i64) -> Result<()> {
        sqlx::query("UPDATE devices SET last_seen_ms = $2 WHERE id = $1")
            .bind(id as i64)
            .bind(now_ms)
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(backend)
    }

    async fn put_link_request(&self, req: LinkRequest) -> Result<()> {
        sqlx::query("INSERT INTO link_requests (code, identity_key, device_name, expires_ms) VALUES ($1, $2, $3, $4)")
            .bind(&req.code)
            .bind(&req.identity_key)
            .bind(&req.device_name)
            .bind(req.expires_ms)
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(backend)
    }

    async fn take_link_request(&self, code: &str, now_ms: i64) -> Result<Option<LinkRequest>> {
        let row = sqlx::query(
            "DELETE FROM link_requests WHERE code = $1 AND expires_ms > $2 RETURNING code, identity_key, device_name, expires_ms",
        )
        .bind(code)
        .bind(now_ms)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        Ok(row.map(|r| LinkRequest {
            code: r.get(0),
            identity_key: r.get(1),
            device_name: r.get(2),
            expires_ms: r.get(3),
        }))
    }

    async fn put_key_packages(
        &self,
        device: DeviceId,
        suite: Suite,
        one_time: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
        max_one_time: u32,
    ) -> Result<KeyStock> {
        let mut tx = self.begin().await?;
        // A last-resort package in the classic suite makes an active device
        // without one ready, which its account's groups' sends are checked
        // against. (Its account's row comes before the device's, as for a
        // revoke; a rotation, or a revoked device, changes nothing there.)
        if last_resort.is_some()
            && suite == CLASSIC_SUITE
            && let Some((account, true)) = lock_account_of(&mut tx, device).await?
        {
            let becomes_ready: bool = sqlx::query_scalar(
                "SELECT d.revoked = 0 AND NOT EXISTS (
                     SELECT 1 FROM key_packages k
                     WHERE k.device_id = d.id AND k.suite = $2 AND k.last_resort)
                 FROM devices d WHERE d.id = $1",
            )
            .bind(device as i64)
            .bind(i32::from(CLASSIC_SUITE))
            .fetch_one(&mut *tx)
            .await
            .map_err(backend)?;
            if becomes_ready {
                bump_send_checks(&mut tx, &[account]).await?;
            }
        }
        // The device row lock makes an upload one step: two concurrent
        // uploads cannot both leave their last-resort package behind, nor
        // both fill the same room under the cap. (Claims only take packages
        // away, so they need not wait for it.)
        sqlx::query("SELECT id FROM devices WHERE id = $1 FOR NO KEY UPDATE")
            .bind(device as i64)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        if let Some(lr) = last_resort {
            sqlx::query(
                "DELETE FROM key_packages WHERE device_id = $1 AND suite = $2 AND last_resort",
            )
            .bind(device as i64)
            .bind(i32::from(suite))
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
            sqlx::query(
                "INSERT INTO key_packages (device_id, last_resort, data, suite) VALUES ($1, TRUE, $2, $3)",
            )
            .bind(device as i64)
            .bind(&lr)
            .bind(i32::from(suite))
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
        let room = max_one_time.saturating_sub(key_stock(&mut *tx, device, suite).await?.one_time);
        let one_time: Vec<Vec<u8>> = one_time.into_iter().take(room as usize).collect();
        if !one_time.is_empty() {
            // In upload order, so they are claimed oldest first.
            sqlx::query(
                "INSERT INTO key_packages (device_id, last_resort, data, suite)
                 SELECT $1, FALSE, k, $3 FROM unnest($2::BYTEA[]) WITH ORDINALITY AS t(k, n) ORDER BY n",
            )
            .bind(device as i64)
            .bind(&one_time)
            .bind(i32::from(suite))
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
        let stock = key_stock(&mut *tx, device, suite).await?;
        tx.commit().await.map_err(backend)?;
        Ok(stock)
    }

    async fn key_stock(&self, device: DeviceId, suite: Suite) -> Result<KeyStock> {
        key_stock(&self.pool, device, suite).await
    }

    async fn claim_key_packages(
        &self,
        account: AccountId,
        known: &[DeviceId],
        one_time: bool,
        suites: &[Suite],
    ) -> Result<Claimed> {
        let mut tx = self.begin().await?;
        let devices = ready_devices(&mut *tx, &[account]).await?;
        let unknown: Vec<DeviceId> = devices
            .iter()
            .map(|d| d.id)
            .filter(|id| !known.contains(id))
            .collect();
        let suite = claim_suite(suites, &last_resort_suites(&mut *tx, &unknown).await?);
        let mut out = Vec::new();
        for device in devices {
            let key_package = if known.contains(&device.id) {
                None
            } else {
                take_key_package(&mut tx, device.id, suite, one_time).await?
            };
            out.push(ClaimedDevice {
                device,
                key_package,
            });
        }
        tx.commit().await.map_err(backend)?;
        Ok(Claimed {
            suite,
            devices: out,
        })
    }

    async fn member_epoch(&self, group_id: &[u8], device: DeviceId) -> Result<Option<u64>> {
        let epoch: Option<i64> = sqlx::query_scalar(
            "SELECT g.epoch FROM mls_groups g JOIN group_members m ON m.group_id = g.group_id \
             WHERE g.group_id = $1 AND m.device_id = $2",
        )
        .bind(group_id)
        .bind(device as i64)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        Ok(epoch.map(|e| e as u64))
    }

    async fn group_epoch(&self, group_id: &[u8]) -> Result<Option<u64>> {
        let epoch: Option<i64> =
            sqlx::query_scalar("SELECT epoch FROM mls_groups WHERE group_id = $1")
                .bind(group_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(backend)?;
        Ok(epoch.map(|e| e as u64))
    }

    /// Queued to the group's send worker (`postgres/sends.rs`), so that it
    /// lands after the sends to that group submitted before it.
    async fn commit_group(&self, c: GroupCommit) -> Result<GroupOutcome> {
        if let Some(refusal) = group_rules::check_lists(&c) {
            return Ok(refusal);
        }
        self.sends.commit(c).await
    }

    async fn send_group(
        &self,
        group_id: &[u8],
        epoch: u64,
        envelope: NewEnvelope,
        quota: MailboxQuota,
    ) -> Result<GroupOutcome> {
        self.submit_send_group(group_id, epoch, envelope, quota)
            .await?
            .await
    }

    /// Queued to the node's group commit (`postgres/sends.rs`): returns
    /// once queued, answers at the batch's commit.
    async fn submit_send_group(
        &self,
        group_id: &[u8],
        epoch: u64,
        envelope: NewEnvelope,
        quota: MailboxQuota,
    ) -> Result<Pending<GroupOutcome>> {
        let answer = self.sends.submit(group_id, epoch, envelope, quota).await?;
        Ok(Box::pin(async move {
            answer.await.map_err(|_| sends::unanswered())?
        }))
    }

    async fn set_block(&self, account: AccountId, blocked: AccountId, on: bool) -> Result<()> {
        let mut tx = self.begin().await?;
        write_block(&mut tx, account, blocked, on, now_ms()).await?;
        tx.commit().await.map_err(backend)
    }

    async fn report(&self, reporter: AccountId, reported: AccountId, now_ms: i64) -> Result<()> {
        let mut tx = self.begin().await?;
        // It blocks too, as `set_block` does (first: it locks the accounts).
        write_block(&mut tx, reporter, reported, true, now_ms).await?;
        sqlx::query(
            "INSERT INTO reports (reporter_id, reported_id, created_ms) VALUES ($1, $2, $3)
             ON CONFLICT (reporter_id, reported_id) DO UPDATE SET created_ms = EXCLUDED.created_ms",
        )
        .bind(reporter as i64)
        .bind(reported as i64)
        .bind(now_ms)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)
    }

    async fn reports_against(&self, account: AccountId) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM reports WHERE reported_id = $1")
            .bind(account as i64)
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        Ok(n as u64)
    }

    async fn set_business(
        &self,
        account: AccountId,
        profile: &[u8],
        display_name: &str,
        now_ms: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO businesses (account_id, profile, display_name, updated_ms) VALUES ($1, $2, $3, $4)
             ON CONFLICT (account_id) DO UPDATE SET profile = EXCLUDED.profile,
               verified = businesses.verified AND businesses.display_name = EXCLUDED.display_name,
               display_name = EXCLUDED.display_name, updated_ms = EXCLUDED.updated_ms",
        )
        .bind(account as i64)
        .bind(profile)
        .bind(display_name)
        .bind(now_ms)
        .execute(&self.pool)
        .await
        .map(|_| ())
        .map_err(backend)
    }

    async fn business(&self, account: AccountId) -> Result<Option<Business>> {
        let row: Option<(Vec<u8>, String, bool, i64)> = sqlx::query_as(
            "SELECT profile, display_name, verified, updated_ms FROM businesses WHERE account_id = $1",
        )
        .bind(account as i64)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        Ok(
            row.map(|(profile, display_name, verified, updated_ms)| Business {
                profile,
                display_name,
                verified,
                updated_ms,
            }),
        )
    }

    async fn verify_business(&self, account: AccountId, name: Option<&str>) -> Result<bool> {
        let done = match name {
            Some(name) => sqlx::query(
                "UPDATE businesses SET verified = TRUE WHERE account_id = $1 AND display_name = $2",
            )
            .bind(account as i64)
            .bind(name)
            .execute(&self.pool)
            .await,
            None => {
                sqlx::query("UPDATE businesses SET verified = FALSE WHERE account_id = $1")
                    .bind(account as i64)
                    .execute(&self.pool)
                    .await
            }
        }
        .map_err(backend)?;
        Ok(done.rows_affected() > 0)
    }

    async fn enqueue(&self, e: NewEnvelope, devices: &[DeviceId]) -> Result<()> {
        // One statement, so one transaction on its own.
        let placed = insert_envelope(&self.pool, &e, devices).await?;
        tell(&self.listener, || {
            vec![CommittedEnvelope {
                envelope: Arc::new(e),
                placed,
            }]
        });
        Ok(())
    }

    async fn fetch_mailbox(
        &self,
        device: DeviceId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<MailboxEntry>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT seq, message_id, sender_phone, sender_device, server_time_ms, {MAILBOX_BODY}
                 FROM mailbox WHERE device_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
        )))
        .bind(device as i64)
        .bind(after as i64)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        Ok(rows
            .iter()
            .map(|r| MailboxEntry {
                seq: r.get::<i64, _>(0) as u64,
                message_id: r.get(1),
                sender_phone: r.get(2),
                sender_device: r.get::<i64, _>(3) as u64,
                server_time_ms: r.get(4),
                body: r.get(5),
            })
            .collect())
    }

    async fn ack(&self, device: DeviceId, seqs: &[u64]) -> Result<usize> {
        let seqs: Vec<i64> = seqs.iter().map(|s| *s as i64).collect();
        let gone = delete_from_mailbox(&self.pool, device, Some(&seqs)).await?;
        Ok(gone as usize)
    }

    async fn mailbox_len(&self, device: DeviceId) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM mailbox WHERE device_id = $1")
            .bind(device as i64)
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        Ok(n as u64)
    }

    async fn mailbox_usage(&self, device: DeviceId) -> Result<(u64, u64)> {
        let row = sqlx::query("SELECT envelopes, bytes FROM mailbox_heads WHERE device_id = $1")
            .bind(device as i64)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        Ok(row
            .map(|r| (r.get::<i64, _>(0) as u64, r.get::<i64, _>(1) as u64))
            .unwrap_or_default())
    }

    async fn stored_body_bytes(&self) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(STORED_BODY_BYTES)
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        Ok(n as u64)
    }

    async fn expire(&self, now_ms: i64, retention_ms: i64) -> Result<Expired> {
        let mut tx = self.begin().await?;
        // The delete first, totalled per device; then the heads, locked in
        // device order before they are updated (see the module comment).
        let per_device = sqlx::query(
            "WITH gone AS (
                DELETE FROM mailbox WHERE expires_ms <= $1
                RETURNING device_id, length(body) + shared_len AS bytes, expires_ms - server_time_ms < $2 AS disappearing)
             SELECT device_id, COUNT(*), COALESCE(SUM(bytes), 0)::BIGINT, COUNT(*) FILTER (WHERE disappearing)
             FROM gone GROUP BY device_id ORDER BY device_id",
        )
        .bind(now_ms)
        .bind(retention_ms)
        .fetch_all(&mut *tx)
        .await
        .map_err(backend)?;
        let mut expired = Expired::default();
        let (mut devices, mut envelopes, mut bytes) = (Vec::new(), Vec::new(), Vec::new());
        for r in &per_device {
            devices.push(r.get::<i64, _>(0));
            envelopes.push(r.get::<i64, _>(1));
            bytes.push(r.get::<i64, _>(2));
            expired.envelopes += r.get::<i64, _>(1) as u64;
            expired.disappearing += r.get::<i64, _>(3) as u64;
        }
        if !devices.is_empty() {
            sqlx::query(
                "SELECT 1 FROM mailbox_heads WHERE device_id = ANY($1) ORDER BY device_id FOR NO KEY UPDATE",
            )
            .bind(&devices)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
            sqlx::query(
                "UPDATE mailbox_heads h SET envelopes = h.envelopes - g.envelopes, bytes = h.bytes - g.bytes
                 FROM unnest($1::BIGINT[], $2::BIGINT[], $3::BIGINT[]) AS g(device_id, envelopes, bytes)
                 WHERE h.device_id = g.device_id",
            )
            .bind(&devices)
            .bind(&envelopes)
            .bind(&bytes)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
        sqlx::query(SWEEP_SHARED_BODIES)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        for stmt in [
            "DELETE FROM link_requests WHERE expires_ms <= $1",
            "DELETE FROM verifications WHERE expires_ms <= $1",
            // A bucket whose arrival time has passed is full: no row says the same.
            "DELETE FROM rate_limits WHERE tat_ms <= $1",
        ] {
            sqlx::query(stmt)
                .bind(now_ms)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(expired)
    }

    async fn create_blob(&self, blob: Blob, quota: BlobQuota) -> Result<BlobCreated> {
        let mut tx = self.begin().await?;
        // The account's row lock orders every upload of the account, across
        // nodes: the sums and the insert happen under it.
        sqlx::query("SELECT 1 FROM accounts WHERE id = $1 FOR UPDATE")
            .bind(blob.owner_account as i64)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let (device, account): (i64, i64) = sqlx::query_as(
            "SELECT COALESCE(SUM(length) FILTER (WHERE owner_device = $1), 0)::BIGINT, \
                    COALESCE(SUM(length), 0)::BIGINT \
             FROM blobs WHERE owner_account = $2",
        )
        .bind(blob.owner_device as i64)
        .bind(blob.owner_account as i64)
        .fetch_one(&mut *tx)
        .await
        .map_err(backend)?;
        let (device, account) = (device as u64, account as u64);
        if device.saturating_add(blob.length) > quota.device_bytes {
            return Ok(BlobCreated::DeviceQuota { used: device });
        }
        if account.saturating_add(blob.length) > quota.account_bytes {
            return Ok(BlobCreated::AccountQuota { used: account });
        }
        sqlx::query(
            "INSERT INTO blobs (id, owner_device, owner_account, length, sha256, \
             upload_token_sha256, capability_sha256, created_ms, expires_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&blob.id)
        .bind(blob.owner_device as i64)
        .bind(blob.owner_account as i64)
        .bind(blob.length as i64)
        .bind(&blob.sha256)
        .bind(&blob.upload_token_sha256)
        .bind(&blob.capability_sha256)
        .bind(blob.created_ms)
        .bind(blob.expires_ms)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(BlobCreated::Created)
    }

    async fn blob(&self, id: &[u8]) -> Result<Option<Blob>> {
        sqlx::query(AssertSqlSafe(format!("SELECT {BLOB_COLS} WHERE id = $1")))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map(|r| r.as_ref().map(row_blob))
            .map_err(backend)
    }

    async fn add_blob_segment(&self, id: &[u8], segment: BlobSegment) -> Result<Option<u64>> {
        let BlobSegment { offset, len, write } = segment;
        let mut tx = self.begin().await?;
        let moved = sqlx::query(
            "UPDATE blobs SET received = received + $3 \
             WHERE id = $1 AND received = $2 AND NOT complete AND received + $3 <= length",
        )
        .bind(id)
        .bind(offset as i64)
        .bind(len as i64)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        if moved.rows_affected() == 0 {
            return Ok(None);
        }
        sqlx::query(
            "INSERT INTO blob_segments (blob_id, seg_offset, len, write_id) VALUES ($1, $2, $3, $4)",
        )
        .bind(id)
        .bind(offset as i64)
        .bind(len as i64)
        .bind(write as i64)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(Some(offset + len))
    }

    async fn blob_segments(&self, id: &[u8]) -> Result<Vec<BlobSegment>> {
        sqlx::query(
            "SELECT seg_offset, len, write_id FROM blob_segments WHERE blob_id = $1 ORDER BY seg_offset",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .map(|rows| rows.iter().map(row_segment).collect())
        .map_err(backend)
    }

    async fn complete_blob(&self, id: &[u8], expires_ms: i64) -> Result<bool> {
        sqlx::query(
            "UPDATE blobs SET complete = TRUE, expires_ms = $2 \
             WHERE id = $1 AND received = length AND NOT complete",
        )
        .bind(id)
        .bind(expires_ms)
        .execute(&self.pool)
        .await
        .map(|r| r.rows_affected() == 1)
        .map_err(backend)
    }

    async fn share_blob(&self, id: &[u8], group_id: &[u8], sharer: DeviceId) -> Result<BlobShared> {
        let mut tx = self.begin().await?;
        let member: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM group_members WHERE group_id = $1 AND device_id = $2",
        )
        .bind(group_id)
        .bind(sharer as i64)
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
        if member.is_none() {
            return Ok(BlobShared::NotMember);
        }
        let complete = sqlx::query("UPDATE blobs SET shared = TRUE WHERE id = $1 AND complete")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        if complete.rows_affected() == 0 {
            return Ok(BlobShared::NotFound);
        }
        sqlx::query(
            "INSERT INTO blob_fetchers (blob_id, device_id) \
             SELECT $1, device_id FROM group_members WHERE group_id = $2 AND device_id != $3 \
             ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(group_id)
        .bind(sharer as i64)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        let waiting: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM blob_fetchers WHERE blob_id = $1")
                .bind(id)
                .fetch_one(&mut *tx)
                .await
                .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(BlobShared::Shared {
            waiting: waiting as u64,
        })
    }

    async fn blob_fetched(&self, id: &[u8], device: DeviceId) -> Result<bool> {
        let mut tx = self.begin().await?;
        // The blob's row lock: two last fetchers racing on two nodes must
        // not both see the other's row still there.
        lock_blob(&mut tx, id).await?;
        let removed =
            sqlx::query("DELETE FROM blob_fetchers WHERE blob_id = $1 AND device_id = $2")
                .bind(id)
                .bind(device as i64)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        if removed.rows_affected() == 0 {
            return Ok(false);
        }
        let rest: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM blob_fetchers WHERE blob_id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(rest == 0)
    }

    async fn delete_blob(&self, id: &[u8]) -> Result<Vec<BlobSegment>> {
        let mut tx = self.begin().await?;
        // The blob's row first: a segment recorded meanwhile (it updates
        // that row) waits, then finds the blob gone.
        lock_blob(&mut tx, id).await?;
        let mut segments: Vec<BlobSegment> = sqlx::query(
            "DELETE FROM blob_segments WHERE blob_id = $1 RETURNING seg_offset, len, write_id",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await
        .map_err(backend)?
        .iter()
        .map(row_segment)
        .collect();
        segments.sort_by_key(|s| s.offset);
        for stmt in [
            "DELETE FROM blob_fetchers WHERE blob_id = $1",
            "DELETE FROM blobs WHERE id = $1",
        ] {
            sqlx::query(stmt)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(segments)
    }

    async fn expired_blobs(&self, now_ms: i64, limit: u32) -> Result<Vec<Vec<u8>>> {
        sqlx::query_scalar("SELECT id FROM blobs WHERE expires_ms <= $1 LIMIT $2")
            .bind(now_ms)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(backend)
    }

    async fn kt_write(
        &self,
        records: Vec<KtRecord>,
        states: Vec<KtValueState>,
        advance: Option<(u64, u64)>,
    ) -> Result<bool> {
        let mut tx = self.begin().await?;
        if let Some((from, to)) = advance {
            sqlx::query("INSERT INTO kt_head (id, epoch) VALUES (1, 0) ON CONFLICT DO NOTHING")
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            // The row lock taken here holds until the commit: a second
            // node's advance from the same epoch waits, then finds the
            // epoch moved and writes nothing.
            let moved = sqlx::query("UPDATE kt_head SET epoch = $2 WHERE id = 1 AND epoch = $1")
                .bind(from as i64)
                .bind(to as i64)
                .execute(&mut *tx)
                .await
                .map_err(backend)?
                .rows_affected();
            if moved == 0 {
                return Ok(false);
            }
        }
        if !records.is_empty() {
            let kinds: Vec<i16> = records.iter().map(|r| i16::from(r.kind)).collect();
            let ids: Vec<Vec<u8>> = records.iter().map(|r| r.id.clone()).collect();
            let bodies: Vec<Vec<u8>> = records.into_iter().map(|r| r.body).collect();
            sqlx::query(
                "INSERT INTO kt_records (kind, id, body)
                 SELECT * FROM UNNEST($1::SMALLINT[], $2::BYTEA[], $3::BYTEA[])
                 ON CONFLICT (kind, id) DO UPDATE SET body = EXCLUDED.body",
            )
            .bind(kinds)
            .bind(ids)
            .bind(bodies)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
        if !states.is_empty() {
            let labels: Vec<Vec<u8>> = states.iter().map(|v| v.label.clone()).collect();
            let epochs: Vec<i64> = states.iter().map(|v| v.epoch as i64).collect();
            let versions: Vec<i64> = states.iter().map(|v| v.version as i64).collect();
            let bodies: Vec<Vec<u8>> = states.into_iter().map(|v| v.body).collect();
            sqlx::query(
                "INSERT INTO kt_states (label, epoch, version, body)
                 SELECT * FROM UNNEST($1::BYTEA[], $2::BIGINT[], $3::BIGINT[], $4::BYTEA[])
                 ON CONFLICT (label, epoch) DO UPDATE SET version = EXCLUDED.version, body = EXCLUDED.body",
            )
            .bind(labels)
            .bind(epochs)
            .bind(versions)
            .bind(bodies)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(true)
    }

    async fn kt_records(&self, kind: u8, ids: &[Vec<u8>]) -> Result<Vec<KtRecord>> {
        kt_check_read(ids.len())?;
        let rows: Vec<(Vec<u8>, Vec<u8>)> =
            sqlx::query_as("SELECT id, body FROM kt_records WHERE kind = $1 AND id = ANY($2)")
                .bind(i16::from(kind))
                .bind(ids)
                .fetch_all(&self.pool)
                .await
                .map_err(backend)?;
        Ok(rows
            .into_iter()
            .map(|(id, body)| KtRecord { kind, id, body })
            .collect())
    }

    async fn kt_states(&self, labels: &[Vec<u8>]) -> Result<Vec<KtValueState>> {
        kt_check_read(labels.len())?;
        let rows: Vec<(Vec<u8>, i64, i64, Vec<u8>)> = sqlx::query_as(
            "SELECT label, epoch, version, body FROM kt_states WHERE label = ANY($1) ORDER BY label, epoch",
        )
        .bind(labels)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        Ok(rows
            .into_iter()
            .map(|(label, epoch, version, body)| KtValueState {
                label,
                epoch: epoch as u64,
                version: version as u64,
                body,
            })
            .collect())
    }

    async fn kt_put_first(&self, record: KtRecord) -> Result<Vec<u8>> {
        // The no-op update makes RETURNING give the row kept, and takes its
        // lock, so a racing insert waits and then reads the first body.
        sqlx::query_scalar(
            "INSERT INTO kt_records (kind, id, body) VALUES ($1, $2, $3)
             ON CONFLICT (kind, id) DO UPDATE SET body = kt_records.body
             RETURNING body",
        )
        .bind(i16::from(record.kind))
        .bind(record.id)
        .bind(record.body)
        .fetch_one(&self.pool)
        .await
        .map_err(backend)
    }

    async fn kt_epoch(&self) -> Result<u64> {
        let epoch: Option<i64> = sqlx::query_scalar("SELECT epoch FROM kt_head WHERE id = 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        Ok(epoch.unwrap_or(0) as u64)
    }
}
