//! Test harness: a private dbus-daemon, rtm-sim simulators, the rtmd daemon and the real
//! clients (rtmctl, busctl, dbus-send), all as real processes on real transports.
//!
//! Waits have deadlines only so that a broken build fails instead of hanging; no test asserts
//! on timing.

// A test fails by panicking: unwrap, expect, panic and indexing are how it says so.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::string_slice
)]
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const DEADLINE: Duration = Duration::from_secs(20);

/// Fails with a clear message when a tool the suite needs is missing (the README's test
/// command installs them all).
pub fn require(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found || Path::new(tool).is_file(),
        "`{tool}` is not installed; run the README's test command (scripts/test), which installs it"
    );
}

/// A child process killed when dropped, whose output lines are collected as they come.
pub struct Proc {
    pub child: Child,
    pub lines: Arc<Mutex<Vec<String>>>,
    pub name: String,
    /// Its input, when started with [`Proc::spawn_stdin`].
    pub stdin: Option<std::process::ChildStdin>,
    /// Its output pipes, for [`Proc::settle`].
    pipes: Vec<Pipe>,
}

/// An output pipe of a child: a second descriptor of it (to ask how much is unread), and
/// how many bytes its reader thread has read but not yet filed as lines.
struct Pipe {
    fd: std::os::fd::OwnedFd,
    unfiled: Arc<std::sync::atomic::AtomicUsize>,
}

impl Pipe {
    fn settled(&self) -> bool {
        use std::os::fd::AsRawFd;
        let mut unread: nix::libc::c_int = 0;
        // SAFETY: FIONREAD writes one int through the pointer, which outlives the call.
        let r = unsafe { nix::libc::ioctl(self.fd.as_raw_fd(), nix::libc::FIONREAD, &mut unread) };
        r == 0 && unread == 0 && self.unfiled.load(std::sync::atomic::Ordering::SeqCst) == 0
    }
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, capture_stderr: bool) -> Proc {
        cmd.stdin(Stdio::null());
        Self::start(name, cmd, capture_stderr)
    }

    /// Like [`Proc::spawn`] (stderr captured), with a pipe to its stdin for [`Proc::send`].
    pub fn spawn_stdin(name: &str, mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::piped());
        let mut p = Self::start(name, cmd, true);
        p.stdin = p.child.stdin.take();
        p
    }

    /// Writes `text` to its stdin.
    pub fn send(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("started with spawn_stdin");
        stdin.write_all(text.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    fn start(name: &str, mut cmd: Command, capture_stderr: bool) -> Proc {
        cmd.stdout(Stdio::piped());
        cmd.stderr(if capture_stderr {
            Stdio::piped()
        } else {
            Stdio::inherit()
        });
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let mut pipes = vec![collect(out, lines.clone())];
        if let Some(err) = child.stderr.take() {
            pipes.push(collect(err, lines.clone()));
        }
        Proc {
            child,
            lines,
            name: name.to_string(),
            stdin: None,
            pipes,
        }
    }

    /// Waits (at most 2 s) until every byte the child wrote so far is filed as a line: the
    /// reader threads may lag behind the pipe, e.g. a simulator's event written just before
    /// it answered the request the test made.
    pub fn settle(&self) {
        let start = Instant::now();
        while !self.pipes.iter().all(Pipe::settled) && start.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Waits for a line containing `needle`; returns it.
    pub fn wait_line(&self, needle: &str) -> String {
        let start = Instant::now();
        loop {
            if let Some(l) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return l.clone();
            }
            assert!(
                start.elapsed() < DEADLINE,
                "{} never printed {needle:?}; it printed:\n{}",
                self.name,
                self.text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until at least `n` lines contain `needle`; returns all that do: for lines the
    /// process may write after the answer the test got (lines written before it are there
    /// for [`Proc::matching`] already, which settles the pipes first).
    pub fn wait_lines(&self, needle: &str, n: usize) -> Vec<String> {
        let start = Instant::now();
        loop {
            let found = self.matching(needle);
            if found.len() >= n {
                return found;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "{} never printed {n} lines with {needle:?}; it printed:\n{}",
                self.name,
                self.text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Everything it printed so far ([`Proc::settle`]d).
    pub fn text(&self) -> String {
        self.settle();
        self.lines.lock().unwrap().join("\n")
    }

    /// Lines containing `needle`, in order, of everything it printed so far
    /// ([`Proc::settle`]d).
    pub fn matching(&self, needle: &str) -> Vec<String> {
        self.settle();
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }

    /// Forgets what it printed so far ([`Proc::settle`]d first, so nothing printed before
    /// is filed after).
    pub fn clear(&self) {
        self.settle();
        self.lines.lock().unwrap().clear();
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends a signal and waits for the exit status.
    pub fn signal_and_wait(&mut self, sig: &str) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args([&format!("-{sig}"), &pid])
            .status()
            .unwrap();
        self.wait()
    }

    pub fn wait(&mut self) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the reader threads drain the pipes.
                std::thread::sleep(Duration::from_millis(50));
                return status;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "{} did not exit:\n{}",
                self.name,
                self.text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Files a child's output pipe as lines, on a thread of its own.
fn collect<R>(stream: R, lines: Arc<Mutex<Vec<String>>>) -> Pipe
where
    R: Read + std::os::fd::AsFd + Send + 'static,
{
    use std::sync::atomic::{AtomicUsize, Ordering};
    let fd = stream.as_fd().try_clone_to_owned().unwrap();
    let unfiled = Arc::new(AtomicUsize::new(0));
    struct Counting<R> {
        inner: R,
        unfiled: Arc<AtomicUsize>,
    }
    impl<R: Read> Read for Counting<R> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.unfiled.fetch_add(n, Ordering::SeqCst);
            Ok(n)
        }
    }
    let counter = unfiled.clone();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(Counting {
            inner: stream,
            unfiled: counter.clone(),
        });
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let text = String::from_utf8_lossy(&line);
                    let text = text.trim_end_matches(['\n', '\r']).to_string();
                    lines.lock().unwrap().push(text);
                    counter.fetch_sub(n, Ordering::SeqCst);
                }
            }
        }
    });
    Pipe { fd, unfiled }
}

/// A private bus: `dbus-daemon --session` on a socket in a temporary folder.
pub struct Bus {
    pub address: String,
    _proc: Proc,
    _dir: tempfile::TempDir,
}

impl Bus {
    pub fn start() -> Bus {
        require("dbus-daemon");
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("dbus-daemon");
        cmd.args(["--session", "--nofork", "--nopidfile", "--print-address=1"])
            .arg(format!("--address=unix:path={}/bus", dir.path().display()));
        let proc = Proc::spawn("dbus-daemon", cmd, true);
        let address = proc.wait_line("unix:path=").trim().to_string();
        Bus {
            address,
            _proc: proc,
            _dir: dir,
        }
    }
}

impl Bus {
    /// A private bus that admits every local user (for tests that run rtmd as another uid).
    pub fn start_open() -> Bus {
        require("dbus-daemon");
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let config = dir.path().join("bus.conf");
        std::fs::write(
            &config,
            format!(
                "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\" \
                 \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n\
                 <busconfig><type>session</type><listen>unix:path={}/bus</listen><auth>EXTERNAL</auth>\
                 <policy context=\"default\"><allow user=\"*\"/><allow own=\"*\"/>\
                 <allow send_destination=\"*\" eavesdrop=\"true\"/><allow eavesdrop=\"true\"/></policy></busconfig>\n",
                dir.path().display()
            ),
        )
        .unwrap();
        let mut cmd = Command::new("dbus-daemon");
        cmd.arg(format!("--config-file={}", config.display()))
            .args(["--nofork", "--nopidfile", "--print-address=1"]);
        let proc = Proc::spawn("dbus-daemon", cmd, true);
        let address = proc.wait_line("unix:path=").trim().to_string();
        Bus {
            address,
            _proc: proc,
            _dir: dir,
        }
    }
}

/// An example binary (examples/NAME.rs), built now: `cargo test --test X` alone does not
/// build examples, and a stale one would test old code.
pub fn example(name: &str) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--quiet", "--example", name])
        .status()
        .unwrap();
    assert!(status.success(), "cargo build --example {name} failed");
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> -> target/<profile>/examples/<name>
    exe.parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name)
}

pub fn bin(name: &str) -> PathBuf {
    match name {
        "rtmd" => PathBuf::from(env!("CARGO_BIN_EXE_rtmd")),
        "rtmctl" => PathBuf::from(env!("CARGO_BIN_EXE_rtmctl")),
        "rtm-sim" => PathBuf::from(env!("CARGO_BIN_EXE_rtm-sim")),
        other => panic!("no binary {other}"),
    }
}

/// Starts an rtm-sim simulator and waits for its ready line; returns it and that line.
pub fn sim(args: &[&str]) -> (Proc, String) {
    let mut cmd = Command::new(bin("rtm-sim"));
    cmd.args(args);
    let p = Proc::spawn("rtm-sim", cmd, true);
    let ready = {
        let start = Instant::now();
        loop {
            let first = p.lines.lock().unwrap().first().cloned();
            if let Some(l) = first {
                break l;
            }
            assert!(start.elapsed() < DEADLINE, "rtm-sim printed nothing");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    assert!(
        ready.starts_with("listening ") || ready.starts_with("ready "),
        "rtm-sim: {ready}"
    );
    (p, ready)
}

/// A loopback port nobody listens on right now, never handed out before by this process.
///
/// Asking the kernel (binding port 0) is not enough: once that listener is closed, the next
/// bind to port 0, an outgoing connection or another test's `free_port` may get the same port
/// before the test binds it. So ports come from below the kernel's ephemeral range, which
/// it never picks on its own, each checked by binding it, and each only once per process;
/// where one process starts in that range depends on its pid, so that test binaries run at
/// once start apart.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOWEST: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .filter(|low| *low > LOWEST + 1000)
        .unwrap_or(32_768);
    let span = ephemeral - LOWEST;
    let start = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = LOWEST + (start + n) % span;
        let port = u16::try_from(port).unwrap();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port below {ephemeral}");
}

/// rtm-sim options for a quick-booting simulated board named `name`: its console pty at
/// `dir/console`, its shell's home at `dir/home`.
pub fn fast_board(dir: &Path, name: &str) -> Vec<String> {
    let path = |leaf: &str| dir.join(leaf).display().to_string();
    [
        "--board-console",
        &path("console"),
        "--board-name",
        name,
        "--autoboot-secs",
        "1",
        "--line-delay-ms",
        "1",
        "--board-home",
        &path("home"),
    ]
    .map(str::to_string)
    .to_vec()
}

/// An egpms strip simulator on a free loopback port; returns it and its port.
pub fn strip(extra: &[&str]) -> (Proc, u16) {
    let mut args = vec!["egpms", "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let (p, ready) = sim(&args);
    let port = ready.rsplit(':').next().unwrap().parse().unwrap();
    (p, port)
}

/// The daemon for one board, with its config in a temporary folder.
pub struct Daemon {
    pub proc: Proc,
    pub dir: tempfile::TempDir,
    pub board: String,
    pub bus: String,
}

impl Daemon {
    /// Writes `config` and starts rtmd; waits until it is ready on the bus.
    pub fn start(bus: &Bus, config: &str) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(bus, config, dir)
    }

    pub fn start_in(bus: &Bus, config: &str, dir: tempfile::TempDir) -> Daemon {
        let path = dir.path().join("board.toml");
        std::fs::write(&path, config).unwrap();
        let board = config
            .lines()
            .find_map(|l| l.strip_prefix("name = \""))
            .and_then(|l| l.strip_suffix('"'))
            .expect("config has a name line")
            .to_string();
        let proc = Self::spawn(&bus.address, &path);
        proc.wait_line("ready on");
        Daemon {
            proc,
            dir,
            board,
            bus: bus.address.clone(),
        }
    }

    /// Starts rtmd without waiting for it (for tests of failing starts).
    pub fn spawn(bus: &str, config: &Path) -> Proc {
        Self::spawn_env(bus, config, &[])
    }

    /// Starts rtmd with extra environment variables (e.g. `CREDENTIALS_DIRECTORY`).
    pub fn spawn_env(bus: &str, config: &Path, env: &[(&str, &Path)]) -> Proc {
        let mut cmd = Command::new(bin("rtmd"));
        cmd.arg("--config")
            .arg(config)
            .args(["--bus-address", bus, "--log", "stderr"]);
        cmd.env("RUST_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        Proc::spawn("rtmd", cmd, true)
    }

    pub fn rtmctl(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(bin("rtmctl"));
        cmd.args(["--bus-address", &self.bus, "--dut", &self.board])
            .args(args);
        cmd.env_remove("RTM_DUT")
            .env_remove("RTM_BUS")
            .env_remove("RTM_BUS_ADDRESS");
        cmd.output().unwrap()
    }

    pub fn busctl(&self, args: &[&str]) -> Output {
        busctl(&self.bus, args)
    }

    /// `dbus-send --print-reply` to the board (shows error names, unlike busctl).
    pub fn dbus_send(&self, member: &str, args: &[&str]) -> Output {
        let mut cmd = Command::new("dbus-send");
        cmd.arg(format!("--bus={}", self.bus))
            .arg("--print-reply")
            .arg(format!("--dest={}", rtmd::bus::bus_name(&self.board)))
            .arg("/org/rtmd/Dut1")
            .arg(member)
            .args(args);
        cmd.output().unwrap()
    }

    pub fn property(&self, iface: &str, name: &str) -> String {
        let out = self.busctl(&[
            "get-property",
            &rtmd::bus::bus_name(&self.board),
            "/org/rtmd/Dut1",
            iface,
            name,
        ]);
        assert!(
            out.status.success(),
            "get-property {name}: {}",
            text(&out.stderr)
        );
        text(&out.stdout).trim().to_string()
    }
}

/// `rtmd --config PATH --check`.
pub fn rtmd_check(path: &Path) -> Output {
    Command::new(bin("rtmd"))
        .arg("--config")
        .arg(path)
        .arg("--check")
        .output()
        .unwrap()
}

/// busctl calling `Console.WaitFor(regex, timeout_ms)` on `board` (run it, or spawn it to
/// wait in the background).
pub fn wait_for_call(address: &str, board: &str, regex: &str, timeout_ms: u32) -> Command {
    require("busctl");
    let mut cmd = Command::new("busctl");
    cmd.arg(format!("--address={address}"))
        .arg(format!("--timeout={}", timeout_ms / 1000 + 10))
        .args([
            "call",
            &rtmd::bus::bus_name(board),
            "/org/rtmd/Dut1",
            "org.rtmd.Dut1.Console",
            "WaitFor",
            "su",
            regex,
        ])
        .arg(timeout_ms.to_string());
    cmd
}

pub fn busctl(address: &str, args: &[&str]) -> Output {
    require("busctl");
    Command::new("busctl")
        .arg(format!("--address={address}"))
        .args(args)
        .output()
        .unwrap()
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Asserts the command succeeded and printed exactly one line; returns it.
pub fn ok_line(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed ({}): {}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "expected one line: {stdout:?}");
    stdout.trim().to_string()
}

/// Asserts the command failed with `code` and one line on stderr; returns it.
pub fn err_line(out: &Output, code: i32) -> String {
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout {:?} stderr {stderr:?}",
        text(&out.stdout)
    );
    assert_eq!(
        stderr.lines().count(),
        1,
        "expected one line on stderr: {stderr:?}"
    );
    stderr.trim().to_string()
}

/// Polls `f` until it returns true (deadline: [`DEADLINE`]).
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < DEADLINE, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Pseudo-random bytes (xorshift), the same for the same seed: test images whose content
/// is not all the same byte.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A daemon log line without its terminal colours (tracing's fmt layer colours stderr).
pub fn plain_log(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters, ended by a letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The message of a daemon log line ("TIME LEVEL message field=value ..."), without the
/// time, the level and the `subsystem` field.
pub fn log_message(line: &str) -> String {
    let plain = plain_log(line);
    let rest = plain.trim_start();
    let rest = rest.split_once(' ').map_or("", |(_, r)| r).trim_start();
    let rest = rest.split_once(' ').map_or("", |(_, r)| r);
    rest.split(" subsystem=")
        .next()
        .unwrap_or("")
        .trim()
        .to_string()
}

/// When the daemon wrote a log line: its RFC 3339 timestamp.
pub fn log_time(line: &str) -> std::time::SystemTime {
    let plain = plain_log(line);
    let stamp = plain.split_whitespace().next().unwrap_or("");
    humantime::parse_rfc3339_weak(stamp.trim_end_matches('Z'))
        .unwrap_or_else(|e| panic!("no timestamp in {line:?}: {e}"))
}

/// The uid and gid the tests switch to for a second user.
pub const NOBODY: u32 = 65534;

/// Fails the test unless it runs as root (`file`: the test file that switches users).
pub fn need_root(file: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "{file} switches users: run as root (as scripts/test does)"
    );
}

/// `program` run as nobody (uid and gid 65534, no supplementary groups).
pub fn as_nobody(program: &Path) -> Command {
    require("setpriv");
    let mut cmd = Command::new("setpriv");
    cmd.args([
        format!("--reuid={NOBODY}"),
        format!("--regid={NOBODY}"),
        "--clear-groups".to_string(),
    ])
    .arg(program);
    cmd
}

/// rtmctl run as nobody against the daemon's board, without the test's RTM_* environment.
pub fn rtmctl_as_nobody(d: &Daemon, args: &[&str]) -> Output {
    as_nobody(&bin("rtmctl"))
        .args(["--bus-address", &d.bus, "--dut", &d.board])
        .args(args)
        .env_remove("RTM_DUT")
        .env_remove("RTM_HOLD")
        .env_remove("RTM_BUS_ADDRESS")
        .output()
        .unwrap()
}

/// Reads from `r` until `needle` has been seen; returns everything read.
pub fn read_until(r: &mut impl std::io::Read, needle: &[u8]) -> Vec<u8> {
    let start = std::time::Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    let want = String::from_utf8_lossy(needle).into_owned();
    while !got.windows(needle.len()).any(|w| w == needle) {
        assert!(
            start.elapsed() < DEADLINE,
            "never read {want:?}; {}",
            tail(&got)
        );
        match r.read(&mut buf) {
            Ok(0) => panic!("EOF before {want:?}; {}", tail(&got)),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("{e}"),
        }
    }
    got
}

/// What was read, briefly (payloads can be megabytes).
pub fn tail(got: &[u8]) -> String {
    let from = got.len().saturating_sub(80);
    format!(
        "{} bytes read, ending {:?}",
        got.len(),
        String::from_utf8_lossy(&got[from..])
    )
}
