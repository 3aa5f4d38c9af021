//! Group sends on PostgreSQL, committed together: the node-level group
//! commit (`SendBatcher`).
//!
//! A send is queued to one of a few workers, chosen by its group id, and
//! `submit` returns as soon as it is queued: that is its place in the order,
//! so a connection pipelines its sends, as on SQLite. Each worker takes
//! whatever is queued (up to `MAX_BATCH`) and runs it as one transaction:
//! one BEGIN and one COMMIT for the batch, the group locks in one statement
//! and the mailbox heads in another, instead of six round trips (the
//! commit among them) for every send.
//!
//! Invariants:
//! - **A group's writes land in the order they were queued.** Every send
//!   and commit of a group goes to the same worker (by a hash of the group
//!   id), which takes its queue in order: sends are batched up to the next
//!   commit, the commit runs alone after them, and the next round starts
//!   only after both committed. So a commit pipelined after a connection's
//!   sends to that group lands after them, as on SQLite. Writes to
//!   different groups keep no order between them: a connection's sends keep
//!   their order per group, which is per conversation.
//! - **No lock cycle.** The order is accounts, groups, heads. A batch
//!   locks its groups first, in group-id order (one `SELECT … ORDER BY
//!   group_id FOR UPDATE`), then the heads of all its recipients in device
//!   order (`lock_heads`), and only then writes. Other batches, here or on
//!   other nodes, do the same; a commit takes the accounts it brings in
//!   (shared, in account order), then its group, then heads
//!   (`commit_alone`); a change to what sends are checked against takes its
//!   accounts, then its groups in group-id order, then heads (a revoke's
//!   mailbox); enqueue, acks and expiry take heads alone. (Device and
//!   KeyPackage rows come after groups, and nothing here waits for them.)
//!   So two transactions never wait for each other in a circle. Holding
//!   heads, a batch only inserts new mailbox rows: it never waits for one.
//! - **Each send is decided as it would be alone.** The checks are the
//!   group's as of its lock: the worker's cache entry when the locked row's
//!   `(epoch, checks_version)` is the entry's, else read in one statement
//!   after the lock statement, so that its snapshot is taken after it
//!   (`send_cache`). A batch holds no commit, so a group's epoch and
//!   members do not change within it. The mailbox quota counts the sends
//!   accepted earlier in the batch. A refused send stores no envelope and does not stop the others (its
//!   recipients' heads may have been created, empty, as a lone send's
//!   rolled-back lock would not).
//! - **One send's error stays its own.** If a statement of the batch fails
//!   with a database error (a constraint, a trigger, a deadlock), the
//!   transaction is rolled back (nothing of it was written) and each send
//!   runs again in a batch of its own. If the database is unreachable or
//!   full, or the COMMIT itself fails, every send of the batch gets the
//!   error at once: for the COMMIT, whether it committed is unknown, so it
//!   is not written again.
//! - **Answers before hints.** The senders are answered after the commit,
//!   then the commit listener is told of the round's envelopes (the
//!   sender's tick does not wait behind a large group's offers).
//! - **A panic loses a round's answers, not the worker.** Its callers get an
//!   error (`unanswered`) and the worker goes on with its queue.
//! - **Bounded.** At most `QUEUE` writes (sends and commits) wait per
//!   worker, plus the round in hand (`MAX_BATCH` sends, or one commit): a
//!   send's body is at most 64 KiB and a commit's frame 256 KiB
//!   (`dak-proto`), so with four workers a node holds at most about 80 MiB
//!   of sends not yet written, more only if the queue is full of commits.
//! - **Commits are one at a time per worker.** A slow commit (a removal in
//!   a big group) or a wait for a pooled connection delays every group on
//!   its worker, as the listener's offers after a big group's send do.
//! - **Not cancelled.** A caller dropping its future after `submit` (or a
//!   `commit_group` future after it is queued) does not stop the write: it
//!   commits unanswered, and the client's resend is dropped by message id
//!   on the receiving devices (a resent commit is refused as stale).

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};

use futures_util::FutureExt;
use sqlx::Row;
use sqlx::postgres::PgPool;
use tokio::sync::{mpsc, oneshot};

use super::send_cache::SendCache;
use super::{backend, insert_envelope, lock_heads};
use crate::{
    CommitListener, CommittedEnvelope, Device, DeviceId, GroupCommit, GroupOutcome, MailboxQuota,
    NewEnvelope, Result, StoreError,
};

/// The most sends one transaction takes. Enough to fold a burst into one
/// commit; small enough that one batch's locks are held briefly.
const MAX_BATCH: usize = 64;

/// Writes (sends and commits) queued per worker before `submit` waits
/// (the node's memory for writes not yet made is bounded by this times
/// the workers).
const QUEUE: usize = 256;

/// What a worker is queued: a send, or a commit (which runs alone, after
/// the sends queued before it).
enum Job {
    Send(SendJob),
    Commit(GroupCommit, oneshot::Sender<Result<GroupOutcome>>),
}

/// One send waiting for its batch.
struct SendJob {
    group_id: Vec<u8>,
    epoch: u64,
    envelope: NewEnvelope,
    quota: MailboxQuota,
    reply: oneshot::Sender<Result<GroupOutcome>>,
}

/// What a batch decided for one of its sends.
enum Decided {
    Refused(GroupOutcome),
    Accepted(Vec<Device>),
}

pub(super) struct SendBatcher {
    queues: Vec<mpsc::Sender<Job>>,
    /// The workers' cache misses (`check_reads`).
    reads: Arc<AtomicU64>,
}

impl SendBatcher {
    /// Starts `workers` workers on the current Tokio runtime. They end when
    /// the batcher is dropped (their queues close).
    pub(super) fn start(
        pool: &PgPool,
        listener: &Arc<OnceLock<Arc<dyn CommitListener>>>,
        workers: usize,
    ) -> Self {
        let reads = Arc::new(AtomicU64::new(0));
        let queues = (0..workers.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(QUEUE);
                let cache = SendCache::new(reads.clone());
                tokio::spawn(work(pool.clone(), listener.clone(), cache, rx));
                tx
            })
            .collect();
        SendBatcher { queues, reads }
    }

    /// How many times the workers read a group's checks from PostgreSQL
    /// (their caches' misses) since the node started.
    pub(super) fn check_reads(&self) -> u64 {
        self.reads.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Queues the send; the receiver answers after its batch commits.
    pub(super) async fn submit(
        &self,
        group_id: &[u8],
        epoch: u64,
        envelope: NewEnvelope,
        quota: MailboxQuota,
    ) -> Result<oneshot::Receiver<Result<GroupOutcome>>> {
        let (reply, answer) = oneshot::channel();
        let job = SendJob {
            group_id: group_id.to_vec(),
            epoch,
            envelope,
            quota,
            reply,
        };
        self.queue(group_id)
            .send(Job::Send(job))
            .await
            .map_err(|_| stopped())?;
        Ok(answer)
    }

    /// Runs the commit on its group's worker, after the sends to that
    /// group queued before it, and waits for its answer.
    pub(super) async fn commit(&self, c: GroupCommit) -> Result<GroupOutcome> {
        let (reply, answer) = oneshot::channel();
        let queue = self.queue(&c.group_id);
        queue
            .send(Job::Commit(c, reply))
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| unanswered())?
    }

    /// The group's worker: always the same one for a group id.
    fn queue(&self, group_id: &[u8]) -> &mpsc::Sender<Job> {
        let mut hasher = DefaultHasher::new();
        group_id.hash(&mut hasher);
        &self.queues[(hasher.finish() % self.queues.len() as u64) as usize]
    }
}

/// The error for a send whose worker is gone (the runtime is shutting down).
pub(super) fn stopped() -> StoreError {
    StoreError::Unavailable("the PostgreSQL send workers have stopped".into())
}

/// The error for a send whose batch ended without answering it (a panic,
/// logged by the worker, or the runtime shutting down).
pub(super) fn unanswered() -> StoreError {
    StoreError::Backend("the write ended without an answer; see the server log".into())
}

async fn work(
    pool: PgPool,
    listener: Arc<OnceLock<Arc<dyn CommitListener>>>,
    mut cache: SendCache,
    mut queue: mpsc::Receiver<Job>,
) {
    let mut next = None;
    loop {
        let first = match next.take() {
            Some(job) => job,
            None => match queue.recv().await {
                Some(job) => job,
                None => return,
            },
        };
        // The sends queued now, up to a commit (which waits for the next
        // round, so that it lands after them) or MAX_BATCH.
        let mut sends = Vec::new();
        let mut commit = None;
        match first {
            Job::Send(job) => sends.push(job),
            Job::Commit(c, reply) => commit = Some((c, reply)),
        }
        while commit.is_none() && sends.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(Job::Send(job)) => sends.push(job),
                Ok(job @ Job::Commit(..)) => {
                    next = Some(job);
                    break;
                }
                Err(_) => break,
            }
        }
        // A panic here (a bug, or the listener's) loses this round's
        // answers (their callers get `unanswered`), not the worker.
        let round = async {
            let mut committed = if sends.is_empty() {
                Vec::new()
            } else {
                run_sends(&pool, &mut cache, sends).await
            };
            if let Some((c, reply)) = commit {
                cache.forget(&c.group_id);
                match super::commit_alone(&pool, c).await {
                    Ok((outcome, told)) => {
                        let _ = reply.send(Ok(outcome));
                        committed.extend(told);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            super::tell(&listener, || committed);
        };
        if AssertUnwindSafe(round).catch_unwind().await.is_err() {
            tracing::error!(
                "a PostgreSQL send worker's round panicked (a bug); its writes not yet answered get an error, and the worker goes on"
            );
        }
    }
}

/// Runs the sends as one batch, answers each and returns the envelopes
/// written, for the listener.
async fn run_sends(
    pool: &PgPool,
    cache: &mut SendCache,
    jobs: Vec<SendJob>,
) -> Vec<CommittedEnvelope> {
    match run_batch(pool, cache, &jobs).await {
        Ok(decided) => answer(jobs, decided),
        // A statement failed (rolled back: nothing was written) with an
        // error that may be one send's own (a constraint, a trigger, a
        // deadlock): each send again, alone. Not when the database is
        // unreachable or full: that is every send's error, answered at once.
        // If the database becomes unreachable meanwhile, the sends not yet
        // run get that error at once instead of a timeout each.
        Err(Failed::BeforeCommit(StoreError::Backend(_))) if jobs.len() > 1 => {
            let mut committed = Vec::new();
            let mut down: Option<StoreError> = None;
            for job in jobs {
                if let Some(e) = &down {
                    let _ = job.reply.send(Err(e.clone()));
                    continue;
                }
                let one = [job];
                let done = run_batch(pool, cache, &one)
                    .await
                    .map_err(Failed::into_error);
                let [job] = one;
                match done {
                    Ok(decided) => committed.extend(answer(vec![job], decided)),
                    Err(e) => {
                        if matches!(e, StoreError::Unavailable(_) | StoreError::Full) {
                            down = Some(e.clone());
                        }
                        let _ = job.reply.send(Err(e));
                    }
                }
            }
            committed
        }
        Err(failed) => {
            let e = failed.into_error();
            for job in jobs {
                let _ = job.reply.send(Err(e.clone()));
            }
            Vec::new()
        }
    }
}

/// Answers each send and returns the envelopes that were written.
fn answer(
    jobs: Vec<SendJob>,
    decided: Vec<(Decided, Vec<(DeviceId, u64)>)>,
) -> Vec<CommittedEnvelope> {
    let mut committed = Vec::new();
    for (job, (decision, placed)) in jobs.into_iter().zip(decided) {
        let outcome = match decision {
            Decided::Refused(outcome) => outcome,
            Decided::Accepted(recipients) => {
                committed.push(CommittedEnvelope {
                    envelope: Arc::new(job.envelope),
                    placed,
                });
                GroupOutcome::Accepted { recipients }
            }
        };
        let _ = job.reply.send(Ok(outcome));
    }
    committed
}

/// Where a batch failed: before COMMIT was sent (rolled back, nothing
/// written) or at it (unknown whether it committed).
enum Failed {
    BeforeCommit(StoreError),
    AtCommit(StoreError),
}

impl Failed {
    fn into_error(self) -> StoreError {
        match self {
            Failed::BeforeCommit(e) | Failed::AtCommit(e) => e,
        }
    }
}

/// Runs the sends as one transaction, in order, and commits it. Returns
/// each send's decision with the (device, seq) its envelope got, if any.
async fn run_batch(
    pool: &PgPool,
    cache: &mut SendCache,
    jobs: &[SendJob],
) -> std::result::Result<Vec<(Decided, Vec<(DeviceId, u64)>)>, Failed> {
    let mut tx = pool
        .begin()
        .await
        .map_err(|e| Failed::BeforeCommit(backend(e)))?;
    let decided = decide(&mut tx, cache, jobs)
        .await
        .map_err(Failed::BeforeCommit)?;
    tx.commit()
        .await
        .map_err(|e| Failed::AtCommit(backend(e)))?;
    Ok(decided)
}

/// Everything of a batch before its COMMIT.
async fn decide(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    cache: &mut SendCache,
    jobs: &[SendJob],
) -> Result<Vec<(Decided, Vec<(DeviceId, u64)>)>> {
    // The groups, locked in group-id order (see the module comment).
    let mut groups: Vec<Vec<u8>> = jobs.iter().map(|j| j.group_id.clone()).collect();
    groups.sort_unstable();
    groups.dedup();
    // Each group's (epoch, checks_version): the stamp its cached checks
    // must have (`send_cache`).
    let stamps: HashMap<Vec<u8>, (u64, u64)> = sqlx::query(
        "SELECT group_id, epoch, checks_version FROM mls_groups
         WHERE group_id = ANY($1) ORDER BY group_id FOR UPDATE",
    )
    .bind(&groups)
    .fetch_all(&mut **tx)
    .await
    .map_err(backend)?
    .iter()
    .map(|r| {
        (
            r.get::<Vec<u8>, _>(0),
            (r.get::<i64, _>(1) as u64, r.get::<i64, _>(2) as u64),
        )
    })
    .collect();

    // Each send checked as it would be alone, against its group as of the
    // lock: from the cache, or read once per group.
    let mut decided = Vec::with_capacity(jobs.len());
    for job in jobs {
        let Some(&stamp) = stamps.get(&job.group_id) else {
            decided.push(Decided::Refused(GroupOutcome::NoGroup));
            continue;
        };
        let checks = cache.checks(tx, &job.group_id, stamp).await?;
        decided.push(match checks.check(job.epoch, job.envelope.sender_device) {
            Ok(recipients) => Decided::Accepted(recipients),
            Err(refusal) => Decided::Refused(refusal),
        });
    }

    // Every recipient's head, locked in device order, with its usage; the
    // quota then counts what this batch adds, send by send.
    let everyone: Vec<DeviceId> = decided
        .iter()
        .filter_map(|d| match d {
            Decided::Accepted(recipients) => Some(recipients.iter().map(|r| r.id)),
            Decided::Refused(_) => None,
        })
        .flatten()
        .collect();
    let mut usage: HashMap<DeviceId, (u64, u64)> = lock_heads(tx, &everyone)
        .await?
        .into_iter()
        .map(|(device, envelopes, bytes)| (device, (envelopes, bytes)))
        .collect();
    let mut out = Vec::with_capacity(jobs.len());
    for (job, decision) in jobs.iter().zip(decided) {
        let Decided::Accepted(recipients) = decision else {
            out.push((decision, Vec::new()));
            continue;
        };
        let body_len = job.envelope.body.len() as u64;
        let mut ids: Vec<DeviceId> = recipients.iter().map(|d| d.id).collect();
        ids.sort_unstable();
        // The first full mailbox in device order, as a lone send reports it.
        let full = ids.iter().find(|id| {
            let (envelopes, bytes) = usage.get(id).copied().unwrap_or_default();
            !job.quota.has_room(envelopes, bytes, body_len)
        });
        if let Some(&device) = full {
            out.push((
                Decided::Refused(GroupOutcome::MailboxFull { device }),
                Vec::new(),
            ));
            continue;
        }
        for id in &ids {
            let (envelopes, bytes) = usage.entry(*id).or_default();
            *envelopes += 1;
            *bytes += body_len;
        }
        let placed = insert_envelope(&mut **tx, &job.envelope, &ids).await?;
        out.push((Decided::Accepted(recipients), placed));
    }
    Ok(out)
}
