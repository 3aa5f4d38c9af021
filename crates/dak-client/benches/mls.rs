//! What MLS costs a Dak device: `cargo bench -p dak-client --bench mls`.
//!
//! 1. Criterion timings of one ~100-byte `Content`: one member encrypting
//!    it and another processing it, together and each alone, in a 2-member
//!    group and in a group of 1,024 devices; next to the floor, one Ed25519
//!    signature plus its verification (an MLS application message is
//!    signed by its sender and verified by each recipient, so encrypt +
//!    decrypt can cost no less). Each group first sees two update commits
//!    (`SETTLE_COMMITS`), so both members hold what a member of a group in
//!    use holds. After the criterion runs, a summary table puts every
//!    median next to the floor.
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
//! (`none` skips it). In test mode (`cargo bench -- --test` or `cargo test
//! --benches`: one run of each timing) the big group has 8 devices and the
//! table only 2 and 32, so it runs in seconds.

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

/// A device on the native backend, in memory as before: SQLite's code paths
/// without the disk's.
type Device = dak_core::testing::TestDevice;

fn device(id: u64) -> Device {
    let store = dak_client::SqliteProfile::open_in_memory().expect("sqlite");
    Device::on(Box::new(store), &format!("+91980000{:04}", id % 10_000), id)
}

/// Device ids (and phones) unique within the run.
struct Ids(u64);

impl Ids {
    fn next(&mut self) -> Device {
        self.0 += 1;
        device(self.0)
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
    let group = creator
        .mls()
        .create_group(dak_proto::mls::CIPHERSUITE)
        .expect("create group");
    let mut left = n - 1; // devices still to add, the observer last
    let mut epoch_commits = 0;
    while left > 0 {
        let batch = left.min(BUILD_BATCH);
        let c = creator.mls();
        let mut adds: Vec<KeyPackage> = (0..batch - usize::from(batch == left))
            .map(|_| ids.next().key_package_for(&c).expect("key package"))
            .collect();
        let last = batch == left;
        if last {
            adds.push(observer.key_package_for(&c).expect("key package"));
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

/// Commits (the creator's self-updates, processed by the observer) made in
/// a group before its messages are timed. openmls keeps the secrets of up
/// to `MAX_PAST_EPOCHS` (2, dak-core's mls.rs) past epochs, each with its
/// epoch's member list, and writes them all with every message sent or
/// received: a member that has seen two commits holds the full store, as
/// every member of a group in use does. (Just built, the creator would
/// hold past epochs and the observer, who joined at the last one, none.)
const SETTLE_COMMITS: usize = 2;

fn settle(creator: &Device, observer: &Device, group: &[u8]) {
    for _ in 0..SETTLE_COMMITS {
        let out = creator
            .mls()
            .commit(group, Vec::new(), Vec::new())
            .expect("update commit");
        match observer.mls().process(&out.commit).expect("update") {
            Incoming::Commit { .. } => {}
            other => panic!("{other:?}"),
        }
        creator
            .mls()
            .merge_pending(group)
            .expect("merge the update");
    }
}

/// Criterion's samples of every timing; the summary's medians come from
/// them (criterion's own median estimate is the median of the same
/// per-iteration times).
const SAMPLES: usize = 100;

/// Rounds of the interleaved pass (see `interleave`).
const ROUNDS: usize = 200;

/// Bytes signed for the floor: about what MLS signs for a 100-byte
/// `Content` (its FramedContentTBS: the content, its framing and the group
/// context with two 32-byte hashes, ~230 B).
const FLOOR_INPUT: usize = 256;

fn median(v: &[f64]) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    match v.len() {
        0 => None,
        n if n % 2 == 0 => Some((v[mid - 1] + v[mid]) / 2.0),
        _ => Some(v[mid]),
    }
}

/// One benchmark's per-iteration times (seconds), one per criterion call;
/// the last `SAMPLES` are the measurement, those before them the warm-up.
#[derive(Default)]
struct Samples(RefCell<Vec<f64>>);

impl Samples {
    fn median(&self) -> Option<f64> {
        let all = self.0.borrow();
        median(&all[all.len().saturating_sub(SAMPLES)..]) // None: filtered out
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

/// The median CPU time (`cpu_now`) of each of `work`, run `rounds` times
/// in turn (per round, one iteration of each after one untimed, so that
/// none is timed with caches the one before emptied). On a shared machine
/// wall time counts the waits for a core too, more often within a long
/// iteration than within a short one; the CPU time of this thread, with all
/// of them meeting the same load, makes their ratios hold across runs.
fn interleave(work: &mut [&mut dyn FnMut() -> Duration], rounds: usize) -> Vec<f64> {
    let mut times = vec![Vec::with_capacity(rounds); work.len()];
    for _ in 0..rounds {
        for (one, t) in work.iter_mut().zip(&mut times) {
            black_box(one());
            let start = cpu_now();
            black_box(one());
            t.push((cpu_now() - start).as_secs_f64());
        }
    }
    times.iter().map(|t| median(t).unwrap_or(0.0)).collect()
}

/// The CPU time this thread has used (Linux's CLOCK_THREAD_CPUTIME_ID, one
/// system call); elsewhere the wall clock.
#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
fn cpu_now() -> Duration {
    #[repr(C)]
    struct Timespec {
        tv_sec: i64,
        tv_nsec: i64,
    }
    unsafe extern "C" {
        fn clock_gettime(clock: i32, tp: *mut Timespec) -> i32;
    }
    const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
    let mut ts = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec (two 64-bit longs on
    // 64-bit Linux) to `ts`, which lives for the call.
    let rc = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(not(all(target_os = "linux", target_pointer_width = "64")))]
fn cpu_now() -> Duration {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed()
}

fn time(f: impl FnOnce()) -> Duration {
    let t = Instant::now();
    f();
    t.elapsed()
}

/// `a` encrypts `content`, `b` processes it.
fn encrypt_decrypt(a: &Mls, b: &Mls, group: &[u8], content: &[u8]) -> Duration {
    time(|| {
        let ct = a.encrypt(group, black_box(content)).expect("encrypt");
        match b.process(&ct).expect("decrypt") {
            Incoming::Application { plaintext, .. } => {
                black_box(plaintext);
            }
            other => panic!("{other:?}"),
        }
    })
}

/// Only `b` processing what `a` encrypted (not timed) is timed.
fn decrypt(a: &Mls, b: &Mls, group: &[u8], content: &[u8]) -> Duration {
    let ct = a.encrypt(group, content).expect("encrypt");
    time(|| {
        black_box(b.process(black_box(&ct)).expect("decrypt"));
    })
}

/// Encrypting alone runs the sender's ratchet far ahead of what a receiver
/// could then follow: last in a group, or in a group of its own.
fn encrypt(a: &Mls, group: &[u8], content: &[u8]) -> Duration {
    time(|| {
        black_box(a.encrypt(group, black_box(content)).expect("encrypt"));
    })
}

/// The summary's rows: what, its samples.
#[derive(Default)]
struct Timings {
    floor: Samples,
    floor_decoded: Samples,
    /// encrypt+decrypt, encrypt, decrypt.
    small: [Samples; 3],
    big_n: usize,
    big: [Samples; 3],
    /// Medians of the interleaved pass: floor, 2-member encrypt+decrypt,
    /// then big-group encrypt+decrypt.
    interleaved: Vec<f64>,
}

fn timings(c: &mut Criterion, big_n: Option<usize>, rounds: usize) -> Timings {
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
    let mut floor = || {
        time(|| {
            let sig = key.sign(black_box(&input));
            public
                .verify_strict(black_box(&input), &sig)
                .expect("verify");
        })
    };
    bench(&mut g, "ed25519 sign+verify", &t.floor, &mut floor);
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

    // encrypt+decrypt and decrypt share a group, encrypt has its own;
    // both settled (see `SETTLE_COMMITS`).
    let (alice, bob, group) = pair(&mut ids);
    settle(&alice, &bob, &group);
    let (carol, dave, group2) = pair(&mut ids);
    settle(&carol, &dave, &group2);
    let (a, b) = (alice.mls(), bob.mls());
    let mut small = || encrypt_decrypt(&a, &b, &group, &content);
    let mut g = c.benchmark_group(format!("mls 2-member group, {} B Content", content.len()));
    g.sample_size(SAMPLES).throughput(Throughput::Elements(1));
    bench(&mut g, "encrypt+decrypt", &t.small[0], &mut small);
    let c2 = carol.mls();
    bench(&mut g, "encrypt", &t.small[1], || {
        encrypt(&c2, &group2, &content)
    });
    bench(&mut g, "decrypt", &t.small[2], || {
        decrypt(&a, &b, &group, &content)
    });
    g.finish();

    let ct = a.encrypt(&group, &content).expect("encrypt");
    b.process(&ct).expect("decrypt");
    println!(
        "\nMLS application message: {} B Content -> {} B PrivateMessage on the wire (+{} B)\n",
        content.len(),
        ct.len(),
        ct.len() - content.len()
    );

    let Some(n) = big_n else {
        t.interleaved = interleave(&mut [&mut floor, &mut small], rounds);
        return t;
    };
    // Built once (the creator adds everyone, as for the size table) and
    // settled; every timing runs in it, encrypt alone last.
    eprintln!("building a group of {n} devices for the timings");
    let (creator, observer, group) = build_group(n, &mut ids, true);
    settle(&creator, &observer, &group);
    let (a, b) = (creator.mls(), observer.mls());
    let mut big = || encrypt_decrypt(&a, &b, &group, &content);
    let mut g = c.benchmark_group(format!("mls {n}-member group, {} B Content", content.len()));
    g.sample_size(SAMPLES).throughput(Throughput::Elements(1));
    bench(&mut g, "encrypt+decrypt", &t.big[0], &mut big);
    bench(&mut g, "decrypt", &t.big[2], || {
        decrypt(&a, &b, &group, &content)
    });
    eprintln!("interleaved pass: {rounds} rounds of the floor and both encrypt+decrypt");
    t.interleaved = interleave(&mut [&mut floor, &mut small, &mut big], rounds);
    bench(&mut g, "encrypt", &t.big[1], || {
        encrypt(&a, &group, &content)
    });
    g.finish();
    t.big_n = n;
    t
}

fn print_summary(t: &Timings, test_mode: bool) {
    let floor = t.floor.median();
    let floor_i = t.interleaved.first().copied();
    println!(
        "\nMLS per message against the floor (one Ed25519 signature + its verification, {FLOOR_INPUT} B).\n\
         criterion µs: medians of criterion's samples (wall time). CPU µs: medians of {} rounds run\n\
         after criterion, one warm iteration of each in turn, in this thread's CPU time (which waiting\n\
         for a core on a shared machine does not inflate). Each group was settled by {SETTLE_COMMITS} update\n\
         commits first. Targets: encrypt+decrypt <= 2x floor at 2 members, <= 3x at 1,024.{}\n",
        if test_mode { 1 } else { ROUNDS },
        if test_mode {
            "\n(Test mode: one run each, not a measurement.)"
        } else {
            ""
        }
    );
    println!(
        "{:<48} | {:>14} | {:>7} | {:>10} | {:>7} | {:>6}",
        "what", "criterion µs", "x floor", "CPU µs", "x floor", "target"
    );
    let ratio = |m: f64, f: Option<f64>| f.map_or("-".to_string(), |f| format!("{:.2}", m / f));
    let row = |what: String, s: &Samples, inter: Option<f64>, target: &str| {
        let Some(m) = s.median() else { return };
        let (i, xi) = match inter {
            Some(i) => (format!("{:.1}", i * 1e6), ratio(i, floor_i)),
            None => (String::new(), String::new()),
        };
        println!(
            "{what:<48} | {:>14.1} | {:>7} | {i:>10} | {xi:>7} | {target:>6}",
            m * 1e6,
            ratio(m, floor)
        );
    };
    let inter = |i: usize| t.interleaved.get(i).copied();
    row("floor: ed25519 sign+verify".into(), &t.floor, inter(0), "");
    row(
        "  the same, keys decoded each time (as openmls)".into(),
        &t.floor_decoded,
        None,
        "",
    );
    let names = ["encrypt+decrypt", "encrypt", "decrypt"];
    for (i, name) in names.iter().enumerate() {
        let (inter, target) = if i == 0 { (inter(1), "2x") } else { (None, "") };
        row(format!("2 members: {name}"), &t.small[i], inter, target);
    }
    if t.big_n > 0 {
        for (i, name) in names.iter().enumerate() {
            let (inter, target) = if i == 0 { (inter(2), "3x") } else { (None, "") };
            row(
                format!("{} members: {name}", t.big_n),
                &t.big[i],
                inter,
                target,
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
    let kp = newcomer.key_package_for(&c).expect("key package");
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
    // Criterion's own rule: `cargo bench` passes --bench, `cargo bench --
    // --test` adds --test, `cargo test --benches` passes neither.
    let args: Vec<String> = std::env::args().collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    let test_mode = has("--test") || !has("--bench");
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
    let t = timings(&mut c, big_n, if test_mode { 1 } else { ROUNDS });
    c.final_summary();
    print_summary(&t, test_mode);
    sizes(test_mode);
}
