//! The conformance suite against the embedded store, plus what only a file
//! on disk can show: committed data survives reopening.

use dak_store::{NewEnvelope, SqliteStore, Store, conformance};

#[tokio::test]
async fn sqlite_passes_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("dak.db")).unwrap();
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
        let env = NewEnvelope {
            message_id: vec![1; 16],
            sender_phone: "+919800000001".into(),
            sender_device: 1,
            server_time_ms: 1,
            expires_ms: i64::MAX,
            body: b"kept".to_vec(),
        };
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
