//! Upgrading from the previous release: a server data directory and two
//! profiles that release wrote (`tests/fixtures/previous-release`, made by
//! `make.sh` there), its MLS state still in openmls_sqlite_storage's tables,
//! open in this one and carry on in the same conversation.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use dak_client::Event;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/previous-release"
);

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn db(profile: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(profile.join("profile.db")).unwrap()
}

/// A profile's conversations: (group id, peer, active), by group id.
fn conversations(profile: &Path) -> Vec<(Vec<u8>, String, i64)> {
    let db = db(profile);
    let mut stmt = db
        .prepare("SELECT group_id, peer, active FROM conversations ORDER BY group_id")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// The rows of openmls_sqlite_storage's tables, and the records of `mls_kv`
/// (none where the table is absent).
fn mls_rows(profile: &Path) -> (i64, i64) {
    let db = db(profile);
    let count = |sql: &str| db.query_row(sql, [], |r| r.get(0)).unwrap_or(0);
    (
        count("SELECT count(*) FROM openmls_group_data"),
        count("SELECT count(*) FROM mls_kv"),
    )
}

fn texts(who: &Person, with: &str) -> Vec<String> {
    who.profile()
        .conversation(with, 100)
        .unwrap()
        .into_iter()
        .map(|m| m.text)
        .collect()
}

/// Syncs `who` and returns the texts received, failing on any sign that
/// the conversation's state was lost (an undecryptable message, a changed
/// safety number).
async fn sync(who: &Person) -> Vec<String> {
    let mut texts = Vec::new();
    for e in sync_events(who).await {
        match e {
            Event::Message(m) => texts.push(m.text),
            Event::Undecodable { reason, .. } => panic!("{}: undecodable: {reason:?}", who.phone),
            Event::SecurityNotice { .. } => panic!("{}: {e:?}", who.phone),
            _ => {}
        }
    }
    texts
}

#[tokio::test]
async fn a_previous_release_profile_carries_on_in_the_same_conversation() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(Path::new(FIXTURE), tmp.path());
    let dir = |name: &str| -> PathBuf { tmp.path().join(name) };
    let alice = Person::at("+919800000001", &dir("alice"));
    let bob = Person::at("+919800000002", &dir("bob"));

    // What the previous release left: MLS state in the old tables only.
    let alice_groups = conversations(&alice.dir);
    let bob_groups = conversations(&bob.dir);
    assert_eq!(alice_groups.len(), 1, "{alice_groups:?}");
    assert_eq!(bob_groups.len(), 1, "{bob_groups:?}");
    assert_eq!(alice_groups[0].0, bob_groups[0].0, "one group, both sides");
    for p in [&alice, &bob] {
        let (old, _) = mls_rows(&p.dir);
        assert!(old > 0, "{}: no openmls_sqlite_storage rows", p.phone);
    }

    // This release's server on the old data (and certificate, which the
    // profiles pinned); the profiles are pointed at its new port.
    let server = TestServer::start_on(&dir("server"));
    for p in [&alice, &bob] {
        let profile = p.profile();
        let reg = profile.registration().unwrap();
        profile
            .save_registration(&server.url, &reg.phone, reg.device_id)
            .unwrap();
        // Opening moved the MLS state.
        let (old, new) = mls_rows(&p.dir);
        assert_eq!(old, 0, "{}: old tables left", p.phone);
        assert!(new > 0, "{}: nothing in mls_kv", p.phone);
    }

    // The old history is all there.
    let old_history = [
        "hello bob (previous release)",
        "hi alice (previous release)",
        "still there? (previous release)",
        "sent by the previous release, read by this one",
    ];
    assert_eq!(texts(&alice, &bob.phone), old_history);
    assert_eq!(texts(&bob, &alice.phone), old_history[..3]);

    // The message the previous release encrypted and left on the server
    // decrypts with the moved state.
    assert_eq!(sync(&bob).await, [old_history[3]]);

    // A new message, in the same conversation both ways.
    let mut a = alice.connect().await;
    a.send_text(&bob.phone, "hello from this release")
        .await
        .unwrap();
    a.close().await;
    assert_eq!(sync(&bob).await, ["hello from this release"]);
    let mut b = bob.connect().await;
    b.send_text(&alice.phone, "and back").await.unwrap();
    b.close().await;
    assert_eq!(sync(&alice).await, ["and back"]);

    // No new group: the conversation's group is the one the previous
    // release made.
    assert_eq!(conversations(&alice.dir), alice_groups);
    assert_eq!(conversations(&bob.dir), bob_groups);
    let mut history = old_history.to_vec();
    history.extend(["hello from this release", "and back"]);
    assert_eq!(texts(&alice, &bob.phone), history);
    assert_eq!(texts(&bob, &alice.phone), history);
}
