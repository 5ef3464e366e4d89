//! The USB gadget over D-Bus, without a VM: rtmd with `[storage] fake_configfs` pointing at a
//! folder laid out like configfs (src/gadget/fake.rs), driven with rtmctl, busctl and
//! dbus-send; checks what rtmd wrote into the configfs files, and the bad input.

// A test fails by panicking: unwrap, expect, panic and indexing are how it says so.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::string_slice
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

const BOARD: &str = "usbbox";

struct Rig {
    d: Daemon,
    images: PathBuf,
    configfs: PathBuf,
}

/// A configfs folder with `udcs` present, rtmd with `[storage]` (plus `storage_extra`) and
/// `extra` sections.
fn rig(bus: &Bus, udcs: &[&str], storage_extra: &str, extra: &str) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    let configfs = dir.path().join("configfs");
    std::fs::create_dir_all(&images).unwrap();
    std::fs::create_dir_all(configfs.join("usb_gadget")).unwrap();
    std::fs::create_dir_all(configfs.join("udc")).unwrap();
    for udc in udcs {
        std::fs::write(configfs.join("udc").join(udc), "").unwrap();
    }
    std::fs::write(
        images.join("disk.img"),
        noise(1 << 20, 0x9e37_79b9_7f4a_7c15),
    )
    .unwrap();
    let config = format!(
        "name = \"{BOARD}\"\n[images]\ndir = \"images\"\n[storage]\nfake_configfs = \"{}\"\n\
         keyboard = true\nkey_delay_ms = 0\n{storage_extra}\n{extra}",
        configfs.display()
    );
    let d = Daemon::start_in(bus, &config, dir);
    Rig {
        d,
        images: images.canonicalize().unwrap(),
        configfs,
    }
}

impl Rig {
    fn gadget(&self) -> PathBuf {
        self.configfs.join(format!("usb_gadget/rtmd-{BOARD}"))
    }

    fn lun(&self, attr: &str) -> String {
        std::fs::read_to_string(
            self.gadget()
                .join("functions/mass_storage.0/lun.0")
                .join(attr),
        )
        .unwrap()
    }

    fn call(&self, member: &str, args: &[&str]) -> Output {
        self.d.dbus_send(&format!("org.rtmd.Dut1.{member}"), args)
    }
}

fn err_name(out: &Output) -> String {
    assert!(!out.status.success(), "succeeded: {}", text(&out.stdout));
    text(&out.stderr)
}

#[test]
fn attach_ro_then_detach_leaves_no_gadget() {
    let bus = Bus::start();
    let r = rig(&bus, &["dummy_udc.0"], "", "");
    let subsystems = r.d.property("org.rtmd.Dut1", "Subsystems");
    assert!(subsystems.contains("\"storage\"") && subsystems.contains("\"keyboard\""));

    let line = ok_line(&r.d.rtmctl(&["usbg-ms", "on", "--image", "disk.img"]));
    assert_eq!(line, format!("{BOARD}: usbg-ms disk.img (ro)"));
    assert_eq!(r.lun("file"), r.images.join("disk.img").to_string_lossy());
    assert_eq!(r.lun("ro"), "1");
    assert_eq!(r.lun("removable"), "1");
    assert_eq!(
        r.lun("inquiry_string"),
        format!("{:<8}{:<16}{:<4}", "rtmd", BOARD, "1")
    );
    assert_eq!(
        std::fs::read_to_string(r.gadget().join("UDC")).unwrap(),
        "dummy_udc.0"
    );
    assert_eq!(r.d.property("org.rtmd.Dut1.Storage", "Attached"), "b true");
    assert_eq!(
        r.d.property("org.rtmd.Dut1.Storage", "Image"),
        "s \"disk.img\""
    );
    assert_eq!(r.d.property("org.rtmd.Dut1.Storage", "Mode"), "s \"ro\"");
    assert_eq!(
        r.d.property("org.rtmd.Dut1.Storage", "Udc"),
        "s \"dummy_udc.0\""
    );
    assert_eq!(
        ok_line(&r.d.rtmctl(&["usbg-ms", "status"])),
        format!("{BOARD}: usbg-ms disk.img (ro) on dummy_udc.0")
    );

    // Eject: the medium goes, the gadget stays.
    assert!(r.call("Storage.Eject", &[]).status.success());
    assert_eq!(r.lun("file"), "");
    assert_eq!(r.d.property("org.rtmd.Dut1.Storage", "Attached"), "b false");

    // And in again without unbinding: the same gadget folder, a new medium.
    ok_line(&r.d.rtmctl(&["usbg-ms", "on", "--image", "disk.img"]));
    assert_eq!(r.lun("file"), r.images.join("disk.img").to_string_lossy());

    assert_eq!(
        ok_line(&r.d.rtmctl(&["usbg-ms", "off"])),
        format!("{BOARD}: usbg-ms off")
    );
    assert!(!r.gadget().exists());
    assert_eq!(
        std::fs::read_dir(r.configfs.join("usb_gadget"))
            .unwrap()
            .count(),
        0
    );
    // Off again: done already (LAVA runs disable before enable).
    assert_eq!(
        ok_line(&r.d.rtmctl(&["usbg-ms", "off"])),
        format!("{BOARD}: usbg-ms off (nothing was attached)")
    );
}

#[test]
fn cow_writes_go_to_a_copy_that_detach_deletes() {
    let bus = Bus::start();
    let r = rig(&bus, &["dummy_udc.0"], "", "");
    let base = std::fs::read(r.images.join("disk.img")).unwrap();
    ok_line(&r.d.rtmctl(&["usbg-ms", "on", "--image", "disk.img", "--cow"]));
    let copy = PathBuf::from(r.lun("file"));
    assert_ne!(copy, r.images.join("disk.img"));
    assert_eq!(r.lun("ro"), "0");
    assert_eq!(std::fs::read(&copy).unwrap(), base);
    // The board writes (through the kernel, into the copy).
    std::fs::write(&copy, b"written by the board").unwrap();
    assert_eq!(std::fs::read(r.images.join("disk.img")).unwrap(), base);
    // An attached image cannot be removed from the folder.
    let refused = err_line(&r.d.rtmctl(&["image", "rm", "disk.img"]), 1);
    assert!(refused.contains("attached as USB storage"), "{refused}");
    ok_line(&r.d.rtmctl(&["usbg-ms", "off"]));
    assert!(!copy.exists());
    assert_eq!(std::fs::read(r.images.join("disk.img")).unwrap(), base);
}

#[test]
fn a_relative_image_path_is_taken_from_the_callers_folder() {
    let bus = Bus::start();
    let r = rig(&bus, &["dummy_udc.0"], "", "");
    let sub = r.images.join("job-1");
    std::fs::create_dir_all(&sub).unwrap();
    std::fs::write(sub.join("rootfs.img"), b"x").unwrap();
    let rtmctl = |cwd: &Path, image: &str| {
        Command::new(bin("rtmctl"))
            .current_dir(cwd)
            .args(["--bus-address", &r.d.bus, "--dut", BOARD])
            .args(["usbg-ms", "on", "--image", image])
            .env_remove("RTM_DUT")
            .output()
            .unwrap()
    };
    ok_line(&rtmctl(&sub, "rootfs.img"));
    assert_eq!(
        r.d.property("org.rtmd.Dut1.Storage", "Image"),
        "s \"job-1/rootfs.img\""
    );
    ok_line(&r.d.rtmctl(&["usbg-ms", "off"]));

    // A file outside the image folder is refused, relative or not.
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("evil.img"), b"x").unwrap();
    let line = err_line(&rtmctl(outside.path(), "evil.img"), 2);
    assert!(line.contains("outside"), "{line}");
    let line = err_line(&rtmctl(outside.path(), "../../etc/passwd"), 2);
    assert!(!line.is_empty());
}

#[test]
fn keyboard_writes_boot_keyboard_reports() {
    let bus = Bus::start();
    let r = rig(&bus, &["dummy_udc.0"], "", "");
    ok_line(&r.d.rtmctl(&["keyboard", "type", "Hi\n"]));
    // The keyboard alone brings up the gadget, with an empty drive.
    assert_eq!(r.lun("file"), "");
    let desc = std::fs::read(r.gadget().join("functions/hid.0/report_desc")).unwrap();
    assert_eq!(desc.len(), 63);
    assert_eq!(
        ok_line(&r.d.rtmctl(&["keyboard", "press", "ctrl", "alt", "delete"])),
        format!("{BOARD}: pressed ctrl+alt+delete")
    );
    let reports = std::fs::read(r.configfs.join("hidg0")).unwrap();
    let expected: Vec<u8> = [
        [2, 0, 0x0b, 0, 0, 0, 0, 0], // H (shift + h)
        [0; 8],
        [0, 0, 0x0c, 0, 0, 0, 0, 0], // i
        [0; 8],
        [0, 0, 0x28, 0, 0, 0, 0, 0], // enter
        [0; 8],
        [5, 0, 0x4c, 0, 0, 0, 0, 0], // ctrl + alt + delete
        [0; 8],
    ]
    .concat();
    assert_eq!(reports, expected);

    // An unknown key name, or a character the US layout lacks: nothing is typed.
    let out = r.call("Keyboard.Press", &["array:string:ctrl,hyper"]);
    assert!(err_name(&out).contains("org.freedesktop.DBus.Error.InvalidArgs"));
    let line = err_line(&r.d.rtmctl(&["keyboard", "press", "nosuchkey"]), 2);
    assert!(line.contains("unknown key name \"nosuchkey\""), "{line}");
    let line = err_line(&r.d.rtmctl(&["keyboard", "type", "ü"]), 2);
    assert!(line.contains("US keyboard"), "{line}");
    assert_eq!(std::fs::read(r.configfs.join("hidg0")).unwrap(), expected);
}

#[test]
fn bad_input_is_refused_with_named_errors() {
    let bus = Bus::start();
    let r = rig(&bus, &["dummy_udc.0"], "", "");

    // Image missing, outside the folder, bad mode.
    let line = err_line(&r.d.rtmctl(&["usbg-ms", "on", "--image", "missing.img"]), 2);
    assert!(line.contains("no image"), "{line}");
    let out = r.call("Storage.Attach", &["string:/etc/passwd", "string:ro"]);
    assert!(
        err_name(&out).contains("InvalidArgs"),
        "{}",
        text(&out.stderr)
    );
    let out = r.call("Storage.Attach", &["string:disk.img", "string:rw"]);
    assert!(err_name(&out).contains("InvalidArgs"));

    // Detach while not attached.
    let out = r.call("Storage.Detach", &[]);
    assert!(err_name(&out).contains("org.rtmd.Dut1.Error.NotFound"));
    let out = r.call("Storage.Eject", &[]);
    assert!(err_name(&out).contains("org.rtmd.Dut1.Error.NotFound"));

    // Attach while attached.
    ok_line(&r.d.rtmctl(&["usbg-ms", "on", "--image", "disk.img"]));
    let out = r.call("Storage.Attach", &["string:disk.img", "string:cow"]);
    let e = err_name(&out);
    assert!(
        e.contains("org.rtmd.Dut1.Error.Busy") && e.contains("detach it first"),
        "{e}"
    );
    let line = err_line(&r.d.rtmctl(&["usbg-ms", "on", "--image", "disk.img"]), 1);
    assert!(line.contains("disk.img is attached"), "{line}");
    ok_line(&r.d.rtmctl(&["usbg-ms", "off"]));
}

#[test]
fn no_udc_is_a_configuration_error() {
    let bus = Bus::start();
    let r = rig(&bus, &[], "", "");
    let line = err_line(&r.d.rtmctl(&["usbg-ms", "on", "--image", "disk.img"]), 2);
    assert!(line.contains("no USB device controller"), "{line}");
    assert_eq!(r.d.property("org.rtmd.Dut1.Storage", "Attached"), "b false");

    // A configured UDC that is not there names the ones that are.
    let bus = Bus::start();
    let r = rig(&bus, &["a.usb"], "udc = \"fe980000.usb\"", "");
    let line = err_line(&r.d.rtmctl(&["usbg-ms", "on", "--image", "disk.img"]), 2);
    assert!(
        line.contains("no UDC fe980000.usb (present: a.usb)"),
        "{line}"
    );
}

#[test]
fn a_udc_bound_to_another_gadget_is_busy() {
    let bus = Bus::start();
    let r = rig(&bus, &["dummy_udc.0"], "", "");
    let other = r.configfs.join("usb_gadget/someone-else");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("UDC"), "dummy_udc.0\n").unwrap();
    let out = r.call("Storage.Attach", &["string:disk.img", "string:ro"]);
    let e = err_name(&out);
    assert!(
        e.contains("org.rtmd.Dut1.Error.Busy") && e.contains("someone-else"),
        "{e}"
    );
    // Ours was not created, theirs is untouched.
    assert!(!r.gadget().exists());
    assert!(other.join("UDC").exists());
}

#[test]
fn configfs_not_mounted_says_so() {
    let bus = Bus::start();
    let r = rig(&bus, &["dummy_udc.0"], "", "");
    std::fs::remove_dir(r.configfs.join("usb_gadget")).unwrap();
    let line = err_line(&r.d.rtmctl(&["usbg-ms", "on", "--image", "disk.img"]), 2);
    assert!(line.contains("configfs is not mounted"), "{line}");
    let line = err_line(&r.d.rtmctl(&["keyboard", "type", "x"]), 2);
    assert!(line.contains("configfs is not mounted"), "{line}");
}

#[test]
fn an_image_is_never_writable_through_the_gadget_and_nbd_at_once() {
    let bus = Bus::start();
    let port = free_port();
    let r = rig(
        &bus,
        &["dummy_udc.0"],
        "",
        &format!("[nbd]\nlisten = \"127.0.0.1:{port}\""),
    );
    std::fs::write(
        r.images.join("other.img"),
        noise(4096, 0x9e37_79b9_7f4a_7c15),
    )
    .unwrap();

    // NBD exports it writable: the gadget refuses it in any mode.
    ok_line(&r.d.rtmctl(&["nbd", "export", "disk.img", "--cow"]));
    for args in [
        &["usbg-ms", "on", "--image", "disk.img"][..],
        &["usbg-ms", "on", "--image", "disk.img", "--cow"][..],
    ] {
        let line = err_line(&r.d.rtmctl(args), 1);
        assert!(line.contains("exported over NBD"), "{line}");
    }
    // Another image is fine.
    ok_line(&r.d.rtmctl(&["usbg-ms", "on", "--image", "other.img", "--cow"]));
    ok_line(&r.d.rtmctl(&["usbg-ms", "off"]));
    ok_line(&r.d.rtmctl(&["nbd", "unexport"]));

    // The gadget has it writable: NBD refuses to export it in any mode.
    ok_line(&r.d.rtmctl(&["usbg-ms", "on", "--image", "disk.img", "--cow"]));
    for args in [
        &["nbd", "export", "disk.img"][..],
        &["nbd", "export", "disk.img", "--cow"][..],
    ] {
        let line = err_line(&r.d.rtmctl(args), 1);
        assert!(line.contains("attached as USB storage (cow)"), "{line}");
    }
    ok_line(&r.d.rtmctl(&["usbg-ms", "off"]));

    // Both read-only is fine.
    ok_line(&r.d.rtmctl(&["usbg-ms", "on", "--image", "disk.img"]));
    ok_line(&r.d.rtmctl(&["nbd", "export", "disk.img"]));
    // ...but not NBD cow beside a gadget ro.
    ok_line(&r.d.rtmctl(&["nbd", "unexport"]));
    let line = err_line(&r.d.rtmctl(&["nbd", "export", "disk.img", "--cow"]), 1);
    assert!(line.contains("attached as USB storage (ro)"), "{line}");
    ok_line(&r.d.rtmctl(&["usbg-ms", "off"]));
    ok_line(&r.d.rtmctl(&["nbd", "export", "disk.img", "--cow"]));
}

#[test]
fn stopping_the_daemon_removes_the_gadget() {
    let bus = Bus::start();
    let mut r = rig(&bus, &["dummy_udc.0"], "", "");
    ok_line(&r.d.rtmctl(&["usbg-ms", "on", "--image", "disk.img", "--cow"]));
    let copy = PathBuf::from(r.lun("file"));
    assert!(r.gadget().exists() && copy.exists());
    let status = r.d.proc.signal_and_wait("TERM");
    assert!(status.success(), "{status}");
    assert!(!r.gadget().exists());
    assert!(!copy.exists());
}

/// `configfs = PATH` always means the kernel's configfs: a folder laid out like configfs
/// (a typo, an old test path) is never silently driven as the double, which would leave a
/// real board without its USB disk while every call succeeds. Here configfs is not mounted,
/// so the attach fails, naming that, and the folder stays untouched.
#[test]
fn a_configfs_path_is_never_taken_for_the_folder_double() {
    if std::fs::read_to_string("/proc/mounts").is_ok_and(|m| m.contains(" configfs ")) {
        eprintln!("configfs is mounted here; this test needs a host without it");
        return;
    }
    let bus = Bus::start();
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("configfs");
    std::fs::create_dir_all(folder.join("usb_gadget")).unwrap();
    std::fs::create_dir_all(folder.join("udc")).unwrap();
    std::fs::write(folder.join("udc").join("dummy_udc.0"), "").unwrap();
    std::fs::create_dir_all(dir.path().join("images")).unwrap();
    std::fs::write(dir.path().join("images").join("disk.img"), vec![0u8; 4096]).unwrap();
    let config = format!(
        "name = \"{BOARD}\"\n[images]\ndir = \"images\"\n[storage]\nconfigfs = \"{}\"\n",
        folder.display()
    );
    let d = Daemon::start_in(&bus, &config, dir);
    let line = err_line(&d.rtmctl(&["usbg-ms", "on", "--image", "disk.img"]), 2);
    assert!(line.contains("configfs is not mounted"), "{line}");
    let made: Vec<_> = std::fs::read_dir(folder.join("usb_gadget"))
        .unwrap()
        .collect();
    assert!(
        made.is_empty(),
        "the folder was driven as configfs: {made:?}"
    );
}
