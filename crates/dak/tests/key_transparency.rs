//! Key transparency through the real server (PROTOCOL.md §18): devices
//! check every contact's keys against the key directory's proofs, watch
//! their own number's history, and an outside auditor checks that the
//! directory only ever grows. The malicious server is played by editing
//! its store under the running binary.

mod common;

use akd::storage::types::DbRecord;
use common::*;
use dak_core::testing::TestDevice;
use dak_proto::kt::{DeviceKey, encode_devices};
use dak_proto::mls::{CIPHERSUITE, PQ_CIPHERSUITE};
use serde_json::Value;

fn safety(who: &Person, contact: &Person) -> Value {
    let out = ok(&who.dir, &["--json", "safety", &contact.phone]);
    json_lines(&out).pop().expect("one JSON line")
}

fn store(server: &TestServer) -> rusqlite::Connection {
    let db = rusqlite::Connection::open(server.dir().join("data").join("dak.db")).unwrap();
    db.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
    db
}

/// What a malicious server does to give `phone` a device of its own: a
/// device row under the account and KeyPackages (classic and hybrid) made
/// with a key only the server has. Returns the new device's id and key.
fn add_ghost_device(server: &TestServer, phone: &str) -> (u64, Vec<u8>) {
    let db = store(server);
    let account: i64 = db
        .query_row("SELECT id FROM accounts WHERE phone = ?1", [phone], |r| {
            r.get(0)
        })
        .unwrap();
    let next: i64 = db
        .query_row("SELECT MAX(id) + 1 FROM devices", [], |r| r.get(0))
        .unwrap();
    let ghost = TestDevice::new(phone, next as u64);
    let key = ghost.key.verifying_key().to_bytes().to_vec();
    db.execute(
        "INSERT INTO devices (id, account_id, identity_key, name, is_primary, created_ms, last_seen_ms)
         VALUES (?1, ?2, ?3, 'ghost', 0, 1, 1)",
        rusqlite::params![next, account, key],
    )
    .unwrap();
    for suite in [PQ_CIPHERSUITE, CIPHERSUITE] {
        let package = ghost.mls().last_resort_key_package(suite).unwrap();
        db.execute(
            "INSERT INTO key_packages (device_id, last_resort, data, suite) VALUES (?1, 1, ?2, ?3)",
            rusqlite::params![next, package, dak_proto::mls::suite_code(suite)],
        )
        .unwrap();
    }
    (next as u64, key)
}

/// The active devices of `phone`'s account as the store has them.
fn devices_of(server: &TestServer, phone: &str) -> Vec<DeviceKey> {
    let db = store(server);
    let mut stmt = db
        .prepare(
            "SELECT d.id, d.identity_key FROM devices d JOIN accounts a ON a.id = d.account_id
             WHERE a.phone = ?1 AND d.revoked = 0",
        )
        .unwrap();
    stmt.query_map([phone], |r| {
        Ok(DeviceKey {
            device_id: r.get::<_, i64>(0)? as u64,
            identity_key: r.get(1)?,
        })
    })
    .unwrap()
    .collect::<rusqlite::Result<Vec<_>>>()
    .unwrap()
}

/// Rewrites the directory's latest stored value of `phone` to what the
/// store says now, without publishing an epoch: a server hiding a device
/// change from the append-only directory.
fn rewrite_directory_value(server: &TestServer, phone: &str) {
    let db = store(server);
    let (epoch, body): (i64, Vec<u8>) = db
        .query_row(
            "SELECT epoch, body FROM kt_states WHERE label = ?1 ORDER BY epoch DESC LIMIT 1",
            [phone.as_bytes()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let DbRecord::ValueState(mut state) = postcard::from_bytes::<DbRecord>(&body).unwrap() else {
        panic!("not a value state")
    };
    state.value = akd::AkdValue(encode_devices(&devices_of(server, phone)));
    let body = postcard::to_stdvec(&DbRecord::ValueState(state)).unwrap();
    db.execute(
        "UPDATE kt_states SET body = ?1 WHERE label = ?2 AND epoch = ?3",
        rusqlite::params![body, phone.as_bytes(), epoch],
    )
    .unwrap();
}

fn key_transparency_warnings(events: &[dak_client::Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            dak_client::Event::KeyTransparency { warning, .. } => Some(warning.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_key_the_directory_does_not_prove_is_refused_and_nothing_reaches_it() {
    let mut server = TestServer::start();
    let (alice, bob) = registered_pair(&server).await;
    ok(&alice.dir, &["send", &bob.phone, "checked keys"]);
    assert_eq!(bob.sync_texts().await, vec!["checked keys"]);
    let s = safety(&alice, &bob);
    assert_eq!(s["key_transparency"]["state"], "verified", "{s}");
    let text = ok(&alice.dir, &["safety", &bob.phone]);
    assert!(
        text.contains("Keys: verified by key transparency"),
        "{text}"
    );

    // The server slips a device of its own into bob's account and edits
    // the directory's stored value to match, without an epoch: the proof
    // it then serves no longer checks against the directory's root.
    let (ghost, _) = add_ghost_device(&server, &bob.phone);
    rewrite_directory_value(&server, &bob.phone);
    // The edit went behind the running server's caches; a restart reads it.
    server.restart();
    // The server checks its own proofs before serving them: a directory
    // edited under it is refused there already, and nothing is sent.
    let (sent, _, err) = dak(&alice.dir, &["send", &bob.phone, "for bob only"]);
    assert!(!sent, "alice's send must wait");
    assert!(err.contains("the key directory cannot look up"), "{err}");

    // A server that hides the device from the directory's history: it
    // starts a new directory, under a new VRF key, that shows the device
    // from its first epoch. alice's device checks the proof against the
    // key it pinned, refuses it, and adds nothing.
    server.kill9();
    let db = store(&server);
    db.execute_batch("DELETE FROM kt_records; DELETE FROM kt_states; DELETE FROM kt_head;")
        .unwrap();
    drop(db);
    std::fs::write(server.dir().join("data").join("kt-vrf.key"), [42u8; 32]).unwrap();
    server.restart();
    let (sent, _, err) = dak(&alice.dir, &["send", &bob.phone, "for bob only, again"]);
    assert!(!sent, "alice's send must fail");
    assert!(err.contains("key transparency"), "{err}");
    let s = safety(&alice, &bob);
    assert_eq!(s["key_transparency"]["state"], "failed", "{err} {s}");
    assert!(
        s["key_transparency"]["reason"]
            .as_str()
            .unwrap()
            .contains("proof does not check"),
        "{s}"
    );
    let text = ok(&alice.dir, &["safety", &bob.phone]);
    assert!(text.contains("KEY TRANSPARENCY FAILED"), "{text}");
    // Nothing went to the server's device, and bob has only what came
    // before (alice's two messages wait in her outbox).
    assert!(mailbox_bodies(&server, ghost).is_empty());
    assert!(bob.sync_texts().await.is_empty());

    // A device that trusts the new directory (bob's, as if reinstalled:
    // it pins the new key) adds the server's device to the chat when it
    // sends. alice's device checks the devices another member's commit
    // brought in, and says so: the one thing it cannot do is unsend.
    let bobs = bob.profile();
    for key in [
        "kt_key",
        "kt_highest",
        "kt_status:*",
        "kt_status:+919800000001",
    ] {
        bobs.delete(key).unwrap();
    }
    drop(bobs);
    ok(&bob.dir, &["send", &alice.phone, "from bob's side"]);
    let events = sync_events(&alice).await;
    assert!(
        texts(&events).contains(&"from bob's side".to_string()),
        "{events:?}"
    );
    let warnings = key_transparency_warnings(&events);
    assert!(
        warnings.iter().any(|w| w.starts_with(&format!(
            "in your chat with {}, devices of {} were added that could not be checked",
            bob.phone, bob.phone
        ))),
        "{warnings:?}"
    );
}

#[tokio::test]
async fn a_device_added_to_your_number_behind_your_back_is_reported_and_one_you_linked_is_not() {
    let server = TestServer::start();
    let (alice, bob) = registered_pair(&server).await;
    // bob's first connection after registering sets what he has seen.
    assert!(key_transparency_warnings(&sync_events(&bob).await).is_empty());

    // A laptop bob links himself: no warning on the phone that approved it.
    let laptop = Person::new(&bob.phone);
    link(&server, &bob, &laptop).await;
    bob.profile().delete("kt_own_checked_ms").unwrap();
    assert!(key_transparency_warnings(&sync_events(&bob).await).is_empty());

    // A device the server adds: the directory shows it (an honest
    // directory publishes what the store holds), alice's device trusts it,
    // and bob's phone is told at its next check.
    let (ghost, key) = add_ghost_device(&server, &bob.phone);
    ok(&alice.dir, &["send", &bob.phone, "hello bob"]);
    bob.profile().delete("kt_own_checked_ms").unwrap();
    let out = ok(&bob.dir, &["sync"]);
    let said = format!(
        "▌ ⚠ KEY TRANSPARENCY: a new device (device {ghost}, key {}) was registered for your number",
        hex::encode(&key[..8])
    );
    assert_eq!(out.matches(&said).count(), 1, "{out}");
    // Told once: the next check has seen it.
    bob.profile().delete("kt_own_checked_ms").unwrap();
    let events = sync_events(&bob).await;
    assert!(key_transparency_warnings(&events).is_empty(), "{events:?}");
}

#[tokio::test]
async fn an_outside_auditor_checks_every_epoch_and_catches_a_rebuilt_directory() {
    let mut server = TestServer::start();
    let (alice, bob) = registered_pair(&server).await;
    ok(&alice.dir, &["send", &bob.phone, "one"]);
    let auditor = tempfile::tempdir().unwrap();
    let aud = auditor.path().join("auditor");
    let url = server.url.clone();
    let audit = |json: bool| {
        let mut args = vec!["audit", "keys", "--server", &url];
        if json {
            args.insert(0, "--json");
        }
        dak(&aud, &args)
    };
    let (passed, out, err) = audit(true);
    assert!(passed, "{out}{err}");
    let first = json_lines(&out).pop().unwrap();
    assert_eq!(first["ok"], true, "{first}");
    let checked = first["checked"].as_u64().unwrap();
    assert!(
        checked >= 2,
        "two registrations, two epochs at least: {first}"
    );
    assert_eq!(first["checked"], first["latest"]);

    // More devices, more epochs: the next audit checks only the new ones.
    let carol = carol();
    carol.register(&server).await;
    let (passed, out, err) = audit(true);
    assert!(passed, "{out}{err}");
    let second = json_lines(&out).pop().unwrap();
    assert_eq!(second["before"], checked, "{second}");
    assert!(second["checked"].as_u64().unwrap() > checked, "{second}");
    let (passed, out, _) = audit(false);
    assert!(passed && out.contains("The key directory checks"), "{out}");

    // A step that is not what the epoch added: the server keeps another
    // root for the next epoch than the one its tree has.
    let dave = Person::new("+919800000004");
    dave.register(&server).await;
    let latest: i64 = store(&server)
        .query_row("SELECT epoch FROM kt_head", [], |r| r.get(0))
        .unwrap();
    store(&server)
        .execute(
            "UPDATE kt_records SET body = ?1 WHERE kind = 100 AND id = ?2",
            rusqlite::params![vec![1u8; 32], (latest as u64).to_be_bytes().to_vec()],
        )
        .unwrap();
    let (passed, _, err) = audit(false);
    assert!(!passed, "a wrong step must fail");
    assert!(err.contains("is not append-only"), "{err}");

    // The operator rebuilds the directory from scratch (to drop a key from
    // its history): the auditor refuses it, and so do the devices.
    server.kill9();
    let db = store(&server);
    db.execute_batch("DELETE FROM kt_records; DELETE FROM kt_states; DELETE FROM kt_head;")
        .unwrap();
    drop(db);
    server.restart();
    let (passed, out, err) = audit(false);
    assert!(!passed, "a rebuilt directory must fail: {out}");
    assert!(err.contains("does not check"), "{err}");
    let (sent, _, err) = dak(&alice.dir, &["send", &carol.phone, "to carol"]);
    assert!(!sent && err.contains("key transparency"), "{err}");
}
