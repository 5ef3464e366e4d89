//! The USB gadget (docs/storage.md): the dispatcher poses as a USB disk the board boots
//! from, and as a USB keyboard, through the kernel's configfs.
//!
//! Parts: [`configfs`] the trait of configfs operations and the gadget's description,
//! [`real`] the kernel's configfs through the `usb-gadget` crate, [`fake`] a folder laid out
//! like configfs (tests, demo), [`keyboard`] the US layout and HID reports, [`cow`] the
//! private copy a `cow` LUN writes to, [`storage`] the logic (attach, eject, detach, type),
//! run by one owner thread per gadget. This handle ([`Storage`]) is what the board and the
//! D-Bus layer use; nothing here knows D-Bus.

pub mod configfs;
pub mod cow;
pub mod fake;
pub mod keyboard;
pub mod real;
pub mod storage;

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tracing::warn;

use crate::claims::Claims;
use crate::nbd::Nbd;

pub use configfs::Configfs;
pub use storage::Owner;

/// The configfs to drive: the kernel's, unless `[storage] configfs` names a plain folder
/// (tests, demo); a folder that is the kernel's configfs mount is driven as the kernel's.
pub fn host_for(configfs: Option<&Path>) -> Box<dyn Configfs> {
    match configfs {
        Some(dir) if real::configfs_mount().as_deref() != Some(dir) => {
            Box::new(fake::FolderConfigfs::new(dir))
        }
        _ => Box::new(real::KernelConfigfs::new()),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GadgetError {
    /// configfs not mounted, no UDC, no keyboard configured: the host's setup.
    #[error("{0}")]
    NotConfigured(String),
    /// Something is attached already, the UDC serves another gadget, NBD has the image.
    #[error("{0}")]
    Busy(String),
    /// Nothing attached.
    #[error("{0}")]
    NotFound(String),
    /// A bad mode, LUN, key name or character.
    #[error("{0}")]
    InvalidArgs(String),
    /// configfs or the keyboard device failed.
    #[error("{0}")]
    Hardware(String),
    /// The board did not read the keyboard's reports.
    #[error("{0}")]
    Timeout(String),
}

/// `ro`: the LUN is the image itself, read-only; `cow`: the board writes to a private copy.
pub use crate::images::Mode;

/// `[storage]`, resolved.
#[derive(Debug, Clone)]
pub struct StorageOptions {
    pub board: String,
    /// The UDC; `None`: the only one present.
    pub udc: Option<String>,
    pub keyboard: bool,
    pub luns: usize,
    pub cdrom: bool,
    pub removable: bool,
    /// SCSI INQUIRY string (28 characters: vendor, product, revision).
    pub inquiry: String,
    pub key_delay: Duration,
    /// Where `cow` copies live (the image folder's filesystem, so reflinks work).
    pub cow_dir: PathBuf,
}

/// What the D-Bus properties show (LUN 0).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    pub attached: bool,
    pub image: String,
    pub mode: String,
    /// The UDC the gadget is bound to; empty when there is no gadget.
    pub udc: String,
}

pub(crate) enum Request {
    Attach {
        lun: usize,
        name: String,
        path: PathBuf,
        mode: Mode,
        reply: oneshot::Sender<Result<(), GadgetError>>,
    },
    Eject {
        lun: usize,
        reply: oneshot::Sender<Result<(), GadgetError>>,
    },
    Detach {
        reply: oneshot::Sender<Result<(), GadgetError>>,
    },
    Keys {
        reports: Vec<keyboard::Report>,
        reply: oneshot::Sender<Result<(), GadgetError>>,
    },
}

/// The board's USB gadget. Cheap to clone; the owner thread holds configfs.
#[derive(Clone)]
pub struct Storage {
    requests: mpsc::Sender<Request>,
    status: watch::Receiver<Status>,
    claims: Claims,
    nbd: Option<Nbd>,
    keyboard: bool,
    luns: usize,
    cdrom: bool,
}

impl Storage {
    /// Starts the owner thread (`rtmd-gadget`). Nothing touches configfs until the first
    /// attach or keystroke.
    pub fn start(
        options: StorageOptions,
        host: Box<dyn Configfs>,
        claims: Claims,
        nbd: Option<Nbd>,
    ) -> Result<Storage, GadgetError> {
        let (requests, rx) = mpsc::channel(8);
        let (status_tx, status) = watch::channel(Status::default());
        let keyboard = options.keyboard;
        let luns = options.luns;
        let cdrom = options.cdrom;
        let owner = Owner::new(options, host, claims.clone(), status_tx);
        std::thread::Builder::new()
            .name("rtmd-gadget".to_string())
            .spawn(move || owner.run(rx))
            .map_err(|e| GadgetError::Hardware(format!("cannot start the gadget thread: {e}")))?;
        Ok(Storage {
            requests,
            status,
            claims,
            nbd,
            keyboard,
            luns,
            cdrom,
        })
    }

    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    pub fn has_keyboard(&self) -> bool {
        self.keyboard
    }

    async fn ask(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<(), GadgetError>>) -> Request,
    ) -> Result<(), GadgetError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(make(reply))
            .await
            .map_err(|_| GadgetError::Hardware("the gadget thread has stopped".to_string()))?;
        answer
            .await
            .map_err(|_| GadgetError::Hardware("the gadget thread has stopped".to_string()))?
    }

    /// Puts `path` (resolved inside the image folder, named `name`) into LUN `lun`.
    pub async fn attach(
        &self,
        lun: usize,
        name: &str,
        path: &Path,
        mode: Mode,
    ) -> Result<(), GadgetError> {
        if lun >= self.luns {
            return Err(GadgetError::InvalidArgs(format!(
                "LUN {lun}: the gadget has {} LUN{}",
                self.luns,
                if self.luns == 1 { "" } else { "s" }
            )));
        }
        let writable = mode == Mode::Cow && !self.cdrom;
        if mode == Mode::Cow && self.cdrom {
            return Err(GadgetError::InvalidArgs(
                "the LUNs are CD-ROMs (cdrom = true), which are read-only: use mode ro".to_string(),
            ));
        }
        let fresh = {
            let mut claims = self.claims.lock();
            if let Some(nbd) = &self.nbd
                && let Some((exported, nbd_mode)) = nbd.exported()
                && exported == path
                && (writable || nbd_mode == crate::nbd::Mode::Cow)
            {
                return Err(GadgetError::Busy(format!(
                    "{name} is exported over NBD ({}); unexport it first: an image is never \
                     writable through the gadget and NBD at once",
                    nbd_mode.as_str()
                )));
            }
            if let Some(claim) = claims.get(path)
                && (claim.writable || writable)
            {
                return Err(GadgetError::Busy(format!(
                    "{name} is attached already; detach it first"
                )));
            }
            claims
                .insert(path.to_path_buf(), crate::claims::Claim { writable })
                .is_none()
        };
        let result = self
            .ask(|reply| Request::Attach {
                lun,
                name: name.to_string(),
                path: path.to_path_buf(),
                mode,
                reply,
            })
            .await;
        if result.is_err() && fresh {
            // The owner releases what it attached; this releases what it never got.
            self.claims.release(path);
        }
        result
    }

    /// Takes the medium out of LUN `lun` without unbinding (the board sees an empty drive).
    pub async fn eject(&self, lun: usize) -> Result<(), GadgetError> {
        self.ask(|reply| Request::Eject { lun, reply }).await
    }

    /// Removes the gadget: the board sees the USB device unplugged.
    pub async fn detach(&self) -> Result<(), GadgetError> {
        self.ask(|reply| Request::Detach { reply }).await
    }

    /// Types `text` on the US layout.
    pub async fn type_text(&self, text: &str) -> Result<(), GadgetError> {
        self.check_keyboard()?;
        let reports =
            keyboard::type_reports(text).map_err(|e| GadgetError::InvalidArgs(e.to_string()))?;
        self.ask(|reply| Request::Keys { reports, reply }).await
    }

    /// Presses the chord `keys` (`["ctrl", "alt", "delete"]`) and releases it.
    pub async fn press(&self, keys: &[String]) -> Result<(), GadgetError> {
        self.check_keyboard()?;
        let reports =
            keyboard::chord_reports(keys).map_err(|e| GadgetError::InvalidArgs(e.to_string()))?;
        self.ask(|reply| Request::Keys { reports, reply }).await
    }

    fn check_keyboard(&self) -> Result<(), GadgetError> {
        if self.keyboard {
            Ok(())
        } else {
            Err(GadgetError::NotConfigured(
                "no keyboard: set keyboard = true in [storage]".to_string(),
            ))
        }
    }

    /// Removes the gadget and the cow copies (daemon stop). Nothing attached is fine.
    pub async fn stop(&self) {
        match self.detach().await {
            Ok(()) | Err(GadgetError::NotFound(_)) => {}
            Err(e) => warn!(subsystem = "storage", "stopping: {e}"),
        }
    }
}

#[cfg(test)]
mod tests;
