//! The conformance suite against a real PostgreSQL, in a database made for
//! each test and dropped after it (`dak_store::testing::FreshDb`).

use dak_store::testing::FreshDb;
use dak_store::{PgStore, Store, StoreError, conformance};

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
/// see every envelope, however the concurrent senders' commits interleave.
#[tokio::test]
async fn a_reader_following_seq_never_skips_a_late_commit() {
    let db = FreshDb::new("dak_test").await;
    let store = PgStore::connect(&db.url, 16).await.expect("connect");
    let reg = store
        .register_primary("+911000000098", &[1; 32], "p", 1)
        .await
        .unwrap();
    let other = store
        .register_primary("+911000000097", &[2; 32], "q", 1)
        .await
        .unwrap();
    let (d, e) = (reg.device.id, other.device.id);
    const N: usize = 400;
    let writers: Vec<_> = (0..N)
        .map(|i| {
            let s = store.clone();
            // Half the sends also go to another device, in the other order.
            let devices = if i % 2 == 0 { vec![d, e] } else { vec![e, d] };
            tokio::spawn(async move {
                let env = dak_store::NewEnvelope {
                    message_id: (i as u128).to_be_bytes().to_vec(),
                    sender_phone: "+911000000097".into(),
                    sender_device: 2,
                    conversation_phone: "+911000000098".into(),
                    server_time_ms: 1,
                    expires_ms: i64::MAX,
                    body: vec![],
                };
                s.enqueue(env, &devices).await
            })
        })
        .collect();
    let (mut after, mut seen) = (0u64, 0usize);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while seen < N && std::time::Instant::now() < deadline {
        let batch = store.fetch_mailbox(d, after, 50).await.unwrap();
        if let Some(last) = batch.last() {
            after = last.seq;
        }
        seen += batch.len();
    }
    for w in writers {
        w.await.unwrap().unwrap();
    }
    seen += store.fetch_mailbox(d, after, N).await.unwrap().len();
    assert_eq!(seen, N, "every envelope read exactly once by following seq");
    assert_eq!(store.mailbox_len(d).await.unwrap(), N as u64);
}
