//! A member of the `group` scenario: one simulated device's connection, MLS
//! state and task. The task reads the device's mailbox and processes what
//! arrives (Welcomes, commits; fan-out messages are only timed and kept),
//! and carries out the orchestrator's commands (commit, send, list members,
//! decrypt). `Shared` is what the members and the orchestrator both see.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use dak_client::Connection;
use dak_client::mls::{Incoming, MemberDevice};
use dak_proto::v1::{self, client_frame::Request, server_frame::Body};
use openmls::prelude::{KeyPackage, LeafNodeIndex};
use prost::Message;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::groups::MlsDevice;

/// `Shared::epochs` of a member that has not joined yet, and of one that
/// was removed.
pub(super) const NOT_JOINED: u64 = u64::MAX;
pub(super) const REMOVED: u64 = u64::MAX - 1;

/// The first byte of a fan-out message's id; the message's number follows
/// (4 bytes, big endian), then random bytes.
const FANOUT_TAG: u8 = 0xF0;

/// How long the group may make no progress before the bench gives up.
const STALL: Duration = Duration::from_secs(300);

// ---- What the members share with the orchestrator ----

#[derive(Default)]
pub(super) struct Samples {
    /// Processing time of each Welcome.
    pub(super) welcomes: Vec<Duration>,
    /// (epoch reached, processing time) of each commit a member processed.
    pub(super) commits: Vec<(u64, Duration)>,
    /// (message, when read) of each fan-out delivery.
    pub(super) deliveries: Vec<(u32, Duration)>,
}

pub(super) struct Shared {
    /// The instant every `Duration` timestamp counts from.
    pub(super) base: Instant,
    /// Each member's epoch (`NOT_JOINED`, `REMOVED`).
    pub(super) epochs: Vec<AtomicU64>,
    /// Members whose MLS work runs on a thread of their own.
    pub(super) own_thread: Vec<AtomicBool>,
    /// For each fan-out message, how many members have it.
    pub(super) received: Vec<AtomicUsize>,
    /// Woken on every change above, and on a failure.
    pub(super) changed: Notify,
    pub(super) failure: Mutex<Option<String>>,
    pub(super) samples: Mutex<Samples>,
    /// The threads the other members share.
    pub(super) workers: Arc<Semaphore>,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A member that panicked holding the lock leaves plain data behind.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub(super) fn epoch(&self, i: usize) -> Option<u64> {
        match self.epochs[i].load(Relaxed) {
            NOT_JOINED | REMOVED => None,
            e => Some(e),
        }
    }

    pub(super) fn fail(&self, why: String) {
        lock(&self.failure).get_or_insert(why);
        self.changed.notify_waiters();
    }

    pub(super) fn failure(&self) -> Option<String> {
        lock(&self.failure).clone()
    }

    /// Waits until `done()`, printing `status()` every two seconds; fails
    /// when a member failed or nothing changed for `STALL`.
    pub(super) async fn wait(
        &self,
        what: &str,
        done: impl Fn() -> bool,
        status: impl Fn() -> String,
        progress: &(dyn Fn(String) + Sync),
    ) -> Result<()> {
        let mut printed = Instant::now();
        let mut changed = Instant::now();
        loop {
            let notified = self.changed.notified();
            if let Some(why) = self.failure() {
                bail!("{what}: {why}");
            }
            if done() {
                return Ok(());
            }
            if tokio::time::timeout(Duration::from_millis(500), notified)
                .await
                .is_ok()
            {
                changed = Instant::now();
            }
            if printed.elapsed() >= Duration::from_secs(2) {
                progress(format!("{what}: {}", status()));
                printed = Instant::now();
            }
            if changed.elapsed() > STALL {
                bail!("{what}: nothing happened for {STALL:?} ({})", status());
            }
        }
    }
}

// ---- A member: its connection, its MLS state, its task ----

/// A change for `Command::Commit`.
#[derive(Default)]
pub(super) struct Change {
    pub(super) adds: Vec<KeyPackage>,
    pub(super) added_devices: Vec<u64>,
    pub(super) removes: Vec<LeafNodeIndex>,
    pub(super) removed_devices: Vec<u64>,
}

#[derive(Debug, Clone)]
pub(super) struct CommitOut {
    pub(super) commit_bytes: usize,
    pub(super) welcome_bytes: usize,
    /// The whole `SendCommit` frame (commit, Welcome, device ids).
    pub(super) frame_bytes: usize,
    pub(super) fits: bool,
    pub(super) build: Duration,
    pub(super) sent: Option<Sent>,
}

#[derive(Debug, Clone)]
pub(super) struct Sent {
    /// SendCommit → SendAck.
    pub(super) server: Duration,
    pub(super) merge: Duration,
    /// Devices the SendAck names (the members other than the committer).
    pub(super) recipients: usize,
}

pub(super) struct SendOut {
    pub(super) sent_at: Duration,
    pub(super) acked_at: Duration,
    pub(super) bytes: usize,
    pub(super) encrypt: Duration,
}

pub(super) enum Command {
    /// Build a commit at the member's current epoch; send it when asked
    /// and when it fits in a frame, else drop it.
    Commit {
        change: Change,
        send: bool,
        reply: oneshot::Sender<Result<CommitOut>>,
    },
    /// Encrypt and send fan-out message `index`.
    Send {
        index: u32,
        size: usize,
        reply: oneshot::Sender<Result<SendOut>>,
    },
    Members {
        reply: oneshot::Sender<Result<Vec<MemberDevice>>>,
    },
    /// Decrypt the first `count` fan-out messages received (texts of
    /// `size` bytes) and check them; their processing times.
    Decrypt {
        count: usize,
        size: usize,
        reply: oneshot::Sender<Result<Vec<Duration>>>,
    },
}

pub(super) struct Member {
    pub(super) index: usize,
    pub(super) device_id: u64,
    /// None only while a blocking task holds it.
    pub(super) mls: Option<MlsDevice>,
    pub(super) conn: Connection,
    /// Empty until joined.
    pub(super) group: Vec<u8>,
    pub(super) epoch: u64,
    /// Fan-out messages received, kept for `Command::Decrypt`.
    pub(super) fanout: Vec<(u32, Vec<u8>)>,
    pub(super) shared: Arc<Shared>,
}

impl Member {
    /// Runs `f` on the MLS state on a blocking thread: the member's own, or
    /// one of the shared workers.
    pub(super) async fn cpu<T, F>(&mut self, f: F) -> Result<T>
    where
        F: FnOnce(&MlsDevice) -> T + Send + 'static,
        T: Send + 'static,
    {
        let mls = self.mls.take().context("the MLS state is in use")?;
        let _permit = if self.shared.own_thread[self.index].load(Relaxed) {
            None
        } else {
            Some(self.shared.workers.clone().acquire_owned().await?)
        };
        let (mls, out) = tokio::task::spawn_blocking(move || {
            let out = f(&mls);
            (mls, out)
        })
        .await
        .context("an MLS task panicked")?;
        self.mls = Some(mls);
        Ok(out)
    }

    pub(super) fn set_epoch(&mut self, epoch: u64) {
        self.epoch = epoch;
        self.shared.epochs[self.index].store(epoch, Relaxed);
        self.shared.changed.notify_waiters();
    }

    pub(super) async fn run(mut self, mut commands: mpsc::Receiver<Command>) -> Result<Member> {
        loop {
            tokio::select! {
                biased;
                frame = self.conn.next_frame() => self.on_frame(frame?).await?,
                command = commands.recv() => match command {
                    Some(c) => self.on_command(c).await,
                    None => break,
                },
            }
        }
        Ok(self)
    }

    async fn on_frame(&mut self, frame: v1::ServerFrame) -> Result<()> {
        let Some(Body::Deliver(d)) = frame.body else {
            return Ok(());
        };
        let at = self.shared.base.elapsed();
        let seqs = d.envelopes.iter().map(|e| e.seq).collect();
        for e in d.envelopes {
            if e.sender_device == self.device_id {
                continue; // the echo of our own commit, merged on the ack
            }
            if let Some(k) = fanout_index(&e.message_id) {
                lock(&self.shared.samples).deliveries.push((k, at));
                if let Some(r) = self.shared.received.get(k as usize) {
                    r.fetch_add(1, Relaxed);
                }
                self.shared.changed.notify_waiters();
                self.fanout.push((k, e.body));
                continue;
            }
            self.process(e.body).await?;
        }
        self.conn
            .send(Request::AckDeliveries(v1::AckDeliveries { seqs }))
            .await?;
        Ok(())
    }

    /// A Welcome or another member's commit.
    async fn process(&mut self, body: Vec<u8>) -> Result<()> {
        let (result, took, joined_epoch) = self
            .cpu(move |m| {
                let started = Instant::now();
                let result = m.engine().process(&body);
                let took = started.elapsed();
                let epoch = match &result {
                    Ok(Incoming::Joined { group }) => Some(m.engine().epoch(group)),
                    _ => None,
                };
                (result, took, epoch)
            })
            .await?;
        let incoming = result.with_context(|| {
            format!(
                "member {} (epoch {}) cannot process a message",
                self.index, self.epoch
            )
        })?;
        match incoming {
            Incoming::Joined { group } => {
                let epoch = joined_epoch.context("no epoch after joining")??;
                self.group = group;
                lock(&self.shared.samples).welcomes.push(took);
                self.set_epoch(epoch);
            }
            Incoming::Commit { removed_me, .. } => {
                let next = self.epoch + 1;
                lock(&self.shared.samples).commits.push((next, took));
                self.set_epoch(if removed_me { REMOVED } else { next });
            }
            Incoming::OwnCommit { .. } => self.set_epoch(self.epoch + 1),
            Incoming::Application { .. } => {
                bail!(
                    "member {}: an application message outside the fan-out",
                    self.index
                )
            }
        }
        Ok(())
    }

    async fn on_command(&mut self, command: Command) {
        // The orchestrator may have stopped waiting; nothing to do then.
        match command {
            Command::Commit {
                change,
                send,
                reply,
            } => {
                let _ = reply.send(self.commit(change, send).await);
            }
            Command::Send { index, size, reply } => {
                let _ = reply.send(self.send(index, size).await);
            }
            Command::Members { reply } => {
                let group = self.group.clone();
                let members = self
                    .cpu(move |m| m.engine().members(&group))
                    .await
                    .and_then(|r| r.context("cannot list the group's members"));
                let _ = reply.send(members);
            }
            Command::Decrypt { count, size, reply } => {
                let _ = reply.send(self.decrypt(count, size).await);
            }
        }
    }

    async fn commit(&mut self, change: Change, send: bool) -> Result<CommitOut> {
        let Change {
            adds,
            added_devices,
            removes,
            removed_devices,
        } = change;
        let group = self.group.clone();
        let (built, build) = self
            .cpu({
                let group = group.clone();
                move |m| {
                    let started = Instant::now();
                    let out = m.engine().commit(&group, adds, removes);
                    (out, started.elapsed())
                }
            })
            .await?;
        let built =
            built.with_context(|| format!("member {} cannot build a commit", self.index))?;
        let request = v1::SendCommit {
            message_id: commit_id(),
            commit: built.commit,
            welcome: built.welcome.unwrap_or_default(),
            added_devices,
            removed_devices,
        };
        let frame_bytes = v1::ClientFrame {
            request_id: u64::MAX,
            request: Some(Request::SendCommit(request.clone())),
        }
        .encoded_len();
        let max_mls = dak_proto::mls::MAX_MLS_BYTES;
        let mut out = CommitOut {
            commit_bytes: request.commit.len(),
            welcome_bytes: request.welcome.len(),
            frame_bytes,
            fits: frame_bytes <= dak_proto::MAX_FRAME_BYTES
                && request.commit.len() <= max_mls
                && request.welcome.len() <= max_mls,
            build,
            sent: None,
        };
        if !send || !out.fits {
            self.cpu(move |m| m.engine().clear_pending(&group))
                .await?
                .context("cannot drop the commit")?;
            return Ok(out);
        }
        let started = Instant::now();
        let answer = self.conn.call(Request::SendCommit(request)).await;
        let server = started.elapsed();
        let ack = match answer {
            Ok(Body::SendAck(ack)) => ack,
            other => {
                let group = group.clone();
                self.cpu(move |m| m.engine().clear_pending(&group))
                    .await?
                    .context("cannot drop the refused commit")?;
                match other {
                    Err(e) => return Err(e).context("the server refused the commit"),
                    Ok(body) => bail!("unexpected answer to SendCommit: {body:?}"),
                }
            }
        };
        let (merged, merge) = self
            .cpu(move |m| {
                let started = Instant::now();
                (m.engine().merge_pending(&group), started.elapsed())
            })
            .await?;
        merged.context("cannot merge our accepted commit")?;
        self.set_epoch(self.epoch + 1);
        out.sent = Some(Sent {
            server,
            merge,
            recipients: ack.recipients.len() + ack.own_devices.len(),
        });
        Ok(out)
    }

    async fn send(&mut self, index: u32, size: usize) -> Result<SendOut> {
        let group = self.group.clone();
        let content = fanout_content(index, size);
        let (ciphertext, encrypt) = self
            .cpu(move |m| {
                let started = Instant::now();
                (m.engine().encrypt(&group, &content), started.elapsed())
            })
            .await?;
        let body = ciphertext.context("cannot encrypt")?;
        let bytes = body.len();
        let sent_at = self.shared.base.elapsed();
        let answer = self
            .conn
            .call(Request::SendMessage(v1::SendMessage {
                message_id: fanout_id(index),
                body,
                ..Default::default()
            }))
            .await
            .context("the server refused a fan-out message")?;
        let acked_at = self.shared.base.elapsed();
        let Body::SendAck(_) = answer else {
            bail!("unexpected answer to SendMessage: {answer:?}")
        };
        Ok(SendOut {
            sent_at,
            acked_at,
            bytes,
            encrypt,
        })
    }

    async fn decrypt(&mut self, count: usize, size: usize) -> Result<Vec<Duration>> {
        let mut received = std::mem::take(&mut self.fanout);
        received.truncate(count);
        let index = self.index;
        self.cpu(move |m| {
            received
                .into_iter()
                .map(|(k, body)| {
                    let started = Instant::now();
                    let incoming = m.engine().process(&body);
                    let took = started.elapsed();
                    match incoming.with_context(|| {
                        format!("member {index} cannot decrypt fan-out message {k}")
                    })? {
                        Incoming::Application { plaintext, .. }
                            if plaintext == fanout_content(k, size) =>
                        {
                            Ok(took)
                        }
                        other => Err(anyhow!(
                            "member {index}: fan-out message {k} decrypted to something else: {other:?}"
                        )),
                    }
                })
                .collect()
        })
        .await?
    }
}

/// A fan-out message's content: a text of `size` bytes whose `sent_at_ms`
/// is the message's number, so a recipient can check what it decrypted.
fn fanout_content(index: u32, size: usize) -> Vec<u8> {
    v1::Content {
        kind: Some(v1::content::Kind::Text(v1::Text {
            body: "x".repeat(size),
            sent_at_ms: i64::from(index),
            ..Default::default()
        })),
    }
    .encode_to_vec()
}

fn fanout_id(index: u32) -> Vec<u8> {
    let mut id = Vec::with_capacity(16);
    id.push(FANOUT_TAG);
    id.extend_from_slice(&index.to_be_bytes());
    id.extend_from_slice(&rand::random::<[u8; 11]>());
    id
}

/// A commit's message id (its Welcome's too): random, but never starting
/// with `FANOUT_TAG`, or its recipients would count it as a fan-out message
/// and never process it (one commit in 256 did, and the bench stalled or
/// failed with an epoch mismatch).
fn commit_id() -> Vec<u8> {
    let mut id = rand::random::<[u8; 16]>();
    if id[0] == FANOUT_TAG {
        id[0] = !FANOUT_TAG;
    }
    id.to_vec()
}

fn fanout_index(id: &[u8]) -> Option<u32> {
    if id.first() != Some(&FANOUT_TAG) {
        return None;
    }
    Some(u32::from_be_bytes(id.get(1..5)?.try_into().ok()?))
}

/// The orchestrator's side of a member's task.
pub(super) struct Handle {
    pub(super) commands: mpsc::Sender<Command>,
    pub(super) task: JoinHandle<Result<Member>>,
}

impl Handle {
    pub(super) async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<T>>) -> Command,
    ) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| anyhow!("the member's task has stopped"))?;
        answer
            .await
            .map_err(|_| anyhow!("the member's task has stopped"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_id_is_never_taken_for_a_fanout_message() {
        for _ in 0..4096 {
            assert_eq!(fanout_index(&commit_id()), None);
        }
        assert_eq!(fanout_index(&fanout_id(7)), Some(7));
    }
}
