//! `JournaledStore`: any `ProfileStore` (in practice `MemoryStore`) made
//! durable by a journal of what committed: every write a committed bracket
//! made, in order, appended as one frame to a `JournalSink` before the
//! commit returns. Opening replays the journal into a fresh store. This is
//! how the browser keeps a profile (an OPFS file, `dak-web/src/opfs.rs`)
//! while the core keeps its synchronous storage trait.
//!
//! Invariants:
//! - **Durable before committed.** The outermost bracket's frame is
//!   appended (and the sink flushed) first, then the inner store commits.
//!   If the append fails, the inner store rolls back and the commit
//!   returns the error: nothing the core was told is stored is missing from
//!   the journal. (The core acks a delivery only after its commit.)
//! - **Only what committed.** Writes inside a bracket are buffered per
//!   bracket; a savepoint's rollback drops its buffer, its commit hands the
//!   buffer to its parent. A write outside any bracket gets a transaction
//!   of its own (one frame), so it too is journalled before it is stored.
//! - **Replay is the same calls.** A frame is the trait's write calls with
//!   their arguments; the inner store is deterministic (counters included),
//!   so replaying them in order on an empty store rebuilds the same state.
//! - **A torn tail is dropped, never misread.** Each frame is `length (u32
//!   LE) | crc32 (u32 LE) | JournalFrame (protobuf)`; replay stops at the
//!   first frame that is short, over `MAX_FRAME_BYTES`, fails its checksum
//!   or does not decode, and reports how many bytes it kept so the sink can
//!   cut the rest. Only the last frame can be torn by a crash; anything
//!   else dropped is reported as lost.
//!
//! - **Compaction is a new journal.** `snapshot` writes a store's whole
//!   state as frames of a new `generation` (the last one marked
//!   `snapshot_done`); a journal is complete once that frame is whole
//!   (`inspect`), so a sink can write the snapshot to a second file, switch
//!   to it, and on the next open take the complete journal of the highest
//!   generation (`dak-web/src/opfs.rs`). A crash mid-snapshot leaves the
//!   new file incomplete and the old one in use.

use prost::Message;

use crate::ClientError;
use crate::ids::ConversationId;
use crate::store::{Bracket, MessageView, OutboxEntry, ProfileStore, Quote, RecipientState};
use dak_proto::v1;

/// The largest frame replay accepts (one commit's writes).
pub const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;
const HEADER: usize = 8;

/// Where frames go: appended in order, durable when `append` returns.
pub trait JournalSink: Send + Sync {
    fn append(&self, frame: &[u8]) -> Result<(), ClientError>;
    /// Replaces the journal with `frames` (a whole snapshot of a higher
    /// generation) so that later appends follow it; false when this sink
    /// cannot, or could not this time (the old journal then stays, whole
    /// and in use). An error means the sink is no longer safe to write
    /// (it then refuses every append).
    fn replace(&self, frames: &[Vec<u8>]) -> Result<bool, ClientError> {
        let _ = frames;
        Ok(false)
    }
}

/// One commit's writes, or part of a snapshot.
#[derive(Clone, PartialEq, Message)]
pub struct JournalFrame {
    #[prost(message, repeated, tag = "1")]
    pub ops: Vec<Op>,
    /// Set on a compacted journal's snapshot frames: which compaction
    /// wrote them (0: a journal that starts empty, never compacted).
    #[prost(uint64, tag = "2")]
    pub generation: u64,
    /// The snapshot's last frame: the journal is whole from here on.
    #[prost(bool, tag = "3")]
    pub snapshot_done: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct Op {
    #[prost(
        oneof = "Write",
        tags = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28"
    )]
    pub write: Option<Write>,
}

/// Up to three byte strings, two numbers, a flag and a list: the arguments
/// of every write (each write says which it uses).
#[derive(Clone, PartialEq, Message)]
pub struct Args {
    #[prost(bytes = "vec", tag = "1")]
    pub a: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub b: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    pub c: Vec<u8>,
    #[prost(int64, tag = "4")]
    pub n: i64,
    #[prost(bool, tag = "5")]
    pub flag: bool,
    #[prost(string, repeated, tag = "6")]
    pub list: Vec<String>,
    #[prost(int64, tag = "7")]
    pub m: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct StoredMessage {
    #[prost(bytes = "vec", tag = "1")]
    pub id: Vec<u8>,
    #[prost(string, tag = "2")]
    pub conversation: String,
    #[prost(string, tag = "3")]
    pub from: String,
    #[prost(uint64, tag = "4")]
    pub from_device: u64,
    #[prost(bool, tag = "5")]
    pub outgoing: bool,
    #[prost(string, tag = "6")]
    pub text: String,
    #[prost(int64, tag = "7")]
    pub sent_at_ms: i64,
    #[prost(int64, tag = "8")]
    pub server_time_ms: i64,
    #[prost(bool, tag = "9")]
    pub acked: bool,
    #[prost(int64, tag = "10")]
    pub read_ms: i64,
    #[prost(bool, tag = "11")]
    pub has_reply: bool,
    #[prost(bytes = "vec", tag = "12")]
    pub reply_id: Vec<u8>,
    #[prost(string, tag = "13")]
    pub reply_from: String,
    #[prost(string, tag = "14")]
    pub reply_snippet: String,
    #[prost(uint32, tag = "15")]
    pub forwarded: u32,
    #[prost(int64, tag = "16")]
    pub edited_ms: i64,
    #[prost(bool, tag = "17")]
    pub deleted: bool,
    #[prost(int64, tag = "18")]
    pub expires_at_ms: i64,
    #[prost(message, optional, boxed, tag = "19")]
    pub attachment: Option<Box<dak_proto::v1::Attachment>>,
    #[prost(message, optional, boxed, tag = "20")]
    pub interactive: Option<Box<dak_proto::v1::Interactive>>,
    #[prost(message, optional, tag = "21")]
    pub choice: Option<dak_proto::v1::Choice>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Write {
    #[prost(message, tag = "1")]
    Set(Args),
    #[prost(message, tag = "2")]
    Delete(Args),
    #[prost(message, tag = "3")]
    MlsPut(Args),
    #[prost(message, tag = "4")]
    MlsDelete(Args),
    #[prost(message, tag = "5")]
    AddConversation(Args),
    #[prost(message, tag = "6")]
    RetireConversation(Args),
    #[prost(message, tag = "7")]
    FirstSight(Args),
    #[prost(message, tag = "8")]
    PruneSeen(Args),
    #[prost(message, tag = "9")]
    InsertMessage(StoredMessage),
    #[prost(message, tag = "10")]
    DeleteMessage(Args),
    #[prost(message, tag = "11")]
    MarkRead(Args),
    #[prost(message, tag = "12")]
    MarkAcked(Args),
    #[prost(message, tag = "13")]
    EditMessage(Args),
    #[prost(message, tag = "14")]
    TombstoneMessage(Args),
    #[prost(message, tag = "15")]
    PurgeExpired(Args),
    #[prost(message, tag = "16")]
    AddRecipient(Args),
    #[prost(message, tag = "17")]
    UpdateReceipt(Args),
    #[prost(message, tag = "18")]
    QueueOutgoing(Args),
    #[prost(message, tag = "19")]
    RemoveOutgoing(Args),
    #[prost(message, tag = "20")]
    SetGroupState(Args),
    #[prost(message, tag = "21")]
    AddLeaver(Args),
    #[prost(message, tag = "22")]
    ClearLeaver(Args),
    #[prost(message, tag = "23")]
    AddJoinRequest(Args),
    #[prost(message, tag = "24")]
    RemoveJoinRequest(Args),
    #[prost(message, tag = "25")]
    SetReaction(Args),
    #[prost(message, tag = "26")]
    SetChatTimer(Args),
    #[prost(message, tag = "27")]
    SetBroadcastList(Args),
    #[prost(message, tag = "28")]
    DeleteBroadcastList(Args),
}

fn args(a: &[u8], b: &[u8], c: &[u8], n: i64) -> Args {
    Args {
        a: a.to_vec(),
        b: b.to_vec(),
        c: c.to_vec(),
        n,
        flag: false,
        list: Vec::new(),
        m: 0,
    }
}

fn text(bytes: &[u8]) -> Result<&str, ClientError> {
    std::str::from_utf8(bytes).map_err(|_| journal_error("a text that is not UTF-8"))
}

fn journal_error(what: &str) -> ClientError {
    ClientError::Store {
        path: "journal".into(),
        message: what.into(),
    }
}

fn stored(m: &MessageView) -> StoredMessage {
    let (has_reply, reply_id, reply_from, reply_snippet) = match &m.reply_to {
        Some(q) => (true, q.id.clone(), q.from.clone(), q.snippet.clone()),
        None => (false, Vec::new(), String::new(), String::new()),
    };
    StoredMessage {
        id: m.id.clone(),
        conversation: m.conversation.key(),
        from: m.from.clone(),
        from_device: m.from_device,
        outgoing: m.outgoing,
        text: m.text.clone(),
        sent_at_ms: m.sent_at_ms,
        server_time_ms: m.server_time_ms,
        acked: m.acked,
        read_ms: m.read_ms,
        has_reply,
        reply_id,
        reply_from,
        reply_snippet,
        forwarded: m.forwarded,
        edited_ms: m.edited_ms,
        deleted: m.deleted,
        expires_at_ms: m.expires_at_ms,
        attachment: m.attachment.as_ref().map(|a| Box::new(a.to_proto())),
        interactive: m.interactive.clone(),
        choice: m.choice.as_deref().cloned(),
    }
}

fn view(m: StoredMessage) -> MessageView {
    MessageView {
        id: m.id,
        conversation: ConversationId::from_key(&m.conversation),
        from: m.from,
        from_device: m.from_device,
        outgoing: m.outgoing,
        text: m.text,
        sent_at_ms: m.sent_at_ms,
        server_time_ms: m.server_time_ms,
        acked: m.acked,
        read_ms: m.read_ms,
        reply_to: m.has_reply.then_some(Quote {
            id: m.reply_id,
            from: m.reply_from,
            snippet: m.reply_snippet,
        }),
        forwarded: m.forwarded,
        edited_ms: m.edited_ms,
        deleted: m.deleted,
        expires_at_ms: m.expires_at_ms,
        attachment: m
            .attachment
            .map(|a| Box::new(crate::Attachment::from_proto(*a))),
        interactive: m.interactive,
        choice: m.choice.map(Box::new),
    }
}

/// Applies one journalled write to `store`, as the original call did.
pub fn apply(store: &dyn ProfileStore, op: Op) -> Result<(), ClientError> {
    let Some(write) = op.write else {
        return Err(journal_error("an empty write"));
    };
    match write {
        Write::Set(a) => store.set(text(&a.a)?, &a.b),
        Write::Delete(a) => store.delete(text(&a.a)?),
        Write::MlsPut(a) => store.mls_put(&a.a, &a.b, &a.c),
        Write::MlsDelete(a) => store.mls_delete(&a.a, &a.b),
        Write::AddConversation(a) => store.add_conversation(&a.a, text(&a.b)?, a.n),
        Write::RetireConversation(a) => store.retire_conversation(&a.a),
        Write::FirstSight(a) => store.first_sight(&a.a, a.n).map(|_| ()),
        Write::PruneSeen(a) => store.prune_seen(a.n),
        Write::InsertMessage(m) => store.insert_message(&view(m)),
        Write::DeleteMessage(a) => store.delete_message(&a.a),
        Write::MarkRead(a) => store.mark_read(&a.a, a.n),
        Write::MarkAcked(a) => store.mark_acked(&a.a, a.n).map(|_| ()),
        Write::EditMessage(a) => store.edit_message(&a.a, text(&a.b)?, a.n),
        Write::TombstoneMessage(a) => store.tombstone_message(&a.a),
        Write::PurgeExpired(a) => store.purge_expired(a.n).map(|_| ()),
        Write::AddRecipient(a) => store.add_recipient(&a.a, text(&a.b)?, a.n as u64),
        Write::UpdateReceipt(a) => store.update_receipt(&a.a, a.n as u64, a.flag, a.m),
        Write::QueueOutgoing(a) => store.queue_outgoing(&a.a, text(&a.b)?, &a.c),
        Write::RemoveOutgoing(a) => store.remove_outgoing(&a.a),
        Write::SetGroupState(a) => {
            let state = v1::GroupState::decode(a.b.as_slice())
                .map_err(|_| journal_error("a group state that does not decode"))?;
            store.set_group_state(&a.a, &state, a.n)
        }
        Write::AddLeaver(a) => store.add_leaver(&a.a, text(&a.b)?),
        Write::ClearLeaver(a) => store.clear_leaver(&a.a, text(&a.b)?),
        Write::AddJoinRequest(a) => store.add_join_request(&a.a, text(&a.b)?, a.n),
        Write::RemoveJoinRequest(a) => store.remove_join_request(&a.a, text(&a.b)?),
        Write::SetReaction(a) => store.set_reaction(&a.a, text(&a.b)?, text(&a.c)?, a.n),
        Write::SetChatTimer(a) => store.set_chat_timer(text(&a.a)?, a.n as u32),
        Write::SetBroadcastList(a) => store.set_broadcast_list(text(&a.a)?, &a.list),
        Write::DeleteBroadcastList(a) => store.delete_broadcast_list(text(&a.a)?).map(|_| ()),
    }
}

/// A frame as it is appended: header and body.
pub fn encode_frame(frame: &JournalFrame) -> Vec<u8> {
    let body = frame.encode_to_vec();
    let mut out = Vec::with_capacity(HEADER + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Largest snapshot frame `snapshot` writes.
const SNAPSHOT_FRAME_BYTES: usize = 8 * 1024 * 1024;

/// What a journal's bytes are, before replaying them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inspected {
    /// Its first frame's generation (0: never compacted).
    pub generation: u64,
    /// Whether it can be replayed: never compacted (an empty file, or one
    /// whose first frame is cut short, counts as that, with no valid
    /// bytes), or its snapshot is whole.
    pub complete: bool,
    /// Bytes up to the end of its snapshot (0 when never compacted).
    pub snapshot_bytes: usize,
    /// Bytes of whole frames.
    pub valid_bytes: usize,
}

/// A frame's own fields without its writes: what `inspect` reads (prost
/// skips the writes, field 1, without decoding them).
#[derive(Clone, PartialEq, Message)]
struct FrameHeader {
    #[prost(uint64, tag = "2")]
    generation: u64,
    #[prost(bool, tag = "3")]
    snapshot_done: bool,
}

/// What a journal is, read cheaply (checksums and frame headers, not the
/// writes): opening inspects both files before it replays one.
pub fn inspect(journal: &[u8]) -> Inspected {
    let mut at = 0;
    let mut generation = 0;
    let mut snapshot_bytes = None;
    let mut first = true;
    while let Some((len, frame)) = frame_at::<FrameHeader>(&journal[at..]) {
        if first {
            generation = frame.generation;
            first = false;
        }
        at += len;
        if snapshot_bytes.is_none() && frame.snapshot_done && frame.generation == generation {
            snapshot_bytes = Some(at);
        }
    }
    // A file with no whole first frame (empty, or cut short in its first
    // write) holds nothing committed: generation 0 with no valid bytes,
    // which any journal with something in it beats.
    Inspected {
        generation,
        complete: generation == 0 || snapshot_bytes.is_some(),
        snapshot_bytes: snapshot_bytes.unwrap_or(0),
        valid_bytes: at,
    }
}

/// How big a journal may grow before it is compacted, at least.
pub const COMPACT_OVER_BYTES: usize = 4 << 20;

/// Whether a journal is worth compacting: it has grown past `over` bytes
/// (normally `COMPACT_OVER_BYTES`) and to more than twice its last snapshot.
pub fn worth_compacting(journal: &Inspected, over: usize) -> bool {
    journal.valid_bytes > over.max(2 * journal.snapshot_bytes)
}

/// Everything `store` holds (see `ProfileStore::copy_into`), as the frames
/// of a new journal of `generation` (at least one frame; the last is
/// `snapshot_done`).
pub fn snapshot(store: &dyn ProfileStore, generation: u64) -> Result<Vec<Vec<u8>>, ClientError> {
    // The copy's writes, taken from its one open transaction: they are
    // never encoded alone, and the copy is dropped right after.
    struct Unused;
    impl JournalSink for Unused {
        fn append(&self, _: &[u8]) -> Result<(), ClientError> {
            Err(journal_error("a snapshot's copy is never committed"))
        }
    }
    let ops = {
        let copy = JournaledStore::new(crate::memory::MemoryStore::new(), Box::new(Unused));
        copy.begin(Bracket::Transaction)?;
        store.copy_into(&copy)?;
        // Dropped with its transaction open: nothing to undo, all freed.
        copy.open
            .lock()
            .pop()
            .map(|(_, ops)| ops)
            .unwrap_or_default()
    };
    let mut frames = Vec::new();
    let mut current = JournalFrame {
        ops: Vec::new(),
        generation,
        snapshot_done: false,
    };
    let mut size = 0;
    for op in ops {
        let len = op.encoded_len();
        if size + len > SNAPSHOT_FRAME_BYTES && !current.ops.is_empty() {
            frames.push(encode_frame(&current));
            current.ops.clear();
            size = 0;
        }
        size += len;
        current.ops.push(op);
    }
    current.snapshot_done = true;
    frames.push(encode_frame(&current));
    Ok(frames)
}

/// What replay found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    pub frames: usize,
    /// Bytes of whole, valid frames from the start; the sink should cut
    /// the journal here before appending.
    pub kept_bytes: usize,
    /// Bytes after them that were not a valid frame (a torn last write,
    /// or damage).
    pub dropped_bytes: usize,
}

/// Replays `journal` into `store` (an empty one), frame by frame.
pub fn replay(store: &dyn ProfileStore, journal: &[u8]) -> Result<Replayed, ClientError> {
    let mut at = 0;
    let mut frames = 0;
    while let Some(frame) = next_frame(&journal[at..]) {
        let (len, frame) = frame;
        store.begin(Bracket::Transaction)?;
        for op in frame.ops {
            if let Err(e) = apply(store, op) {
                store.rollback(Bracket::Transaction)?;
                return Err(e);
            }
        }
        store.commit(Bracket::Transaction)?;
        at += len;
        frames += 1;
    }
    Ok(Replayed {
        frames,
        kept_bytes: at,
        dropped_bytes: journal.len() - at,
    })
}

/// The frame at the start of `bytes` and its length, if it is whole and valid.
pub fn next_frame(bytes: &[u8]) -> Option<(usize, JournalFrame)> {
    frame_at(bytes)
}

/// The frame at the start of `bytes`, decoded as `M`, and its length.
fn frame_at<M: Message + Default>(bytes: &[u8]) -> Option<(usize, M)> {
    let header = bytes.get(..HEADER)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    if len > MAX_FRAME_BYTES {
        return None;
    }
    let body = bytes.get(HEADER..HEADER + len)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    let frame = M::decode(body).ok()?;
    Some((HEADER + len, frame))
}

/// `inner`, with every committed write appended to `sink`.
pub struct JournaledStore<S: ProfileStore> {
    inner: S,
    sink: Box<dyn JournalSink>,
    /// Each open bracket and its writes, outermost first.
    open: parking_lot::Mutex<Vec<(Bracket, Vec<Op>)>>,
    /// The journal in `sink` as it stands (what `compact` decides on).
    extent: parking_lot::Mutex<Inspected>,
}

impl<S: ProfileStore> JournaledStore<S> {
    /// `inner` must already hold what the journal holds (see `replay`);
    /// the journal is taken to be empty (see `resumed`).
    pub fn new(inner: S, sink: Box<dyn JournalSink>) -> JournaledStore<S> {
        JournaledStore {
            inner,
            sink,
            open: parking_lot::Mutex::new(Vec::new()),
            extent: parking_lot::Mutex::new(inspect(&[])),
        }
    }

    /// The same, going on from a journal that `inspect` found and replay
    /// kept `kept_bytes` of.
    pub fn resumed(self, journal: Inspected, kept_bytes: usize) -> JournaledStore<S> {
        *self.extent.lock() = Inspected {
            valid_bytes: kept_bytes,
            ..journal
        };
        self
    }

    /// Does `f` on the inner store and records `write` if it succeeded.
    /// Outside any bracket the write gets a transaction of its own, so it
    /// too is in the journal before it is in the store.
    fn write<T>(
        &self,
        f: impl FnOnce(&S) -> Result<T, ClientError>,
        write: impl FnOnce() -> Write,
    ) -> Result<T, ClientError> {
        let alone = self.open.lock().is_empty();
        if alone {
            self.begin(Bracket::Transaction)?;
        }
        let out = match f(&self.inner) {
            Ok(out) => out,
            Err(e) => {
                if alone {
                    self.rollback(Bracket::Transaction)?;
                }
                return Err(e);
            }
        };
        if let Some((_, buffer)) = self.open.lock().last_mut() {
            buffer.push(Op {
                write: Some(write()),
            });
        }
        if alone {
            self.commit(Bracket::Transaction)?;
        }
        Ok(out)
    }
}

impl<S: ProfileStore> ProfileStore for JournaledStore<S> {
    fn label(&self) -> String {
        format!("{} (journalled)", self.inner.label())
    }

    fn begin(&self, bracket: Bracket) -> Result<(), ClientError> {
        self.inner.begin(bracket)?;
        self.open.lock().push((bracket, Vec::new()));
        Ok(())
    }

    fn commit(&self, bracket: Bracket) -> Result<(), ClientError> {
        let mut open = self.open.lock();
        // Only the innermost bracket closes (the inner store refuses the
        // rest, and so must the journal, before it writes anything).
        match open.last() {
            Some((b, _)) if *b == bracket => {}
            _ => {
                drop(open);
                return self.inner.commit(bracket);
            }
        }
        let Some((_, ops)) = open.pop() else {
            unreachable!("checked above")
        };
        if let Some((_, parent)) = open.last_mut() {
            self.inner.commit(bracket)?;
            parent.extend(ops);
            return Ok(());
        }
        drop(open);
        if !ops.is_empty() {
            let frame = encode_frame(&JournalFrame {
                ops,
                ..Default::default()
            });
            if let Err(e) = self.sink.append(&frame) {
                self.inner.rollback(bracket)?;
                return Err(e);
            }
            self.extent.lock().valid_bytes += frame.len();
        }
        self.inner.commit(bracket)
    }

    fn rollback(&self, bracket: Bracket) -> Result<(), ClientError> {
        self.inner.rollback(bracket)?;
        self.open.lock().pop();
        Ok(())
    }

    fn data_version(&self) -> Result<u64, ClientError> {
        self.inner.data_version()
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, ClientError> {
        self.inner.get(key)
    }
    fn set(&self, key: &str, value: &[u8]) -> Result<(), ClientError> {
        self.write(
            |s| s.set(key, value),
            || Write::Set(args(key.as_bytes(), value, &[], 0)),
        )
    }
    fn delete(&self, key: &str) -> Result<(), ClientError> {
        self.write(
            |s| s.delete(key),
            || Write::Delete(args(key.as_bytes(), &[], &[], 0)),
        )
    }

    fn mls_get(&self, label: &[u8], key: &[u8]) -> Result<Option<Vec<u8>>, ClientError> {
        self.inner.mls_get(label, key)
    }
    fn mls_put(&self, label: &[u8], key: &[u8], value: &[u8]) -> Result<(), ClientError> {
        self.write(
            |s| s.mls_put(label, key, value),
            || Write::MlsPut(args(label, key, value, 0)),
        )
    }
    fn mls_delete(&self, label: &[u8], key: &[u8]) -> Result<(), ClientError> {
        self.write(
            |s| s.mls_delete(label, key),
            || Write::MlsDelete(args(label, key, &[], 0)),
        )
    }

    fn group_for(&self, peer: &str) -> Result<Option<Vec<u8>>, ClientError> {
        self.inner.group_for(peer)
    }
    fn conversation_active(&self, group: &[u8]) -> Result<Option<bool>, ClientError> {
        self.inner.conversation_active(group)
    }
    fn peer_of(&self, group: &[u8]) -> Result<Option<String>, ClientError> {
        self.inner.peer_of(group)
    }
    fn add_conversation(&self, group: &[u8], peer: &str, now_ms: i64) -> Result<(), ClientError> {
        self.write(
            |s| s.add_conversation(group, peer, now_ms),
            || Write::AddConversation(args(group, peer.as_bytes(), &[], now_ms)),
        )
    }
    fn retire_conversation(&self, group: &[u8]) -> Result<(), ClientError> {
        self.write(
            |s| s.retire_conversation(group),
            || Write::RetireConversation(args(group, &[], &[], 0)),
        )
    }
    fn active_groups(&self) -> Result<Vec<(Vec<u8>, String)>, ClientError> {
        self.inner.active_groups()
    }

    fn first_sight(&self, id: &[u8], now_ms: i64) -> Result<bool, ClientError> {
        self.write(
            |s| s.first_sight(id, now_ms),
            || Write::FirstSight(args(id, &[], &[], now_ms)),
        )
    }
    fn prune_seen(&self, before_ms: i64) -> Result<(), ClientError> {
        self.write(
            |s| s.prune_seen(before_ms),
            || Write::PruneSeen(args(&[], &[], &[], before_ms)),
        )
    }

    fn insert_message(&self, m: &MessageView) -> Result<(), ClientError> {
        self.write(|s| s.insert_message(m), || Write::InsertMessage(stored(m)))
    }
    fn message(&self, id: &[u8]) -> Result<Option<MessageView>, ClientError> {
        self.inner.message(id)
    }
    fn conversation(
        &self,
        conversation: &str,
        limit: usize,
        now_ms: i64,
    ) -> Result<Vec<MessageView>, ClientError> {
        self.inner.conversation(conversation, limit, now_ms)
    }
    fn unread(&self) -> Result<Vec<MessageView>, ClientError> {
        self.inner.unread()
    }
    fn delete_message(&self, id: &[u8]) -> Result<(), ClientError> {
        self.write(
            |s| s.delete_message(id),
            || Write::DeleteMessage(args(id, &[], &[], 0)),
        )
    }
    fn mark_read(&self, id: &[u8], now_ms: i64) -> Result<(), ClientError> {
        self.write(
            |s| s.mark_read(id, now_ms),
            || Write::MarkRead(args(id, &[], &[], now_ms)),
        )
    }
    fn mark_acked(&self, id: &[u8], server_time_ms: i64) -> Result<bool, ClientError> {
        self.write(
            |s| s.mark_acked(id, server_time_ms),
            || Write::MarkAcked(args(id, &[], &[], server_time_ms)),
        )
    }
    fn edit_message(&self, id: &[u8], text: &str, at_ms: i64) -> Result<(), ClientError> {
        self.write(
            |s| s.edit_message(id, text, at_ms),
            || Write::EditMessage(args(id, text.as_bytes(), &[], at_ms)),
        )
    }
    fn tombstone_message(&self, id: &[u8]) -> Result<(), ClientError> {
        self.write(
            |s| s.tombstone_message(id),
            || Write::TombstoneMessage(args(id, &[], &[], 0)),
        )
    }
    fn purge_expired(&self, now_ms: i64) -> Result<usize, ClientError> {
        self.write(
            |s| s.purge_expired(now_ms),
            || Write::PurgeExpired(args(&[], &[], &[], now_ms)),
        )
    }

    fn add_recipient(
        &self,
        message_id: &[u8],
        phone: &str,
        device_id: u64,
    ) -> Result<(), ClientError> {
        self.write(
            |s| s.add_recipient(message_id, phone, device_id),
            || Write::AddRecipient(args(message_id, phone.as_bytes(), &[], device_id as i64)),
        )
    }
    fn update_receipt(
        &self,
        message_id: &[u8],
        device_id: u64,
        read: bool,
        at_ms: i64,
    ) -> Result<(), ClientError> {
        self.write(
            |s| s.update_receipt(message_id, device_id, read, at_ms),
            || {
                let mut a = args(message_id, &[], &[], device_id as i64);
                a.flag = read;
                a.m = at_ms;
                Write::UpdateReceipt(a)
            },
        )
    }
    fn recipients(&self, message_id: &[u8]) -> Result<Vec<RecipientState>, ClientError> {
        self.inner.recipients(message_id)
    }

    fn queue_outgoing(&self, id: &[u8], to: &str, body: &[u8]) -> Result<(), ClientError> {
        self.write(
            |s| s.queue_outgoing(id, to, body),
            || Write::QueueOutgoing(args(id, to.as_bytes(), body, 0)),
        )
    }
    fn outbox(&self) -> Result<Vec<OutboxEntry>, ClientError> {
        self.inner.outbox()
    }
    fn remove_outgoing(&self, id: &[u8]) -> Result<(), ClientError> {
        self.write(
            |s| s.remove_outgoing(id),
            || Write::RemoveOutgoing(args(id, &[], &[], 0)),
        )
    }

    fn group_state_bytes(&self, group: &[u8]) -> Result<Option<Vec<u8>>, ClientError> {
        self.inner.group_state_bytes(group)
    }
    fn set_group_state(
        &self,
        group: &[u8],
        state: &v1::GroupState,
        now_ms: i64,
    ) -> Result<(), ClientError> {
        self.write(
            |s| s.set_group_state(group, state, now_ms),
            || Write::SetGroupState(args(group, &state.encode_to_vec(), &[], now_ms)),
        )
    }
    fn add_leaver(&self, group: &[u8], phone: &str) -> Result<(), ClientError> {
        self.write(
            |s| s.add_leaver(group, phone),
            || Write::AddLeaver(args(group, phone.as_bytes(), &[], 0)),
        )
    }
    fn leavers(&self, group: &[u8]) -> Result<Vec<String>, ClientError> {
        self.inner.leavers(group)
    }
    fn clear_leaver(&self, group: &[u8], phone: &str) -> Result<(), ClientError> {
        self.write(
            |s| s.clear_leaver(group, phone),
            || Write::ClearLeaver(args(group, phone.as_bytes(), &[], 0)),
        )
    }
    fn add_join_request(&self, group: &[u8], phone: &str, at_ms: i64) -> Result<(), ClientError> {
        self.write(
            |s| s.add_join_request(group, phone, at_ms),
            || Write::AddJoinRequest(args(group, phone.as_bytes(), &[], at_ms)),
        )
    }
    fn join_requests(&self, group: &[u8]) -> Result<Vec<String>, ClientError> {
        self.inner.join_requests(group)
    }
    fn remove_join_request(&self, group: &[u8], phone: &str) -> Result<(), ClientError> {
        self.write(
            |s| s.remove_join_request(group, phone),
            || Write::RemoveJoinRequest(args(group, phone.as_bytes(), &[], 0)),
        )
    }

    fn set_reaction(
        &self,
        message_id: &[u8],
        phone: &str,
        emoji: &str,
        at_ms: i64,
    ) -> Result<(), ClientError> {
        self.write(
            |s| s.set_reaction(message_id, phone, emoji, at_ms),
            || Write::SetReaction(args(message_id, phone.as_bytes(), emoji.as_bytes(), at_ms)),
        )
    }
    fn reactions(&self, message_id: &[u8]) -> Result<Vec<(String, String)>, ClientError> {
        self.inner.reactions(message_id)
    }
    fn chat_timer(&self, conversation: &str) -> Result<u32, ClientError> {
        self.inner.chat_timer(conversation)
    }
    fn set_chat_timer(&self, conversation: &str, secs: u32) -> Result<(), ClientError> {
        self.write(
            |s| s.set_chat_timer(conversation, secs),
            || Write::SetChatTimer(args(conversation.as_bytes(), &[], &[], secs as i64)),
        )
    }
    fn set_broadcast_list(&self, name: &str, members: &[String]) -> Result<(), ClientError> {
        self.write(
            |s| s.set_broadcast_list(name, members),
            || {
                let mut a = args(name.as_bytes(), &[], &[], 0);
                a.list = members.to_vec();
                Write::SetBroadcastList(a)
            },
        )
    }
    fn delete_broadcast_list(&self, name: &str) -> Result<bool, ClientError> {
        self.write(
            |s| s.delete_broadcast_list(name),
            || Write::DeleteBroadcastList(args(name.as_bytes(), &[], &[], 0)),
        )
    }
    fn broadcast_lists(&self) -> Result<Vec<(String, Vec<String>)>, ClientError> {
        self.inner.broadcast_lists()
    }

    fn copy_into(&self, target: &dyn ProfileStore) -> Result<(), ClientError> {
        self.inner.copy_into(target)
    }

    /// Between brackets only. A sink that could not replace the journal
    /// this time is asked again only once the journal has doubled again.
    fn compact(&self, over: usize) -> Result<Option<usize>, ClientError> {
        if !self.open.lock().is_empty() {
            return Ok(None);
        }
        let extent = *self.extent.lock();
        if !worth_compacting(&extent, over) {
            return Ok(None);
        }
        let frames = snapshot(&self.inner, extent.generation + 1)?;
        let bytes = frames.iter().map(Vec::len).sum();
        let replaced = self.sink.replace(&frames);
        let mut now = self.extent.lock();
        let replaced = match replaced {
            Ok(r) => r,
            Err(e) => {
                now.snapshot_bytes = now.valid_bytes;
                return Err(e);
            }
        };
        if replaced {
            *now = Inspected {
                generation: extent.generation + 1,
                complete: true,
                snapshot_bytes: bytes,
                valid_bytes: bytes,
            };
            Ok(Some(bytes))
        } else {
            // Not a snapshot's size: the point from which to wait for the
            // journal to double again.
            now.snapshot_bytes = now.valid_bytes;
            Ok(None)
        }
    }
}
