//! The message features people expect, through the real server: replies,
//! reactions, edits, delete for everyone, forwarding labels and limits,
//! disappearing messages and broadcast lists. Every one of them travels as
//! encrypted content; the rules (only the author edits, within the window)
//! are checked by the sender and again by the recipient.

mod common;

use common::*;
use dak_client::{Event, ForwardLimits, MessageView, TextOptions};

fn messages(events: &[Event]) -> Vec<MessageView> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Message(m) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn replies_reactions_edits_and_deletes_reach_the_other_side() {
    let server = TestServer::start();
    let (alice, bob) = registered_pair(&server).await;
    let mut a = alice.connect().await;
    let original = a.send_text(&bob.phone, "lunch at one?").await.unwrap();
    a.close().await;
    sync_events(&bob).await;

    // bob replies, quoting, and reacts.
    let mut b = bob.connect().await;
    let opts = TextOptions {
        reply_to: Some(original.id.clone()),
        forwarded: 0,
        ..Default::default()
    };
    b.send_text_with(&alice.phone, "yes!", &opts).await.unwrap();
    b.react(&alice.phone, &original.id, "👍").await.unwrap();
    // Only the author edits.
    let refused = b.edit_message(&original.id, "lunch at two").await;
    assert!(refused.is_err_and(|e| e.to_string().contains("only the sender")));
    b.close().await;

    let events = sync_events(&alice).await;
    let reply = messages(&events).pop().expect("the reply");
    let quote = reply.reply_to.expect("a quote");
    assert_eq!(
        (quote.id, quote.from.as_str(), quote.snippet.as_str()),
        (original.id.clone(), alice.phone.as_str(), "lunch at one?")
    );
    assert!(events.iter().any(
        |e| matches!(e, Event::Reaction { emoji, from, .. } if emoji == "👍" && *from == bob.phone)
    ));
    assert_eq!(
        alice.profile().reactions(&original.id).unwrap(),
        vec![(bob.phone.clone(), "👍".to_string())]
    );

    // alice edits, then deletes for everyone.
    let mut a = alice.connect().await;
    a.edit_message(&original.id, "lunch at half past one?")
        .await
        .unwrap();
    a.close().await;
    let events = sync_events(&bob).await;
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Edited { text, .. } if text == "lunch at half past one?"))
    );
    let stored = bob.profile().message(&original.id).unwrap().unwrap();
    assert_eq!(stored.text, "lunch at half past one?");
    assert!(stored.edited_ms > 0);

    let mut a = alice.connect().await;
    a.delete_for_everyone(&original.id).await.unwrap();
    a.close().await;
    let events = sync_events(&bob).await;
    assert!(events.iter().any(|e| matches!(e, Event::Deleted { .. })));
    let stored = bob.profile().message(&original.id).unwrap().unwrap();
    assert!(stored.deleted);
    assert!(stored.text.is_empty(), "the text is gone from bob's device");
    assert!(bob.profile().reactions(&original.id).unwrap().is_empty());
}

#[tokio::test]
async fn forwards_are_labelled_and_limited() {
    let server = TestServer::start();
    let (alice, bob, carol) = registered_trio(&server).await;
    let mut a = alice.connect().await;
    a.send_text(&bob.phone, "a rumour").await.unwrap();
    let opts = TextOptions {
        reply_to: None,
        forwarded: 5,
        ..Default::default()
    };
    a.send_text_with(&bob.phone, "a famous rumour", &opts)
        .await
        .unwrap();
    a.close().await;
    let got = messages(&sync_events(&bob).await);
    assert_eq!(got[0].forward_label(), None);
    assert_eq!(got[1].forward_label(), Some("Forwarded many times"));

    let mut b = bob.connect().await;
    let limits = ForwardLimits::default();
    // Six chats is one too many for any message; checked before anything leaves.
    let six: Vec<String> = (5..11).map(|n| format!("+91980000000{n}")).collect();
    let refused = b.forward(&got[0].id, &six, limits).await;
    assert!(refused.is_err_and(|e| e.to_string().contains("at most 5")));
    // A message forwarded many times goes to one chat at a time.
    let two = vec![carol.phone.clone(), alice.phone.clone()];
    let refused = b.forward(&got[1].id, &two, limits).await;
    assert!(refused.is_err_and(|e| e.to_string().contains("forwarded many times")));
    b.forward(&got[1].id, std::slice::from_ref(&carol.phone), limits)
        .await
        .unwrap();
    b.forward(&got[0].id, std::slice::from_ref(&carol.phone), limits)
        .await
        .unwrap();
    // The limits are the user's to configure.
    let loose = ForwardLimits {
        max_chats: 5,
        max_chats_when_frequent: 2,
    };
    b.forward(&got[1].id, &two, loose).await.unwrap();
    b.close().await;

    let at_carol = messages(&sync_events(&carol).await);
    let labels: Vec<(String, Option<&str>, u32)> = at_carol
        .iter()
        .map(|m| (m.text.clone(), m.forward_label(), m.forwarded))
        .collect();
    assert_eq!(
        labels,
        vec![
            ("a famous rumour".into(), Some("Forwarded many times"), 6),
            ("a rumour".into(), Some("Forwarded"), 1),
            ("a famous rumour".into(), Some("Forwarded many times"), 6),
        ]
    );
}

#[tokio::test]
async fn disappearing_messages_vanish_from_both_devices() {
    let server = TestServer::start();
    let (alice, bob) = registered_pair(&server).await;
    let mut a = alice.connect().await;
    a.send_text(&bob.phone, "kept").await.unwrap();
    a.set_timer(&bob.phone, 2).await.unwrap();
    let gone = a.send_text(&bob.phone, "gone soon").await.unwrap();
    a.close().await;

    let events = sync_events(&bob).await;
    let got = messages(&events);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].expires_at_ms, 0);
    assert!(got[1].expires_at_ms > 0, "the timer came with the message");
    assert!(
        events.iter().any(|e| matches!(e, Event::Group { .. })),
        "bob is told the timer changed"
    );
    assert_eq!(
        dak_client::timer_of(&bob.profile(), &alice.phone).unwrap(),
        2
    );

    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    for who in [&alice, &bob] {
        let profile = who.profile();
        assert!(
            profile.message(&gone.id).unwrap().is_none(),
            "{}",
            who.phone
        );
        let texts: Vec<String> = profile
            .conversation(
                if who.phone == alice.phone {
                    &bob.phone
                } else {
                    &alice.phone
                },
                10,
            )
            .unwrap()
            .into_iter()
            .map(|m| m.text)
            .collect();
        assert_eq!(texts, vec!["kept"]);
    }
}

#[tokio::test]
async fn a_broadcast_reaches_each_contact_in_their_own_chat() {
    let server = TestServer::start();
    let (alice, bob, carol) = registered_trio(&server).await;
    let members = dak_client::save_broadcast_list(
        &alice.profile(),
        "friends",
        &[bob.phone.clone(), carol.phone.clone()],
    )
    .unwrap();
    assert_eq!(members.len(), 2);
    let mut a = alice.connect().await;
    let sent = a.broadcast("friends", "party on friday").await.unwrap();
    assert_eq!(sent.len(), 2);
    assert_ne!(sent[0].id, sent[1].id, "one message per chat");
    a.close().await;
    for who in [&bob, &carol] {
        let got = messages(&sync_events(who).await);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].text, "party on friday");
        assert_eq!(got[0].conversation, alice.phone, "a 1:1 message");
    }
}
