//! The conformance suite against a real PostgreSQL, in a database made for
//! each test and dropped after it (`dak_store::testing::FreshDb`).

use dak_store::testing::FreshDb;
use dak_store::{PgStore, Store, StoreError, conformance};
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
        conversation_phone: "+911000000098".into(),
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
