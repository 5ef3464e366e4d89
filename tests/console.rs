//! The console end to end: rtmd owning one side of a pseudo-terminal pair made by socat
//! (the other side plays the board), reached with real clients: telnet, socat, rtmctl
//! console in pipe mode, busctl.

// A test fails by panicking: unwrap, expect, panic and indexing are how it says so.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::string_slice
)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// A pseudo-terminal pair: rtmd opens `dev`, the test is the board at `board`.
struct Wire {
    _socat: Proc,
    dev: PathBuf,
    board: PathBuf,
}

fn wire(dir: &Path) -> Wire {
    require("socat");
    let dev = dir.join("dev");
    let board = dir.join("board");
    let mut cmd = Command::new("socat");
    cmd.arg(format!("pty,raw,echo=0,link={}", dev.display()))
        .arg(format!("pty,raw,echo=0,link={}", board.display()));
    let socat = Proc::spawn("socat", cmd, true);
    eventually("socat made the pty pair", || dev.exists() && board.exists());
    Wire {
        _socat: socat,
        dev,
        board,
    }
}

fn console_config(dev: &Path, extra: &str) -> String {
    format!(
        "name = \"con-1\"\n[console]\ndevice = \"{}\"\ntcp = \"127.0.0.1:0\"\ntcp_raw = \"127.0.0.1:0\"\n{extra}",
        dev.display()
    )
}

struct Rig {
    _bus: Bus,
    _wire: Wire,
    daemon: Daemon,
    board: std::fs::File,
}

fn rig(extra: &str) -> Rig {
    let bus = Bus::start();
    let dir = tempfile::tempdir().unwrap();
    let wire = wire(dir.path());
    let extra = extra.replace("{dir}", &dir.path().display().to_string());
    let daemon = Daemon::start_in(&bus, &console_config(&wire.dev, &extra), dir);
    daemon.proc.wait_line("console");
    let board = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&wire.board)
        .unwrap();
    eventually("connected", || {
        daemon.property("org.rtmd.Dut1.Console", "Connected") == "b true"
    });
    Rig {
        _bus: bus,
        _wire: wire,
        daemon,
        board,
    }
}

fn addr(d: &Daemon, prop: &str) -> String {
    d.property("org.rtmd.Dut1.Console", prop)
        .trim_start_matches("s ")
        .trim_matches('"')
        .to_string()
}

fn tcp(address: &str) -> TcpStream {
    let s = TcpStream::connect(address).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s
}

#[test]
fn many_raw_clients_get_identical_bytes_and_input_reaches_the_board_once() {
    let mut r = rig("");
    let raw = addr(&r.daemon, "TcpRawAddress");
    let mut clients: Vec<TcpStream> = (0..5).map(|_| tcp(&raw)).collect();
    eventually("5 clients", || {
        r.daemon.property("org.rtmd.Dut1.Console", "Clients") == "u 5"
    });
    // Every byte value, several times, including 0xff (no telnet escaping on the raw port).
    let payload: Vec<u8> = (0..=255u8).cycle().take(256 * 40).chain(*b"END").collect();
    r.board.write_all(&payload).unwrap();
    for c in &mut clients {
        let got = read_until(c, b"END");
        assert_eq!(got, payload, "a client got different bytes");
    }
    // Input reaches the board once: a duplicate would arrive before the next client's line.
    clients[2].write_all(b"typed once\n").unwrap();
    let mut board_in = r.board.try_clone().unwrap();
    let got = read_until(&mut board_in, b"once\n");
    clients[4].write_all(b"then this\n").unwrap();
    let then = read_until(&mut board_in, b"this\n");
    assert_eq!(
        (got, then),
        (b"typed once\n".to_vec(), b"then this\n".to_vec())
    );
}

/// The real clients side by side (socat on the raw port, telnet on the telnet port, rtmctl
/// console in pipe mode, and a unix-socket socat): the board's output reaches each of them
/// byte for byte the same.
#[test]
fn real_clients_side_by_side_get_the_same_bytes() {
    require("telnet");
    require("socat");
    let mut r = rig("unix = \"{dir}/console.sock\"\n");
    let raw = addr(&r.daemon, "TcpRawAddress");
    let telnet_address = addr(&r.daemon, "TcpAddress");
    let (host, port) = telnet_address.rsplit_once(':').unwrap();
    let unix = r.daemon.dir.path().join("console.sock");
    let spawn = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut clients = [
        spawn("socat", &["-u", &format!("TCP:{raw}"), "STDOUT"]),
        spawn("telnet", &[host, port]),
        spawn(
            bin("rtmctl").to_str().unwrap(),
            &["--bus-address", &r.daemon.bus, "--dut", "con-1", "console"],
        ),
        spawn(
            "socat",
            &["-u", &format!("UNIX-CONNECT:{}", unix.display()), "STDOUT"],
        ),
    ];
    eventually("4 clients", || {
        r.daemon.property("org.rtmd.Dut1.Console", "Clients") == "u 4"
    });
    // A boot log's worth of printable lines, different on every line.
    let mut payload = b"BEGIN\n".to_vec();
    for (i, chunk) in noise(48 * 1024, 7).chunks(60).enumerate() {
        let line: String = chunk.iter().map(|b| char::from(b' ' + b % 95)).collect();
        payload.extend_from_slice(format!("{i:05} {line}\n").as_bytes());
    }
    payload.extend_from_slice(b"END\n");
    let readers: Vec<_> = clients
        .iter_mut()
        .map(|c| {
            let mut out = c.stdout.take().unwrap();
            std::thread::spawn(move || read_until(&mut out, b"END\n"))
        })
        .collect();
    r.board.write_all(&payload).unwrap();
    for (name, reader) in ["socat raw", "telnet", "rtmctl console", "socat unix"]
        .iter()
        .zip(readers)
    {
        let got = reader.join().unwrap();
        // telnet prints its own banner first; everything from BEGIN on is the board's.
        let from = got
            .windows(6)
            .position(|w| w == b"BEGIN\n")
            .unwrap_or_else(|| panic!("{name}: no BEGIN; {}", tail(&got)));
        assert!(
            got[from..] == payload[..],
            "{name} got other bytes: {}",
            tail(&got)
        );
    }
    for c in &mut clients {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// The configured line settings reach the port: `stty` reads them back from the device
/// rtmd holds (root passes the exclusive open that keeps everyone else out). A pty keeps
/// only part of them: Linux's pty driver forces 8 data bits without a parity bit and keeps
/// no speed, so what shows is stop bits, hardware flow control and the parity check on input;
/// the defaults show none of them.
#[test]
fn the_line_settings_of_the_config_reach_the_port() {
    require("stty");
    let stty = |r: &Rig| {
        let out = Command::new("stty")
            .arg("-F")
            .arg(&r._wire.dev)
            .arg("-a")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
            .split([' ', ';', '\n'])
            .filter(|w| !w.is_empty())
            .map(str::to_string)
            .collect::<Vec<String>>()
    };
    let set = rig(
        "baud = 57600\ndata_bits = 7\nparity = \"even\"\nstop_bits = 2\n\
         flow_control = \"hardware\"\n",
    );
    let words = stty(&set);
    for want in ["cstopb", "crtscts", "inpck", "-ixon", "-ixoff"] {
        assert!(words.iter().any(|w| w == want), "{want} not in {words:?}");
    }
    let defaults = stty(&rig(""));
    for want in ["-cstopb", "-crtscts", "-inpck", "-ixon"] {
        assert!(
            defaults.iter().any(|w| w == want),
            "{want} not in {defaults:?}"
        );
    }
    let software = stty(&rig("flow_control = \"software\"\n"));
    for want in ["ixon", "ixoff", "-crtscts"] {
        assert!(
            software.iter().any(|w| w == want),
            "{want} not in {software:?}"
        );
    }
}

#[test]
fn telnet_negotiates_escapes_and_its_commands_never_reach_the_board() {
    require("telnet");
    let mut r = rig("");
    let address = addr(&r.daemon, "TcpAddress");
    let (host, port) = address.rsplit_once(':').unwrap();
    // The real telnet client: its typed line reaches the board, board output reaches it.
    let mut telnet = Command::new("telnet")
        .args([host, port])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut tin = telnet.stdin.take().unwrap();
    let mut tout = telnet.stdout.take().unwrap();
    read_until(&mut tout, b"Escape character");
    eventually("telnet client counted", || {
        r.daemon.property("org.rtmd.Dut1.Console", "Clients") == "u 1"
    });
    r.board.write_all(b"login: ").unwrap();
    read_until(&mut tout, b"login: ");
    tin.write_all(b"root\n").unwrap();
    let mut board_in = r.board.try_clone().unwrap();
    let got = read_until(&mut board_in, b"root");
    assert!(
        !got.contains(&0xff),
        "telnet negotiation reached the board: {got:?}"
    );
    let _ = telnet.kill();
    let _ = telnet.wait();

    // A hand-made telnet peer: 0xff from the board arrives doubled; stray commands,
    // subnegotiations and garbage IACs from the client are consumed.
    let mut s = tcp(&address);
    let opening = read_until(&mut s, &[255, 253, 3]);
    assert_eq!(opening, [255, 251, 1, 255, 251, 3, 255, 253, 3]);
    r.board.write_all(&[b'a', 0xff, b'b']).unwrap();
    read_until(&mut s, &[b'a', 0xff, 0xff, b'b']);
    s.write_all(&[
        255, 241, 255, 250, 24, 1, 255, 240, 255, 253, 99, b'o', b'k', b'\r', 0, 255, 255, b'!',
    ])
    .unwrap();
    let got = read_until(&mut board_in, b"!");
    assert_eq!(got, [b'o', b'k', b'\r', 0xff, b'!']);
    // The refused option got its answer.
    read_until(&mut s, &[255, 252, 99]);
}

#[test]
fn rtmctl_console_pipe_mode_and_socat() {
    let mut r = rig("");
    // The board answers each line it gets.
    let mut board_in = r.board.try_clone().unwrap();
    let answer = std::thread::spawn(move || {
        let got = read_until(&mut board_in, b"uname\n");
        board_in.write_all(b"Linux rtm-sim\r\n").unwrap();
        got
    });
    let mut cmd = Command::new(bin("rtmctl"));
    cmd.args(["--bus-address", &r.daemon.bus, "--dut", "con-1", "console"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    // rtmctl must have attached before the board speaks.
    eventually("rtmctl attached", || {
        r.daemon.property("org.rtmd.Dut1.Console", "Clients") == "u 1"
    });
    child.stdin.take().unwrap().write_all(b"uname\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "Linux rtm-sim\r\n");
    assert_eq!(answer.join().unwrap(), b"uname\n");

    // socat as a raw client of the raw port.
    require("socat");
    let raw = addr(&r.daemon, "TcpRawAddress");
    let mut socat = Command::new("socat")
        .args(["-u", &format!("TCP:{raw}"), "STDOUT"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    eventually("socat attached", || {
        r.daemon.property("org.rtmd.Dut1.Console", "Clients") == "u 1"
    });
    r.board.write_all(b"via socat\n").unwrap();
    let mut sout = socat.stdout.take().unwrap();
    read_until(&mut sout, b"via socat\n");
    let _ = socat.kill();
    let _ = socat.wait();
}

#[test]
fn unplug_and_replug_keeps_clients_and_logs_it() {
    let bus = Bus::start();
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("log");
    let w = wire(dir.path());
    let config = console_config(&w.dev, &format!("log_dir = \"{}\"\n", log_dir.display()));
    let d = Daemon::start_in(&bus, &config, tempfile::tempdir().unwrap());
    eventually("connected", || {
        d.property("org.rtmd.Dut1.Console", "Connected") == "b true"
    });
    let mut client = tcp(&addr(&d, "TcpRawAddress"));
    // Output is live only from the moment the client is counted (no replay).
    eventually("the client is counted", || {
        d.property("org.rtmd.Dut1.Console", "Clients") == "u 1"
    });
    let mut board = std::fs::OpenOptions::new()
        .write(true)
        .open(&w.board)
        .unwrap();
    board.write_all(b"before unplug\n").unwrap();
    read_until(&mut client, b"before unplug\n");

    // Unplug: the pty pair disappears.
    drop(board);
    drop(w);
    eventually("disconnected", || {
        d.property("org.rtmd.Dut1.Console", "Connected") == "b false"
    });
    assert!(d.property("org.rtmd.Dut1.Console", "LastError").len() > 4);
    assert_eq!(d.property("org.rtmd.Dut1.Console", "Clients"), "u 1");
    // Typing while unplugged is refused with a named error, not lost silently.
    let out = d.dbus_send("org.rtmd.Dut1.Console.Send", &["array:byte:0x41"]);
    assert!(
        text(&out.stderr).contains("org.rtmd.Dut1.Error.Hardware"),
        "{}",
        text(&out.stderr)
    );

    // Replug at the same path.
    let w = wire(dir.path());
    eventually("reconnected", || {
        d.property("org.rtmd.Dut1.Console", "Connected") == "b true"
    });
    let mut board = std::fs::OpenOptions::new()
        .write(true)
        .open(&w.board)
        .unwrap();
    board.write_all(b"after replug\n").unwrap();
    read_until(&mut client, b"after replug\n");

    let log = std::fs::read_to_string(log_dir.join("console.log")).unwrap();
    assert!(log.contains("Z before unplug\n"), "{log}");
    assert!(log.contains("[rtmd] console device lost"), "{log}");
    assert!(log.contains("Z after replug\n"), "{log}");
    assert_eq!(
        d.property("org.rtmd.Dut1.Console", "LogPath"),
        format!("s \"{}\"", log_dir.join("console.log").display())
    );
    let out = Command::new(bin("rtmctl"))
        .args([
            "--bus-address",
            &bus.address,
            "--dut",
            "con-1",
            "console",
            "--log",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(text(&out.stdout), log);
}

#[test]
fn wait_for_matches_live_output_and_times_out_by_name() {
    let mut r = rig("");
    let name = rtmd::bus::bus_name("con-1");
    // Output before the call is not matched: only what comes after. (A client has read the
    // old prompt: it was published before the call began.)
    let mut watcher = tcp(&addr(&r.daemon, "TcpRawAddress"));
    eventually("watcher counted", || {
        r.daemon.property("org.rtmd.Dut1.Console", "Clients") == "u 1"
    });
    r.board.write_all(b"old prompt login: \n").unwrap();
    read_until(&mut watcher, b"old prompt login: \n");
    let cmd = wait_for_call(&r.daemon.bus, "con-1", r"login: *$|(\w+) login:", 5000);
    let waiter = Proc::spawn("busctl WaitFor", cmd, true);
    // A call counts in `Waiters` once it listens.
    eventually("the call listens", || {
        r.daemon.property("org.rtmd.Dut1.Console", "Waiters") == "u 1"
    });
    r.board.write_all(b"booting\r\nrpi4 login: ").unwrap();
    waiter.wait_line("s \"rpi4 login:\"");

    let out = r.daemon.dbus_send(
        "org.rtmd.Dut1.Console.WaitFor",
        &["string:never", "uint32:200"],
    );
    assert!(
        text(&out.stderr).contains("org.rtmd.Dut1.Error.Timeout"),
        "{}",
        text(&out.stderr)
    );
    let out = r.daemon.dbus_send(
        "org.rtmd.Dut1.Console.WaitFor",
        &["string:([", "uint32:200"],
    );
    assert!(
        text(&out.stderr).contains("org.freedesktop.DBus.Error.InvalidArgs"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("invalid regex"),
        "{}",
        text(&out.stderr)
    );

    // Send reaches the board.
    let out = r.daemon.busctl(&[
        "call",
        &name,
        "/org/rtmd/Dut1",
        "org.rtmd.Dut1.Console",
        "Send",
        "ay",
        "3",
        "0x6c",
        "0x73",
        "0x0a",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut board_in = r.board.try_clone().unwrap();
    read_until(&mut board_in, b"ls\n");
}

/// A board that does not read its input (hung in a loop, or a slow line under a long paste)
/// does not stop its output: rtmd keeps reading and publishing while client input waits for
/// the port. The board is the master of a pty pair the test opens itself: socat between
/// them (the other tests' wire) can block as a whole once one direction is full.
#[test]
fn a_board_that_never_reads_its_input_still_has_its_output_read() {
    let pty = nix::pty::openpty(None, None).unwrap();
    let dev = nix::unistd::ttyname(&pty.slave).unwrap();
    let bus = Bus::start();
    let d = Daemon::start(&bus, &console_config(&dev, ""));
    eventually("connected", || {
        d.property("org.rtmd.Dut1.Console", "Connected") == "b true"
    });
    let mut board = std::fs::File::from(pty.master);
    let raw = addr(&d, "TcpRawAddress");
    let mut typist = tcp(&raw);
    let mut watcher = tcp(&raw);
    eventually("2 clients", || {
        d.property("org.rtmd.Dut1.Console", "Clients") == "u 2"
    });
    // Far more input than a pty buffers; the board reads none of it. The paste stalls once
    // rtmd stops taking input (it pushes back): that is fine.
    let (pasted, pasting) = std::sync::mpsc::channel();
    let paste = std::thread::spawn(move || {
        typist
            .set_write_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let block = vec![b'x'; 64 * 1024];
        for i in 0..16 {
            if typist.write_all(&block).is_err() {
                break;
            }
            let _ = pasted.send(i);
        }
        typist
    });
    // Two blocks are in: 128 KiB, far more than the pty buffers, so rtmd's input side is
    // stuck from here on (or the paste already ended: either way the board talks now).
    while let Ok(i) = pasting.recv_timeout(DEADLINE) {
        if i >= 1 {
            break;
        }
    }
    board.write_all(b"board still talking\n").unwrap();
    read_until(&mut watcher, b"board still talking\n");
    drop(paste.join().unwrap());
    // The input is still there for the board once it reads: the start of the paste.
    let mut got = vec![0u8; 4096];
    let n = board.read(&mut got).unwrap();
    assert!(
        n > 0 && got[..n].iter().all(|&b| b == b'x'),
        "{:?}",
        &got[..n.min(40)]
    );
}

#[test]
fn a_client_that_never_reads_is_dropped_and_others_get_everything() {
    let mut r = rig("client_buffer_kib = 256\n");
    let raw = addr(&r.daemon, "TcpRawAddress");
    let stuck = TcpStream::connect(&raw).unwrap();
    let mut good = tcp(&raw);
    eventually("2 clients", || {
        r.daemon.property("org.rtmd.Dut1.Console", "Clients") == "u 2"
    });
    // Paced so the reading client keeps up; it goes on until the stuck client has filled
    // its kernel socket buffers (several MiB on loopback) and then its 256 KiB in rtmd.
    let step: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8).collect();
    let mut steps = 0;
    while r.daemon.property("org.rtmd.Dut1.Console", "Clients") == "u 2" {
        assert!(steps < 1000, "the stuck client was never dropped");
        let mut chunk = step.clone();
        let mark = format!("<{steps:04}>");
        chunk.extend_from_slice(mark.as_bytes());
        r.board.write_all(&chunk).unwrap();
        let got = read_until(&mut good, mark.as_bytes());
        assert!(
            got == chunk,
            "the reading client lost bytes at step {steps}"
        );
        steps += 1;
    }
    eventually("stuck client dropped", || {
        r.daemon.property("org.rtmd.Dut1.Console", "Clients") == "u 1"
    });
    assert!(
        r.daemon
            .proc
            .text()
            .contains("more than 256 KiB of output not read")
    );
    drop(stuck);
}

#[test]
fn missing_device_at_start_is_not_fatal() {
    let bus = Bus::start();
    let dir = tempfile::tempdir().unwrap();
    let dev = dir.path().join("dev");
    let d = Daemon::start(&bus, &console_config(&dev, ""));
    assert_eq!(d.property("org.rtmd.Dut1.Console", "Connected"), "b false");
    assert!(
        d.property("org.rtmd.Dut1.Console", "LastError")
            .contains("is not there")
    );
    // It appears later.
    let w = wire(dir.path());
    eventually("connected", || {
        d.property("org.rtmd.Dut1.Console", "Connected") == "b true"
    });
    drop(w);
}

#[test]
fn a_path_that_is_not_a_tty_is_reported() {
    let bus = Bus::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, "x").unwrap();
    let mut d = Daemon::start(&bus, &console_config(&file, ""));
    eventually("error named", || {
        d.property("org.rtmd.Dut1.Console", "LastError")
            .contains("not a serial port")
    });
    assert!(d.proc.is_running());
}

#[test]
fn a_taken_tcp_port_stops_the_start_with_a_reason() {
    let bus = Bus::start();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("board.toml");
    std::fs::write(
        &path,
        format!(
            "name = \"con-1\"\n[console]\ndevice = \"/nonexistent\"\ntcp = \"127.0.0.1:{port}\"\n"
        ),
    )
    .unwrap();
    let mut p = Daemon::spawn(&bus.address, &path);
    assert_eq!(p.wait().code(), Some(1));
    assert!(
        p.text().contains(&format!(
            "console: cannot listen on 127.0.0.1:{port}: Address already in use"
        )),
        "{}",
        p.text()
    );
}

#[test]
fn permission_denied_is_reported_and_the_daemon_lives_on() {
    require("setpriv");
    let bus = Bus::start_open();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let w = wire(dir.path());
    let cfg = dir.path().join("board.toml");
    std::fs::write(&cfg, console_config(&w.dev, "")).unwrap();
    std::fs::set_permissions(&cfg, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    // As nobody, the root-owned pseudo-terminal cannot be opened.
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(bin("rtmd"))
        .arg("--config")
        .arg(&cfg)
        .args(["--bus-address", &bus.address, "--log", "stderr"]);
    let mut p = Proc::spawn("rtmd as nobody", cmd, true);
    p.wait_line("ready on");
    p.wait_line("permission denied opening");
    let out = busctl(
        &bus.address,
        &[
            "get-property",
            "org.rtmd.Dut1.con_1",
            "/org/rtmd/Dut1",
            "org.rtmd.Dut1.Console",
            "LastError",
        ],
    );
    assert!(
        text(&out.stdout).contains("permission denied"),
        "{}",
        text(&out.stdout)
    );
    assert!(p.is_running());
}

/// A pseudo-terminal cannot show a break: Linux's pty driver has no `break_ctl`, so
/// TIOCSBRK/TCSBRK on either side succeed and do nothing, and the board side reads no NUL, no
/// framing error, no SIGINT. So this checks what can be checked: rtmd's own record that it
/// set and cleared the break (its log line, which names who asked, and the console log's
/// `[rtmd]` line), for `SendBreak` and for a telnet client's `IAC BREAK`; the real line
/// condition needs a real UART (see docs/dbus.md, `SendBreak`).
#[test]
fn send_break_works_while_connected_and_is_refused_while_unplugged() {
    let bus = Bus::start();
    let dir = tempfile::tempdir().unwrap();
    let w = wire(dir.path());
    let d = Daemon::start_in(
        &bus,
        &console_config(&w.dev, ""),
        tempfile::tempdir().unwrap(),
    );
    eventually("connected", || {
        d.property("org.rtmd.Dut1.Console", "Connected") == "b true"
    });
    let out = d.dbus_send("org.rtmd.Dut1.Console.SendBreak", &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let sent = d.proc.wait_line("break sent on");
    assert!(
        sent.contains("for 250 ms (requested by D-Bus SendBreak)"),
        "{sent}"
    );
    // A telnet client's BREAK command (IAC BRK), with data around it: one more break, and
    // the data still reaches the board without the command.
    let mut board = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&w.board)
        .unwrap();
    let mut client = tcp(&addr(&d, "TcpAddress"));
    read_until(&mut client, &[255, 253, 3]);
    client.write_all(&[b'a', 255, 243, b'b', b'\n']).unwrap();
    assert_eq!(read_until(&mut board, b"\n"), b"ab\n");
    let sent = d
        .proc
        .wait_line("requested by telnet BREAK from 127.0.0.1:");
    assert!(sent.contains("for 250 ms"), "{sent}");
    assert_eq!(d.proc.matching("break sent on").len(), 2);
    drop(client);
    // The real telnet client: Ctrl-] then `send brk`, on a pseudo-terminal (script) so that
    // it shows its `telnet>` prompt, which says when it takes the command.
    require("telnet");
    require("script");
    let address = addr(&d, "TcpAddress");
    let (host, port) = address.rsplit_once(':').unwrap();
    let mut telnet = Command::new("script")
        .args(["-qfec", &format!("telnet {host} {port}"), "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut tin = telnet.stdin.take().unwrap();
    let mut tout = telnet.stdout.take().unwrap();
    read_until(&mut tout, b"Escape character");
    tin.write_all(b"ab").unwrap();
    assert_eq!(read_until(&mut board, b"ab"), b"ab");
    tin.write_all(b"\x1d").unwrap();
    read_until(&mut tout, b"telnet> ");
    tin.write_all(b"send brk\n").unwrap();
    eventually("the telnet client's break", || {
        d.proc.matching("requested by telnet BREAK").len() == 2
    });
    tin.write_all(b"cd").unwrap();
    assert_eq!(read_until(&mut board, b"cd"), b"cd");
    eventually("a third break", || {
        d.proc.matching("requested by telnet BREAK").len() == 2
    });
    let _ = telnet.kill();
    let _ = telnet.wait();
    drop(board);
    drop(w);
    eventually("disconnected", || {
        d.property("org.rtmd.Dut1.Console", "Connected") == "b false"
    });
    let out = d.dbus_send("org.rtmd.Dut1.Console.SendBreak", &[]);
    assert!(
        text(&out.stderr).contains("org.rtmd.Dut1.Error.Hardware"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("is not connected"),
        "{}",
        text(&out.stderr)
    );
}

/// rtmctl console on a pseudo-terminal, as LAVA (pexpect) and people run it: `script`
/// gives it one. `exec`, because script runs the command with `$SHELL -c` and dash (unlike
/// bash) forks for it: a signal must reach rtmctl, not a shell in between.
fn rtmctl_on_a_pty(
    r: &Rig,
) -> (
    std::process::Child,
    std::process::ChildStdin,
    std::process::ChildStdout,
) {
    require("script");
    let command = format!(
        "exec {} --bus-address {} --dut con-1 console",
        bin("rtmctl").display(),
        r.daemon.bus
    );
    let mut child = Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    (child, stdin, stdout)
}

#[test]
fn interactive_console_is_lava_safe_and_leaves_on_the_escape() {
    let mut r = rig("");
    let (mut child, mut input, mut output) = rtmctl_on_a_pty(&r);
    let banner = read_until(&mut output, b"leaves\r\n");
    assert_eq!(
        String::from_utf8_lossy(&banner),
        "rtmctl: connected to con-1's console; Ctrl-] q leaves\r\n"
    );
    eventually("attached", || {
        r.daemon.property("org.rtmd.Dut1.Console", "Clients") == "u 1"
    });
    r.board.write_all(b"=> ").unwrap();
    read_until(&mut output, b"=> ");
    // Ctrl-] followed by anything but q or . goes to the board as typed.
    input.write_all(b"help\r\x1dx").unwrap();
    let mut board_in = r.board.try_clone().unwrap();
    assert_eq!(read_until(&mut board_in, b"x"), b"help\r\x1dx");
    input.write_all(b"\x1dq").unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    // Nothing but the banner and the board's bytes reached the terminal.
    let mut rest = Vec::new();
    let _ = output.read_to_end(&mut rest);
    assert!(
        rest.iter().all(|&b| b != 0x1b),
        "terminal escape sequences: {rest:?}"
    );
}

#[test]
fn interactive_console_ends_on_sigterm_and_sighup() {
    for signal in ["TERM", "HUP"] {
        let r = rig("");
        let (mut child, _input, mut output) = rtmctl_on_a_pty(&r);
        read_until(&mut output, b"leaves\r\n");
        // rtmctl itself: the child of the `script` around it.
        let pgrep = Command::new("pgrep")
            .args(["-P", &child.id().to_string()])
            .output()
            .unwrap();
        let pids = text(&pgrep.stdout);
        let pid = pids
            .lines()
            .find(|l| !l.trim().is_empty())
            .expect("rtmctl's pid")
            .trim()
            .to_string();
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap();
        assert!(sent.success());
        let status = child.wait().unwrap();
        assert!(status.success(), "{signal}: {status}");
        eventually("detached", || {
            r.daemon.property("org.rtmd.Dut1.Console", "Clients") == "u 0"
        });
    }
}

#[test]
fn the_simulated_board_boots_when_rtmd_switches_its_power() {
    let bus = Bus::start();
    let dir = tempfile::tempdir().unwrap();
    let console = dir.path().join("console");
    let mut args = fast_board(dir.path(), "rpi4-01");
    args.extend(["--board-outlet".to_string(), "2".to_string()]);
    let (strip, port) = strip(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let config = format!(
        "name = \"rpi4-01\"\n[power]\nbackend = \"egpms\"\nhost = \"127.0.0.1\"\nport = {port}\noutlet = 2\n\
         cycle_off_ms = 100\n[console]\ndevice = \"{}\"\nlog_dir = \"{}\"\n",
        console.display(),
        dir.path().join("log").display()
    );
    let d = Daemon::start(&bus, &config);
    eventually("connected", || {
        d.property("org.rtmd.Dut1.Console", "Connected") == "b true"
    });
    // Silent while off: a WaitFor times out.
    let out = d.dbus_send(
        "org.rtmd.Dut1.Console.WaitFor",
        &["string:U-Boot", "uint32:300"],
    );
    assert!(
        text(&out.stderr).contains("Error.Timeout"),
        "{}",
        text(&out.stderr)
    );

    let cmd = wait_for_call(&d.bus, "rpi4-01", "rpi4-01 login: $", 20000);
    let waiter = Proc::spawn("busctl WaitFor", cmd, true);
    eventually("the call listens", || {
        d.property("org.rtmd.Dut1.Console", "Waiters") == "u 1"
    });
    assert_eq!(ok_line(&d.rtmctl(&["power", "on"])), "rpi4-01: power on");
    waiter.wait_line("s \"rpi4-01 login: \"");
    strip.wait_line("board login prompt");

    // A real shell behind the login, through rtmctl console in pipe mode.
    let mut child = Command::new(bin("rtmctl"))
        .args(["--bus-address", &d.bus, "--dut", "rpi4-01", "console"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    eventually("attached", || {
        d.property("org.rtmd.Dut1.Console", "Clients") == "u 1"
    });
    stdin.write_all(b"root\recho answer-$((6*7))\r").unwrap();
    let mut out = child.stdout.take().unwrap();
    read_until(&mut out, b"answer-42");
    drop(stdin);
    let _ = child.wait();

    // Power off: the board goes silent; the log has the whole boot.
    assert_eq!(ok_line(&d.rtmctl(&["power", "off"])), "rpi4-01: power off");
    strip.wait_line("board off");
    let log = std::fs::read_to_string(dir.path().join("log/console.log")).unwrap();
    assert!(log.contains("U-Boot 2024.01-rtm-sim"), "{log}");
    assert!(log.contains("Z answer-42"), "{log}");
}

#[test]
fn unix_socket_clients_and_input_first() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("console.sock");
    let mut r = rig(&format!(
        "unix = \"{}\"\ninput = \"first\"\n",
        sock.display()
    ));
    let mut first = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    first
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    eventually("first counted", || {
        r.daemon.property("org.rtmd.Dut1.Console", "Clients") == "u 1"
    });
    let mut second = tcp(&addr(&r.daemon, "TcpRawAddress"));
    eventually("second counted", || {
        r.daemon.property("org.rtmd.Dut1.Console", "Clients") == "u 2"
    });
    r.board.write_all(b"both see this\n").unwrap();
    read_until(&mut first, b"both see this\n");
    read_until(&mut second, b"both see this\n");
    // Only the first connected client may type; the second only watches.
    second.write_all(b"ignored\n").unwrap();
    first.write_all(b"accepted\n").unwrap();
    let mut board_in = r.board.try_clone().unwrap();
    assert_eq!(read_until(&mut board_in, b"accepted\n"), b"accepted\n");
    // When the first leaves, the second may type.
    drop(first);
    eventually("first gone", || {
        r.daemon.property("org.rtmd.Dut1.Console", "Clients") == "u 1"
    });
    second.write_all(b"now mine\n").unwrap();
    assert_eq!(read_until(&mut board_in, b"now mine\n"), b"now mine\n");
}

/// Has the board print `line`, waits until it is in the log under `log_dir`, and starts
/// `rtmctl console --log --follow`, returned once it has shown that line.
fn follow_log(r: &mut Rig, log_dir: &Path, line: &str) -> Proc {
    r.board.write_all(format!("{line}\n").as_bytes()).unwrap();
    eventually("logged", || {
        std::fs::read_to_string(log_dir.join("console.log")).is_ok_and(|l| l.contains(line))
    });
    let mut cmd = Command::new(bin("rtmctl"));
    cmd.args([
        "--bus-address",
        &r.daemon.bus,
        "--dut",
        "con-1",
        "console",
        "--log",
        "--follow",
    ]);
    let follow = Proc::spawn("rtmctl console --log --follow", cmd, true);
    follow.wait_line(&format!("Z {line}"));
    follow
}

#[test]
fn rtmctl_console_log_follow_sees_new_lines() {
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("log");
    let mut r = rig(&format!("log_dir = \"{}\"\n", log_dir.display()));
    let follow = follow_log(&mut r, &log_dir, "first line");
    r.board.write_all(b"second line\n").unwrap();
    follow.wait_line("Z second line");
}

#[test]
fn rtmctl_console_log_follow_reads_every_line_once_across_rotations() {
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("log");
    // The smallest log rtmd allows: with ~60-byte lines it rotates every ~70 lines, more
    // often than the follower looks (every 200 ms), so some rotations happen while lines are
    // still unread in the old file and some files are rotated past whole.
    let mut r = rig(&format!(
        "log_dir = \"{}\"\nlog_max_bytes = 4096\nlog_keep = 20\n",
        log_dir.display()
    ));
    let follow = follow_log(&mut r, &log_dir, "start");
    let lines = 1000;
    for batch in 0..lines / 10 {
        let mut chunk = String::new();
        for i in batch * 10..batch * 10 + 10 {
            chunk.push_str(&format!("line {i:05} .......................\n"));
        }
        r.board.write_all(chunk.as_bytes()).unwrap();
        // One batch at a time, as a board prints: the follower has it before the next.
        follow.wait_line(&format!("line {:05} ", batch * 10 + 9));
    }
    follow.wait_line(&format!("line {:05} ", lines - 1));
    assert!(
        log_dir.join("console.log.5").exists(),
        "the log should have rotated several times"
    );
    let got: Vec<String> = follow
        .matching(" line ")
        .iter()
        .map(|l| l.split_once(" line ").unwrap().1[..5].to_string())
        .collect();
    let want: Vec<String> = (0..lines).map(|i| format!("{i:05}")).collect();
    assert_eq!(got, want, "lines lost, repeated or out of order");
    assert!(
        follow.matching("rotated faster").is_empty(),
        "{}",
        follow.text()
    );
}

/// The `org.rtmd.Dut1.Console` property changes in a `busctl monitor --json=short` line, in
/// order: `Connected=true`, `Clients=2`, ...
fn console_changes(monitor: &Proc) -> Vec<String> {
    let mut changes = Vec::new();
    for line in monitor.matching("\"org.rtmd.Dut1.Console\"") {
        for (name, ty) in [("Connected", "b"), ("Clients", "u")] {
            let key = format!("\"{name}\":{{\"type\":\"{ty}\",\"data\":");
            if let Some(at) = line.find(&key) {
                let value = line[at + key.len()..].split('}').next().unwrap();
                changes.push(format!("{name}={value}"));
            }
        }
    }
    changes
}

#[test]
fn connected_and_clients_changes_are_signalled() {
    let bus = Bus::start();
    let dir = tempfile::tempdir().unwrap();
    let w = wire(dir.path());
    let d = Daemon::start_in(
        &bus,
        &console_config(&w.dev, ""),
        tempfile::tempdir().unwrap(),
    );
    eventually("connected", || {
        d.property("org.rtmd.Dut1.Console", "Connected") == "b true"
    });
    let monitor = {
        let mut cmd = Command::new("busctl");
        cmd.arg(format!("--address={}", bus.address)).args([
            "monitor",
            "--json=short",
            "--match",
            "type='signal',interface='org.freedesktop.DBus.Properties',path='/org/rtmd/Dut1'",
        ]);
        Proc::spawn("busctl monitor", cmd, true)
    };
    monitor.wait_line("Monitoring");
    let wait = |change: &str| {
        eventually(change, || {
            console_changes(&monitor).contains(&change.to_string())
        });
    };

    let client = tcp(&addr(&d, "TcpRawAddress"));
    wait("Clients=1");
    let second = tcp(&addr(&d, "TcpRawAddress"));
    wait("Clients=2");
    drop(second);
    eventually("one left", || {
        console_changes(&monitor).last().map(String::as_str) == Some("Clients=1")
    });
    // Unplug and replug: the client stays, Connected goes false and back.
    drop(w);
    wait("Connected=false");
    let _w = wire(dir.path());
    wait("Connected=true");
    drop(client);
    eventually("client gone", || {
        console_changes(&monitor).last().map(String::as_str) == Some("Clients=0")
    });
    assert_eq!(
        console_changes(&monitor),
        [
            "Clients=1",
            "Clients=2",
            "Clients=1",
            "Connected=false",
            "Connected=true",
            "Clients=0"
        ],
        "{}",
        monitor.text()
    );
}

#[test]
fn a_client_joining_late_gets_no_replay_of_earlier_output() {
    let mut r = rig("");
    let raw = addr(&r.daemon, "TcpRawAddress");
    let mut early = tcp(&raw);
    eventually("early client", || {
        r.daemon.property("org.rtmd.Dut1.Console", "Clients") == "u 1"
    });
    r.board.write_all(b"old prompt login: \n").unwrap();
    read_until(&mut early, b"login: \n");
    let mut late = tcp(&raw);
    eventually("late client", || {
        r.daemon.property("org.rtmd.Dut1.Console", "Clients") == "u 2"
    });
    r.board.write_all(b"new output\n").unwrap();
    assert_eq!(read_until(&mut early, b"new output\n"), b"new output\n");
    assert_eq!(
        read_until(&mut late, b"new output\n"),
        b"new output\n",
        "the late client got earlier output"
    );
}

#[test]
fn rtmctl_console_pipe_mode_exits_with_one_line_when_rtmd_stops() {
    let mut r = rig("");
    let mut cmd = Command::new(bin("rtmctl"));
    cmd.args(["--bus-address", &r.daemon.bus, "--dut", "con-1", "console"]);
    // stdin stays open: the session ends because rtmd went, not because input did.
    let mut rtmctl = Proc::spawn_stdin("rtmctl console", cmd);
    eventually("attached", || {
        r.daemon.property("org.rtmd.Dut1.Console", "Clients") == "u 1"
    });
    r.board.write_all(b"hello\n").unwrap();
    rtmctl.wait_line("hello");
    let stopped = r.daemon.proc.signal_and_wait("TERM");
    assert!(stopped.success(), "{}", r.daemon.proc.text());
    let status = rtmctl.wait();
    assert!(!status.success(), "{status}");
    // (`text` joins lines without their ends.)
    assert_eq!(
        rtmctl.text(),
        "hello\nrtmctl: con-1: rtmd closed the console"
    );
}
