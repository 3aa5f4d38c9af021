//! The bot's own durable state, beside its device profile in
//! `PROFILE/bot.sqlite`: the webhook's event queue, what it knows of each
//! user (when they last wrote, whether they opted out), and the ticks it
//! has reported for each message it sent.
//!
//! Invariants:
//! - An event is written here (fsynced) before anything about it is
//!   considered handed over; it leaves the queue only when the webhook
//!   answered 2xx, or when it was retried for `retry_for` (then it is kept
//!   as given up and counted).
//! - Event ids are deterministic (`message:<id>`, `status:<id>:<tick>`,
//!   `opt_out:<phone>:<message id>`), and delivered ones are remembered for
//!   `KEEP_DELIVERED_MS`, so replaying the profile after a crash
//!   (`reconcile` in `mod.rs`) enqueues each event at most once.
//! - Events go to the webhook in the order they were queued; a failing
//!   one holds back those behind it (the receiver sees a conversation in
//!   order, as WhatsApp's webhooks do not promise).
//!
//! SQLite (rusqlite), like the device profile: one file the operator can
//! back up with the profile, no service to run beside the bot. WAL with
//! `synchronous = FULL`: not every event can be rebuilt from the profile
//! (reactions, deletions, opt-outs are not), so each write is fsynced;
//! deliveries to the webhook are recorded a batch at a time.

use std::path::Path;

use anyhow::{Context, Result};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, params};

/// How long delivered and given-up events are remembered (for dedup).
pub const KEEP_DELIVERED_MS: i64 = 7 * 24 * 3600 * 1000;

const SCHEMA: &str = r#"
PRAGMA journal_mode = WAL;
PRAGMA synchronous = FULL;
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    body TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at_ms INTEGER NOT NULL DEFAULT 0,
    -- 0: waiting, 1: delivered, 2: given up
    state INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT ''
) STRICT;
CREATE INDEX IF NOT EXISTS events_waiting ON events(seq) WHERE state = 0;
CREATE TABLE IF NOT EXISTS contacts (
    phone TEXT PRIMARY KEY,
    last_in_ms INTEGER NOT NULL DEFAULT 0,
    opted_out INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE TABLE IF NOT EXISTS sent (
    id BLOB PRIMARY KEY,
    chat TEXT NOT NULL,
    -- the highest tick reported to the webhook (TickState as a number)
    reported INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL
) STRICT;
"#;

const USER_WROTE: &str = "INSERT INTO contacts (phone, last_in_ms) VALUES (?1, ?2)
     ON CONFLICT(phone) DO UPDATE SET last_in_ms = max(last_in_ms, ?2)";

const SET_OPTED_OUT: &str = "INSERT INTO contacts (phone, opted_out) VALUES (?1, ?2)
     ON CONFLICT(phone) DO UPDATE SET opted_out = ?2";

/// One event waiting for the webhook.
#[derive(Debug, Clone)]
pub struct Pending {
    pub seq: i64,
    pub id: String,
    pub body: String,
    pub attempts: u32,
    pub next_at_ms: i64,
    pub created_ms: i64,
}

/// An event to queue: its id and its JSON body.
pub struct NewEvent {
    pub id: String,
    pub body: serde_json::Value,
}

/// The counts `GET /v1/health` shows.
#[derive(Debug, Clone, Copy, serde::Serialize, utoipa::ToSchema)]
pub struct QueueCounts {
    pub waiting: u64,
    pub delivered: u64,
    pub given_up: u64,
}

pub struct BotDb {
    conn: Mutex<Connection>,
    /// Events waiting (state 0): counted at open, then kept in step by
    /// every write that changes it, under the connection's lock, so the
    /// device task's backpressure check costs no query per push.
    waiting: AtomicU64,
}

impl BotDb {
    pub fn open(dir: &Path) -> Result<BotDb> {
        let path = dir.join("bot.sqlite");
        let conn =
            Connection::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        conn.execute_batch(SCHEMA)
            .with_context(|| format!("cannot set up {}", path.display()))?;
        let waiting: i64 =
            conn.query_row("SELECT COUNT(*) FROM events WHERE state = 0", [], |r| {
                r.get(0)
            })?;
        Ok(BotDb {
            conn: Mutex::new(conn),
            waiting: AtomicU64::new(waiting as u64),
        })
    }

    /// Queues events (those already known by id are skipped) in one
    /// transaction; returns how many were new.
    #[cfg(test)]
    pub fn push(&self, events: &[NewEvent], now_ms: i64) -> Result<usize> {
        self.push_with(events, &[], now_ms)
    }

    /// `push`, and records in the same transaction (one fsync) that these
    /// users wrote at these times (`user_wrote`).
    pub fn push_with(
        &self,
        events: &[NewEvent],
        wrote: &[(String, i64)],
        now_ms: i64,
    ) -> Result<usize> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        let mut n = 0;
        {
            let mut insert = tx.prepare_cached(
                "INSERT OR IGNORE INTO events (id, body, created_ms) VALUES (?1, ?2, ?3)",
            )?;
            for e in events {
                n += insert.execute(params![e.id, e.body.to_string(), now_ms])?;
            }
            let mut contact = tx.prepare_cached(USER_WROTE)?;
            for (phone, at) in wrote {
                contact.execute(params![phone, at])?;
            }
        }
        tx.commit()?;
        self.waiting.fetch_add(n as u64, Relaxed);
        Ok(n)
    }

    /// The oldest waiting event.
    #[cfg(test)]
    pub fn head(&self) -> Result<Option<Pending>> {
        Ok(self.head_batch(1)?.pop())
    }

    /// The oldest `n` waiting events, oldest first.
    pub fn head_batch(&self, n: usize) -> Result<Vec<Pending>> {
        let conn = self.conn.lock();
        let mut q = conn.prepare_cached(
            "SELECT seq, id, body, attempts, next_at_ms, created_ms FROM events WHERE state = 0 ORDER BY seq LIMIT ?1",
        )?;
        let rows = q
            .query_map([n as i64], |r| {
                Ok(Pending {
                    seq: r.get(0)?,
                    id: r.get(1)?,
                    body: r.get(2)?,
                    attempts: r.get(3)?,
                    next_at_ms: r.get(4)?,
                    created_ms: r.get(5)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    #[cfg(test)]
    pub fn delivered(&self, seq: i64) -> Result<()> {
        self.delivered_many(&[seq])
    }

    /// Marks events delivered, in one transaction.
    pub fn delivered_many(&self, seqs: &[i64]) -> Result<()> {
        if seqs.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        let mut n = 0;
        {
            let mut q =
                tx.prepare_cached("UPDATE events SET state = 1 WHERE seq = ?1 AND state = 0")?;
            for seq in seqs {
                n += q.execute([seq])?;
            }
        }
        tx.commit()?;
        self.waiting.fetch_sub(n as u64, Relaxed);
        Ok(())
    }

    pub fn failed(&self, seq: i64, next_at_ms: i64, error: &str) -> Result<()> {
        self.conn.lock().execute(
            "UPDATE events SET attempts = attempts + 1, next_at_ms = ?2, last_error = ?3 WHERE seq = ?1",
            params![seq, next_at_ms, error],
        )?;
        Ok(())
    }

    pub fn give_up(&self, seq: i64, error: &str) -> Result<()> {
        let conn = self.conn.lock();
        let n = conn.execute(
            "UPDATE events SET state = 2, attempts = attempts + 1, last_error = ?2 WHERE seq = ?1 AND state = 0",
            params![seq, error],
        )?;
        self.waiting.fetch_sub(n as u64, Relaxed);
        Ok(())
    }

    /// Forgets delivered and given-up events older than the dedup window.
    pub fn prune(&self, now_ms: i64) -> Result<usize> {
        let before = now_ms - KEEP_DELIVERED_MS;
        let conn = self.conn.lock();
        let n = conn.execute(
            "DELETE FROM events WHERE state != 0 AND created_ms < ?1",
            [before],
        )?;
        conn.execute("DELETE FROM sent WHERE created_ms < ?1", [before])?;
        Ok(n)
    }

    pub fn counts(&self) -> Result<QueueCounts> {
        let conn = self.conn.lock();
        let count = |state: i64| -> Result<u64> {
            Ok(conn.query_row(
                "SELECT COUNT(*) FROM events WHERE state = ?1",
                [state],
                |r| r.get::<_, i64>(0),
            )? as u64)
        };
        Ok(QueueCounts {
            waiting: self.waiting(),
            delivered: count(1)?,
            given_up: count(2)?,
        })
    }

    /// Events waiting for the webhook.
    pub fn waiting(&self) -> u64 {
        self.waiting.load(Relaxed)
    }

    /// A user wrote to the bot at `at_ms`: free-form messages may go to
    /// them for 24 hours from then.
    #[cfg(test)]
    pub fn user_wrote(&self, phone: &str, at_ms: i64) -> Result<()> {
        self.conn
            .lock()
            .execute(USER_WROTE, params![phone, at_ms])?;
        Ok(())
    }

    #[cfg(test)]
    pub fn set_opted_out(&self, phone: &str, out: bool) -> Result<()> {
        self.conn
            .lock()
            .execute(SET_OPTED_OUT, params![phone, out])?;
        Ok(())
    }

    /// Queues an opt-out (or opt-in) event and, if it is new, sets the
    /// flag, in one transaction: a replayed STOP never undoes a later
    /// START, and a crash never leaves the event without the flag.
    pub fn push_opt(&self, event: NewEvent, phone: &str, out: bool, now_ms: i64) -> Result<bool> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        let new = tx.execute(
            "INSERT OR IGNORE INTO events (id, body, created_ms) VALUES (?1, ?2, ?3)",
            params![event.id, event.body.to_string(), now_ms],
        )? > 0;
        if new {
            tx.execute(SET_OPTED_OUT, params![phone, out])?;
        }
        tx.commit()?;
        self.waiting.fetch_add(new as u64, Relaxed);
        Ok(new)
    }

    /// (when they last wrote, whether they opted out of templates).
    pub fn contact(&self, phone: &str) -> Result<(i64, bool)> {
        Ok(self
            .conn
            .lock()
            .query_row(
                "SELECT last_in_ms, opted_out FROM contacts WHERE phone = ?1",
                [phone],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?
            .unwrap_or((0, false)))
    }

    pub fn record_sent(&self, id: &[u8], chat: &str, now_ms: i64) -> Result<()> {
        self.conn.lock().execute(
            "INSERT OR IGNORE INTO sent (id, chat, created_ms) VALUES (?1, ?2, ?3)",
            params![id, chat, now_ms],
        )?;
        Ok(())
    }

    /// Sent messages whose ticks may still rise: (id, reported).
    pub fn sent_open(&self, read: u8) -> Result<Vec<(Vec<u8>, u8)>> {
        let conn = self.conn.lock();
        let mut q = conn.prepare("SELECT id, reported FROM sent WHERE reported < ?1")?;
        let rows = q
            .query_map([read], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// The highest tick reported for a sent message (0: none yet); None
    /// when it is not recorded as sent.
    pub fn reported(&self, id: &[u8]) -> Result<Option<u8>> {
        Ok(self
            .conn
            .lock()
            .query_row("SELECT reported FROM sent WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Raises a sent message's reported tick; false if it was already that high.
    pub fn raise_reported(&self, id: &[u8], tick: u8) -> Result<bool> {
        Ok(self.conn.lock().execute(
            "UPDATE sent SET reported = ?2 WHERE id = ?1 AND reported < ?2",
            params![id, tick],
        )? > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str) -> NewEvent {
        NewEvent {
            id: id.into(),
            body: serde_json::json!({"id": id}),
        }
    }

    #[test]
    fn an_event_is_queued_once_and_leaves_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let db = BotDb::open(dir.path()).unwrap();
        assert_eq!(db.push(&[event("a"), event("b")], 1).unwrap(), 2);
        assert_eq!(db.push(&[event("a")], 2).unwrap(), 0);
        let head = db.head().unwrap().unwrap();
        assert_eq!(head.id, "a");
        db.failed(head.seq, 10, "500").unwrap();
        assert_eq!(db.head().unwrap().unwrap().attempts, 1);
        db.delivered(head.seq).unwrap();
        assert_eq!(db.head().unwrap().unwrap().id, "b");
        // Delivered, it is still known: a replay does not queue it again.
        assert_eq!(db.push(&[event("a")], 3).unwrap(), 0);
        let counts = db.counts().unwrap();
        assert_eq!((counts.waiting, counts.delivered), (1, 1));
        assert_eq!(db.waiting(), 1);
        // Reopened (a restart), the queue is as it was.
        drop(db);
        let db = BotDb::open(dir.path()).unwrap();
        assert_eq!(db.head().unwrap().unwrap().id, "b");
        assert_eq!(db.waiting(), 1, "counted again at open");
        assert_eq!(db.prune(KEEP_DELIVERED_MS + 10).unwrap(), 1);
    }

    #[test]
    fn contacts_keep_the_latest_message_and_the_opt_out() {
        let dir = tempfile::tempdir().unwrap();
        let db = BotDb::open(dir.path()).unwrap();
        assert_eq!(db.contact("+1").unwrap(), (0, false));
        db.user_wrote("+1", 50).unwrap();
        db.user_wrote("+1", 40).unwrap();
        db.set_opted_out("+1", true).unwrap();
        assert_eq!(db.contact("+1").unwrap(), (50, true));
        // An opt-in flips the flag once; replayed, it changes nothing.
        assert!(db.push_opt(event("opt_in:+1:a"), "+1", false, 1).unwrap());
        assert_eq!(db.contact("+1").unwrap(), (50, false));
        assert!(db.push_opt(event("opt_out:+1:b"), "+1", true, 2).unwrap());
        assert!(!db.push_opt(event("opt_in:+1:a"), "+1", false, 3).unwrap());
        assert_eq!(db.contact("+1").unwrap(), (50, true));
        db.record_sent(b"m", "+1", 1).unwrap();
        assert!(db.raise_reported(b"m", 2).unwrap());
        assert!(!db.raise_reported(b"m", 1).unwrap());
        assert_eq!(db.sent_open(3).unwrap().len(), 1);
    }
}
