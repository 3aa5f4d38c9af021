//! The embedded store: one SQLite file in WAL mode with `synchronous=FULL`.
//!
//! All writes go through one writer thread that batches whatever jobs are
//! waiting into a single transaction (group commit), each job inside its own
//! savepoint so one failing job does not undo the others. A job's caller is
//! answered only after the whole batch has committed, so "Ok" means on disk.
//! Reads use a small pool of read-only connections on tokio's blocking pool;
//! WAL lets them run beside the writer.
//!
//! Counters that guard a limit (rate-limit buckets, code and PIN attempts,
//! the KeyPackage cap, the mailbox quota) are read and bumped inside one
//! writer job, and the single writer runs jobs one at a time, so the check
//! and the count are one step. Per-device mailbox usage is counted where
//! envelopes go in (`count_into_usage`, called by every insert path, which
//! also checks the quota) and where they go out (`uncount_usage`, one
//! statement per delete and device; `tests/sqlite.rs` recounts after every
//! delete path). Lists a client controls
//! (added devices, acked seqs) go to SQLite as one JSON array bound to one
//! statement, never as a query per id.
//!
//! The send cache: the writer keeps, per group, what every application
//! message is checked against (the epoch, the member devices, the member
//! accounts' ready devices) and each sender account's blockers, so a send
//! reads none of it. It is exact because the writer is the only writer:
//! every write job clears it unless it is one of the jobs listed as leaving
//! groups, devices, KeyPackages' last-resort rows and blocks alone
//! (`write_keeping_cache`); a commit forgets its own group; a batch that
//! fails to commit clears it (it may hold what the failed batch read).
//!
//! The commit listener (`CommitListener`) is called from the writer thread
//! right after a batch commits, job by job in the order the jobs ran (each
//! job's caller is answered just before): with one writer, that order is
//! seq order.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};

use crate::sql::{
    BLOB_COLS, DEVICE_COLS, MAILBOX_BODY, MEMBER_COLS, STORED_BODY_BYTES, SWEEP_SHARED_BODIES,
};
use crate::*;

mod acks;
pub(crate) use acks::ABOVE_MARK;

/// Jobs waiting for the writer. When full, callers wait (backpressure on
/// senders) rather than the server buffering without bound.
const WRITE_QUEUE: usize = 8192;
/// Most jobs folded into one commit.
const MAX_BATCH: usize = 1024;
const READERS: usize = 3;

type Reply = Box<dyn FnOnce(Result<()>) + Send>;
/// Runs with the connection inside the batch's transaction (and the
/// writer's send cache), or with None when no transaction could be begun
/// (it must then fail without writing).
type Job = Box<dyn FnOnce(Option<(&Connection, &mut SendCache)>) -> Reply + Send>;
/// What the send cache may hold before it starts again from empty: groups,
/// device entries over all of them (members and ready devices; ~60 MiB at
/// most), and sender accounts' blocker lists.
const CACHED_GROUPS_MAX: usize = 4096;
const CACHED_DEVICES_MAX: usize = 1 << 18;
const CACHED_SENDERS_MAX: usize = 1 << 16;

/// What the writer remembers between jobs (see "The send cache" above).
#[derive(Default)]
struct SendCache {
    groups: HashMap<Vec<u8>, CachedGroup>,
    /// Device entries held in `groups`.
    devices: usize,
    blockers: HashMap<AccountId, Vec<AccountId>>,
    /// Rows acked under marks and not yet deleted (`acks`). Not a cache:
    /// `clear` keeps it.
    unswept: acks::Backlog,
}

/// A group as `send_group` checks it.
struct CachedGroup {
    epoch: u64,
    /// Member devices, revoked ones included (`group_members`).
    members: Vec<Device>,
    /// The member accounts' ready devices (`ready_devices`).
    ready: Vec<Device>,
}

impl SendCache {
    fn clear(&mut self) {
        self.groups.clear();
        self.devices = 0;
        self.blockers.clear();
    }

    /// Keeps `group`, first emptying the cache if it is at a bound.
    fn keep_group(&mut self, id: &[u8], group: CachedGroup) {
        let size = group.members.len() + group.ready.len();
        if self.groups.len() >= CACHED_GROUPS_MAX || self.devices + size > CACHED_DEVICES_MAX {
            self.clear();
        }
        self.devices += size;
        if let Some(old) = self.groups.insert(id.to_vec(), group) {
            self.devices -= old.members.len() + old.ready.len();
        }
    }

    fn forget_group(&mut self, id: &[u8]) {
        if let Some(old) = self.groups.remove(id) {
            self.devices -= old.members.len() + old.ready.len();
        }
    }
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS accounts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    phone TEXT NOT NULL UNIQUE,
    pin_hash TEXT,
    pin_failures INTEGER NOT NULL DEFAULT 0,
    pin_locked_until_ms INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE TABLE IF NOT EXISTS devices (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id INTEGER NOT NULL REFERENCES accounts(id),
    identity_key BLOB NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    is_primary INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL DEFAULT 0,
    last_seen_ms INTEGER NOT NULL DEFAULT 0,
    revoked INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE INDEX IF NOT EXISTS devices_by_account ON devices(account_id, revoked);
CREATE INDEX IF NOT EXISTS devices_by_key ON devices(identity_key);
CREATE TABLE IF NOT EXISTS verifications (
    phone TEXT NOT NULL,
    session BLOB NOT NULL,
    code_hash TEXT NOT NULL,
    expires_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (phone, session)
) STRICT, WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS verifications_by_expiry ON verifications(expires_ms);
CREATE TABLE IF NOT EXISTS rate_limits (
    key TEXT PRIMARY KEY,
    tat_ms INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS rate_limits_by_tat ON rate_limits(tat_ms);
CREATE TABLE IF NOT EXISTS link_requests (
    code TEXT PRIMARY KEY,
    identity_key BLOB NOT NULL,
    device_name TEXT NOT NULL DEFAULT '',
    expires_ms INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS mailbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id INTEGER NOT NULL,
    message_id BLOB NOT NULL,
    sender_phone TEXT NOT NULL,
    sender_device INTEGER NOT NULL,
    server_time_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    body BLOB NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS mailbox_by_device ON mailbox(device_id, seq);
CREATE INDEX IF NOT EXISTS mailbox_by_expiry ON mailbox(expires_ms);
CREATE TABLE IF NOT EXISTS key_packages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id INTEGER NOT NULL,
    last_resort INTEGER NOT NULL DEFAULT 0,
    data BLOB NOT NULL,
    suite INTEGER NOT NULL DEFAULT 1
) STRICT;
CREATE INDEX IF NOT EXISTS key_packages_by_device ON key_packages(device_id, last_resort, id);
CREATE TABLE IF NOT EXISTS mls_groups (
    group_id BLOB PRIMARY KEY,
    epoch INTEGER NOT NULL,
    created_ms INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE TABLE IF NOT EXISTS group_members (
    group_id BLOB NOT NULL,
    device_id INTEGER NOT NULL,
    leaf_index INTEGER,
    PRIMARY KEY (group_id, device_id)
) STRICT, WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS group_members_by_device ON group_members(device_id);
CREATE TABLE IF NOT EXISTS blocks (
    account_id INTEGER NOT NULL,
    blocked_id INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (account_id, blocked_id)
) STRICT, WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS blocks_by_blocked ON blocks(blocked_id, account_id);
CREATE TABLE IF NOT EXISTS reports (
    reporter_id INTEGER NOT NULL,
    reported_id INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (reporter_id, reported_id)
) STRICT, WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS reports_by_reported ON reports(reported_id);
CREATE TABLE IF NOT EXISTS businesses (
    account_id INTEGER PRIMARY KEY,
    profile BLOB NOT NULL,
    display_name TEXT NOT NULL,
    verified INTEGER NOT NULL DEFAULT 0,
    updated_ms INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS blobs (
    id BLOB PRIMARY KEY,
    owner_device INTEGER NOT NULL,
    owner_account INTEGER NOT NULL,
    length INTEGER NOT NULL,
    received INTEGER NOT NULL DEFAULT 0,
    complete INTEGER NOT NULL DEFAULT 0,
    shared INTEGER NOT NULL DEFAULT 0,
    sha256 BLOB NOT NULL,
    upload_token_sha256 BLOB NOT NULL,
    capability_sha256 BLOB NOT NULL,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS blobs_by_device ON blobs(owner_device);
CREATE INDEX IF NOT EXISTS blobs_by_account ON blobs(owner_account);
CREATE INDEX IF NOT EXISTS blobs_by_expiry ON blobs(expires_ms);
CREATE TABLE IF NOT EXISTS blob_segments (
    blob_id BLOB NOT NULL,
    seg_offset INTEGER NOT NULL,
    len INTEGER NOT NULL,
    write_id INTEGER NOT NULL,
    PRIMARY KEY (blob_id, seg_offset)
) STRICT, WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS blob_fetchers (
    blob_id BLOB NOT NULL,
    device_id INTEGER NOT NULL,
    PRIMARY KEY (blob_id, device_id)
) STRICT, WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS kt_records (
    kind INTEGER NOT NULL,
    id BLOB NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (kind, id)
) STRICT, WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS kt_states (
    label BLOB NOT NULL,
    epoch INTEGER NOT NULL,
    version INTEGER NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (label, epoch)
) STRICT, WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS kt_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    epoch INTEGER NOT NULL
) STRICT;
"#;

#[derive(Clone)]
pub struct SqliteStore {
    writer: mpsc::Sender<Job>,
    listener: Arc<OnceLock<Arc<dyn CommitListener>>>,
    readers: Arc<Vec<Mutex<Connection>>>,
    next_reader: Arc<AtomicUsize>,
    /// Acks of at least this many seqs may move the device's mark
    /// (`acks::ACK_MARK_MIN`).
    ack_mark_min: usize,
}

fn backend(e: rusqlite::Error) -> StoreError {
    if let rusqlite::Error::SqliteFailure(f, _) = &e {
        match f.code {
            rusqlite::ErrorCode::DiskFull => return StoreError::Full,
            rusqlite::ErrorCode::CannotOpen
            | rusqlite::ErrorCode::DatabaseBusy
            | rusqlite::ErrorCode::DatabaseLocked
            | rusqlite::ErrorCode::SystemIoFailure => {
                return StoreError::Unavailable(e.to_string());
            }
            _ => {}
        }
    }
    StoreError::Backend(e.to_string())
}

fn open(path: &Path, flags: OpenFlags) -> Result<Connection> {
    let conn = Connection::open_with_flags(path, flags).map_err(backend)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(backend)?;
    conn.execute_batch("PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL;")
        .map_err(backend)?;
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path` and runs migrations.
    pub fn open(path: &Path) -> Result<Self> {
        let writer_conn = open(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
        )?;
        writer_conn
            .query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
            .map_err(backend)?;
        drop_old_verifications(&writer_conn)?;
        writer_conn.execute_batch(SCHEMA).map_err(backend)?;
        drop_conversation_phone(&writer_conn)?;
        add_shared_bodies(&writer_conn)?;
        create_mailbox_usage(&writer_conn)?;
        acks::add_ack_marks(&writer_conn)?;
        add_leaf_index(&writer_conn)?;
        add_key_package_suites(&writer_conn)?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            readers.push(Mutex::new(open(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?));
        }
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        std::thread::Builder::new()
            .name("dak-sqlite-writer".into())
            .spawn(move || writer_loop(writer_conn, rx))
            .map_err(|e| StoreError::Backend(format!("cannot start writer thread: {e}")))?;
        Ok(SqliteStore {
            writer: tx,
            listener: Arc::new(OnceLock::new()),
            readers: Arc::new(readers),
            next_reader: Arc::new(AtomicUsize::new(0)),
            ack_mark_min: acks::ACK_MARK_MIN,
        })
    }

    /// Lets acks of at least `seqs` seqs move a device's mark instead of
    /// deleting (`acks::ACK_MARK_MIN` by default; tests use 1 to reach the
    /// mark with a few envelopes).
    pub fn with_ack_mark_min(mut self, seqs: usize) -> Self {
        self.ack_mark_min = seqs.max(1);
        self
    }

    /// A write job that may change groups, devices, KeyPackages or blocks:
    /// it clears the send cache.
    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        self.submit(move |c, cache| {
            cache.clear();
            f(c).map(|v| (v, Vec::new()))
        })
        .await
    }

    /// A write job that changes none of what the send cache holds (rate
    /// limits, codes, PIN attempts, link requests, last-seen times,
    /// mailboxes, expiry).
    async fn write_keeping_cache<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        self.submit(move |c, _| f(c).map(|v| (v, Vec::new()))).await
    }

    /// Runs a job in the writer's next batch. Once the batch has committed
    /// the caller is answered, and then what the job placed in mailboxes
    /// goes to the commit listener.
    async fn submit<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &mut SendCache) -> Result<(T, Vec<CommittedEnvelope>)>
            + Send
            + 'static,
    {
        self.queue(f).await?.await
    }

    /// Queues a job (`submit`'s first half): once this returns, the job
    /// runs before any queued later; the returned future is its answer.
    async fn queue<T, F>(&self, f: F) -> Result<Pending<T>>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &mut SendCache) -> Result<(T, Vec<CommittedEnvelope>)>
            + Send
            + 'static,
    {
        let listener = self.listener.get().cloned();
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |writer| {
            let result = match writer {
                Some((conn, cache)) => in_savepoint(conn, |c| f(c, cache)),
                None => Err(StoreError::Unavailable("cannot begin a transaction".into())),
            };
            Box::new(move |commit: Result<()>| {
                // The caller first, then the listener: the listener wakes
                // every recipient's session (1,023 in a big group), and a
                // sender answered after them waited behind them all for its
                // SendAck (measured, docs/BENCHMARKS.md).
                let (answer, placed) = match commit.and(result) {
                    Ok((value, placed)) => (Ok(value), placed),
                    Err(e) => (Err(e), Vec::new()),
                };
                let _ = tx.send(answer);
                if let Some(listener) = &listener
                    && !placed.is_empty()
                {
                    listener.committed(&placed);
                }
            })
        });
        self.writer
            .send(job)
            .await
            .map_err(|_| StoreError::Unavailable("writer thread has stopped".into()))?;
        Ok(Box::pin(async move {
            rx.await
                .map_err(|_| StoreError::Unavailable("writer thread has stopped".into()))?
        }))
    }

    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let readers = self.readers.clone();
        let i = self.next_reader.fetch_add(1, Ordering::Relaxed) % readers.len();
        tokio::task::spawn_blocking(move || {
            let conn = readers[i]
                .lock()
                .map_err(|_| StoreError::Unavailable("reader poisoned".into()))?;
            f(&conn)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("reader task failed: {e}")))?
    }
}

/// Runs `f` in its own savepoint. The three statements are prepared once
/// (`prepare_cached`): every write job pays them, and parsing them again
/// each time was a measurable share of the writer's time.
fn in_savepoint<T>(conn: &Connection, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
    let run = |sql: &str| {
        conn.prepare_cached(sql)
            .and_then(|mut st| st.execute([]))
            .map(|_| ())
            .map_err(backend)
    };
    run("SAVEPOINT job")?;
    match f(conn) {
        Ok(v) => {
            run("RELEASE job")?;
            Ok(v)
        }
        // An error that made SQLite roll the whole transaction back (a full
        // disk, an I/O error) took the savepoint with it: the job's own
        // error is the answer (`StoreError::Full` stays what it is).
        Err(e) if conn.is_autocommit() => Err(e),
        Err(e) => {
            run("ROLLBACK TO job")?;
            run("RELEASE job")?;
            Err(e)
        }
    }
}

fn writer_loop(conn: Connection, mut rx: mpsc::Receiver<Job>) {
    // Rows left under marks when the store last closed are swept first.
    let mut cache = SendCache::default();
    cache.unswept.pending = true;
    loop {
        // Idle: acked rows a chunk at a time, looking for a job between
        // chunks; block only when nothing is left to sweep.
        let first = loop {
            match rx.try_recv() {
                Ok(job) => break Some(job),
                Err(mpsc::error::TryRecvError::Disconnected) => break None,
                Err(mpsc::error::TryRecvError::Empty) if cache.unswept.pending => {
                    cache.unswept.sweep_alone(&conn, acks::SWEEP_CHUNK);
                }
                Err(mpsc::error::TryRecvError::Empty) => break rx.blocking_recv(),
            }
        };
        let Some(first) = first else { break };
        let mut replies: Vec<Reply> = Vec::new();
        let begun = conn.execute_batch("BEGIN IMMEDIATE").map_err(backend);
        if let Err(e) = begun {
            tracing::error!(error = %e, "sqlite: cannot begin a transaction");
            let reply = first(None);
            reply(Err(e));
            continue;
        }
        replies.push(first(Some((&conn, &mut cache))));
        while replies.len() < MAX_BATCH {
            match rx.try_recv() {
                // A job whose error made SQLite roll the whole transaction
                // back (an I/O error, a full disk) leaves none open: the
                // jobs after it are refused rather than run one by one in
                // autocommit, committed while the batch reports failure.
                Ok(job) if conn.is_autocommit() => replies.push(job(None)),
                Ok(job) => replies.push(job(Some((&conn, &mut cache)))),
                Err(_) => break,
            }
        }
        // Busy: past the backlog, what the last batches marked is swept in
        // this batch's commit (no commit of its own), so a writer that
        // never idles keeps up. A sweep whose error rolled the whole
        // transaction back fails the commit, and so the batch.
        if let Some(excess) = cache.unswept.excess()
            && !conn.is_autocommit()
        {
            let swept = in_savepoint(&conn, |c| acks::sweep(c, excess));
            cache.unswept.swept(swept);
        }
        let committed = conn.execute_batch("COMMIT").map_err(backend);
        if let Err(e) = &committed {
            tracing::error!(error = %e, jobs = replies.len(), "sqlite: commit failed; batch rolled back");
            let _ = conn.execute_batch("ROLLBACK");
            cache.clear();
            // What it swept is back: look again.
            cache.unswept.pending = true;
        }
        for reply in replies {
            reply(match &committed {
                Ok(()) => Ok(()),
                Err(StoreError::Full) => Err(StoreError::Full),
                Err(e) => Err(StoreError::Unavailable(e.to_string())),
            });
        }
    }
}

/// A segment as `SELECT seg_offset, len, write_id` (or `RETURNING` them) reads it.
fn row_segment(r: &rusqlite::Row<'_>) -> rusqlite::Result<BlobSegment> {
    Ok(BlobSegment {
        offset: r.get::<_, i64>(0)? as u64,
        len: r.get::<_, i64>(1)? as u64,
        write: r.get::<_, i64>(2)? as u64,
    })
}

fn row_blob(r: &rusqlite::Row<'_>) -> rusqlite::Result<Blob> {
    Ok(Blob {
        id: r.get(0)?,
        owner_device: r.get::<_, i64>(1)? as u64,
        owner_account: r.get::<_, i64>(2)? as u64,
        length: r.get::<_, i64>(3)? as u64,
        received: r.get::<_, i64>(4)? as u64,
        complete: r.get(5)?,
        sha256: r.get(6)?,
        upload_token_sha256: r.get(7)?,
        capability_sha256: r.get(8)?,
        created_ms: r.get(9)?,
        expires_ms: r.get(10)?,
    })
}

fn row_device(r: &rusqlite::Row<'_>) -> rusqlite::Result<Device> {
    Ok(Device {
        id: r.get::<_, i64>(0)? as u64,
        account_id: r.get::<_, i64>(1)? as u64,
        phone: r.get(2)?,
        identity_key: r.get(3)?,
        name: r.get(4)?,
        primary: r.get::<_, i64>(5)? != 0,
        created_ms: r.get(6)?,
        last_seen_ms: r.get(7)?,
        revoked: RevokeReason::from_i64(r.get(8)?),
    })
}

fn device_by_id(conn: &Connection, id: DeviceId) -> Result<Option<Device>> {
    conn.query_row(
        &format!("SELECT {DEVICE_COLS} WHERE d.id = ?1"),
        [id as i64],
        row_device,
    )
    .optional()
    .map_err(backend)
}

fn devices_of_account(conn: &Connection, account: AccountId) -> Result<Vec<Device>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {DEVICE_COLS} WHERE d.account_id = ?1 AND d.revoked = 0 ORDER BY d.id"
        ))
        .map_err(backend)?;
    stmt.query_map([account as i64], row_device)
        .map_err(backend)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(backend)
}

fn delete_device(conn: &Connection, id: DeviceId, reason: RevokeReason) -> Result<()> {
    conn.execute("DELETE FROM mailbox WHERE device_id = ?1", [id as i64])
        .map_err(backend)?;
    conn.execute(
        "DELETE FROM mailbox_usage WHERE device_id = ?1",
        [id as i64],
    )
    .map_err(backend)?;
    // Its group memberships stay until a member commits its removal: that is
    // how the groups learn (send_group refuses until then).
    conn.execute("DELETE FROM key_packages WHERE device_id = ?1", [id as i64])
        .map_err(backend)?;
    conn.execute(
        "UPDATE devices SET revoked = ?2 WHERE id = ?1",
        params![id as i64, reason as i64],
    )
    .map_err(backend)?;
    Ok(())
}

fn insert_device(
    conn: &Connection,
    account: AccountId,
    key: &[u8],
    name: &str,
    primary: bool,
    now_ms: i64,
) -> Result<Device> {
    conn.execute(
        "INSERT INTO devices (account_id, identity_key, name, is_primary, created_ms, last_seen_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
        params![account as i64, key, name, primary as i64, now_ms],
    )
    .map_err(backend)?;
    let id = conn.last_insert_rowid() as u64;
    device_by_id(conn, id)?.ok_or(StoreError::NotFound("device"))
}

fn key_stock(conn: &Connection, device: DeviceId, suite: Suite) -> Result<KeyStock> {
    conn.query_row(
        "SELECT COALESCE(SUM(last_resort = 0), 0), COALESCE(MAX(last_resort), 0) FROM key_packages WHERE device_id = ?1 AND suite = ?2",
        params![device as i64, suite],
        |r| {
            Ok(KeyStock {
                one_time: r.get::<_, i64>(0)? as u32,
                has_last_resort: r.get::<_, i64>(1)? != 0,
            })
        },
    )
    .map_err(backend)
}

/// Active devices of these accounts that have a last-resort KeyPackage in
/// the classic suite, i.e. that can always be added to a group. (Every
/// device offers the classic suite, and uploads it last: a device that
/// offers the post-quantum one is ready only once both are there.)
/// By account, then device.
fn ready_devices(conn: &Connection, accounts: &[AccountId]) -> Result<Vec<Device>> {
    if accounts.is_empty() {
        return Ok(Vec::new());
    }
    // One statement for all the accounts: this runs on every group message,
    // inside the writer's batch, so it must stay cheap.
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {DEVICE_COLS} WHERE d.account_id IN (SELECT value FROM json_each(?1)) AND d.revoked = 0
             AND EXISTS (SELECT 1 FROM key_packages k WHERE k.device_id = d.id AND k.suite = 1 AND k.last_resort = 1)
             ORDER BY d.account_id, d.id"
        ))
        .map_err(backend)?;
    stmt.query_map([json_ids(accounts)], row_device)
        .map_err(backend)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(backend)
}

/// Any of these devices, revoked ones included, in id order; one statement.
fn devices_by_ids(conn: &Connection, ids: &[DeviceId]) -> Result<Vec<Device>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {DEVICE_COLS} WHERE d.id IN (SELECT value FROM json_each(?1)) ORDER BY d.id"
        ))
        .map_err(backend)?;
    stmt.query_map([json_ids(ids)], row_device)
        .map_err(backend)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(backend)
}

/// Takes one KeyPackage of the device in `suite`: with `one_time`, the
/// oldest one-time one (deleted) if any is left; else the last-resort one
/// (kept).
fn take_key_package(
    conn: &Connection,
    device: DeviceId,
    suite: Suite,
    one_time: bool,
) -> Result<Option<Vec<u8>>> {
    if !one_time {
        return last_resort_package(conn, device, suite);
    }
    let one_time: Option<Vec<u8>> = conn
        .query_row(
            "DELETE FROM key_packages WHERE id = (SELECT id FROM key_packages WHERE device_id = ?1 AND suite = ?2 AND last_resort = 0 ORDER BY id LIMIT 1) RETURNING data",
            params![device as i64, suite],
            |r| r.get(0),
        )
        .optional()
        .map_err(backend)?;
    if one_time.is_some() {
        return Ok(one_time);
    }
    last_resort_package(conn, device, suite)
}

fn last_resort_package(
    conn: &Connection,
    device: DeviceId,
    suite: Suite,
) -> Result<Option<Vec<u8>>> {
    conn.query_row(
        "SELECT data FROM key_packages WHERE device_id = ?1 AND suite = ?2 AND last_resort = 1",
        params![device as i64, suite],
        |r| r.get(0),
    )
    .optional()
    .map_err(backend)
}

/// The suites the device has a last-resort package in: those it can be
/// added in.
fn last_resort_suites(conn: &Connection, device: DeviceId) -> Result<Vec<Suite>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT suite FROM key_packages WHERE device_id = ?1 AND last_resort = 1 ORDER BY suite",
        )
        .map_err(backend)?;
    stmt.query_map([device as i64], |r| r.get::<_, Suite>(0))
        .map_err(backend)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(backend)
}

fn group_epoch(conn: &Connection, group_id: &[u8]) -> Result<Option<u64>> {
    conn.prepare_cached("SELECT epoch FROM mls_groups WHERE group_id = ?1")
        .and_then(|mut s| s.query_row([group_id], |r| r.get::<_, i64>(0)).optional())
        .map(|e| e.map(|e| e as u64))
        .map_err(backend)
}

/// Member devices, revoked ones included (they stay until removed by commit).
fn group_members(conn: &Connection, group_id: &[u8]) -> Result<Vec<Device>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {DEVICE_COLS} JOIN group_members m ON m.device_id = d.id WHERE m.group_id = ?1 ORDER BY d.id"
        ))
        .map_err(backend)?;
    stmt.query_map([group_id], row_device)
        .map_err(backend)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(backend)
}

/// Member devices as `group_members` has them, each with its leaf index
/// (None when unknown: a group from before leaf indices were kept).
fn group_members_with_leaves(
    conn: &Connection,
    group_id: &[u8],
) -> Result<Vec<group_rules::Member>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {MEMBER_COLS} WHERE m.group_id = ?1 ORDER BY d.id"
        ))
        .map_err(backend)?;
    stmt.query_map([group_id], |r| {
        let leaf: Option<i64> = r.get(9)?;
        Ok((row_device(r)?, leaf.and_then(|l| u32::try_from(l).ok())))
    })
    .map_err(backend)?
    .collect::<rusqlite::Result<Vec<_>>>()
    .map_err(backend)
}

fn member_accounts(members: &[Device]) -> Vec<AccountId> {
    let mut accounts: Vec<AccountId> = members.iter().map(|d| d.account_id).collect();
    accounts.sort_unstable();
    accounts.dedup();
    accounts
}

/// Whether `table` has `column` (for migrations of stores made before it).
fn has_column(conn: &Connection, table: &str, column: &str) -> Result<bool> {
    conn.query_row(
        "SELECT count(*) FROM pragma_table_info(?1) WHERE name = ?2",
        params![table, column],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )
    .map_err(backend)
}

/// Stores made before MLS have `mailbox.conversation_phone`, written empty
/// ever since (the server does not know a conversation): it goes.
fn drop_conversation_phone(conn: &Connection) -> Result<()> {
    if has_column(conn, "mailbox", "conversation_phone")? {
        conn.execute_batch("ALTER TABLE mailbox DROP COLUMN conversation_phone")
            .map_err(backend)?;
    }
    Ok(())
}

/// Bodies stored once (`insert_rows`): the `shared_bodies` table, and in
/// `mailbox` the reference (`shared_body`, NULL for a body kept inline) and
/// the shared body's length (`shared_len`, 0 inline), which the usage
/// trigger subtracts. Stores from before get the two columns, NULL and 0,
/// which is what their inline rows are.
fn add_shared_bodies(conn: &Connection) -> Result<()> {
    if !has_column(conn, "mailbox", "shared_body")? {
        conn.execute_batch(
            "ALTER TABLE mailbox ADD COLUMN shared_body INTEGER;
             ALTER TABLE mailbox ADD COLUMN shared_len INTEGER NOT NULL DEFAULT 0;",
        )
        .map_err(backend)?;
    }
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS shared_bodies (
             id INTEGER PRIMARY KEY,
             body BLOB NOT NULL
         ) STRICT;
         CREATE INDEX IF NOT EXISTS mailbox_by_shared_body ON mailbox(shared_body)
             WHERE shared_body IS NOT NULL;",
    )
    .map_err(backend)
}

/// Stores made before the leaf indices were kept have `group_members`
/// without `leaf_index`: it is added, NULL (unknown) for the members
/// already there, whose groups go on as legacy groups
/// (`group_rules::apply_commit`).
fn add_leaf_index(conn: &Connection) -> Result<()> {
    if !has_column(conn, "group_members", "leaf_index")? {
        conn.execute_batch("ALTER TABLE group_members ADD COLUMN leaf_index INTEGER")
            .map_err(backend)?;
    }
    Ok(())
}

/// Stores made before KeyPackages were kept per ciphersuite have
/// `key_packages` without `suite`: it is added, 1 (the classic suite, the
/// only one there was) for the packages already there. The index that
/// finds a device's packages in one suite follows.
fn add_key_package_suites(conn: &Connection) -> Result<()> {
    if !has_column(conn, "key_packages", "suite")? {
        conn.execute_batch("ALTER TABLE key_packages ADD COLUMN suite INTEGER NOT NULL DEFAULT 1")
            .map_err(backend)?;
    }
    conn.execute_batch(
        "CREATE INDEX IF NOT EXISTS key_packages_by_suite ON key_packages(device_id, suite, last_resort, id)",
    )
    .map_err(backend)
}

/// Stores made before codes were bound to sessions have `verifications`
/// keyed by phone alone (with the hourly send count, now a rate limit).
/// It only ever holds codes that live minutes, so it is dropped and made
/// anew rather than converted.
fn drop_old_verifications(conn: &Connection) -> Result<()> {
    let old: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM pragma_table_info('verifications'))
             AND NOT EXISTS (SELECT 1 FROM pragma_table_info('verifications') WHERE name = 'session')",
            [],
            |r| r.get(0),
        )
        .map_err(backend)?;
    if old {
        conn.execute_batch("DROP TABLE verifications")
            .map_err(backend)?;
    }
    Ok(())
}

/// Each device's mailbox usage (envelopes and body bytes), so the quota
/// check is one lookup. Every statement that inserts into or deletes from
/// `mailbox` counts what it did (`count_into_usage`, `ack`,
/// `delete_device`, `expire`). Made, and filled from the mailboxes
/// already there, in one transaction, so the counts start exact.
///
/// Deletes were counted by a trigger, one `UPDATE` per deleted row; `ack`
/// now counts a batch in one, which made a drain's deletes about a fifth
/// faster (docs/BENCHMARKS.md, "offline"). A store that had the table kept
/// it exact with the triggers until now: they are dropped and its counts
/// kept. (An older binary that opens the store again finds no trigger,
/// counts again from the mailboxes and makes it again.)
fn create_mailbox_usage(conn: &Connection) -> Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE").map_err(backend)?;
    let made = (|| {
        let existed = conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'mailbox_usage')",
                [],
                |r| r.get::<_, bool>(0),
            )
            .map_err(backend)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS mailbox_usage (
                 device_id INTEGER PRIMARY KEY,
                 envelopes INTEGER NOT NULL,
                 bytes INTEGER NOT NULL
             ) STRICT;
             DROP TRIGGER IF EXISTS mailbox_usage_insert;
             DROP TRIGGER IF EXISTS mailbox_usage_delete;",
        )
        .map_err(backend)?;
        // Every binary that made the table kept it exact from then on
        // (with the triggers, or as this one does), in the transaction
        // that made it: only a new one is counted.
        if !existed {
            conn.execute_batch(
                "DELETE FROM mailbox_usage;
                 INSERT INTO mailbox_usage (device_id, envelopes, bytes)
                     SELECT device_id, COUNT(*), SUM(length(body) + shared_len) FROM mailbox GROUP BY device_id;",
            )
            .map_err(backend)?;
        }
        Ok(())
    })();
    match made {
        Ok(()) => conn.execute_batch("COMMIT").map_err(backend),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// Binds a list of ids as one JSON array, for `IN (SELECT value FROM
/// json_each(?))`: one statement however long the list is.
fn json_ids(ids: &[u64]) -> String {
    let mut out = String::with_capacity(ids.len() * 8 + 2);
    out.push('[');
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        // As every id is bound elsewhere: an id past i64::MAX matches nothing.
        out.push_str(&(*id as i64).to_string());
    }
    out.push(']');
    out
}

/// Binds the members after a commit as one JSON array of `[device id,
/// leaf index or null]` pairs.
fn json_members(members: &[group_rules::NextMember]) -> String {
    let mut out = String::with_capacity(members.len() * 16 + 2);
    out.push('[');
    for (i, (id, leaf)) in members.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('[');
        out.push_str(&(*id as i64).to_string());
        out.push(',');
        match leaf {
            Some(leaf) => out.push_str(&leaf.to_string()),
            None => out.push_str("null"),
        }
        out.push(']');
    }
    out.push(']');
    out
}

/// Appends `e` to each device's mailbox, counted in the devices' usage
/// (not held to the quota: commits, Welcomes, `enqueue`); returns the seq
/// each got.
fn insert_envelope(
    conn: &Connection,
    e: &NewEnvelope,
    devices: &[DeviceId],
) -> Result<Vec<(DeviceId, u64)>> {
    count_into_usage(conn, devices, e.body.len() as u64, None)?;
    insert_rows(conn, e, devices)
}

/// The mailbox rows themselves; the caller has counted them
/// (`count_into_usage`). Every insert into `mailbox` is here.
fn insert_rows(
    conn: &Connection,
    e: &NewEnvelope,
    devices: &[DeviceId],
) -> Result<Vec<(DeviceId, u64)>> {
    // A body for more than one device is stored once and referenced.
    let shared = if crate::shares_body(devices.len()) {
        conn.prepare_cached("INSERT INTO shared_bodies (body) VALUES (?1)")
            .and_then(|mut st| st.execute([&e.body]))
            .map_err(backend)?;
        Some(conn.last_insert_rowid())
    } else {
        None
    };
    let (body, shared_len): (&[u8], i64) = match shared {
        Some(_) => (&[], e.body.len() as i64),
        None => (&e.body, 0),
    };
    let mut stmt = conn
        .prepare_cached(
            "INSERT INTO mailbox (device_id, message_id, sender_phone, sender_device, server_time_ms, expires_ms, body, shared_body, shared_len) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )
        .map_err(backend)?;
    let mut placed = Vec::with_capacity(devices.len());
    for d in devices {
        stmt.execute(params![
            *d as i64,
            e.message_id,
            e.sender_phone,
            e.sender_device as i64,
            e.server_time_ms,
            e.expires_ms,
            body,
            shared,
            shared_len
        ])
        .map_err(backend)?;
        placed.push((*d, conn.last_insert_rowid() as u64));
    }
    Ok(placed)
}

/// What `insert_envelope` placed, for the commit listener.
fn committed(e: NewEnvelope, placed: Vec<(DeviceId, u64)>) -> CommittedEnvelope {
    CommittedEnvelope {
        envelope: Arc::new(e),
        placed,
    }
}

/// The accounts that blocked `account` (itself never counts); one
/// statement on the `blocks_by_blocked` index.
fn blockers_of(conn: &Connection, account: AccountId) -> Result<Vec<AccountId>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT account_id FROM blocks WHERE blocked_id = ?1 AND account_id != ?1 ORDER BY account_id",
        )
        .map_err(backend)?;
    stmt.query_map([account as i64], |r| r.get::<_, i64>(0).map(|a| a as u64))
        .map_err(backend)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(backend)
}

fn insert_block(
    conn: &Connection,
    account: AccountId,
    blocked: AccountId,
    now_ms: i64,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO blocks (account_id, blocked_id, created_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT (account_id, blocked_id) DO NOTHING",
    )
    .and_then(|mut st| st.execute(params![account as i64, blocked as i64, now_ms]))
    .map(|_| ())
    .map_err(backend)
}

/// What a group write decided, and the envelopes it placed if accepted.
type Placed = (GroupOutcome, Vec<CommittedEnvelope>);

fn refused(outcome: GroupOutcome) -> Result<Placed> {
    Ok((outcome, Vec::new()))
}

fn commit_group(conn: &Connection, c: &GroupCommit, now_ms: i64) -> Result<Placed> {
    if let Some(refusal) = group_rules::check_lists(c) {
        return refused(refusal);
    }
    let current = group_epoch(conn, &c.group_id)?;
    let members = group_members_with_leaves(conn, &c.group_id)?;
    let added = devices_by_ids(conn, &c.added)?;
    let ready: Vec<DeviceId> = ready_devices(conn, &member_accounts(&added))?
        .iter()
        .map(|d| d.id)
        .collect();
    // A new group's first member is the committer, whose account counts.
    let sender = match current {
        None => device_by_id(conn, c.commit.sender_device)?,
        Some(_) => None,
    };
    let next =
        match group_rules::apply_commit(current, c, &members, &added, &ready, sender.as_ref()) {
            Ok(next) => next,
            Err(outcome) => return refused(outcome),
        };
    if !added.is_empty() {
        // apply_commit found the committer among the members (or it is the
        // new group's creator, read above).
        let committer = members
            .iter()
            .map(|(d, _)| d)
            .chain(sender.as_ref())
            .find(|d| d.id == c.commit.sender_device);
        if let Some(committer) = committer {
            let blockers = blockers_of(conn, committer.account_id)?;
            if let Some(refusal) = group_rules::check_adds_not_blocked(&added, &blockers) {
                return refused(refusal);
            }
        }
    }
    conn.execute(
        "INSERT INTO mls_groups (group_id, epoch, created_ms) VALUES (?1, ?2, ?3) ON CONFLICT(group_id) DO UPDATE SET epoch = excluded.epoch",
        params![c.group_id, (c.epoch + 1) as i64, now_ms],
    )
    .map_err(backend)?;
    conn.execute(
        "DELETE FROM group_members WHERE group_id = ?1",
        [&c.group_id],
    )
    .map_err(backend)?;
    conn.execute(
        "INSERT INTO group_members (group_id, device_id, leaf_index)
         SELECT ?1, json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?2)",
        params![c.group_id, json_members(&next)],
    )
    .map_err(backend)?;
    let everyone = group_members(conn, &c.group_id)?;
    // Old members (removed ones too) get the commit; added ones join by the Welcome.
    let told: Vec<DeviceId> = members
        .iter()
        .filter(|(d, _)| d.revoked.is_none())
        .map(|(d, _)| d.id)
        .chain((current.is_none()).then_some(c.commit.sender_device))
        .collect();
    let mut placed = vec![committed(
        c.commit.clone(),
        insert_envelope(conn, &c.commit, &told)?,
    )];
    if let Some(w) = &c.welcome {
        placed.push(committed(w.clone(), insert_envelope(conn, w, &c.added)?));
    }
    let recipients = everyone
        .into_iter()
        .filter(|d| d.revoked.is_none() && d.id != c.commit.sender_device)
        .collect();
    Ok((GroupOutcome::Accepted { recipients }, placed))
}

fn send_group(
    conn: &Connection,
    cache: &mut SendCache,
    group_id: &[u8],
    epoch: u64,
    e: &NewEnvelope,
    quota: MailboxQuota,
) -> Result<Placed> {
    if !cache.groups.contains_key(group_id) {
        let Some(epoch) = group_epoch(conn, group_id)? else {
            return refused(GroupOutcome::NoGroup);
        };
        let members = group_members(conn, group_id)?;
        let ready = ready_devices(conn, &member_accounts(&members))?;
        cache.keep_group(
            group_id,
            CachedGroup {
                epoch,
                members,
                ready,
            },
        );
    }
    let group = &cache.groups[group_id];
    let (current, members) = (group.epoch, &group.members);
    let blockers: &[AccountId] = match group_rules::sender_account(members, e.sender_device) {
        Some(account) => {
            if !cache.blockers.contains_key(&account) {
                let read = blockers_of(conn, account)?;
                if cache.blockers.len() >= CACHED_SENDERS_MAX {
                    cache.blockers.clear();
                }
                cache.blockers.insert(account, read);
            }
            &cache.blockers[&account]
        }
        None => &[],
    };
    let ready = group.ready.iter().map(|d| (d.id, d.account_id));
    let recipients =
        match group_rules::decide_send(current, epoch, e.sender_device, members, ready, blockers) {
            Ok(recipients) => recipients,
            Err(refusal) => return refused(refusal),
        };
    let ids: Vec<DeviceId> = recipients.iter().map(|d| d.id).collect();
    if let Some(device) = count_into_usage(conn, &ids, e.body.len() as u64, Some(quota))? {
        return refused(GroupOutcome::MailboxFull { device });
    }
    let placed = insert_rows(conn, e, &ids)?;
    Ok((
        GroupOutcome::Accepted { recipients },
        vec![committed(e.clone(), placed)],
    ))
}

/// Counts one more envelope of `body_len` bytes in each device's usage,
/// one statement per device that also reads the new counts back. With a
/// quota, the first device (by id) that had no room for it is returned
/// instead, and every count this call made is taken back first.
fn count_into_usage(
    conn: &Connection,
    devices: &[DeviceId],
    body_len: u64,
    quota: Option<MailboxQuota>,
) -> Result<Option<DeviceId>> {
    let mut count = conn
        .prepare_cached(
            "INSERT INTO mailbox_usage (device_id, envelopes, bytes) VALUES (?1, 1, ?2)
             ON CONFLICT (device_id) DO UPDATE SET envelopes = envelopes + 1, bytes = bytes + ?2
             RETURNING envelopes, bytes",
        )
        .map_err(backend)?;
    let mut sorted = devices.to_vec();
    sorted.sort_unstable();
    for (i, d) in sorted.iter().enumerate() {
        let (envelopes, bytes): (i64, i64) = count
            .query_row(params![*d as i64, body_len as i64], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map_err(backend)?;
        let before = (
            (envelopes - 1).max(0) as u64,
            (bytes.max(0) as u64).saturating_sub(body_len),
        );
        if let Some(quota) = quota
            && !quota.has_room(before.0, before.1, body_len)
        {
            for done in &sorted[..=i] {
                uncount_usage(conn, *done, 1, body_len as i64)?;
            }
            return Ok(Some(*d));
        }
    }
    Ok(None)
}

/// Takes `envelopes` envelopes of `bytes` body bytes in all out of a
/// device's usage: what a delete from its mailbox counts.
fn uncount_usage(conn: &Connection, device: DeviceId, envelopes: i64, bytes: i64) -> Result<()> {
    if envelopes == 0 {
        return Ok(());
    }
    conn.prepare_cached(
        "UPDATE mailbox_usage SET envelopes = envelopes - ?2, bytes = bytes - ?3 WHERE device_id = ?1",
    )
    .and_then(|mut st| st.execute(params![device as i64, envelopes, bytes]))
    .map(|_| ())
    .map_err(backend)
}

#[async_trait]
impl Store for SqliteStore {
    fn set_commit_listener(&self, listener: Arc<dyn CommitListener>) -> Option<HintOrder> {
        self.listener
            .set(listener)
            .is_ok()
            .then_some(HintOrder::CommitOrder)
    }

    async fn token_state(&self, key: &str) -> Result<Option<i64>> {
        let key = key.to_owned();
        self.read(move |c| {
            c.query_row(
                "SELECT tat_ms FROM rate_limits WHERE key = ?1",
                [key],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map_err(backend)
        })
        .await
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
        let key = key.to_owned();
        self.write_keeping_cache(move |c| {
            // A new bucket starts full: its first token always passes (burst >= 1).
            let taken: Option<i64> = c
                .prepare_cached(
                    "INSERT INTO rate_limits (key, tat_ms) VALUES (?1, ?2 + ?3)
                     ON CONFLICT(key) DO UPDATE SET tat_ms = MAX(tat_ms, ?2) + ?3
                     WHERE MAX(tat_ms, ?2) + ?3 - ?2 <= ?4
                     RETURNING tat_ms",
                )
                .and_then(|mut st| {
                    st.query_row(params![key, now_ms, interval, tolerance], |r| r.get(0))
                        .optional()
                })
                .map_err(backend)?;
            if taken.is_some() {
                return Ok(None);
            }
            let tat: Option<i64> = c
                .query_row(
                    "SELECT tat_ms FROM rate_limits WHERE key = ?1",
                    [&key],
                    |r| r.get(0),
                )
                .optional()
                .map_err(backend)?;
            Ok(Some(gcra::retry_after(tat, now_ms, interval, tolerance)))
        })
        .await
    }

    async fn put_verification(&self, v: Verification) -> Result<()> {
        self.write_keeping_cache(move |c| {
            c.execute(
                "INSERT OR REPLACE INTO verifications (phone, session, code_hash, expires_ms, attempts) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![v.phone, v.session, v.code_hash, v.expires_ms, v.attempts],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn take_code_attempt(
        &self,
        phone: &str,
        session: &[u8],
        now_ms: i64,
        max_attempts: u32,
    ) -> Result<CodeAttempt> {
        let (phone, session) = (phone.to_owned(), session.to_vec());
        self.write_keeping_cache(move |c| {
            let counted: Option<(String, u32)> = c
                .query_row(
                    "UPDATE verifications SET attempts = attempts + 1
                     WHERE phone = ?1 AND session = ?2 AND expires_ms > ?3 AND attempts < ?4
                     RETURNING code_hash, attempts",
                    params![phone, session, now_ms, max_attempts],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(backend)?;
            if let Some((code_hash, attempts)) = counted {
                return Ok(CodeAttempt::Counted {
                    code_hash,
                    attempts,
                });
            }
            let row: Option<(i64, u32)> = c
                .query_row(
                    "SELECT expires_ms, attempts FROM verifications WHERE phone = ?1 AND session = ?2",
                    params![phone, session],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(backend)?;
            Ok(CodeAttempt::refused(row, now_ms))
        })
        .await
    }

    async fn delete_verifications(&self, phone: &str) -> Result<()> {
        let phone = phone.to_owned();
        self.write_keeping_cache(move |c| {
            c.execute("DELETE FROM verifications WHERE phone = ?1", [phone])
                .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn account_by_phone(&self, phone: &str) -> Result<Option<Account>> {
        let phone = phone.to_owned();
        self.read(move |c| {
            c.query_row(
                "SELECT id, phone, pin_hash, pin_failures, pin_locked_until_ms FROM accounts WHERE phone = ?1",
                [phone],
                |r| {
                    Ok(Account {
                        id: r.get::<_, i64>(0)? as u64,
                        phone: r.get(1)?,
                        pin_hash: r.get(2)?,
                        pin_failures: r.get(3)?,
                        pin_locked_until_ms: r.get(4)?,
                    })
                },
            )
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn register_primary(
        &self,
        phone: &str,
        identity_key: &[u8],
        name: &str,
        now_ms: i64,
    ) -> Result<Registration> {
        let (phone, key, name) = (phone.to_owned(), identity_key.to_vec(), name.to_owned());
        self.write(move |c| {
            c.execute(
                "INSERT INTO accounts (phone, created_ms) VALUES (?1, ?2) ON CONFLICT(phone) DO NOTHING",
                params![phone, now_ms],
            )
            .map_err(backend)?;
            let account_id: i64 = c
                .query_row("SELECT id FROM accounts WHERE phone = ?1", [&phone], |r| r.get(0))
                .map_err(backend)?;
            let account_id = account_id as u64;
            let old = devices_of_account(c, account_id)?;
            for d in &old {
                delete_device(c, d.id, RevokeReason::NumberMoved)?;
            }
            c.execute(
                "UPDATE accounts SET pin_failures = 0, pin_locked_until_ms = 0 WHERE id = ?1",
                [account_id as i64],
            )
            .map_err(backend)?;
            let device = insert_device(c, account_id, &key, &name, true, now_ms)?;
            Ok(Registration {
                account_id,
                device,
                revoked: old.into_iter().map(|d| d.id).collect(),
            })
        })
        .await
    }

    async fn set_pin(&self, account: AccountId, pin_hash: Option<String>) -> Result<()> {
        self.write_keeping_cache(move |c| {
            c.execute(
                "UPDATE accounts SET pin_hash = ?2, pin_failures = 0, pin_locked_until_ms = 0 WHERE id = ?1",
                params![account as i64, pin_hash],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn take_pin_attempt(
        &self,
        account: AccountId,
        now_ms: i64,
        max_attempts: u32,
        lockout_ms: i64,
    ) -> Result<PinAttempt> {
        let max_attempts = max_attempts.max(1);
        self.write_keeping_cache(move |c| {
            // The count restarts at 1 after a lock that has run out; the
            // attempt that reaches the maximum sets the lock.
            let counted: Option<u32> = c
                .query_row(
                    "UPDATE accounts SET
                         pin_failures = CASE WHEN pin_locked_until_ms != 0 THEN 1 ELSE pin_failures + 1 END,
                         pin_locked_until_ms = CASE
                             WHEN (CASE WHEN pin_locked_until_ms != 0 THEN 1 ELSE pin_failures + 1 END) >= ?3
                             THEN ?2 + ?4 ELSE 0 END
                     WHERE id = ?1 AND pin_locked_until_ms <= ?2
                     RETURNING pin_failures",
                    params![account as i64, now_ms, max_attempts, lockout_ms],
                    |r| r.get(0),
                )
                .optional()
                .map_err(backend)?;
            if let Some(attempt) = counted {
                return Ok(PinAttempt::Counted { attempt });
            }
            let until_ms: i64 = c
                .query_row(
                    "SELECT pin_locked_until_ms FROM accounts WHERE id = ?1",
                    [account as i64],
                    |r| r.get(0),
                )
                .optional()
                .map_err(backend)?
                .ok_or(StoreError::NotFound("account"))?;
            Ok(PinAttempt::Locked { until_ms })
        })
        .await
    }

    async fn device(&self, id: DeviceId) -> Result<Option<Device>> {
        self.read(move |c| device_by_id(c, id)).await
    }

    async fn device_by_key(&self, identity_key: &[u8]) -> Result<Option<Device>> {
        let key = identity_key.to_vec();
        self.read(move |c| {
            c.query_row(
                &format!("SELECT {DEVICE_COLS} WHERE d.identity_key = ?1 AND d.revoked = 0"),
                [key],
                row_device,
            )
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn devices_of(&self, account: AccountId) -> Result<Vec<Device>> {
        self.read(move |c| devices_of_account(c, account)).await
    }

    async fn add_linked_device(
        &self,
        account: AccountId,
        identity_key: &[u8],
        name: &str,
        now_ms: i64,
        max_linked: u32,
    ) -> Result<Device> {
        let (key, name) = (identity_key.to_vec(), name.to_owned());
        self.write(move |c| {
            let linked: u32 = c
                .query_row(
                    "SELECT COUNT(*) FROM devices WHERE account_id = ?1 AND is_primary = 0 AND revoked = 0",
                    [account as i64],
                    |r| r.get(0),
                )
                .map_err(backend)?;
            if linked >= max_linked {
                return Err(StoreError::TooManyDevices { max: max_linked });
            }
            insert_device(c, account, &key, &name, false, now_ms)
        })
        .await
    }

    async fn revoke_device(&self, id: DeviceId, reason: RevokeReason) -> Result<()> {
        self.write(move |c| delete_device(c, id, reason)).await
    }

    async fn touch_device(&self, id: DeviceId, now_ms: i64) -> Result<()> {
        self.write_keeping_cache(move |c| {
            c.execute(
                "UPDATE devices SET last_seen_ms = ?2 WHERE id = ?1",
                params![id as i64, now_ms],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn put_link_request(&self, req: LinkRequest) -> Result<()> {
        self.write_keeping_cache(move |c| {
            c.execute(
                "INSERT INTO link_requests (code, identity_key, device_name, expires_ms) VALUES (?1, ?2, ?3, ?4)",
                params![req.code, req.identity_key, req.device_name, req.expires_ms],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn take_link_request(&self, code: &str, now_ms: i64) -> Result<Option<LinkRequest>> {
        let code = code.to_owned();
        self.write_keeping_cache(move |c| {
            c.query_row(
                "DELETE FROM link_requests WHERE code = ?1 AND expires_ms > ?2 RETURNING code, identity_key, device_name, expires_ms",
                params![code, now_ms],
                |r| {
                    Ok(LinkRequest {
                        code: r.get(0)?,
                        identity_key: r.get(1)?,
                        device_name: r.get(2)?,
                        expires_ms: r.get(3)?,
                    })
                },
            )
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn enqueue(&self, e: NewEnvelope, devices: &[DeviceId]) -> Result<()> {
        let devices = devices.to_vec();
        self.submit(move |c, _| {
            let placed = insert_envelope(c, &e, &devices)?;
            Ok(((), vec![committed(e, placed)]))
        })
        .await
    }

    async fn put_key_packages(
        &self,
        device: DeviceId,
        suite: Suite,
        one_time: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
        max_one_time: u32,
    ) -> Result<KeyStock> {
        self.write(move |c| {
            if let Some(lr) = last_resort {
                c.execute(
                    "DELETE FROM key_packages WHERE device_id = ?1 AND suite = ?2 AND last_resort = 1",
                    params![device as i64, suite],
                )
                .map_err(backend)?;
                c.execute(
                    "INSERT INTO key_packages (device_id, last_resort, data, suite) VALUES (?1, 1, ?2, ?3)",
                    params![device as i64, lr, suite],
                )
                .map_err(backend)?;
            }
            // The writer runs one job at a time, so the stock read here is
            // the stock the inserts add to.
            let room = max_one_time.saturating_sub(key_stock(c, device, suite)?.one_time) as usize;
            let mut stmt = c
                .prepare_cached(
                    "INSERT INTO key_packages (device_id, last_resort, data, suite) VALUES (?1, 0, ?2, ?3)",
                )
                .map_err(backend)?;
            for kp in one_time.into_iter().take(room) {
                stmt.execute(params![device as i64, kp, suite])
                    .map_err(backend)?;
            }
            key_stock(c, device, suite)
        })
        .await
    }

    async fn key_stock(&self, device: DeviceId, suite: Suite) -> Result<KeyStock> {
        self.read(move |c| key_stock(c, device, suite)).await
    }

    async fn claim_key_packages(
        &self,
        account: AccountId,
        known: &[DeviceId],
        one_time: bool,
        suites: &[Suite],
    ) -> Result<Claimed> {
        let known = known.to_vec();
        let suites = suites.to_vec();
        let claim = move |c: &Connection| {
            let devices = ready_devices(c, &[account])?;
            let mut offers = Vec::new();
            for d in devices.iter().filter(|d| !known.contains(&d.id)) {
                offers.push(last_resort_suites(c, d.id)?);
            }
            let suite = claim_suite(&suites, &offers);
            let mut out = Vec::new();
            for device in devices {
                let key_package = if known.contains(&device.id) {
                    None
                } else {
                    take_key_package(c, device.id, suite, one_time)?
                };
                out.push(ClaimedDevice {
                    device,
                    key_package,
                });
            }
            Ok(Claimed {
                suite,
                devices: out,
            })
        };
        // Handing out last-resort packages only consumes nothing: a reader
        // does, and an over-budget requester never waits on the writer.
        if one_time {
            self.write_keeping_cache(claim).await
        } else {
            self.read(claim).await
        }
    }

    async fn member_epoch(&self, group_id: &[u8], device: DeviceId) -> Result<Option<u64>> {
        let group_id = group_id.to_vec();
        self.read(move |c| {
            c.query_row(
                "SELECT g.epoch FROM mls_groups g JOIN group_members m ON m.group_id = g.group_id \
                 WHERE g.group_id = ?1 AND m.device_id = ?2",
                params![group_id, device as i64],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|e| e.map(|e| e as u64))
            .map_err(backend)
        })
        .await
    }

    async fn group_epoch(&self, group_id: &[u8]) -> Result<Option<u64>> {
        let group_id = group_id.to_vec();
        self.read(move |c| group_epoch(c, &group_id)).await
    }

    async fn commit_group(&self, commit: GroupCommit) -> Result<GroupOutcome> {
        self.submit(move |c, cache| {
            // A commit changes its group's members and epoch, nothing else
            // the cache holds.
            cache.forget_group(&commit.group_id);
            let now = commit.commit.server_time_ms;
            commit_group(c, &commit, now)
        })
        .await
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

    async fn submit_send_group(
        &self,
        group_id: &[u8],
        epoch: u64,
        envelope: NewEnvelope,
        quota: MailboxQuota,
    ) -> Result<Pending<GroupOutcome>> {
        let group_id = group_id.to_vec();
        self.queue(move |c, cache| send_group(c, cache, &group_id, epoch, &envelope, quota))
            .await
    }

    async fn fetch_mailbox(
        &self,
        device: DeviceId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<MailboxEntry>> {
        self.read(move |c| {
            // The limit is written into the SQL, not bound: SQLite plans with a
            // bound LIMIT's value and so re-prepares the statement whenever it is
            // bound again, which cost a fifth of the server's CPU on the send
            // path (perf, `dak bench pairs`). Callers use one or two limits,
            // so the statement cache holds them all.
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT seq, message_id, sender_phone, sender_device, server_time_ms, {MAILBOX_BODY}
                     FROM mailbox WHERE device_id = ?1 AND seq > MAX(?2, {ABOVE_MARK})
                     ORDER BY seq LIMIT {limit}"
                ))
                .map_err(backend)?;
            stmt.query_map(params![device as i64, after as i64], |r| {
                Ok(MailboxEntry {
                    seq: r.get::<_, i64>(0)? as u64,
                    message_id: r.get(1)?,
                    sender_phone: r.get(2)?,
                    sender_device: r.get::<_, i64>(3)? as u64,
                    server_time_ms: r.get(4)?,
                    body: r.get(5)?,
                })
            })
            .map_err(backend)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(backend)
        })
        .await
    }

    async fn ack(&self, device: DeviceId, seqs: &[u64]) -> Result<usize> {
        let seqs = seqs.to_vec();
        let mark_min = self.ack_mark_min;
        // Changes nothing the send cache holds; tells the writer what to sweep.
        self.submit(move |c, cache| {
            acks::ack(c, &mut cache.unswept, device, &seqs, mark_min).map(|n| (n, Vec::new()))
        })
        .await
    }

    async fn mailbox_len(&self, device: DeviceId) -> Result<u64> {
        self.read(move |c| {
            c.query_row(
                &format!(
                    "SELECT COUNT(*) FROM mailbox WHERE device_id = ?1 AND seq > {ABOVE_MARK}"
                ),
                [device as i64],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(backend)
        })
        .await
    }

    async fn mailbox_usage(&self, device: DeviceId) -> Result<(u64, u64)> {
        self.read(move |c| {
            c.query_row(
                "SELECT envelopes, bytes FROM mailbox_usage WHERE device_id = ?1",
                [device as i64],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
            )
            .optional()
            .map(Option::unwrap_or_default)
            .map_err(backend)
        })
        .await
    }

    async fn stored_body_bytes(&self) -> Result<u64> {
        self.read(move |c| {
            c.query_row(STORED_BODY_BYTES, [], |r| r.get::<_, i64>(0))
                .map(|n| n as u64)
                .map_err(backend)
        })
        .await
    }

    async fn set_block(&self, account: AccountId, blocked: AccountId, on: bool) -> Result<()> {
        self.write(move |c| {
            if on {
                insert_block(c, account, blocked, now_ms())
            } else {
                c.execute(
                    "DELETE FROM blocks WHERE account_id = ?1 AND blocked_id = ?2",
                    params![account as i64, blocked as i64],
                )
                .map(|_| ())
                .map_err(backend)
            }
        })
        .await
    }

    async fn report(&self, reporter: AccountId, reported: AccountId, now_ms: i64) -> Result<()> {
        self.write(move |c| {
            c.execute(
                "INSERT INTO reports (reporter_id, reported_id, created_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (reporter_id, reported_id) DO UPDATE SET created_ms = excluded.created_ms",
                params![reporter as i64, reported as i64, now_ms],
            )
            .map_err(backend)?;
            insert_block(c, reporter, reported, now_ms)
        })
        .await
    }

    async fn reports_against(&self, account: AccountId) -> Result<u64> {
        self.read(move |c| {
            c.query_row(
                "SELECT COUNT(*) FROM reports WHERE reported_id = ?1",
                [account as i64],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(backend)
        })
        .await
    }

    async fn set_business(
        &self,
        account: AccountId,
        profile: &[u8],
        display_name: &str,
        now_ms: i64,
    ) -> Result<()> {
        let (profile, name) = (profile.to_vec(), display_name.to_string());
        self.write(move |c| {
            c.execute(
                "INSERT INTO businesses (account_id, profile, display_name, updated_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (account_id) DO UPDATE SET profile = excluded.profile,
                   verified = verified AND display_name = excluded.display_name,
                   display_name = excluded.display_name, updated_ms = excluded.updated_ms",
                params![account as i64, profile, name, now_ms],
            )
            .map(|_| ())
            .map_err(backend)
        })
        .await
    }

    async fn business(&self, account: AccountId) -> Result<Option<Business>> {
        self.read(move |c| {
            c.query_row(
                "SELECT profile, display_name, verified, updated_ms FROM businesses WHERE account_id = ?1",
                [account as i64],
                |r| {
                    Ok(Business {
                        profile: r.get(0)?,
                        display_name: r.get(1)?,
                        verified: r.get(2)?,
                        updated_ms: r.get(3)?,
                    })
                },
            )
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn verify_business(&self, account: AccountId, name: Option<&str>) -> Result<bool> {
        let name = name.map(str::to_string);
        self.write(move |c| {
            match &name {
                Some(name) => c.execute(
                    "UPDATE businesses SET verified = 1 WHERE account_id = ?1 AND display_name = ?2",
                    params![account as i64, name],
                ),
                None => c.execute(
                    "UPDATE businesses SET verified = 0 WHERE account_id = ?1",
                    params![account as i64],
                ),
            }
            .map(|n| n > 0)
            .map_err(backend)
        })
        .await
    }

    async fn expire(&self, now_ms: i64, retention_ms: i64) -> Result<Expired> {
        self.write_keeping_cache(move |c| {
            // Acked rows too, so their shared bodies can go below; the
            // expiry itself leaves rows under a mark (acked, not counted)
            // to the sweep.
            acks::sweep(c, acks::EXPIRE_SWEEP)?;
            let mut expired = Expired::default();
            let mut stmt = c
                .prepare_cached(
                    concat!(
                        "DELETE FROM mailbox WHERE expires_ms <= ?1 AND seq > ",
                        acks::acked_through!("mailbox.device_id"),
                        " RETURNING expires_ms - server_time_ms < ?2, device_id, length(body) + shared_len"
                    ),
                )
                .map_err(backend)?;
            let mut rows = stmt.query(params![now_ms, retention_ms]).map_err(backend)?;
            // Each device's usage, counted once (see `create_mailbox_usage`).
            let mut uncounted: std::collections::BTreeMap<DeviceId, (i64, i64)> =
                std::collections::BTreeMap::new();
            while let Some(row) = rows.next().map_err(backend)? {
                expired.envelopes += 1;
                if row.get::<_, bool>(0).map_err(backend)? {
                    expired.disappearing += 1;
                }
                let device = row.get::<_, i64>(1).map_err(backend)? as DeviceId;
                let counts = uncounted.entry(device).or_default();
                counts.0 += 1;
                counts.1 += row.get::<_, i64>(2).map_err(backend)?;
            }
            drop(rows);
            for (device, (envelopes, bytes)) in uncounted {
                uncount_usage(c, device, envelopes, bytes)?;
            }
            c.execute(SWEEP_SHARED_BODIES, []).map_err(backend)?;
            c.execute("DELETE FROM link_requests WHERE expires_ms <= ?1", [now_ms])
                .map_err(backend)?;
            c.execute("DELETE FROM verifications WHERE expires_ms <= ?1", [now_ms])
                .map_err(backend)?;
            // A bucket whose arrival time has passed is full: no row says the same.
            c.execute("DELETE FROM rate_limits WHERE tat_ms <= ?1", [now_ms])
                .map_err(backend)?;
            Ok(expired)
        })
        .await
    }

    async fn create_blob(&self, blob: Blob, quota: BlobQuota) -> Result<BlobCreated> {
        self.write_keeping_cache(move |c| {
            // The writer thread is the only writer: the sums and the insert
            // cannot interleave with another upload's.
            let used = |col: &str, who: u64| -> Result<u64> {
                c.query_row(
                    &format!("SELECT COALESCE(SUM(length), 0) FROM blobs WHERE {col} = ?1"),
                    [who as i64],
                    |r| r.get::<_, i64>(0),
                )
                .map(|n| n as u64)
                .map_err(backend)
            };
            let device = used("owner_device", blob.owner_device)?;
            if device.saturating_add(blob.length) > quota.device_bytes {
                return Ok(BlobCreated::DeviceQuota { used: device });
            }
            let account = used("owner_account", blob.owner_account)?;
            if account.saturating_add(blob.length) > quota.account_bytes {
                return Ok(BlobCreated::AccountQuota { used: account });
            }
            c.execute(
                "INSERT INTO blobs (id, owner_device, owner_account, length, sha256, \
                 upload_token_sha256, capability_sha256, created_ms, expires_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    blob.id,
                    blob.owner_device as i64,
                    blob.owner_account as i64,
                    blob.length as i64,
                    blob.sha256,
                    blob.upload_token_sha256,
                    blob.capability_sha256,
                    blob.created_ms,
                    blob.expires_ms
                ],
            )
            .map_err(backend)?;
            Ok(BlobCreated::Created)
        })
        .await
    }

    async fn blob(&self, id: &[u8]) -> Result<Option<Blob>> {
        let id = id.to_vec();
        self.read(move |c| {
            c.prepare_cached(&format!("SELECT {BLOB_COLS} WHERE id = ?1"))
                .and_then(|mut s| s.query_row([&id], row_blob).optional())
                .map_err(backend)
        })
        .await
    }

    async fn add_blob_segment(&self, id: &[u8], segment: BlobSegment) -> Result<Option<u64>> {
        let id = id.to_vec();
        let BlobSegment { offset, len, write } = segment;
        self.write_keeping_cache(move |c| {
            let moved = c
                .execute(
                    "UPDATE blobs SET received = received + ?3 \
                     WHERE id = ?1 AND received = ?2 AND complete = 0 AND received + ?3 <= length",
                    params![id, offset as i64, len as i64],
                )
                .map_err(backend)?;
            if moved == 0 {
                return Ok(None);
            }
            c.execute(
                "INSERT INTO blob_segments (blob_id, seg_offset, len, write_id) VALUES (?1, ?2, ?3, ?4)",
                params![id, offset as i64, len as i64, write as i64],
            )
            .map_err(backend)?;
            Ok(Some(offset + len))
        })
        .await
    }

    async fn blob_segments(&self, id: &[u8]) -> Result<Vec<BlobSegment>> {
        let id = id.to_vec();
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT seg_offset, len, write_id FROM blob_segments WHERE blob_id = ?1 ORDER BY seg_offset",
                )
                .map_err(backend)?;
            stmt.query_map([&id], row_segment)
            .map_err(backend)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(backend)
        })
        .await
    }

    async fn complete_blob(&self, id: &[u8], expires_ms: i64) -> Result<bool> {
        let id = id.to_vec();
        self.write_keeping_cache(move |c| {
            c.execute(
                "UPDATE blobs SET complete = 1, expires_ms = ?2 \
                 WHERE id = ?1 AND received = length AND complete = 0",
                params![id, expires_ms],
            )
            .map(|n| n == 1)
            .map_err(backend)
        })
        .await
    }

    async fn share_blob(&self, id: &[u8], group_id: &[u8], sharer: DeviceId) -> Result<BlobShared> {
        let (id, group_id) = (id.to_vec(), group_id.to_vec());
        self.write_keeping_cache(move |c| {
            let member: Option<i64> = c
                .query_row(
                    "SELECT 1 FROM group_members WHERE group_id = ?1 AND device_id = ?2",
                    params![group_id, sharer as i64],
                    |r| r.get(0),
                )
                .optional()
                .map_err(backend)?;
            if member.is_none() {
                return Ok(BlobShared::NotMember);
            }
            let complete = c
                .execute(
                    "UPDATE blobs SET shared = 1 WHERE id = ?1 AND complete = 1",
                    [&id],
                )
                .map_err(backend)?;
            if complete == 0 {
                return Ok(BlobShared::NotFound);
            }
            c.execute(
                "INSERT OR IGNORE INTO blob_fetchers (blob_id, device_id) \
                 SELECT ?1, device_id FROM group_members WHERE group_id = ?2 AND device_id != ?3",
                params![id, group_id, sharer as i64],
            )
            .map_err(backend)?;
            let waiting: i64 = c
                .query_row(
                    "SELECT COUNT(*) FROM blob_fetchers WHERE blob_id = ?1",
                    [&id],
                    |r| r.get(0),
                )
                .map_err(backend)?;
            Ok(BlobShared::Shared {
                waiting: waiting as u64,
            })
        })
        .await
    }

    async fn blob_fetched(&self, id: &[u8], device: DeviceId) -> Result<bool> {
        let id = id.to_vec();
        self.write_keeping_cache(move |c| {
            let removed = c
                .execute(
                    "DELETE FROM blob_fetchers WHERE blob_id = ?1 AND device_id = ?2",
                    params![id, device as i64],
                )
                .map_err(backend)?;
            if removed == 0 {
                return Ok(false);
            }
            let rest: i64 = c
                .query_row(
                    "SELECT COUNT(*) FROM blob_fetchers WHERE blob_id = ?1",
                    [&id],
                    |r| r.get(0),
                )
                .map_err(backend)?;
            Ok(rest == 0)
        })
        .await
    }

    async fn delete_blob(&self, id: &[u8]) -> Result<Vec<BlobSegment>> {
        let id = id.to_vec();
        self.write_keeping_cache(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "DELETE FROM blob_segments WHERE blob_id = ?1 RETURNING seg_offset, len, write_id",
                )
                .map_err(backend)?;
            let mut segments = stmt
                .query_map([&id], row_segment)
                .map_err(backend)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(backend)?;
            segments.sort_by_key(|s| s.offset);
            c.execute("DELETE FROM blob_fetchers WHERE blob_id = ?1", [&id])
                .map_err(backend)?;
            c.execute("DELETE FROM blobs WHERE id = ?1", [&id])
                .map_err(backend)?;
            Ok(segments)
        })
        .await
    }

    async fn expired_blobs(&self, now_ms: i64, limit: u32) -> Result<Vec<Vec<u8>>> {
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached("SELECT id FROM blobs WHERE expires_ms <= ?1 LIMIT ?2")
                .map_err(backend)?;
            stmt.query_map(params![now_ms, limit], |r| r.get::<_, Vec<u8>>(0))
                .map_err(backend)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(backend)
        })
        .await
    }

    async fn kt_write(
        &self,
        records: Vec<KtRecord>,
        states: Vec<KtValueState>,
        advance: Option<(u64, u64)>,
    ) -> Result<bool> {
        self.write_keeping_cache(move |c| {
            if let Some((from, to)) = advance {
                c.execute("INSERT INTO kt_head (id, epoch) VALUES (1, 0) ON CONFLICT DO NOTHING", [])
                    .map_err(backend)?;
                let moved = c
                    .execute(
                        "UPDATE kt_head SET epoch = ?2 WHERE id = 1 AND epoch = ?1",
                        params![from as i64, to as i64],
                    )
                    .map_err(backend)?;
                if moved == 0 {
                    return Ok(false);
                }
            }
            let mut put = c
                .prepare_cached(
                    "INSERT INTO kt_records (kind, id, body) VALUES (?1, ?2, ?3)
                     ON CONFLICT (kind, id) DO UPDATE SET body = excluded.body",
                )
                .map_err(backend)?;
            for r in &records {
                put.execute(params![r.kind, r.id, r.body]).map_err(backend)?;
            }
            let mut put = c
                .prepare_cached(
                    "INSERT INTO kt_states (label, epoch, version, body) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (label, epoch) DO UPDATE SET version = excluded.version, body = excluded.body",
                )
                .map_err(backend)?;
            for v in &states {
                put.execute(params![v.label, v.epoch as i64, v.version as i64, v.body])
                    .map_err(backend)?;
            }
            Ok(true)
        })
        .await
    }

    async fn kt_records(&self, kind: u8, ids: &[Vec<u8>]) -> Result<Vec<KtRecord>> {
        kt_check_read(ids.len())?;
        let ids = ids.to_vec();
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached("SELECT body FROM kt_records WHERE kind = ?1 AND id = ?2")
                .map_err(backend)?;
            let mut found = Vec::with_capacity(ids.len());
            for id in ids {
                let body: Option<Vec<u8>> = stmt
                    .query_row(params![kind, id], |r| r.get(0))
                    .optional()
                    .map_err(backend)?;
                if let Some(body) = body {
                    found.push(KtRecord { kind, id, body });
                }
            }
            Ok(found)
        })
        .await
    }

    async fn kt_states(&self, labels: &[Vec<u8>]) -> Result<Vec<KtValueState>> {
        kt_check_read(labels.len())?;
        let labels = labels.to_vec();
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT epoch, version, body FROM kt_states WHERE label = ?1 ORDER BY epoch",
                )
                .map_err(backend)?;
            let mut found = Vec::new();
            for label in labels {
                let rows = stmt
                    .query_map([&label], |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, i64>(1)?,
                            r.get::<_, Vec<u8>>(2)?,
                        ))
                    })
                    .map_err(backend)?
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(backend)?;
                found.extend(rows.into_iter().map(|(epoch, version, body)| KtValueState {
                    label: label.clone(),
                    epoch: epoch as u64,
                    version: version as u64,
                    body,
                }));
            }
            Ok(found)
        })
        .await
    }

    async fn kt_put_first(&self, record: KtRecord) -> Result<Vec<u8>> {
        self.write_keeping_cache(move |c| {
            c.query_row(
                "INSERT INTO kt_records (kind, id, body) VALUES (?1, ?2, ?3)
                 ON CONFLICT (kind, id) DO UPDATE SET body = kt_records.body
                 RETURNING body",
                params![record.kind, record.id, record.body],
                |r| r.get(0),
            )
            .map_err(backend)
        })
        .await
    }

    async fn kt_epoch(&self) -> Result<u64> {
        self.read(|c| {
            let epoch: Option<i64> = c
                .query_row("SELECT epoch FROM kt_head WHERE id = 1", [], |r| r.get(0))
                .optional()
                .map_err(backend)?;
            Ok(epoch.unwrap_or(0) as u64)
        })
        .await
    }
}

#[cfg(test)]
mod send_cache_tests {
    use super::*;

    fn group(devices: usize) -> CachedGroup {
        let d = Device {
            id: 1,
            account_id: 1,
            phone: "+919800000001".into(),
            identity_key: vec![0; 32],
            name: String::new(),
            primary: true,
            created_ms: 0,
            last_seen_ms: 0,
            revoked: None,
        };
        CachedGroup {
            epoch: 1,
            members: vec![d.clone(); devices],
            ready: vec![d; devices],
        }
    }

    #[test]
    fn the_cache_counts_its_devices_and_empties_at_its_bounds() {
        let mut cache = SendCache::default();
        cache.keep_group(b"a", group(10));
        cache.keep_group(b"b", group(5));
        assert_eq!(cache.devices, 30);
        cache.keep_group(b"a", group(1)); // replaced, not added
        assert_eq!(cache.devices, 12);
        cache.forget_group(b"b");
        assert_eq!((cache.groups.len(), cache.devices), (1, 2));
        // One more group past the device bound empties the cache first.
        cache.keep_group(b"big", group(CACHED_DEVICES_MAX / 2));
        assert_eq!(cache.groups.len(), 1, "emptied, then kept");
        assert_eq!(cache.devices, CACHED_DEVICES_MAX);
        for i in 0..CACHED_GROUPS_MAX + 1 {
            cache.keep_group(&i.to_be_bytes(), group(0));
        }
        assert!(cache.groups.len() <= CACHED_GROUPS_MAX);
    }
}
