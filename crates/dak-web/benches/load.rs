//! What Dak Web's stored profile costs: `cargo bench -p dak-web --bench load`.
//!
//! 1. **Opening a big profile.** A journal (`dak_core::journal`) holding
//!    1,000 conversations and 100,000 messages (100 each, ~60-byte texts,
//!    every third one ours and acked) is replayed into a fresh
//!    `MemoryStore`, as a tab does when it opens; then the chat list
//!    (`views::chat_list`) and one chat's newest page (`views::messages`,
//!    200 of its messages) are read, as the page does next. Criterion
//!    times each step; the journal's size is printed.
//! 2. **What a message adds to the journal.** Alice's profile is
//!    journalled while she and bob exchange 200 messages in a real MLS 1:1
//!    group (each received one stored as the client stores it: first
//!    sight, MLS processing and the message row in one transaction); the
//!    journal's bytes per message are printed. openmls rewrites the
//!    group's state on every message, so this is the journal's growth
//!    until the next compaction; a snapshot of the profile (what
//!    compaction writes) is printed beside it, and the big profile's
//!    snapshot is timed.
//!
//! Measured natively (the same Rust as in the browser, without
//! WebAssembly's overhead or OPFS reads). In test mode (`cargo test
//! --benches`) the profile is 100 conversations of 10 messages and the
//! exchange 10 messages.

use std::hint::black_box;
use std::sync::Arc;

use criterion::Criterion;
use dak_core::journal::{JournalSink, JournaledStore, replay, snapshot};
use dak_core::memory::MemoryStore;
use dak_core::mls::Incoming;
use dak_core::testing::{TestDevice, text_message};
use dak_core::{
    Bracket, ClientError, ConversationId, MessageView, Profile, ProfileStore, TestEnvironment,
};
use dak_web::views::{CHAT_PAGE, chat_list, messages};
use parking_lot::Mutex;

#[derive(Clone, Default)]
struct VecSink(Arc<Mutex<Vec<u8>>>);

impl JournalSink for VecSink {
    fn append(&self, frame: &[u8]) -> Result<(), ClientError> {
        self.0.lock().extend_from_slice(frame);
        Ok(())
    }
}

const ME: &str = "+919800000001";

/// A journal of `chats` conversations with `per_chat` messages each.
fn big_journal(chats: usize, per_chat: usize) -> Vec<u8> {
    let sink = VecSink::default();
    let store = JournaledStore::new(MemoryStore::new(), Box::new(sink.clone()));
    store.set("phone", ME.as_bytes()).unwrap();
    store.set("server", b"wss://127.0.0.1:7443").unwrap();
    store.set("device_id", b"1").unwrap();
    let t0 = 1_700_000_000_000i64;
    for c in 0..chats {
        let peer = format!("+9198{:08}", 10_000 + c);
        let mut group = [0u8; 16];
        group[..8].copy_from_slice(&(c as u64).to_le_bytes());
        // One transaction per ten messages, as a client receiving a batch.
        store.begin(Bracket::Transaction).unwrap();
        store.add_conversation(&group, &peer, t0).unwrap();
        for m in 0..per_chat {
            let n = (c * per_chat + m) as u64;
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&n.to_le_bytes());
            let outgoing = m % 3 == 2;
            let at = t0 + n as i64 * 1000;
            store
                .insert_message(&MessageView {
                    read_ms: if outgoing || m + 1 < per_chat { at } else { 0 },
                    ..text_message(
                        id.to_vec(),
                        ConversationId::Direct(peer.clone()),
                        if outgoing { ME } else { &peer },
                        outgoing,
                        &format!("message {n} of a conversation, about sixty bytes long."),
                        at,
                    )
                })
                .unwrap();
            if outgoing {
                store.add_recipient(&id, &peer, 2).unwrap();
                store.update_receipt(&id, 2, true, at + 500).unwrap();
            }
            if m % 10 == 9 {
                store.commit(Bracket::Transaction).unwrap();
                store.begin(Bracket::Transaction).unwrap();
            }
        }
        store.commit(Bracket::Transaction).unwrap();
    }
    sink.0.lock().clone()
}

fn open(journal: &[u8]) -> Profile {
    let store = MemoryStore::new();
    replay(&store, journal).unwrap();
    Profile::new(
        Box::new(store),
        Box::new(TestEnvironment::new(1, 1_800_000_000_000)),
    )
}

/// Journal bytes per message in a real MLS 1:1 conversation, and the
/// journal's and its snapshot's (compacted) size at the end.
fn bytes_per_message(rounds: usize) -> (f64, usize, usize) {
    let sink = VecSink::default();
    let alice = TestDevice::on(
        Box::new(JournaledStore::new(
            MemoryStore::new(),
            Box::new(sink.clone()),
        )),
        ME,
        1,
    );
    let bob = TestDevice::new("+919800000002", 2);
    let (group, out) = alice.start_group_with(&bob).unwrap();
    assert!(matches!(
        bob.mls().process(&out.welcome.unwrap()).unwrap(),
        Incoming::Joined { .. }
    ));
    let before = sink.0.lock().len();
    for i in 0..rounds {
        let ct = bob
            .mls()
            .encrypt(&group, format!("hello {i}").as_bytes())
            .unwrap();
        let id = format!("{i:016}").into_bytes();
        alice
            .profile
            .transaction(|p| {
                p.first_sight(&id, 0)?;
                let Incoming::Application { plaintext, .. } = alice.mls().process(&ct)? else {
                    panic!("not an application message");
                };
                p.insert_message(&MessageView {
                    from_device: 2,
                    ..text_message(
                        id.clone(),
                        ConversationId::Direct(bob.phone.clone()),
                        &bob.phone,
                        false,
                        &String::from_utf8(plaintext).unwrap(),
                        0,
                    )
                })
            })
            .unwrap();
    }
    let journal = sink.0.lock().clone();
    let rebuilt = MemoryStore::new();
    replay(&rebuilt, &journal).unwrap();
    let compacted: usize = snapshot(&rebuilt, 1).unwrap().iter().map(Vec::len).sum();
    (
        (journal.len() - before) as f64 / rounds as f64,
        journal.len(),
        compacted,
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    let test_mode = has("--test") || !has("--bench");
    let (chats, per_chat, rounds) = if test_mode {
        (100, 10, 10)
    } else {
        (1000, 100, 200)
    };

    let journal = big_journal(chats, per_chat);
    let profile = open(&journal);
    let list = chat_list(&profile).unwrap();
    assert_eq!(list.len(), chats);
    let busiest = list[0].key.clone();
    assert_eq!(
        messages(&profile, &busiest, CHAT_PAGE).unwrap().len(),
        per_chat.min(CHAT_PAGE)
    );

    let mut c = Criterion::default().configure_from_args();
    let mut g = c.benchmark_group(format!("profile of {chats} chats x {per_chat} messages"));
    g.sample_size(10);
    g.bench_function("replay the journal", |b| {
        b.iter(|| black_box(open(&journal)))
    });
    g.bench_function("chat list", |b| {
        b.iter(|| black_box(chat_list(&profile).unwrap()))
    });
    g.bench_function("open a chat (newest 200)", |b| {
        b.iter(|| black_box(messages(&profile, &busiest, CHAT_PAGE).unwrap()))
    });
    let store = MemoryStore::new();
    replay(&store, &journal).unwrap();
    g.bench_function("compact (snapshot the profile)", |b| {
        b.iter(|| black_box(snapshot(&store, 1).unwrap()))
    });
    g.finish();
    c.final_summary();

    println!(
        "journal of {chats} chats x {per_chat} messages: {} bytes ({:.0} bytes per message)",
        journal.len(),
        journal.len() as f64 / (chats * per_chat) as f64
    );
    let snapshot_bytes: usize = snapshot(&store, 1).unwrap().iter().map(Vec::len).sum();
    println!("its snapshot (compacted): {snapshot_bytes} bytes");
    let (per_message, journal_bytes, compacted) = bytes_per_message(rounds);
    println!(
        "a received message in a real MLS 1:1 group adds {per_message:.0} bytes to the journal (mean of {rounds}); after them the journal is {journal_bytes} bytes, its snapshot {compacted}"
    );
}
