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

use async_trait::async_trait;
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, Postgres, Row, Transaction};

use crate::*;

// The dynamic SQL here only splices in the constant column list
// (`DEVICE_COLS`); every value is a bind parameter.

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
    "CREATE TABLE IF NOT EXISTS verifications (
        phone TEXT PRIMARY KEY,
        code_hash TEXT NOT NULL,
        expires_ms BIGINT NOT NULL,
        attempts INT NOT NULL DEFAULT 0,
        sent_in_window INT NOT NULL DEFAULT 0,
        window_start_ms BIGINT NOT NULL DEFAULT 0)",
    "CREATE TABLE IF NOT EXISTS link_requests (
        code TEXT PRIMARY KEY,
        identity_key BYTEA NOT NULL,
        device_name TEXT NOT NULL DEFAULT '',
        expires_ms BIGINT NOT NULL)",
    // Each device's next mailbox position. Taking it locks the device's row
    // until commit, so a device's envelopes commit in seq order: a reader
    // that fetches `seq > last seen` can never skip one that commits late.
    "CREATE TABLE IF NOT EXISTS mailbox_heads (
        device_id BIGINT PRIMARY KEY,
        next BIGINT NOT NULL)",
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
    // Written empty since MLS (the server does not know a conversation);
    // dropped from stores made before.
    "ALTER TABLE mailbox DROP COLUMN IF EXISTS conversation_phone",
    // The MLS key directory: one-time KeyPackages are deleted when claimed;
    // a device's last-resort one stays until replaced.
    "CREATE TABLE IF NOT EXISTS key_packages (
        id BIGSERIAL PRIMARY KEY,
        device_id BIGINT NOT NULL,
        last_resort BOOLEAN NOT NULL DEFAULT FALSE,
        data BYTEA NOT NULL)",
    "CREATE INDEX IF NOT EXISTS key_packages_by_device ON key_packages(device_id, last_resort, id)",
    // The Delivery Service's groups. A group's row is the lock that orders
    // its commits and messages.
    "CREATE TABLE IF NOT EXISTS mls_groups (
        group_id BYTEA PRIMARY KEY,
        epoch BIGINT NOT NULL,
        created_ms BIGINT NOT NULL DEFAULT 0)",
    "CREATE TABLE IF NOT EXISTS group_members (
        group_id BYTEA NOT NULL,
        device_id BIGINT NOT NULL,
        PRIMARY KEY (group_id, device_id))",
    "CREATE INDEX IF NOT EXISTS group_members_by_device ON group_members(device_id)",
];

#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
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
    /// Connects and migrates. `url` is `postgres://user@host:port/db`.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(backend)?;
        let store = PgStore { pool };
        store.migrate().await?;
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

const DEVICE_COLS: &str = "d.id, d.account_id, a.phone, d.identity_key, d.name, d.is_primary, d.created_ms, d.last_seen_ms, d.revoked FROM devices d JOIN accounts a ON a.id = d.account_id";

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

async fn revoke(
    tx: &mut Transaction<'static, Postgres>,
    id: DeviceId,
    reason: RevokeReason,
) -> Result<()> {
    sqlx::query("DELETE FROM mailbox WHERE device_id = $1")
        .bind(id as i64)
        .execute(&mut **tx)
        .await
        .map_err(backend)?;
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

/// Appends the envelope to every listed device's mailbox, each at its
/// device's next seq. Heads are taken in device order, so two transactions
/// writing to overlapping devices lock them in the same order and cannot
/// deadlock; each head stays locked until the caller's transaction ends.
async fn insert_envelope<'e, E: sqlx::PgExecutor<'e>>(
    ex: E,
    e: &NewEnvelope,
    devices: &[DeviceId],
) -> Result<()> {
    if devices.is_empty() {
        return Ok(());
    }
    let mut ids: Vec<i64> = devices.iter().map(|d| *d as i64).collect();
    ids.sort_unstable();
    // One statement for every recipient: unnest the device ids.
    sqlx::query(
        "WITH heads AS (
            INSERT INTO mailbox_heads (device_id, next)
            SELECT d, 1 FROM unnest($1::BIGINT[]) AS d ORDER BY d
            ON CONFLICT (device_id) DO UPDATE SET next = mailbox_heads.next + 1
            RETURNING device_id, next)
         INSERT INTO mailbox (device_id, seq, message_id, sender_phone, sender_device, server_time_ms, expires_ms, body)
         SELECT device_id, next, $2, $3, $4, $5, $6, $7 FROM heads",
    )
    .bind(&ids)
    .bind(&e.message_id)
    .bind(&e.sender_phone)
    .bind(e.sender_device as i64)
    .bind(e.server_time_ms)
    .bind(e.expires_ms)
    .bind(&e.body)
    .execute(ex)
    .await
    .map(|_| ())
    .map_err(backend)
}

/// Locks these devices' mailbox heads (creating missing ones) in device
/// order until the transaction ends, for a transaction that will then call
/// `insert_envelope` more than once: without it, each call would lock its
/// own devices in order but the union would not be, and two transactions
/// could each hold a head the other waits for.
async fn lock_heads(tx: &mut Transaction<'static, Postgres>, devices: &[DeviceId]) -> Result<()> {
    let mut ids: Vec<i64> = devices.iter().map(|d| *d as i64).collect();
    ids.sort_unstable();
    ids.dedup();
    // `next` is the last seq used: 0 for a new head, so that the
    // enqueue's increment then hands out 1, as a first insert would.
    sqlx::query(
        "INSERT INTO mailbox_heads (device_id, next)
         SELECT d, 0 FROM unnest($1::BIGINT[]) AS d ORDER BY d
         ON CONFLICT (device_id) DO UPDATE SET next = mailbox_heads.next",
    )
    .bind(&ids)
    .execute(&mut **tx)
    .await
    .map(|_| ())
    .map_err(backend)
}

async fn key_stock<'e, E: sqlx::PgExecutor<'e>>(ex: E, device: DeviceId) -> Result<KeyStock> {
    let row = sqlx::query(
        "SELECT COUNT(*) FILTER (WHERE NOT last_resort), COALESCE(BOOL_OR(last_resort), FALSE)
         FROM key_packages WHERE device_id = $1",
    )
    .bind(device as i64)
    .fetch_one(ex)
    .await
    .map_err(backend)?;
    Ok(KeyStock {
        one_time: row.get::<i64, _>(0) as u32,
        has_last_resort: row.get(1),
    })
}

/// Active devices of these accounts that have a last-resort KeyPackage,
/// i.e. that can always be added to a group; by account, then device.
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
         AND EXISTS (SELECT 1 FROM key_packages k WHERE k.device_id = d.id AND k.last_resort)
         ORDER BY d.account_id, d.id"
    )))
    .bind(&accounts)
    .fetch_all(ex)
    .await
    .map_err(backend)?;
    Ok(rows.iter().map(row_device).collect())
}

/// Takes one KeyPackage of the device: the oldest one-time one, deleted (a
/// row another transaction is taking is skipped, so concurrent claimers on
/// any node never get the same one), else the last-resort one, kept.
async fn take_key_package(
    tx: &mut Transaction<'static, Postgres>,
    device: DeviceId,
) -> Result<Option<Vec<u8>>> {
    let one_time: Option<Vec<u8>> = sqlx::query_scalar(
        "DELETE FROM key_packages WHERE id = (
            SELECT id FROM key_packages WHERE device_id = $1 AND NOT last_resort
            ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
         RETURNING data",
    )
    .bind(device as i64)
    .fetch_optional(&mut **tx)
    .await
    .map_err(backend)?;
    if one_time.is_some() {
        return Ok(one_time);
    }
    sqlx::query_scalar(
        "SELECT data FROM key_packages WHERE device_id = $1 AND last_resort ORDER BY id DESC LIMIT 1",
    )
    .bind(device as i64)
    .fetch_optional(&mut **tx)
    .await
    .map_err(backend)
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

/// Ends a transaction that wrote nothing that should stay (a refusal), so
/// its locks are released before the caller hears the outcome.
async fn refuse(tx: Transaction<'static, Postgres>, outcome: GroupOutcome) -> Result<GroupOutcome> {
    tx.rollback().await.map_err(backend)?;
    Ok(outcome)
}

#[async_trait]
impl Store for PgStore {
    async fn verification(&self, phone: &str) -> Result<Option<Verification>> {
        let row = sqlx::query(
            "SELECT phone, code_hash, expires_ms, attempts, sent_in_window, window_start_ms FROM verifications WHERE phone = $1",
        )
        .bind(phone)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        Ok(row.map(|r| Verification {
            phone: r.get(0),
            code_hash: r.get(1),
            expires_ms: r.get(2),
            attempts: r.get::<i32, _>(3) as u32,
            sent_in_window: r.get::<i32, _>(4) as u32,
            window_start_ms: r.get(5),
        }))
    }

    async fn put_verification(&self, v: Verification) -> Result<()> {
        sqlx::query(
            "INSERT INTO verifications (phone, code_hash, expires_ms, attempts, sent_in_window, window_start_ms) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (phone) DO UPDATE SET code_hash = EXCLUDED.code_hash, expires_ms = EXCLUDED.expires_ms, attempts = EXCLUDED.attempts,
             sent_in_window = EXCLUDED.sent_in_window, window_start_ms = EXCLUDED.window_start_ms",
        )
        .bind(&v.phone)
        .bind(&v.code_hash)
        .bind(v.expires_ms)
        .bind(v.attempts as i32)
        .bind(v.sent_in_window as i32)
        .bind(v.window_start_ms)
        .execute(&self.pool)
        .await
        .map(|_| ())
        .map_err(backend)
    }

    async fn bump_verification_attempts(&self, phone: &str) -> Result<u32> {
        let n: Option<i32> = sqlx::query_scalar(
            "UPDATE verifications SET attempts = attempts + 1 WHERE phone = $1 RETURNING attempts",
        )
        .bind(phone)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        n.map(|n| n as u32)
            .ok_or(StoreError::NotFound("verification"))
    }

    async fn delete_verification(&self, phone: &str) -> Result<()> {
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

    async fn record_pin_failure(&self, account: AccountId, locked_until_ms: i64) -> Result<u32> {
        let n: i32 = sqlx::query_scalar(
            "UPDATE accounts SET pin_failures = pin_failures + 1, pin_locked_until_ms = $2 WHERE id = $1 RETURNING pin_failures",
        )
        .bind(account as i64)
        .bind(locked_until_ms)
        .fetch_one(&self.pool)
        .await
        .map_err(backend)?;
        Ok(n as u32)
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
        one_time: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
    ) -> Result<KeyStock> {
        let mut tx = self.begin().await?;
        if let Some(lr) = last_resort {
            // The device row lock makes replacing the last-resort package one
            // step: two concurrent uploads cannot both leave theirs behind.
            sqlx::query("SELECT id FROM devices WHERE id = $1 FOR NO KEY UPDATE")
                .bind(device as i64)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            sqlx::query("DELETE FROM key_packages WHERE device_id = $1 AND last_resort")
                .bind(device as i64)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            sqlx::query(
                "INSERT INTO key_packages (device_id, last_resort, data) VALUES ($1, TRUE, $2)",
            )
            .bind(device as i64)
            .bind(&lr)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
        if !one_time.is_empty() {
            // In upload order, so they are claimed oldest first.
            sqlx::query(
                "INSERT INTO key_packages (device_id, last_resort, data)
                 SELECT $1, FALSE, k FROM unnest($2::BYTEA[]) WITH ORDINALITY AS t(k, n) ORDER BY n",
            )
            .bind(device as i64)
            .bind(&one_time)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
        let stock = key_stock(&mut *tx, device).await?;
        tx.commit().await.map_err(backend)?;
        Ok(stock)
    }

    async fn key_stock(&self, device: DeviceId) -> Result<KeyStock> {
        key_stock(&self.pool, device).await
    }

    async fn claim_key_packages(
        &self,
        account: AccountId,
        known: &[DeviceId],
    ) -> Result<Vec<ClaimedDevice>> {
        let mut tx = self.begin().await?;
        let mut out = Vec::new();
        for device in ready_devices(&mut *tx, &[account]).await? {
            let key_package = if known.contains(&device.id) {
                None
            } else {
                take_key_package(&mut tx, device.id).await?
            };
            out.push(ClaimedDevice {
                device,
                key_package,
            });
        }
        tx.commit().await.map_err(backend)?;
        Ok(out)
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

    async fn commit_group(&self, c: GroupCommit) -> Result<GroupOutcome> {
        let mut tx = self.begin().await?;
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
        let members = group_members(&mut tx, &c.group_id).await?;
        let added = devices_by_ids(&mut tx, &c.added).await?;
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
            match group_rules::apply_commit(current, &c, &members, &added, &ready, sender.as_ref())
            {
                Ok(next) => next,
                Err(outcome) => return refuse(tx, outcome).await,
            };
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
        let next_ids: Vec<i64> = next.iter().map(|d| *d as i64).collect();
        sqlx::query(
            "INSERT INTO group_members (group_id, device_id) SELECT $1, d FROM unnest($2::BIGINT[]) AS d",
        )
        .bind(&c.group_id)
        .bind(&next_ids)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        let everyone = group_members(&mut tx, &c.group_id).await?;
        // Old members (removed ones too) get the commit; added ones join by the Welcome.
        let told: Vec<DeviceId> = members
            .iter()
            .filter(|d| d.revoked.is_none())
            .map(|d| d.id)
            .chain(current.is_none().then_some(c.commit.sender_device))
            .collect();
        if let Some(w) = &c.welcome {
            // Two envelopes to two sets of devices: take every head first,
            // in one device order, as a single enqueue would.
            let mut all: Vec<DeviceId> = told.iter().chain(c.added.iter()).copied().collect();
            all.sort_unstable();
            all.dedup();
            lock_heads(&mut tx, &all).await?;
            insert_envelope(&mut *tx, &c.commit, &told).await?;
            insert_envelope(&mut *tx, w, &c.added).await?;
        } else {
            insert_envelope(&mut *tx, &c.commit, &told).await?;
        }
        tx.commit().await.map_err(backend)?;
        let recipients = everyone
            .into_iter()
            .filter(|d| d.revoked.is_none() && d.id != c.commit.sender_device)
            .collect();
        Ok(GroupOutcome::Accepted { recipients })
    }

    async fn send_group(
        &self,
        group_id: &[u8],
        epoch: u64,
        envelope: NewEnvelope,
    ) -> Result<GroupOutcome> {
        let mut tx = self.begin().await?;
        let Some(current) = lock_group(&mut tx, group_id).await? else {
            return refuse(tx, GroupOutcome::NoGroup).await;
        };
        let members = group_members(&mut tx, group_id).await?;
        let ready: Vec<DeviceId> = ready_devices(&mut *tx, &member_accounts(&members))
            .await?
            .iter()
            .map(|d| d.id)
            .collect();
        if let Some(refusal) =
            group_rules::check_send(current, epoch, envelope.sender_device, &members, &ready)
        {
            return refuse(tx, refusal).await;
        }
        let recipients: Vec<Device> = members
            .into_iter()
            .filter(|d| d.id != envelope.sender_device)
            .collect();
        let ids: Vec<DeviceId> = recipients.iter().map(|d| d.id).collect();
        insert_envelope(&mut *tx, &envelope, &ids).await?;
        tx.commit().await.map_err(backend)?;
        Ok(GroupOutcome::Accepted { recipients })
    }

    async fn enqueue(&self, e: NewEnvelope, devices: &[DeviceId]) -> Result<()> {
        // One statement, so one transaction on its own.
        insert_envelope(&self.pool, &e, devices).await
    }

    async fn fetch_mailbox(
        &self,
        device: DeviceId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<MailboxEntry>> {
        let rows = sqlx::query(
            "SELECT seq, message_id, sender_phone, sender_device, server_time_ms, body FROM mailbox
             WHERE device_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
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
        let done = sqlx::query("DELETE FROM mailbox WHERE device_id = $1 AND seq = ANY($2)")
            .bind(device as i64)
            .bind(&seqs)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(done.rows_affected() as usize)
    }

    async fn mailbox_len(&self, device: DeviceId) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM mailbox WHERE device_id = $1")
            .bind(device as i64)
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        Ok(n as u64)
    }

    async fn expire(&self, now_ms: i64, retention_ms: i64) -> Result<Expired> {
        let row = sqlx::query(
            "WITH gone AS (
                DELETE FROM mailbox WHERE expires_ms <= $1
                RETURNING expires_ms - server_time_ms < $2 AS disappearing)
             SELECT COUNT(*), COUNT(*) FILTER (WHERE disappearing) FROM gone",
        )
        .bind(now_ms)
        .bind(retention_ms)
        .fetch_one(&self.pool)
        .await
        .map_err(backend)?;
        sqlx::query("DELETE FROM link_requests WHERE expires_ms <= $1")
            .bind(now_ms)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(Expired {
            envelopes: row.get::<i64, _>(0) as u64,
            disappearing: row.get::<i64, _>(1) as u64,
        })
    }
}
