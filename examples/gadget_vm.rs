//! The real gadget code inside the test VM (tests/gadget_vm.rs, tests/vm/): drives
//! `rtmd::gadget` (the owner, the usb-gadget crate, the kernel's configfs) from a script of
//! commands on stdin, one a line, and prints what happens on the serial console.
//!
//! Commands: `attach IMAGE ro|cow`, `eject`, `detach`, `type TEXT`, `press KEY...`,
//! `wait-block DEV` (until the host side has the disk; prints the time since the last
//! attach), `wait-gone DEV`, `capture-keys NAME` (records key presses of the input device
//! whose name contains NAME), `show-keys`, `read PATH` (throughput), `gadgets`, `sh COMMAND`.

// A test helper run inside the VM: a failure is a panic the test reads, like a test's.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::string_slice
)]

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rtmd::config::ConfigfsChoice;
use rtmd::gadget::{GadgetError, Mode, Owner, Status, StorageOptions, keyboard};
use rtmd::images::Claims;

fn main() {
    let images = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "/images".into()));
    let options = StorageOptions {
        board: "vm".to_string(),
        udc: None,
        keyboard: true,
        luns: 1,
        cdrom: false,
        removable: true,
        inquiry: format!("{:<8}{:<16}{:<4}", "rtmd", "vm", "1"),
        key_delay: Duration::from_millis(10),
        cow_dir: images.join(".rtmd/gadget/vm"),
    };
    let host = match rtmd::gadget::host_for(&ConfigfsChoice::Kernel(None)) {
        Ok(host) => host,
        Err(e) => {
            println!("error configfs: {e}");
            return;
        }
    };
    let (status, _) = tokio::sync::watch::channel(Status::default());
    let mut owner = Owner::new(options, host, Claims::new(), status);
    let mut attached_at = Instant::now();
    let keys: Arc<Mutex<Vec<u16>>> = Arc::default();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        println!("> {line}");
        let (cmd, rest) = line.split_once(' ').unwrap_or((line, ""));
        let result: Result<String, String> = match cmd {
            "attach" => {
                let mut words = rest.split_whitespace();
                let name = words.next().unwrap_or("");
                let mode = Mode::parse(words.next().unwrap_or("ro")).unwrap_or(Mode::Ro);
                attached_at = Instant::now();
                owner
                    .attach(0, name, &images.join(name), mode)
                    .map(|()| format!("attached in {} ms", attached_at.elapsed().as_millis()))
                    .map_err(text)
            }
            "eject" => owner.eject(0).map(|()| String::new()).map_err(text),
            "detach" => owner.detach().map(|()| String::new()).map_err(text),
            "type" => keyboard::type_reports(rest)
                .map_err(|e| e.to_string())
                .and_then(|r| owner.keys(&r).map_err(text))
                .map(|()| String::new()),
            "press" => {
                let names: Vec<String> = rest.split_whitespace().map(str::to_string).collect();
                keyboard::chord_reports(&names)
                    .map_err(|e| e.to_string())
                    .and_then(|r| owner.keys(&r).map_err(text))
                    .map(|()| String::new())
            }
            "wait-block" => wait(|| is_block(rest))
                .map(|()| format!("seen {} ms after attach", attached_at.elapsed().as_millis())),
            "wait-gone" => wait(|| !Path::new(rest).exists()).map(|()| String::new()),
            "capture-keys" => capture(rest, keys.clone()),
            "show-keys" => {
                std::thread::sleep(Duration::from_millis(300));
                let codes = keys.lock().map(|k| k.clone()).unwrap_or_default();
                let codes: Vec<String> = codes.iter().map(u16::to_string).collect();
                Ok(format!("KEYS {}", codes.join(" ")))
            }
            "read" => read_all(rest),
            "gadgets" => std::fs::read_dir("/sys/kernel/config/usb_gadget")
                .map(|d| {
                    let names: Vec<String> = d
                        .flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect();
                    format!("GADGETS [{}]", names.join(" "))
                })
                .map_err(|e| e.to_string()),
            "sh" => std::process::Command::new("/bin/sh")
                .args(["-c", rest])
                .status()
                .map_err(|e| e.to_string())
                .and_then(|s| {
                    if s.success() {
                        Ok(String::new())
                    } else {
                        Err(format!("exit {s}"))
                    }
                }),
            other => Err(format!("unknown command {other}")),
        };
        match result {
            Ok(note) if note.is_empty() => println!("ok"),
            Ok(note) => println!("ok {note}"),
            Err(e) => println!("error {e}"),
        }
    }
}

/// Reads a file or device to the end: bytes and MiB/s (informational figures).
fn read_all(path: &str) -> Result<String, String> {
    let mut file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 1 << 20];
    let (mut total, started) = (0usize, Instant::now());
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n,
            Err(e) => return Err(e.to_string()),
        }
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(format!(
        "READ {path} {total} bytes in {:.0} ms, {:.1} MiB/s",
        secs * 1000.0,
        total as f64 / (1 << 20) as f64 / secs
    ))
}

fn text(e: GadgetError) -> String {
    e.to_string()
}

fn is_block(dev: &str) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(dev).is_ok_and(|m| m.file_type().is_block_device())
        && std::fs::File::open(dev).is_ok()
}

fn wait(done: impl Fn() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        if Instant::now() > deadline {
            return Err("timed out".to_string());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Finds `/dev/input/eventN` whose device name contains `name` and records its key presses
/// (EV_KEY, value 1) in a thread.
fn capture(name: &str, keys: Arc<Mutex<Vec<u16>>>) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let device = loop {
        let found = std::fs::read_dir("/sys/class/input")
            .map_err(|e| e.to_string())?
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("event"))
            .find(|e| {
                std::fs::read_to_string(e.path().join("device/name"))
                    .is_ok_and(|n| n.contains(name))
            })
            .map(|e| Path::new("/dev/input").join(e.file_name()));
        match found {
            Some(d) if d.exists() => break d,
            _ if Instant::now() > deadline => return Err(format!("no input device {name}")),
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let mut file = std::fs::File::open(&device).map_err(|e| e.to_string())?;
    std::thread::spawn(move || {
        // struct input_event on 64-bit: timeval (16), type u16, code u16, value i32.
        let mut event = [0u8; 24];
        while file.read_exact(&mut event).is_ok() {
            let kind = u16::from_ne_bytes([event[16], event[17]]);
            let code = u16::from_ne_bytes([event[18], event[19]]);
            let value = i32::from_ne_bytes([event[20], event[21], event[22], event[23]]);
            if kind == 1
                && value == 1
                && let Ok(mut k) = keys.lock()
            {
                k.push(code);
            }
        }
    });
    Ok(format!("capturing {}", device.display()))
}
