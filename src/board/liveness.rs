//! Whether the board's owner tasks still answer: what the daemon asks before it feeds the
//! systemd watchdog.
//!
//! Each part that has an owner task or thread registers a probe when the board is built: a
//! cheap, non-blocking question about that owner (no request to it, no hardware touched),
//! asked every watchdog period. The daemon feeds the watchdog only while every probe says
//! yes and its bus connection is up; otherwise systemd kills and restarts it, which is what
//! a wedged owner needs.
//!
//! Two kinds of probes exist: a [`Heartbeat`] an owner marks busy while it works on a
//! request (it no longer answers once one request takes far longer than its own bound), and
//! [`owner_exists`] for an owner that holds the only sender of its status channel (it no
//! longer answers once it has ended). `Power::is_alive` is the power owner's heartbeat, kept
//! in `power/`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// The probes of one board, by part.
#[derive(Default)]
pub struct Liveness {
    probes: Vec<Probe>,
}

struct Probe {
    part: &'static str,
    answers: Box<dyn Fn() -> bool + Send + Sync>,
}

impl Liveness {
    /// Asks `answers` about `part` at every watchdog period from now on.
    pub fn watch(
        &mut self,
        part: &'static str,
        answers: impl Fn() -> bool + Send + Sync + 'static,
    ) {
        self.probes.push(Probe {
            part,
            answers: Box::new(answers),
        });
    }

    /// The first part whose owner does not answer, if any.
    pub fn stuck(&self) -> Option<&'static str> {
        self.probes.iter().find(|p| !(p.answers)()).map(|p| p.part)
    }

    /// The parts watched, in the order they were registered.
    pub fn parts(&self) -> Vec<&'static str> {
        self.probes.iter().map(|p| p.part).collect()
    }
}

/// A probe for an owner that holds the only sender of `status`: it answers while it exists
/// (a task that returned, or a thread that ended, drops the sender).
pub fn owner_exists<T: Send + Sync + 'static>(
    status: watch::Receiver<T>,
) -> impl Fn() -> bool + Send + Sync + 'static {
    move || status.has_changed().is_ok()
}

/// An owner's heartbeat: it marks itself busy for each request it works on; it answers
/// while it is idle, or busy for no longer than `bound` (its own timeout plus a margin).
/// Cheap to clone: the owner keeps one, the probe another.
#[derive(Clone)]
pub struct Heartbeat {
    busy_since: Arc<Mutex<Option<Instant>>>,
    bound: Duration,
}

impl Heartbeat {
    pub fn new(bound: Duration) -> Heartbeat {
        Heartbeat {
            busy_since: Arc::new(Mutex::new(None)),
            bound,
        }
    }

    /// Busy until the returned guard is dropped.
    pub fn busy(&self) -> Busy<'_> {
        *self.lock() = Some(Instant::now());
        Busy(self)
    }

    /// The probe: idle, or busy within the bound.
    pub fn answers(&self) -> bool {
        self.lock()
            .is_none_or(|since| since.elapsed() <= self.bound)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        // A poisoned lock still holds a valid instant: the watchdog must keep working.
        self.busy_since.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A request in progress on a [`Heartbeat`]; dropping it marks the owner idle.
pub struct Busy<'a>(&'a Heartbeat);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        *self.0.lock() = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_board_without_probes_answers() {
        assert_eq!(Liveness::default().stuck(), None);
    }

    #[test]
    fn the_first_part_that_does_not_answer_is_named() {
        let mut l = Liveness::default();
        l.watch("power", || true);
        l.watch("console", || false);
        l.watch("storage", || false);
        assert_eq!(l.stuck(), Some("console"));
        assert_eq!(l.parts(), ["power", "console", "storage"]);
    }

    #[test]
    fn an_owner_that_ended_does_not_answer() {
        let (tx, rx) = watch::channel(0u8);
        let probe = owner_exists(rx);
        assert!(probe());
        tx.send_replace(1);
        assert!(probe(), "a change is not an end");
        drop(tx);
        assert!(!probe());
    }

    #[test]
    fn a_heartbeat_busy_past_its_bound_does_not_answer() {
        let beat = Heartbeat::new(Duration::ZERO);
        assert!(beat.answers(), "idle");
        let busy = beat.busy();
        // Busy for longer than a zero bound as soon as any time has passed.
        let start = Instant::now();
        while start.elapsed().is_zero() {}
        assert!(!beat.answers());
        drop(busy);
        assert!(beat.answers(), "idle again");
        let roomy = Heartbeat::new(Duration::from_secs(3600));
        let _busy = roomy.busy();
        assert!(roomy.answers());
    }
}
