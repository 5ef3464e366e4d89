//! rtmctl as LAVA's device-dictionary hooks (docs/lava.md, contrib/lava/), without LAVA:
//! every power hook prints one line and exits 0 once the hardware confirmed, or one line on
//! stderr and non-zero; and hooks of two jobs racing on one board (two LAVA devices wired to
//! one board by mistake, or a person at `rtmctl` during a job) are served one at a time.
//!
//! The strip is rtm-sim's; between rtmd and it sits a small proxy that counts the strip
//! sessions open at once, since the simulated strip (like the real one) queues a second
//! client silently and so would hide an overlap. No test asserts on timing; the times are
//! printed (`cargo test --test hooks -- --nocapture`).

// A test fails by panicking: unwrap, expect, panic and indexing are how it says so.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::string_slice
)]

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::*;

const BOARD: &str = "rpi4-01";

/// How many strip sessions a [`SessionProxy`] saw, and how many at once at most.
#[derive(Default)]
struct Sessions {
    total: AtomicUsize,
    max_open: AtomicUsize,
    stop: AtomicBool,
}

/// A TCP proxy in front of the strip, on one thread, that counts sessions. A session is open
/// from the accept of rtmd's connection until rtmd closes it. rtmd closes one session before
/// it connects the next, and on loopback its FIN reaches the proxy's socket before the next
/// SYN, so the proxy re-reads every open session after each accept before counting: an EOF
/// already sent is seen, and only a real overlap counts two.
struct SessionProxy {
    port: u16,
    sessions: Arc<Sessions>,
}

struct Session {
    client: TcpStream,
    strip: TcpStream,
    strip_done: bool,
}

impl SessionProxy {
    fn start(strip_port: u16) -> SessionProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let sessions = Arc::new(Sessions::default());
        let shared = sessions.clone();
        std::thread::spawn(move || {
            let mut open: Vec<Session> = Vec::new();
            while !shared.stop.load(Ordering::Relaxed) {
                pump(&mut open);
                wait_readable(&listener, &open);
                match listener.accept() {
                    Ok((client, _)) => {
                        pump(&mut open);
                        // A strip gone: rtmd's session ends at once.
                        let Ok(strip) = TcpStream::connect(("127.0.0.1", strip_port)) else {
                            continue;
                        };
                        client.set_nonblocking(true).unwrap();
                        strip.set_nonblocking(true).unwrap();
                        open.push(Session {
                            client,
                            strip,
                            strip_done: false,
                        });
                        shared.total.fetch_add(1, Ordering::Relaxed);
                        shared.max_open.fetch_max(open.len(), Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => panic!("proxy accept: {e}"),
                }
            }
        });
        SessionProxy { port, sessions }
    }

    fn total(&self) -> usize {
        self.sessions.total.load(Ordering::Relaxed)
    }

    fn max_open(&self) -> usize {
        self.sessions.max_open.load(Ordering::Relaxed)
    }
}

impl Drop for SessionProxy {
    fn drop(&mut self) {
        self.sessions.stop.store(true, Ordering::Relaxed);
    }
}

/// Waits until the listener or a session has something to read (a connection, bytes, an
/// EOF). The timeout only lets the thread see `stop`.
fn wait_readable(listener: &TcpListener, open: &[Session]) {
    use std::os::fd::AsRawFd;
    let mut fds: Vec<nix::libc::pollfd> = std::iter::once(listener.as_raw_fd())
        .chain(open.iter().map(|s| s.client.as_raw_fd()))
        // A strip side at EOF stays readable: watching it would spin.
        .chain(
            open.iter()
                .filter(|s| !s.strip_done)
                .map(|s| s.strip.as_raw_fd()),
        )
        .map(|fd| nix::libc::pollfd {
            fd,
            events: nix::libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: poll reads and writes `fds.len()` pollfd structs in the vector, which
    // outlives the call.
    unsafe { nix::libc::poll(fds.as_mut_ptr(), fds.len() as nix::libc::nfds_t, 100) };
}

/// Moves what is waiting in both directions of every session; drops the sessions rtmd closed.
fn pump(open: &mut Vec<Session>) {
    open.retain_mut(|s| {
        if !s.strip_done {
            match forward(&mut s.strip, &mut s.client) {
                Some(true) => {}
                Some(false) | None => {
                    s.strip_done = true;
                    let _ = s.client.shutdown(Shutdown::Write);
                }
            }
        }
        match forward(&mut s.client, &mut s.strip) {
            Some(true) => true,
            // rtmd closed (or reset) its side: the session is over.
            Some(false) | None => {
                let _ = s.strip.shutdown(Shutdown::Write);
                false
            }
        }
    });
}

/// Copies what `from` has ready to `to`. Some(true): still open; Some(false): EOF; None:
/// an error.
fn forward(from: &mut TcpStream, to: &mut TcpStream) -> Option<bool> {
    let mut buf = [0u8; 256];
    loop {
        match from.read(&mut buf) {
            Ok(0) => return Some(false),
            Ok(n) => {
                // A few bytes at a time: a loopback socket's buffer never fills.
                to.write_all(&buf[..n]).ok()?;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Some(true),
            Err(_) => return None,
        }
    }
}

/// A plain simulated strip (no board), a session-counting proxy in front of it, and rtmd
/// switching its outlet 2 through the proxy, with `power` added to its `[power]` section.
struct StripLab {
    daemon: Daemon,
    proxy: SessionProxy,
    strip: Proc,
    _bus: Bus,
}

impl StripLab {
    fn start(power: &str) -> StripLab {
        let bus = Bus::start();
        let (strip, port) = strip(&[]);
        let proxy = SessionProxy::start(port);
        let daemon = Daemon::start(&bus, &egpms_config(proxy.port, power));
        // rtmd reads the state once at start; wait for it so that it counts as one session.
        daemon.proc.wait_line("initial state");
        StripLab {
            daemon,
            proxy,
            strip,
            _bus: bus,
        }
    }

    /// rtmd's log lines, without colours.
    fn log(&self) -> Vec<String> {
        self.daemon.proc.settle();
        self.daemon
            .proc
            .lines
            .lock()
            .unwrap()
            .iter()
            .map(|l| plain_log(l))
            .collect()
    }
}

/// rtmd switching outlet 2 of the strip at `port`, with `power` added to `[power]`.
fn egpms_config(port: u16, power: &str) -> String {
    format!(
        "name = \"{BOARD}\"\n[power]\nbackend = \"egpms\"\nhost = \"127.0.0.1\"\nport = {port}\n\
         outlet = 2\n{power}"
    )
}

/// rtmctl as LAVA runs it: the board, the bus, the command; nothing from the environment.
fn rtmctl(bus: &str, args: &[&str]) -> Output {
    Command::new(bin("rtmctl"))
        .args(["--bus-address", bus, "--dut", BOARD])
        .args(args)
        .env_remove("RTM_DUT")
        .env_remove("RTM_BUS")
        .env_remove("RTM_BUS_ADDRESS")
        .output()
        .unwrap()
}

fn timed(f: impl FnOnce() -> Output) -> (Output, Duration) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed())
}

/// Two jobs' hooks at once on one board: 12 rtmctl processes (on, off, cycle, four times
/// each) released together. Every one gets its confirmed line; rtmd runs them one after
/// another, one strip session per switch, never two sessions at once, without a retry; and
/// `power status` afterwards is what the last confirmed switch left.
#[test]
fn racing_hooks_on_one_board_are_served_one_at_a_time() {
    let lab = StripLab::start("cycle_off_ms = 50\n");
    let actions: Vec<&str> = ["on", "off", "cycle"].repeat(4);
    let barrier = Arc::new(Barrier::new(actions.len()));
    let start = Instant::now();
    let calls: Vec<_> = actions
        .iter()
        .map(|action| {
            let barrier = barrier.clone();
            let bus = lab.daemon.bus.clone();
            let action = action.to_string();
            std::thread::spawn(move || {
                barrier.wait();
                rtmctl(&bus, &["power", &action])
            })
        })
        .collect();
    for (action, call) in actions.iter().zip(calls) {
        let out = call.join().unwrap();
        let state = if *action == "off" { "off" } else { "on" };
        assert_eq!(ok_line(&out), format!("{BOARD}: power {state}"), "{action}");
        assert!(out.stderr.is_empty(), "{action}: {}", text(&out.stderr));
    }
    println!(
        "12 racing rtmctl calls: all confirmed after {:.0} ms",
        start.elapsed().as_secs_f64() * 1000.0
    );

    // Every switch reached the strip: on and off once each, cycle off then on.
    let switches = 4 + 4 + 2 * 4;
    eventually("the strip reported every switch", || {
        lab.strip.matching("outlet ").len() == switches
    });
    let strip_events: Vec<String> = lab
        .strip
        .matching("outlet ")
        .iter()
        .map(|l| {
            l.strip_prefix("outlet 2 ")
                .unwrap_or_else(|| panic!("another outlet switched: {l}"))
                .to_string()
        })
        .collect();
    assert!(
        lab.strip.matching("auth refused").is_empty(),
        "{}",
        lab.strip.text()
    );

    // One session each, never two at once; plus the one that read the state at start.
    assert_eq!(lab.proxy.total(), switches + 1, "{}", lab.strip.text());
    assert_eq!(
        lab.proxy.max_open(),
        1,
        "two strip sessions were open at once"
    );

    // rtmd confirmed each switch in the order the strip made them, and nothing failed or
    // was retried on the way.
    eventually("rtmd logged every switch", || {
        lab.log().iter().filter(|l| l.contains(" power o")).count() == switches
    });
    let log = lab.log();
    let confirmed: Vec<String> = log
        .iter()
        .filter_map(|l| l.split(" INFO power ").nth(1))
        .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
        // Only the confirmations ("power on", "power off"), not "power cycle: off for ...".
        .filter(|word| word == "on" || word == "off")
        .collect();
    assert_eq!(confirmed, strip_events, "{}", log.join("\n"));
    let trouble: Vec<&String> = log
        .iter()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR ") || l.contains("retrying"))
        .collect();
    assert!(trouble.is_empty(), "{}", log.join("\n"));

    // The state afterwards is the last confirmed switch's, by rtmctl and on the bus.
    let last = confirmed.last().unwrap();
    assert_eq!(
        ok_line(&rtmctl(&lab.daemon.bus, &["power", "status"])),
        format!("{BOARD}: power {last}")
    );
    assert_eq!(
        lab.daemon.property("org.rtmd.Dut1.Power", "State"),
        format!("s \"{last}\"")
    );
}

/// With the defaults (cycle_off_ms 2000, timeout_ms 5000, retries 2), each power hook a
/// dictionary uses returns, prints exactly one line, and exits 0.
#[test]
fn every_power_hook_prints_one_line_with_the_defaults() {
    let lab = StripLab::start("");
    for (args, line) in [
        (&["power", "on"][..], "power on"),
        (&["power", "status"], "power on"),
        (&["power", "cycle"], "power on"),
        (&["power", "off"], "power off"),
        (&["power", "off"], "power off"),
        (&["power", "status"], "power off"),
        (&["power", "cycle"], "power on"),
        (&["power", "cycle", "--off-ms", "100"], "power on"),
        (&["power", "off"], "power off"),
    ] {
        let (out, took) = timed(|| rtmctl(&lab.daemon.bus, args));
        assert_eq!(ok_line(&out), format!("{BOARD}: {line}"), "{args:?}");
        assert!(out.stderr.is_empty(), "{args:?}: {}", text(&out.stderr));
        println!(
            "rtmctl {}: {:.0} ms",
            args.join(" "),
            took.as_secs_f64() * 1000.0
        );
    }
    assert_eq!(lab.proxy.max_open(), 1);
}

/// A lab supply's profile hooks (user_commands do/undo) print one line each; an unknown
/// profile is refused with one line and exit 2, before anything reaches the supply.
#[test]
fn every_profile_hook_prints_one_line() {
    let bus = Bus::start();
    let dir = tempfile::tempdir().unwrap();
    let psu = dir.path().join("psu");
    let (supply, _) = sim(&[
        "dpm86xx",
        "--pty",
        psu.to_str().unwrap(),
        "--protocol",
        "ascii",
    ]);
    let config = format!(
        "name = \"{BOARD}\"\n[power]\nbackend = \"dpm86xx\"\nprotocol = \"ascii\"\ndevice = \"{}\"\n\
         voltage = 5.1\ncurrent_limit = 2.0\nvoltage_range = [4.0, 5.8]\n\
         profiles = {{ low = 4.6, nominal = 5.1, high = 5.6 }}\n",
        psu.display()
    );
    let daemon = Daemon::start(&bus, &config);
    for (profile, line) in [
        ("low", "profile low, 4.60 V"),
        ("nominal", "profile nominal, 5.10 V"),
        ("high", "profile high, 5.60 V"),
        ("nominal", "profile nominal, 5.10 V"),
    ] {
        let (out, took) = timed(|| rtmctl(&bus.address, &["power", "profile", profile]));
        assert_eq!(ok_line(&out), format!("{BOARD}: {line}"));
        assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
        println!(
            "rtmctl power profile {profile}: {:.0} ms",
            took.as_secs_f64() * 1000.0
        );
    }
    // The supply saw those four setpoints, and nothing of the refused one.
    eventually("the supply took the four setpoints", || {
        supply.matching("set voltage").len() == 4
    });
    let out = rtmctl(&bus.address, &["power", "profile", "brownout"]);
    let line = err_line(&out, 2);
    assert!(line.starts_with(&format!("rtmctl: {BOARD}: ")), "{line}");
    assert!(out.stdout.is_empty());
    println!("rtmctl power profile brownout: {line}");
    // Nothing of it reached the supply: the next setpoint is the fifth thing the supply sees.
    // Requests reach it in order, so anything the refused call had sent would come first.
    assert_eq!(
        ok_line(&rtmctl(&bus.address, &["power", "profile", "low"])),
        format!("{BOARD}: profile low, 4.60 V")
    );
    let seen: Vec<String> = supply
        .wait_lines("set voltage", 5)
        .iter()
        .map(|l| l.rsplit("set voltage ").next().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        seen,
        ["4.60", "5.10", "5.60", "5.10", "4.60"],
        "{}",
        supply.text()
    );
    drop(daemon);
}

/// When the hook cannot do its job, with the defaults, it still returns: one line on stderr
/// and exit 1, whether the strip is gone, or takes connections and never answers, or no rtmd
/// serves the board.
#[test]
fn failing_power_hooks_print_one_line_and_exit_1_with_the_defaults() {
    // No strip at the address: connections are refused.
    let port = free_port();
    let bus = Bus::start();
    let mut daemon = Daemon::start(&bus, &egpms_config(port, ""));
    daemon.proc.wait_line("cannot read the initial state");
    for action in ["on", "off", "cycle"] {
        let (out, took) = timed(|| rtmctl(&bus.address, &["power", action]));
        let line = err_line(&out, 1);
        assert!(line.starts_with(&format!("rtmctl: {BOARD}: ")), "{line}");
        assert!(out.stdout.is_empty());
        println!(
            "no strip, rtmctl power {action}: {:.0} ms: {line}",
            took.as_secs_f64() * 1000.0
        );
    }
    assert!(daemon.proc.is_running());
    drop(daemon);

    // A strip that accepts and never answers (hung, or busy with another client for good).
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let keep = std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in silent.incoming() {
            match conn {
                Ok(c) => held.push(c),
                Err(_) => break,
            }
            if held.len() > 50 {
                break;
            }
        }
    });
    let bus = Bus::start();
    let daemon = Daemon::start(&bus, &egpms_config(port, ""));
    // Its first attempt at reading the state fails in its own time; then the hooks.
    daemon.proc.wait_line("cannot read the initial state");
    for action in ["off", "cycle"] {
        let (out, took) = timed(|| rtmctl(&bus.address, &["power", action]));
        let line = err_line(&out, 1);
        assert!(line.starts_with(&format!("rtmctl: {BOARD}: ")), "{line}");
        assert!(out.stdout.is_empty());
        println!(
            "silent strip, rtmctl power {action}: {:.0} ms: {line}",
            took.as_secs_f64() * 1000.0
        );
    }
    drop(keep);

    // No rtmd for the board on the bus.
    let empty = Bus::start();
    let out = rtmctl(&empty.address, &["power", "cycle"]);
    assert_eq!(
        err_line(&out, 1),
        format!(
            "rtmctl: {BOARD}: no rtmd serves board {BOARD} on the bus at {} \
             (org.rtmd.Dut1.rpi4_01 has no owner)",
            empty.address
        )
    );
}

/// The session counter itself: a session closed right before the next opens is not an
/// overlap; two open at once are.
#[test]
fn session_proxy_counts_overlaps_only() {
    let (_strip, port) = strip(&[]);
    let proxy = SessionProxy::start(port);
    let first = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    eventually("the proxy accepted", || proxy.total() == 1);
    drop(first);
    let second = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    eventually("the proxy accepted", || proxy.total() == 2);
    assert_eq!(proxy.max_open(), 1);
    let third = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    eventually("the proxy accepted", || proxy.total() == 3);
    assert_eq!(proxy.max_open(), 2);
    drop((second, third));
}

/// A lab supply that does not answer (unpowered, or its adapter on another device), with the
/// defaults: the hook still ends with one line and exit 1. How long it takes is printed
/// (docs/lava.md quotes it): requests go before measurement polls, and a poll of a silent
/// supply is one attempt.
#[test]
fn failing_supply_hook_prints_one_line_and_exits_1_with_the_defaults() {
    // A pseudo-terminal nobody answers on: rtmd talks to the slave, the master stays silent.
    let pty = nix::pty::openpty(None, None).unwrap();
    let path = nix::unistd::ttyname(&pty.slave).unwrap();
    let bus = Bus::start();
    let daemon = Daemon::start(
        &bus,
        &format!(
            "name = \"{BOARD}\"\n[power]\nbackend = \"dpm86xx\"\nprotocol = \"ascii\"\n\
             device = \"{}\"\nvoltage = 5.1\ncurrent_limit = 2.0\nvoltage_range = [4.0, 5.8]\n",
            path.display()
        ),
    );
    daemon.proc.wait_line("is silent");
    let (out, took) = timed(|| rtmctl(&bus.address, &["power", "off"]));
    let line = err_line(&out, 1);
    assert!(line.starts_with(&format!("rtmctl: {BOARD}: ")), "{line}");
    assert!(out.stdout.is_empty());
    println!(
        "silent supply, rtmctl power off: {:.0} ms: {line}",
        took.as_secs_f64() * 1000.0
    );
    drop(pty);
}
