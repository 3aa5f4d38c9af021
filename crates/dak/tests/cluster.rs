//! Cluster mode: two `dak server` processes sharing a real PostgreSQL (a
//! database made for this test) and a real NATS. alice talks to node A,
//! bob to node B. `scripts/test.sh` starts both services if they are down;
//! DAK_TEST_POSTGRES_URL (an admin URL) and DAK_TEST_NATS_URL point elsewhere.

mod common;

use common::*;
use dak_client::{Event, TickState};
use sqlx::Connection;

fn admin_url() -> String {
    std::env::var("DAK_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn nats_url() -> String {
    std::env::var("DAK_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

struct FreshDb {
    name: String,
    url: String,
}

impl FreshDb {
    async fn new() -> FreshDb {
        let admin = admin_url();
        let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap_or_else(|e| {
            panic!("PostgreSQL is not reachable at {admin} ({e}); start it (scripts/test.sh does) or set DAK_TEST_POSTGRES_URL")
        });
        let name = format!(
            "dak_cluster_{}_{}",
            std::process::id(),
            rand::random::<u32>()
        );
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create database");
        let base = admin
            .rsplit_once('/')
            .map(|(b, _)| b)
            .unwrap_or(&admin)
            .to_string();
        FreshDb {
            url: format!("{base}/{name}"),
            name,
        }
    }
}

impl Drop for FreshDb {
    fn drop(&mut self) {
        let (admin, name) = (admin_url(), self.name.clone());
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

fn node(db: &FreshDb, cluster: &str) -> TestServer {
    TestServer::build_with(
        &[
            ("DAK_STORE", db.url.as_str()),
            ("DAK_BUS", nats_url().as_str()),
            ("DAK_CLUSTER", cluster),
        ],
        true,
    )
}

#[tokio::test]
async fn a_message_crosses_nodes_through_postgres_and_nats() {
    let db = FreshDb::new().await;
    let cluster = format!("dak-test-{}", rand::random::<u32>());
    let (node_a, node_b) = (node(&db, &cluster), node(&db, &cluster));
    let (alice, bob) = (alice(), bob());
    alice.register(&node_a).await;
    bob.register(&node_b).await;

    // bob is online on node B; alice writes through node A.
    let mut b = bob.connect().await;
    let mut a = alice.connect().await;
    let sent = a.send_text(&bob.phone, "across the cluster").await.unwrap();
    assert_eq!(sent.recipient_devices, 1);
    let got = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            for e in b.next_events().await.unwrap() {
                if let Event::Message(m) = e {
                    return m.text;
                }
            }
        }
    })
    .await
    .expect("node B pushed the message: NATS woke bob's session");
    assert_eq!(got, "across the cluster");
    // bob's delivery receipt travels back the same way.
    a.wait_for_tick(&sent.id, TickState::Delivered, |_| {})
        .await
        .unwrap();
}

#[tokio::test]
async fn an_offline_device_reads_on_any_node_what_another_node_acked() {
    let db = FreshDb::new().await;
    let cluster = format!("dak-test-{}", rand::random::<u32>());
    let (mut node_a, node_b) = (node(&db, &cluster), node(&db, &cluster));
    let (alice, bob) = (alice(), bob());
    alice.register(&node_a).await;
    bob.register(&node_b).await;
    alice
        .connect()
        .await
        .send_text(&bob.phone, "kept in postgres")
        .await
        .unwrap();
    node_a.kill9();
    assert_eq!(bob.sync_texts().await, vec!["kept in postgres"]);
    // Readiness reflects the shared services.
    let ready = http_get(&node_b.url, "/readyz").await;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
}

/// A bare HTTP/1.1 GET on the node's (plain, --insecure) address.
async fn http_get(ws_url: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let authority = ws_url.trim_start_matches("ws://");
    let mut s = tokio::net::TcpStream::connect(authority).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}
