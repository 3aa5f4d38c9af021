//! The mailbox path of each store: enqueue (one by one, and many
//! concurrent callers sharing commits), fetch and ack.
//! `cargo bench -p dak-store`. SQLite runs on a real file with
//! synchronous=FULL; PostgreSQL is the local server (a fresh database, see
//! `dak_store::testing`), so both include fsync on this machine's disk.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dak_store::{NewEnvelope, PgStore, SqliteStore, Store};

fn envelope(i: u64) -> NewEnvelope {
    NewEnvelope {
        message_id: i.to_be_bytes().repeat(2),
        sender_phone: "+919800000001".into(),
        sender_device: 1,
        server_time_ms: 1,
        expires_ms: i64::MAX,
        body: vec![0x5a; 256],
    }
}

/// `callers` enqueues at once, as that many connections sending together.
async fn enqueue_concurrently<S: Store + Clone>(store: &S, callers: u64, device: u64) {
    let tasks: Vec<_> = (0..callers)
        .map(|i| {
            let s = store.clone();
            tokio::spawn(async move { s.enqueue(envelope(i), &[device]).await })
        })
        .collect();
    for t in tasks {
        t.await.expect("task").expect("enqueue");
    }
}

fn sqlite(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("bench.db")).expect("store");
    mailbox(c, &rt, "sqlite mailbox", store);
}

fn postgres(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let db = rt.block_on(dak_store::testing::FreshDb::new("dak_bench"));
    let store = rt.block_on(PgStore::connect(&db.url, 16)).expect("store");
    mailbox(c, &rt, "postgres mailbox", store);
}

fn mailbox<S: Store + Clone>(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    name: &str,
    store: S,
) {
    let device = rt
        .block_on(store.register_primary("+919800000002", &[1; 32], "bench", 1))
        .expect("device")
        .device
        .id;
    let mut g = c.benchmark_group(name);
    g.sample_size(20);

    g.throughput(Throughput::Elements(1));
    g.bench_function("enqueue, one caller (a commit each)", |b| {
        b.to_async(rt).iter(|| async {
            store
                .enqueue(envelope(1), &[device])
                .await
                .expect("enqueue")
        })
    });

    for callers in [64u64, 512] {
        g.throughput(Throughput::Elements(callers));
        g.bench_function(
            format!("enqueue, {callers} concurrent callers (group commit)"),
            |b| {
                b.to_async(rt)
                    .iter(|| enqueue_concurrently(&store, callers, device))
            },
        );
    }

    g.throughput(Throughput::Elements(256));
    g.bench_function("fetch 256 then ack 256", |b| {
        b.to_async(rt).iter_custom(|iters| {
            let store = store.clone();
            async move {
                let mut spent = std::time::Duration::ZERO;
                for _ in 0..iters {
                    // Fill (not timed), then time reading and deleting.
                    enqueue_concurrently(&store, 256, device).await;
                    let started = std::time::Instant::now();
                    let batch = store.fetch_mailbox(device, 0, 256).await.expect("fetch");
                    let seqs: Vec<u64> = batch.iter().map(|e| e.seq).collect();
                    store.ack(device, &seqs).await.expect("ack");
                    spent += started.elapsed();
                }
                spent
            }
        })
    });
    g.finish();
}

criterion_group!(benches, sqlite, postgres);
criterion_main!(benches);
