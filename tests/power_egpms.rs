//! The egpms backend end to end: rtmd against rtm-sim's Energenie strip over TCP, driven with
//! rtmctl and busctl; and the simulated strip checked against Debian's real `egctl`.

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

fn egpms_config(port: u16, password_line: &str, extra: &str) -> String {
    format!(
        "name = \"rpi4-01\"\n[power]\nbackend = \"egpms\"\nhost = \"127.0.0.1\"\nport = {port}\n\
         outlet = 2\nmodel = \"pms21\"\n{password_line}\ncycle_off_ms = 50\n\
         retry_backoff_ms = 20\n{extra}"
    )
}

#[test]
fn switches_the_outlet_and_reports_the_confirmed_state() {
    let bus = Bus::start();
    let (strip, port) = strip(&["--password", "hackme"]);
    let d = Daemon::start(&bus, &egpms_config(port, "password = \"hackme\"", ""));
    // Starting reads the state (a session) but never switches.
    d.proc.wait_line("initial state off");
    assert!(
        strip.matching("outlet").is_empty(),
        "start switched: {}",
        strip.text()
    );
    assert!(
        d.proc.text().contains("inline"),
        "inline password not warned about"
    );

    assert_eq!(ok_line(&d.rtmctl(&["power", "on"])), "rpi4-01: power on");
    assert_eq!(strip.wait_lines("outlet", 1), ["outlet 2 on"]);
    assert_eq!(d.property("org.rtmd.Dut1.Power", "State"), "s \"on\"");
    assert_eq!(
        ok_line(&d.rtmctl(&["power", "status"])),
        "rpi4-01: power on"
    );

    strip.clear();
    assert_eq!(ok_line(&d.rtmctl(&["power", "cycle"])), "rpi4-01: power on");
    assert_eq!(
        strip.wait_lines("outlet", 2),
        ["outlet 2 off", "outlet 2 on"]
    );

    // busctl as the other side of the contract.
    strip.clear();
    let out = d.busctl(&[
        "call",
        "org.rtmd.Dut1.rpi4_01",
        "/org/rtmd/Dut1",
        "org.rtmd.Dut1.Power",
        "Off",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(strip.wait_lines("outlet", 1), ["outlet 2 off"]);
    assert_eq!(
        ok_line(&d.rtmctl(&["power", "status"])),
        "rpi4-01: power off"
    );
}

#[test]
fn cycle_waits_cycle_off_ms_unless_rtmctl_gives_off_ms() {
    let bus = Bus::start();
    let (strip, port) = strip(&[]);
    let config = egpms_config(port, "", "").replace("cycle_off_ms = 50", "cycle_off_ms = 400");
    let d = Daemon::start(&bus, &config);
    d.proc.wait_line("initial state off");
    // `rtmctl power cycle` sends Cycle(0): the board's cycle_off_ms.
    for (args, off_ms) in [
        (&["power", "cycle"][..], 400),
        (&["power", "cycle", "--off-ms", "900"][..], 900),
    ] {
        d.proc.clear();
        strip.clear();
        assert_eq!(ok_line(&d.rtmctl(args)), "rpi4-01: power on", "{args:?}");
        assert_eq!(
            strip.wait_lines("outlet", 2),
            ["outlet 2 off", "outlet 2 on"]
        );
        // The daemon says which off time it used, between the confirmed off and the on ...
        // ("power off", "power cycle: ...", "power on": wait until all three are read)
        let log = d.proc.wait_lines("power ", 3);
        let at = |message: &str| {
            log.iter()
                .position(|l| log_message(l) == message)
                .unwrap_or_else(|| panic!("no {message:?} in the log: {log:#?}"))
        };
        let (off, waiting, on) = (
            at("power off"),
            at(&format!("power cycle: off for {off_ms} ms")),
            at("power on"),
        );
        assert!(off < waiting && waiting < on, "{log:#?}");
        assert_eq!(d.proc.matching("power cycle:").len(), 1, "{log:#?}");
        // ... and did wait that long: the daemon's own timestamps of the two confirmations
        // are at least the off time apart (a lower bound; the wait sits between them).
        let gap = log_time(&log[on])
            .duration_since(log_time(&log[off]))
            .unwrap();
        assert!(
            gap >= std::time::Duration::from_millis(off_ms),
            "off for {gap:?}, wanted {off_ms} ms: {log:#?}"
        );
    }
}

#[test]
fn resends_the_start_byte_to_a_strip_that_ignores_it() {
    let bus = Bus::start();
    let (strip, port) = strip(&["--password", "pw", "--ignore-starts", "2"]);
    let d = Daemon::start(&bus, &egpms_config(port, "password = \"pw\"", ""));
    assert_eq!(ok_line(&d.rtmctl(&["power", "on"])), "rpi4-01: power on");
    assert_eq!(strip.wait_lines("outlet", 1), ["outlet 2 on"]);
}

#[test]
fn wrong_password_is_a_named_hardware_error_and_the_daemon_lives_on() {
    let bus = Bus::start();
    let (strip, port) = strip(&["--password", "right"]);
    let mut d = Daemon::start(&bus, &egpms_config(port, "password = \"wrong\"", ""));
    let line = err_line(&d.rtmctl(&["power", "on"]), 1);
    assert!(line.contains("did not accept the password"), "{line}");
    assert!(strip.matching("outlet").is_empty());
    // Not retried: a wrong password does not get better (one refusal per call, plus the
    // start-up probe's).
    assert_eq!(strip.matching("auth refused").len(), 2, "{}", strip.text());
    let out = d.dbus_send("org.rtmd.Dut1.Power.On", &[]);
    assert!(
        text(&out.stderr).contains("org.rtmd.Dut1.Error.Hardware"),
        "{}",
        text(&out.stderr)
    );
    assert!(d.proc.is_running());
    assert_eq!(d.property("org.rtmd.Dut1.Power", "State"), "s \"unknown\"");
    assert!(
        d.property("org.rtmd.Dut1.Power", "LastError")
            .contains("password")
    );
}

#[test]
fn an_outlet_that_ignores_switching_is_a_named_mismatch_and_the_daemon_lives_on() {
    let bus = Bus::start();
    let (strip, port) = strip(&["--stuck-outlet", "2"]);
    let mut d = Daemon::start(&bus, &egpms_config(port, "", ""));
    d.proc.wait_line("initial state off");
    let line = err_line(&d.rtmctl(&["power", "on"]), 1);
    assert!(
        line.contains("reports outlet 2 off after switching it on"),
        "{line}"
    );
    // The frame reached the strip, which ignored it; a mismatch is not retried.
    assert_eq!(
        strip.wait_lines("outlet", 1),
        ["outlet 2 stuck, ignored on"],
        "{}",
        strip.text()
    );
    let out = d.dbus_send("org.rtmd.Dut1.Power.On", &[]);
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("org.rtmd.Dut1.Error.Hardware"),
        "{stderr}"
    );
    assert!(stderr.contains("after switching it on"), "{stderr}");
    assert!(d.proc.is_running());
    // After a failed switch the daemon does not claim to know the state.
    assert_eq!(d.property("org.rtmd.Dut1.Power", "State"), "s \"unknown\"");
    assert!(
        d.property("org.rtmd.Dut1.Power", "LastError")
            .contains("after switching it on")
    );
    // And it still serves: switching off agrees with the stuck relay.
    assert_eq!(ok_line(&d.rtmctl(&["power", "off"])), "rpi4-01: power off");
}

#[test]
fn unreachable_strip_fails_after_retries_and_the_daemon_lives_on() {
    let bus = Bus::start();
    // A port nobody listens on: bind, note it, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut d = Daemon::start(&bus, &egpms_config(port, "", "retries = 3\n"));
    let line = err_line(&d.rtmctl(&["power", "off"]), 1);
    assert!(
        line.contains("cannot connect") && line.contains("refused"),
        "{line}"
    );
    // Three retries, the first after retry_backoff_ms (20), each wait twice the last.
    // The call's audit line comes after all of them: wait until it has been read.
    d.proc.wait_line("Power.Off() by uid");
    let retries = d.proc.matching("retrying in");
    let said: Vec<String> = retries
        .iter()
        .map(|l| log_message(l).split(':').next().unwrap().to_string())
        .collect();
    assert_eq!(
        said,
        [
            "attempt 1 failed, retrying in 20 ms",
            "attempt 2 failed, retrying in 40 ms",
            "attempt 3 failed, retrying in 80 ms",
        ],
        "{}",
        d.proc.text()
    );
    // Each wait sits between its line and the next attempt's: the daemon's timestamps are
    // at least that far apart (a lower bound only).
    for (pair, wait_ms) in retries.windows(2).zip([20, 40]) {
        let gap = log_time(&pair[1])
            .duration_since(log_time(&pair[0]))
            .unwrap();
        assert!(
            gap >= std::time::Duration::from_millis(wait_ms),
            "{gap:?} < {wait_ms} ms: {pair:#?}"
        );
    }
    assert!(d.proc.is_running());
}

#[test]
fn password_from_a_file_and_from_a_systemd_credential() {
    let bus = Bus::start();
    let (strip, port) = strip(&["--password", "s3cret"]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw"), "s3cret\n").unwrap();
    let d = Daemon::start_in(&bus, &egpms_config(port, "password_file = \"pw\"", ""), dir);
    assert_eq!(ok_line(&d.rtmctl(&["power", "on"])), "rpi4-01: power on");
    assert!(!d.proc.text().contains("inline"));
    drop(d);

    // A credential, as systemd's LoadCredential= provides it.
    with_credential(
        &bus,
        port,
        "password_credential = \"pdu-password\"",
        "pdu-password",
        "s3cret",
        "off",
    );
    assert!(
        strip
            .matching("outlet")
            .contains(&"outlet 2 off".to_string())
    );
}

/// Runs rtmd with `$CREDENTIALS_DIRECTORY` holding `name` = `secret`, and switches once.
fn with_credential(
    bus: &Bus,
    port: u16,
    password_line: &str,
    name: &str,
    secret: &str,
    action: &str,
) {
    let creds = tempfile::tempdir().unwrap();
    std::fs::write(creds.path().join(name), secret).unwrap();
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = cfg_dir.path().join("board.toml");
    std::fs::write(&cfg, egpms_config(port, password_line, "")).unwrap();
    let p = Daemon::spawn_env(
        &bus.address,
        &cfg,
        &[("CREDENTIALS_DIRECTORY", creds.path())],
    );
    p.wait_line("ready on");
    let out = Command::new(bin("rtmctl"))
        .args([
            "--bus-address",
            &bus.address,
            "--dut",
            "rpi4-01",
            "power",
            action,
        ])
        .output()
        .unwrap();
    assert_eq!(ok_line(&out), format!("rpi4-01: power {action}"));
}

#[test]
fn rtmctl_takes_the_board_from_rtm_dut() {
    let bus = Bus::start();
    let (_strip, port) = strip(&[]);
    let _d = Daemon::start(&bus, &egpms_config(port, "", ""));
    let out = Command::new(bin("rtmctl"))
        .args(["power", "on"])
        .env("RTM_DUT", "rpi4-01")
        .env("RTM_BUS_ADDRESS", &bus.address)
        .output()
        .unwrap();
    assert_eq!(ok_line(&out), "rpi4-01: power on");
}

/// Runs Debian's egctl with a private home holding `egtab`: egctl reads `~/.egtab` through
/// the user database, not `$HOME`, so the home folder is bind-mounted in a mount namespace.
fn egctl(egtab: &str, args: &[&str]) -> std::process::Output {
    require("egctl");
    require("unshare");
    let home = tempfile::tempdir().unwrap();
    std::fs::write(home.path().join(".egtab"), egtab).unwrap();
    let user_home = nix::unistd::User::from_uid(nix::unistd::getuid())
        .unwrap()
        .expect("current user in the user database")
        .dir;
    let script = format!(
        "mount --bind '{}' '{}' && exec egctl \"$@\"",
        home.path().display(),
        user_home.display()
    );
    Command::new("unshare")
        .args(["-m", "sh", "-c", &script, "egctl"])
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn simulated_strip_is_faithful_to_debian_egctl() {
    for (model, on) in [("pms21", ["--on", "3"]), ("pms20", ["--on", "1"])] {
        let (strip, port) = strip(&["--model", model, "--password", "hackme", on[0], on[1]]);
        let egtab = format!("lab {model} 127.0.0.1 {port} hackme\n");

        let out = egctl(&egtab, &["lab"]);
        assert!(out.status.success(), "egctl: {}", text(&out.stderr));
        let initial = on[1];
        let expected: Vec<String> = (1..=4)
            .map(|n| {
                format!(
                    "socket {n} - {}",
                    if n.to_string() == initial {
                        "on"
                    } else {
                        "off"
                    }
                )
            })
            .collect();
        assert_eq!(
            text(&out.stdout).lines().collect::<Vec<_>>(),
            expected,
            "{model}"
        );

        let out = egctl(&egtab, &["lab", "on", "left", "toggle", "off"]);
        assert!(out.status.success(), "egctl: {}", text(&out.stderr));
        assert!(strip.matching("outlet 1 on").len() == 1, "{}", strip.text());

        let out = egctl(&egtab, &["lab"]);
        let states: Vec<String> = text(&out.stdout).lines().map(str::to_string).collect();
        assert_eq!(states[0], "socket 1 - on");
        assert_eq!(states[3], "socket 4 - off");
        // toggle of socket 3: egctl read its state and sent the opposite.
        let third = if initial == "3" { "off" } else { "on" };
        assert_eq!(states[2], format!("socket 3 - {third}"), "{model}");

        // A wrong password: the strip stays silent and egctl gives up on its own.
        let out = egctl(&format!("lab {model} 127.0.0.1 {port} nothack\n"), &["lab"]);
        assert!(!out.status.success());
        assert!(
            strip.matching("auth refused").len() == 1,
            "{}",
            strip.text()
        );
    }
}

#[test]
fn password_from_the_units_default_credential() {
    let bus = Bus::start();
    let (strip, port) = strip(&["--password", "fromcred"]);
    with_credential(&bus, port, "", "power-password", "fromcred\n", "on");
    assert_eq!(strip.wait_lines("outlet", 1), ["outlet 2 on"]);
}

/// `on_stop = "off"` on a strip: SIGTERM switches the outlet off before rtmd exits, and
/// without it the outlet stays as it was.
#[test]
fn on_stop_switches_the_outlet_off_on_sigterm_only_when_asked() {
    for (extra, expected) in [("on_stop = \"off\"", vec!["outlet 2 off"]), ("", vec![])] {
        let bus = Bus::start();
        let (strip, port) = strip(&["--password", "hackme"]);
        let mut d = Daemon::start(&bus, &egpms_config(port, "password = \"hackme\"", extra));
        ok_line(&d.rtmctl(&["power", "on"]));
        strip.clear();
        assert!(d.proc.signal_and_wait("TERM").success());
        assert_eq!(strip.matching("outlet"), expected, "{extra:?}");
    }
}
