//! `org.rtmd.Dut1`: the board itself: its name, the daemon's version, which subsystems it
//! serves (the interfaces present at the object path), and its lease: `Acquire`, `Renew`,
//! `Release`, `ForceRelease`, the `Holder*` properties, and the audit history
//! (`docs/access.md`).

use std::time::{Duration, SystemTime};

use zbus::message::Header;
use zbus::{Connection, interface};

use super::access::Gate;
use super::{Error, PATH};
use crate::access::{Lease, is_admin, unix};

pub struct Dut {
    name: String,
    subsystems: Vec<String>,
    gate: Gate,
}

impl Dut {
    pub fn new(name: &str, subsystems: Vec<String>, gate: Gate) -> Self {
        Dut {
            name: name.to_string(),
            subsystems,
            gate,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn lease(&self) -> Option<Lease> {
        self.gate.access().current()
    }
}

/// One audit record on the bus: (time s, uid or -1, holder, method, args, result).
type AuditRecord = (u64, i64, String, String, String, String);

#[interface(name = "org.rtmd.Dut1")]
impl Dut {
    /// Takes the board for the caller's uid for `ttl_s` seconds. `holder` says who or what
    /// ("lava job 1234", "bisecting a boot regression"). Held by anyone (the caller too:
    /// use `Renew`) is `Leased`.
    #[zbus(out_args("expires"))]
    async fn acquire(
        &self,
        holder: &str,
        ttl_s: u32,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<u64, Error> {
        let uid = self.caller(&hdr, conn, "Acquire").await?;
        let args = format!("{:?}, {ttl_s} s", crate::access::clip(holder, 80));
        let ttl = Duration::from_secs(u64::from(ttl_s));
        self.gate
            .run_as(uid, "Acquire", args, async {
                Ok(unix(self.gate.access().acquire(uid, holder, ttl)?.expires))
            })
            .await
    }

    /// Extends the caller's lease to `ttl_s` seconds from now.
    #[zbus(out_args("expires"))]
    async fn renew(
        &self,
        ttl_s: u32,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<u64, Error> {
        let uid = self.caller(&hdr, conn, "Renew").await?;
        let ttl = Duration::from_secs(u64::from(ttl_s));
        // Not through run_as: the lease check there would let only the holder past, which
        // renew() decides itself with a better message.
        let result = self
            .gate
            .access()
            .renew(uid, ttl)
            .map(|l| unix(l.expires))
            .map_err(Error::from);
        self.gate.audit(
            Some(uid),
            "Renew",
            &format!("{ttl_s} s"),
            &result.as_ref().map(|_| ()),
        );
        result
    }

    /// Ends the caller's lease. Nobody holding is `NotFound`; another uid holding is
    /// `Leased`.
    async fn release(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), Error> {
        let uid = self.caller(&hdr, conn, "Release").await?;
        let result = self
            .gate
            .access()
            .release(uid)
            .map(|_| ())
            .map_err(Error::from);
        self.gate
            .audit(Some(uid), "Release", "", &result.as_ref().map(|_| ()));
        result
    }

    /// Ends whoever's lease (root and members of `[access] admin_group`).
    async fn force_release(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), Error> {
        let uid = self.caller(&hdr, conn, "ForceRelease").await?;
        let access = self.gate.access();
        let admin = is_admin(uid, access.config().admin_group.as_deref());
        let result = access.force_release(admin).map(|_| ()).map_err(Error::from);
        self.gate
            .audit(Some(uid), "ForceRelease", "", &result.as_ref().map(|_| ()));
        result
    }

    /// The audit history from `since` (seconds since the epoch; 0: all it keeps), oldest
    /// first: (time, uid or -1, holder, method, arguments, result).
    #[zbus(out_args("records"))]
    async fn audit(&self, since: u64) -> Vec<AuditRecord> {
        let since = SystemTime::UNIX_EPOCH + Duration::from_secs(since);
        self.gate
            .access()
            .history(since)
            .into_iter()
            .map(|e| {
                (
                    unix(e.time),
                    e.uid.map_or(-1, i64::from),
                    e.holder,
                    e.method.to_string(),
                    e.args,
                    e.result,
                )
            })
            .collect()
    }

    #[zbus(property(emits_changed_signal = "const"), name = "Name")]
    fn board_name(&self) -> &str {
        &self.name
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn version(&self) -> &str {
        env!("CARGO_PKG_VERSION")
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn subsystems(&self) -> Vec<String> {
        self.subsystems.clone()
    }

    /// The lease's label; empty while nobody holds the board.
    #[zbus(property)]
    fn holder(&self) -> String {
        self.lease().map(|l| l.holder).unwrap_or_default()
    }

    /// The holder's uid; -1 while nobody holds the board.
    #[zbus(property)]
    fn holder_uid(&self) -> i64 {
        self.lease().map_or(-1, |l| i64::from(l.uid))
    }

    /// When the lease was taken (seconds since the epoch); 0 while nobody holds the board.
    #[zbus(property)]
    fn since(&self) -> u64 {
        self.lease().map_or(0, |l| unix(l.since))
    }

    /// When the lease lapses unless renewed; 0 while nobody holds the board.
    #[zbus(property)]
    fn expires(&self) -> u64 {
        self.lease().map_or(0, |l| unix(l.expires))
    }
}

impl Dut {
    /// The caller's uid; a call without one is refused and recorded.
    async fn caller(
        &self,
        hdr: &Header<'_>,
        conn: &Connection,
        method: &'static str,
    ) -> Result<u32, Error> {
        self.gate.caller(hdr, conn).await.inspect_err(|e| {
            self.gate.audit(None, method, "", &Err(e));
        })
    }
}

/// `PropertiesChanged` for the lease properties whenever the lease changes (taken,
/// renewed, released, expired).
pub async fn spawn_change_signals(connection: &Connection, gate: Gate) -> zbus::Result<()> {
    let iface = connection.object_server().interface::<_, Dut>(PATH).await?;
    let mut rx = gate.access().subscribe();
    tokio::spawn(async move {
        let mut last = rx.borrow().clone();
        while rx.changed().await.is_ok() {
            let now = rx.borrow_and_update().clone();
            let i = iface.get().await;
            let e = iface.signal_emitter();
            let field = |l: &Option<Lease>| {
                l.as_ref()
                    .map(|l| (l.holder.clone(), l.uid, l.since, l.expires))
            };
            let (a, b) = (field(&now), field(&last));
            if a.as_ref().map(|x| &x.0) != b.as_ref().map(|x| &x.0) {
                let _ = i.holder_changed(e).await;
            }
            if a.as_ref().map(|x| x.1) != b.as_ref().map(|x| x.1) {
                let _ = i.holder_uid_changed(e).await;
            }
            if a.as_ref().map(|x| x.2) != b.as_ref().map(|x| x.2) {
                let _ = i.since_changed(e).await;
            }
            if a.as_ref().map(|x| x.3) != b.as_ref().map(|x| x.3) {
                let _ = i.expires_changed(e).await;
            }
            last = now;
        }
    });
    Ok(())
}
