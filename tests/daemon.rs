//! The daemon and its contracts as a whole: config checking, start-up failures, the bus
//! names, introspection, and rtmctl's exit statuses when things are missing.

// A test fails by panicking: unwrap, expect, panic and indexing are how it says so.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::string_slice
)]

mod common;

use std::process::Command;

use common::*;

fn check(config: &str) -> (std::process::Output, std::path::PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("board.toml");
    std::fs::write(&path, config).unwrap();
    let out = rtmd_check(&path);
    (out, path, dir)
}

#[test]
fn check_accepts_the_shipped_examples() {
    for example in std::fs::read_dir("config").unwrap() {
        let path = example.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") || path.ends_with("demo.toml") {
            continue;
        }
        let out = rtmd_check(&path);
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            text(&out.stderr)
        );
        assert!(
            text(&out.stdout).contains(": ok (board "),
            "{}",
            text(&out.stdout)
        );
    }
}

#[test]
fn check_reports_mistakes_with_file_line_column() {
    let cases = [
        (
            "name = \"b\"\n[power]\nbackend = \"egpms\"\nhost = \"h\"\noutlet = 1\nvolume = 11\n",
            ":6:1: unknown field `volume`",
        ),
        (
            "name = \"b\"\n[power]\nbackend = \"egpms\"\nhost = \"h\"\noutlet = \"1\"\n",
            ":5:10: invalid type: string \"1\", expected u16",
        ),
        (
            "name = \"Board 1\"\n",
            ":1:8: invalid board name \"Board 1\"",
        ),
        (
            "name = \"b\"\n[power]\nbackend = \"egpms\"\nhost = \"h\"\noutlet = 1\npassword_file = \"missing\"\n",
            ":6:17: cannot read password file",
        ),
        (
            "name = \"b\"\n[power]\nbackend = \"dpm86xx\"\ndevice = \"/dev/x\"\nvoltage = 5.0\ncurrent_limit = 1.0\nvoltage_range = [4.0, 5.5]\nprofiles = { high = 9.0 }\n",
            ":8:21: profile \"high\" 9 V is outside voltage_range",
        ),
    ];
    for (config, expected) in cases {
        let (out, path, _dir) = check(config);
        assert_eq!(out.status.code(), Some(2), "{config}");
        let stderr = text(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with(&format!("{}{expected}", path.display())),
            "got {stderr:?}, want {expected:?}"
        );
    }
    let out = rtmd_check(std::path::Path::new("/nonexistent.toml"));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("/nonexistent.toml:1:1: cannot read the config file"));
}

#[test]
fn a_bad_config_stops_the_start_with_status_2() {
    let (_, path, _dir) = check("name = \"b\"\n[power]\nbackend = \"relay\"\n");
    let bus = Bus::start();
    let mut p = Daemon::spawn(&bus.address, &path);
    assert_eq!(p.wait().code(), Some(2));
    assert!(
        p.text().contains("unknown power backend \"relay\""),
        "{}",
        p.text()
    );
}

/// A second rtmd for a board already served names the first one's pid, and touches
/// nothing: no port bound (it would have failed on the console's port first), no partial
/// download of the first one's removed.
#[test]
fn a_second_daemon_for_the_same_board_is_refused() {
    let bus = Bus::start();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "name = \"rpi4-01\"\n[power]\nbackend = \"command\"\non_command = \"true\"\n\
         off_command = \"true\"\n[console]\ndevice = \"{d}/no-console\"\ntcp = \"{port}\"\n\
         [images]\ndir = \"{d}/images\"\n",
        d = dir.path().display(),
        port = free_port()
    );
    let first = Daemon::start_in(&bus, &config, dir);
    let partial = first.dir.path().join("images/.rtmd/partial/fetch-1.part");
    std::fs::write(&partial, b"half an image").unwrap();
    let path = first.dir.path().join("board.toml");
    let mut second = Daemon::spawn(&bus.address, &path);
    assert_eq!(second.wait().code(), Some(1));
    let errors = second.matching("ERROR");
    assert_eq!(errors.len(), 1, "{}", second.text());
    assert_eq!(
        log_message(&errors[0]),
        format!(
            "board rpi4-01 is already served by pid {} (it owns org.rtmd.Dut1.rpi4_01 on the bus \
             at {})",
            first.proc.child.id(),
            bus.address
        )
    );
    assert!(
        partial.exists(),
        "the second rtmd removed the first one's partial download"
    );
    // The first one still answers, under both spellings of its name.
    assert_eq!(
        ok_line(&first.rtmctl(&["power", "on"])),
        "rpi4-01: power on"
    );
    let out = first.busctl(&[
        "get-property",
        "org.rtmd.Dut1.rpi4-01",
        "/org/rtmd/Dut1",
        "org.rtmd.Dut1",
        "Name",
    ]);
    assert_eq!(text(&out.stdout).trim(), "s \"rpi4-01\"");
}

#[test]
fn introspection_shows_the_contract_with_argument_names() {
    let bus = Bus::start();
    let config = "name = \"b\"\n[power]\nbackend = \"command\"\non_command = \"true\"\noff_command = \"true\"\n";
    let d = Daemon::start(&bus, config);
    let out = d.busctl(&[
        "introspect",
        "--xml-interface",
        "org.rtmd.Dut1.b",
        "/org/rtmd/Dut1",
    ]);
    let xml = text(&out.stdout);
    for needle in [
        r#"<interface name="org.rtmd.Dut1">"#,
        r#"<property name="Subsystems" type="as" access="read">"#,
        r#"<interface name="org.rtmd.Dut1.Power">"#,
        r#"<method name="Cycle">"#,
        r#"<arg name="off_ms" type="u" direction="in"/>"#,
        r#"<arg name="volts" type="d" direction="in"/>"#,
        r#"<arg name="name" type="s" direction="in"/>"#,
        r#"<property name="State" type="s" access="read"/>"#,
    ] {
        assert!(xml.contains(needle), "missing {needle} in\n{xml}");
    }
    assert_eq!(d.property("org.rtmd.Dut1", "Subsystems"), "as 1 \"power\"");
    assert_eq!(
        d.property("org.rtmd.Dut1.Power", "Backend"),
        "s \"command\""
    );
    // Supply-only properties on a switch are a named error, not a made-up number.
    let out = d.dbus_send(
        "org.freedesktop.DBus.Properties.Get",
        &["string:org.rtmd.Dut1.Power", "string:Voltage"],
    );
    assert!(
        text(&out.stderr).contains("org.rtmd.Dut1.Error.NotConfigured"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_board_without_power_has_no_power_interface() {
    let bus = Bus::start();
    let d = Daemon::start(&bus, "name = \"bare\"\n");
    assert_eq!(d.property("org.rtmd.Dut1", "Subsystems"), "as 0");
    let line = err_line(&d.rtmctl(&["power", "on"]), 2);
    assert!(
        line.starts_with("rtmctl: bare: not configured on this board"),
        "{line}"
    );
}

#[test]
fn rtmctl_without_a_daemon_or_a_bus_says_so_in_one_line() {
    let bus = Bus::start();
    let out = Command::new(bin("rtmctl"))
        .args([
            "--bus-address",
            &bus.address,
            "--dut",
            "ghost",
            "power",
            "on",
        ])
        .output()
        .unwrap();
    let line = err_line(&out, 1);
    assert!(line.contains("no rtmd serves board ghost"), "{line}");
    let out = Command::new(bin("rtmctl"))
        .args([
            "--bus-address",
            "unix:path=/nonexistent/bus",
            "--dut",
            "ghost",
            "power",
            "on",
        ])
        .output()
        .unwrap();
    let line = err_line(&out, 1);
    assert!(
        line.contains("cannot connect to the bus at unix:path=/nonexistent/bus"),
        "{line}"
    );
    let out = Command::new(bin("rtmctl"))
        .args(["power", "on"])
        .env_remove("RTM_DUT")
        .output()
        .unwrap();
    let line = err_line(&out, 2);
    assert!(line.contains("--dut"), "{line}");
}

/// `rtmd --demo` without a session bus, and the address of the private bus it prints.
fn start_demo() -> (Proc, String) {
    let mut cmd = Command::new(bin("rtmd"));
    cmd.args(["--demo", "--log", "stderr"])
        .env_remove("DBUS_SESSION_BUS_ADDRESS");
    let demo = Proc::spawn("rtmd --demo", cmd, true);
    let line = demo.wait_line("export RTM_BUS_ADDRESS=");
    let address = line
        .split("RTM_BUS_ADDRESS=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    (demo, address)
}

#[test]
fn demo_runs_on_a_private_bus_and_switches_off_on_stop() {
    let (mut demo, address) = start_demo();
    demo.wait_line("ready on");
    let rtmctl = |args: &[&str]| {
        Command::new(bin("rtmctl"))
            .args(["--bus-address", &address, "--dut", "demo"])
            .args(args)
            .output()
            .unwrap()
    };
    assert_eq!(ok_line(&rtmctl(&["power", "on"])), "demo: power on");
    assert_eq!(
        ok_line(&rtmctl(&["power", "status"])),
        "demo: power on, 5.10 V, 0.510 A (setpoint 5.10 V)"
    );
    // The simulated board boots on the demo's console.
    let out = wait_for_call(&address, "demo", "demo login: ", 20000)
        .output()
        .unwrap();
    assert_eq!(
        text(&out.stdout).trim(),
        "s \"demo login: \"",
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        ok_line(&rtmctl(&["power", "profile", "low"])),
        "demo: profile low, 4.60 V"
    );
    // The demo's image, over NBD.
    let line = ok_line(&rtmctl(&["nbd", "export", "demo.img", "--cow"]));
    let uri = line.rsplit(' ').next().unwrap().to_string();
    assert!(uri.starts_with("nbd://127.0.0.1:"), "{line}");
    require("nbdinfo");
    let size = Command::new("nbdinfo")
        .args(["--size", &uri])
        .output()
        .unwrap();
    assert_eq!(text(&size.stdout).trim(), (64 << 20).to_string());
    assert!(demo.signal_and_wait("INT").success());
    assert!(
        demo.text().contains("dpm8605: output off"),
        "{}",
        demo.text()
    );
}

#[test]
fn speaks_sd_notify_ready_status_watchdog_stopping() {
    use std::os::unix::net::UnixDatagram;
    let bus = Bus::start();
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(DEADLINE)).unwrap();
    let cfg = dir.path().join("board.toml");
    std::fs::write(&cfg, "name = \"b\"\n[power]\nbackend = \"command\"\non_command = \"true\"\noff_command = \"true\"\n").unwrap();
    let mut cmd = Command::new(bin("rtmd"));
    cmd.arg("--config")
        .arg(&cfg)
        .args(["--bus-address", &bus.address, "--log", "stderr"]);
    cmd.env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "200000");
    let mut p = Proc::spawn("rtmd", cmd, true);
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    while !(seen.iter().any(|m: &String| m == "WATCHDOG=1")
        && seen.iter().any(|m| m.starts_with("STATUS=power")))
    {
        let n = sock.recv(&mut buf).expect("no sd_notify message");
        seen.push(String::from_utf8_lossy(&buf[..n]).trim().to_string());
    }
    assert_eq!(seen[0], "READY=1", "{seen:?}");
    p.signal_and_wait("TERM");
    let mut rest = Vec::new();
    while let Ok(n) = sock.recv(&mut buf) {
        rest.push(String::from_utf8_lossy(&buf[..n]).trim().to_string());
        if rest.last().is_some_and(|m| m == "STOPPING=1") {
            break;
        }
    }
    assert_eq!(
        rest.last().map(String::as_str),
        Some("STOPPING=1"),
        "{rest:?}"
    );
}

/// `--bus system` and `--bus session` (no address): rtmd and rtmctl find the buses where
/// D-Bus says they are (`DBUS_SYSTEM_BUS_ADDRESS`, `DBUS_SESSION_BUS_ADDRESS`), here two
/// private buses; each daemon is on its own bus only.
#[test]
fn bus_system_and_bus_session_find_their_buses() {
    let (system, session) = (Bus::start(), Bus::start());
    let dir = tempfile::tempdir().unwrap();
    let mut daemons = Vec::new();
    for (choice, board) in [("system", "sys-1"), ("session", "ses-1")] {
        let path = dir.path().join(format!("{board}.toml"));
        std::fs::write(
            &path,
            format!(
                "name = \"{board}\"\n[power]\nbackend = \"command\"\non_command = \"true\"\n\
                 off_command = \"true\"\n"
            ),
        )
        .unwrap();
        let mut cmd = Command::new(bin("rtmd"));
        cmd.arg("--config")
            .arg(&path)
            .args(["--bus", choice, "--log", "stderr"])
            .env("DBUS_SYSTEM_BUS_ADDRESS", &system.address)
            .env("DBUS_SESSION_BUS_ADDRESS", &session.address)
            .env("RUST_LOG", "info");
        let p = Proc::spawn("rtmd", cmd, true);
        p.wait_line("ready on");
        daemons.push(p);
    }
    let rtmctl = |choice: &str, board: &str| {
        Command::new(bin("rtmctl"))
            .args(["--bus", choice, "--dut", board, "power", "on"])
            .env("DBUS_SYSTEM_BUS_ADDRESS", &system.address)
            .env("DBUS_SESSION_BUS_ADDRESS", &session.address)
            .env_remove("RTM_BUS_ADDRESS")
            .env_remove("RTM_BUS")
            .env_remove("RTM_DUT")
            .output()
            .unwrap()
    };
    assert_eq!(ok_line(&rtmctl("system", "sys-1")), "sys-1: power on");
    assert_eq!(ok_line(&rtmctl("session", "ses-1")), "ses-1: power on");
    // Each board is on its own bus only.
    let line = err_line(&rtmctl("session", "sys-1"), 1);
    assert!(line.contains("sys-1"), "{line}");
}

/// With a journal socket, rtmd logs to the journal in its native protocol with the fields
/// BOARD and SUBSYSTEM. The journal here is a listener on /run/systemd/journal/socket in a
/// mount namespace of the test's own (a tmpfs over /run), recording each datagram.
#[test]
fn logs_go_to_the_journal_with_board_and_subsystem_fields() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test makes a mount namespace: run the suite as root (scripts/test)"
    );
    require("unshare");
    let bus = Bus::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("board.toml");
    std::fs::write(
        &config,
        "name = \"jb-1\"\n[power]\nbackend = \"command\"\non_command = \"true\"\n\
         off_command = \"true\"\n",
    )
    .unwrap();
    let records = dir.path().join("journal.bin");
    // The listener ends when rtmd (its parent, after `exec`) is gone.
    let listener = r#"
import os, socket, sys
parent = os.getppid()
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind("/run/systemd/journal/socket")
s.settimeout(0.2)
with open(sys.argv[1], "ab", buffering=0) as out:
    while os.getppid() == parent:
        try:
            data = s.recv(1 << 20)
        except socket.timeout:
            continue
        out.write(len(data).to_bytes(4, "little") + data)
"#;
    let script = format!(
        "mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/journal && \
         {{ python3 -c '{listener}' {records} & }} && \
         while [ ! -S /run/systemd/journal/socket ]; do sleep 0.01; done && \
         exec {rtmd} --config {config} --bus-address {bus} --log auto",
        records = records.display(),
        rtmd = bin("rtmd").display(),
        config = config.display(),
        bus = bus.address,
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "--propagation", "private", "sh", "-c", &script]);
    let mut rtmd = Proc::spawn("rtmd", cmd, true);
    // Journal records: their fields, in the native protocol (KEY=value lines, or KEY, a
    // little-endian length and the value for values with a newline).
    let read = || -> Vec<std::collections::HashMap<String, String>> {
        let bytes = std::fs::read(&records).unwrap_or_default();
        let mut out = Vec::new();
        let mut at = 0;
        while at + 4 <= bytes.len() {
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            let mut d = &bytes[at + 4..at + 4 + len];
            at += 4 + len;
            let mut fields = std::collections::HashMap::new();
            while let Some(nl) = d.iter().position(|&b| b == b'\n') {
                let line = &d[..nl];
                if let Some(eq) = line.iter().position(|&b| b == b'=') {
                    fields.insert(text(&line[..eq]), text(&line[eq + 1..]));
                    d = &d[nl + 1..];
                } else {
                    let n = u64::from_le_bytes(d[nl + 1..nl + 9].try_into().unwrap()) as usize;
                    fields.insert(text(line), text(&d[nl + 9..nl + 9 + n]));
                    d = &d[nl + 10 + n..];
                }
            }
            // tracing-journald probes the socket with an empty datagram first.
            if !fields.is_empty() {
                out.push(fields);
            }
        }
        out
    };
    let has = |key: &str, value: &str| {
        read()
            .iter()
            .any(|r| r.get(key).is_some_and(|v| v.contains(value)))
    };
    eventually("rtmd logged that it is ready, to the journal", || {
        has("MESSAGE", "ready on")
    });
    let on = Command::new(bin("rtmctl"))
        .args([
            "--bus-address",
            &bus.address,
            "--dut",
            "jb-1",
            "power",
            "on",
        ])
        .output()
        .unwrap();
    ok_line(&on);
    eventually("the switch was logged", || has("MESSAGE", "power on"));
    let records = read();
    let switched = records
        .iter()
        .find(|r| r.get("MESSAGE").is_some_and(|m| m.contains("power on")))
        .unwrap();
    assert_eq!(
        switched.get("BOARD").map(String::as_str),
        Some("jb-1"),
        "{switched:?}"
    );
    assert_eq!(
        switched.get("SUBSYSTEM").map(String::as_str),
        Some("power"),
        "{switched:?}"
    );
    assert_eq!(
        switched.get("SYSLOG_IDENTIFIER").map(String::as_str),
        Some("rtmd")
    );
    // tracing-journald's mapping: INFO is 5 (notice), WARN 4, ERROR 3.
    assert_eq!(switched.get("PRIORITY").map(String::as_str), Some("5"));
    assert!(
        records
            .iter()
            .all(|r| r.get("BOARD").map(String::as_str) == Some("jb-1")),
        "every record names the board: {records:?}"
    );
    // Nothing went to stderr instead.
    assert!(!rtmd.text().contains("ready on"), "{}", rtmd.text());
    assert!(rtmd.is_running());
}

/// A private bus whose broker the test can stop (the one in `common` stops only when
/// dropped).
fn own_bus(dir: &std::path::Path) -> (Proc, String) {
    require("dbus-daemon");
    let mut cmd = Command::new("dbus-daemon");
    cmd.args(["--session", "--nofork", "--nopidfile", "--print-address=1"])
        .arg(format!("--address=unix:path={}/bus", dir.display()));
    let proc = Proc::spawn("dbus-daemon", cmd, true);
    let address = proc.wait_line("unix:path=").trim().to_string();
    (proc, address)
}

/// Losing the bus connection (the broker drops rtmd, or stops) ends the daemon with status 1,
/// so that systemd restarts it, instead of leaving it alive, watchdog fed, and gone from the
/// bus. It stops the board as on SIGTERM (here `on_stop = "off"`).
#[test]
fn losing_the_bus_connection_exits_1_after_stopping_the_board() {
    let dir = tempfile::tempdir().unwrap();
    let (mut broker, address) = own_bus(dir.path());
    let log = dir.path().join("switched");
    let path = dir.path().join("board.toml");
    std::fs::write(
        &path,
        format!(
            "name = \"lost-1\"\n[power]\nbackend = \"command\"\non_command = \"echo on >> {l}\"\n\
             off_command = \"echo off >> {l}\"\non_stop = \"off\"\n",
            l = log.display()
        ),
    )
    .unwrap();
    let mut rtmd = Daemon::spawn(&address, &path);
    rtmd.wait_line("ready on");
    broker.child.kill().unwrap();
    broker.child.wait().unwrap();
    assert_eq!(rtmd.wait().code(), Some(1), "{}", rtmd.text());
    let errors = rtmd.matching("ERROR");
    assert_eq!(errors.len(), 1, "{}", rtmd.text());
    assert_eq!(
        log_message(&errors[0]),
        format!("lost the connection to the bus at {address}: stopping, to be restarted")
    );
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "off\n");
}

/// Stopping takes no call any more before it switches the board off: a `Power.On` sent while
/// the `on_stop = "off"` switch is under way, over D-Bus or the pdudaemon API, is refused and
/// never reaches the hardware, so the board stays off.
#[test]
fn a_late_power_on_cannot_undo_on_stop_off() {
    require("curl");
    require("mkfifo");
    let bus = Bus::start();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("switched");
    let gate = dir.path().join("gate");
    assert!(
        Command::new("mkfifo")
            .arg(&gate)
            .status()
            .unwrap()
            .success()
    );
    let http = free_port();
    // The off command says it started, then waits for the test to let it finish.
    let config = format!(
        "name = \"late-1\"\n[power]\nbackend = \"command\"\non_command = \"echo on >> {l}\"\n\
         off_command = \"echo off >> {l} && read x < {g}\"\non_stop = \"off\"\ntimeout_ms = 60000\n\
         [pdudaemon_api]\nlisten = \"{http}\"\n",
        l = log.display(),
        g = gate.display()
    );
    let mut d = Daemon::start(&bus, &config);
    assert_eq!(ok_line(&d.rtmctl(&["power", "on"])), "late-1: power on");
    let pid = d.proc.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    eventually("the on_stop switch started", || {
        std::fs::read_to_string(&log).unwrap_or_default() == "on\noff\n"
    });

    // D-Bus: the board's name is gone.
    let line = err_line(&d.rtmctl(&["power", "on"]), 1);
    assert!(line.contains("no rtmd serves board late-1"), "{line}");
    // The pdudaemon API: refused, as the gate is closed while the daemon stops (or no longer
    // listening: curl's 000), never executed.
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}"])
        .arg(format!(
            "http://127.0.0.1:{http}/power/control/on?hostname=late-1&port=1"
        ))
        .output()
        .unwrap();
    let answer = text(&out.stdout);
    assert!(
        answer == "\n000" || (answer.ends_with("\n503") && answer.contains("rtmd is stopping")),
        "{answer}"
    );

    std::fs::write(&gate, "done\n").unwrap();
    assert!(d.proc.wait().success(), "{}", d.proc.text());
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "on\noff\n");
    assert!(
        d.proc.text().contains("power switched off (on_stop = off)"),
        "{}",
        d.proc.text()
    );
}

/// rtmd raises its soft limit of open files to the hard one at start (the unit sets the hard
/// one, `LimitNOFILE=`): 1,024 descriptors are not a budget for a daemon with several front
/// ends.
#[test]
fn the_open_files_limit_is_raised_to_the_hard_limit() {
    require("prlimit");
    let bus = Bus::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("board.toml");
    std::fs::write(&path, "name = \"fds-1\"\n").unwrap();
    // prlimit sets the limits and execs rtmd: same pid.
    let mut cmd = Command::new("prlimit");
    cmd.arg("--nofile=256:4096")
        .arg(bin("rtmd"))
        .arg("--config")
        .arg(&path)
        .args(["--bus-address", &bus.address, "--log", "stderr"]);
    let mut rtmd = Proc::spawn("rtmd", cmd, true);
    rtmd.wait_line("ready on");
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", rtmd.child.id())).unwrap();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert_eq!(
        open_files.split_whitespace().collect::<Vec<_>>(),
        ["Max", "open", "files", "4096", "4096", "files"]
    );
    assert!(
        rtmd.text()
            .contains("open files limit raised from 256 to 4096"),
        "{}",
        rtmd.text()
    );
    assert!(rtmd.signal_and_wait("TERM").success());
}

/// The configs `--check` accepts start: the shipped examples (their devices, ports and
/// folders moved into a temporary folder) and configs at the edges of every bound `--check`
/// applies (the largest periods, the longest unix socket path, setpoints at the registers'
/// limits). Each must reach READY and stop cleanly.
#[test]
fn every_config_check_accepts_starts() {
    let bus = Bus::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let mut corpus: Vec<(String, String)> = Vec::new();
    for example in std::fs::read_dir("config").unwrap() {
        let path = example.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") || path.ends_with("demo.toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("/var/log/rtmd", &format!("{d}/log"))
            .replace("/var/lib/rtmd", &format!("{d}/lib"))
            .replace("/dev/rtm", &format!("{d}/dev"))
            .replace("/etc/rtmd", &format!("{d}/etc"))
            .replace("127.0.0.1:2000", "127.0.0.1:0")
            .replace("127.0.0.1:10809", "127.0.0.1:0");
        corpus.push((path.display().to_string(), text));
    }
    let supply = |backend: &str, range: &str, amps: &str, extra: &str| {
        format!(
            "name = \"edge-1\"\n[power]\nbackend = \"{backend}\"\ndevice = \"{d}/psu\"\n\
             voltage = 5.0\ncurrent_limit = 1.0\nmax_current = {amps}\nvoltage_range = {range}\n\
             {extra}"
        )
    };
    let unix = format!("{d}/{}", "s".repeat(107 - d.len() - 1));
    for (name, text) in [
        (
            "dpm86xx at its registers' limits, slowest periods",
            supply(
                "dpm86xx",
                "[0.0, 655.35]",
                "65.535",
                "poll_ms = 3600000\ncycle_off_ms = 600000\ntimeout_ms = 300000\n\
                 retry_backoff_ms = 60000\nretries = 10\n",
            ),
        ),
        (
            "riden at its registers' limits, fastest periods",
            supply(
                "riden",
                "[0.0, 65.535]",
                "655.35",
                "poll_ms = 100\ncycle_off_ms = 1\ntimeout_ms = 1\nretry_backoff_ms = 0\n",
            ),
        ),
        (
            "a unix socket path of 107 bytes",
            format!("name = \"edge-2\"\n[console]\ndevice = \"{d}/console\"\nunix = \"{unix}\"\n"),
        ),
    ] {
        corpus.push((name.to_string(), text));
    }
    for (name, text) in corpus {
        let path = dir.path().join("board.toml");
        std::fs::write(&path, &text).unwrap();
        let out = rtmd_check(&path);
        assert!(out.status.success(), "{name}: {}", text_of(&out));
        let mut rtmd = Daemon::spawn(&bus.address, &path);
        rtmd.wait_line("ready on");
        assert!(
            rtmd.signal_and_wait("TERM").success(),
            "{name}: {}",
            rtmd.text()
        );
    }
}

fn text_of(out: &std::process::Output) -> String {
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}

/// `rtmd --demo` run as root (as the README says): a local user who is not root, reaching
/// the board's console through the demo's loopback telnet port and logging in, gets a shell
/// that is not root's.
#[test]
fn the_demo_boards_shell_is_not_root_for_a_console_client() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test checks what the demo run as root hands out: run the suite as root"
    );
    require("setpriv");
    require("socat");
    let (mut demo, address) = start_demo();
    assert!(
        demo.wait_line("every local user can reach the board's console")
            .ends_with("its shell runs as nobody"),
        "{}",
        demo.text()
    );
    demo.wait_line("ready on");
    let power = Command::new(bin("rtmctl"))
        .args(["--bus-address", &address, "--dut", "demo", "power", "on"])
        .output()
        .unwrap();
    assert_eq!(ok_line(&power), "demo: power on");
    let out = wait_for_call(&address, "demo", "demo login: ", 20000)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let tcp = busctl(
        &address,
        &[
            "get-property",
            "org.rtmd.Dut1.demo",
            "/org/rtmd/Dut1",
            "org.rtmd.Dut1.Console",
            "TcpAddress",
        ],
    );
    let tcp = text(&tcp.stdout);
    let tcp = tcp.trim().trim_start_matches("s ").trim_matches('"');
    let mut client = Command::new("setpriv");
    client
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "socat",
            "-",
        ])
        .arg(format!("TCP:{tcp}"));
    let mut client = Proc::spawn_stdin("socat as nobody", client);
    // Keys typed with the user name are the shell's first input (the prompt ends no line).
    client.send("root\r\nid\r\n");
    let id = client.wait_line("uid=");
    assert!(id.contains("uid=65534(nobody)"), "{id}");
    assert!(!id.contains("(root)"), "{id}");
    drop(client);
    assert!(demo.signal_and_wait("INT").success());
}

/// The harness's `free_port` never hands out a port twice, from any thread, and each one is
/// free when handed out (the kernel's own pick, port 0, could repeat once closed).
#[test]
fn free_port_hands_out_each_port_once() {
    let threads: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(|| (0..100).map(|_| free_port()).collect::<Vec<_>>()))
        .collect();
    let mut ports: Vec<u16> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    for p in &ports {
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok(),
            "{p}"
        );
    }
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 400);
}

/// A bus named on rtmctl's command line beats one from the environment: with `RTM_BUS`
/// exported (as after the demo's advice), `--bus-address` still reaches the board; an address
/// from `RTM_BUS_ADDRESS` does not override `--bus`; both flags at once are one usage line.
#[test]
fn rtmctl_bus_flags_beat_the_environment() {
    let bus = Bus::start();
    let config = "name = \"env-1\"\n[power]\nbackend = \"command\"\non_command = \"true\"\n\
                  off_command = \"true\"\n";
    let _d = Daemon::start(&bus, config);
    let rtmctl = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = Command::new(bin("rtmctl"));
        cmd.args(args)
            .env_remove("RTM_DUT")
            .env_remove("RTM_BUS")
            .env_remove("RTM_BUS_ADDRESS")
            .env_remove("DBUS_SESSION_BUS_ADDRESS");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let out = rtmctl(
        &[
            "--bus-address",
            &bus.address,
            "--dut",
            "env-1",
            "power",
            "on",
        ],
        &[("RTM_BUS", "session")],
    );
    assert_eq!(ok_line(&out), "env-1: power on");
    // `--bus session` wins over an address in the environment: the session bus (none here,
    // DBUS_SESSION_BUS_ADDRESS removed) is what it tries, not the board's bus.
    let out = rtmctl(
        &["--bus", "session", "--dut", "env-1", "power", "on"],
        &[("RTM_BUS_ADDRESS", &bus.address)],
    );
    let line = err_line(&out, 1);
    assert!(line.contains("cannot connect to the session bus"), "{line}");
    let out = rtmctl(
        &[
            "--bus",
            "system",
            "--bus-address",
            &bus.address,
            "--dut",
            "env-1",
            "power",
            "on",
        ],
        &[],
    );
    let line = err_line(&out, 2);
    assert!(
        line.contains("'--bus-address' cannot be used with '--bus'"),
        "{line}"
    );
}
