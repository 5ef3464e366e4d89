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
    },
    /// A Joy-it DPM86xx supply on a pseudo-terminal.
    Dpm86xx {
        /// Where to put the symlink to the pseudo-terminal the daemon opens.
        #[arg(long)]
        pty: PathBuf,
        #[arg(long, value_enum, default_value = "ascii")]
        protocol: Protocol,
        #[arg(long, default_value_t = 1)]
        address: u8,
        #[arg(long, value_enum, default_value = "none")]
        fault: FaultArg,
    },
    /// A Riden RD60xx supply (Modbus RTU) on a pseudo-terminal.
    Riden {
        #[arg(long)]
        pty: PathBuf,
        /// Model id in register 0 (60061 RD6006, 60065 RD6006P, 60121 RD6012, ...).
        #[arg(long, default_value_t = 60061)]
        model_id: u16,
        #[arg(long, default_value_t = 1)]
        address: u8,
        #[arg(long, value_enum, default_value = "none")]
        fault: FaultArg,
    },
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
        } => {
            let model = match model {
                Model::Pms20 => EgpmsModel::Pms20,
                Model::Pms21 => EgpmsModel::Pms21,
                Model::Pmswlan => EgpmsModel::PmsWlan,
            };
            let mut outlets = Outlets::default();
            for n in on {
                let slot = outlets
                    .on
                    .get_mut(usize::from(n).wrapping_sub(1))
                    .ok_or(format!("no outlet {n}"))?;
                *slot = true;
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
                };
                rtmd::sim::egpms::serve(listener, spec, Arc::new(Mutex::new(outlets)), events)
                    .await;
                Ok(())
            })
        }
        Device::Dpm86xx {
            pty,
            protocol,
            address,
            fault,
        } => {
            let kind = match protocol {
                Protocol::Ascii => Kind::DpmAscii,
                Protocol::Modbus => Kind::DpmModbus,
            };
            serve_supply(&pty, kind, address, fault.into(), events)
        }
        Device::Riden {
            pty,
            model_id,
            address,
            fault,
        } => serve_supply(
            &pty,
            Kind::Riden { model_id },
            address,
            fault.into(),
            events,
        ),
    }
}

fn serve_supply(
    link: &std::path::Path,
    kind: Kind,
    address: u8,
    fault: Fault,
    events: Events,
) -> Result<(), String> {
    let pty = Pty::open(link).map_err(|e| {
        format!(
            "cannot create the pseudo-terminal at {}: {e}",
            link.display()
        )
    })?;
    let port = pty.master.try_clone().map_err(|e| e.to_string())?;
    events.emit(&format!("ready {}", link.display()));
    let model = Arc::new(Mutex::new(SupplyModel::default()));
    rtmd::sim::supply::serve(port, kind, address, fault, model, events);
    Ok(())
}
