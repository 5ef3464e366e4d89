//! The `cow` medium: a private copy of the image that the board may write, made fresh for
//! each attach and deleted on detach, so the image itself stays pristine.
//!
//! The kernel's mass-storage function opens a file by path, so an overlay in rtmd's own
//! process (as for NBD) is not possible. A reflink (`FICLONE`) is instant and shares every
//! block until the board writes one (btrfs, XFS, bcachefs); elsewhere the copy is sparse:
//! only the image's data extents are copied (`SEEK_DATA`/`SEEK_HOLE`, `copy_file_range`),
//! holes stay holes. docs/storage.md has the measured cost of both.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;

use nix::unistd::{Whence, lseek};

/// How a copy was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyKind {
    Reflink,
    Sparse,
}

impl CopyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CopyKind::Reflink => "reflink",
            CopyKind::Sparse => "sparse copy",
        }
    }
}

// FICLONE = _IOW(0x94, 9, int)
nix::ioctl_write_int!(ficlone, 0x94, 9);

/// Copies `base` to `dest` (replaced if it exists).
pub fn copy(base: &Path, dest: &Path) -> std::io::Result<CopyKind> {
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let _ = std::fs::remove_file(dest);
    let src = File::open(base)?;
    let dst = File::create(dest)?;
    use std::os::fd::AsRawFd;
    // SAFETY: both descriptors are open for the duration of the call; FICLONE takes the
    // source descriptor as its integer argument.
    if unsafe { ficlone(dst.as_raw_fd(), src.as_raw_fd() as nix::libc::c_ulong) }.is_ok() {
        return Ok(CopyKind::Reflink);
    }
    let len = src.metadata()?.len();
    let mut pos: i64 = 0;
    while (pos as u64) < len {
        let data = match lseek(src.as_fd(), pos, Whence::SeekData) {
            Ok(d) => d,
            Err(nix::errno::Errno::ENXIO) => break, // only a hole is left
            Err(e) => return Err(e.into()),
        };
        let hole = lseek(src.as_fd(), data, Whence::SeekHole)?;
        let mut off_in = data;
        let mut off_out = data;
        while off_in < hole {
            let want = (hole - off_in) as usize;
            let n = nix::fcntl::copy_file_range(
                src.as_fd(),
                Some(&mut off_in),
                dst.as_fd(),
                Some(&mut off_out),
                want,
            )?;
            if n == 0 {
                break;
            }
        }
        pos = hole;
    }
    dst.set_len(len)?;
    dst.sync_all()?;
    Ok(CopyKind::Sparse)
}
