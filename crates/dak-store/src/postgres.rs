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
        conversation_phone TEXT NOT NULL,
        server_time_ms BIGINT NOT NULL,
        expires_ms BIGINT NOT NULL,
        body BYTEA NOT NULL,
        PRIMARY KEY (device_id, seq))",
    "CREATE INDEX IF NOT EXISTS mailbox_by_expiry ON mailbox(expires_ms)",
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

    async fn fanout(&self, sender: AccountId, to_phone: &str) -> Result<Fanout> {
        // One round trip: both accounts' active devices, told apart by account.
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {DEVICE_COLS} WHERE d.revoked = 0 AND (d.account_id = $1 OR a.phone = $2) ORDER BY d.id"
        )))
        .bind(sender as i64)
        .bind(to_phone)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        let devices: Vec<Device> = rows.iter().map(row_device).collect();
        let own: Vec<Device> = devices
            .iter()
            .filter(|d| d.account_id == sender)
            .cloned()
            .collect();
        let theirs: Vec<Device> = devices
            .into_iter()
            .filter(|d| d.phone == to_phone)
            .collect();
        let recipients = if theirs.is_empty() {
            // No active device: distinguish "no account" from "account without devices".
            let exists: Option<i64> =
                sqlx::query_scalar("SELECT id FROM accounts WHERE phone = $1")
                    .bind(to_phone)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(backend)?;
            exists.map(|_| Vec::new())
        } else {
            Some(theirs)
        };
        Ok(Fanout { recipients, own })
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

    async fn enqueue(&self, e: NewEnvelope, devices: &[DeviceId]) -> Result<()> {
        let ids: Vec<i64> = devices.iter().map(|d| *d as i64).collect();
        // One statement for every recipient: unnest the device ids.
        sqlx::query(
            // Heads are taken in device order, so two sends to overlapping
            // devices lock them in the same order and cannot deadlock.
            "WITH heads AS (
                INSERT INTO mailbox_heads (device_id, next)
                SELECT d, 1 FROM unnest($1::BIGINT[]) AS d ORDER BY d
                ON CONFLICT (device_id) DO UPDATE SET next = mailbox_heads.next + 1
                RETURNING device_id, next)
             INSERT INTO mailbox (device_id, seq, message_id, sender_phone, sender_device, conversation_phone, server_time_ms, expires_ms, body)
             SELECT device_id, next, $2, $3, $4, $5, $6, $7, $8 FROM heads",
        )
        .bind(&ids)
        .bind(&e.message_id)
        .bind(&e.sender_phone)
        .bind(e.sender_device as i64)
        .bind(&e.conversation_phone)
        .bind(e.server_time_ms)
        .bind(e.expires_ms)
        .bind(&e.body)
        .execute(&self.pool)
        .await
        .map(|_| ())
        .map_err(backend)
    }

    async fn fetch_mailbox(
        &self,
        device: DeviceId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<MailboxEntry>> {
        let rows = sqlx::query(
            "SELECT seq, message_id, sender_phone, sender_device, conversation_phone, server_time_ms, body FROM mailbox
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
                conversation_phone: r.get(4),
                server_time_ms: r.get(5),
                body: r.get(6),
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

    async fn expire(&self, now_ms: i64) -> Result<u64> {
        let n = sqlx::query("DELETE FROM mailbox WHERE expires_ms <= $1")
            .bind(now_ms)
            .execute(&self.pool)
            .await
            .map_err(backend)?
            .rows_affected();
        sqlx::query("DELETE FROM link_requests WHERE expires_ms <= $1")
            .bind(now_ms)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(n)
    }
}
