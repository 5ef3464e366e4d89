//! The image store's edge under hostile callers, against the real daemon on a private bus:
//! the fetch sources that once aborted rtmd or cost it its bus connection get `InvalidArgs`
//! and rtmd keeps serving; local sources come only from `[images] local_dirs`, never from
//! /proc (even through a symlink or with `/` listed), and never what the caller could not
//! read (busctl and rtmctl run as nobody through `setpriv`); a second rtmd on the same image
//! folder leaves the first one's partial download alone.

// A test fails by panicking: unwrap, expect, panic and indexing are how it says so.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::string_slice
)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use common::*;

const BOARD: &str = "imgbox";
const NOBODY: u32 = 65534;

fn bus_name(board: &str) -> String {
    rtmd::bus::bus_name(board)
}

/// `dbus-send` of `Images.Fetch(source, "")`, as root or as nobody.
fn fetch_call(d: &Daemon, source: &str, as_nobody: bool) -> Output {
    let mut cmd = if as_nobody {
        require("setpriv");
        let mut c = Command::new("setpriv");
        c.args([
            format!("--reuid={NOBODY}"),
            format!("--regid={NOBODY}"),
            "--clear-groups".to_string(),
            "dbus-send".to_string(),
        ]);
        c
    } else {
        Command::new("dbus-send")
    };
    cmd.arg(format!("--bus={}", d.bus))
        .arg("--print-reply")
        .arg(format!("--dest={}", bus_name(&d.board)))
        .arg("/org/rtmd/Dut1")
        .arg("org.rtmd.Dut1.Images.Fetch")
        .arg(format!("string:{source}"))
        .arg("string:");
    cmd.output().unwrap()
}

/// The D-Bus error name and message of a failed call.
fn error_of(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "the call succeeded: {}",
        text(&out.stdout)
    );
    text(&out.stderr).trim().to_string()
}

fn daemon_with(bus: &Bus, images_extra: &str) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    Daemon::start_in(
        bus,
        &format!("name = \"{BOARD}\"\n[images]\ndir = \"images\"\n{images_extra}"),
        dir,
    )
}

/// The image folder's entries (the store's own `.rtmd` aside) and its partial files.
fn folder(images: &Path) -> (Vec<String>, Vec<String>) {
    let names = |dir: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .filter(|n| n != ".rtmd")
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    (names(images), names(&images.join(".rtmd/partial")))
}

#[test]
fn fetch_strings_that_once_took_rtmd_down_get_invalid_args() {
    let bus = Bus::start();
    let mut d = daemon_with(&bus, "");
    for source in ["http://127.0.0.1:9/x%aé.img", "http://127.0.0.1:9/%00.img"] {
        let e = error_of(&fetch_call(&d, source, false));
        assert!(
            e.contains("org.freedesktop.DBus.Error.InvalidArgs"),
            "{source}: {e}"
        );
        // Still running, still on the bus, still answering.
        assert!(d.proc.is_running(), "{source}: rtmd is gone");
        assert_eq!(
            d.property("org.rtmd.Dut1", "Name"),
            format!("s \"{BOARD}\"")
        );
        ok_line(&d.rtmctl(&["image", "list"]));
    }
    let e = error_of(&fetch_call(&d, "http://127.0.0.1:9/x%aé.img", false));
    assert!(e.contains("URLs are ASCII"), "{e}");
    let e = error_of(&fetch_call(&d, "http://127.0.0.1:9/%00.img", false));
    assert!(e.contains("control characters"), "{e}");
    // Other escapes that decode to what no name may hold.
    for source in [
        "http://127.0.0.1:9/%0a.img",
        "http://127.0.0.1:9/%ff.img",
        "http://127.0.0.1:9/%2e%2e",
        "file:///tmp/%00x.img",
    ] {
        let e = error_of(&fetch_call(&d, source, false));
        assert!(
            e.contains("org.freedesktop.DBus.Error.InvalidArgs"),
            "{source}: {e}"
        );
    }
    assert!(d.proc.is_running());
    assert_eq!(folder(&d.dir.path().join("images")), (vec![], vec![]));
}

#[test]
fn local_fetches_only_from_local_dirs_and_only_what_the_caller_could_read() {
    let bus = Bus::start_open();
    // A folder of files, searchable by everyone (tempdir makes 0700).
    let files = tempfile::tempdir().unwrap();
    std::fs::set_permissions(files.path(), PermissionsExt::from_mode(0o755)).unwrap();
    let file = |name: &str, mode: u32| {
        let p = files.path().join(name);
        std::fs::write(&p, noise(64 * 1024, u64::from(mode))).unwrap();
        std::fs::set_permissions(&p, PermissionsExt::from_mode(mode)).unwrap();
        p.display().to_string()
    };
    let secret = file("secret.img", 0o600);
    let public = file("public.img", 0o644);
    std::os::unix::fs::symlink("/proc/self/environ", files.path().join("environ.img")).unwrap();
    let environ_link = files.path().join("environ.img").display().to_string();

    // Without local_dirs, no local fetch at all; the message names the key.
    {
        let d = daemon_with(&bus, "");
        let line = err_line(&d.rtmctl(&["image", "fetch", &public]), 2);
        assert!(line.contains("[images] local_dirs"), "{line}");
        let e = error_of(&fetch_call(&d, &format!("file://{public}"), false));
        assert!(e.contains("InvalidArgs") && e.contains("local_dirs"), "{e}");
    }

    // With the files' folder listed, and even `/`.
    let mut d = daemon_with(
        &bus,
        &format!("local_dirs = [\"/\", \"{}\"]\n", files.path().display()),
    );
    let images = d.dir.path().join("images");
    for source in [
        "file:///proc/self/environ",
        "/proc/self/environ",
        "/proc/1/environ",
        environ_link.as_str(),
        "/sys/kernel/uevent_seqnum",
    ] {
        let e = error_of(&fetch_call(&d, source, false));
        assert!(
            e.contains("org.freedesktop.DBus.Error.AccessDenied") && e.contains("never fetched"),
            "{source}: {e}"
        );
    }
    // A root-only file: refused to nobody, fetched for root.
    let e = error_of(&fetch_call(&d, &secret, true));
    assert!(
        e.contains("AccessDenied") && e.contains("uid 65534 may not read"),
        "{e}"
    );
    let e = error_of(&fetch_call(&d, &format!("file://{secret}"), true));
    assert!(e.contains("AccessDenied"), "{e}");
    assert_eq!(folder(&images), (vec![], vec![]), "nothing was copied");
    // What nobody may read, nobody fetches.
    let out = fetch_call(&d, &public, true);
    assert!(out.status.success(), "{}", text(&out.stderr));
    eventually("public.img fetched", || images.join("public.img").exists());
    assert_eq!(
        ok_line(&d.rtmctl(&["image", "fetch", &secret])),
        format!("{BOARD}: secret.img")
    );
    assert!(std::fs::read(images.join("secret.img")).unwrap() == std::fs::read(&secret).unwrap());
    assert!(d.proc.is_running());
}

/// A server that sends half of a 4 MiB image, then waits until the file `go` exists to send
/// the rest: a fetch that stays in progress for as long as the test needs, without delays.
fn held_server(go: &Path) -> (Proc, u16) {
    require("python3");
    const SCRIPT: &str = r#"
import http.server, os, sys, time
go = sys.argv[1]
total = 4 << 20
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(total))
        self.end_headers()
        self.wfile.write(b"\x05" * (total // 2))
        self.wfile.flush()
        while not os.path.exists(go):
            time.sleep(0.01)
        self.wfile.write(b"\x05" * (total - total // 2))
    def log_message(self, *a):
        pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print("listening", s.server_address[1], flush=True)
s.serve_forever()
"#;
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(SCRIPT).arg(go);
    let p = Proc::spawn("held http server", cmd, true);
    let port = p
        .wait_line("listening")
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    (p, port)
}

#[test]
fn a_second_rtmd_on_the_same_folder_leaves_the_first_ones_partial_download_alone() {
    let bus = Bus::start();
    let shared = tempfile::tempdir().unwrap();
    let images = shared.path().join("images");
    let config = |board: &str| {
        format!(
            "name = \"{board}\"\n[images]\ndir = \"{}\"\n",
            images.display()
        )
    };
    let first = Daemon::start(&bus, &config("board-a"));
    let go = shared.path().join("go");
    let (_server, port) = held_server(&go);
    let mut cmd = Command::new(bin("rtmctl"));
    cmd.args([
        "--bus-address",
        &bus.address,
        "--dut",
        "board-a",
        "image",
        "fetch",
    ])
    .arg(format!("http://127.0.0.1:{port}/held.img"));
    let mut fetching = Proc::spawn("rtmctl image fetch", cmd, true);
    eventually("the first rtmd's partial file", || {
        !folder(&images).1.is_empty()
    });
    let (_, partial) = folder(&images);
    // A partial file a crashed rtmd left (nobody holds its lock).
    let stale = images.join(".rtmd/partial/999999.0.stale.img");
    std::fs::write(&stale, b"left by a crash").unwrap();

    // The same board again: it fails (the board is served), touching nothing of the first's.
    let again_path = shared.path().join("again.toml");
    std::fs::write(&again_path, config("board-a")).unwrap();
    let mut again = Daemon::spawn(&bus.address, &again_path);
    let status = again.wait();
    assert!(
        !status.success(),
        "a second rtmd for board-a started: {}",
        again.text()
    );
    // Another board sharing the folder starts and cleans only what nobody holds.
    let second = Daemon::start(&bus, &config("board-b"));
    second.proc.wait_line("left");
    assert!(!stale.exists(), "the crashed fetch's partial file stayed");
    assert_eq!(
        folder(&images).1,
        partial,
        "the running fetch's partial file was touched"
    );

    // The first fetch completes as if nothing happened.
    std::fs::write(&go, b"").unwrap();
    let status = fetching.wait();
    assert!(status.success(), "{}", fetching.text());
    fetching.wait_line("board-a: held.img");
    let data = std::fs::read(images.join("held.img")).unwrap();
    assert!(data.len() == 4 << 20 && data.iter().all(|&b| b == 5));
    assert_eq!(folder(&images), (vec!["held.img".to_string()], vec![]));
    drop(second);
    drop(first);
}
