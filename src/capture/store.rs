//! The capture folder: names for new artifacts, the quota with oldest-first cleanup, and
//! PNG files in and out.
//!
//! Artifacts are named `<what>-<UTC time>-<n>.<ext>` (`snapshot-20261127T082849.123Z-1.png`),
//! so they sort by age and never collide. The quota counts every regular file in the folder;
//! past it, the oldest files (by modification time) are removed, never the file of a running
//! recording. A PNG is written to a hidden temporary name and renamed, so a full disk leaves
//! no half-written snapshot behind.

use std::io::{self, ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use image::RgbImage;

use super::CaptureError;

#[derive(Clone)]
pub struct Store {
    dir: PathBuf,
    quota: u64,
    counter: Arc<AtomicU64>,
}

impl Store {
    pub fn open(dir: &Path, quota: u64) -> io::Result<Store> {
        std::fs::create_dir_all(dir)?;
        Ok(Store {
            dir: dir.to_path_buf(),
            quota,
            counter: Arc::new(AtomicU64::new(0)),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn new_path(&self, what: &str, extension: &str) -> PathBuf {
        let time = humantime::format_rfc3339_millis(SystemTime::now())
            .to_string()
            .replace(['-', ':'], "");
        let n = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
        self.dir.join(format!("{what}-{time}-{n}.{extension}"))
    }

    /// Regular, visible files with their size and age, oldest first.
    fn files(&self) -> Vec<(PathBuf, u64, SystemTime)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut files: Vec<(PathBuf, u64, SystemTime)> = entries
            .filter_map(Result::ok)
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter_map(|e| {
                let meta = e.metadata().ok()?;
                meta.is_file().then(|| {
                    (
                        e.path(),
                        meta.len(),
                        meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    )
                })
            })
            .collect();
        files.sort_by(|a, b| a.2.cmp(&b.2).then_with(|| a.0.cmp(&b.0)));
        files
    }

    pub fn list_names(&self) -> Vec<String> {
        self.files()
            .into_iter()
            .map(|(p, _, _)| p.to_string_lossy().into_owned())
            .collect()
    }

    pub fn total(&self) -> u64 {
        self.files().iter().map(|f| f.1).sum()
    }

    pub fn over_quota(&self) -> bool {
        self.total() > self.quota
    }

    /// Removes the oldest artifacts until the folder fits its quota; `active` files stay.
    pub fn enforce_quota(&self, active: &[PathBuf]) {
        let files = self.files();
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        for (path, size, _) in files {
            if total <= self.quota {
                break;
            }
            if active.contains(&path) {
                continue;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    tracing::info!(
                        subsystem = "capture",
                        "quota: removed {} ({size} bytes)",
                        path.display()
                    );
                    total = total.saturating_sub(size);
                }
                Err(e) => tracing::warn!(
                    subsystem = "capture",
                    "quota: cannot remove {}: {e}",
                    path.display()
                ),
            }
        }
    }
}

/// Writes `frame` as a PNG at `path`, atomically.
pub fn write_png(path: &Path, frame: &RgbImage) -> Result<(), CaptureError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = path.with_file_name(format!(".{name}.tmp"));
    // Encoded in memory first: a write that fails is then a plain I/O error (ENOSPC).
    let mut png = Vec::new();
    frame
        .write_to(&mut io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| CaptureError::Device(format!("cannot encode the frame as PNG: {e}")))?;
    let result = (|| -> Result<(), String> {
        let mut file = std::fs::File::create(&temporary).map_err(storage_words)?;
        file.write_all(&png).map_err(storage_words)?;
        file.sync_all().map_err(storage_words)?;
        std::fs::rename(&temporary, path).map_err(storage_words)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&temporary);
        CaptureError::Storage(format!("cannot write {}: {e}", path.display()))
    })
}

pub(super) fn storage_words(e: io::Error) -> String {
    if e.raw_os_error() == Some(nix::libc::ENOSPC) || e.kind() == ErrorKind::StorageFull {
        "disk full".to_string()
    } else {
        e.to_string()
    }
}

/// Reads a reference picture: a PNG file, any colour type, as RGB.
pub fn read_png(path: &Path) -> Result<RgbImage, CaptureError> {
    let bad =
        |why: String| CaptureError::BadReference(format!("reference {}: {why}", path.display()));
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    if !bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Err(bad("not a PNG file".to_string()));
    }
    image::load_from_memory_with_format(&bytes, image::ImageFormat::Png)
        .map(|i| i.to_rgb8())
        .map_err(|e| bad(format!("not a readable PNG: {e}")))
}
