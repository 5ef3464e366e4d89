//! Living under systemd: `sd_notify` messages (READY, STATUS, WATCHDOG, STOPPING) and
//! logging, to the journal with structured fields (`BOARD`, `SUBSYSTEM`) when its socket
//! exists, else to stderr.
//!
//! Outside systemd (`$NOTIFY_SOCKET` unset) every notification is a no-op, so the same binary
//! runs in tests and by hand.

use std::path::Path;
use std::time::Duration;

use sd_notify::NotifyState;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Where logs go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogTarget {
    /// The journal if its socket exists, else stderr.
    Auto,
    Journald,
    Stderr,
}

const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// Sets up tracing. `RUST_LOG` overrides the default level (`info`).
pub fn init_logging(target: LogTarget, board: &str) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,zbus=warn,tokio_modbus=off"));
    let journald = match target {
        LogTarget::Stderr => None,
        LogTarget::Auto if !Path::new(JOURNAL_SOCKET).exists() => None,
        LogTarget::Auto | LogTarget::Journald => tracing_journald::layer().ok().map(|l| {
            // Without a prefix our `subsystem` field becomes the journal field SUBSYSTEM.
            l.with_field_prefix(None)
                .with_syslog_identifier("rtmd".to_string())
                .with_custom_fields([("BOARD", board)])
        }),
    };
    let registry = tracing_subscriber::registry().with(filter);
    match journald {
        Some(layer) => {
            let _ = registry.with(layer).try_init();
        }
        None => {
            let fmt = tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false);
            let _ = registry.with(fmt).try_init();
        }
    }
}

pub fn notify_ready() {
    let _ = sd_notify::notify(false, &[NotifyState::Ready]);
}

pub fn notify_stopping() {
    let _ = sd_notify::notify(false, &[NotifyState::Stopping]);
}

pub fn notify_status(status: &str) {
    let _ = sd_notify::notify(false, &[NotifyState::Status(status)]);
}

pub fn notify_watchdog() {
    let _ = sd_notify::notify(false, &[NotifyState::Watchdog]);
}

/// The interval at which to feed the watchdog (half of `WatchdogSec=`), if it is enabled.
/// As libsystemd's `sd_watchdog_enabled`: `WATCHDOG_PID`, when set, must be ours (the
/// sd-notify crate also insists that it is set, which a test harness cannot do).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse() != Ok(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}
