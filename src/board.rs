//! One board: builds the configured subsystems, runs them, and stops them fail-safe.
//!
//! This is the table of contents of the daemon. Building touches no hardware (starting never
//! switches power); stopping leaves power as `on_stop` says.

use std::time::Duration;

use tracing::{info, warn};

use crate::access::{Access, Ended, OnRelease};
use crate::bus;
use crate::capture::Capture;
use crate::claims::Claims;
use crate::config::{Config, OnStop};
use crate::console::Console;
use crate::gadget::{Storage, StorageOptions};
use crate::images::Store;
use crate::nbd::{Nbd, NbdOptions};
use crate::pdu_api;
use crate::power::{Power, PowerState, PowerStatus};

/// How long stopping may spend switching the board off before giving up (systemd's stop
/// timeout must be longer).
const STOP_BUDGET: Duration = Duration::from_secs(20);

pub struct Board {
    pub config: Config,
    pub power: Option<Power>,
    pub console: Option<Console>,
    pub images: Option<Store>,
    pub nbd: Option<Nbd>,
    pub storage: Option<Storage>,
    pub capture: Option<Capture>,
    /// Images the USB gadget holds, so NBD never exports one writable meanwhile.
    pub claims: Claims,
    /// Who holds the board, checked by every mutating D-Bus method; and the audit trail.
    pub gate: bus::Gate,
}

impl Board {
    /// Spawns the subsystems' owner tasks and binds their listeners. Must run inside the
    /// tokio runtime. Fails only for what a restart cannot fix by waiting (a TCP port
    /// taken by another program); hardware that is not there yet is not an error.
    pub async fn build(config: Config) -> Result<Board, String> {
        for section in &config.pending_sections {
            warn!("[{section}] is configured but not served by this version of rtmd yet");
        }
        let power = config.power.as_ref().map(Power::spawn);
        let console = match &config.console {
            Some(c) => Some(Console::start(c).await.map_err(|e| e.to_string())?),
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
                })
                .map_err(|e| format!("[nbd]: {e}"))?,
            ),
            _ => None,
        };
        let claims = Claims::new();
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
                    crate::gadget::host_for(c.configfs.folder()),
                    claims.clone(),
                    nbd.clone(),
                )
                .map_err(|e| format!("[storage]: {e}"))?,
            ),
            _ => None,
        };
        let capture = match &config.capture {
            Some(c) => Some(Capture::start(c).map_err(|e| format!("[capture]: {e}"))?),
            None => None,
        };
        let (access, ended) = Access::new(config.access.clone());
        access.spawn_expiry();
        let gate = bus::Gate::new(access);
        spawn_lease_ends(ended, gate.clone(), power.clone());
        if let (Some(api), Some(power)) = (&config.pdudaemon_api, &power) {
            pdu_api::start(api, power.clone()).await?;
        }
        Ok(Board {
            config,
            power,
            console,
            images,
            nbd,
            storage,
            capture,
            claims,
            gate,
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

    /// The root D-Bus object of this board.
    pub fn dut(&self) -> bus::Dut {
        bus::Dut::new(self.name(), self.subsystems(), self.gate.clone())
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

    /// True while every subsystem's owner task makes progress (feeds the watchdog).
    pub fn is_alive(&self) -> bool {
        self.power.as_ref().is_none_or(Power::is_alive)
    }

    /// Stops fail-safe: with `on_stop = "off"` the board is switched off first.
    pub async fn stop(&self) {
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
        match tokio::time::timeout(STOP_BUDGET, power.off()).await {
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

/// Acts on every lease that ends: logs and records it, and with `on_release = "off"`
/// switches the board off, so the next holder finds it as a fresh job would.
fn spawn_lease_ends(
    mut ended: tokio::sync::mpsc::UnboundedReceiver<Ended>,
    gate: bus::Gate,
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
                (Some(p), true) => p.off().await.map(|_| ()).map_err(bus::Error::from),
                _ => Ok(()),
            };
            let what = if off && power.is_some() {
                "power off (on_release = off)"
            } else {
                ""
            };
            gate.audit(
                Some(lease.uid),
                match reason {
                    crate::access::EndReason::Expired => "Lease.Expired",
                    crate::access::EndReason::Released => "Lease.Released",
                    crate::access::EndReason::ForceReleased => "Lease.ForceReleased",
                },
                &format!("{:?} {what}", crate::access::clip(&lease.holder, 80)),
                &result.as_ref().map(|_| ()),
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
