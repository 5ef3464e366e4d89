//! The NBD server end to end: rtmd exporting images of its image folder, driven with rtmctl
//! and busctl, read and written by real clients (nbdinfo, nbdcopy, qemu-img, qemu-io, fio),
//! compared with nbdkit serving the same file (tests/nbd/probe.py), and fed bad input.

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
use std::process::{Command, Output};
use std::time::Duration;

use common::*;

const BOARD: &str = "nbdbox";

struct Rig {
    d: Daemon,
    images: PathBuf,
    port: u16,
}

/// rtmd with an image folder and an NBD listener on a free loopback port; `extra` goes into
/// `[nbd]`.
fn rig(bus: &Bus, extra: &str) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    let port = free_port();
    let d = Daemon::start_in(bus, &config_text(port, extra), dir);
    Rig { d, images, port }
}

fn config_text(port: u16, extra: &str) -> String {
    format!(
        "name = \"{BOARD}\"\n[images]\ndir = \"images\"\nlocal_dirs = [\"{}\"]\n\
         [nbd]\nlisten = \"127.0.0.1:{port}\"\n{extra}",
        // `image fetch` of the caller's downloads (temporary folders) is a local source.
        std::env::temp_dir().display()
    )
}

/// A disk image: data, a hole of 8 MiB, data, and a partial last block.
fn image(path: &Path) -> Vec<u8> {
    let mut data = noise(1 << 20, 3);
    data.extend(std::iter::repeat_n(0u8, 8 << 20));
    data.extend(noise((1 << 20) + 777, 5));
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(&data[..1 << 20]).unwrap();
    // The zeros as a real hole, as a fetched image has them.
    f.set_len((9 << 20) as u64).unwrap();
    use std::io::Seek;
    f.seek(std::io::SeekFrom::Start(9 << 20)).unwrap();
    f.write_all(&data[9 << 20..]).unwrap();
    data
}

fn run(cmd: &str, args: &[&str]) -> Output {
    require(cmd);
    Command::new(cmd).args(args).output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed ({}): {}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The URI from `rtmctl nbd export`'s line.
fn export(r: &Rig, args: &[&str]) -> String {
    let mut all = vec!["nbd", "export"];
    all.extend_from_slice(args);
    let line = ok_line(&r.d.rtmctl(&all));
    line.split_whitespace()
        .find(|w| w.starts_with("nbd://"))
        .expect("a URI")
        .trim_end_matches(',')
        .to_string()
}

fn read_all(uri: &str, dir: &Path) -> Vec<u8> {
    let out = dir.join("copy.img");
    let _ = std::fs::remove_file(&out);
    ok(&run("nbdcopy", &[uri, out.to_str().unwrap()]));
    std::fs::read(out).unwrap()
}

fn sha(path: &Path) -> String {
    ok(&run("sha256sum", &[path.to_str().unwrap()]))
}

#[test]
fn ro_export_serves_nbdinfo_nbdcopy_and_qemu_and_refuses_writes() {
    let bus = Bus::start();
    let r = rig(&bus, "");
    let data = image(&r.images.join("rootfs.img"));
    let uri = export(&r, &["rootfs.img"]);
    assert_eq!(uri, format!("nbd://127.0.0.1:{}/rootfs.img", r.port));
    assert_eq!(r.d.property("org.rtmd.Dut1.Nbd", "Exported"), "b true");
    assert_eq!(r.d.property("org.rtmd.Dut1.Nbd", "Mode"), "s \"ro\"");
    assert!(
        r.d.property("org.rtmd.Dut1", "Subsystems")
            .contains("\"nbd\""),
        "Subsystems lists nbd"
    );

    let info = ok(&run("nbdinfo", &["--json", &uri]));
    let size = format!("\"export-size\": {}", data.len());
    for needle in [
        size.as_str(),
        "\"is_read_only\": true",
        "\"can_multi_conn\": true",
        "\"can_flush\": true",
        "\"can_cache\": true",
        "\"base:allocation\"",
        "\"block_size_maximum\": 33554432",
    ] {
        assert!(info.contains(needle), "{needle} in {info}");
    }
    // The default export (empty name) is the current one.
    let default = format!("nbd://127.0.0.1:{}/", r.port);
    assert!(ok(&run("nbdinfo", &["--size", &default])).contains(&data.len().to_string()));
    // LIST shows it.
    assert!(ok(&run("nbdinfo", &["--list", &default])).contains("rootfs.img"));

    // Same bytes through nbdcopy (four connections: multi-conn) and qemu-img.
    assert!(
        read_all(&uri, r.d.dir.path()) == data,
        "nbdcopy read other bytes"
    );
    ok(&run(
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            r.images.join("rootfs.img").to_str().unwrap(),
            &uri,
        ],
    ));
    // Block status: qemu-img map sees the hole as zeros without data.
    let map = ok(&run(
        "qemu-img",
        &["map", "--output=json", "-f", "raw", &uri],
    ));
    let hole = map
        .lines()
        .find(|l| l.contains("\"start\": 1048576,"))
        .unwrap_or_default();
    assert!(
        hole.contains("\"length\": 8388608") && hole.contains("\"zero\": true, \"data\": false"),
        "{map}"
    );

    // qemu sees READ_ONLY and will not open it for writing (a write sent anyway gets EPERM:
    // same_answers_as_nbdkit_for_the_same_requests).
    let out = run(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x55 0 4096", &uri],
    );
    assert!(
        text(&out.stdout).contains("Permission denied")
            || text(&out.stderr).contains("Permission denied"),
        "{} {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(std::fs::read(r.images.join("rootfs.img")).unwrap(), data);

    // Same export again: same URI; another one: Busy; unexport twice: fine.
    assert_eq!(export(&r, &["rootfs.img"]), uri);
    std::fs::write(r.images.join("other.img"), [1u8; 4096]).unwrap();
    let busy = err_line(&r.d.rtmctl(&["nbd", "export", "other.img"]), 1);
    assert!(busy.contains("rootfs.img is exported"), "{busy}");
    let out = r.d.dbus_send(
        "org.rtmd.Dut1.Nbd.Export",
        &["string:other.img", "string:cow"],
    );
    assert!(
        text(&out.stderr).contains("org.rtmd.Dut1.Error.Busy"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        ok_line(&r.d.rtmctl(&["nbd", "status"])),
        format!("{BOARD}: rootfs.img (ro) at {uri}, 0 clients")
    );
    ok_line(&r.d.rtmctl(&["nbd", "unexport"]));
    ok_line(&r.d.rtmctl(&["nbd", "unexport"]));
    assert_eq!(r.d.property("org.rtmd.Dut1.Nbd", "Exported"), "b false");
    assert_eq!(
        ok_line(&r.d.rtmctl(&["nbd", "status"])),
        format!("{BOARD}: nothing exported")
    );
    // And the port still answers, with no export: GO gets ERR_UNKNOWN.
    let out = run("nbdinfo", &[&uri]);
    assert!(!out.status.success());
}

#[test]
fn cow_writes_land_in_the_overlay_survive_a_restart_and_reset_discards_them() {
    let bus = Bus::start();
    let r = rig(&bus, "");
    let base = r.images.join("rootfs.img");
    let data = image(&base);
    let before = sha(&base);
    let uri = export(&r, &["rootfs.img", "--cow"]);
    ok(&run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x55 4000 10000",
            "-c",
            "write -z 2M 64k",
            "-c",
            "write -P 0x66 9441280 4096",
            "-c",
            "flush",
            &uri,
        ],
    ));
    let mut expected = data.clone();
    expected[4000..14000].fill(0x55);
    expected[9441280..9441280 + 4096].fill(0x66);
    assert!(read_all(&uri, r.d.dir.path()) == expected, "overlay reads");
    assert_eq!(sha(&base), before, "the image stays byte-identical");
    // fio writes random blocks with checksums and reads them back (libnbd engine).
    ok(&run(
        "fio",
        &[
            "--name=verify",
            "--ioengine=nbd",
            &format!("--uri={uri}"),
            "--rw=randwrite",
            "--bs=4k",
            "--size=1M",
            "--offset=5M",
            "--iodepth=8",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
            // No `local-verify-*.state` file left in the working tree when a check fails.
            "--verify_state_save=0",
        ],
    ));

    // rtmd stops (SIGTERM) and starts again: the overlay is found again.
    let mut r = r;
    assert!(r.d.proc.signal_and_wait("TERM").success());
    let config_path = r.d.dir.path().join("board.toml");
    r.d.proc = Daemon::spawn(&bus.address, &config_path);
    r.d.proc.wait_line("ready on");
    let uri = export(&r, &["rootfs.img", "--cow"]);
    let after_restart = read_all(&uri, r.d.dir.path());
    assert!(after_restart[4000..14000].iter().all(|&b| b == 0x55));
    assert!(
        after_restart[9441280..9441280 + 4096]
            .iter()
            .all(|&b| b == 0x66)
    );

    // Reset: the pristine image again, and the overlay's space given back.
    ok_line(&r.d.rtmctl(&["nbd", "reset"]));
    assert!(
        read_all(&uri, r.d.dir.path()) == data,
        "pristine after reset"
    );
    let overlay = r
        .images
        .join(".rtmd/overlays")
        .join(BOARD)
        .join("rootfs.img.cow");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&overlay).unwrap().blocks(), 0);
    // `export --cow --reset` in one go, as a LAVA job does it.
    ok(&run(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x77 0 512", &uri],
    ));
    let line = ok_line(&r.d.rtmctl(&["nbd", "export", "rootfs.img", "--cow", "--reset"]));
    assert!(line.ends_with("fresh overlay"), "{line}");
    assert!(read_all(&uri, r.d.dir.path()) == data);
    assert_eq!(sha(&base), before);
}

#[test]
fn an_overlay_is_not_laid_over_a_replaced_image() {
    let bus = Bus::start();
    let r = rig(&bus, "");
    let base = r.images.join("rootfs.img");
    std::fs::write(&base, vec![1u8; 1 << 20]).unwrap();
    let uri = export(&r, &["rootfs.img", "--cow"]);
    ok(&run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x55 0 4096",
            "-c",
            "flush",
            &uri,
        ],
    ));
    ok_line(&r.d.rtmctl(&["nbd", "unexport"]));
    // A new image under the same name (as a new fetch does it: a new file, renamed).
    let new = r.images.join("new.tmp");
    std::fs::write(&new, vec![2u8; 1 << 20]).unwrap();
    std::fs::rename(&new, &base).unwrap();
    let uri = export(&r, &["rootfs.img", "--cow"]);
    assert!(read_all(&uri, r.d.dir.path()) == vec![2u8; 1 << 20]);
    r.d.proc.wait_line("made for another image");
}

#[test]
fn exported_names_stay_inside_the_image_folder() {
    let bus = Bus::start();
    let r = rig(&bus, "");
    std::fs::write(r.images.join("rootfs.img"), [0u8; 4096]).unwrap();
    let outside = r.d.dir.path().join("secret.img");
    std::fs::write(&outside, [9u8; 4096]).unwrap();
    std::os::unix::fs::symlink(&outside, r.images.join("link.img")).unwrap();
    for (name, error) in [
        ("../secret.img", "InvalidArgs"),
        (outside.to_str().unwrap(), "InvalidArgs"),
        ("link.img", "InvalidArgs"),
        ("missing.img", "NotFound"),
        (".rtmd/index", "InvalidArgs"),
    ] {
        let out = r.d.dbus_send(
            "org.rtmd.Dut1.Nbd.Export",
            &[&format!("string:{name}"), "string:ro"],
        );
        assert!(
            text(&out.stderr).contains(error),
            "{name}: {}",
            text(&out.stderr)
        );
        let line = err_line(&r.d.rtmctl(&["nbd", "export", name]), 2);
        assert!(line.starts_with(&format!("rtmctl: {BOARD}: ")), "{line}");
    }
    let out = r.d.dbus_send(
        "org.rtmd.Dut1.Nbd.Export",
        &["string:rootfs.img", "string:rw"],
    );
    assert!(
        text(&out.stderr).contains("InvalidArgs"),
        "{}",
        text(&out.stderr)
    );
    // An absolute path inside the folder is fine.
    let inside = r.images.join("rootfs.img");
    export(&r, &[inside.to_str().unwrap()]);
    assert_eq!(
        r.d.property("org.rtmd.Dut1.Nbd", "Image"),
        "s \"rootfs.img\""
    );
}

#[test]
fn a_deleted_image_keeps_serving_until_unexport_and_rm_of_the_export_is_refused() {
    let bus = Bus::start();
    let r = rig(&bus, "");
    let data = noise(2 << 20, 9);
    std::fs::write(r.images.join("rootfs.img"), &data).unwrap();
    let uri = export(&r, &["rootfs.img"]);
    let refused = err_line(&r.d.rtmctl(&["image", "rm", "rootfs.img"]), 1);
    assert!(refused.contains("exported over NBD"), "{refused}");
    std::fs::remove_file(r.images.join("rootfs.img")).unwrap();
    assert!(
        read_all(&uri, r.d.dir.path()) == data,
        "the open file is still served"
    );
    ok_line(&r.d.rtmctl(&["nbd", "unexport"]));
    let gone = err_line(&r.d.rtmctl(&["nbd", "export", "rootfs.img"]), 2);
    assert!(gone.contains("rootfs.img"), "{gone}");
}

/// nbdkit serving the same file answers the same requests, good and bad, the same way.
#[test]
fn same_answers_as_nbdkit_for_the_same_requests() {
    require("nbdkit");
    require("python3");
    let bus = Bus::start();
    let r = rig(&bus, "");
    let size: u64 = 128 << 20;
    let path = r.images.join("disk.img");
    std::fs::File::create(&path).unwrap().set_len(size).unwrap();
    let probe = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/nbd/probe.py");
    let answers = |port: u16, name: &str, mode: &str| {
        let out = Command::new("python3")
            .arg(&probe)
            .args([&port.to_string(), name, &size.to_string(), mode])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let nbdkit = |port: u16, args: &[&str]| {
        let mut cmd = Command::new("nbdkit");
        cmd.args([
            "-f",
            "-i",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-e",
            "disk.img",
        ])
        .args(args);
        let p = Proc::spawn("nbdkit", cmd, true);
        eventually("nbdkit listens", || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        p
    };
    let compare = |ours: &str, theirs: &str, only_ours: &[&str]| {
        let keep = |s: &str| -> Vec<String> {
            s.lines()
                .filter(|l| !only_ours.iter().any(|o| l.starts_with(o)))
                .map(str::to_string)
                .collect()
        };
        assert_eq!(keep(ours), keep(theirs), "rtmd:\n{ours}\nnbdkit:\n{theirs}");
    };

    // Read-only.
    export(&r, &["disk.img"]);
    let ours = answers(r.port, "disk.img", "ro");
    let port = free_port();
    let mut kit = nbdkit(port, &["-r", "file", path.to_str().unwrap()]);
    let theirs = answers(port, "disk.img", "ro");
    let _ = kit.signal_and_wait("TERM");
    // nbdkit's file plugin serves any name; rtmd knows its one export.
    compare(&ours, &theirs, &["unknown export"]);
    for expected in [
        "structured write to ro: errno 1",
        "simple read past the end: errno 22",
        "structured read of 65 MiB: errno 12",
        "unknown option: reply 0x80000001",
        "bad request magic: closed",
        "after an unknown command: errno 22 then errno 0",
        "unknown export: reply 0x80000006",
    ] {
        assert!(ours.contains(expected), "{expected} in\n{ours}");
    }

    // Copy-on-write, beside nbdkit's cow filter.
    ok_line(&r.d.rtmctl(&["nbd", "unexport"]));
    export(&r, &["disk.img", "--cow"]);
    let ours = answers(r.port, "disk.img", "rw");
    let port = free_port();
    let mut kit = nbdkit(port, &["--filter=cow", "file", path.to_str().unwrap()]);
    let theirs = answers(port, "disk.img", "rw");
    let _ = kit.signal_and_wait("TERM");
    // nbdkit's cow filter has no WRITE_ZEROES with NO_HOLE; rtmd zeroes in the overlay.
    compare(&ours, &theirs, &["write_zeroes with NO_HOLE"]);
    for expected in [
        "write with FUA, read back: errno 0, errno 0, same bytes",
        "write past the end: errno 28",
        "trim past the end: errno 22",
        "oversized write, then a read: errno 12 then errno 0",
        "write_zeroes with NO_HOLE: errno 0",
    ] {
        assert!(ours.contains(expected), "{expected} in\n{ours}");
    }
}

/// Garbage, truncated handshakes and vanishing clients never disturb other clients.
#[test]
fn bad_clients_are_dropped_and_others_are_served() {
    let bus = Bus::start();
    let r = rig(&bus, "");
    // Larger than the largest request, so that an oversized one is not out of range first.
    let mut data = noise(1 << 20, 1);
    data.resize(72 << 20, 0);
    std::fs::write(r.images.join("rootfs.img"), &data).unwrap();
    let uri = export(&r, &["rootfs.img", "--cow"]);
    let addr = ("127.0.0.1", r.port);

    // A client that stays connected through all of it.
    let mut steady = Command::new("qemu-io");
    steady.args(["-f", "raw", &uri]);
    let steady = Proc::spawn_stdin("qemu-io", steady);
    eventually("one client", || {
        r.d.property("org.rtmd.Dut1.Nbd", "Clients") == "u 1"
    });

    // Garbage on the port: the connection is closed.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting[..8], b"NBDMAGIC");
    s.write_all(&noise(4096, 2)).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    // A truncated handshake: half the client flags, then gone.
    let mut s = TcpStream::connect(addr).unwrap();
    s.read_exact(&mut greeting).unwrap();
    s.write_all(&[0, 0]).unwrap();
    drop(s);
    // A client that vanishes in the middle of a 1 MiB WRITE's payload.
    let mut s = handshake(addr);
    let mut req = Vec::new();
    req.extend_from_slice(&0x2560_9513u32.to_be_bytes());
    req.extend_from_slice(&0u16.to_be_bytes());
    req.extend_from_slice(&1u16.to_be_bytes());
    req.extend_from_slice(&1u64.to_be_bytes());
    req.extend_from_slice(&0u64.to_be_bytes());
    req.extend_from_slice(&(1u32 << 20).to_be_bytes());
    s.write_all(&req).unwrap();
    s.write_all(&[0xee; 1000]).unwrap();
    drop(s);
    // An oversized READ (64 MiB + 1) is refused, the connection goes on.
    let mut s = handshake(addr);
    let mut req = req.clone();
    req[6..8].copy_from_slice(&0u16.to_be_bytes());
    req[24..28].copy_from_slice(&((64u32 << 20) + 1).to_be_bytes());
    s.write_all(&req).unwrap();
    let mut reply = [0u8; 16];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(&reply[4..8], &12u32.to_be_bytes(), "ENOMEM");
    drop(s);

    // Nothing of the partial write landed; the steady client and new ones are served.
    assert!(read_all(&uri, r.d.dir.path()) == data);
    let mut steady = steady;
    steady.send("write -P 0x42 0 512\n");
    steady.send("read -P 0x42 0 512\n");
    steady.send("quit\n");
    steady.stdin = None;
    let status = steady.wait();
    assert!(status.success());
    let out = steady.text();
    assert!(!out.contains("Pattern verification failed"), "{out}");
    assert!(out.contains("read 512/512 bytes"), "{out}");
    r.d.proc.wait_line("handshake failed");
    eventually("no clients", || {
        r.d.property("org.rtmd.Dut1.Nbd", "Clients") == "u 0"
    });
}

/// Fixed newstyle, NO_ZEROES, GO for the default export without structured replies.
fn handshake(addr: (&str, u16)) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting).unwrap();
    s.write_all(&3u32.to_be_bytes()).unwrap();
    let mut go = Vec::new();
    go.extend_from_slice(&0x4948_4156_454f_5054u64.to_be_bytes());
    go.extend_from_slice(&7u32.to_be_bytes());
    go.extend_from_slice(&6u32.to_be_bytes());
    go.extend_from_slice(&0u32.to_be_bytes());
    go.extend_from_slice(&0u16.to_be_bytes());
    s.write_all(&go).unwrap();
    // Replies until ACK.
    loop {
        let mut h = [0u8; 20];
        s.read_exact(&mut h).unwrap();
        let kind = u32::from_be_bytes([h[12], h[13], h[14], h[15]]);
        let len = u32::from_be_bytes([h[16], h[17], h[18], h[19]]) as usize;
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).unwrap();
        assert!(kind & 0x8000_0000 == 0, "option error {kind:#x}");
        if kind == 1 {
            return s;
        }
    }
}

/// The overlay's filesystem fills up: the client gets ENOSPC, what was acknowledged stays,
/// and the export goes on serving. rtmd runs in a private mount namespace with its overlay
/// folder on a 256 KiB tmpfs.
#[test]
fn a_full_overlay_disk_is_enospc_and_loses_nothing() {
    require("unshare");
    let bus = Bus::start();
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    let small = dir.path().join("small");
    std::fs::create_dir_all(&images).unwrap();
    std::fs::create_dir_all(&small).unwrap();
    let data = noise(4 << 20, 4);
    std::fs::write(images.join("rootfs.img"), &data).unwrap();
    let port = free_port();
    let config = dir.path().join("board.toml");
    std::fs::write(
        &config,
        config_text(port, &format!("overlay_dir = \"{}\"\n", small.display())),
    )
    .unwrap();
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "sh", "-c"])
        .arg(format!(
            "mount -t tmpfs -o size=256k tmpfs '{}' && exec '{}' --config '{}' --bus-address '{}' --log stderr",
            small.display(),
            bin("rtmd").display(),
            config.display(),
            bus.address
        ))
        .env("RUST_LOG", "info");
    let proc = Proc::spawn("rtmd", cmd, true);
    proc.wait_line("ready on");
    let r = Rig {
        d: Daemon {
            proc,
            dir,
            board: BOARD.to_string(),
            bus: bus.address.clone(),
        },
        images,
        port,
    };
    let uri = export(&r, &["rootfs.img", "--cow"]);
    ok(&run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x11 0 64k",
            "-c",
            "flush",
            &uri,
        ],
    ));
    // 1 MiB does not fit in what is left of 256 KiB.
    let out = run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x22 1M 1M",
            "-c",
            "flush",
            &uri,
        ],
    );
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(said.contains("No space left on device"), "{said}");
    // The acknowledged write is there, the refused one is not (its clusters read as the
    // image), and the export still takes writes where the overlay has room.
    ok(&run(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x33 0 4k", &uri],
    ));
    let back = read_all(&uri, r.d.dir.path());
    assert!(back[..4096].iter().all(|&b| b == 0x33));
    assert!(back[4096..65536].iter().all(|&b| b == 0x11));
    let refused_region = &back[1 << 20..2 << 20];
    let untouched = refused_region
        .chunks(4096)
        .zip(data[1 << 20..2 << 20].chunks(4096))
        .filter(|(a, b)| a == b)
        .count();
    let landed = refused_region
        .chunks(4096)
        .filter(|c| c.iter().all(|&b| b == 0x22))
        .count();
    // A cluster is either the image's or the written one, never torn or garbage.
    assert_eq!(untouched + landed, 256, "every cluster is old or new");
    assert!(untouched > 0, "most of the refused write did not land");
    assert_eq!(&back[2 << 20..], &data[2 << 20..]);
}

/// LAVA's flasher deploy: `image fetch {IMAGE} --nbd cow` with a relative path in the
/// caller's folder, the way LAVA runs it in its download folder.
#[test]
fn image_fetch_then_export_in_one_command() {
    require("xz");
    let bus = Bus::start();
    let r = rig(&bus, "");
    let downloads = tempfile::tempdir().unwrap();
    let data = noise(3 << 20, 8);
    std::fs::write(downloads.path().join("nightly.img"), &data).unwrap();
    ok(&run(
        "xz",
        &["-k", downloads.path().join("nightly.img").to_str().unwrap()],
    ));
    let out = Command::new(bin("rtmctl"))
        .current_dir(downloads.path())
        .args(["--bus-address", &r.d.bus, "--dut", BOARD])
        .args(["image", "fetch", "nightly.img.xz", "--nbd", "cow"])
        .output()
        .unwrap();
    let line = ok_line(&out);
    assert!(
        line.starts_with(&format!(
            "{BOARD}: nightly.img (cow) at nbd://127.0.0.1:{}/nightly.img",
            r.port
        )) && line.ends_with("fresh overlay"),
        "{line}"
    );
    let uri = format!("nbd://127.0.0.1:{}/nightly.img", r.port);
    assert!(read_all(&uri, r.d.dir.path()) == data);
    // A second job: the same image is a cache hit, and the overlay starts fresh again.
    ok(&run(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x99 0 4k", &uri],
    ));
    ok_line(&r.d.rtmctl(&["nbd", "unexport"]));
    let out = Command::new(bin("rtmctl"))
        .current_dir(downloads.path())
        .args(["--bus-address", &r.d.bus, "--dut", BOARD])
        .args(["image", "fetch", "nightly.img.xz", "--nbd", "cow"])
        .output()
        .unwrap();
    ok_line(&out);
    assert!(read_all(&uri, r.d.dir.path()) == data);
}

/// rtmd's memory bound under any one client's flood (docs/nbd.md "What a client may cost"):
/// the issue's goal for the whole daemon. Before backpressure, a FLUSH flood reached 8 GB.
const RSS_BOUND_KIB: u64 = 64 * 1024;

/// A field of /proc/PID/status in KiB (`VmRSS`, `VmHWM`: the peak).
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or_else(|| panic!("no {field} in {status}"))
}

/// tests/nbd/flood.py against the export: `args` after the port.
fn flood(port: u16, args: &[&str]) -> Proc {
    require("python3");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/nbd/flood.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script).arg(port.to_string()).args(args);
    let p = Proc::spawn("flood.py", cmd, true);
    p.wait_line("flooding");
    p
}

/// Clients that send FLUSH (and READ) requests as fast as they can and never read a reply
/// stop being read; rtmd's memory stays bounded, and other clients read, write and flush
/// through it all.
#[test]
fn a_flood_that_never_reads_its_replies_stops_being_read() {
    let bus = Bus::start();
    let r = rig(&bus, "");
    let data = noise(4 << 20, 12);
    std::fs::write(r.images.join("rootfs.img"), &data).unwrap();
    let uri = export(&r, &["rootfs.img", "--cow"]);
    let pid = r.d.proc.child.id();

    let mut flushes = flood(r.port, &["--command", "flush"]);
    // The event that says backpressure held: rtmd stopped reading that client.
    r.d.proc
        .wait_line("replies are waiting for the client to read them");
    let mut reads = flood(
        r.port,
        &[
            "--command",
            "read",
            "--length",
            "65536",
            "--connections",
            "2",
        ],
    );
    reads.wait_line("blocked after");

    // Others are served meanwhile: a reader (four connections) and a writer whose FLUSH
    // shares the overlay with the flood's.
    assert!(
        read_all(&uri, r.d.dir.path()) == data,
        "nbdcopy during the flood"
    );
    ok(&run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x5a 8k 4k",
            "-c",
            "flush",
            "-c",
            "read -P 0x5a 8k 4k",
            &uri,
        ],
    ));
    let peak = status_kib(pid, "VmHWM");
    eprintln!("rtmd's peak RSS during the flood: {peak} KiB");
    assert!(
        peak < RSS_BOUND_KIB,
        "rtmd's peak RSS is {peak} KiB during the flood"
    );

    // Unexport ends the flood's connections although their readers are blocked.
    ok_line(&r.d.rtmctl(&["nbd", "unexport"]));
    assert_eq!(r.d.property("org.rtmd.Dut1.Nbd", "Clients"), "u 0");
    for flood in [&mut flushes, &mut reads] {
        assert!(flood.wait().success());
        assert!(flood.text().contains("the server closed a connection"));
    }
    assert!(r.d.proc.matching("slow to close").is_empty());
    let uri = export(&r, &["rootfs.img", "--cow"]);
    let mut expected = data.clone();
    expected[8192..12288].fill(0x5a);
    assert!(read_all(&uri, r.d.dir.path()) == expected, "nbdcopy after");
    let peak = status_kib(pid, "VmHWM");
    assert!(peak < RSS_BOUND_KIB, "rtmd's peak RSS is {peak} KiB");
    assert!(
        r.d.proc.matching("replies are waiting").len() == 1,
        "said once, for the FLUSH flood's connection"
    );
}

/// Past `max_clients` connections (a handshake left half-done counts), a new one is closed
/// at once; the connected clients go on, and a freed place is taken again.
#[test]
fn connections_over_max_clients_are_refused_and_the_others_keep_working() {
    let bus = Bus::start();
    let r = rig(&bus, "max_clients = 3\n");
    let data = noise(1 << 20, 13);
    std::fs::write(r.images.join("rootfs.img"), &data).unwrap();
    let uri = export(&r, &["rootfs.img", "--cow"]);
    let addr = ("127.0.0.1", r.port);

    let mut steady = Command::new("qemu-io");
    steady.args(["-f", "raw", &uri]);
    let mut steady = Proc::spawn_stdin("qemu-io", steady);
    eventually("one client", || {
        r.d.property("org.rtmd.Dut1.Nbd", "Clients") == "u 1"
    });
    let idle = handshake(addr);
    eventually("two clients", || {
        r.d.property("org.rtmd.Dut1.Nbd", "Clients") == "u 2"
    });
    // The third place: a handshake that stops after the greeting.
    let mut half = TcpStream::connect(addr).unwrap();
    half.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut greeting = [0u8; 18];
    half.read_exact(&mut greeting).unwrap();

    // Over the cap: no greeting, the connection is closed; a real client says so.
    let mut over = TcpStream::connect(addr).unwrap();
    over.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut got = Vec::new();
    assert!(
        matches!(over.read_to_end(&mut got), Ok(0) | Err(_)) && got.is_empty(),
        "no greeting over the cap: {got:?}"
    );
    let out = run("nbdinfo", &["--size", &uri]);
    assert!(!out.status.success(), "nbdinfo over the cap");
    r.d.proc
        .wait_line("refused: 3 connections already (max_clients)");
    // Fifty more, held open by their client: each is closed by rtmd at once, and costs it no
    // descriptor.
    let pid = r.d.proc.child.id();
    let descriptors = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    let before = descriptors();
    let held: Vec<TcpStream> = (0..50).map(|_| TcpStream::connect(addr).unwrap()).collect();
    for mut s in &held {
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        assert!(matches!(s.read(&mut [0u8; 1]), Ok(0) | Err(_)), "closed");
    }
    let after = descriptors();
    assert!(after <= before + 2, "{before} descriptors, then {after}");

    // The clients inside go on.
    steady.send("write -P 0x42 0 512\n");
    steady.send("read -P 0x42 0 512\n");
    let mut cookie_read = Vec::new();
    cookie_read.extend_from_slice(&0x2560_9513u32.to_be_bytes());
    cookie_read.extend_from_slice(&[0, 0, 0, 0]);
    cookie_read.extend_from_slice(&7u64.to_be_bytes());
    cookie_read.extend_from_slice(&4096u64.to_be_bytes());
    cookie_read.extend_from_slice(&4096u32.to_be_bytes());
    let mut idle = idle;
    idle.write_all(&cookie_read).unwrap();
    let mut reply = [0u8; 16 + 4096];
    idle.read_exact(&mut reply).unwrap();
    assert_eq!(&reply[4..8], &[0, 0, 0, 0], "errno");
    assert!(reply[16..] == data[4096..8192], "the idle client reads");

    // A place freed is taken again.
    drop(half);
    eventually("nbdinfo gets the freed place", || {
        run("nbdinfo", &["--size", &uri]).status.success()
    });
    // Said once per burst, then counted.
    assert_eq!(r.d.proc.matching("refused: 3 connections").len(), 1);
    r.d.proc
        .wait_line("connections were refused in all over max_clients = 3");
    steady.send("quit\n");
    steady.stdin = None;
    assert!(steady.wait().success());
    let out = steady.text();
    assert!(out.contains("read 512/512 bytes"), "{out}");
    assert!(!out.contains("Pattern verification failed"), "{out}");
}

/// A client that stops in the middle of its handshake is dropped at `handshake_timeout_s`,
/// and its place is free again; a client in transmission has no such deadline.
#[test]
fn a_client_stalled_in_its_handshake_is_released_by_the_deadline() {
    let bus = Bus::start();
    let r = rig(&bus, "max_clients = 2\nhandshake_timeout_s = 1\n");
    let data = noise(1 << 20, 14);
    std::fs::write(r.images.join("rootfs.img"), &data).unwrap();
    let uri = export(&r, &["rootfs.img"]);
    let addr = ("127.0.0.1", r.port);
    // In transmission before the stalled one comes, idle until after it is dropped.
    let mut idle = handshake(addr);

    let mut stalled = TcpStream::connect(addr).unwrap();
    stalled
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut greeting = [0u8; 18];
    stalled.read_exact(&mut greeting).unwrap();
    // Half of the client flags, then nothing.
    stalled.write_all(&[0, 0]).unwrap();
    let mut rest = [0u8; 1];
    assert_eq!(stalled.read(&mut rest).unwrap(), 0, "closed by rtmd");
    r.d.proc.wait_line("no complete handshake within 1s");

    // Its place is free, and the idle client was not dropped.
    ok(&run("nbdinfo", &["--size", &uri]));
    let mut req = Vec::new();
    req.extend_from_slice(&0x2560_9513u32.to_be_bytes());
    req.extend_from_slice(&[0, 0, 0, 0]);
    req.extend_from_slice(&9u64.to_be_bytes());
    req.extend_from_slice(&0u64.to_be_bytes());
    req.extend_from_slice(&512u32.to_be_bytes());
    idle.write_all(&req).unwrap();
    let mut reply = [0u8; 16 + 512];
    idle.read_exact(&mut reply).unwrap();
    assert_eq!(&reply[4..8], &[0, 0, 0, 0], "errno");
    assert!(reply[16..] == data[..512]);
}

/// One NBD request with simple replies: its header (and payload), then its reply's errno.
fn request(s: &mut TcpStream, command: u16, offset: u64, payload: &[u8]) -> u32 {
    let mut req = Vec::new();
    req.extend_from_slice(&0x2560_9513u32.to_be_bytes());
    req.extend_from_slice(&0u16.to_be_bytes());
    req.extend_from_slice(&command.to_be_bytes());
    req.extend_from_slice(&u64::from(command).to_be_bytes());
    req.extend_from_slice(&offset.to_be_bytes());
    req.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    req.extend_from_slice(payload);
    s.write_all(&req).unwrap();
    reply_errno(s)
}

fn reply_errno(s: &mut TcpStream) -> u32 {
    let mut reply = [0u8; 16];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(&reply[..4], &0x6744_6698u32.to_be_bytes(), "simple reply");
    u32::from_be_bytes([reply[4], reply[5], reply[6], reply[7]])
}

/// The power cut between the two steps of a FLUSH: the overlay's data is synced, its map not
/// yet. rtmd (a debug build) pauses there on the test's FIFO; the test keeps a copy of the
/// overlay's data as the disk has it then, writes another cluster (acknowledged, not flushed),
/// lets the flush finish and kills rtmd; then puts the data back as the power cut would have
/// left it (the later write lost) and starts rtmd again. Every cluster the map holds must be
/// there: the one the FLUSH covered reads as written, the later one as the image, never as a
/// hole. (Taking the map's bits after syncing the data made the later cluster read as zeros.)
#[test]
fn a_crash_between_a_flushs_data_and_its_map_keeps_the_map_honest() {
    let bus = Bus::start();
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    let data = noise(1 << 20, 15);
    std::fs::write(images.join("rootfs.img"), &data).unwrap();
    let fifo = dir.path().join("flush-pause");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let port = free_port();
    let config = dir.path().join("board.toml");
    std::fs::write(&config, config_text(port, "")).unwrap();
    let proc = Daemon::spawn_env(&bus.address, &config, &[("RTMD_TEST_FLUSH_PAUSE", &fifo)]);
    proc.wait_line("ready on");
    let mut r = Rig {
        d: Daemon {
            proc,
            dir,
            board: BOARD.to_string(),
            bus: bus.address.clone(),
        },
        images,
        port,
    };
    export(&r, &["rootfs.img", "--cow"]);
    let overlay = r
        .images
        .join(".rtmd/overlays")
        .join(BOARD)
        .join("rootfs.img.cow");
    let addr = ("127.0.0.1", r.port);

    // Client A writes a cluster and flushes; the flush stops after syncing the data.
    let mut a = handshake(addr);
    assert_eq!(request(&mut a, 1, 0, &[0x55; 4096]), 0);
    let flush = {
        let mut req = Vec::new();
        req.extend_from_slice(&0x2560_9513u32.to_be_bytes());
        req.extend_from_slice(&[0, 0, 0, 3]);
        req.extend_from_slice(&3u64.to_be_bytes());
        req.extend_from_slice(&[0; 12]);
        req
    };
    a.write_all(&flush).unwrap();
    r.d.proc
        .wait_line("test hook: flush paused between the overlay's data and its map");
    let durable = std::fs::read(&overlay).unwrap();

    // Client B writes another cluster meanwhile: acknowledged, not flushed.
    let mut b = handshake(addr);
    assert_eq!(request(&mut b, 1, 65536, &[0x66; 4096]), 0);

    // The flush goes on and is acknowledged; then the power goes.
    std::fs::write(&fifo, b"go").unwrap();
    assert_eq!(reply_errno(&mut a), 0, "FLUSH acknowledged");
    r.d.proc.signal_and_wait("KILL");
    drop((a, b));
    // What the disk holds after the cut: the data as synced, the map as synced.
    std::fs::write(&overlay, &durable).unwrap();

    r.d.proc = Daemon::spawn(&bus.address, &config);
    r.d.proc.wait_line("ready on");
    let uri = export(&r, &["rootfs.img", "--cow"]);
    let back = read_all(&uri, r.d.dir.path());
    assert!(
        back[..4096].iter().all(|&b| b == 0x55),
        "what FLUSH acknowledged is there"
    );
    assert!(
        back[65536..69632] == data[65536..69632],
        "the unflushed cluster reads as the image, not as a hole: its bit was not made durable \
         before its data ({:?}...)",
        &back[65536..65552]
    );
    assert!(back[4096..65536] == data[4096..65536] && back[69632..] == data[69632..]);
}

/// rtmd out of descriptors: the listener cannot accept, backs off and says so once; the
/// connected client and D-Bus go on; once descriptors are free again it accepts the
/// connections that waited.
#[test]
fn a_listener_out_of_descriptors_backs_off_and_the_rest_goes_on() {
    require("prlimit");
    let bus = Bus::start();
    let r = rig(&bus, "");
    let data = noise(1 << 20, 16);
    std::fs::write(r.images.join("rootfs.img"), &data).unwrap();
    let uri = export(&r, &["rootfs.img"]);
    let addr = ("127.0.0.1", r.port);
    let mut steady = handshake(addr);
    eventually("one client", || {
        r.d.property("org.rtmd.Dut1.Nbd", "Clients") == "u 1"
    });

    // Two descriptors left, then six connections.
    let pid = r.d.proc.child.id().to_string();
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let (soft, hard) = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[3].to_string(), f[4].to_string())
        })
        .unwrap();
    let low = (open + 2).to_string();
    ok(&run(
        "prlimit",
        &["--pid", &pid, &format!("--nofile={low}:{hard}")],
    ));
    let waiting: Vec<TcpStream> = (0..6).map(|_| TcpStream::connect(addr).unwrap()).collect();
    r.d.proc.wait_line("cannot accept connections");

    // The connected client reads; D-Bus answers.
    let mut req = Vec::new();
    req.extend_from_slice(&0x2560_9513u32.to_be_bytes());
    req.extend_from_slice(&[0, 0, 0, 0]);
    req.extend_from_slice(&1u64.to_be_bytes());
    req.extend_from_slice(&4096u64.to_be_bytes());
    req.extend_from_slice(&4096u32.to_be_bytes());
    steady.write_all(&req).unwrap();
    let mut reply = [0u8; 16 + 4096];
    steady.read_exact(&mut reply).unwrap();
    assert!(reply[4..8] == [0, 0, 0, 0] && reply[16..] == data[4096..8192]);
    assert!(ok_line(&r.d.rtmctl(&["nbd", "status"])).contains("rootfs.img (ro)"));

    // Descriptors again: the connections that waited in the backlog are taken.
    ok(&run(
        "prlimit",
        &["--pid", &pid, &format!("--nofile={soft}:{hard}")],
    ));
    let again = r.d.proc.wait_line("accepting connections again after");
    let attempts: u64 = again
        .split("after ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(
        attempts < 1000,
        "it backed off instead of spinning: {again}"
    );
    assert_eq!(
        r.d.proc.matching("cannot accept connections").len(),
        1,
        "said once"
    );
    drop(waiting);
    ok(&run("nbdinfo", &["--size", &uri]));
}

/// A WRITE larger than the pieces its payload is read in, starting and ending inside
/// clusters, lands whole; the bytes around it stay the image's.
#[test]
fn a_large_unaligned_write_lands_whole() {
    let bus = Bus::start();
    let r = rig(&bus, "");
    let data = noise(4 << 20, 17);
    std::fs::write(r.images.join("rootfs.img"), &data).unwrap();
    let uri = export(&r, &["rootfs.img", "--cow"]);
    // 3 MiB + 777 bytes from offset 1000: twelve pieces and a bit.
    let (at, len) = (1000usize, (3 << 20) + 777);
    let out = ok(&run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            &format!("write -P 0x77 {at} {len}"),
            "-c",
            &format!("read -P 0x77 {at} {len}"),
            &uri,
        ],
    ));
    assert!(!out.contains("Pattern verification failed"), "{out}");
    let mut expected = data.clone();
    expected[at..at + len].fill(0x77);
    assert!(read_all(&uri, r.d.dir.path()) == expected);
}
