//! The fast path's hand-over: envelopes the store has committed for a
//! device, given to that device's connections on this node in memory, so a
//! session that is caught up pushes them without reading them back.
//!
//! Invariants:
//! - Hints arrive as the store's `HintOrder` says: on SQLite in commit
//!   order, so per device in ascending seq order; on PostgreSQL in any
//!   order, with each device's seqs contiguous. `pushable` is the one place
//!   that decides what a session may push of them, for either order.
//! - An inbox never holds more than `INBOX_CAP` hints. One more and the
//!   inbox drops them all and is marked lagged: its session must then read
//!   its mailbox from the store (still the truth) before trusting a hint
//!   again. So a slow session costs bounded memory and loses nothing.
//! - Every offer notifies (a stored permit): a session never misses that
//!   there is something to take.

use std::sync::{Arc, Mutex};

use dak_store::{HintOrder, NewEnvelope};
use tokio::sync::Notify;

/// Hints one connection may have waiting. Above the session's refill point
/// (half its window): a session behind by more reads the store anyway.
pub const INBOX_CAP: usize = 2048;

/// One committed envelope for this connection's device.
pub struct Hint {
    pub seq: u64,
    pub envelope: Arc<NewEnvelope>,
}

#[derive(Default)]
struct Waiting {
    hints: Vec<Hint>,
    lagged: bool,
}

/// A connection's queue of hints.
#[derive(Default)]
pub struct Inbox {
    waiting: Mutex<Waiting>,
    /// Notified after each offer.
    pub ready: Notify,
}

/// What a session takes from its inbox.
pub struct Taken {
    pub hints: Vec<Hint>,
    /// Hints were dropped since the last take: read the store.
    pub lagged: bool,
}

/// Of `hints` (as taken, in the order they came), those a synced session
/// that has pushed through `pushed_to`, with `room` left in its window,
/// may push now, in seq order; and whether it stopped early (the window
/// is full, or with contiguous seqs one is missing or late), after which
/// the session must read the store instead (it has them all).
///
/// Hints at or below `pushed_to` were pushed already (a read got them)
/// and are skipped. With `HintOrder::ContiguousSeqs` only `pushed_to + 1`,
/// then the one after it, and so on, may be pushed: a higher one proves
/// nothing about those between.
pub fn pushable(
    hints: Vec<Hint>,
    pushed_to: u64,
    room: usize,
    order: HintOrder,
) -> (Vec<Hint>, bool) {
    let mut out = Vec::new();
    let mut last = pushed_to;
    for hint in hints {
        if hint.seq <= last {
            continue;
        }
        let next_expected = order == HintOrder::CommitOrder || hint.seq == last + 1;
        if !next_expected || out.len() == room {
            return (out, true);
        }
        last = hint.seq;
        out.push(hint);
    }
    (out, false)
}

impl Inbox {
    /// Queues one hint (never blocks: the store's writer calls this).
    pub fn offer(&self, seq: u64, envelope: &Arc<NewEnvelope>) {
        if let Ok(mut w) = self.waiting.lock()
            && !w.lagged
        {
            if w.hints.len() >= INBOX_CAP {
                w.lagged = true;
                w.hints = Vec::new();
            } else {
                w.hints.push(Hint {
                    seq,
                    envelope: envelope.clone(),
                });
            }
        }
        self.ready.notify_one();
    }

    /// Everything waiting, and whether some was dropped; empties the inbox.
    pub fn take(&self) -> Taken {
        match self.waiting.lock() {
            Ok(mut w) => Taken {
                hints: std::mem::take(&mut w.hints),
                lagged: std::mem::take(&mut w.lagged),
            },
            // A poisoned lock: treat as lagged, so the store is read.
            Err(_) => Taken {
                hints: Vec::new(),
                lagged: true,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope() -> Arc<NewEnvelope> {
        Arc::new(NewEnvelope {
            message_id: vec![1; 16],
            sender_phone: "+919800000001".into(),
            sender_device: 1,
            server_time_ms: 0,
            expires_ms: 0,
            body: vec![7; 8],
        })
    }

    #[tokio::test]
    async fn hints_come_out_in_order_and_wake_the_taker() {
        let inbox = Inbox::default();
        let e = envelope();
        inbox.offer(3, &e);
        inbox.offer(9, &e);
        tokio::time::timeout(std::time::Duration::from_secs(1), inbox.ready.notified())
            .await
            .expect("an offer leaves a permit");
        let taken = inbox.take();
        assert!(!taken.lagged);
        assert_eq!(
            taken.hints.iter().map(|h| h.seq).collect::<Vec<_>>(),
            [3, 9]
        );
        assert!(inbox.take().hints.is_empty());
    }

    fn hints(seqs: &[u64]) -> Vec<Hint> {
        let e = envelope();
        seqs.iter()
            .map(|&seq| Hint {
                seq,
                envelope: e.clone(),
            })
            .collect()
    }

    fn seqs(h: &[Hint]) -> Vec<u64> {
        h.iter().map(|h| h.seq).collect()
    }

    #[test]
    fn in_commit_order_every_hint_above_what_was_pushed_goes_until_the_window_is_full() {
        let (out, stopped) = pushable(hints(&[4, 5, 9, 12]), 5, 10, HintOrder::CommitOrder);
        assert_eq!((seqs(&out), stopped), (vec![9, 12], false));
        let (out, stopped) = pushable(hints(&[9, 12, 13]), 5, 2, HintOrder::CommitOrder);
        assert_eq!((seqs(&out), stopped), (vec![9, 12], true));
    }

    #[test]
    fn with_contiguous_seqs_a_gap_stops_the_push_and_late_hints_are_skipped() {
        let c = HintOrder::ContiguousSeqs;
        // In order: all of them.
        let (out, stopped) = pushable(hints(&[6, 7, 8]), 5, 10, c);
        assert_eq!((seqs(&out), stopped), (vec![6, 7, 8], false));
        // 7 came before 6 (two commits' hints raced): nothing after the
        // gap, and the store is read.
        let (out, stopped) = pushable(hints(&[7, 6]), 5, 10, c);
        assert_eq!((seqs(&out), stopped), (vec![], true));
        // 6 is pushed, 8 skips 7 (another node's, or late): stop at it.
        let (out, stopped) = pushable(hints(&[6, 8, 7]), 5, 10, c);
        assert_eq!((seqs(&out), stopped), (vec![6], true));
        // The late one, after a read pushed through 8: skipped.
        let (out, stopped) = pushable(hints(&[7, 9]), 8, 10, c);
        assert_eq!((seqs(&out), stopped), (vec![9], false));
        // A first hint after a read that found the mailbox empty: the
        // session cannot know it is next, so it reads.
        let (out, stopped) = pushable(hints(&[41]), 0, 10, c);
        assert_eq!((seqs(&out), stopped), (vec![], true));
        // The window fills.
        let (out, stopped) = pushable(hints(&[6, 7, 8]), 5, 2, c);
        assert_eq!((seqs(&out), stopped), (vec![6, 7], true));
    }

    #[test]
    fn an_overfull_inbox_drops_everything_and_says_so_until_taken() {
        let inbox = Inbox::default();
        let e = envelope();
        for seq in 0..INBOX_CAP as u64 + 5 {
            inbox.offer(seq, &e);
        }
        let taken = inbox.take();
        assert!(taken.lagged, "the session must read the store");
        assert!(taken.hints.is_empty(), "no hint after a gap may be trusted");
        inbox.offer(7, &e);
        let again = inbox.take();
        assert!(!again.lagged);
        assert_eq!(again.hints.len(), 1);
    }
}
