//! Acks in the embedded store: a per-device "acked through" mark, and the
//! rows under it deleted later, off the ack's path.
//!
//! SQLite deletes a mailbox row in 6–8 µs (the table and its three indexes
//! each give back a b-tree entry), whatever the batch: that set a full
//! mailbox's drain at ~125,000 msg/s (docs/BENCHMARKS.md, "offline"). So an
//! ack that covers every envelope of the device from its mark up to some
//! seq only moves the mark there and takes those envelopes out of the
//! device's usage, in one `UPDATE`; the writer deletes the rows under the
//! mark when it has nothing else to do (`sweep`), a chunk at a time.
//!
//! Invariants:
//! - `mailbox_usage.acked_through` only grows, and only to the seq of one
//!   of the device's rows: never past the newest envelope, so an envelope
//!   enqueued later (a higher seq: one writer, `AUTOINCREMENT`) is always
//!   above it. A client acking a seq it was never given moves nothing.
//! - Every row of the device at or under the mark was acked, counts in no
//!   usage, and is invisible: `fetch_mailbox` and `mailbox_len` read above
//!   the mark (`ABOVE_MARK`), and `expire` counts none of them out: it
//!   sweeps them (up to `EXPIRE_SWEEP`) and its expiry skips the rest.
//! - `swept_through <= acked_through`; rows at or under `swept_through` are
//!   gone. Devices with rows left to sweep are in the partial index
//!   `mailbox_usage_unswept`, so finding them reads nothing else.
//! - An ack that leaves a gap (an envelope under its highest seq not acked)
//!   deletes its rows at once, as before the mark.

use rusqlite::{Connection, OptionalExtension, params};

use super::{backend, json_ids, uncount_usage};
use crate::{DeviceId, Result};

/// Rows the writer deletes in one idle sweep: a send queued behind it waits
/// at most this many deletes and one commit (~4 ms here).
pub(super) const SWEEP_CHUNK: usize = 512;
/// Acks of fewer seqs delete at once, as before the mark. Those are an
/// online device's (one every 10 ms or so, a few envelopes each): moving
/// the mark for them and sweeping later would cost the writer more than
/// the delete (more statements, and a sweep's own commit), and the writer
/// is what a busy server waits on. A draining device's acks are thousands
/// of seqs (`ACK_PENDING` in the session). Reasoned, not measured apart:
/// docs/BENCHMARKS.md ("Acks move a mark") has the builds measured.
pub(super) const ACK_MARK_MIN: usize = 256;
/// Rows marked and not yet swept that a busy writer lets wait (~30 MB of
/// 470-byte rows): past it, the excess is swept in each batch's commit, so
/// a writer that never idles pays the deletes as it did before the mark.
pub(super) const SWEEP_BACKLOG: u64 = 65_536;
/// Most rows a busy writer sweeps in one batch's commit (~15 ms here, what
/// a draining device's ack of 2,048 deleted before the mark).
pub(super) const SWEEP_BUSY: usize = 2_048;
/// Rows `expire` sweeps before it looks for expired envelopes (so the
/// shared bodies of what was acked can go), bounding its job like the rest.
pub(super) const EXPIRE_SWEEP: usize = 65_536;

/// What the writer knows of the rows waiting under marks.
#[derive(Default)]
pub(super) struct Backlog {
    /// Rows may be waiting: set at open (rows left by the last run) and by
    /// every ack that moves a mark; cleared by a sweep that finds none.
    pub pending: bool,
    /// Rows marked by this run and not yet swept (an estimate: a batch
    /// that failed to commit counted its marks too, `expire`'s sweep is
    /// not subtracted, and a sweep of rows an earlier run left is; a sweep
    /// that finds nothing left sets it to 0).
    pub rows: u64,
}

impl Backlog {
    fn marked(&mut self, rows: usize) {
        self.pending = true;
        self.rows += rows as u64;
    }

    /// Rows a busy writer sweeps in its next batch: the excess over
    /// `SWEEP_BACKLOG`, at most `SWEEP_BUSY` (a backlog left by an overload
    /// is swept over many batches, not all in the first after it).
    pub fn excess(&self) -> Option<usize> {
        (self.pending && self.rows > SWEEP_BACKLOG)
            .then(|| ((self.rows - SWEEP_BACKLOG) as usize).min(SWEEP_BUSY))
    }

    /// Sweeps up to `budget` rows in a transaction of its own (the idle
    /// writer, between batches).
    pub fn sweep_alone(&mut self, conn: &Connection, budget: usize) {
        let swept = conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(backend)
            .and_then(|()| sweep(conn, budget))
            .and_then(|done| conn.execute_batch("COMMIT").map_err(backend).map(|()| done));
        if swept.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        self.swept(swept);
    }

    /// Takes in what a sweep did. An error is logged and ends the sweeping
    /// until the next ack that moves a mark (or the next open): the rows
    /// stay hidden meanwhile, and `expire` sweeps up to `EXPIRE_SWEEP`.
    pub fn swept(&mut self, swept: Result<Swept>) {
        match swept {
            Ok(Swept { rows, more }) => {
                self.rows = if more {
                    self.rows.saturating_sub(rows)
                } else {
                    0
                };
                self.pending = more;
            }
            Err(e) => {
                tracing::warn!(error = %e, "sqlite: sweeping acked envelopes failed");
                self.pending = false;
            }
        }
    }
}

/// What one `sweep` did.
pub(super) struct Swept {
    pub rows: u64,
    /// Rows are left under marks.
    pub more: bool,
}

/// The acked-through mark of the device `$device` names (an SQL
/// expression), 0 where it has none: a read of its mailbox takes
/// `seq > acked_through!(...)`, past the rows acked and waiting for the
/// sweep.
macro_rules! acked_through {
    ($device:literal) => {
        concat!(
            "COALESCE((SELECT acked_through FROM mailbox_usage u WHERE u.device_id = ",
            $device,
            "), 0)"
        )
    };
}
pub(super) use acked_through;

/// `acked_through!` for a read whose device is `?1`.
pub(crate) const ABOVE_MARK: &str = acked_through!("?1");

/// Adds the marks to `mailbox_usage` (a store from before them has none:
/// every mark starts at 0, which hides nothing).
/// In one transaction, so a crash leaves both columns or neither.
pub(super) fn add_ack_marks(conn: &Connection) -> Result<()> {
    if super::has_column(conn, "mailbox_usage", "acked_through")? {
        return Ok(());
    }
    conn.execute_batch(
        "BEGIN IMMEDIATE;
         ALTER TABLE mailbox_usage ADD COLUMN acked_through INTEGER NOT NULL DEFAULT 0;
         ALTER TABLE mailbox_usage ADD COLUMN swept_through INTEGER NOT NULL DEFAULT 0;
         CREATE INDEX mailbox_usage_unswept ON mailbox_usage(device_id)
             WHERE acked_through > swept_through;
         COMMIT;",
    )
    .map_err(|e| {
        let _ = conn.execute_batch("ROLLBACK");
        backend(e)
    })
}

/// Takes the acked envelopes out of the device's mailbox: by moving its
/// mark when they are at least `mark_min` and cover everything from the
/// mark up to their highest seq (the rows then wait in `backlog`), else by
/// deleting them. Returns how many went.
///
/// Its cost is bounded by what the client names, not by what it leaves
/// unacked: the range is read once, at most one row more than were named.
pub(super) fn ack(
    conn: &Connection,
    backlog: &mut Backlog,
    device: DeviceId,
    seqs: &[u64],
    mark_min: usize,
) -> Result<usize> {
    let mark: i64 = conn
        .prepare_cached("SELECT acked_through FROM mailbox_usage WHERE device_id = ?1")
        .and_then(|mut st| {
            st.query_row([device as i64], |r| r.get(0))
                .optional()
                .map(Option::unwrap_or_default)
        })
        .map_err(backend)?;
    // At or under the mark: acked before. Past i64: no seq is.
    let mut fresh: Vec<u64> = seqs
        .iter()
        .copied()
        .filter(|&s| s > mark as u64 && s <= i64::MAX as u64)
        .collect();
    fresh.sort_unstable();
    fresh.dedup();
    let Some(&top) = fresh.last() else {
        return Ok(0);
    };
    let ids = json_ids(&fresh);
    if fresh.len() >= mark_min
        && let Some(envelopes) = mark_through(conn, device, mark, top, &ids, fresh.len())?
    {
        backlog.marked(envelopes);
        return Ok(envelopes);
    }
    // Few, or a gap: delete what was named, counted once for the batch (see
    // `create_mailbox_usage`).
    let (mut envelopes, mut bytes) = (0i64, 0i64);
    let mut delete = conn
        .prepare_cached(
            "DELETE FROM mailbox WHERE device_id = ?1 AND seq IN (SELECT value FROM json_each(?2))
             RETURNING length(body) + shared_len",
        )
        .map_err(backend)?;
    let mut deleted = delete.query(params![device as i64, ids]).map_err(backend)?;
    while let Some(row) = deleted.next().map_err(backend)? {
        envelopes += 1;
        bytes += row.get::<_, i64>(0).map_err(backend)?;
    }
    drop(deleted);
    uncount_usage(conn, device, envelopes, bytes)?;
    Ok(envelopes as usize)
}

/// Moves the device's mark to its newest row at or under `top` if every
/// one of its rows past `mark` up to there is named in `ids`, taking them
/// out of its usage. Returns how many rows it covered, or None (a gap).
fn mark_through(
    conn: &Connection,
    device: DeviceId,
    mark: i64,
    top: u64,
    ids: &str,
    named_count: usize,
) -> Result<Option<usize>> {
    // The first `named_count + 1` rows at most (more rows than were named
    // is a gap, and so is an oldest row not named): how many, how many
    // named, their bytes, the newest. One pass: a drain's ack reads each
    // row once.
    let (rows, named, bytes, newest): (i64, i64, i64, Option<i64>) = conn
        .prepare_cached(
            "SELECT COUNT(*), COALESCE(SUM(seq IN (SELECT value FROM json_each(?4))), 0),
                    COALESCE(SUM(len), 0), MAX(seq)
             FROM (SELECT seq, length(body) + shared_len AS len FROM mailbox
                   WHERE device_id = ?1 AND seq > ?2 AND seq <= ?3 ORDER BY seq LIMIT ?5)",
        )
        .and_then(|mut st| {
            st.query_row(
                params![device as i64, mark, top as i64, ids, named_count as i64 + 1],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
        })
        .map_err(backend)?;
    let Some(newest) = newest.filter(|_| rows == named) else {
        return Ok(None);
    };
    conn.prepare_cached(
        "UPDATE mailbox_usage SET acked_through = ?2, envelopes = envelopes - ?3, bytes = bytes - ?4
         WHERE device_id = ?1",
    )
    .and_then(|mut st| st.execute(params![device as i64, newest, rows, bytes]))
    .map_err(backend)?;
    Ok(Some(rows as usize))
}

/// Deletes up to `budget` rows under devices' marks, in the caller's
/// transaction.
pub(super) fn sweep(conn: &Connection, budget: usize) -> Result<Swept> {
    let mut left = budget;
    let mut rows = 0u64;
    loop {
        let pending: Option<(i64, i64, i64)> = conn
            .prepare_cached(
                "SELECT device_id, swept_through, acked_through FROM mailbox_usage
                 WHERE acked_through > swept_through LIMIT 1",
            )
            .and_then(|mut st| {
                st.query_row([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .optional()
            })
            .map_err(backend)?;
        let Some((device, swept, acked)) = pending else {
            return Ok(Swept { rows, more: false });
        };
        if left == 0 {
            return Ok(Swept { rows, more: true });
        }
        // The chunk ends at the `left`-th row past what was swept, or at
        // the mark.
        let upper = conn
            .prepare_cached(
                "SELECT seq FROM mailbox WHERE device_id = ?1 AND seq > ?2 AND seq <= ?3
                 ORDER BY seq LIMIT 1 OFFSET ?4",
            )
            .and_then(|mut st| {
                st.query_row(params![device, swept, acked, (left - 1) as i64], |r| {
                    r.get(0)
                })
                .optional()
            })
            .map_err(backend)?
            .unwrap_or(acked);
        let deleted = conn
            .prepare_cached("DELETE FROM mailbox WHERE device_id = ?1 AND seq > ?2 AND seq <= ?3")
            .and_then(|mut st| st.execute(params![device, swept, upper]))
            .map_err(backend)?;
        conn.prepare_cached("UPDATE mailbox_usage SET swept_through = ?2 WHERE device_id = ?1")
            .and_then(|mut st| st.execute(params![device, upper]))
            .map_err(backend)?;
        rows += deleted as u64;
        left = left.saturating_sub(deleted.max(1));
    }
}
