//! Who holds the board: the lease (holder label, the holder's Unix uid, since, expires) and
//! the audit trail of every mutating call, in plain Rust without D-Bus (`docs/access.md`).
//!
//! A lease belongs to a uid, never to a connection or a process: a LAVA job's hooks are
//! separate `rtmctl` runs of one uid, and a person's shells are too. While a lease is held,
//! every mutating call from another uid is refused; reading stays open. A lease ends by
//! `release`, by an admin's `force_release`, or when it expires; the expiry is checked on
//! every read of the state (so a lapsed lease never refuses anybody) and published by a
//! timer task (so `Holder` changes on the bus without anyone asking).
//!
//! The audit history is a ring of at most `audit_entries` records whose strings are cut to
//! fixed lengths, so its memory has a fixed bound ([`AuditEntry::MAX_BYTES`] each).
//!
//! [`Gate`] (gate.rs) is the one door of every face: it names the caller, checks the lease,
//! hands out the [`Permit`] that every mutating call of a subsystem requires, and writes the
//! audit record, the same for D-Bus, the pdudaemon API and the console's ports.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, watch};

mod gate;
pub use gate::{Caller, Face, FaceError, Gate, InputSession, Permit, bytes_summary};

/// What happens to the board's power when a lease ends or expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRelease {
    Keep,
    Off,
}

/// The `[access]` section, validated.
#[derive(Debug, Clone)]
pub struct AccessConfig {
    /// Members may `ForceRelease` (root always may).
    pub admin_group: Option<String>,
    pub on_release: OnRelease,
    /// Longest lease one `Acquire`/`Renew` may ask for.
    pub max_ttl: Duration,
    /// Longest holder label, in characters.
    pub max_label: usize,
    /// Records kept in the in-daemon audit history.
    pub audit_entries: usize,
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig {
            admin_group: None,
            on_release: OnRelease::Keep,
            max_ttl: Duration::from_secs(7 * 24 * 3600),
            max_label: 200,
            audit_entries: 1000,
        }
    }
}

/// Hard ceilings of the configurable limits (config validation refuses more).
pub const MAX_TTL_CEILING: Duration = Duration::from_secs(365 * 24 * 3600);
pub const MAX_LABEL_CEILING: usize = 1024;
pub const AUDIT_ENTRIES_CEILING: usize = 100_000;

/// Who a face acts as when it has no credentials of its own to offer (the pdudaemon API,
/// the console's TCP ports): configured per face by the admin (`identity = ...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// The face acts as this Unix user: the lease check treats it as that uid.
    Uid(u32),
    /// A name for the audit trail only: it holds no lease, so while anyone holds the board
    /// its changes are refused.
    Label(String),
}

/// The current lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub holder: String,
    pub uid: u32,
    /// Wall-clock times, for people and the bus.
    pub since: SystemTime,
    pub expires: SystemTime,
    /// When it lapses, on the monotonic clock (wall-clock steps do not move it).
    pub deadline: Instant,
}

/// How a lease ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    Released,
    ForceReleased,
    Expired,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Released => "released",
            EndReason::ForceReleased => "force-released",
            EndReason::Expired => "expired",
        }
    }
}

/// A lease that ended, for whoever acts on it (`on_release = "off"`).
#[derive(Debug, Clone)]
pub struct Ended {
    pub lease: Lease,
    pub reason: EndReason,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    /// Someone else holds the board.
    #[error(
        "held by {:?} (uid {}) since {}, until {}",
        .0.holder,
        .0.uid,
        humantime::format_rfc3339_seconds(.0.since),
        humantime::format_rfc3339_seconds(.0.expires)
    )]
    Leased(Box<Lease>),
    /// `Release`/`Renew` while nobody holds the board.
    #[error("nobody holds the board")]
    NotHeld,
    #[error("{0}")]
    InvalidArgs(String),
    /// `ForceRelease` by someone who is not an admin.
    #[error("{0}")]
    NotAdmin(String),
    /// The daemon is stopping: no face's call is taken any more.
    #[error("rtmd is stopping ({0}); no changes are taken")]
    Closed(String),
}

/// The board's lease and audit history; cheap to clone, shared by every interface.
#[derive(Clone)]
pub struct Access {
    inner: Arc<Inner>,
}

struct Inner {
    config: AccessConfig,
    lease: Mutex<Option<Lease>>,
    /// The lease as published; the expiry timer and the bus watch it.
    published: watch::Sender<Option<Lease>>,
    ended: mpsc::UnboundedSender<Ended>,
    audit: Mutex<VecDeque<AuditEntry>>,
}

impl Access {
    /// A board nobody holds; the receiver gets every lease that ends.
    pub fn new(config: AccessConfig) -> (Access, mpsc::UnboundedReceiver<Ended>) {
        let (ended, ended_rx) = mpsc::unbounded_channel();
        let capacity = config.audit_entries.min(AUDIT_ENTRIES_CEILING);
        let access = Access {
            inner: Arc::new(Inner {
                config,
                lease: Mutex::new(None),
                published: watch::Sender::new(None),
                ended,
                audit: Mutex::new(VecDeque::with_capacity(capacity)),
            }),
        };
        (access, ended_rx)
    }

    pub fn config(&self) -> &AccessConfig {
        &self.inner.config
    }

    /// Spawns the timer that ends leases when they expire. Must run inside the tokio runtime.
    pub fn spawn_expiry(&self) {
        let access = self.clone();
        let mut rx = self.inner.published.subscribe();
        tokio::spawn(async move {
            loop {
                let deadline = rx.borrow_and_update().as_ref().map(|l| l.deadline);
                match deadline {
                    Some(d) => {
                        tokio::select! {
                            _ = tokio::time::sleep_until(d.into()) => {
                                access.current_at(Instant::now());
                            }
                            changed = rx.changed() => if changed.is_err() { return },
                        }
                    }
                    None => {
                        if rx.changed().await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }

    /// Follows the lease as it changes (for change signals).
    pub fn subscribe(&self) -> watch::Receiver<Option<Lease>> {
        self.inner.published.subscribe()
    }

    /// The lease now, or None; ends an expired one first.
    pub fn current(&self) -> Option<Lease> {
        self.current_at(Instant::now())
    }

    /// Refuses a mutating call by `uid` while another uid holds the board.
    pub fn check(&self, uid: u32) -> Result<(), AccessError> {
        match self.current() {
            Some(lease) if lease.uid != uid => Err(AccessError::Leased(Box::new(lease))),
            _ => Ok(()),
        }
    }

    /// Takes the board for `uid`. Refused while anyone holds it, `uid` itself included (a
    /// holder extends with `renew`), so of racing callers exactly one wins.
    pub fn acquire(&self, uid: u32, holder: &str, ttl: Duration) -> Result<Lease, AccessError> {
        self.acquire_at(uid, holder, ttl, Instant::now(), SystemTime::now())
    }

    pub fn acquire_at(
        &self,
        uid: u32,
        holder: &str,
        ttl: Duration,
        now: Instant,
        wall: SystemTime,
    ) -> Result<Lease, AccessError> {
        check_label(holder, self.inner.config.max_label)?;
        self.check_ttl(ttl)?;
        let mut state = self.lock_lease();
        self.expire(&mut state, now);
        if let Some(lease) = state.as_ref() {
            return Err(AccessError::Leased(Box::new(lease.clone())));
        }
        let lease = Lease {
            holder: holder.to_string(),
            uid,
            since: wall,
            expires: wall + ttl,
            deadline: now + ttl,
        };
        *state = Some(lease.clone());
        self.publish(&state);
        Ok(lease)
    }

    /// Extends the lease of `uid` to `ttl` from now.
    pub fn renew(&self, uid: u32, ttl: Duration) -> Result<Lease, AccessError> {
        self.renew_at(uid, ttl, Instant::now(), SystemTime::now())
    }

    pub fn renew_at(
        &self,
        uid: u32,
        ttl: Duration,
        now: Instant,
        wall: SystemTime,
    ) -> Result<Lease, AccessError> {
        self.check_ttl(ttl)?;
        let mut state = self.lock_lease();
        self.expire(&mut state, now);
        match state.as_mut() {
            None => Err(AccessError::NotHeld),
            Some(lease) if lease.uid != uid => Err(AccessError::Leased(Box::new(lease.clone()))),
            Some(lease) => {
                lease.expires = wall + ttl;
                lease.deadline = now + ttl;
                let lease = lease.clone();
                self.publish(&state);
                Ok(lease)
            }
        }
    }

    /// Ends the lease of `uid`.
    pub fn release(&self, uid: u32) -> Result<Lease, AccessError> {
        self.release_at(uid, Instant::now())
    }

    pub fn release_at(&self, uid: u32, now: Instant) -> Result<Lease, AccessError> {
        let mut state = self.lock_lease();
        self.expire(&mut state, now);
        match state.as_ref() {
            None => Err(AccessError::NotHeld),
            Some(lease) if lease.uid != uid => Err(AccessError::Leased(Box::new(lease.clone()))),
            Some(_) => self
                .end(&mut state, EndReason::Released)
                .ok_or(AccessError::NotHeld),
        }
    }

    /// Ends whoever's lease; `is_admin` is the caller's standing (see [`is_admin`]).
    pub fn force_release(&self, is_admin: bool) -> Result<Lease, AccessError> {
        if !is_admin {
            return Err(AccessError::NotAdmin(
                match &self.inner.config.admin_group {
                    Some(g) => format!("only root and members of group {g} may force a release"),
                    None => "only root may force a release (no admin_group configured)".to_string(),
                },
            ));
        }
        let mut state = self.lock_lease();
        self.expire(&mut state, Instant::now());
        self.end(&mut state, EndReason::ForceReleased)
            .ok_or(AccessError::NotHeld)
    }

    fn current_at(&self, now: Instant) -> Option<Lease> {
        let mut state = self.lock_lease();
        self.expire(&mut state, now);
        state.clone()
    }

    fn check_ttl(&self, ttl: Duration) -> Result<(), AccessError> {
        let max = self.inner.config.max_ttl;
        if ttl.is_zero() {
            return Err(AccessError::InvalidArgs(
                "ttl 0: a lease needs a time to live of at least 1 s".to_string(),
            ));
        }
        if ttl > max {
            return Err(AccessError::InvalidArgs(format!(
                "ttl {} s is longer than the board's max_ttl ({} s)",
                ttl.as_secs(),
                max.as_secs()
            )));
        }
        Ok(())
    }

    fn expire(&self, state: &mut MutexGuard<'_, Option<Lease>>, now: Instant) {
        if state.as_ref().is_some_and(|l| l.deadline <= now) {
            self.end(state, EndReason::Expired);
        }
    }

    fn end(&self, state: &mut MutexGuard<'_, Option<Lease>>, reason: EndReason) -> Option<Lease> {
        let lease = state.take()?;
        self.publish(state);
        // Nobody listening (a unit test, a daemon stopping) is not an error.
        let _ = self.inner.ended.send(Ended {
            lease: lease.clone(),
            reason,
        });
        Some(lease)
    }

    /// Publishes under the lease lock, so watchers see changes in the order they happened.
    fn publish(&self, state: &MutexGuard<'_, Option<Lease>>) {
        self.inner.published.send_replace((**state).clone());
    }

    fn lock_lease(&self) -> MutexGuard<'_, Option<Lease>> {
        // A panic while holding the lock cannot leave the Option half-written.
        self.inner
            .lease
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    // ---- audit ----------------------------------------------------------------------------

    /// Appends to the history, dropping the oldest record when full.
    pub fn record(&self, entry: AuditEntry) {
        let capacity = self.inner.config.audit_entries.min(AUDIT_ENTRIES_CEILING);
        if capacity == 0 {
            return;
        }
        let mut ring = self
            .inner
            .audit
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        while ring.len() >= capacity {
            ring.pop_front();
        }
        ring.push_back(entry);
    }

    /// The records at or after `since`, oldest first.
    pub fn history(&self, since: SystemTime) -> Vec<AuditEntry> {
        let ring = self
            .inner
            .audit
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        ring.iter().filter(|e| e.time >= since).cloned().collect()
    }

    /// Bytes the history can take at most: its records' fixed size plus their strings.
    pub fn audit_bound(&self) -> usize {
        self.inner.config.audit_entries.min(AUDIT_ENTRIES_CEILING) * AuditEntry::MAX_BYTES
    }
}

/// A holder label: 1 to `max` characters, no control characters (it ends up in logs, on
/// terminals and in the journal).
pub fn check_label(label: &str, max: usize) -> Result<(), AccessError> {
    if label.trim().is_empty() {
        return Err(AccessError::InvalidArgs(
            "the holder label is empty: say who or what holds the board".to_string(),
        ));
    }
    // Counting stops past the limit: a label of megabytes costs no more than a short one.
    if label.chars().nth(max).is_some() {
        return Err(AccessError::InvalidArgs(format!(
            "the holder label is longer than {max} characters"
        )));
    }
    if let Some(c) = label.chars().find(|c| c.is_control()) {
        return Err(AccessError::InvalidArgs(format!(
            "the holder label contains the control character {:?}",
            c
        )));
    }
    Ok(())
}

/// Whether `uid` may force a release: root, or a member of `admin_group` (primary group or
/// supplementary, as the group database says now).
pub fn is_admin(uid: u32, admin_group: Option<&str>) -> bool {
    if uid == 0 {
        return true;
    }
    let Some(group) = admin_group else {
        return false;
    };
    let Ok(Some(group)) = nix::unistd::Group::from_name(group) else {
        return false;
    };
    let Ok(Some(user)) = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) else {
        return false;
    };
    user.gid == group.gid || group.mem.contains(&user.name)
}

/// One mutating call, as the audit history keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub time: SystemTime,
    pub uid: Option<u32>,
    /// The holder at the time of the call (label and uid), empty when nobody held the
    /// board; at most [`AuditEntry::MAX_TEXT`] bytes.
    pub holder: String,
    /// `Interface.Method`, e.g. `Power.On`.
    pub method: &'static str,
    /// A summary of the arguments, at most [`AuditEntry::MAX_TEXT`] bytes.
    pub args: String,
    /// The face and the peer the call came through (`D-Bus :1.42`, `pdudaemon-api http
    /// 127.0.0.1:50312`), with a label identity's name; at most [`AuditEntry::MAX_TEXT`] bytes.
    pub via: String,
    /// `ok`, or the error's name and message, at most [`AuditEntry::MAX_TEXT`] bytes.
    pub result: String,
}

impl AuditEntry {
    /// The arguments as the D-Bus `Audit` method gives them: with the way in appended for
    /// a call that did not come over D-Bus (`reboot [via pdudaemon-api "pdu" http ...]`), so
    /// the record's shape stays the contract's six fields.
    pub fn args_with_via(&self) -> String {
        if self.via.is_empty() || self.via.starts_with(Face::Bus.as_str()) {
            self.args.clone()
        } else if self.args.is_empty() {
            format!("[via {}]", self.via)
        } else {
            format!("{} [via {}]", self.args, self.via)
        }
    }

    /// Longest `holder`, `args` and `result`, in bytes (their allocations are exact).
    pub const MAX_TEXT: usize = 256;
    /// The most one record can take: the struct and its four strings at their longest.
    pub const MAX_BYTES: usize = std::mem::size_of::<AuditEntry>() + 4 * AuditEntry::MAX_TEXT;

    pub fn new(
        uid: Option<u32>,
        holder: &str,
        method: &'static str,
        args: &str,
        via: &str,
        result: &str,
    ) -> AuditEntry {
        AuditEntry {
            time: SystemTime::now(),
            uid,
            holder: clip(holder, Self::MAX_TEXT),
            method,
            args: clip(args, Self::MAX_TEXT),
            via: clip(via, Self::MAX_TEXT),
            result: clip(result, Self::MAX_TEXT),
        }
    }
}

/// `s` cut to at most `max` bytes on a character boundary, with control characters
/// escaped (arguments are whatever a caller sent).
pub fn clip(s: &str, max: usize) -> String {
    let mut out = String::new();
    // The longest prefix that still leaves room for "...".
    let mut keep = 0;
    for c in s.chars() {
        if out.len() + 3 <= max {
            keep = out.len();
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
        if out.len() > max {
            out.truncate(keep);
            out.push_str("...");
            break;
        }
    }
    // The audit ring's bound counts bytes in use: no spare capacity behind them.
    out.shrink_to_fit();
    out
}

/// Seconds since the epoch (0 for times before it).
pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests;
