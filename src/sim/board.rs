//! A simulated board behind a serial console: the device under test that rtmd powers and whose
//! UART it serves. The console is the master side of a pseudo-terminal; the daemon opens the
//! slave as the board's serial port, exactly as it would open `/dev/ttyUSB0`.
//!
//! The board follows its supply: off, it is silent; below its brown-out threshold it resets in
//! a loop; above its maximum it refuses to boot; in range it prints a U-Boot banner and a
//! countdown that a key press stops (a small U-Boot prompt), then a kernel log and a login
//! prompt. Logging in as `root` starts a real shell (`bash`, on a pseudo-terminal of its own,
//! in the scratch folder), so a LAVA job's test shell really runs commands.
//!
//! That shell is reachable by whoever reaches the console (the demo's loopback telnet port:
//! every local user), so it never runs with the simulator's privileges: when the simulator
//! runs as root, the shell runs as `nobody` (no supplementary groups, no new privileges
//! through setuid programs), in a scratch folder handed to that user. "root" is only the
//! simulated board's login name.
//!
//! One thread owns the board's state and decides everything (power changes and keys arrive
//! on one channel, so they are handled in one order); the others only move bytes. Losing power
//! kills everything the shell started and drops output not yet sent, as a real board would.
//!
//! Events: "board off", "board booting", "board brown-out", "board over-voltage",
//! "board login prompt", "board shell".

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
use nix::pty::{Winsize, grantpt, posix_openpt, ptsname_r, unlockpt};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::{Pid, getsid, setsid};

use super::Events;

/// First line after every reset, and the `version` banner.
const BANNER: &str = "U-Boot 2024.01-rtm-sim (Nov 27 2026)";
const UBOOT_PROMPT: &str = "=> ";
/// Readline's settings for the shell: bracketed paste would wrap every prompt in escape
/// sequences that LAVA's prompt matching does not expect.
const INPUTRC: &str = ".inputrc";
/// Chunks waiting for the console. Generous: it only fills when nobody reads the console.
const CONSOLE_QUEUE: usize = 256;
/// Keystrokes waiting for the shell.
const KEYS_QUEUE: usize = 64;
/// Keys kept while the board is not reading them (during the U-Boot banner).
const FIFO_LIMIT: usize = 4096;
/// Longest command or user name the line editor accepts, as U-Boot's CONFIG_SYS_CBSIZE.
const MAX_LINE: usize = 256;
/// A brown-out loop never spins faster than this, whatever the line delay.
const MIN_RESET_PERIOD: Duration = Duration::from_millis(10);
/// After the shell exits, how long its last output may take to reach the console before the
/// login prompt is printed anyway.
const SHELL_DRAIN: Duration = Duration::from_secs(2);

/// What board to simulate.
#[derive(Debug, Clone)]
pub struct BoardSpec {
    /// Hostname shown at login, e.g. "rpi4-01".
    pub name: String,
    /// Below this (but above 0) the board resets in a loop.
    pub brownout_volts: f64,
    /// Above this it refuses to boot, printing why.
    pub max_volts: f64,
    /// Folder the shell runs in and uses as HOME (created if missing).
    pub scratch: PathBuf,
    /// U-Boot's countdown in seconds.
    pub autoboot_secs: u32,
    /// Pause between boot lines.
    pub line_delay_ms: u64,
}

impl Default for BoardSpec {
    fn default() -> Self {
        // A Raspberry Pi 4: USB-C 5.1 V supply, under-voltage warning at ~4.75 V.
        BoardSpec {
            name: "rtm-sim".to_string(),
            brownout_volts: 4.75,
            max_volts: 5.8,
            scratch: std::env::temp_dir().join("rtm-sim-board"),
            autoboot_secs: 2,
            line_delay_ms: 20,
        }
    }
}

/// Who the shell runs as, when that is not the simulator's own user.
#[derive(Debug, Clone)]
struct Account {
    name: String,
    uid: u32,
    gid: u32,
}

/// The user the shell runs as: `nobody` (65534, or as the user database says) when the
/// simulator runs as root; the simulator's own user otherwise (it has nothing to give away).
fn shell_account() -> Option<Account> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    Some(match nix::unistd::User::from_name("nobody") {
        Ok(Some(u)) if !u.uid.is_root() => Account {
            name: u.name,
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
        },
        _ => Account {
            name: "nobody".to_string(),
            uid: 65534,
            gid: 65534,
        },
    })
}

/// Hands the scratch folder (and the readline settings in it) to `account`, and checks that
/// it can reach the folder: the shell's HOME and LAVA's test folder are absolute paths
/// under it.
fn hand_over(scratch: &Path, account: &Account) -> io::Result<()> {
    std::os::unix::fs::chown(scratch, Some(account.uid), Some(account.gid))?;
    std::os::unix::fs::chown(scratch.join(INPUTRC), Some(account.uid), Some(account.gid))?;
    let scratch = scratch.canonicalize()?;
    for dir in scratch.ancestors().skip(1) {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(dir)?;
        let searchable = if m.uid() == account.uid {
            m.mode() & 0o100 != 0
        } else if m.gid() == account.gid {
            m.mode() & 0o010 != 0
        } else {
            m.mode() & 0o001 != 0
        };
        if !searchable {
            return Err(io::Error::other(format!(
                "the board's shell runs as {} (uid {}), which cannot reach {}: {} is not \
                 searchable by other users",
                account.name,
                account.uid,
                scratch.display(),
                dir.display()
            )));
        }
    }
    Ok(())
}

/// A running simulated board. Dropping it powers the board off (its shell and everything the
/// shell started are killed) and stops its state thread.
pub struct SimBoard {
    power: PowerInput,
    machine: Option<JoinHandle<()>>,
}

/// Where a power simulator feeds the board: cheap to clone, callable from any thread.
#[derive(Debug, Clone)]
pub struct PowerInput {
    mailbox: Sender<Msg>,
}

impl PowerInput {
    /// 0.0 (or negative) = power removed; above 0 = the supply voltage at the board.
    /// Never blocks; after the board is gone it does nothing.
    pub fn set_power(&self, volts: f64) {
        let _ = self.mailbox.send(Msg::Power(volts));
    }
}

impl SimBoard {
    /// Starts an unpowered board on `console`, the pty master (the board's UART as seen from
    /// the board).
    pub fn start(console: File, spec: BoardSpec, events: Events) -> io::Result<SimBoard> {
        std::fs::create_dir_all(&spec.scratch)?;
        std::fs::write(
            spec.scratch.join(INPUTRC),
            "set enable-bracketed-paste off\n",
        )?;
        let shell_as = shell_account();
        if let Some(account) = &shell_as {
            hand_over(&spec.scratch, account)?;
        }
        // The shell must not inherit the board's end of its own console.
        close_on_exec(&console)?;
        let input = console.try_clone()?;

        let (mailbox, inbox) = mpsc::channel();
        let (console_tx, console_rx) = mpsc::sync_channel(CONSOLE_QUEUE);
        let epoch = Arc::new(AtomicU64::new(0));

        let rx_mailbox = mailbox.clone();
        thread::Builder::new()
            .name("sim-board-rx".into())
            .spawn(move || receive(input, rx_mailbox))?;
        let tx_epoch = Arc::clone(&epoch);
        thread::Builder::new()
            .name("sim-board-tx".into())
            .spawn(move || transmit(console, console_rx, tx_epoch))?;

        let machine = Machine {
            spec,
            events,
            inbox,
            mailbox: mailbox.clone(),
            console: console_tx,
            epoch,
            volts: 0.0,
            supply: Supply::Off,
            listening: false,
            fifo: VecDeque::new(),
            skip_lf: false,
            shells: 0,
            shell_as,
        };
        let machine = thread::Builder::new()
            .name("sim-board".into())
            .spawn(move || machine.run())?;
        Ok(SimBoard {
            power: PowerInput { mailbox },
            machine: Some(machine),
        })
    }

    /// See [`PowerInput::set_power`].
    pub fn set_power(&self, volts: f64) {
        self.power.set_power(volts)
    }

    /// A handle for the power simulators' threads.
    pub fn power_input(&self) -> PowerInput {
        self.power.clone()
    }
}

impl Drop for SimBoard {
    fn drop(&mut self) {
        let _ = self.power.mailbox.send(Msg::Stop);
        // The state thread never blocks on I/O (console output is queued, keys for the shell
        // too), so this join is bounded by a shell kill at most.
        if let Some(machine) = self.machine.take() {
            let _ = machine.join();
        }
    }
}

/// Everything the state thread reacts to, in the order it happened.
enum Msg {
    Power(f64),
    Input(Vec<u8>),
    /// The shell of that generation has been reaped.
    ShellExited(u64),
    /// Nothing holds that shell's terminal open any more: all its output has been relayed.
    ShellClosed(u64),
    Stop,
}

/// Bytes for the console, stamped with the power epoch they were produced in.
type Chunk = (u64, Vec<u8>);

/// The board's reading of its supply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Supply {
    Off,
    BrownOut,
    InRange,
    OverVoltage,
}

impl Supply {
    fn of(volts: f64, spec: &BoardSpec) -> Supply {
        if volts.is_nan() || volts <= 0.0 {
            Supply::Off
        } else if volts < spec.brownout_volts {
            Supply::BrownOut
        } else if volts > spec.max_volts {
            Supply::OverVoltage
        } else {
            Supply::InRange
        }
    }
}

/// Why the board stopped what it was doing.
enum Halt {
    /// The supply moved to another [`Supply`]; `Machine::supply` says which.
    Power,
    Stop,
}

type Step<T> = Result<T, Halt>;

/// The board's state, owned by its one thread.
struct Machine {
    spec: BoardSpec,
    events: Events,
    inbox: Receiver<Msg>,
    /// For the shell's threads to report back.
    mailbox: Sender<Msg>,
    console: SyncSender<Chunk>,
    /// Bumped whenever the board loses power or stops: the console drops older chunks.
    epoch: Arc<AtomicU64>,
    volts: f64,
    supply: Supply,
    /// Whether received keys are kept (U-Boot, login) or dropped (off, kernel, reset loops).
    listening: bool,
    fifo: VecDeque<u8>,
    /// The last line ended with '\r': a '\n' right after it belongs to the same Enter.
    skip_lf: bool,
    /// Shells started so far; tells a current shell's reports from a killed one's.
    shells: u64,
    /// Who the shell runs as instead of the simulator's user ([`shell_account`]).
    shell_as: Option<Account>,
}

impl Machine {
    fn run(mut self) {
        loop {
            let Err(halt) = match self.supply {
                Supply::Off => self.stay_off(),
                Supply::BrownOut => self.brown_out(),
                Supply::OverVoltage => self.over_voltage(),
                Supply::InRange => self.boot(),
            };
            match halt {
                Halt::Power if self.supply == Supply::Off => self.events.emit("board off"),
                Halt::Power => {}
                Halt::Stop => {
                    if self.supply != Supply::Off {
                        self.events.emit("board off");
                    }
                    return;
                }
            }
        }
    }

    fn stay_off(&mut self) -> Step<Infallible> {
        self.listening = false;
        self.fifo.clear();
        loop {
            self.poll(None)?;
        }
    }

    fn brown_out(&mut self) -> Step<Infallible> {
        self.events.emit("board brown-out");
        self.listening = false;
        self.fifo.clear();
        let period = (self.line_delay() * 5).max(MIN_RESET_PERIOD);
        loop {
            self.out("\r\n");
            self.say(BANNER)?;
            // The voltage is read each time round: it may sag further without leaving the loop.
            self.out(format!(
                "brown-out: supply {:.2} V below {:.2} V, resetting\r\n",
                self.volts, self.spec.brownout_volts
            ));
            self.pause(period)?;
        }
    }

    fn over_voltage(&mut self) -> Step<Infallible> {
        self.events.emit("board over-voltage");
        self.listening = false;
        self.fifo.clear();
        self.out(format!(
            "\r\nrtm-sim: refusing to boot: supply {:.2} V above the board's maximum {:.2} V\r\n",
            self.volts, self.spec.max_volts
        ));
        loop {
            self.poll(None)?;
        }
    }

    fn boot(&mut self) -> Step<Infallible> {
        self.u_boot()?;
        self.kernel()?;
        loop {
            self.login()?;
            self.shell()?;
        }
    }

    /// From the banner until the kernel is started (by the countdown or `boot`).
    fn u_boot(&mut self) -> Step<()> {
        'reset: loop {
            self.events.emit("board booting");
            // Keys typed during the banner wait in the UART FIFO and stop the countdown at
            // once, as on real hardware.
            self.listening = true;
            self.fifo.clear();
            self.skip_lf = false;
            self.out("\r\n");
            self.say(BANNER)?;
            self.say("DRAM:  4 GiB")?;
            self.say(&format!("Model: rtm-sim {}", self.spec.name))?;
            if !self.countdown()? {
                return Ok(());
            }
            loop {
                self.out(UBOOT_PROMPT);
                let line = self.read_line()?;
                let mut words = line.split_whitespace();
                match words.next() {
                    None => {}
                    Some("help") => self.print(&[
                        "boot      - boot default, i.e., run 'bootcmd'",
                        "help      - print command description/usage",
                        "printenv  - print environment variables",
                        "reset     - Perform RESET of the CPU",
                        "version   - print monitor, compiler and linker version",
                    ]),
                    Some("version") => self.print(&[
                        "",
                        BANNER,
                        "",
                        "aarch64-linux-gnu-gcc (rtm-sim) 12.2.0",
                        "GNU ld (rtm-sim) 2.40",
                    ]),
                    Some("printenv") => self.printenv(&words.collect::<Vec<_>>()),
                    Some("boot") => return Ok(()),
                    Some("reset") => {
                        self.out("resetting ...\r\n");
                        continue 'reset;
                    }
                    Some(other) => self.out(format!("Unknown command '{other}' - try 'help'\r\n")),
                }
            }
        }
    }

    /// U-Boot's autoboot countdown, redrawn in place as U-Boot does ("\b\b\b 1 "): true if a
    /// key stopped it.
    fn countdown(&mut self) -> Step<bool> {
        let mut left = self.spec.autoboot_secs;
        self.out(format!("Hit any key to stop autoboot: {left:2} "));
        loop {
            let tick = if left > 0 {
                Duration::from_secs(1)
            } else {
                Duration::ZERO
            };
            if self.wait_key(Instant::now() + tick)? {
                // The key that stops autoboot is consumed, not typed at the prompt.
                let key = self.fifo.pop_front();
                self.skip_lf = key == Some(b'\r');
                self.out("\x08\x08\x08 0 \r\n");
                return Ok(true);
            }
            if left == 0 {
                self.out("\r\n");
                return Ok(false);
            }
            left -= 1;
            self.out(format!("\x08\x08\x08{left:2} "));
        }
    }

    fn printenv(&mut self, names: &[&str]) {
        let env = [
            "arch=arm".to_string(),
            "baudrate=115200".to_string(),
            "board=rtm-sim".to_string(),
            format!("board_name={}", self.spec.name),
            "bootcmd=run distro_bootcmd".to_string(),
            format!("bootdelay={}", self.spec.autoboot_secs),
            "stderr=serial".to_string(),
            "stdin=serial".to_string(),
            "stdout=serial".to_string(),
        ];
        let mut text = String::new();
        if names.is_empty() {
            for var in &env {
                text.push_str(&format!("{var}\r\n"));
            }
            let size: usize = env.iter().map(|v| v.len() + 1).sum();
            text.push_str(&format!("\r\nEnvironment size: {size}/65532 bytes\r\n"));
        } else {
            for name in names {
                match env
                    .iter()
                    .find(|v| v.split_once('=').map(|(n, _)| n) == Some(name))
                {
                    Some(var) => text.push_str(&format!("{var}\r\n")),
                    None => text.push_str(&format!("## Error: \"{name}\" not defined\r\n")),
                }
            }
        }
        self.out(text);
    }

    fn kernel(&mut self) -> Step<()> {
        // Keys sent before getty runs are flushed by the kernel.
        self.listening = false;
        self.fifo.clear();
        self.out("Starting kernel ...\r\n\r\n");
        self.pause(self.line_delay())?;
        let name = self.spec.name.clone();
        for line in [
            "[    0.000000] Booting Linux on physical CPU 0x0000000000 [0x410fd083]".to_string(),
            "[    0.000000] Linux version 6.1.0-rtm-sim (rtm-sim) #1 SMP".to_string(),
            format!("[    0.000000] Machine model: rtm-sim {name}"),
            "[    0.000000] Kernel command line: console=ttyAMA0,115200 root=/dev/mmcblk0p2 rw"
                .to_string(),
            "[    0.412345] Serial: AMBA PL011 UART driver".to_string(),
            "[    1.023456] EXT4-fs (mmcblk0p2): mounted filesystem with ordered data mode"
                .to_string(),
            "[    1.234567] Run /sbin/init as init process".to_string(),
        ] {
            self.say(&line)?;
        }
        Ok(())
    }

    /// Returns once `root` has logged in.
    fn login(&mut self) -> Step<()> {
        self.listening = true;
        loop {
            self.out(format!("\r\n{} login: ", self.spec.name));
            self.events.emit("board login prompt");
            let user = self.read_line()?;
            match user.trim() {
                "root" => return Ok(()),
                "" => {}
                _ => self.out("Login incorrect\r\n"),
            }
        }
    }

    /// Runs a shell until it exits; power loss or stop kills it (through `Shell`'s drop).
    fn shell(&mut self) -> Step<()> {
        self.events.emit("board shell");
        self.shells += 1;
        let mut shell = match Shell::spawn(
            &self.spec,
            self.shell_as.as_ref(),
            self.shells,
            self.console.clone(),
            self.epoch.load(Ordering::Acquire),
            self.mailbox.clone(),
        ) {
            Ok(shell) => shell,
            Err(e) => {
                self.out(format!("login: cannot start a shell: {e}\r\n"));
                return Ok(());
            }
        };
        // Keys that arrived with the user name (a fast typist, a test) are the shell's input.
        let ahead: Vec<u8> = self.fifo.drain(..).collect();
        let ahead = self.strip_lf(ahead);
        shell.type_in(ahead);

        let mut exited: Option<Instant> = None;
        let mut closed = false;
        loop {
            let drained_by = exited.map(|at| at + SHELL_DRAIN);
            match self.poll(drained_by)? {
                None => break, // output still held by something that escaped the kill
                Some(Msg::Input(bytes)) => {
                    let bytes = self.strip_lf(bytes);
                    shell.type_in(bytes);
                }
                Some(Msg::ShellExited(n)) if n == shell.generation => {
                    shell.exited();
                    exited = Some(Instant::now());
                }
                Some(Msg::ShellClosed(n)) if n == shell.generation => closed = true,
                Some(_) => {}
            }
            // Both: the login prompt must come after the shell's last words ("exit").
            if exited.is_some() && closed {
                break;
            }
        }
        Ok(())
    }

    /// A line typed at a prompt, echoed as a UART console does.
    fn read_line(&mut self) -> Step<String> {
        let mut line = String::new();
        loop {
            if self.edit(&mut line) {
                return Ok(line);
            }
            if let Some(msg) = self.poll(None)? {
                self.absorb(msg);
            }
        }
    }

    /// Feeds the FIFO to the line editor: true once Enter (or Ctrl-C, giving an empty line)
    /// ends the line.
    fn edit(&mut self, line: &mut String) -> bool {
        let mut echo = Vec::new();
        let mut done = false;
        while let Some(byte) = self.fifo.pop_front() {
            let after_cr = std::mem::take(&mut self.skip_lf);
            match byte {
                b'\n' if after_cr => {}
                b'\r' | b'\n' => {
                    self.skip_lf = byte == b'\r';
                    echo.extend_from_slice(b"\r\n");
                    done = true;
                    break;
                }
                0x08 | 0x7f if !line.is_empty() => {
                    line.pop();
                    echo.extend_from_slice(b"\x08 \x08");
                }
                0x03 => {
                    line.clear();
                    echo.extend_from_slice(b"^C\r\n");
                    done = true;
                    break;
                }
                0x20..=0x7e if line.len() < MAX_LINE => {
                    line.push(char::from(byte));
                    echo.push(byte);
                }
                // Other control bytes, and anything past the line buffer, are swallowed.
                _ => {}
            }
        }
        if !echo.is_empty() {
            self.out(echo);
        }
        done
    }

    /// Drops the '\n' of a "\r\n" whose '\r' ended the previous line.
    fn strip_lf(&mut self, mut bytes: Vec<u8>) -> Vec<u8> {
        if !bytes.is_empty() && std::mem::take(&mut self.skip_lf) && bytes.first() == Some(&b'\n') {
            bytes.remove(0);
        }
        bytes
    }

    /// Prints a line, then waits the line delay.
    fn say(&mut self, line: &str) -> Step<()> {
        self.out(format!("{line}\r\n"));
        self.pause(self.line_delay())
    }

    /// Prints lines at once (a command's output).
    fn print(&mut self, lines: &[&str]) {
        let mut text = lines.join("\r\n");
        text.push_str("\r\n");
        self.out(text);
    }

    fn out(&self, bytes: impl Into<Vec<u8>>) {
        // A UART does not wait for a listener: with nobody draining the console the output
        // is lost instead of stalling this thread, which must stay free to handle power.
        let _ = self
            .console
            .try_send((self.epoch.load(Ordering::Acquire), bytes.into()));
    }

    fn line_delay(&self) -> Duration {
        Duration::from_millis(self.spec.line_delay_ms)
    }

    /// Waits `how_long`, keeping or dropping keys as the current phase does.
    fn pause(&mut self, how_long: Duration) -> Step<()> {
        let until = Instant::now() + how_long;
        while let Some(msg) = self.poll(Some(until))? {
            self.absorb(msg);
        }
        Ok(())
    }

    /// True as soon as a key is in the FIFO, false at `until`.
    fn wait_key(&mut self, until: Instant) -> Step<bool> {
        loop {
            if !self.fifo.is_empty() {
                return Ok(true);
            }
            match self.poll(Some(until))? {
                None => return Ok(false),
                Some(msg) => self.absorb(msg),
            }
        }
    }

    fn absorb(&mut self, msg: Msg) {
        if let Msg::Input(bytes) = msg
            && self.listening
        {
            let room = FIFO_LIMIT.saturating_sub(self.fifo.len());
            self.fifo.extend(bytes.into_iter().take(room));
        }
    }

    /// The next message, or None at `until`. A change of supply or a stop interrupts the
    /// caller (as `Err`) wherever it is: that is how power loss cuts a boot short.
    fn poll(&mut self, until: Option<Instant>) -> Step<Option<Msg>> {
        let msg = match until {
            // The mailbox cannot disconnect: this machine holds a sender itself.
            None => self.inbox.recv().map_err(|_| Halt::Stop)?,
            Some(until) => {
                match self
                    .inbox
                    .recv_timeout(until.saturating_duration_since(Instant::now()))
                {
                    Ok(msg) => msg,
                    Err(RecvTimeoutError::Timeout) => return Ok(None),
                    Err(RecvTimeoutError::Disconnected) => return Err(Halt::Stop),
                }
            }
        };
        match msg {
            Msg::Power(volts) => {
                self.volts = volts;
                let supply = Supply::of(volts, &self.spec);
                if supply == self.supply {
                    return Ok(Some(Msg::Power(volts)));
                }
                self.supply = supply;
                self.epoch.fetch_add(1, Ordering::AcqRel);
                Err(Halt::Power)
            }
            Msg::Stop => {
                self.epoch.fetch_add(1, Ordering::AcqRel);
                Err(Halt::Stop)
            }
            other => Ok(Some(other)),
        }
    }
}

/// A login shell on its own pseudo-terminal, bridged to the console by threads.
struct Shell {
    generation: u64,
    leader: Pid,
    keys: SyncSender<Vec<u8>>,
    reaped: bool,
}

impl Shell {
    fn spawn(
        spec: &BoardSpec,
        shell_as: Option<&Account>,
        generation: u64,
        console: SyncSender<Chunk>,
        epoch: u64,
        mailbox: Sender<Msg>,
    ) -> io::Result<Shell> {
        // Close-on-exec from the start: another board's shell forked meanwhile must not
        // inherit this terminal, or this one's output would never end.
        let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
            .map_err(io::Error::from)?;
        grantpt(&master).map_err(io::Error::from)?;
        unlockpt(&master).map_err(io::Error::from)?;
        let slave_path = ptsname_r(&master).map_err(io::Error::from)?;
        // O_NOCTTY: the daemon may be a session leader without a terminal (under systemd);
        // opening a tty would make this one its controlling terminal.
        let slave = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(OFlag::O_NOCTTY.bits())
            .open(&slave_path)?;
        set_window_size(&slave)?;
        // The terminal belongs to the user of the shell, as login(1) hands it over.
        if let Some(a) = shell_as {
            std::os::unix::fs::fchown(&slave, Some(a.uid), Some(a.gid))?;
        }
        let master = File::from(OwnedFd::from(master));

        let (program, args): (&str, &[&str]) = if Path::new("/bin/bash").exists() {
            ("/bin/bash", &["--norc", "--noprofile", "-i"])
        } else {
            ("/bin/sh", &["-i"])
        };
        let path = std::env::var_os("PATH").unwrap_or_else(|| {
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
        });
        let mut command = Command::new(program);
        command
            .args(args)
            .current_dir(&spec.scratch)
            .env_clear()
            .env("PATH", path)
            .env("HOME", &spec.scratch)
            .env("SHELL", program)
            .env("TERM", "dumb")
            .env("PS1", format!("root@{}:~# ", spec.name))
            .env("INPUTRC", spec.scratch.join(INPUTRC))
            .env("HISTFILE", "/dev/null")
            .stdin(Stdio::from(slave.try_clone()?))
            .stdout(Stdio::from(slave.try_clone()?))
            .stderr(Stdio::from(slave));
        let drop_to = shell_as.map(|a| (a.uid, a.gid));
        // SAFETY: between fork and exec the closure only makes async-signal-safe calls
        // (setsid, ioctl, setgroups, setgid, setuid, prctl) and does not allocate.
        unsafe {
            command.pre_exec(move || {
                take_terminal()?;
                if let Some((uid, gid)) = drop_to {
                    become_user(uid, gid)?;
                }
                Ok(())
            });
        }
        let mut child = command.spawn()?;
        // The command holds our copies of the slave; once they are closed, the master reads
        // EIO as soon as the shell's session is gone.
        drop(command);
        let leader = match i32::try_from(child.id()) {
            Ok(pid) => Pid::from_raw(pid),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(io::Error::other("shell pid out of range"));
            }
        };

        let (keys, keys_rx) = mpsc::sync_channel::<Vec<u8>>(KEYS_QUEUE);
        // From here on a failure drops `shell`, which kills the session.
        let shell = Shell {
            generation,
            leader,
            keys,
            reaped: false,
        };
        let waiter_mailbox = mailbox.clone();
        thread::Builder::new()
            .name("sim-shell-wait".into())
            .spawn(move || {
                let _ = child.wait();
                let _ = waiter_mailbox.send(Msg::ShellExited(generation));
            })?;
        let output = master.try_clone()?;
        thread::Builder::new()
            .name("sim-shell-out".into())
            .spawn(move || {
                relay_output(output, console, epoch);
                let _ = mailbox.send(Msg::ShellClosed(generation));
            })?;
        let mut input = master;
        thread::Builder::new()
            .name("sim-shell-in".into())
            .spawn(move || {
                for bytes in keys_rx {
                    if input.write_all(&bytes).is_err() {
                        return;
                    }
                }
            })?;
        Ok(shell)
    }

    fn type_in(&self, bytes: Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        // Keys beyond the queue are lost, as in a UART receive overrun; blocking here would
        // stall power handling behind a shell that does not read.
        let _ = self.keys.try_send(bytes);
    }

    /// The shell itself has been reaped: end what it left running.
    fn exited(&mut self) {
        self.reaped = true;
        kill_session(self.leader);
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        // Once reaped, the leader's pid may belong to someone else: leave it alone.
        if !self.reaped {
            let _ = killpg(self.leader, Signal::SIGKILL);
        }
        kill_session(self.leader);
    }
}

/// Runs in the shell's child between fork and exec: a session of its own, with the pty on
/// fd 0 as its controlling terminal, so job control and Ctrl-C work as on a serial login.
fn take_terminal() -> io::Result<()> {
    setsid()?;
    // SAFETY: TIOCSCTTY on a valid fd takes an int argument (0: do not steal).
    if unsafe { nix::libc::ioctl(0, nix::libc::TIOCSCTTY, 0) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs in the shell's child between fork and exec, after [`take_terminal`]: drops every
/// privilege of the simulator's root. Groups first (only root may change them), the uid
/// last; no setuid program may give any back (`PR_SET_NO_NEW_PRIVS`).
fn become_user(uid: u32, gid: u32) -> io::Result<()> {
    use nix::libc;
    let check = |r: libc::c_int| {
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    // SAFETY: plain system calls on integers (setgroups with an empty list reads nothing).
    unsafe {
        check(libc::setgroups(0, std::ptr::null()))?;
        check(libc::setgid(gid))?;
        check(libc::setuid(uid))?;
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        // Root again would mean the drop did not take.
        if libc::geteuid() == 0 || libc::getuid() == 0 {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
    }
    Ok(())
}

/// 80x24, so readline does not guess from a zero-sized terminal.
fn set_window_size(tty: &File) -> io::Result<()> {
    let size = Winsize {
        ws_row: 24,
        ws_col: 80,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `struct winsize` from the pointer, which outlives the call.
    if unsafe { nix::libc::ioctl(tty.as_raw_fd(), nix::libc::TIOCSWINSZ, &size) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// SIGKILLs every other process in the session `leader` started. Under an interactive shell
/// each `&` job has its own process group, so the group kill misses them; a board losing power
/// does not, and until they die they hold the shell's terminal open. Twice, for jobs that
/// forked while the first pass ran.
fn kill_session(leader: Pid) {
    for _ in 0..2 {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse().ok())
                .map(Pid::from_raw)
            else {
                continue;
            };
            if pid != leader && getsid(Some(pid)) == Ok(leader) {
                let _ = kill(pid, Signal::SIGKILL);
            }
        }
    }
}

fn close_on_exec(file: &File) -> io::Result<()> {
    fcntl(file.as_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(io::Error::from)?;
    Ok(())
}

/// The console's receive side: every read becomes a message for the state thread.
fn receive(mut port: File, mailbox: Sender<Msg>) {
    let mut buf = [0u8; 1024];
    loop {
        match port.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if mailbox
                    .send(Msg::Input(buf.iter().take(n).copied().collect()))
                    .is_err()
                {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // EIO: the slave's last holder closed it, so the simulator is being torn down.
            Err(_) => return,
        }
    }
}

/// The console's transmit side.
fn transmit(mut port: File, chunks: Receiver<Chunk>, epoch: Arc<AtomicU64>) {
    for (produced_in, bytes) in chunks {
        // Output queued before a power loss never leaves a dead board.
        if produced_in != epoch.load(Ordering::Acquire) {
            continue;
        }
        if port.write_all(&bytes).is_err() {
            return;
        }
    }
}

/// The shell's output onto the console, until nothing holds the shell's terminal open.
fn relay_output(mut port: File, console: SyncSender<Chunk>, epoch: u64) {
    let mut buf = [0u8; 4096];
    loop {
        match port.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                // Blocking: a console that drains slowly slows the shell down, as a UART does.
                if console
                    .send((epoch, buf.iter().take(n).copied().collect()))
                    .is_err()
                {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests;
