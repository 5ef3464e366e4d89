//! `rtm-sim`: simulated lab hardware on real transports, for tests, for `rtmd --demo`'s
//! kind of setup, and for admins trying a board config before the hardware arrives.
//!
//! Each simulator prints one line when it is ready (`listening ADDR` or `ready PATH`), then
//! one line per event that reached the hardware ("outlet 2 on", "set voltage 5.10").

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use clap::{Parser, Subcommand, ValueEnum};
use rtmd::config::EgpmsModel;
use rtmd::sim::board::{BoardSpec, SimBoard};
use rtmd::sim::egpms::{Outlets, StripSpec};
use rtmd::sim::supply::{Fault, Kind, SupplyModel};
use rtmd::sim::{Events, pty::Pty};

#[derive(Parser)]
#[command(version, about = "Simulated power hardware for rtmd")]
struct Args {
    #[command(subcommand)]
    device: Device,
}

#[derive(Subcommand)]
enum Device {
    /// An Energenie EG-PMS(2)-LAN/WLAN strip on TCP.
    Egpms {
        /// Address to listen on (port 0: any free port; the chosen one is printed).
        #[arg(long, default_value = "127.0.0.1:5000")]
        listen: String,
        #[arg(long, value_enum, default_value = "pms21")]
        model: Model,
        #[arg(long, default_value = "")]
        password: String,
        /// Start bytes to ignore per session, as a strip busy ending the previous one does.
        #[arg(long, default_value_t = 0)]
        ignore_starts: u32,
        /// Outlets on at start, e.g. `--on 1 --on 3`.
        #[arg(long = "on")]
        on: Vec<u8>,
        /// Fault: an outlet whose relay ignores switching (welded or dead). The strip
        /// acknowledges the control frame and reports the unchanged state; repeatable.
        #[arg(long = "stuck-outlet", value_name = "N", value_parser = clap::value_parser!(u8).range(1..=4))]
        stuck_outlets: Vec<u8>,
        #[command(flatten)]
        board: BoardArgs,
    },
    /// A Joy-it DPM86xx supply on a pseudo-terminal.
    Dpm86xx {
        #[arg(long, value_enum, default_value = "ascii")]
        protocol: Protocol,
        #[command(flatten)]
        supply: SupplyArgs,
    },
    /// A Riden RD60xx supply (Modbus RTU) on a pseudo-terminal.
    Riden {
        /// Model id in register 0 (60061 RD6006, 60065 RD6006P, 60121 RD6012, ...).
        #[arg(long, default_value_t = 60061)]
        model_id: u16,
        #[command(flatten)]
        supply: SupplyArgs,
    },
}

/// What every simulated supply takes.
#[derive(clap::Args)]
struct SupplyArgs {
    /// Where to put the symlink to the pseudo-terminal the daemon opens.
    #[arg(long)]
    pty: PathBuf,
    #[arg(long, default_value_t = 1)]
    address: u8,
    #[arg(long, value_enum, default_value = "none")]
    fault: FaultArg,
    /// The temperature the supply reports, in °C (DPM86xx; the Riden's is not read).
    #[arg(long, default_value_t = 27.0)]
    temperature: f64,
    #[command(flatten)]
    board: BoardArgs,
}

/// A simulated board powered by this simulator.
#[derive(clap::Args)]
struct BoardArgs {
    /// Simulate a board fed by this device, its console at this path (a pseudo-terminal).
    #[arg(long, value_name = "PATH")]
    board_console: Option<PathBuf>,
    /// The board's hostname.
    #[arg(long, default_value = "rtm-sim")]
    board_name: String,
    /// Strips: the outlet the board hangs on.
    #[arg(long, default_value_t = 1)]
    board_outlet: u8,
    /// Below this supply voltage the board resets in a loop.
    #[arg(long, default_value_t = 4.75)]
    brownout_volts: f64,
    /// Above this it refuses to boot.
    #[arg(long, default_value_t = 5.8)]
    max_volts: f64,
    #[arg(long, default_value_t = 2)]
    autoboot_secs: u32,
    /// Pause between boot messages.
    #[arg(long, default_value_t = 20)]
    line_delay_ms: u64,
    /// The folder the board's shell runs in (default: a fresh temporary one).
    #[arg(long)]
    board_home: Option<PathBuf>,
    /// Write the board's screen state (off, booting, booted) into FILE, for rtmd's capture
    /// source `sim:FILE` (docs/capture.md).
    #[arg(long, value_name = "FILE")]
    board_screen: Option<PathBuf>,
}

/// A running simulated board and its console pty (both must live as long as the simulator).
struct Board {
    board: SimBoard,
    _console: Pty,
}

impl BoardArgs {
    fn start(&self) -> Result<Option<Board>, String> {
        let Some(path) = &self.board_console else {
            return Ok(None);
        };
        let (console, master) = open_pty(path)?;
        let scratch = self.board_home.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("rtm-sim-board-{}", std::process::id()))
        });
        let spec = BoardSpec {
            name: self.board_name.clone(),
            brownout_volts: self.brownout_volts,
            max_volts: self.max_volts,
            scratch,
            autoboot_secs: self.autoboot_secs,
            line_delay_ms: self.line_delay_ms,
        };
        let events = match &self.board_screen {
            Some(file) => Events::stdout().with_screen(file.clone()),
            None => Events::stdout(),
        };
        let board = SimBoard::start(master, spec, events)
            .map_err(|e| format!("cannot start the board: {e}"))?;
        Ok(Some(Board {
            board,
            _console: console,
        }))
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Model {
    Pms20,
    Pms21,
    Pmswlan,
}

#[derive(Clone, Copy, ValueEnum)]
enum Protocol {
    Ascii,
    Modbus,
}

#[derive(Clone, Copy, ValueEnum)]
enum FaultArg {
    None,
    /// Never answer.
    Silent,
    /// Corrupt every reply (bad CRC / garbled ASCII).
    Corrupt,
}

impl From<FaultArg> for Fault {
    fn from(f: FaultArg) -> Self {
        match f {
            FaultArg::None => Fault::None,
            FaultArg::Silent => Fault::Silent,
            FaultArg::Corrupt => Fault::Corrupt,
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args.device) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rtm-sim: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(device: Device) -> Result<(), String> {
    let events = Events::stdout();
    match device {
        Device::Egpms {
            listen,
            model,
            password,
            ignore_starts,
            on,
            stuck_outlets,
            board,
        } => {
            let model = match model {
                Model::Pms20 => EgpmsModel::Pms20,
                Model::Pms21 => EgpmsModel::Pms21,
                Model::Pmswlan => EgpmsModel::PmsWlan,
            };
            let board_sim = board.start()?;
            let mut outlets = Outlets::default();
            if let Some(b) = &board_sim {
                let index = usize::from(board.board_outlet.clamp(1, 4) - 1);
                outlets.board = Some((index, b.board.power_input()));
            }
            for n in on {
                let slot = outlets
                    .on
                    .get_mut(usize::from(n).wrapping_sub(1))
                    .ok_or(format!("no outlet {n}"))?;
                *slot = true;
            }
            // Through `set`, so the board on its outlet sees its power.
            let on_at_start = outlets.on;
            for (i, on) in on_at_start.into_iter().enumerate() {
                outlets.set(i, on);
            }
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let listener = tokio::net::TcpListener::bind(&listen)
                    .await
                    .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
                let addr = listener.local_addr().map_err(|e| e.to_string())?;
                events.emit(&format!("listening {addr}"));
                let spec = StripSpec {
                    model,
                    password: password.into_bytes(),
                    ignore_starts,
                    stuck_outlets,
                };
                rtmd::sim::egpms::serve(listener, spec, Arc::new(Mutex::new(outlets)), events)
                    .await;
                Ok(())
            })
        }
        Device::Dpm86xx { protocol, supply } => {
            let kind = match protocol {
                Protocol::Ascii => Kind::DpmAscii,
                Protocol::Modbus => Kind::DpmModbus,
            };
            serve_supply(&supply, kind, events)
        }
        Device::Riden { model_id, supply } => {
            serve_supply(&supply, Kind::Riden { model_id }, events)
        }
    }
}

fn serve_supply(args: &SupplyArgs, kind: Kind, events: Events) -> Result<(), String> {
    let board = args.board.start()?;
    let (_pty, port) = open_pty(&args.pty)?;
    events.emit(&format!("ready {}", args.pty.display()));
    let model = Arc::new(Mutex::new(SupplyModel {
        temperature: args.temperature,
        ..SupplyModel::default()
    }));
    let power = board.as_ref().map(|b| b.board.power_input());
    rtmd::sim::supply::serve(
        port,
        kind,
        args.address,
        args.fault.into(),
        model,
        events,
        power,
    );
    drop(board);
    Ok(())
}

/// A pseudo-terminal whose slave is linked at `link`, and a handle on its master.
fn open_pty(link: &std::path::Path) -> Result<(Pty, std::fs::File), String> {
    let pty = Pty::open(link).map_err(|e| {
        format!(
            "cannot create the pseudo-terminal at {}: {e}",
            link.display()
        )
    })?;
    let master = pty.master.try_clone().map_err(|e| e.to_string())?;
    Ok((pty, master))
}
