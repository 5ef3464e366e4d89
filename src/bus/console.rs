//! `org.rtmd.Dut1.Console`: input to the board, a break, waiting for output, and `Attach`,
//! which hands the caller a socket that is a live console client (how `rtmctl console`
//! connects: the bus policy decides who may, no socket file permissions involved).
//!
//! `WaitFor` is bounded per caller (the sender's unique name) and cancelled as soon as its
//! caller leaves the bus: a client killed mid-call must not leave a matcher running for up to
//! an hour.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::OnceCell;
use zbus::message::Header;
use zbus::{Connection, DBusError, interface};

use super::access::BusGate;
use super::{Error, PATH};
use crate::access::bytes_summary;
use crate::console::{Console, ConsoleError};

impl From<ConsoleError> for Error {
    fn from(e: ConsoleError) -> Self {
        match e {
            ConsoleError::NotConnected(_) | ConsoleError::Hardware(_) | ConsoleError::Setup(_) => {
                Error::Hardware(e.to_string())
            }
            ConsoleError::Timeout(m) => Error::Timeout(m),
            ConsoleError::InvalidArgument(m) => Error::InvalidArgs(m),
            ConsoleError::Limit(m) | ConsoleError::Busy(m) => Error::Busy(m),
        }
    }
}

/// `WaitFor`'s errors: the API's usual names, and the standard one for a caller past its
/// share (`LimitsExceeded`), which the shared [`Error`] does not carry.
#[derive(Debug, DBusError)]
#[zbus(prefix = "org")]
pub enum WaitForError {
    #[zbus(name = "rtmd.Dut1.Error.Hardware")]
    Hardware(String),
    #[zbus(name = "rtmd.Dut1.Error.Timeout")]
    Timeout(String),
    /// Every `WaitFor` place of the board is taken.
    #[zbus(name = "rtmd.Dut1.Error.Busy")]
    Busy(String),
    /// A bad, too long or too complex pattern, or a timeout over an hour.
    #[zbus(name = "freedesktop.DBus.Error.InvalidArgs")]
    InvalidArgs(String),
    /// This caller's calls at once, or a pattern too slow for the output.
    #[zbus(name = "freedesktop.DBus.Error.LimitsExceeded")]
    LimitsExceeded(String),
}

impl From<ConsoleError> for WaitForError {
    fn from(e: ConsoleError) -> Self {
        match e {
            ConsoleError::NotConnected(_) | ConsoleError::Hardware(_) | ConsoleError::Setup(_) => {
                WaitForError::Hardware(e.to_string())
            }
            ConsoleError::Timeout(m) => WaitForError::Timeout(m),
            ConsoleError::InvalidArgument(m) => WaitForError::InvalidArgs(m),
            ConsoleError::Limit(m) => WaitForError::LimitsExceeded(m),
            ConsoleError::Busy(m) => WaitForError::Busy(m),
        }
    }
}

pub struct ConsoleIface {
    console: Console,
    gate: BusGate,
    /// The bus daemon's proxy, for `NameOwnerChanged` of `WaitFor` callers.
    dbus: Arc<OnceCell<zbus::fdo::DBusProxy<'static>>>,
}

impl ConsoleIface {
    pub fn new(console: Console, gate: BusGate) -> Self {
        ConsoleIface {
            console,
            gate,
            dbus: Arc::new(OnceCell::new()),
        }
    }

    /// Resolves when `sender` has left the bus (at once if it already has). Never resolves
    /// when the bus cannot tell: the call then ends by its timeout, as before.
    async fn left(&self, conn: &Connection, sender: &str) {
        let proxy = self
            .dbus
            .get_or_try_init(|| async {
                zbus::fdo::DBusProxy::builder(conn)
                    .cache_properties(zbus::proxy::CacheProperties::No)
                    .build()
                    .await
            })
            .await;
        let Ok(proxy) = proxy else {
            return std::future::pending().await;
        };
        // Subscribe first, then ask: a caller leaving in between is seen either way.
        let Ok(mut changes) = proxy
            .receive_name_owner_changed_with_args(&[(0, sender)])
            .await
        else {
            return std::future::pending().await;
        };
        let name = zbus::names::BusName::try_from(sender);
        if let Ok(name) = name
            && proxy.name_has_owner(name).await.is_ok_and(|has| !has)
        {
            return;
        }
        while let Some(change) = changes.next().await {
            if change.args().is_ok_and(|a| a.new_owner().is_none()) {
                return;
            }
        }
        std::future::pending().await
    }
}

gated_interface! {
#[interface(name = "org.rtmd.Dut1.Console")]
impl ConsoleIface {
    gated {
        #[gated("Console.Send", bytes_summary(&data))]
        async fn send(&self, data: Vec<u8>) -> Result<(), Error> |permit| {
            Ok(self.console.send(&permit, data.into()).await?)
        }

        #[gated("Console.SendBreak", String::new())]
        async fn send_break(&self) -> Result<(), Error> |permit| {
            Ok(self.console.send_break(&permit).await?)
        }

        #[gated("Console.Attach", String::new())]
        /// A socket that is a console client; what is typed into it passes the lease check
        /// as the caller who attached it.
        #[zbus(out_args("socket"))]
        async fn attach(&self) -> Result<zbus::OwnedFd, Error> |permit| {
            let stream = self.console.attach(&permit)?;
            Ok(std::os::fd::OwnedFd::from(stream).into())
        }
    }

    /// Waits for the live output to match; cancelled when the caller leaves the bus.
    #[zbus(out_args("match"))]
    async fn wait_for(
        &self,
        regex: &str,
        timeout_ms: u32,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<String, WaitForError> {
        // A bus always names the sender; a peer-to-peer caller shares one place.
        let sender = hdr
            .sender()
            .map(|s| s.to_string())
            .unwrap_or_else(|| "a peer-to-peer caller".to_string());
        let wait = self.console.wait_for(
            &sender,
            regex,
            Duration::from_millis(u64::from(timeout_ms)),
        );
        tokio::select! {
            result = wait => Ok(result?),
            _ = self.left(conn, &sender), if hdr.sender().is_some() => {
                tracing::info!(
                    subsystem = "console",
                    "WaitFor of {sender} cancelled: the caller left the bus"
                );
                Err(WaitForError::Hardware(format!("{sender} left the bus")))
            }
        }
    }

    /// A socket connected to the console as a raw client (extension). It writes to the
    /// board, so it is a mutating call: refused to others while the board is held. A socket
    /// handed out before a lease was taken stays connected (docs/access.md).
    #[zbus(property(emits_changed_signal = "const"))]
    fn device(&self) -> String {
        self.console.device()
    }

    #[zbus(property)]
    fn connected(&self) -> bool {
        self.console.status().connected
    }

    #[zbus(property)]
    fn clients(&self) -> u32 {
        self.console.clients()
    }

    /// The telnet listener's address, empty when there is none.
    #[zbus(property(emits_changed_signal = "const"))]
    fn tcp_address(&self) -> String {
        self.console
            .tcp_address()
            .map(|a| a.to_string())
            .unwrap_or_default()
    }

    /// The raw TCP listener's address (extension).
    #[zbus(property(emits_changed_signal = "const"))]
    fn tcp_raw_address(&self) -> String {
        self.console
            .tcp_raw_address()
            .map(|a| a.to_string())
            .unwrap_or_default()
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn log_path(&self) -> String {
        self.console
            .log_path()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    }

    /// `WaitFor` calls in progress (extension).
    #[zbus(property)]
    fn waiters(&self) -> u32 {
        *self.console.subscribe_waiters().borrow()
    }

    /// Why the device is not connected, empty while it is (extension).
    #[zbus(property)]
    fn last_error(&self) -> String {
        self.console.status().last_error.unwrap_or_default()
    }
}
}

/// `PropertiesChanged` for `Connected`, `LastError`, `Clients` and `Waiters`.
pub async fn spawn_change_signals(connection: &Connection, console: Console) -> zbus::Result<()> {
    let iface = connection
        .object_server()
        .interface::<_, ConsoleIface>(PATH)
        .await?;
    let mut status = console.subscribe_status();
    let mut clients = console.subscribe_clients();
    let mut waiters = console.subscribe_waiters();
    tokio::spawn(async move {
        let mut last = status.borrow().clone();
        loop {
            tokio::select! {
                changed = status.changed() => {
                    if changed.is_err() { break }
                    let now = status.borrow_and_update().clone();
                    let i = iface.get().await;
                    if now.connected != last.connected {
                        let _ = i.connected_changed(iface.signal_emitter()).await;
                    }
                    if now.last_error != last.last_error {
                        let _ = i.last_error_changed(iface.signal_emitter()).await;
                    }
                    last = now;
                }
                changed = clients.changed() => {
                    if changed.is_err() { break }
                    clients.borrow_and_update();
                    let _ = iface.get().await.clients_changed(iface.signal_emitter()).await;
                }
                changed = waiters.changed() => {
                    if changed.is_err() { break }
                    waiters.borrow_and_update();
                    let _ = iface.get().await.waiters_changed(iface.signal_emitter()).await;
                }
            }
        }
    });
    Ok(())
}
