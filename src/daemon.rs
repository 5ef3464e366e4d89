//! The daemon's life: take the board's place on the bus, build the board, open its faces
//! (the bus, the pdudaemon API), say READY, feed the watchdog while the bus connection is up
//! and every owner task answers, and stop on SIGTERM or SIGINT, or when the bus connection
//! is lost: faces first, then the board, fail-safe.

use std::process::ExitCode;

use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use crate::board::{Board, status_line};
use crate::bus::{self, BusChoice};
use crate::config::Config;
use crate::pdu;
use crate::systemd;

/// Exit status when the daemon cannot start (bus unreachable, board already served), or
/// loses its bus connection: systemd's `Restart=on-failure` brings it back.
pub const EXIT_START_FAILED: u8 = 1;

/// Why the main loop ended.
enum End {
    Signal,
    BusLost,
}

/// Runs the daemon for `config` until a stop signal or the loss of the bus. Must run inside
/// the tokio runtime.
pub async fn run(config: Config, bus_choice: &BusChoice) -> ExitCode {
    for w in &config.warnings {
        warn!("{w}");
    }
    raise_open_files_limit();
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
    // The board's names first: a second rtmd for a board already served stops here, before
    // it has bound a port or cleaned a file of the first one's.
    let connection = match bus::claim(bus_choice, &config.name).await {
        Ok(c) => c,
        Err(e) => {
            error!("{e}");
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
    if let Err(e) = bus::serve(&connection, bus_choice, &board).await {
        error!("{e}");
        return ExitCode::from(EXIT_START_FAILED);
    }
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
    let mut stuck_before = None;
    let end = loop {
        tokio::select! {
            _ = term.recv() => break End::Signal,
            _ = int.recv() => break End::Signal,
            // The broker dropped us (or stopped): the board is gone from the bus, and only a
            // restart brings it back.
            () = connection.closed() => break End::BusLost,
            _ = async { match watchdog.as_mut() { Some(w) => w.tick().await, None => std::future::pending().await } } => {
                // Fed only while this loop runs, the bus connection is up and every owner
                // task answers: a wedged owner gets the daemon restarted by systemd.
                let stuck = if connection.is_closed() { Some("the bus connection") } else { board.stuck() };
                match stuck {
                    None => systemd::notify_watchdog(),
                    Some(part) if stuck_before != Some(part) => {
                        warn!("{part} does not answer: the watchdog is no longer fed");
                    }
                    Some(_) => {}
                }
                stuck_before = stuck;
            }
        }
    };
    let code = match end {
        End::Signal => {
            info!("stop requested");
            ExitCode::SUCCESS
        }
        End::BusLost => {
            error!(
                "lost the connection to {}: stopping, to be restarted",
                bus_choice.describe()
            );
            ExitCode::from(EXIT_START_FAILED)
        }
    };
    systemd::notify_stopping();
    // No call is taken any more before the board is stopped: a late `Power.On` must not
    // land after the `on_stop = "off"` switch.
    bus::withdraw(connection, board.name()).await;
    board.stop().await;
    code
}

/// Raises the soft limit of open files to the hard one. The soft limit (1024 by default)
/// is a guard for programs that use select(2); rtmd does not, and each of its front ends
/// caps its own connections, so the hard limit (the unit's `LimitNOFILE=`) is the budget.
fn raise_open_files_limit() {
    use nix::libc::{RLIMIT_NOFILE, getrlimit, rlimit, setrlimit};
    let mut limit = rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `struct rlimit` through the pointer, which outlives the
    // call.
    if unsafe { getrlimit(RLIMIT_NOFILE, &mut limit) } != 0 {
        warn!(
            "cannot read the open files limit: {}",
            std::io::Error::last_os_error()
        );
        return;
    }
    if limit.rlim_cur >= limit.rlim_max {
        return;
    }
    let soft = limit.rlim_cur;
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: setrlimit reads one `struct rlimit` through the pointer, which outlives the
    // call.
    if unsafe { setrlimit(RLIMIT_NOFILE, &limit) } != 0 {
        warn!(
            "cannot raise the open files limit from {soft} to {}: {}",
            limit.rlim_max,
            std::io::Error::last_os_error()
        );
        return;
    }
    info!("open files limit raised from {soft} to {}", limit.rlim_max);
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
