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
}
