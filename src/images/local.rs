//! Local sources: which files of this machine a caller may have fetched into the image
//! folder, whose images NBD then serves to anyone who reaches the export.
//!
//! rtmd reads with its own rights, which are not the caller's, so a local file is fetched
//! only when all of these hold:
//! - the admin listed a folder that holds it (`[images] local_dirs`; none by default, so
//!   local fetches are off until then);
//! - its real path (symlinks resolved) lies inside one of those folders, and not under
//!   `/proc`, `/sys`, `/dev` or `/run/credentials`, nor on a kernel pseudo-filesystem (proc,
//!   sysfs, debugfs, ... wherever it is mounted), even if a listed folder covers it;
//! - it is a regular file;
//! - the caller (the uid the bus vouches for) could read it themselves: read permission on
//!   the file and search permission on every folder above it, from its owner, group and
//!   mode bits, with the caller's groups from the user database (primary and
//!   supplementary, as a login would get them). A file or folder with a POSIX ACL grants only
//!   its owner: its group bits are the ACL's mask and named entries may deny, so reading the
//!   bits alone could grant too much. Root may read anything.
//!
//! Why mode bits and not the kernel's own check (opening with the caller's fsuid): under
//! systemd rtmd runs as user `rtm` with no capabilities and `@privileged` system calls
//! filtered, where `setfsuid` is impossible; the bits give the same answer in every setup.
//!
//! The file is opened once, here, and every check is made on what was opened (its real path
//! read back from `/proc/self/fd`), so a symlink swapped in after the check cannot redirect
//! the fetch; the fetch thread reads from this descriptor.

use std::ffi::CString;
use std::fs::{File, Metadata};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use nix::sys::statfs;

use super::Error;

/// Never fetched from, whatever `local_dirs` says: the kernel's and the system's views of
/// processes, devices and secrets.
pub const FORBIDDEN: [&str; 4] = ["/proc", "/sys", "/dev", "/run/credentials"];

/// A local source, opened and admitted.
#[derive(Debug)]
pub struct Opened {
    pub file: File,
    /// The real path of what was opened.
    pub path: PathBuf,
    pub size: u64,
}

/// Who asks, as the permission bits see them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asker {
    pub uid: u32,
    /// Primary and supplementary groups.
    pub groups: Vec<u32>,
}

impl Asker {
    /// The uid with its groups from the user database; a uid with no entry has no groups
    /// (it reads what its uid owns and what everyone may read).
    pub fn lookup(uid: u32) -> Asker {
        use nix::unistd::{Uid, User, getgrouplist};
        let groups = match User::from_uid(Uid::from_raw(uid)) {
            Ok(Some(user)) => CString::new(user.name.as_bytes())
                .ok()
                .and_then(|name| getgrouplist(&name, user.gid).ok())
                .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
                .unwrap_or_else(|| vec![user.gid.as_raw()]),
            _ => Vec::new(),
        };
        Asker { uid, groups }
    }
}

const READ: u32 = 4;
const SEARCH: u32 = 1;

/// Whether `asker` has the `want` bits on a file of this owner, group and mode.
fn permits(asker: &Asker, owner: u32, group: u32, mode: u32, has_acl: bool, want: u32) -> bool {
    if asker.uid == 0 {
        return true;
    }
    let bits = if owner == asker.uid {
        mode >> 6
    } else if has_acl {
        return false;
    } else if asker.groups.contains(&group) {
        mode >> 3
    } else {
        mode
    };
    bits & want == want
}

/// Opens `path` for `uid` (None: a caller without a uid, refused) if the rules above allow.
pub fn open(path: &Path, dirs: &[PathBuf], uid: Option<u32>) -> Result<Opened, Error> {
    let shown = path.display();
    if dirs.is_empty() {
        return Err(Error::InvalidArgs(format!(
            "fetching local files is off on this board: the admin lists the folders callers \
             may fetch from in [images] local_dirs (refused: {shown})"
        )));
    }
    let Some(uid) = uid else {
        return Err(Error::Denied(format!(
            "a local source needs a caller with a uid (refused: {shown})"
        )));
    };
    // Lexically first: a path outside every listed folder is not even looked at, so its
    // existence is not told.
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(Error::InvalidArgs(format!(
            "{shown}: `..` is not allowed in a local source"
        )));
    }
    let canonical: Vec<PathBuf> = dirs.iter().filter_map(|d| d.canonicalize().ok()).collect();
    let listed = |p: &Path| dirs.iter().chain(&canonical).any(|d| p.starts_with(d));
    if !listed(path) {
        return Err(outside(path));
    }
    refuse_forbidden(path)?;

    let file = std::fs::OpenOptions::new()
        .read(true)
        // A FIFO must not block the open; a terminal must not become ours.
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound(format!("no such file: {shown}")),
            std::io::ErrorKind::PermissionDenied => {
                Error::Denied(format!("rtmd itself may not read {shown}"))
            }
            _ => Error::io(&shown.to_string(), &e),
        })?;
    let real = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(|e| Error::Io(format!("cannot tell the real path of {shown}: {e}")))?;
    let meta = file
        .metadata()
        .map_err(|e| Error::io(&shown.to_string(), &e))?;
    if !meta.is_file() {
        return Err(Error::InvalidArgs(format!("{shown} is not a regular file")));
    }
    if meta.nlink() == 0 {
        return Err(Error::NotFound(format!("{shown} was removed")));
    }
    refuse_forbidden(&real)?;
    let fs = statfs::fstatfs(&file).map_err(|e| Error::Io(format!("{shown}: {e}")))?;
    if is_pseudo(fs.filesystem_type()) {
        return Err(Error::Denied(format!(
            "{shown} is on a kernel pseudo-filesystem: never fetched"
        )));
    }
    if !canonical.iter().any(|d| real.starts_with(d)) {
        return Err(outside(path));
    }
    let asker = Asker::lookup(uid);
    check_caller(&asker, &file, &meta, &real)
        .map_err(|why| Error::Denied(format!("uid {uid} may not read {shown}: {why}")))?;
    Ok(Opened {
        file,
        path: real,
        size: meta.len(),
    })
}

fn outside(path: &Path) -> Error {
    Error::Denied(format!(
        "{} is not inside a folder of [images] local_dirs",
        path.display()
    ))
}

fn refuse_forbidden(path: &Path) -> Result<(), Error> {
    match FORBIDDEN.iter().find(|f| path.starts_with(f)) {
        Some(f) => Err(Error::Denied(format!(
            "{} is under {f}: never fetched",
            path.display()
        ))),
        None => Ok(()),
    }
}

/// Filesystems whose files are the kernel's view of itself, not data.
fn is_pseudo(t: statfs::FsType) -> bool {
    [
        statfs::PROC_SUPER_MAGIC,
        statfs::SYSFS_MAGIC,
        statfs::DEBUGFS_MAGIC,
        statfs::TRACEFS_MAGIC,
        statfs::SECURITYFS_MAGIC,
        statfs::CGROUP_SUPER_MAGIC,
        statfs::CGROUP2_SUPER_MAGIC,
        statfs::BPF_FS_MAGIC,
        statfs::DEVPTS_SUPER_MAGIC,
        statfs::SELINUX_MAGIC,
        statfs::SMACK_MAGIC,
        statfs::NSFS_MAGIC,
    ]
    .contains(&t)
}

/// Read on the file, search on every folder above it, as `asker`.
fn check_caller(asker: &Asker, file: &File, meta: &Metadata, real: &Path) -> Result<(), String> {
    if !permits(
        asker,
        meta.uid(),
        meta.gid(),
        meta.mode(),
        fd_has_acl(file),
        READ,
    ) {
        return Err("no read permission on the file".to_string());
    }
    for dir in real.ancestors().skip(1) {
        let m = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if !permits(asker, m.uid(), m.gid(), m.mode(), path_has_acl(dir), SEARCH) {
            return Err(format!("no search permission on {}", dir.display()));
        }
    }
    Ok(())
}

const ACL_XATTR: &[u8] = b"system.posix_acl_access\0";

/// Whether the open file has an access ACL. An error other than "no such attribute" or
/// "not supported" counts as one: the conservative answer.
fn fd_has_acl(file: &File) -> bool {
    // SAFETY: the name is NUL-terminated; a null buffer of size 0 asks only for the size.
    let r = unsafe {
        nix::libc::fgetxattr(
            file.as_raw_fd(),
            ACL_XATTR.as_ptr().cast(),
            std::ptr::null_mut(),
            0,
        )
    };
    xattr_present(r)
}

fn path_has_acl(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return true;
    };
    // SAFETY: both strings are NUL-terminated; a null buffer of size 0 asks only for the size.
    let r = unsafe {
        nix::libc::getxattr(
            c.as_ptr(),
            ACL_XATTR.as_ptr().cast(),
            std::ptr::null_mut(),
            0,
        )
    };
    xattr_present(r)
}

fn xattr_present(r: isize) -> bool {
    if r >= 0 {
        return true;
    }
    let errno = nix::errno::Errno::last();
    !matches!(
        errno,
        nix::errno::Errno::ENODATA | nix::errno::Errno::EOPNOTSUPP
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asker(uid: u32, groups: &[u32]) -> Asker {
        Asker {
            uid,
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn the_bits_that_apply_are_the_first_class_that_matches() {
        let me = asker(1000, &[1000, 27]);
        // Owner: the owner bits only, even when others may read.
        assert!(permits(&me, 1000, 1000, 0o400, false, READ));
        assert!(!permits(&me, 1000, 1000, 0o044, false, READ));
        // Group member: the group bits only.
        assert!(permits(&me, 0, 27, 0o040, false, READ));
        assert!(!permits(&me, 0, 27, 0o604, false, READ));
        // Anyone else: the other bits.
        assert!(permits(&me, 0, 0, 0o004, false, READ));
        assert!(!permits(&me, 0, 0, 0o600, false, READ));
        assert!(permits(&me, 0, 0, 0o001, false, SEARCH));
        assert!(!permits(&me, 0, 0, 0o004, false, SEARCH));
        // With an ACL, only the owner's bits are trusted.
        assert!(permits(&me, 1000, 0, 0o400, true, READ));
        assert!(!permits(&me, 0, 27, 0o777, true, READ));
        assert!(!permits(&me, 0, 0, 0o777, true, READ));
        // Root reads anything.
        assert!(permits(&asker(0, &[]), 5, 5, 0, true, READ));
    }

    #[test]
    fn nothing_local_without_local_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.img");
        std::fs::write(&f, b"x").unwrap();
        let e = open(&f, &[], Some(0)).unwrap_err();
        assert!(matches!(&e, Error::InvalidArgs(m) if m.contains("[images] local_dirs")));
        let ok = open(&f, &[dir.path().to_path_buf()], Some(0)).unwrap();
        assert_eq!(ok.size, 1);
        assert_eq!(ok.path, f.canonicalize().unwrap());
    }

    #[test]
    fn forbidden_places_even_when_listed() {
        let all = [PathBuf::from("/")];
        for p in [
            "/proc/self/environ",
            "/sys/kernel/uevent_seqnum",
            "/dev/null",
        ] {
            let e = open(Path::new(p), &all, Some(0)).unwrap_err();
            assert!(
                matches!(&e, Error::Denied(m) if m.contains("never fetched")),
                "{p}: {e}"
            );
        }
        // Through a symlink inside a listed folder: the real path counts.
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("env.img");
        std::os::unix::fs::symlink("/proc/self/environ", &link).unwrap();
        let e = open(&link, &[dir.path().to_path_buf()], Some(0)).unwrap_err();
        assert!(matches!(&e, Error::Denied(_)), "{e}");
        // Outside every listed folder, and `..`.
        let other = tempfile::tempdir().unwrap();
        let f = other.path().join("x.img");
        std::fs::write(&f, b"x").unwrap();
        let e = open(&f, &[dir.path().to_path_buf()], Some(0)).unwrap_err();
        assert!(
            matches!(&e, Error::Denied(m) if m.contains("local_dirs")),
            "{e}"
        );
        let sneaky = dir.path().join("..").join(f.strip_prefix("/").unwrap());
        assert!(matches!(
            open(&sneaky, &[dir.path().to_path_buf()], Some(0)),
            Err(Error::InvalidArgs(_))
        ));
        std::os::unix::fs::symlink(&f, dir.path().join("out.img")).unwrap();
        assert!(matches!(
            open(
                &dir.path().join("out.img"),
                &[dir.path().to_path_buf()],
                Some(0)
            ),
            Err(Error::Denied(_))
        ));
        // Not a regular file.
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        assert!(matches!(
            open(
                &dir.path().join("sub"),
                &[dir.path().to_path_buf()],
                Some(0)
            ),
            Err(Error::InvalidArgs(_))
        ));
    }

    #[test]
    fn what_the_caller_cannot_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let dirs = [dir.path().to_path_buf()];
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let secret = dir.path().join("secret.img");
        std::fs::write(&secret, b"root only").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let public = dir.path().join("public.img");
        std::fs::write(&public, b"anyone").unwrap();
        std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o644)).unwrap();
        let owner = std::fs::metadata(&secret).unwrap().uid();
        // The owner reads both.
        assert!(open(&secret, &dirs, Some(owner)).is_ok());
        // A stranger (a uid with no groups) reads only the public one.
        let stranger = 4_000_000_000;
        let e = open(&secret, &dirs, Some(stranger)).unwrap_err();
        assert!(
            matches!(&e, Error::Denied(m) if m.contains("no read permission")),
            "{e}"
        );
        assert!(open(&public, &dirs, Some(stranger)).is_ok());
        // A folder the stranger cannot search hides even a public file.
        let private = dir.path().join("private");
        std::fs::create_dir(&private).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        let inner = private.join("inner.img");
        std::fs::write(&inner, b"x").unwrap();
        std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = open(&inner, &dirs, Some(stranger)).unwrap_err();
        assert!(
            matches!(&e, Error::Denied(m) if m.contains("no search permission")),
            "{e}"
        );
        assert!(matches!(open(&inner, &dirs, None), Err(Error::Denied(_))));
    }
}
