//! One gate for every face: a lease taken over D-Bus holds on the pdudaemon API, the
//! console's raw TCP and telnet ports, its unix socket and a console attached over D-Bus,
//! with two uids (root, and nobody through `setpriv`) and the faces' configured identities;
//! every refusal is audited with the face it came through. (The D-Bus face itself:
//! tests/access.rs.)
//!
//! Must run as root (switching to nobody), as CI does.

// A test fails by panicking: unwrap, expect, panic and indexing are how it says so.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::string_slice
)]

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn audit(d: &Daemon) -> String {
    let out = d.rtmctl(&["audit"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

// ---- the pdudaemon API ---------------------------------------------------------------------

struct Pdu {
    _bus: Bus,
    d: Daemon,
    http: u16,
    tcp: u16,
}

fn pdu(identity: &str) -> Pdu {
    need_root("tests/gate.rs");
    let bus = Bus::start_open();
    let dir = tempfile::tempdir().unwrap();
    // World-readable, so nobody's rtmctl and the daemon's command backend agree on paths.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let state = dir.path().join("power");
    let (http, tcp) = (free_port(), free_port());
    let config = format!(
        "name = \"lab-1\"\n[power]\nbackend = \"command\"\non_command = \"echo on > {s}\"\n\
         off_command = \"echo off > {s}\"\nstatus_command = \"cat {s} 2>/dev/null || echo off\"\n\
         [pdudaemon_api]\nlisten = \"127.0.0.1:{http}\"\nlisten_tcp = \"127.0.0.1:{tcp}\"\n\
         hostname = \"pdu-1\"\nport = 3\n{identity}",
        s = state.display()
    );
    let d = Daemon::start_in(&bus, &config, dir);
    Pdu {
        _bus: bus,
        d,
        http,
        tcp,
    }
}

impl Pdu {
    fn power(&self) -> String {
        std::fs::read_to_string(self.d.dir.path().join("power"))
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// pdudaemon's HTTP request: (status code, body).
    fn http(&self, command: &str) -> (String, String) {
        require("curl");
        let url = format!(
            "http://127.0.0.1:{}/power/control/{command}?hostname=pdu-1&port=3",
            self.http
        );
        let out = Command::new("curl")
            .args(["-s", "-w", "\n%{http_code}", &url])
            .output()
            .unwrap();
        let text = text(&out.stdout);
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.to_string(), body.trim().to_string())
    }

    /// pdudaemon's legacy TCP line, as pduclient sends it: `ack` or `nack`.
    fn legacy(&self, command: &str) -> String {
        require("socat");
        let mut child = Command::new("socat")
            .args(["-t", "30", "-", &format!("TCP:127.0.0.1:{}", self.tcp)])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let line = format!("pdu-1 3 {command}");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(line.as_bytes())
            .unwrap();
        text(&child.wait_with_output().unwrap().stdout)
            .trim()
            .to_string()
    }
}

/// Without an identity the API acts as the label `pdudaemon-api`, which holds no lease: free
/// boards switch, a held board refuses (HTTP 403 naming the holder, `nack`), and the audit
/// says which face was refused.
#[test]
fn the_pdudaemon_api_passes_the_gate_as_its_label() {
    let p = pdu("");
    assert_eq!(p.http("on").0, "200");
    assert_eq!(p.power(), "on");

    ok_line(&rtmctl_as_nobody(
        &p.d,
        &["hold", "--ttl", "1h", "nobody's debugging"],
    ));
    let (code, body) = p.http("off");
    assert_eq!(code, "403", "{body}");
    assert!(
        body.contains("held by \"nobody's debugging\" (uid 65534)"),
        "{body}"
    );
    assert_eq!(p.legacy("reboot"), "nack");
    assert_eq!(p.power(), "on", "a refused request switched the board");

    let audit = audit(&p.d);
    for needle in [
        "Power.Off([via pdudaemon-api \"pdudaemon-api\" http 127.0.0.1:",
        "Power.Cycle(reboot [via pdudaemon-api \"pdudaemon-api\" tcp 127.0.0.1:",
        "-> HTTP 403: refused: the board is held by \"nobody's debugging\"",
    ] {
        assert!(audit.contains(needle), "no {needle:?} in\n{audit}");
    }

    ok_line(&rtmctl_as_nobody(&p.d, &["release"]));
    assert_eq!(p.legacy("off"), "ack");
    assert_eq!(p.power(), "off");
}

/// With `identity = "uid:0"` the API acts as root: root's lease lets it through, nobody's
/// keeps it out.
#[test]
fn the_pdudaemon_api_acts_as_its_configured_uid() {
    let p = pdu("identity = \"uid:0\"\n");
    ok_line(&p.d.rtmctl(&["hold", "--ttl", "1h", "root's job"]));
    assert_eq!(p.http("on").0, "200");
    assert_eq!(p.power(), "on");
    ok_line(&p.d.rtmctl(&["release"]));

    ok_line(&rtmctl_as_nobody(
        &p.d,
        &["hold", "--ttl", "1h", "nobody's job"],
    ));
    assert_eq!(p.http("off").0, "403");
    assert_eq!(p.legacy("off"), "nack");
    assert_eq!(p.power(), "on");
    let audit = audit(&p.d);
    assert!(
        audit.contains("root (0) Power.On([via pdudaemon-api http 127.0.0.1:"),
        "{audit}"
    );
    assert!(
        audit.contains("root (0) Power.Off([via pdudaemon-api http")
            && audit.contains("-> HTTP 403: refused: the board is held by \"nobody's job\""),
        "{audit}"
    );
}

// ---- the console's front ends ---------------------------------------------------------------

/// rtmd on one side of a pseudo-terminal pair, the test as the board on the other.
struct Console {
    _bus: Bus,
    _socat: Proc,
    d: Daemon,
    board: std::fs::File,
    unix: PathBuf,
}

fn console() -> Console {
    need_root("tests/gate.rs");
    require("socat");
    let bus = Bus::start_open();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (dev, board) = (dir.path().join("dev"), dir.path().join("board"));
    let mut cmd = Command::new("socat");
    cmd.arg(format!("pty,raw,echo=0,link={}", dev.display()))
        .arg(format!("pty,raw,echo=0,link={}", board.display()));
    let socat = Proc::spawn("socat", cmd, true);
    eventually("socat made the pty pair", || dev.exists() && board.exists());
    let unix = dir.path().join("console.sock");
    let config = format!(
        "name = \"con-1\"\n[console]\ndevice = \"{}\"\ntcp = \"127.0.0.1:0\"\n\
         tcp_raw = \"127.0.0.1:0\"\nunix = \"{}\"\n",
        dev.display(),
        unix.display()
    );
    let d = Daemon::start_in(&bus, &config, dir);
    // The socket is the admin's to open up (here: to nobody, for the test of two uids).
    std::fs::set_permissions(&unix, std::fs::Permissions::from_mode(0o666)).unwrap();
    let board = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&board)
        .unwrap();
    eventually("connected", || {
        d.property("org.rtmd.Dut1.Console", "Connected") == "b true"
    });
    Console {
        _bus: bus,
        _socat: socat,
        d,
        board,
        unix,
    }
}

impl Console {
    fn addr(&self, prop: &str) -> String {
        self.d
            .property("org.rtmd.Dut1.Console", prop)
            .trim_start_matches("s ")
            .trim_matches('"')
            .to_string()
    }

    fn clients(&self, n: u32) {
        eventually(&format!("{n} console clients"), || {
            self.d.property("org.rtmd.Dut1.Console", "Clients") == format!("u {n}")
        });
    }

    /// What the board reads next, up to and including `marker`: nothing refused may come
    /// before it.
    fn board_reads(&mut self, marker: &str) -> String {
        text(&read_until(&mut self.board, marker.as_bytes()))
    }
}

/// The raw TCP and telnet ports act as `console-tcp` (a label: no lease): while the board is
/// held, what their clients type is dropped, and they are told once.
#[test]
fn console_tcp_input_passes_the_gate() {
    let mut c = console();
    let mut raw = TcpStream::connect(c.addr("TcpRawAddress")).unwrap();
    let mut telnet = TcpStream::connect(c.addr("TcpAddress")).unwrap();
    for s in [&raw, &telnet] {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
    }
    c.clients(2);
    raw.write_all(b"free to type\n").unwrap();
    assert_eq!(c.board_reads("type\n"), "free to type\n");

    ok_line(&rtmctl_as_nobody(
        &c.d,
        &["hold", "--ttl", "1h", "nobody's console"],
    ));
    raw.write_all(b"raw refused\n").unwrap();
    let told = text(&read_until(&mut raw, b"]\r\n"));
    assert!(
        told.contains("[rtmd: input not sent: held by \"nobody's console\" (uid 65534)"),
        "{told:?}"
    );
    telnet.write_all(b"telnet refused\r\n").unwrap();
    read_until(&mut telnet, b"input not sent");
    // Told once: more typing is dropped without a second notice.
    raw.write_all(b"raw again\n").unwrap();

    ok_line(&rtmctl_as_nobody(&c.d, &["release"]));
    raw.write_all(b"after release\n").unwrap();
    assert_eq!(c.board_reads("release\n"), "after release\n");
    let audit = audit(&c.d);
    for needle in [
        "Console.Input(12 bytes: raw refused\\n [via console \"console-tcp\" tcp 127.0.0.1:",
        "bytes: telnet refused",
        "[via console \"console-tcp\" telnet 127.0.0.1:",
        "-> Leased: held by \"nobody's console\" (uid 65534)",
    ] {
        assert!(audit.contains(needle), "no {needle:?} in\n{audit}");
    }
    assert!(
        !audit.contains("raw again"),
        "a second refusal was recorded:\n{audit}"
    );
}

/// The unix socket knows its peer's uid from the kernel (SO_PEERCRED): the holder's client
/// types, the other uid's does not.
#[test]
fn console_unix_socket_input_is_checked_as_the_peers_uid() {
    let mut c = console();
    ok_line(&c.d.rtmctl(&["hold", "--ttl", "1h", "root's console"]));
    // nobody's client: socat run as nobody, fed from a pipe.
    let mut nobody = as_nobody(Path::new("/usr/bin/socat"));
    nobody
        .args(["-", &format!("UNIX-CONNECT:{}", c.unix.display())])
        .stdin(Stdio::piped());
    let mut nobody = Proc::spawn_stdin("socat as nobody", nobody);
    let mut root = UnixStream::connect(&c.unix).unwrap();
    root.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    c.clients(2);

    nobody.send("from nobody\n");
    nobody.wait_line("[rtmd: input not sent: held by \"root's console\" (uid 0)");
    root.write_all(b"from the holder\n").unwrap();
    assert_eq!(c.board_reads("holder\n"), "from the holder\n");
    let audit = audit(&c.d);
    assert!(
        audit.contains(
            "nobody (65534) Console.Input(12 bytes: from nobody\\n [via console unix socket, pid "
        ) && audit.contains("-> Leased: held by \"root's console\" (uid 0)"),
        "{audit}"
    );
    assert!(
        audit.contains(
            "root (0) Console.Input(16 bytes: from the holder\\n [via console unix socket"
        ),
        "{audit}"
    );
}

/// A console attached over D-Bus (`rtmctl console`) types as the uid that attached it: when
/// another uid takes the board afterwards, its typing stops reaching the board.
#[test]
fn an_attached_console_types_as_the_uid_that_attached_it() {
    let mut c = console();
    let mut cmd = as_nobody(&bin("rtmctl"));
    cmd.args(["--bus-address", &c.d.bus, "--dut", &c.d.board, "console"])
        .env_remove("RTM_DUT")
        .env_remove("RTM_HOLD")
        .env_remove("RTM_BUS_ADDRESS");
    let mut console = Proc::spawn_stdin("rtmctl console as nobody", cmd);
    c.clients(1);
    console.send("while free\n");
    assert_eq!(c.board_reads("free\n"), "while free\n");

    ok_line(&c.d.rtmctl(&["hold", "--ttl", "1h", "root took it"]));
    console.send("after the hold\n");
    console.wait_line("[rtmd: input not sent: held by \"root took it\" (uid 0)");
    ok_line(&c.d.rtmctl(&["release"]));
    console.send("released again\n");
    assert_eq!(c.board_reads("again\n"), "released again\n");
    let audit = audit(&c.d);
    // Through D-Bus, so the record names no other face.
    assert!(
        audit.contains("nobody (65534) Console.Input(15 bytes: after the hold\\n) -> Leased"),
        "{audit}"
    );
}
