//! Bad input gets a clear, typed error and changes nothing: wrong codes,
//! malformed numbers, forged signatures, oversized and malformed frames,
//! unknown recipients, another device's mailbox, PINs, device limits.

mod common;

use common::*;
use dak_client::transport::{CertTrust, Transport, WsTransport};
use dak_client::{Client, ClientError, Connection};
use dak_proto::v1::{self, ErrorCode, client_frame::Request, server_frame::Body};
use prost::Message;

fn code(e: &ClientError) -> ErrorCode {
    e.code()
        .unwrap_or_else(|| panic!("expected a server error, got {e}"))
}

/// A transport authenticated as `who`'s device, for frames no client sends.
async fn authenticated_raw(server: &TestServer, who: &Person) -> WsTransport {
    let mut t = raw(server).await;
    let challenge = dak_proto::decode_server_frame(&t.recv().await.unwrap().unwrap()).unwrap();
    let Some(Body::Challenge(c)) = challenge.body else {
        panic!("no challenge")
    };
    let profile = who.profile();
    let device = profile.registration().unwrap().device_id;
    let payload = dak_proto::auth_payload(
        dak_proto::AuthPurpose::Authenticate,
        &c.nonce,
        &device.to_be_bytes(),
    );
    use ed25519_dalek::Signer;
    let frame = v1::ClientFrame {
        request_id: 1,
        request: Some(Request::Authenticate(v1::Authenticate {
            device_id: device,
            signature: profile
                .identity()
                .unwrap()
                .sign(&payload)
                .to_bytes()
                .to_vec(),
        })),
    };
    t.send(frame.encode_to_vec()).await.unwrap();
    loop {
        let f = dak_proto::decode_server_frame(&t.recv().await.unwrap().unwrap()).unwrap();
        if f.request_id == 1 {
            assert!(matches!(f.body, Some(Body::Authenticated(_))), "{f:?}");
            return t;
        }
    }
}

/// Whether the server closes the connection (frames it pushes meanwhile,
/// such as QueueEmpty, are skipped).
async fn closes(t: &mut WsTransport) -> bool {
    for _ in 0..16 {
        match t.recv().await {
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => return true,
        }
    }
    false
}

async fn raw(server: &TestServer) -> WsTransport {
    WsTransport::connect(&server.url, &CertTrust::FirstUse)
        .await
        .unwrap()
        .0
}

#[tokio::test]
async fn wrong_and_expired_codes_and_bad_numbers_are_refused() {
    let server = TestServer::with_env(&[("DAK_CODE_ATTEMPTS", "3")]);
    let alice = alice();
    let profile = alice.profile();

    for bad in ["9800000001", "+0000", "+91 98x"] {
        let err = Client::request_code(&profile, &server.url, bad)
            .await
            .unwrap_err();
        assert_eq!(code(&err), ErrorCode::InvalidPhone, "{bad}");
    }
    let right = server.send_code(&profile, &alice.phone).await;
    let wrong = if right == "000000" {
        "000001"
    } else {
        "000000"
    };
    let err = Client::verify(&profile, wrong, "", "p").await.unwrap_err();
    assert_eq!(code(&err), ErrorCode::CodeWrong);
    assert!(err.to_string().contains("2 attempts left"), "{err}");
    Client::verify(&profile, wrong, "", "p").await.unwrap_err();
    let err = Client::verify(&profile, wrong, "", "p").await.unwrap_err();
    assert_eq!(code(&err), ErrorCode::TooManyAttempts);
    // Even the right code is refused now: a new one must be asked for.
    let err = Client::verify(&profile, &right, "", "p").await.unwrap_err();
    assert_eq!(code(&err), ErrorCode::TooManyAttempts);
    assert!(profile.registration().is_err(), "nothing registered");

    let fresh = server.send_code(&profile, &alice.phone).await;
    Client::verify(&profile, &fresh, "", "p").await.unwrap();
    // The code itself never reaches the log.
    assert!(!server.log_text().contains(&fresh));
}

#[tokio::test]
async fn codes_expire() {
    let server = TestServer::with_env(&[("DAK_CODE_TTL", "1s")]);
    let alice = alice();
    let profile = alice.profile();
    Client::request_code(&profile, &server.url, &alice.phone)
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let err = Client::verify(&profile, &server.code_for(&alice.phone), "", "p")
        .await
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::CodeExpired);
}

#[tokio::test]
async fn code_requests_are_limited_per_number_and_per_address() {
    let server = TestServer::with_env(&[
        ("DAK_CODES_PER_PHONE_PER_HOUR", "2"),
        ("DAK_CODES_PER_PHONE_BURST", "2"),
        ("DAK_CODES_PER_IP_PER_HOUR", "4"),
    ]);
    let alice = alice();
    let profile = alice.profile();
    Client::request_code(&profile, &server.url, &alice.phone)
        .await
        .unwrap();
    Client::request_code(&profile, &server.url, &alice.phone)
        .await
        .unwrap();
    let err = Client::request_code(&profile, &server.url, &alice.phone)
        .await
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::RateLimited);
    Client::request_code(&profile, &server.url, "+919800000077")
        .await
        .unwrap();
    let err = Client::request_code(&profile, &server.url, "+919800000078")
        .await
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::RateLimited, "per-IP limit");
}

#[tokio::test]
async fn a_forged_signature_is_refused() {
    let server = TestServer::start();
    let alice = alice();
    alice.register(&server).await;
    let device = alice.profile().registration().unwrap().device_id;
    let mut conn = Connection::open(
        Box::new(raw(&server).await),
        std::sync::Arc::new(dak_client::SystemEnvironment),
    )
    .await
    .unwrap();
    let mallory = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let err = conn.authenticate(&mallory, device).await.unwrap_err();
    assert_eq!(code(&err), ErrorCode::AuthFailed);
    // A signature for another connection's challenge is no better.
    let other = Connection::open(
        Box::new(raw(&server).await),
        std::sync::Arc::new(dak_client::SystemEnvironment),
    )
    .await
    .unwrap();
    let replayed = other.sign(
        &alice.profile().identity().unwrap(),
        dak_proto::AuthPurpose::Authenticate,
        &device.to_be_bytes(),
    );
    let err = conn
        .call(Request::Authenticate(v1::Authenticate {
            device_id: device,
            signature: replayed,
        }))
        .await
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::AuthFailed);
    // Unauthenticated, nothing else works.
    let err = conn
        .call(Request::ListDevices(v1::ListDevices {}))
        .await
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::NotAuthenticated);
}

#[tokio::test]
async fn oversized_and_malformed_frames_close_only_that_connection() {
    let server = TestServer::start();
    let (alice, bob) = registered_pair(&server).await;
    let mut bystander = alice.connect().await;

    // Beyond the protocol's frame limit, the WebSocket layer refuses the
    // frame before buffering it, and closes with 1009 (message too big).
    let mut t = authenticated_raw(&server, &alice).await;
    let _ = t.send(vec![0u8; dak_proto::MAX_FRAME_BYTES + 1]).await;
    assert!(closes(&mut t).await, "connection closed");
    // Before authentication, far less is accepted: the connection is cut
    // off once it has sent the pre-authentication budget.
    let mut t = raw(&server).await;
    t.recv().await.unwrap().unwrap(); // challenge
    let _ = t.send(vec![0u8; 100 * 1024]).await;
    assert!(closes(&mut t).await, "connection closed");

    let mut t = raw(&server).await;
    t.recv().await.unwrap().unwrap();
    t.send(vec![0xff, 0xff, 0xff, 0x01]).await.unwrap();
    let reply = dak_proto::decode_server_frame(&t.recv().await.unwrap().unwrap()).unwrap();
    let Some(Body::Error(e)) = reply.body else {
        panic!("expected an error")
    };
    assert_eq!(e.kind(), ErrorCode::MalformedFrame);

    // A body over the limit is refused but the connection lives on.
    let mut t = authenticated_raw(&server, &alice).await;
    let big = v1::ClientFrame {
        request_id: 9,
        request: Some(Request::SendMessage(v1::SendMessage {
            message_id: vec![1; 16],
            body: vec![0; dak_proto::MAX_BODY_BYTES + 1],
            ..Default::default()
        })),
    };
    t.send(big.encode_to_vec()).await.unwrap();
    let reply = loop {
        let f = dak_proto::decode_server_frame(&t.recv().await.unwrap().unwrap()).unwrap();
        if f.request_id != 0 {
            break f; // pushes (QueueEmpty) carry none
        }
    };
    assert_eq!(reply.request_id, 9);
    let Some(Body::Error(e)) = reply.body else {
        panic!("expected an error")
    };
    assert_eq!(e.kind(), ErrorCode::BodyTooLarge);

    // The bystander never noticed.
    bystander.send_text(&bob.phone, "still here").await.unwrap();
    assert_eq!(bob.sync_texts().await, vec!["still here"]);
}

#[tokio::test]
async fn unknown_recipients_are_a_clear_error() {
    let server = TestServer::start();
    let alice = alice();
    alice.register(&server).await;
    let mut a = alice.connect().await;
    let err = a.send_text("+919811111111", "anyone?").await.unwrap_err();
    assert_eq!(code(&err), ErrorCode::UnknownAccount);
    assert!(err.to_string().contains("not on Dak"), "{err}");
    assert!(
        a.profile().outbox().unwrap().is_empty(),
        "a refused message does not clog the outbox"
    );
}

#[tokio::test]
async fn a_device_cannot_ack_another_devices_mailbox() {
    let server = TestServer::start();
    let (alice, bob, carol) = registered_trio(&server).await;
    alice
        .connect()
        .await
        .send_text(&bob.phone, "for bob")
        .await
        .unwrap();
    // carol guesses the seq numbers of bob's mailbox and acks them.
    let mut c = carol.connect().await;
    c.sync(|_| {}).await.unwrap();
    drop(c);
    let mut conn = carol.raw_connection(&server).await;
    conn.call(Request::AckDeliveries(v1::AckDeliveries {
        seqs: (0..100).collect(),
    }))
    .await
    .unwrap();
    assert_eq!(bob.sync_texts().await, vec!["for bob"]);
}

#[tokio::test]
async fn registration_lock_pin_protects_the_number_and_tells_old_devices() {
    let server = TestServer::with_env(&[("DAK_PIN_ATTEMPTS", "2")]);
    let alice = alice();
    alice.register(&server).await;
    let mut a = alice.connect().await;
    let err = a.set_pin("12ab").await.unwrap_err();
    assert_eq!(code(&err), ErrorCode::BadRequest);
    a.set_pin("246810").await.unwrap();

    let thief = Person::new(&alice.phone);
    let tp = thief.profile();
    let c = server.send_code(&tp, &alice.phone).await;
    let err = Client::verify(&tp, &c, "", "x").await.unwrap_err();
    assert_eq!(code(&err), ErrorCode::PinRequired);
    let err = Client::verify(&tp, &c, "111111", "x").await.unwrap_err();
    assert_eq!(code(&err), ErrorCode::PinWrong);
    assert!(a.devices().await.is_ok(), "alice's device still works");

    // alice herself, on a new phone, with the PIN: the old phone is told.
    let new_phone = Person::new(&alice.phone);
    let np = new_phone.profile();
    let c = server.send_code(&np, &alice.phone).await;
    Client::verify(&np, &c, "246810", "new phone")
        .await
        .unwrap();
    let err = loop {
        match a.next_events().await {
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    assert_eq!(code(&err), ErrorCode::DeviceRevoked);
    assert!(
        err.to_string().contains("registered on another phone"),
        "{err}"
    );
    let err = Client::connect(alice.profile()).await.err().unwrap();
    assert_eq!(code(&err), ErrorCode::DeviceRevoked);
}

#[tokio::test]
async fn wrong_pins_lock_the_number() {
    let server = TestServer::with_env(&[("DAK_PIN_ATTEMPTS", "2")]);
    let alice = alice();
    alice.register(&server).await;
    alice.connect().await.set_pin("135790").await.unwrap();
    let thief = Person::new(&alice.phone);
    let tp = thief.profile();
    let c = server.send_code(&tp, &alice.phone).await;
    assert_eq!(
        code(&Client::verify(&tp, &c, "000000", "x").await.unwrap_err()),
        ErrorCode::PinWrong
    );
    assert_eq!(
        code(&Client::verify(&tp, &c, "000001", "x").await.unwrap_err()),
        ErrorCode::TooManyAttempts
    );
    // Locked: even the right PIN waits.
    assert_eq!(
        code(&Client::verify(&tp, &c, "135790", "x").await.unwrap_err()),
        ErrorCode::TooManyAttempts
    );
    assert!(alice.connect().await.devices().await.is_ok());
}

#[tokio::test]
async fn linked_devices_are_capped() {
    let server = TestServer::with_env(&[("DAK_MAX_LINKED_DEVICES", "1")]);
    let bob = bob();
    bob.register(&server).await;
    link(&server, &bob, &Person::new(&bob.phone)).await;
    // A second link request is refused at approval.
    let second = Person::new(&bob.phone);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let profile = second.profile();
    let url = server.url.clone();
    let waiter = tokio::spawn(async move {
        let mut tx = Some(tx);
        let _ = Client::link(&profile, &url, "tablet", |code, _| {
            if let Some(tx) = tx.take() {
                let _ = tx.send(code.to_string());
            }
        })
        .await;
    });
    let code_text = rx.await.unwrap();
    let err = bob
        .connect()
        .await
        .approve_link(&code_text)
        .await
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::TooManyDevices);
    let err = bob
        .connect()
        .await
        .approve_link("NOSUCH23")
        .await
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::LinkCodeInvalid);
    waiter.abort();
}

#[tokio::test]
async fn linked_devices_must_relink_after_the_maximum_age() {
    let server = TestServer::with_env(&[("DAK_LINKED_DEVICE_MAX_AGE", "3s")]);
    let bob = bob();
    let laptop = Person::new(&bob.phone);
    bob.register(&server).await;
    link(&server, &bob, &laptop).await;
    let mut l = laptop.connect().await;
    let err = loop {
        match l.next_events().await {
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    assert_eq!(code(&err), ErrorCode::LinkExpired);
    let err = Client::connect(laptop.profile()).await.err().unwrap();
    assert_eq!(code(&err), ErrorCode::LinkExpired);
    // The primary device is not affected.
    assert_eq!(bob.connect().await.devices().await.unwrap().len(), 1);
}

#[tokio::test]
async fn only_the_addressee_can_tick_a_message() {
    let server = TestServer::start();
    let (alice, bob, carol) = registered_trio(&server).await;
    let mut a = alice.connect().await;
    let sent = a.send_text(&bob.phone, "for bob only").await.unwrap();
    // carol learns the id somehow and sends a forged read receipt to alice.
    let forged = v1::Content {
        kind: Some(v1::content::Kind::Receipt(v1::Receipt {
            r#type: v1::ReceiptType::Read as i32,
            message_ids: vec![sent.id.clone()],
            ..Default::default()
        })),
    };
    let mut c = carol.connect().await;
    let q = dak_client::queue_text(c.profile(), &alice.phone, "hi").unwrap();
    c.profile()
        .queue_outgoing(&[9; 16], &alice.phone, &forged.encode_to_vec())
        .unwrap();
    c.flush_outbox().await.unwrap();
    assert!(c.profile().message(&q.0).unwrap().unwrap().acked);
    a.sync(|_| {}).await.unwrap();
    assert_eq!(a.tick(&sent.id).unwrap().state, dak_client::TickState::Sent);
}
