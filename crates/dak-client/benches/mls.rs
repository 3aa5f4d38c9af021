//! What MLS costs a Dak device: `cargo bench -p dak-client --bench mls`.
//!
//! 1. Criterion timings, in a 2-member group, of encrypting a ~100-byte
//!    `Content` (one member) and processing it (the other): together, and
//!    each alone.
//! 2. Sizes, printed once as a table: in groups of 2, 32, 256 and 1024
//!    devices, the bytes of a commit adding one device and of its Welcome,
//!    and of a commit removing one device, next to what Signal-style Sender
//!    Keys would send for the removal.
//!
//! Every simulated device is a `dak_client::mls::Mls` engine, as the client
//! runs it, over its own in-memory SQLite database (the client's profile is
//! a file, so its writes cost more than here) with its own Ed25519 identity,
//! phone "+91980000XXXX" and device id. To build a big group only the
//! creator and one other member (the observer, which checks each measured
//! commit by processing it) keep state; the rest only make a KeyPackage.
//!
//! `DAK_MLS_SIZES=2,32` picks the group sizes (`none` skips the table);
//! under `--test` (one run of each timing) only 2 and 32 are built.

use std::hint::black_box;
use std::time::Instant;

use criterion::{BatchSize, Criterion, Throughput};
use dak_client::mls::{self, Incoming, Mls};
use dak_proto::v1;
use ed25519_dalek::SigningKey;
use openmls::prelude::KeyPackage;
use prost::Message;
use rusqlite::Connection;

/// KeyPackages per commit while building a group.
const BUILD_BATCH: usize = 256;

/// Sender Keys assumption, per pairwise message carrying one new sender
/// key: a SenderKeyDistributionMessage of ~95 B (32 B chain key, 33 B
/// signing public key, 16 B distribution id, chain id, iteration, framing)
/// sealed in a Double Ratchet message adding ~55 B (33 B ratchet public
/// key, counters, 8 B MAC, CBC padding). Signal's own transport padding
/// (160-byte blocks) and sealed sender would make it larger: a low estimate.
const SENDER_KEY_MESSAGE_BYTES: usize = 150;

struct Device {
    db: Connection,
    key: SigningKey,
    phone: String,
    id: u64,
}

impl Device {
    fn new(id: u64) -> Device {
        let mut db = Connection::open_in_memory().expect("sqlite");
        mls::migrate(&mut db).expect("migrate");
        Device {
            db,
            key: SigningKey::generate(&mut rand::rngs::OsRng),
            phone: format!("+91980000{:04}", id % 10_000),
            id,
        }
    }

    fn mls(&self) -> Mls<'_> {
        Mls::new(&self.db, &self.key, &self.phone, self.id)
    }

    /// One of this device's one-time KeyPackages, as `by` reads it from
    /// the directory (signature and credential checked).
    fn key_package_for(&self, by: &Mls) -> KeyPackage {
        let bytes = self.mls().key_packages(1).expect("key package").remove(0);
        by.fetched_key_package(
            &bytes,
            &self.phone,
            self.id,
            self.key.verifying_key().as_bytes(),
        )
        .expect("fetched key package")
    }
}

/// Device ids (and phones) unique within the run.
struct Ids(u64);

impl Ids {
    fn next(&mut self) -> Device {
        self.0 += 1;
        Device::new(self.0)
    }
}

/// A ~100-byte `Content` (a text message), encoded.
fn content() -> Vec<u8> {
    let c = v1::Content {
        kind: Some(v1::content::Kind::Text(v1::Text {
            body: "The train is 20 minutes late; start without me and order the thali for me, please. Thanks!"
                .chars()
                .take(89)
                .collect(),
            sent_at_ms: 1_767_225_600_000,
            ..Default::default()
        })),
    };
    c.encode_to_vec()
}

/// A group of `n` devices built by its creator, in commits of up to
/// `BUILD_BATCH` adds; the observer is added in the last one and joins from
/// its Welcome. Only the creator and the observer are kept.
fn build_group(n: usize, ids: &mut Ids, progress: bool) -> (Device, Device, Vec<u8>) {
    assert!(n >= 2);
    let started = Instant::now();
    let creator = ids.next();
    let observer = ids.next();
    let group = creator.mls().create_group().expect("create group");
    let mut left = n - 1; // devices still to add, the observer last
    let mut epoch_commits = 0;
    while left > 0 {
        let batch = left.min(BUILD_BATCH);
        let c = creator.mls();
        let mut adds: Vec<KeyPackage> = (0..batch - usize::from(batch == left))
            .map(|_| ids.next().key_package_for(&c))
            .collect();
        let last = batch == left;
        if last {
            adds.push(observer.key_package_for(&c));
        }
        let out = c.commit(&group, adds, Vec::new()).expect("add commit");
        c.merge_pending(&group).expect("merge");
        if last {
            let welcome = out.welcome.expect("a Welcome");
            match observer.mls().process(&welcome).expect("join") {
                Incoming::Joined { group: g } => assert_eq!(g, group),
                other => panic!("{other:?}"),
            }
        }
        left -= batch;
        epoch_commits += 1;
        if progress {
            eprintln!(
                "  group of {n}: {}/{} devices in, {epoch_commits} commit(s), {:.1} s",
                n - left,
                n,
                started.elapsed().as_secs_f64()
            );
        }
    }
    assert_eq!(creator.mls().members(&group).expect("members").len(), n);
    assert_eq!(
        creator.mls().authenticator(&group).unwrap(),
        observer.mls().authenticator(&group).unwrap(),
        "the observer shares the creator's group state"
    );
    (creator, observer, group)
}

/// Two devices in a fresh 1:1 group.
fn pair(ids: &mut Ids) -> (Device, Device, Vec<u8>) {
    build_group(2, ids, false)
}

fn timings(c: &mut Criterion) {
    let mut ids = Ids(0);
    let content = content();
    let mut g = c.benchmark_group(format!("mls 2-member group, {} B Content", content.len()));
    g.throughput(Throughput::Elements(1));

    // Each measurement has its own group: encrypting alone runs the
    // sender's ratchet far ahead of what the receiver could then follow.
    let (alice, bob, group) = pair(&mut ids);
    let (a, b) = (alice.mls(), bob.mls());
    g.bench_function("encrypt+decrypt", |it| {
        it.iter(|| {
            let ct = a.encrypt(&group, black_box(&content)).expect("encrypt");
            match b.process(&ct).expect("decrypt") {
                Incoming::Application { plaintext, .. } => plaintext,
                other => panic!("{other:?}"),
            }
        })
    });

    let (alice, _bob, group) = pair(&mut ids);
    let a = alice.mls();
    g.bench_function("encrypt", |it| {
        it.iter(|| a.encrypt(&group, black_box(&content)).expect("encrypt"))
    });

    let (alice, bob, group) = pair(&mut ids);
    let (a, b) = (alice.mls(), bob.mls());
    g.bench_function("decrypt", |it| {
        it.iter_batched(
            || a.encrypt(&group, &content).expect("encrypt"),
            |ct| b.process(&ct).expect("decrypt"),
            BatchSize::SmallInput,
        )
    });
    g.finish();

    let ct = a.encrypt(&group, &content).expect("encrypt");
    println!(
        "\nMLS application message: {} B Content -> {} B PrivateMessage on the wire (+{} B)\n",
        content.len(),
        ct.len(),
        ct.len() - content.len()
    );
}

struct Row {
    n: usize,
    add_commit: usize,
    welcome: usize,
    remove_commit: usize,
    build_s: f64,
    add_ms: f64,
    remove_ms: f64,
    process_remove_ms: f64,
}

fn measure(n: usize, ids: &mut Ids) -> Row {
    let started = Instant::now();
    let (creator, observer, group) = build_group(n, ids, true);
    let build_s = started.elapsed().as_secs_f64();
    let c = creator.mls();

    // (i) Add one device: the commit and its Welcome. The newcomer joins
    // from the Welcome to show it is complete; then the commit is dropped,
    // so that the removal is measured in the group of n.
    let newcomer = ids.next();
    let kp = newcomer.key_package_for(&c);
    let t = Instant::now();
    let add = c.commit(&group, vec![kp], Vec::new()).expect("add commit");
    let add_ms = t.elapsed().as_secs_f64() * 1e3;
    let welcome = add.welcome.expect("a Welcome");
    assert!(matches!(
        newcomer.mls().process(&welcome).expect("newcomer joins"),
        Incoming::Joined { .. }
    ));
    c.clear_pending(&group).expect("drop the add");

    // (ii) Remove one device (another than the creator and the observer
    // when there is one), checked by the observer processing the commit.
    let members = c.members(&group).expect("members");
    let is = |m: &mls::MemberDevice, d: &Device| m.phone == d.phone && m.device_id == d.id;
    let target = members
        .iter()
        .rev()
        .find(|m| !is(m, &creator) && !is(m, &observer))
        .or_else(|| members.iter().find(|m| is(m, &observer)))
        .expect("a member to remove");
    let removes_observer = is(target, &observer);
    let t = Instant::now();
    let remove = c
        .commit(&group, Vec::new(), vec![target.leaf])
        .expect("remove commit");
    let remove_ms = t.elapsed().as_secs_f64() * 1e3;
    assert!(remove.welcome.is_none());
    let t = Instant::now();
    match observer
        .mls()
        .process(&remove.commit)
        .expect("observer processes the removal")
    {
        Incoming::Commit { removed_me, .. } => assert_eq!(removed_me, removes_observer),
        other => panic!("{other:?}"),
    }
    let process_remove_ms = t.elapsed().as_secs_f64() * 1e3;
    c.merge_pending(&group).expect("merge the removal");
    if !removes_observer {
        assert_eq!(
            c.authenticator(&group).unwrap(),
            observer.mls().authenticator(&group).unwrap()
        );
    }
    Row {
        n,
        add_commit: add.commit.len(),
        welcome: welcome.len(),
        remove_commit: remove.commit.len(),
        build_s,
        add_ms,
        remove_ms,
        process_remove_ms,
    }
}

fn fits(bytes: usize) -> &'static str {
    if bytes > dak_proto::mls::MAX_MLS_BYTES {
        " (!)"
    } else {
        ""
    }
}

fn print_table(rows: &[Row]) {
    println!(
        "\nMLS group changes, bytes of the MLS message (TLS-serialized MLSMessage, what SendCommit carries).\n\
         Each group was just built by its creator (so only the creator's path in the ratchet tree is\n\
         filled and a commit's UpdatePath encrypts to about every other leaf; a tree where every member\n\
         has committed needs only ~log2(N) encryptions). Commits always carry a path (force_self_update).\n\
         The Welcome carries the whole ratchet tree (use_ratchet_tree_extension), so it grows with N.\n\
         (!) = over the server's limit for one MLS message, MAX_MLS_BYTES = {} B.\n",
        dak_proto::mls::MAX_MLS_BYTES
    );
    println!(
        "{:>5} | {:>16} | {:>14} | {:>19} | {:>21} | {:>25} | {:>28}",
        "N",
        "add commit B",
        "Welcome B",
        "remove commit B",
        "remove fan-out B",
        "Sender Keys: remover B",
        "Sender Keys: all rotate B"
    );
    for r in rows {
        // Every other device, the removed one included, downloads the commit.
        let fan_out = r.remove_commit * (r.n - 1);
        let others = r.n.saturating_sub(2);
        let sk_remover = others * SENDER_KEY_MESSAGE_BYTES;
        let sk_all = (r.n - 1) * others * SENDER_KEY_MESSAGE_BYTES;
        println!(
            "{:>5} | {:>12}{:<4} | {:>10}{:<4} | {:>15}{:<4} | {:>21} | {:>25} | {:>28}",
            r.n,
            r.add_commit,
            fits(r.add_commit),
            r.welcome,
            fits(r.welcome),
            r.remove_commit,
            fits(r.remove_commit),
            fan_out,
            sk_remover,
            sk_all
        );
    }
    println!(
        "\nremove fan-out = remove commit x (N-1): every other device downloads the one commit.\n\
         Sender Keys (Signal-style groups) for comparison, assuming {SENDER_KEY_MESSAGE_BYTES} B per \
         pairwise message carrying one new\nsender key (~95 B SenderKeyDistributionMessage in a Double \
         Ratchet message; a low estimate):\n\
         remover = the remover's new sender key sent pairwise to the N-2 other remaining devices;\n\
         all rotate = every one of the N-1 remaining devices sends its new key to the N-2 others,\n\
         as a removal requires so that the removed device can read none of them afterwards.\n"
    );
    println!(
        "{:>5} | {:>12} | {:>14} | {:>17} | {:>24}",
        "N", "build s", "add commit ms", "remove commit ms", "observer processes ms"
    );
    for r in rows {
        println!(
            "{:>5} | {:>12.1} | {:>14.1} | {:>17.1} | {:>24.1}",
            r.n, r.build_s, r.add_ms, r.remove_ms, r.process_remove_ms
        );
    }
    println!(
        "(single runs, release build, in-memory SQLite; build = creator adds N-1 devices in commits of {BUILD_BATCH})\n"
    );
}

fn sizes(test_mode: bool) {
    let ns: Vec<usize> = match std::env::var("DAK_MLS_SIZES") {
        Ok(s) if s.trim() == "none" => return,
        Ok(s) => s
            .split(',')
            .map(|n| {
                n.trim()
                    .parse()
                    .expect("DAK_MLS_SIZES: group sizes, e.g. 2,32")
            })
            .collect(),
        Err(_) if test_mode => vec![2, 32],
        Err(_) => vec![2, 32, 256, 1024],
    };
    let mut ids = Ids(1000);
    let mut rows = Vec::new();
    for n in ns {
        eprintln!("building a group of {n} devices");
        let row = measure(n, &mut ids);
        eprintln!(
            "  N={n}: add commit {} B, Welcome {} B, remove commit {} B",
            row.add_commit, row.welcome, row.remove_commit
        );
        rows.push(row);
    }
    print_table(&rows);
}

fn main() {
    let test_mode = std::env::args().any(|a| a == "--test");
    let mut c = Criterion::default().configure_from_args();
    timings(&mut c);
    c.final_summary();
    sizes(test_mode);
}
