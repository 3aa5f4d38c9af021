//! The conformance suite against a real PostgreSQL, in a database made for
//! this test and dropped after it. `scripts/test.sh` starts PostgreSQL if it
//! is down; `DAK_TEST_POSTGRES_URL` points elsewhere (an admin URL).

use dak_store::{PgStore, Store, StoreError, conformance};
use sqlx::Connection;

fn admin_url() -> String {
    std::env::var("DAK_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A fresh, empty database; dropped when the guard goes.
struct FreshDb {
    name: String,
    pub url: String,
}

impl FreshDb {
    async fn new() -> FreshDb {
        let admin = admin_url();
        let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap_or_else(|e| {
            panic!("PostgreSQL is not reachable at {admin} ({e}); start it (scripts/test.sh does) or set DAK_TEST_POSTGRES_URL")
        });
        let name = format!("dak_test_{}_{}", std::process::id(), rand::random::<u32>());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create database");
        let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
        FreshDb {
            url: format!("{base}/{name}"),
            name,
        }
    }
}

impl Drop for FreshDb {
    fn drop(&mut self) {
        let (admin, name) = (admin_url(), self.name.clone());
        // Drop runs outside the test's runtime: use a small one of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&admin).await?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut conn)
                .await?;
                Ok::<_, sqlx::Error>(())
            })
            .map_err(std::io::Error::other)
        })
        .join();
    }
}

#[tokio::test]
async fn postgres_passes_conformance() {
    let db = FreshDb::new().await;
    let store = PgStore::connect(&db.url, 4).await.expect("connect");
    conformance::run_all(&store).await;
}

#[tokio::test]
async fn nodes_starting_together_migrate_once() {
    let db = FreshDb::new().await;
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
    let db = FreshDb::new().await;
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
