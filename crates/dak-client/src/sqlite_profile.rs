//! The native profile store: one SQLite file in the profile directory,
//! behind `dak_core::ProfileStore`.
//!
//! It holds the identity key, the registration, every message shown to the
//! user, the outbox (sent until the server acks), the ids already seen (so a
//! redelivered envelope is shown once), per-device receipt state (ticks) and
//! openmls's records (`mls_kv`). Calls are synchronous: each is a small local
//! transaction unless a bracket is open, and two `dak` processes may share a
//! profile (WAL plus a busy timeout; `data_version` tells the core when the
//! other one wrote). Brackets map to `BEGIN IMMEDIATE` and `SAVEPOINT`.

use std::path::{Path, PathBuf};

use dak_core::{
    Bracket, ClientError, MessageView, OutboxEntry, Profile, ProfileStore, Quote, RecipientState,
};
use dak_proto::v1;
use parking_lot::{Mutex, MutexGuard};
use prost::Message;
use rusqlite::{Connection, OptionalExtension, params};

use crate::env::SystemEnvironment;
const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS mls_kv (
    label BLOB NOT NULL,
    key BLOB NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (label, key)
) STRICT, WITHOUT ROWID;
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
    expires_at_ms INTEGER NOT NULL DEFAULT 0,
    attachment BLOB NOT NULL DEFAULT x'',
    interactive BLOB NOT NULL DEFAULT x'',
    choice BLOB NOT NULL DEFAULT x''
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
    // A `v1::Attachment`, protobuf-encoded; empty: none.
    ("attachment", "BLOB NOT NULL DEFAULT x''"),
    // A `v1::Interactive` (buttons or a list) and a `v1::Choice` (an
    // answer to one), protobuf-encoded; empty: none.
    ("interactive", "BLOB NOT NULL DEFAULT x''"),
    ("choice", "BLOB NOT NULL DEFAULT x''"),
];

const INDEXES: &str = r#"
CREATE INDEX IF NOT EXISTS messages_expiring ON messages(expires_at_ms) WHERE expires_at_ms > 0;
"#;

/// Opens or creates the profile in `dir` (created with owner-only access),
/// on the system's clock and randomness.
pub fn open_profile(dir: &Path) -> Result<Profile, ClientError> {
    let store = SqliteProfile::open(dir)?;
    let profile = Profile::new(Box::new(store), Box::new(SystemEnvironment));
    let now = profile.now_ms();
    profile.purge_expired(now)?;
    Ok(profile)
}

/// `Sync` through the mutex. One task at a time is expected to use a
/// profile; the mutex is held for one statement, never across a bracket.
pub struct SqliteProfile {
    conn: Mutex<Connection>,
    path: PathBuf,
}

const MESSAGE_COLS: &str = "id, conversation, sender_phone, sender_device, outgoing, body, sent_at_ms, server_time_ms, acked, read_ms, reply_id, reply_from, reply_snippet, forwarded, edited_ms, deleted, expires_at_ms, attachment, interactive, choice";

fn row_message(r: &rusqlite::Row<'_>) -> rusqlite::Result<MessageView> {
    Ok(MessageView {
        id: r.get(0)?,
        conversation: dak_core::ConversationId::from_key(&r.get::<_, String>(1)?),
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
        attachment: decode_column::<dak_proto::v1::Attachment>(r.get(17)?)
            .map(|a| Box::new(dak_core::Attachment::from_proto(a))),
        interactive: decode_column(r.get(18)?).map(Box::new),
        choice: decode_column(r.get(19)?).map(Box::new),
    })
}

/// A protobuf column; empty (or, never written by this code, unreadable): none.
fn decode_column<M: prost::Message + Default>(bytes: Vec<u8>) -> Option<M> {
    (!bytes.is_empty())
        .then(|| M::decode(&bytes[..]))
        .and_then(Result::ok)
}

fn store_err(path: &Path, e: rusqlite::Error) -> ClientError {
    ClientError::Store {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

impl SqliteProfile {
    pub fn open(dir: &Path) -> Result<SqliteProfile, ClientError> {
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
        let conn = Connection::open(&path).map_err(|e| store_err(&path, e))?;
        SqliteProfile::init(conn, path)
    }

    /// A profile that lives in memory only (benchmarks and tests): SQLite's
    /// code paths without a file.
    pub fn open_in_memory() -> Result<SqliteProfile, ClientError> {
        let path = PathBuf::from(":memory:");
        let conn = Connection::open_in_memory().map_err(|e| store_err(&path, e))?;
        SqliteProfile::init(conn, path)
    }

    fn init(conn: Connection, path: PathBuf) -> Result<SqliteProfile, ClientError> {
        let p = SqliteProfile {
            conn: Mutex::new(conn),
            path,
        };
        {
            let db = p.db();
            db.busy_timeout(std::time::Duration::from_secs(10))
                .map_err(|e| p.err(e))?;
            db.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
                .map_err(|e| p.err(e))?;
            db.execute_batch("PRAGMA synchronous = FULL;")
                .map_err(|e| p.err(e))?;
            db.execute_batch(SCHEMA).map_err(|e| p.err(e))?;
        }
        p.add_missing_columns()?;
        p.db().execute_batch(INDEXES).map_err(|e| p.err(e))?;
        crate::legacy_mls::migrate(&mut p.db(), &p.path)?;
        Ok(p)
    }

    pub fn path(&self) -> &Path {
        &self.path
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

    fn db(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock()
    }

    fn err(&self, e: rusqlite::Error) -> ClientError {
        store_err(&self.path, e)
    }

    fn exec(&self, sql: &str, params: impl rusqlite::Params) -> Result<usize, ClientError> {
        self.db()
            .prepare_cached(sql)
            .and_then(|mut s| s.execute(params))
            .map_err(|e| self.err(e))
    }

    fn batch(&self, sql: &str) -> Result<(), ClientError> {
        self.db().execute_batch(sql).map_err(|e| self.err(e))
    }

    fn one<T: rusqlite::types::FromSql>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<Option<T>, ClientError> {
        self.db()
            .prepare_cached(sql)
            .and_then(|mut s| s.query_row(params, |r| r.get(0)).optional())
            .map_err(|e| self.err(e))
    }

    fn rows<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        f: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, ClientError> {
        let db = self.db();
        let mut stmt = db.prepare_cached(sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params, f)
            .map_err(|e| self.err(e))?
            .collect::<rusqlite::Result<Vec<T>>>();
        rows.map_err(|e| self.err(e))
    }
}

impl ProfileStore for SqliteProfile {
    fn label(&self) -> String {
        self.path.display().to_string()
    }

    fn begin(&self, bracket: Bracket) -> Result<(), ClientError> {
        self.batch(match bracket {
            Bracket::Transaction => "BEGIN IMMEDIATE",
            Bracket::Savepoint => "SAVEPOINT one",
        })
    }

    fn commit(&self, bracket: Bracket) -> Result<(), ClientError> {
        self.batch(match bracket {
            Bracket::Transaction => "COMMIT",
            Bracket::Savepoint => "RELEASE one",
        })
    }

    fn rollback(&self, bracket: Bracket) -> Result<(), ClientError> {
        self.batch(match bracket {
            Bracket::Transaction => "ROLLBACK",
            Bracket::Savepoint => "ROLLBACK TO one; RELEASE one",
        })
    }

    fn data_version(&self) -> Result<u64, ClientError> {
        self.one::<i64>("PRAGMA data_version", [])
            .map(|v| v.unwrap_or(0) as u64)
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, ClientError> {
        self.one("SELECT value FROM settings WHERE key = ?1", [key])
    }

    fn set(&self, key: &str, value: &[u8]) -> Result<(), ClientError> {
        self.exec(
            "INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )
        .map(drop)
    }

    fn delete(&self, key: &str) -> Result<(), ClientError> {
        self.exec("DELETE FROM settings WHERE key = ?1", [key])
            .map(drop)
    }

    fn mls_get(&self, label: &[u8], key: &[u8]) -> Result<Option<Vec<u8>>, ClientError> {
        self.one(
            "SELECT value FROM mls_kv WHERE label = ?1 AND key = ?2",
            params![label, key],
        )
    }

    fn mls_put(&self, label: &[u8], key: &[u8], value: &[u8]) -> Result<(), ClientError> {
        self.exec(
            "INSERT INTO mls_kv (label, key, value) VALUES (?1, ?2, ?3) ON CONFLICT(label, key) DO UPDATE SET value = excluded.value",
            params![label, key, value],
        )
        .map(drop)
    }

    fn mls_delete(&self, label: &[u8], key: &[u8]) -> Result<(), ClientError> {
        self.exec(
            "DELETE FROM mls_kv WHERE label = ?1 AND key = ?2",
            params![label, key],
        )
        .map(drop)
    }

    fn group_for(&self, peer: &str) -> Result<Option<Vec<u8>>, ClientError> {
        self.one(
            "SELECT group_id FROM conversations WHERE peer = ?1 AND active = 1 ORDER BY created_ms DESC, rowid DESC LIMIT 1",
            [peer],
        )
    }

    fn conversation_active(&self, group: &[u8]) -> Result<Option<bool>, ClientError> {
        self.one(
            "SELECT active FROM conversations WHERE group_id = ?1",
            [group],
        )
    }

    fn peer_of(&self, group: &[u8]) -> Result<Option<String>, ClientError> {
        self.one(
            "SELECT peer FROM conversations WHERE group_id = ?1",
            [group],
        )
    }

    fn add_conversation(&self, group: &[u8], peer: &str, now_ms: i64) -> Result<(), ClientError> {
        self.exec(
            "INSERT INTO conversations (group_id, peer, created_ms) VALUES (?1, ?2, ?3) ON CONFLICT(group_id) DO UPDATE SET active = 1",
            params![group, peer, now_ms],
        )
        .map(drop)
    }

    fn retire_conversation(&self, group: &[u8]) -> Result<(), ClientError> {
        self.exec(
            "UPDATE conversations SET active = 0 WHERE group_id = ?1",
            [group],
        )
        .map(drop)
    }

    fn active_groups(&self) -> Result<Vec<(Vec<u8>, String)>, ClientError> {
        self.rows(
            "SELECT group_id, peer FROM conversations WHERE active = 1 ORDER BY peer, group_id",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    fn first_sight(&self, id: &[u8], now_ms: i64) -> Result<bool, ClientError> {
        self.exec(
            "INSERT OR IGNORE INTO seen (id, at_ms) VALUES (?1, ?2)",
            params![id, now_ms],
        )
        .map(|n| n == 1)
    }

    fn prune_seen(&self, before_ms: i64) -> Result<(), ClientError> {
        self.exec("DELETE FROM seen WHERE at_ms < ?1", [before_ms])
            .map(drop)
    }

    fn insert_message(&self, m: &MessageView) -> Result<(), ClientError> {
        let quote = m.reply_to.clone().unwrap_or_default();
        self.exec(
            "INSERT OR IGNORE INTO messages (id, conversation, sender_phone, sender_device, outgoing, body, sent_at_ms, server_time_ms, acked, read_ms, reply_id, reply_from, reply_snippet, forwarded, edited_ms, deleted, expires_at_ms, attachment, interactive, choice) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)",
            params![m.id, m.conversation.key(), m.from, m.from_device as i64, m.outgoing, m.text, m.sent_at_ms, m.server_time_ms, m.acked, m.read_ms, quote.id, quote.from, quote.snippet, m.forwarded, m.edited_ms, m.deleted, m.expires_at_ms, m.attachment.as_ref().map(|a| prost::Message::encode_to_vec(&a.to_proto())).unwrap_or_default(), m.interactive.as_deref().map(prost::Message::encode_to_vec).unwrap_or_default(), m.choice.as_deref().map(prost::Message::encode_to_vec).unwrap_or_default()],
        )
        .map(drop)
    }

    fn message(&self, id: &[u8]) -> Result<Option<MessageView>, ClientError> {
        Ok(self
            .rows(
                &format!("SELECT {MESSAGE_COLS} FROM messages WHERE id = ?1"),
                [id],
                row_message,
            )?
            .pop())
    }

    fn conversation(
        &self,
        conversation: &str,
        limit: usize,
        now_ms: i64,
    ) -> Result<Vec<MessageView>, ClientError> {
        self.rows(
            &format!(
                "SELECT {MESSAGE_COLS} FROM (SELECT * FROM messages WHERE conversation = ?1 AND (expires_at_ms = 0 OR expires_at_ms > ?3) ORDER BY n DESC LIMIT ?2) ORDER BY n"
            ),
            params![conversation, limit as i64, now_ms],
            row_message,
        )
    }

    fn unread(&self) -> Result<Vec<MessageView>, ClientError> {
        self.rows(
            &format!(
                "SELECT {MESSAGE_COLS} FROM messages WHERE outgoing = 0 AND read_ms = 0 ORDER BY n"
            ),
            [],
            row_message,
        )
    }

    fn delete_message(&self, id: &[u8]) -> Result<(), ClientError> {
        self.exec("DELETE FROM messages WHERE id = ?1", [id])
            .map(drop)
    }

    fn mark_read(&self, id: &[u8], now_ms: i64) -> Result<(), ClientError> {
        self.exec(
            "UPDATE messages SET read_ms = ?2 WHERE id = ?1 AND read_ms = 0",
            params![id, now_ms],
        )
        .map(drop)
    }

    fn mark_acked(&self, id: &[u8], server_time_ms: i64) -> Result<bool, ClientError> {
        self.exec(
            "UPDATE messages SET acked = 1, server_time_ms = ?2 WHERE id = ?1",
            params![id, server_time_ms],
        )
        .map(|n| n == 1)
    }

    fn edit_message(&self, id: &[u8], text: &str, at_ms: i64) -> Result<(), ClientError> {
        self.exec(
            "UPDATE messages SET body = ?2, edited_ms = ?3 WHERE id = ?1 AND deleted = 0",
            params![id, text, at_ms],
        )
        .map(drop)
    }

    fn tombstone_message(&self, id: &[u8]) -> Result<(), ClientError> {
        self.exec(
            "UPDATE messages SET body = '', attachment = x'', interactive = x'', deleted = 1, reply_snippet = '' WHERE id = ?1",
            [id],
        )?;
        // Replies keep pointing at it, but no longer quote its words.
        self.exec(
            "UPDATE messages SET reply_snippet = '' WHERE reply_id = ?1",
            [id],
        )?;
        self.exec("DELETE FROM reactions WHERE message_id = ?1", [id])
            .map(drop)
    }

    fn purge_expired(&self, now_ms: i64) -> Result<usize, ClientError> {
        let gone = "SELECT id FROM messages WHERE expires_at_ms > 0 AND expires_at_ms <= ?1";
        for table in ["reactions", "recipients"] {
            self.exec(
                &format!("DELETE FROM {table} WHERE message_id IN ({gone})"),
                [now_ms],
            )?;
        }
        self.exec(
            "DELETE FROM messages WHERE expires_at_ms > 0 AND expires_at_ms <= ?1",
            [now_ms],
        )
    }

    fn add_recipient(
        &self,
        message_id: &[u8],
        phone: &str,
        device_id: u64,
    ) -> Result<(), ClientError> {
        self.exec(
            "INSERT OR IGNORE INTO recipients (message_id, phone, device_id) VALUES (?1, ?2, ?3)",
            params![message_id, phone, device_id as i64],
        )
        .map(drop)
    }

    fn update_receipt(
        &self,
        message_id: &[u8],
        device_id: u64,
        read: bool,
        at_ms: i64,
    ) -> Result<(), ClientError> {
        let sql = if read {
            "UPDATE recipients SET read_ms = CASE WHEN read_ms = 0 THEN ?3 ELSE read_ms END, delivered_ms = CASE WHEN delivered_ms = 0 THEN ?3 ELSE delivered_ms END WHERE message_id = ?1 AND device_id = ?2"
        } else {
            "UPDATE recipients SET delivered_ms = CASE WHEN delivered_ms = 0 THEN ?3 ELSE delivered_ms END WHERE message_id = ?1 AND device_id = ?2"
        };
        self.exec(sql, params![message_id, device_id as i64, at_ms])
            .map(drop)
    }

    fn recipients(&self, message_id: &[u8]) -> Result<Vec<RecipientState>, ClientError> {
        self.rows(
            "SELECT phone, device_id, delivered_ms, read_ms FROM recipients WHERE message_id = ?1 ORDER BY phone, device_id",
            [message_id],
            |r| {
                Ok(RecipientState {
                    phone: r.get(0)?,
                    device_id: r.get::<_, i64>(1)? as u64,
                    delivered_ms: r.get(2)?,
                    read_ms: r.get(3)?,
                })
            },
        )
    }

    fn queue_outgoing(&self, id: &[u8], to: &str, body: &[u8]) -> Result<(), ClientError> {
        self.exec(
            "INSERT OR IGNORE INTO outbox (id, to_phone, body) VALUES (?1, ?2, ?3)",
            params![id, to, body],
        )
        .map(drop)
    }

    fn outbox(&self) -> Result<Vec<OutboxEntry>, ClientError> {
        self.rows(
            "SELECT id, to_phone, body FROM outbox ORDER BY n",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
    }

    fn remove_outgoing(&self, id: &[u8]) -> Result<(), ClientError> {
        self.exec("DELETE FROM outbox WHERE id = ?1", [id])
            .map(drop)
    }

    fn group_state_bytes(&self, group: &[u8]) -> Result<Option<Vec<u8>>, ClientError> {
        self.one("SELECT state FROM group_state WHERE group_id = ?1", [group])
    }

    fn set_group_state(
        &self,
        group: &[u8],
        state: &v1::GroupState,
        now_ms: i64,
    ) -> Result<(), ClientError> {
        self.exec(
            "INSERT INTO group_state (group_id, state, updated_ms) VALUES (?1, ?2, ?3) ON CONFLICT(group_id) DO UPDATE SET state = excluded.state, updated_ms = excluded.updated_ms",
            params![group, state.encode_to_vec(), now_ms],
        )
        .map(drop)
    }

    fn add_leaver(&self, group: &[u8], phone: &str) -> Result<(), ClientError> {
        self.exec(
            "INSERT OR IGNORE INTO group_leavers (group_id, phone) VALUES (?1, ?2)",
            params![group, phone],
        )
        .map(drop)
    }

    fn leavers(&self, group: &[u8]) -> Result<Vec<String>, ClientError> {
        self.rows(
            "SELECT phone FROM group_leavers WHERE group_id = ?1 ORDER BY phone",
            [group],
            |r| r.get(0),
        )
    }

    fn clear_leaver(&self, group: &[u8], phone: &str) -> Result<(), ClientError> {
        self.exec(
            "DELETE FROM group_leavers WHERE group_id = ?1 AND phone = ?2",
            params![group, phone],
        )
        .map(drop)
    }

    fn add_join_request(&self, group: &[u8], phone: &str, at_ms: i64) -> Result<(), ClientError> {
        self.exec(
            "INSERT OR IGNORE INTO join_requests (group_id, phone, at_ms) VALUES (?1, ?2, ?3)",
            params![group, phone, at_ms],
        )
        .map(drop)
    }

    fn join_requests(&self, group: &[u8]) -> Result<Vec<String>, ClientError> {
        self.rows(
            "SELECT phone FROM join_requests WHERE group_id = ?1 ORDER BY at_ms, phone",
            [group],
            |r| r.get(0),
        )
    }

    fn remove_join_request(&self, group: &[u8], phone: &str) -> Result<(), ClientError> {
        self.exec(
            "DELETE FROM join_requests WHERE group_id = ?1 AND phone = ?2",
            params![group, phone],
        )
        .map(drop)
    }

    fn set_reaction(
        &self,
        message_id: &[u8],
        phone: &str,
        emoji: &str,
        at_ms: i64,
    ) -> Result<(), ClientError> {
        if emoji.is_empty() {
            return self
                .exec(
                    "DELETE FROM reactions WHERE message_id = ?1 AND phone = ?2",
                    params![message_id, phone],
                )
                .map(drop);
        }
        self.exec(
            "INSERT INTO reactions (message_id, phone, emoji, at_ms) VALUES (?1, ?2, ?3, ?4) ON CONFLICT(message_id, phone) DO UPDATE SET emoji = excluded.emoji, at_ms = excluded.at_ms",
            params![message_id, phone, emoji, at_ms],
        )
        .map(drop)
    }

    fn reactions(&self, message_id: &[u8]) -> Result<Vec<(String, String)>, ClientError> {
        self.rows(
            "SELECT phone, emoji FROM reactions WHERE message_id = ?1 ORDER BY at_ms, phone",
            [message_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    fn chat_timer(&self, conversation: &str) -> Result<u32, ClientError> {
        self.one(
            "SELECT expire_secs FROM chat_settings WHERE conversation = ?1",
            [conversation],
        )
        .map(|t| t.unwrap_or(0))
    }

    fn set_chat_timer(&self, conversation: &str, secs: u32) -> Result<(), ClientError> {
        self.exec(
            "INSERT INTO chat_settings (conversation, expire_secs) VALUES (?1, ?2) ON CONFLICT(conversation) DO UPDATE SET expire_secs = excluded.expire_secs",
            params![conversation, secs],
        )
        .map(drop)
    }

    fn set_broadcast_list(&self, name: &str, members: &[String]) -> Result<(), ClientError> {
        self.exec(
            "INSERT INTO broadcast_lists (name, members) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET members = excluded.members",
            params![name, members.join(",")],
        )
        .map(drop)
    }

    fn delete_broadcast_list(&self, name: &str) -> Result<bool, ClientError> {
        self.exec("DELETE FROM broadcast_lists WHERE name = ?1", [name])
            .map(|n| n == 1)
    }

    fn broadcast_lists(&self) -> Result<Vec<(String, Vec<String>)>, ClientError> {
        self.rows(
            "SELECT name, members FROM broadcast_lists ORDER BY name",
            [],
            |r| {
                let members: String = r.get(1)?;
                Ok((
                    r.get(0)?,
                    members
                        .split(',')
                        .filter(|m| !m.is_empty())
                        .map(String::from)
                        .collect(),
                ))
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same behaviour as every other backend.
    #[test]
    fn sqlite_profile_conforms() {
        let dirs = parking_lot::Mutex::new(Vec::new());
        dak_core::conformance::run_all(&|| {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = SqliteProfile::open(dir.path()).expect("open");
            dirs.lock().push(dir);
            Box::new(store)
        });
    }

    /// Two processes on one profile (`dak listen` running while `dak send`
    /// sends): each one's cache of decoded MLS groups must notice what the
    /// other wrote, or it would encrypt again under a ratchet step already
    /// used. Alice's profile is open twice; each handle sends in turn, and
    /// bob decrypts all of them.
    #[test]
    fn two_handles_on_one_profile_never_reuse_a_ratchet_step() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = open_profile(dir.path()).expect("open");
        first
            .save_registration("wss://127.0.0.1:1", "+919800000001", 1)
            .expect("registration");
        let second = open_profile(dir.path()).expect("open again");
        let bob = Profile::new(
            Box::new(dak_core::memory::MemoryStore::new()),
            Box::new(SystemEnvironment),
        );
        bob.save_registration("wss://127.0.0.1:1", "+919800000002", 2)
            .expect("registration");
        let bob_key = bob.identity().expect("identity");
        let kp = bob
            .mls(|m| m.key_packages(dak_proto::mls::CIPHERSUITE, 1))
            .expect("key package")
            .remove(0);
        let group = first
            .transaction(|p| {
                p.mls(|m| {
                    let group = m.create_group(dak_proto::mls::CIPHERSUITE)?;
                    let kp = m.fetched_key_package(
                        &kp,
                        "+919800000002",
                        2,
                        bob_key.verifying_key().as_bytes(),
                    )?;
                    let out = m.commit(&group, vec![kp], vec![])?;
                    m.merge_pending(&group)?;
                    Ok((group, out))
                })
            })
            .expect("group");
        let (group, out) = group;
        bob.transaction(|p| p.mls(|m| m.process(out.welcome.as_deref().expect("welcome"))))
            .expect("bob joins");
        // Each handle warms its cache, then they take turns.
        let mut sent = Vec::new();
        for round in 0..3 {
            for (name, p) in [("first", &first), ("second", &second)] {
                let text = format!("{name} {round}");
                let ct = p
                    .transaction(|p| p.mls(|m| m.encrypt(&group, text.as_bytes())))
                    .expect("encrypt");
                sent.push((text, ct));
            }
        }
        for (text, ct) in sent {
            match bob.transaction(|p| p.mls(|m| m.process(&ct))) {
                Ok(dak_core::mls::Incoming::Application { plaintext, .. }) => {
                    assert_eq!(plaintext, text.as_bytes())
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }
}
