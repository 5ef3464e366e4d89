//! The real capture code inside the test VM (tests/capture_vm.rs, tests/vm/): snapshots and
//! a recording of the kernel's `vivid` test device through `rtmd::capture` (GStreamer's
//! `v4l2src`), printing what happened on the serial console, one `TAG value` line each.
//!
//! usage: capture_vm DEVICE FOLDER

// A test helper run inside the VM: a failure is a panic the test reads, like a test's.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::string_slice
)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rtmd::access::{
    Access, AccessConfig, AccessError, Caller, Face, FaceError, Gate, Identity, Permit,
};
use rtmd::capture::{Capture, Kind};
use rtmd::config::CaptureConfig;

/// The gate's refusal, which cannot happen here: nobody holds this board.
struct Refused(AccessError);

impl From<AccessError> for Refused {
    fn from(e: AccessError) -> Self {
        Refused(e)
    }
}

impl FaceError for Refused {
    fn audit_summary(&self) -> String {
        self.0.to_string()
    }
}

/// Runs the whole program as one call admitted by a gate of its own, as any program that
/// links rtmd's library must to change anything.
fn main() {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        println!("error runtime");
        return;
    };
    let (access, _ended) = Access::new(AccessConfig::default());
    let gate = Gate::new(access);
    let caller = Caller::configured(
        &Identity::Label("capture_vm".into()),
        Face::Local,
        "examples/capture_vm",
    );
    let run = gate.run(
        &caller,
        "Capture.Snapshot",
        String::new(),
        |permit| async move {
            run(&permit);
            Ok::<(), Refused>(())
        },
    );
    if let Err(Refused(e)) = rt.block_on(run) {
        println!("error gate: {e}");
    }
}

fn run(permit: &Permit) {
    let mut args = std::env::args().skip(1);
    let device = args.next().unwrap_or_else(|| "/dev/video0".into());
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "/tmp/captures".into()));
    let capture = match Capture::start(&CaptureConfig {
        video: Some(device.clone()),
        audio: None,
        dir,
        quota_bytes: 256 << 20,
    }) {
        Ok(c) => c,
        Err(e) => {
            println!("error start: {e}");
            return;
        }
    };
    let started = Instant::now();
    match capture.snapshot(permit) {
        Ok(path) => {
            println!("SNAPSHOT-MS {}", started.elapsed().as_millis());
            match image::open(&path) {
                Ok(i) => println!("SNAPSHOT {}x{}", i.width(), i.height()),
                Err(e) => println!("error reading the snapshot: {e}"),
            }
            match capture.compare_snapshot(&path, 0.5) {
                Ok((matched, score)) => println!("COMPARE {matched} {score:.3}"),
                Err(e) => println!("error compare: {e}"),
            }
        }
        Err(e) => println!("error snapshot: {e}"),
    }
    match capture.start_recording(permit, Kind::Video) {
        Ok(path) => {
            std::thread::sleep(Duration::from_secs(3));
            // A snapshot while recording comes from the recording's tap.
            match capture.snapshot(permit) {
                Ok(_) => println!("SNAPSHOT-WHILE-RECORDING ok"),
                Err(e) => println!("error snapshot while recording: {e}"),
            }
            // Under TCG a 4K frame takes long to encode: a stop may outlast its bound, and
            // the recording then ends on its own thread.
            let waited = Instant::now();
            let stopped = capture.stop_recording(permit, Kind::Video);
            while !capture.status().recording.is_empty() && waited.elapsed().as_secs() < 120 {
                std::thread::sleep(Duration::from_millis(200));
            }
            println!("STOP-MS {}", waited.elapsed().as_millis());
            match stopped {
                // NotRecording: the recording ended by itself before the stop; the file is
                // finalized all the same, and LASTSTOP says why.
                Ok(_)
                | Err(rtmd::capture::CaptureError::Timeout(_))
                | Err(rtmd::capture::CaptureError::NotRecording(_)) => {
                    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                    println!("RECORDED {size}");
                    println!("LASTSTOP {}", capture.status().last_stop);
                }
                Err(e) => println!("error stop: {e} (LastStop: {})", capture.status().last_stop),
            }
        }
        Err(e) => println!("error record: {e}"),
    }
    match Capture::start(&CaptureConfig {
        video: Some("/dev/video99".into()),
        audio: None,
        dir: PathBuf::from("/tmp/none"),
        quota_bytes: 1 << 20,
    })
    .map(|c| c.snapshot(permit))
    {
        Ok(Err(e)) => println!("MISSING {e}"),
        other => println!("error missing device: {:?}", other.map(|r| r.is_ok())),
    }
}
