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
