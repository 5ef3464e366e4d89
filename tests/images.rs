//! The image store end to end: rtmd fetching from local files and from HTTP(S) servers on
//! loopback (Python's http.server, TLS with a CA made by `openssl`), files compressed by the
//! real `xz`, `gzip`, `zstd` and `bzip2`; driven with rtmctl and busctl.

// A test fails by panicking: unwrap, expect, panic and indexing are how it says so.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::string_slice
)]

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const BOARD: &str = "imgbox";
const BUS_NAME: &str = "org.rtmd.Dut1.imgbox";
const JOB: &str = "org.rtmd.Dut1.Images.Job";

/// A folder with rtmd's config and its image folder `images/`; local sources may come from
/// the temporary folder, where the tests make them (`[images] local_dirs`).
fn daemon(bus: &Bus, extra: &str) -> (Daemon, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    let d = Daemon::start_in(
        bus,
        &format!(
            "name = \"{BOARD}\"\n[images]\ndir = \"images\"\nlocal_dirs = [\"{}\"]\n{extra}",
            std::env::temp_dir().display()
        ),
        dir,
    );
    (d, images)
}

/// An image with data, a large zero region (which must become a hole), and data again.
fn disk_image(path: &Path) -> Vec<u8> {
    let mut data = noise(1 << 20, 7);
    data.extend(std::iter::repeat_n(0u8, 16 << 20));
    data.extend(noise((1 << 20) + 123, 11));
    std::fs::write(path, &data).unwrap();
    data
}

/// Compresses `path` with a real tool (keeping it); returns the compressed file.
fn compress(tool: &str, args: &[&str], path: &Path, suffix: &str) -> PathBuf {
    require(tool);
    let out = PathBuf::from(format!("{}{suffix}", path.display()));
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{tool} {} -c '{}' > '{}'",
            args.join(" "),
            path.display(),
            out.display()
        ))
        .status()
        .unwrap();
    assert!(status.success(), "{tool} failed");
    out
}

fn sha256(path: &Path) -> String {
    require("sha256sum");
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    text(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Everything in the image folder, hidden state included (except the cache index).
fn leftovers(images: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for dir in [images.to_path_buf(), images.join(".rtmd/partial")] {
        for e in std::fs::read_dir(&dir).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            if name != ".rtmd" {
                found.push(name);
            }
        }
    }
    found.sort();
    found
}

/// A Python HTTP(S) server on loopback: serves `dir`, or with `--slow N` sends N bytes of
/// 0x01 at 64 KiB per 50 ms.
fn server(args: &[&str]) -> (Proc, u16) {
    require("python3");
    const SCRIPT: &str = r#"
import functools, http.server, ssl, sys, time
args = sys.argv[1:]
if args[0] == "--slow":
    total = int(args[1])
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(total))
            self.end_headers()
            sent = 0
            try:
                while sent < total:
                    n = min(65536, total - sent)
                    self.wfile.write(b"\x01" * n)
                    self.wfile.flush()
                    sent += n
                    time.sleep(0.05)
            except OSError:
                pass
        def log_message(self, *a):
            pass
    handler = H
else:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=args[0])
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
if len(args) > 2 and args[0] != "--slow":
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args[1], args[2])
    s.socket = ctx.wrap_socket(s.socket, server_side=True)
print("listening", s.server_address[1], flush=True)
s.serve_forever()
"#;
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(SCRIPT).args(args);
    let p = Proc::spawn("http server", cmd, true);
    let line = p.wait_line("listening");
    let port = line.rsplit(' ').next().unwrap().parse().unwrap();
    (p, port)
}

fn fetch(d: &Daemon, source: &str, sha: Option<&str>) -> std::process::Output {
    let mut args = vec!["image", "fetch", source];
    if let Some(sha) = sha {
        args.extend(["--sha256", sha]);
    }
    d.rtmctl(&args)
}

fn busctl_images(d: &Daemon, args: &[&str]) -> std::process::Output {
    let mut all = vec!["call", BUS_NAME, "/org/rtmd/Dut1", "org.rtmd.Dut1.Images"];
    all.extend_from_slice(args);
    d.busctl(&all)
}

fn job_property(d: &Daemon, job: &str, name: &str) -> String {
    let out = d.busctl(&["get-property", BUS_NAME, job, JOB, name]);
    assert!(out.status.success(), "{name}: {}", text(&out.stderr));
    text(&out.stdout).trim().to_string()
}

#[test]
fn fetches_every_compression_and_writes_holes() {
    let bus = Bus::start();
    let (mut d, images) = daemon(&bus, "");
    let src = tempfile::tempdir().unwrap();
    let raw = src.path().join("disk.img");
    let data = disk_image(&raw);
    let sources = [
        ("xz", compress("xz", &["-T1"], &raw, ".xz")),
        ("xz -T2 (multi-block)", {
            let multi = src.path().join("multi.img");
            std::fs::copy(&raw, &multi).unwrap();
            compress("xz", &["-T2", "--block-size=1MiB"], &multi, ".xz")
        }),
        ("gzip", compress("gzip", &[], &raw, ".gz")),
        ("zstd", compress("zstd", &["-q"], &raw, ".zst")),
        ("bzip2", compress("bzip2", &[], &raw, ".bz2")),
        ("uncompressed", raw.clone()),
    ];
    for (what, source) in &sources {
        let sha = sha256(source);
        let line = ok_line(&fetch(&d, &source.display().to_string(), Some(&sha)));
        let name = source
            .file_name()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches(".xz")
            .trim_end_matches(".gz")
            .trim_end_matches(".zst")
            .trim_end_matches(".bz2")
            .to_string();
        assert_eq!(line, format!("{BOARD}: {name}"), "{what}");
        let image = images.join(&name);
        assert!(
            std::fs::read(&image).unwrap() == data,
            "{what}: bytes differ"
        );
        let meta = std::fs::metadata(&image).unwrap();
        assert!(
            meta.blocks() * 512 < meta.len() / 2,
            "{what}: no holes ({} of {} bytes allocated)",
            meta.blocks() * 512,
            meta.len()
        );
        let partial = std::fs::read_dir(images.join(".rtmd/partial"))
            .unwrap()
            .count();
        assert_eq!(partial, 0, "{what}: a partial file was left");
    }
    // A relative local path is the caller's, resolved by rtmctl before it is sent.
    std::fs::remove_file(images.join("disk.img")).unwrap();
    let out = Command::new(bin("rtmctl"))
        .args([
            "--bus-address",
            &d.bus,
            "--dut",
            BOARD,
            "image",
            "fetch",
            "disk.img.gz",
        ])
        .current_dir(src.path())
        .output()
        .unwrap();
    assert_eq!(ok_line(&out), format!("{BOARD}: disk.img"));
    assert!(std::fs::read(images.join("disk.img")).unwrap() == data);

    // The listing shows the source checksum of fetched images.
    let list = text(&d.rtmctl(&["image", "list"]).stdout);
    assert!(list.starts_with("NAME"), "{list}");
    let multi_sha = sha256(&sources[1].1);
    assert!(list.contains(&multi_sha[..12]), "{list}");
    assert!(d.proc.is_running());
}

#[test]
fn job_properties_finished_signal_and_the_cache() {
    let bus = Bus::start();
    let (d, images) = daemon(&bus, "");
    let src = tempfile::tempdir().unwrap();
    let raw = src.path().join("rootfs.img");
    let data = disk_image(&raw);
    let xz = compress("xz", &[], &raw, ".xz");
    let sha = sha256(&xz);

    let monitor = {
        let mut cmd = Command::new("busctl");
        cmd.arg(format!("--address={}", bus.address)).args([
            "monitor",
            "--match",
            "path_namespace=/org/rtmd/Dut1/Images",
        ]);
        Proc::spawn("busctl monitor", cmd, true)
    };
    monitor.wait_line("Monitoring");
    let out = busctl_images(&d, &["Fetch", "ss", &xz.display().to_string(), &sha]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let reply = text(&out.stdout);
    let job = reply
        .trim()
        .trim_start_matches("o ")
        .trim_matches('"')
        .to_string();
    assert!(job.starts_with("/org/rtmd/Dut1/Images/Jobs/"), "{reply}");
    monitor.wait_line("Finished");
    assert_eq!(job_property(&d, &job, "State"), "s \"done\"");
    assert_eq!(job_property(&d, &job, "Image"), "s \"rootfs.img\"");
    assert_eq!(job_property(&d, &job, "Cached"), "b false");
    assert_eq!(job_property(&d, &job, "Progress"), "d 1");
    let size = std::fs::metadata(&xz).unwrap().len();
    assert_eq!(job_property(&d, &job, "BytesDone"), format!("t {size}"));
    assert_eq!(job_property(&d, &job, "BytesTotal"), format!("t {size}"));
    assert_eq!(job_property(&d, &job, "Sha256"), format!("s \"{sha}\""));
    assert!(std::fs::read(images.join("rootfs.img")).unwrap() == data);
    let text_all = monitor.text();
    assert!(text_all.contains("PropertiesChanged"), "{text_all}");

    // Second fetch of the same checksum: immediate, Cached=true.
    let mtime = std::fs::metadata(images.join("rootfs.img"))
        .unwrap()
        .mtime_nsec();
    let line = ok_line(&fetch(&d, &xz.display().to_string(), Some(&sha)));
    assert_eq!(line, format!("{BOARD}: rootfs.img (cached)"));
    assert_eq!(
        std::fs::metadata(images.join("rootfs.img"))
            .unwrap()
            .mtime_nsec(),
        mtime,
        "a cached fetch rewrote the image"
    );
    let out = busctl_images(&d, &["Fetch", "ss", &xz.display().to_string(), &sha]);
    let job = text(&out.stdout)
        .trim()
        .trim_start_matches("o ")
        .trim_matches('"')
        .to_string();
    assert_eq!(job_property(&d, &job, "Cached"), "b true");
    assert_eq!(job_property(&d, &job, "State"), "s \"done\"");

    // A fetch without a checksum is verified against nothing but recorded, so a later
    // fetch with the checksum hits the cache.
    let gz = compress("gzip", &[], &raw, ".gz");
    std::fs::remove_file(&xz).unwrap();
    ok_line(&fetch(&d, &gz.display().to_string(), None));
    let line = ok_line(&fetch(&d, &gz.display().to_string(), Some(&sha256(&gz))));
    assert!(line.ends_with("(cached)"), "{line}");
    // A changed image is no longer a cache hit.
    std::fs::write(images.join("rootfs.img"), b"edited").unwrap();
    let line = ok_line(&fetch(&d, &gz.display().to_string(), Some(&sha256(&gz))));
    assert!(!line.ends_with("(cached)"), "{line}");
    assert!(std::fs::read(images.join("rootfs.img")).unwrap() == data);

    // Images property and List over busctl.
    let images_prop = d.property("org.rtmd.Dut1.Images", "Images");
    assert_eq!(images_prop, "as 1 \"rootfs.img\"");
    let out = busctl_images(&d, &["List"]);
    assert!(
        text(&out.stdout).contains("rootfs.img"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn http_fetch_and_a_404() {
    let bus = Bus::start();
    let (mut d, images) = daemon(&bus, "");
    let served = tempfile::tempdir().unwrap();
    let raw = served.path().join("web.img");
    let data = disk_image(&raw);
    let zst = compress("zstd", &["-q"], &raw, ".zst");
    let (_server, port) = server(&[&served.path().display().to_string()]);
    let url = format!("http://127.0.0.1:{port}/web.img.zst");
    let line = ok_line(&fetch(&d, &url, Some(&sha256(&zst))));
    assert_eq!(line, format!("{BOARD}: web.img"));
    assert!(std::fs::read(images.join("web.img")).unwrap() == data);

    let line = err_line(
        &fetch(&d, &format!("http://127.0.0.1:{port}/missing.img.xz"), None),
        1,
    );
    assert!(line.contains("404"), "{line}");
    // Nothing reachable at all.
    let line = err_line(
        &fetch(&d, &format!("http://127.0.0.1:{}/x.img", free_port()), None),
        1,
    );
    assert!(line.contains("127.0.0.1"), "{line}");
    assert_eq!(leftovers(&images), ["web.img"]);
    assert!(d.proc.is_running());
}

#[test]
fn https_with_a_lab_ca() {
    require("openssl");
    let bus = Bus::start();
    let pki = tempfile::tempdir().unwrap();
    let p = |f: &str| pki.path().join(f).display().to_string();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            text(&out.stderr)
        );
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        &p("ca.key"),
        "-out",
        &p("ca.pem"),
        "-days",
        "2",
        "-subj",
        "/CN=rtmd test CA",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        &p("srv.key"),
        "-out",
        &p("srv.csr"),
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        pki.path().join("ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &p("srv.csr"),
        "-CA",
        &p("ca.pem"),
        "-CAkey",
        &p("ca.key"),
        "-CAcreateserial",
        "-out",
        &p("srv.pem"),
        "-days",
        "2",
        "-extfile",
        &p("ext"),
    ]);

    let served = tempfile::tempdir().unwrap();
    let raw = served.path().join("secure.img");
    let data = disk_image(&raw);
    let bz = compress("bzip2", &[], &raw, ".bz2");
    let (_server, port) = server(&[
        &served.path().display().to_string(),
        &p("srv.pem"),
        &p("srv.key"),
    ]);
    let url = format!("https://127.0.0.1:{port}/secure.img.bz2");

    // Without the lab CA the server is not trusted.
    {
        let (d, images) = daemon(&bus, "");
        let line = err_line(&fetch(&d, &url, None), 1);
        assert!(
            line.to_lowercase().contains("certificate") || line.contains("Unknown"),
            "{line}"
        );
        assert!(leftovers(&images).is_empty());
    }
    let (d, images) = daemon(&bus, &format!("ca_file = \"{}\"\n", p("ca.pem")));
    let line = ok_line(&fetch(&d, &url, Some(&sha256(&bz))));
    assert_eq!(line, format!("{BOARD}: secure.img"));
    assert!(std::fs::read(images.join("secure.img")).unwrap() == data);
    drop(d);

    // Or the lab CA as the whole trust store, through SSL_CERT_FILE (as curl takes it).
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("board.toml");
    std::fs::write(
        &config,
        format!("name = \"{BOARD}\"\n[images]\ndir = \"images\"\n"),
    )
    .unwrap();
    let ca = pki.path().join("ca.pem");
    let proc = Daemon::spawn_env(&bus.address, &config, &[("SSL_CERT_FILE", &ca)]);
    proc.wait_line("ready on");
    let d = Daemon {
        proc,
        dir,
        board: BOARD.to_string(),
        bus: bus.address.clone(),
    };
    let line = ok_line(&fetch(&d, &url, None));
    assert_eq!(line, format!("{BOARD}: secure.img"));
    assert!(std::fs::read(d.dir.path().join("images/secure.img")).unwrap() == data);
}

#[test]
fn bad_data_leaves_nothing_behind() {
    let bus = Bus::start();
    let (mut d, images) = daemon(&bus, "");
    let src = tempfile::tempdir().unwrap();
    let raw = src.path().join("bad.img");
    disk_image(&raw);
    let xz = compress("xz", &[], &raw, ".xz");

    // Checksum mismatch.
    let wrong = "0".repeat(64);
    let line = err_line(&fetch(&d, &xz.display().to_string(), Some(&wrong)), 1);
    assert!(line.contains("checksum mismatch"), "{line}");
    assert!(leftovers(&images).is_empty(), "{:?}", leftovers(&images));

    // A corrupt xz stream (bytes flipped in the middle).
    let mut bytes = std::fs::read(&xz).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 64] {
        *b ^= 0x5a;
    }
    let corrupt = src.path().join("corrupt.img.xz");
    std::fs::write(&corrupt, &bytes).unwrap();
    let line = err_line(&fetch(&d, &corrupt.display().to_string(), None), 1);
    assert!(line.contains("corrupt xz"), "{line}");
    assert!(leftovers(&images).is_empty(), "{:?}", leftovers(&images));

    // Bad arguments: refused before any job exists (exit 2).
    let line = err_line(&fetch(&d, &xz.display().to_string(), Some("abc")), 2);
    assert!(line.contains("bad sha256"), "{line}");
    let line = err_line(&fetch(&d, "ftp://127.0.0.1/x.img", None), 2);
    assert!(line.contains("unknown source scheme"), "{line}");
    let missing = src.path().join("nonexistent.img.xz");
    let line = err_line(&fetch(&d, missing.to_str().unwrap(), None), 2);
    assert!(line.contains("no such file"), "{line}");
    let out = d.dbus_send(
        "org.rtmd.Dut1.Images.Fetch",
        &["string:relative.img", "string:"],
    );
    assert!(
        text(&out.stderr).contains("InvalidArgs"),
        "{}",
        text(&out.stderr)
    );
    assert!(d.proc.is_running());
}

#[test]
fn cancel_mid_fetch_leaves_nothing() {
    let bus = Bus::start();
    let (mut d, images) = daemon(&bus, "");
    let (_server, port) = server(&["--slow", "1073741824"]);
    let mut cmd = Command::new(bin("rtmctl"));
    cmd.args(["--bus-address", &d.bus, "--dut", BOARD, "image", "fetch"])
        .arg(format!("http://127.0.0.1:{port}/slow.img"));
    let mut rtmctl = Proc::spawn("rtmctl", cmd, true);
    eventually("a partial file", || {
        std::fs::read_dir(images.join(".rtmd/partial"))
            .unwrap()
            .count()
            > 0
    });
    let status = rtmctl.signal_and_wait("INT");
    assert_eq!(status.code(), Some(1), "{}", rtmctl.text());
    assert!(rtmctl.text().contains("cancelled"), "{}", rtmctl.text());
    eventually("the partial file removed", || leftovers(&images).is_empty());
    assert!(d.proc.is_running());
    // The daemon keeps serving.
    ok_line(&d.rtmctl(&["image", "list"]));
}

#[test]
fn progress_bar_on_a_terminal_one_line_in_a_pipe() {
    require("script");
    let bus = Bus::start();
    let (d, _images) = daemon(&bus, "");
    let (_server, port) = server(&["--slow", "1048576"]);
    let url = format!("http://127.0.0.1:{port}/tty.img");
    let command = format!(
        "exec {} --bus-address {} --dut {BOARD} image fetch {url}",
        bin("rtmctl").display(),
        d.bus
    );
    // A terminal that can move the cursor: with TERM unset or `dumb` (as under CI) the bar
    // is rightly left out.
    let out = Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .env("TERM", "xterm")
        .output()
        .unwrap();
    let shown = text(&out.stdout);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("ETA") && shown.contains("/s"),
        "no progress bar: {shown:?}"
    );
    assert!(shown.contains(&format!("{BOARD}: tty.img")), "{shown:?}");

    // In a pipe: no bar, one line.
    std::fs::remove_file(d.dir.path().join("images/tty.img")).unwrap();
    let out = fetch(&d, &url, None);
    assert_eq!(ok_line(&out), format!("{BOARD}: tty.img"));
    assert!(text(&out.stderr).is_empty(), "{}", text(&out.stderr));
}

#[test]
fn names_outside_the_folder_are_refused() {
    let bus = Bus::start();
    let (mut d, images) = daemon(&bus, "");
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret.img");
    std::fs::write(&secret, b"not yours").unwrap();
    std::fs::write(images.join("ok.img"), b"an image").unwrap();
    std::os::unix::fs::symlink(&secret, images.join("link.img")).unwrap();

    let line = err_line(&d.rtmctl(&["image", "rm", "../x"]), 2);
    assert!(line.contains("outside the image folder"), "{line}");
    let line = err_line(
        &d.rtmctl(&["image", "rm", &secret.display().to_string()]),
        2,
    );
    assert!(line.contains("outside the image folder"), "{line}");
    let line = err_line(&d.rtmctl(&["image", "rm", "link.img"]), 2);
    assert!(line.contains("outside the image folder"), "{line}");
    let line = err_line(&d.rtmctl(&["image", "rm", ".rtmd/cache"]), 2);
    assert!(line.contains("reserved"), "{line}");
    let line = err_line(&d.rtmctl(&["image", "rm", "missing.img"]), 2);
    assert!(line.contains("no image"), "{line}");
    assert!(secret.exists());

    for name in ["../x", "link.img", secret.to_str().unwrap()] {
        let out = d.dbus_send("org.rtmd.Dut1.Images.Resolve", &[&format!("string:{name}")]);
        assert!(
            text(&out.stderr).contains("org.freedesktop.DBus.Error.InvalidArgs"),
            "{name}: {}",
            text(&out.stderr)
        );
    }
    let inside = images.canonicalize().unwrap().join("ok.img");
    let out = busctl_images(&d, &["Resolve", "s", inside.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("\"ok.img\""),
        "{}",
        text(&out.stdout)
    );

    let monitor = {
        let mut cmd = Command::new("busctl");
        cmd.arg(format!("--address={}", bus.address)).args([
            "monitor",
            "--match",
            "path=/org/rtmd/Dut1,member=PropertiesChanged",
        ]);
        Proc::spawn("busctl monitor", cmd, true)
    };
    monitor.wait_line("Monitoring");
    assert_eq!(
        ok_line(&d.rtmctl(&["image", "rm", "ok.img"])),
        format!("{BOARD}: removed ok.img")
    );
    assert!(!images.join("ok.img").exists());
    // The set of images changed: `Images` is signalled.
    monitor.wait_line("org.rtmd.Dut1.Images");
    assert!(d.proc.is_running());
}
