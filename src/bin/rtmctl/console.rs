//! `rtmctl console`: the board's console on this terminal, or as a byte pipe.
//!
//! The socket comes from rtmd over D-Bus (`Console.Attach`), so the bus policy decides who
//! may use the console. On a terminal (also LAVA's: pexpect runs commands on a
//! pseudo-terminal) the terminal goes raw, one banner line goes to stderr, and `Ctrl-]` then
//! `q` leaves; nothing else is interpreted or sent to the terminal (no queries, no line
//! editing), so LAVA sees exactly the board's bytes. `Ctrl-] q` also ends the session when a
//! telnet-style quit (`Ctrl-]` then `quit`) arrives. When stdin is not a terminal, bytes are
//! copied both ways; at the end of stdin, output is still copied until the board has been
//! quiet for [`LINGER`], so `echo cmd | rtmctl console` shows the command's answer.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};
use nix::sys::termios::{self, SetArg, Termios};

/// The escape: `Ctrl-]` then one of these.
const ESCAPE: u8 = 0x1d;
const LEAVE: &[u8] = b"q.";
/// Quiet time after the end of stdin before a pipe-mode session ends.
const LINGER: Duration = Duration::from_millis(300);

/// Restores the terminal when dropped (and from the signal thread).
struct RawTerminal {
    saved: Termios,
}

impl RawTerminal {
    fn enter() -> Option<RawTerminal> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).ok()?;
        Some(RawTerminal { saved })
    }

    fn restore(saved: &Termios) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, saved);
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        Self::restore(&self.saved);
    }
}

/// Runs a console session on `socket` until the user leaves, stdin ends, a signal, or rtmd
/// closes the console.
pub fn session(board: &str, socket: UnixStream) -> ExitCode {
    let interactive = nix::unistd::isatty(std::io::stdin().as_fd()).unwrap_or(false);
    // Signals are taken by one thread with sigwait, so the terminal is restored whatever
    // ends the session (LAVA ends a connection with SIGHUP or SIGTERM).
    let mut signals = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGHUP, Signal::SIGINT] {
        signals.add(s);
    }
    let _ = signals.thread_block();
    let raw = if interactive {
        RawTerminal::enter()
    } else {
        None
    };
    let saved = raw.as_ref().map(|r| r.saved.clone());
    std::thread::spawn(move || {
        let _ = signals.wait();
        if let Some(saved) = &saved {
            RawTerminal::restore(saved);
        }
        std::process::exit(0);
    });
    if interactive {
        eprint!("rtmctl: connected to {board}'s console; Ctrl-] q leaves\r\n");
    }

    let Ok(mut to_board) = socket.try_clone() else {
        return ExitCode::FAILURE;
    };
    let input_done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = input_done.clone();
    std::thread::spawn(move || {
        let left = copy_input(&mut to_board, interactive);
        if left {
            drop(raw);
            std::process::exit(0);
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
    });

    let mut from_board = socket;
    // A short timeout lets the loop notice the end of stdin while the board is quiet.
    let _ = from_board.set_read_timeout(Some(Duration::from_millis(50)));
    let mut stdout = std::io::stdout().lock();
    let mut buf = vec![0u8; 64 * 1024];
    let mut last_output = std::time::Instant::now();
    loop {
        match from_board.read(&mut buf) {
            Ok(0) => {
                eprint!("rtmctl: {board}: rtmd closed the console\r\n");
                return ExitCode::FAILURE;
            }
            Ok(n) => {
                last_output = std::time::Instant::now();
                // `read` never reports more than the buffer holds.
                let output = buf.get(..n).unwrap_or_default();
                if stdout
                    .write_all(output)
                    .and_then(|_| stdout.flush())
                    .is_err()
                {
                    return ExitCode::SUCCESS;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if input_done.load(std::sync::atomic::Ordering::SeqCst)
                    && last_output.elapsed() >= LINGER
                {
                    return ExitCode::SUCCESS;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                eprint!("rtmctl: {board}: console: {e}\r\n");
                return ExitCode::FAILURE;
            }
        }
    }
}

/// Copies stdin to the board; true when the user typed the escape to leave.
fn copy_input(to_board: &mut UnixStream, interactive: bool) -> bool {
    let mut stdin = std::io::stdin().lock();
    let mut buf = [0u8; 4096];
    let mut pending_escape = false;
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        };
        let mut out = Vec::with_capacity(n + 1);
        for &b in buf.iter().take(n) {
            if interactive && pending_escape {
                pending_escape = false;
                if LEAVE.contains(&b) {
                    return true;
                }
                out.push(ESCAPE);
                if b == ESCAPE {
                    continue;
                }
            } else if interactive && b == ESCAPE {
                pending_escape = true;
                continue;
            }
            out.push(b);
        }
        if to_board.write_all(&out).is_err() {
            return false;
        }
    }
}

/// `rtmctl console --log [--follow]`: the log file, and with `--follow` what is appended
/// (across rotations), until interrupted.
///
/// rtmd rotates by renaming `console.log` to `console.log.1` and creating a new
/// `console.log`, and writes nothing more to a file once it is renamed. So on seeing another
/// file at the path, the follower first reads the old one (still open here) to its end, then
/// any whole files rotated past in between (found by inode among `console.log.<k>`), and only
/// then moves on: every line once, in order.
pub fn show_log(board: &str, path: &Path, follow: bool) -> ExitCode {
    let open = || std::fs::File::open(path);
    let mut file = match open() {
        Ok(f) => f,
        Err(e) => {
            eprintln!(
                "rtmctl: {board}: cannot read the console log {}: {e}",
                path.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let mut current = inode(&file);
    let mut stdout = std::io::stdout().lock();
    let mut copy = |file: &mut std::fs::File| {
        let copied = std::io::copy(file, &mut stdout);
        let _ = stdout.flush();
        copied.map_err(|e| {
            eprintln!("rtmctl: {board}: {e}");
            ExitCode::FAILURE
        })
    };
    loop {
        if let Err(code) = copy(&mut file) {
            return code;
        }
        if !follow {
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(Duration::from_millis(200));
        let Ok(meta) = std::fs::metadata(path) else {
            continue; // between rtmd's rename and its creating the new file
        };
        let now = Some(std::os::unix::fs::MetadataExt::ino(&meta));
        if now == current {
            // `log_keep = 0` rotates by truncating the same file: start it again.
            if let Ok(pos) = std::io::Seek::stream_position(&mut file)
                && meta.len() < pos
            {
                let _ = std::io::Seek::rewind(&mut file);
            }
            continue;
        }
        let Ok(next) = open() else { continue };
        // Rotated: the rest of the old file first (rtmd wrote it before the rename).
        if let Err(code) = copy(&mut file) {
            return code;
        }
        match rotated_past(path, current, inode(&next)) {
            Some(between) => {
                for mut f in between {
                    if let Err(code) = copy(&mut f) {
                        return code;
                    }
                }
            }
            None => eprintln!(
                "rtmctl: {board}: the log rotated faster than it could be followed; \
                 some lines are only in older files or gone"
            ),
        }
        current = inode(&next);
        file = next;
    }
}

fn inode(f: &std::fs::File) -> Option<u64> {
    f.metadata()
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .ok()
}

/// Files rotated out between the one followed until now (`old`) and the one at the path now
/// (`new`), oldest first, opened; `None` when `old` is no longer among the rotated files (it
/// was deleted past `log_keep`), so what came between cannot be known.
fn rotated_past(path: &Path, old: Option<u64>, new: Option<u64>) -> Option<Vec<std::fs::File>> {
    let mut rotated = Vec::new();
    for k in 1.. {
        let Ok(f) = std::fs::File::open(format!("{}.{k}", path.display())) else {
            break;
        };
        let ino = inode(&f);
        if ino == old {
            // Newer files come first in `rotated`; `new` may itself have been rotated
            // since it was opened, and whatever is newer than it is read after it.
            let after_new = rotated
                .iter()
                .position(|(i, _)| *i == new)
                .map_or(0, |p| p + 1);
            return Some(rotated.drain(after_new..).rev().map(|(_, f)| f).collect());
        }
        rotated.push((ino, f));
    }
    None
}
