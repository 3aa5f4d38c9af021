//! Named groups through the real server: alice, bob, carol and dave, each a
//! real client on real sockets. Ticks that add up over members, a removed
//! member who cannot read what follows, admin rules, leaving, invite links,
//! and the size limit the server enforces.

mod common;

use common::*;
use dak_client::{Client, Event, GroupChange, TickState};

const MARKER: &str = "GROUPMARK-93c1";

fn dave() -> Person {
    Person::new("+919800000004")
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn group_texts(events: &[Event], key: &str) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Message(m) if m.conversation == key => Some(m.text.clone()),
            _ => None,
        })
        .collect()
}

fn changes(events: &[Event]) -> Vec<GroupChange> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Group { change, .. } => Some(change.clone()),
            _ => None,
        })
        .collect()
}

/// alice creates a group with the others; each syncs to join it.
async fn family(
    server: &TestServer,
    alice: &Person,
    others: &[&Person],
    admins_only: bool,
) -> (Client, String) {
    let _ = server;
    let mut a = alice.connect().await;
    let phones: Vec<String> = others.iter().map(|p| p.phone.clone()).collect();
    let info = a
        .create_group(&format!("Family {MARKER}"), &phones, admins_only)
        .await
        .unwrap();
    assert_eq!(info.members.len(), others.len() + 1);
    for o in others {
        let events = sync_events(o).await;
        assert!(
            changes(&events).contains(&GroupChange::Joined),
            "{} joined: {events:?}",
            o.phone
        );
        let joined = o.connect().await.group_info(&info.key).unwrap();
        assert_eq!(joined.title, format!("Family {MARKER}"));
        assert_eq!(
            joined
                .members
                .iter()
                .filter(|m| m.admin)
                .map(|m| m.phone.clone())
                .collect::<Vec<_>>(),
            vec![alice.phone.clone()]
        );
    }
    (a, info.key)
}

#[tokio::test]
async fn a_group_message_ticks_per_member_and_the_server_sees_no_title_or_text() {
    let server = TestServer::start();
    let (alice, bob, carol) = registered_trio(&server).await;
    let (mut a, key) = family(&server, &alice, &[&bob, &carol], false).await;

    let sent = a
        .send_text(&key, &format!("dinner at 8 {MARKER}"))
        .await
        .unwrap();
    assert_eq!(
        sent.recipient_devices, 2,
        "one ciphertext for bob and carol"
    );
    assert_eq!(a.tick(&sent.id).unwrap().state, TickState::Sent);

    // bob has it: still one tick, carol does not yet.
    assert_eq!(
        group_texts(&sync_events(&bob).await, &key),
        vec![format!("dinner at 8 {MARKER}")]
    );
    a.close().await;
    sync_events(&alice).await;
    assert_eq!(
        alice.connect().await.tick(&sent.id).unwrap().state,
        TickState::Sent
    );
    // carol has it too: two ticks.
    assert_eq!(
        group_texts(&sync_events(&carol).await, &key),
        vec![format!("dinner at 8 {MARKER}")]
    );
    sync_events(&alice).await;
    assert_eq!(
        alice.connect().await.tick(&sent.id).unwrap().state,
        TickState::Delivered
    );
    // bob reads: not blue until carol reads as well.
    let mut b = bob.connect().await;
    b.accept_request(&key).unwrap(); // alice's group, from a stranger
    b.mark_read(None).await.unwrap();
    drop(b);
    sync_events(&alice).await;
    let tick = alice.connect().await.tick(&sent.id).unwrap();
    assert_eq!(tick.state, TickState::Delivered);
    assert!(
        tick.devices
            .iter()
            .any(|d| d.phone == bob.phone && d.read_ms > 0)
    );
    let mut c = carol.connect().await;
    c.accept_request(&key).unwrap();
    c.mark_read(None).await.unwrap();
    drop(c);
    sync_events(&alice).await;
    assert_eq!(
        alice.connect().await.tick(&sent.id).unwrap().state,
        TickState::Read
    );

    // Neither the title nor the text is anywhere the server writes.
    for (path, bytes) in files_under(server.dir()) {
        assert!(
            !contains(&bytes, MARKER),
            "{} holds the marker",
            path.display()
        );
    }
    assert!(!server.log_text().contains(MARKER));
}

#[tokio::test]
async fn a_removed_member_cannot_read_what_is_sent_after() {
    let server = TestServer::start();
    let (alice, bob, carol) = registered_trio(&server).await;
    let (mut a, key) = family(&server, &alice, &[&bob, &carol], false).await;
    a.send_text(&key, "before").await.unwrap();
    assert_eq!(
        group_texts(&sync_events(&carol).await, &key),
        vec!["before"]
    );

    a.remove_member(&key, &carol.phone).await.unwrap();
    let sent = a.send_text(&key, "after carol").await.unwrap();
    assert_eq!(sent.recipient_devices, 1, "only bob");

    // A copy of carol's device, with every key she held, is fed the new
    // ciphertext from bob's mailbox: it cannot read it.
    let copy = tempfile::tempdir().unwrap();
    copy_dir(&carol.dir, copy.path());
    let bob_device = bob.profile().registration().unwrap().device_id;
    let after: Vec<Vec<u8>> = mailbox_bodies(&server, bob_device)
        .into_iter()
        .filter(|b| {
            dak_proto::mls::inspect(b).is_ok_and(|i| i.kind == dak_proto::mls::MlsKind::Application)
        })
        .collect();
    assert!(
        !after.is_empty(),
        "the message sent after the removal is fed"
    );
    let carol_copy = dak_client::open_profile(copy.path()).unwrap();
    for body in &after {
        let r = carol_copy.mls(|m| m.process(body));
        assert!(
            !matches!(r, Ok(dak_client::mls::Incoming::Application { .. })),
            "the removed member decrypted a message sent after her removal"
        );
    }
    // Her own sync says she was removed and shows nothing new.
    let events = sync_events(&carol).await;
    assert!(
        changes(&events).contains(&GroupChange::RemovedMe),
        "{events:?}"
    );
    assert!(group_texts(&events, &key).is_empty());
    let mut c = carol.connect().await;
    assert!(c.send_text(&key, "still here?").await.is_err());
    c.close().await;
    assert_eq!(
        group_texts(&sync_events(&bob).await, &key),
        vec!["before", "after carol"]
    );
}

#[tokio::test]
async fn only_admins_add_remove_and_change_settings_when_the_group_says_so() {
    let server = TestServer::start();
    let (alice, bob, carol) = registered_trio(&server).await;
    let dave = dave();
    dave.register(&server).await;
    let (mut a, key) = family(&server, &alice, &[&bob, &carol], true).await;

    let mut b = bob.connect().await;
    let refused = b.add_members(&key, std::slice::from_ref(&dave.phone)).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("only admins")),
        "{refused:?}"
    );
    let refused = b.remove_member(&key, &carol.phone).await;
    assert!(refused.is_err_and(|e| e.to_string().contains("only admins")));
    let rename = dak_client::GroupEdit {
        title: Some("Bob's group".into()),
        ..Default::default()
    };
    assert!(b.update_group(&key, rename.clone()).await.is_err());
    assert_eq!(
        b.group_info(&key).unwrap().members.len(),
        3,
        "nothing changed"
    );
    b.close().await;

    // alice makes bob an admin: now he may.
    a.set_admin(&key, &bob.phone, true).await.unwrap();
    a.close().await;
    let mut b = bob.connect().await;
    b.sync(|_| {}).await.unwrap();
    assert!(b.group_info(&key).unwrap().you_are_admin);
    b.add_members(&key, std::slice::from_ref(&dave.phone))
        .await
        .unwrap();
    b.update_group(&key, rename).await.unwrap();
    b.close().await;

    let events = sync_events(&carol).await;
    let seen = changes(&events);
    assert!(
        seen.contains(&GroupChange::Added {
            phones: vec![dave.phone.clone()]
        }),
        "{seen:?}"
    );
    assert!(
        !seen
            .iter()
            .any(|c| matches!(c, GroupChange::RuleBroken { .. })),
        "{seen:?}"
    );
    let info = carol.connect().await.group_info(&key).unwrap();
    assert_eq!(info.title, "Bob's group");
    assert_eq!(info.members.len(), 4);
    sync_events(&dave).await;
    assert_eq!(
        dave.connect().await.group_info(&key).unwrap().title,
        "Bob's group"
    );
}

#[tokio::test]
async fn a_member_who_leaves_is_removed_and_reads_nothing_more() {
    let server = TestServer::start();
    let (alice, bob, carol) = registered_trio(&server).await;
    let (a, key) = family(&server, &alice, &[&bob, &carol], false).await;
    a.close().await;

    let mut b = bob.connect().await;
    b.leave_group(&key).await.unwrap();
    assert!(b.groups().unwrap().is_empty());
    b.close().await;

    // alice, the admin, sees bob leave and removes his devices.
    let events = sync_events(&alice).await;
    assert!(
        changes(&events).contains(&GroupChange::Left {
            phone: bob.phone.clone()
        }),
        "{events:?}"
    );
    let mut a = alice.connect().await;
    let info = a.group_info(&key).unwrap();
    assert_eq!(
        info.members
            .iter()
            .map(|m| m.phone.clone())
            .collect::<Vec<_>>(),
        vec![alice.phone.clone(), carol.phone.clone()]
    );
    let sent = a.send_text(&key, "bob has gone").await.unwrap();
    assert_eq!(sent.recipient_devices, 1);
    a.close().await;
    assert!(group_texts(&sync_events(&bob).await, &key).is_empty());
    let carol_events = sync_events(&carol).await;
    assert_eq!(group_texts(&carol_events, &key), vec!["bob has gone"]);
    assert!(
        !changes(&carol_events)
            .iter()
            .any(|c| matches!(c, GroupChange::RuleBroken { .. })),
        "removing a member who left breaks no rule"
    );
}

#[tokio::test]
async fn invite_links_add_at_once_or_after_approval_and_stop_when_revoked() {
    let server = TestServer::start();
    let (alice, bob, carol) = registered_trio(&server).await;
    let dave = dave();
    dave.register(&server).await;
    let (mut a, key) = family(&server, &alice, &[&bob], true).await;

    // Without approval: carol asks, alice's device adds her.
    let link = a.create_invite_link(&key, false).await.unwrap();
    a.close().await;
    let mut c = carol.connect().await;
    c.join_by_link(&link).await.unwrap();
    c.close().await;
    sync_events(&alice).await;
    assert!(changes(&sync_events(&carol).await).contains(&GroupChange::Joined));
    let mut c = carol.connect().await;
    c.send_text(&key, "thanks for the link").await.unwrap();
    c.close().await;
    assert_eq!(
        group_texts(&sync_events(&bob).await, &key),
        vec!["thanks for the link"]
    );

    // Revoked: the old link adds no one.
    let mut a = alice.connect().await;
    a.revoke_invite_link(&key).await.unwrap();
    a.close().await;
    let mut d = dave.connect().await;
    d.join_by_link(&link).await.unwrap();
    d.close().await;
    sync_events(&alice).await;
    assert!(sync_events(&dave).await.is_empty(), "no Welcome for dave");

    // With approval: dave's request waits for alice.
    let mut a = alice.connect().await;
    let link = a.create_invite_link(&key, true).await.unwrap();
    a.close().await;
    let mut d = dave.connect().await;
    d.join_by_link(&link).await.unwrap();
    d.close().await;
    let events = sync_events(&alice).await;
    assert!(changes(&events).contains(&GroupChange::JoinRequest {
        phone: dave.phone.clone()
    }));
    let mut a = alice.connect().await;
    assert_eq!(
        a.group_info(&key).unwrap().join_requests,
        vec![dave.phone.clone()]
    );
    a.approve_join(&key, &dave.phone).await.unwrap();
    assert_eq!(a.group_info(&key).unwrap().members.len(), 4);
    a.close().await;
    assert!(changes(&sync_events(&dave).await).contains(&GroupChange::Joined));
}

#[tokio::test]
async fn the_server_refuses_a_group_past_its_member_limit() {
    let server = TestServer::with_env(&[("DAK_MAX_GROUP_MEMBERS", "2")]);
    let (alice, bob, carol) = registered_trio(&server).await;
    let mut a = alice.connect().await;
    let err = a
        .create_group("Too many", &[bob.phone.clone(), carol.phone.clone()], false)
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(dak_proto::v1::ErrorCode::GroupFull),
        "{err}"
    );
    assert!(err.to_string().contains('2'), "{err}");
    assert!(
        a.groups().unwrap().is_empty(),
        "a group the server refused is not listed"
    );
    // Within the limit it works.
    a.create_group("Pair", std::slice::from_ref(&bob.phone), false)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_removed_member_can_be_added_back_and_reads_again() {
    let server = TestServer::start();
    let (alice, bob, carol) = registered_trio(&server).await;
    let (mut a, key) = family(&server, &alice, &[&bob, &carol], false).await;
    a.remove_member(&key, &carol.phone).await.unwrap();
    a.send_text(&key, "while carol was out").await.unwrap();
    assert!(changes(&sync_events(&carol).await).contains(&GroupChange::RemovedMe));

    a.add_members(&key, std::slice::from_ref(&carol.phone))
        .await
        .unwrap();
    a.send_text(&key, "welcome back").await.unwrap();
    a.close().await;
    let events = sync_events(&carol).await;
    assert!(
        changes(&events).contains(&GroupChange::Joined),
        "{events:?}"
    );
    assert_eq!(group_texts(&events, &key), vec!["welcome back"]);
    let mut c = carol.connect().await;
    c.send_text(&key, "glad to be back").await.unwrap();
    c.close().await;
    assert_eq!(
        group_texts(&sync_events(&bob).await, &key),
        vec!["while carol was out", "welcome back", "glad to be back"]
    );
}

#[tokio::test]
async fn a_members_new_device_learns_the_title_and_a_too_big_avatar_is_refused_whole() {
    let server = TestServer::start();
    let (alice, bob) = registered_pair(&server).await;
    let (a, key) = family(&server, &alice, &[&bob], false).await;
    a.close().await;

    let laptop = Person::new(&bob.phone);
    link(&server, &bob, &laptop).await;
    // alice's next message adds the laptop, then sends the settings again.
    let mut a = alice.connect().await;
    a.send_text(&key, "hello laptop").await.unwrap();
    let events = sync_events(&laptop).await;
    assert_eq!(group_texts(&events, &key), vec!["hello laptop"]);
    let info = laptop.connect().await.group_info(&key).unwrap();
    assert_eq!(info.title, format!("Family {MARKER}"));

    let big = dak_client::GroupEdit {
        avatar: Some(vec![0u8; 60 * 1024]),
        ..Default::default()
    };
    let err = a.update_group(&key, big).await.unwrap_err();
    assert!(err.to_string().contains("limit"), "{err}");
    assert_eq!(a.group_info(&key).unwrap().avatar_bytes, 0, "nothing kept");
    let fits = dak_client::GroupEdit {
        avatar: Some(vec![7u8; 40 * 1024]),
        ..Default::default()
    };
    a.update_group(&key, fits).await.unwrap();
    a.close().await;
    sync_events(&bob).await;
    assert_eq!(
        bob.connect().await.group_info(&key).unwrap().avatar_bytes,
        40 * 1024
    );
}
