//! The copy-on-write overlay of a `cow` export: a sparse file as large as the image, where
//! written clusters land, and a map (one bit per 4 KiB cluster) of which clusters it holds.
//! The base image is opened read-only and never written.
//!
//! Durability: data goes to the overlay file first; its bit is set in memory once the data is
//! there. FLUSH (and FUA) makes it durable in that order: the bits of the changed map pages
//! are taken, then the overlay is `fdatasync`ed, then those bits are written to the map and it
//! is `fdatasync`ed ([`Overlay::flush`]). So a bit on disk always points at data on disk, and a
//! crash can lose only what no FLUSH covered, which the protocol allows; a torn map write can
//! only lose bits of such writes, because bits are never cleared except by [`Overlay::reset`].
//!
//! The map records which base it was made for (device, inode, size, modification time), so an
//! overlay left from an older image is discarded, not laid over a new one.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use nix::fcntl::{FallocateFlags, fallocate};
use tracing::{info, warn};

/// Bytes per cluster: the unit of copy-on-write.
pub const CLUSTER: u64 = 4096;
const MAGIC: &[u8; 8] = b"RTMDCOW1";
/// The map file starts with one page of header; the bitmap follows.
const HEADER: u64 = 4096;
/// The unit in which changed bitmap bytes are written back.
const MAP_PAGE: usize = 4096;
const WORDS_PER_PAGE: usize = MAP_PAGE / 8;

/// Which base file an overlay belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BaseIdentity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_ns: i64,
}

impl BaseIdentity {
    fn of(base: &File) -> io::Result<BaseIdentity> {
        let m = base.metadata()?;
        Ok(BaseIdentity {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: m.mtime(),
            mtime_ns: m.mtime_nsec(),
        })
    }

    fn encode(&self) -> [u8; 40] {
        let mut b = [0u8; 40];
        b[0..8].copy_from_slice(&self.dev.to_le_bytes());
        b[8..16].copy_from_slice(&self.ino.to_le_bytes());
        b[16..24].copy_from_slice(&self.size.to_le_bytes());
        b[24..32].copy_from_slice(&self.mtime.to_le_bytes());
        b[32..40].copy_from_slice(&self.mtime_ns.to_le_bytes());
        b
    }
}

pub struct Overlay {
    /// The overlay data, as large as the image, sparse.
    pub file: Arc<File>,
    base: Arc<File>,
    map: File,
    path: PathBuf,
    size: u64,
    bits: Vec<AtomicU64>,
    /// One flag per map page: changed since the last flush.
    dirty: Vec<AtomicBool>,
    /// One flush at a time (see [`Overlay::flush`]).
    flushing: Mutex<()>,
    /// Serializes the allocation of clusters (copy-up of partly written clusters), so that
    /// two connections writing parts of one new cluster cannot overwrite each other.
    allocating: Mutex<()>,
}

impl Overlay {
    /// Opens the overlay at `path` (and its map at `path.map`) for `base`, creating both if
    /// missing, and discarding them if they were made for another base.
    pub fn open(path: &Path, base: Arc<File>, size: u64) -> io::Result<Overlay> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let identity = BaseIdentity::of(&base)?;
        let clusters = size.div_ceil(CLUSTER);
        let words = clusters.div_ceil(64) as usize;
        let map_path = map_path(path);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let map = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&map_path)?;
        let mut header = [0u8; HEADER as usize];
        let got = read_full_at(&map, &mut header, 0)?;
        let expected = header_bytes(identity, size);
        let mut bits = Vec::with_capacity(words);
        if got == HEADER as usize && header == expected {
            let mut raw = vec![0u8; words * 8];
            let n = read_full_at(&map, &mut raw, HEADER)?;
            fill_zeros_from(&mut raw, n);
            for w in raw.chunks_exact(8) {
                let mut a = [0u8; 8];
                a.copy_from_slice(w);
                bits.push(AtomicU64::new(u64::from_le_bytes(a)));
            }
            let held: u64 = bits
                .iter()
                .map(|w| u64::from(w.load(Ordering::Relaxed).count_ones()))
                .sum();
            info!(
                subsystem = "nbd",
                "overlay {} kept: {} KiB written since the last reset",
                path.display(),
                held * CLUSTER / 1024
            );
        } else {
            if got > 0 {
                warn!(
                    subsystem = "nbd",
                    "overlay {} was made for another image; starting a fresh one",
                    path.display()
                );
            }
            bits.resize_with(words, || AtomicU64::new(0));
            file.set_len(0)?;
            map.set_len(0)?;
            map.write_all_at(&expected, 0)?;
            map.set_len(HEADER + (words * 8) as u64)?;
            map.sync_all()?;
        }
        file.set_len(size)?;
        let pages = (words * 8).div_ceil(MAP_PAGE);
        Ok(Overlay {
            file: Arc::new(file),
            base,
            map,
            path: path.to_path_buf(),
            size,
            bits,
            dirty: (0..pages).map(|_| AtomicBool::new(false)).collect(),
            flushing: Mutex::new(()),
            allocating: Mutex::new(()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_allocated(&self, cluster: u64) -> bool {
        // A cluster beyond the map (never asked for: requests are checked against the size)
        // is the base's.
        usize::try_from(cluster / 64)
            .ok()
            .and_then(|w| self.bits.get(w))
            .is_some_and(|word| word.load(Ordering::Acquire) & (1 << (cluster % 64)) != 0)
    }

    /// The clusters of `[offset, offset + len)`, as runs of `(start, len, allocated)` in bytes.
    pub fn runs(&self, offset: u64, len: u64) -> Vec<(u64, u64, bool)> {
        let mut runs: Vec<(u64, u64, bool)> = Vec::new();
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            let cluster = pos / CLUSTER;
            let next = ((cluster + 1) * CLUSTER).min(end);
            let allocated = self.is_allocated(cluster);
            match runs.last_mut() {
                Some((_, l, a)) if *a == allocated => *l += next - pos,
                _ => runs.push((pos, next - pos, allocated)),
            }
            pos = next;
        }
        runs
    }

    fn all_allocated(&self, offset: u64, len: u64) -> bool {
        let first = offset / CLUSTER;
        let last = (offset + len - 1) / CLUSTER;
        (first..=last).all(|c| self.is_allocated(c))
    }

    fn mark(&self, offset: u64, len: u64) {
        let first = offset / CLUSTER;
        let last = (offset + len - 1) / CLUSTER;
        for c in first..=last {
            let w = (c / 64) as usize;
            let Some(word) = self.bits.get(w) else {
                continue;
            };
            let old = word.fetch_or(1 << (c % 64), Ordering::AcqRel);
            if old & (1 << (c % 64)) == 0
                && let Some(flag) = self.dirty.get(w / WORDS_PER_PAGE)
            {
                flag.store(true, Ordering::Release);
            }
        }
    }

    /// Copies a cluster from the base into the overlay (before part of it is written).
    fn copy_up(&self, cluster: u64) -> io::Result<()> {
        let start = cluster * CLUSTER;
        let len = CLUSTER.min(self.size - start) as usize;
        let mut buf = vec![0u8; len];
        let n = read_full_at(&self.base, &mut buf, start)?;
        fill_zeros_from(&mut buf, n);
        self.file.write_all_at(&buf, start)
    }

    /// Copies up the edge clusters of a range that the range covers only in part.
    fn copy_up_edges(&self, offset: u64, len: u64) -> io::Result<()> {
        let end = offset + len;
        let first = offset / CLUSTER;
        let last = (end - 1) / CLUSTER;
        let covers = |c: u64| offset <= c * CLUSTER && ((c + 1) * CLUSTER).min(self.size) <= end;
        for c in [first, last] {
            if !self.is_allocated(c) && !covers(c) {
                self.copy_up(c)?;
            }
            if first == last {
                break;
            }
        }
        Ok(())
    }

    pub fn write(&self, data: &[u8], offset: u64) -> io::Result<()> {
        let len = data.len() as u64;
        if len == 0 {
            return Ok(());
        }
        if self.all_allocated(offset, len) {
            return self.file.write_all_at(data, offset);
        }
        let _guard = self
            .allocating
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.copy_up_edges(offset, len)?;
        self.file.write_all_at(data, offset)?;
        self.mark(offset, len);
        Ok(())
    }

    /// Makes `[offset, offset + len)` read as zeros: a hole in the overlay (space is given
    /// back), or allocated zeros when `allocate` (`NBD_CMD_FLAG_NO_HOLE`).
    pub fn zero(&self, offset: u64, len: u64, allocate: bool) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        let _guard = self
            .allocating
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.copy_up_edges(offset, len)?;
        zero_range(&self.file, offset, len, allocate)?;
        self.mark(offset, len);
        Ok(())
    }

    /// Makes everything written so far durable, in the order that keeps the map honest:
    /// 1. take the bits of the changed map pages as they are now: each was set only after
    ///    its cluster's data was written ([`Overlay::write`], [`Overlay::zero`]);
    /// 2. `fdatasync` the data: every cluster those bits point at is now on disk;
    /// 3. write those bits (and only those) to the map and `fdatasync` it.
    ///
    /// A write that lands during step 2 or 3 keeps its page dirty for the next flush, so its
    /// bit never reaches the disk before its data. (Taking the bits after the data sync, as
    /// this did before, could make such a bit durable without its data.) Flushes are
    /// serialized: a second one would otherwise find the pages clean while the first is still
    /// writing them, and acknowledge bits that are not on disk yet.
    pub fn flush(&self) -> io::Result<()> {
        let _one = self
            .flushing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let pages = self.take_dirty_pages();
        let written = self.file.sync_data().and_then(|()| {
            #[cfg(debug_assertions)]
            test_hook::between_data_and_map(!pages.is_empty());
            for (page, raw) in &pages {
                self.map
                    .write_all_at(raw, HEADER + (page * MAP_PAGE) as u64)?;
            }
            if pages.is_empty() {
                Ok(())
            } else {
                self.map.sync_data()
            }
        });
        if written.is_err() {
            // Written again by the next flush: a bit is never dropped from the map because
            // one attempt failed.
            for (page, _) in &pages {
                if let Some(flag) = self.dirty.get(*page) {
                    flag.store(true, Ordering::Release);
                }
            }
        }
        written
    }

    /// The changed map pages and their bytes as they are now; their flags are cleared.
    fn take_dirty_pages(&self) -> Vec<(usize, Vec<u8>)> {
        let mut pages = Vec::new();
        for (page, flag) in self.dirty.iter().enumerate() {
            // The flag is cleared before the bits are read: a bit set after this read sets
            // the flag again (`mark` sets the bit, then the flag), so it is never lost.
            if !flag.swap(false, Ordering::AcqRel) {
                continue;
            }
            let first = page * WORDS_PER_PAGE;
            let words = self.bits.iter().skip(first).take(WORDS_PER_PAGE);
            let mut raw = Vec::with_capacity(MAP_PAGE);
            for w in words {
                raw.extend_from_slice(&w.load(Ordering::Acquire).to_le_bytes());
            }
            pages.push((page, raw));
        }
        pages
    }

    /// Discards everything written: the overlay reads as the base again. Only called with
    /// no client connected.
    pub fn reset(&self) -> io::Result<()> {
        // No flush may write bits it took before the reset after it.
        let _one = self
            .flushing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let _guard = self
            .allocating
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for w in &self.bits {
            w.store(0, Ordering::Release);
        }
        for d in &self.dirty {
            d.store(false, Ordering::Release);
        }
        self.file.set_len(0)?;
        self.file.set_len(self.size)?;
        self.file.sync_all()?;
        let words = self.bits.len() as u64;
        self.map.set_len(HEADER)?;
        self.map.set_len(HEADER + words * 8)?;
        self.map.sync_all()
    }

    /// Bytes of the image that the overlay holds.
    pub fn written(&self) -> u64 {
        let clusters: u64 = self
            .bits
            .iter()
            .map(|w| u64::from(w.load(Ordering::Relaxed).count_ones()))
            .sum();
        clusters * CLUSTER
    }
}

pub fn map_path(overlay: &Path) -> PathBuf {
    let mut p = overlay.as_os_str().to_os_string();
    p.push(".map");
    PathBuf::from(p)
}

fn header_bytes(identity: BaseIdentity, size: u64) -> [u8; HEADER as usize] {
    let mut h = [0u8; HEADER as usize];
    h[0..8].copy_from_slice(MAGIC);
    h[8..16].copy_from_slice(&size.to_le_bytes());
    h[16..24].copy_from_slice(&CLUSTER.to_le_bytes());
    h[24..64].copy_from_slice(&identity.encode());
    h
}

/// Zeros `buf` from `from` on (what a short read left unread).
fn fill_zeros_from(buf: &mut [u8], from: usize) {
    if let Some(rest) = buf.get_mut(from..) {
        rest.fill(0);
    }
}

/// Reads as much of `buf` as the file has at `offset`; returns how much that was.
pub fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while let Some(rest) = buf.get_mut(done..).filter(|r| !r.is_empty()) {
        match file.read_at(rest, offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Zeros a range of a file: punches a hole (or zeroes allocated space), and falls back to
/// writing zeros on filesystems that support neither.
fn zero_range(file: &File, offset: u64, len: u64, allocate: bool) -> io::Result<()> {
    let flags = if allocate {
        FallocateFlags::FALLOC_FL_ZERO_RANGE | FallocateFlags::FALLOC_FL_KEEP_SIZE
    } else {
        FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE
    };
    match fallocate(file.as_fd(), flags, offset as i64, len as i64) {
        Ok(()) => return Ok(()),
        Err(nix::errno::Errno::EOPNOTSUPP) => {}
        Err(e) => return Err(e.into()),
    }
    let zeros = vec![0u8; (1 << 20).min(len as usize)];
    let mut pos = offset;
    let end = offset + len;
    while pos < end {
        let n = ((end - pos) as usize).min(zeros.len());
        file.write_all_at(zeros.get(..n).unwrap_or(&zeros), pos)?;
        pos += n as u64;
    }
    Ok(())
}

/// A crash injected between the two steps of a flush, for tests/nbd.rs; compiled into debug
/// builds only (the tests' rtmd), never into a release.
#[cfg(debug_assertions)]
mod test_hook {
    use std::sync::atomic::{AtomicBool, Ordering};

    /// With `RTMD_TEST_FLUSH_PAUSE` naming a FIFO, the first flush that has map pages to write
    /// says so in the log after the data is synced, and waits until the test has written to the
    /// FIFO and closed it (the test copies the overlay's data as a power cut would leave it,
    /// writes more, then lets the flush go on or kills rtmd).
    pub fn between_data_and_map(map_pages: bool) {
        static FIRED: AtomicBool = AtomicBool::new(false);
        let Some(fifo) = std::env::var_os("RTMD_TEST_FLUSH_PAUSE") else {
            return;
        };
        if !map_pages || FIRED.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::warn!(
            subsystem = "nbd",
            "test hook: flush paused between the overlay's data and its map"
        );
        // Opening blocks until the test opens the FIFO for writing; reading ends when it closes.
        let _ = std::fs::read(fifo);
    }
}

#[cfg(test)]
mod tests;
