//! One board: builds the configured subsystems, runs them, and stops them fail-safe.
//!
//! This is the table of contents of the daemon: the parts, and the gate every face passes.
//! The faces (`bus/`, `pdu/`) are built from a `&Board` by the daemon; nothing here knows
//! them. Building touches no hardware (starting never switches power); stopping takes no
//! more calls from any face, then leaves power as `on_stop` says.

mod liveness;

use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

pub use liveness::{Busy, Heartbeat, Liveness, owner_exists};

use crate::access::{
    Access, AccessError, Caller, EndReason, Ended, FaceError, Gate, OnRelease, clip,
};
use crate::capture::Capture;
use crate::config::{Config, OnStop};
use crate::console::Console;
use crate::gadget::{Storage, StorageOptions};
use crate::images::Store;
use crate::nbd::{Nbd, NbdOptions};
use crate::power::{Power, PowerError, PowerState, PowerStatus};

/// How long stopping may spend switching the board off before giving up (systemd's stop
/// timeout must be longer).
const STOP_BUDGET: Duration = Duration::from_secs(20);

/// The board's parts: what every face is built from. Each part is a cheap handle whose
/// mutating calls take the gate's permit.
pub struct Board {
    pub config: Config,
    pub power: Option<Power>,
    pub console: Option<Console>,
    /// The image folder; it also owns the claims (who serves which image).
    pub images: Option<Store>,
    pub nbd: Option<Nbd>,
    pub storage: Option<Storage>,
    pub capture: Option<Capture>,
    /// Who holds the board, checked for every change through every face; and the audit
    /// trail.
    pub gate: Gate,
    /// Whether each owner task answers (the watchdog's question).
    pub liveness: Liveness,
    /// Turns true when the board stops: a face follows it to close its listeners
    /// ([`Board::stopping`]).
    stopping: watch::Sender<bool>,
}

impl Board {
    /// Spawns the subsystems' owner tasks and binds their listeners. Must run inside the
    /// tokio runtime. Fails only for what a restart cannot fix by waiting (a TCP port
    /// taken by another program); hardware that is not there yet is not an error.
    pub async fn build(config: Config) -> Result<Board, String> {
        for section in &config.pending_sections {
            warn!("[{section}] is configured but not served by this version of rtmd yet");
        }
        let (access, ended) = Access::new(config.access.clone());
        access.spawn_expiry();
        let gate = Gate::new(access);
        let power = config.power.as_ref().map(Power::spawn);
        let console = match &config.console {
            Some(c) => Some(
                Console::start(c, gate.clone())
                    .await
                    .map_err(|e| e.to_string())?,
            ),
            None => None,
        };
        let images = match &config.images {
            Some(c) => Some(Store::open(c).map_err(|e| format!("[images]: {e}"))?),
            None => None,
        };
        let nbd = match (&config.nbd, &images) {
            (Some(c), Some(store)) => Some(
                Nbd::start(NbdOptions {
                    listen: c.listen,
                    uri_host: c.uri_host.clone(),
                    overlay_dir: c
                        .overlay_dir
                        .clone()
                        .unwrap_or_else(|| store.dir().join(".rtmd/overlays").join(&config.name)),
                    claims: store.claims().clone(),
                    limits: crate::nbd::Limits {
                        max_clients: c.max_clients as usize,
                        handshake_timeout: std::time::Duration::from_secs(c.handshake_timeout_s),
                    },
                })
                .map_err(|e| format!("[nbd]: {e}"))?,
            ),
            _ => None,
        };
        let storage = match (&config.storage, &images) {
            (Some(c), Some(store)) => Some(
                Storage::start(
                    StorageOptions {
                        board: config.name.clone(),
                        udc: c.udc.clone(),
                        keyboard: c.keyboard,
                        luns: c.luns,
                        cdrom: c.cdrom,
                        removable: c.removable,
                        inquiry: c.inquiry.clone().unwrap_or_else(|| {
                            // vendor (8), product (16), revision (4)
                            format!("{:<8}{:<16.16}{:<4}", "rtmd", config.name, "1")
                        }),
                        key_delay: Duration::from_millis(c.key_delay_ms),
                        cow_dir: c
                            .cow_dir
                            .clone()
                            .unwrap_or_else(|| store.dir().join(".rtmd/gadget").join(&config.name)),
                    },
                    crate::gadget::host_for(&c.configfs).map_err(|e| format!("[storage]: {e}"))?,
                    store.claims().clone(),
                )
                .map_err(|e| format!("[storage]: {e}"))?,
            ),
            _ => None,
        };
        let capture = match &config.capture {
            Some(c) => Some(Capture::start(c).map_err(|e| format!("[capture]: {e}"))?),
            None => None,
        };
        spawn_lease_ends(ended, gate.clone(), power.clone());
        // The owners that can say whether they answer. The image store and capture have no
        // owner probe yet: their handles hold their own status senders.
        let mut liveness = Liveness::default();
        if let Some(p) = power.clone() {
            liveness.watch("power", move || p.is_alive());
        }
        if let Some(c) = &console {
            liveness.watch("console", owner_exists(c.subscribe_status()));
        }
        if let Some(s) = &storage {
            liveness.watch("storage", owner_exists(s.subscribe()));
        }
        if let Some(n) = nbd.clone() {
            liveness.watch("nbd", move || n.is_alive());
        }
        Ok(Board {
            config,
            power,
            console,
            images,
            nbd,
            storage,
            capture,
            gate,
            liveness,
            stopping: watch::Sender::new(false),
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The subsystems served, as named in `org.rtmd.Dut1.Subsystems`.
    pub fn subsystems(&self) -> Vec<String> {
        [
            ("power", self.power.is_some()),
            ("console", self.console.is_some()),
            ("images", self.images.is_some()),
            ("nbd", self.nbd.is_some()),
            ("storage", self.storage.is_some()),
            (
                "keyboard",
                self.storage.as_ref().is_some_and(Storage::has_keyboard),
            ),
            ("capture", self.capture.is_some()),
        ]
        .into_iter()
        .filter(|(_, present)| *present)
        .map(|(name, _)| name.to_string())
        .collect()
    }

    /// Reads the initial power state in the background: a read, never a switch.
    pub fn probe(&self) {
        if let Some(power) = self.power.clone() {
            tokio::spawn(async move {
                match power.probe().await {
                    Ok(state) => info!(subsystem = "power", "initial state {}", state.as_str()),
                    Err(e) => warn!(subsystem = "power", "cannot read the initial state: {e}"),
                }
            });
        }
    }

    /// The first part whose owner task does not answer, if any (the watchdog is fed only
    /// while there is none).
    pub fn stuck(&self) -> Option<&'static str> {
        self.liveness.stuck()
    }

    /// Turns true when the board starts stopping: a face's accept loop selects on it to
    /// close its listeners before the board is switched off.
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    /// From now on, every face's call is refused by the gate (`Busy` on D-Bus, 503 on the
    /// pdudaemon API, dropped console input), whoever holds the board: without this, a
    /// `Power.On` through a face still open (the pdudaemon API) could land after the
    /// `on_stop = "off"` switch and leave the board on. The daemon's own calls still pass.
    fn refuse_callers(&self) {
        let _ = self.stopping.send_replace(true);
        self.gate.close("the daemon stops");
        self.gate
            .record(None, "rtmd", "Gate.Close", "the daemon stops", Ok(()));
    }

    /// Stops fail-safe: no face's call is taken any more, then recordings are finished,
    /// storage and NBD stopped, and with `on_stop = "off"` the board is switched off.
    pub async fn stop(&self) {
        self.refuse_callers();
        // Recordings are finalized (EOS through the muxer) so their files stay playable.
        if let Some(capture) = self.capture.clone() {
            let _ =
                tokio::task::spawn_blocking(move || capture.stop_all("the daemon stopped")).await;
        }
        // A fetch cut short leaves only a partial file, which the next start removes; cancel
        // now so it is removed at once.
        if let Some(images) = &self.images {
            images.cancel_all();
        }
        // The board sees the USB device unplugged; cow copies are deleted.
        if let Some(storage) = &self.storage {
            storage.stop().await;
        }
        // Clients are cut and the overlay flushed: what FLUSH acknowledged is on disk anyway,
        // this also saves what the board wrote since.
        if let Some(nbd) = &self.nbd {
            nbd.stop().await;
        }
        let (Some(power), Some(config)) = (&self.power, &self.config.power) else {
            return;
        };
        if config.on_stop != OnStop::Off {
            info!(
                subsystem = "power",
                "stopping; power left as it is (on_stop = keep)"
            );
            return;
        }
        let caller = Caller::daemon("on_stop = off");
        let off = self
            .gate
            .run(&caller, "Power.Off", String::new(), |permit| async move {
                Ok::<_, OwnError>(power.off(&permit).await?)
            });
        match tokio::time::timeout(STOP_BUDGET, off).await {
            Ok(Ok(_)) => info!(
                subsystem = "power",
                "stopping; power switched off (on_stop = off)"
            ),
            Ok(Err(e)) => warn!(
                subsystem = "power",
                "stopping; could not switch power off: {e}"
            ),
            Err(_) => warn!(
                subsystem = "power",
                "stopping; switching off took longer than {} s",
                STOP_BUDGET.as_secs()
            ),
        }
    }
}

/// What the daemon's own calls through the gate can fail with. The gate never refuses the
/// daemon, but its type says what a refusal would be.
#[derive(Debug, thiserror::Error)]
enum OwnError {
    #[error("{0}")]
    Power(#[from] PowerError),
    #[error("{0}")]
    Access(#[from] AccessError),
}

impl FaceError for OwnError {
    fn audit_summary(&self) -> String {
        self.to_string()
    }
}

/// Acts on every lease that ends: logs and records it, and with `on_release = "off"`
/// switches the board off (through the gate, as the daemon), so the next holder finds it as a
/// fresh job would.
fn spawn_lease_ends(
    mut ended: tokio::sync::mpsc::UnboundedReceiver<Ended>,
    gate: Gate,
    power: Option<Power>,
) {
    tokio::spawn(async move {
        while let Some(Ended { lease, reason }) = ended.recv().await {
            info!(
                subsystem = "access",
                "lease of {:?} (uid {}) {}",
                lease.holder,
                lease.uid,
                reason.as_str()
            );
            let off = gate.access().config().on_release == OnRelease::Off;
            let result = match (&power, off) {
                (Some(p), true) => gate
                    .run(
                        &Caller::daemon("on_release = off"),
                        "Power.Off",
                        "on_release = off".to_string(),
                        |permit| async move { Ok::<_, OwnError>(p.off(&permit).await?) },
                    )
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                _ => Ok(()),
            };
            let what = if off && power.is_some() {
                "power off (on_release = off)"
            } else {
                ""
            };
            gate.record(
                Some(lease.uid),
                "rtmd",
                match reason {
                    EndReason::Expired => "Lease.Expired",
                    EndReason::Released => "Lease.Released",
                    EndReason::ForceReleased => "Lease.ForceReleased",
                },
                &format!("{:?} {what}", clip(&lease.holder, 80)),
                result,
            );
        }
    });
}

/// The one-line summary for `systemctl status` (`STATUS=`).
pub fn status_line(s: &PowerStatus) -> String {
    let mut line = format!("power {}", s.state.as_str());
    if let Some(m) = s.measured
        && s.state == PowerState::On
    {
        line.push_str(&format!(", {:.2} V, {:.3} A", m.voltage, m.current));
    }
    if let Some(e) = &s.last_error {
        line.push_str(&format!("; last error: {e}"));
    }
    line
}
