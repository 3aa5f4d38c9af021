//! `MemoryStore`: a `ProfileStore` held in memory.
//!
//! It is the store of tests (no files, no server) and, wrapped in a
//! `journal::JournaledStore` whose journal is a file of the browser's
//! private file system, of the browser: alone, nothing in it outlives the
//! process. It keeps exactly
//! the semantics of `dak_client`'s SQLite store (same orders, same
//! insert-if-absent and upsert rules); `conformance::run_all` holds both to
//! them.
//!
//! Invariants:
//! - **One mutex, short holds.** All state sits behind one
//!   `parking_lot::Mutex`, taken per call and never across calls, so the
//!   store is `Send + Sync` and a bracket spans many calls.
//! - **Undo log, not snapshots.** An open bracket is a frame on a stack;
//!   every write made while a frame is open pushes its inverse (the key and
//!   the row it replaced, or that there was none) onto the innermost frame.
//!   Rolling a frame back applies its inverses newest first; committing a
//!   savepoint appends its frame to its parent's, so a later rollback of
//!   the parent undoes it too; committing the outermost bracket drops its
//!   frame. A bracket thus costs what it writes, not the size of the
//!   store (MLS state can be megabytes and a bracket opens per message),
//!   and a replaced row is moved into the log, not copied.
//! - **Outside a bracket** each call is applied at once and logs nothing.
//! - **Counters are never rolled back.** Messages and the outbox are kept
//!   in insertion order by a counter that only grows (like SQLite's
//!   AUTOINCREMENT): a rollback may skip numbers but never reuses one.
//! - **Indexes follow rows.** Every write of a message, an outbox entry or
//!   a conversation goes through one function that keeps its indexes (by
//!   id, by conversation, by quoted message, by expiry, by peer) in step,
//!   undo included.
//! - **Brackets close innermost first**: `commit`/`rollback` must name the
//!   innermost open bracket, or they fail with `ClientError::Store` and
//!   change nothing. `begin(Transaction)` fails while any bracket is open;
//!   `begin(Savepoint)` with none open opens the outermost one, as SQLite's
//!   `SAVEPOINT` does.
//! - `data_version` is constant: no other handle can write this store.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use dak_proto::v1;
use parking_lot::Mutex;
use prost::Message;

use crate::ClientError;
use crate::store::{Bracket, MessageView, OutboxEntry, ProfileStore, RecipientState};

/// The in-memory `ProfileStore`.
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Writes everything this store holds into `target` (an empty store)
    /// through the trait's own write calls, in an order that rebuilds the
    /// same state: what `journal` compaction journals as a snapshot. Rows
    /// keep their order (messages, the outbox and conversations by when
    /// they were added), not their internal numbers.
    pub fn copy_into(&self, target: &dyn ProfileStore) -> Result<(), ClientError> {
        let s = self.state.lock();
        if !s.frames.is_empty() {
            return Err(ClientError::Store {
                path: self.label(),
                message: "cannot copy a store with a bracket open".into(),
            });
        }
        let t = &s.tables;
        for (k, v) in &t.settings {
            target.set(k, v)?;
        }
        for ((label, key), v) in &t.mls {
            target.mls_put(label, key, v)?;
        }
        let mut conversations: Vec<(&Vec<u8>, &Conversation)> = t.conversations.iter().collect();
        conversations.sort_by_key(|(_, c)| c.seq);
        for (group, c) in conversations {
            target.add_conversation(group, &c.peer, c.created_ms)?;
            if !c.active {
                target.retire_conversation(group)?;
            }
        }
        for (id, at) in &t.seen {
            target.first_sight(id, *at)?;
        }
        for m in t.messages.values() {
            target.insert_message(m)?;
        }
        for ((message, device), r) in &t.recipients {
            target.add_recipient(message, &r.phone, *device)?;
            if r.delivered_ms != 0 {
                target.update_receipt(message, *device, false, r.delivered_ms)?;
            }
            if r.read_ms != 0 {
                target.update_receipt(message, *device, true, r.read_ms)?;
            }
        }
        for (id, to, body) in t.outbox.values() {
            target.queue_outgoing(id, to, body)?;
        }
        for (group, (state, at)) in &t.group_state {
            let state =
                v1::GroupState::decode(state.as_slice()).map_err(|e| ClientError::Store {
                    path: self.label(),
                    message: format!("a stored group state does not decode: {e}"),
                })?;
            target.set_group_state(group, &state, *at)?;
        }
        for (group, phone) in &t.leavers {
            target.add_leaver(group, phone)?;
        }
        for ((group, phone), at) in &t.join_requests {
            target.add_join_request(group, phone, *at)?;
        }
        for ((message, phone), (emoji, at)) in &t.reactions {
            target.set_reaction(message, phone, emoji, *at)?;
        }
        for (conversation, secs) in &t.chat_timers {
            target.set_chat_timer(conversation, *secs)?;
        }
        for (name, members) in &t.broadcast_lists {
            target.set_broadcast_list(name, members)?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct State {
    tables: Tables,
    /// Open brackets, outermost first, each with the inverses of the writes
    /// made while it was the innermost.
    frames: Vec<(Bracket, Vec<Undo>)>,
    next_message: u64,
    next_outbox: u64,
    next_conversation: u64,
}

impl State {
    /// Records how to undo a write, if a bracket is open.
    fn log(&mut self, undo: Undo) {
        if let Some((_, frame)) = self.frames.last_mut() {
            frame.push(undo);
        }
    }

    fn logging(&self) -> bool {
        !self.frames.is_empty()
    }

    /// Writes a message row (None: deletes it) and logs its inverse.
    fn put_message(&mut self, n: u64, m: Option<MessageView>) {
        let old = self.tables.put_message(n, m);
        self.log(Undo::Message(n, old));
    }

    /// Changes the message `id` in place, if there is one and `f` says it
    /// changed; returns whether there was one.
    fn update_message(&mut self, id: &[u8], f: impl FnOnce(&mut MessageView) -> bool) -> bool {
        let logging = self.logging();
        let Some(&n) = self.tables.message_ids.get(id) else {
            return false;
        };
        let Some(m) = self.tables.messages.get_mut(&n) else {
            return false;
        };
        // Only fields no index covers change here, so the row is edited in
        // place and only its old copy goes to the log.
        let before = logging.then(|| m.clone());
        if f(m)
            && let Some(before) = before
        {
            self.log(Undo::Message(n, Some(before)));
        }
        true
    }

    fn put_outbox(&mut self, n: u64, entry: Option<OutboxEntry>) {
        let old = self.tables.put_outbox(n, entry);
        self.log(Undo::Outbox(n, old));
    }

    fn put_conversation(&mut self, group: &[u8], c: Option<Conversation>) {
        let old = self.tables.put_conversation(group, c);
        self.log(Undo::Conversation(group.to_vec(), old));
    }
}

#[derive(Clone)]
struct Conversation {
    peer: String,
    active: bool,
    created_ms: i64,
    /// Insertion order, the tie-break between groups created at one time.
    seq: u64,
}

#[derive(Clone)]
struct Receipt {
    phone: String,
    delivered_ms: i64,
    read_ms: i64,
}

type MlsKey = (Vec<u8>, Vec<u8>);
/// (message id, device id)
type RecipientKey = (Vec<u8>, u64);
/// (group id or message id, phone)
type PhoneKey = (Vec<u8>, String);

/// The rows, and the indexes kept in step with them.
#[derive(Default)]
struct Tables {
    settings: BTreeMap<String, Vec<u8>>,
    mls: BTreeMap<MlsKey, Vec<u8>>,
    conversations: BTreeMap<Vec<u8>, Conversation>,
    /// (peer, group) of every conversation.
    conversations_by_peer: BTreeSet<(String, Vec<u8>)>,
    /// Message id → when first seen.
    seen: BTreeMap<Vec<u8>, i64>,
    /// By insertion number.
    messages: BTreeMap<u64, MessageView>,
    message_ids: BTreeMap<Vec<u8>, u64>,
    /// (conversation, n)
    messages_by_conversation: BTreeSet<(String, u64)>,
    /// (quoted message id, n) of every reply.
    replies: BTreeSet<(Vec<u8>, u64)>,
    /// (expires_at_ms, n) of every message that expires.
    expiring: BTreeSet<(i64, u64)>,
    recipients: BTreeMap<RecipientKey, Receipt>,
    outbox: BTreeMap<u64, OutboxEntry>,
    outbox_ids: BTreeMap<Vec<u8>, u64>,
    /// Group id → (encoded state, updated at).
    group_state: BTreeMap<Vec<u8>, (Vec<u8>, i64)>,
    leavers: BTreeSet<PhoneKey>,
    /// (group, phone) → requested at.
    join_requests: BTreeMap<PhoneKey, i64>,
    /// (message, phone) → (emoji, at).
    reactions: BTreeMap<PhoneKey, (String, i64)>,
    chat_timers: BTreeMap<String, u32>,
    broadcast_lists: BTreeMap<String, Vec<String>>,
}

/// Sets or (with None) removes a row; returns the row it replaced.
fn put<K: Ord, V>(map: &mut BTreeMap<K, V>, key: K, value: Option<V>) -> Option<V> {
    match value {
        Some(v) => map.insert(key, v),
        None => map.remove(&key),
    }
}

/// Adds or (with false) removes a member; returns whether it was there.
fn put_member<K: Ord>(set: &mut BTreeSet<K>, key: K, present: bool) -> bool {
    if present {
        !set.insert(key)
    } else {
        set.remove(&key)
    }
}

/// The keys of `map` that start with `prefix` (keys `(prefix, _)`).
fn with_prefix<'a, A: Ord + Clone + 'a, B: Ord + Clone + Default + 'a, V>(
    map: &'a BTreeMap<(A, B), V>,
    prefix: &'a A,
) -> impl Iterator<Item = (&'a (A, B), &'a V)> + 'a {
    map.range((
        Bound::Included((prefix.clone(), B::default())),
        Bound::Unbounded,
    ))
    .take_while(move |((a, _), _)| a == prefix)
}

impl Tables {
    fn put_message(&mut self, n: u64, m: Option<MessageView>) -> Option<MessageView> {
        let old = self.messages.remove(&n);
        if let Some(o) = &old {
            self.message_ids.remove(&o.id);
            self.messages_by_conversation
                .remove(&(o.conversation.key(), n));
            if let Some(q) = &o.reply_to {
                self.replies.remove(&(q.id.clone(), n));
            }
            if o.expires_at_ms != 0 {
                self.expiring.remove(&(o.expires_at_ms, n));
            }
        }
        if let Some(m) = m {
            self.message_ids.insert(m.id.clone(), n);
            self.messages_by_conversation
                .insert((m.conversation.key(), n));
            if let Some(q) = &m.reply_to {
                self.replies.insert((q.id.clone(), n));
            }
            if m.expires_at_ms != 0 {
                self.expiring.insert((m.expires_at_ms, n));
            }
            self.messages.insert(n, m);
        }
        old
    }

    fn put_outbox(&mut self, n: u64, entry: Option<OutboxEntry>) -> Option<OutboxEntry> {
        let old = self.outbox.remove(&n);
        if let Some(o) = &old {
            self.outbox_ids.remove(&o.0);
        }
        if let Some(e) = entry {
            self.outbox_ids.insert(e.0.clone(), n);
            self.outbox.insert(n, e);
        }
        old
    }

    fn put_conversation(&mut self, group: &[u8], c: Option<Conversation>) -> Option<Conversation> {
        let old = self.conversations.remove(group);
        if let Some(o) = &old {
            self.conversations_by_peer
                .remove(&(o.peer.clone(), group.to_vec()));
        }
        if let Some(c) = c {
            self.conversations_by_peer
                .insert((c.peer.clone(), group.to_vec()));
            self.conversations.insert(group.to_vec(), c);
        }
        old
    }
}

/// The inverse of one write: the key and the row it replaced (None: there
/// was none), or for a set, whether the member was there.
enum Undo {
    Setting(String, Option<Vec<u8>>),
    Mls(MlsKey, Option<Vec<u8>>),
    Conversation(Vec<u8>, Option<Conversation>),
    Seen(Vec<u8>, Option<i64>),
    Message(u64, Option<MessageView>),
    Recipient(RecipientKey, Option<Receipt>),
    Outbox(u64, Option<OutboxEntry>),
    GroupState(Vec<u8>, Option<(Vec<u8>, i64)>),
    Leaver(PhoneKey, bool),
    JoinRequest(PhoneKey, Option<i64>),
    Reaction(PhoneKey, Option<(String, i64)>),
    ChatTimer(String, Option<u32>),
    BroadcastList(String, Option<Vec<String>>),
}

impl Undo {
    fn apply(self, t: &mut Tables) {
        match self {
            Undo::Setting(k, v) => {
                put(&mut t.settings, k, v);
            }
            Undo::Mls(k, v) => {
                put(&mut t.mls, k, v);
            }
            Undo::Conversation(k, v) => {
                t.put_conversation(&k, v);
            }
            Undo::Seen(k, v) => {
                put(&mut t.seen, k, v);
            }
            Undo::Message(n, v) => {
                t.put_message(n, v);
            }
            Undo::Recipient(k, v) => {
                put(&mut t.recipients, k, v);
            }
            Undo::Outbox(n, v) => {
                t.put_outbox(n, v);
            }
            Undo::GroupState(k, v) => {
                put(&mut t.group_state, k, v);
            }
            Undo::Leaver(k, present) => {
                put_member(&mut t.leavers, k, present);
            }
            Undo::JoinRequest(k, v) => {
                put(&mut t.join_requests, k, v);
            }
            Undo::Reaction(k, v) => {
                put(&mut t.reactions, k, v);
            }
            Undo::ChatTimer(k, v) => {
                put(&mut t.chat_timers, k, v);
            }
            Undo::BroadcastList(k, v) => {
                put(&mut t.broadcast_lists, k, v);
            }
        }
    }
}

fn store_err(message: String) -> ClientError {
    ClientError::Store {
        path: "memory".into(),
        message,
    }
}

fn name(bracket: Bracket) -> &'static str {
    match bracket {
        Bracket::Transaction => "transaction",
        Bracket::Savepoint => "savepoint",
    }
}

impl State {
    /// Closes `bracket`, which must be the innermost open one; returns its
    /// frame.
    fn close(&mut self, bracket: Bracket, verb: &str) -> Result<Vec<Undo>, ClientError> {
        match self.frames.pop() {
            Some((open, frame)) if open == bracket => Ok(frame),
            Some((open, frame)) => {
                self.frames.push((open, frame));
                Err(store_err(format!(
                    "cannot {verb} a {}: the innermost open bracket is a {}",
                    name(bracket),
                    name(open)
                )))
            }
            None => Err(store_err(format!(
                "cannot {verb} a {}: none is open",
                name(bracket)
            ))),
        }
    }
}

impl ProfileStore for MemoryStore {
    fn copy_into(&self, target: &dyn ProfileStore) -> Result<(), ClientError> {
        // The inherent method above.
        MemoryStore::copy_into(self, target)
    }

    fn label(&self) -> String {
        "memory".into()
    }

    // ---- brackets ----

    fn begin(&self, bracket: Bracket) -> Result<(), ClientError> {
        let mut s = self.state.lock();
        if bracket == Bracket::Transaction && !s.frames.is_empty() {
            return Err(store_err(
                "cannot begin a transaction within a transaction".into(),
            ));
        }
        s.frames.push((bracket, Vec::new()));
        Ok(())
    }

    fn commit(&self, bracket: Bracket) -> Result<(), ClientError> {
        let mut s = self.state.lock();
        let frame = s.close(bracket, "commit")?;
        // A committed savepoint is undone with its parent.
        if let Some((_, parent)) = s.frames.last_mut() {
            parent.extend(frame);
        }
        Ok(())
    }

    fn rollback(&self, bracket: Bracket) -> Result<(), ClientError> {
        let mut s = self.state.lock();
        let frame = s.close(bracket, "roll back")?;
        for undo in frame.into_iter().rev() {
            undo.apply(&mut s.tables);
        }
        Ok(())
    }

    fn data_version(&self) -> Result<u64, ClientError> {
        Ok(0)
    }

    // ---- settings ----

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, ClientError> {
        Ok(self.state.lock().tables.settings.get(key).cloned())
    }

    fn set(&self, key: &str, value: &[u8]) -> Result<(), ClientError> {
        let mut s = self.state.lock();
        let old = s.tables.settings.insert(key.to_string(), value.to_vec());
        s.log(Undo::Setting(key.to_string(), old));
        Ok(())
    }

    fn delete(&self, key: &str) -> Result<(), ClientError> {
        let mut s = self.state.lock();
        if let Some(old) = s.tables.settings.remove(key) {
            s.log(Undo::Setting(key.to_string(), Some(old)));
        }
        Ok(())
    }

    // ---- MLS state ----

    fn mls_get(&self, label: &[u8], key: &[u8]) -> Result<Option<Vec<u8>>, ClientError> {
        Ok(self
            .state
            .lock()
            .tables
            .mls
            .get(&(label.to_vec(), key.to_vec()))
            .cloned())
    }

    fn mls_put(&self, label: &[u8], key: &[u8], value: &[u8]) -> Result<(), ClientError> {
        let mut s = self.state.lock();
        let k = (label.to_vec(), key.to_vec());
        let old = s.tables.mls.insert(k.clone(), value.to_vec());
        s.log(Undo::Mls(k, old));
        Ok(())
    }

    fn mls_delete(&self, label: &[u8], key: &[u8]) -> Result<(), ClientError> {
        let mut s = self.state.lock();
        let k = (label.to_vec(), key.to_vec());
        if let Some(old) = s.tables.mls.remove(&k) {
            s.log(Undo::Mls(k, Some(old)));
        }
        Ok(())
    }

    // ---- conversations ----

    fn group_for(&self, peer: &str) -> Result<Option<Vec<u8>>, ClientError> {
        let s = self.state.lock();
        let t = &s.tables;
        let newest = t
            .conversations_by_peer
            .range((peer.to_string(), Vec::new())..)
            .take_while(|(p, _)| p == peer)
            .filter_map(|(_, g)| t.conversations.get(g).map(|c| (g, c)))
            .filter(|(_, c)| c.active)
            .max_by_key(|(_, c)| (c.created_ms, c.seq))
            .map(|(g, _)| g.clone());
        Ok(newest)
    }

    fn conversation_active(&self, group: &[u8]) -> Result<Option<bool>, ClientError> {
        Ok(self
            .state
            .lock()
            .tables
            .conversations
            .get(group)
            .map(|c| c.active))
    }

    fn peer_of(&self, group: &[u8]) -> Result<Option<String>, ClientError> {
        Ok(self
            .state
            .lock()
            .tables
            .conversations
            .get(group)
            .map(|c| c.peer.clone()))
    }

    fn add_conversation(&self, group: &[u8], peer: &str, now_ms: i64) -> Result<(), ClientError> {
        let mut s = self.state.lock();
        let c = match s.tables.conversations.get(group) {
            // Known: active again, as created (peer and time kept).
            Some(c) if c.active => return Ok(()),
            Some(c) => Conversation {
                active: true,
                ..c.clone()
            },
            None => {
                s.next_conversation += 1;
                Conversation {
                    peer: peer.to_string(),
                    active: true,
                    created_ms: now_ms,
                    seq: s.next_conversation,
                }
            }
        };
        s.put_conversation(group, Some(c));
        Ok(())
    }

    fn retire_conversation(&self, group: &[u8]) -> Result<(), ClientError> {
        let mut s = self.state.lock();
        let Some(c) = s.tables.conversations.get(group).filter(|c| c.active) else {
            return Ok(());
        };
        let c = Conversation {
            active: false,
            ..c.clone()
        };
        s.put_conversation(group, Some(c));
        Ok(())
    }

    fn active_groups(&self) -> Result<Vec<(Vec<u8>, String)>, ClientError> {
        let s = self.state.lock();
        let t = &s.tables;
        Ok(t.conversations_by_peer
            .iter()
            .filter(|(_, g)| t.conversations.get(g).is_some_and(|c| c.active))
            .map(|(p, g)| (g.clone(), p.clone()))
            .collect())
    }

    // ---- dedup ----

    fn first_sight(&self, id: &[u8], now_ms: i64) -> Result<bool, ClientError> {
        let mut s = self.state.lock();
        if s.tables.seen.contains_key(id) {
            return Ok(false);
        }
        s.tables.seen.insert(id.to_vec(), now_ms);
        s.log(Undo::Seen(id.to_vec(), None));
        Ok(true)
    }

    fn prune_seen(&self, before_ms: i64) -> Result<(), ClientError> {
        let mut s = self.state.lock();
        let old: Vec<Vec<u8>> = s
            .tables
            .seen
            .iter()
            .filter(|(_, at)| **at < before_ms)
            .map(|(id, _)| id.clone())
            .collect();
        for id in old {
            if let Some(at) = s.tables.seen.remove(&id) {
                s.log(Undo::Seen(id, Some(at)));
            }
        }
        Ok(())
    }

    // ---- messages ----

    fn insert_message(&self, m: &MessageView) -> Result<(), ClientError> {
        let mut s = self.state.lock();
        if s.tables.message_ids.contains_key(&m.id) {
            return Ok(());
        }
        s.next_message += 1;
        let n = s.next_message;
        let mut m = m.clone();
        // A quote of no message is no quote (as SQLite stores it).
        if m.reply_to.as_ref().is_some_and(|q| q.id.is_empty()) {
            m.reply_to = None;
        }
        s.put_message(n, Some(m));
        Ok(())
    }

    fn message(&self, id: &[u8]) -> Result<Option<MessageView>, ClientError> {
        let s = self.state.lock();
        Ok(s.tables
            .message_ids
            .get(id)
            .and_then(|n| s.tables.messages.get(n))
            .cloned())
    }

    fn conversation(
        &self,
        conversation: &str,
        limit: usize,
        now_ms: i64,
    ) -> Result<Vec<MessageView>, ClientError> {
        let s = self.state.lock();
        let t = &s.tables;
        let from = (conversation.to_string(), 0);
        let to = (conversation.to_string(), u64::MAX);
        let mut out: Vec<MessageView> = t
            .messages_by_conversation
            .range(from..=to)
            .rev()
            .filter_map(|(_, n)| t.messages.get(n))
            .filter(|m| m.expires_at_ms == 0 || m.expires_at_ms > now_ms)
            .take(limit)
            .cloned()
            .collect();
        out.reverse();
        Ok(out)
    }

    fn unread(&self) -> Result<Vec<MessageView>, ClientError> {
        Ok(self
            .state
            .lock()
            .tables
            .messages
            .values()
            .filter(|m| !m.outgoing && m.read_ms == 0)
            .cloned()
            .collect())
    }

    fn delete_message(&self, id: &[u8]) -> Result<(), ClientError> {
        let mut s = self.state.lock();
        if let Some(&n) = s.tables.message_ids.get(id) {
            s.put_message(n, None);
        }
        Ok(())
    }

    fn mark_read(&self, id: &[u8], now_ms: i64) -> Result<(), ClientError> {
        self.state.lock().update_message(id, |m| {
            if m.read_ms != 0 {
                return false;
            }
            m.read_ms = now_ms;
            true
        });
        Ok(())
    }

    fn mark_acked(&self, id: &[u8], server_time_ms: i64) -> Result<bool, ClientError> {
        Ok(self.state.lock().update_message(id, |m| {
            m.acked = true;
            m.server_time_ms = server_time_ms;
            true
        }))
    }

    fn edit_message(&self, id: &[u8], text: &str, at_ms: i64) -> Result<(), ClientError> {
        self.state.lock().update_message(id, |m| {
            if m.deleted {
                return false;
            }
            m.text = text.to_string();
            m.edited_ms = at_ms;
            true
        });
        Ok(())
    }

    fn tombstone_message(&self, id: &[u8]) -> Result<(), ClientError> {
        let mut s = self.state.lock();
        s.update_message(id, |m| {
            m.text.clear();
            m.attachment = None;
            m.interactive = None;
            m.deleted = true;
            if let Some(q) = &mut m.reply_to {
                q.snippet.clear();
            }
            true
        });
        // Replies keep pointing at it, but no longer quote its words.
        let replies: Vec<u64> = s
            .tables
            .replies
            .range((id.to_vec(), 0)..=(id.to_vec(), u64::MAX))
            .map(|(_, n)| *n)
            .collect();
        for n in replies {
            let Some(reply) = s.tables.messages.get(&n) else {
                continue;
            };
            if reply
                .reply_to
                .as_ref()
                .is_some_and(|q| !q.snippet.is_empty())
            {
                let mut reply = reply.clone();
                if let Some(q) = &mut reply.reply_to {
                    q.snippet.clear();
                }
                s.put_message(n, Some(reply));
            }
        }
        s.remove_reactions(id);
        Ok(())
    }

    fn purge_expired(&self, now_ms: i64) -> Result<usize, ClientError> {
        if now_ms < 1 {
            return Ok(0);
        }
        let mut s = self.state.lock();
        // Only `0 < expires_at_ms <= now_ms`, as SQLite's store.
        let gone: Vec<u64> = s
            .tables
            .expiring
            .range((1, 0)..=(now_ms, u64::MAX))
            .map(|(_, n)| *n)
            .collect();
        for &n in &gone {
            let Some(id) = s.tables.messages.get(&n).map(|m| m.id.clone()) else {
                continue;
            };
            s.remove_reactions(&id);
            let receipts: Vec<RecipientKey> = with_prefix(&s.tables.recipients, &id)
                .map(|(k, _)| k.clone())
                .collect();
            for k in receipts {
                let old = s.tables.recipients.remove(&k);
                s.log(Undo::Recipient(k, old));
            }
            s.put_message(n, None);
        }
        Ok(gone.len())
    }

    // ---- receipts ----

    fn add_recipient(
        &self,
        message_id: &[u8],
        phone: &str,
        device_id: u64,
    ) -> Result<(), ClientError> {
        let mut s = self.state.lock();
        let k = (message_id.to_vec(), device_id);
        if s.tables.recipients.contains_key(&k) {
            return Ok(());
        }
        s.tables.recipients.insert(
            k.clone(),
            Receipt {
                phone: phone.to_string(),
                delivered_ms: 0,
                read_ms: 0,
            },
        );
        s.log(Undo::Recipient(k, None));
        Ok(())
    }

    fn update_receipt(
        &self,
        message_id: &[u8],
        device_id: u64,
        read: bool,
        at_ms: i64,
    ) -> Result<(), ClientError> {
        let mut s = self.state.lock();
        let k = (message_id.to_vec(), device_id);
        let Some(r) = s.tables.recipients.get(&k) else {
            return Ok(());
        };
        let mut new = r.clone();
        if new.delivered_ms == 0 {
            new.delivered_ms = at_ms;
        }
        if read && new.read_ms == 0 {
            new.read_ms = at_ms;
        }
        if (new.delivered_ms, new.read_ms) != (r.delivered_ms, r.read_ms) {
            let old = s.tables.recipients.insert(k.clone(), new);
            s.log(Undo::Recipient(k, old));
        }
        Ok(())
    }

    fn recipients(&self, message_id: &[u8]) -> Result<Vec<RecipientState>, ClientError> {
        let s = self.state.lock();
        let id = message_id.to_vec();
        let mut out: Vec<RecipientState> = with_prefix(&s.tables.recipients, &id)
            .map(|((_, device_id), r)| RecipientState {
                phone: r.phone.clone(),
                device_id: *device_id,
                delivered_ms: r.delivered_ms,
                read_ms: r.read_ms,
            })
            .collect();
        out.sort_by(|a, b| (&a.phone, a.device_id).cmp(&(&b.phone, b.device_id)));
        Ok(out)
    }

    // ---- outbox ----

    fn queue_outgoing(&self, id: &[u8], to: &str, body: &[u8]) -> Result<(), ClientError> {
        let mut s = self.state.lock();
        if s.tables.outbox_ids.contains_key(id) {
            return Ok(());
        }
        s.next_outbox += 1;
        let n = s.next_outbox;
        s.put_outbox(n, Some((id.to_vec(), to.to_string(), body.to_vec())));
        Ok(())
    }

    fn outbox(&self) -> Result<Vec<OutboxEntry>, ClientError> {
        Ok(self.state.lock().tables.outbox.values().cloned().collect())
    }

    fn remove_outgoing(&self, id: &[u8]) -> Result<(), ClientError> {
        let mut s = self.state.lock();
        if let Some(&n) = s.tables.outbox_ids.get(id) {
            s.put_outbox(n, None);
        }
        Ok(())
    }

    // ---- named groups ----

    fn group_state_bytes(&self, group: &[u8]) -> Result<Option<Vec<u8>>, ClientError> {
        Ok(self
            .state
            .lock()
            .tables
            .group_state
            .get(group)
            .map(|(b, _)| b.clone()))
    }

    fn set_group_state(
        &self,
        group: &[u8],
        state: &v1::GroupState,
        now_ms: i64,
    ) -> Result<(), ClientError> {
        let mut s = self.state.lock();
        let old = s
            .tables
            .group_state
            .insert(group.to_vec(), (state.encode_to_vec(), now_ms));
        s.log(Undo::GroupState(group.to_vec(), old));
        Ok(())
    }

    fn add_leaver(&self, group: &[u8], phone: &str) -> Result<(), ClientError> {
        let mut s = self.state.lock();
        let k = (group.to_vec(), phone.to_string());
        if !s.tables.leavers.contains(&k) {
            s.tables.leavers.insert(k.clone());
            s.log(Undo::Leaver(k, false));
        }
        Ok(())
    }

    fn leavers(&self, group: &[u8]) -> Result<Vec<String>, ClientError> {
        let s = self.state.lock();
        Ok(s.tables
            .leavers
            .range((group.to_vec(), String::new())..)
            .take_while(|(g, _)| g == group)
            .map(|(_, p)| p.clone())
            .collect())
    }

    fn clear_leaver(&self, group: &[u8], phone: &str) -> Result<(), ClientError> {
        let mut s = self.state.lock();
        let k = (group.to_vec(), phone.to_string());
        if s.tables.leavers.remove(&k) {
            s.log(Undo::Leaver(k, true));
        }
        Ok(())
    }

    fn add_join_request(&self, group: &[u8], phone: &str, at_ms: i64) -> Result<(), ClientError> {
        let mut s = self.state.lock();
        let k = (group.to_vec(), phone.to_string());
        if !s.tables.join_requests.contains_key(&k) {
            s.tables.join_requests.insert(k.clone(), at_ms);
            s.log(Undo::JoinRequest(k, None));
        }
        Ok(())
    }

    fn join_requests(&self, group: &[u8]) -> Result<Vec<String>, ClientError> {
        let s = self.state.lock();
        let g = group.to_vec();
        let mut found: Vec<(i64, &String)> = with_prefix(&s.tables.join_requests, &g)
            .map(|((_, phone), at)| (*at, phone))
            .collect();
        found.sort();
        Ok(found.into_iter().map(|(_, p)| p.clone()).collect())
    }

    fn remove_join_request(&self, group: &[u8], phone: &str) -> Result<(), ClientError> {
        let mut s = self.state.lock();
        let k = (group.to_vec(), phone.to_string());
        if let Some(at) = s.tables.join_requests.remove(&k) {
            s.log(Undo::JoinRequest(k, Some(at)));
        }
        Ok(())
    }

    // ---- message features ----

    fn set_reaction(
        &self,
        message_id: &[u8],
        phone: &str,
        emoji: &str,
        at_ms: i64,
    ) -> Result<(), ClientError> {
        let mut s = self.state.lock();
        let k = (message_id.to_vec(), phone.to_string());
        let old = if emoji.is_empty() {
            s.tables.reactions.remove(&k)
        } else {
            s.tables
                .reactions
                .insert(k.clone(), (emoji.to_string(), at_ms))
        };
        if emoji.is_empty() && old.is_none() {
            return Ok(());
        }
        s.log(Undo::Reaction(k, old));
        Ok(())
    }

    fn reactions(&self, message_id: &[u8]) -> Result<Vec<(String, String)>, ClientError> {
        let s = self.state.lock();
        let id = message_id.to_vec();
        let mut found: Vec<(i64, &String, &String)> = with_prefix(&s.tables.reactions, &id)
            .map(|((_, phone), (emoji, at))| (*at, phone, emoji))
            .collect();
        found.sort();
        Ok(found
            .into_iter()
            .map(|(_, p, e)| (p.clone(), e.clone()))
            .collect())
    }

    fn chat_timer(&self, conversation: &str) -> Result<u32, ClientError> {
        Ok(self
            .state
            .lock()
            .tables
            .chat_timers
            .get(conversation)
            .copied()
            .unwrap_or(0))
    }

    fn set_chat_timer(&self, conversation: &str, secs: u32) -> Result<(), ClientError> {
        let mut s = self.state.lock();
        let old = s.tables.chat_timers.insert(conversation.to_string(), secs);
        s.log(Undo::ChatTimer(conversation.to_string(), old));
        Ok(())
    }

    fn set_broadcast_list(&self, name: &str, members: &[String]) -> Result<(), ClientError> {
        let mut s = self.state.lock();
        // As SQLite keeps them: joined by commas, empty names dropped.
        let members: Vec<String> = members.iter().filter(|m| !m.is_empty()).cloned().collect();
        let old = s.tables.broadcast_lists.insert(name.to_string(), members);
        s.log(Undo::BroadcastList(name.to_string(), old));
        Ok(())
    }

    fn delete_broadcast_list(&self, name: &str) -> Result<bool, ClientError> {
        let mut s = self.state.lock();
        let Some(old) = s.tables.broadcast_lists.remove(name) else {
            return Ok(false);
        };
        s.log(Undo::BroadcastList(name.to_string(), Some(old)));
        Ok(true)
    }

    fn broadcast_lists(&self) -> Result<Vec<(String, Vec<String>)>, ClientError> {
        Ok(self
            .state
            .lock()
            .tables
            .broadcast_lists
            .iter()
            .map(|(n, m)| (n.clone(), m.clone()))
            .collect())
    }
}

impl State {
    /// Removes every reaction on a message.
    fn remove_reactions(&mut self, message_id: &[u8]) {
        let id = message_id.to_vec();
        let keys: Vec<PhoneKey> = with_prefix(&self.tables.reactions, &id)
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            let old = self.tables.reactions.remove(&k);
            self.log(Undo::Reaction(k, old));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::run_all;

    #[test]
    fn memory_store_conforms() {
        run_all(&|| Box::new(MemoryStore::new()));
    }

    #[test]
    fn a_bracket_closed_out_of_order_changes_nothing() {
        let s = MemoryStore::new();
        s.begin(Bracket::Transaction).unwrap();
        s.set("k", b"1").unwrap();
        s.begin(Bracket::Savepoint).unwrap();
        s.set("k", b"2").unwrap();
        assert!(matches!(
            s.commit(Bracket::Transaction),
            Err(ClientError::Store { .. })
        ));
        assert!(s.rollback(Bracket::Transaction).is_err());
        assert_eq!(s.get("k").unwrap(), Some(b"2".to_vec()), "still open");
        s.rollback(Bracket::Savepoint).unwrap();
        assert_eq!(s.get("k").unwrap(), Some(b"1".to_vec()));
        s.rollback(Bracket::Transaction).unwrap();
        assert_eq!(s.get("k").unwrap(), None);
        assert!(s.state.lock().frames.is_empty());
    }

    #[test]
    fn a_savepoint_may_open_outermost() {
        let s = MemoryStore::new();
        s.begin(Bracket::Savepoint).unwrap();
        s.set("k", b"1").unwrap();
        assert!(s.begin(Bracket::Transaction).is_err());
        s.rollback(Bracket::Savepoint).unwrap();
        assert_eq!(s.get("k").unwrap(), None);
    }

    #[test]
    fn a_bracket_logs_its_writes_only() {
        let s = MemoryStore::new();
        let big = vec![7; 1 << 20];
        s.mls_put(b"L", b"k", &big).unwrap();
        s.begin(Bracket::Transaction).unwrap();
        s.mls_put(b"L", b"k", b"small").unwrap();
        s.set("k", b"v").unwrap();
        s.mark_read(b"no such message", 1).unwrap();
        assert_eq!(
            s.state.lock().frames[0].1.len(),
            2,
            "one inverse per write, none for a no-op"
        );
        s.rollback(Bracket::Transaction).unwrap();
        assert_eq!(s.mls_get(b"L", b"k").unwrap(), Some(big));
        assert!(s.state.lock().frames.is_empty());
        assert_eq!(s.label(), "memory");
        assert_eq!(s.data_version().unwrap(), 0);
    }
}
