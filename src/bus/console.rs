//! `org.rtmd.Dut1.Console`: input to the board, a break, waiting for output, and `Attach`,
//! which hands the caller a socket that is a live console client (how `rtmctl console`
//! connects: the bus policy decides who may, no socket file permissions involved).

use std::time::Duration;

use zbus::{Connection, interface};

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
        }
    }
}

pub struct ConsoleIface {
    console: Console,
    gate: BusGate,
}

impl ConsoleIface {
    pub fn new(console: Console, gate: BusGate) -> Self {
        ConsoleIface { console, gate }
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
            let stream = self
                .console
                .attach(&permit)
                .map_err(|e| Error::Hardware(format!("cannot create a console socket: {e}")))?;
            Ok(std::os::fd::OwnedFd::from(stream).into())
        }
    }

    #[zbus(out_args("match"))]
    async fn wait_for(&self, regex: &str, timeout_ms: u32) -> Result<String, Error> {
        Ok(self
            .console
            .wait_for(regex, Duration::from_millis(u64::from(timeout_ms)))
            .await?)
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

    /// Why the device is not connected, empty while it is (extension).
    #[zbus(property)]
    fn last_error(&self) -> String {
        self.console.status().last_error.unwrap_or_default()
    }
}
}

/// `PropertiesChanged` for `Connected`, `LastError` and `Clients`.
pub async fn spawn_change_signals(connection: &Connection, console: Console) -> zbus::Result<()> {
    let iface = connection
        .object_server()
        .interface::<_, ConsoleIface>(PATH)
        .await?;
    let mut status = console.subscribe_status();
    let mut clients = console.subscribe_clients();
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
            }
        }
    });
    Ok(())
}
