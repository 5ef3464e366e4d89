//! Tests of `board`.

use super::*;
use crate::sim::pty::Pty;
use std::sync::Mutex;

const PATIENCE: Duration = Duration::from_secs(10);

/// The daemon's end of the serial line, plus what the board reported.
struct Bench {
    board: SimBoard,
    port: File,
    rx: Receiver<Vec<u8>>,
    seen: Vec<u8>,
    events: Arc<Mutex<Vec<String>>>,
    scratch: PathBuf,
    _pty: Pty,
    _dir: tempfile::TempDir,
}

fn bench(name: &str) -> Bench {
    let dir = tempfile::tempdir().expect("tempdir");
    // Run as root, the board's shell runs as nobody, which must reach its scratch folder
    // whatever the umask made of the temporary folder.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .expect("chmod");
    let pty = Pty::open(&dir.path().join("console")).expect("pty");
    let port = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(OFlag::O_NOCTTY.bits())
        .open(dir.path().join("console"))
        .expect("open slave");
    let (tx, rx) = mpsc::channel();
    let mut reader = port.try_clone().expect("clone slave");
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                return;
            }
        }
    });
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&log);
    let events = Events(Arc::new(move |line: &str| {
        sink.lock().expect("event log").push(line.to_string())
    }));
    let scratch = dir.path().join("scratch");
    let spec = BoardSpec {
        name: name.to_string(),
        scratch: scratch.clone(),
        autoboot_secs: 1,
        line_delay_ms: 1,
        ..BoardSpec::default()
    };
    let console = pty.master.try_clone().expect("clone master");
    let board = SimBoard::start(console, spec, events).expect("start board");
    Bench {
        board,
        port,
        rx,
        seen: Vec::new(),
        events: log,
        scratch,
        _pty: pty,
        _dir: dir,
    }
}

impl Bench {
    /// Reads until `needle`; returns everything up to and including it.
    fn expect(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(at) = self
                .seen
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
            {
                let taken: Vec<u8> = self.seen.drain(..at + needle.len()).collect();
                return String::from_utf8_lossy(&taken).into_owned();
            }
            match self
                .rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(bytes) => self.seen.extend(bytes),
                Err(_) => panic!(
                    "no {needle:?} within {PATIENCE:?}; read {:?}",
                    String::from_utf8_lossy(&self.seen)
                ),
            }
        }
    }

    /// Asserts that nothing arrives for `how_long`.
    fn quiet(&mut self, how_long: Duration) {
        self.seen.clear();
        let until = Instant::now() + how_long;
        if let Ok(bytes) = self
            .rx
            .recv_timeout(until.saturating_duration_since(Instant::now()))
        {
            panic!(
                "expected silence, got {:?}",
                String::from_utf8_lossy(&bytes)
            );
        }
    }

    fn send(&mut self, text: &str) {
        self.port.write_all(text.as_bytes()).expect("write console");
    }

    /// The events so far; waits (up to 5 s) for at least `n`: the board emits an event
    /// right after printing what it is about, so the reader may be ahead of it.
    fn events_at_least(&self, n: usize) -> Vec<String> {
        let start = std::time::Instant::now();
        loop {
            let events = self.events.lock().expect("event log").clone();
            if events.len() >= n || start.elapsed() > std::time::Duration::from_secs(5) {
                return events;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

/// Field `n` (0-based) of /proc/PID/stat; `None` once the process is gone.
fn stat_field(pid: i32, n: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields 0 (pid) and 1 (comm) end with the closing parenthesis.
    let after_name = stat.rsplit(')').next()?;
    after_name.split_whitespace().nth(n - 2).map(str::to_string)
}

/// Whether a process of session `sid` runs the command line `cmdline` (NUL-separated).
fn running_in_session(sid: &str, cmdline: &[u8]) -> bool {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .any(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == cmdline)
                && stat_field(pid, 5).as_deref() == Some(sid)
        })
}

#[test]
fn boots_to_a_real_shell_and_goes_dark_on_power_loss() {
    let mut b = bench("rpi4-01");
    b.send("anyone there?\r");
    b.quiet(Duration::from_millis(200));

    b.board.set_power(5.0);
    b.expect("U-Boot 2024.01-rtm-sim (Nov 27 2026)\r\n");
    b.expect("DRAM:  4 GiB\r\n");
    b.expect("Model: rtm-sim rpi4-01\r\n");
    b.expect("Hit any key to stop autoboot:  1 ");
    b.expect("\x08\x08\x08 0 \r\n");
    b.expect("Starting kernel ...\r\n");
    b.expect("[    0.000000] Linux version 6.1.0-rtm-sim (rtm-sim) #1 SMP\r\n");
    b.expect("[    1.234567] Run /sbin/init as init process\r\n");
    b.expect("\r\nrpi4-01 login: ");

    b.send("guest\r");
    b.expect("guest\r\nLogin incorrect\r\n\r\nrpi4-01 login: ");
    b.send("root\r");
    b.expect("root\r\n");
    b.expect("root@rpi4-01:~# ");
    b.send("echo hello-$((6*7))\r");
    b.expect("hello-42\r\n");
    b.expect("root@rpi4-01:~# ");
    b.send("pwd\r");
    b.expect(&format!("{}\r\n", b.scratch.display()));
    b.expect("root@rpi4-01:~# ");

    // Leaving the shell gives the login prompt back.
    b.send("exit\r");
    b.expect("\r\nrpi4-01 login: ");
    b.send("root\r");
    b.expect("root@rpi4-01:~# ");

    // A background job must die with the board.
    b.send("sleep 60 & echo $! > job.pid\r");
    b.expect("root@rpi4-01:~# ");
    let job: i32 = std::fs::read_to_string(b.scratch.join("job.pid"))
        .expect("job.pid")
        .trim()
        .parse()
        .expect("pid");

    // The shell owns its terminal: Ctrl-C interrupts the foreground job, once it runs (a
    // Ctrl-C before the fork would leave `sleep 30` to run its course).
    b.send("sleep 30\r");
    b.expect("sleep 30\r\n");
    let session = stat_field(job, 5).expect("the job's session");
    let started_by = Instant::now() + PATIENCE;
    while !running_in_session(&session, b"sleep\x0030\x00") {
        assert!(Instant::now() < started_by, "`sleep 30` never started");
        thread::sleep(Duration::from_millis(5));
    }
    b.send("\x03");
    b.expect("root@rpi4-01:~# ");

    b.board.set_power(0.0);
    b.quiet(Duration::from_millis(300));
    b.send("echo still-there\r");
    b.quiet(Duration::from_millis(300));
    let dead_by = Instant::now() + PATIENCE;
    while std::fs::read_to_string(format!("/proc/{job}/stat"))
        .is_ok_and(|stat| !stat.rsplit(')').next().unwrap_or("").starts_with(" Z"))
    {
        assert!(Instant::now() < dead_by, "job {job} survived power loss");
        thread::sleep(Duration::from_millis(20));
    }

    // Power back: from the banner again.
    b.board.set_power(5.0);
    b.expect("U-Boot 2024.01-rtm-sim (Nov 27 2026)\r\n");
    assert_eq!(
        b.events_at_least(8),
        [
            "board booting",
            "board login prompt",
            "board login prompt",
            "board shell",
            "board login prompt",
            "board shell",
            "board off",
            "board booting",
        ]
    );
}

#[test]
fn a_key_stops_autoboot_at_the_u_boot_prompt() {
    let mut b = bench("bbb-02");
    b.board.power_input().set_power(5.1);
    b.expect("Hit any key to stop autoboot:  1 ");
    b.send(" ");
    b.expect("\x08\x08\x08 0 \r\n=> ");

    b.send("version\r");
    b.expect("version\r\n");
    b.expect("U-Boot 2024.01-rtm-sim (Nov 27 2026)\r\n");
    b.expect("=> ");
    // Backspace edits the line, and is echoed as rubout.
    b.send("printenx\x7fv\r");
    b.expect("printenx\x08 \x08v\r\n");
    b.expect("bootcmd=run distro_bootcmd\r\n");
    b.expect("=> ");
    b.send("printenv board_name nope\r\n");
    b.expect("board_name=bbb-02\r\n## Error: \"nope\" not defined\r\n=> ");
    b.send("frob now\r");
    b.expect("Unknown command 'frob' - try 'help'\r\n=> ");
    b.send("help\r");
    let help = b.expect("=> ");
    for command in ["boot", "help", "printenv", "reset", "version"] {
        assert!(help.contains(&format!("\r\n{command} ")), "{help:?}");
    }

    b.send("reset\r");
    b.expect("resetting ...\r\n");
    b.expect("U-Boot 2024.01-rtm-sim (Nov 27 2026)\r\n");
    b.expect("Hit any key to stop autoboot:  1 ");
    b.send("\r");
    b.expect("=> ");
    b.send("boot\r");
    b.expect("Starting kernel ...\r\n");
    b.expect("bbb-02 login: ");
    assert_eq!(
        b.events_at_least(3),
        ["board booting", "board booting", "board login prompt"]
    );
}

#[test]
fn brown_out_resets_in_a_loop_until_the_supply_recovers() {
    let mut b = bench("rpi4-03");
    b.board.set_power(4.2);
    for _ in 0..2 {
        b.expect("U-Boot 2024.01-rtm-sim (Nov 27 2026)\r\n");
        b.expect("brown-out: supply 4.20 V below 4.75 V, resetting\r\n");
    }
    // Sagging further stays in the loop and says so.
    b.board.set_power(4.0);
    b.expect("brown-out: supply 4.00 V below 4.75 V, resetting\r\n");
    b.board.set_power(5.0);
    b.expect("Hit any key to stop autoboot:  1 ");
    assert_eq!(b.events_at_least(2), ["board brown-out", "board booting"]);
}

#[test]
fn over_voltage_halts_until_back_in_range() {
    let mut b = bench("rpi4-04");
    b.board.set_power(6.0);
    b.expect("rtm-sim: refusing to boot: supply 6.00 V above the board's maximum 5.80 V\r\n");
    b.quiet(Duration::from_millis(100));
    b.board.set_power(6.5);
    b.quiet(Duration::from_millis(100));
    b.board.set_power(5.0);
    b.expect("Hit any key to stop autoboot:  1 ");
    assert_eq!(
        b.events_at_least(2),
        ["board over-voltage", "board booting"]
    );
}

#[test]
fn handles_cross_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<SimBoard>();
    shareable::<PowerInput>();
}

#[test]
fn supply_readings() {
    let spec = BoardSpec::default();
    assert_eq!(Supply::of(0.0, &spec), Supply::Off);
    assert_eq!(Supply::of(-1.0, &spec), Supply::Off);
    assert_eq!(Supply::of(f64::NAN, &spec), Supply::Off);
    assert_eq!(Supply::of(4.74, &spec), Supply::BrownOut);
    assert_eq!(Supply::of(4.75, &spec), Supply::InRange);
    assert_eq!(Supply::of(5.8, &spec), Supply::InRange);
    assert_eq!(Supply::of(5.81, &spec), Supply::OverVoltage);
}

/// Run as root (as CI and the demo are), the shell hands out no privilege: it runs as
/// nobody, without groups, and setuid programs give it nothing back.
#[test]
fn the_shell_of_a_simulator_run_as_root_runs_as_nobody() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test checks the privilege drop: run the suite as root (scripts/test)"
    );
    let nobody = shell_account().expect("root drops to an account");
    let mut b = bench("rpi4-01");
    b.board.set_power(5.0);
    b.expect("rpi4-01 login: ");
    b.send("root\r");
    b.expect("root@rpi4-01:~# ");
    b.send("echo uid=$(id -u) gid=$(id -g) groups=$(id -G) nnp=$(grep NoNewPrivs /proc/self/status | tr -dc 0-9)\r");
    b.expect(&format!(
        "uid={uid} gid={gid} groups={gid} nnp=1\r\n",
        uid = nobody.uid,
        gid = nobody.gid
    ));
    b.expect("root@rpi4-01:~# ");
    // Its home is its own; the terminal too.
    b.send("touch mine && stat -c %u $PWD mine $(tty)\r");
    b.expect(&format!("{0}\r\n{0}\r\n{0}\r\n", nobody.uid));
}

/// A scratch folder nobody could reach is refused at start, saying why.
#[test]
fn a_scratch_folder_the_shell_cannot_reach_is_refused_at_start() {
    assert!(nix::unistd::geteuid().is_root(), "run the suite as root");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .expect("chmod");
    let pty = Pty::open(&dir.path().join("console")).expect("pty");
    let spec = BoardSpec {
        scratch: dir.path().join("home"),
        ..BoardSpec::default()
    };
    let console = pty.master.try_clone().expect("clone master");
    let Err(e) = SimBoard::start(console, spec, Events::log("board")) else {
        panic!("a board whose shell cannot reach its home started");
    };
    assert_eq!(
        e.to_string(),
        format!(
            "the board's shell runs as nobody (uid 65534), which cannot reach {}: {} is not \
             searchable by other users",
            dir.path().join("home").canonicalize().unwrap().display(),
            dir.path().canonicalize().unwrap().display()
        )
    );
}
