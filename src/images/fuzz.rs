//! The entry point for fuzzing what a caller's strings become in the image store (`fuzz/`,
//! target `image_source`; docs/images.md "Fuzzing"): a fetch source parsed and turned into an
//! image name, and the same text checked as an image name. Nothing here touches the
//! filesystem. Any panic is a bug, and so is a name that breaks the store's rules, which
//! [`source`] reports as an error for the target to fail on.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::check_components;
use super::fetch::image_name;
use super::source::Source;
use crate::mutate::Mutator;

/// Sources to mutate from (also in `fuzz/seeds/`): ordinary ones, and the two that once
/// took rtmd down.
pub const SEEDS: &[&str] = &[
    "https://builds.lab/rpi4/nightly%20build/rootfs.img.xz?token=a%2Bb#f",
    "http://127.0.0.1:9/x%aé.img",
    "http://127.0.0.1:9/%00.img",
    "file:///var/lib/lava/dispatcher/tmp/1234/my%20disk.img.zst",
    "/srv/images/nightly/rpi4.img.gz",
    "nightly/./rpi4.img",
];

/// Runs one input (as text, the way D-Bus delivers strings). Returns the image name a fetch
/// of it would produce, if any, or which rule a produced name broke.
pub fn source(data: &[u8]) -> Result<Option<String>, String> {
    let text = String::from_utf8_lossy(data);
    // As an image name (Resolve, Remove, Export take these).
    if let Ok(name) = check_components(Path::new(text.as_ref()), &text)
        && !name.is_empty()
    {
        check_name(&name, true)?;
    }
    let Ok(src) = Source::parse(&text) else {
        return Ok(None);
    };
    if let Source::File(path) = &src
        && path.as_os_str().as_bytes().contains(&0)
    {
        return Err(format!("a NUL in the path {path:?}"));
    }
    match image_name(&src) {
        Ok(name) => {
            check_name(&name, false)?;
            Ok(Some(name))
        }
        Err(_) => Ok(None),
    }
}

/// What every accepted name must be: printable, no hidden or `..` component, no component
/// longer than a file name; a fetched name is one component.
fn check_name(name: &str, nested: bool) -> Result<(), String> {
    if name.chars().any(char::is_control) {
        return Err(format!("control characters in the name {name:?}"));
    }
    if !nested && name.contains('/') {
        return Err(format!("a fetched name with a folder: {name:?}"));
    }
    for part in name.split('/') {
        if part.is_empty() || part.starts_with('.') || part.len() > 255 {
            return Err(format!("a bad component {part:?} in {name:?}"));
        }
    }
    Ok(())
}

/// Runs the entry point over `n` mutations of [`SEEDS`] (xorshift, fixed seed): a cheap
/// stand-in for `cargo fuzz` in every test run.
pub fn mutations(n: usize) -> Result<(), String> {
    // Bytes that matter to the parsers: escapes, separators, dots.
    let dictionary: &[&[u8]] = &[
        b"%",
        b"%00",
        b"%2F",
        b"%2e%2E",
        b"%e9",
        b"%c3",
        b"\xc3\xa9",
        b"/",
        b"..",
        b"?",
        b"#",
        b"://",
        b"\n",
        b".xz",
        b"%0a",
    ];
    let mut mutator = Mutator::new(0x9e37_79b9_7f4a_7c15);
    for i in 0..n {
        let seed = SEEDS.get(i % SEEDS.len()).copied().unwrap_or_default();
        let mut input = seed.as_bytes().to_vec();
        mutator.mutate(&mut input, 6, dictionary);
        source(&input).map_err(|e| format!("{e} (input {:?})", String::from_utf8_lossy(&input)))?;
    }
    Ok(())
}
