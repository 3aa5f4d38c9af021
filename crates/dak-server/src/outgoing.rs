//! A connection's outgoing queue: a bounded FIFO from its session to its
//! socket writer.
//!
//! Why not `tokio::sync::mpsc`: a bounded tokio channel allocates its first
//! block of 32 slots and its shared state up front, 1.5 KiB per channel,
//! which was a tenth of an idle authenticated connection's memory
//! (docs/BENCHMARKS.md, "connect"). This queue holds a `VecDeque` that
//! allocates nothing until something is queued, and once the writer has
//! emptied it after a burst it shrinks back to nothing (it keeps room for
//! `KEEP_CAPACITY` items, ~128 B), so an idle connection holds ~250 bytes.
//!
//! Invariants:
//! - At most `capacity` items wait; `send` waits for room (backpressure on
//!   the session), `try_send` refuses instead.
//! - Items come out in the order they went in.
//! - Once the receiver is dropped every send fails at once; once the
//!   sender is dropped the receiver gets what is left, then `None`.
//! - No wake-up is lost: each side enables its `Notified` before it looks
//!   at the queue, and every change notifies the other side.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// A capacity left after a burst above this is given back once the queue
/// is empty.
const KEEP_CAPACITY: usize = 4;

struct Queue<T> {
    items: VecDeque<T>,
    sender_gone: bool,
    receiver_gone: bool,
}

struct Shared<T> {
    queue: Mutex<Queue<T>>,
    capacity: usize,
    /// Notified when an item is queued or the sender goes.
    readable: Notify,
    /// Notified when an item is taken or the receiver goes.
    writable: Notify,
}

pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

/// Why an item was not queued; it is handed back.
#[derive(Debug)]
pub enum Refused<T> {
    Full(T),
    Closed(T),
}

pub fn channel<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue {
            items: VecDeque::new(),
            sender_gone: false,
            receiver_gone: false,
        }),
        capacity: capacity.max(1),
        readable: Notify::new(),
        writable: Notify::new(),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver { shared },
    )
}

impl<T> Shared<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue<T>> {
        // A panic while holding this lock leaves the queue consistent (every
        // critical section is a push, a pop or a flag), so poison is ignored.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<T> Sender<T> {
    /// Queues `item` if there is room and the receiver is there.
    pub fn try_send(&self, item: T) -> Result<(), Refused<T>> {
        let mut q = self.shared.lock();
        if q.receiver_gone {
            return Err(Refused::Closed(item));
        }
        if q.items.len() >= self.shared.capacity {
            return Err(Refused::Full(item));
        }
        q.items.push_back(item);
        drop(q);
        self.shared.readable.notify_one();
        Ok(())
    }

    /// Queues `item`, waiting for room; fails only once the receiver is gone.
    pub async fn send(&self, mut item: T) -> Result<(), T> {
        loop {
            let room = self.shared.writable.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.try_send(item) {
                Ok(()) => return Ok(()),
                Err(Refused::Closed(back)) => return Err(back),
                Err(Refused::Full(back)) => item = back,
            }
            room.await;
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        self.shared.lock().sender_gone = true;
        self.shared.readable.notify_one();
    }
}

impl<T> Receiver<T> {
    /// The next item if one is waiting.
    pub fn try_recv(&self) -> Option<T> {
        self.take().ok()
    }

    /// The next item, or whether the sender is gone, decided under one
    /// lock: a sender that queues its last items and goes between two
    /// looks must not have them taken for an empty queue.
    fn take(&self) -> Result<T, bool> {
        let mut q = self.shared.lock();
        match q.items.pop_front() {
            Some(item) => {
                if q.items.is_empty() && q.items.capacity() > KEEP_CAPACITY {
                    q.items = VecDeque::new();
                }
                drop(q);
                self.shared.writable.notify_one();
                Ok(item)
            }
            None => Err(q.sender_gone),
        }
    }

    /// The next item; `None` once the sender is gone and nothing is left.
    pub async fn recv(&mut self) -> Option<T> {
        loop {
            let queued = self.shared.readable.notified();
            tokio::pin!(queued);
            queued.as_mut().enable();
            match self.take() {
                Ok(item) => return Some(item),
                Err(true) => return None,
                Err(false) => queued.await,
            }
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut q = self.shared.lock();
        q.receiver_gone = true;
        q.items.clear();
        drop(q);
        self.shared.writable.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn items_come_out_in_order_and_none_after_the_sender_goes() {
        let (tx, mut rx) = channel(4);
        for i in 0..4 {
            tx.send(i).await.unwrap();
        }
        assert!(matches!(tx.try_send(9), Err(Refused::Full(9))));
        drop(tx);
        for i in 0..4 {
            assert_eq!(rx.recv().await, Some(i));
        }
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn a_full_queue_holds_the_sender_until_the_receiver_takes_one() {
        let (tx, mut rx) = channel(2);
        tx.send(1).await.unwrap();
        tx.send(2).await.unwrap();
        let waiting = tokio::spawn(async move {
            tx.send(3).await.unwrap();
            tx
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "no room: the send waits");
        assert_eq!(rx.recv().await, Some(1));
        let tx = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("room made: the send goes on")
            .unwrap();
        assert_eq!(rx.try_recv(), Some(2));
        assert_eq!(rx.try_recv(), Some(3));
        assert_eq!(rx.try_recv(), None);
        drop(tx);
    }

    #[tokio::test]
    async fn sends_fail_once_the_receiver_is_gone_even_a_waiting_one() {
        let (tx, rx) = channel(1);
        tx.send(1).await.unwrap();
        let waiting = tokio::spawn(async move { tx.send(2).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(rx);
        let result = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the waiting send is woken")
            .unwrap();
        assert_eq!(result, Err(2));
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_by_a_send_from_another_task() {
        let (tx, mut rx) = channel(8);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(i) = rx.recv().await {
                got.push(i);
            }
            got
        });
        for i in 0..1000 {
            tx.send(i).await.unwrap();
            if i % 97 == 0 {
                tokio::task::yield_now().await;
            }
        }
        drop(tx);
        let got = tokio::time::timeout(Duration::from_secs(10), reader)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn what_a_departing_sender_queued_is_received_before_the_end() {
        for _ in 0..500 {
            let (tx, mut rx) = channel(8);
            let reader = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let mut got = Vec::new();
                    while let Some(i) = rx.recv().await {
                        got.push(i);
                    }
                    got
                })
            });
            tx.try_send(1).unwrap();
            tx.try_send(2).unwrap();
            drop(tx);
            assert_eq!(reader.join().unwrap(), vec![1, 2]);
        }
    }

    #[test]
    fn the_queue_gives_its_memory_back_once_emptied() {
        let (tx, rx) = channel(64);
        for i in 0..64 {
            tx.try_send(i).unwrap();
        }
        while rx.try_recv().is_some() {}
        assert_eq!(rx.shared.lock().items.capacity(), 0);
    }
}
