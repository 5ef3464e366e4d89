//! The listener and the export slot: accepts connections up to a cap, runs each one's
//! handshake under a deadline, counts the clients of the current export, and withdraws an
//! export by telling its connections to close and waiting until they have.
//!
//! What the listener bounds (docs/nbd.md, "What a client may cost"): connections, counted
//! from `accept` so that half-done handshakes take their place too, beyond which a new one is
//! closed at once; the handshake's time; and its own retries when the process is out of
//! descriptors (it backs off and says so once, instead of spinning on `EMFILE` while the
//! connection waits in the backlog). A connection in transmission has no idle deadline: a
//! booted board whose root filesystem is in the page cache may not send a request for hours.

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use nix::sys::socket::{setsockopt, sockopt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tracing::{debug, info, warn};

use super::export::Export;
use super::handshake::{self, Exports, HandshakeError};
use super::transmission::{self, Ended};

/// The listener's bounds (`[nbd]` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections at once, handshakes included (`max_clients`).
    pub max_clients: usize,
    /// A client that has not finished its handshake by then is dropped
    /// (`handshake_timeout_s`): a truncated handshake must not hold its place forever.
    pub handshake_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_clients: crate::config::NBD_DEFAULT_MAX_CLIENTS as usize,
            handshake_timeout: Duration::from_secs(crate::config::NBD_DEFAULT_HANDSHAKE_TIMEOUT_S),
        }
    }
}

/// How often the accept loop says it is alive ([`Host::beat`]), whatever happens on the port.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// Waits between `accept` attempts while they fail (out of descriptors), doubling.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(50);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// TCP keepalive: a board that lost power never closes its connection; these probes find out
/// within about 30 s, so its client count goes back to zero.
const KEEPALIVE_IDLE_S: u32 = 10;
const KEEPALIVE_INTERVAL_S: u32 = 5;
const KEEPALIVE_PROBES: u32 = 4;

/// The export being served, and its clients.
pub struct Slot {
    pub export: Arc<Export>,
    /// Turned true to make every connection of this export close.
    withdrawn: watch::Sender<bool>,
    clients: AtomicU32,
}

impl Slot {
    pub fn new(export: Export) -> Slot {
        Slot {
            export: Arc::new(export),
            withdrawn: watch::channel(false).0,
            clients: AtomicU32::new(0),
        }
    }

    /// A new slot for the same export (after a reset): new connections, new count.
    pub fn new_from(old: &Slot) -> Slot {
        Slot {
            export: old.export.clone(),
            withdrawn: watch::channel(false).0,
            clients: AtomicU32::new(0),
        }
    }

    pub fn clients(&self) -> u32 {
        self.clients.load(Ordering::Acquire)
    }

    /// Closes every connection of this export and waits until they are gone.
    pub async fn withdraw(&self) {
        self.withdrawn.send_replace(true);
        if tokio::time::timeout(Duration::from_secs(5), self.withdrawn.closed())
            .await
            .is_err()
        {
            warn!(
                subsystem = "nbd",
                "connections of {} are slow to close", self.export.name
            );
        }
    }
}

/// What the listener needs from the owner of the export slot.
pub trait Host: Send + Sync + 'static {
    fn current(&self) -> Option<Arc<Slot>>;
    /// Called whenever the number of clients changed.
    fn clients_changed(&self);
    /// Called by the accept loop at least every [`HEARTBEAT`] while it runs: the watchdog's
    /// sign that the listener and the server's runtime answer.
    fn beat(&self);
}

struct Lookup<'a, H: Host>(&'a H);

impl<H: Host> Exports for Lookup<'_, H> {
    fn find(&self, name: &str) -> Option<Arc<Export>> {
        let slot = self.0.current()?;
        (name.is_empty() || name == slot.export.name).then(|| slot.export.clone())
    }

    fn list(&self) -> Vec<(String, String)> {
        self.0
            .current()
            .map(|s| vec![(s.export.name.clone(), handshake::description(&s.export))])
            .unwrap_or_default()
    }
}

/// Accepts connections until the runtime is shut down.
pub async fn accept<H: Host>(listener: TcpListener, host: Arc<H>, limits: Limits) {
    let places = Arc::new(Semaphore::new(limits.max_clients));
    // Connections closed over the cap since the last one accepted: logged once per burst.
    let mut refused = 0u64;
    // Failed accepts in a row, and the wait before the next attempt.
    let mut failures = 0u64;
    let mut backoff = ACCEPT_BACKOFF_MIN;
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = heartbeat.tick() => {
                host.beat();
                continue;
            }
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends: the connection stays in the backlog and the listener
                // stays readable, so retrying at once would spin. Wait, longer each time.
                failures += 1;
                if failures == 1 {
                    warn!(
                        subsystem = "nbd",
                        "cannot accept connections: {e}; retrying every {ACCEPT_BACKOFF_MAX:?} at most"
                    );
                } else {
                    debug!(subsystem = "nbd", "accept: {e}");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        if failures > 0 {
            info!(
                subsystem = "nbd",
                "accepting connections again after {failures} failed attempts"
            );
            failures = 0;
            backoff = ACCEPT_BACKOFF_MIN;
        }
        let Ok(place) = places.clone().try_acquire_owned() else {
            // Closed at once, before any greeting: the client sees the server hang up, and
            // this costs no task and no time.
            if refused == 0 {
                warn!(
                    subsystem = "nbd",
                    "{peer}: refused: {} connections already (max_clients)", limits.max_clients
                );
            } else {
                debug!(subsystem = "nbd", "{peer}: refused (max_clients)");
            }
            refused += 1;
            drop(stream);
            continue;
        };
        if refused > 1 {
            info!(
                subsystem = "nbd",
                "{refused} connections were refused in all over max_clients = {}",
                limits.max_clients
            );
        }
        refused = 0;
        let host = host.clone();
        tokio::spawn(async move {
            connection(host, stream, peer, limits.handshake_timeout).await;
            drop(place);
        });
    }
}

async fn connection<H: Host>(
    host: Arc<H>,
    mut stream: TcpStream,
    peer: SocketAddr,
    handshake_timeout: Duration,
) {
    let _ = stream.set_nodelay(true);
    tune_keepalive(&stream);
    let negotiated = match tokio::time::timeout(
        handshake_timeout,
        handshake::negotiate(&mut stream, &Lookup(&*host)),
    )
    .await
    {
        Ok(Ok(n)) => n,
        Ok(Err(HandshakeError::Aborted)) => {
            debug!(subsystem = "nbd", "{peer}: handshake aborted by the client");
            return;
        }
        Ok(Err(e)) => {
            info!(subsystem = "nbd", "{peer}: handshake failed: {e}");
            return;
        }
        Err(_) => {
            info!(
                subsystem = "nbd",
                "{peer}: no complete handshake within {handshake_timeout:?}"
            );
            return;
        }
    };
    // The export may have been withdrawn while the client negotiated.
    let Some(slot) = host
        .current()
        .filter(|s| Arc::ptr_eq(&s.export, &negotiated.export))
    else {
        return;
    };
    let withdrawn = slot.withdrawn.subscribe();
    if *withdrawn.borrow() {
        return;
    }
    slot.clients.fetch_add(1, Ordering::AcqRel);
    host.clients_changed();
    info!(
        subsystem = "nbd",
        "{peer}: connected to {} ({}{})",
        slot.export.name,
        slot.export.mode.as_str(),
        if negotiated.structured {
            ", structured replies"
        } else {
            ""
        }
    );
    let ended = transmission::serve(stream, peer, negotiated, withdrawn).await;
    slot.clients.fetch_sub(1, Ordering::AcqRel);
    host.clients_changed();
    match ended {
        Ended::Disconnected | Ended::Disc | Ended::Withdrawn => {
            info!(subsystem = "nbd", "{peer}: disconnected ({ended})")
        }
        Ended::Protocol(_) | Ended::Io(_) => {
            warn!(subsystem = "nbd", "{peer}: connection closed: {ended}")
        }
    }
}

fn tune_keepalive(stream: &TcpStream) {
    let fd = stream.as_fd();
    let _ = setsockopt(&fd, sockopt::KeepAlive, &true);
    let _ = setsockopt(&fd, sockopt::TcpKeepIdle, &KEEPALIVE_IDLE_S);
    let _ = setsockopt(&fd, sockopt::TcpKeepInterval, &KEEPALIVE_INTERVAL_S);
    let _ = setsockopt(&fd, sockopt::TcpKeepCount, &KEEPALIVE_PROBES);
}
