//! The `group` scenario (issue 5): one MLS group of N member devices, one
//! account each, every one a simulated device on its own connection with
//! its own `dak_client::mls::Mls` engine, as `groups` sets up for pairs.
//!
//! 1. **Create.** Member 0 creates the group (a named group, as
//!    `dak_client` makes for a group chat) and adds the others through
//!    `SendCommit` in batches. A `SendCommit` frame carries the commit and
//!    its Welcome together and may not exceed `MAX_FRAME_BYTES`, and the
//!    Welcome carries the whole ratchet tree (~190 B a leaf), so a batch
//!    that does not fit is halved until it does (as `dak_client` does; an
//!    add-only commit carries no update path there, so it grows only with
//!    the KeyPackages it adds). Earlier members process every later commit
//!    from their mailbox, as a real device would. The tree this leaves has
//!    no keys above the leaves: the worst case for what follows.
//! 2. **Fan-out.** With every member online, one member sends M messages,
//!    each once the previous one has reached everyone and at least
//!    `interval` after it. Latency is send → Deliver read by a recipient,
//!    for every (message, recipient). Decrypting is measured afterwards,
//!    per message, so that 1,000 devices sharing two cores do not turn the
//!    delivery latency into a measure of this machine's CPU queue.
//! 3. **Removal.** The bytes of a commit removing one member, built by the
//!    creator and by a member of the last batch (the latter sent, and
//!    processed by every remaining member), then again after U members
//!    spread over the tree have sent self-updates; next to what Signal's
//!    Sender Keys would send (a new sender key to every remaining member,
//!    pairwise, measured as a real MLS 1:1 application message).
//!
//! MLS work is CPU-bound and synchronous, so it runs on blocking threads.
//! The devices that act (the creator, the sender, the committers) each get
//! their own thread, as a real device has its own CPU; the others share
//! `workers` threads (the machine's cores by default), in arrival order.
//! Each member is a task (`member`) that reads its mailbox and takes
//! commands; this module orchestrates them through `Group`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use dak_client::mls::Incoming;
use dak_proto::v1::{self, client_frame::Request, server_frame::Body};
use hdrhistogram::Histogram;
use openmls::prelude::{KeyPackage, LeafNodeIndex};
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};

use crate::device::{self, Device};
use crate::groups::MlsDevice;
use crate::report::{Report, histogram, micros};
use crate::scenarios::Params;
use crate::target::Target;

mod member;

use member::{
    Change, Command, CommitOut, Handle, Member, NOT_JOINED, REMOVED, Samples, Shared, lock,
};

/// Members connecting (TLS, challenge, KeyPackage upload) at a time.
const CONNECTS_IN_FLIGHT: usize = 64;

/// KeyPackage fetches in flight on the creator's connection.
const FETCHES_IN_FLIGHT: usize = 64;

// ---- Sender Keys ----

/// A SenderKeyDistributionMessage for a new sender key, as libsignal
/// serialises it: a version byte, then the protobuf (`wire.proto`)
/// `distribution_uuid` (16 B), `chain_id` (a random 31-bit number, here
/// in its longest varint, 5 B, which 7 in 8 random ids take), `iteration`
/// (0 for a new chain), `chain_key` (32 B) and `signing_key` (33 B: a type
/// byte and a Curve25519 public key). 96 bytes.
pub fn sender_key_distribution_message() -> Vec<u8> {
    fn bytes(out: &mut Vec<u8>, field: u8, value: &[u8]) {
        out.push((field << 3) | 2);
        out.push(value.len() as u8); // every value here is < 128 bytes
        out.extend_from_slice(value);
    }
    fn varint(out: &mut Vec<u8>, field: u8, mut value: u32) {
        out.push(field << 3);
        loop {
            let low = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 {
                out.push(low);
                return;
            }
            out.push(low | 0x80);
        }
    }
    let mut m = vec![0x33]; // message version 3, current version 3
    bytes(&mut m, 1, &rand::random::<[u8; 16]>());
    varint(&mut m, 2, (rand::random::<u32>() >> 1) | (1 << 30));
    varint(&mut m, 3, 0);
    bytes(&mut m, 4, &rand::random::<[u8; 32]>());
    let mut signing_key = vec![0x05];
    signing_key.extend_from_slice(&rand::random::<[u8; 32]>());
    bytes(&mut m, 5, &signing_key);
    m
}

/// The cost of one pairwise Sender Keys message on Dak's own 1:1 channel:
/// `a` and `b` set up their MLS conversation, `a` sends a
/// SenderKeyDistributionMessage as an application message, `b` decrypts
/// it. Returns the payload's and the delivered ciphertext's sizes.
async fn sender_key_channel(url: &str, a: Device, b: Device) -> Result<(usize, usize)> {
    let mut ca = device::connect(url, &a, None).await?;
    let mut cb = device::connect(url, &b, None).await?;
    let mut ma = MlsDevice::new(a)?;
    let mut mb = MlsDevice::new(b)?;
    ma.upload_keys(&mut ca).await?;
    mb.upload_keys(&mut cb).await?;
    let peer = mb.device.phone.clone();
    let group = ma.start_group(&mut ca, &peer).await?;
    if mb.settle(&mut cb, 1).await? != [group.clone()] {
        bail!("{peer} did not join the 1:1 group from the Welcome");
    }
    ma.settle(&mut ca, 1).await?;
    let skdm = sender_key_distribution_message();
    let body = ma.engine().encrypt(&group, &skdm)?;
    match ca
        .call(Request::SendMessage(v1::SendMessage {
            message_id: rand::random::<[u8; 16]>().to_vec(),
            body,
            ..Default::default()
        }))
        .await?
    {
        Body::SendAck(_) => {}
        other => bail!("unexpected answer to SendMessage: {other:?}"),
    }
    let delivered = loop {
        let push = tokio::time::timeout(Duration::from_secs(30), cb.next_push())
            .await
            .context("the Sender Key message did not arrive")??;
        if let Body::Deliver(d) = push
            && let Some(e) = d.envelopes.into_iter().next()
        {
            break e.body;
        }
    };
    match mb.engine().process(&delivered)? {
        Incoming::Application { plaintext, .. } if plaintext == skdm => {}
        other => bail!("the Sender Key message did not decrypt to what was sent: {other:?}"),
    }
    ca.close().await;
    cb.close().await;
    Ok((skdm.len(), delivered.len()))
}

// ---- The group, from the orchestrator's side ----

struct Group {
    shared: Arc<Shared>,
    handles: Vec<Handle>,
    device_ids: Vec<u64>,
    /// The group's current epoch, as the server has it.
    epoch: u64,
    removed: Vec<bool>,
}

impl Group {
    fn members(&self) -> usize {
        self.handles.len()
    }

    fn at_epoch(&self, epoch: u64) -> usize {
        (0..self.members())
            .filter(|&i| self.shared.epoch(i).is_some_and(|e| e >= epoch))
            .count()
    }

    fn remaining(&self) -> usize {
        self.removed.iter().filter(|r| !**r).count()
    }

    /// Waits until member `i` has processed everything up to the current epoch.
    async fn caught_up(&self, i: usize, progress: &(dyn Fn(String) + Sync)) -> Result<()> {
        let epoch = self.epoch;
        self.shared
            .wait(
                &format!("member {i} catching up to epoch {epoch}"),
                || self.shared.epoch(i).is_some_and(|e| e >= epoch),
                || {
                    format!(
                        "{} of {} members at epoch {epoch}",
                        self.at_epoch(epoch),
                        self.remaining()
                    )
                },
                progress,
            )
            .await
    }

    /// Waits until every remaining member is at the current epoch.
    async fn everyone(&self, what: &str, progress: &(dyn Fn(String) + Sync)) -> Result<()> {
        let epoch = self.epoch;
        let joined = || {
            (0..self.members())
                .filter(|&i| self.shared.epoch(i).is_some())
                .count()
        };
        self.shared
            .wait(
                what,
                || self.at_epoch(epoch) == self.remaining(),
                || {
                    format!(
                        "{} of {} members joined, {} at epoch {epoch}",
                        joined(),
                        self.remaining(),
                        self.at_epoch(epoch)
                    )
                },
                progress,
            )
            .await
    }

    /// Member `i` commits `change` at the current epoch once it has caught
    /// up; sends it if `send` (and it fits), else drops it.
    async fn commit(
        &mut self,
        i: usize,
        change: Change,
        send: bool,
        progress: &(dyn Fn(String) + Sync),
    ) -> Result<CommitOut> {
        self.caught_up(i, progress).await?;
        let out = self.handles[i]
            .ask(|reply| Command::Commit {
                change,
                send,
                reply,
            })
            .await
            .with_context(|| format!("member {i}'s commit at epoch {}", self.epoch))?;
        if out.sent.is_some() {
            self.epoch += 1;
        }
        Ok(out)
    }

    /// The members' leaves, by member, as member `i` sees the tree.
    async fn leaves(&self, i: usize) -> Result<Vec<Option<LeafNodeIndex>>> {
        let members = self.handles[i]
            .ask(|reply| Command::Members { reply })
            .await?;
        let by_device: HashMap<u64, LeafNodeIndex> =
            members.iter().map(|m| (m.device_id, m.leaf)).collect();
        Ok(self
            .device_ids
            .iter()
            .map(|d| by_device.get(d).copied())
            .collect())
    }

    /// A change removing member `i`.
    async fn removal(&self, i: usize, by: usize) -> Result<Change> {
        let leaf = self.leaves(by).await?[i]
            .with_context(|| format!("member {i} is not in member {by}'s tree"))?;
        Ok(Change {
            removes: vec![leaf],
            removed_devices: vec![self.device_ids[i]],
            ..Default::default()
        })
    }

    async fn shut_down(self) {
        let Group { handles, .. } = self;
        let mut tasks = Vec::with_capacity(handles.len());
        for h in handles {
            drop(h.commands);
            tasks.push(h.task);
        }
        for t in tasks {
            if let Ok(Ok(m)) = t.await {
                m.conn.close().await;
            }
        }
    }
}

// ---- The scenario ----

struct Batch {
    added: usize,
    out: CommitOut,
    /// Sizes tried before this one that did not fit: (devices, frame bytes).
    refused: Vec<(usize, usize)>,
}

pub async fn run(
    target: &Target,
    p: &Params,
    progress: &(dyn Fn(String) + Sync),
) -> Result<Report> {
    let n = p.members;
    if n < 4 {
        bail!("the group scenario needs --members 4 or more");
    }
    let cpu_start = target.cpu_seconds();
    let mut devices =
        device::register_many(&target.url, target.outbox.clone(), n + 2, progress).await?;
    let (Some(sk_b), Some(sk_a)) = (devices.pop(), devices.pop()) else {
        bail!("registration returned too few devices");
    };
    progress("Sender Keys: one SenderKeyDistributionMessage over a 1:1 MLS conversation".into());
    let (skdm_bytes, skdm_wire) = sender_key_channel(&target.url, sk_a, sk_b).await?;

    let workers = if p.workers == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        p.workers
    };
    let shared = Arc::new(Shared {
        base: Instant::now(),
        epochs: (0..n).map(|_| AtomicU64::new(NOT_JOINED)).collect(),
        own_thread: (0..n).map(|_| AtomicBool::new(false)).collect(),
        received: (0..p.messages).map(|_| AtomicUsize::new(0)).collect(),
        changed: Notify::new(),
        failure: Mutex::new(None),
        samples: Mutex::new(Samples::default()),
        workers: Arc::new(Semaphore::new(workers)),
    });
    // The members that act get threads of their own: the creator (0), the
    // sender (1) and the committer of the removal (the last); the updaters
    // get theirs when chosen.
    let (creator, sender, committer) = (0, 1, n - 1);
    for i in [creator, sender, committer] {
        shared.own_thread[i].store(true, Relaxed);
    }

    let (phones, device_ids): (Vec<String>, Vec<u64>) =
        devices.iter().map(|d| (d.phone.clone(), d.id)).unzip();
    let mut members = connect_members(target, p, devices, shared.clone(), progress).await?;

    // The creator fetches a KeyPackage for every other member (setup, not timed).
    progress(format!("member 0 fetches {} KeyPackages", n - 1));
    let fetched = Instant::now();
    let key_packages = fetch_key_packages(&mut members[creator], &phones[1..]).await?;
    let fetch_time = fetched.elapsed();
    let checked = Instant::now();
    let mut key_packages: Vec<Option<KeyPackage>> = members[creator]
        .cpu(move |m| {
            key_packages
                .iter()
                .map(|(phone, d)| {
                    m.engine()
                        .fetched_key_package(&d.key_package, phone, d.device_id, &d.identity_key)
                        .map(Some)
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .await??;
    let check_time = checked.elapsed();
    key_packages.insert(0, None);
    let group_id = members[creator]
        .cpu(|m| m.engine().create_named_group())
        .await??;
    members[creator].group = group_id;
    members[creator].set_epoch(0);

    let mut handles = Vec::with_capacity(n);
    for m in members {
        let (commands, rx) = mpsc::channel(4);
        let shared = shared.clone();
        let index = m.index;
        let task = tokio::spawn(async move {
            let r = m.run(rx).await;
            if let Err(e) = &r {
                shared.fail(format!("member {index}: {e:#}"));
            }
            r
        });
        handles.push(Handle { commands, task });
    }
    let mut g = Group {
        shared: shared.clone(),
        handles,
        device_ids,
        epoch: 0,
        removed: vec![false; n],
    };

    let mut r = Report::new("group", params_json(p), &method(p, workers));
    r.add("members (accounts, one device each)", n as f64, "");
    r.add(
        "KeyPackage fetch (member 0, setup)",
        fetch_time.as_secs_f64() * 1e3,
        "ms",
    );
    r.add(
        "KeyPackage checks (member 0, setup)",
        check_time.as_secs_f64() * 1e3,
        "ms",
    );

    let outcome = async {
        create(&mut g, p, &mut key_packages, &mut r, progress).await?;
        fan_out(&mut g, p, sender, &mut r, progress).await?;
        removal(&mut g, p, committer, &mut r, progress).await?;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    if let Err(e) = outcome {
        // Members' failures say more than the orchestrator's view of them.
        return Err(match shared.failure() {
            Some(why) => e.context(why),
            None => e,
        });
    }
    let remaining = g.remaining();
    let (removal_bytes, fresh_creator) = (
        r.figure("removal commit bytes, member of the last batch"),
        r.figure("removal commit bytes, creator"),
    );
    sender_keys(
        &mut r,
        n,
        skdm_bytes,
        skdm_wire,
        removal_bytes,
        fresh_creator,
        remaining,
    );
    progress("closing the members' connections".into());
    g.shut_down().await;
    if let (Some(a), Some(b)) = (cpu_start, target.cpu_seconds()) {
        r.server_cpu_seconds = Some(b - a);
    }
    r.server_rss_bytes_end = target.rss_bytes();
    Ok(r)
}

fn params_json(p: &Params) -> serde_json::Value {
    serde_json::to_value(p).unwrap_or_default()
}

fn method(p: &Params, workers: usize) -> String {
    format!(
        "One MLS group of N member devices (one account each), each a simulated device on its own \
         connection with its own MLS engine (openmls over in-memory SQLite), registered and holding \
         KeyPackages. CREATE: member 0 creates the group and adds the others by SendCommit (commit + \
         Welcome in one frame of at most {max} B), in batches of up to {batch}, halved while the frame \
         does not fit (add-only commits carry no update path, as in dak-client). Create time = first commit built -> every member at the \
         final epoch; it includes every member processing its Welcome and every later commit from its \
         mailbox. FAN-OUT: with all members online, member 1 sends {m} messages ({size}-byte texts), \
         each once the previous one reached everyone and at least {interval:?} after the previous; \
         latency = SendMessage written (after encrypting) -> Deliver read by a recipient, over every \
         (message, recipient). Recipients decrypt afterwards, each message timed alone (reported \
         separately: {workers} shared threads decrypting for 1,000 devices would otherwise make the \
         latency a measure of this machine's CPU queue). REMOVAL: a commit removing one member, built \
         by member 0 and by the last member (that one sent and processed by every remaining member), \
         then rebuilt after {u} members spread over the tree each sent a self-update. SENDER KEYS: a \
         96-byte SenderKeyDistributionMessage (libsignal's encoding) sent as a real MLS 1:1 \
         application message between two other devices; its delivered size x (N-2) per re-keying \
         member. MLS work runs on blocking threads: the acting members (creator, sender, committers, \
         updaters) each on their own, the other members on {workers} shared threads.",
        max = dak_proto::MAX_FRAME_BYTES,
        batch = p.batch,
        m = p.messages,
        size = p.size,
        interval = p.interval,
        u = p.updates,
    )
}

/// Connects every member, gives it its MLS state and uploads its
/// KeyPackages, `CONNECTS_IN_FLIGHT` at a time.
async fn connect_members(
    target: &Target,
    p: &Params,
    devices: Vec<Device>,
    shared: Arc<Shared>,
    progress: &(dyn Fn(String) + Sync),
) -> Result<Vec<Member>> {
    let n = devices.len();
    progress(format!(
        "connecting {n} members and uploading their KeyPackages"
    ));
    let gate = Arc::new(Semaphore::new(CONNECTS_IN_FLIGHT));
    let mut tasks = Vec::with_capacity(n);
    for (i, d) in devices.into_iter().enumerate() {
        let (url, gate, k) = (target.url.clone(), gate.clone(), p.source_ips);
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let mut conn = device::connect(&url, &d, device::source_ip(i, k)).await?;
            let device_id = d.id;
            let mut mls = MlsDevice::new(d)?;
            mls.upload_keys(&mut conn).await?;
            Ok::<_, anyhow::Error>((conn, mls, device_id))
        }));
    }
    let mut members = Vec::with_capacity(n);
    for (index, t) in tasks.into_iter().enumerate() {
        let (conn, mls, device_id) = t.await??;
        members.push(Member {
            index,
            device_id,
            mls: Some(mls),
            conn,
            group: Vec::new(),
            epoch: 0,
            fanout: Vec::new(),
            shared: shared.clone(),
        });
        if (index + 1).is_multiple_of(256) {
            progress(format!("members connected: {}/{n}", index + 1));
        }
    }
    Ok(members)
}

/// One KeyPackage for each of `phones` (one device each), fetched on
/// `m`'s connection with `FETCHES_IN_FLIGHT` requests in flight.
async fn fetch_key_packages(
    m: &mut Member,
    phones: &[String],
) -> Result<Vec<(String, v1::DeviceKeyPackage)>> {
    let mut out: Vec<Option<(String, v1::DeviceKeyPackage)>> = vec![None; phones.len()];
    let mut waiting: HashMap<u64, usize> = HashMap::new();
    let (mut next, mut done) = (0, 0);
    while done < phones.len() {
        while next < phones.len() && waiting.len() < FETCHES_IN_FLIGHT {
            let id = m
                .conn
                .send(Request::FetchKeyPackages(v1::FetchKeyPackages {
                    phone: phones[next].clone(),
                    known_devices: Vec::new(),
                    ciphersuites: Vec::new(),
                }))
                .await?;
            waiting.insert(id, next);
            next += 1;
        }
        let frame = m.conn.next_frame().await?;
        let Some(i) = waiting.remove(&frame.request_id) else {
            continue; // a push: member 0 has no mail yet
        };
        let phone = &phones[i];
        match frame.body {
            Some(Body::KeyPackages(k)) => {
                let d = k
                    .devices
                    .into_iter()
                    .find(|d| !d.key_package.is_empty())
                    .with_context(|| format!("{phone} has no device with a KeyPackage"))?;
                out[i] = Some((k.phone, d));
            }
            Some(Body::Error(e)) => bail!("fetching {phone}'s KeyPackages: {e}"),
            other => bail!("unexpected answer to FetchKeyPackages: {other:?}"),
        }
        done += 1;
    }
    out.into_iter()
        .map(|o| o.context("a KeyPackage answer is missing"))
        .collect()
}

async fn create(
    g: &mut Group,
    p: &Params,
    key_packages: &mut [Option<KeyPackage>],
    r: &mut Report,
    progress: &(dyn Fn(String) + Sync),
) -> Result<()> {
    let n = g.members();
    let started = Instant::now();
    let mut batches: Vec<Batch> = Vec::new();
    let mut batch = p.batch.max(1);
    let mut next = 1;
    while next < n {
        let mut size = batch.min(n - next);
        let mut refused = Vec::new();
        let out = loop {
            let mut change = Change::default();
            let range = next..next + size;
            for (i, kp) in range.clone().zip(&key_packages[range]) {
                change.adds.push(
                    kp.clone()
                        .with_context(|| format!("no KeyPackage for member {i}"))?,
                );
                change.added_devices.push(g.device_ids[i]);
            }
            let out = g.commit(0, change, true, progress).await?;
            if out.fits {
                break out;
            }
            refused.push((size, out.frame_bytes));
            if size == 1 {
                bail!(
                    "adding member {next} alone needs a {} B SendCommit frame (commit {} B, Welcome {} B), \
                     over the {} B limit",
                    out.frame_bytes,
                    out.commit_bytes,
                    out.welcome_bytes,
                    dak_proto::MAX_FRAME_BYTES
                );
            }
            progress(format!(
                "a batch of {size} needs a {} B frame (commit {} B + Welcome {} B): halving",
                out.frame_bytes, out.commit_bytes, out.welcome_bytes
            ));
            size /= 2;
        };
        batch = size;
        progress(format!(
            "batch {}: members {next}..{} added at epoch {} (commit {} B, Welcome {} B, built in {:.0} ms)",
            batches.len() + 1,
            next + size - 1,
            g.epoch,
            out.commit_bytes,
            out.welcome_bytes,
            out.build.as_secs_f64() * 1e3
        ));
        batches.push(Batch {
            added: size,
            out,
            refused,
        });
        for kp in &mut key_packages[next..next + size] {
            *kp = None;
        }
        next += size;
    }
    let commits_sent = g.epoch;
    g.everyone("create: members joining and catching up", progress)
        .await?;
    let create_time = started.elapsed();
    progress(format!(
        "group of {n} created in {:.1} s ({} commits)",
        create_time.as_secs_f64(),
        batches.len(),
    ));

    r.add(
        "create: time to every member at the final epoch",
        create_time.as_secs_f64(),
        "s",
    );
    r.add("create: commits", commits_sent as f64, "");
    for (k, b) in batches.iter().enumerate() {
        let k = k + 1;
        r.add(format!("batch {k}: devices added"), b.added as f64, "");
        r.add(
            format!("batch {k}: commit bytes"),
            b.out.commit_bytes as f64,
            "B",
        );
        r.add(
            format!("batch {k}: Welcome bytes"),
            b.out.welcome_bytes as f64,
            "B",
        );
        r.add(
            format!("batch {k}: SendCommit frame bytes"),
            b.out.frame_bytes as f64,
            "B",
        );
        r.add(
            format!("batch {k}: creator builds commit"),
            ms(b.out.build),
            "ms",
        );
        if let Some(s) = &b.out.sent {
            r.add(
                format!("batch {k}: SendCommit -> SendAck"),
                ms(s.server),
                "ms",
            );
            r.add(format!("batch {k}: creator merges"), ms(s.merge), "ms");
        }
        for (size, frame) in &b.refused {
            r.add(
                format!("batch {k}: refused: {size} devices need a frame of"),
                *frame as f64,
                "B",
            );
        }
    }
    let build: Duration = batches.iter().map(|b| b.out.build).sum();
    r.add("create: creator building commits, total", ms(build), "ms");
    let samples = lock(&g.shared.samples);
    let welcomes: Vec<Duration> = samples.welcomes.clone();
    let commits: Vec<Duration> = samples
        .commits
        .iter()
        .filter(|(e, _)| *e <= commits_sent)
        .map(|(_, d)| *d)
        .collect();
    drop(samples);
    add_times(r, "create: Welcome processing per member", &welcomes);
    add_times(r, "create: commit processing per member", &commits);
    let cpu: Duration = welcomes.iter().chain(commits.iter()).sum();
    r.add(
        "create: members' MLS processing, total",
        cpu.as_secs_f64(),
        "s",
    );
    Ok(())
}

async fn fan_out(
    g: &mut Group,
    p: &Params,
    sender: usize,
    r: &mut Report,
    progress: &(dyn Fn(String) + Sync),
) -> Result<()> {
    let n = g.members();
    let recipients = g.remaining() - 1;
    let mut sends = Vec::with_capacity(p.messages);
    for k in 0..p.messages {
        let started = Instant::now();
        let out = g.handles[sender]
            .ask(|reply| Command::Send {
                index: k as u32,
                size: p.size,
                reply,
            })
            .await?;
        sends.push(out);
        let received = &g.shared.received[k];
        g.shared
            .wait(
                &format!("fan-out message {}", k + 1),
                || received.load(Relaxed) >= recipients,
                || format!("{}/{recipients} have it", received.load(Relaxed)),
                progress,
            )
            .await?;
        let sent_at = sends[k].sent_at;
        let last = lock(&g.shared.samples)
            .deliveries
            .iter()
            .filter(|(m, _)| *m == k as u32)
            .map(|(_, at)| at.saturating_sub(sent_at))
            .max()
            .unwrap_or_default();
        progress(format!(
            "fan-out: message {}/{} reached all {recipients} members, the last after {:.1} ms",
            k + 1,
            p.messages,
            ms(last)
        ));
        tokio::time::sleep_until((started + p.interval).into()).await;
    }
    let deliveries = std::mem::take(&mut lock(&g.shared.samples).deliveries);
    let mut latency = histogram();
    let mut last = vec![Duration::ZERO; sends.len()];
    for (k, at) in &deliveries {
        let Some(s) = sends.get(*k as usize) else {
            bail!("a delivery of fan-out message {k}, which was never sent");
        };
        let d = at.saturating_sub(s.sent_at);
        latency.record(micros(d))?;
        last[*k as usize] = last[*k as usize].max(d);
    }
    let mut ack = histogram();
    for s in &sends {
        ack.record(micros(s.acked_at.saturating_sub(s.sent_at)))?;
    }
    r.add("fan-out: messages", sends.len() as f64, "");
    r.add("fan-out: recipients per message", recipients as f64, "");
    r.add("fan-out: deliveries", deliveries.len() as f64, "");
    r.add(
        "fan-out: ciphertext bytes per message",
        sends.first().map_or(0, |s| s.bytes) as f64,
        "B",
    );
    add_times(
        r,
        "fan-out: sender encrypts",
        &sends.iter().map(|s| s.encrypt).collect::<Vec<_>>(),
    );
    r.add_latency("fan-out: send->Deliver", &latency);
    r.add_latency("fan-out: send->SendAck", &ack);
    let mut last_h = histogram();
    for d in &last {
        last_h.record(micros(*d))?;
    }
    r.add(
        "fan-out: last member has it, p50 over messages",
        quantile(&last_h, 0.5),
        "ms",
    );
    r.add(
        "fan-out: last member has it, max",
        last_h.max() as f64 / 1e3,
        "ms",
    );

    progress(format!(
        "each member decrypts the first {} fan-out message(s)",
        p.decrypt.min(p.messages)
    ));
    let started = Instant::now();
    let mut answers = Vec::with_capacity(n);
    for (i, h) in g.handles.iter().enumerate() {
        if i == sender || g.removed[i] {
            continue;
        }
        let (reply, answer) = oneshot::channel();
        h.commands
            .send(Command::Decrypt {
                count: p.decrypt,
                size: p.size,
                reply,
            })
            .await
            .map_err(|_| anyhow!("member {i}'s task has stopped"))?;
        answers.push(answer);
    }
    let mut decrypts = Vec::with_capacity(deliveries.len());
    let total = answers.len();
    for (done, a) in answers.into_iter().enumerate() {
        decrypts.extend(
            a.await
                .map_err(|_| anyhow!("a member's task has stopped"))??,
        );
        if (done + 1).is_multiple_of(256) {
            progress(format!("decrypted on {}/{total} members", done + 1));
        }
    }
    r.add("fan-out: decrypted", decrypts.len() as f64, "");
    add_times(r, "fan-out: decrypt per message", &decrypts);
    r.add(
        "fan-out: decrypting everything, wall time",
        started.elapsed().as_secs_f64(),
        "s",
    );
    Ok(())
}

async fn removal(
    g: &mut Group,
    p: &Params,
    committer: usize,
    r: &mut Report,
    progress: &(dyn Fn(String) + Sync),
) -> Result<()> {
    let n = g.members();
    // Targets from the middle of the tree, away from the acting members.
    let busy = |i: usize, g: &Group| {
        i <= 1 || i == committer || g.removed[i] || g.shared.own_thread[i].load(Relaxed)
    };
    let pick = |from: usize, g: &Group| -> Result<usize> {
        (from..n)
            .chain(2..from)
            .find(|&i| !busy(i, g))
            .context("no member left to remove")
    };
    let target = pick(n / 2 + 1, &*g)?;

    // The tree as creation left it.
    let change = g.removal(target, 0).await?;
    let by_creator = g.commit(0, change, false, progress).await?;
    r.add(
        "removal commit bytes, creator",
        by_creator.commit_bytes as f64,
        "B",
    );
    r.add("removal: creator builds", ms(by_creator.build), "ms");

    let change = g.removal(target, committer).await?;
    let started = Instant::now();
    let by_member = g.commit(committer, change, true, progress).await?;
    let sent = by_member.sent.clone().context("the removal was not sent")?;
    g.removed[target] = true;
    g.everyone("removal: remaining members processing it", progress)
        .await?;
    let reached = started.elapsed();
    let shared = g.shared.clone();
    shared
        .wait(
            "removal: the removed member learning it",
            || shared.epochs[target].load(Relaxed) == REMOVED,
            || "waiting".into(),
            progress,
        )
        .await?;
    let epoch = g.epoch;
    let processing: Vec<Duration> = lock(&g.shared.samples)
        .commits
        .iter()
        .filter(|(e, _)| *e == epoch)
        .map(|(_, d)| *d)
        .collect();
    progress(format!(
        "member {committer} removed member {target}: commit {} B, every remaining member has processed it after {:.1} s",
        by_member.commit_bytes,
        reached.as_secs_f64()
    ));
    r.add(
        "removal commit bytes, member of the last batch",
        by_member.commit_bytes as f64,
        "B",
    );
    r.add(
        "removal: member of the last batch builds",
        ms(by_member.build),
        "ms",
    );
    r.add("removal: SendCommit -> SendAck", ms(sent.server), "ms");
    r.add(
        "removal: devices the SendAck names",
        sent.recipients as f64,
        "",
    );
    r.add(
        "removal: sent -> every remaining member has processed it",
        reached.as_secs_f64(),
        "s",
    );
    add_times(r, "removal: processing per member", &processing);

    // Self-updates spread over the tree, then the same measurement.
    if p.updates == 0 {
        return Ok(());
    }
    let target = pick(n / 2 + 3, &*g)?;
    let leaves = g.leaves(0).await?;
    let width = leaves.iter().flatten().map(|l| l.u32()).max().unwrap_or(0) as usize + 1;
    let by_leaf: HashMap<u32, usize> = leaves
        .iter()
        .enumerate()
        .filter_map(|(i, l)| l.map(|l| (l.u32(), i)))
        .collect();
    let mut updaters = Vec::new();
    for j in 0..p.updates {
        let want = (2 * j + 1) * width / (2 * p.updates);
        // The nearest member at or after that leaf that is not already busy.
        let found = (want..width)
            .chain(0..want)
            .filter_map(|l| by_leaf.get(&(l as u32)).copied())
            .find(|&i| !busy(i, g) && i != target && !updaters.contains(&i));
        if let Some(i) = found {
            updaters.push(i);
        }
    }
    let mut update_bytes = Vec::new();
    let mut update_times = Vec::new();
    for (k, &u) in updaters.iter().enumerate() {
        g.shared.own_thread[u].store(true, Relaxed);
        let started = Instant::now();
        let out = g.commit(u, Change::default(), true, progress).await?;
        g.everyone(
            &format!(
                "update {} of {}: members processing it",
                k + 1,
                updaters.len()
            ),
            progress,
        )
        .await?;
        update_times.push(started.elapsed());
        update_bytes.push(out.commit_bytes);
        let change = g.removal(target, committer).await?;
        let after = g.commit(committer, change, false, progress).await?;
        progress(format!(
            "update {} of {} (member {u}): commit {} B, everyone had it after {:.1} s; a removal by member {committer} now {} B",
            k + 1,
            updaters.len(),
            out.commit_bytes,
            update_times[k].as_secs_f64(),
            after.commit_bytes
        ));
        r.add(
            format!(
                "removal commit bytes after {} update(s), member of the last batch",
                k + 1
            ),
            after.commit_bytes as f64,
            "B",
        );
    }
    let change = g.removal(target, 0).await?;
    let after = g.commit(0, change, false, progress).await?;
    r.add(
        format!(
            "removal commit bytes after {} update(s), creator",
            updaters.len()
        ),
        after.commit_bytes as f64,
        "B",
    );
    for (k, (bytes, time)) in update_bytes.iter().zip(&update_times).enumerate() {
        r.add(
            format!("update {}: commit bytes", k + 1),
            *bytes as f64,
            "B",
        );
        r.add(
            format!("update {}: sent -> every member has processed it", k + 1),
            time.as_secs_f64(),
            "s",
        );
    }
    Ok(())
}

/// Sender Keys next to MLS, in bytes on the wire (MLS messages only:
/// each delivery also carries an envelope, the same for both).
fn sender_keys(
    r: &mut Report,
    n: usize,
    skdm_bytes: usize,
    skdm_wire: usize,
    removal: Option<f64>,
    removal_by_creator: Option<f64>,
    remaining: usize,
) {
    let others = n - 2; // a re-keying member sends to every remaining member but itself
    r.add(
        "Sender Keys: SenderKeyDistributionMessage bytes",
        skdm_bytes as f64,
        "B",
    );
    r.add(
        "Sender Keys: as an MLS 1:1 application message",
        skdm_wire as f64,
        "B",
    );
    r.add(
        "Sender Keys: one member re-keys, (N-2) messages",
        (skdm_wire * others) as f64,
        "B",
    );
    r.add(
        "Sender Keys: every remaining member re-keys, (N-1)(N-2) messages",
        (skdm_wire * others * (n - 1)) as f64,
        "B",
    );
    // The commit goes to every other device that was a member: the N-2
    // remaining and the removed one (the server also echoes it to the
    // committer, not counted).
    for (label, bytes) in [
        ("member of the last batch", removal),
        ("creator", removal_by_creator),
    ] {
        if let Some(b) = bytes {
            r.add(
                format!("MLS removal by {label}: commit x (N-1) devices delivered"),
                b * (n - 1) as f64,
                "B",
            );
        }
    }
    r.add("members after the removal", remaining as f64, "");
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn quantile(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1e3
}

/// p50, p99 and max of some durations, in ms.
fn add_times(r: &mut Report, name: &str, times: &[Duration]) {
    let mut h = histogram();
    for t in times {
        // `micros` clamps to the histogram's range, so this cannot fail.
        let _ = h.record(micros(*t));
    }
    r.add(format!("{name}, count"), times.len() as f64, "");
    if times.is_empty() {
        return;
    }
    r.add(format!("{name}, p50"), quantile(&h, 0.5), "ms");
    r.add(format!("{name}, p99"), quantile(&h, 0.99), "ms");
    r.add(format!("{name}, max"), h.max() as f64 / 1e3, "ms");
}
