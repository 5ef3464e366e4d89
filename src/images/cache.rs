//! The cache index: one small TOML record per fetched source checksum, in
//! `<dir>/.rtmd/cache/<sha256>.toml`, naming the image it produced with that image's size and
//! mtime at the time. A record counts only while the image still has that size and mtime, so
//! an image replaced or edited by hand is never mistaken for a cached fetch.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::warn;

pub const CACHE_DIR: &str = "cache";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// sha256 of the source bytes (lowercase hex).
    pub sha256: String,
    pub source: String,
    /// Image name relative to the folder.
    pub name: String,
    pub size: u64,
    pub mtime_sec: i64,
    pub mtime_nsec: i64,
}

impl Record {
    pub fn new(sha256: &str, source: &str, name: &str, meta: &std::fs::Metadata) -> Record {
        Record {
            sha256: sha256.to_string(),
            source: source.to_string(),
            name: name.to_string(),
            size: meta.len(),
            mtime_sec: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        }
    }

    /// True while the image file is the one this record was written for.
    pub fn matches(&self, meta: &std::fs::Metadata) -> bool {
        meta.is_file()
            && meta.len() == self.size
            && meta.mtime() == self.mtime_sec
            && meta.mtime_nsec() == self.mtime_nsec
    }
}

fn path(state: &Path, sha256: &str) -> PathBuf {
    state.join(CACHE_DIR).join(format!("{sha256}.toml"))
}

/// The record for a source checksum, if any.
pub fn lookup(state: &Path, sha256: &str) -> Option<Record> {
    let text = std::fs::read_to_string(path(state, sha256)).ok()?;
    toml::from_str(&text).ok()
}

/// Every readable record.
pub fn load_all(state: &Path) -> Vec<Record> {
    let Ok(entries) = std::fs::read_dir(state.join(CACHE_DIR)) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|text| toml::from_str(&text).ok())
        .collect()
}

/// Writes `record` (atomically: temp file and rename) and drops other records of the same
/// image name, which the new image has replaced.
pub fn store(state: &Path, record: &Record) {
    forget_name(state, &record.name);
    let final_path = path(state, &record.sha256);
    let tmp = final_path.with_extension("toml.tmp");
    let result = toml::to_string(record)
        .map_err(std::io::Error::other)
        .and_then(|text| std::fs::write(&tmp, text))
        .and_then(|()| std::fs::rename(&tmp, &final_path));
    if let Err(e) = result {
        // The image is in place; only the next fetch of it will not be immediate.
        let _ = std::fs::remove_file(&tmp);
        warn!(
            subsystem = "images",
            "cannot write the cache record {}: {e}",
            final_path.display()
        );
    }
}

/// Removes the records naming `name`.
pub fn forget_name(state: &Path, name: &str) {
    for r in load_all(state).into_iter().filter(|r| r.name == name) {
        let _ = std::fs::remove_file(path(state, &r.sha256));
    }
}
