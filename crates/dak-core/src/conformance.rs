//! Behaviour every `ProfileStore` backend must show. Each backend's tests
//! call `run_all` with a factory of fresh, empty stores (every case gets its
//! own), so the SQLite store, the in-memory one and any browser store are
//! held to one definition of correct. Each case is public too, so a backend
//! under investigation can run one alone.
//!
//! Cases panic, naming the call or the check that failed. They use no
//! threads, files or clock (times are literals), so they run as they are
//! under `wasm-bindgen-test`.

use dak_proto::v1;
use prost::Message;

use crate::ClientError;
use crate::store::{Bracket, MessageView, ProfileStore, Quote, RecipientState};

/// The value of a store call, or a panic naming the call and its error.
macro_rules! must {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => panic!("conformance: `{}` failed: {e}", stringify!($e)),
        }
    };
}

/// A case: panics unless the store (fresh and empty) behaves.
pub type Case = fn(&dyn ProfileStore);

/// Its name and the function.
macro_rules! cases {
    ($($case:ident),* $(,)?) => {
        &[$((stringify!($case), $case as Case)),*]
    };
}

/// Every case, by name.
pub const CASES: &[(&str, Case)] = cases![
    settings_round_trip,
    mls_records_are_keyed_by_label_and_key,
    conversations_pick_the_newest_active_group,
    first_sight_dedups_until_pruned,
    messages_are_inserted_once,
    conversation_lists_the_last_unexpired,
    unread_and_mark_read,
    mark_acked_reports_missing_messages,
    edits_skip_deleted_messages,
    tombstone_clears_text_quotes_and_reactions,
    purge_expired_takes_reactions_and_receipts,
    receipts_fill_only_once,
    outbox_keeps_queue_order,
    group_state_round_trip,
    leavers_and_join_requests_in_order,
    reactions_upsert_and_remove,
    chat_timer_defaults_to_off,
    broadcast_lists_by_name,
    data_version_ignores_own_writes,
    brackets_must_match,
    transaction_commit_keeps,
    transaction_rollback_discards,
    rollback_undoes_every_kind_of_write,
    savepoint_rollback_discards_only_its_writes,
    nested_savepoints,
    order_after_rollback_still_increases,
];

/// Runs every case, each on a fresh store from `make`.
pub fn run_all(make: &dyn Fn() -> Box<dyn ProfileStore>) {
    for (name, case) in CASES {
        tracing::debug!(case = name, "profile store conformance");
        let store = make();
        case(&*store);
    }
}

// ---- fixtures ----

const A: &str = "+911000000001";
const B: &str = "+911000000002";
const C: &str = "+911000000003";
const G1: &[u8] = b"group-one";
const G2: &[u8] = b"group-two";
const G3: &[u8] = b"group-three";

/// A message id (16 bytes, like a UUIDv7).
fn id(n: u8) -> Vec<u8> {
    vec![n; 16]
}

/// An incoming message `n` in `conversation`.
fn msg(n: u8, conversation: &str) -> MessageView {
    MessageView {
        id: id(n),
        conversation: conversation.into(),
        from: conversation.into(),
        from_device: 1,
        outgoing: false,
        text: format!("text {n}"),
        sent_at_ms: 1_000 + n as i64,
        server_time_ms: 2_000 + n as i64,
        ..Default::default()
    }
}

fn outgoing(n: u8, conversation: &str) -> MessageView {
    MessageView {
        outgoing: true,
        from: C.into(),
        ..msg(n, conversation)
    }
}

fn reply(n: u8, conversation: &str, to: u8, snippet: &str) -> MessageView {
    MessageView {
        reply_to: Some(Quote {
            id: id(to),
            from: conversation.into(),
            snippet: snippet.into(),
        }),
        ..msg(n, conversation)
    }
}

fn expiring(n: u8, conversation: &str, at_ms: i64) -> MessageView {
    MessageView {
        expires_at_ms: at_ms,
        ..msg(n, conversation)
    }
}

/// The ids of messages, as their numbers.
fn numbers(ms: &[MessageView]) -> Vec<u8> {
    ms.iter().map(|m| m.id[0]).collect()
}

fn state(title: &str) -> v1::GroupState {
    v1::GroupState {
        title: title.into(),
        admins: vec![A.into()],
        expire_secs: 60,
        ..Default::default()
    }
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn store_error(r: Result<(), ClientError>, what: &str) {
    match r {
        Err(ClientError::Store { .. }) => {}
        Err(e) => panic!("conformance: {what} failed with {e:?}, not a store error"),
        Ok(()) => panic!("conformance: {what} succeeded; it must fail"),
    }
}

// ---- cases: plain rows ----

pub fn settings_round_trip(s: &dyn ProfileStore) {
    assert_eq!(must!(s.get("server")), None);
    must!(s.set("server", b"wss://a"));
    must!(s.set("phone", b""));
    assert_eq!(must!(s.get("server")), Some(b"wss://a".to_vec()));
    assert_eq!(
        must!(s.get("phone")),
        Some(Vec::new()),
        "an empty value is a value"
    );
    must!(s.set("server", b"wss://b"));
    assert_eq!(
        must!(s.get("server")),
        Some(b"wss://b".to_vec()),
        "set overwrites"
    );
    must!(s.delete("server"));
    must!(s.delete("server"));
    must!(s.delete("never-set"));
    assert_eq!(must!(s.get("server")), None, "delete removes");
    assert_eq!(
        must!(s.get("phone")),
        Some(Vec::new()),
        "delete removes one key"
    );
}

pub fn mls_records_are_keyed_by_label_and_key(s: &dyn ProfileStore) {
    assert_eq!(must!(s.mls_get(b"KeyPackage", b"k1")), None);
    must!(s.mls_put(b"KeyPackage", b"k1", b"v1"));
    assert_eq!(must!(s.mls_get(b"KeyPackage", b"k1")), Some(b"v1".to_vec()));
    assert_eq!(
        must!(s.mls_get(b"Tree", b"k1")),
        None,
        "labels separate keys"
    );
    must!(s.mls_put(b"Tree", b"k1", b"t1"));
    // Label and key are not simply concatenated.
    must!(s.mls_put(b"ab", b"c", b"abc"));
    assert_eq!(
        must!(s.mls_get(b"a", b"bc")),
        None,
        "(ab, c) is not (a, bc)"
    );
    must!(s.mls_put(b"a", b"bc", b"a-bc"));
    assert_eq!(must!(s.mls_get(b"ab", b"c")), Some(b"abc".to_vec()));
    assert_eq!(must!(s.mls_get(b"a", b"bc")), Some(b"a-bc".to_vec()));

    must!(s.mls_put(b"KeyPackage", b"k1", b"v2"));
    assert_eq!(
        must!(s.mls_get(b"KeyPackage", b"k1")),
        Some(b"v2".to_vec()),
        "put overwrites"
    );
    assert_eq!(must!(s.mls_get(b"Tree", b"k1")), Some(b"t1".to_vec()));
    must!(s.mls_delete(b"KeyPackage", b"k1"));
    must!(s.mls_delete(b"KeyPackage", b"absent"));
    assert_eq!(
        must!(s.mls_get(b"KeyPackage", b"k1")),
        None,
        "delete removes"
    );
    assert_eq!(
        must!(s.mls_get(b"Tree", b"k1")),
        Some(b"t1".to_vec()),
        "only its label"
    );

    // Group state can be large.
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    must!(s.mls_put(b"Tree", &[0, 1, 255], &big));
    assert_eq!(must!(s.mls_get(b"Tree", &[0, 1, 255])), Some(big));
}

pub fn conversations_pick_the_newest_active_group(s: &dyn ProfileStore) {
    assert_eq!(must!(s.group_for(A)), None);
    assert_eq!(must!(s.conversation_active(G1)), None, "never known");
    assert_eq!(must!(s.peer_of(G1)), None);

    must!(s.add_conversation(G1, A, 100));
    must!(s.add_conversation(G2, A, 200));
    assert_eq!(must!(s.group_for(A)), Some(G2.to_vec()), "the newest");
    assert_eq!(must!(s.conversation_active(G1)), Some(true));
    assert_eq!(must!(s.peer_of(G1)), Some(A.to_string()));

    must!(s.retire_conversation(G2));
    assert_eq!(must!(s.conversation_active(G2)), Some(false));
    assert_eq!(
        must!(s.peer_of(G2)),
        Some(A.to_string()),
        "a retired group keeps its peer"
    );
    assert_eq!(
        must!(s.group_for(A)),
        Some(G1.to_vec()),
        "the newest active"
    );

    // Adding again reactivates it, as created: its time and peer stay.
    must!(s.add_conversation(G2, C, 50));
    assert_eq!(must!(s.conversation_active(G2)), Some(true));
    assert_eq!(must!(s.peer_of(G2)), Some(A.to_string()));
    assert_eq!(must!(s.group_for(A)), Some(G2.to_vec()));
    assert_eq!(must!(s.group_for(C)), None);
    must!(s.add_conversation(G1, A, 900));
    assert_eq!(
        must!(s.group_for(A)),
        Some(G2.to_vec()),
        "re-adding an active group does not make it newer"
    );

    must!(s.retire_conversation(G1));
    must!(s.retire_conversation(G2));
    must!(s.retire_conversation(b"unknown"));
    assert_eq!(must!(s.group_for(A)), None, "no active group");
    assert_eq!(must!(s.conversation_active(b"unknown")), None);

    // Created at the same time: the one added last wins, whatever its id.
    must!(s.add_conversation(b"zz", B, 500));
    must!(s.add_conversation(b"aa", B, 500));
    assert_eq!(
        must!(s.group_for(B)),
        Some(b"aa".to_vec()),
        "tie: added last"
    );
    must!(s.add_conversation(b"bb", C, 500));
    must!(s.add_conversation(b"cc", C, 500));
    assert_eq!(
        must!(s.group_for(C)),
        Some(b"cc".to_vec()),
        "tie: added last"
    );

    must!(s.add_conversation(G3, A, 1));
    assert_eq!(
        must!(s.active_groups()),
        vec![
            (G3.to_vec(), A.to_string()),
            (b"aa".to_vec(), B.to_string()),
            (b"zz".to_vec(), B.to_string()),
            (b"bb".to_vec(), C.to_string()),
            (b"cc".to_vec(), C.to_string()),
        ],
        "active groups, by peer then group"
    );
}

pub fn first_sight_dedups_until_pruned(s: &dyn ProfileStore) {
    assert!(must!(s.first_sight(&id(1), 100)), "first sight");
    assert!(!must!(s.first_sight(&id(1), 150)), "seen already");
    assert!(must!(s.first_sight(&id(2), 200)));
    must!(s.prune_seen(200));
    assert!(must!(s.first_sight(&id(1), 300)), "pruned: seen before 200");
    assert!(!must!(s.first_sight(&id(2), 300)), "kept: seen at 200");
    must!(s.prune_seen(301));
    assert!(must!(s.first_sight(&id(2), 400)));
}

pub fn messages_are_inserted_once(s: &dyn ProfileStore) {
    assert_eq!(must!(s.message(&id(1))), None);
    let first = MessageView {
        forwarded: 3,
        edited_ms: 7,
        read_ms: 9,
        acked: true,
        from_device: 4,
        ..reply(1, A, 9, "quoted")
    };
    must!(s.insert_message(&first));
    assert_eq!(
        must!(s.message(&id(1))),
        Some(first.clone()),
        "every field round-trips"
    );
    must!(s.insert_message(&MessageView {
        text: "other".into(),
        ..msg(1, B)
    }));
    assert_eq!(
        must!(s.message(&id(1))),
        Some(first.clone()),
        "insert never overwrites"
    );
    assert_eq!(numbers(&must!(s.conversation(B, 10, 0))), Vec::<u8>::new());

    let out = outgoing(2, A);
    must!(s.insert_message(&out));
    assert_eq!(must!(s.message(&id(2))), Some(out));
    must!(s.insert_message(&msg(3, A)));
    assert_eq!(numbers(&must!(s.conversation(A, 10, 0))), vec![1, 2, 3]);

    must!(s.delete_message(&id(1)));
    must!(s.delete_message(&id(99)));
    assert_eq!(must!(s.message(&id(1))), None, "deleted");
    assert_eq!(numbers(&must!(s.conversation(A, 10, 0))), vec![2, 3]);
    must!(s.insert_message(&first));
    assert_eq!(
        numbers(&must!(s.conversation(A, 10, 0))),
        vec![2, 3, 1],
        "inserted again: last"
    );
}

pub fn conversation_lists_the_last_unexpired(s: &dyn ProfileStore) {
    // Ids out of insertion order: order is insertion, not id or time.
    must!(s.insert_message(&msg(5, A)));
    must!(s.insert_message(&msg(1, "+91")));
    must!(s.insert_message(&msg(4, A)));
    must!(s.insert_message(&expiring(3, A, 1_000)));
    must!(s.insert_message(&msg(9, "+9110000000010")));
    must!(s.insert_message(&expiring(2, A, 2_000)));
    must!(s.insert_message(&expiring(6, A, 1_500)));

    assert_eq!(
        numbers(&must!(s.conversation(A, 100, 0))),
        vec![5, 4, 3, 2, 6]
    );
    assert_eq!(
        numbers(&must!(s.conversation(A, 2, 0))),
        vec![2, 6],
        "the last 2, oldest first"
    );
    assert_eq!(numbers(&must!(s.conversation(A, 0, 0))), Vec::<u8>::new());
    assert_eq!(
        numbers(&must!(s.conversation(A, 100, 999))),
        vec![5, 4, 3, 2, 6]
    );
    assert_eq!(
        numbers(&must!(s.conversation(A, 100, 1_000))),
        vec![5, 4, 2, 6],
        "expired at exactly its time"
    );
    assert_eq!(
        numbers(&must!(s.conversation(A, 3, 1_500))),
        vec![5, 4, 2],
        "the limit counts unexpired messages only"
    );
    assert_eq!(numbers(&must!(s.conversation(A, 100, 5_000))), vec![5, 4]);
    assert_eq!(
        numbers(&must!(s.conversation("+91", 100, 0))),
        vec![1],
        "exact match"
    );
    assert_eq!(
        numbers(&must!(s.conversation("+9", 100, 0))),
        Vec::<u8>::new()
    );
    assert_eq!(
        numbers(&must!(s.conversation("+9110000000010", 100, 0))),
        vec![9]
    );
}

pub fn unread_and_mark_read(s: &dyn ProfileStore) {
    must!(s.insert_message(&msg(3, A)));
    must!(s.insert_message(&outgoing(1, A)));
    must!(s.insert_message(&msg(2, B)));
    must!(s.insert_message(&MessageView {
        read_ms: 5,
        ..msg(4, A)
    }));
    must!(s.insert_message(&msg(5, A)));
    assert_eq!(
        numbers(&must!(s.unread())),
        vec![3, 2, 5],
        "incoming, unread, in insertion order"
    );
    must!(s.mark_read(&id(2), 100));
    must!(s.mark_read(&id(2), 200));
    must!(s.mark_read(&id(99), 200));
    assert_eq!(
        must!(s.message(&id(2))).map(|m| m.read_ms),
        Some(100),
        "read once"
    );
    must!(s.mark_read(&id(4), 300));
    assert_eq!(must!(s.message(&id(4))).map(|m| m.read_ms), Some(5));
    assert_eq!(numbers(&must!(s.unread())), vec![3, 5]);
}

pub fn mark_acked_reports_missing_messages(s: &dyn ProfileStore) {
    must!(s.insert_message(&outgoing(1, A)));
    assert!(!must!(s.mark_acked(&id(2), 500)), "no such message");
    assert!(must!(s.mark_acked(&id(1), 500)));
    let m = must!(s.message(&id(1)));
    assert_eq!(
        m.as_ref().map(|m| (m.acked, m.server_time_ms)),
        Some((true, 500))
    );
    assert!(must!(s.mark_acked(&id(1), 600)), "acked again: it exists");
    assert_eq!(must!(s.message(&id(2))), None, "ack inserts nothing");
}

pub fn edits_skip_deleted_messages(s: &dyn ProfileStore) {
    must!(s.insert_message(&msg(1, A)));
    must!(s.edit_message(&id(1), "fixed", 50));
    must!(s.edit_message(&id(9), "nothing", 50));
    let m = must!(s.message(&id(1)));
    assert_eq!(
        m.as_ref().map(|m| (m.text.as_str(), m.edited_ms)),
        Some(("fixed", 50))
    );
    must!(s.tombstone_message(&id(1)));
    must!(s.edit_message(&id(1), "back", 60));
    let m = must!(s.message(&id(1)));
    assert_eq!(
        m.as_ref()
            .map(|m| (m.text.as_str(), m.edited_ms, m.deleted)),
        Some(("", 50, true)),
        "an edit does not bring back a deleted message"
    );
}

pub fn tombstone_clears_text_quotes_and_reactions(s: &dyn ProfileStore) {
    must!(s.insert_message(&msg(1, A)));
    must!(s.insert_message(&reply(2, A, 1, "text 1")));
    must!(s.insert_message(&reply(3, A, 2, "text 2")));
    must!(s.insert_message(&reply(4, B, 2, "text 2 forwarded")));
    must!(s.set_reaction(&id(2), A, "👍", 1));
    must!(s.set_reaction(&id(2), B, "❤", 2));
    must!(s.set_reaction(&id(3), A, "😂", 3));

    must!(s.tombstone_message(&id(2)));
    let gone = must!(s.message(&id(2)));
    let Some(gone) = gone else {
        panic!("conformance: a tombstoned message keeps its row");
    };
    assert!(gone.deleted);
    assert_eq!(gone.text, "");
    assert_eq!(
        gone.reply_to,
        Some(Quote {
            id: id(1),
            from: A.into(),
            snippet: String::new(),
        }),
        "its own quote keeps its target but not the words"
    );
    assert_eq!(gone.sent_at_ms, msg(2, A).sent_at_ms, "the rest stays");
    for n in [3, 4] {
        let r = must!(s.message(&id(n)));
        assert_eq!(
            r.and_then(|m| m.reply_to),
            Some(Quote {
                id: id(2),
                from: if n == 3 { A.into() } else { B.into() },
                snippet: String::new(),
            }),
            "a reply keeps pointing at it, without its words"
        );
    }
    assert_eq!(must!(s.reactions(&id(2))), Vec::new(), "its reactions go");
    assert_eq!(
        must!(s.reactions(&id(3))),
        vec![(A.to_string(), "😂".to_string())],
        "others' reactions stay"
    );
    assert_eq!(
        must!(s.message(&id(1))).map(|m| (m.text, m.deleted)),
        Some(("text 1".to_string(), false)),
        "the message it quoted is untouched"
    );
    must!(s.tombstone_message(&id(99)));
}

pub fn purge_expired_takes_reactions_and_receipts(s: &dyn ProfileStore) {
    must!(s.insert_message(&expiring(1, A, 100)));
    must!(s.insert_message(&expiring(2, A, 200)));
    must!(s.insert_message(&msg(3, A)));
    for n in 1..=3 {
        must!(s.set_reaction(&id(n), B, "👍", 1));
        must!(s.add_recipient(&id(n), A, 1));
    }
    assert_eq!(must!(s.purge_expired(99)), 0);
    assert_eq!(must!(s.purge_expired(150)), 1);
    assert_eq!(must!(s.message(&id(1))), None, "expired: gone");
    assert_eq!(must!(s.reactions(&id(1))), Vec::new(), "with its reactions");
    assert_eq!(must!(s.recipients(&id(1))), Vec::new(), "and its receipts");
    assert_eq!(must!(s.reactions(&id(2))).len(), 1);
    assert_eq!(must!(s.recipients(&id(2))).len(), 1);
    assert_eq!(must!(s.purge_expired(200)), 1, "at exactly its time");
    assert_eq!(must!(s.purge_expired(200)), 0);
    assert_eq!(must!(s.purge_expired(i64::MAX)), 0, "never expires");
    assert_eq!(numbers(&must!(s.conversation(A, 10, 0))), vec![3]);
    assert_eq!(must!(s.reactions(&id(3))).len(), 1);
    assert_eq!(must!(s.recipients(&id(3))).len(), 1);
}

pub fn receipts_fill_only_once(s: &dyn ProfileStore) {
    let m = id(1);
    assert_eq!(must!(s.recipients(&m)), Vec::new());
    must!(s.add_recipient(&m, C, 1));
    must!(s.add_recipient(&m, B, 7));
    must!(s.add_recipient(&m, B, 3));
    must!(s.add_recipient(&m, A, 1));
    must!(s.add_recipient(&id(2), A, 5));
    let row = |phone: &str, device_id, delivered_ms, read_ms| RecipientState {
        phone: phone.into(),
        device_id,
        delivered_ms,
        read_ms,
    };
    assert_eq!(
        must!(s.recipients(&m)),
        vec![row(B, 3, 0, 0), row(B, 7, 0, 0), row(C, 1, 0, 0)],
        "by phone then device; a device is one row (the first add wins)"
    );

    must!(s.update_receipt(&m, 3, false, 100));
    must!(s.update_receipt(&m, 7, true, 150));
    must!(s.update_receipt(&m, 9, true, 150));
    assert_eq!(
        must!(s.recipients(&m)),
        vec![row(B, 3, 100, 0), row(B, 7, 150, 150), row(C, 1, 0, 0)],
        "delivered; read implies delivered; no row for an unknown device"
    );
    must!(s.update_receipt(&m, 3, false, 200));
    must!(s.update_receipt(&m, 3, true, 300));
    must!(s.update_receipt(&m, 7, true, 400));
    must!(s.update_receipt(&m, 7, false, 400));
    must!(s.add_recipient(&m, B, 3));
    assert_eq!(
        must!(s.recipients(&m)),
        vec![row(B, 3, 100, 300), row(B, 7, 150, 150), row(C, 1, 0, 0)],
        "each time is set once; adding again resets nothing"
    );
    assert_eq!(must!(s.recipients(&id(2))), vec![row(A, 5, 0, 0)]);
}

pub fn outbox_keeps_queue_order(s: &dyn ProfileStore) {
    assert_eq!(must!(s.outbox()), Vec::new());
    must!(s.queue_outgoing(&id(3), A, b"three"));
    must!(s.queue_outgoing(&id(1), B, b"one"));
    must!(s.queue_outgoing(&id(2), &crate::group_key(G1), b"two"));
    must!(s.queue_outgoing(&id(3), C, b"again"));
    let entry = |n: u8, to: &str, body: &[u8]| (id(n), to.to_string(), body.to_vec());
    assert_eq!(
        must!(s.outbox()),
        vec![
            entry(3, A, b"three"),
            entry(1, B, b"one"),
            entry(2, &crate::group_key(G1), b"two"),
        ],
        "queue order; queueing again changes nothing"
    );
    must!(s.remove_outgoing(&id(1)));
    must!(s.remove_outgoing(&id(9)));
    must!(s.queue_outgoing(&id(1), B, b"one again"));
    assert_eq!(
        must!(s.outbox()),
        vec![
            entry(3, A, b"three"),
            entry(2, &crate::group_key(G1), b"two"),
            entry(1, B, b"one again"),
        ],
        "removed, then queued last"
    );
}

pub fn group_state_round_trip(s: &dyn ProfileStore) {
    assert_eq!(must!(s.group_state_bytes(G1)), None);
    let first = state("Family");
    must!(s.set_group_state(G1, &first, 100));
    assert_eq!(must!(s.group_state_bytes(G1)), Some(first.encode_to_vec()));
    let decoded = must!(s.group_state_bytes(G1)).map(|b| v1::GroupState::decode(b.as_slice()));
    assert!(
        matches!(decoded, Some(Ok(ref g)) if *g == first),
        "decodes as stored"
    );
    let second = v1::GroupState {
        description: "everyone".into(),
        avatar: vec![7; 40_000],
        ..state("Family 2")
    };
    must!(s.set_group_state(G1, &second, 200));
    assert_eq!(
        must!(s.group_state_bytes(G1)),
        Some(second.encode_to_vec()),
        "overwritten"
    );
    assert_eq!(must!(s.group_state_bytes(G2)), None);
}

pub fn leavers_and_join_requests_in_order(s: &dyn ProfileStore) {
    assert_eq!(must!(s.leavers(G1)), Vec::<String>::new());
    for phone in [C, A, B, A] {
        must!(s.add_leaver(G1, phone));
    }
    must!(s.add_leaver(G2, B));
    assert_eq!(
        must!(s.leavers(G1)),
        strings(&[A, B, C]),
        "by phone, once each"
    );
    must!(s.clear_leaver(G1, B));
    must!(s.clear_leaver(G1, "+910"));
    assert_eq!(must!(s.leavers(G1)), strings(&[A, C]));
    assert_eq!(must!(s.leavers(G2)), strings(&[B]), "groups are separate");

    assert_eq!(must!(s.join_requests(G1)), Vec::<String>::new());
    must!(s.add_join_request(G1, C, 300));
    must!(s.add_join_request(G1, B, 200));
    must!(s.add_join_request(G1, A, 200));
    must!(s.add_join_request(G1, "+919", 100));
    must!(s.add_join_request(G1, C, 50));
    must!(s.add_join_request(G2, A, 1));
    assert_eq!(
        must!(s.join_requests(G1)),
        strings(&["+919", A, B, C]),
        "oldest first, then by phone; a repeated request keeps its time"
    );
    must!(s.remove_join_request(G1, A));
    must!(s.remove_join_request(G1, "+910"));
    assert_eq!(must!(s.join_requests(G1)), strings(&["+919", B, C]));
    assert_eq!(must!(s.join_requests(G2)), strings(&[A]));
}

pub fn reactions_upsert_and_remove(s: &dyn ProfileStore) {
    let m = id(1);
    let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
        list.iter()
            .map(|(p, e)| (p.to_string(), e.to_string()))
            .collect()
    };
    assert_eq!(must!(s.reactions(&m)), Vec::new());
    must!(s.set_reaction(&m, B, "👍", 100));
    must!(s.set_reaction(&m, A, "❤", 200));
    must!(s.set_reaction(&m, C, "😂", 100));
    must!(s.set_reaction(&id(2), A, "👍", 1));
    assert_eq!(
        must!(s.reactions(&m)),
        pairs(&[(B, "👍"), (C, "😂"), (A, "❤")]),
        "oldest first, then by phone"
    );
    must!(s.set_reaction(&m, B, "🎉", 300));
    assert_eq!(
        must!(s.reactions(&m)),
        pairs(&[(C, "😂"), (A, "❤"), (B, "🎉")]),
        "one reaction per phone: replaced, with its new time"
    );
    must!(s.set_reaction(&m, C, "", 400));
    must!(s.set_reaction(&m, "+910", "", 400));
    assert_eq!(
        must!(s.reactions(&m)),
        pairs(&[(A, "❤"), (B, "🎉")]),
        "an empty emoji removes"
    );
    assert_eq!(must!(s.reactions(&id(2))), pairs(&[(A, "👍")]));
}

pub fn chat_timer_defaults_to_off(s: &dyn ProfileStore) {
    assert_eq!(must!(s.chat_timer(A)), 0);
    must!(s.set_chat_timer(A, 86_400));
    must!(s.set_chat_timer(B, 60));
    assert_eq!(must!(s.chat_timer(A)), 86_400);
    must!(s.set_chat_timer(A, 3_600));
    assert_eq!(must!(s.chat_timer(A)), 3_600, "overwritten");
    must!(s.set_chat_timer(A, 0));
    assert_eq!(must!(s.chat_timer(A)), 0);
    assert_eq!(must!(s.chat_timer(B)), 60);
    assert_eq!(must!(s.chat_timer(C)), 0);
}

pub fn broadcast_lists_by_name(s: &dyn ProfileStore) {
    assert_eq!(must!(s.broadcast_lists()), Vec::new());
    must!(s.set_broadcast_list("work", &strings(&[B, A])));
    must!(s.set_broadcast_list("family", &strings(&[C])));
    must!(s.set_broadcast_list("empty", &[]));
    assert_eq!(
        must!(s.broadcast_lists()),
        vec![
            ("empty".to_string(), Vec::new()),
            ("family".to_string(), strings(&[C])),
            ("work".to_string(), strings(&[B, A])),
        ],
        "by name; members in the order given"
    );
    must!(s.set_broadcast_list("work", &strings(&[C])));
    assert!(must!(s.delete_broadcast_list("family")));
    assert!(!must!(s.delete_broadcast_list("family")), "no such list");
    assert!(!must!(s.delete_broadcast_list("never")));
    assert_eq!(
        must!(s.broadcast_lists()),
        vec![
            ("empty".to_string(), Vec::new()),
            ("work".to_string(), strings(&[C])),
        ]
    );
}

// ---- cases: brackets ----

pub fn data_version_ignores_own_writes(s: &dyn ProfileStore) {
    let before = must!(s.data_version());
    must!(s.set("k", b"v"));
    must!(s.begin(Bracket::Transaction));
    must!(s.insert_message(&msg(1, A)));
    must!(s.commit(Bracket::Transaction));
    assert_eq!(
        must!(s.data_version()),
        before,
        "only another handle's commits move it"
    );
}

pub fn brackets_must_match(s: &dyn ProfileStore) {
    store_error(s.commit(Bracket::Transaction), "commit with no transaction");
    store_error(
        s.rollback(Bracket::Transaction),
        "rollback with no transaction",
    );
    store_error(s.commit(Bracket::Savepoint), "commit with no savepoint");
    store_error(s.rollback(Bracket::Savepoint), "rollback with no savepoint");

    must!(s.begin(Bracket::Transaction));
    must!(s.set("k", b"1"));
    store_error(
        s.begin(Bracket::Transaction),
        "begin a transaction inside one",
    );
    must!(s.set("k", b"2"));
    must!(s.begin(Bracket::Savepoint));
    must!(s.commit(Bracket::Savepoint));
    store_error(s.commit(Bracket::Savepoint), "commit a savepoint twice");
    must!(s.commit(Bracket::Transaction));
    assert_eq!(
        must!(s.get("k")),
        Some(b"2".to_vec()),
        "a refused begin leaves the transaction as it was"
    );
    store_error(s.commit(Bracket::Transaction), "commit a transaction twice");
}

pub fn transaction_commit_keeps(s: &dyn ProfileStore) {
    must!(s.begin(Bracket::Transaction));
    must!(s.set("k", b"v"));
    must!(s.mls_put(b"L", b"k", b"m"));
    must!(s.insert_message(&msg(1, A)));
    assert_eq!(must!(s.get("k")), Some(b"v".to_vec()), "visible inside");
    assert_eq!(numbers(&must!(s.conversation(A, 10, 0))), vec![1]);
    must!(s.commit(Bracket::Transaction));
    assert_eq!(must!(s.get("k")), Some(b"v".to_vec()));
    assert_eq!(must!(s.mls_get(b"L", b"k")), Some(b"m".to_vec()));
    assert_eq!(numbers(&must!(s.conversation(A, 10, 0))), vec![1]);
}

pub fn transaction_rollback_discards(s: &dyn ProfileStore) {
    must!(s.set("k", b"before"));
    must!(s.mls_put(b"L", b"k", b"before"));
    must!(s.insert_message(&msg(1, A)));
    must!(s.begin(Bracket::Transaction));
    must!(s.set("k", b"after"));
    must!(s.set("new", b"x"));
    must!(s.mls_put(b"L", b"k", b"after"));
    must!(s.mls_put(b"L", b"new", b"x"));
    must!(s.insert_message(&msg(2, A)));
    must!(s.queue_outgoing(&id(2), A, b"two"));
    must!(s.delete_message(&id(1)));
    assert_eq!(
        must!(s.mls_get(b"L", b"k")),
        Some(b"after".to_vec()),
        "visible inside"
    );
    must!(s.rollback(Bracket::Transaction));
    assert_eq!(must!(s.get("k")), Some(b"before".to_vec()));
    assert_eq!(must!(s.get("new")), None);
    assert_eq!(
        must!(s.mls_get(b"L", b"k")),
        Some(b"before".to_vec()),
        "MLS state too"
    );
    assert_eq!(must!(s.mls_get(b"L", b"new")), None);
    assert_eq!(must!(s.message(&id(2))), None, "the insert is gone");
    assert_eq!(
        numbers(&must!(s.conversation(A, 10, 0))),
        vec![1],
        "the delete too"
    );
    assert_eq!(must!(s.outbox()), Vec::new());
    // Outside a bracket, a write stands alone.
    must!(s.set("k", b"alone"));
    assert_eq!(must!(s.get("k")), Some(b"alone".to_vec()));
}

/// Everything `fill` and `churn` touch, as the store shows it: one line
/// per read, so a mismatch names what differs.
fn snapshot(s: &dyn ProfileStore) -> Vec<String> {
    let mut out = Vec::new();
    let mut line = |what: String, value: String| out.push(format!("{what}: {value}"));
    for k in ["k1", "k2", "k3"] {
        line(format!("get {k}"), format!("{:?}", must!(s.get(k))));
    }
    for k in [&b"k1"[..], &b"k2"[..], &b"k3"[..]] {
        line(
            format!("mls_get {k:?}"),
            format!("{:?}", must!(s.mls_get(b"L", k))),
        );
    }
    for g in [G1, G2, G3] {
        line(
            format!("conversation {g:?}"),
            format!(
                "{:?} {:?}",
                must!(s.conversation_active(g)),
                must!(s.peer_of(g))
            ),
        );
        line(
            format!("group state {g:?}"),
            format!("{:?}", must!(s.group_state_bytes(g))),
        );
        line(
            format!("leavers {g:?}"),
            format!("{:?}", must!(s.leavers(g))),
        );
        line(
            format!("join requests {g:?}"),
            format!("{:?}", must!(s.join_requests(g))),
        );
    }
    for p in [A, B, C] {
        line(
            format!("group_for {p}"),
            format!("{:?}", must!(s.group_for(p))),
        );
        line(
            format!("conversation {p}"),
            format!("{:?}", must!(s.conversation(p, 100, 0))),
        );
        line(
            format!("chat_timer {p}"),
            format!("{:?}", must!(s.chat_timer(p))),
        );
    }
    line(
        "active_groups".into(),
        format!("{:?}", must!(s.active_groups())),
    );
    for n in 1..=6 {
        line(
            format!("message {n}"),
            format!("{:?}", must!(s.message(&id(n)))),
        );
        line(
            format!("recipients {n}"),
            format!("{:?}", must!(s.recipients(&id(n)))),
        );
        line(
            format!("reactions {n}"),
            format!("{:?}", must!(s.reactions(&id(n)))),
        );
    }
    line("unread".into(), format!("{:?}", must!(s.unread())));
    line("outbox".into(), format!("{:?}", must!(s.outbox())));
    line(
        "broadcast_lists".into(),
        format!("{:?}", must!(s.broadcast_lists())),
    );
    out
}

fn assert_same(got: &[String], want: &[String], what: &str) {
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g, w, "conformance: {what}");
    }
    assert_eq!(got.len(), want.len(), "conformance: {what}");
}

/// A store with a row of every kind.
fn fill(s: &dyn ProfileStore) {
    must!(s.set("k1", b"v1"));
    must!(s.set("k2", b"v2"));
    must!(s.mls_put(b"L", b"k1", b"m1"));
    must!(s.mls_put(b"L", b"k2", b"m2"));
    must!(s.add_conversation(G1, A, 100));
    must!(s.add_conversation(G2, B, 100));
    must!(s.retire_conversation(G2));
    assert!(must!(s.first_sight(&id(100), 100)));
    must!(s.insert_message(&msg(1, A)));
    must!(s.insert_message(&MessageView {
        outgoing: true,
        ..reply(2, A, 1, "text 1")
    }));
    must!(s.insert_message(&expiring(3, B, 500)));
    must!(s.add_recipient(&id(2), A, 1));
    must!(s.update_receipt(&id(2), 1, false, 10));
    must!(s.add_recipient(&id(3), B, 1));
    must!(s.queue_outgoing(&id(2), A, b"two"));
    must!(s.queue_outgoing(&id(9), B, b"nine"));
    must!(s.set_group_state(G1, &state("one"), 1));
    must!(s.add_leaver(G1, A));
    must!(s.add_join_request(G1, B, 5));
    must!(s.set_reaction(&id(1), A, "👍", 1));
    must!(s.set_reaction(&id(3), B, "x", 2));
    must!(s.set_reaction(&id(2), C, "z", 3));
    must!(s.set_chat_timer(A, 60));
    must!(s.set_broadcast_list("friends", &strings(&[A, B])));
}

/// A write of every kind over what `fill` left: overwrites, inserts and
/// deletes.
fn churn(s: &dyn ProfileStore) {
    must!(s.set("k1", b"changed"));
    must!(s.set("k3", b"new"));
    must!(s.delete("k2"));
    must!(s.mls_put(b"L", b"k1", b"changed"));
    must!(s.mls_put(b"L", b"k3", b"new"));
    must!(s.mls_delete(b"L", b"k2"));
    must!(s.add_conversation(G3, A, 200));
    must!(s.retire_conversation(G1));
    must!(s.add_conversation(G2, B, 300));
    must!(s.prune_seen(1_000));
    assert!(must!(s.first_sight(&id(101), 100)));
    must!(s.insert_message(&msg(4, A)));
    must!(s.insert_message(&msg(5, C)));
    must!(s.delete_message(&id(5)));
    must!(s.mark_read(&id(1), 7));
    assert!(must!(s.mark_acked(&id(2), 99)));
    must!(s.edit_message(&id(2), "edited", 8));
    must!(s.tombstone_message(&id(1)));
    assert_eq!(must!(s.purge_expired(1_000)), 1);
    must!(s.add_recipient(&id(2), B, 2));
    must!(s.update_receipt(&id(2), 1, true, 20));
    must!(s.queue_outgoing(&id(10), C, b"ten"));
    must!(s.remove_outgoing(&id(2)));
    must!(s.set_group_state(G1, &state("two"), 2));
    must!(s.set_group_state(G3, &state("three"), 3));
    must!(s.add_leaver(G1, B));
    must!(s.clear_leaver(G1, A));
    must!(s.add_join_request(G1, C, 1));
    must!(s.remove_join_request(G1, B));
    must!(s.set_reaction(&id(2), B, "❤", 3));
    must!(s.set_reaction(&id(4), A, "x", 4));
    must!(s.set_reaction(&id(4), A, "", 5));
    must!(s.set_reaction(&id(2), C, "", 5));
    must!(s.insert_message(&msg(6, A)));
    must!(s.set_reaction(&id(6), C, "y", 6));
    must!(s.set_chat_timer(A, 0));
    must!(s.set_chat_timer(B, 30));
    must!(s.set_broadcast_list("friends", &strings(&[C])));
    must!(s.set_broadcast_list("work", &strings(&[A])));
    assert!(must!(s.delete_broadcast_list("work")));
    must!(s.set_broadcast_list("family", &strings(&[B])));
}

pub fn rollback_undoes_every_kind_of_write(s: &dyn ProfileStore) {
    fill(s);
    let before = snapshot(s);
    must!(s.begin(Bracket::Transaction));
    churn(s);
    let during = snapshot(s);
    assert_ne!(during, before, "conformance: churn changes the store");
    must!(s.rollback(Bracket::Transaction));
    assert_same(
        &snapshot(s),
        &before,
        "a rolled-back transaction leaves no trace",
    );
    assert!(!must!(s.first_sight(&id(100), 1)), "the pruned id is back");
    assert!(
        must!(s.first_sight(&id(101), 1)),
        "the new sighting is gone"
    );

    // The same writes in a savepoint, inside a transaction that commits.
    must!(s.begin(Bracket::Transaction));
    must!(s.begin(Bracket::Savepoint));
    churn(s);
    must!(s.rollback(Bracket::Savepoint));
    assert_same(
        &snapshot(s),
        &before,
        "a rolled-back savepoint leaves no trace",
    );
    must!(s.commit(Bracket::Transaction));
    assert_same(&snapshot(s), &before, "nothing to commit");

    // And committed: what the transaction showed is what stays.
    must!(s.begin(Bracket::Transaction));
    must!(s.begin(Bracket::Savepoint));
    churn(s);
    must!(s.commit(Bracket::Savepoint));
    let inside = snapshot(s);
    must!(s.commit(Bracket::Transaction));
    assert_same(
        &snapshot(s),
        &inside,
        "a commit keeps what the transaction showed",
    );
}

pub fn savepoint_rollback_discards_only_its_writes(s: &dyn ProfileStore) {
    must!(s.set("k", b"0"));
    must!(s.begin(Bracket::Transaction));
    must!(s.set("k", b"1"));
    must!(s.insert_message(&msg(1, A)));
    must!(s.mls_put(b"L", b"k", b"1"));
    must!(s.begin(Bracket::Savepoint));
    must!(s.set("k", b"2"));
    must!(s.set("sp", b"x"));
    must!(s.insert_message(&msg(2, A)));
    must!(s.mls_put(b"L", b"k", b"2"));
    must!(s.mls_put(b"L", b"sp", b"x"));
    must!(s.delete_message(&id(1)));
    must!(s.rollback(Bracket::Savepoint));
    assert_eq!(
        must!(s.get("k")),
        Some(b"1".to_vec()),
        "back to before the savepoint"
    );
    assert_eq!(must!(s.get("sp")), None);
    assert_eq!(must!(s.mls_get(b"L", b"k")), Some(b"1".to_vec()));
    assert_eq!(must!(s.mls_get(b"L", b"sp")), None);
    assert_eq!(numbers(&must!(s.conversation(A, 10, 0))), vec![1]);
    // The transaction goes on.
    must!(s.insert_message(&msg(3, A)));
    must!(s.commit(Bracket::Transaction));
    assert_eq!(
        must!(s.get("k")),
        Some(b"1".to_vec()),
        "the transaction's writes stay"
    );
    assert_eq!(must!(s.mls_get(b"L", b"k")), Some(b"1".to_vec()));
    assert_eq!(numbers(&must!(s.conversation(A, 10, 0))), vec![1, 3]);
}

pub fn nested_savepoints(s: &dyn ProfileStore) {
    // An inner savepoint committed into an outer one goes when the outer
    // rolls back.
    must!(s.begin(Bracket::Transaction));
    must!(s.set("a", b"1"));
    must!(s.begin(Bracket::Savepoint));
    must!(s.set("a", b"2"));
    must!(s.begin(Bracket::Savepoint));
    must!(s.set("a", b"3"));
    must!(s.mls_put(b"L", b"inner", b"x"));
    must!(s.insert_message(&msg(1, A)));
    must!(s.commit(Bracket::Savepoint));
    assert_eq!(must!(s.get("a")), Some(b"3".to_vec()));
    must!(s.rollback(Bracket::Savepoint));
    assert_eq!(must!(s.get("a")), Some(b"1".to_vec()));
    assert_eq!(must!(s.mls_get(b"L", b"inner")), None);
    assert_eq!(must!(s.message(&id(1))), None);
    must!(s.commit(Bracket::Transaction));
    assert_eq!(must!(s.get("a")), Some(b"1".to_vec()));

    // An inner one rolled back inside an outer one that commits.
    must!(s.begin(Bracket::Transaction));
    must!(s.begin(Bracket::Savepoint));
    must!(s.set("b", b"1"));
    must!(s.begin(Bracket::Savepoint));
    must!(s.set("b", b"2"));
    must!(s.set("c", b"1"));
    must!(s.insert_message(&msg(2, A)));
    must!(s.rollback(Bracket::Savepoint));
    assert_eq!(must!(s.get("b")), Some(b"1".to_vec()));
    assert_eq!(must!(s.get("c")), None);
    must!(s.insert_message(&msg(3, A)));
    must!(s.commit(Bracket::Savepoint));
    must!(s.commit(Bracket::Transaction));
    assert_eq!(must!(s.get("b")), Some(b"1".to_vec()));
    assert_eq!(must!(s.get("c")), None);
    assert_eq!(numbers(&must!(s.conversation(A, 10, 0))), vec![3]);

    // Committed savepoints, then the transaction rolls back: all go.
    must!(s.begin(Bracket::Transaction));
    must!(s.begin(Bracket::Savepoint));
    must!(s.begin(Bracket::Savepoint));
    must!(s.set("d", b"1"));
    must!(s.commit(Bracket::Savepoint));
    must!(s.commit(Bracket::Savepoint));
    must!(s.rollback(Bracket::Transaction));
    assert_eq!(must!(s.get("d")), None);

    // Many in a row in one transaction, as a batch of deliveries opens one
    // per message.
    must!(s.begin(Bracket::Transaction));
    for n in 10..20u8 {
        must!(s.begin(Bracket::Savepoint));
        must!(s.insert_message(&msg(n, B)));
        if n % 2 == 0 {
            must!(s.commit(Bracket::Savepoint));
        } else {
            must!(s.rollback(Bracket::Savepoint));
        }
    }
    must!(s.commit(Bracket::Transaction));
    assert_eq!(
        numbers(&must!(s.conversation(B, 100, 0))),
        vec![10, 12, 14, 16, 18]
    );
}

pub fn order_after_rollback_still_increases(s: &dyn ProfileStore) {
    must!(s.insert_message(&msg(1, A)));
    must!(s.queue_outgoing(&id(1), A, b"1"));
    must!(s.begin(Bracket::Transaction));
    must!(s.insert_message(&msg(2, A)));
    must!(s.queue_outgoing(&id(2), A, b"2"));
    must!(s.rollback(Bracket::Transaction));
    must!(s.insert_message(&msg(3, A)));
    must!(s.queue_outgoing(&id(3), A, b"3"));
    must!(s.begin(Bracket::Transaction));
    must!(s.begin(Bracket::Savepoint));
    must!(s.insert_message(&msg(4, A)));
    must!(s.queue_outgoing(&id(4), A, b"4"));
    must!(s.rollback(Bracket::Savepoint));
    must!(s.insert_message(&msg(5, A)));
    must!(s.queue_outgoing(&id(5), A, b"5"));
    must!(s.commit(Bracket::Transaction));
    must!(s.insert_message(&msg(2, A)));
    must!(s.queue_outgoing(&id(2), A, b"2"));
    must!(s.insert_message(&msg(4, A)));
    must!(s.queue_outgoing(&id(4), A, b"4"));
    assert_eq!(
        numbers(&must!(s.conversation(A, 100, 0))),
        vec![1, 3, 5, 2, 4],
        "insertion order, rolled-back inserts left out"
    );
    let queued: Vec<u8> = must!(s.outbox()).iter().map(|(i, _, _)| i[0]).collect();
    assert_eq!(queued, vec![1, 3, 5, 2, 4]);
}
