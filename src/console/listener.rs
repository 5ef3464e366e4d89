//! What one console listener (telnet, raw TCP, unix socket, and the sockets `Attach` hands
//! out) lets its peers cost: at most `max_clients` connections at once, refused past that with
//! one line and a log line per spell; new connections refused while the process is short of
//! descriptors, so a flood on one port never takes the descriptors that power, D-Bus, NBD or
//! the other listeners need; an accept that fails (EMFILE) backs off instead of spinning and
//! is logged once per spell; TCP keepalive, so a peer that vanished without a FIN does not
//! keep its place for ever.
//!
//! Console connections have no idle timeout: a client that only watches a quiet board (a
//! log follower, LAVA between two commands) is the normal case. The cap bounds how many
//! there can be, and the hub bounds what each one that stops reading may cost.

use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{info, warn};

/// Descriptors kept free for the rest of the daemon: a console listener refuses new
/// connections once fewer than this many would be left under `RLIMIT_NOFILE`.
pub const FD_RESERVE: u64 = 64;
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The places of one listener.
pub struct Slots {
    free: Arc<Semaphore>,
    max: usize,
    /// `tcp`, `tcp_raw`, `unix`, `Attach`: for the log and the refusal line.
    pub name: &'static str,
    /// A refusal was logged and no connection was taken since.
    full: AtomicBool,
    refused: AtomicU64,
}

/// A connection refused, and why (for the peer, in one line).
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    Full(usize),
    NoDescriptors,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Full(max) => write!(f, "the console takes at most {max} clients here"),
            Refusal::NoDescriptors => {
                write!(f, "rtmd is short of file descriptors; try again later")
            }
        }
    }
}

impl Slots {
    pub fn new(name: &'static str, max: usize) -> Slots {
        Slots {
            free: Arc::new(Semaphore::new(max)),
            max,
            name,
            full: AtomicBool::new(false),
            refused: AtomicU64::new(0),
        }
    }

    /// A place for a connection whose descriptor is `fd`, held until the permit drops; or
    /// the refusal, logged once per spell of refusals.
    pub fn admit(&self, fd: &impl AsFd) -> Result<OwnedSemaphorePermit, Refusal> {
        let taken = if short_of_descriptors(fd) {
            Err(Refusal::NoDescriptors)
        } else {
            self.free
                .clone()
                .try_acquire_owned()
                .map_err(|_| Refusal::Full(self.max))
        };
        match &taken {
            Ok(_) => {
                if self.full.swap(false, Ordering::Relaxed) {
                    info!(
                        subsystem = "console",
                        "console {} takes clients again ({} refused meanwhile)",
                        self.name,
                        self.refused.swap(0, Ordering::Relaxed)
                    );
                }
            }
            Err(why) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                if !self.full.swap(true, Ordering::Relaxed) {
                    warn!(
                        subsystem = "console",
                        "console {} refuses new clients: {why}", self.name
                    );
                }
            }
        }
        taken
    }
}

/// Whether accepting `fd` leaves fewer than [`FD_RESERVE`] descriptors. The kernel hands out
/// the lowest free number, so every number below `fd` is in use: a high number means few
/// are left. (Holes above it only make the guess cautious.)
fn short_of_descriptors(fd: &impl AsFd) -> bool {
    let number = u64::try_from(fd.as_fd().as_raw_fd()).unwrap_or(u64::MAX);
    let mut limit = nix::libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit through the pointer, which outlives the call.
    if unsafe { nix::libc::getrlimit(nix::libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return false;
    }
    number.saturating_add(FD_RESERVE) >= limit.rlim_cur
}

/// The accept loop's answer to failures: a growing pause (50 ms to 1 s), and one log line
/// when they start and one when accepting works again.
#[derive(Debug, Default)]
pub struct AcceptBackoff {
    delay: Option<Duration>,
    failures: u64,
}

impl AcceptBackoff {
    /// How long to pause after a failed accept; `Some(line)` when it should be logged.
    pub fn failed(&mut self, e: &std::io::Error) -> (Duration, Option<String>) {
        self.failures += 1;
        let (delay, line) = match self.delay {
            None => (
                BACKOFF_MIN,
                Some(format!(
                    "accepting console clients failed: {e}; pausing and retrying (logged once)"
                )),
            ),
            Some(d) => ((d * 2).min(BACKOFF_MAX), None),
        };
        self.delay = Some(delay);
        (delay, line)
    }

    /// An accept worked; `Some(line)` when it ends a spell of failures.
    pub fn succeeded(&mut self) -> Option<String> {
        self.delay.take()?;
        let n = std::mem::take(&mut self.failures);
        Some(format!(
            "accepting console clients again after {n} failures"
        ))
    }
}

/// TCP keepalive: a peer gone without a FIN (unplugged, rebooted) is noticed after about
/// two minutes instead of never, and its place freed.
pub fn keepalive(stream: &tokio::net::TcpStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    let _ = setsockopt(stream, sockopt::KeepAlive, &true);
    let _ = setsockopt(stream, sockopt::TcpKeepIdle, &60);
    let _ = setsockopt(stream, sockopt::TcpKeepInterval, &10);
    let _ = setsockopt(stream, sockopt::TcpKeepCount, &6);
}

/// Tells a refused peer why, in one line, without waiting for it (its socket buffer is
/// empty, so a short write fits), then closes it.
pub fn refuse<S: std::io::Write>(mut stream: S, why: &Refusal) {
    let _ = stream.write(format!("rtmd: {why}\r\n").as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_bounded_and_logs_once_per_spell() {
        let mut b = AcceptBackoff::default();
        let e = std::io::Error::from_raw_os_error(nix::libc::EMFILE);
        let (d, line) = b.failed(&e);
        assert_eq!(d, BACKOFF_MIN);
        assert!(line.unwrap().contains("Too many open files"));
        let mut last = d;
        for _ in 0..20 {
            let (d, line) = b.failed(&e);
            assert!(line.is_none(), "logged twice in one spell");
            assert!(d >= last && d <= BACKOFF_MAX);
            last = d;
        }
        assert_eq!(last, BACKOFF_MAX);
        assert_eq!(
            b.succeeded().unwrap(),
            "accepting console clients again after 21 failures"
        );
        assert!(b.succeeded().is_none());
        assert!(b.failed(&e).1.is_some(), "a new spell is logged again");
    }

    #[test]
    fn slots_refuse_past_the_cap_and_free_on_drop() {
        let slots = Slots::new("tcp_raw", 2);
        let fd = std::fs::File::open("/dev/null").unwrap();
        let a = slots.admit(&fd).unwrap();
        let _b = slots.admit(&fd).unwrap();
        assert_eq!(slots.admit(&fd).unwrap_err(), Refusal::Full(2));
        drop(a);
        assert!(slots.admit(&fd).is_ok());
    }
}
