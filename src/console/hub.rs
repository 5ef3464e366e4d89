//! The fan-out: every byte from the board goes to every subscriber, live, without the serial
//! read ever waiting for one of them.
//!
//! Each subscriber has an unbounded queue and a byte count of what is queued. Publishing
//! never blocks; a subscriber whose queue would exceed `client_buffer` is dropped (its
//! connection is closed, or its `WaitFor` fails) rather than allowed to stall the board or the
//! others, or to receive a stream with silent holes in it: a test log with missing bytes is
//! worse than a reconnect. The queued chunks are the serial owner's buffers, shared by every
//! subscriber, so many stalled clients cost the buffer once, not once each.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use crate::config::ConsoleInput;

struct Slot {
    id: u64,
    tx: mpsc::UnboundedSender<Bytes>,
    queued: Arc<AtomicUsize>,
    /// Dropped together with the slot: wakes a writer stuck on a client that never reads.
    _alive: watch::Sender<()>,
    /// A front-end client (counted in `Clients`), not an internal reader like `WaitFor`.
    counted: bool,
    /// Why it was dropped, for the log.
    label: String,
}

pub struct Hub {
    slots: Mutex<(u64, Vec<Slot>)>,
    limit: usize,
    input: ConsoleInput,
    clients: watch::Sender<u32>,
}

/// One subscriber's end.
pub struct Subscription {
    pub id: u64,
    rx: mpsc::UnboundedReceiver<Bytes>,
    queued: Arc<AtomicUsize>,
    alive: watch::Receiver<()>,
    hub: Arc<Hub>,
}

impl Hub {
    pub fn new(limit: usize, input: ConsoleInput) -> Arc<Hub> {
        let (clients, _) = watch::channel(0);
        Arc::new(Hub {
            slots: Mutex::new((0, Vec::new())),
            limit,
            input,
            clients,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, Vec<Slot>)> {
        // A panic while holding this lock cannot leave the list half-changed: every
        // change is a single push or retain.
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of front-end clients, as a watch for the `Clients` property.
    pub fn clients(&self) -> watch::Receiver<u32> {
        self.clients.subscribe()
    }

    fn publish_count(&self, slots: &[Slot]) {
        let n = slots.iter().filter(|s| s.counted).count() as u32;
        self.clients
            .send_if_modified(|c| std::mem::replace(c, n) != n);
    }

    pub fn subscribe(self: &Arc<Self>, counted: bool, label: &str) -> Subscription {
        let (tx, rx) = mpsc::unbounded_channel();
        let (alive_tx, alive) = watch::channel(());
        let queued = Arc::new(AtomicUsize::new(0));
        let mut guard = self.lock();
        guard.0 += 1;
        let id = guard.0;
        guard.1.push(Slot {
            id,
            tx,
            queued: queued.clone(),
            _alive: alive_tx,
            counted,
            label: label.to_string(),
        });
        self.publish_count(&guard.1);
        Subscription {
            id,
            rx,
            queued,
            alive,
            hub: self.clone(),
        }
    }

    /// Sends a chunk from the board to every subscriber; drops the ones too far behind.
    pub fn publish(&self, chunk: &Bytes) {
        let mut guard = self.lock();
        let limit = self.limit;
        let before = guard.1.len();
        guard.1.retain(|slot| {
            let queued = slot.queued.fetch_add(chunk.len(), Ordering::Relaxed) + chunk.len();
            // A `WaitFor` whose pattern is slower than the board is dropped the same way:
            // nothing in the hub waits for anyone.
            if queued > limit {
                tracing::warn!(
                    subsystem = "console",
                    "dropping {} {}: more than {} KiB of output not {}",
                    if slot.counted {
                        "console client"
                    } else {
                        "the"
                    },
                    slot.label,
                    limit / 1024,
                    if slot.counted { "read" } else { "matched" }
                );
                return false;
            }
            slot.tx.send(chunk.clone()).is_ok()
        });
        if guard.1.len() != before {
            self.publish_count(&guard.1);
        }
    }

    /// Whether subscriber `id` may type into the console.
    pub fn may_write(&self, id: u64) -> bool {
        match self.input {
            ConsoleInput::All => true,
            ConsoleInput::First => self
                .lock()
                .1
                .iter()
                .find(|s| s.counted)
                .is_some_and(|s| s.id == id),
        }
    }

    fn remove(&self, id: u64) {
        let mut guard = self.lock();
        guard.1.retain(|s| s.id != id);
        self.publish_count(&guard.1);
    }
}

impl Subscription {
    /// The next chunk; `None` once this subscriber was dropped by the hub.
    pub async fn recv(&mut self) -> Option<Bytes> {
        let chunk = tokio::select! {
            chunk = self.rx.recv() => chunk,
            _ = self.alive.changed() => None,
        }?;
        self.queued.fetch_sub(chunk.len(), Ordering::Relaxed);
        Some(chunk)
    }

    /// Appends every chunk already queued to `out`, up to `limit` bytes in all, without
    /// waiting: a client that fell a little behind gets one write instead of many.
    pub fn drain_ready(&mut self, out: &mut Vec<u8>, limit: usize) {
        while out.len() < limit {
            match self.rx.try_recv() {
                Ok(chunk) => {
                    self.queued.fetch_sub(chunk.len(), Ordering::Relaxed);
                    out.extend_from_slice(&chunk);
                }
                Err(_) => break,
            }
        }
    }

    /// Resolves when the hub drops this subscriber (to abandon a write that never ends).
    pub async fn dropped(&mut self) {
        while self.alive.changed().await.is_ok() {}
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.remove(self.id);
    }
}

#[cfg(test)]
mod tests;
