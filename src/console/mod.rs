//! The board's serial console, shared: one serial owner (reconnecting), a hub that fans the
//! board's output out to every client live, the log, and the front ends: a telnet-protocol
//! TCP listener, a raw TCP listener, a raw unix socket, and sockets handed out over D-Bus
//! (`Attach`, used by `rtmctl console`).
//!
//! New clients get only what the board prints after they connected: LAVA matches prompts in
//! what it reads, and a replay of old output could match an old prompt. History is the log.
//!
//! Every front end is hostile (listener.rs): a connection cap per listener, a descriptor
//! reserve, backpressure on what a client sends (its input waits for the port, its telnet
//! negotiation answers for the client to read them) and on what it receives (the hub drops
//! a client too far behind).

pub mod fuzz;
mod hub;
mod listener;
pub mod log;
mod serial;
pub mod telnet;
pub mod wait;

use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot, watch};
use tracing::{info, warn};

use crate::access::{Caller, Face, Gate, InputSession, Permit, bytes_summary};
use crate::config::ConsoleConfig;
use hub::Hub;
use listener::{AcceptBackoff, Slots};
use serial::{Input, Owner, Typist};
use wait::{Matcher, Pattern, WaiterSlot, Waiters};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConsoleError {
    #[error("the console device {0} is not connected")]
    NotConnected(String),
    #[error("{0}")]
    Hardware(String),
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    InvalidArgument(String),
    /// A front end could not be set up at start (port taken, socket path unusable).
    #[error("{0}")]
    Setup(String),
    /// One caller's share of something is used up (its `WaitFor` calls), or a `WaitFor`
    /// could not keep up: `org.freedesktop.DBus.Error.LimitsExceeded`.
    #[error("{0}")]
    Limit(String),
    /// The board's share is used up (`WaitFor` calls in all, `Attach` sockets): retry later.
    #[error("{0}")]
    Busy(String),
}

/// What the console publishes for properties.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConsoleStatus {
    pub connected: bool,
    pub last_error: Option<String>,
}

/// Handle to the console. Cheap to clone.
#[derive(Clone)]
pub struct Console {
    hub: Arc<Hub>,
    input: mpsc::Sender<Input>,
    status: watch::Receiver<ConsoleStatus>,
    config: Arc<ConsoleConfig>,
    log_path: Option<PathBuf>,
    /// The addresses actually bound (port 0 in the config picks a free one).
    tcp: Option<std::net::SocketAddr>,
    tcp_raw: Option<std::net::SocketAddr>,
    /// Every client's typing passes it: the front ends here are faces too.
    gate: Gate,
    /// The places of the sockets `Attach` hands out (the listeners have their own).
    attached: Arc<Slots>,
    waiters: Arc<Waiters>,
}

/// Longest a `WaitFor` may wait: a mistake beyond that, not a boot.
pub const MAX_WAIT: Duration = Duration::from_secs(3600);
/// Most output gathered into one write to a client.
const BATCH: usize = 256 * 1024;
/// Most output handed to a `WaitFor`'s matcher at once.
const WAIT_BATCH: usize = 1 << 20;
/// Most negotiation answers (and rtmd's own notices) queued for one client: past that its
/// input is not read until it reads them.
const REPLIES_QUEUED: usize = 4;
/// Most read from a client at once (a telnet client's answers are at most as long).
const READ_CHUNK: usize = 4096;

impl Console {
    /// Opens the log, binds the front ends (failing if one cannot be bound: a port taken by
    /// another program is a start-up error), and spawns the serial owner. What clients of
    /// the front ends type passes `gate` (as `tcp_identity` on the TCP ports, as the peer's
    /// uid on the unix socket).
    pub async fn start(config: &ConsoleConfig, gate: Gate) -> Result<Console, ConsoleError> {
        let hub = Hub::new(config.client_buffer, config.input);
        let (input_tx, input_rx) = mpsc::channel(64);
        let (status_tx, status) = watch::channel(ConsoleStatus::default());
        let log = match &config.log_dir {
            Some(dir) => Some(
                log::ConsoleLog::open(dir, config.log_max_bytes, config.log_keep).map_err(|e| {
                    ConsoleError::Setup(format!(
                        "cannot open the console log in {}: {e}",
                        dir.display()
                    ))
                })?,
            ),
            None => None,
        };
        let log_path = log.as_ref().map(|l| l.path().to_path_buf());
        let bind = |addr: std::net::SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|e| ConsoleError::Setup(format!("console: cannot listen on {addr}: {e}")))
        };
        let tcp = match config.tcp {
            Some(a) => Some(bind(a).await?),
            None => None,
        };
        let tcp_raw = match config.tcp_raw {
            Some(a) => Some(bind(a).await?),
            None => None,
        };
        let unix = match &config.unix {
            Some(path) => {
                // A socket file left by a previous run would make bind fail.
                if std::fs::symlink_metadata(path)
                    .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
                {
                    let _ = std::fs::remove_file(path);
                }
                Some(UnixListener::bind(path).map_err(|e| {
                    ConsoleError::Setup(format!(
                        "console: cannot listen on {}: {e}",
                        path.display()
                    ))
                })?)
            }
            None => None,
        };
        let console = Console {
            hub: hub.clone(),
            input: input_tx,
            status,
            config: Arc::new(config.clone()),
            log_path,
            tcp: tcp.as_ref().and_then(|l| l.local_addr().ok()),
            tcp_raw: tcp_raw.as_ref().and_then(|l| l.local_addr().ok()),
            gate,
            attached: Arc::new(Slots::new("Attach", config.max_clients)),
            waiters: Waiters::new(),
        };
        if let Some(l) = tcp {
            let slots = Slots::new("tcp", config.max_clients);
            tokio::spawn(accept_tcp(l, console.clone(), true, slots));
        }
        if let Some(l) = tcp_raw {
            let slots = Slots::new("tcp_raw", config.max_clients);
            tokio::spawn(accept_tcp(l, console.clone(), false, slots));
        }
        if let Some(l) = unix {
            let slots = Slots::new("unix", config.max_clients);
            tokio::spawn(accept_unix(l, console.clone(), slots));
        }
        let owner = Owner::new(config.clone(), hub, input_rx, status_tx, log);
        tokio::spawn(owner.run());
        Ok(console)
    }

    pub fn device(&self) -> String {
        self.config.device.display().to_string()
    }

    pub fn tcp_address(&self) -> Option<std::net::SocketAddr> {
        self.tcp
    }

    pub fn tcp_raw_address(&self) -> Option<std::net::SocketAddr> {
        self.tcp_raw
    }

    pub fn log_path(&self) -> Option<&PathBuf> {
        self.log_path.as_ref()
    }

    pub fn status(&self) -> ConsoleStatus {
        self.status.borrow().clone()
    }

    pub fn subscribe_status(&self) -> watch::Receiver<ConsoleStatus> {
        self.status.clone()
    }

    pub fn subscribe_clients(&self) -> watch::Receiver<u32> {
        self.hub.clients()
    }

    pub fn clients(&self) -> u32 {
        *self.hub.clients().borrow()
    }

    /// `WaitFor` calls in progress, as a watch for the `Waiters` property.
    pub fn subscribe_waiters(&self) -> watch::Receiver<u32> {
        self.waiters.count()
    }

    /// Sends bytes to the board; returns once the port took the last of them (`write`
    /// returned), or fails naming the device if it went away first.
    pub async fn send(&self, _: &Permit, data: Bytes) -> Result<(), ConsoleError> {
        if !self.status.borrow().connected {
            return Err(ConsoleError::NotConnected(self.device()));
        }
        let (tx, rx) = oneshot::channel();
        let gone = || ConsoleError::Hardware("the console task has stopped".to_string());
        self.input
            .send(Input::Data {
                data,
                from: Typist::Call(tx),
            })
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// A break on the line; returns once it was held (breaks requested meanwhile, from any
    /// face, are the same break).
    pub async fn send_break(&self, permit: &Permit) -> Result<(), ConsoleError> {
        let (tx, rx) = oneshot::channel();
        let gone = || ConsoleError::Hardware("the console task has stopped".to_string());
        self.input
            .send(Input::Break {
                from: format!("{} SendBreak", permit.caller().face().as_str()),
                reply: Some(tx),
            })
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// Waits until the live output (from now on) matches `pattern`; returns the match.
    /// `caller` names who asks (a D-Bus unique name), for the per-caller limit (wait.rs).
    pub async fn wait_for(
        &self,
        caller: &str,
        pattern: &str,
        timeout: Duration,
    ) -> Result<String, ConsoleError> {
        if timeout > MAX_WAIT {
            return Err(ConsoleError::InvalidArgument(format!(
                "timeout longer than {} s",
                MAX_WAIT.as_secs()
            )));
        }
        let slot = self.waiters.enter(caller)?;
        // Listening starts before the pattern is compiled: a call counted in `Waiters` sees
        // all output from then on (what comes meanwhile waits in the subscription).
        let sub = self.hub.subscribe(false, &format!("WaitFor of {caller}"));
        // Compiling a pattern near the limits takes milliseconds: not on the runtime thread.
        let text = pattern.to_string();
        let pattern = tokio::task::spawn_blocking(move || Pattern::compile(&text))
            .await
            .map_err(|e| ConsoleError::Hardware(format!("compiling the pattern failed: {e}")))??;
        let pattern = Arc::new(pattern);
        let matcher = Matcher::new(pattern.clone())?;
        match tokio::time::timeout(timeout, watch_output(sub, matcher, slot)).await {
            Ok(result) => result,
            Err(_) => Err(ConsoleError::Timeout(format!(
                "no console output matched {:?} within {} ms",
                pattern.text(),
                timeout.as_millis()
            ))),
        }
    }

    /// A socket that is a raw console client, for a caller that gets it over D-Bus; what
    /// is typed into it passes the gate as the caller who attached it.
    pub fn attach(&self, permit: &Permit) -> Result<StdUnixStream, ConsoleError> {
        let failed = |e: std::io::Error| {
            ConsoleError::Hardware(format!("cannot create a console socket: {e}"))
        };
        let (ours, theirs) = StdUnixStream::pair().map_err(failed)?;
        let place = self
            .attached
            .admit(&ours)
            .map_err(|why| ConsoleError::Busy(format!("cannot attach: {why}")))?;
        ours.set_nonblocking(true).map_err(failed)?;
        let stream = tokio::net::UnixStream::from_std(ours).map_err(failed)?;
        let session = self
            .gate
            .input_session(permit.caller().clone(), "Console.Input");
        tokio::spawn(serve_client(
            stream,
            self.clone(),
            false,
            "D-Bus Attach".to_string(),
            session,
            place,
        ));
        Ok(theirs)
    }
}

/// Feeds the board's output to `matcher` until it matches. The matching runs on the
/// blocking pool, a batch at a time: however slow the pattern, the fan-out and the runtime
/// thread never wait for it; if it falls behind by more than the client buffer, the hub
/// drops its subscription and the call ends with `Limit`.
async fn watch_output(
    mut sub: hub::Subscription,
    mut matcher: Matcher,
    _slot: WaiterSlot,
) -> Result<String, ConsoleError> {
    loop {
        let Some(chunk) = sub.recv().await else {
            return Err(ConsoleError::Limit(
                "WaitFor fell too far behind the console output (its pattern is too slow \
                 for it) and was dropped"
                    .to_string(),
            ));
        };
        let mut batch = chunk.to_vec();
        sub.drain_ready(&mut batch, WAIT_BATCH);
        let (back, found) = tokio::task::spawn_blocking(move || {
            let found = matcher.feed(&batch);
            (matcher, found)
        })
        .await
        .map_err(|e| ConsoleError::Hardware(format!("matching failed: {e}")))?;
        matcher = back;
        if let Some(m) = found? {
            return Ok(m);
        }
    }
}

async fn accept_tcp(listener: TcpListener, console: Console, telnet: bool, slots: Slots) {
    let mut backoff = AcceptBackoff::default();
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                if let Some(line) = backoff.succeeded() {
                    info!(subsystem = "console", "{line}");
                }
                let place = match slots.admit(&stream) {
                    Ok(place) => place,
                    Err(why) => {
                        if let Ok(s) = stream.into_std() {
                            listener::refuse(s, &why);
                        }
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                listener::keepalive(&stream);
                // TCP carries no identity: the port acts as the admin configured.
                let caller = Caller::configured(
                    &console.config.tcp_identity,
                    Face::Console,
                    format!("{} {peer}", if telnet { "telnet" } else { "tcp" }),
                );
                let session = console.gate.input_session(caller, "Console.Input");
                tokio::spawn(serve_client(
                    stream,
                    console.clone(),
                    telnet,
                    peer.to_string(),
                    session,
                    place,
                ));
            }
            Err(e) => {
                let (pause, line) = backoff.failed(&e);
                if let Some(line) = line {
                    warn!(subsystem = "console", "{} listener: {line}", slots.name);
                }
                tokio::time::sleep(pause).await;
            }
        }
    }
}

async fn accept_unix(listener: UnixListener, console: Console, slots: Slots) {
    let mut backoff = AcceptBackoff::default();
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                if let Some(line) = backoff.succeeded() {
                    info!(subsystem = "console", "{line}");
                }
                let place = match slots.admit(&stream) {
                    Ok(place) => place,
                    Err(why) => {
                        if let Ok(s) = stream.into_std() {
                            listener::refuse(s, &why);
                        }
                        continue;
                    }
                };
                // The kernel says who connected; a peer it cannot name types as nobody's.
                let caller = match stream.peer_cred() {
                    Ok(cred) => Caller::uid(
                        cred.uid(),
                        Face::Console,
                        format!(
                            "unix socket, pid {}",
                            cred.pid().map_or("?".to_string(), |p| p.to_string())
                        ),
                    ),
                    Err(e) => Caller::configured(
                        &crate::access::Identity::Label(format!("unknown peer: {e}")),
                        Face::Console,
                        "unix socket",
                    ),
                };
                let session = console.gate.input_session(caller, "Console.Input");
                tokio::spawn(serve_client(
                    stream,
                    console.clone(),
                    false,
                    "unix socket".to_string(),
                    session,
                    place,
                ));
            }
            Err(e) => {
                let (pause, line) = backoff.failed(&e);
                if let Some(line) = line {
                    warn!(subsystem = "console", "{} listener: {line}", slots.name);
                }
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// One client: board output to it, its input to the board, until either side ends. Each
/// chunk of input passes `session` (the lease); refused input is dropped, and the client is
/// told once per refusal, in plain text on its output.
///
/// What one client may cost is bounded: its unread output by the hub (`client_buffer`),
/// one batch being written, and [`REPLIES_QUEUED`] answers of [`READ_CHUNK`] at most. A
/// client that does not read its telnet answers stops being read itself: its input waits
/// in its socket, then in its own TCP window, not in rtmd.
async fn serve_client<S>(
    stream: S,
    console: Console,
    telnet: bool,
    label: String,
    mut session: InputSession,
    _place: OwnedSemaphorePermit,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut sub = console.hub.subscribe(true, &label);
    info!(subsystem = "console", "console client {label} connected");
    if telnet && writer.write_all(&telnet::OPENING).await.is_err() {
        return;
    }
    let (reply_tx, mut reply_rx) = mpsc::channel::<Bytes>(REPLIES_QUEUED);
    let id_may_write = sub.id;
    let hub = console.hub.clone();
    let input = console.input.clone();

    let to_client = async {
        loop {
            let chunk = tokio::select! {
                chunk = sub.recv() => match chunk {
                    Some(c) => c,
                    None => break,
                },
                reply = reply_rx.recv() => match reply {
                    // Answers and notices are rtmd's own bytes: never escaped.
                    Some(r) => {
                        tokio::select! {
                            written = writer.write_all(&r) => if written.is_err() { break },
                            _ = sub.dropped() => break,
                        }
                        continue;
                    }
                    None => break,
                },
            };
            // Whatever else is already queued goes out in the same write (fewer, larger
            // sends when the board is fast; no waiting when it is not).
            let mut more = Vec::new();
            sub.drain_ready(&mut more, BATCH);
            let data = if more.is_empty() {
                chunk
            } else {
                let mut all = Vec::with_capacity(chunk.len() + more.len());
                all.extend_from_slice(&chunk);
                all.extend_from_slice(&more);
                Bytes::from(all)
            };
            let data = if telnet {
                Bytes::from(telnet::escape(&data))
            } else {
                data
            };
            // A client that never reads must not keep this task forever: the hub drops
            // it once too far behind, which ends the write.
            tokio::select! {
                written = writer.write_all(&data) => if written.is_err() { break },
                _ = sub.dropped() => break,
            }
        }
        let _ = writer.shutdown().await;
    };
    let from_client = async {
        let mut decoder = telnet::Decoder::new();
        let mut refused = false;
        let mut buf = vec![0u8; READ_CHUNK];
        let typist = || Typist::Client {
            label: label.clone(),
            notice: reply_tx.clone(),
        };
        loop {
            let n = match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let got = buf.get(..n).unwrap_or_default();
            if !telnet {
                if hub.may_write(id_may_write)
                    && admitted(&mut session, &mut refused, got, &reply_tx).await
                    && input
                        .send(Input::Data {
                            data: Bytes::copy_from_slice(got),
                            from: typist(),
                        })
                        .await
                        .is_err()
                {
                    return;
                }
                continue;
            }
            let mut decoded = decoder.decode(got);
            // Backpressure: waits while the client has not read its earlier answers, so
            // this loop reads no more of its input meanwhile.
            if !decoded.reply.is_empty()
                && reply_tx
                    .send(Bytes::from(std::mem::take(&mut decoded.reply)))
                    .await
                    .is_err()
            {
                return;
            }
            if !hub.may_write(id_may_write) {
                continue;
            }
            let steps = decoded.input();
            let typed: Vec<u8> = steps
                .iter()
                .flat_map(|s| match s {
                    telnet::ToBoard::Data(d) => d.to_vec(),
                    telnet::ToBoard::Break => b"<BREAK>".to_vec(),
                })
                .collect();
            if steps.is_empty() || !admitted(&mut session, &mut refused, &typed, &reply_tx).await {
                continue;
            }
            for step in steps {
                let sent = match step {
                    telnet::ToBoard::Data(data) => {
                        input
                            .send(Input::Data {
                                data: Bytes::copy_from_slice(data),
                                from: typist(),
                            })
                            .await
                    }
                    // A telnet client gets no answer to BREAK; the owner joins it to any
                    // break pending (`input()` already made a run of them one).
                    telnet::ToBoard::Break => {
                        let from = format!("telnet BREAK from {label}");
                        input.send(Input::Break { from, reply: None }).await
                    }
                };
                if sent.is_err() {
                    return;
                }
            }
        }
    };
    // A client's end of input ends its session: a closed client must not stay counted in
    // `Clients` until the board next prints. (rtmctl console therefore never half-closes.)
    tokio::select! {
        _ = to_client => {},
        _ = from_client => {},
    }
    info!(subsystem = "console", "console client {label} disconnected");
}

/// Whether `session` admits this chunk of a client's input; the first refusal after input
/// was admitted (or at first) is told to the client, so a typist is not left guessing.
async fn admitted(
    session: &mut InputSession,
    refused: &mut bool,
    data: &[u8],
    tell: &mpsc::Sender<Bytes>,
) -> bool {
    match session.admit(|| bytes_summary(data)) {
        Ok(_permit) => {
            *refused = false;
            true
        }
        Err(e) => {
            if !*refused {
                *refused = true;
                let _ = tell
                    .send(Bytes::from(format!("\r\n[rtmd: input not sent: {e}]\r\n")))
                    .await;
            }
            false
        }
    }
}
