//! The D-Bus face's side of the gate: the caller's uid from the bus daemon's credentials,
//! lease refusals as named D-Bus errors, and [`BusGate::run`], which every mutating method
//! runs (written for it by `gated_interface!` in mod.rs).
//!
//! `run` asks the bus for the sender's uid (`GetConnectionUnixUser`; never an argument) and
//! hands the call to the board's [`Gate`]. A call without a sender (a peer-to-peer
//! connection, no bus daemon to vouch for the peer) is refused: with no uid there is no
//! telling whether the caller holds the board.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::OnceCell;
use zbus::Connection;
use zbus::message::Header;
use zbus::names::BusName;

use super::Error;
use crate::access::{AccessError, Caller, Face, FaceError, Gate, Permit};

impl From<AccessError> for Error {
    fn from(e: AccessError) -> Self {
        match e {
            AccessError::Leased(_) => Error::Leased(e.to_string()),
            AccessError::NotHeld => Error::NotFound(e.to_string()),
            AccessError::InvalidArgs(m) => Error::InvalidArgs(m),
            AccessError::NotAdmin(m) => Error::AccessDenied(m),
            AccessError::Closed(_) => Error::Busy(e.to_string()),
        }
    }
}

impl FaceError for Error {
    /// The error's short D-Bus name and its message: `Leased: held by ...`.
    fn audit_summary(&self) -> String {
        let name = zbus::DBusError::name(self).to_string();
        let short = name.rsplit('.').next().unwrap_or(&name).to_string();
        format!(
            "{short}: {}",
            zbus::DBusError::description(self).unwrap_or("")
        )
    }
}

/// The board's gate as the D-Bus interfaces use it (cheap to clone).
#[derive(Clone)]
pub struct BusGate {
    gate: Gate,
    /// The bus daemon's proxy, built on first use (a peer-to-peer connection never needs it).
    dbus: Arc<OnceCell<zbus::fdo::DBusProxy<'static>>>,
}

impl BusGate {
    pub fn new(gate: Gate) -> BusGate {
        BusGate {
            gate,
            dbus: Arc::new(OnceCell::new()),
        }
    }

    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// The message's sender as a [`Caller`], with its Unix uid as the bus daemon knows it.
    pub async fn caller(&self, hdr: &Header<'_>, conn: &Connection) -> Result<Caller, Error> {
        let Some(sender) = hdr.sender() else {
            return Err(Error::AccessDenied(
                "the call carries no sender (a peer-to-peer connection?): rtmd needs the \
                 bus daemon's word for the caller's uid before it changes anything"
                    .to_string(),
            ));
        };
        let proxy = self
            .dbus
            .get_or_try_init(|| async {
                zbus::fdo::DBusProxy::builder(conn)
                    .cache_properties(zbus::proxy::CacheProperties::No)
                    .build()
                    .await
            })
            .await
            .map_err(|e| Error::AccessDenied(format!("cannot ask the bus who calls: {e}")))?;
        let uid = proxy
            .get_connection_unix_user(BusName::Unique(sender.to_owned()))
            .await
            .map_err(|e| Error::AccessDenied(format!("the bus has no uid for {sender}: {e}")))?;
        Ok(Caller::uid(uid, Face::Bus, sender.as_str()))
    }

    /// The caller, or the refusal recorded: for the methods that then run the gate their
    /// own way (the lease methods).
    pub async fn known_caller(
        &self,
        hdr: &Header<'_>,
        conn: &Connection,
        method: &'static str,
        args: &str,
    ) -> Result<Caller, Error> {
        self.caller(hdr, conn).await.inspect_err(|e| {
            let via = format!(
                "{} {}",
                Face::Bus.as_str(),
                hdr.sender().map(|s| s.as_str()).unwrap_or("(no sender)")
            );
            self.gate
                .record(None, &via, method, args, Err(e.audit_summary()));
        })
    }

    /// The caller, the lease check, the call and its record: what every mutating method
    /// runs. `method` is `Interface.Method` without the `org.rtmd.Dut1.` prefix; `args` a
    /// short summary.
    pub async fn run<T, F, Fut>(
        &self,
        hdr: &Header<'_>,
        conn: &Connection,
        method: &'static str,
        args: String,
        body: F,
    ) -> Result<T, Error>
    where
        F: FnOnce(Permit) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let caller = self.known_caller(hdr, conn, method, &args).await?;
        self.gate.run(&caller, method, args, body).await
    }
}
