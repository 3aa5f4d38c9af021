//! What MLS costs a Dak device: `cargo bench -p dak-client --bench mls`.
//!
//! 1. Criterion timings of one ~100-byte `Content`: one member encrypting
//!    it and another processing it, together and each alone, in a 2-member
//!    group and in a group of 1,024 devices; next to the floor, one Ed25519
//!    signature plus its verification (an MLS application message is
//!    signed by its sender and verified by each recipient, so encrypt +
//!    decrypt can cost no less). After the criterion runs, a summary table
//!    puts every median next to the floor.
//! 2. Sizes, printed once as a table: in groups of 2, 32, 256 and 1024
//!    devices, the bytes of a commit adding one device and of its Welcome,
//!    and of a commit removing one device, next to what Signal-style Sender
//!    Keys would send for the removal.
//!
//! Every simulated device is a `dak_client::mls::Mls` engine, as the client
//! runs it, over its own in-memory `SqliteProfile` (the client's profile is
//! a file, so its writes cost more than here) with its own Ed25519 identity,
//! phone "+91980000XXXX" and device id. To build a big group only the
//! creator and one other member (the observer, which processes what the
//! creator sends) keep state; the rest only make a KeyPackage.
//!
//! `DAK_MLS_BIG=256` sets the big group's size for the timings (`none`
//! skips it); `DAK_MLS_SIZES=2,32` picks the group sizes of the table
//! (`none` skips it). Under `--test` (one run of each timing) the big group
//! has 8 devices and the table only 2 and 32, so it runs in seconds.

use std::cell::RefCell;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput};
use dak_client::mls::{self, Incoming, Mls};
use dak_proto::v1;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use openmls::prelude::KeyPackage;
use prost::Message;

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
    profile: dak_client::Profile,
    key: SigningKey,
    phone: String,
    id: u64,
}

impl Device {
    fn new(id: u64) -> Device {
        // The native backend, in memory as before: SQLite's code paths
        // without the disk's.
        let store = dak_client::SqliteProfile::open_in_memory().expect("sqlite");
        Device {
            profile: dak_client::Profile::new(
                Box::new(store),
                Box::new(dak_client::SystemEnvironment),
            ),
            key: SigningKey::generate(&mut rand::rngs::OsRng),
            phone: format!("+91980000{:04}", id % 10_000),
            id,
        }
    }

    fn mls(&self) -> Mls<'_> {
        Mls::new(&self.profile, &self.key, &self.phone, self.id)
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

/// Criterion's samples of every timing; the summary's medians come from
/// them (criterion's own median estimate is the median of the same
/// per-iteration times).
const SAMPLES: usize = 100;

/// Bytes signed for the floor: about what MLS signs for a 100-byte
/// `Content` (its FramedContentTBS: the content, its framing and the group
/// context with two 32-byte hashes, ~230 B).
const FLOOR_INPUT: usize = 256;

/// One benchmark's per-iteration times (seconds), one per criterion call;
/// the last `SAMPLES` are the measurement, those before the warm-up.
#[derive(Default)]
struct Samples(RefCell<Vec<f64>>);

impl Samples {
    fn median(&self) -> Option<f64> {
        let all = self.0.borrow();
        let mut v = all[all.len().saturating_sub(SAMPLES)..].to_vec();
        if v.is_empty() {
            return None; // filtered out
        }
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        Some(if v.len() % 2 == 0 {
            (v[mid - 1] + v[mid]) / 2.0
        } else {
            v[mid]
        })
    }
}

/// Criterion's benchmark `name` of `one`, which runs one iteration and
/// returns the time to count (setup excluded), recording what criterion
/// gets in `into`.
fn bench(
    g: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    into: &Samples,
    mut one: impl FnMut() -> Duration,
) {
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let total: Duration = (0..iters).map(|_| one()).sum();
            into.0.borrow_mut().push(total.as_secs_f64() / iters as f64);
            total
        })
    });
}

fn time(f: impl FnOnce()) -> Duration {
    let t = Instant::now();
    f();
    t.elapsed()
}

/// The summary's rows: what, its samples.
#[derive(Default)]
struct Timings {
    floor: Samples,
    floor_decoded: Samples,
    small: [Samples; 3],
    big_n: usize,
    big: [Samples; 3],
}

/// Encrypt+decrypt, encrypt alone and decrypt alone, in the groups
/// `(sender, receiver, group)` of `groups`; the first pair is used for
/// encrypt+decrypt then decrypt, the second for encrypt alone.
fn message_timings(
    g: &mut BenchmarkGroup<'_, WallTime>,
    content: &[u8],
    both: (&Device, &Device, &[u8]),
    alone: (&Device, &[u8]),
    into: &[Samples; 3],
) {
    let (a, b, group) = (both.0.mls(), both.1.mls(), both.2);
    bench(g, "encrypt+decrypt", &into[0], || {
        time(|| {
            let ct = a.encrypt(group, black_box(content)).expect("encrypt");
            match b.process(&ct).expect("decrypt") {
                Incoming::Application { plaintext, .. } => {
                    black_box(plaintext);
                }
                other => panic!("{other:?}"),
            }
        })
    });
    bench(g, "decrypt", &into[2], || {
        let ct = a.encrypt(group, content).expect("encrypt");
        time(|| {
            black_box(b.process(black_box(&ct)).expect("decrypt"));
        })
    });
    // Last, or on a group of its own: encrypting alone runs the sender's
    // ratchet far ahead of what a receiver could then follow.
    let (a, group) = (alone.0.mls(), alone.1);
    bench(g, "encrypt", &into[1], || {
        time(|| {
            black_box(a.encrypt(group, black_box(content)).expect("encrypt"));
        })
    });
}

fn timings(c: &mut Criterion, big_n: Option<usize>) -> Timings {
    let mut ids = Ids(0);
    let content = content();
    let mut t = Timings::default();

    // The floor: one signature and its verification, as the device's
    // identity key (ed25519-dalek) makes and checks them, keys ready.
    let mut g = c.benchmark_group(format!("mls floor, {FLOOR_INPUT} B"));
    g.sample_size(SAMPLES).throughput(Throughput::Elements(1));
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let public = key.verifying_key();
    let input = [0x5a_u8; FLOOR_INPUT];
    bench(&mut g, "ed25519 sign+verify", &t.floor, || {
        time(|| {
            let sig = key.sign(black_box(&input));
            public
                .verify_strict(black_box(&input), &sig)
                .expect("verify");
        })
    });
    // The same with both keys decoded from bytes first, as openmls's
    // signer (openmls_basic_credential) and verifier (openmls_rust_crypto)
    // do on every call: deriving the public key from the secret costs a
    // scalar multiplication, decoding the public key a point decompression.
    let (secret, public_bytes) = (key.to_bytes(), public.to_bytes());
    bench(
        &mut g,
        "ed25519 sign+verify, keys decoded each time",
        &t.floor_decoded,
        || {
            time(|| {
                let key = SigningKey::try_from(black_box(&secret[..])).expect("key");
                let sig = key.sign(black_box(&input));
                VerifyingKey::try_from(black_box(&public_bytes[..]))
                    .expect("public key")
                    .verify_strict(black_box(&input), &sig)
                    .expect("verify");
            })
        },
    );
    g.finish();

    let mut g = c.benchmark_group(format!("mls 2-member group, {} B Content", content.len()));
    g.sample_size(SAMPLES).throughput(Throughput::Elements(1));
    // encrypt+decrypt and decrypt share a group, encrypt has its own.
    let (alice, bob, group) = pair(&mut ids);
    let (carol, _dave, group2) = pair(&mut ids);
    message_timings(
        &mut g,
        &content,
        (&alice, &bob, &group),
        (&carol, &group2),
        &t.small,
    );
    g.finish();

    let ct = alice.mls().encrypt(&group, &content).expect("encrypt");
    println!(
        "\nMLS application message: {} B Content -> {} B PrivateMessage on the wire (+{} B)\n",
        content.len(),
        ct.len(),
        ct.len() - content.len()
    );

    if let Some(n) = big_n {
        // Built once (the creator adds everyone, as for the size table);
        // every timing runs in it, encrypt alone last.
        eprintln!("building a group of {n} devices for the timings");
        let (creator, observer, group) = build_group(n, &mut ids, true);
        let mut g = c.benchmark_group(format!("mls {n}-member group, {} B Content", content.len()));
        g.sample_size(SAMPLES).throughput(Throughput::Elements(1));
        message_timings(
            &mut g,
            &content,
            (&creator, &observer, &group),
            (&creator, &group),
            &t.big,
        );
        g.finish();
        t.big_n = n;
    }
    t
}

fn print_summary(t: &Timings, test_mode: bool) {
    let floor = t.floor.median();
    println!(
        "\nMLS per message against the floor (one Ed25519 signature + its verification, {FLOOR_INPUT} B):\n\
         medians of criterion's samples{}; targets: encrypt+decrypt <= 2x floor at 2 members, <= 3x at 1,024.\n",
        if test_mode {
            " (--test: one run each, not a measurement)"
        } else {
            ""
        }
    );
    println!(
        "{:<46} | {:>10} | {:>8} | {:>6}",
        "what", "median µs", "x floor", "target"
    );
    let mut row = |what: String, s: &Samples, target: &str| {
        let Some(m) = s.median() else { return };
        let x = floor.map_or("-".to_string(), |f| format!("{:.2}", m / f));
        println!("{what:<46} | {:>10.1} | {x:>8} | {target:>6}", m * 1e6);
    };
    row("floor: ed25519 sign+verify".into(), &t.floor, "");
    row(
        "  the same, keys decoded each time (as openmls)".into(),
        &t.floor_decoded,
        "",
    );
    let names = ["encrypt+decrypt", "encrypt", "decrypt"];
    for (i, name) in names.iter().enumerate() {
        row(
            format!("2 members: {name}"),
            &t.small[i],
            if i == 0 { "2x" } else { "" },
        );
    }
    if t.big_n > 0 {
        for (i, name) in names.iter().enumerate() {
            row(
                format!("{} members: {name}", t.big_n),
                &t.big[i],
                if i == 0 { "3x" } else { "" },
            );
        }
    }
    println!();
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
    let big_n = match std::env::var("DAK_MLS_BIG") {
        Ok(s) if s.trim() == "none" => None,
        Ok(s) => Some(
            s.trim()
                .parse()
                .expect("DAK_MLS_BIG: a group size, e.g. 256"),
        ),
        Err(_) if test_mode => Some(8),
        Err(_) => Some(1024),
    };
    let mut c = Criterion::default().configure_from_args();
    let t = timings(&mut c, big_n);
    c.final_summary();
    print_summary(&t, test_mode);
    sizes(test_mode);
}
