//! `ProfileStore`: the one seam between the client core and a device's local
//! storage, and the rows it keeps.
//!
//! A backend stores exactly what these methods say and nothing more; every
//! rule built on top (who may confirm a receipt, what a name resolves to,
//! what the identity key is) lives in `Profile`, once, for every backend.
//! Backends: `dak_client::SqliteProfile` natively, `memory::MemoryStore`
//! in tests and (for now) in the browser. `conformance::run_all` is the
//! behaviour each must show.
//!
//! Invariants every backend keeps:
//! - **Brackets nest.** `begin(Transaction)` … `commit`/`rollback`, and
//!   inside it any depth of `begin(Savepoint)` … `commit`/`rollback`. A
//!   rolled-back bracket leaves no trace of any write made inside it, MLS
//!   state included; nothing is visible to another process (or durable)
//!   until the outermost bracket commits. Outside a bracket each call is
//!   its own transaction.
//! - **Ids are never reused** and the order of `messages`/`outbox` is
//!   insertion order, across restarts.
//! - **Insert-if-absent** methods (`insert_message`, `first_sight`,
//!   `queue_outgoing`, `add_recipient`) never overwrite.

use dak_proto::v1;

use crate::ClientError;
use crate::ids::ser_id;

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
    pub conversation: crate::ConversationId,
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
    /// A file it carries; `text` is then its caption.
    pub attachment: Option<Box<crate::Attachment>>,
    /// A business's reply buttons or list (`dak_proto::interactive`);
    /// `text` is what they go with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interactive: Option<Box<dak_proto::v1::Interactive>>,
    /// This text answers another message's buttons or list; `text` is the
    /// title chosen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub choice: Option<Box<dak_proto::v1::Choice>>,
}

impl MessageView {
    /// When the message happened: the server's time once it has one, the
    /// sender's before (a text still in the outbox). What lists sort by,
    /// and what the edit and delete windows count from.
    pub fn at_ms(&self) -> i64 {
        if self.server_time_ms > 0 {
            self.server_time_ms
        } else {
            self.sent_at_ms
        }
    }

    /// WhatsApp's label for forwarded messages.
    pub fn forward_label(&self) -> Option<&'static str> {
        match self.forwarded {
            0 => None,
            n if n >= crate::FREQUENTLY_FORWARDED => Some("Forwarded many times"),
            _ => Some("Forwarded"),
        }
    }
}

/// Per-device receipt state of an outgoing message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RecipientState {
    pub phone: String,
    pub device_id: u64,
    pub delivered_ms: i64,
    pub read_ms: i64,
}

/// What `ProfileStore::begin` opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bracket {
    /// The outermost bracket: durable when it commits.
    Transaction,
    /// Nested inside a transaction: undone alone when it rolls back.
    Savepoint,
}

/// A device's local storage. Object-safe, so `Profile` holds any backend.
///
/// Methods take `&self`: a backend guards its own state (a mutex around a
/// connection or a map). One task at a time uses a profile; two processes
/// may share an on-disk one, so a backend that can be shared says so through
/// `data_version`.
pub trait ProfileStore: Send + Sync {
    /// A name for this store in error messages (a path, or "memory").
    fn label(&self) -> String;

    // ---- brackets ----
    fn begin(&self, bracket: Bracket) -> Result<(), ClientError>;
    fn commit(&self, bracket: Bracket) -> Result<(), ClientError>;
    fn rollback(&self, bracket: Bracket) -> Result<(), ClientError>;
    /// Changes whenever *another* handle (another process) committed
    /// something since the last call; caches of decoded state are dropped
    /// when it moves. A backend nobody else can write returns a constant.
    fn data_version(&self) -> Result<u64, ClientError>;

    // ---- settings: small named values (keys, registration, pins) ----
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, ClientError>;
    fn set(&self, key: &str, value: &[u8]) -> Result<(), ClientError>;
    fn delete(&self, key: &str) -> Result<(), ClientError>;

    // ---- MLS state: openmls's key-value records (see `mls_storage`) ----
    fn mls_get(&self, label: &[u8], key: &[u8]) -> Result<Option<Vec<u8>>, ClientError>;
    fn mls_put(&self, label: &[u8], key: &[u8], value: &[u8]) -> Result<(), ClientError>;
    fn mls_delete(&self, label: &[u8], key: &[u8]) -> Result<(), ClientError>;

    // ---- conversations: which MLS group is the chat with whom ----
    /// The newest active group for `peer` (a number or a group key).
    fn group_for(&self, peer: &str) -> Result<Option<Vec<u8>>, ClientError>;
    /// Whether this device uses the group (None: it never knew it).
    fn conversation_active(&self, group: &[u8]) -> Result<Option<bool>, ClientError>;
    fn peer_of(&self, group: &[u8]) -> Result<Option<String>, ClientError>;
    /// Adds the conversation, or makes an existing one active again.
    fn add_conversation(&self, group: &[u8], peer: &str, now_ms: i64) -> Result<(), ClientError>;
    fn retire_conversation(&self, group: &[u8]) -> Result<(), ClientError>;
    /// (group, peer) of every active conversation, by peer then group.
    fn active_groups(&self) -> Result<Vec<(Vec<u8>, String)>, ClientError>;

    // ---- dedup ----
    /// Records an envelope's message id; false if it was already seen.
    fn first_sight(&self, id: &[u8], now_ms: i64) -> Result<bool, ClientError>;
    fn prune_seen(&self, before_ms: i64) -> Result<(), ClientError>;

    // ---- messages ----
    fn insert_message(&self, m: &MessageView) -> Result<(), ClientError>;
    fn message(&self, id: &[u8]) -> Result<Option<MessageView>, ClientError>;
    /// The last `limit` messages of a conversation not expired at `now_ms`,
    /// oldest first.
    fn conversation(
        &self,
        conversation: &str,
        limit: usize,
        now_ms: i64,
    ) -> Result<Vec<MessageView>, ClientError>;
    /// Incoming messages not yet marked read, oldest first.
    fn unread(&self) -> Result<Vec<MessageView>, ClientError>;
    fn delete_message(&self, id: &[u8]) -> Result<(), ClientError>;
    /// Sets `read_ms` if it is still 0.
    fn mark_read(&self, id: &[u8], now_ms: i64) -> Result<(), ClientError>;
    /// Records the server's ack; false if there is no such message.
    fn mark_acked(&self, id: &[u8], server_time_ms: i64) -> Result<bool, ClientError>;
    /// New text and edit time, unless the message was deleted.
    fn edit_message(&self, id: &[u8], text: &str, at_ms: i64) -> Result<(), ClientError>;
    /// Deleted for everyone: text, its quote in replies and its reactions go;
    /// the row stays, marked deleted.
    fn tombstone_message(&self, id: &[u8]) -> Result<(), ClientError>;
    /// Deletes messages with `0 < expires_at_ms <= now_ms`, with their
    /// reactions and receipts; returns how many messages.
    fn purge_expired(&self, now_ms: i64) -> Result<usize, ClientError>;

    // ---- receipts ----
    fn add_recipient(
        &self,
        message_id: &[u8],
        phone: &str,
        device_id: u64,
    ) -> Result<(), ClientError>;
    /// Sets delivered (and, when `read`, read) to `at_ms` where still 0, for
    /// an existing recipient row.
    fn update_receipt(
        &self,
        message_id: &[u8],
        device_id: u64,
        read: bool,
        at_ms: i64,
    ) -> Result<(), ClientError>;
    /// By phone, then device.
    fn recipients(&self, message_id: &[u8]) -> Result<Vec<RecipientState>, ClientError>;

    // ---- outbox ----
    fn queue_outgoing(&self, id: &[u8], to: &str, body: &[u8]) -> Result<(), ClientError>;
    /// Everything not yet acked by the server, in the order it was queued.
    fn outbox(&self) -> Result<Vec<OutboxEntry>, ClientError>;
    fn remove_outgoing(&self, id: &[u8]) -> Result<(), ClientError>;

    // ---- named groups ----
    /// The encoded `v1::GroupState` last accepted.
    fn group_state_bytes(&self, group: &[u8]) -> Result<Option<Vec<u8>>, ClientError>;
    fn set_group_state(
        &self,
        group: &[u8],
        state: &v1::GroupState,
        now_ms: i64,
    ) -> Result<(), ClientError>;
    fn add_leaver(&self, group: &[u8], phone: &str) -> Result<(), ClientError>;
    /// By phone.
    fn leavers(&self, group: &[u8]) -> Result<Vec<String>, ClientError>;
    fn clear_leaver(&self, group: &[u8], phone: &str) -> Result<(), ClientError>;
    fn add_join_request(&self, group: &[u8], phone: &str, at_ms: i64) -> Result<(), ClientError>;
    /// Oldest first (then by phone).
    fn join_requests(&self, group: &[u8]) -> Result<Vec<String>, ClientError>;
    fn remove_join_request(&self, group: &[u8], phone: &str) -> Result<(), ClientError>;

    // ---- message features ----
    /// Sets `phone`'s reaction on a message; an empty emoji removes it.
    fn set_reaction(
        &self,
        message_id: &[u8],
        phone: &str,
        emoji: &str,
        at_ms: i64,
    ) -> Result<(), ClientError>;
    /// (phone, emoji), oldest first (then by phone).
    fn reactions(&self, message_id: &[u8]) -> Result<Vec<(String, String)>, ClientError>;
    /// A 1:1 chat's disappearing timer in seconds (0: off).
    fn chat_timer(&self, conversation: &str) -> Result<u32, ClientError>;
    fn set_chat_timer(&self, conversation: &str, secs: u32) -> Result<(), ClientError>;
    fn set_broadcast_list(&self, name: &str, members: &[String]) -> Result<(), ClientError>;
    /// False if there was no such list.
    fn delete_broadcast_list(&self, name: &str) -> Result<bool, ClientError>;
    /// (name, members), by name.
    fn broadcast_lists(&self) -> Result<Vec<(String, Vec<String>)>, ClientError>;

    // ---- upkeep (provided: most stores have none) ----
    /// Writes everything this store holds into `target` (an empty store)
    /// through the trait's write calls, rebuilding the same state: what a
    /// journal's compaction writes (`journal::snapshot`). Only stores that
    /// hold everything in memory can (`MemoryStore`, and a `JournaledStore`
    /// around one).
    fn copy_into(&self, target: &dyn ProfileStore) -> Result<(), ClientError> {
        let _ = target;
        Err(ClientError::Store {
            path: self.label(),
            message: "this store cannot be copied".into(),
        })
    }
    /// Rewrites a journalled store's journal as a snapshot when it has
    /// grown past `over` bytes and twice its last snapshot
    /// (`journal::worth_compacting`): the new journal's bytes, or `None`
    /// when there was nothing to do. Other stores have nothing to do.
    fn compact(&self, over: usize) -> Result<Option<usize>, ClientError> {
        let _ = over;
        Ok(None)
    }
}
