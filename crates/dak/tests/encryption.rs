//! End-to-end encryption through the real server: what the server can see
//! (nothing readable), devices joining and leaving conversations, two
//! commits racing for one epoch, safety numbers, and undecryptable input.

mod common;

use common::*;
use dak_client::{Event, Undecodable};
use dak_proto::v1;

const MARKER: &str = "MARKER-7f3a";

#[tokio::test]
async fn a_marker_in_a_message_receipt_and_reaction_reaches_no_server_file_log_or_frame() {
    let trace_dir = tempfile::tempdir().unwrap();
    let trace = trace_dir.path().join("frames.bin");
    dak_client::transport::trace_frames_to(&trace).unwrap();
    let server = TestServer::start();
    let (alice, bob) = registered_pair(&server).await;

    let mut a = alice.connect().await;
    let sent = a
        .send_text(&bob.phone, &format!("{MARKER}-text meet at noon"))
        .await
        .unwrap();
    let mut b = bob.connect().await;
    b.sync(|_| {}).await.unwrap(); // sends the delivery receipt
    b.react(&alice.phone, &sent.id, &format!("{MARKER}-reaction"))
        .await
        .unwrap();
    // A receipt whose content is the marker itself (16 bytes, like an id).
    b.send_receipt(
        &alice.phone,
        v1::ReceiptType::Read,
        vec![b"MARKER-7f3a-rcpt".to_vec()],
    )
    .await
    .unwrap();
    b.accept_request(&alice.phone).unwrap();
    b.mark_read(None).await.unwrap();
    a.wait_for_tick(&sent.id, dak_client::TickState::Read, |_| {})
        .await
        .unwrap();
    a.close().await;
    b.close().await;

    // The scan can see plaintext where it is: bob's own profile holds the text.
    assert!(
        files_under(&bob.dir)
            .iter()
            .any(|(_, bytes)| contains(bytes, MARKER)),
        "the scan finds the marker where it is stored in the clear"
    );
    let frames = std::fs::read(&trace).unwrap();
    assert!(frames.len() > 1000, "frames were traced");
    assert!(
        !contains(&frames, MARKER),
        "a frame from the server carries the marker"
    );
    for (path, bytes) in files_under(server.dir()) {
        assert!(
            !contains(&bytes, MARKER),
            "{} holds the marker",
            path.display()
        );
    }
    assert!(
        !contains(server.log_text().as_bytes(), MARKER),
        "the log holds the marker"
    );
}

#[tokio::test]
async fn a_linked_device_joins_the_chat_and_once_removed_cannot_decrypt() {
    let server = TestServer::start();
    let (alice, bob) = registered_pair(&server).await;
    let mut a = alice.connect().await;
    a.send_text(&bob.phone, "before the laptop").await.unwrap();
    assert_eq!(bob.sync_texts().await, vec!["before the laptop"]);

    let laptop = Person::new(&bob.phone);
    let laptop_reg = link(&server, &bob, &laptop).await;
    // alice's next message finds bob's new device and adds it first.
    a.send_text(&bob.phone, "hello both").await.unwrap();
    assert_eq!(bob.sync_texts().await, vec!["hello both"]);
    assert_eq!(laptop.sync_texts().await, vec!["hello both"]);
    let members = a.crypto_state(&bob.phone).unwrap().unwrap().members;
    assert!(members.contains(&(bob.phone.clone(), laptop_reg.device_id)));

    // bob unlinks the laptop: his phone removes it from the conversation.
    let mut b = bob.connect().await;
    b.remove_device(laptop_reg.device_id).await.unwrap();
    b.close().await;
    let sent = a.send_text(&bob.phone, "after the laptop").await.unwrap();
    assert_eq!(sent.recipient_devices, 1, "only bob's phone");
    let state = a.crypto_state(&bob.phone).unwrap().unwrap();
    assert!(!state.members.iter().any(|m| m.1 == laptop_reg.device_id));

    // The laptop kept its keys, and gets hold of the new ciphertext: it
    // cannot read it.
    let bob_phone = bob.profile().registration().unwrap().device_id;
    let waiting = mailbox_bodies(&server, bob_phone);
    assert!(!waiting.is_empty());
    assert!(
        waiting.iter().any(|b| dak_proto::mls::inspect(b)
            .is_ok_and(|i| i.kind == dak_proto::mls::MlsKind::Application)),
        "the message sent after the removal is among what the laptop is fed"
    );
    let laptop_profile = laptop.profile();
    for body in &waiting {
        let r = laptop_profile.mls(|m| m.process(body));
        assert!(
            !matches!(r, Ok(dak_client::mls::Incoming::Application { .. })),
            "the removed laptop decrypted a message sent after its removal"
        );
    }
    assert_eq!(bob.sync_texts().await, vec!["after the laptop"]);
}

#[tokio::test]
async fn two_commits_at_one_epoch_one_wins_the_other_retries_no_fork() {
    let server = TestServer::start();
    let (alice, bob) = registered_pair(&server).await;
    let mut a = alice.connect().await;
    a.send_text(&bob.phone, "hi").await.unwrap();
    let mut b = bob.connect().await;
    b.sync(|_| {}).await.unwrap();
    let before = a.crypto_state(&bob.phone).unwrap().unwrap();
    assert_eq!(
        b.crypto_state(&alice.phone).unwrap().unwrap().epoch,
        before.epoch
    );

    // Both build a commit at the same epoch before either hears back.
    let (ra, rb) = tokio::join!(a.self_update(&bob.phone), b.self_update(&alice.phone));
    ra.unwrap();
    rb.unwrap();
    // Each processes whatever the other's commit left in its mailbox.
    a.send_text(&bob.phone, "after the race").await.unwrap();
    a.close().await;
    b.close().await;
    assert_eq!(bob.sync_texts().await, vec!["after the race"]);
    let sa = alice
        .connect()
        .await
        .crypto_state(&bob.phone)
        .unwrap()
        .unwrap();
    let sb = bob
        .connect()
        .await
        .crypto_state(&alice.phone)
        .unwrap()
        .unwrap();
    assert_eq!(sa.group_id, sb.group_id);
    assert_eq!(
        sa.epoch,
        before.epoch + 2,
        "both changes applied, one after the other"
    );
    assert_eq!(sa.epoch, sb.epoch);
    assert_eq!(
        sa.authenticator, sb.authenticator,
        "one group state, no fork"
    );
    bob.connect()
        .await
        .send_text(&alice.phone, "and back")
        .await
        .unwrap();
    assert_eq!(alice.sync_texts().await, vec!["and back"]);
}

#[tokio::test]
async fn safety_numbers_match_and_change_when_bob_adds_a_device() {
    let server = TestServer::start();
    let (alice, bob) = registered_pair(&server).await;
    let mut a = alice.connect().await;
    let first = a.safety_number(&bob.phone).await.unwrap();
    let mut b = bob.connect().await;
    b.sync(|_| {}).await.unwrap();
    assert_eq!(b.safety_number(&alice.phone).await.unwrap(), first);
    assert_eq!(first.replace(' ', "").len(), 60);
    b.close().await;

    let laptop = Person::new(&bob.phone);
    link(&server, &bob, &laptop).await;
    // bob's phone writes: it adds his laptop to the chat first.
    let mut b = bob.connect().await;
    b.send_text(&alice.phone, "new laptop").await.unwrap();
    b.close().await;
    a.close().await;
    let events = sync_events(&alice).await;
    assert_eq!(texts(&events), vec!["new laptop"]);
    let notices: Vec<&String> = events
        .iter()
        .filter_map(|e| match e {
            Event::SecurityNotice { phone, .. } => Some(phone),
            _ => None,
        })
        .collect();
    assert_eq!(
        notices,
        vec![&bob.phone],
        "alice is told bob's devices changed"
    );
    let second = alice
        .connect()
        .await
        .safety_number(&bob.phone)
        .await
        .unwrap();
    assert_ne!(second, first);
    let mut b = bob.connect().await;
    b.sync(|_| {}).await.unwrap();
    assert_eq!(b.safety_number(&alice.phone).await.unwrap(), second);
}

#[tokio::test]
async fn corrupted_and_replayed_ciphertext_is_reported_and_later_messages_arrive() {
    let server = TestServer::start();
    let (alice, bob) = registered_pair(&server).await;
    let mut a = alice.connect().await;
    a.send_text(&bob.phone, "one").await.unwrap();
    assert_eq!(bob.sync_texts().await, vec!["one"]);

    // alice's device sends, under its own name, a ciphertext with a flipped
    // byte and then a copy of a good one under a new message id (a replay).
    let profile = alice.profile();
    let group = profile.group_for(&bob.phone).unwrap().unwrap();
    let good = profile
        .mls(|m| m.encrypt(&group, b"\x0a\x05\x0a\x03two"))
        .unwrap();
    let mut bad = good.clone();
    let last = bad.len() - 3;
    bad[last] ^= 0x55;
    let mut raw = alice.raw_connection(&server).await;
    for (id, body) in [(1u8, bad), (2, good.clone()), (3, good)] {
        let reply = raw
            .call(v1::client_frame::Request::SendMessage(v1::SendMessage {
                message_id: vec![id; 16],
                body,
                ..Default::default()
            }))
            .await
            .unwrap();
        assert!(matches!(reply, v1::server_frame::Body::SendAck(_)));
    }
    a.send_text(&bob.phone, "three").await.unwrap();

    let mut b = bob.connect().await;
    let mut texts = Vec::new();
    let mut broken = 0;
    b.sync(|e| match e {
        Event::Message(m) => texts.push(m.text.clone()),
        Event::Undecodable { from, reason, .. } => {
            assert_eq!(from, &alice.phone);
            assert!(matches!(reason, Undecodable::Crypto { .. }), "{reason:?}");
            broken += 1;
        }
        _ => {}
    })
    .await
    .unwrap();
    assert_eq!(texts, vec!["two", "three"]);
    assert_eq!(broken, 2, "the corrupted one and the replay");
    assert_eq!(b.undecodable(), 2);
}

#[tokio::test]
async fn a_device_that_lost_its_state_says_so_and_the_chat_recovers() {
    let server = TestServer::start();
    let (alice, bob) = registered_pair(&server).await;
    let mut a = alice.connect().await;
    a.send_text(&bob.phone, "one").await.unwrap();
    assert_eq!(bob.sync_texts().await, vec!["one"]);
    // bob's phone loses its MLS state (restored from an old backup, say).
    {
        let db = rusqlite::Connection::open(bob.dir.join("profile.db")).unwrap();
        let records: i64 = db
            .query_row("SELECT count(*) FROM mls_kv", [], |r| r.get(0))
            .unwrap();
        assert!(records > 0, "openmls's records are in mls_kv");
        db.execute_batch("DELETE FROM mls_kv").unwrap();
        db.execute_batch("DELETE FROM conversations").unwrap();
    }
    a.send_text(&bob.phone, "two").await.unwrap();
    let mut b = bob.connect().await;
    let mut reasons = Vec::new();
    b.sync(|e| {
        if let Event::Undecodable { reason, .. } = e {
            reasons.push(reason.clone());
        }
    })
    .await
    .unwrap();
    assert_eq!(reasons.len(), 1);
    assert_eq!(reasons[0], Undecodable::LostState);
    // bob writes back: a new conversation starts, and alice reads it.
    b.send_text(&alice.phone, "I lost my keys").await.unwrap();
    b.close().await;
    a.close().await;
    assert_eq!(alice.sync_texts().await, vec!["I lost my keys"]);
    alice
        .connect()
        .await
        .send_text(&bob.phone, "three")
        .await
        .unwrap();
    assert_eq!(bob.sync_texts().await, vec!["three"]);
}

/// bob writes while alice, who has not read it yet, commits (a key update):
/// her commit is accepted at the epoch bob's message was sent in, and his
/// message is ahead of her commit's echo in her mailbox. She merges her
/// commit only there, so his message decrypts at its own epoch: no device
/// keeps old epochs' keys, and none needs them.
#[tokio::test]
async fn a_message_sent_before_my_commit_was_accepted_still_decrypts() {
    let server = TestServer::start();
    let (alice, bob) = registered_pair(&server).await;
    let mut a = alice.connect().await;
    a.send_text(&bob.phone, "one").await.unwrap();
    assert_eq!(bob.sync_texts().await, vec!["one"]);
    let mut b = bob.connect().await;
    b.send_text(&alice.phone, "sent at the old epoch")
        .await
        .unwrap();
    b.close().await;
    let before = a.crypto_state(&bob.phone).unwrap().unwrap().epoch;
    a.self_update(&bob.phone).await.unwrap();
    let mut events = Vec::new();
    a.sync(|e| events.push(e.clone())).await.unwrap();
    assert_eq!(texts(&events), vec!["sent at the old epoch"]);
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::Undecodable { .. })),
        "{events:?}"
    );
    assert_eq!(
        a.crypto_state(&bob.phone).unwrap().unwrap().epoch,
        before + 1
    );
    a.close().await;
    // And bob, at the new epoch, reads what alice writes next.
    alice
        .connect()
        .await
        .send_text(&bob.phone, "two")
        .await
        .unwrap();
    assert_eq!(bob.sync_texts().await, vec!["two"]);
}
