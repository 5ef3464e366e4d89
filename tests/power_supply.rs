//! Lab supplies end to end: rtmd against rtm-sim's DPM86xx (ASCII and Modbus RTU) and Riden
//! on pseudo-terminals, with the fault modes that break the wire on purpose.

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

struct Rig {
    _bus: Bus,
    sim: Proc,
    daemon: Daemon,
}

/// A supply simulator on a pty in the daemon's folder, and rtmd configured for it.
fn rig(backend: &str, sim_args: &[&str], extra: &str) -> Rig {
    let bus = Bus::start();
    let dir = tempfile::tempdir().unwrap();
    let pty = dir.path().join("psu");
    let pty_s = pty.display().to_string();
    let mut args = vec![backend, "--pty", pty_s.as_str()];
    args.extend_from_slice(sim_args);
    let (sim, _) = sim(&args);
    let config = format!(
        "name = \"bench-1\"\n[power]\nbackend = \"{backend}\"\ndevice = \"{pty_s}\"\n\
         voltage = 5.1\ncurrent_limit = 2.0\nvoltage_range = [4.0, 5.8]\n\
         profiles = {{ low = 4.6, nominal = 5.1, high = 5.6 }}\npoll_ms = 200\n\
         retry_backoff_ms = 10\ntimeout_ms = 3000\n{extra}"
    );
    let daemon = Daemon::start_in(&bus, &config, dir);
    Rig {
        _bus: bus,
        sim,
        daemon,
    }
}

fn each_supply() -> Vec<(&'static str, Vec<&'static str>, &'static str)> {
    vec![
        (
            "dpm86xx",
            vec!["--protocol", "ascii"],
            "protocol = \"ascii\"\n",
        ),
        (
            "dpm86xx",
            vec!["--protocol", "modbus"],
            "protocol = \"modbus\"\n",
        ),
        ("riden", vec!["--model-id", "60065"], ""),
        ("riden", vec!["--model-id", "60121"], ""),
    ]
}

#[test]
fn setpoints_go_out_before_the_output_and_measurements_come_back() {
    for (backend, sim_args, extra) in each_supply() {
        let r = rig(backend, &sim_args, extra);
        let d = &r.daemon;
        d.proc.wait_line("initial state off");
        // Starting never switches, and writes nothing.
        assert!(
            r.sim.matching("set ").is_empty() && r.sim.matching("output").is_empty(),
            "{}",
            r.sim.text()
        );

        assert_eq!(ok_line(&d.rtmctl(&["power", "on"])), "bench-1: power on");
        // The panel was left at 12 V: voltage and limit must be written before the output.
        r.sim.wait_line("output on");
        assert_eq!(
            r.sim.lines.lock().unwrap()[1..].to_vec(),
            [
                "set voltage 5.10",
                "set current 2.000",
                "output on at 5.10 V"
            ],
            "{backend} {sim_args:?}"
        );
        // The simulated board is a 10 ohm load.
        assert_eq!(d.property("org.rtmd.Dut1.Power", "Current"), "d 0.51");
        assert_eq!(
            ok_line(&d.rtmctl(&["power", "status"])),
            "bench-1: power on, 5.10 V, 0.510 A (setpoint 5.10 V)",
            "{backend} {sim_args:?}"
        );
        assert_eq!(d.property("org.rtmd.Dut1.Power", "Voltage"), "d 5.1");

        r.sim.clear();
        assert_eq!(
            ok_line(&d.rtmctl(&["power", "profile", "low"])),
            "bench-1: profile low, 4.60 V"
        );
        assert_eq!(r.sim.wait_lines("set voltage", 1), ["set voltage 4.60"]);
        eventually("measured voltage follows the profile", || {
            d.property("org.rtmd.Dut1.Power", "Voltage") == "d 4.6"
        });
        assert_eq!(
            ok_line(&d.rtmctl(&["power", "current", "1.5"])),
            "bench-1: current limit 1.500 A"
        );
        assert_eq!(
            ok_line(&d.rtmctl(&["power", "voltage", "5.5"])),
            "bench-1: voltage setpoint 5.50 V"
        );
        assert_eq!(
            d.property("org.rtmd.Dut1.Power", "VoltageSetpoint"),
            "d 5.5"
        );
        assert_eq!(ok_line(&d.rtmctl(&["power", "off"])), "bench-1: power off");
        assert_eq!(r.sim.wait_lines("output", 1), ["output off at 5.50 V"]);
    }
}

#[test]
fn bad_setpoints_are_refused_before_the_wire() {
    let r = rig(
        "dpm86xx",
        &["--protocol", "modbus"],
        "protocol = \"modbus\"\n",
    );
    let d = &r.daemon;
    d.proc.wait_line("initial state");
    r.sim.clear();
    let line = err_line(&d.rtmctl(&["power", "voltage", "12"]), 2);
    assert!(
        line.contains("outside the board's voltage range 4..5.8 V; nothing was sent"),
        "{line}"
    );
    let line = err_line(&d.rtmctl(&["power", "voltage", "NaN"]), 2);
    assert!(line.contains("not a number"), "{line}");
    let line = err_line(&d.rtmctl(&["power", "current", "2.5"]), 2);
    assert!(line.contains("current limit 2.5 A is outside"), "{line}");
    let line = err_line(&d.rtmctl(&["power", "profile", "turbo"]), 2);
    assert!(
        line.contains("no power profile \"turbo\"") && line.contains("low"),
        "{line}"
    );
    let line = err_line(&d.rtmctl(&["power", "voltage", "five"]), 2);
    assert!(line.contains("invalid value 'five'"), "{line}");
    assert!(
        r.sim.matching("set").is_empty(),
        "reached the wire: {}",
        r.sim.text()
    );

    // The named errors, as another client sees them.
    let out = d.dbus_send("org.rtmd.Dut1.Power.SetVoltage", &["double:9.9"]);
    assert!(
        text(&out.stderr).contains("org.rtmd.Dut1.Error.OutOfRange"),
        "{}",
        text(&out.stderr)
    );
    let out = d.dbus_send("org.rtmd.Dut1.Power.SetVoltage", &["double:nan"]);
    assert!(
        text(&out.stderr).contains("org.freedesktop.DBus.Error.InvalidArgs"),
        "{}",
        text(&out.stderr)
    );
    let out = d.dbus_send("org.rtmd.Dut1.Power.ApplyProfile", &["string:turbo"]);
    assert!(
        text(&out.stderr).contains("org.rtmd.Dut1.Error.NotFound"),
        "{}",
        text(&out.stderr)
    );
    let out = d.dbus_send("org.rtmd.Dut1.Power.Cycle", &["uint32:4000000000"]);
    assert!(
        text(&out.stderr).contains("org.freedesktop.DBus.Error.InvalidArgs"),
        "{}",
        text(&out.stderr)
    );
    assert!(r.sim.matching("set").is_empty());
}

#[test]
fn a_silent_supply_times_out_with_a_named_error() {
    for (backend, sim_args, extra) in [
        (
            "dpm86xx",
            vec!["--protocol", "ascii", "--fault", "silent"],
            "protocol = \"ascii\"\nretries = 1\n",
        ),
        ("riden", vec!["--fault", "silent"], "retries = 1\n"),
    ] {
        let mut r = rig(backend, &sim_args, extra);
        let d = &r.daemon;
        let line = err_line(&d.rtmctl(&["power", "on"]), 1);
        assert!(line.contains("is silent"), "{backend}: {line}");
        let out = d.dbus_send("org.rtmd.Dut1.Power.Off", &[]);
        assert!(
            text(&out.stderr).contains("org.rtmd.Dut1.Error.Timeout"),
            "{}",
            text(&out.stderr)
        );
        assert!(r.daemon.proc.is_running());
    }
}

#[test]
fn a_garbled_reply_is_a_hardware_error() {
    for (sim_args, extra, expect) in [
        (
            vec!["--protocol", "modbus", "--fault", "corrupt"],
            "protocol = \"modbus\"\nretries = 1\n",
            "bad CRC",
        ),
        (
            vec!["--protocol", "ascii", "--fault", "corrupt"],
            "protocol = \"ascii\"\nretries = 1\n",
            "garbled reply",
        ),
    ] {
        let mut r = rig("dpm86xx", &sim_args, extra);
        let d = &r.daemon;
        let line = err_line(&d.rtmctl(&["power", "on"]), 1);
        assert!(line.contains(expect), "{line}");
        let out = d.dbus_send("org.rtmd.Dut1.Power.Off", &[]);
        assert!(
            text(&out.stderr).contains("org.rtmd.Dut1.Error.Hardware"),
            "{}",
            text(&out.stderr)
        );
        assert!(r.daemon.proc.is_running());
    }
}

#[test]
fn property_changes_are_signalled() {
    let r = rig("riden", &[], "");
    let d = &r.daemon;
    d.proc.wait_line("initial state off");
    let mut cmd = Command::new("busctl");
    cmd.arg(format!("--address={}", d.bus)).args([
        "monitor",
        "--match",
        "type='signal',interface='org.freedesktop.DBus.Properties'",
    ]);
    let monitor = Proc::spawn("busctl monitor", cmd, true);
    monitor.wait_line("Monitoring bus");
    ok_line(&d.rtmctl(&["power", "on"]));
    monitor.wait_line("\"on\"");
    let text = monitor.text();
    assert!(
        text.contains("PropertiesChanged") && text.contains("\"State\""),
        "{text}"
    );
    monitor.wait_line("\"Voltage\"");
}

#[test]
fn on_stop_off_switches_off_on_sigterm() {
    let mut r = rig(
        "dpm86xx",
        &["--protocol", "ascii"],
        "protocol = \"ascii\"\non_stop = \"off\"\n",
    );
    ok_line(&r.daemon.rtmctl(&["power", "on"]));
    r.sim.clear();
    let status = r.daemon.proc.signal_and_wait("TERM");
    assert!(status.success(), "{status}");
    assert_eq!(r.sim.wait_lines("output", 1), ["output off at 5.10 V"]);
    assert!(
        r.daemon
            .proc
            .text()
            .contains("power switched off (on_stop = off)")
    );
}

#[test]
fn on_stop_keep_leaves_power_on() {
    let mut r = rig(
        "dpm86xx",
        &["--protocol", "ascii"],
        "protocol = \"ascii\"\n",
    );
    ok_line(&r.daemon.rtmctl(&["power", "on"]));
    r.sim.clear();
    assert!(r.daemon.proc.signal_and_wait("TERM").success());
    assert!(r.sim.matching("output").is_empty(), "{}", r.sim.text());
}

#[test]
fn temperature_is_what_the_supply_reports_without_a_call() {
    for protocol in ["ascii", "modbus"] {
        let r = rig(
            "dpm86xx",
            &["--protocol", protocol, "--temperature", "41"],
            &format!("protocol = \"{protocol}\"\n"),
        );
        let d = &r.daemon;
        // No method is called: only the periodic poll (poll_ms = 200) reads the supply.
        eventually("the poll reads the temperature", || {
            d.property("org.rtmd.Dut1.Power", "Temperature") == "d 41"
        });
        assert!(r.sim.matching("set").is_empty(), "{}", r.sim.text());
    }
}

#[test]
fn sd_notify_status_carries_the_measurements() {
    use std::os::unix::net::UnixDatagram;
    let bus = Bus::start();
    let dir = tempfile::tempdir().unwrap();
    let pty = dir.path().join("psu");
    let pty_s = pty.display().to_string();
    let (_sim, _) = sim(&["dpm86xx", "--pty", &pty_s, "--protocol", "modbus"]);
    let sock_path = dir.path().join("notify");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(DEADLINE)).unwrap();
    let cfg = dir.path().join("board.toml");
    std::fs::write(
        &cfg,
        format!(
            "name = \"bench-1\"\n[power]\nbackend = \"dpm86xx\"\ndevice = \"{pty_s}\"\n\
             protocol = \"modbus\"\nvoltage = 5.1\ncurrent_limit = 2.0\n\
             voltage_range = [4.0, 5.8]\nprofiles = {{ low = 4.6 }}\npoll_ms = 200\n"
        ),
    )
    .unwrap();
    let p = Daemon::spawn_env(&bus.address, &cfg, &[("NOTIFY_SOCKET", &sock_path)]);
    p.wait_line("ready on");
    let d = Daemon {
        proc: p,
        dir,
        board: "bench-1".to_string(),
        bus: bus.address.clone(),
    };
    // Reads STATUS= messages until `want` is the latest; fails showing all it saw.
    let mut seen: Vec<String> = Vec::new();
    let mut status_until = |want: &str| {
        let mut buf = [0u8; 512];
        loop {
            if seen
                .iter()
                .rev()
                .find(|m| m.starts_with("STATUS="))
                .is_some_and(|m| m == &format!("STATUS={want}"))
            {
                return;
            }
            match sock.recv(&mut buf) {
                Ok(n) => seen.push(String::from_utf8_lossy(&buf[..n]).trim().to_string()),
                Err(e) => panic!("no STATUS={want} ({e}); saw {seen:#?}"),
            }
        }
    };
    status_until("power off");
    assert_eq!(ok_line(&d.rtmctl(&["power", "on"])), "bench-1: power on");
    // The simulated board is a 10 ohm load.
    status_until("power on, 5.10 V, 0.510 A");
    ok_line(&d.rtmctl(&["power", "profile", "low"]));
    status_until("power on, 4.60 V, 0.460 A");
    assert_eq!(ok_line(&d.rtmctl(&["power", "off"])), "bench-1: power off");
    status_until("power off");
}

/// The simulated board on the supply, through rtmd's power and console: at nominal voltage
/// it boots; at the low profile it browns out and resets in a loop; above its maximum it
/// refuses to boot, saying why. (A `voltage_range` wider than the board's tolerance is the
/// admin mistake that lets the last one happen.)
#[test]
fn the_simulated_board_follows_its_supply_through_rtmd() {
    let bus = Bus::start();
    let dir = tempfile::tempdir().unwrap();
    let psu = dir.path().join("psu");
    let console = dir.path().join("console");
    let mut args: Vec<String> = ["dpm86xx", "--pty", psu.to_str().unwrap()]
        .map(str::to_string)
        .to_vec();
    args.extend(fast_board(dir.path(), "volts-1"));
    let (_supply, _) = sim(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let config = format!(
        "name = \"volts-1\"\n[power]\nbackend = \"dpm86xx\"\ndevice = \"{}\"\nvoltage = 5.1\n\
         current_limit = 2.0\nvoltage_range = [4.0, 6.5]\n\
         profiles = {{ low = 4.6, nominal = 5.1, over = 6.0 }}\n[console]\ndevice = \"{}\"\n\
         log_dir = \"{}\"\n",
        psu.display(),
        console.display(),
        dir.path().join("logs").display()
    );
    let d = Daemon::start(&bus, &config);
    eventually("rtmd opened the board's console", || {
        d.property("org.rtmd.Dut1.Console", "Connected") == "b true"
    });
    let wait_for = |regex: &str| {
        let out = wait_for_call(&d.bus, "volts-1", regex, 20_000)
            .output()
            .unwrap();
        assert!(out.status.success(), "{regex}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    ok_line(&d.rtmctl(&["power", "on"]));
    wait_for("volts-1 login: ");
    ok_line(&d.rtmctl(&["power", "profile", "low"]));
    let seen = wait_for("brown-out: supply [0-9.]+ V below [0-9.]+ V");
    assert!(
        seen.contains("brown-out: supply 4.60 V below 4.75 V"),
        "{seen}"
    );
    ok_line(&d.rtmctl(&["power", "profile", "nominal"]));
    wait_for("volts-1 login: ");
    // Said once, at once: WaitFor (live output only) could miss it, the console log has it.
    ok_line(&d.rtmctl(&["power", "profile", "over"]));
    let refusal = "refusing to boot: supply 6.00 V above the board's maximum 5.80 V";
    eventually("the board refused the over-voltage", || {
        text(&d.rtmctl(&["console", "--log"]).stdout).contains(refusal)
    });
}

/// A Riden whose model id rtmd does not know: refused with one line naming the id, nothing
/// written to the supply, the daemon alive (scaling by a guess could set ten times the volts).
#[test]
fn an_unknown_riden_model_is_refused_before_any_setpoint() {
    let mut r = rig("riden", &["--model-id", "60999"], "");
    let line = err_line(&r.daemon.rtmctl(&["power", "on"]), 1);
    assert!(line.contains("60999"), "{line}");
    assert!(r.sim.matching("set ").is_empty(), "{}", r.sim.text());
    assert!(r.sim.matching("output").is_empty(), "{}", r.sim.text());
    assert!(r.daemon.proc.is_running());
}
