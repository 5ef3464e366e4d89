//! `rtmctl`: the command line for admins and LAVA device-dictionary hooks.
//!
//! Every command prints one short line and exits 0 when done, 1 when the operation failed
//! (hardware, timeout, daemon not running), 2 on a usage or configuration error, 3 when the
//! board is held by someone else; on failure one line on stderr says why.

mod capture;
mod console;
mod image;
mod keyboard;
mod lease;
mod nbd;
mod usbg;

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use rtmd::bus::{PATH, bus_name};
use zbus::{Connection, DBusError, OwnedVariant, fdo};

#[derive(Parser)]
#[command(version, about = "Control a board served by rtmd")]
struct Args {
    /// The bus rtmd serves on.
    #[arg(long, value_enum, env = "RTM_BUS", default_value = "system")]
    bus: Bus,
    /// The bus at this D-Bus address instead. A bus named on the command line beats one from
    /// the environment (`--bus-address` beats `RTM_BUS`, `--bus` beats `RTM_BUS_ADDRESS`).
    #[arg(long, env = "RTM_BUS_ADDRESS", value_name = "ADDR")]
    bus_address: Option<String>,
    /// The board.
    #[arg(long, env = "RTM_DUT")]
    dut: String,
    /// Give up on a call after this many seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Take (or renew) the board's lease with this label before the command: how LAVA
    /// hooks hold the board for a job. Held by another uid: exit 3.
    #[arg(long, env = "RTM_HOLD", value_name = "LABEL")]
    hold: Option<String>,
    /// How long --hold holds the board after this command (renewed by every command).
    #[arg(long, env = "RTM_HOLD_TTL", value_name = "DURATION", default_value = "1h",
          value_parser = humantime::parse_duration)]
    hold_ttl: Duration,
    /// Release the board's lease after the command (whatever its result): the end of a
    /// LAVA job.
    #[arg(long)]
    release: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Bus {
    System,
    Session,
}

#[derive(Subcommand)]
enum Command {
    /// Board power.
    Power {
        #[command(subcommand)]
        action: PowerAction,
    },
    /// The board's serial console: interactive on a terminal (Ctrl-] q leaves), a byte
    /// pipe otherwise. Live: only what the board prints from now on.
    Console {
        /// Print the console log instead (the board's history).
        #[arg(long)]
        log: bool,
        /// With --log: keep printing what is appended.
        #[arg(long, requires = "log")]
        follow: bool,
    },
    /// The board's image folder: fetch, list, rm.
    Image {
        #[command(subcommand)]
        action: image::ImageAction,
    },
    /// The board's NBD export: export, unexport, reset, status.
    Nbd {
        #[command(subcommand)]
        action: nbd::NbdAction,
    },
    /// The board's USB disk (mass-storage gadget).
    #[command(name = "usbg-ms")]
    UsbgMs {
        #[command(subcommand)]
        action: usbg::UsbgAction,
    },
    /// The board's USB keyboard.
    Keyboard {
        #[command(subcommand)]
        action: keyboard::KeyboardAction,
    },
    /// Take the board for your uid: others' changes are refused until you release it or
    /// the ttl runs out. Held by you already: renews.
    Hold {
        /// How long, e.g. 30m, 2h.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Who or what holds it: "bisecting a boot regression".
        label: String,
    },
    /// Give the board back.
    Release {
        /// End whoever's lease (root and the board's admin_group).
        #[arg(long)]
        force: bool,
    },
    /// Who holds the board.
    Who,
    /// The board's recent mutating calls: who, what, result.
    Audit {
        /// Only the last DURATION (e.g. 10m, 1h).
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<Duration>,
    },
    /// The board's HDMI and audio capture: snapshots, recordings, screen and tone checks.
    Capture {
        #[command(subcommand)]
        action: capture::CaptureAction,
    },
}

/// What a command produced.
enum Outcome {
    Line(String),
    Console(std::os::unix::net::UnixStream),
    Log(std::path::PathBuf, bool),
}

#[derive(Subcommand)]
enum PowerAction {
    /// Switch on; returns once the hardware reports on.
    On,
    /// Switch off.
    Off,
    /// Off, wait, on (LAVA's hard reset).
    Cycle {
        /// Off time in ms (default: the board's cycle_off_ms).
        #[arg(long, default_value_t = 0)]
        off_ms: u32,
    },
    /// Show the state (and, for a lab supply, the measurements).
    Status,
    /// Set the supply's output voltage (V).
    Voltage { volts: f64 },
    /// Set the supply's current limit (A).
    Current { amps: f64 },
    /// Apply a named voltage profile (e.g. low, nominal, high).
    Profile { name: String },
}

/// A failure, with the exit status it maps to.
struct Failure {
    code: u8,
    message: String,
}

const POWER: &str = "org.rtmd.Dut1.Power";
const CONSOLE: &str = "org.rtmd.Dut1.Console";

/// The arguments, with the bus chosen as people expect: a flag given on the command line
/// beats the environment (`RTM_BUS=session` exported by the demo must not make
/// `--bus-address ADDR` an error); both flags on the command line are a usage error.
fn parse() -> Result<Args, clap::Error> {
    use clap::parser::ValueSource;
    use clap::{CommandFactory, FromArgMatches};
    let mut command = Args::command();
    let matches = command.try_get_matches_from_mut(std::env::args_os())?;
    let mut args = Args::from_arg_matches(&matches)?;
    let on_line = |id: &str| matches.value_source(id) == Some(ValueSource::CommandLine);
    match (on_line("bus"), on_line("bus_address")) {
        (true, true) => {
            return Err(command.error(
                clap::error::ErrorKind::ArgumentConflict,
                "'--bus-address' cannot be used with '--bus'",
            ));
        }
        // `--bus` given, the address only from RTM_BUS_ADDRESS: the flag wins.
        (true, false) => args.bus_address = None,
        _ => {}
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) if !e.use_stderr() => {
            // --help, --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // One line, as LAVA logs it; `--help` has the rest.
            let rendered = e.to_string();
            let first: Vec<&str> = rendered
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            eprintln!("rtmctl: {}", first.join(" ").trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rtmctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&args)) {
        Ok(Outcome::Line(line)) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Ok(Outcome::Console(socket)) => {
            drop(runtime);
            console::session(&args.dut, socket)
        }
        Ok(Outcome::Log(path, follow)) => console::show_log(&args.dut, &path, follow),
        Err(f) => {
            eprintln!("rtmctl: {}: {}", args.dut, f.message);
            ExitCode::from(f.code)
        }
    }
}

struct Client {
    connection: Connection,
    dest: String,
    bus: String,
    board: String,
}

async fn run(args: &Args) -> Result<Outcome, Failure> {
    let (builder, bus) = match (&args.bus_address, args.bus) {
        (Some(a), _) => (
            zbus::connection::Builder::address(a.as_str()),
            format!("the bus at {a}"),
        ),
        (None, Bus::Session) => (
            zbus::connection::Builder::session(),
            "the session bus".to_string(),
        ),
        (None, Bus::System) => (
            zbus::connection::Builder::system(),
            "the system bus".to_string(),
        ),
    };
    let connection = builder
        .method_timeout(Duration::from_secs(args.timeout))
        .build()
        .await
        .map_err(|e| Failure {
            code: 1,
            message: format!("cannot connect to {bus}: {e}"),
        })?;
    let client = Client {
        connection,
        dest: bus_name(&args.dut),
        bus,
        board: args.dut.clone(),
    };
    if let Some(label) = &args.hold {
        lease::hold(&client, label, args.hold_ttl).await?;
    }
    let outcome = command(&client, args).await;
    if args.release {
        let released = lease::release(&client, false).await;
        // The command's own failure says more than a failed release after it.
        if let (Ok(_), Err(f)) = (&outcome, released) {
            return Err(f);
        }
    }
    outcome
}

async fn command(client: &Client, args: &Args) -> Result<Outcome, Failure> {
    match &args.command {
        Command::Hold { ttl, label } => lease::hold(client, label, *ttl).await.map(Outcome::Line),
        Command::Release { force } => lease::release(client, *force).await.map(Outcome::Line),
        Command::Who => lease::who(client).await.map(Outcome::Line),
        Command::Audit { since } => lease::audit(client, *since).await.map(Outcome::Line),
        Command::Power { action } => power(client, action).await.map(Outcome::Line),
        Command::Image { action } => image::run(client, action).await.map(Outcome::Line),
        Command::Nbd { action } => nbd::run(client, action).await.map(Outcome::Line),
        Command::UsbgMs { action } => usbg::run(client, action).await.map(Outcome::Line),
        Command::Keyboard { action } => keyboard::run(client, action).await.map(Outcome::Line),
        Command::Capture { action } => capture::run(client, action).await.map(Outcome::Line),
        Command::Console { log: false, .. } => {
            let reply = client.call(CONSOLE, "Attach", &()).await?;
            let fd: zbus::OwnedFd = reply.body().deserialize().map_err(|e| client.fail(e))?;
            Ok(Outcome::Console(std::os::fd::OwnedFd::from(fd).into()))
        }
        Command::Console { log: true, follow } => {
            let reply = client
                .call(
                    "org.freedesktop.DBus.Properties",
                    "Get",
                    &(CONSOLE, "LogPath"),
                )
                .await?;
            let value: OwnedVariant = reply.body().deserialize().map_err(|e| client.fail(e))?;
            let path = String::try_from(value).unwrap_or_default();
            if path.is_empty() {
                return Err(Failure {
                    code: 2,
                    message: "the console has no log (no log_dir in its config)".to_string(),
                });
            }
            Ok(Outcome::Log(path.into(), *follow))
        }
    }
}

async fn power(c: &Client, action: &PowerAction) -> Result<String, Failure> {
    // A switch returns only once the hardware confirmed it: its success is the new state,
    // no need to ask again (LAVA runs these hooks often; each round trip counts).
    let switched = |state: &str| Ok(format!("{}: power {state}", c.board));
    match action {
        PowerAction::On => {
            c.call(POWER, "On", &()).await?;
            switched("on")
        }
        PowerAction::Off => {
            c.call(POWER, "Off", &()).await?;
            switched("off")
        }
        PowerAction::Cycle { off_ms } => {
            c.call(POWER, "Cycle", &(*off_ms,)).await?;
            switched("on")
        }
        PowerAction::Voltage { volts } => {
            c.call(POWER, "SetVoltage", &(*volts,)).await?;
            Ok(format!("{}: voltage setpoint {volts:.2} V", c.board))
        }
        PowerAction::Current { amps } => {
            c.call(POWER, "SetCurrentLimit", &(*amps,)).await?;
            Ok(format!("{}: current limit {amps:.3} A", c.board))
        }
        PowerAction::Profile { name } => {
            let reply = c.call(POWER, "ApplyProfile", &(name.as_str(),)).await?;
            let volts: f64 = reply.body().deserialize().map_err(|e| c.fail(e))?;
            Ok(format!("{}: profile {name}, {volts:.2} V", c.board))
        }
        PowerAction::Status => status(c).await,
    }
}

/// One GetAll: the state, and for a lab supply the measurements and setpoint.
async fn status(c: &Client) -> Result<String, Failure> {
    let props = c.properties(POWER).await?;
    let state = props
        .value::<String>("State")
        .unwrap_or_else(|| "unknown".to_string());
    let number = |name: &str| props.value::<f64>(name);
    let mut line = format!("{}: power {state}", c.board);
    // GetAll leaves out what a plain switch does not have.
    if let Some(setpoint) = number("VoltageSetpoint") {
        if let (Some(volts), Some(amps)) = (number("Voltage"), number("Current"))
            && volts.is_finite()
            && amps.is_finite()
        {
            line.push_str(&format!(", {volts:.2} V, {amps:.3} A"));
        }
        line.push_str(&format!(" (setpoint {setpoint:.2} V)"));
    }
    Ok(line)
}

/// An interface's properties, from one `GetAll` (and `PropertiesChanged` merged in).
pub struct Props(HashMap<String, OwnedVariant>);

impl Props {
    /// A property converted to `T`; `None` when missing or of another type.
    pub fn value<T: TryFrom<OwnedVariant>>(&self, name: &str) -> Option<T> {
        self.0
            .get(name)
            .and_then(|v| v.try_clone().ok())
            .and_then(|v| T::try_from(v).ok())
    }

    /// A string property; empty when missing.
    pub fn text(&self, name: &str) -> String {
        self.value(name).unwrap_or_default()
    }

    /// A boolean property; false when missing.
    pub fn flag(&self, name: &str) -> bool {
        self.value(name).unwrap_or(false)
    }

    /// A `u` property; 0 when missing.
    pub fn count(&self, name: &str) -> u32 {
        self.value(name).unwrap_or(0)
    }

    /// Takes in the changed properties of a `PropertiesChanged` signal.
    pub fn update(&mut self, changed: HashMap<String, OwnedVariant>) {
        self.0.extend(changed);
    }
}

impl Client {
    /// All properties of `iface` on the board's object.
    async fn properties(&self, iface: &str) -> Result<Props, Failure> {
        self.properties_at(PATH, iface).await
    }

    /// All properties of `iface` on the board's object at `path`.
    async fn properties_at(&self, path: &str, iface: &str) -> Result<Props, Failure> {
        let reply = self
            .connection
            .call_method(
                Some(self.dest.as_str()),
                path,
                Some("org.freedesktop.DBus.Properties"),
                "GetAll",
                &(iface,),
            )
            .await
            .map_err(|e| self.fail(e))?;
        Ok(Props(reply.body().deserialize().map_err(|e| self.fail(e))?))
    }

    async fn call<B>(&self, iface: &str, method: &str, body: &B) -> Result<zbus::Message, Failure>
    where
        B: serde::Serialize + zbus::DynamicType,
    {
        self.connection
            .call_method(Some(self.dest.as_str()), PATH, Some(iface), method, body)
            .await
            .map_err(|e| self.fail(e))
    }

    /// Maps a D-Bus error to an exit status and one line.
    fn fail(&self, e: zbus::Error) -> Failure {
        let (name, text) = match &e {
            zbus::Error::MethodError(name, text, _) => {
                (name.to_string(), text.clone().unwrap_or_default())
            }
            zbus::Error::FDO(f) => match &**f {
                fdo::Error::ServiceUnknown(_) | fdo::Error::NameHasNoOwner(_) => {
                    return Failure {
                        code: 1,
                        message: format!(
                            "no rtmd serves board {} on {} ({} has no owner)",
                            self.board, self.bus, self.dest
                        ),
                    };
                }
                other => (
                    other.name().to_string(),
                    other.description().unwrap_or_default().to_string(),
                ),
            },
            zbus::Error::InputOutput(io) if io.kind() == std::io::ErrorKind::TimedOut => {
                return Failure {
                    code: 1,
                    message: "rtmd did not answer in time".to_string(),
                };
            }
            other => {
                return Failure {
                    code: 1,
                    message: other.to_string(),
                };
            }
        };
        let short = name.rsplit('.').next().unwrap_or(&name).to_string();
        let code = match short.as_str() {
            "Leased" => 3,
            "InvalidArgs" | "OutOfRange" | "NotConfigured" | "NotFound" | "UnknownMethod"
            | "UnknownInterface" | "UnknownProperty" => 2,
            _ => 1,
        };
        let text = match short.as_str() {
            "UnknownInterface" | "UnknownMethod" => {
                format!("not configured on this board ({text})")
            }
            _ => text,
        };
        Failure {
            code,
            message: if text.is_empty() { short } else { text },
        }
    }
}
