//! The conformance suite against a real PostgreSQL, in a database made for
//! each test and dropped after it (`dak_store::testing::FreshDb`).

use dak_store::testing::FreshDb;
use dak_store::{
    CLASSIC_SUITE, CodeAttempt, GroupCommit, GroupOutcome, MailboxQuota, NewEnvelope, PgStore,
    Store, StoreError, Verification, conformance,
};
use sqlx::Connection;

#[tokio::test]
async fn postgres_passes_conformance() {
    let db = FreshDb::new("dak_test").await;
    let store = PgStore::connect(&db.url, 4).await.expect("connect");
    conformance::run_all(&store).await;
}

#[tokio::test]
async fn nodes_starting_together_migrate_once() {
    let db = FreshDb::new("dak_test").await;
    let starts: Vec<_> = (0..4)
        .map(|_| {
            let url = db.url.clone();
            tokio::spawn(async move { PgStore::connect(&url, 2).await.map(|_| ()) })
        })
        .collect();
    for s in starts {
        s.await.unwrap().expect("every node starts");
    }
}

/// A store made before leaf indices were kept: `group_members` has no
/// `leaf_index`. Connecting adds the column, NULL for the members already
/// there, and their group goes on taking the declared removals.
#[tokio::test]
async fn groups_from_before_leaf_indices_take_declared_removals() {
    let db = FreshDb::new("dak_test").await;
    let group = {
        let store = PgStore::connect(&db.url, 2).await.expect("connect");
        conformance::legacy_group_setup(&store).await
    };
    let mut admin = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    sqlx::query("ALTER TABLE group_members DROP COLUMN leaf_index")
        .execute(&mut admin)
        .await
        .unwrap();
    let store = PgStore::connect(&db.url, 2).await.expect("connect");
    let leaves = async |admin: &mut sqlx::PgConnection| {
        sqlx::query_scalar::<_, Option<i64>>(
            "SELECT leaf_index FROM group_members WHERE group_id = $1 ORDER BY device_id",
        )
        .bind(&group.group_id)
        .fetch_all(admin)
        .await
        .unwrap()
    };
    assert_eq!(leaves(&mut admin).await, vec![None, None, None]);
    conformance::legacy_group_check(&store, &group).await;
    assert_eq!(
        leaves(&mut admin).await,
        vec![None, None],
        "added devices' leaves stay unknown"
    );
}

#[tokio::test]
async fn concurrent_links_never_exceed_the_cap() {
    let db = FreshDb::new("dak_test").await;
    let store = PgStore::connect(&db.url, 8).await.expect("connect");
    let reg = store
        .register_primary("+911000000099", &[1; 32], "p", 1)
        .await
        .unwrap();
    let tries: Vec<_> = (0..8u8)
        .map(|i| {
            let s = store.clone();
            tokio::spawn(async move {
                s.add_linked_device(reg.account_id, &[100 + i; 32], "l", 2, 2)
                    .await
            })
        })
        .collect();
    let mut ok = 0;
    for t in tries {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(StoreError::TooManyDevices { max: 2 }) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(ok, 2);
    assert_eq!(store.devices_of(reg.account_id).await.unwrap().len(), 3);
}

/// A reader that only asks for `seq > last seen` (as a session does) must
/// see every envelope, even one whose commit comes after a later envelope's.
/// A trigger holds the first envelope's transaction open after its row (and
/// seq) exist, while a second envelope for the same device goes in.
#[tokio::test]
async fn a_reader_following_seq_never_skips_a_late_commit() {
    let db = FreshDb::new("dak_test").await;
    let store = PgStore::connect(&db.url, 8).await.expect("connect");
    let mut admin = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    for stmt in [
        "CREATE FUNCTION dak_test_stall() RETURNS trigger AS $$
         BEGIN IF NEW.body = '\\x01'::bytea THEN PERFORM pg_sleep(0.8); END IF; RETURN NEW; END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER dak_test_stall AFTER INSERT ON mailbox FOR EACH ROW EXECUTE FUNCTION dak_test_stall()",
    ] {
        sqlx::query(stmt).execute(&mut admin).await.expect("install trigger");
    }
    let reg = store
        .register_primary("+911000000098", &[1; 32], "p", 1)
        .await
        .unwrap();
    let d = reg.device.id;
    let envelope = |body: u8| dak_store::NewEnvelope {
        message_id: vec![body; 16],
        sender_phone: "+911000000097".into(),
        sender_device: 2,
        server_time_ms: 1,
        expires_ms: i64::MAX,
        body: vec![body],
    };
    let slow = {
        let s = store.clone();
        let e = envelope(1);
        tokio::spawn(async move { s.enqueue(e, &[d]).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    store.enqueue(envelope(2), &[d]).await.unwrap();
    // The reader looks now, remembers the last seq, and later asks for more.
    let first = store.fetch_mailbox(d, 0, 10).await.unwrap();
    let after = first.last().map(|e| e.seq).unwrap_or(0);
    slow.await.unwrap().unwrap();
    let later = store.fetch_mailbox(d, after, 10).await.unwrap();
    assert_eq!(
        first.len() + later.len(),
        2,
        "every envelope read exactly once by following seq"
    );
    assert_eq!(store.mailbox_len(d).await.unwrap(), 2);
}

/// `HintOrder::ContiguousSeqs`, the cluster fast path's contract: two
/// stores on one database (two nodes) enqueue concurrently to overlapping
/// devices. Each store tells its listener of its own commits only, each
/// once; together they are exactly each mailbox, and each device's seqs
/// are 1, 2, 3, … with none missing, so a session can tell a late or lost
/// hint from the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commit_hints_cover_each_mailbox_once_with_contiguous_seqs() {
    let db = FreshDb::new("dak_test").await;
    let nodes = [
        PgStore::connect(&db.url, 4).await.expect("connect"),
        PgStore::connect(&db.url, 4).await.expect("connect"),
    ];
    let recorders = [
        std::sync::Arc::new(dak_store::testing::CommitRecorder::default()),
        std::sync::Arc::new(dak_store::testing::CommitRecorder::default()),
    ];
    // One hint key for the cluster, from the database both nodes share.
    let secret = nodes[0].hint_secret().expect("PostgreSQL has one");
    assert!(secret.len() >= 64, "{secret}");
    assert_eq!(nodes[1].hint_secret(), Some(secret));
    for (node, recorder) in nodes.iter().zip(&recorders) {
        assert_eq!(
            node.set_commit_listener(recorder.clone()),
            Some(dak_store::HintOrder::ContiguousSeqs)
        );
        assert!(node.set_commit_listener(recorder.clone()).is_none());
    }
    let mut devices = Vec::new();
    for i in 0..3u8 {
        let reg = nodes[0]
            .register_primary(&format!("+91100000012{i}"), &[60 + i; 32], "p", 1)
            .await
            .unwrap();
        devices.push(reg.device.id);
    }
    let mut tasks = Vec::new();
    for i in 0..240u16 {
        let node = nodes[usize::from(i % 2)].clone();
        let to: Vec<u64> = match i % 3 {
            0 => vec![devices[0]],
            1 => vec![devices[1], devices[2]],
            _ => vec![devices[0], devices[2]],
        };
        let e = NewEnvelope {
            message_id: i.to_be_bytes().to_vec(),
            sender_phone: "+911000000097".into(),
            sender_device: 2,
            server_time_ms: 1,
            expires_ms: i64::MAX,
            body: vec![1; 10],
        };
        tasks.push(tokio::spawn(async move { node.enqueue(e, &to).await }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    for d in devices {
        let mut told: Vec<(u64, Vec<u8>)> = recorders
            .iter()
            .flat_map(|r| r.0.lock().unwrap().get(&d).cloned().unwrap_or_default())
            .collect();
        told.sort();
        let stored = dak_store::testing::mailbox_seqs(&nodes[1], d).await;
        assert_eq!(
            told, stored,
            "device {d}: each commit told once, by its node"
        );
        let seqs: Vec<u64> = stored.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(
            seqs,
            (1..=stored.len() as u64).collect::<Vec<_>>(),
            "device {d}: contiguous seqs"
        );
    }
}

/// A registered device with a last-resort KeyPackage (so it can be added
/// to a group).
async fn ready_device(store: &PgStore, phone: &str, key: u8) -> dak_store::Device {
    let reg = store
        .register_primary(phone, &[key; 32], "p", 1)
        .await
        .unwrap();
    store
        .put_key_packages(reg.device.id, CLASSIC_SUITE, vec![], Some(vec![key]), 100)
        .await
        .unwrap();
    reg.device
}

/// Two `ready_device`s.
async fn two_ready_devices(store: &PgStore, who: [(&str, u8); 2]) -> [dak_store::Device; 2] {
    let [(p0, k0), (p1, k1)] = who;
    [
        ready_device(store, p0, k0).await,
        ready_device(store, p1, k1).await,
    ]
}

/// `a` creates the group `group_id` with `b` in it (commit `id`, with a
/// Welcome for `b`).
async fn a_adds_b(
    store: &PgStore,
    a: &dak_store::Device,
    b: &dak_store::Device,
    group_id: &[u8],
    id: u8,
) {
    let out = a_adds_at(store, a, b, group_id, 0, id).await;
    assert!(matches!(out, GroupOutcome::Accepted { .. }), "{out:?}");
}

/// Runs SQL as the test's admin (triggers that stall or refuse inserts).
async fn run_sql(url: &str, statements: &[&'static str]) {
    let mut admin = sqlx::PgConnection::connect(url).await.expect("connect");
    for stmt in statements {
        sqlx::query(*stmt)
            .execute(&mut admin)
            .await
            .expect("install trigger");
    }
}

fn from(device: &dak_store::Device, id: u8, body: &[u8]) -> NewEnvelope {
    NewEnvelope {
        message_id: vec![id; 16],
        sender_phone: device.phone.clone(),
        sender_device: device.id,
        server_time_ms: 1,
        expires_ms: i64::MAX,
        body: body.to_vec(),
    }
}

/// Two devices (on two nodes, say) create the same new group at once: the
/// group row is the arbiter, so one wins and the other learns the epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creators_of_one_group_one_wins() {
    let db = FreshDb::new("dak_test").await;
    let store = PgStore::connect(&db.url, 8).await.expect("connect");
    let [a, b] = two_ready_devices(&store, [("+911000000081", 81), ("+911000000082", 82)]).await;
    // Several rounds, each on a new group id, to give the race its chances.
    for round in 0..20u8 {
        let group = format!("race-{round}").into_bytes();
        let create = |d: &dak_store::Device| {
            let (s, c) = (
                store.clone(),
                GroupCommit {
                    group_id: group.clone(),
                    epoch: 0,
                    added: vec![],
                    removed: vec![],
                    removed_leaves: vec![],
                    added_phones: vec![],
                    max_accounts: 1024,
                    commit: from(d, round, b"create"),
                    welcome: None,
                },
            );
            tokio::spawn(async move { s.commit_group(c).await })
        };
        let (ta, tb) = (create(&a), create(&b));
        let (ra, rb) = tokio::join!(ta, tb);
        let (ra, rb) = (ra.unwrap().unwrap(), rb.unwrap().unwrap());
        let won = |r: &GroupOutcome| matches!(r, GroupOutcome::Accepted { .. });
        assert!(
            won(&ra) != won(&rb),
            "round {round}: exactly one wins: {ra:?} / {rb:?}"
        );
        let lost = if won(&ra) { rb } else { ra };
        // The loser is no member of the winner's group: it learns nothing of it.
        assert_eq!(lost, GroupOutcome::NotMember, "round {round}");
        assert_eq!(store.group_epoch(&group).await.unwrap(), Some(1));
    }
    // Each creator's mailbox holds exactly the commits it won.
    let total = store.mailbox_len(a.id).await.unwrap() + store.mailbox_len(b.id).await.unwrap();
    assert_eq!(total, 20);
}

/// Concurrent claims for one device never hand out a one-time KeyPackage
/// twice, and fall back to the shared last-resort one once they are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_take_each_one_time_package_once() {
    let db = FreshDb::new("dak_test").await;
    let store = PgStore::connect(&db.url, 16).await.expect("connect");
    let reg = store
        .register_primary("+911000000083", &[83; 32], "p", 1)
        .await
        .unwrap();
    let one_time: Vec<Vec<u8>> = (0..10u8).map(|i| vec![b'k', i]).collect();
    let stock = store
        .put_key_packages(
            reg.device.id,
            CLASSIC_SUITE,
            one_time.clone(),
            Some(b"last".to_vec()),
            100,
        )
        .await
        .unwrap();
    assert_eq!(stock.one_time, 10);
    // Each claim holds its package's row a while after deleting it, so the
    // claims overlap: a claimer that waited on another's row instead of
    // moving on would come away with the last-resort package too early.
    let mut admin = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    for stmt in [
        "CREATE FUNCTION dak_test_stall() RETURNS trigger AS $$
         BEGIN PERFORM pg_sleep(0.1); RETURN OLD; END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER dak_test_stall AFTER DELETE ON key_packages FOR EACH ROW EXECUTE FUNCTION dak_test_stall()",
    ] {
        sqlx::query(stmt)
            .execute(&mut admin)
            .await
            .expect("install trigger");
    }
    let claims: Vec<_> = (0..20)
        .map(|_| {
            let s = store.clone();
            tokio::spawn(async move {
                s.claim_key_packages(reg.account_id, &[], true, &[CLASSIC_SUITE])
                    .await
            })
        })
        .collect();
    let mut got = Vec::new();
    for c in claims {
        let claimed = c.await.unwrap().unwrap().devices;
        assert_eq!(claimed.len(), 1);
        got.push(claimed[0].key_package.clone().expect("a package"));
    }
    let last = got.iter().filter(|k| k.as_slice() == b"last").count();
    assert_eq!(last, 10, "ten claims share the last-resort package");
    let mut taken: Vec<Vec<u8>> = got
        .into_iter()
        .filter(|k| k.as_slice() != b"last")
        .collect();
    taken.sort();
    assert_eq!(taken, one_time, "each one-time package exactly once");
    let left = store.key_stock(reg.device.id, CLASSIC_SUITE).await.unwrap();
    assert_eq!((left.one_time, left.has_last_resort), (0, true));
}

/// A store made before the edge hardening: `verifications` keyed by phone
/// alone, and mailbox heads without usage. Connecting replaces the first
/// and fills the second from the mailboxes, exactly.
#[tokio::test]
async fn stores_from_before_the_quota_are_migrated() {
    let db = FreshDb::new("dak_test").await;
    let store = PgStore::connect(&db.url, 4).await.expect("connect");
    let reg = store
        .register_primary("+911000000079", &[79; 32], "p", 1)
        .await
        .unwrap();
    let d = reg.device.id;
    for i in 0..4u8 {
        let mut e = from(&reg.device, i, &[i; 100]);
        e.sender_device = 1;
        store.enqueue(e, &[d]).await.unwrap();
    }
    let mut admin = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    for stmt in [
        "ALTER TABLE mailbox_heads DROP COLUMN envelopes, DROP COLUMN bytes",
        "DROP TABLE verifications",
        "CREATE TABLE verifications (
            phone TEXT PRIMARY KEY,
            code_hash TEXT NOT NULL,
            expires_ms BIGINT NOT NULL,
            attempts INT NOT NULL DEFAULT 0,
            sent_in_window INT NOT NULL DEFAULT 0,
            window_start_ms BIGINT NOT NULL DEFAULT 0)",
        "INSERT INTO verifications (phone, code_hash, expires_ms) VALUES ('+911000000079', 'h', 100)",
    ] {
        sqlx::query(stmt)
            .execute(&mut admin)
            .await
            .expect("make it old");
    }
    drop(store);
    let store = PgStore::connect(&db.url, 4).await.expect("connect");
    assert_eq!(store.mailbox_usage(d).await.unwrap(), (4, 400));
    store
        .put_verification(Verification {
            phone: "+911000000079".into(),
            session: vec![7; 32],
            code_hash: "h2".into(),
            expires_ms: 100,
            attempts: 0,
        })
        .await
        .unwrap();
    assert_eq!(
        store
            .take_code_attempt("+911000000079", &[7; 32], 50, 3)
            .await
            .unwrap(),
        CodeAttempt::Counted {
            code_hash: "h2".into(),
            attempts: 1
        }
    );
    let seqs = conformance::waiting_seqs(&store, d).await;
    store.ack(d, &seqs[..1]).await.unwrap();
    assert_eq!(store.mailbox_usage(d).await.unwrap(), (3, 300));
}

/// Concurrent group messages to one recipient on many connections never
/// fill its mailbox past the quota: the heads are locked before the check.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_senders_never_pass_the_mailbox_quota() {
    let db = FreshDb::new("dak_test").await;
    let store = PgStore::connect(&db.url, 16).await.expect("connect");
    let [a, b] = two_ready_devices(&store, [("+911000000084", 84), ("+911000000085", 85)]).await;
    let quota = MailboxQuota {
        max_envelopes: 6,
        max_bytes: u64::MAX,
    };
    // Twenty groups, so the sends do not queue on one group's lock.
    for round in 0..20u8 {
        a_adds_b(&store, &a, &b, &[round], round).await;
    }
    // The Welcomes are b's; clear them so the quota is all the sends'.
    let seqs: Vec<u64> = store
        .fetch_mailbox(b.id, 0, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    store.ack(b.id, &seqs).await.unwrap();
    // Each send holds its transaction open a while after its insert, so the
    // sends overlap: one that checked the usage without holding the head
    // would pass beside the others.
    let mut admin = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    for stmt in [
        "CREATE FUNCTION dak_test_stall() RETURNS trigger AS $$
         BEGIN PERFORM pg_sleep(0.1); RETURN NEW; END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER dak_test_stall AFTER INSERT ON mailbox FOR EACH ROW EXECUTE FUNCTION dak_test_stall()",
    ] {
        sqlx::query(stmt)
            .execute(&mut admin)
            .await
            .expect("install trigger");
    }
    let sends: Vec<_> = (0..20u8)
        .map(|round| {
            let (s, e) = (store.clone(), from(&a, 100 + round, b"hi"));
            tokio::spawn(async move { s.send_group(&[round], 1, e, quota).await })
        })
        .collect();
    let mut accepted = 0;
    for t in sends {
        match t.await.unwrap().unwrap() {
            GroupOutcome::Accepted { .. } => accepted += 1,
            GroupOutcome::MailboxFull { device } => assert_eq!(device, b.id),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(accepted, 6);
    assert_eq!(store.mailbox_usage(b.id).await.unwrap(), (6, 12));
    assert_eq!(store.mailbox_len(b.id).await.unwrap(), 6);
}

/// The node-level group commit (`postgres/sends.rs`): sends pipelined from
/// one caller to three groups, while each insert stalls a little so that
/// batches form. Each group's sends land in the order they were submitted;
/// one send that fails inside a batch (a trigger refuses its body) gets its
/// error, and every other send of that batch is still stored, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batched_sends_keep_each_groups_order_and_one_error_is_its_own() {
    let db = FreshDb::new("dak_test").await;
    let store = PgStore::connect(&db.url, 16).await.expect("connect");
    let batches = std::sync::Arc::new(CountingListener::default());
    store.set_commit_listener(batches.clone());
    let [a, b] = two_ready_devices(&store, [("+911000000086", 86), ("+911000000087", 87)]).await;
    for g in 0..3u8 {
        a_adds_b(&store, &a, &b, &[b'g', g], g).await;
    }
    let welcomes = store.mailbox_len(b.id).await.unwrap();
    run_sql(&db.url, &[
        "CREATE FUNCTION dak_test_refuse() RETURNS trigger AS $$
         BEGIN
           IF NEW.body = 'bad'::bytea THEN RAISE EXCEPTION 'refused by the test'; END IF;
           PERFORM pg_sleep(0.01); RETURN NEW;
         END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER dak_test_refuse BEFORE INSERT ON mailbox FOR EACH ROW EXECUTE FUNCTION dak_test_refuse()",
    ])
    .await;
    let mut pending = Vec::new();
    for i in 0..60u8 {
        let body: &[u8] = if i == 30 { b"bad" } else { b"ok" };
        let group = [b'g', i % 3];
        pending.push(
            store
                .submit_send_group(&group, 1, from(&a, i, body), MailboxQuota::UNLIMITED)
                .await
                .expect("queued"),
        );
    }
    for (i, answer) in pending.into_iter().enumerate() {
        match answer.await {
            Ok(GroupOutcome::Accepted { recipients }) => {
                assert_ne!(i, 30, "the refused body is not stored");
                assert_eq!(recipients.len(), 1);
            }
            Err(StoreError::Backend(e)) => {
                assert_eq!(i, 30, "send {i} failed: {e}");
                assert!(e.contains("refused by the test"), "{e}");
            }
            other => panic!("send {i}: {other:?}"),
        }
    }
    let stored = dak_store::testing::mailbox_seqs(&store, b.id).await;
    let sent: Vec<u8> = stored
        .iter()
        .skip(welcomes as usize)
        .map(|(_, id)| id[0])
        .collect();
    assert_eq!(sent.len(), 59, "each other send stored once: {sent:?}");
    for g in 0..3u8 {
        let mine: Vec<u8> = sent.iter().copied().filter(|i| i % 3 == g).collect();
        let expected: Vec<u8> = (0..60u8).filter(|i| i % 3 == g && *i != 30).collect();
        assert_eq!(mine, expected, "group {g}: in submission order");
    }
    // The listener is told just after the senders are answered.
    for _ in 0..100 {
        if batches.counts().1 >= 59 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (calls, envelopes) = batches.counts();
    assert_eq!(envelopes, 59, "the listener is told of every stored send");
    assert!(
        calls < envelopes,
        "sends were committed together: {calls} commits told of {envelopes} envelopes"
    );
}

/// Counts the commit listener's calls that carried sends (bodies `ok`),
/// one per batch, and those sends: the group commits before them are left
/// out (the listener is told of a commit just after its caller is
/// answered, so counting them would race the test).
#[derive(Default)]
struct CountingListener(std::sync::Mutex<(usize, usize)>);

impl CountingListener {
    fn counts(&self) -> (usize, usize) {
        *self.0.lock().unwrap()
    }
}

impl dak_store::CommitListener for CountingListener {
    fn committed(&self, envelopes: &[dak_store::CommittedEnvelope]) {
        let sends = envelopes
            .iter()
            .filter(|e| e.envelope.body == b"ok")
            .count();
        if sends > 0 {
            let mut counts = self.0.lock().unwrap();
            counts.0 += 1;
            counts.1 += sends;
        }
    }
}

/// A commit pipelined after sends to its group lands after them (the
/// group's worker runs it after the sends queued before it), so those sends
/// are accepted at their epoch instead of being refused as stale. Each
/// insert stalls a little, so a commit that went around the queue would
/// land first.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_commit_lands_after_the_sends_queued_before_it() {
    let db = FreshDb::new("dak_test").await;
    let store = PgStore::connect(&db.url, 16).await.expect("connect");
    let [a, b] = two_ready_devices(&store, [("+911000000088", 88), ("+911000000089", 89)]).await;
    let group = b"ordered".to_vec();
    let commit = |epoch: u64, id: u8| GroupCommit {
        group_id: group.clone(),
        epoch,
        added: if epoch == 0 { vec![b.id] } else { vec![] },
        removed: vec![],
        removed_leaves: vec![],
        added_phones: vec![],
        max_accounts: 1024,
        commit: from(&a, id, b"commit"),
        welcome: (epoch == 0).then(|| from(&a, id, b"")),
    };
    let out = store.commit_group(commit(0, 200)).await.unwrap();
    assert!(matches!(out, GroupOutcome::Accepted { .. }), "{out:?}");
    run_sql(&db.url, &[
        "CREATE FUNCTION dak_test_stall() RETURNS trigger AS $$
         BEGIN PERFORM pg_sleep(0.02); RETURN NEW; END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER dak_test_stall BEFORE INSERT ON mailbox FOR EACH ROW EXECUTE FUNCTION dak_test_stall()",
    ])
    .await;
    let mut pending = Vec::new();
    for i in 0..20u8 {
        pending.push(
            store
                .submit_send_group(&group, 1, from(&a, i, b"hi"), MailboxQuota::UNLIMITED)
                .await
                .expect("queued"),
        );
    }
    let out = store.commit_group(commit(1, 201)).await.unwrap();
    assert!(matches!(out, GroupOutcome::Accepted { .. }), "{out:?}");
    for (i, answer) in pending.into_iter().enumerate() {
        let out = answer.await.unwrap();
        assert!(
            matches!(out, GroupOutcome::Accepted { .. }),
            "send {i}, queued before the commit: {out:?}"
        );
    }
    assert_eq!(store.group_epoch(&group).await.unwrap(), Some(2));
}

/// The recipients of an accepted send, by id; panics on a refusal.
fn accepted(out: GroupOutcome) -> Vec<u64> {
    match out {
        GroupOutcome::Accepted { recipients } => recipients.iter().map(|d| d.id).collect(),
        other => panic!("refused: {other:?}"),
    }
}

/// Two nodes on one database (`connections` each), and the group
/// `group_id` of two ready devices (`who`), made through node two.
async fn two_nodes_with_a_pair(
    db: &FreshDb,
    connections: u32,
    who: [(&str, u8); 2],
    group_id: &[u8],
) -> (PgStore, PgStore, [dak_store::Device; 2]) {
    let one = PgStore::connect(&db.url, connections)
        .await
        .expect("connect");
    let two = PgStore::connect(&db.url, connections)
        .await
        .expect("connect");
    let [a, b] = two_ready_devices(&two, who).await;
    a_adds_b(&two, &a, &b, group_id, 1).await;
    (one, two, [a, b])
}

/// `a` adds `device` to the group at `epoch` (commit `id`, with a Welcome).
async fn a_adds_at(
    store: &PgStore,
    a: &dak_store::Device,
    device: &dak_store::Device,
    group_id: &[u8],
    epoch: u64,
    id: u8,
) -> GroupOutcome {
    let c = GroupCommit {
        group_id: group_id.to_vec(),
        epoch,
        added: vec![device.id],
        removed: vec![],
        removed_leaves: vec![],
        added_phones: vec![],
        max_accounts: 1024,
        commit: from(a, id, b"commit"),
        welcome: Some(from(a, id, b"")),
    };
    store.commit_group(c).await.unwrap()
}

/// Node one's send workers cache what a group's sends are checked against.
/// Sends with nothing changed read none of it again, and each change made on
/// node two (whose commits and writes node one is never told of) reaches
/// node one's next send: a linked device made ready, the commit adding it,
/// a block and its removal, a revoke.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cached_send_checks_follow_every_change_made_on_another_node() {
    let db = FreshDb::new("dak_test").await;
    let group = b"cached".to_vec();
    let who = [("+911000000090", 90), ("+911000000091", 91)];
    let (one, two, [a, b]) = two_nodes_with_a_pair(&db, 4, who, &group).await;
    let mut id = 10u8;
    let mut send = async |epoch: u64| {
        id += 1;
        one.send_group(&group, epoch, from(&a, id, b"hi"), MailboxQuota::UNLIMITED)
            .await
            .unwrap()
    };

    assert_eq!(accepted(send(1).await), vec![b.id]);
    let reads = one.send_check_reads();
    for _ in 0..5 {
        assert_eq!(accepted(send(1).await), vec![b.id]);
    }
    assert_eq!(
        one.send_check_reads(),
        reads,
        "unchanged: read from the cache"
    );

    // A linked device without KeyPackages is not ready: nothing to refuse.
    let b2 = two
        .add_linked_device(b.account_id, &[92; 32], "b2", 1, 5)
        .await
        .unwrap();
    assert_eq!(accepted(send(1).await), vec![b.id]);
    // Ready now: the sender must add it first.
    two.put_key_packages(b2.id, CLASSIC_SUITE, vec![], Some(vec![92]), 100)
        .await
        .unwrap();
    assert_eq!(send(1).await, GroupOutcome::DevicesChanged);
    let out = a_adds_at(&two, &a, &b2, &group, 1, 2).await;
    assert!(matches!(out, GroupOutcome::Accepted { .. }), "{out:?}");
    assert_eq!(send(1).await, GroupOutcome::Stale { epoch: 2 });
    assert_eq!(accepted(send(2).await), vec![b.id, b2.id]);

    two.set_block(b.account_id, a.account_id, true)
        .await
        .unwrap();
    assert_eq!(accepted(send(2).await), Vec::<u64>::new(), "blocked");
    two.set_block(b.account_id, a.account_id, false)
        .await
        .unwrap();
    assert_eq!(accepted(send(2).await), vec![b.id, b2.id], "unblocked");
    // A report blocks too.
    two.report(b.account_id, a.account_id, 1).await.unwrap();
    assert_eq!(accepted(send(2).await), Vec::<u64>::new(), "reported");
    two.set_block(b.account_id, a.account_id, false)
        .await
        .unwrap();
    let reads = one.send_check_reads();
    assert_eq!(accepted(send(2).await), vec![b.id, b2.id], "unblocked");
    // Changes that change nothing a send is checked against read nothing
    // again: a KeyPackage rotation, lifting a block that is not there.
    two.put_key_packages(b2.id, CLASSIC_SUITE, vec![], Some(vec![93]), 100)
        .await
        .unwrap();
    two.set_block(b.account_id, a.account_id, false)
        .await
        .unwrap();
    assert_eq!(accepted(send(2).await), vec![b.id, b2.id]);
    assert_eq!(
        one.send_check_reads(),
        reads + 1,
        "only the unblock re-read"
    );

    two.revoke_device(b2.id, dak_store::RevokeReason::Removed)
        .await
        .unwrap();
    assert_eq!(send(2).await, GroupOutcome::DevicesChanged);
    assert!(one.send_check_reads() > reads);
}

/// Sends pipelined from node one while node two makes a member account's
/// linked device ready: every send queued after the upload returned is
/// refused until the device is added (none is delivered past it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_device_made_ready_while_sends_are_in_flight_is_never_missed() {
    let db = FreshDb::new("dak_test").await;
    let group = b"in-flight".to_vec();
    let who = [("+911000000093", 93), ("+911000000094", 94)];
    let (one, two, [a, b]) = two_nodes_with_a_pair(&db, 8, who, &group).await;
    let b2 = two
        .add_linked_device(b.account_id, &[95; 32], "b2", 1, 5)
        .await
        .unwrap();
    // A send first, so that node one's worker has the group cached.
    let first = one
        .send_group(&group, 1, from(&a, 0, b"hi"), MailboxQuota::UNLIMITED)
        .await
        .unwrap();
    assert_eq!(accepted(first), vec![b.id]);
    let uploaded = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let upload = {
        let (two, uploaded) = (two.clone(), uploaded.clone());
        tokio::spawn(async move {
            two.put_key_packages(b2.id, CLASSIC_SUITE, vec![], Some(vec![95]), 100)
                .await
                .unwrap();
            uploaded.store(true, std::sync::atomic::Ordering::SeqCst);
        })
    };
    // Sends pipelined while the upload runs, and 20 more after it returned.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let (mut pending, mut after) = (Vec::new(), 0);
    for i in 1u32.. {
        let queued_after = uploaded.load(std::sync::atomic::Ordering::SeqCst);
        // Message ids may repeat here: the store does not key on them.
        let answer = one
            .submit_send_group(&group, 1, from(&a, i as u8, b"hi"), MailboxQuota::UNLIMITED)
            .await
            .expect("queued");
        pending.push((queued_after, answer));
        after += usize::from(queued_after);
        if after == 20 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the upload never returned"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    upload.await.unwrap();
    for (i, (queued_after, answer)) in pending.into_iter().enumerate() {
        let out = answer.await.unwrap();
        if queued_after {
            assert_eq!(
                out,
                GroupOutcome::DevicesChanged,
                "send {i}, after the upload"
            );
        } else if matches!(out, GroupOutcome::Accepted { .. }) {
            assert_eq!(accepted(out), vec![b.id]);
        }
    }
}

/// A commit that brings an account into a group waits for a change to that
/// account's devices already under way (`lock_joining_accounts`), so the
/// change is either read by the commit or bumps the new group: a send
/// checked after both is refused, never accepted from a cache filled in
/// between. The upload is stalled after its bump, while the commit creates
/// the group, so without the wait the commit and a send land in that gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_commit_bringing_an_account_in_waits_for_a_change_to_its_devices() {
    let db = FreshDb::new("dak_test").await;
    let one = PgStore::connect(&db.url, 8).await.expect("connect");
    let two = PgStore::connect(&db.url, 8).await.expect("connect");
    let [a, b] = two_ready_devices(&two, [("+911000000096", 96), ("+911000000097", 97)]).await;
    let b2 = two
        .add_linked_device(b.account_id, &[98; 32], "b2", 1, 5)
        .await
        .unwrap();
    run_sql(
        &db.url,
        &[
            "CREATE FUNCTION dak_test_stall() RETURNS trigger AS $$
         BEGIN PERFORM pg_sleep(0.5); RETURN NEW; END $$ LANGUAGE plpgsql",
            "CREATE TRIGGER dak_test_stall BEFORE INSERT ON key_packages FOR EACH ROW
         WHEN (NEW.last_resort) EXECUTE FUNCTION dak_test_stall()",
        ],
    )
    .await;
    let upload = {
        let two = two.clone();
        tokio::spawn(async move {
            two.put_key_packages(b2.id, CLASSIC_SUITE, vec![], Some(vec![98]), 100)
                .await
                .unwrap();
        })
    };
    // Until the upload sleeps in its trigger, after its bump.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut admin = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    loop {
        let sleeping: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_stat_activity
             WHERE wait_event = 'PgSleep' AND datname = current_database()",
        )
        .fetch_one(&mut admin)
        .await
        .unwrap();
        if sleeping > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the upload never reached its trigger"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let group = b"joined".to_vec();
    a_adds_b(&one, &a, &b, &group, 1).await;
    // Before the wait existed, this send filled node one's cache without
    // b2 while the upload was still to commit.
    let _ = one
        .send_group(&group, 1, from(&a, 2, b"hi"), MailboxQuota::UNLIMITED)
        .await
        .unwrap();
    upload.await.unwrap();
    let out = one
        .send_group(&group, 1, from(&a, 3, b"hi"), MailboxQuota::UNLIMITED)
        .await
        .unwrap();
    assert_eq!(
        out,
        GroupOutcome::DevicesChanged,
        "b2 is ready and not a member"
    );
}

/// One cached entry serves every sender of a group: when `c` has blocked
/// `a`, `c`'s new ready device is not one `a` must add first (that would
/// stall `a` and tell it of the block) and `c` gets nothing from `a`, while
/// `b` and `c`, from the same cached group, must add it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_cached_group_checks_each_sender_against_its_own_blockers() {
    let db = FreshDb::new("dak_test").await;
    let store = PgStore::connect(&db.url, 4).await.expect("connect");
    let [a, b] = two_ready_devices(&store, [("+911000000101", 101), ("+911000000102", 102)]).await;
    let c = ready_device(&store, "+911000000103", 103).await;
    let group = b"three".to_vec();
    a_adds_b(&store, &a, &b, &group, 1).await;
    let out = a_adds_at(&store, &a, &c, &group, 1, 2).await;
    assert!(matches!(out, GroupOutcome::Accepted { .. }), "{out:?}");
    let send = |who: &dak_store::Device, id: u8| {
        store.send_group(&group, 2, from(who, id, b"hi"), MailboxQuota::UNLIMITED)
    };
    assert_eq!(accepted(send(&a, 10).await.unwrap()), vec![b.id, c.id]);
    store
        .set_block(c.account_id, a.account_id, true)
        .await
        .unwrap();
    let c2 = store
        .add_linked_device(c.account_id, &[104; 32], "c2", 1, 5)
        .await
        .unwrap();
    store
        .put_key_packages(c2.id, CLASSIC_SUITE, vec![], Some(vec![104]), 100)
        .await
        .unwrap();
    let reads = store.send_check_reads();
    assert_eq!(
        accepted(send(&a, 11).await.unwrap()),
        vec![b.id],
        "a: c blocked it"
    );
    assert_eq!(
        send(&b, 12).await.unwrap(),
        GroupOutcome::DevicesChanged,
        "b must add c2"
    );
    assert_eq!(
        send(&c, 13).await.unwrap(),
        GroupOutcome::DevicesChanged,
        "c must add its own c2"
    );
    assert_eq!(
        store.send_check_reads(),
        reads + 1,
        "one read for three senders"
    );
}

/// A node that stops half-way through a transaction (frozen, or cut off by
/// the network) holding a group's lock stalls that group's sends on every
/// node only until PostgreSQL ends its idle transaction
/// (`idle_in_transaction_session_timeout`, which every node's connections
/// set): then the send goes through, and the stalled node's connection is
/// gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_stalled_in_a_transaction_holds_its_locks_only_for_a_while() {
    let db = FreshDb::new("dak_test").await;
    let store = PgStore::connect(&db.url, 4).await.expect("connect");
    let [a, b] = two_ready_devices(&store, [("+911000000105", 105), ("+911000000106", 106)]).await;
    let group = b"stalled".to_vec();
    a_adds_b(&store, &a, &b, &group, 1).await;
    // The other node: its connection, as a node opens it, stops after
    // locking the group.
    let mut stalled = sqlx::PgConnection::connect_with(&PgStore::connect_options(&db.url).unwrap())
        .await
        .expect("connect");
    sqlx::query("BEGIN").execute(&mut stalled).await.unwrap();
    sqlx::query("SELECT 1 FROM mls_groups WHERE group_id = $1 FOR UPDATE")
        .bind(&group)
        .execute(&mut stalled)
        .await
        .unwrap();
    let send = store.send_group(&group, 1, from(&a, 2, b"hi"), MailboxQuota::UNLIMITED);
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), send)
        .await
        .expect("the stalled transaction was ended, and the send went through")
        .unwrap();
    assert_eq!(accepted(out), vec![b.id]);
    assert!(
        sqlx::query("SELECT 1").execute(&mut stalled).await.is_err(),
        "the stalled node's session was ended"
    );
}

/// A number registered again on another phone (through node two) revokes
/// the old devices, and node one's cached group learns it: the sender must
/// remove them first.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_number_registered_again_elsewhere_reaches_a_cached_group() {
    let db = FreshDb::new("dak_test").await;
    let group = b"moved".to_vec();
    let who = [("+911000000107", 107), ("+911000000108", 108)];
    let (one, two, [a, b]) = two_nodes_with_a_pair(&db, 4, who, &group).await;
    let send = |id: u8| one.send_group(&group, 1, from(&a, id, b"hi"), MailboxQuota::UNLIMITED);
    assert_eq!(accepted(send(2).await.unwrap()), vec![b.id]);
    let moved = two
        .register_primary(&b.phone, &[109; 32], "new phone", 2)
        .await
        .unwrap();
    assert_eq!(moved.revoked, vec![b.id]);
    assert_eq!(send(3).await.unwrap(), GroupOutcome::DevicesChanged);
}
