//! alice and bob chat through a real server: offline delivery, kill -9,
//! exactly-once display, order, ticks, and a linked device (with the
//! recent history its approving device sends it).

mod common;

use common::*;
use dak_client::{Event, HistoryLimits, TickState};

#[tokio::test]
async fn offline_message_survives_kill9_and_arrives_once_with_ticks() {
    let mut server = TestServer::start();
    let (alice, bob) = registered_pair(&server).await;

    // bob is offline; alice's message gets its single tick.
    let mut a = alice.connect().await;
    let sent = a.send_text(&bob.phone, "hello bob").await.unwrap();
    assert_eq!(a.tick(&sent.id).unwrap().state, TickState::Sent);
    drop(a);

    server.kill9();
    server.restart();

    assert_eq!(bob.sync_texts().await, vec!["hello bob"]);
    assert!(bob.sync_texts().await.is_empty(), "shown once");

    // bob's delivery receipt turns alice's tick double.
    let mut a = alice.connect().await;
    a.wait_for_tick(&sent.id, TickState::Delivered, |_| {})
        .await
        .unwrap();

    let mut b = bob.connect().await;
    // alice is a stranger to bob: no read receipt until he accepts.
    assert_eq!(b.mark_read(None).await.unwrap(), 0);
    b.accept_request(&alice.phone).unwrap();
    assert_eq!(b.mark_read(None).await.unwrap(), 1);
    b.close().await;
    a.wait_for_tick(&sent.id, TickState::Read, |_| {})
        .await
        .unwrap();
    let tick = a.tick(&sent.id).unwrap();
    assert_eq!(tick.devices.len(), 1);
    assert!(tick.devices[0].read_ms > 0);
    // Debug logs name devices and sizes, never bodies; and a log file gets
    // no terminal colour codes.
    let log = server.log_text();
    assert!(!log.contains("hello bob"));
    assert!(
        log.contains("dak server started") && !log.contains('\u{1b}'),
        "{log}"
    );
}

#[tokio::test]
async fn undelivered_messages_expire_after_the_retention_period() {
    let mut server = TestServer::with_env(&[("DAK_RETENTION", "1s")]);
    let (alice, bob) = registered_pair(&server).await;
    alice
        .connect()
        .await
        .send_text(&bob.phone, "too late")
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    server.restart(); // the expiry sweep runs at start, then every minute
    for _ in 0..50 {
        if server.log_text().contains("expired undelivered envelopes") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(bob.sync_texts().await.is_empty());
}

#[tokio::test]
async fn messages_arrive_in_the_order_sent() {
    let server = TestServer::start();
    let (alice, bob) = registered_pair(&server).await;
    let mut a = alice.connect().await;
    let sent: Vec<String> = (0..60).map(|i| format!("message {i}")).collect();
    for text in &sent {
        a.send_text(&bob.phone, text).await.unwrap();
    }
    assert_eq!(bob.sync_texts().await, sent);
}

#[tokio::test]
async fn a_resent_message_is_shown_once() {
    let server = TestServer::start();
    let (alice, bob) = registered_pair(&server).await;
    let mut a = alice.connect().await;
    let sent = a.send_text(&bob.phone, "only once").await.unwrap();
    // As if the ack had been lost: the outbox sends the same id again.
    let body = {
        use prost::Message;
        dak_proto::v1::Content {
            kind: Some(dak_proto::v1::content::Kind::Text(dak_proto::v1::Text {
                body: "only once".into(),
                sent_at_ms: 1,
                ..Default::default()
            })),
        }
        .encode_to_vec()
    };
    a.profile()
        .queue_outgoing(&sent.id, &bob.phone, &body)
        .unwrap();
    assert_eq!(a.flush_outbox().await.unwrap(), 1);
    assert_eq!(bob.sync_texts().await, vec!["only once"]);
    assert!(bob.sync_texts().await.is_empty());
}

#[tokio::test]
async fn unacked_deliveries_come_back_after_a_client_crash() {
    let server = TestServer::start();
    let (alice, bob) = registered_pair(&server).await;
    alice
        .connect()
        .await
        .send_text(&bob.phone, "are you there")
        .await
        .unwrap();

    // bob's device receives the envelope but dies before acking it.
    let mut conn = bob.raw_connection(&server).await;
    let push = conn.next_push().await.unwrap();
    assert!(matches!(
        push,
        dak_proto::v1::server_frame::Body::Deliver(_)
    ));
    drop(conn);

    assert_eq!(bob.sync_texts().await, vec!["are you there"]);
}

#[tokio::test]
async fn a_linked_device_gets_every_message_and_its_sends_appear_on_the_phone() {
    let server = TestServer::start();
    let (alice, bob) = (alice(), bob());
    let bob_laptop = Person::new(&bob.phone);
    alice.register(&server).await;
    bob.register(&server).await;
    let reg = link(&server, &bob, &bob_laptop).await;
    assert_eq!(reg.phone, bob.phone);

    let mut a = alice.connect().await;
    let sent = a.send_text(&bob.phone, "to all of bob").await.unwrap();
    assert_eq!(sent.recipient_devices, 2);
    assert_eq!(bob.sync_texts().await, vec!["to all of bob"]);
    assert_eq!(bob_laptop.sync_texts().await, vec!["to all of bob"]);
    // Both devices confirmed delivery: double tick.
    a.wait_for_tick(&sent.id, TickState::Delivered, |_| {})
        .await
        .unwrap();

    // bob writes from the laptop; the phone shows it as bob's own message.
    let mut laptop = bob_laptop.connect().await;
    laptop
        .send_text(&alice.phone, "from the laptop")
        .await
        .unwrap();
    laptop.close().await;
    assert_eq!(alice.sync_texts().await, vec!["from the laptop"]);
    let mut phone = bob.connect().await;
    let mut mine = Vec::new();
    phone
        .sync(|e| {
            if let Event::Message(m) = e {
                mine.push((m.outgoing, m.conversation.key(), m.text.clone()));
            }
        })
        .await
        .unwrap();
    assert_eq!(
        mine,
        vec![(true, alice.phone.clone(), "from the laptop".to_string())]
    );

    // Reading on the phone turns alice's tick blue and marks it read on the laptop too.
    phone.accept_request(&alice.phone).unwrap();
    assert_eq!(phone.mark_read(None).await.unwrap(), 1);
    phone.close().await;
    a.wait_for_tick(&sent.id, TickState::Read, |_| {})
        .await
        .unwrap();
    bob_laptop.sync_texts().await;
    assert!(bob_laptop.profile().unread().unwrap().is_empty());
}

#[tokio::test]
async fn a_linked_device_opens_on_the_recent_history_and_carries_on_in_the_same_chats() {
    const MARKER: &str = "HISTORY-MARKER-5b1e";
    let server = TestServer::start();
    let (alice, bob, carol) = registered_trio(&server).await;
    let mut a = alice.connect().await;
    let hello = a
        .send_text(&bob.phone, &format!("{MARKER} before the laptop"))
        .await
        .unwrap();
    let group = a
        .create_group("Lunch", &[bob.phone.clone(), carol.phone.clone()], false)
        .await
        .unwrap();
    a.send_text(&group.key, "group before the laptop")
        .await
        .unwrap();
    a.close().await;
    let mut b = bob.connect().await;
    b.sync(|_| {}).await.unwrap();
    b.accept_request(&alice.phone).unwrap();
    b.mark_read(None).await.unwrap();
    b.send_text(&alice.phone, "reply before the laptop")
        .await
        .unwrap();
    b.react(&alice.phone, &hello.id, "👍").await.unwrap();
    b.close().await;
    sync_events(&alice).await;

    // alice links a laptop and her phone sends it what it holds.
    let laptop = Person::new(&alice.phone);
    let reg = link(&server, &alice, &laptop).await;
    let mut a = alice.connect().await;
    let shared = a
        .share_history(reg.device_id, HistoryLimits::default())
        .await
        .unwrap();
    assert_eq!((shared.chats, shared.messages), (2, 3), "{shared:?}");
    a.close().await;

    let events = sync_events(&laptop).await;
    assert!(
        events.iter().any(|e| matches!(
            e,
            Event::History {
                chats: 2,
                messages: 3,
                ..
            }
        )),
        "{events:?}"
    );
    let profile = laptop.profile();
    let with_bob: Vec<(bool, String)> = profile
        .conversation(&bob.phone, 10)
        .unwrap()
        .into_iter()
        .map(|m| (m.outgoing, m.text))
        .collect();
    assert_eq!(
        with_bob,
        vec![
            (true, format!("{MARKER} before the laptop")),
            (false, "reply before the laptop".to_string())
        ]
    );
    // Ticks and reactions as the phone saw them.
    assert_eq!(
        dak_client::tick_of(&profile, &hello.id).unwrap().state,
        TickState::Read
    );
    assert_eq!(
        profile.reactions(&hello.id).unwrap(),
        vec![(bob.phone.clone(), "👍".to_string())]
    );
    // The group is there with its title (the phone added the laptop at once).
    let group_id = dak_client::parse_group_key(&group.key).unwrap();
    assert_eq!(
        profile.group_state(&group_id).unwrap().map(|s| s.title),
        Some("Lunch".to_string())
    );
    let texts: Vec<String> = profile
        .conversation(&group.key, 10)
        .unwrap()
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(texts, vec!["group before the laptop"]);
    drop(profile);

    // Sent again, nothing is stored twice; another device of the account ignores it.
    let mut a = alice.connect().await;
    a.share_history(reg.device_id, HistoryLimits::default())
        .await
        .unwrap();
    a.close().await;
    let again = sync_events(&laptop).await;
    assert!(
        again
            .iter()
            .any(|e| matches!(e, Event::History { messages: 0, .. })),
        "{again:?}"
    );
    assert_eq!(
        laptop.profile().conversation(&bob.phone, 10).unwrap().len(),
        2
    );

    // The laptop writes in the same chats: bob and carol read it.
    let mut l = laptop.connect().await;
    l.send_text(&bob.phone, "from the laptop").await.unwrap();
    l.send_text(&group.key, "laptop in the group")
        .await
        .unwrap();
    l.close().await;
    assert_eq!(
        bob.sync_texts().await,
        vec!["from the laptop", "laptop in the group"]
    );
    assert_eq!(
        carol.sync_texts().await,
        vec!["group before the laptop", "laptop in the group"]
    );

    // A primary device takes no history (it was never linked), so another
    // device of the account cannot rewrite its chats.
    let phone_id = alice.profile().registration().unwrap().device_id;
    let mut l = laptop.connect().await;
    l.share_history(phone_id, HistoryLimits::default())
        .await
        .unwrap();
    l.close().await;
    let refused = sync_events(&alice).await;
    assert!(
        !refused.iter().any(|e| matches!(e, Event::History { .. })),
        "{refused:?}"
    );

    // The server relayed ciphertext only.
    for (path, bytes) in files_under(server.dir()) {
        assert!(
            !contains(&bytes, MARKER),
            "{} holds the marker",
            path.display()
        );
    }
    assert!(!contains(server.log_text().as_bytes(), MARKER));
}

#[tokio::test]
async fn a_removed_device_is_signed_out() {
    let server = TestServer::start();
    let (alice, bob) = (alice(), bob());
    let bob_laptop = Person::new(&bob.phone);
    alice.register(&server).await;
    bob.register(&server).await;
    let laptop_reg = link(&server, &bob, &bob_laptop).await;

    let mut phone = bob.connect().await;
    let devices = phone.devices().await.unwrap();
    assert_eq!(devices.len(), 2);
    phone.remove_device(laptop_reg.device_id).await.unwrap();
    assert_eq!(phone.devices().await.unwrap().len(), 1);

    let err = dak_client::Client::connect(bob_laptop.profile())
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code(), Some(dak_proto::v1::ErrorCode::DeviceRevoked));
    let sent = alice
        .connect()
        .await
        .send_text(&bob.phone, "phone only")
        .await
        .unwrap();
    assert_eq!(sent.recipient_devices, 1);
}

#[tokio::test]
async fn sigterm_drains_and_restart_keeps_everything() {
    let mut server = TestServer::start();
    let (alice, bob) = registered_pair(&server).await;
    alice
        .connect()
        .await
        .send_text(&bob.phone, "before restart")
        .await
        .unwrap();
    let mut listening = bob.connect().await;
    let status = server.terminate();
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    // The connected device is told to reconnect.
    let mut saw = Vec::new();
    let err = loop {
        match listening.next_events().await {
            Ok(events) => saw.extend(events),
            Err(e) => break e,
        }
    };
    assert!(err.is_retryable(), "{err}");
    server.restart();
    let later = bob.sync_texts().await;
    let shown: Vec<String> = saw
        .iter()
        .filter_map(|e| {
            if let Event::Message(m) = e {
                Some(m.text.clone())
            } else {
                None
            }
        })
        .chain(later)
        .collect();
    assert_eq!(
        shown,
        vec!["before restart"],
        "shown exactly once, before or after the restart"
    );
    let stored = bob.profile().conversation(&alice.phone, 10).unwrap();
    assert_eq!(stored.len(), 1);
    // The delivery receipt left (now or from the outbox after the restart).
    let mut a = alice.connect().await;
    let id = a.profile().conversation(&bob.phone, 1).unwrap()[0]
        .id
        .clone();
    a.wait_for_tick(&id, TickState::Delivered, |_| {})
        .await
        .unwrap();
}

#[tokio::test]
async fn kill9_mid_stream_loses_no_acked_message_and_shows_none_twice() {
    let mut server = TestServer::start();
    let (alice, bob) = registered_pair(&server).await;
    let mut a = alice.connect().await;
    let bob_phone = bob.phone.clone();
    let sender = tokio::spawn(async move {
        let mut acked = Vec::new();
        for i in 0..100_000u32 {
            match a.send_text(&bob_phone, &format!("m{i}")).await {
                Ok(_) => acked.push(format!("m{i}")),
                Err(_) => break, // the server died under us; this one stays in the outbox
            }
        }
        acked
    });
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    server.kill9();
    let acked = sender.await.unwrap();
    assert!(
        !acked.is_empty(),
        "some messages were acked before the kill"
    );
    server.restart();

    // alice's next connection flushes her outbox (the message in flight at
    // the kill, which the server may or may not have stored).
    let outbox_before = alice.profile().outbox().unwrap().len();
    assert!(outbox_before <= 1);
    alice.connect().await.close().await;
    assert!(alice.profile().outbox().unwrap().is_empty());

    let got = bob.sync_texts().await;
    let expected: Vec<String> = (0..acked.len() + outbox_before)
        .map(|i| format!("m{i}"))
        .collect();
    assert_eq!(
        got,
        expected,
        "every acked message once, in order (acked {})",
        acked.len()
    );
}

/// One connection sends a burst without waiting for its SendAcks (the
/// server pipelines up to 64 of them into its writer), and the server is
/// killed with SIGKILL mid-burst. What the recipient's mailbox holds after
/// the restart is exactly a prefix of the burst, in the order sent: every
/// acked message is in it, and nothing after a missing one.
#[tokio::test]
async fn a_pipelined_burst_keeps_its_order_across_kill9() {
    use dak_bench::{device, groups};
    use dak_proto::v1::{self, client_frame::Request, server_frame::Body};
    const BURST: usize = 3_000;
    // The burst is above a device's default request rate (50/s).
    let mut server = TestServer::with_env(&[
        ("DAK_REQUESTS_PER_DEVICE_PER_SEC", "100000"),
        ("DAK_REQUEST_BURST", "100000"),
    ]);
    let devices = device::register_many(
        &server.url,
        server.data.join("sms-outbox.jsonl"),
        2,
        &|_| {},
    )
    .await
    .unwrap();
    let (a, b) = (devices[0].clone(), devices[1].clone());
    let ca = device::connect(&server.url, &a, None).await.unwrap();
    let cb = device::connect(&server.url, &b, None).await.unwrap();
    let ((mut ca, burst), (cb, _)) = groups::conversation(a, b, ca, cb, 20, BURST).await.unwrap();
    cb.close().await;
    // Everything is written at once; the acks are read as they come.
    let (mut acked, mut sent) = (0usize, 0usize);
    while acked < 600 {
        while sent < BURST && sent < acked + 512 {
            ca.send(Request::SendMessage(v1::SendMessage {
                message_id: rand::random::<[u8; 16]>().to_vec(),
                body: burst[sent].clone(),
                ..Default::default()
            }))
            .await
            .unwrap();
            sent += 1;
        }
        match ca.next_frame().await.unwrap().body {
            Some(Body::SendAck(_)) => acked += 1,
            Some(Body::Error(e)) => panic!("refused: {e:?}"),
            _ => {}
        }
    }
    server.kill9();
    assert!(sent > acked, "the kill came with sends in flight");
    let stored = mailbox_bodies(&server, devices[1].id);
    println!("sent {sent}, acked {acked}, stored {}", stored.len());
    assert!(
        stored.len() >= acked,
        "{} stored, {acked} acked",
        stored.len()
    );
    assert!(stored.len() <= sent);
    for (i, body) in stored.iter().enumerate() {
        assert!(
            *body == burst[i],
            "the mailbox's envelope {i} is not the burst's message {i}"
        );
    }
    // And the restarted server delivers them so.
    server.restart();
    let mut cb = device::connect(&server.url, &devices[1], None)
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < stored.len() {
        if let Some(Body::Deliver(d)) = cb.next_frame().await.unwrap().body {
            got.extend(d.envelopes.into_iter().map(|e| e.body));
        }
    }
    assert_eq!(got, stored);
}
