//! The D-Bus API (`docs/dbus.md`): thin zbus interfaces over the subsystems, the mapping of
//! subsystem errors to named D-Bus errors, and the connection with the board's well-known
//! names.
//!
//! Nothing here decides anything about hardware: each method validates its arguments, calls
//! the subsystem, and translates the result.

/// Spawns the task that sends `PropertiesChanged` for an interface whose properties all
/// come from one `watch` status: at every change, `<property>_changed` for each listed field
/// that differs from the last status. Errors mean the connection is gone; the daemon
/// notices that elsewhere. For `spawn_change_signals` of the plain interfaces (NBD, storage,
/// capture); Power, Console and the board object derive some properties and do their own.
macro_rules! spawn_status_signals {
    ($connection:expr, $iface:ty, $status:expr, { $($field:ident => $changed:ident),+ $(,)? }) => {{
        let iface = $connection
            .object_server()
            .interface::<_, $iface>(PATH)
            .await?;
        let mut status = $status;
        tokio::spawn(async move {
            let mut last = status.borrow().clone();
            while status.changed().await.is_ok() {
                let now = status.borrow_and_update().clone();
                let i = iface.get().await;
                let e = iface.signal_emitter();
                $(
                    if now.$field != last.$field {
                        let _ = i.$changed(e).await;
                    }
                )+
                last = now;
            }
        });
        Ok(())
    }};
}

/// Writes the `#[interface]` impl of an interface whose mutating methods all go through the
/// gate, so none can forget it: each method in the `gated { }` block gets the header and
/// connection parameters added, and its body runs inside [`BusGate::run`] with the permit
/// named between the bars. Everything after the block (reading methods, properties) is
/// passed through as written.
///
/// ```ignore
/// gated_interface! {
///     #[interface(name = "org.rtmd.Dut1.Power")]
///     impl PowerIface {
///         gated {
///             #[gated("Power.Cycle", format!("{off_ms} ms"))]
///             /// Off, wait, on.
///             async fn cycle(&self, off_ms: u32) -> Result<(), Error> |permit| {
///                 self.cycle_for(&permit, off_ms).await
///             }
///         }
///         #[zbus(property)]
///         fn state(&self) -> String { ... }
///     }
/// }
/// ```
///
/// The result's `Ok` type must not be a tuple (zbus would not see its fields through the
/// macro): a method with several out arguments is written by hand.
macro_rules! gated_interface {
    (
        #[$($attr:tt)*]
        impl $iface:ident {
            gated {
                $(
                    #[gated($method:literal, $args:expr)]
                    $(#[$($m:tt)*])*
                    async fn $name:ident(&$slf:ident $(, $arg:ident : $argty:ty)* $(,)?)
                        -> Result<$ok:ty, Error> |$permit:ident| $body:block
                )*
            }
            $($rest:tt)*
        }
    ) => {
        #[$($attr)*]
        impl $iface {
            $(
                $(#[$($m)*])*
                async fn $name(
                    &$slf,
                    $($arg: $argty,)*
                    #[zbus(header)] hdr: ::zbus::message::Header<'_>,
                    #[zbus(connection)] conn: &::zbus::Connection,
                ) -> Result<$ok, Error> {
                    $slf.gate
                        .run(&hdr, conn, $method, $args, |$permit| async move $body)
                        .await
                }
            )*
            $($rest)*
        }
    };
}

pub mod access;
mod capture;
mod console;
mod dut;
mod images;
mod keyboard;
mod nbd;
mod power;
mod storage;

use std::time::Duration;

use zbus::connection::Builder;
use zbus::fdo::{RequestNameFlags, RequestNameReply};
use zbus::{Connection, DBusError};

use crate::board::Board;
use crate::power::PowerError;

/// The gate lives in `access`; re-exported for the callers that build a `Dut` by hand.
pub use crate::access::Gate;
pub use access::BusGate;
pub use dut::Dut;

/// The object path every board serves.
pub const PATH: &str = "/org/rtmd/Dut1";
/// The root interface; subsystem interfaces are `org.rtmd.Dut1.<Subsystem>`.
pub const INTERFACE: &str = "org.rtmd.Dut1";

/// The board's well-known bus name: `org.rtmd.Dut1.<board>` with `-` turned into `_`.
pub fn bus_name(board: &str) -> String {
    format!("{INTERFACE}.{}", board.replace('-', "_"))
}

/// Which bus to connect to.
#[derive(Debug, Clone)]
pub enum BusChoice {
    System,
    Session,
    Address(String),
}

impl BusChoice {
    /// A connection builder for this bus (zbus reports a bad address at `build()`).
    pub fn builder(&self) -> Builder<'static> {
        match self {
            BusChoice::System => Builder::system(),
            BusChoice::Session => Builder::session(),
            BusChoice::Address(a) => Builder::address(a.as_str()),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            BusChoice::System => "the system bus".to_string(),
            BusChoice::Session => "the session bus".to_string(),
            BusChoice::Address(a) => format!("the bus at {a}"),
        }
    }
}

/// Named errors of the API. The derive appends each `name` to the prefix `org`, which lets
/// one enum carry both our `org.rtmd.Dut1.Error.*` and the standard `InvalidArgs`.
#[derive(Debug, DBusError)]
#[zbus(prefix = "org")]
pub enum Error {
    #[zbus(name = "rtmd.Dut1.Error.NotConfigured")]
    NotConfigured(String),
    #[zbus(name = "rtmd.Dut1.Error.Busy")]
    Busy(String),
    #[zbus(name = "rtmd.Dut1.Error.Hardware")]
    Hardware(String),
    #[zbus(name = "rtmd.Dut1.Error.Timeout")]
    Timeout(String),
    #[zbus(name = "rtmd.Dut1.Error.OutOfRange")]
    OutOfRange(String),
    #[zbus(name = "rtmd.Dut1.Error.Leased")]
    Leased(String),
    #[zbus(name = "rtmd.Dut1.Error.NotFound")]
    NotFound(String),
    #[zbus(name = "freedesktop.DBus.Error.InvalidArgs")]
    InvalidArgs(String),
    /// A caller without credentials, or a `ForceRelease` by someone who is not an admin.
    #[zbus(name = "freedesktop.DBus.Error.AccessDenied")]
    AccessDenied(String),
}

impl From<PowerError> for Error {
    fn from(e: PowerError) -> Self {
        match e {
            PowerError::Timeout(m) => Error::Timeout(m),
            PowerError::Io(m)
            | PowerError::Protocol(m)
            | PowerError::Refused(m)
            | PowerError::Mismatch(m) => Error::Hardware(m),
            PowerError::OutOfRange(m) => Error::OutOfRange(m),
            PowerError::InvalidArgument(m) => Error::InvalidArgs(m),
            PowerError::NotFound(m) => Error::NotFound(m),
            PowerError::NotSupported(m) => Error::NotConfigured(m),
        }
    }
}

/// Why the daemon could not take its place on the bus.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("board {board} is already served by {owner} (it owns {name} on {bus})")]
    NameTaken {
        board: String,
        /// "pid N", as the bus says; or "another process" if it would not say.
        owner: String,
        name: String,
        bus: String,
    },
    #[error("cannot connect to {bus}: {source}")]
    Bus { bus: String, source: zbus::Error },
}

/// Connects and takes the board's names, before anything else of the board exists: a
/// second rtmd for a board already served stops here, having bound no port and touched no
/// file. Also takes the name spelled with the board name verbatim (`-` is valid in bus
/// names), so a systemd template's `BusName=org.rtmd.Dut1.%i` is exact for every board.
///
/// The object server runs from the start, so a call that arrives before [`serve`] has
/// registered the interfaces is answered (`UnknownObject`), not left without a reply.
pub async fn claim(bus: &BusChoice, board: &str) -> Result<Connection, ConnectError> {
    let fail = |source| ConnectError::Bus {
        bus: bus.describe(),
        source,
    };
    let connection = bus.builder().build().await.map_err(fail)?;
    let _ = connection.object_server();
    let name = bus_name(board);
    let verbatim = format!("{INTERFACE}.{board}");
    let mut names = vec![name.clone()];
    if verbatim != name {
        names.push(verbatim);
    }
    for n in &names {
        // Neither replacing an owner nor letting us be replaced, and no queueing: zbus's
        // defaults would let a second instance silently steal the names.
        let reply = connection
            .request_name_with_flags(n.as_str(), RequestNameFlags::DO_NOT_QUEUE)
            .await;
        match reply {
            Ok(RequestNameReply::PrimaryOwner | RequestNameReply::AlreadyOwner) => {}
            Ok(RequestNameReply::Exists | RequestNameReply::InQueue)
            | Err(zbus::Error::NameTaken) => {
                return Err(ConnectError::NameTaken {
                    board: board.to_string(),
                    owner: owner_of(&connection, n).await,
                    name: n.clone(),
                    bus: bus.describe(),
                });
            }
            Err(e) => return Err(fail(e)),
        }
    }
    Ok(connection)
}

/// Who owns `name`: "pid N" as the bus knows it.
async fn owner_of(connection: &Connection, name: &str) -> String {
    let pid = async {
        let proxy = zbus::fdo::DBusProxy::new(connection).await.ok()?;
        let name = zbus::names::BusName::try_from(name).ok()?;
        proxy.get_connection_unix_process_id(name).await.ok()
    };
    match pid.await {
        Some(pid) => format!("pid {pid}"),
        None => "another process".to_string(),
    }
}

/// Serves the board's interfaces at [`PATH`] on a connection from [`claim`], and their
/// change signals.
pub async fn serve(
    connection: &Connection,
    bus: &BusChoice,
    board: &Board,
) -> Result<(), ConnectError> {
    let fail = |source| ConnectError::Bus {
        bus: bus.describe(),
        source,
    };
    let server = connection.object_server();
    let gate = BusGate::new(board.gate.clone());
    server
        .at(
            PATH,
            Dut::new(board.name(), board.subsystems(), board.gate.clone()),
        )
        .await
        .map_err(fail)?;
    if let Some(p) = &board.power {
        server
            .at(PATH, power::PowerIface::new(p.clone(), gate.clone()))
            .await
            .map_err(fail)?;
    }
    if let Some(c) = &board.console {
        server
            .at(PATH, console::ConsoleIface::new(c.clone(), gate.clone()))
            .await
            .map_err(fail)?;
    }
    if let Some(s) = &board.images {
        server
            .at(PATH, images::ImagesIface::new(s.clone(), gate.clone()))
            .await
            .map_err(fail)?;
        if let Some(n) = &board.nbd {
            server
                .at(PATH, nbd::NbdIface::new(n.clone(), s.clone(), gate.clone()))
                .await
                .map_err(fail)?;
        }
        if let Some(g) = &board.storage {
            server
                .at(
                    PATH,
                    storage::StorageIface::new(g.clone(), s.clone(), gate.clone()),
                )
                .await
                .map_err(fail)?;
            if g.has_keyboard() {
                server
                    .at(PATH, keyboard::KeyboardIface::new(g.clone(), gate.clone()))
                    .await
                    .map_err(fail)?;
            }
        }
    }
    if let Some(c) = &board.capture {
        server
            .at(PATH, capture::CaptureIface::new(c.clone(), gate.clone()))
            .await
            .map_err(fail)?;
    }
    spawn_change_signals(connection, board).await.map_err(fail)
}

/// Stops taking calls: gives the names back (a caller now hears that no rtmd serves the
/// board, and the next instance may take them) and closes the connection, so nothing
/// already queued on it is dispatched. Calls already running finish on their own.
pub async fn withdraw(connection: Connection, board: &str) {
    let name = bus_name(board);
    let verbatim = format!("{INTERFACE}.{board}");
    for n in [name.as_str(), verbatim.as_str()] {
        if let Ok(n) = zbus::names::WellKnownName::try_from(n) {
            let _ = connection.release_name(n).await;
        }
    }
    let _ = connection.close().await;
}

/// Every interface's `PropertiesChanged` sender.
async fn spawn_change_signals(connection: &Connection, board: &Board) -> zbus::Result<()> {
    dut::spawn_change_signals(connection, board.gate.clone()).await?;
    if let Some(p) = &board.power {
        power::spawn_change_signals(connection, p.clone()).await?;
    }
    if let Some(c) = &board.console {
        console::spawn_change_signals(connection, c.clone()).await?;
    }
    if let Some(s) = &board.images {
        images::spawn_change_signals(connection, s.clone()).await?;
        if let Some(n) = &board.nbd {
            nbd::spawn_change_signals(connection, n.clone()).await?;
        }
        if let Some(g) = &board.storage {
            storage::spawn_change_signals(connection, g.clone()).await?;
        }
    }
    if let Some(c) = &board.capture {
        capture::spawn_change_signals(connection, c.clone()).await?;
    }
    Ok(())
}

/// Longest off time a caller may ask of `Cycle`; beyond that it is a mistake, not a reset.
pub const MAX_CYCLE_OFF: Duration = Duration::from_secs(600);
