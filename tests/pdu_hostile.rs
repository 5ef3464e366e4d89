//! The pdudaemon API under hostile peers, against the real daemon on loopback: half-sent
//! requests (the peer stops, or closes early) are answered and never executed; a flood of
//! ~1,100 half-sent connections is capped (the listener's descriptors stay bounded) while
//! power over D-Bus keeps working; oversized and malformed requests get 414, 431, 405, 400.
//! The board's power is the `command` backend, which appends every switch to a file: that
//! file is the count of what was executed.
//!
//! Waits are on events (an answer arriving, a file's content), never on fixed delays; the
//! read deadline (10 s) is the daemon's, and the test waits for its answer.

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
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};

use common::*;

/// The half of a request a stalled peer sends: the request line and a header, no blank line.
const HALF: &[u8] = b"GET /power/control/on?hostname=lab-pdu&port=3 HTTP/1.1\r\nHost: x\r\n";
/// The listener's connection cap (`rtmd::pdu::MAX_CONNECTIONS`).
const CAP: usize = rtmd::pdu::MAX_CONNECTIONS;

struct Rig {
    d: Daemon,
    http: u16,
    tcp: u16,
    switches: PathBuf,
}

/// A board whose power is a command appending `on`/`off` to `switches`, with both
/// pdudaemon listeners.
fn rig(bus: &Bus) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let switches = dir.path().join("switches");
    let state = dir.path().join("state");
    std::fs::write(&state, "off\n").unwrap();
    let (http, tcp) = (free_port(), free_port());
    let (w, s) = (switches.display(), state.display());
    let config = format!(
        "name = \"rpi4-01\"\n[power]\nbackend = \"command\"\n\
         on_command = \"echo on >> {w}; echo on > {s}\"\n\
         off_command = \"echo off >> {w}; echo off > {s}\"\n\
         status_command = \"cat {s}\"\ncycle_off_ms = 10\n\
         [pdudaemon_api]\nlisten = \"127.0.0.1:{http}\"\nlisten_tcp = \"127.0.0.1:{tcp}\"\n\
         hostname = \"lab-pdu\"\nport = 3\n"
    );
    let d = Daemon::start_in(bus, &config, dir);
    Rig {
        d,
        http,
        tcp,
        switches,
    }
}

/// Every switch the power backend ran, in order.
fn switches(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    // Only so that a broken daemon fails the test instead of hanging it.
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s
}

/// Everything the daemon sends until it closes (or resets) the connection.
fn answer(mut s: TcpStream) -> String {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// One complete HTTP request; the daemon's answer.
fn request(port: u16, head: &[u8]) -> String {
    let mut s = connect(port);
    s.write_all(head).unwrap();
    answer(s)
}

fn status_line(answer: &str) -> &str {
    answer.lines().next().unwrap_or("")
}

/// rtmd's open descriptors.
fn descriptors(d: &Daemon) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", d.proc.child.id()))
        .unwrap()
        .count()
}

/// The soft descriptor limit raised to the hard one: the flood needs more than 1,024.
fn raise_nofile() {
    use nix::libc::{RLIMIT_NOFILE, getrlimit, rlimit, setrlimit};
    let mut limit = rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: both calls read or write the one struct passed, which outlives them.
    unsafe {
        assert_eq!(getrlimit(RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(setrlimit(RLIMIT_NOFILE, &limit), 0);
    }
    assert!(
        limit.rlim_cur >= 2400,
        "the hard limit {} is too low",
        limit.rlim_cur
    );
}

#[test]
fn half_sent_requests_are_answered_and_never_executed() {
    let bus = Bus::start();
    let mut r = rig(&bus);

    // Peers that stop half-way and wait: 408 once the read deadline passes.
    let stalled: Vec<TcpStream> = (0..12)
        .map(|_| {
            let mut s = connect(r.http);
            s.write_all(HALF).unwrap();
            s
        })
        .collect();
    // Peers that send half and close their side: 400 at once.
    for _ in 0..4 {
        let mut s = connect(r.http);
        s.write_all(HALF).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let a = answer(s);
        assert_eq!(status_line(&a), "HTTP/1.1 400 Bad Request", "{a}");
        assert!(a.contains("incomplete request"), "{a}");
    }
    // A legacy peer that connects and sends nothing: nack at the deadline.
    let silent = connect(r.tcp);
    for s in stalled {
        let a = answer(s);
        assert_eq!(status_line(&a), "HTTP/1.1 408 Request Timeout", "{a}");
        assert!(a.contains("nothing was done"), "{a}");
    }
    assert_eq!(answer(silent), "nack\n");
    assert!(
        switches(&r.switches).is_empty(),
        "a half-sent request was executed: {:?}",
        switches(&r.switches)
    );
    // Each refusal was logged with its peer (at most one line a second).
    r.d.proc.wait_line("refused: 408");

    // A whole request still works, and is audited with the peer's address.
    let a = request(r.http, &[HALF, b"\r\n"].concat());
    assert_eq!(status_line(&a), "HTTP/1.1 200 OK", "{a}");
    assert_eq!(switches(&r.switches), ["on"]);
    r.d.proc
        .wait_line("Power.On() by no uid: ok (via pdudaemon-api \"pdudaemon-api\" http 127.0.0.1:");
    assert!(r.d.proc.is_running());
}

#[test]
fn a_flood_of_half_sent_connections_is_capped_and_power_still_works() {
    raise_nofile();
    let bus = Bus::start();
    let mut r = rig(&bus);
    let before = descriptors(&r.d);

    // ~1,100 peers each send half a request and hold on: more than rtmd's 1,024 descriptors
    // would allow if each cost one.
    let flood: Vec<TcpStream> = (0..1100)
        .map(|_| {
            let mut s = connect(r.http);
            // The daemon may already have turned this one away and closed it.
            let _ = s.write_all(HALF);
            s
        })
        .collect();
    // The listener holds at most CAP of them (plus a descriptor or two in passing).
    let during = descriptors(&r.d);
    assert!(
        during <= before + CAP + 2,
        "{during} descriptors during the flood, {before} before (cap {CAP})"
    );

    // Power over D-Bus works meanwhile.
    assert_eq!(ok_line(&r.d.rtmctl(&["power", "on"])), "rpi4-01: power on");
    assert_eq!(switches(&r.switches), ["on"]);

    // Every flooding peer gets an answer or a close; none of their requests ran.
    let mut timed_out = 0;
    for s in flood {
        let a = answer(s);
        match status_line(&a) {
            "HTTP/1.1 408 Request Timeout" => timed_out += 1,
            "" | "HTTP/1.1 503 Service Unavailable" => {}
            other => panic!("unexpected answer {other:?}"),
        }
    }
    // The first CAP peers held a slot each until the deadline (more, if making the flood
    // outlasted it and slots came free); the others were turned away at once.
    assert!(timed_out >= CAP, "{timed_out} peers timed out");
    assert_eq!(switches(&r.switches), ["on"]);
    // And afterwards the listener serves again.
    let a = request(
        r.http,
        b"GET /power/control/off?hostname=lab-pdu&port=3 HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert_eq!(status_line(&a), "HTTP/1.1 200 OK", "{a}");
    assert_eq!(switches(&r.switches), ["on", "off"]);
    r.d.proc.wait_line("connections are being served already");
    assert!(r.d.proc.is_running());
}

#[test]
fn oversized_and_malformed_requests_are_refused_with_their_status() {
    require("curl");
    let bus = Bus::start();
    let mut r = rig(&bus);
    let base = format!("http://127.0.0.1:{}/power/control", r.http);
    let curl = |args: &[&str]| {
        let out = std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(args)
            .output()
            .unwrap();
        text(&out.stdout)
    };
    // A request line of 3,000 bytes: 414. A head of 9,000 bytes: 431.
    let long = format!("{base}/on?hostname=lab-pdu&port=3&pad={}", "a".repeat(3000));
    assert_eq!(curl(&[&long]), "414");
    let big = format!("X-Pad: {}", "b".repeat(9000));
    assert_eq!(
        curl(&["-H", &big, &format!("{base}/on?hostname=lab-pdu&port=3")]),
        "431"
    );
    // A delay past the maximum, a NUL, bytes that are not UTF-8 once decoded: 400.
    let (code, body) = {
        let out = std::process::Command::new("curl")
            .args(["-s", "-w", "\n%{http_code}"])
            .arg(format!("{base}/reboot?hostname=lab-pdu&port=3&delay=600"))
            .output()
            .unwrap();
        let t = text(&out.stdout);
        let (body, code) = t.rsplit_once('\n').unwrap();
        (code.to_string(), body.to_string())
    };
    assert_eq!(code, "400");
    assert!(body.contains("outside 0..30 s"), "{body}");
    for q in [
        "hostname=lab%00pdu&port=3",
        "hostname=%ff&port=3",
        "port=3&port=3&hostname=lab-pdu",
    ] {
        assert_eq!(curl(&[&format!("{base}/on?{q}")]), "400", "{q}");
    }
    // By hand: a method, garbage, a NUL in a header.
    for (head, status) in [
        (
            &b"POST /power/control/on?hostname=lab-pdu&port=3 HTTP/1.1\r\n\r\n"[..],
            "405 Method Not Allowed",
        ),
        (
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
            "400 Bad Request",
        ),
        (
            b"GET /power/control/on?hostname=lab-pdu&port=3 HTTP/1.1\r\nX: a\x00b\r\n\r\n",
            "400 Bad Request",
        ),
    ] {
        let a = request(r.http, head);
        assert_eq!(status_line(&a), format!("HTTP/1.1 {status}"), "{head:?}");
    }
    // Headers that never end (16 KiB of them, then the peer stops sending): 431.
    let mut s = connect(r.http);
    s.write_all(b"GET /power/control/on?hostname=lab-pdu&port=3 HTTP/1.1\r\n")
        .unwrap();
    for _ in 0..400 {
        s.write_all(b"X-Endless: cccccccccccccccccccccccccccc\r\n")
            .unwrap();
    }
    s.shutdown(Shutdown::Write).unwrap();
    let a = answer(s);
    assert_eq!(
        status_line(&a),
        "HTTP/1.1 431 Request Header Fields Too Large",
        "{a}"
    );
    // Legacy: an oversized line, a NUL, a delay past the maximum: nack.
    for line in [
        format!("lab-pdu 3 on {}", " ".repeat(300)),
        "lab-pdu 3 o\0n".to_string(),
        "lab-pdu 3 reboot 600".to_string(),
    ] {
        let mut s = connect(r.tcp);
        s.write_all(line.as_bytes()).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        assert_eq!(answer(s), "nack\n", "{line:?}");
    }
    assert!(
        switches(&r.switches).is_empty(),
        "{:?}",
        switches(&r.switches)
    );
    // The daemon is unharmed and serves.
    let mut s = connect(r.tcp);
    s.write_all(b"lab-pdu 3 on").unwrap();
    assert_eq!(answer(s), "ack\n");
    assert_eq!(switches(&r.switches), ["on"]);
    assert!(r.d.proc.is_running());
}
