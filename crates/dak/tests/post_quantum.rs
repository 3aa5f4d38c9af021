//! Post-quantum 1:1 conversations through the real server: two new devices
//! negotiate the hybrid ML-KEM-768 + X25519 suite, a device that offers
//! only the classic suite (as devices from before it do) makes its chats
//! fall back, and both ends say which in `dak safety`. The directory keeps
//! each device's KeyPackages per suite.

mod common;

use common::*;
use dak_proto::mls::{CIPHERSUITE, PQ_CIPHERSUITE, suite_code};
use dak_proto::v1::{self, client_frame::Request, server_frame::Body};
use serde_json::Value;

const PQ_NAME: &str = "MLS_128_MLKEM768X25519_AES128GCM_SHA256_Ed25519";
const CLASSIC_NAME: &str = "MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519";

fn safety(who: &Person, contact: &Person) -> Value {
    let out = ok(&who.dir, &["--json", "safety", &contact.phone]);
    json_lines(&out).pop().expect("one JSON line")
}

/// The server's stock of this device's KeyPackages in `suite` (an empty
/// upload only reads it).
async fn stock(who: &Person, server: &TestServer, suite: u32) -> v1::KeyPackageCount {
    let mut conn = who.raw_connection(server).await;
    let answer = conn
        .call(Request::UploadKeyPackages(v1::UploadKeyPackages {
            ciphersuite: suite,
            ..Default::default()
        }))
        .await
        .expect("count");
    let Body::KeyPackageCount(count) = answer else {
        panic!("not a count: {answer:?}")
    };
    count
}

#[tokio::test]
async fn new_devices_talk_post_quantum_and_a_classic_only_device_falls_back_and_says_so() {
    let server = TestServer::start();
    let (alice, bob) = registered_pair(&server).await;
    let carol = carol();
    carol.profile().offer_classic_suite_only().unwrap();
    carol.register(&server).await;

    // Every new device stocks both suites; carol's only the classic one.
    let pq = suite_code(PQ_CIPHERSUITE);
    let classic = suite_code(CIPHERSUITE);
    for who in [&alice, &bob] {
        let s = stock(who, &server, pq).await;
        assert!(s.one_time >= 10 && s.has_last_resort, "{s:?}");
        assert_eq!(s.ciphersuite, pq);
    }
    let carols = stock(&carol, &server, pq).await;
    assert_eq!((carols.one_time, carols.has_last_resort), (0, false));
    assert!(stock(&carol, &server, classic).await.has_last_resort);

    // alice and bob: post-quantum, said the same on both sides.
    ok(
        &alice.dir,
        &["send", &bob.phone, "over the quantum-safe wire"],
    );
    assert_eq!(bob.sync_texts().await, vec!["over the quantum-safe wire"]);
    let a = safety(&alice, &bob);
    let b = safety(&bob, &alice);
    for s in [&a, &b] {
        assert_eq!(s["post_quantum"], true, "{s}");
        assert_eq!(s["ciphersuite"], PQ_NAME, "{s}");
        assert_eq!(s["classic_because"], serde_json::json!([]), "{s}");
    }
    assert_eq!(a["safety_number"], b["safety_number"]);
    let text = ok(&alice.dir, &["safety", &bob.phone]);
    assert!(text.contains("Encryption: post-quantum"), "{text}");

    // alice and carol: carol's device offers the classic suite only, so the
    // chat is classic, and both name the device that kept it so.
    ok(
        &alice.dir,
        &["send", &carol.phone, "classic but still private"],
    );
    assert_eq!(carol.sync_texts().await, vec!["classic but still private"]);
    let carol_device = carol.profile().registration().unwrap().device_id;
    let because = serde_json::json!([{"phone": carol.phone, "device_id": carol_device}]);
    for s in [safety(&alice, &carol), safety(&carol, &alice)] {
        assert_eq!(s["post_quantum"], false, "{s}");
        assert_eq!(s["server_chose_classic"], false, "{s}");
        assert_eq!(s["ciphersuite"], CLASSIC_NAME, "{s}");
        assert_eq!(s["classic_because"], because, "{s}");
    }
    let text = ok(&alice.dir, &["safety", &carol.phone]);
    assert!(
        text.contains(&format!(
            "not post-quantum: device {carol_device} of {} did not offer it when joining this chat",
            carol.phone
        )),
        "{text}"
    );

    // A server that weakens a chat: dave's device offers the post-quantum
    // suite, but the server (played by editing its store) has no hybrid
    // packages of his to hand out. The chat is classic, and alice's device
    // says the server chose it, since every leaf lists the hybrid suite.
    let dave = Person::new("+919800000004");
    dave.register(&server).await;
    let dave_device = dave.profile().registration().unwrap().device_id;
    let db = rusqlite::Connection::open(server.dir().join("data").join("dak.db")).unwrap();
    db.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
    let dropped = db
        .execute(
            "DELETE FROM key_packages WHERE device_id = ?1 AND suite = ?2",
            rusqlite::params![dave_device as i64, pq],
        )
        .unwrap();
    assert!(dropped > 10, "{dropped} hybrid packages of dave's");
    ok(&alice.dir, &["send", &dave.phone, "weakened"]);
    assert_eq!(dave.sync_texts().await, vec!["weakened"]);
    let s = safety(&alice, &dave);
    assert_eq!(s["post_quantum"], false, "{s}");
    assert_eq!(s["classic_because"], serde_json::json!([]), "{s}");
    assert_eq!(s["server_chose_classic"], true, "{s}");
    let text = ok(&alice.dir, &["safety", &dave.phone]);
    assert!(
        text.contains("the server handed out classic keys"),
        "{text}"
    );

    // Replies go both ways in each suite.
    ok(&carol.dir, &["send", &alice.phone, "got it"]);
    ok(&bob.dir, &["send", &alice.phone, "me too"]);
    let mut got = alice.sync_texts().await;
    got.sort();
    assert_eq!(got, vec!["got it", "me too"]);
}

/// A device linked later joins a post-quantum chat, which stays
/// post-quantum. When a device that offers only the classic suite is linked,
/// the chat cannot hold it: the next message starts the chat over in the
/// classic suite, for every device, and `safety` names the device that made
/// it classic.
#[tokio::test]
async fn a_classic_only_device_linked_later_makes_the_chat_fall_back() {
    let server = TestServer::start();
    let (alice, bob) = registered_pair(&server).await;
    ok(&alice.dir, &["send", &bob.phone, "before the laptop"]);
    assert_eq!(bob.sync_texts().await, vec!["before the laptop"]);

    let laptop = Person::new(&bob.phone);
    link(&server, &bob, &laptop).await;
    ok(&alice.dir, &["send", &bob.phone, "after the laptop"]);
    assert_eq!(laptop.sync_texts().await, vec!["after the laptop"]);
    assert_eq!(bob.sync_texts().await, vec!["after the laptop"]);
    assert_eq!(safety(&alice, &bob)["post_quantum"], true);

    // bob writes in the post-quantum chat; alice has not read it when the
    // tablet is linked and her next send moves the chat to a new group.
    ok(&bob.dir, &["send", &alice.phone, "still post-quantum"]);
    let tablet = Person::new(&bob.phone);
    tablet.profile().offer_classic_suite_only().unwrap();
    link(&server, &bob, &tablet).await;
    ok(&alice.dir, &["send", &bob.phone, "for all three"]);
    for device in [&bob, &tablet] {
        assert_eq!(device.sync_texts().await, vec!["for all three"]);
    }
    let got = laptop.sync_texts().await;
    assert_eq!(
        got,
        vec!["still post-quantum", "for all three"],
        "bob's own message, then alice's"
    );
    // What bob wrote in the old group still reached alice (her send took
    // it in), once.
    assert!(alice.sync_texts().await.is_empty());
    let incoming: Vec<String> = alice
        .profile()
        .conversation(&bob.phone, 50)
        .unwrap()
        .into_iter()
        .filter(|m| !m.outgoing)
        .map(|m| m.text)
        .collect();
    assert_eq!(incoming, vec!["still post-quantum"]);
    let tablet_device = tablet.profile().registration().unwrap().device_id;
    let because = serde_json::json!([{"phone": bob.phone, "device_id": tablet_device}]);
    for s in [safety(&alice, &bob), safety(&bob, &alice)] {
        assert_eq!(s["post_quantum"], false, "{s}");
        assert_eq!(s["classic_because"], because, "{s}");
    }
    // bob's side, which still had the post-quantum chat too, answers in
    // the new one, and nothing is shown twice.
    ok(&bob.dir, &["send", &alice.phone, "the tablet is in"]);
    assert_eq!(alice.sync_texts().await, vec!["the tablet is in"]);
    // bob's other devices get their copy of what he sent.
    for device in [&laptop, &tablet] {
        let got = device.sync_texts().await;
        assert!(got.contains(&"the tablet is in".to_string()), "{got:?}");
    }
}
