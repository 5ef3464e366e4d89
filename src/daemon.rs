//! The daemon's life: build the board, open its faces (the bus, the pdudaemon API), say
//! READY, feed the watchdog while the subsystems make progress, and stop fail-safe on
//! SIGTERM or SIGINT.

use std::process::ExitCode;

use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info};

use crate::board::{Board, status_line};
use crate::bus::{self, BusChoice};
use crate::config::Config;
use crate::pdu;
use crate::systemd;

/// Exit status when the daemon cannot start (bus unreachable, name taken).
pub const EXIT_START_FAILED: u8 = 1;

/// Runs the daemon for `config` until a stop signal. Must run inside the tokio runtime.
pub async fn run(config: Config, bus_choice: &BusChoice) -> ExitCode {
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            error!("cannot install signal handlers: {e}");
            return ExitCode::from(EXIT_START_FAILED);
        }
    };
    let board = match Board::build(config).await {
        Ok(b) => b,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(EXIT_START_FAILED);
        }
    };
    // The faces, each built from the board's parts; every change they make passes the gate.
    if let Err(e) = pdu::start(&board).await {
        error!("{e}");
        return ExitCode::from(EXIT_START_FAILED);
    }
    let _connection = match bus::serve(bus_choice, &board).await {
        Ok(c) => c,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(EXIT_START_FAILED);
        }
    };
    info!(
        "board {} ready on {} as {} (subsystems: {})",
        board.name(),
        bus_choice.describe(),
        bus::bus_name(board.name()),
        board.subsystems().join(", ")
    );
    systemd::notify_ready();
    board.probe();
    spawn_status(&board);

    let mut watchdog = systemd::watchdog_interval().map(tokio::time::interval);
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            // Fed only while this loop runs and every subsystem's owner task is making
            // progress: a wedged power task gets the daemon restarted by systemd.
            _ = async { match watchdog.as_mut() { Some(w) => w.tick().await, None => std::future::pending().await } } => {
                if board.is_alive() {
                    systemd::notify_watchdog();
                }
            }
        }
    }
    info!("stop requested");
    systemd::notify_stopping();
    board.stop().await;
    ExitCode::SUCCESS
}

/// Keeps `STATUS=` in step with the power and console status (what `systemctl status`
/// shows), e.g. "power on, 5.10 V, 0.510 A; console connected, 2 clients".
fn spawn_status(board: &Board) {
    let mut power = board.power.as_ref().map(|p| p.subscribe());
    let console = board.console.clone();
    let mut console_status = console.as_ref().map(|c| c.subscribe_status());
    let mut clients = console.as_ref().map(|c| c.subscribe_clients());
    tokio::spawn(async move {
        loop {
            let mut parts = Vec::new();
            if let Some(rx) = power.as_mut() {
                parts.push(status_line(&rx.borrow_and_update()));
            }
            if let (Some(st), Some(cl)) = (console_status.as_mut(), clients.as_mut()) {
                let connected = st.borrow_and_update().connected;
                let n = *cl.borrow_and_update();
                parts.push(format!(
                    "console {}, {n} client{}",
                    if connected {
                        "connected"
                    } else {
                        "disconnected"
                    },
                    if n == 1 { "" } else { "s" }
                ));
            }
            if parts.is_empty() {
                parts.push("no subsystems configured".to_string());
            }
            systemd::notify_status(&parts.join("; "));
            tokio::select! {
                _ = changed(power.as_mut()) => {}
                _ = changed(console_status.as_mut()) => {}
                _ = changed(clients.as_mut()) => {}
            }
        }
    });
}

/// Resolves on the next change; never for an absent or closed channel.
async fn changed<T>(rx: Option<&mut tokio::sync::watch::Receiver<T>>) {
    if let Some(rx) = rx
        && rx.changed().await.is_ok()
    {
        return;
    }
    std::future::pending().await
}
