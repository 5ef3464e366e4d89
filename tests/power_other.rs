//! The pdudaemon backend against Debian's real pdudaemon (localcmdline driver), and the
//! command backend, both end to end through rtmd.

// A test fails by panicking: unwrap, expect, panic and indexing are how it says so.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::string_slice
)]

mod common;

use std::net::TcpStream;
use std::process::Command;

use common::*;

struct Pdudaemon {
    _proc: Proc,
    port: u16,
    events: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// Debian's pdudaemon on a free loopback port, with one PDU `lab-pdu` whose driver appends
/// "on N" / "off N" to a file.
fn pdudaemon() -> Pdudaemon {
    require("/usr/sbin/pdudaemon");
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events");
    let port = free_port();
    let conf = format!(
        r#"{{ "daemon": {{"hostname": "127.0.0.1", "port": {port}, "listener": "http", "logging_level": "INFO"}},
  "pdus": {{ "lab-pdu": {{ "driver": "localcmdline",
      "cmd_on":  "echo on %s >> {e}",
      "cmd_off": "echo off %s >> {e}" }} }} }}"#,
        e = events.display()
    );
    let conf_path = dir.path().join("pdudaemon.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let mut cmd = Command::new("/usr/sbin/pdudaemon");
    cmd.arg("--conf").arg(&conf_path);
    let proc = Proc::spawn("pdudaemon", cmd, true);
    eventually("pdudaemon listens", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    Pdudaemon {
        _proc: proc,
        port,
        events,
        _dir: dir,
    }
}

fn events(p: &Pdudaemon) -> Vec<String> {
    std::fs::read_to_string(&p.events)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn switches_through_a_real_pdudaemon() {
    let pdu = pdudaemon();
    let bus = Bus::start();
    let config = format!(
        "name = \"lava-rpi\"\n[power]\nbackend = \"pdudaemon\"\nport = {}\npdu = \"lab-pdu\"\n\
         outlet = 3\ncycle_off_ms = 10\n",
        pdu.port
    );
    let d = Daemon::start(&bus, &config);
    // pdudaemon cannot report a port's state: unknown until the first switch.
    assert_eq!(
        ok_line(&d.rtmctl(&["power", "status"])),
        "lava-rpi: power unknown"
    );
    assert_eq!(ok_line(&d.rtmctl(&["power", "on"])), "lava-rpi: power on");
    // pdudaemon answers after its driver ran: the switch has happened when rtmctl returns.
    assert_eq!(events(&pdu), ["on 3"]);
    assert_eq!(
        ok_line(&d.rtmctl(&["power", "cycle"])),
        "lava-rpi: power on"
    );
    assert_eq!(events(&pdu), ["on 3", "off 3", "on 3"]);
    let line = err_line(&d.rtmctl(&["power", "voltage", "5"]), 2);
    assert!(line.contains("switches power only"), "{line}");
}

#[test]
fn an_unknown_pdu_is_refused_by_pdudaemon() {
    let pdu = pdudaemon();
    let bus = Bus::start();
    let config = format!(
        "name = \"b\"\n[power]\nbackend = \"pdudaemon\"\nport = {}\npdu = \"nope\"\noutlet = 1\n",
        pdu.port
    );
    let mut d = Daemon::start(&bus, &config);
    let line = err_line(&d.rtmctl(&["power", "on"]), 1);
    assert!(
        line.contains("refused on of nope port 1: HTTP 500"),
        "{line}"
    );
    assert!(events(&pdu).is_empty());
    assert!(d.proc.is_running());
}

#[test]
fn command_backend_runs_and_confirms() {
    let bus = Bus::start();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("relay");
    let config = format!(
        "name = \"relay-1\"\n[power]\nbackend = \"command\"\non_command = \"echo on > {s}\"\n\
         off_command = \"echo off > {s}\"\nstatus_command = \"cat {s} 2>/dev/null || echo off\"\n",
        s = state.display()
    );
    let d = Daemon::start_in(&bus, &config, dir);
    d.proc.wait_line("initial state off");
    assert_eq!(ok_line(&d.rtmctl(&["power", "on"])), "relay-1: power on");
    assert_eq!(std::fs::read_to_string(&state).unwrap(), "on\n");
    assert_eq!(ok_line(&d.rtmctl(&["power", "off"])), "relay-1: power off");
}

#[test]
fn a_hanging_command_times_out() {
    let bus = Bus::start();
    let config = "name = \"relay-2\"\n[power]\nbackend = \"command\"\non_command = \"sleep 60\"\n\
                  off_command = \"true\"\ntimeout_ms = 300\nretries = 0\n";
    let mut d = Daemon::start(&bus, config);
    let line = err_line(&d.rtmctl(&["power", "on"]), 1);
    assert!(line.contains("within 300 ms"), "{line}");
    let out = d.dbus_send("org.rtmd.Dut1.Power.On", &[]);
    assert!(
        text(&out.stderr).contains("org.rtmd.Dut1.Error.Timeout"),
        "{}",
        text(&out.stderr)
    );
    assert!(d.proc.is_running());
}
