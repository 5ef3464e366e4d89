//! Which images the USB gadget holds, so the same image is never writable through the
//! gadget and an NBD export at once (docs/storage.md).
//!
//! A tiny shared registry, also the serialization point: the gadget checks the NBD export
//! and records its claim under the lock, and the NBD interface checks the claims and exports
//! under the same lock, so the two can never slip past each other.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// The gadget's hold on one image (its canonical path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// The board may write to it (a `cow` LUN).
    pub writable: bool,
}

#[derive(Clone, Default)]
pub struct Claims(Arc<Mutex<HashMap<PathBuf, Claim>>>);

impl Claims {
    pub fn new() -> Claims {
        Claims::default()
    }

    /// The registry, locked: check and act while holding it.
    pub fn lock(&self) -> MutexGuard<'_, HashMap<PathBuf, Claim>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn release(&self, path: &Path) {
        self.lock().remove(path);
    }

    pub fn get(&self, path: &Path) -> Option<Claim> {
        self.lock().get(path).copied()
    }
}
