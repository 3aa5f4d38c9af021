//! `JournaledStore`: the store contract holds through it, and a device
//! rebuilt from its journal alone goes on with its conversation; a torn
//! last frame is dropped, and a failed append fails the commit.

use std::sync::Arc;

use dak_core::journal::{JournalSink, JournaledStore, inspect, replay, snapshot, worth_compacting};
use dak_core::memory::MemoryStore;
use dak_core::mls::Incoming;
use dak_core::testing::TestDevice;
use dak_core::{Bracket, ClientError, ProfileStore, conformance};
use parking_lot::Mutex;

/// A journal in memory; `fail` makes the next appends fail.
#[derive(Clone, Default)]
struct VecSink {
    bytes: Arc<Mutex<Vec<u8>>>,
    fail: Arc<Mutex<bool>>,
}

impl JournalSink for VecSink {
    fn append(&self, frame: &[u8]) -> Result<(), ClientError> {
        if *self.fail.lock() {
            return Err(ClientError::Store {
                path: "test".into(),
                message: "disk full".into(),
            });
        }
        self.bytes.lock().extend_from_slice(frame);
        Ok(())
    }

    fn replace(&self, frames: &[Vec<u8>]) -> Result<bool, ClientError> {
        if *self.fail.lock() {
            return Ok(false);
        }
        *self.bytes.lock() = frames.concat();
        Ok(true)
    }
}

fn journaled(sink: &VecSink) -> Box<dyn ProfileStore> {
    Box::new(JournaledStore::new(
        MemoryStore::new(),
        Box::new(sink.clone()),
    ))
}

#[test]
fn a_journaled_store_passes_the_conformance_suite() {
    conformance::run_all(&|| journaled(&VecSink::default()));
}

#[test]
fn the_conformance_suite_replayed_from_its_journals_passes_again_on_what_it_left() {
    // Each case's journal, replayed, gives a store that reads the same.
    let sinks: Arc<Mutex<Vec<Case>>> = Arc::default();
    let made = sinks.clone();
    conformance::run_all(&move || {
        let sink = VecSink::default();
        let store: Arc<dyn ProfileStore> = Arc::from(journaled(&sink));
        made.lock().push((sink, store.clone()));
        Box::new(Shared(store))
    });
    for (sink, original) in sinks.lock().iter() {
        let copy = MemoryStore::new();
        let r = replay(&copy, &sink.bytes.lock()).unwrap();
        assert_eq!(r.dropped_bytes, 0);
        assert_reads_alike(&copy, original.as_ref());
        // Compacted: the copy's snapshot, replayed, reads the same too.
        let compacted: Vec<u8> = snapshot(&copy, 7).unwrap().concat();
        let i = inspect(&compacted);
        assert!(i.complete && i.generation == 7, "{i:?}");
        assert_eq!(i.snapshot_bytes, compacted.len());
        let again = MemoryStore::new();
        replay(&again, &compacted).unwrap();
        assert_reads_alike(&again, original.as_ref());
        // The whole state, not only what the reads above show: a snapshot
        // depends only on the rows and their order.
        assert_eq!(snapshot(&again, 1).unwrap(), snapshot(&copy, 1).unwrap());
    }
}

/// What the store shows through its reads, compared.
fn assert_reads_alike(copy: &dyn ProfileStore, original: &dyn ProfileStore) {
    assert_eq!(
        copy.active_groups().unwrap(),
        original.active_groups().unwrap()
    );
    assert_eq!(copy.outbox().unwrap(), original.outbox().unwrap());
    assert_eq!(copy.unread().unwrap(), original.unread().unwrap());
    assert_eq!(
        copy.broadcast_lists().unwrap(),
        original.broadcast_lists().unwrap()
    );
    for (group, peer) in original.active_groups().unwrap() {
        let messages = original.conversation(&peer, 1000, 0).unwrap();
        assert_eq!(copy.conversation(&peer, 1000, 0).unwrap(), messages);
        for m in &messages {
            assert_eq!(
                copy.recipients(&m.id).unwrap(),
                original.recipients(&m.id).unwrap()
            );
            assert_eq!(
                copy.reactions(&m.id).unwrap(),
                original.reactions(&m.id).unwrap()
            );
        }
        assert_eq!(
            copy.group_state_bytes(&group).unwrap(),
            original.group_state_bytes(&group).unwrap()
        );
        assert_eq!(
            copy.leavers(&group).unwrap(),
            original.leavers(&group).unwrap()
        );
        assert_eq!(
            copy.join_requests(&group).unwrap(),
            original.join_requests(&group).unwrap()
        );
        assert_eq!(
            copy.chat_timer(&peer).unwrap(),
            original.chat_timer(&peer).unwrap()
        );
    }
}

/// A conformance case's journal and the store that wrote it.
type Case = (VecSink, Arc<dyn ProfileStore>);

/// A store shared with the test, so it can be read after the case.
struct Shared(Arc<dyn ProfileStore>);

macro_rules! forward {
    ($($name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        $(fn $name(&self, $($arg: $ty),*) -> $ret { self.0.$name($($arg),*) })*
    };
}

impl ProfileStore for Shared {
    forward! {
        label() -> String;
        begin(b: Bracket) -> Result<(), ClientError>;
        commit(b: Bracket) -> Result<(), ClientError>;
        rollback(b: Bracket) -> Result<(), ClientError>;
        data_version() -> Result<u64, ClientError>;
        get(k: &str) -> Result<Option<Vec<u8>>, ClientError>;
        set(k: &str, v: &[u8]) -> Result<(), ClientError>;
        delete(k: &str) -> Result<(), ClientError>;
        mls_get(l: &[u8], k: &[u8]) -> Result<Option<Vec<u8>>, ClientError>;
        mls_put(l: &[u8], k: &[u8], v: &[u8]) -> Result<(), ClientError>;
        mls_delete(l: &[u8], k: &[u8]) -> Result<(), ClientError>;
        group_for(p: &str) -> Result<Option<Vec<u8>>, ClientError>;
        conversation_active(g: &[u8]) -> Result<Option<bool>, ClientError>;
        peer_of(g: &[u8]) -> Result<Option<String>, ClientError>;
        add_conversation(g: &[u8], p: &str, n: i64) -> Result<(), ClientError>;
        retire_conversation(g: &[u8]) -> Result<(), ClientError>;
        active_groups() -> Result<Vec<(Vec<u8>, String)>, ClientError>;
        first_sight(i: &[u8], n: i64) -> Result<bool, ClientError>;
        prune_seen(n: i64) -> Result<(), ClientError>;
        insert_message(m: &dak_core::MessageView) -> Result<(), ClientError>;
        message(i: &[u8]) -> Result<Option<dak_core::MessageView>, ClientError>;
        conversation(c: &str, l: usize, n: i64) -> Result<Vec<dak_core::MessageView>, ClientError>;
        unread() -> Result<Vec<dak_core::MessageView>, ClientError>;
        delete_message(i: &[u8]) -> Result<(), ClientError>;
        mark_read(i: &[u8], n: i64) -> Result<(), ClientError>;
        mark_acked(i: &[u8], n: i64) -> Result<bool, ClientError>;
        edit_message(i: &[u8], t: &str, n: i64) -> Result<(), ClientError>;
        tombstone_message(i: &[u8]) -> Result<(), ClientError>;
        purge_expired(n: i64) -> Result<usize, ClientError>;
        add_recipient(i: &[u8], p: &str, d: u64) -> Result<(), ClientError>;
        update_receipt(i: &[u8], d: u64, r: bool, n: i64) -> Result<(), ClientError>;
        recipients(i: &[u8]) -> Result<Vec<dak_core::RecipientState>, ClientError>;
        queue_outgoing(i: &[u8], t: &str, b: &[u8]) -> Result<(), ClientError>;
        outbox() -> Result<Vec<dak_core::OutboxEntry>, ClientError>;
        remove_outgoing(i: &[u8]) -> Result<(), ClientError>;
        group_state_bytes(g: &[u8]) -> Result<Option<Vec<u8>>, ClientError>;
        set_group_state(g: &[u8], s: &dak_proto::v1::GroupState, n: i64) -> Result<(), ClientError>;
        add_leaver(g: &[u8], p: &str) -> Result<(), ClientError>;
        leavers(g: &[u8]) -> Result<Vec<String>, ClientError>;
        clear_leaver(g: &[u8], p: &str) -> Result<(), ClientError>;
        add_join_request(g: &[u8], p: &str, n: i64) -> Result<(), ClientError>;
        join_requests(g: &[u8]) -> Result<Vec<String>, ClientError>;
        remove_join_request(g: &[u8], p: &str) -> Result<(), ClientError>;
        set_reaction(i: &[u8], p: &str, e: &str, n: i64) -> Result<(), ClientError>;
        reactions(i: &[u8]) -> Result<Vec<(String, String)>, ClientError>;
        chat_timer(c: &str) -> Result<u32, ClientError>;
        set_chat_timer(c: &str, s: u32) -> Result<(), ClientError>;
        set_broadcast_list(n: &str, m: &[String]) -> Result<(), ClientError>;
        delete_broadcast_list(n: &str) -> Result<bool, ClientError>;
        broadcast_lists() -> Result<Vec<(String, Vec<String>)>, ClientError>;
    }
}

fn read(to: &TestDevice, ct: &[u8]) -> Vec<u8> {
    match to.mls().process(ct).unwrap() {
        Incoming::Application { plaintext, .. } => plaintext,
        other => panic!("expected an application message, got {other:?}"),
    }
}

#[test]
fn a_device_rebuilt_from_its_journal_goes_on_with_its_conversation() {
    let sink = VecSink::default();
    let alice = TestDevice::on(journaled(&sink), "+919800000001", 1);
    let bob = TestDevice::new("+919800000002", 2);
    let (group, out) = alice.start_group_with(&bob).unwrap();
    assert!(matches!(
        bob.mls().process(&out.welcome.unwrap()).unwrap(),
        Incoming::Joined { .. }
    ));
    for i in 0..5 {
        let ct = bob
            .mls()
            .encrypt(&group, format!("m{i}").as_bytes())
            .unwrap();
        assert_eq!(read(&alice, &ct), format!("m{i}").as_bytes());
        let ct = alice.mls().encrypt(&group, b"ok").unwrap();
        assert_eq!(read(&bob, &ct), b"ok");
    }
    let key = alice.profile.identity().unwrap();

    // The tab closes; a new one rebuilds alice from the journal alone.
    let journal = sink.bytes.lock().clone();
    // fuzz/seeds/journal/conversation is this journal (see fuzz/README.md).
    if let Some(path) = std::env::var_os("DAK_WRITE_JOURNAL_SEED") {
        std::fs::write(path, &journal).unwrap();
    }
    let store = MemoryStore::new();
    let r = replay(&store, &journal).unwrap();
    assert!(r.frames > 10, "{r:?}");
    assert_eq!((r.kept_bytes, r.dropped_bytes), (journal.len(), 0));
    let again = VecSink::default();
    again.bytes.lock().extend_from_slice(&journal);
    let alice = TestDevice::on(
        Box::new(JournaledStore::new(store, Box::new(again.clone()))),
        "+919800000001",
        1,
    );
    assert_eq!(alice.profile.identity().unwrap().to_bytes(), key.to_bytes());
    let ct = bob.mls().encrypt(&group, b"after the reload").unwrap();
    assert_eq!(read(&alice, &ct), b"after the reload");
    let ct = alice.mls().encrypt(&group, b"still here").unwrap();
    assert_eq!(read(&bob, &ct), b"still here");

    // Compacted: a snapshot of what the journal rebuilt is a fraction of
    // it, and a device rebuilt from the snapshot alone goes on too.
    let rebuilt = MemoryStore::new();
    replay(&rebuilt, &again.bytes.lock()).unwrap();
    let compacted: Vec<u8> = snapshot(&rebuilt, 1).unwrap().concat();
    assert!(
        compacted.len() * 2 < again.bytes.lock().len(),
        "{} of {}",
        compacted.len(),
        again.bytes.lock().len()
    );
    let store = MemoryStore::new();
    replay(&store, &compacted).unwrap();
    let alice = TestDevice::on(
        Box::new(JournaledStore::new(store, Box::new(VecSink::default()))),
        "+919800000001",
        1,
    );
    let ct = bob.mls().encrypt(&group, b"after compaction").unwrap();
    assert_eq!(read(&alice, &ct), b"after compaction");
    // A snapshot cut short is never opened instead of a journal with
    // something in it: it holds nothing (generation 0, no valid bytes).
    let torn = &compacted[..compacted.len() - 1];
    let i = inspect(torn);
    assert_eq!((i.generation, i.valid_bytes), (0, 0), "{i:?}");
    assert!(
        inspect(&[]).complete,
        "an empty journal is an empty profile"
    );
    // Cut after a first whole frame of several, it is incomplete.
    let two_part = {
        let big = MemoryStore::new();
        big.set("big", &vec![7u8; 9 << 20]).unwrap();
        big.set("more", &vec![8u8; 9 << 20]).unwrap();
        snapshot(&big, 3).unwrap()
    };
    assert!(two_part.len() >= 2, "split into frames of at most 8 MiB");
    let i = inspect(&two_part[0]);
    assert!(i.generation == 3 && !i.complete, "{i:?}");
    assert!(inspect(&two_part.concat()).complete);
    assert!(
        !worth_compacting(&inspect(&compacted), 0),
        "a fresh snapshot is not"
    );
    assert!(worth_compacting(&inspect(&again.bytes.lock()), 0));
    assert!(!worth_compacting(
        &inspect(&again.bytes.lock()),
        dak_core::journal::COMPACT_OVER_BYTES
    ));

    // A torn last frame (the tab died mid-write) is dropped whole.
    let mut torn = again.bytes.lock().clone();
    let whole = torn.len();
    torn.extend_from_slice(&[200, 0, 0, 0, 1, 2, 3]);
    let r = replay(&MemoryStore::new(), &torn).unwrap();
    assert_eq!((r.kept_bytes, r.dropped_bytes), (whole, 7));
    // A flipped bit in the last frame fails its checksum.
    let mut flipped = again.bytes.lock().clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    let r = replay(&MemoryStore::new(), &flipped).unwrap();
    assert!(r.dropped_bytes > 0 && r.kept_bytes < whole, "{r:?}");
}

#[test]
fn a_commit_whose_journal_append_fails_is_rolled_back() {
    let sink = VecSink::default();
    let store = journaled(&sink);
    store.set("kept", b"1").unwrap();
    *sink.fail.lock() = true;
    store.begin(Bracket::Transaction).unwrap();
    store.set("lost", b"2").unwrap();
    let e = store.commit(Bracket::Transaction).unwrap_err();
    assert!(e.to_string().contains("disk full"), "{e}");
    assert_eq!(store.get("lost").unwrap(), None, "not committed");
    *sink.fail.lock() = false;
    // The store goes on, and its journal holds exactly what committed.
    store.begin(Bracket::Transaction).unwrap();
    store.begin(Bracket::Savepoint).unwrap();
    store.set("undone", b"3").unwrap();
    store.rollback(Bracket::Savepoint).unwrap();
    store.begin(Bracket::Savepoint).unwrap();
    store.set("nested", b"4").unwrap();
    store.commit(Bracket::Savepoint).unwrap();
    store.commit(Bracket::Transaction).unwrap();
    let copy = MemoryStore::new();
    replay(&copy, &sink.bytes.lock()).unwrap();
    assert_eq!(copy.get("kept").unwrap(), Some(b"1".to_vec()));
    assert_eq!(copy.get("lost").unwrap(), None);
    assert_eq!(copy.get("undone").unwrap(), None);
    assert_eq!(copy.get("nested").unwrap(), Some(b"4".to_vec()));
}

#[test]
fn a_journal_compacts_in_place_between_brackets_and_replays_to_the_same_state() {
    let sink = VecSink::default();
    let store = JournaledStore::new(MemoryStore::new(), Box::new(sink.clone()));
    // A journal that grows while the state does not: one value rewritten.
    for i in 0..1000u32 {
        store.set("k", &[i as u8; 100]).unwrap();
    }
    let grown = sink.bytes.lock().len();
    assert_eq!(store.compact(grown).unwrap(), None, "not past `over`");
    // Inside a bracket: never.
    store.begin(Bracket::Transaction).unwrap();
    assert_eq!(store.compact(0).unwrap(), None);
    store.commit(Bracket::Transaction).unwrap();
    // A sink that cannot replace it this time: asked again only once the
    // journal has doubled.
    *sink.fail.lock() = true;
    assert_eq!(store.compact(0).unwrap(), None);
    *sink.fail.lock() = false;
    assert_eq!(store.compact(0).unwrap(), None, "not doubled since");
    for i in 0..1100u32 {
        store.set("k", &[i as u8; 100]).unwrap();
    }
    let before = sink.bytes.lock().len();
    let compacted = store.compact(0).unwrap().expect("compacted");
    assert_eq!(sink.bytes.lock().len(), compacted);
    assert!(compacted * 100 < before, "{compacted} of {before}");
    let found = inspect(&sink.bytes.lock());
    assert!(found.complete && found.generation == 1, "{found:?}");
    // Writes go on after the snapshot; a replay has all of them.
    store.set("after", b"yes").unwrap();
    let copy = MemoryStore::new();
    let r = replay(&copy, &sink.bytes.lock()).unwrap();
    assert_eq!(r.dropped_bytes, 0);
    assert_eq!(copy.get("k").unwrap(), store.get("k").unwrap());
    assert_eq!(copy.get("after").unwrap(), Some(b"yes".to_vec()));
    assert_eq!(snapshot(&copy, 1).unwrap(), snapshot(&store, 1).unwrap());
    assert_eq!(store.compact(0).unwrap(), None, "not doubled since");
}
