//! HDMI and audio capture over D-Bus with synthetic sources: `sim:FILE` sources (the file
//! written by the test, or by rtm-sim's board as the strip powers it) and GStreamer test
//! pipelines, driven with rtmctl, busctl and dbus-send. Recordings are checked with
//! `gst-discoverer-1.0` (a finalized Matroska file has a duration) and references made with
//! `gst-launch-1.0`, both GStreamer's own tools.

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
use std::process::Command;

use common::*;

const BOARD: &str = "hdmi-box";
const CAPTURE: &str = "org.rtmd.Dut1.Capture";

/// rtmd with `[capture]` sources following `screen` (the sim state file), plus `extra`.
fn rig(bus: &Bus, extra: &str) -> (Daemon, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let screen = dir.path().join("screen");
    std::fs::write(&screen, "off\n").unwrap();
    let config = format!(
        "name = \"{BOARD}\"\n[capture]\nvideo = \"sim:{0}\"\naudio = \"sim:{0}\"\n\
         dir = \"captures\"\n{extra}",
        screen.display()
    );
    let d = Daemon::start_in(bus, &config, dir);
    (d, screen)
}

/// One frame of videotestsrc's `pattern` at `size` (`WxH`) as `dir/name`, by gst-launch-1.0.
fn test_png(dir: &Path, name: &str, pattern: &str, size: &str) -> PathBuf {
    require("gst-launch-1.0");
    let path = dir.join(name);
    let (width, height) = size.split_once('x').unwrap();
    let out = Command::new("gst-launch-1.0")
        .args([
            "-q",
            "videotestsrc",
            &format!("pattern={pattern}"),
            "num-buffers=1",
            "!",
        ])
        .arg(format!("video/x-raw,width={width},height={height}"))
        .args(["!", "videoconvert", "!", "pngenc", "!", "filesink"])
        .arg(format!("location={}", path.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    path
}

/// SMPTE bars at another size and aspect than the sim's 640x480.
fn bars_png(dir: &Path) -> PathBuf {
    test_png(dir, "bars.png", "smpte", "320x180")
}

fn set_screen(screen: &Path, state: &str) {
    let tmp = screen.with_extension("tmp");
    std::fs::write(&tmp, format!("{state}\n")).unwrap();
    std::fs::rename(&tmp, screen).unwrap();
}

/// The duration gst-discoverer-1.0 reads from a recording, in seconds, or why it could not.
fn duration(path: &str) -> Result<f64, String> {
    require("gst-discoverer-1.0");
    let out = Command::new("gst-discoverer-1.0")
        .arg(path)
        .output()
        .unwrap();
    let report = text(&out.stdout);
    if !out.status.success() {
        return Err(report);
    }
    let line = report
        .lines()
        .find_map(|l| l.trim().strip_prefix("Duration: "))
        .ok_or_else(|| report.clone())?;
    // h:mm:ss.nnnnnnnnn
    let parts: Vec<f64> = line
        .split(':')
        .map(|p| p.trim().parse::<f64>().unwrap_or(f64::NAN))
        .collect();
    if parts.len() != 3 {
        return Err(report);
    }
    Ok(parts[0] * 3600.0 + parts[1] * 60.0 + parts[2])
}

fn discover(path: &str) -> String {
    text(
        &Command::new("gst-discoverer-1.0")
            .arg(path)
            .output()
            .unwrap()
            .stdout,
    )
}

#[test]
fn the_screen_and_sound_follow_the_sim_state() {
    let bus = Bus::start();
    let (d, screen) = rig(&bus, "");
    let bars = bars_png(d.dir.path());

    // Off: black, silent.
    let out = d.rtmctl(&["capture", "compare", bars.to_str().unwrap()]);
    let line = err_line(&out, 1);
    assert!(line.contains("does not match"), "{line}");
    let line = ok_line(&d.rtmctl(&["capture", "level", "--window-ms", "200"]));
    assert!(line.contains("-200.0 dBFS"), "{line}");
    err_line(
        &d.rtmctl(&["capture", "tone", "1000", "--timeout-ms", "300"]),
        1,
    );

    // Booted: colour bars (matched at another size), and a 1 kHz tone.
    set_screen(&screen, "booted");
    let line = ok_line(&d.rtmctl(&[
        "capture",
        "wait-screen",
        bars.to_str().unwrap(),
        "--timeout-ms",
        "20000",
    ]));
    assert!(line.contains("screen matches"), "{line}");
    let line = ok_line(&d.rtmctl(&["capture", "compare", bars.to_str().unwrap()]));
    assert!(line.contains("screen matches"), "{line}");
    let line = ok_line(&d.rtmctl(&["capture", "tone", "1000", "--timeout-ms", "20000"]));
    assert!(line.contains("heard"), "{line}");
    err_line(
        &d.rtmctl(&["capture", "tone", "440", "--timeout-ms", "300"]),
        1,
    );
    let out = d.busctl(&[
        "call",
        &rtmd::bus::bus_name(BOARD),
        "/org/rtmd/Dut1",
        CAPTURE,
        "AudioLevel",
        "u",
        "200",
    ]);
    // A sine at the test source's default volume (0.8): about -4.9 dBFS.
    let level: f64 = text(&out.stdout)
        .trim()
        .trim_start_matches("d ")
        .parse()
        .unwrap();
    assert!((-6.0..-4.0).contains(&level), "{level}");

    // A snapshot is a PNG of the bars, listed in Artifacts; -o copies it.
    let copy = d.dir.path().join("copy.png");
    let line = ok_line(&d.rtmctl(&["capture", "snapshot", "-o", copy.to_str().unwrap()]));
    assert_eq!(line, copy.display().to_string());
    let bytes = std::fs::read(&copy).unwrap();
    assert!(bytes.starts_with(b"\x89PNG"));
    let artifacts = d.property(CAPTURE, "Artifacts");
    assert!(artifacts.contains("snapshot-"), "{artifacts}");
    // The snapshot itself serves as a reference.
    ok_line(&d.rtmctl(&[
        "capture",
        "compare",
        copy.to_str().unwrap(),
        "--threshold",
        "0.95",
    ]));
}

#[test]
fn recordings_are_finalized_and_playable() {
    let bus = Bus::start();
    let (d, screen) = rig(&bus, "");
    set_screen(&screen, "booted");
    let bars = bars_png(d.dir.path());
    let video = ok_line(&d.rtmctl(&["capture", "record", "start", "--kind", "video"]));
    let audio = ok_line(&d.rtmctl(&["capture", "record", "start", "--kind", "audio"]));
    assert!(
        video.ends_with(".mkv") && audio.ends_with(".mka"),
        "{video} {audio}"
    );
    assert_eq!(d.property(CAPTURE, "Recording"), "as 2 \"audio\" \"video\"");

    // A second recording of the same kind, or `both` meanwhile: Busy.
    let out = d.dbus_send(&format!("{CAPTURE}.StartRecording"), &["string:video"]);
    assert!(
        text(&out.stderr).contains("Error.Busy"),
        "{}",
        text(&out.stderr)
    );
    let line = err_line(
        &d.rtmctl(&["capture", "record", "start", "--kind", "both"]),
        1,
    );
    assert!(line.contains("recording is running"), "{line}");

    // Checks still work while the devices are recorded (through the recording's tap).
    ok_line(&d.rtmctl(&["capture", "wait-screen", bars.to_str().unwrap()]));
    ok_line(&d.rtmctl(&["capture", "tone", "1000", "--timeout-ms", "20000"]));
    let snapshot = ok_line(&d.rtmctl(&["capture", "snapshot"]));
    assert!(snapshot.ends_with(".png"), "{snapshot}");

    ok_line(&d.rtmctl(&["capture", "record", "stop", "--kind", "video"]));
    ok_line(&d.rtmctl(&["capture", "record", "stop", "--kind", "audio"]));
    assert_eq!(d.property(CAPTURE, "LastStop"), "s \"audio: stopped\"");
    assert_eq!(d.property(CAPTURE, "Recording"), "as 0");
    let stopped_twice = d.rtmctl(&["capture", "record", "stop", "--kind", "audio"]);
    assert!(err_line(&stopped_twice, 2).contains("no audio recording"));
    for path in [&video, &audio] {
        let seconds = duration(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(seconds > 0.0, "{path}: {seconds}");
    }
    assert!(discover(&video).contains("JPEG"), "{}", discover(&video));
    assert!(discover(&audio).contains("FLAC"), "{}", discover(&audio));

    // `both`: one file with both streams, finalized when the daemon stops.
    let both = ok_line(&d.rtmctl(&["capture", "record", "start", "--kind", "both"]));
    let mut d = d;
    let status = d.proc.signal_and_wait("TERM");
    assert!(status.success(), "{status:?}");
    let seconds = duration(&both).unwrap_or_else(|e| panic!("{both}: {e}"));
    assert!(seconds > 0.0);
    let report = discover(&both);
    assert!(
        report.contains("JPEG") && report.contains("FLAC"),
        "{report}"
    );
}

#[test]
fn a_device_lost_mid_recording_still_leaves_a_playable_file() {
    let bus = Bus::start();
    let (d, screen) = rig(&bus, "");
    set_screen(&screen, "booted");
    let path = ok_line(&d.rtmctl(&["capture", "record", "start", "--kind", "both"]));
    set_screen(&screen, "unplugged");
    eventually("the recording ended", || {
        d.property(CAPTURE, "Recording") == "as 0"
    });
    let why = d.property(CAPTURE, "LastStop");
    assert!(
        why.contains("both: device lost") && why.contains("unplugged"),
        "{why}"
    );
    let seconds = duration(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert!(seconds > 0.0);
}

#[test]
fn bad_input_is_refused_with_named_errors() {
    let bus = Bus::start();
    let (d, _screen) = rig(&bus, "");
    let dir = d.dir.path();
    // References: missing, not a PNG, a truncated PNG.
    let missing = dir.join("missing.png");
    let line = err_line(
        &d.rtmctl(&["capture", "compare", missing.to_str().unwrap()]),
        2,
    );
    assert!(line.contains("missing.png"), "{line}");
    let text_file = dir.join("notes.png");
    std::fs::write(&text_file, "not a picture").unwrap();
    let out = d.dbus_send(
        &format!("{CAPTURE}.CompareSnapshot"),
        &[&format!("string:{}", text_file.display()), "double:0.8"],
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("InvalidArgs") && stderr.contains("not a PNG"),
        "{stderr}"
    );
    let bars = bars_png(dir);
    let truncated = dir.join("truncated.png");
    std::fs::write(&truncated, &std::fs::read(&bars).unwrap()[..60]).unwrap();
    err_line(
        &d.rtmctl(&["capture", "compare", truncated.to_str().unwrap()]),
        2,
    );
    // Thresholds, kinds, frequencies.
    err_line(
        &d.rtmctl(&[
            "capture",
            "compare",
            bars.to_str().unwrap(),
            "--threshold",
            "1.5",
        ]),
        2,
    );
    let out = d.dbus_send(&format!("{CAPTURE}.StartRecording"), &["string:screen"]);
    assert!(
        text(&out.stderr).contains("InvalidArgs"),
        "{}",
        text(&out.stderr)
    );
    err_line(&d.rtmctl(&["capture", "tone", "30000"]), 2);
    // Stopping what is not recording.
    let out = d.dbus_send(&format!("{CAPTURE}.StopRecording"), &["string:video"]);
    assert!(
        text(&out.stderr).contains("Error.NotFound"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_missing_device_is_a_hardware_error_and_records_nothing() {
    let bus = Bus::start();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "name = \"{BOARD}\"\n[capture]\nvideo = \"/dev/rtm/{BOARD}/hdmi\"\ndir = \"{}\"\n",
        dir.path().join("captures").display()
    );
    let d = Daemon::start_in(&bus, &config, dir);
    let line = err_line(&d.rtmctl(&["capture", "snapshot"]), 1);
    assert!(
        line.contains("no such device: /dev/rtm/hdmi-box/hdmi"),
        "{line}"
    );
    let out = d.dbus_send(&format!("{CAPTURE}.StartRecording"), &["string:video"]);
    assert!(
        text(&out.stderr).contains("Error.Hardware"),
        "{}",
        text(&out.stderr)
    );
    // No audio configured.
    let line = err_line(
        &d.rtmctl(&["capture", "record", "start", "--kind", "audio"]),
        2,
    );
    assert!(line.contains("no audio source configured"), "{line}");
    assert_eq!(d.property(CAPTURE, "Artifacts"), "as 0");
}

#[test]
fn a_source_pipeline_serves_as_the_grabber() {
    let bus = Bus::start();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "name = \"{BOARD}\"\n[capture]\n\
         video = \"videotestsrc is-live=true pattern=smpte ! video/x-raw,width=1280,height=720\"\n\
         audio = \"audiotestsrc is-live=true freq=440\"\ndir = \"{}\"\n",
        dir.path().join("captures").display()
    );
    let d = Daemon::start_in(&bus, &config, dir);
    let bars = bars_png(d.dir.path());
    ok_line(&d.rtmctl(&["capture", "compare", bars.to_str().unwrap()]));
    ok_line(&d.rtmctl(&["capture", "tone", "440"]));
    err_line(
        &d.rtmctl(&["capture", "tone", "1000", "--timeout-ms", "300"]),
        1,
    );
    // Raw frames: the first attempt (the pipeline's own JPEG) cannot link, so they are
    // encoded, and the property says so.
    assert_eq!(d.property(CAPTURE, "VideoEncoding"), "s \"\"");
    let video = ok_line(&d.rtmctl(&["capture", "record", "start", "--kind", "video"]));
    assert_eq!(d.property(CAPTURE, "VideoEncoding"), "s \"jpegenc\"");
    ok_line(&d.rtmctl(&["capture", "record", "stop", "--kind", "video"]));
    assert_eq!(d.property(CAPTURE, "VideoEncoding"), "s \"\"");
    assert!(
        duration(&video).is_ok_and(|s| s > 0.0),
        "{}",
        discover(&video)
    );
}

#[test]
fn a_grabber_pipeline_giving_mjpeg_is_recorded_without_re_encoding() {
    let bus = Bus::start();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "name = \"{BOARD}\"\n[capture]\n\
         video = \"videotestsrc is-live=true pattern=smpte ! video/x-raw,width=1280,height=720,\
         framerate=15/1 ! jpegenc quality=30\"\ndir = \"{}\"\n",
        dir.path().join("captures").display()
    );
    let d = Daemon::start_in(&bus, &config, dir);
    let bars = bars_png(d.dir.path());
    // The recording's properties are signalled as they change.
    let monitor = {
        let mut cmd = Command::new("busctl");
        cmd.arg(format!("--address={}", bus.address)).args([
            "monitor",
            "--json=short",
            "--match",
            "type='signal',interface='org.freedesktop.DBus.Properties',path='/org/rtmd/Dut1'",
        ]);
        Proc::spawn("busctl monitor", cmd, true)
    };
    monitor.wait_line("Monitoring");
    let video = ok_line(&d.rtmctl(&["capture", "record", "start", "--kind", "video"]));
    eventually("Recording and VideoEncoding signalled", || {
        let signalled = monitor.matching("\"org.rtmd.Dut1.Capture\"");
        signalled.iter().any(|l| l.contains("\"Recording\""))
            && signalled.iter().any(|l| l.contains("\"passthrough\""))
    });
    assert_eq!(d.property(CAPTURE, "VideoEncoding"), "s \"passthrough\"");
    let line = ok_line(&d.rtmctl(&["capture", "status"]));
    assert_eq!(
        line,
        format!("{BOARD}: recording video (video: passthrough); 1 artifacts")
    );
    // The tap decodes the grabber's JPEG for snapshots and checks.
    ok_line(&d.rtmctl(&["capture", "wait-screen", bars.to_str().unwrap()]));
    ok_line(&d.rtmctl(&["capture", "record", "stop", "--kind", "video"]));
    assert!(
        duration(&video).is_ok_and(|s| s > 0.0),
        "{}",
        discover(&video)
    );
    assert!(discover(&video).contains("JPEG"), "{}", discover(&video));
    let line = ok_line(&d.rtmctl(&["capture", "status"]));
    assert_eq!(
        line,
        format!("{BOARD}: recording nothing; 1 artifacts; last recording: video: stopped")
    );
    // Without a recording, snapshots decode the JPEG too.
    ok_line(&d.rtmctl(&["capture", "compare", bars.to_str().unwrap()]));
}

#[test]
fn the_quota_removes_the_oldest_snapshots() {
    let bus = Bus::start();
    // 1 MiB; a 640x480 bars snapshot is a few KiB, so fill with a big old file first.
    let (d, screen) = rig(&bus, "quota_mib = 1\n");
    set_screen(&screen, "booted");
    let captures = d.dir.path().join("captures");
    let old = captures.join("old-recording.mkv");
    std::fs::write(&old, vec![0u8; 1 << 20]).unwrap();
    let snapshot = ok_line(&d.rtmctl(&["capture", "snapshot"]));
    assert!(
        !old.exists(),
        "the oldest artifact is removed past the quota"
    );
    assert!(Path::new(&snapshot).exists());
}

#[test]
fn a_full_disk_fails_the_snapshot_and_the_recording_says_why() {
    // A 64 KiB tmpfs as the capture folder: only root may mount one.
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let bus = Bus::start();
    let dir = tempfile::tempdir().unwrap();
    let captures = dir.path().join("captures");
    std::fs::create_dir_all(&captures).unwrap();
    let mount = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&captures)
        .status()
        .unwrap();
    assert!(mount.success());
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(captures.clone());
    std::fs::write(captures.join("filler"), vec![1u8; 60 << 10]).unwrap();
    let screen = dir.path().join("screen");
    std::fs::write(&screen, "booted\n").unwrap();
    let config = format!(
        "name = \"{BOARD}\"\n[capture]\nvideo = \"sim:{0}\"\naudio = \"sim:{0}\"\ndir = \"{1}\"\n",
        screen.display(),
        captures.display()
    );
    let d = Daemon::start_in(&bus, &config, dir);
    let line = err_line(&d.rtmctl(&["capture", "snapshot"]), 1);
    assert!(line.contains("disk full"), "{line}");
    // Nothing half-written is left behind.
    let names: Vec<String> = std::fs::read_dir(&captures)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["filler"]);
    // A recording fills the rest and ends, saying why.
    let started = d.rtmctl(&["capture", "record", "start", "--kind", "video"]);
    if started.status.success() {
        eventually("the recording ended", || {
            d.property(CAPTURE, "Recording") == "as 0"
        });
        let why = d.property(CAPTURE, "LastStop");
        assert!(why.contains("storage failed"), "{why}");
    } else {
        let line = err_line(&started, 1);
        assert!(
            line.contains("No space") || line.contains("disk full") || line.contains("out"),
            "{line}"
        );
    }
}

/// A black PNG, as the screen of a board that is off.
fn black_png(dir: &Path) -> PathBuf {
    test_png(dir, "black.png", "black", "160x120")
}

#[test]
fn the_simulated_board_shows_a_screen_and_plays_a_tone_once_powered_and_booted() {
    let bus = Bus::start();
    let dir = tempfile::tempdir().unwrap();
    let screen = dir.path().join("screen");
    let mut args = fast_board(dir.path(), "hdmi-box");
    args.extend(["--board-screen".to_string(), screen.display().to_string()]);
    let (_strip, port) = strip(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let config = format!(
        "name = \"{BOARD}\"\n[power]\nbackend = \"egpms\"\nhost = \"127.0.0.1\"\nport = {port}\n\
         outlet = 1\n[capture]\nvideo = \"sim:{0}\"\naudio = \"sim:{0}\"\ndir = \"{1}\"\n",
        screen.display(),
        dir.path().join("captures").display()
    );
    let d = Daemon::start(&bus, &config);
    let bars = bars_png(d.dir.path());
    let black = black_png(d.dir.path());
    ok_line(&d.rtmctl(&["capture", "compare", black.to_str().unwrap()]));
    err_line(
        &d.rtmctl(&["capture", "tone", "1000", "--timeout-ms", "300"]),
        1,
    );

    ok_line(&d.rtmctl(&["power", "on"]));
    let line = ok_line(&d.rtmctl(&[
        "capture",
        "wait-screen",
        bars.to_str().unwrap(),
        "--timeout-ms",
        "60000",
    ]));
    assert!(line.contains("matches"), "{line}");
    ok_line(&d.rtmctl(&["capture", "tone", "1000", "--timeout-ms", "20000"]));

    ok_line(&d.rtmctl(&["power", "off"]));
    ok_line(&d.rtmctl(&[
        "capture",
        "wait-screen",
        black.to_str().unwrap(),
        "--timeout-ms",
        "60000",
    ]));
}
