//! The daemon's life: build the board, take its place on the bus, say READY, feed the
//! watchdog while the subsystems make progress, and stop fail-safe on SIGTERM or SIGINT.

use std::process::ExitCode;

use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info};

use crate::board::{Board, status_line};
use crate::bus::{self, BusChoice};
use crate::config::Config;
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
    let _connection = match bus::serve(
        bus_choice,
        board.dut(),
        board.power.clone(),
        board.console.clone(),
    )
    .await
    {
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

/// Keeps `STATUS=` in step with the power status.
fn spawn_status(board: &Board) {
    let Some(power) = &board.power else {
        systemd::notify_status("no power control configured");
        return;
    };
    let mut rx = power.subscribe();
    tokio::spawn(async move {
        loop {
            let line = status_line(&rx.borrow_and_update());
            systemd::notify_status(&line);
            if rx.changed().await.is_err() {
                break;
            }
        }
    });
}
