//! The attacks of docs/SECURITY.md, each tried against the real binary as
//! an attacker would: racing guesses at a PIN and a code, SMS pumping from
//! one network and into one number range, lockout of a number's owner,
//! silent and dribbling connections, half-sent frames, oversized commits,
//! floods, KeyPackage draining, number enumeration and group probing.
//!
//! No test asserts on wall-clock speed; memory is read from /proc with
//! generous margins.

mod common;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use dak_client::transport::{CertTrust, WsTransport};
use dak_client::{ClientError, Connection};
use dak_proto::AuthPurpose;
use dak_proto::v1::{self, ErrorCode, client_frame::Request, server_frame::Body};
use ed25519_dalek::SigningKey;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The server's own words.
fn said(e: &ClientError) -> String {
    match e {
        ClientError::Server(e) => e.message.clone(),
        other => other.to_string(),
    }
}

fn code_of(e: &ClientError) -> ErrorCode {
    e.code()
        .unwrap_or_else(|| panic!("expected a server error, got {e}"))
}

async fn conn_from(server: &TestServer, local: Option<IpAddr>) -> Connection {
    let (t, _) = WsTransport::connect_from(&server.url, &CertTrust::FirstUse, local)
        .await
        .expect("connect");
    Connection::open(Box::new(t), Arc::new(dak_client::SystemEnvironment))
        .await
        .expect("challenge")
}

/// Asks for a code as `dak register` does; the registration session on success.
async fn ask_code(
    server: &TestServer,
    phone: &str,
    local: Option<IpAddr>,
) -> Result<Vec<u8>, ClientError> {
    let mut conn = conn_from(server, local).await;
    let answer = conn
        .call(Request::RequestCode(v1::RequestCode {
            phone: phone.into(),
        }))
        .await;
    conn.close().await;
    match answer? {
        Body::CodeSent(sent) => Ok(sent.session),
        other => panic!("unexpected answer {other:?}"),
    }
}

fn verify_request(
    conn: &Connection,
    key: &SigningKey,
    phone: &str,
    code: &str,
    pin: &str,
    session: &[u8],
) -> Request {
    Request::VerifyCode(v1::VerifyCode {
        phone: phone.into(),
        code: code.into(),
        identity_key: key.verifying_key().to_bytes().to_vec(),
        signature: conn.sign(key, AuthPurpose::Register, phone.as_bytes()),
        pin: pin.into(),
        device_name: "attacker".into(),
        session: session.to_vec(),
    })
}

/// Sends one VerifyCode per (connection, code, pin) at once and collects the answers.
async fn race_verifies(
    server: &TestServer,
    phone: &str,
    session: &[u8],
    guesses: Vec<(String, String)>,
) -> Vec<Result<Body, ClientError>> {
    let key = SigningKey::from_bytes(&[9; 32]);
    // Every connection first, so that the requests race as closely as they can.
    let mut ready = Vec::new();
    for (code, pin) in guesses {
        let conn = conn_from(server, None).await;
        let request = verify_request(&conn, &key, phone, &code, &pin, session);
        ready.push((conn, request));
    }
    let tasks: Vec<_> = ready
        .into_iter()
        .map(|(mut conn, request)| tokio::spawn(async move { conn.call(request).await }))
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("task"));
    }
    out
}

fn wrong_code(right: &str) -> &'static str {
    if right == "000000" {
        "000001"
    } else {
        "000000"
    }
}

#[tokio::test]
async fn racing_pins_are_counted_before_any_is_checked() {
    let server = TestServer::with_env(&[
        ("DAK_PIN_ATTEMPTS", "5"),
        ("DAK_CODE_ATTEMPTS", "100"),
        ("DAK_VERIFIES_PER_IP_PER_HOUR", "1000"),
    ]);
    let alice = alice();
    alice.register(&server).await;
    alice.connect().await.set_pin("246810").await.unwrap();

    let session = ask_code(&server, &alice.phone, None).await.unwrap();
    let code = server.code_for(&alice.phone);
    // 39 wrong PINs and, last, the right one: 40 at once.
    let guesses = (0..40)
        .map(|i| {
            let pin = if i == 39 {
                "246810".to_string()
            } else {
                format!("{:06}", 100_000 + i)
            };
            (code.clone(), pin)
        })
        .collect();
    let answers = race_verifies(&server, &alice.phone, &session, guesses).await;
    let mut compared = 0;
    let mut registered = false;
    for a in &answers {
        match a {
            Ok(Body::Registered(_)) => {
                compared += 1;
                registered = true;
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) if code_of(e) == ErrorCode::PinWrong => compared += 1,
            Err(e) if code_of(e) == ErrorCode::TooManyAttempts => {
                if said(e).starts_with("wrong PIN") {
                    compared += 1; // the fifth: compared, and it set the lock
                } else {
                    assert!(said(e).contains("locked"), "{e}");
                }
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(
        compared <= 5,
        "{compared} PINs were compared; the limit is 5"
    );
    assert!(compared >= 1);
    if !registered {
        assert!(
            alice.connect().await.devices().await.is_ok(),
            "the owner's device still works"
        );
        // And the lock holds against the right PIN too.
        let again = race_verifies(
            &server,
            &alice.phone,
            &session,
            vec![(code.clone(), "246810".into())],
        )
        .await;
        assert_eq!(
            code_of(again[0].as_ref().unwrap_err()),
            ErrorCode::TooManyAttempts
        );
    }
}

#[tokio::test]
async fn racing_code_guesses_are_bounded_and_cannot_lock_the_owner_out() {
    let server = TestServer::with_env(&[
        ("DAK_CODE_ATTEMPTS", "5"),
        ("DAK_VERIFIES_PER_IP_PER_HOUR", "1000"),
        // One code a second after a burst of 3: short enough to wait out here.
        ("DAK_CODES_PER_PHONE_PER_HOUR", "3600"),
        ("DAK_CODES_PER_PHONE_BURST", "3"),
    ]);
    let alice = alice();
    // The attacker asks for a code (it goes to alice's phone) and guesses 40 at once.
    let session = ask_code(&server, &alice.phone, None).await.unwrap();
    let right = server.code_for(&alice.phone);
    let guesses = (0..40)
        .map(|_| (wrong_code(&right).to_string(), String::new()))
        .collect();
    let answers = race_verifies(&server, &alice.phone, &session, guesses).await;
    let compared = answers
        .iter()
        .filter(|a| {
            let e = a.as_ref().unwrap_err();
            code_of(e) == ErrorCode::CodeWrong || said(e).starts_with("wrong code")
        })
        .count();
    assert_eq!(compared, 5, "exactly the allowed attempts were compared");
    // That session is spent, even for the right code.
    let again = race_verifies(
        &server,
        &alice.phone,
        &session,
        vec![(right, String::new())],
    )
    .await;
    assert_eq!(
        code_of(again[0].as_ref().unwrap_err()),
        ErrorCode::TooManyAttempts
    );
    // The attacker spends the number's burst as well.
    ask_code(&server, &alice.phone, None).await.unwrap();
    ask_code(&server, &alice.phone, None).await.unwrap();
    let err = ask_code(&server, &alice.phone, None).await.unwrap_err();
    assert_eq!(code_of(&err), ErrorCode::RateLimited);
    let wait = match &err {
        ClientError::Server(e) => e.retry_after_secs,
        _ => unreachable!(),
    };
    assert!(
        wait == 1,
        "the owner waits one refill interval, not {wait} s"
    );
    // The owner, after that short wait, registers with her own code: the
    // attacker's guesses never touched it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    alice.register(&server).await;
    assert!(alice.connect().await.devices().await.is_ok());
}

#[tokio::test]
async fn sms_budgets_hold_across_a_network_and_across_a_number_range() {
    let server = TestServer::with_env(&[
        ("DAK_CODES_PER_IP_PER_HOUR", "10"),
        ("DAK_CODES_PER_RANGE_PER_HOUR", "8"),
    ]);
    // Six addresses of one /24, five numbers each (in different ranges).
    let mut sent = 0;
    for a in 1..=6u8 {
        let local: IpAddr = format!("127.0.0.{a}").parse().unwrap();
        for n in 0..5 {
            let phone = format!("+91981{a}{n}00001");
            match ask_code(&server, &phone, Some(local)).await {
                Ok(_) => sent += 1,
                Err(e) => assert_eq!(code_of(&e), ErrorCode::RateLimited, "{e}"),
            }
        }
    }
    assert_eq!(
        sent, 10,
        "one network's budget, however many addresses it uses"
    );

    // Twenty networks walking one range: the range's budget stops them.
    let mut sent = 0;
    for net in 1..=20u8 {
        let local: IpAddr = format!("127.0.{net}.1").parse().unwrap();
        let phone = format!("+917000000{:03}", net);
        match ask_code(&server, &phone, Some(local)).await {
            Ok(_) => sent += 1,
            Err(e) => assert_eq!(code_of(&e), ErrorCode::RateLimited, "{e}"),
        }
    }
    assert_eq!(sent, 8, "one number range's budget");
    // Another range is not affected.
    ask_code(
        &server,
        "+917000001001",
        Some("127.0.21.1".parse().unwrap()),
    )
    .await
    .unwrap();

    let metrics = http_get(&server.metrics_url()).await;
    assert!(
        metrics.contains("dak_sms_codes_by_country_total{country=\"91\"} 19"),
        "{metrics}"
    );
    assert!(
        metrics.contains("dak_rate_limited_total{limit=\"sms_network\"} 20"),
        "{metrics}"
    );
    assert!(
        metrics.contains("dak_rate_limited_total{limit=\"sms_range\"} 12"),
        "{metrics}"
    );
}

#[tokio::test]
async fn metrics_are_served_on_their_own_listener_not_the_public_port() {
    let server = TestServer::start_insecure();
    let public = server.url.replace("ws://", "http://");
    let answer = http_get(&format!("{public}/metrics")).await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert!(http_get(&format!("{public}/healthz")).await.contains("ok"));
    let metrics = http_get(&server.metrics_url()).await;
    assert!(metrics.contains("dak_connections_open"), "{metrics}");
    assert!(server.metrics_url().starts_with("http://127.0.0.1:"));
}

/// A plain HTTP GET; the body.
async fn http_get(url: &str) -> String {
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut s = TcpStream::connect(host).await.expect("connect");
    s.write_all(
        format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// Reads until the peer closes (Ok) or `within` passes (Err).
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn silent_and_dribbling_connections_are_closed_by_the_handshake_deadline() {
    for insecure in [true, false] {
        let server = TestServer::build_with(&[("DAK_HANDSHAKE_TIMEOUT", "1s")], insecure);
        let addr = server.url.rsplit("//").next().unwrap().to_string();
        let mut silent = Vec::new();
        for _ in 0..50 {
            silent.push(TcpStream::connect(&addr).await.unwrap());
        }
        let mut dribbler = TcpStream::connect(&addr).await.unwrap();
        let dribble = tokio::spawn(async move {
            if insecure {
                let _ = dribbler.write_all(b"GET /v1/ws HTTP/1.1\r\n").await;
            }
            for i in 0..100 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if dribbler
                    .write_all(format!("X-{i}: y\r\n").as_bytes())
                    .await
                    .is_err()
                {
                    return true;
                }
            }
            closed_within(&mut dribbler, Duration::from_secs(1)).await
        });
        for s in &mut silent {
            assert!(
                closed_within(s, Duration::from_secs(5)).await,
                "a silent connection outlived the deadline (insecure: {insecure})"
            );
        }
        assert!(dribble.await.unwrap(), "a dribbling client was not cut off");
        // The server still serves everyone else.
        let alice = Person::new("+919800000101");
        alice.register(&server).await;
    }
}

/// The HTTP upgrade to a WebSocket on a plain connection.
async fn upgrade(addr: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!(
            "GET /v1/ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.unwrap();
        got.push(byte[0]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    s
}

/// A masked binary frame header announcing `len` bytes (the mask is zero).
fn frame_header(len: u64) -> Vec<u8> {
    let mut h = vec![0x82];
    if len < 126 {
        h.push(0x80 | len as u8);
    } else if len <= u16::MAX as u64 {
        h.push(0x80 | 126);
        h.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        h.push(0x80 | 127);
        h.extend_from_slice(&len.to_be_bytes());
    }
    h.extend_from_slice(&[0, 0, 0, 0]);
    h
}

/// Reads one unmasked server frame's payload.
async fn read_frame(s: &mut TcpStream) -> Vec<u8> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).await.unwrap();
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).await.unwrap();
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).await.unwrap();
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await.unwrap();
    payload
}

#[tokio::test]
async fn half_sent_frames_cost_bounded_memory_and_are_closed() {
    let server = TestServer::build_with(&[("DAK_HANDSHAKE_TIMEOUT", "4s")], true);
    let addr = server.url.rsplit("//").next().unwrap().to_string();
    let before = server.rss_kib();
    // 300 connections each send all but the end of a 250 KB frame before
    // authenticating: the pre-authentication byte budget stops each early.
    let chunk = vec![0u8; 16 * 1024];
    let mut conns = Vec::new();
    for _ in 0..300 {
        let mut s = upgrade(&addr).await;
        let _ = s.write_all(&frame_header(250_000)).await;
        for _ in 0..15 {
            if s.write_all(&chunk).await.is_err() {
                break;
            }
        }
        conns.push(s);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grown_mib = server.rss_kib().saturating_sub(before) / 1024;
    assert!(
        grown_mib < 64,
        "300 half-sent frames grew the server by {grown_mib} MiB (unbounded buffering would be ~75)"
    );
    for s in &mut conns {
        assert!(
            closed_within(s, Duration::from_secs(8)).await,
            "a half-sent frame kept its connection"
        );
    }

    // After authentication: a frame that stops half-way ends at the idle timeout.
    let server = TestServer::build_with(
        &[("DAK_PING_INTERVAL", "1s"), ("DAK_IDLE_TIMEOUT", "2s")],
        true,
    );
    let alice = alice();
    alice.register(&server).await;
    let reg = alice.profile().registration().unwrap();
    let key = alice.profile().identity().unwrap();
    let addr = server.url.rsplit("//").next().unwrap().to_string();
    let mut s = upgrade(&addr).await;
    let challenge = v1::ServerFrame::decode(&read_frame(&mut s).await[..]).unwrap();
    let Some(Body::Challenge(c)) = challenge.body else {
        panic!("no challenge")
    };
    let payload = dak_proto::auth_payload(
        AuthPurpose::Authenticate,
        &c.nonce,
        &reg.device_id.to_be_bytes(),
    );
    use ed25519_dalek::Signer;
    let auth = v1::ClientFrame {
        request_id: 1,
        request: Some(Request::Authenticate(v1::Authenticate {
            device_id: reg.device_id,
            signature: key.sign(&payload).to_bytes().to_vec(),
        })),
    }
    .encode_to_vec();
    s.write_all(&frame_header(auth.len() as u64)).await.unwrap();
    s.write_all(&auth).await.unwrap();
    s.write_all(&frame_header(200_000)).await.unwrap();
    s.write_all(&[0u8; 1000]).await.unwrap();
    assert!(
        closed_within(&mut s, Duration::from_secs(10)).await,
        "an authenticated connection with a stalled frame stayed open"
    );
}

#[tokio::test]
async fn a_commit_naming_100000_devices_is_refused_at_once() {
    let server = TestServer::start();
    let (alice, bob) = registered_pair(&server).await;
    let mut conn = alice.raw_connection(&server).await;
    let answer = conn
        .call(Request::SendCommit(v1::SendCommit {
            message_id: vec![1; 16],
            commit: vec![1; 8],
            welcome: vec![2; 8],
            added_devices: (1..=60_000).collect(),
            removed_devices: vec![],
        }))
        .await;
    assert_eq!(code_of(&answer.unwrap_err()), ErrorCode::BadRequest);
    // 100,000 ids are larger than a frame: refused before they are read.
    let huge = v1::ClientFrame {
        request_id: 9,
        request: Some(Request::SendCommit(v1::SendCommit {
            message_id: vec![1; 16],
            commit: vec![1; 8],
            welcome: vec![2; 8],
            added_devices: (1_000_000..1_100_000).collect(),
            removed_devices: vec![],
        })),
    };
    assert!(huge.encoded_len() > dak_proto::MAX_FRAME_BYTES);
    // Everyone else carries on.
    let mut a = alice.connect().await;
    a.send_text(&bob.phone, "still here").await.unwrap();
    assert_eq!(bob.sync_texts().await, vec!["still here"]);
}

#[tokio::test]
async fn a_flood_is_refused_before_the_ack_and_nothing_acked_is_lost() {
    let server = TestServer::with_env(&[("DAK_MAILBOX_MAX_ENVELOPES", "20")]);
    let (stranger, bob) = registered_pair(&server).await;
    let mut s = stranger.connect().await;
    let mut acked = 0;
    let mut refused = 0;
    for i in 0..30 {
        match s.send_text(&bob.phone, &format!("spam {i}")).await {
            Ok(_) => acked += 1,
            Err(e) => {
                assert_eq!(code_of(&e), ErrorCode::RateLimited, "{e}");
                refused += 1;
            }
        }
    }
    assert!(
        refused > 0 && acked < 20,
        "the quota refused ({acked} acked)"
    );
    drop(s);
    // Bob gets exactly what was acknowledged.
    let texts = bob.sync_texts().await;
    assert_eq!(texts.len(), acked, "{texts:?}");

    // The per-device request rate.
    let server = TestServer::with_env(&[
        ("DAK_REQUEST_BURST", "5"),
        ("DAK_REQUESTS_PER_DEVICE_PER_SEC", "1"),
    ]);
    let alice = alice();
    alice.register(&server).await;
    let mut conn = alice.raw_connection(&server).await;
    let mut limited = 0;
    for _ in 0..10 {
        if let Err(e) = conn.call(Request::ListDevices(v1::ListDevices {})).await {
            assert_eq!(code_of(&e), ErrorCode::RateLimited);
            limited += 1;
        }
    }
    assert!(limited >= 4, "{limited} of 10 limited after a burst of 5");
}

#[tokio::test]
async fn key_packages_cannot_be_drained_and_numbers_cannot_be_enumerated() {
    let server = TestServer::with_env(&[
        ("DAK_KEY_PACKAGES_PER_TARGET_PER_HOUR", "3"),
        ("DAK_LOOKUPS_PER_DAY", "10"),
    ]);
    let (alice, bob) = registered_pair(&server).await;
    let stock = |conn: Body| match conn {
        Body::KeyPackageCount(c) => c.one_time,
        other => panic!("{other:?}"),
    };
    let mut b = bob.raw_connection(&server).await;
    let upload = v1::UploadKeyPackages::default();
    let before = stock(
        b.call(Request::UploadKeyPackages(upload.clone()))
            .await
            .unwrap(),
    );
    assert!(before >= 10);
    let mut a = alice.raw_connection(&server).await;
    for _ in 0..45 {
        let got = a
            .call(Request::FetchKeyPackages(v1::FetchKeyPackages {
                phone: bob.phone.clone(),
                known_devices: vec![],
                ciphersuites: vec![],
            }))
            .await
            .unwrap();
        let Body::KeyPackages(kp) = got else { panic!() };
        assert!(
            !kp.devices.is_empty() && !kp.devices[0].key_package.is_empty(),
            "still a key to use"
        );
    }
    let after = stock(b.call(Request::UploadKeyPackages(upload)).await.unwrap());
    assert_eq!(
        before - after,
        3,
        "one requester took only its budget of one-time packages"
    );

    // Enumeration: distinct numbers per day.
    let mut answered = 0;
    let mut limited = 0;
    for n in 0..15 {
        match a
            .call(Request::FetchKeyPackages(v1::FetchKeyPackages {
                phone: format!("+9198111{n:05}"),
                known_devices: vec![],
                ciphersuites: vec![],
            }))
            .await
        {
            Err(e) if code_of(&e) == ErrorCode::RateLimited => limited += 1,
            Err(e) if code_of(&e) == ErrorCode::UnknownAccount => answered += 1,
            other => panic!("{other:?}"),
        }
    }
    // bob was the first distinct number.
    assert_eq!(answered, 9);
    assert_eq!(limited, 6);
}

#[tokio::test]
async fn a_foreign_group_looks_exactly_like_a_missing_one() {
    let server = TestServer::start();
    let (alice, bob, carol) = registered_trio(&server).await;
    // bob and carol talk: their conversation is a group alice is not in.
    bob.connect()
        .await
        .send_text(&carol.phone, "hi")
        .await
        .unwrap();
    let db = rusqlite::Connection::open(server.dir().join("data").join("dak.db"))
        .or_else(|_| rusqlite::Connection::open(server.dir().join("dak.db")))
        .unwrap();
    let (group, epoch): (Vec<u8>, i64) = db
        .query_row("SELECT group_id, epoch FROM mls_groups LIMIT 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert!(epoch > 0);
    let mut a = alice.raw_connection(&server).await;
    let ask = |g: Vec<u8>| Request::GetGroupEpoch(v1::GetGroupEpoch { group_id: g });
    let foreign = a.call(ask(group.clone())).await.unwrap();
    let missing = a.call(ask(vec![0x55; group.len()])).await.unwrap();
    let strip = |b: Body| match b {
        Body::GroupEpoch(e) => (e.epoch, e.exists),
        other => panic!("{other:?}"),
    };
    assert_eq!(strip(foreign), (0, false));
    assert_eq!(strip(missing), (0, false));
    drop(db);
}

/// `BlockAccount` for `phone`, sent on a raw connection; the answer.
async fn set_block(conn: &mut Connection, phone: &str, blocked: bool) -> Result<Body, ClientError> {
    conn.call(Request::BlockAccount(v1::BlockAccount {
        phone: phone.into(),
        blocked,
    }))
    .await
}

#[tokio::test]
async fn a_blocked_sender_no_longer_reaches_the_blocker() {
    let server = TestServer::start();
    let (alice, bob, carol) = registered_trio(&server).await;
    // The first message makes the chat (a commit adding bob's device).
    let first = alice
        .connect()
        .await
        .send_text(&bob.phone, "before the block")
        .await
        .unwrap();
    assert_eq!(first.recipient_devices, 1);
    assert_eq!(bob.sync_texts().await, vec!["before the block"]);

    let mut b = bob.raw_connection(&server).await;
    let answer = set_block(&mut b, &alice.phone, true).await.unwrap();
    assert!(matches!(answer, Body::Ok(_)), "{answer:?}");
    // Blocking twice is the same as once.
    set_block(&mut b, &alice.phone, true).await.unwrap();

    // alice's messages are acked (a single tick) but stored for no device
    // of bob's; carol's chat with her is untouched.
    let mut a = alice.connect().await;
    for text in ["blocked one", "blocked two"] {
        let sent = a.send_text(&bob.phone, text).await.unwrap();
        assert_eq!(sent.recipient_devices, 0, "{text}");
    }
    let to_carol = a.send_text(&carol.phone, "to carol").await.unwrap();
    assert_eq!(to_carol.recipient_devices, 1);
    drop(a);
    assert_eq!(bob.sync_texts().await, Vec::<String>::new());
    assert_eq!(carol.sync_texts().await, vec!["to carol"]);
    // A block is one way: bob still reaches alice.
    bob.connect()
        .await
        .send_text(&alice.phone, "from bob")
        .await
        .unwrap();
    assert!(alice.sync_texts().await.contains(&"from bob".to_string()));

    // Unblocked, alice reaches bob again (what was sent meanwhile is gone).
    set_block(&mut b, &alice.phone, false).await.unwrap();
    let after = alice
        .connect()
        .await
        .send_text(&bob.phone, "after the block")
        .await
        .unwrap();
    assert_eq!(after.recipient_devices, 1);
    assert_eq!(bob.sync_texts().await, vec!["after the block"]);
}

#[tokio::test]
async fn a_blocker_cannot_be_added_and_blocks_reveal_no_numbers() {
    let server = TestServer::start();
    let (alice, bob) = registered_pair(&server).await;
    let mut b = bob.raw_connection(&server).await;
    // Blocked before alice ever wrote: the commit that would make the chat
    // (adding bob's device) is refused, so nothing reaches bob.
    set_block(&mut b, &alice.phone, true).await.unwrap();
    let refused = alice
        .connect()
        .await
        .send_text(&bob.phone, "hello?")
        .await
        .unwrap_err();
    assert_eq!(code_of(&refused), ErrorCode::BadRequest, "{refused}");
    assert!(
        said(&refused).contains("this member cannot be added"),
        "{refused}"
    );
    assert_eq!(bob.sync_texts().await, Vec::<String>::new());

    // A number that is not on Dak answers as one that is.
    let unknown = set_block(&mut b, "+919811100000", true).await.unwrap();
    assert!(matches!(unknown, Body::Ok(_)), "{unknown:?}");
    let unknown = b
        .call(Request::ReportAccount(v1::ReportAccount {
            phone: "+919811100001".into(),
        }))
        .await
        .unwrap();
    assert!(matches!(unknown, Body::Ok(_)), "{unknown:?}");
    // One's own number is refused; a malformed one is not a number.
    let own = set_block(&mut b, &bob.phone, true).await.unwrap_err();
    assert_eq!(code_of(&own), ErrorCode::BadRequest, "{own}");
    let bad = set_block(&mut b, "not a number", true).await.unwrap_err();
    assert_eq!(code_of(&bad), ErrorCode::InvalidPhone, "{bad}");
    // Only an authenticated device may block.
    let mut anonymous = conn_from(&server, None).await;
    let e = set_block(&mut anonymous, &alice.phone, true)
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), ErrorCode::NotAuthenticated, "{e}");
}

#[tokio::test]
async fn a_report_is_counted_and_blocks() {
    let server = TestServer::start();
    let (alice, bob) = registered_pair(&server).await;
    alice
        .connect()
        .await
        .send_text(&bob.phone, "hi")
        .await
        .unwrap();
    assert_eq!(bob.sync_texts().await, vec!["hi"]);

    let mut b = bob.raw_connection(&server).await;
    let answer = b
        .call(Request::ReportAccount(v1::ReportAccount {
            phone: alice.phone.clone(),
        }))
        .await
        .unwrap();
    assert!(matches!(answer, Body::Ok(_)), "{answer:?}");
    // An unknown number's report answers Ok and is not counted.
    b.call(Request::ReportAccount(v1::ReportAccount {
        phone: "+919811100002".into(),
    }))
    .await
    .unwrap();
    let metrics = http_get(&server.metrics_url()).await;
    assert!(
        metrics.lines().any(|l| l == "dak_reports_total 1"),
        "{metrics}"
    );
    // The report blocked alice.
    let sent = alice
        .connect()
        .await
        .send_text(&bob.phone, "spam")
        .await
        .unwrap();
    assert_eq!(sent.recipient_devices, 0);
    assert_eq!(bob.sync_texts().await, Vec::<String>::new());
    // The operator's log names both by masked number only.
    let log = server.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("account reported"))
        .unwrap_or_else(|| panic!("no report logged: {log}"));
    assert!(
        !line.contains(&alice.phone) && !line.contains(&bob.phone),
        "{line}"
    );
    assert!(line.contains("+…001") && line.contains("+…002"), "{line}");
}

#[tokio::test]
async fn a_device_holds_a_few_connections_and_a_new_one_replaces_the_oldest() {
    let server = TestServer::start();
    let alice = alice();
    alice.register(&server).await;
    let mut oldest = alice.raw_connection(&server).await;
    let mut others = Vec::new();
    for _ in 0..3 {
        others.push(alice.raw_connection(&server).await);
    }
    // The oldest is told why and closed; it must not reconnect on its own.
    let told = loop {
        match oldest.next_push().await {
            Ok(Body::Notice(n)) => break n,
            Ok(_) => continue,
            Err(e) => panic!("closed without a notice: {e}"),
        }
    };
    assert_eq!(told.kind, v1::NoticeKind::Replaced as i32);
    assert!(
        oldest.next_push().await.is_err(),
        "the replaced connection is closed"
    );
    // The client reads it as an error that is not worth retrying.
    drop(others);
    let mut a = alice.connect().await;
    let mut newer = Vec::new();
    for _ in 0..3 {
        newer.push(alice.raw_connection(&server).await);
    }
    let err = loop {
        match a.next_events().await {
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    assert_eq!(code_of(&err), ErrorCode::ConnectionReplaced);
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn a_device_that_does_not_read_is_cut_off_and_loses_nothing() {
    let server = TestServer::with_env(&[("DAK_WRITE_STALL_TIMEOUT", "1s")]);
    let (alice, bob) = registered_pair(&server).await;
    let mut a = alice.connect().await;
    a.send_text(&bob.phone, "first").await.unwrap();
    // bob's device connects and authenticates, then stops reading.
    let (t, _) = WsTransport::connect(
        &server.url,
        &CertTrust::Pinned(bob.profile().get_str("cert").unwrap().unwrap()),
    )
    .await
    .unwrap();
    let mut stuck = Connection::open(Box::new(t), Arc::new(dak_client::SystemEnvironment))
        .await
        .unwrap();
    stuck
        .authenticate(
            &bob.profile().identity().unwrap(),
            bob.profile().registration().unwrap().device_id,
        )
        .await
        .unwrap();
    // Several MiB for it: more than the socket buffers and the session's queue hold.
    let big = "x".repeat(40_000);
    let mut sent = 1;
    for _ in 0..200 {
        a.send_text(&bob.phone, &big).await.unwrap();
        sent += 1;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Closed while it still did not read: the session gave up on it.
    let metrics = http_get(&server.metrics_url()).await;
    assert!(
        metrics.contains("dak_connections_closed_total{reason=\"write_stall\"}"),
        "{metrics}"
    );
    // Reading now finds the connection closed once the buffered data is out.
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if stuck.next_push().await.is_err() {
                return;
            }
        }
    })
    .await
    .is_ok();
    assert!(closed, "a connection that did not read stayed open");
    drop(stuck);
    // Nothing acknowledged is lost: bob's next connection gets every message.
    assert_eq!(bob.sync_texts().await.len(), sent);
}
