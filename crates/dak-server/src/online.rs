//! Which connections each device holds on this node, so that one device
//! cannot pile up connections (each pins a window of envelopes and a
//! WebSocket's buffers): at most `max_connections_per_device`, and a new
//! connection replaces the oldest, which is told why and closed.
//!
//! It is also where the store's commit listener finds a device's
//! connections (the fast path): each connection has an `Inbox` of the
//! envelopes committed for its device since it joined.
//!
//! Invariant: an entry lives exactly as long as its `OnlineSlot`; the map
//! holds no device with no slot.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use dak_store::{CommitListener, CommittedEnvelope};
use tokio::sync::Notify;

use crate::inbox::Inbox;

/// One device's connection on this node.
struct Connection {
    id: u64,
    replaced: Arc<Notify>,
    inbox: Arc<Inbox>,
}

/// One device's connections, oldest first.
type Connections = VecDeque<Connection>;

#[derive(Default)]
pub struct Online {
    next: AtomicU64,
    devices: Mutex<HashMap<u64, Connections>>,
}

/// A connection's place in `Online`; dropping it frees the place.
pub struct OnlineSlot {
    online: Arc<Online>,
    device: u64,
    id: u64,
    /// Notified when a newer connection of the same device replaces this one.
    pub replaced: Arc<Notify>,
    /// Envelopes committed for the device since this slot joined.
    pub inbox: Arc<Inbox>,
}

impl Online {
    /// Registers a connection of `device`, replacing the oldest ones beyond `max`.
    pub fn join(self: &Arc<Self>, device: u64, max: usize) -> OnlineSlot {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let replaced = Arc::new(Notify::new());
        let inbox = Arc::new(Inbox::default());
        if let Ok(mut devices) = self.devices.lock() {
            let conns = devices.entry(device).or_default();
            conns.push_back(Connection {
                id,
                replaced: replaced.clone(),
                inbox: inbox.clone(),
            });
            while conns.len() > max.max(1) {
                if let Some(old) = conns.pop_front() {
                    // notify_one stores a permit, so a session that is busy
                    // right now still sees it at its next wait.
                    old.replaced.notify_one();
                }
            }
        }
        OnlineSlot {
            online: self.clone(),
            device,
            id,
            replaced,
            inbox,
        }
    }

    pub fn connections(&self, device: u64) -> usize {
        self.devices
            .lock()
            .map(|d| d.get(&device).map_or(0, Connections::len))
            .unwrap_or(0)
    }
}

impl CommitListener for Online {
    /// Offers each envelope to every connection of its devices on this
    /// node; devices with none here read their mailbox when they connect.
    fn committed(&self, envelopes: &[CommittedEnvelope]) {
        let Ok(devices) = self.devices.lock() else {
            return;
        };
        for e in envelopes {
            for (device, seq) in &e.placed {
                if let Some(conns) = devices.get(device) {
                    for c in conns {
                        c.inbox.offer(*seq, &e.envelope);
                    }
                }
            }
        }
    }
}

impl Drop for OnlineSlot {
    fn drop(&mut self) {
        if let Ok(mut devices) = self.online.devices.lock()
            && let Some(conns) = devices.get_mut(&self.device)
        {
            conns.retain(|c| c.id != self.id);
            if conns.is_empty() {
                devices.remove(&self.device);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_new_connection_replaces_the_oldest_beyond_the_cap() {
        let online = Arc::new(Online::default());
        let first = online.join(7, 2);
        let second = online.join(7, 2);
        let _other = online.join(8, 2);
        assert_eq!(online.connections(7), 2);
        let third = online.join(7, 2);
        assert_eq!(online.connections(7), 2);
        // The first was told (the permit waits for it); the second was not.
        tokio::time::timeout(std::time::Duration::from_secs(1), first.replaced.notified())
            .await
            .expect("the oldest is replaced");
        drop(first);
        assert_eq!(
            online.connections(7),
            2,
            "a replaced slot's drop removes nothing else"
        );
        drop((second, third));
        assert_eq!(online.connections(7), 0);
        assert_eq!(online.connections(8), 1);
    }
}
