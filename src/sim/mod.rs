//! Simulated hardware on real transports: an Energenie strip on TCP and lab supplies on
//! pseudo-terminals. Used by `rtm-sim` (tests, admins trying a config) and by `rtmd --demo`.
//!
//! Each simulator reports what happened to it as one line per event ("outlet 2 on",
//! "set voltage 5.10") through [`Events`], so a test can check what reached the hardware and
//! in which order.

pub mod board;
pub mod egpms;
pub mod pty;
pub mod supply;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a simulator's event lines go.
#[derive(Clone)]
pub struct Events(Arc<dyn Fn(&str) + Send + Sync>);

impl Events {
    /// Lines on stdout, flushed at once (tests read them through a pipe).
    pub fn stdout() -> Self {
        Events(Arc::new(|line| {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }))
    }

    /// Lines into the daemon's log (the demo).
    pub fn log(device: &'static str) -> Self {
        Events(Arc::new(move |line| {
            tracing::info!(subsystem = "sim", "{device}: {line}")
        }))
    }

    pub fn emit(&self, line: &str) {
        (self.0)(line)
    }

    /// These events, and the board's screen state written into `file` as the board goes
    /// (`off`, `booting`, `booted`): what capture's `sim:FILE` sources follow (docs/capture.md).
    /// The file is replaced atomically, so a reader never sees half a word.
    pub fn with_screen(self, file: PathBuf) -> Events {
        write_state(&file, "off");
        let inner = self.0;
        Events(Arc::new(move |line| {
            inner(line);
            if let Some(state) = screen_state(line) {
                write_state(&file, state);
            }
        }))
    }
}

/// What the simulated board's screen shows after an event line.
pub fn screen_state(event: &str) -> Option<&'static str> {
    match event {
        "board off" | "board brown-out" | "board over-voltage" => Some("off"),
        "board booting" => Some("booting"),
        "board login prompt" | "board shell" => Some("booted"),
        _ => None,
    }
}

fn write_state(file: &Path, state: &str) {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = file.with_file_name(format!(".{name}.tmp"));
    if std::fs::write(&temporary, format!("{state}\n")).is_ok() {
        let _ = std::fs::rename(&temporary, file);
    }
}
