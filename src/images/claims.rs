//! Who uses which image of the folder, and the one rule about it: an image is read by any
//! number of users, or written by one and used by nobody else. The board writes an image
//! through a `cow` NBD export's overlay or a `cow` USB LUN's copy, never the image itself,
//! but a second writer beside it would still see a medium change under its feet, so the rule
//! is about the image a writer stands on.
//!
//! The NBD server and the USB gadget take a claim before they serve an image, and image
//! removal asks here too, all under this one lock, so no two of them can slip past each
//! other (`docs/storage.md`, `docs/nbd.md`). The store owns the claims
//! ([`crate::images::Store::claims`]); the subsystems only hold a handle.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// Who serves an image to the board.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum User {
    /// The NBD export (one at a time per board).
    Nbd,
    /// A LUN of the USB mass-storage gadget (one claim per LUN).
    Usb,
}

/// One use of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub user: User,
    /// The board may write through it (`cow`).
    pub writable: bool,
}

/// Why a claim is refused: the claim in the way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conflict {
    pub existing: Claim,
}

impl Conflict {
    /// What is in the way of image `name` and what to do about it: the one wording of
    /// every refusal (NBD export, USB attach, removal).
    pub fn explain(&self, name: &str) -> String {
        let mode = if self.existing.writable { "cow" } else { "ro" };
        match self.existing.user {
            User::Nbd => format!(
                "{name} is exported over NBD ({mode}); unexport it first: an image is \
                 written by one user at a time, and used by nobody else meanwhile"
            ),
            User::Usb => format!(
                "{name} is attached as USB storage ({mode}); detach it first (usbg-ms off): \
                 an image is written by one user at a time, and used by nobody else meanwhile"
            ),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Claims(Arc<Mutex<HashMap<PathBuf, Vec<Claim>>>>);

impl Claims {
    pub fn new() -> Claims {
        Claims::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<PathBuf, Vec<Claim>>> {
        // Every change is one push or one removal: a panic elsewhere cannot leave it torn.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes `claim` on `path` if the rule allows it. `Ok(true)`: taken now (the caller
    /// releases it if what it was for then fails); `Ok(false)`: the NBD export holds exactly
    /// this claim already (an export asked for again).
    pub fn take(&self, path: &Path, claim: Claim) -> Result<bool, Conflict> {
        let mut held = self.lock();
        let existing = held.get(path).map(Vec::as_slice).unwrap_or_default();
        if claim.user == User::Nbd && existing.contains(&claim) {
            return Ok(false);
        }
        // The NBD server's one-export-at-a-time rule settles a second export; here it is
        // only the others' claims that count.
        if let Some(other) = existing
            .iter()
            .filter(|c| !(claim.user == User::Nbd && c.user == User::Nbd))
            .find(|c| c.writable || claim.writable)
        {
            return Err(Conflict { existing: *other });
        }
        held.entry(path.to_path_buf()).or_default().push(claim);
        Ok(true)
    }

    /// Gives one claim back (a LUN ejected, the export withdrawn).
    pub fn release(&self, path: &Path, claim: Claim) {
        let mut held = self.lock();
        if let Some(list) = held.get_mut(path) {
            if let Some(i) = list.iter().position(|c| *c == claim) {
                list.remove(i);
            }
            if list.is_empty() {
                held.remove(path);
            }
        }
    }

    /// Runs `remove` only while nobody uses `path`, under the lock, so nobody can take the
    /// image in between; otherwise the first claim in the way.
    pub fn unclaimed<T>(&self, path: &Path, remove: impl FnOnce() -> T) -> Result<T, Conflict> {
        let held = self.lock();
        match held.get(path).and_then(|list| list.first()) {
            Some(existing) => Err(Conflict {
                existing: *existing,
            }),
            None => Ok(remove()),
        }
    }

    /// The claims on `path` now.
    pub fn on(&self, path: &Path) -> Vec<Claim> {
        self.lock().get(path).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NBD_RO: Claim = Claim {
        user: User::Nbd,
        writable: false,
    };
    const NBD_COW: Claim = Claim {
        user: User::Nbd,
        writable: true,
    };
    const USB_RO: Claim = Claim {
        user: User::Usb,
        writable: false,
    };
    const USB_COW: Claim = Claim {
        user: User::Usb,
        writable: true,
    };

    #[test]
    fn readers_share_a_writer_is_alone() {
        let c = Claims::new();
        let p = Path::new("/images/a.img");
        assert_eq!(c.take(p, NBD_RO), Ok(true));
        assert_eq!(c.take(p, USB_RO), Ok(true));
        assert_eq!(c.take(p, USB_RO), Ok(true), "two LUNs may read one image");
        assert_eq!(
            c.take(p, USB_COW),
            Err(Conflict { existing: NBD_RO }),
            "no writer beside readers"
        );
        c.release(p, NBD_RO);
        c.release(p, USB_RO);
        c.release(p, USB_RO);
        assert!(c.on(p).is_empty());
        assert_eq!(c.take(p, NBD_COW), Ok(true));
        assert_eq!(c.take(p, NBD_COW), Ok(false), "the same export again");
        assert_eq!(c.take(p, USB_RO), Err(Conflict { existing: NBD_COW }));
        assert_eq!(
            c.take(p, NBD_RO),
            Ok(true),
            "the NBD server refuses a second export"
        );
        c.release(p, NBD_RO);
        // Another image is another matter.
        assert_eq!(c.take(Path::new("/images/b.img"), USB_COW), Ok(true));
    }

    #[test]
    fn removal_waits_for_nobody() {
        let c = Claims::new();
        let p = Path::new("/images/a.img");
        c.take(p, USB_RO).unwrap();
        assert_eq!(c.unclaimed(p, || 1), Err(Conflict { existing: USB_RO }));
        c.release(p, USB_RO);
        assert_eq!(c.unclaimed(p, || 1), Ok(1));
        // A refused claim leaves nothing behind.
        c.take(p, NBD_COW).unwrap();
        assert!(c.take(Path::new("/images/a.img"), USB_RO).is_err());
        c.release(p, NBD_COW);
        assert!(c.on(p).is_empty());
    }
}
