//! The conformance suite against the embedded store, plus what only a file
//! on disk can show: committed data survives reopening.

use dak_store::{
    CLASSIC_SUITE, CodeAttempt, NewEnvelope, SqliteStore, Store, Verification, conformance,
};

/// A plain connection to the store's file, as an older release (or an
/// operator's `sqlite3`) would open it beside the store.
fn raw(path: &std::path::Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(path).unwrap();
    c.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
    c
}

/// The device's envelopes and body bytes counted again from its mailbox:
/// the rows above its acked-through mark (rows under it were acked and
/// wait for the writer's sweep).
fn recount(raw: &rusqlite::Connection, device: u64) -> (u64, u64) {
    raw.query_row(
        "SELECT COUNT(*), COALESCE(SUM(length(body) + shared_len), 0) FROM mailbox
         WHERE device_id = ?1
           AND seq > COALESCE((SELECT acked_through FROM mailbox_usage WHERE device_id = ?1), 0)",
        [device as i64],
        |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
    )
    .unwrap()
}

/// Rows of the device's mailbox on disk, acked or not.
fn rows_on_disk(raw: &rusqlite::Connection, device: u64) -> u64 {
    raw.query_row(
        "SELECT COUNT(*) FROM mailbox WHERE device_id = ?1",
        [device as i64],
        |r| r.get::<_, i64>(0),
    )
    .unwrap() as u64
}

/// Waits (up to 10 s) for the writer's idle sweep to leave `left` rows of
/// the device on disk.
async fn swept_to(raw: &rusqlite::Connection, device: u64, left: u64) {
    for _ in 0..1000 {
        if rows_on_disk(raw, device) == left {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!(
        "device {device}: {} rows on disk, expected {left} after the sweep",
        rows_on_disk(raw, device)
    );
}

/// A new store in a temporary directory (its file `dak.db`) with one
/// account of two devices: the primary and a linked one. Its acks move the
/// mark from one seq up (a drain's acks do, from `ACK_MARK_MIN`), so a few
/// envelopes reach it.
async fn store_with_two_devices(phone: &str) -> (tempfile::TempDir, SqliteStore, u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("dak.db"))
        .unwrap()
        .with_ack_mark_min(1);
    let reg = store
        .register_primary(phone, &[1; 32], "p", 1)
        .await
        .unwrap();
    let linked = store
        .add_linked_device(reg.account_id, &[2; 32], "l", 1, 4)
        .await
        .unwrap();
    (dir, store, reg.device.id, linked.id)
}

/// An envelope from a fixed sender that never expires.
fn envelope(message_id: Vec<u8>, body: Vec<u8>) -> NewEnvelope {
    NewEnvelope {
        message_id,
        sender_phone: "+919800000001".into(),
        sender_device: 1,
        server_time_ms: 1,
        expires_ms: i64::MAX,
        body,
    }
}

#[tokio::test]
async fn sqlite_passes_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("dak.db")).unwrap();
    conformance::run_all(&store).await;
}

/// The same with every ack that can move a device's mark doing so (by
/// default only acks of `ACK_MARK_MIN` seqs and more, a drain's).
#[tokio::test]
async fn sqlite_passes_conformance_with_acks_moving_the_mark() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("dak.db"))
        .unwrap()
        .with_ack_mark_min(1);
    conformance::run_all(&store).await;
}

#[tokio::test]
async fn enqueued_envelopes_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dak.db");
    let device = {
        let store = SqliteStore::open(&path).unwrap();
        let reg = store
            .register_primary("+919800000009", &[1; 32], "p", 1)
            .await
            .unwrap();
        let env = envelope(vec![1; 16], b"kept".to_vec());
        // Many concurrent writers are folded into few commits; all must land.
        let mut tasks = Vec::new();
        for i in 0..200u8 {
            let (s, mut e) = (store.clone(), env.clone());
            e.message_id = vec![i; 16];
            let d = reg.device.id;
            tasks.push(tokio::spawn(async move { s.enqueue(e, &[d]).await }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        reg.device.id
    };
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.mailbox_len(device).await.unwrap(), 200);
}

/// A store made before the edge hardening: `verifications` keyed by phone
/// alone, and no mailbox usage. Opening it replaces the first and fills the
/// second from the mailboxes, exactly.
#[tokio::test]
async fn stores_from_before_the_quota_are_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dak.db");
    let device = {
        let store = SqliteStore::open(&path).unwrap();
        let reg = store
            .register_primary("+919800000010", &[1; 32], "p", 1)
            .await
            .unwrap();
        for i in 0..4u8 {
            let env = envelope(vec![i; 16], vec![i; 100]);
            store.enqueue(env, &[reg.device.id]).await.unwrap();
        }
        reg.device.id
    };
    let old = raw(&path);
    old.execute_batch(
        "DROP TRIGGER IF EXISTS mailbox_usage_insert;
         DROP TRIGGER IF EXISTS mailbox_usage_delete;
         DROP TABLE mailbox_usage;
         DROP TABLE verifications;
         CREATE TABLE verifications (
             phone TEXT PRIMARY KEY,
             code_hash TEXT NOT NULL,
             expires_ms INTEGER NOT NULL,
             attempts INTEGER NOT NULL DEFAULT 0,
             sent_in_window INTEGER NOT NULL DEFAULT 0,
             window_start_ms INTEGER NOT NULL DEFAULT 0
         ) STRICT;
         INSERT INTO verifications (phone, code_hash, expires_ms) VALUES ('+919800000010', 'h', 100);",
    )
    .unwrap();
    drop(old);
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.mailbox_usage(device).await.unwrap(), (4, 400));
    store
        .put_verification(Verification {
            phone: "+919800000010".into(),
            session: vec![7; 32],
            code_hash: "h2".into(),
            expires_ms: 100,
            attempts: 0,
        })
        .await
        .unwrap();
    assert_eq!(
        store
            .take_code_attempt("+919800000010", &[7; 32], 50, 3)
            .await
            .unwrap(),
        CodeAttempt::Counted {
            code_hash: "h2".into(),
            attempts: 1
        }
    );
    // And the triggers are back: usage follows the mailbox.
    let seqs = conformance::waiting_seqs(&store, device).await;
    store.ack(device, &seqs[..1]).await.unwrap();
    assert_eq!(store.mailbox_usage(device).await.unwrap(), (3, 300));
}

/// A store made before leaf indices were kept: `group_members` has no
/// `leaf_index`. Opening it adds the column, NULL for the members already
/// there, and their group goes on taking the declared removals.
#[tokio::test]
async fn groups_from_before_leaf_indices_take_declared_removals() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dak.db");
    let group = {
        let store = SqliteStore::open(&path).unwrap();
        conformance::legacy_group_setup(&store).await
    };
    let old = raw(&path);
    old.execute_batch("ALTER TABLE group_members DROP COLUMN leaf_index")
        .unwrap();
    drop(old);
    let store = SqliteStore::open(&path).unwrap();
    let leaves = || {
        let conn = raw(&path);
        let mut stmt = conn
            .prepare("SELECT leaf_index FROM group_members WHERE group_id = ?1 ORDER BY device_id")
            .unwrap();
        stmt.query_map([&group.group_id], |r| r.get::<_, Option<i64>>(0))
            .unwrap()
            .collect::<rusqlite::Result<Vec<_>>>()
            .unwrap()
    };
    assert_eq!(leaves(), vec![None, None, None]);
    conformance::legacy_group_check(&store, &group).await;
    assert_eq!(
        leaves(),
        vec![None, None],
        "added devices' leaves stay unknown"
    );
}

/// The fast path's contract: every committed envelope is passed once, in
/// commit order, so each device's seqs rise and match its mailbox exactly.
#[tokio::test]
async fn the_commit_listener_sees_each_envelope_once_in_seq_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("dak.db")).unwrap();
    let recorder = std::sync::Arc::new(dak_store::testing::CommitRecorder::default());
    assert_eq!(
        store.set_commit_listener(recorder.clone()),
        Some(dak_store::HintOrder::CommitOrder)
    );
    assert!(
        store.set_commit_listener(recorder.clone()).is_none(),
        "one listener only"
    );
    let mut devices = Vec::new();
    for i in 0..3u8 {
        let phone = format!("+91980000002{i}");
        let reg = store
            .register_primary(&phone, &[i + 1; 32], "p", 1)
            .await
            .unwrap();
        devices.push(reg.device.id);
    }
    let mut tasks = Vec::new();
    for i in 0..300u16 {
        let s = store.clone();
        // Each envelope to one or two of the three devices.
        let to: Vec<u64> = match i % 3 {
            0 => vec![devices[0]],
            1 => vec![devices[1], devices[2]],
            _ => vec![devices[0], devices[2]],
        };
        let env = envelope(i.to_be_bytes().to_vec(), vec![1; 10]);
        tasks.push(tokio::spawn(async move { s.enqueue(env, &to).await }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    // A caller is answered before the listener is told (the writer does
    // both after the commit, in that order), so the last send's answer can
    // come before the listener has its envelopes. One more write job's
    // answer comes after the writer has finished every earlier batch.
    store.ack(devices[0], &[]).await.unwrap();
    let seen = recorder.0.lock().unwrap().clone();
    for d in devices {
        let told = &seen[&d];
        assert!(
            told.windows(2).all(|w| w[0].0 < w[1].0),
            "device {d}: seqs in commit order"
        );
        let stored = dak_store::testing::mailbox_seqs(&store, d).await;
        assert_eq!(told, &stored, "device {d}: exactly what was committed");
    }
}

/// The send cache under concurrency: sends at the old and the new epoch
/// race a commit that removes one member and adds another. Each send is
/// checked against the group as the writer's order has it at that send: a
/// send before the commit reaches the removed member and not the new one,
/// a send after it the other way round, and the removed member's mailbox
/// holds nothing after its removal.
#[tokio::test]
async fn sends_racing_a_commit_reach_exactly_the_members_of_their_epoch() {
    use dak_store::{Device, GroupCommit, GroupOutcome, MailboxQuota};
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("dak.db")).unwrap();
    let mut people: Vec<Device> = Vec::new();
    for i in 0..4u8 {
        let reg = store
            .register_primary(&format!("+91980000003{i}"), &[40 + i; 32], "p", 1)
            .await
            .unwrap();
        store
            .put_key_packages(reg.device.id, CLASSIC_SUITE, vec![], Some(vec![i]), 100)
            .await
            .unwrap();
        people.push(reg.device);
    }
    let [a, b, c, d] = [0, 1, 2, 3].map(|i| people[i].clone());
    let env = |by: &Device, id: u16, body: &[u8]| NewEnvelope {
        message_id: id.to_be_bytes().to_vec(),
        sender_phone: by.phone.clone(),
        sender_device: by.id,
        server_time_ms: 1,
        expires_ms: i64::MAX,
        body: body.to_vec(),
    };
    let g = b"racing-group".to_vec();
    let create = GroupCommit {
        group_id: g.clone(),
        epoch: 0,
        added: vec![b.id, c.id],
        removed: vec![],
        removed_leaves: vec![],
        added_phones: vec![],
        max_accounts: 1024,
        commit: env(&a, 60000, b"create"),
        welcome: Some(env(&a, 60001, b"welcome-1")),
    };
    assert!(matches!(
        store.commit_group(create).await.unwrap(),
        GroupOutcome::Accepted { .. }
    ));
    // Warm the cache at epoch 1.
    assert!(matches!(
        store
            .send_group(&g, 1, env(&a, 60002, b"warm"), MailboxQuota::UNLIMITED)
            .await
            .unwrap(),
        GroupOutcome::Accepted { .. }
    ));
    let change = GroupCommit {
        group_id: g.clone(),
        epoch: 1,
        added: vec![d.id],
        removed: vec![c.id],
        removed_leaves: vec![2], // a 0, b 1, c 2
        added_phones: vec![],
        max_accounts: 1024,
        commit: env(&b, 60003, b"change"),
        welcome: Some(env(&b, 60004, b"welcome-2")),
    };
    let mut tasks = Vec::new();
    for i in 0..400u16 {
        let (s, g) = (store.clone(), g.clone());
        if i == 200 {
            let (s, change) = (store.clone(), change.clone());
            tasks.push(tokio::spawn(async move {
                (u16::MAX, 0, s.commit_group(change).await.unwrap())
            }));
        }
        let epoch = 1 + u64::from(i % 2);
        let e = env(&a, i, format!("m{epoch}").as_bytes());
        tasks.push(tokio::spawn(async move {
            let outcome = s
                .send_group(&g, epoch, e, MailboxQuota::UNLIMITED)
                .await
                .unwrap();
            (i, epoch, outcome)
        }));
    }
    let mut accepted = [0usize; 3];
    for t in tasks {
        let (i, epoch, outcome) = t.await.unwrap();
        if i == u16::MAX {
            assert!(
                matches!(outcome, GroupOutcome::Accepted { .. }),
                "{outcome:?}"
            );
            continue;
        }
        match outcome {
            GroupOutcome::Accepted { recipients } => {
                let ids: Vec<u64> = recipients.iter().map(|r| r.id).collect();
                let want = if epoch == 1 {
                    vec![b.id, c.id]
                } else {
                    vec![b.id, d.id]
                };
                assert_eq!(ids, want, "send {i} at epoch {epoch}");
                accepted[epoch as usize] += 1;
            }
            GroupOutcome::Stale { .. } => {}
            other => panic!("send {i}: {other:?}"),
        }
    }
    let bodies = |device: u64| {
        let s = store.clone();
        async move {
            s.fetch_mailbox(device, 0, 10_000)
                .await
                .unwrap()
                .into_iter()
                .map(|e| String::from_utf8(e.body).unwrap())
                .collect::<Vec<_>>()
        }
    };
    let of_c = bodies(c.id).await;
    let removal = of_c.iter().position(|b| b == "change").expect("c is told");
    assert_eq!(
        removal,
        of_c.len() - 1,
        "nothing reaches c after its removal"
    );
    assert_eq!(of_c.iter().filter(|b| *b == "m1").count(), accepted[1]);
    let of_d = bodies(d.id).await;
    assert_eq!(of_d[0], "welcome-2", "d joins first, then reads");
    assert_eq!(of_d.iter().filter(|b| *b == "m2").count(), accepted[2]);
    assert_eq!(of_d.len(), 1 + accepted[2], "d gets no epoch-1 message");
}

/// A store from the edge hardening counted inserts with a trigger; this
/// release counts them in `count_into_usage`. Opening such a store drops
/// the old trigger, so an insert is counted once, not twice.
#[tokio::test]
async fn stores_with_the_insert_trigger_count_each_envelope_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dak.db");
    let envelope = |i: u8| envelope(vec![i; 16], vec![i; 100]);
    let device = {
        let store = SqliteStore::open(&path).unwrap();
        let reg = store
            .register_primary("+919800000011", &[1; 32], "p", 1)
            .await
            .unwrap();
        store.enqueue(envelope(1), &[reg.device.id]).await.unwrap();
        reg.device.id
    };
    let old = raw(&path);
    old.execute_batch(
        "CREATE TRIGGER mailbox_usage_insert AFTER INSERT ON mailbox BEGIN
             INSERT OR IGNORE INTO mailbox_usage (device_id, envelopes, bytes) VALUES (NEW.device_id, 0, 0);
             UPDATE mailbox_usage SET envelopes = envelopes + 1, bytes = bytes + length(NEW.body)
                 WHERE device_id = NEW.device_id;
         END;",
    )
    .unwrap();
    drop(old);
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.mailbox_usage(device).await.unwrap(), (1, 100));
    store.enqueue(envelope(2), &[device]).await.unwrap();
    assert_eq!(store.mailbox_usage(device).await.unwrap(), (2, 200));
}

/// Every path that deletes from a mailbox (an ack, expiry, a revoked
/// device) counts what it deleted in the device's usage: after each, the
/// usage is what counting the mailbox again gives. No trigger counts for
/// them any more (`create_mailbox_usage`), so a new delete path that
/// forgot would show here.
#[tokio::test]
async fn usage_matches_a_recount_after_every_delete_path() {
    let (dir, store, a, b) = store_with_two_devices("+919800000013").await;
    let path = dir.path().join("dak.db");
    let check = |step: &'static str| {
        let store = &store;
        let path = &path;
        async move {
            let raw = raw(path);
            for d in [a, b] {
                let usage = store.mailbox_usage(d).await.unwrap();
                assert_eq!(usage, recount(&raw, d), "device {d} after {step}");
            }
        }
    };
    for i in 0..6u8 {
        // Inline (one device) and shared (both), some expiring at 10.
        let mut e = envelope(vec![i; 16], vec![i; 100 + i as usize]);
        if i % 2 == 0 {
            e.expires_ms = 10;
        }
        let to: &[u64] = if i < 3 { &[a] } else { &[a, b] };
        store.enqueue(e, to).await.unwrap();
    }
    check("enqueue").await;
    assert_eq!(store.mailbox_usage(a).await.unwrap().0, 6);
    let seqs = conformance::waiting_seqs(&store, a).await;
    // Some acked, one of them twice, and one that is not the device's.
    let acked = [seqs[0], seqs[3], seqs[3], 1_000_000];
    assert_eq!(store.ack(a, &acked).await.unwrap(), 2);
    check("ack").await;
    assert_eq!(store.mailbox_usage(a).await.unwrap().0, 4);
    // The oldest left, with nothing unacked under it: moves the mark.
    assert_eq!(store.ack(a, &[seqs[1]]).await.unwrap(), 1);
    check("ack under a mark").await;
    assert_eq!(store.mailbox_usage(a).await.unwrap().0, 3);
    let expired = store.expire(10, 1).await.unwrap();
    assert!(expired.envelopes > 0);
    check("expire").await;
    store
        .revoke_device(b, dak_store::RevokeReason::Removed)
        .await
        .unwrap();
    check("revoke").await;
    assert_eq!(store.mailbox_usage(b).await.unwrap(), (0, 0));
    let rest = conformance::waiting_seqs(&store, a).await;
    store.ack(a, &rest).await.unwrap();
    check("ack of the rest").await;
    assert_eq!(store.mailbox_usage(a).await.unwrap(), (0, 0));
}

/// A store made before bodies were shared: `mailbox` without `shared_body`
/// and `shared_len`, and a usage trigger that subtracts the inline body
/// only. Opening it adds both, replaces the trigger, and the usage of rows
/// from before and of shared rows stays exact.
#[tokio::test]
async fn stores_from_before_shared_bodies_are_migrated() {
    let (dir, store, a, b) = store_with_two_devices("+919800000012").await;
    let path = dir.path().join("dak.db");
    store
        .enqueue(envelope(vec![1; 16], vec![1; 100]), &[a])
        .await
        .unwrap();
    drop(store);
    let old = raw(&path);
    old.execute_batch(
        "DROP INDEX mailbox_by_shared_body;
         DROP TABLE shared_bodies;
         DROP TRIGGER IF EXISTS mailbox_usage_delete;
         ALTER TABLE mailbox DROP COLUMN shared_body;
         ALTER TABLE mailbox DROP COLUMN shared_len;
         CREATE TRIGGER mailbox_usage_delete AFTER DELETE ON mailbox BEGIN
             UPDATE mailbox_usage SET envelopes = envelopes - 1, bytes = bytes - length(OLD.body)
                 WHERE device_id = OLD.device_id;
         END;",
    )
    .unwrap();
    drop(old);
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.mailbox_usage(a).await.unwrap(), (1, 100));
    store
        .enqueue(envelope(vec![2; 16], vec![2; 300]), &[a, b])
        .await
        .unwrap();
    assert_eq!(store.stored_body_bytes().await.unwrap(), 100 + 300);
    assert_eq!(store.mailbox_usage(a).await.unwrap(), (2, 400));
    for d in [a, b] {
        let seqs = conformance::waiting_seqs(&store, d).await;
        store.ack(d, &seqs).await.unwrap();
        assert_eq!(store.mailbox_usage(d).await.unwrap(), (0, 0), "device {d}");
    }
    store.expire(1, 1).await.unwrap();
    assert_eq!(store.stored_body_bytes().await.unwrap(), 0);
    // Going back (docs/OPERATIONS.md): the statement that puts shared
    // bodies back inline keeps every body and the usage counts.
    store
        .enqueue(envelope(vec![3; 16], vec![3; 200]), &[a, b])
        .await
        .unwrap();
    let old = raw(&path);
    old.execute_batch(INLINE_SHARED_BODIES).unwrap();
    drop(old);
    for d in [a, b] {
        let got = store.fetch_mailbox(d, 0, 10).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].body, vec![3; 200]);
        assert_eq!(store.mailbox_usage(d).await.unwrap(), (1, 200));
        store.ack(d, &[got[0].seq]).await.unwrap();
        assert_eq!(store.mailbox_usage(d).await.unwrap(), (0, 0));
    }
}

/// docs/OPERATIONS.md's statement for going back to a release before
/// shared bodies, word for word.
const INLINE_SHARED_BODIES: &str = "UPDATE mailbox SET body = (SELECT body FROM shared_bodies WHERE id = mailbox.shared_body), shared_body = NULL, shared_len = 0 WHERE shared_body IS NOT NULL;";

/// The figure: a removal commit at 1,024 members (84,560 bytes,
/// the fresh-tree removal `dak bench group --members 1024` measures) used
/// to be stored 1,023 times, 86.5 MB. It is now stored once: the database
/// file grows by the commit plus one small row per member, and every member
/// reads the whole commit.
#[tokio::test]
async fn a_removal_at_1024_members_stores_its_commit_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dak.db");
    let store = SqliteStore::open(&path).unwrap();
    let mut members = Vec::new();
    for i in 0..1024u32 {
        let key: Vec<u8> = (0..32).map(|j| (i.wrapping_mul(31) + j) as u8).collect();
        let reg = store
            .register_primary(&format!("+91980{i:07}"), &key, "p", 1)
            .await
            .unwrap();
        store
            .put_key_packages(reg.device.id, CLASSIC_SUITE, vec![], Some(vec![1]), 100)
            .await
            .unwrap();
        members.push(reg.device);
    }
    let created = store
        .commit_group(dak_store::GroupCommit {
            group_id: b"g1024".to_vec(),
            epoch: 0,
            added: members[1..].iter().map(|d| d.id).collect(),
            removed: vec![],
            removed_leaves: vec![],
            added_phones: vec![],
            max_accounts: 1024,
            commit: envelope(vec![1; 16], b"create".to_vec()),
            welcome: Some(envelope(vec![2; 16], vec![2; 1000])),
        })
        .await
        .unwrap();
    assert!(
        matches!(created, dak_store::GroupOutcome::Accepted { .. }),
        "{created:?}"
    );
    let file_bytes = || {
        raw(&path)
            .query_row(
                "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
                [],
                |r| r.get::<_, i64>(0),
            )
            .unwrap()
    };
    let before = file_bytes();
    let commit: Vec<u8> = (0..84_560u32).map(|i| (i % 253) as u8).collect();
    let mut removal = dak_store::GroupCommit {
        group_id: b"g1024".to_vec(),
        epoch: 1,
        added: vec![],
        removed: vec![members[1023].id],
        removed_leaves: vec![1023],
        added_phones: vec![],
        max_accounts: 1024,
        commit: envelope(vec![3; 16], commit.clone()),
        welcome: None,
    };
    removal.commit.sender_device = members[0].id;
    let removed = store.commit_group(removal).await.unwrap();
    assert!(
        matches!(removed, dak_store::GroupOutcome::Accepted { .. }),
        "{removed:?}"
    );
    let grown = file_bytes() - before;
    println!("a removal at 1,024 members grew the store by {grown} bytes");
    assert!(grown <= 200_000, "grew by {grown} bytes");
    for d in &members[1..] {
        let got = store.fetch_mailbox(d.id, 0, 10).await.unwrap();
        let last = got.last().unwrap();
        assert_eq!(last.message_id, vec![3; 16], "device {}", d.id);
        assert!(last.body == commit, "device {} read the whole commit", d.id);
    }
}

/// An ack that covers every envelope from the device's mark up moves the
/// mark: the envelopes leave its mailbox and usage at once, and the writer
/// deletes the rows when idle. One with a gap deletes at once. A seq the
/// device was never given moves nothing, so a later envelope is never
/// hidden; rows left under a mark when the store closed are swept when it
/// opens again. (Acks of any size move the mark here; see the end for the
/// default, where a few seqs delete at once.)
#[tokio::test]
async fn acks_move_a_mark_and_the_writer_deletes_under_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dak.db");
    let store = SqliteStore::open(&path).unwrap().with_ack_mark_min(1);
    let a = store
        .register_primary("+919800000014", &[1; 32], "p", 1)
        .await
        .unwrap()
        .device
        .id;
    for i in 0..10u8 {
        store
            .enqueue(envelope(vec![i; 16], vec![i; 100]), &[a])
            .await
            .unwrap();
    }
    let seqs = conformance::waiting_seqs(&store, a).await;
    let raw = raw(&path);
    let mark = |raw: &rusqlite::Connection| -> (u64, u64) {
        raw.query_row(
            "SELECT acked_through, swept_through FROM mailbox_usage WHERE device_id = ?1",
            [a as i64],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
        )
        .unwrap()
    };

    // From the start, in order (a drain's acks): the mark moves.
    assert_eq!(store.ack(a, &seqs[..4]).await.unwrap(), 4);
    assert_eq!(store.mailbox_usage(a).await.unwrap(), (6, 600));
    assert_eq!(store.mailbox_len(a).await.unwrap(), 6);
    assert_eq!(conformance::waiting_seqs(&store, a).await, seqs[4..]);
    assert_eq!(
        store.fetch_mailbox(a, seqs[1], 2).await.unwrap()[0].seq,
        seqs[4]
    );
    swept_to(&raw, a, 6).await;
    assert_eq!(mark(&raw), (seqs[3], seqs[3]));

    // A gap (seqs[4] not acked): deleted at once, the mark stays.
    assert_eq!(store.ack(a, &[seqs[5]]).await.unwrap(), 1);
    assert_eq!(rows_on_disk(&raw, a), 5);
    assert_eq!(mark(&raw).0, seqs[3]);
    // The gap filled, then the next two: the mark moves past the deleted row.
    assert_eq!(store.ack(a, &[seqs[4]]).await.unwrap(), 1);
    assert_eq!(store.ack(a, &[seqs[7], seqs[6], seqs[6]]).await.unwrap(), 2);
    assert_eq!(mark(&raw).0, seqs[7]);
    // Acked again: nothing.
    assert_eq!(store.ack(a, &seqs[..8]).await.unwrap(), 0);
    assert_eq!(store.mailbox_usage(a).await.unwrap(), (2, 200));

    // Seqs never given to the device, far ahead: nothing moves (the
    // second ack leaves seqs[9] out, a gap), and with the device's last
    // envelope in the same ack the mark stops at that envelope, so one
    // enqueued afterwards is delivered.
    assert_eq!(store.ack(a, &[u64::MAX, 1 << 40]).await.unwrap(), 0);
    assert_eq!(store.ack(a, &[seqs[8], 1 << 40]).await.unwrap(), 1);
    assert_eq!(store.ack(a, &[seqs[9], 1 << 40]).await.unwrap(), 1);
    assert_eq!(mark(&raw).0, seqs[9]);
    store
        .enqueue(envelope(vec![10; 16], vec![10; 100]), &[a])
        .await
        .unwrap();
    let waiting = conformance::waiting_seqs(&store, a).await;
    assert_eq!(waiting.len(), 1, "{waiting:?}");
    assert!(waiting[0] > seqs[9]);
    swept_to(&raw, a, 1).await;
    assert_eq!(store.mailbox_usage(a).await.unwrap(), (1, 100));
    assert_eq!(store.mailbox_usage(a).await.unwrap(), recount(&raw, a));

    // Acked in the store, not yet swept when it closed (as after a kill
    // just after the ack's commit): swept at the next open.
    drop(store);
    raw.execute(
        "UPDATE mailbox_usage SET acked_through = ?2, envelopes = envelopes - 1, bytes = bytes - 100
         WHERE device_id = ?1",
        rusqlite::params![a as i64, waiting[0] as i64],
    )
    .unwrap();
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.mailbox_len(a).await.unwrap(), 0);
    swept_to(&raw, a, 0).await;
    assert_eq!(store.mailbox_usage(a).await.unwrap(), (0, 0));
    assert_eq!(store.mailbox_usage(a).await.unwrap(), recount(&raw, a));

    // By default (this store), an ack of a few seqs, an online device's,
    // deletes at once and leaves the mark where it is.
    let before = mark(&raw);
    store
        .enqueue(envelope(vec![11; 16], vec![11; 100]), &[a])
        .await
        .unwrap();
    let waiting = conformance::waiting_seqs(&store, a).await;
    assert_eq!(store.ack(a, &waiting).await.unwrap(), 1);
    assert_eq!(rows_on_disk(&raw, a), 0);
    assert_eq!(mark(&raw), before);
}

/// Rows under a mark that no sweep has reached are invisible to every read
/// and counted by nothing: not fetched, not in the mailbox's length, not
/// expired or counted out again by the expiry pass, and another device's
/// rows between them are untouched. (The rows are marked by hand, as swept
/// already, so that no sweep races the reads.)
#[tokio::test]
async fn rows_under_a_mark_are_invisible_before_the_sweep() {
    let (dir, store, a, b) = store_with_two_devices("+919800000015").await;
    let path = dir.path().join("dak.db");
    // Interleaved: a's and b's seqs alternate; every other one expires at 10.
    for i in 0..6u8 {
        for d in [a, b] {
            let mut e = envelope(vec![i; 16], vec![i; 100]);
            if i % 2 == 0 {
                e.expires_ms = 10;
            }
            store.enqueue(e, &[d]).await.unwrap();
        }
    }
    let seqs = conformance::waiting_seqs(&store, a).await;
    let raw = raw(&path);
    raw.execute(
        "UPDATE mailbox_usage SET acked_through = ?2, swept_through = ?2,
             envelopes = envelopes - 3, bytes = bytes - 300
         WHERE device_id = ?1",
        rusqlite::params![a as i64, seqs[2] as i64],
    )
    .unwrap();
    assert_eq!(conformance::waiting_seqs(&store, a).await, seqs[3..]);
    assert_eq!(store.mailbox_len(a).await.unwrap(), 3);
    assert_eq!(store.mailbox_len(b).await.unwrap(), 6);
    assert_eq!(
        dak_store::testing::sqlite_mailbox_bodies(&path, a).len(),
        3,
        "the test helper reads what is waiting"
    );
    // Expiring: a's seqs[4] (above the mark) and b's three; a's seqs[0]
    // and seqs[2] are under the mark, already counted out.
    let expired = store.expire(10, 1).await.unwrap();
    assert_eq!(expired.envelopes, 4);
    for d in [a, b] {
        assert_eq!(store.mailbox_usage(d).await.unwrap(), recount(&raw, d));
    }
    assert_eq!(store.mailbox_usage(a).await.unwrap(), (2, 200));
    assert_eq!(store.mailbox_usage(b).await.unwrap(), (3, 300));

    // A real ack of a's last two moves the mark; the sweep deletes them
    // (past the hand-made mark: a keeps seqs[0..3] on disk) and none of
    // b's rows between them.
    let left = conformance::waiting_seqs(&store, a).await;
    assert_eq!(left, [seqs[3], seqs[5]]);
    assert_eq!(store.ack(a, &left).await.unwrap(), 2);
    swept_to(&raw, a, 3).await;
    assert_eq!(rows_on_disk(&raw, b), 3);
    assert_eq!(store.mailbox_usage(b).await.unwrap(), (3, 300));
}
