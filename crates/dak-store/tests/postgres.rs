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
