//! `rtmd --demo`: a board with simulated hardware, so a newcomer sees rtmd work at once.
//!
//! It starts a simulated board (U-Boot, kernel, login, a real shell) whose console is a
//! pseudo-terminal, fed by a simulated lab supply on another (`config/demo.toml`), picks a bus
//! (the one asked for; else the session bus if one answers; else a private `dbus-daemon` it
//! starts and prints), and runs the ordinary daemon on it.
//!
//! Its console's telnet port is on loopback without any check of who connects, so every local
//! user can log in to the simulated board: the board's shell never runs with the demo's
//! privileges (as `nobody` when the demo runs as root, `src/sim/board.rs`), and the demo says
//! so when it starts.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::bus::BusChoice;
use crate::config;
use crate::daemon;
use crate::sim::board::{BoardSpec, SimBoard};
use crate::sim::{Events, pty::Pty, supply};

const DEMO_CONFIG: &str = include_str!("../config/demo.toml");

/// A 64 MiB sparse disk image with a recognizable first sector, for the demo's NBD export.
fn demo_image(dir: &Path) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let mut f = std::fs::File::create(dir.join("demo.img"))?;
    f.write_all(b"rtmd demo image: served over NBD by rtmd --demo\n")?;
    f.set_len(64 << 20)
}

pub async fn run(bus: Option<BusChoice>) -> ExitCode {
    match prepare(bus).await {
        Ok(mut demo) => {
            let code = daemon::run(demo.config.clone(), &demo.bus).await;
            if let Some(child) = demo.dbus.as_mut() {
                let _ = child.kill().await;
            }
            let _ = std::fs::remove_dir_all(&demo.dir);
            code
        }
        Err(e) => {
            eprintln!("rtmd --demo: {e}");
            ExitCode::from(daemon::EXIT_START_FAILED)
        }
    }
}

struct Demo {
    dir: PathBuf,
    config: config::Config,
    bus: BusChoice,
    dbus: Option<Child>,
    _pty: Pty,
    _console: Pty,
    _board: SimBoard,
}

async fn prepare(bus: Option<BusChoice>) -> Result<Demo, String> {
    let dir = std::env::temp_dir().join(format!("rtmd-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    // Searchable, not listable, by other users: the board's shell (nobody, when the demo
    // runs as root) lives in a folder inside, whatever the umask.
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o711))
        .map_err(|e| format!("cannot open up {}: {e}", dir.display()))?;

    // The board: its console on one pseudo-terminal, fed by the supply on another.
    let pty_error = |e: std::io::Error| format!("cannot create a pseudo-terminal: {e}");
    let console = Pty::open(&dir.join("console")).map_err(pty_error)?;
    let spec = BoardSpec {
        name: "demo".to_string(),
        scratch: dir.join("board-home"),
        ..BoardSpec::default()
    };
    let board_port = console.master.try_clone().map_err(|e| e.to_string())?;
    // The screen and sound capture follows (docs/capture.md: `sim:FILE`).
    let events = Events::log("board").with_screen(dir.join("screen"));
    let board = SimBoard::start(board_port, spec, events)
        .map_err(|e| format!("cannot start the simulated board: {e}"))?;
    let pty = Pty::open(&dir.join("psu")).map_err(pty_error)?;
    let port = pty.master.try_clone().map_err(|e| e.to_string())?;
    let model = Arc::new(Mutex::new(supply::SupplyModel::default()));
    let power = board.power_input();
    std::thread::spawn(move || {
        supply::serve(
            port,
            supply::Kind::DpmAscii,
            1,
            supply::Fault::None,
            model,
            Events::log("dpm8605"),
            Some(power),
        )
    });

    demo_image(&dir.join("images")).map_err(|e| format!("cannot make the demo image: {e}"))?;
    let text = DEMO_CONFIG.replace("{demo_dir}", &dir.display().to_string());
    let config = config::parse(Path::new("config/demo.toml"), &text).map_err(|e| e.to_string())?;

    let (bus, dbus) = match bus {
        Some(b) => (b, None),
        None if session_bus_answers().await => (BusChoice::Session, None),
        None => {
            let (child, address) = private_bus(&dir).await?;
            (BusChoice::Address(address), Some(child))
        }
    };
    let how = match &bus {
        BusChoice::Address(a) => format!("export RTM_BUS_ADDRESS={a}"),
        BusChoice::Session => "export RTM_BUS=session".to_string(),
        BusChoice::System => "export RTM_BUS=system".to_string(),
    };
    println!(
        "rtmd demo: a simulated board \"demo\" fed by a simulated DPM8605 supply, on {}",
        bus.describe()
    );
    println!("  in another shell:  {how} RTM_DUT=demo");
    println!("                     rtmctl power on; rtmctl console   (Ctrl-] q leaves)");
    println!(
        "                     rtmctl power profile low   (below the board's brown-out: it resets)"
    );
    println!(
        "                     rtmctl nbd export demo.img --cow   (then e.g. nbdinfo the URI it prints)"
    );
    println!(
        "                     rtmctl capture snapshot; rtmctl capture tone 1000   (once booted)"
    );
    println!("{}", who_reaches_the_console());
    println!("  stop with Ctrl-C (the demo switches the board off as it stops)");
    Ok(Demo {
        dir,
        config,
        bus,
        dbus,
        _pty: pty,
        _console: console,
        _board: board,
    })
}

/// The demo's one line about its console: who can reach it, and what they get.
fn who_reaches_the_console() -> String {
    let user = if nix::unistd::geteuid().is_root() {
        "nobody".to_string()
    } else {
        nix::unistd::User::from_uid(nix::unistd::geteuid())
            .ok()
            .flatten()
            .map_or_else(|| "you".to_string(), |u| u.name)
    };
    format!(
        "  note: every local user can reach the board's console (telnet on loopback, see the \
         property TcpAddress); its shell runs as {user}"
    )
}

async fn session_bus_answers() -> bool {
    if std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_none() {
        return false;
    }
    zbus::connection::Builder::session().build().await.is_ok()
}

/// Starts `dbus-daemon --session` listening in `dir`; returns it and its address.
async fn private_bus(dir: &Path) -> Result<(Child, String), String> {
    let mut child = Command::new("dbus-daemon")
        .args(["--session", "--nofork", "--print-address=1", "--nopidfile"])
        .arg(format!("--address=unix:path={}/bus", dir.display()))
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("no session bus, and cannot start dbus-daemon ({e}); install the dbus-daemon package"))?;
    let stdout = child.stdout.take().ok_or("dbus-daemon has no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .await
        .map_err(|e| format!("dbus-daemon did not print its address: {e}"))?;
    let address = line.trim().to_string();
    if address.is_empty() {
        return Err("dbus-daemon did not print its address".to_string());
    }
    Ok((child, address))
}
