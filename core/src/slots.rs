//! Connection slots for the small HTTP servers that face the network: a sidecar's probe and
//! admin ports, the control plane's metrics, API and webhook ports. At most `max` connections
//! are held; a new one beyond takes the place of the oldest, which is closed. What a server
//! holds stays bounded, and a client that keeps many connections busy cannot lock others out
//! (the kubelet's probes open a new connection each time, so they always get in).

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use tokio::sync::Notify;

/// One server's slots.
#[derive(Debug)]
pub struct Slots {
    max: usize,
    held: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    next: u64,
    /// Oldest first: each connection's id and what tells it to close.
    open: VecDeque<(u64, Arc<Notify>)>,
}

/// A connection's slot, given back when dropped.
#[derive(Debug)]
pub struct Slot {
    id: u64,
    evicted: Arc<Notify>,
    slots: Arc<Slots>,
}

impl Slots {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Slots {
            max: max.max(1),
            held: Mutex::default(),
        })
    }

    /// A slot for a new connection; at the limit, the oldest connection is told to close.
    pub fn take(self: &Arc<Self>) -> Slot {
        let mut held = self.held.lock().expect("slots lock");
        if held.open.len() >= self.max
            && let Some((_, oldest)) = held.open.pop_front()
        {
            oldest.notify_one();
        }
        let id = held.next;
        held.next += 1;
        let evicted = Arc::new(Notify::new());
        held.open.push_back((id, evicted.clone()));
        Slot {
            id,
            evicted,
            slots: self.clone(),
        }
    }

    /// Connections held now.
    pub fn held(&self) -> usize {
        self.held.lock().expect("slots lock").open.len()
    }
}

impl Slot {
    /// Resolves when a newer connection took this one's place: close it then.
    pub async fn evicted(&self) {
        self.evicted.notified().await
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.slots.held.lock().expect("slots lock");
        if let Some(i) = held.open.iter().position(|(id, _)| *id == self.id) {
            held.open.remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_new_connection_beyond_the_limit_closes_the_oldest() {
        let slots = Slots::new(2);
        let first = slots.take();
        let second = slots.take();
        assert_eq!(slots.held(), 2);
        let third = slots.take();
        assert_eq!(slots.held(), 2, "still two held");
        // The oldest is told to close (the notice waits for it, even if it listens late).
        tokio::time::timeout(std::time::Duration::from_secs(5), first.evicted())
            .await
            .expect("the oldest is evicted");
        drop(first);
        assert_eq!(slots.held(), 2);
        drop(second);
        assert_eq!(slots.held(), 1);
        drop(third);
        assert_eq!(slots.held(), 0);
    }
}
