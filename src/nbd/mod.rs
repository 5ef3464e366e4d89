//! The NBD server: the board's root filesystem over the network (docs/nbd.md).
//!
//! One export at a time per board, `ro` or `cow` ([`Mode`]). The server runs on its own
//! small tokio runtime (threads `rtmd-nbd`), so a page-cache miss that blocks a `sendfile`
//! or an `fdatasync` never delays the console or a power switch on the daemon's runtime.
//!
//! Parts: [`proto`] the wire format (pure functions), [`handshake`] option haggling,
//! [`transmission`] requests and replies of one connection, [`export`] the image and its
//! operations, [`flush`] FLUSHes coalesced into few syncs, [`overlay`] the copy-on-write
//! overlay, [`server`] the listener (its connection cap and deadlines) and the export slot.
//! This handle ([`Nbd`]) is what the board and the D-Bus layer use.

pub mod export;
pub mod flush;
pub mod fuzz;
pub mod handshake;
pub mod overlay;
pub mod proto;
pub mod server;
pub mod transmission;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{info, warn};

use crate::access::Permit;
use crate::images::{Claim, Claims, User};

pub use export::{Export, Mode};
pub use server::Limits;
use server::{Host, Slot};

/// Where the server listens and where overlays live.
#[derive(Debug, Clone)]
pub struct NbdOptions {
    pub listen: SocketAddr,
    /// The host name or address put into export URIs; defaults to the listen address, or
    /// the host name when listening on all addresses.
    pub uri_host: Option<String>,
    /// Overlays of `cow` exports: `<overlay_dir>/<image>.cow` and `.cow.map`.
    pub overlay_dir: PathBuf,
    /// The image folder's claims: an export takes one (the one-writer rule, shared with the
    /// USB gadget and image removal) and gives it back when withdrawn.
    pub claims: Claims,
    /// What the listener lets clients cost.
    pub limits: Limits,
}

/// What the D-Bus properties show.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    pub exported: bool,
    pub image: String,
    pub mode: String,
    pub uri: String,
    pub clients: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NbdServerError {
    /// Another export is active.
    #[error("{0}")]
    Busy(String),
    #[error("nothing is exported")]
    NotExported,
    #[error("{0}")]
    Io(String),
}

/// The NBD server of one board. Cheap to clone.
#[derive(Clone)]
pub struct Nbd {
    inner: Arc<Inner>,
    _runtime: Arc<OwnRuntime>,
}

struct Inner {
    options: NbdOptions,
    addr: SocketAddr,
    slot: Mutex<Option<Arc<Slot>>>,
    status: watch::Sender<Status>,
    /// When the server started, and the accept loop's last heartbeat, in ms after that.
    started: Instant,
    last_beat_ms: AtomicU64,
}

/// The server answers while its accept loop beat within this (it beats every second; two
/// runtime threads both blocked this long, or a loop that ended, is a wedged server).
const ALIVE_BOUND: Duration = Duration::from_secs(15);

impl Host for Inner {
    fn current(&self) -> Option<Arc<Slot>> {
        self.slot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn clients_changed(&self) {
        self.publish();
    }

    fn beat(&self) {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_beat_ms.store(now, Ordering::Release);
    }
}

impl Inner {
    fn publish(&self) {
        let status = match self.current() {
            Some(slot) => Status {
                exported: true,
                image: slot.export.name.clone(),
                mode: slot.export.mode.as_str().to_string(),
                uri: uri(&self.options, self.addr, &slot.export.name),
                clients: slot.clients(),
            },
            None => Status::default(),
        };
        self.status.send_if_modified(|s| {
            let changed = *s != status;
            *s = status;
            changed
        });
    }

    fn take(&self) -> Option<Arc<Slot>> {
        self.slot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }
}

/// The server's runtime, shut down without blocking when the last handle goes (dropping a
/// runtime inside another runtime's task would panic).
struct OwnRuntime(Option<tokio::runtime::Runtime>);

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl Nbd {
    /// Binds the listener and starts serving (nothing is exported yet).
    pub fn start(options: NbdOptions) -> Result<Nbd, NbdServerError> {
        let listener = std::net::TcpListener::bind(options.listen)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| NbdServerError::Io(format!("cannot listen on {}: {e}", options.listen)))?;
        let addr = listener
            .local_addr()
            .map_err(|e| NbdServerError::Io(e.to_string()))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            // Two: a page-cache miss that blocks one thread in `sendfile` leaves the other
            // serving (a board's connections, or a second board's client).
            .worker_threads(2)
            .thread_name("rtmd-nbd")
            .enable_all()
            .build()
            .map_err(|e| NbdServerError::Io(format!("cannot start the NBD runtime: {e}")))?;
        let inner = Arc::new(Inner {
            options,
            addr,
            slot: Mutex::new(None),
            status: watch::channel(Status::default()).0,
            started: Instant::now(),
            last_beat_ms: AtomicU64::new(0),
        });
        let host = inner.clone();
        let limits = inner.options.limits;
        runtime.spawn(async move {
            match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => server::accept(l, host, limits).await,
                Err(e) => warn!(subsystem = "nbd", "cannot serve: {e}"),
            }
        });
        info!(subsystem = "nbd", "listening on {addr}");
        Ok(Nbd {
            inner,
            _runtime: Arc::new(OwnRuntime(Some(runtime))),
        })
    }

    /// True while the accept loop beats (the watchdog's probe, `Board::stuck`): it ended,
    /// or the server's runtime is wedged, otherwise. Cheap; asks the server nothing.
    pub fn is_alive(&self) -> bool {
        let last = Duration::from_millis(self.inner.last_beat_ms.load(Ordering::Acquire));
        self.inner.started.elapsed().saturating_sub(last) <= ALIVE_BOUND
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.inner.addr
    }

    pub fn status(&self) -> Status {
        self.inner.status.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Status> {
        self.inner.status.subscribe()
    }

    /// Exports `path` (already resolved inside the image folder) under `name`. The same
    /// image and mode again returns the same URI; anything else while an export is active
    /// is `Busy`, and so is an image the USB gadget uses against the one-writer rule.
    /// Opening a `cow` overlay reads its map: call it from a blocking thread.
    pub fn export(
        &self,
        _: &Permit,
        name: &str,
        path: &Path,
        mode: Mode,
    ) -> Result<String, NbdServerError> {
        let claim = claim_of(mode);
        let claims = &self.inner.options.claims;
        let fresh = claims
            .take(path, claim)
            .map_err(|c| NbdServerError::Busy(c.explain(name)))?;
        let exported = self.export_claimed(name, path, mode);
        if exported.is_err() && fresh {
            claims.release(path, claim);
        }
        exported
    }

    fn export_claimed(
        &self,
        name: &str,
        path: &Path,
        mode: Mode,
    ) -> Result<String, NbdServerError> {
        let mut slot = self
            .inner
            .slot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(current) = slot.as_ref() {
            if current.export.name == name && current.export.mode == mode {
                return Ok(uri(&self.inner.options, self.inner.addr, name));
            }
            return Err(NbdServerError::Busy(format!(
                "{} is exported ({}); unexport it first",
                current.export.name,
                current.export.mode.as_str()
            )));
        }
        let overlay = self.overlay_path(name);
        let export = Export::open(name, path, mode, Some(&overlay))
            .map_err(|e| NbdServerError::Io(format!("cannot export {name}: {e}")))?;
        if let Some(o) = export.overlay() {
            info!(
                subsystem = "nbd",
                "overlay {} holds {} KiB",
                o.path().display(),
                o.written() / 1024
            );
        }
        *slot = Some(Arc::new(Slot::new(export)));
        drop(slot);
        self.inner.publish();
        let uri = uri(&self.inner.options, self.inner.addr, name);
        info!(
            subsystem = "nbd",
            "exporting {name} ({}) as {uri}",
            mode.as_str()
        );
        Ok(uri)
    }

    /// Withdraws the export: its clients are disconnected, its overlay flushed (and kept).
    pub async fn unexport(&self, _: &Permit) -> Result<(), NbdServerError> {
        let slot = self.inner.take().ok_or(NbdServerError::NotExported)?;
        slot.withdraw().await;
        self.release_claim(&slot);
        self.inner.publish();
        let flushed = flush_in_background(&slot).await;
        info!(
            subsystem = "nbd",
            "{} is no longer exported", slot.export.name
        );
        flushed
    }

    /// Discards what was written to the overlay of the current `cow` export. Connected
    /// clients are disconnected first (their view of the disk is about to change under
    /// them); the export stays.
    pub async fn reset_overlay(&self, _: &Permit) -> Result<(), NbdServerError> {
        let old = self.inner.current().ok_or(NbdServerError::NotExported)?;
        if old.export.overlay().is_none() {
            return Err(NbdServerError::Busy(format!(
                "{} is exported read-only; there is no overlay to reset",
                old.export.name
            )));
        }
        let slot = self.inner.take().ok_or(NbdServerError::NotExported)?;
        slot.withdraw().await;
        let export = slot.export.clone();
        let reset = tokio::task::spawn_blocking(move || {
            export.overlay().map(|o| o.reset()).unwrap_or(Ok(()))
        })
        .await
        .map_err(|e| NbdServerError::Io(e.to_string()))?;
        // The export comes back with new connections' slot, whatever the reset said.
        let fresh = Arc::new(Slot::new_from(&slot));
        *self
            .inner
            .slot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(fresh);
        self.inner.publish();
        reset.map_err(|e| NbdServerError::Io(format!("cannot reset the overlay: {e}")))?;
        info!(subsystem = "nbd", "overlay of {} reset", slot.export.name);
        Ok(())
    }

    /// Stops serving: clients are disconnected and the overlay flushed.
    pub async fn stop(&self) {
        if let Some(slot) = self.inner.take() {
            slot.withdraw().await;
            self.release_claim(&slot);
            if let Err(e) = flush_in_background(&slot).await {
                warn!(subsystem = "nbd", "{e}");
            }
        }
        self.inner.publish();
    }

    fn release_claim(&self, slot: &Slot) {
        self.inner
            .options
            .claims
            .release(&slot.export.path, claim_of(slot.export.mode));
    }

    fn overlay_path(&self, name: &str) -> PathBuf {
        let mut p = self.inner.options.overlay_dir.join(name).into_os_string();
        p.push(".cow");
        PathBuf::from(p)
    }
}

async fn flush_in_background(slot: &Slot) -> Result<(), NbdServerError> {
    let export = slot.export.clone();
    tokio::task::spawn_blocking(move || export.flush())
        .await
        .map_err(|e| NbdServerError::Io(e.to_string()))?
        .map_err(|e| NbdServerError::Io(e.message))
}

/// The claim an export of `mode` takes on its image.
fn claim_of(mode: Mode) -> Claim {
    Claim {
        user: User::Nbd,
        writable: mode == Mode::Cow,
    }
}

/// `nbd://host:port/name`, the form qemu, nbdinfo and nbdcopy take.
fn uri(options: &NbdOptions, addr: SocketAddr, name: &str) -> String {
    let host = match &options.uri_host {
        Some(h) => h.clone(),
        None if addr.ip().is_unspecified() => nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".to_string()),
        None => match addr.ip() {
            IpAddr::V6(v6) => format!("[{v6}]"),
            IpAddr::V4(v4) => v4.to_string(),
        },
    };
    format!("nbd://{host}:{}/{}", addr.port(), escape(name))
}

/// Percent-encodes everything but unreserved characters and `/` (RFC 3986).
fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests;
