//! `rtmd`: the per-board daemon. See `rtmd --help` and docs/architecture.md.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use rtmd::bus::BusChoice;
use rtmd::systemd::{self, LogTarget};
use rtmd::{config, daemon, demo};

/// Owns one board's power (and later console, images, USB gadget, capture) and offers it
/// over D-Bus as org.rtmd.Dut1.<board>.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// The board's config file (usually /etc/rtmd/<board>.toml).
    #[arg(long, required_unless_present = "demo")]
    config: Option<PathBuf>,
    /// Validate the config file and exit: 0 valid, 2 invalid.
    #[arg(long, requires = "config")]
    check: bool,
    /// Run a simulated board (no hardware needed).
    #[arg(long, conflicts_with_all = ["config", "check"])]
    demo: bool,
    /// The bus to serve on [default: system; for --demo: session, or a private one].
    #[arg(long, value_enum, conflicts_with = "bus_address")]
    bus: Option<BusArg>,
    /// Serve on the bus at this D-Bus address instead (tests, development).
    #[arg(long, value_name = "ADDR")]
    bus_address: Option<String>,
    /// Where logs go.
    #[arg(long, value_enum, default_value = "auto")]
    log: LogTarget,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum BusArg {
    System,
    Session,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let bus = match (&args.bus, &args.bus_address) {
        (_, Some(a)) => Some(BusChoice::Address(a.clone())),
        (Some(BusArg::Session), None) => Some(BusChoice::Session),
        (Some(BusArg::System), None) => Some(BusChoice::System),
        (None, None) => None,
    };
    // One thread: the daemon spends its life waiting on a few sockets, and a single
    // thread keeps its memory small and its behaviour easy to reason about.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rtmd: cannot start the runtime: {e}");
            return ExitCode::from(daemon::EXIT_START_FAILED);
        }
    };
    if args.demo {
        systemd::init_logging(args.log, "demo");
        return runtime.block_on(demo::run(bus));
    }
    let Some(path) = args.config else {
        return ExitCode::from(2);
    };
    let config = match config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if args.check {
        for w in &config.warnings {
            eprintln!("warning: {w}");
        }
        let power = config.power.as_ref().map_or("none", |p| p.backend.name());
        println!(
            "{}: ok (board {}, power {power})",
            path.display(),
            config.name
        );
        return ExitCode::SUCCESS;
    }
    systemd::init_logging(args.log, &config.name);
    runtime.block_on(daemon::run(config, &bus.unwrap_or(BusChoice::System)))
}
