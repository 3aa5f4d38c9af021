//! The key directory (key transparency, `kt.rs`) on the embedded store:
//! what a publish, a lookup and its proofs cost as the directory grows.
//! `cargo bench -p dak-server --bench key_directory` (numbers in the
//! directory: `DAK_KT_BENCH_NUMBERS`, default 10,000). SQLite on a real file
//! with synchronous=FULL, so publishes include fsync on this machine's disk.
//!
//! Printed before criterion's own figures: each setup publish's wall time
//! (256 new numbers per call, which the directory splits into epochs of at
//! most 64; median and slowest), and the sizes of the proofs a device or
//! an auditor reads.
//! Criterion then times a lookup (what every KeyPackages fetch adds on the
//! server) and a publish of one changed number (what a device change adds).

use std::sync::Arc;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use dak_server::kt::KeyDirectory;
use dak_store::{SqliteStore, Store};
use prost::Message;

fn phone(i: usize) -> String {
    format!("+9198{i:08}")
}

fn key_directory(c: &mut Criterion) {
    let numbers: usize = std::env::var("DAK_KT_BENCH_NUMBERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SqliteStore::open(&dir.path().join("bench.db")).expect("store"));
    let kd = rt
        .block_on(KeyDirectory::open(store.clone(), [9; 32]))
        .expect("directory");
    // Accounts first, many at once (the writer folds them into few commits).
    rt.block_on(async {
        for chunk in (0..numbers).collect::<Vec<_>>().chunks(512) {
            let tasks: Vec<_> = chunk
                .iter()
                .map(|&i| {
                    let s = store.clone();
                    tokio::spawn(async move {
                        let mut key = [0u8; 32];
                        key[..8].copy_from_slice(&(i as u64).to_be_bytes());
                        s.register_primary(&phone(i), &key, "bench", 1).await
                    })
                })
                .collect();
            for t in tasks {
                t.await.expect("task").expect("register");
            }
        }
    });
    let mut publishes = Vec::new();
    for chunk in (0..numbers).collect::<Vec<_>>().chunks(256) {
        let phones: Vec<String> = chunk.iter().map(|&i| phone(i)).collect();
        let start = Instant::now();
        rt.block_on(kd.publish(&phones)).expect("publish");
        publishes.push(start.elapsed());
    }
    publishes.sort();
    let epoch = rt.block_on(store.kt_epoch()).expect("epoch");
    println!(
        "directory of {numbers} numbers in {epoch} epochs; a publish call of 256 new numbers: median {:.1} ms, slowest {:.1} ms",
        publishes[publishes.len() / 2].as_secs_f64() * 1e3,
        publishes[publishes.len() - 1].as_secs_f64() * 1e3,
    );
    let (lookup, _) = rt.block_on(kd.lookup(&phone(numbers / 2))).expect("lookup");
    let history = rt
        .block_on(kd.history(&phone(numbers / 2)))
        .expect("history");
    let audit = rt.block_on(kd.audit(epoch / 2)).expect("audit");
    println!(
        "bytes on the wire: lookup proof {} (KeyDirectoryProof {}), history proof of one version {}, \
         append-only step of an epoch of 64 new numbers {}",
        lookup.proof.len(),
        lookup.encoded_len(),
        history.proof.len(),
        audit.proof.len(),
    );
    let db_bytes = std::fs::metadata(dir.path().join("bench.db"))
        .map(|m| m.len())
        .unwrap_or(0);
    println!("store file after setup: {db_bytes} bytes (accounts and directory)");

    let mut g = c.benchmark_group(format!("key directory, {numbers} numbers"));
    g.sample_size(20);
    let mut i = 0;
    g.bench_function("lookup (proof for one number)", |b| {
        b.iter(|| {
            i = (i + 7919) % numbers;
            rt.block_on(kd.lookup(&phone(i))).expect("lookup")
        })
    });
    let mut n = 0u64;
    g.bench_function("publish one changed number (an epoch of 1)", |b| {
        b.iter(|| {
            n += 1;
            let mut key = [0xee; 32];
            key[..8].copy_from_slice(&n.to_be_bytes());
            rt.block_on(async {
                store
                    .register_primary(&phone(0), &key, "bench", 1)
                    .await
                    .expect("re-register");
                kd.publish(&[phone(0)]).await.expect("publish");
            })
        })
    });
    g.finish();
}

criterion_group!(benches, key_directory);
criterion_main!(benches);
