//! Message requests, as in Signal and WhatsApp: a chat a stranger starts
//! arrives as a request; no read receipt goes out until it is accepted
//! (or answered); blocking stops the stranger's messages on every device;
//! a report blocks too.

mod common;

use common::*;
use dak_client::{Event, TickState};

fn requests_in(events: &[Event]) -> Vec<(String, String)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::MessageRequest { conversation, from } => {
                Some((conversation.key(), from.clone()))
            }
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_strangers_chat_is_a_request_until_accepted() {
    let server = TestServer::start();
    let (alice, bob) = registered_pair(&server).await;
    let mut a = alice.connect().await;
    let sent = a
        .send_text(&bob.phone, "hi, we met at the fair")
        .await
        .unwrap();
    a.close().await;

    let events = sync_events(&bob).await;
    assert_eq!(
        requests_in(&events),
        vec![(alice.phone.clone(), alice.phone.clone())]
    );
    assert_eq!(texts(&events), vec!["hi, we met at the fair"]);
    let profile = bob.profile();
    assert!(dak_client::requests::is_request(&profile, &alice.phone).unwrap());

    // Reading a request tells the stranger nothing.
    let mut b = bob.connect().await;
    assert_eq!(b.mark_read(None).await.unwrap(), 0);
    b.close().await;
    sync_events(&alice).await;
    assert_eq!(
        alice.connect().await.tick(&sent.id).unwrap().state,
        TickState::Delivered
    );

    // Answering accepts it: the read receipt goes out, and alice is known.
    let mut b = bob.connect().await;
    b.send_text(&alice.phone, "hello!").await.unwrap();
    assert!(!dak_client::requests::is_request(&bob.profile(), &alice.phone).unwrap());
    assert_eq!(b.mark_read(None).await.unwrap(), 1);
    b.close().await;
    let mut a = alice.connect().await;
    let mut events = Vec::new();
    a.wait_for_tick(&sent.id, TickState::Read, |e| events.push(e.clone()))
        .await
        .unwrap();
    a.close().await;

    // alice wrote first, so bob's answer is no request on her side.
    events.extend(sync_events(&alice).await);
    assert!(requests_in(&events).is_empty(), "{events:?}");
    assert_eq!(texts(&events), vec!["hello!"]);
}

#[tokio::test]
async fn a_group_a_stranger_adds_you_to_is_a_request() {
    let server = TestServer::start();
    let (alice, bob, carol) = registered_trio(&server).await;
    let mut a = alice.connect().await;
    let group = a
        .create_group("Bargains", &[bob.phone.clone(), carol.phone.clone()], false)
        .await
        .unwrap();
    a.send_text(&group.key, "cheap phones").await.unwrap();
    a.close().await;
    let events = sync_events(&bob).await;
    assert_eq!(
        requests_in(&events),
        vec![(group.key.clone(), alice.phone.clone())]
    );
    let mut b = bob.connect().await;
    b.accept_request(&group.key).unwrap();
    assert!(b.accept_request(&group.key).is_err(), "accepted already");
    assert_eq!(b.mark_read(None).await.unwrap(), 1);
}

#[tokio::test]
async fn blocking_stops_a_stranger_and_a_report_blocks_too() {
    let server = TestServer::start();
    let (alice, bob, carol) = registered_trio(&server).await;
    let mut a = alice.connect().await;
    a.send_text(&bob.phone, "buy now").await.unwrap();
    a.close().await;
    sync_events(&bob).await;

    let mut b = bob.connect().await;
    b.block(&alice.phone, true).await.unwrap();
    b.close().await;
    assert!(dak_client::requests::is_blocked(&bob.profile(), &alice.phone).unwrap());
    let mut a = alice.connect().await;
    a.send_text(&bob.phone, "buy now!!").await.unwrap();
    a.close().await;
    assert!(
        texts(&sync_events(&bob).await).is_empty(),
        "a blocked number's message arrived"
    );

    // Unblocked, she reaches him again.
    let mut b = bob.connect().await;
    b.block(&alice.phone, false).await.unwrap();
    b.close().await;
    let mut a = alice.connect().await;
    a.send_text(&bob.phone, "sorry").await.unwrap();
    a.close().await;
    assert_eq!(texts(&sync_events(&bob).await), vec!["sorry"]);

    // carol's spam is reported: blocked from then on.
    let mut c = carol.connect().await;
    c.send_text(&bob.phone, "win a prize").await.unwrap();
    c.close().await;
    sync_events(&bob).await;
    let mut b = bob.connect().await;
    b.report(&carol.phone).await.unwrap();
    b.close().await;
    let mut c = carol.connect().await;
    c.send_text(&bob.phone, "win a prize!!").await.unwrap();
    c.close().await;
    assert!(texts(&sync_events(&bob).await).is_empty());
}
