//! The lease check every mutating D-Bus method goes through ([`Gate::run`]), the caller's
//! uid from the bus daemon's credentials, and the mapping of lease errors to D-Bus errors.
//!
//! A method that changes the board takes the message header and the connection and wraps
//! its body:
//!
//! ```ignore
//! async fn on(&self, #[zbus(header)] hdr: Header<'_>, #[zbus(connection)] conn: &Connection)
//!     -> Result<(), Error> {
//!     self.gate.run(&hdr, conn, "Power.On", String::new(), async { ... }).await
//! }
//! ```
//!
//! `run` asks the bus for the sender's uid (`GetConnectionUnixUser`; never an argument),
//! refuses with `org.rtmd.Dut1.Error.Leased` while another uid holds the board, runs the
//! body, and records the call with its result in the journal and the audit history. A call
//! without a sender (a peer-to-peer connection, no bus daemon to vouch for the peer) is
//! refused: with no uid there is no telling whether the caller holds the board.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::OnceCell;
use zbus::Connection;
use zbus::message::Header;
use zbus::names::BusName;

use super::Error;
use crate::access::{Access, AccessError, AuditEntry, clip};

impl From<AccessError> for Error {
    fn from(e: AccessError) -> Self {
        match e {
            AccessError::Leased(_) => Error::Leased(e.to_string()),
            AccessError::NotHeld => Error::NotFound(e.to_string()),
            AccessError::InvalidArgs(m) => Error::InvalidArgs(m),
            AccessError::NotAdmin(m) => Error::AccessDenied(m),
        }
    }
}

/// The lease check and audit of one board, shared by every interface (cheap to clone).
#[derive(Clone)]
pub struct Gate {
    access: Access,
    /// The bus daemon's proxy, built on first use (a peer-to-peer connection never needs it).
    dbus: Arc<OnceCell<zbus::fdo::DBusProxy<'static>>>,
}

impl Gate {
    pub fn new(access: Access) -> Gate {
        Gate {
            access,
            dbus: Arc::new(OnceCell::new()),
        }
    }

    pub fn access(&self) -> &Access {
        &self.access
    }

    /// The Unix uid of the message's sender, as the bus daemon knows it.
    pub async fn caller(&self, hdr: &Header<'_>, conn: &Connection) -> Result<u32, Error> {
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
        proxy
            .get_connection_unix_user(BusName::Unique(sender.to_owned()))
            .await
            .map_err(|e| Error::AccessDenied(format!("the bus has no uid for {sender}: {e}")))
    }

    /// The check, the call and its record: what every mutating method runs. `method` is
    /// `Interface.Method` without the `org.rtmd.Dut1.` prefix; `args` a short summary.
    pub async fn run<T, F>(
        &self,
        hdr: &Header<'_>,
        conn: &Connection,
        method: &'static str,
        args: String,
        body: F,
    ) -> Result<T, Error>
    where
        F: Future<Output = Result<T, Error>>,
    {
        let uid = match self.caller(hdr, conn).await {
            Ok(uid) => uid,
            Err(e) => {
                self.audit(None, method, &args, &Err::<(), _>(&e));
                return Err(e);
            }
        };
        self.run_as(uid, method, args, body).await
    }

    /// [`Gate::run`] for a caller whose uid is known already (the lease methods).
    pub async fn run_as<T, F>(
        &self,
        uid: u32,
        method: &'static str,
        args: String,
        body: F,
    ) -> Result<T, Error>
    where
        F: Future<Output = Result<T, Error>>,
    {
        if let Err(e) = self.access.check(uid) {
            let e = Error::from(e);
            self.audit(Some(uid), method, &args, &Err::<(), _>(&e));
            return Err(e);
        }
        let result = body.await;
        self.audit(Some(uid), method, &args, &result.as_ref().map(|_| ()));
        result
    }

    /// One record: the journal (structured fields) and the in-daemon history.
    pub fn audit(
        &self,
        uid: Option<u32>,
        method: &'static str,
        args: &str,
        result: &Result<(), &Error>,
    ) {
        let holder = self
            .access
            .current()
            .map(|l| format!("{} (uid {})", l.holder, l.uid))
            .unwrap_or_default();
        let result = match result {
            Ok(()) => "ok".to_string(),
            Err(e) => {
                let name = zbus::DBusError::name(*e).to_string();
                let short = name.rsplit('.').next().unwrap_or(&name).to_string();
                format!(
                    "{short}: {}",
                    zbus::DBusError::description(*e).unwrap_or("")
                )
            }
        };
        let entry = AuditEntry::new(uid, &holder, method, args, &result);
        // The journal gets the same fields (AUDIT_UID=, AUDIT_METHOD=, ...), as journalctl
        // filters need them: `journalctl -u rtmd@rpi4-01 AUDIT_METHOD=Power.On`.
        tracing::info!(
            target: "rtmd::audit",
            audit_uid = uid.map_or(-1, i64::from),
            audit_holder = %entry.holder,
            audit_method = method,
            audit_args = %entry.args,
            audit_result = %entry.result,
            "{method}({}) by uid {}: {}",
            entry.args,
            uid.map_or_else(|| "unknown".to_string(), |u| u.to_string()),
            entry.result
        );
        self.access.record(entry);
    }
}

/// A summary of bytes sent to the board: their count and the start, escaped.
pub fn bytes_summary(data: &[u8]) -> String {
    let head = String::from_utf8_lossy(&data[..data.len().min(64)]);
    format!("{} bytes: {}", data.len(), clip(&head, 80))
}
