//! Group sends on PostgreSQL, committed together: the node-level group
//! commit (`SendBatcher`).
//!
//! A send is queued to one of a few workers, chosen by its group id, and
//! `submit` returns as soon as it is queued: that is its place in the order,
//! so a connection pipelines its sends, as on SQLite. Each worker takes
//! whatever is queued (up to `MAX_BATCH`) and runs it as one transaction:
//! one BEGIN and one COMMIT for the batch, the group locks in one statement
//! and the mailbox heads in another, instead of six round trips and a
//! commit for every send.
//!
//! Invariants:
//! - **A group's sends commit in the order they were submitted.** Every send
//!   of a group goes to the same worker, which takes its queue in order,
//!   runs a batch's sends in that order and starts the next batch only after
//!   this one committed. Sends to different groups keep no order between
//!   them (none is promised).
//! - **No lock cycle.** A batch locks its groups first, in group-id order
//!   (one `SELECT … ORDER BY group_id FOR UPDATE`), then the heads of all its
//!   recipients in device order (`lock_heads`), and only then writes. Other
//!   batches, here or on other nodes, do the same, and every other writer
//!   takes a group before heads (`commit_group`) or heads alone (`enqueue`,
//!   acks), so two transactions never wait for each other in a circle.
//! - **Each send is decided as it would be alone.** The checks run under the
//!   group's lock (`send_checks`, one statement per group and sender, after
//!   the lock statement so that its snapshot is taken after it). A batch
//!   holds no commit, so a group's epoch and members do not change within
//!   it. The mailbox quota counts the sends accepted earlier in the batch. A
//!   refused send writes nothing and does not stop the others.
//! - **One send's error stays its own.** If a statement of the batch fails,
//!   the transaction is rolled back (nothing of it was written) and each
//!   send runs again in a batch of its own. If the COMMIT itself fails,
//!   every send of the batch gets the error, as a lone send would: whether
//!   it committed is unknown, so it is not written again.
//! - **Answers before hints.** The senders are answered after the commit,
//!   then the commit listener is told of the batch's envelopes (the sender's
//!   tick does not wait behind a large group's offers).

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, OnceLock};

use sqlx::Row;
use sqlx::postgres::PgPool;
use tokio::sync::{mpsc, oneshot};

use super::{backend, insert_envelope, lock_heads, send_checks};
use crate::{
    AccountId, CommitListener, CommittedEnvelope, Device, DeviceId, GroupOutcome, MailboxQuota,
    NewEnvelope, Result, StoreError, group_rules,
};

/// The most sends one transaction takes. Enough to fold a burst into one
/// commit; small enough that one batch's locks are held briefly.
const MAX_BATCH: usize = 64;

/// Sends queued per worker before `submit` waits (the node's memory for
/// sends not yet written is bounded by this times the workers).
const QUEUE: usize = 256;

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
    queues: Vec<mpsc::Sender<SendJob>>,
}

impl SendBatcher {
    /// Starts `workers` workers on the current Tokio runtime. They end when
    /// the batcher is dropped (their queues close).
    pub(super) fn start(
        pool: &PgPool,
        listener: &Arc<OnceLock<Arc<dyn CommitListener>>>,
        workers: usize,
    ) -> Self {
        let queues = (0..workers.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(QUEUE);
                tokio::spawn(work(pool.clone(), listener.clone(), rx));
                tx
            })
            .collect();
        SendBatcher { queues }
    }

    /// Queues the send; the receiver answers after its batch commits.
    pub(super) async fn submit(
        &self,
        group_id: &[u8],
        epoch: u64,
        envelope: NewEnvelope,
        quota: MailboxQuota,
    ) -> Result<oneshot::Receiver<Result<GroupOutcome>>> {
        let mut hasher = DefaultHasher::new();
        group_id.hash(&mut hasher);
        let queue = &self.queues[(hasher.finish() % self.queues.len() as u64) as usize];
        let (reply, answer) = oneshot::channel();
        let job = SendJob {
            group_id: group_id.to_vec(),
            epoch,
            envelope,
            quota,
            reply,
        };
        queue.send(job).await.map_err(|_| stopped())?;
        Ok(answer)
    }
}

/// The error for a send whose worker is gone (the runtime is shutting down).
pub(super) fn stopped() -> StoreError {
    StoreError::Unavailable("the PostgreSQL send workers have stopped".into())
}

async fn work(
    pool: PgPool,
    listener: Arc<OnceLock<Arc<dyn CommitListener>>>,
    mut queue: mpsc::Receiver<SendJob>,
) {
    while let Some(first) = queue.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let committed = match run_batch(&pool, &jobs).await {
            Ok(decided) => answer(jobs, decided),
            Err(Failed::BeforeCommit(_)) if jobs.len() > 1 => {
                // Rolled back: nothing was written. Each send alone.
                let mut committed = Vec::new();
                for job in jobs {
                    let one = [job];
                    let done = run_batch(&pool, &one).await.map_err(Failed::into_error);
                    let [job] = one;
                    match done {
                        Ok(decided) => committed.extend(answer(vec![job], decided)),
                        Err(e) => {
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
        };
        if let (Some(listener), false) = (listener.get(), committed.is_empty()) {
            listener.committed(&committed);
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
    jobs: &[SendJob],
) -> std::result::Result<Vec<(Decided, Vec<(DeviceId, u64)>)>, Failed> {
    let mut tx = pool
        .begin()
        .await
        .map_err(|e| Failed::BeforeCommit(backend(e)))?;
    let decided = decide(&mut tx, jobs).await.map_err(Failed::BeforeCommit)?;
    tx.commit()
        .await
        .map_err(|e| Failed::AtCommit(backend(e)))?;
    Ok(decided)
}

/// Everything of a batch before its COMMIT.
async fn decide(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    jobs: &[SendJob],
) -> Result<Vec<(Decided, Vec<(DeviceId, u64)>)>> {
    // The groups, locked in group-id order (see the module comment).
    let mut groups: Vec<Vec<u8>> = jobs.iter().map(|j| j.group_id.clone()).collect();
    groups.sort_unstable();
    groups.dedup();
    let epochs: HashMap<Vec<u8>, u64> = sqlx::query(
        "SELECT group_id, epoch FROM mls_groups WHERE group_id = ANY($1) ORDER BY group_id FOR UPDATE",
    )
    .bind(&groups)
    .fetch_all(&mut **tx)
    .await
    .map_err(backend)?
    .iter()
    .map(|r| (r.get::<Vec<u8>, _>(0), r.get::<i64, _>(1) as u64))
    .collect();

    // Each send checked as it would be alone; one read per group and sender.
    type Checks = (Vec<Device>, Vec<DeviceId>, Vec<AccountId>);
    let mut checks: HashMap<(&[u8], DeviceId), Checks> = HashMap::new();
    let mut decided = Vec::with_capacity(jobs.len());
    for job in jobs {
        let sender = job.envelope.sender_device;
        let Some(&current) = epochs.get(&job.group_id) else {
            decided.push(Decided::Refused(GroupOutcome::NoGroup));
            continue;
        };
        let key = (job.group_id.as_slice(), sender);
        if !checks.contains_key(&key) {
            let read = send_checks(tx, &job.group_id, sender).await?;
            checks.insert(key, read);
        }
        let (members, ready, blockers) = &checks[&key];
        if let Some(refusal) = group_rules::check_send(current, job.epoch, sender, members, ready) {
            decided.push(Decided::Refused(refusal));
            continue;
        }
        let recipients = group_rules::without_blockers(
            members.iter().filter(|d| d.id != sender).cloned().collect(),
            blockers,
        );
        decided.push(Decided::Accepted(recipients));
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
