//! Pseudo-terminal pairs standing in for serial ports: the simulator holds the master, the
//! daemon opens the slave through a stable symlink (like udev's `/dev/rtm/<board>/psu`).

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::pty::openpty;
use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};

/// A pty pair whose slave is reachable at `link`. The slave stays open here so the master
/// never sees a hang-up while the daemon reopens the port.
pub struct Pty {
    pub master: File,
    _slave: OwnedFd,
    pub slave_path: PathBuf,
    link: PathBuf,
}

impl Pty {
    pub fn open(link: &Path) -> io::Result<Pty> {
        let pair = openpty(None, None).map_err(io::Error::from)?;
        // openpty does not set close-on-exec: without it every child (the simulated board's
        // shell, a dbus-daemon) would hold the pty open.
        for fd in [&pair.master, &pair.slave] {
            fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(io::Error::from)?;
        }
        // Raw from the start: a cooked pty would echo the daemon's requests back to it.
        let mut t = tcgetattr(&pair.slave).map_err(io::Error::from)?;
        cfmakeraw(&mut t);
        tcsetattr(&pair.slave, SetArg::TCSANOW, &t).map_err(io::Error::from)?;
        let slave_path = std::fs::read_link(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&pair.slave)
        ))?;
        match std::fs::remove_file(link) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::os::unix::fs::symlink(&slave_path, link)?;
        Ok(Pty {
            master: File::from(pair.master),
            _slave: pair.slave,
            slave_path,
            link: link.to_path_buf(),
        })
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.link);
    }
}
