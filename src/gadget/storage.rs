//! The gadget's logic, run by its owner thread: which media are in which LUN, when the
//! gadget is created, changed in place, or removed, and the keystrokes.
//!
//! Rules: the gadget is created on the first attach (or keystroke) and bound to the
//! configured UDC, or to the only one present; a removable LUN changes its medium in place
//! (the board sees a medium change, not an unplug); a non-removable LUN can only change by
//! re-creating the gadget; `Detach` removes the gadget (an unplug), and so does stopping.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::configfs::{Configfs, GadgetSpec, LunSpec};
use super::{GadgetError, Mode, Request, Status, StorageOptions, cow, keyboard};
use crate::images::{Claim, Claims, User};

/// How long one report may wait for the board to read the previous one (or, right after
/// the gadget appeared, for the board to configure it).
const REPORT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a fresh gadget's keyboard device may take to appear in /dev.
const DEVICE_TIMEOUT: Duration = Duration::from_secs(3);

/// A medium in a LUN.
#[derive(Debug, Clone)]
pub struct Medium {
    pub name: String,
    /// The image in the image folder.
    pub base: PathBuf,
    pub mode: Mode,
    /// What the LUN opens: the image (`ro`) or its private copy (`cow`).
    pub file: PathBuf,
}

pub struct Owner {
    options: StorageOptions,
    host: Box<dyn Configfs>,
    claims: Claims,
    status: watch::Sender<Status>,
    /// The UDC the gadget is bound to; `None`: no gadget.
    bound: Option<String>,
    media: Vec<Option<Medium>>,
}

impl Owner {
    pub fn new(
        options: StorageOptions,
        host: Box<dyn Configfs>,
        claims: Claims,
        status: watch::Sender<Status>,
    ) -> Owner {
        let media = vec![None; options.luns];
        Owner {
            options,
            host,
            claims,
            status,
            bound: None,
            media,
        }
    }

    /// Serves requests until every handle is gone, then removes the gadget.
    pub(crate) fn run(mut self, mut requests: mpsc::Receiver<Request>) {
        while let Some(request) = requests.blocking_recv() {
            match request {
                Request::Attach {
                    lun,
                    name,
                    path,
                    mode,
                    reply,
                } => {
                    let _ = reply.send(self.attach(lun, &name, &path, mode));
                }
                Request::Eject { lun, reply } => {
                    let _ = reply.send(self.eject(lun));
                }
                Request::Detach { reply } => {
                    let _ = reply.send(self.detach());
                }
                Request::Keys { reports, reply } => {
                    let _ = reply.send(self.keys(&reports));
                }
            }
        }
        if self.bound.is_some()
            && let Err(e) = self.detach()
        {
            warn!(subsystem = "storage", "removing the gadget: {e}");
        }
    }

    pub fn media(&self) -> &[Option<Medium>] {
        &self.media
    }

    pub fn bound_udc(&self) -> Option<&str> {
        self.bound.as_deref()
    }

    fn publish(&self) {
        let status = match self.media.first().and_then(Option::as_ref) {
            Some(m) => Status {
                attached: true,
                image: m.name.clone(),
                mode: m.mode.as_str().to_string(),
                udc: self.bound.clone().unwrap_or_default(),
            },
            None => Status {
                udc: self.bound.clone().unwrap_or_default(),
                ..Status::default()
            },
        };
        self.status.send_if_modified(|s| {
            let changed = *s != status;
            *s = status;
            changed
        });
    }

    /// The copy a `cow` LUN writes to.
    fn cow_path(&self, lun: usize) -> PathBuf {
        self.options.cow_dir.join(format!("lun{lun}.img"))
    }

    pub fn attach(
        &mut self,
        lun: usize,
        name: &str,
        path: &Path,
        mode: Mode,
    ) -> Result<(), GadgetError> {
        if let Some(m) = lun_mut(&mut self.media, lun)? {
            return Err(GadgetError::Busy(format!(
                "{} is attached ({}); detach it first",
                m.name,
                m.mode.as_str()
            )));
        }
        self.host.check_mounted()?;
        let file = match mode {
            Mode::Ro => path.to_path_buf(),
            Mode::Cow => {
                let copy = self.cow_path(lun);
                let started = Instant::now();
                let kind = cow::copy(path, &copy).map_err(|e| {
                    GadgetError::Hardware(format!("cannot copy {name} for cow: {e}"))
                })?;
                info!(
                    subsystem = "storage",
                    "cow copy of {name} ({}) in {} ms",
                    kind.as_str(),
                    started.elapsed().as_millis()
                );
                copy
            }
        };
        let medium = Medium {
            name: name.to_string(),
            base: path.to_path_buf(),
            mode,
            file,
        };
        let result = self.insert(lun, &medium);
        match result {
            Ok(()) => {
                info!(
                    subsystem = "storage",
                    "LUN {lun}: {name} ({}) on {}",
                    mode.as_str(),
                    self.bound.as_deref().unwrap_or("?")
                );
                *lun_mut(&mut self.media, lun)? = Some(medium);
                self.publish();
                Ok(())
            }
            Err(e) => {
                if mode == Mode::Cow {
                    let _ = std::fs::remove_file(&medium.file);
                }
                Err(e)
            }
        }
    }

    /// Puts `medium` into the gadget: in place when the LUN is removable and the gadget is
    /// there, else by (re)creating the gadget.
    fn insert(&mut self, lun: usize, medium: &Medium) -> Result<(), GadgetError> {
        let read_only = medium.mode == Mode::Ro || self.options.cdrom;
        if self.bound.is_some() && self.options.removable {
            return self.host.set_lun_file(lun, Some(&medium.file), read_only);
        }
        let mut media = self.media.clone();
        *lun_mut(&mut media, lun)? = Some(medium.clone());
        self.rebuild(&media)
    }

    /// Creates the gadget with `media` (removing ours first if it is there).
    fn rebuild(&mut self, media: &[Option<Medium>]) -> Result<(), GadgetError> {
        self.host.check_mounted()?;
        let udc = match &self.bound {
            Some(udc) => udc.clone(),
            None => self.choose_udc()?,
        };
        if self.bound.take().is_some() {
            self.host.remove()?;
        }
        let spec = self.spec(media);
        self.host.create(&spec, &udc)?;
        self.bound = Some(udc);
        self.publish();
        Ok(())
    }

    fn choose_udc(&self) -> Result<String, GadgetError> {
        let present = self.host.udcs()?;
        let udc = match &self.options.udc {
            Some(udc) if present.contains(udc) => udc.clone(),
            Some(udc) => {
                return Err(GadgetError::NotConfigured(format!(
                    "no UDC {udc} (present: {})",
                    list(&present)
                )));
            }
            None => match present.as_slice() {
                [only] => only.clone(),
                [] => {
                    return Err(GadgetError::NotConfigured(
                        "no USB device controller (UDC) present: is the board's OTG port's \
                         driver loaded?"
                            .to_string(),
                    ));
                }
                several => {
                    return Err(GadgetError::NotConfigured(format!(
                        "several UDCs ({}): set udc in [storage]",
                        list(several)
                    )));
                }
            },
        };
        if let Some(other) = self.host.bound_to(&udc)? {
            return Err(GadgetError::Busy(format!(
                "UDC {udc} is bound to another gadget ({other})"
            )));
        }
        Ok(udc)
    }

    fn spec(&self, media: &[Option<Medium>]) -> GadgetSpec {
        let o = &self.options;
        // A non-removable LUN must have a medium when the gadget binds: such LUNs are left
        // out until something is attached.
        let with_storage = o.removable || media.iter().any(Option::is_some);
        let luns = if with_storage {
            media
                .iter()
                .map(|m| LunSpec {
                    file: m.as_ref().map(|m| m.file.clone()),
                    read_only: o.cdrom || m.as_ref().is_none_or(|m| m.mode == Mode::Ro),
                    cdrom: o.cdrom,
                    removable: o.removable,
                    inquiry: o.inquiry.clone(),
                })
                .collect()
        } else {
            Vec::new()
        };
        GadgetSpec {
            name: format!("rtmd-{}", o.board),
            manufacturer: "rtmd".to_string(),
            product: format!("rtmd {}", o.board),
            serial: o.board.clone(),
            luns,
            keyboard: o.keyboard.then(|| keyboard::REPORT_DESCRIPTOR.to_vec()),
        }
    }

    pub fn eject(&mut self, lun: usize) -> Result<(), GadgetError> {
        let Some(medium) = self.media.get(lun).cloned().flatten() else {
            return Err(GadgetError::NotFound(format!(
                "nothing is attached to LUN {lun}"
            )));
        };
        if !self.options.removable {
            return Err(GadgetError::InvalidArgs(
                "the LUNs are not removable (removable = false): use Detach".to_string(),
            ));
        }
        self.host.force_eject(lun)?;
        *lun_mut(&mut self.media, lun)? = None;
        self.forget(&medium);
        self.publish();
        Ok(())
    }

    pub fn detach(&mut self) -> Result<(), GadgetError> {
        if self.bound.is_none() {
            return Err(GadgetError::NotFound("nothing is attached".to_string()));
        }
        self.host.remove()?;
        self.bound = None;
        let media: Vec<Medium> = self.media.iter_mut().filter_map(Option::take).collect();
        for medium in &media {
            self.forget(medium);
        }
        info!(subsystem = "storage", "gadget removed");
        self.publish();
        Ok(())
    }

    /// Deletes a cow copy, and gives back this LUN's claim on the image.
    fn forget(&self, medium: &Medium) {
        if medium.mode == Mode::Cow
            && let Err(e) = std::fs::remove_file(&medium.file)
        {
            warn!(
                subsystem = "storage",
                "cannot delete {}: {e}",
                medium.file.display()
            );
        }
        self.claims.release(
            &medium.base,
            Claim {
                user: User::Usb,
                writable: medium.mode == Mode::Cow,
            },
        );
    }

    pub fn keys(&mut self, reports: &[keyboard::Report]) -> Result<(), GadgetError> {
        if !self.options.keyboard {
            return Err(GadgetError::NotConfigured(
                "no keyboard: set keyboard = true in [storage]".to_string(),
            ));
        }
        if self.bound.is_none() {
            let media = self.media.clone();
            self.rebuild(&media)?;
        }
        let device = self.keyboard_device()?;
        let mut file = OpenOptions::new()
            .append(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(&device)
            .map_err(|e| GadgetError::Hardware(format!("{}: {e}", device.display())))?;
        for (i, report) in reports.iter().enumerate() {
            if i > 0 {
                std::thread::sleep(self.options.key_delay);
            }
            write_report(&mut file, report)?;
        }
        Ok(())
    }

    fn keyboard_device(&self) -> Result<PathBuf, GadgetError> {
        let deadline = Instant::now() + DEVICE_TIMEOUT;
        loop {
            match self.host.keyboard_device() {
                Ok(path) => return Ok(path),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

/// Writes one report; the kernel takes one at a time, so a full queue (or a gadget the
/// board has not configured yet) is retried until [`REPORT_TIMEOUT`].
fn write_report(file: &mut std::fs::File, report: &keyboard::Report) -> Result<(), GadgetError> {
    let deadline = Instant::now() + REPORT_TIMEOUT;
    loop {
        match file.write(report) {
            Ok(8) => return Ok(()),
            Ok(n) => {
                return Err(GadgetError::Hardware(format!(
                    "the keyboard took {n} of 8 bytes"
                )));
            }
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(nix::libc::EAGAIN | nix::libc::ESHUTDOWN)
                ) =>
            {
                if Instant::now() >= deadline {
                    return Err(GadgetError::Timeout(format!(
                        "the board does not read the keyboard ({e}): is it on and connected?"
                    )));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(GadgetError::Hardware(format!("keyboard: {e}"))),
        }
    }
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

/// The slot of LUN `lun`, or the caller's error for a LUN the gadget does not have.
fn lun_mut(media: &mut [Option<Medium>], lun: usize) -> Result<&mut Option<Medium>, GadgetError> {
    media
        .get_mut(lun)
        .ok_or_else(|| GadgetError::InvalidArgs(format!("no LUN {lun}")))
}
