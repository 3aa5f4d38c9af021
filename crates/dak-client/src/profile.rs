//! The device's local store: one SQLite file in the profile directory.
//!
//! It holds the identity key, the registration, every message shown to the
//! user, the outbox (sent until the server acks), the ids already seen (so a
//! redelivered envelope is shown once) and per-device receipt state (ticks).
//! Calls are synchronous: each is a small local transaction, and two `dak`
//! processes may share a profile (WAL plus a busy timeout). The browser build
//! will put an IndexedDB implementation behind the same methods.

use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use parking_lot::{ReentrantMutex, ReentrantMutexGuard};

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::ClientError;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS settings (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS messages (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    id BLOB NOT NULL UNIQUE,
    conversation TEXT NOT NULL,
    sender_phone TEXT NOT NULL,
    sender_device INTEGER NOT NULL DEFAULT 0,
    outgoing INTEGER NOT NULL,
    body TEXT NOT NULL,
    sent_at_ms INTEGER NOT NULL,
    server_time_ms INTEGER NOT NULL DEFAULT 0,
    acked INTEGER NOT NULL DEFAULT 0,
    read_ms INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages(conversation, n);
CREATE TABLE IF NOT EXISTS recipients (
    message_id BLOB NOT NULL,
    phone TEXT NOT NULL,
    device_id INTEGER NOT NULL,
    delivered_ms INTEGER NOT NULL DEFAULT 0,
    read_ms INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (message_id, device_id)
) STRICT;
CREATE TABLE IF NOT EXISTS seen (
    id BLOB PRIMARY KEY,
    at_ms INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS conversations (
    group_id BLOB PRIMARY KEY,
    peer TEXT NOT NULL,
    active INTEGER NOT NULL DEFAULT 1,
    created_ms INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE INDEX IF NOT EXISTS conversations_by_peer ON conversations(peer, active, group_id);
CREATE TABLE IF NOT EXISTS outbox (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    id BLOB NOT NULL UNIQUE,
    to_phone TEXT NOT NULL,
    body BLOB NOT NULL
) STRICT;
"#;

/// An outbox entry: message id, addressee's number, encoded body.
pub type OutboxEntry = (Vec<u8>, String, Vec<u8>);

/// A message as the user sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MessageView {
    #[serde(serialize_with = "ser_id")]
    pub id: Vec<u8>,
    /// The other party's number.
    pub conversation: String,
    pub from: String,
    pub from_device: u64,
    pub outgoing: bool,
    pub text: String,
    pub sent_at_ms: i64,
    pub server_time_ms: i64,
    pub acked: bool,
    pub read_ms: i64,
}

pub(crate) fn ser_id<S: serde::Serializer>(id: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::format_id(id))
}

/// Per-device receipt state of an outgoing message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RecipientState {
    pub phone: String,
    pub device_id: u64,
    pub delivered_ms: i64,
    pub read_ms: i64,
}

/// `Sync` through the mutex, so futures holding `&Profile` are `Send`. One
/// task at a time is expected to use a profile; the mutex is not held
/// across a transaction's statements.
pub struct Profile {
    /// Re-entrant, so a transaction can hold the connection for openmls's
    /// storage while the profile's own methods run inside it.
    conn: ReentrantMutex<Connection>,
    path: PathBuf,
    /// The registration and identity key MLS signs with, read once: `mls`
    /// runs several times per message. Cleared when either changes.
    mls_keys: parking_lot::Mutex<Option<(Registration, SigningKey)>>,
}

/// The registration this profile holds.
#[derive(Debug, Clone)]
pub struct Registration {
    /// The server's address, or several nodes' addresses separated by commas.
    pub server: String,
    pub phone: String,
    pub device_id: u64,
}

impl Registration {
    /// The nodes this device may use, in the order given.
    pub fn servers(&self) -> Vec<String> {
        split_servers(&self.server)
    }
}

/// `wss://a:7443,wss://b:7443` as a list.
pub fn split_servers(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

impl Profile {
    /// Opens or creates the profile in `dir` (created with owner-only access).
    pub fn open(dir: &Path) -> Result<Profile, ClientError> {
        std::fs::create_dir_all(dir).map_err(|e| ClientError::Store {
            path: dir.display().to_string(),
            message: e.to_string(),
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
        let path = dir.join("profile.db");
        let mut conn = Connection::open(&path).map_err(|e| store_err(&path, e))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(|e| store_err(&path, e))?;
        crate::mls::migrate(&mut conn).map_err(|message| ClientError::Store {
            path: path.display().to_string(),
            message,
        })?;
        let p = Profile {
            conn: ReentrantMutex::new(conn),
            path,
            mls_keys: parking_lot::Mutex::new(None),
        };
        p.db()
            .busy_timeout(std::time::Duration::from_secs(10))
            .map_err(|e| p.err(e))?;
        p.db()
            .query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
            .map_err(|e| p.err(e))?;
        p.db()
            .execute_batch("PRAGMA synchronous = FULL;")
            .map_err(|e| p.err(e))?;
        p.db().execute_batch(SCHEMA).map_err(|e| p.err(e))?;
        Ok(p)
    }

    fn db(&self) -> ReentrantMutexGuard<'_, Connection> {
        self.conn.lock()
    }

    /// Runs `f` with this device's MLS engine over the profile's connection.
    /// Inside `transaction`, its writes commit or roll back with the rest.
    pub fn mls<T>(
        &self,
        f: impl FnOnce(&crate::mls::Mls<'_>) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let (reg, identity) = self.mls_keys()?;
        let db = self.db();
        let mls = crate::mls::Mls::new(&db, &identity, &reg.phone, reg.device_id);
        f(&mls)
    }

    fn mls_keys(&self) -> Result<(Registration, SigningKey), ClientError> {
        let mut cached = self.mls_keys.lock();
        if let Some(keys) = cached.as_ref() {
            return Ok(keys.clone());
        }
        let keys = (self.registration()?, self.identity()?);
        *cached = Some(keys.clone());
        Ok(keys)
    }

    /// Runs `f` in a savepoint: on error its writes (MLS state included) are
    /// undone and the enclosing transaction goes on.
    pub fn savepoint<T>(
        &self,
        f: impl FnOnce(&Profile) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        self.bracket(
            "SAVEPOINT one",
            "RELEASE one",
            "ROLLBACK TO one; RELEASE one",
            f,
        )
    }

    // ---- conversations (MLS groups) ----

    /// The group to send to `peer` in: the one started or joined last.
    /// Older ones still deliver (we stay a member), but a contact who lost
    /// their state and started afresh is reachable only in the newest; and
    /// when both sides started one at the same moment, each sends in the
    /// other's, where both are members.
    pub fn group_for(&self, peer: &str) -> Result<Option<Vec<u8>>, ClientError> {
        self.db()
            .query_row(
                "SELECT group_id FROM conversations WHERE peer = ?1 AND active = 1 ORDER BY created_ms DESC, rowid DESC LIMIT 1",
                [peer],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    pub fn peer_of(&self, group: &[u8]) -> Result<Option<String>, ClientError> {
        self.db()
            .query_row(
                "SELECT peer FROM conversations WHERE group_id = ?1",
                [group],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    pub fn add_conversation(
        &self,
        group: &[u8],
        peer: &str,
        now_ms: i64,
    ) -> Result<(), ClientError> {
        self.db()
            .execute(
                "INSERT INTO conversations (group_id, peer, created_ms) VALUES (?1, ?2, ?3) ON CONFLICT(group_id) DO UPDATE SET active = 1",
                params![group, peer, now_ms],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Stops using a group (we were removed, or its state is gone).
    pub fn retire_conversation(&self, group: &[u8]) -> Result<(), ClientError> {
        self.db()
            .execute(
                "UPDATE conversations SET active = 0 WHERE group_id = ?1",
                [group],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    pub fn active_groups(&self) -> Result<Vec<(Vec<u8>, String)>, ClientError> {
        let db = self.db();
        let mut stmt = db
            .prepare(
                "SELECT group_id, peer FROM conversations WHERE active = 1 ORDER BY peer, group_id",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| self.err(e))?
            .collect::<rusqlite::Result<Vec<_>>>();
        rows.map_err(|e| self.err(e))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, e: rusqlite::Error) -> ClientError {
        store_err(&self.path, e)
    }

    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, ClientError> {
        self.db()
            .query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.err(e))
    }

    pub fn get_str(&self, key: &str) -> Result<Option<String>, ClientError> {
        Ok(self
            .get(key)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    pub fn set(&self, key: &str, value: &[u8]) -> Result<(), ClientError> {
        self.db()
            .execute(
                "INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    pub fn delete(&self, key: &str) -> Result<(), ClientError> {
        self.db()
            .execute("DELETE FROM settings WHERE key = ?1", [key])
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// The identity key, made on first use and kept.
    pub fn identity(&self) -> Result<SigningKey, ClientError> {
        if let Some(bytes) = self.get("identity_secret")? {
            let secret: [u8; 32] = bytes.as_slice().try_into().map_err(|_| ClientError::Store {
                path: self.path.display().to_string(),
                message: "identity key is damaged; register or link this profile again in a new directory".into(),
            })?;
            return Ok(SigningKey::from_bytes(&secret));
        }
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        self.set("identity_secret", key.as_bytes())?;
        Ok(key)
    }

    /// Replaces the identity key (a new registration or link).
    pub fn new_identity(&self) -> Result<SigningKey, ClientError> {
        *self.mls_keys.lock() = None;
        self.delete("identity_secret")?;
        self.identity()
    }

    pub fn registration(&self) -> Result<Registration, ClientError> {
        let (Some(server), Some(phone), Some(id)) = (
            self.get_str("server")?,
            self.get_str("phone")?,
            self.get_str("device_id")?,
        ) else {
            return Err(ClientError::NotRegistered);
        };
        let device_id = id.parse().map_err(|_| ClientError::NotRegistered)?;
        Ok(Registration {
            server,
            phone,
            device_id,
        })
    }

    pub fn save_registration(
        &self,
        server: &str,
        phone: &str,
        device_id: u64,
    ) -> Result<(), ClientError> {
        *self.mls_keys.lock() = None;
        self.set("server", server.as_bytes())?;
        self.set("phone", phone.as_bytes())?;
        self.set("device_id", device_id.to_string().as_bytes())
    }

    // ---- dedup ----

    /// Records an envelope's message id; false if it was already seen.
    pub fn first_sight(&self, id: &[u8], now_ms: i64) -> Result<bool, ClientError> {
        let n = self
            .db()
            .execute(
                "INSERT OR IGNORE INTO seen (id, at_ms) VALUES (?1, ?2)",
                params![id, now_ms],
            )
            .map_err(|e| self.err(e))?;
        Ok(n == 1)
    }

    // ---- messages ----

    pub fn insert_message(&self, m: &MessageView) -> Result<(), ClientError> {
        self.db()
            .execute(
                "INSERT OR IGNORE INTO messages (id, conversation, sender_phone, sender_device, outgoing, body, sent_at_ms, server_time_ms, acked, read_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![m.id, m.conversation, m.from, m.from_device as i64, m.outgoing, m.text, m.sent_at_ms, m.server_time_ms, m.acked, m.read_ms],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    fn row_message(r: &rusqlite::Row<'_>) -> rusqlite::Result<MessageView> {
        Ok(MessageView {
            id: r.get(0)?,
            conversation: r.get(1)?,
            from: r.get(2)?,
            from_device: r.get::<_, i64>(3)? as u64,
            outgoing: r.get(4)?,
            text: r.get(5)?,
            sent_at_ms: r.get(6)?,
            server_time_ms: r.get(7)?,
            acked: r.get(8)?,
            read_ms: r.get(9)?,
        })
    }

    const MESSAGE_COLS: &'static str = "id, conversation, sender_phone, sender_device, outgoing, body, sent_at_ms, server_time_ms, acked, read_ms";

    pub fn message(&self, id: &[u8]) -> Result<Option<MessageView>, ClientError> {
        self.db()
            .query_row(
                &format!("SELECT {} FROM messages WHERE id = ?1", Self::MESSAGE_COLS),
                [id],
                Self::row_message,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// The last `limit` messages of a conversation, oldest first.
    pub fn conversation(&self, phone: &str, limit: usize) -> Result<Vec<MessageView>, ClientError> {
        let db = self.db();
        let mut stmt = db
            .prepare(&format!(
                "SELECT {} FROM (SELECT * FROM messages WHERE conversation = ?1 ORDER BY n DESC LIMIT ?2) ORDER BY n",
                Self::MESSAGE_COLS
            ))
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![phone, limit as i64], Self::row_message)
            .map_err(|e| self.err(e))?
            .collect::<rusqlite::Result<Vec<_>>>();
        rows.map_err(|e| self.err(e))
    }

    /// Incoming messages not yet marked read, oldest first.
    pub fn unread(&self) -> Result<Vec<MessageView>, ClientError> {
        let db = self.db();
        let mut stmt = db
            .prepare(&format!(
                "SELECT {} FROM messages WHERE outgoing = 0 AND read_ms = 0 ORDER BY n",
                Self::MESSAGE_COLS
            ))
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], Self::row_message)
            .map_err(|e| self.err(e))?
            .collect::<rusqlite::Result<Vec<_>>>();
        rows.map_err(|e| self.err(e))
    }

    pub fn delete_message(&self, id: &[u8]) -> Result<(), ClientError> {
        self.db()
            .execute("DELETE FROM messages WHERE id = ?1", [id])
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    pub fn prune_seen(&self, before_ms: i64) -> Result<(), ClientError> {
        self.db()
            .execute("DELETE FROM seen WHERE at_ms < ?1", [before_ms])
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    pub fn mark_read(&self, id: &[u8], now_ms: i64) -> Result<(), ClientError> {
        self.db()
            .execute(
                "UPDATE messages SET read_ms = ?2 WHERE id = ?1 AND read_ms = 0",
                params![id, now_ms],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Records the server's ack of a message; false if there is no such
    /// message (a receipt, which has no row of its own).
    pub fn mark_acked(&self, id: &[u8], server_time_ms: i64) -> Result<bool, ClientError> {
        self.db()
            .execute(
                "UPDATE messages SET acked = 1, server_time_ms = ?2 WHERE id = ?1",
                params![id, server_time_ms],
            )
            .map(|n| n == 1)
            .map_err(|e| self.err(e))
    }

    // ---- receipts ----

    pub fn add_recipient(
        &self,
        message_id: &[u8],
        phone: &str,
        device_id: u64,
    ) -> Result<(), ClientError> {
        self.db()
            .execute(
                "INSERT OR IGNORE INTO recipients (message_id, phone, device_id) VALUES (?1, ?2, ?3)",
                params![message_id, phone, device_id as i64],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Records a receipt from one device; a read receipt implies delivery.
    pub fn record_receipt(
        &self,
        message_id: &[u8],
        phone: &str,
        device_id: u64,
        read: bool,
        at_ms: i64,
    ) -> Result<bool, ClientError> {
        // Only the addressee may confirm: a receipt for a message this device
        // never sent, or from anyone else, changes nothing.
        if self
            .message(message_id)?
            .filter(|m| m.outgoing && m.conversation == phone)
            .is_none()
        {
            return Ok(false);
        }
        self.add_recipient(message_id, phone, device_id)?;
        let sql = if read {
            "UPDATE recipients SET read_ms = CASE WHEN read_ms = 0 THEN ?3 ELSE read_ms END, delivered_ms = CASE WHEN delivered_ms = 0 THEN ?3 ELSE delivered_ms END WHERE message_id = ?1 AND device_id = ?2"
        } else {
            "UPDATE recipients SET delivered_ms = CASE WHEN delivered_ms = 0 THEN ?3 ELSE delivered_ms END WHERE message_id = ?1 AND device_id = ?2"
        };
        self.db()
            .execute(sql, params![message_id, device_id as i64, at_ms])
            .map_err(|e| self.err(e))?;
        Ok(true)
    }

    pub fn recipients(&self, message_id: &[u8]) -> Result<Vec<RecipientState>, ClientError> {
        let db = self.db();
        let mut stmt = db
            .prepare("SELECT phone, device_id, delivered_ms, read_ms FROM recipients WHERE message_id = ?1 ORDER BY phone, device_id")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([message_id], |r| {
                Ok(RecipientState {
                    phone: r.get(0)?,
                    device_id: r.get::<_, i64>(1)? as u64,
                    delivered_ms: r.get(2)?,
                    read_ms: r.get(3)?,
                })
            })
            .map_err(|e| self.err(e))?
            .collect::<rusqlite::Result<Vec<_>>>();
        rows.map_err(|e| self.err(e))
    }

    // ---- outbox ----

    pub fn queue_outgoing(&self, id: &[u8], to: &str, body: &[u8]) -> Result<(), ClientError> {
        self.db()
            .execute(
                "INSERT OR IGNORE INTO outbox (id, to_phone, body) VALUES (?1, ?2, ?3)",
                params![id, to, body],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Everything not yet acked by the server, in the order it was queued.
    pub fn outbox(&self) -> Result<Vec<OutboxEntry>, ClientError> {
        let db = self.db();
        let mut stmt = db
            .prepare("SELECT id, to_phone, body FROM outbox ORDER BY n")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(|e| self.err(e))?
            .collect::<rusqlite::Result<Vec<_>>>();
        rows.map_err(|e| self.err(e))
    }

    pub fn remove_outgoing(&self, id: &[u8]) -> Result<(), ClientError> {
        self.db()
            .execute("DELETE FROM outbox WHERE id = ?1", [id])
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Runs `f` in one transaction, so a batch of deliveries is stored
    /// (and then acked) all or nothing.
    pub fn transaction<T>(
        &self,
        f: impl FnOnce(&Profile) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        self.bracket("BEGIN IMMEDIATE", "COMMIT", "ROLLBACK", f)
    }

    /// Runs `f` between `begin` and `commit`, or `rollback` if it fails.
    fn bracket<T>(
        &self,
        begin: &str,
        commit: &str,
        rollback: &str,
        f: impl FnOnce(&Profile) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        self.db().execute_batch(begin).map_err(|e| self.err(e))?;
        match f(self) {
            Ok(v) => {
                self.db().execute_batch(commit).map_err(|e| self.err(e))?;
                Ok(v)
            }
            Err(e) => {
                let _ = self.db().execute_batch(rollback);
                Err(e)
            }
        }
    }
}

fn store_err(path: &Path, e: rusqlite::Error) -> ClientError {
    ClientError::Store {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}
