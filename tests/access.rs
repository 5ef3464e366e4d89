//! Leases and the audit trail against a running rtmd: callers of two uids (root, and
//! nobody through `setpriv`) on a private bus that admits both, as the system bus with the
//! shipped policy admits root and group rtm (tests/units.rs tests that policy itself).
//! Also the bad input of issue 8: a release by a non-holder, an expired lease, ttl 0 and
//! absurd ttls, racing Acquire calls, a peer-to-peer caller without credentials, holder
//! labels with control characters or megabytes of text.
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

use std::process::Command;

use common::*;

fn board(name: &str, extra: &str, dir: &std::path::Path) -> String {
    let state = dir.join("power");
    format!(
        "name = \"{name}\"\n[power]\nbackend = \"command\"\non_command = \"echo on > {s}\"\n\
         off_command = \"echo off > {s}\"\nstatus_command = \"cat {s} 2>/dev/null || echo off\"\n\
         [console]\ndevice = \"{tty}\"\n{extra}",
        s = state.display(),
        tty = dir.join("no-tty-here").display()
    )
}

fn start(bus: &Bus, extra: &str) -> Daemon {
    need_root("tests/access.rs");
    let dir = tempfile::tempdir().unwrap();
    let config = board("lab-1", extra, dir.path());
    Daemon::start_in(bus, &config, dir)
}

fn power_file(d: &Daemon) -> String {
    std::fs::read_to_string(d.dir.path().join("power"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[test]
fn a_lease_refuses_other_uids_and_lets_everyone_read() {
    let bus = Bus::start_open();
    let d = start(&bus, "");
    assert_eq!(ok_line(&d.rtmctl(&["who"])), "lab-1: free");
    // Nobody holds it: everybody the bus admits may switch.
    ok_line(&rtmctl_as_nobody(&d, &["power", "on"]));

    let monitor = {
        let mut cmd = Command::new("busctl");
        cmd.arg(format!("--address={}", bus.address)).args([
            "monitor",
            "--match",
            "type='signal',interface='org.freedesktop.DBus.Properties',path='/org/rtmd/Dut1'",
        ]);
        Proc::spawn("busctl monitor", cmd, true)
    };
    monitor.wait_line("Monitoring");
    let line = ok_line(&d.rtmctl(&["hold", "--ttl", "2h", "bisecting a boot regression"]));
    // The lease properties are signalled.
    monitor.wait_line("\"bisecting a boot regression\"");
    monitor.wait_line("HolderUid");
    monitor.wait_line("Expires");
    assert!(line.starts_with("lab-1: held by you until "), "{line}");
    let who = ok_line(&rtmctl_as_nobody(&d, &["who"]));
    assert!(
        who.contains("\"bisecting a boot regression\" (root, uid 0)"),
        "{who}"
    );
    assert_eq!(d.property("org.rtmd.Dut1", "HolderUid"), "x 0");

    // Every mutating call of the other uid: exit 3, one line naming the holder.
    for args in [
        &["power", "on"][..],
        &["power", "off"],
        &["power", "cycle"],
        &["console"],
        &["hold", "--ttl", "1h", "mine now"],
        &["release"],
    ] {
        let line = err_line(&rtmctl_as_nobody(&d, args), 3);
        assert!(
            line.contains("held by \"bisecting a boot regression\" (uid 0)"),
            "{args:?}: {line}"
        );
    }
    // Reading stays open.
    let status = ok_line(&rtmctl_as_nobody(&d, &["power", "status"]));
    assert_eq!(status, "lab-1: power on");
    // The holder's own calls pass; holding again renews.
    assert_eq!(ok_line(&d.rtmctl(&["power", "off"])), "lab-1: power off");
    let again = ok_line(&d.rtmctl(&["hold", "--ttl", "3h", "other label"]));
    assert!(
        again.contains("held by you (\"bisecting a boot regression\"), renewed until"),
        "{again}"
    );

    // Only admins force; nobody is not one.
    let line = err_line(&rtmctl_as_nobody(&d, &["release", "--force"]), 1);
    assert!(line.contains("only root"), "{line}");
    assert_eq!(ok_line(&d.rtmctl(&["release"])), "lab-1: released");
    assert_eq!(ok_line(&d.rtmctl(&["release"])), "lab-1: nobody holds it");
    ok_line(&rtmctl_as_nobody(&d, &["power", "on"]));

    // An admin (root) can take the board from another uid.
    ok_line(&rtmctl_as_nobody(
        &d,
        &["hold", "--ttl", "1h", "nobody's session"],
    ));
    err_line(&d.rtmctl(&["power", "off"]), 3);
    assert_eq!(
        ok_line(&d.rtmctl(&["release", "--force"])),
        "lab-1: released"
    );
    ok_line(&d.rtmctl(&["power", "off"]));

    // The audit trail has who did what, refusals included.
    let out = d.rtmctl(&["audit", "--since", "1h"]);
    assert!(out.status.success());
    let audit = text(&out.stdout);
    for needle in [
        "nobody (65534) Power.On() -> ok",
        "root (0) Acquire(\"bisecting a boot regression\", 7200 s) -> ok",
        "nobody (65534) Power.Off() -> Leased: held by \"bisecting a boot regression\"",
        "nobody (65534) Console.Attach() -> Leased",
        "nobody (65534) ForceRelease() -> AccessDenied",
        "root (0) ForceRelease() -> ok",
        "Lease.ForceReleased",
    ] {
        assert!(audit.contains(needle), "no {needle:?} in\n{audit}");
    }
    // ... and so has the journal (here: stderr), with structured fields beside the message.
    d.proc.wait_line("Power.On() by uid 65534: ok");
    d.proc.wait_line("audit_method");
}

#[test]
fn lava_hooks_hold_the_board_for_the_job() {
    let bus = Bus::start_open();
    let d = start(&bus, "");
    // The job's first hook takes the board; later hooks of the same uid renew.
    ok_line(&d.rtmctl(&["--hold", "lava job 12", "power", "cycle", "--off-ms", "1"]));
    ok_line(&d.rtmctl(&["--hold", "lava job 12", "power", "on"]));
    assert_eq!(d.property("org.rtmd.Dut1", "Holder"), "s \"lava job 12\"");
    // A person cannot take it or drive it meanwhile.
    let line = err_line(&rtmctl_as_nobody(&d, &["hold", "--ttl", "1h", "me"]), 3);
    assert!(line.contains("lava job 12"), "{line}");
    // The job's last hook (power_off_command at finalize) gives it back.
    assert_eq!(
        ok_line(&d.rtmctl(&["--hold", "lava job 12", "--release", "power", "off"])),
        "lab-1: power off"
    );
    assert_eq!(d.property("org.rtmd.Dut1", "Holder"), "s \"\"");
    // A person holding it: the next job's hook fails (exit 3) before touching the board.
    ok_line(&rtmctl_as_nobody(
        &d,
        &["hold", "--ttl", "1h", "hacking session"],
    ));
    let line = err_line(&d.rtmctl(&["--hold", "lava job 13", "power", "on"]), 3);
    assert!(line.contains("hacking session"), "{line}");
    assert_eq!(power_file(&d), "off", "the refused hook switched nothing");
}

#[test]
fn an_expired_lease_ends_by_itself_and_powers_off_with_on_release_off() {
    let bus = Bus::start_open();
    let d = start(&bus, "[access]\non_release = \"off\"\n");
    ok_line(&d.rtmctl(&["power", "on"]));
    ok_line(&d.rtmctl(&["hold", "--ttl", "1s", "short"]));
    err_line(&rtmctl_as_nobody(&d, &["power", "off"]), 3);
    // No caller needed: the timer ends it, and the board goes off.
    eventually("the lease expires", || {
        d.property("org.rtmd.Dut1", "HolderUid") == "x -1"
    });
    eventually("on_release = off switches off", || power_file(&d) == "off");
    d.proc.wait_line("lease of \"short\" (uid 0) expired");
    ok_line(&rtmctl_as_nobody(&d, &["power", "on"]));
}

#[test]
fn bad_arguments_are_invalid_args() {
    let bus = Bus::start_open();
    let d = start(&bus, "[access]\nmax_ttl_s = 86400\nmax_label = 100\n");
    let acquire = |label: &str, ttl: &str| {
        d.dbus_send(
            "org.rtmd.Dut1.Acquire",
            &[&format!("string:{label}"), &format!("uint32:{ttl}")],
        )
    };
    for (label, ttl, needle) in [
        ("x", "0", "ttl 0"),
        ("x", "86401", "max_ttl"),
        ("x", "4294967295", "max_ttl"),
        ("", "60", "empty"),
        ("two\nlines", "60", "control character"),
        ("\u{1b}[2Jclear", "60", "control character"),
    ] {
        let out = acquire(label, ttl);
        let err = text(&out.stderr);
        assert!(
            !out.status.success()
                && err.contains("org.freedesktop.DBus.Error.InvalidArgs")
                && err.contains(needle),
            "{label:?} {ttl}: {err}"
        );
    }
    // Megabytes of label (too long for a command line): over the bus with zbus.
    let long = "x".repeat(4 << 20);
    let err = call(&d, "Acquire", &(long.as_str(), 60u32)).unwrap_err();
    assert!(
        err.contains("InvalidArgs") && err.contains("longer than 100"),
        "{err}"
    );
    assert_eq!(d.property("org.rtmd.Dut1", "Holder"), "s \"\"");
}

/// A method call on org.rtmd.Dut1 over a fresh connection; Err(name: message).
fn call<B>(d: &Daemon, method: &str, body: &B) -> Result<(), String>
where
    B: serde::Serialize + zbus::DynamicType,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = zbus::connection::Builder::address(d.bus.as_str())
            .build()
            .await
            .unwrap();
        c.call_method(
            Some(rtmd::bus::bus_name(&d.board).as_str()),
            "/org/rtmd/Dut1",
            Some("org.rtmd.Dut1"),
            method,
            body,
        )
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
    })
}

#[test]
fn racing_acquires_have_exactly_one_winner() {
    let bus = Bus::start_open();
    let d = start(&bus, "");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let results: Vec<Result<(), String>> = rt.block_on(async {
        let dest = rtmd::bus::bus_name(&d.board);
        let mut connections = Vec::new();
        for _ in 0..24 {
            connections.push(
                zbus::connection::Builder::address(d.bus.as_str())
                    .build()
                    .await
                    .unwrap(),
            );
        }
        // Every call is sent before any reply is awaited.
        let calls: Vec<_> = connections
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                let dest = dest.clone();
                tokio::spawn(async move {
                    c.call_method(
                        Some(dest.as_str()),
                        "/org/rtmd/Dut1",
                        Some("org.rtmd.Dut1"),
                        "Acquire",
                        &(format!("racer {i}"), 600u32),
                    )
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
                })
            })
            .collect();
        let mut results = Vec::new();
        for call in calls {
            results.push(call.await.unwrap());
        }
        results
    });
    let winners = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(winners, 1, "{results:?}");
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(r.contains("Leased"), "{r}");
    }
    let who = ok_line(&d.rtmctl(&["who"]));
    assert!(who.contains("racer "), "{who}");
}

#[test]
fn a_peer_to_peer_caller_without_credentials_is_refused() {
    use rtmd::access::{Access, AccessConfig};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        let (access, _ended) = Access::new(AccessConfig::default());
        let gate = rtmd::bus::Gate::new(access.clone());
        let guid = zbus::Guid::generate();
        let server = async {
            zbus::connection::Builder::unix_stream(a)
                .server(guid)
                .p2p()
                .serve_at("/org/rtmd/Dut1", rtmd::bus::Dut::new("p2p", vec![], gate))
                .build()
                .await
                .unwrap()
        };
        let client = async {
            zbus::connection::Builder::unix_stream(b)
                .p2p()
                .build()
                .await
                .unwrap()
        };
        let (_server, client) = tokio::join!(server, client);
        let err = client
            .call_method(
                None::<&str>,
                "/org/rtmd/Dut1",
                Some("org.rtmd.Dut1"),
                "Acquire",
                &("p2p", 60u32),
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("AccessDenied") && err.contains("peer-to-peer"),
            "{err}"
        );
        assert!(access.current().is_none());
        let records = access.history(std::time::SystemTime::UNIX_EPOCH);
        assert_eq!(records.len(), 1);
        assert_eq!((records[0].uid, records[0].method), (None, "Acquire"));
    });
}

/// `dbus-send` to the board as nobody: Err(the error line) on an error reply.
fn dbus_send_as_nobody(d: &Daemon, member: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new("setpriv")
        .args([
            format!("--reuid={NOBODY}"),
            format!("--regid={NOBODY}"),
            "--clear-groups".to_string(),
            "dbus-send".to_string(),
            format!("--bus={}", d.bus),
            "--print-reply".to_string(),
            format!("--dest={}", rtmd::bus::bus_name(&d.board)),
            "/org/rtmd/Dut1".to_string(),
            member.to_string(),
        ])
        .args(args)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(text(&out.stderr))
    }
}

#[test]
fn every_mutating_method_of_every_interface_is_refused_to_others() {
    need_root("tests/access.rs");
    let bus = Bus::start_open();
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    let configfs = dir.path().join("configfs");
    std::fs::create_dir_all(&images).unwrap();
    std::fs::create_dir_all(configfs.join("usb_gadget")).unwrap();
    std::fs::create_dir_all(configfs.join("udc")).unwrap();
    std::fs::write(configfs.join("udc").join("dummy_udc.0"), "").unwrap();
    std::fs::write(images.join("disk.img"), vec![0u8; 1 << 20]).unwrap();
    let screen = dir.path().join("screen");
    std::fs::write(&screen, "off\n").unwrap();
    let extra = format!(
        "[images]\ndir = \"images\"\n[nbd]\nlisten = \"127.0.0.1:{}\"\n\
         [storage]\nfake_configfs = \"{}\"\nkeyboard = true\nkey_delay_ms = 0\n\
         [capture]\nvideo = \"sim:{2}\"\naudio = \"sim:{2}\"\ndir = \"captures\"\n",
        free_port(),
        configfs.display(),
        screen.display()
    );
    let config = board("lab-1", &extra, dir.path());
    let d = Daemon::start_in(&bus, &config, dir);
    ok_line(&d.rtmctl(&["hold", "--ttl", "1h", "gate test"]));
    let calls: &[(&str, &[&str])] = &[
        ("org.rtmd.Dut1.Power.On", &[]),
        ("org.rtmd.Dut1.Power.Off", &[]),
        ("org.rtmd.Dut1.Power.Cycle", &["uint32:0"]),
        ("org.rtmd.Dut1.Power.SetVoltage", &["double:5"]),
        ("org.rtmd.Dut1.Power.SetCurrentLimit", &["double:1"]),
        ("org.rtmd.Dut1.Power.ApplyProfile", &["string:low"]),
        ("org.rtmd.Dut1.Console.Send", &["array:byte:65,10"]),
        ("org.rtmd.Dut1.Console.SendBreak", &[]),
        ("org.rtmd.Dut1.Console.Attach", &[]),
        (
            "org.rtmd.Dut1.Images.Fetch",
            &["string:/etc/hostname", "string:"],
        ),
        ("org.rtmd.Dut1.Images.Remove", &["string:disk.img"]),
        (
            "org.rtmd.Dut1.Nbd.Export",
            &["string:disk.img", "string:ro"],
        ),
        ("org.rtmd.Dut1.Nbd.Unexport", &[]),
        ("org.rtmd.Dut1.Nbd.ResetOverlay", &[]),
        (
            "org.rtmd.Dut1.Storage.Attach",
            &["string:disk.img", "string:ro"],
        ),
        (
            "org.rtmd.Dut1.Storage.AttachLun",
            &["uint32:0", "string:disk.img", "string:ro"],
        ),
        ("org.rtmd.Dut1.Storage.Detach", &[]),
        ("org.rtmd.Dut1.Storage.Eject", &[]),
        ("org.rtmd.Dut1.Keyboard.Type", &["string:reboot"]),
        (
            "org.rtmd.Dut1.Keyboard.Press",
            &["array:string:ctrl,alt,delete"],
        ),
        ("org.rtmd.Dut1.Capture.Snapshot", &[]),
        ("org.rtmd.Dut1.Capture.StartRecording", &["string:video"]),
        ("org.rtmd.Dut1.Capture.StopRecording", &["string:video"]),
        ("org.rtmd.Dut1.Renew", &["uint32:60"]),
        ("org.rtmd.Dut1.Release", &[]),
    ];
    for (member, args) in calls {
        let err = dbus_send_as_nobody(&d, member, args).expect_err(member);
        assert!(
            err.contains("org.rtmd.Dut1.Error.Leased") && err.contains("gate test"),
            "{member}: {err}"
        );
    }
    // Nothing happened: the image is there, nothing exported or attached, power untouched.
    assert!(d.dir.path().join("images/disk.img").exists());
    assert_eq!(d.property("org.rtmd.Dut1.Nbd", "Exported"), "b false");
    assert_eq!(d.property("org.rtmd.Dut1.Storage", "Attached"), "b false");
    assert_eq!(power_file(&d), "");
    assert_eq!(d.property("org.rtmd.Dut1.Capture", "Artifacts"), "as 0");
    assert_eq!(d.property("org.rtmd.Dut1.Capture", "Recording"), "as 0");
    // Reads stay open to nobody.
    assert!(dbus_send_as_nobody(&d, "org.rtmd.Dut1.Images.List", &[]).is_ok());
    assert!(
        dbus_send_as_nobody(
            &d,
            "org.rtmd.Dut1.Console.WaitFor",
            &["string:never", "uint32:1"]
        )
        .is_err_and(|e| e.contains("Timeout"))
    );
    let out = d.rtmctl(&["audit"]);
    let audit = text(&out.stdout);
    for (member, _) in calls {
        let short = member.trim_start_matches("org.rtmd.Dut1.");
        assert!(
            audit.contains(&format!("nobody (65534) {short}(")),
            "{short} not audited:\n{audit}"
        );
    }
}
