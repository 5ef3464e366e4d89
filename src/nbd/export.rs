//! One exported image: the base file (opened read-only, never written), its size, its mode,
//! and for `cow` the overlay. Every operation the transmission phase needs is here, as plain
//! blocking calls on page-cached files; errors are NBD errno values.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};
use nix::unistd::{Whence, lseek};

use super::flush::Flushes;
use super::overlay::{CLUSTER, Overlay};
use super::proto;

/// `ro`: writes are refused with EPERM; `cow`: writes land in the overlay.
pub use crate::images::Mode;

/// A piece of a READ reply: `len` bytes of `file` from `offset`.
pub struct Segment {
    pub file: Arc<File>,
    pub offset: u64,
    pub len: u64,
}

pub struct Export {
    pub name: String,
    pub path: PathBuf,
    pub mode: Mode,
    pub size: u64,
    base: Arc<File>,
    overlay: Option<Overlay>,
    /// FLUSHes of every connection, coalesced.
    pub flushes: Flushes,
}

/// An NBD error: the errno for the wire and a message for the log and structured replies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdError {
    pub errno: u32,
    pub message: String,
}

impl NbdError {
    pub fn new(errno: u32, message: impl Into<String>) -> NbdError {
        NbdError {
            errno,
            message: message.into(),
        }
    }

    pub fn io(what: &str, e: &io::Error) -> NbdError {
        let errno = match e.raw_os_error() {
            Some(libc_errno) => match nix::errno::Errno::from_raw(libc_errno) {
                nix::errno::Errno::EPERM | nix::errno::Errno::EROFS => proto::EPERM,
                nix::errno::Errno::ENOSPC | nix::errno::Errno::EDQUOT => proto::ENOSPC,
                nix::errno::Errno::ENOMEM => proto::ENOMEM,
                nix::errno::Errno::EINVAL => proto::EINVAL,
                _ => proto::EIO,
            },
            None => proto::EIO,
        };
        NbdError::new(errno, format!("{what}: {e}"))
    }
}

impl Export {
    /// Opens `path` for export. For `cow`, `overlay` is where the overlay lives.
    pub fn open(name: &str, path: &Path, mode: Mode, overlay: Option<&Path>) -> io::Result<Export> {
        let base = File::open(path)?;
        let meta = base.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        let size = meta.len();
        let base = Arc::new(base);
        let overlay = match (mode, overlay) {
            (Mode::Cow, Some(p)) => Some(Overlay::open(p, base.clone(), size)?),
            (Mode::Cow, None) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a cow export needs an overlay path",
                ));
            }
            (Mode::Ro, _) => None,
        };
        Ok(Export {
            name: name.to_string(),
            path: path.to_path_buf(),
            mode,
            size,
            base,
            overlay,
            flushes: Flushes::default(),
        })
    }

    pub fn overlay(&self) -> Option<&Overlay> {
        self.overlay.as_ref()
    }

    /// The transmission flags this export offers.
    pub fn flags(&self, structured: bool) -> u16 {
        let mut f = proto::TFLAG_HAS_FLAGS
            | proto::TFLAG_SEND_FLUSH
            | proto::TFLAG_SEND_FUA
            | proto::TFLAG_SEND_CACHE
            // Safe: every connection shares this one export (one overlay), and FLUSH on
            // any connection syncs the overlay file and map that all of them write.
            | proto::TFLAG_CAN_MULTI_CONN;
        if structured {
            f |= proto::TFLAG_SEND_DF;
        }
        match self.mode {
            Mode::Ro => f |= proto::TFLAG_READ_ONLY,
            Mode::Cow => f |= proto::TFLAG_SEND_TRIM | proto::TFLAG_SEND_WRITE_ZEROES,
        }
        f
    }

    pub fn in_range(&self, offset: u64, len: u32) -> bool {
        offset
            .checked_add(u64::from(len))
            .is_some_and(|end| end <= self.size)
    }

    /// Where the bytes of a READ come from: the base, or the overlay for written clusters.
    pub fn read_plan(&self, offset: u64, len: u64) -> Vec<Segment> {
        match &self.overlay {
            None => vec![Segment {
                file: self.base.clone(),
                offset,
                len,
            }],
            Some(o) => o
                .runs(offset, len)
                .into_iter()
                .map(|(start, len, allocated)| Segment {
                    file: if allocated {
                        o.file.clone()
                    } else {
                        self.base.clone()
                    },
                    offset: start,
                    len,
                })
                .collect(),
        }
    }

    fn writable(&self) -> Result<&Overlay, NbdError> {
        self.overlay
            .as_ref()
            .ok_or_else(|| NbdError::new(proto::EPERM, "the export is read-only"))
    }

    pub fn write(&self, data: &[u8], offset: u64) -> Result<(), NbdError> {
        self.writable()?
            .write(data, offset)
            .map_err(|e| NbdError::io("writing the overlay", &e))
    }

    pub fn zero(&self, offset: u64, len: u64, allocate: bool) -> Result<(), NbdError> {
        self.writable()?
            .zero(offset, len, allocate)
            .map_err(|e| NbdError::io("zeroing in the overlay", &e))
    }

    pub fn flush(&self) -> Result<(), NbdError> {
        match &self.overlay {
            Some(o) => o
                .flush()
                .map_err(|e| NbdError::io("flushing the overlay", &e)),
            None => Ok(()),
        }
    }

    /// Asks the kernel to read a range ahead (NBD_CMD_CACHE).
    pub fn cache(&self, offset: u64, len: u64) {
        for s in self.read_plan(offset, len) {
            let _ = posix_fadvise(
                s.file.as_fd(),
                s.offset as i64,
                s.len as i64,
                PosixFadviseAdvice::POSIX_FADV_WILLNEED,
            );
        }
    }

    /// `base:allocation` of a range, as `(length, flags)` extents, at most `max` of them.
    pub fn block_status(
        &self,
        offset: u64,
        len: u64,
        max: usize,
    ) -> Result<Vec<(u32, u32)>, NbdError> {
        let mut out: Vec<(u64, u32)> = Vec::new();
        for s in self.read_plan(offset, len) {
            file_extents(&s.file, s.offset, s.len, &mut out)
                .map_err(|e| NbdError::io("reading the allocation", &e))?;
            if out.len() >= max {
                break;
            }
        }
        let mut extents = Vec::with_capacity(out.len().min(max));
        // Extent lengths are 32-bit on the wire: split larger ones on a cluster boundary.
        const LARGEST: u64 = (u32::MAX as u64) & !(CLUSTER - 1);
        for (mut length, flags) in out {
            while length > 0 && extents.len() < max {
                let piece = length.min(LARGEST);
                extents.push((piece as u32, flags));
                length -= piece;
            }
        }
        Ok(extents)
    }
}

/// Appends the data and hole extents of `[offset, offset + len)` of `file`, merging with the
/// last extent when the kind is the same.
fn file_extents(file: &File, offset: u64, len: u64, out: &mut Vec<(u64, u32)>) -> io::Result<()> {
    let end = offset + len;
    let mut pos = offset;
    let mut push = |len: u64, flags: u32| match out.last_mut() {
        Some((l, f)) if *f == flags => *l += len,
        _ => out.push((len, flags)),
    };
    while pos < end {
        let data = match lseek(file.as_fd(), pos as i64, Whence::SeekData) {
            Ok(d) => d as u64,
            // No data after pos: the rest is a hole.
            Err(nix::errno::Errno::ENXIO) => end,
            // A filesystem without SEEK_DATA: say everything is data, which is always true.
            Err(nix::errno::Errno::EINVAL) => {
                push(end - pos, 0);
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        if data > pos {
            let hole_end = data.min(end);
            push(hole_end - pos, proto::STATE_HOLE | proto::STATE_ZERO);
            pos = hole_end;
            continue;
        }
        let hole = match lseek(file.as_fd(), pos as i64, Whence::SeekHole) {
            Ok(h) => h as u64,
            Err(e) => return Err(e.into()),
        };
        let data_end = hole.min(end).max(pos + 1);
        push(data_end - pos, 0);
        pos = data_end;
    }
    Ok(())
}
