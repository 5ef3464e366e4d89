//! End to end in a virtual machine (tests/vm/): the real gadget code, through the
//! usb-gadget crate and the kernel's configfs, binds to dummy_hcd's UDC, and the same
//! kernel's USB host side sees the disk and the keyboard. Asserts on what the VM prints:
//! the disk reads back the image, cow writes leave the image untouched, the input device
//! reports the typed keys, and nothing is left after detach.

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

/// The hash in a line `TAG <sha256>  <file>`.
fn hash<'a>(out: &'a str, tag: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{tag} ")))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no {tag} line in the VM's output:\n{out}"))
}

#[test]
fn gadget_in_a_vm() {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vm/run.sh");
    let output = Command::new("bash")
        .arg(script)
        .arg(example("gadget_vm"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&output.stdout).replace('\r', "");
    eprintln!("{out}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(out.contains("RTM-VM-END 0"), "the VM did not finish");
    assert!(
        !out.lines().any(|l| l.starts_with("error")),
        "a step failed"
    );

    // Attach ro: the board's disk reads back the image's bytes.
    let base = hash(&out, "BASE");
    assert_eq!(hash(&out, "RO"), base);
    assert!(out.contains("UDC dummy_udc.0"));
    assert!(out.contains("INQUIRY rtmd     vm"));

    // The keyboard: h, i, shift+a, enter (Linux key codes).
    assert!(out.contains("KEYS 35 23 42 30 28"), "keys not seen");

    // Eject empties the LUN without unbinding.
    assert!(out.contains("EJECTED 0"));

    // cow: the board wrote, its disk differs, the image does not.
    assert_ne!(hash(&out, "COW-DEV"), base);
    assert_eq!(hash(&out, "COW-BASE"), base);

    // Detach: no gadget left, no cow copy left.
    assert!(out.contains("GADGETS []"));
    assert!(out.contains("COPIES 0"));
}
