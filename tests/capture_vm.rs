//! Capture from a real V4L2 device, in a virtual machine (tests/vm/run.sh --capture): the
//! kernel's `vivid` module provides /dev/video0, and examples/capture_vm.rs drives the real
//! capture code (GStreamer's v4l2src, copied into the VM with its libraries) against it.
//! Asserts on what the VM prints: a snapshot of vivid's size that matches itself, a snapshot
//! during a recording (from its tap), a finalized recording, and a missing device named.

// A test fails by panicking: unwrap, expect, panic and indexing are how it says so.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::string_slice
)]

use std::path::PathBuf;
use std::process::Command;

mod common;
use common::example;

#[test]
fn capture_from_vivid_in_a_vm() {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vm/run.sh");
    let output = Command::new("bash")
        .arg(script)
        .arg("--capture")
        .arg(example("capture_vm"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&output.stdout).replace('\r', "");
    eprintln!("{out}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(out.contains("RTM-VM-END 0"), "the VM did not finish");
    assert!(
        !out.lines().any(|l| l.starts_with("error")),
        "a step failed"
    );
    let size = out
        .lines()
        .find_map(|l| l.strip_prefix("SNAPSHOT "))
        .expect("no snapshot");
    let (w, h) = size.split_once('x').unwrap();
    assert!(w.parse::<u32>().unwrap() > 0 && h.parse::<u32>().unwrap() > 0);
    assert!(out.contains("COMPARE true"), "a snapshot matches itself");
    assert!(out.contains("SNAPSHOT-WHILE-RECORDING ok"));
    let recorded: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("RECORDED "))
        .expect("no recording")
        .trim()
        .parse()
        .unwrap();
    assert!(recorded > 0);
    // Recorded until stopped: vivid has no MJPEG, and the raw fallback runs (a failed
    // MJPEG attempt once stood as the recording, ending at once with not-negotiated).
    assert!(
        out.contains("LASTSTOP video: stopped"),
        "not recorded until stopped"
    );
    assert!(out.contains("MISSING no such device: /dev/video99"));
}
