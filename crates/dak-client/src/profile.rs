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

use dak_proto::v1;
use prost::Message;
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
    read_ms INTEGER NOT NULL DEFAULT 0,
    reply_id BLOB NOT NULL DEFAULT x'',
    reply_from TEXT NOT NULL DEFAULT '',
    reply_snippet TEXT NOT NULL DEFAULT '',
    forwarded INTEGER NOT NULL DEFAULT 0,
    edited_ms INTEGER NOT NULL DEFAULT 0,
    deleted INTEGER NOT NULL DEFAULT 0,
    expires_at_ms INTEGER NOT NULL DEFAULT 0
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
CREATE TABLE IF NOT EXISTS group_state (
    group_id BLOB PRIMARY KEY,
    state BLOB NOT NULL,
    updated_ms INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE TABLE IF NOT EXISTS group_leavers (
    group_id BLOB NOT NULL,
    phone TEXT NOT NULL,
    PRIMARY KEY (group_id, phone)
) STRICT, WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS join_requests (
    group_id BLOB NOT NULL,
    phone TEXT NOT NULL,
    at_ms INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (group_id, phone)
) STRICT, WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reactions (
    message_id BLOB NOT NULL,
    phone TEXT NOT NULL,
    emoji TEXT NOT NULL,
    at_ms INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (message_id, phone)
) STRICT, WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chat_settings (
    conversation TEXT PRIMARY KEY,
    expire_secs INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE TABLE IF NOT EXISTS broadcast_lists (
    name TEXT PRIMARY KEY,
    members TEXT NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS outbox (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    id BLOB NOT NULL UNIQUE,
    to_phone TEXT NOT NULL,
    body BLOB NOT NULL
) STRICT;
"#;

/// Columns added to `messages` after profiles existed: a profile from
/// before them gets them with their defaults.
const ADDED_MESSAGE_COLUMNS: &[(&str, &str)] = &[
    ("reply_id", "BLOB NOT NULL DEFAULT x''"),
    ("reply_from", "TEXT NOT NULL DEFAULT ''"),
    ("reply_snippet", "TEXT NOT NULL DEFAULT ''"),
    ("forwarded", "INTEGER NOT NULL DEFAULT 0"),
    ("edited_ms", "INTEGER NOT NULL DEFAULT 0"),
    ("deleted", "INTEGER NOT NULL DEFAULT 0"),
    ("expires_at_ms", "INTEGER NOT NULL DEFAULT 0"),
];

const INDEXES: &str = r#"
CREATE INDEX IF NOT EXISTS messages_expiring ON messages(expires_at_ms) WHERE expires_at_ms > 0;
"#;

/// A conversation is named by the other party's number (a 1:1 chat) or
/// by `group:` and its group id in hex (a named group).
pub fn group_key(group: &[u8]) -> String {
    format!("group:{}", hex::encode(group))
}

pub fn parse_group_key(key: &str) -> Option<Vec<u8>> {
    hex::decode(key.strip_prefix("group:")?).ok()
}

/// An outbox entry: message id, addressee (a number or a group key), encoded body.
pub type OutboxEntry = (Vec<u8>, String, Vec<u8>);

/// The message a reply answers, as the replier saw it.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct Quote {
    #[serde(serialize_with = "ser_id")]
    pub id: Vec<u8>,
    pub from: String,
    pub snippet: String,
}

/// A message as the user sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct MessageView {
    #[serde(serialize_with = "ser_id")]
    pub id: Vec<u8>,
    /// The other party's number, or the group's key (`group_key`).
    pub conversation: String,
    pub from: String,
    pub from_device: u64,
    pub outgoing: bool,
    pub text: String,
    pub sent_at_ms: i64,
    pub server_time_ms: i64,
    pub acked: bool,
    pub read_ms: i64,
    pub reply_to: Option<Quote>,
    /// Times this text was forwarded before it reached us (0: not forwarded).
    pub forwarded: u32,
    /// When the sender last edited it (0: never).
    pub edited_ms: i64,
    /// Deleted for everyone by its sender: the text is gone.
    pub deleted: bool,
    /// When this device deletes it (a disappearing message); 0: never.
    pub expires_at_ms: i64,
}

impl MessageView {
    /// WhatsApp's label for forwarded messages.
    pub fn forward_label(&self) -> Option<&'static str> {
        match self.forwarded {
            0 => None,
            n if n >= crate::FREQUENTLY_FORWARDED => Some("Forwarded many times"),
            _ => Some("Forwarded"),
        }
    }
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
        p.add_missing_columns()?;
        p.db().execute_batch(INDEXES).map_err(|e| p.err(e))?;
        p.purge_expired(chrono::Utc::now().timestamp_millis())?;
        Ok(p)
    }

    fn add_missing_columns(&self) -> Result<(), ClientError> {
        let db = self.db();
        let have: Vec<String> = db
            .prepare("SELECT name FROM pragma_table_info('messages')")
            .and_then(|mut s| {
                s.query_map([], |r| r.get(0))?
                    .collect::<rusqlite::Result<Vec<String>>>()
            })
            .map_err(|e| self.err(e))?;
        for (name, decl) in ADDED_MESSAGE_COLUMNS {
            if !have.iter().any(|h| h == name) {
                db.execute_batch(&format!("ALTER TABLE messages ADD COLUMN {name} {decl}"))
                    .map_err(|e| self.err(e))?;
            }
        }
        Ok(())
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

    /// Whether this device uses the group (None: it never knew it).
    pub fn conversation_active(&self, group: &[u8]) -> Result<Option<bool>, ClientError> {
        self.db()
            .query_row(
                "SELECT active FROM conversations WHERE group_id = ?1",
                [group],
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
        let quote = m.reply_to.clone().unwrap_or_default();
        self.db()
            .execute(
                "INSERT OR IGNORE INTO messages (id, conversation, sender_phone, sender_device, outgoing, body, sent_at_ms, server_time_ms, acked, read_ms, reply_id, reply_from, reply_snippet, forwarded, edited_ms, deleted, expires_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
                params![m.id, m.conversation, m.from, m.from_device as i64, m.outgoing, m.text, m.sent_at_ms, m.server_time_ms, m.acked, m.read_ms, quote.id, quote.from, quote.snippet, m.forwarded, m.edited_ms, m.deleted, m.expires_at_ms],
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
            reply_to: {
                let id: Vec<u8> = r.get(10)?;
                (!id.is_empty())
                    .then(|| -> rusqlite::Result<Quote> {
                        Ok(Quote {
                            id,
                            from: r.get(11)?,
                            snippet: r.get(12)?,
                        })
                    })
                    .transpose()?
            },
            forwarded: r.get(13)?,
            edited_ms: r.get(14)?,
            deleted: r.get(15)?,
            expires_at_ms: r.get(16)?,
        })
    }

    const MESSAGE_COLS: &'static str = "id, conversation, sender_phone, sender_device, outgoing, body, sent_at_ms, server_time_ms, acked, read_ms, reply_id, reply_from, reply_snippet, forwarded, edited_ms, deleted, expires_at_ms";

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
                "SELECT {} FROM (SELECT * FROM messages WHERE conversation = ?1 AND (expires_at_ms = 0 OR expires_at_ms > ?3) ORDER BY n DESC LIMIT ?2) ORDER BY n",
                Self::MESSAGE_COLS
            ))
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(
                params![phone, limit as i64, chrono::Utc::now().timestamp_millis()],
                Self::row_message,
            )
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
        let Some(m) = self.message(message_id)?.filter(|m| m.outgoing) else {
            return Ok(false);
        };
        // In a group, the members the server fanned it out to (from its ack).
        let addressee = m.conversation == phone
            || self
                .recipients(message_id)?
                .iter()
                .any(|r| r.phone == phone);
        if !addressee {
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

/// Groups, message features and broadcast lists.
impl Profile {
    /// A named group's settings as last accepted (see `groups::may_change`).
    pub fn group_state(&self, group: &[u8]) -> Result<Option<v1::GroupState>, ClientError> {
        let bytes: Option<Vec<u8>> = self
            .db()
            .query_row(
                "SELECT state FROM group_state WHERE group_id = ?1",
                [group],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        bytes
            .map(|b| {
                v1::GroupState::decode(b.as_slice()).map_err(|e| ClientError::Store {
                    path: self.path.display().to_string(),
                    message: format!("a stored group state is unreadable: {e}"),
                })
            })
            .transpose()
    }

    pub fn set_group_state(
        &self,
        group: &[u8],
        state: &v1::GroupState,
        now_ms: i64,
    ) -> Result<(), ClientError> {
        self.db()
            .execute(
                "INSERT INTO group_state (group_id, state, updated_ms) VALUES (?1, ?2, ?3) ON CONFLICT(group_id) DO UPDATE SET state = excluded.state, updated_ms = excluded.updated_ms",
                params![group, state.encode_to_vec(), now_ms],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Named groups this device is in: (group id, key), by title.
    pub fn named_groups(&self) -> Result<Vec<(Vec<u8>, String)>, ClientError> {
        let groups = self.active_groups()?;
        Ok(groups
            .into_iter()
            .filter(|(g, _)| crate::mls::is_named_group(g))
            .collect())
    }

    /// The conversation `arg` names: a number (1:1), a group key, a
    /// group's title, or the start of its hex id (at least 4 digits).
    pub fn resolve(&self, arg: &str) -> Result<String, ClientError> {
        let arg = arg.trim();
        if let Ok(phone) = dak_proto::normalize_phone(arg) {
            return Ok(phone);
        }
        // A full key needs no search: every send to a group comes this way.
        if let Some(group) = parse_group_key(arg)
            && self.conversation_active(&group)? == Some(true)
        {
            return Ok(group_key(&group));
        }
        let hex_arg = arg.strip_prefix("group:").unwrap_or(arg).to_lowercase();
        let mut found = Vec::new();
        for (group, key) in self.named_groups()? {
            let title = self
                .group_state(&group)?
                .map(|s| s.title)
                .unwrap_or_default();
            let by_id = hex_arg.len() >= 4 && hex::encode(&group).starts_with(&hex_arg);
            if by_id || title.eq_ignore_ascii_case(arg) {
                found.push((key, title));
            }
        }
        match found.len() {
            1 => Ok(found.remove(0).0),
            0 => Err(ClientError::Usage(format!(
                "{arg:?} is neither a phone number (like +919800000001) nor a group you are in (see `dak group list`)"
            ))),
            _ => Err(ClientError::Usage(format!(
                "{arg:?} matches several groups ({}); use the group id from `dak group list`",
                found
                    .iter()
                    .map(|(k, t)| format!("{t} {k}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    pub fn add_leaver(&self, group: &[u8], phone: &str) -> Result<(), ClientError> {
        self.exec(
            "INSERT OR IGNORE INTO group_leavers (group_id, phone) VALUES (?1, ?2)",
            params![group, phone],
        )
    }

    pub fn leavers(&self, group: &[u8]) -> Result<Vec<String>, ClientError> {
        self.strings(
            "SELECT phone FROM group_leavers WHERE group_id = ?1 ORDER BY phone",
            group,
        )
    }

    pub fn clear_leaver(&self, group: &[u8], phone: &str) -> Result<(), ClientError> {
        self.exec(
            "DELETE FROM group_leavers WHERE group_id = ?1 AND phone = ?2",
            params![group, phone],
        )
    }

    pub fn add_join_request(
        &self,
        group: &[u8],
        phone: &str,
        at_ms: i64,
    ) -> Result<(), ClientError> {
        self.exec(
            "INSERT OR IGNORE INTO join_requests (group_id, phone, at_ms) VALUES (?1, ?2, ?3)",
            params![group, phone, at_ms],
        )
    }

    pub fn join_requests(&self, group: &[u8]) -> Result<Vec<String>, ClientError> {
        self.strings(
            "SELECT phone FROM join_requests WHERE group_id = ?1 ORDER BY at_ms, phone",
            group,
        )
    }

    pub fn remove_join_request(&self, group: &[u8], phone: &str) -> Result<(), ClientError> {
        self.exec(
            "DELETE FROM join_requests WHERE group_id = ?1 AND phone = ?2",
            params![group, phone],
        )
    }

    /// Sets `phone`'s reaction on a message; an empty emoji removes it.
    pub fn set_reaction(
        &self,
        message_id: &[u8],
        phone: &str,
        emoji: &str,
        at_ms: i64,
    ) -> Result<(), ClientError> {
        if emoji.is_empty() {
            return self.exec(
                "DELETE FROM reactions WHERE message_id = ?1 AND phone = ?2",
                params![message_id, phone],
            );
        }
        self.exec(
            "INSERT INTO reactions (message_id, phone, emoji, at_ms) VALUES (?1, ?2, ?3, ?4) ON CONFLICT(message_id, phone) DO UPDATE SET emoji = excluded.emoji, at_ms = excluded.at_ms",
            params![message_id, phone, emoji, at_ms],
        )
    }

    /// (phone, emoji) for each reaction on a message.
    pub fn reactions(&self, message_id: &[u8]) -> Result<Vec<(String, String)>, ClientError> {
        let db = self.db();
        let mut stmt = db
            .prepare_cached(
                "SELECT phone, emoji FROM reactions WHERE message_id = ?1 ORDER BY at_ms, phone",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([message_id], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| self.err(e))?
            .collect::<rusqlite::Result<Vec<_>>>();
        rows.map_err(|e| self.err(e))
    }

    pub fn edit_message(&self, id: &[u8], text: &str, at_ms: i64) -> Result<(), ClientError> {
        self.exec(
            "UPDATE messages SET body = ?2, edited_ms = ?3 WHERE id = ?1 AND deleted = 0",
            params![id, text, at_ms],
        )
    }

    /// Deleted for everyone: the text and reactions go, a tombstone stays.
    pub fn tombstone_message(&self, id: &[u8]) -> Result<(), ClientError> {
        self.exec(
            "UPDATE messages SET body = '', deleted = 1, reply_snippet = '' WHERE id = ?1",
            [id],
        )?;
        // Replies keep pointing at it, but no longer quote its words.
        self.exec(
            "UPDATE messages SET reply_snippet = '' WHERE reply_id = ?1",
            [id],
        )?;
        self.exec("DELETE FROM reactions WHERE message_id = ?1", [id])
    }

    /// The 1:1 chat's disappearing-message timer (groups keep theirs in
    /// their state).
    pub fn chat_timer(&self, conversation: &str) -> Result<u32, ClientError> {
        self.db()
            .query_row(
                "SELECT expire_secs FROM chat_settings WHERE conversation = ?1",
                [conversation],
                |r| r.get(0),
            )
            .optional()
            .map(|t| t.unwrap_or(0))
            .map_err(|e| self.err(e))
    }

    pub fn set_chat_timer(&self, conversation: &str, secs: u32) -> Result<(), ClientError> {
        self.exec(
            "INSERT INTO chat_settings (conversation, expire_secs) VALUES (?1, ?2) ON CONFLICT(conversation) DO UPDATE SET expire_secs = excluded.expire_secs",
            params![conversation, secs],
        )
    }

    /// Deletes disappearing messages whose time is up; returns how many.
    pub fn purge_expired(&self, now_ms: i64) -> Result<usize, ClientError> {
        let db = self.db();
        let gone = "SELECT id FROM messages WHERE expires_at_ms > 0 AND expires_at_ms <= ?1";
        for table in ["reactions", "recipients"] {
            db.execute(
                &format!("DELETE FROM {table} WHERE message_id IN ({gone})"),
                [now_ms],
            )
            .map_err(|e| self.err(e))?;
        }
        db.execute(
            "DELETE FROM messages WHERE expires_at_ms > 0 AND expires_at_ms <= ?1",
            [now_ms],
        )
        .map_err(|e| self.err(e))
    }

    pub fn set_broadcast_list(&self, name: &str, members: &[String]) -> Result<(), ClientError> {
        self.exec(
            "INSERT INTO broadcast_lists (name, members) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET members = excluded.members",
            params![name, members.join(",")],
        )
    }

    pub fn delete_broadcast_list(&self, name: &str) -> Result<bool, ClientError> {
        self.db()
            .execute("DELETE FROM broadcast_lists WHERE name = ?1", [name])
            .map(|n| n == 1)
            .map_err(|e| self.err(e))
    }

    /// Broadcast lists: (name, member numbers), by name.
    pub fn broadcast_lists(&self) -> Result<Vec<(String, Vec<String>)>, ClientError> {
        let db = self.db();
        let mut stmt = db
            .prepare("SELECT name, members FROM broadcast_lists ORDER BY name")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                let members: String = r.get(1)?;
                Ok((
                    r.get(0)?,
                    members
                        .split(',')
                        .filter(|m| !m.is_empty())
                        .map(String::from)
                        .collect(),
                ))
            })
            .map_err(|e| self.err(e))?
            .collect::<rusqlite::Result<Vec<_>>>();
        rows.map_err(|e| self.err(e))
    }

    fn exec(&self, sql: &str, params: impl rusqlite::Params) -> Result<(), ClientError> {
        self.db()
            .execute(sql, params)
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    fn strings(&self, sql: &str, group: &[u8]) -> Result<Vec<String>, ClientError> {
        let db = self.db();
        let mut stmt = db.prepare_cached(sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([group], |r| r.get(0))
            .map_err(|e| self.err(e))?
            .collect::<rusqlite::Result<Vec<String>>>();
        rows.map_err(|e| self.err(e))
    }
}

fn store_err(path: &Path, e: rusqlite::Error) -> ClientError {
    ClientError::Store {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}
