//! The gate: the one way any face (D-Bus, the pdudaemon API, the console's ports, a web face
//! to come) reaches a mutating call of a subsystem.
//!
//! A face names its caller ([`Caller`]: a uid the kernel or the bus vouches for, or the
//! identity the admin configured for a face that has none), and asks [`Gate::run`] to run
//! the call. The gate refuses it while someone else holds the board, otherwise runs it with
//! a [`Permit`], and records it with its result in the journal and the audit history. Every
//! mutating method of a subsystem takes a `&Permit`, and only this module can make one, so
//! a face that skips the gate does not compile.
//!
//! A stream of input (a console client typing) is not one call: an [`InputSession`] checks
//! the lease for every chunk, as cheaply as a mutex and a comparison, and writes an audit
//! record only when the answer changes (first input, first refusal), so a busy client cannot
//! flood the history.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};

use super::{Access, AccessError, AuditEntry, Identity, clip};

/// The door a call came in by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Face {
    /// The D-Bus API (`bus/`), rtmctl and busctl.
    Bus,
    /// pdudaemon's HTTP and legacy TCP protocols (`pdu/`).
    PduApi,
    /// The console's telnet, raw TCP and unix-socket front ends, and sockets handed out by
    /// `Console.Attach`.
    Console,
    /// The daemon itself: `on_stop`, `on_release`.
    Daemon,
    /// A program that links rtmd's library and drives a subsystem directly (the capture
    /// VM test's example).
    Local,
}

impl Face {
    pub fn as_str(self) -> &'static str {
        match self {
            Face::Bus => "D-Bus",
            Face::PduApi => "pdudaemon-api",
            Face::Console => "console",
            Face::Daemon => "rtmd",
            Face::Local => "local",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Who {
    Identity(Identity),
    /// The daemon's own actions; never refused, always recorded.
    Daemon,
}

/// Who is calling, as the face established it, and where from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    who: Who,
    face: Face,
    /// The peer as the face sees it: a bus name, an address, a pid.
    peer: String,
}

impl Caller {
    /// A caller whose uid the kernel or the bus daemon vouches for (D-Bus credentials,
    /// `SO_PEERCRED`).
    pub fn uid(uid: u32, face: Face, peer: impl Into<String>) -> Caller {
        Caller {
            who: Who::Identity(Identity::Uid(uid)),
            face,
            peer: peer.into(),
        }
    }

    /// A caller of a face that cannot tell who is calling: it acts as the identity the
    /// admin configured for that face.
    pub fn configured(identity: &Identity, face: Face, peer: impl Into<String>) -> Caller {
        Caller {
            who: Who::Identity(identity.clone()),
            face,
            peer: peer.into(),
        }
    }

    /// The daemon acting on its own (`what`: why), never refused by a lease. Only the board's
    /// own life uses it (board.rs): a face has a caller, never this.
    pub(crate) fn daemon(what: &str) -> Caller {
        Caller {
            who: Who::Daemon,
            face: Face::Daemon,
            peer: what.to_string(),
        }
    }

    /// The uid the lease check compares, if the caller has one.
    pub fn uid_of(&self) -> Option<u32> {
        match &self.who {
            Who::Identity(Identity::Uid(uid)) => Some(*uid),
            _ => None,
        }
    }

    pub fn face(&self) -> Face {
        self.face
    }

    /// The way in, for the audit record and logs: `D-Bus :1.42`, `pdudaemon-api
    /// "lab-pdu" http 127.0.0.1:50312`, `console tcp 127.0.0.1:40022`.
    pub fn via(&self) -> String {
        match &self.who {
            Who::Identity(Identity::Label(label)) => {
                format!("{} {:?} {}", self.face.as_str(), label, self.peer)
            }
            _ => format!("{} {}", self.face.as_str(), self.peer),
        }
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.who {
            Who::Identity(Identity::Uid(uid)) => write!(f, "uid {uid} via {}", self.via()),
            _ => f.write_str(&self.via()),
        }
    }
}

/// Proof that the gate admitted a call: every mutating method of a subsystem takes one.
/// Neither `Clone` nor constructible outside this module, so it cannot be kept for later
/// or made up by a face.
#[derive(Debug)]
pub struct Permit {
    caller: Caller,
}

impl Permit {
    /// Who was admitted (a console break says who sent it; an attached console client
    /// types as the caller who attached it).
    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    /// A permit for the unit tests of a subsystem, which call it without a face.
    #[cfg(test)]
    pub fn for_tests() -> Permit {
        Permit {
            caller: Caller::daemon("unit test"),
        }
    }
}

/// The error type of a face: it can say a lease refusal in its own terms, and summarize any
/// of its errors for the audit record (`Leased: held by ...`, `Hardware: ...`).
pub trait FaceError: From<AccessError> {
    fn audit_summary(&self) -> String;
}

/// The lease check and audit of one board, shared by every face (cheap to clone).
#[derive(Clone)]
pub struct Gate {
    access: Access,
    /// Why the gate is closed (the daemon stops), or None while it is open.
    closed: Arc<Mutex<Option<String>>>,
}

impl Gate {
    pub fn new(access: Access) -> Gate {
        Gate {
            access,
            closed: Arc::new(Mutex::new(None)),
        }
    }

    /// Refuses every caller but the daemon from now on (`why`: for the refusal), so a late
    /// call through a face still open cannot undo what stopping does (`on_stop = "off"`).
    pub fn close(&self, why: &str) {
        *self.closed.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.to_string());
    }

    pub fn access(&self) -> &Access {
        &self.access
    }

    /// Whether `caller` may change the board now: nobody else holds it.
    pub fn check(&self, caller: &Caller) -> Result<(), AccessError> {
        if caller.who != Who::Daemon
            && let Some(why) = self
                .closed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        {
            return Err(AccessError::Closed(why));
        }
        match &caller.who {
            Who::Daemon => Ok(()),
            Who::Identity(Identity::Uid(uid)) => self.access.check(*uid),
            // A label holds no lease, so any lease is someone else's.
            Who::Identity(Identity::Label(_)) => match self.access.current() {
                Some(lease) => Err(AccessError::Leased(Box::new(lease))),
                None => Ok(()),
            },
        }
    }

    /// The check, the call with its permit, and the record: what every mutating call of
    /// every face runs. `method` is `Interface.Method` as on D-Bus (`Power.On`), whichever
    /// face the call came through; `args` a short summary.
    pub async fn run<T, E, F, Fut>(
        &self,
        caller: &Caller,
        method: &'static str,
        args: String,
        body: F,
    ) -> Result<T, E>
    where
        E: FaceError,
        F: FnOnce(Permit) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        if let Err(e) = self.check(caller) {
            let e = E::from(e);
            self.audit(caller, method, &args, Err(e.audit_summary()));
            return Err(e);
        }
        let permit = Permit {
            caller: caller.clone(),
        };
        let result = body(permit).await;
        self.audit(
            caller,
            method,
            &args,
            result.as_ref().map(|_| ()).map_err(E::audit_summary),
        );
        result
    }

    /// [`Gate::run`] without the lease check, for the calls that manage the lease itself
    /// (`Renew`, `Release`, `ForceRelease`: the access rules decide those), still recorded.
    pub async fn run_unchecked<T, E, Fut>(
        &self,
        caller: &Caller,
        method: &'static str,
        args: String,
        body: Fut,
    ) -> Result<T, E>
    where
        E: FaceError,
        Fut: Future<Output = Result<T, E>>,
    {
        let result = body.await;
        self.audit(
            caller,
            method,
            &args,
            result.as_ref().map(|_| ()).map_err(E::audit_summary),
        );
        result
    }

    /// A session for a stream of input from one client (console typing).
    pub fn input_session(&self, caller: Caller, method: &'static str) -> InputSession {
        InputSession {
            gate: self.clone(),
            caller,
            method,
            last: None,
        }
    }

    /// One record of a call by `caller`.
    pub fn audit(
        &self,
        caller: &Caller,
        method: &'static str,
        args: &str,
        result: Result<(), String>,
    ) {
        self.record(caller.uid_of(), &caller.via(), method, args, result);
    }

    /// One record: the journal (structured fields) and the in-daemon history. For the
    /// records without a caller object (a call refused before its caller was known, a lease
    /// that ended by itself).
    pub fn record(
        &self,
        uid: Option<u32>,
        via: &str,
        method: &'static str,
        args: &str,
        result: Result<(), String>,
    ) {
        let holder = self
            .access
            .current()
            .map(|l| format!("{} (uid {})", l.holder, l.uid))
            .unwrap_or_default();
        let result = result.map_or_else(|e| e, |()| "ok".to_string());
        let entry = AuditEntry::new(uid, &holder, method, args, via, &result);
        // The journal gets the same fields (AUDIT_UID=, AUDIT_METHOD=, ...), as journalctl
        // filters need them: `journalctl -u rtmd@rpi4-01 AUDIT_METHOD=Power.On`.
        tracing::info!(
            target: "rtmd::audit",
            audit_uid = uid.map_or(-1, i64::from),
            audit_holder = %entry.holder,
            audit_method = method,
            audit_args = %entry.args,
            audit_via = %entry.via,
            audit_result = %entry.result,
            "{method}({}) by {}: {} (via {})",
            entry.args,
            uid.map_or_else(|| "no uid".to_string(), |u| format!("uid {u}")),
            entry.result,
            entry.via
        );
        self.access.record(entry);
    }
}

/// The lease check for one client's stream of input: [`InputSession::admit`] per chunk.
pub struct InputSession {
    gate: Gate,
    caller: Caller,
    method: &'static str,
    /// The answer to the last chunk (None before the first), to record only changes.
    last: Option<bool>,
}

impl InputSession {
    /// A permit for one chunk of input, or why not. The first chunk, and every chunk whose
    /// answer differs from the one before, is recorded (`summary` says what the chunk was).
    pub fn admit(&mut self, summary: impl FnOnce() -> String) -> Result<Permit, AccessError> {
        let verdict = self.gate.check(&self.caller);
        let admitted = verdict.is_ok();
        if self.last != Some(admitted) {
            self.last = Some(admitted);
            let result = match &verdict {
                Ok(()) => Ok(()),
                Err(e @ AccessError::Leased(_)) => {
                    Err(format!("Leased: {e}; input dropped until it is released"))
                }
                Err(e) => Err(format!("{e}; input dropped")),
            };
            self.gate
                .audit(&self.caller, self.method, &summary(), result);
        }
        verdict.map(|()| Permit {
            caller: self.caller.clone(),
        })
    }

    pub fn caller(&self) -> &Caller {
        &self.caller
    }
}

/// A summary of bytes sent to the board: their count and the start, escaped.
pub fn bytes_summary(data: &[u8]) -> String {
    let head = String::from_utf8_lossy(data.get(..64).unwrap_or(data));
    format!("{} bytes: {}", data.len(), clip(&head, 80))
}
