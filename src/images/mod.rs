//! The image store: the board's one image folder (`[images] dir`), and fetching images into
//! it (`docs/images.md`).
//!
//! This module owns the folder's naming rules (what a valid image name is, and that nothing
//! outside the folder is ever reachable through one), the listing and removal of images, and
//! the fetch pipeline: source (http, https or a local file) -> sha256 of the source bytes ->
//! decompression detected by magic bytes -> sparse writer -> atomic rename. It knows nothing
//! of D-Bus; `bus/images.rs` translates.
//!
//! The store keeps its own state under `<dir>/.rtmd/`: partial files of running fetches
//! (`partial/`, deleted on failure, and at start-up those no running rtmd holds) and the cache
//! index (`cache/`, one record per source checksum). Names starting with `.` are refused as
//! image names, so no client can reach that state; so are names with control characters,
//! which would reach D-Bus properties and log lines.
//!
//! Local sources are read only from the folders the admin lists (`[images] local_dirs`) and
//! only what the caller could read (`local.rs`).

mod cache;
pub mod claims;
mod decode;
mod fetch;
pub mod fuzz;
mod local;
mod source;
mod sparse;

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tracing::info;

use crate::access::{Permit, clip};
use crate::config::ImagesConfig;
pub use claims::{Claim, Claims, User};

pub use fetch::{FetchJob, JobState, Progress};
/// Places never fetched from, whatever `[images] local_dirs` lists.
pub use local::FORBIDDEN as FORBIDDEN_SOURCES;

/// The store's own folder inside the image folder.
const STATE_DIR: &str = ".rtmd";

/// Why an image operation failed.
/// How a subsystem lends an image to the board: read-only, or copy-on-write (the board
/// writes, the image stays byte-identical: the NBD server keeps an overlay, USB storage a
/// private copy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Ro,
    Cow,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "ro" => Some(Mode::Ro),
            "cow" => Some(Mode::Cow),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Ro => "ro",
            Mode::Cow => "cow",
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgs(String),
    #[error("{0}")]
    NotFound(String),
    /// A name or path that leads outside the image folder.
    #[error("{0}")]
    Outside(String),
    #[error("{0}")]
    Busy(String),
    /// A local source the caller may not fetch (not readable by them, a forbidden place).
    #[error("{0}")]
    Denied(String),
    #[error("{0}")]
    Io(String),
    /// The source could not be read: an HTTP status, an unreachable host, a TLS failure.
    #[error("{0}")]
    Source(String),
    #[error("checksum mismatch: expected sha256 {expected}, the source has {actual}")]
    Checksum { expected: String, actual: String },
    /// A compressed stream that does not decode.
    #[error("{0}")]
    Corrupt(String),
    #[error("{0}")]
    NoSpace(String),
    #[error("cancelled")]
    Cancelled,
}

impl Error {
    /// A short machine-readable kind (the job's `ErrorKind` property).
    pub fn kind(&self) -> &'static str {
        match self {
            Error::InvalidArgs(_) => "invalid-args",
            Error::NotFound(_) => "not-found",
            Error::Outside(_) => "outside",
            Error::Busy(_) => "busy",
            Error::Denied(_) => "denied",
            Error::Io(_) => "io",
            Error::Source(_) => "source",
            Error::Checksum { .. } => "checksum",
            Error::Corrupt(_) => "corrupt",
            Error::NoSpace(_) => "no-space",
            Error::Cancelled => "cancelled",
        }
    }

    /// An I/O error while working on `what`; a full disk becomes [`Error::NoSpace`].
    pub(crate) fn io(what: &str, e: &std::io::Error) -> Error {
        match e.raw_os_error() {
            Some(libc_enospc) if libc_enospc == nix::libc::ENOSPC => Error::NoSpace(format!(
                "no space left on the device while writing {what}; the partial file was removed"
            )),
            Some(edquot) if edquot == nix::libc::EDQUOT => Error::NoSpace(format!(
                "disk quota exceeded while writing {what}; the partial file was removed"
            )),
            _ => Error::Io(format!("{what}: {e}")),
        }
    }
}

/// One image in the folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// Relative to the folder, `/`-separated.
    pub name: String,
    /// Apparent size in bytes.
    pub size: u64,
    /// Bytes allocated on disk (less than `size` where the image has holes).
    pub allocated: u64,
    /// sha256 of the source it was fetched from (empty when not fetched by rtmd, or changed
    /// since).
    pub sha256: String,
    /// The source it was fetched from (empty when unknown).
    pub source: String,
}

/// The image folder. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    /// Canonical path of the folder.
    dir: PathBuf,
    /// The folder as configured (absolute names may use either spelling).
    configured: PathBuf,
    state: PathBuf,
    ca_file: Option<PathBuf>,
    /// `[images] local_dirs`: the folders local sources may come from.
    local_dirs: Vec<PathBuf>,
    /// Image names being fetched right now: a second fetch to the same name is `Busy`.
    active: Mutex<HashSet<String>>,
    /// Bumped whenever the set of images changes (fetched, removed).
    changes: watch::Sender<u64>,
    /// Cancel flags of running fetches, for [`Store::cancel_all`].
    running: Mutex<Vec<std::sync::Weak<std::sync::atomic::AtomicBool>>>,
    /// Which images NBD and the USB gadget serve: the one-writer rule, and no removal of an
    /// image in use.
    claims: Claims,
}

impl Store {
    /// Creates the folder if missing; removes stale partial files of a crashed fetch.
    pub fn open(config: &ImagesConfig) -> Result<Store, Error> {
        let io = |what: &str, e: std::io::Error| Error::io(what, &e);
        std::fs::create_dir_all(&config.dir)
            .map_err(|e| io(&format!("cannot create {}", config.dir.display()), e))?;
        let dir = config
            .dir
            .canonicalize()
            .map_err(|e| io(&config.dir.display().to_string(), e))?;
        let state = dir.join(STATE_DIR);
        for sub in [fetch::PARTIAL_DIR, cache::CACHE_DIR] {
            std::fs::create_dir_all(state.join(sub))
                .map_err(|e| io(&format!("cannot create {}", state.join(sub).display()), e))?;
        }
        // Partial files no running fetch holds are left over from a crash; those another
        // rtmd on the same folder is writing stay.
        fetch::clean_partials(&state.join(fetch::PARTIAL_DIR))?;
        Ok(Store {
            inner: Arc::new(Inner {
                dir,
                configured: config.dir.clone(),
                state,
                ca_file: config.ca_file.clone(),
                local_dirs: config.local_dirs.clone(),
                active: Mutex::new(HashSet::new()),
                changes: watch::Sender::new(0),
                running: Mutex::new(Vec::new()),
                claims: Claims::new(),
            }),
        })
    }

    /// Who uses which image: NBD and the USB gadget take their claims here.
    pub fn claims(&self) -> &Claims {
        &self.inner.claims
    }

    /// The folder (canonical).
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Changes whenever an image is added, replaced or removed.
    pub fn subscribe_changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    fn changed(&self) {
        self.inner.changes.send_modify(|n| *n += 1);
    }

    /// An image name (relative: "rootfs.img", "nightly/rpi4.img", or an absolute path inside
    /// the folder) -> its canonical path and its normalized relative name. Refuses empty
    /// names, `..`, hidden components (the store's own), anything whose canonical path
    /// (symlinks resolved) lies outside the folder, non-regular files and missing files.
    pub fn resolve(&self, name: &str) -> Result<(PathBuf, String), Error> {
        let relative = self.relative_name(name)?;
        let lexical = self.inner.dir.join(&relative);
        let canonical = match lexical.canonicalize() {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound(format!(
                    "no image {name:?} in {}",
                    self.dir().display()
                )));
            }
            Err(e) => return Err(Error::io(name, &e)),
        };
        let inside = canonical
            .strip_prefix(&self.inner.dir)
            .map_err(|_| outside(name))?;
        let normalized = check_components(inside, name)?;
        if normalized.is_empty() {
            return Err(Error::InvalidArgs(format!(
                "{name:?} is the image folder itself"
            )));
        }
        let meta = std::fs::metadata(&canonical).map_err(|e| Error::io(name, &e))?;
        if !meta.is_file() {
            return Err(Error::InvalidArgs(format!(
                "{name:?} is not a regular file"
            )));
        }
        Ok((canonical, normalized))
    }

    /// `name` made relative to the folder and checked lexically (no `..`, nothing hidden).
    fn relative_name(&self, name: &str) -> Result<String, Error> {
        if name.is_empty() {
            return Err(Error::InvalidArgs("the image name is empty".to_string()));
        }
        let path = Path::new(name);
        let relative = if path.is_absolute() {
            path.strip_prefix(&self.inner.dir)
                .or_else(|_| path.strip_prefix(&self.inner.configured))
                .map_err(|_| outside(name))?
        } else {
            path
        };
        let normalized = check_components(relative, name)?;
        if normalized.is_empty() {
            return Err(Error::InvalidArgs(format!("{name:?} names no image")));
        }
        Ok(normalized)
    }

    /// Every image in the folder (regular files, recursively; symlinks, the store's own
    /// hidden folder and names no image may have, e.g. with control characters, are not
    /// listed: every listed name resolves), sorted by name.
    pub fn list(&self) -> Result<Vec<ImageInfo>, Error> {
        let records = cache::load_all(&self.inner.state);
        let mut images = Vec::new();
        let mut stack = vec![(self.inner.dir.clone(), String::new())];
        while let Some((dir, prefix)) = stack.pop() {
            let entries =
                std::fs::read_dir(&dir).map_err(|e| Error::io(&dir.display().to_string(), &e))?;
            for entry in entries.flatten() {
                let Some(leaf) = entry.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                if leaf.starts_with('.') || leaf.chars().any(char::is_control) {
                    continue;
                }
                let name = format!("{prefix}{leaf}");
                let Ok(meta) = entry.path().symlink_metadata() else {
                    continue;
                };
                if meta.is_dir() {
                    stack.push((entry.path(), format!("{name}/")));
                } else if meta.is_file() {
                    use std::os::unix::fs::MetadataExt;
                    let record = records.iter().find(|r| r.name == name && r.matches(&meta));
                    images.push(ImageInfo {
                        name,
                        size: meta.len(),
                        allocated: meta.blocks() * 512,
                        sha256: record.map(|r| r.sha256.clone()).unwrap_or_default(),
                        source: record.map(|r| r.source.clone()).unwrap_or_default(),
                    });
                }
            }
        }
        images.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(images)
    }

    /// Removes an image (a symlink inside the folder is removed itself, not its target).
    /// Refuses whatever [`Store::resolve`] refuses, and an image NBD or the USB gadget
    /// serves (decided under the claims' lock, so neither can take it meanwhile).
    pub fn remove(&self, _: &Permit, name: &str) -> Result<(), Error> {
        let relative = self.relative_name(name)?;
        let (canonical, normalized) = self.resolve(name)?;
        self.inner
            .claims
            .unclaimed(&canonical, || self.remove_unclaimed(&relative))
            .map_err(|c| Error::Busy(c.explain(&normalized)))?
    }

    fn remove_unclaimed(&self, relative: &str) -> Result<(), Error> {
        if self.inner.active.lock().is_ok_and(|a| a.contains(relative)) {
            return Err(Error::Busy(format!("{relative} is being fetched")));
        }
        let path = self.inner.dir.join(relative);
        std::fs::remove_file(&path).map_err(|e| Error::io(relative, &e))?;
        cache::forget_name(&self.inner.state, relative);
        info!(subsystem = "images", "removed {relative}");
        self.changed();
        Ok(())
    }

    /// Validates the arguments at once (bad sha256 hex, unknown scheme, a local file the
    /// caller may not fetch: an error before any job exists), then runs the fetch on its own
    /// threads. `sha256` is the checksum of the source as published (the compressed file);
    /// empty or `None` fetches without verifying. A local source is checked against the
    /// permit's caller (`local.rs`).
    pub fn fetch(
        &self,
        permit: &Permit,
        source: &str,
        sha256: Option<&str>,
    ) -> Result<FetchJob, Error> {
        fetch::start(self, source, sha256, permit.caller().uid_of())
    }

    /// Cancels every running fetch (the daemon is stopping).
    pub fn cancel_all(&self) {
        if let Ok(running) = self.inner.running.lock() {
            for flag in running.iter().filter_map(std::sync::Weak::upgrade) {
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
    }
}

fn outside(name: &str) -> Error {
    Error::Outside(format!("{name:?} is outside the image folder"))
}

/// Longest component of an image name (the kernel's NAME_MAX).
const MAX_COMPONENT: usize = 255;

/// Checks a relative path's components; returns it `/`-joined. `..` leads outside; names
/// starting with `.` are the store's own; control characters (NUL included) and components
/// longer than a file name can be are refused.
fn check_components(path: &Path, name: &str) -> Result<String, Error> {
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(part) => {
                let part = part
                    .to_str()
                    .ok_or_else(|| Error::InvalidArgs(format!("{name:?} is not valid UTF-8")))?;
                if part.chars().any(char::is_control) {
                    return Err(Error::InvalidArgs(format!(
                        "{name:?} has control characters"
                    )));
                }
                if part.len() > MAX_COMPONENT {
                    return Err(Error::InvalidArgs(format!(
                        "{:?}: a name component is longer than {MAX_COMPONENT} bytes",
                        clip(name, 80)
                    )));
                }
                if part.starts_with('.') {
                    return Err(Error::InvalidArgs(format!(
                        "{name:?}: names starting with '.' are reserved for the store"
                    )));
                }
                parts.push(part);
            }
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(outside(name));
            }
        }
    }
    Ok(parts.join("/"))
}

#[cfg(test)]
mod tests;
