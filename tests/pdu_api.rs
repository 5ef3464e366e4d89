//! rtmd's pdudaemon-compatible API. The real `pduclient` (pdudaemon 1.1.1's, fetched by
//! scripts/pduclient-setup: Debian ships only the daemon) against rtmd in a network namespace
//! of the test's own, since pduclient always connects to port 16421; and the same requests
//! made with curl (HTTP) and socat (pdudaemon's legacy TCP line) on free ports, switching the
//! simulated strip, with the bad requests.

// A test fails by panicking: unwrap, expect, panic and indexing are how it says so.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::string_slice
)]

mod common;

use std::process::{Command, Stdio};

use common::*;

fn curl(url: &str) -> (String, String) {
    require("curl");
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", url])
        .output()
        .unwrap();
    let text = text(&out.stdout);
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.to_string(), body.trim().to_string())
}

fn legacy(port: u16, line: &str) -> String {
    require("socat");
    let mut child = Command::new("socat")
        .args(["-t", "30", "-", &format!("TCP:127.0.0.1:{port}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Like pduclient: the line without a newline, then wait for the answer.
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), line.as_bytes()).unwrap();
    text(&child.wait_with_output().unwrap().stdout)
}

/// The path of pdudaemon's real client (scripts/pduclient-setup).
fn pduclient() -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/pduclient-setup");
    let out = Command::new(script).output().unwrap();
    assert!(
        out.status.success(),
        "scripts/pduclient-setup failed: {}",
        text(&out.stderr)
    );
    text(&out.stdout).trim().to_string()
}

#[test]
fn the_real_pduclient_switches_the_board_over_http_and_the_legacy_protocol() {
    // A network namespace needs root; CI runs as root, like the other namespace tests.
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test makes a network namespace: run the suite as root (scripts/test)"
    );
    require("unshare");
    require("nsenter");
    require("ip");
    let client = pduclient();
    let bus = Bus::start();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("outlet");
    std::fs::write(&state, "off\n").unwrap();
    let s = state.display();
    // pduclient has no port option: HTTP and the legacy protocol both go to port 16421, so
    // they listen on two loopback addresses (on a dispatcher: two addresses, or one of them).
    let config = format!(
        "name = \"rpi4-01\"\n[power]\nbackend = \"command\"\non_command = \"echo on > {s}\"\n\
         off_command = \"echo off > {s}\"\nstatus_command = \"cat {s}\"\ncycle_off_ms = 10\n\
         [pdudaemon_api]\nlisten = \"127.0.0.1:16421\"\nlisten_tcp = \"127.0.0.2:16421\"\n\
         hostname = \"lab-pdu\"\nport = 3\n"
    );
    let path = dir.path().join("board.toml");
    std::fs::write(&path, config).unwrap();
    // rtmd in a network namespace of its own (the D-Bus socket is a path: reachable from
    // it), loopback up; `exec` keeps its pid, whose namespace pduclient then enters.
    let mut cmd = Command::new("unshare");
    cmd.args(["-n", "sh", "-c", "ip link set lo up && exec \"$0\" \"$@\""])
        .arg(bin("rtmd"))
        .arg("--config")
        .arg(&path)
        .args(["--bus-address", &bus.address, "--log", "stderr"])
        .env("RUST_LOG", "info");
    let mut rtmd = Proc::spawn("rtmd", cmd, true);
    rtmd.wait_line("ready on");
    let netns = format!("--net=/proc/{}/ns/net", rtmd.child.id());
    let run = |daemon: &str, http: bool, hostname: &str, command: &str| {
        let mut cmd = Command::new("nsenter");
        cmd.arg(&netns).args(["python3", &client]);
        if http {
            cmd.arg("-H");
        }
        cmd.args(["--daemon", daemon, "--hostname", hostname, "--port", "3"])
            .args(["--command", command]);
        let out = cmd.output().unwrap();
        (out.status.code(), text(&out.stdout).trim().to_string())
    };
    let outlet = || std::fs::read_to_string(&state).unwrap().trim().to_string();
    let ok = (Some(0), "Command sent successfully.".to_string());

    assert_eq!(run("127.0.0.1", true, "lab-pdu", "on"), ok);
    assert_eq!(outlet(), "on");
    assert_eq!(run("127.0.0.2", false, "lab-pdu", "off"), ok);
    assert_eq!(outlet(), "off");
    assert_eq!(run("127.0.0.1", true, "lab-pdu", "reboot"), ok);
    assert_eq!(outlet(), "on");
    // What it says when rtmd refuses: another PDU, over either protocol; nothing switched.
    let (code, line) = run("127.0.0.1", true, "other-pdu", "off");
    assert_eq!(code, Some(127), "{line}");
    assert!(line.contains("404"), "{line}");
    let (code, line) = run("127.0.0.2", false, "other-pdu", "off");
    assert_eq!(
        (code, line.as_str()),
        (Some(127), "Error sending command! 127.0.0.2 replied: nack")
    );
    assert_eq!(outlet(), "on");
    assert!(rtmd.is_running());
}

#[test]
fn pdudaemon_requests_switch_the_board() {
    let bus = Bus::start();
    let (strip, strip_port) = strip(&[]);
    let (http, tcp) = (free_port(), free_port());
    let config = format!(
        "name = \"rpi4-01\"\n[power]\nbackend = \"egpms\"\nhost = \"127.0.0.1\"\nport = {strip_port}\n\
         outlet = 3\ncycle_off_ms = 10\n[pdudaemon_api]\nlisten = \"127.0.0.1:{http}\"\n\
         listen_tcp = \"127.0.0.1:{tcp}\"\nhostname = \"lab-pdu\"\nport = 3\n"
    );
    let mut d = Daemon::start(&bus, &config);
    let base = format!("http://127.0.0.1:{http}/power/control");

    assert_eq!(
        curl(&format!("{base}/on?hostname=lab-pdu&port=3")),
        ("200".into(), "OK - accepted request".into())
    );
    assert_eq!(strip.matching("outlet"), ["outlet 3 on"]);
    assert_eq!(
        ok_line(&d.rtmctl(&["power", "status"])),
        "rpi4-01: power on"
    );
    strip.clear();
    assert_eq!(
        curl(&format!("{base}/reboot?hostname=lab-pdu&port=3&delay=0.05")).0,
        "200"
    );
    assert_eq!(strip.matching("outlet"), ["outlet 3 off", "outlet 3 on"]);
    strip.clear();
    assert_eq!(legacy(tcp, "lab-pdu 3 off"), "ack\n");
    assert_eq!(strip.matching("outlet"), ["outlet 3 off"]);

    // Bad requests: a 4xx with a reason, nothing switched, the daemon unharmed.
    strip.clear();
    let (code, body) = curl(&format!("{base}/on?hostname=other-pdu&port=3"));
    assert_eq!(code, "404");
    assert!(
        body.contains("this rtmd serves lab-pdu port 3 only"),
        "{body}"
    );
    let (code, body) = curl(&format!("{base}/on?hostname=lab-pdu&port=4"));
    assert_eq!(
        (code.as_str(), body.contains("no PDU lab-pdu port 4")),
        ("404", true),
        "{body}"
    );
    let (code, body) = curl(&format!("{base}/explode?hostname=lab-pdu&port=3"));
    assert_eq!(
        (code.as_str(), body.contains("unknown command")),
        ("400", true),
        "{body}"
    );
    let (code, _) = curl(&format!("{base}/on?hostname=lab-pdu&port=abc"));
    assert_eq!(code, "400");
    let (code, _) = curl(&format!("http://127.0.0.1:{http}/"));
    assert_eq!(code, "404");
    assert_eq!(legacy(tcp, "lab-pdu 3 explode"), "nack\n");
    assert_eq!(legacy(tcp, "garbage"), "nack\n");
    assert!(strip.matching("outlet").is_empty(), "{}", strip.text());
    assert!(d.proc.is_running());
}

#[test]
fn a_pdudaemon_api_without_power_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.toml");
    std::fs::write(
        &path,
        "name = \"b\"\n[pdudaemon_api]\nlisten = \"127.0.0.1:16421\"\n",
    )
    .unwrap();
    let out = rtmd_check(&path);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("[pdudaemon_api] needs a [power] section"),
        "{}",
        text(&out.stderr)
    );
}
