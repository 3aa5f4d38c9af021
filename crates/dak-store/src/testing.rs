//! Support for tests that need a real PostgreSQL: a fresh database per
//! test, dropped afterwards. Used by this crate's tests and the server's
//! cluster tests. `DAK_TEST_POSTGRES_URL` (an admin URL) points elsewhere
//! than the local server; `scripts/services.sh` starts the local one.
//! Also: reading a running server's embedded store from outside it
//! (`sqlite_mailbox_bodies`), as the server's tests do, and recording what
//! a store's commit listener is told (`CommitRecorder`).

use sqlx::{AssertSqlSafe, Connection};

/// Per device, (seq, message id) in the order a commit listener was told.
pub type Told = std::collections::BTreeMap<u64, Vec<(u64, Vec<u8>)>>;

/// A commit listener that records what it is told, for the stores' tests.
#[derive(Default)]
pub struct CommitRecorder(pub std::sync::Mutex<Told>);

impl crate::CommitListener for CommitRecorder {
    fn committed(&self, envelopes: &[crate::CommittedEnvelope]) {
        let Ok(mut seen) = self.0.lock() else { return };
        for e in envelopes {
            for (device, seq) in &e.placed {
                seen.entry(*device)
                    .or_default()
                    .push((*seq, e.envelope.message_id.clone()));
            }
        }
    }
}

/// `device`'s mailbox as (seq, message id), oldest first: what a
/// `CommitRecorder` should have been told for it.
pub async fn mailbox_seqs(store: &dyn crate::Store, device: u64) -> Vec<(u64, Vec<u8>)> {
    store
        .fetch_mailbox(device, 0, 100_000)
        .await
        .expect("read the mailbox")
        .into_iter()
        .map(|e| (e.seq, e.message_id))
        .collect()
}

/// The S3-compatible bucket the media tests use: the local Garage that
/// `scripts/garage.sh` starts (its fixed test key), or `DAK_TEST_S3_*`.
pub fn test_s3() -> crate::S3Config {
    let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    crate::S3Config {
        endpoint: Some(var("DAK_TEST_S3_ENDPOINT", "http://127.0.0.1:3900")),
        bucket: var("DAK_TEST_S3_BUCKET", "dak-test-media"),
        region: var("DAK_TEST_S3_REGION", "garage"),
        access_key_id: var("DAK_TEST_S3_KEY_ID", "GK0dac0000000000000000001"),
        secret_access_key: var(
            "DAK_TEST_S3_SECRET",
            "dac0000000000000000000000000000000000000000000000000000000000001",
        ),
    }
}

/// The `DAK_MEDIA_S3_*` environment that points a server at `test_s3()`.
pub fn test_s3_env() -> Vec<(String, String)> {
    let c = test_s3();
    vec![
        (
            "DAK_MEDIA_S3_ENDPOINT".into(),
            c.endpoint.unwrap_or_default(),
        ),
        ("DAK_MEDIA_S3_BUCKET".into(), c.bucket),
        ("DAK_MEDIA_S3_REGION".into(), c.region),
        ("DAK_MEDIA_S3_ACCESS_KEY_ID".into(), c.access_key_id),
        ("DAK_MEDIA_S3_SECRET_ACCESS_KEY".into(), c.secret_access_key),
    ]
}

pub fn admin_url() -> String {
    std::env::var("DAK_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database made for one test; dropped (with its connections) on drop.
pub struct FreshDb {
    name: String,
    pub url: String,
}

impl FreshDb {
    /// Panics with a clear message when PostgreSQL cannot be reached: a test
    /// that needs it must not pass without it.
    pub async fn new(prefix: &str) -> FreshDb {
        let admin = admin_url();
        let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap_or_else(|e| {
            panic!("PostgreSQL is not reachable at {admin} ({e}); start it (scripts/services.sh does) or set DAK_TEST_POSTGRES_URL")
        });
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!("{prefix}_{}_{nanos}", std::process::id());
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("cannot create database {name}: {e}"));
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

impl FreshDb {
    /// Cuts this database off (no new connections, the open ones ended)
    /// or lets it answer again: an outage of one cluster's store that
    /// leaves the PostgreSQL other tests use running.
    pub async fn set_reachable(&self, reachable: bool) {
        let mut conn = sqlx::PgConnection::connect(&admin_url())
            .await
            .expect("admin connection");
        sqlx::query(AssertSqlSafe(format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS {reachable}",
            self.name
        )))
        .execute(&mut conn)
        .await
        .expect("alter database");
        if !reachable {
            sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = $1 AND pid <> pg_backend_pid()",
            )
            .bind(&self.name)
            .execute(&mut conn)
            .await
            .expect("terminate connections");
        }
    }
}

impl Drop for FreshDb {
    fn drop(&mut self) {
        let (admin, name) = (admin_url(), self.name.clone());
        // Drop may run inside a runtime; a thread with its own avoids nesting.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&admin).await?;
                sqlx::query(AssertSqlSafe(format!(
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

/// The envelope bodies waiting in `device`'s mailbox in the embedded store
/// at `path`, oldest first, read-only beside the server that has it open
/// (or after it was killed); shared bodies are read as the store reads
/// them (`crate::sql::MAILBOX_BODY`), and rows acked under the device's
/// mark but not yet swept are not waiting.
pub fn sqlite_mailbox_bodies(path: &std::path::Path, device: u64) -> Vec<Vec<u8>> {
    let db =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    let mut stmt = db
        .prepare(&format!(
            "SELECT {} FROM mailbox WHERE device_id = ?1 AND seq > {} ORDER BY seq",
            crate::sql::MAILBOX_BODY,
            crate::sqlite::ABOVE_MARK
        ))
        .unwrap();
    stmt.query_map([device as i64], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}
