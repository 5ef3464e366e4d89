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

use crate::access::Permit;
use crate::config::ConfigfsChoice;
use crate::images::{Claim, Claims, User};

pub use configfs::Configfs;
pub use storage::Owner;

/// The configfs to drive, as `[storage]` chose it: the kernel's (`configfs`, or nothing
/// said), or a folder laid out like it (`fake_configfs`: tests, demo). Never guessed from a
/// path: a `configfs` that is not where the kernel's is mounted is an error, not a folder.
pub fn host_for(choice: &ConfigfsChoice) -> Result<Box<dyn Configfs>, GadgetError> {
    match choice {
        ConfigfsChoice::Folder(dir) => Ok(Box::new(fake::FolderConfigfs::new(dir))),
        ConfigfsChoice::Kernel(Some(dir)) => match real::configfs_mount() {
            Some(mount) if mount != *dir => Err(GadgetError::NotConfigured(format!(
                "configfs = {:?}, but the kernel's configfs is mounted at {} (a folder laid \
                 out like configfs, for tests, is `fake_configfs`)",
                dir.display().to_string(),
                mount.display()
            ))),
            // Mounted there, or not mounted yet: an attach says so then.
            _ => Ok(Box::new(real::KernelConfigfs::new())),
        },
        ConfigfsChoice::Kernel(None) => Ok(Box::new(real::KernelConfigfs::new())),
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
    /// The image folder's claims: the one-writer rule, shared with NBD and removal.
    claims: Claims,
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
        _: &Permit,
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
        let claim = Claim {
            user: User::Usb,
            writable,
        };
        // Taken before the owner attaches: NBD cannot take the image in between.
        self.claims
            .take(path, claim)
            .map_err(|c| GadgetError::Busy(c.explain(name)))?;
        let result = self
            .ask(|reply| Request::Attach {
                lun,
                name: name.to_string(),
                path: path.to_path_buf(),
                mode,
                reply,
            })
            .await;
        if result.is_err() {
            // The owner releases what it attached; this releases what it never got.
            self.claims.release(path, claim);
        }
        result
    }

    /// Takes the medium out of LUN `lun` without unbinding (the board sees an empty drive).
    pub async fn eject(&self, _: &Permit, lun: usize) -> Result<(), GadgetError> {
        self.ask(|reply| Request::Eject { lun, reply }).await
    }

    /// Removes the gadget: the board sees the USB device unplugged.
    pub async fn detach(&self, _: &Permit) -> Result<(), GadgetError> {
        self.unplug().await
    }

    async fn unplug(&self) -> Result<(), GadgetError> {
        self.ask(|reply| Request::Detach { reply }).await
    }

    /// Types `text` on the US layout.
    pub async fn type_text(&self, _: &Permit, text: &str) -> Result<(), GadgetError> {
        self.check_keyboard()?;
        let reports =
            keyboard::type_reports(text).map_err(|e| GadgetError::InvalidArgs(e.to_string()))?;
        self.ask(|reply| Request::Keys { reports, reply }).await
    }

    /// Presses the chord `keys` (`["ctrl", "alt", "delete"]`) and releases it.
    pub async fn press(&self, _: &Permit, keys: &[String]) -> Result<(), GadgetError> {
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
        match self.unplug().await {
            Ok(()) | Err(GadgetError::NotFound(_)) => {}
            Err(e) => warn!(subsystem = "storage", "stopping: {e}"),
        }
    }
}

#[cfg(test)]
mod tests;
