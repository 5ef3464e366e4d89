//! `org.rtmd.Dut1`: the board itself: its name, the daemon's version, which subsystems it
//! serves (the interfaces present at the object path), and its lease: `Acquire`, `Renew`,
//! `Release`, `ForceRelease`, the `Holder*` properties, and the audit history
//! (`docs/access.md`).

use std::time::{Duration, SystemTime};

use zbus::message::Header;
use zbus::{Connection, interface};

use super::access::BusGate;
use super::{Error, PATH};
use crate::access::{Caller, Gate, Lease, clip, is_admin, unix};

pub struct Dut {
    name: String,
    subsystems: Vec<String>,
    gate: BusGate,
}

impl Dut {
    pub fn new(name: &str, subsystems: Vec<String>, gate: Gate) -> Self {
        Dut {
            name: name.to_string(),
            subsystems,
            gate: BusGate::new(gate),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn lease(&self) -> Option<Lease> {
        self.gate.gate().access().current()
    }
}

type AuditRecord = (u64, i64, String, String, String, String);

/// The caller's uid: a bus caller always has one.
fn uid(caller: &Caller) -> Result<u32, Error> {
    caller
        .uid_of()
        .ok_or_else(|| Error::AccessDenied("the caller has no uid".to_string()))
}

#[interface(name = "org.rtmd.Dut1")]
impl Dut {
    #[zbus(out_args("expires"))]
    async fn acquire(
        &self,
        holder: &str,
        ttl_s: u32,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<u64, Error> {
        let args = format!("{:?}, {ttl_s} s", clip(holder, 80));
        let caller = self.gate.known_caller(&hdr, conn, "Acquire", &args).await?;
        let ttl = Duration::from_secs(u64::from(ttl_s));
        let access = self.gate.gate().access();
        self.gate
            .gate()
            .run(&caller, "Acquire", args, |_| async {
                Ok(unix(access.acquire(uid(&caller)?, holder, ttl)?.expires))
            })
            .await
    }

    #[zbus(out_args("expires"))]
    async fn renew(
        &self,
        ttl_s: u32,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<u64, Error> {
        let args = format!("{ttl_s} s");
        let caller = self.gate.known_caller(&hdr, conn, "Renew", &args).await?;
        let ttl = Duration::from_secs(u64::from(ttl_s));
        let access = self.gate.gate().access();
        self.gate
            .gate()
            .run_unchecked(&caller, "Renew", args, async {
                Ok(unix(access.renew(uid(&caller)?, ttl)?.expires))
            })
            .await
    }

    async fn release(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), Error> {
        let caller = self.gate.known_caller(&hdr, conn, "Release", "").await?;
        let access = self.gate.gate().access();
        self.gate
            .gate()
            .run_unchecked(&caller, "Release", String::new(), async {
                access.release(uid(&caller)?)?;
                Ok(())
            })
            .await
    }

    async fn force_release(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), Error> {
        let caller = self
            .gate
            .known_caller(&hdr, conn, "ForceRelease", "")
            .await?;
        let access = self.gate.gate().access();
        self.gate
            .gate()
            .run_unchecked(&caller, "ForceRelease", String::new(), async {
                let admin = is_admin(uid(&caller)?, access.config().admin_group.as_deref());
                access.force_release(admin)?;
                Ok(())
            })
            .await
    }

    #[zbus(out_args("records"))]
    async fn audit(&self, since: u64) -> Vec<AuditRecord> {
        let since = SystemTime::UNIX_EPOCH + Duration::from_secs(since);
        self.gate
            .gate()
            .access()
            .history(since)
            .into_iter()
            .map(|e| {
                let args = e.args_with_via();
                (
                    unix(e.time),
                    e.uid.map_or(-1, i64::from),
                    e.holder,
                    e.method.to_string(),
                    args,
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
