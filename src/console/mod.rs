//! The board's serial console, shared: one serial owner (reconnecting), a hub that fans the
//! board's output out to every client live, the log, and the front ends: a telnet-protocol
//! TCP listener, a raw TCP listener, a raw unix socket, and sockets handed out over D-Bus
//! (`Attach`, used by `rtmctl console`).
//!
//! New clients get only what the board prints after they connected: LAVA matches prompts in
//! what it reads, and a replay of old output could match an old prompt. History is the log.

mod hub;
pub mod log;
mod serial;
pub mod telnet;

use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use crate::access::{Caller, Face, Gate, InputSession, Permit, bytes_summary};
use crate::config::ConsoleConfig;
use hub::Hub;
use serial::{Input, Owner};

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
}

/// Longest a `WaitFor` may wait: a mistake beyond that, not a boot.
pub const MAX_WAIT: Duration = Duration::from_secs(3600);
/// Most output gathered into one write to a client.
const BATCH: usize = 256 * 1024;
/// How much recent output `WaitFor` keeps to match against.
const WAIT_WINDOW: usize = 64 * 1024;

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
        };
        if let Some(l) = tcp {
            tokio::spawn(accept_tcp(l, console.clone(), true));
        }
        if let Some(l) = tcp_raw {
            tokio::spawn(accept_tcp(l, console.clone(), false));
        }
        if let Some(l) = unix {
            tokio::spawn(accept_unix(l, console.clone()));
        }
        let owner = Owner {
            config: config.clone(),
            hub,
            input: input_rx,
            status: status_tx,
            log,
            log_failing: false,
        };
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

    /// Sends bytes to the board.
    pub async fn send(&self, _: &Permit, data: Bytes) -> Result<(), ConsoleError> {
        if !self.status.borrow().connected {
            return Err(ConsoleError::NotConnected(self.device()));
        }
        self.input
            .send(Input::Data(data))
            .await
            .map_err(|_| ConsoleError::Hardware("the console task has stopped".to_string()))
    }

    pub async fn send_break(&self, permit: &Permit) -> Result<(), ConsoleError> {
        let (tx, rx) = oneshot::channel();
        let gone = || ConsoleError::Hardware("the console task has stopped".to_string());
        self.input
            .send(Input::Break {
                from: format!("{} SendBreak", permit.caller().face().as_str()),
                reply: tx,
            })
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// Waits until the live output (from now on) matches `pattern`; returns the match.
    pub async fn wait_for(&self, pattern: &str, timeout: Duration) -> Result<String, ConsoleError> {
        let re = regex::Regex::new(pattern).map_err(|e| {
            ConsoleError::InvalidArgument(format!("invalid regex {pattern:?}: {e}"))
        })?;
        if timeout > MAX_WAIT {
            return Err(ConsoleError::InvalidArgument(format!(
                "timeout longer than {} s",
                MAX_WAIT.as_secs()
            )));
        }
        let mut sub = self.hub.subscribe(false, "WaitFor");
        let mut window = String::new();
        let search = async {
            while let Some(chunk) = sub.recv().await {
                window.push_str(&String::from_utf8_lossy(&chunk));
                if let Some(m) = re.find(&window) {
                    return Some(m.as_str().to_string());
                }
                if window.len() > WAIT_WINDOW {
                    // Keep the tail; a match straddling the cut is kept whole if it is
                    // shorter than half the window.
                    let mut cut = window.len() - WAIT_WINDOW / 2;
                    while !window.is_char_boundary(cut) {
                        cut += 1;
                    }
                    window.drain(..cut);
                }
            }
            None
        };
        match tokio::time::timeout(timeout, search).await {
            Ok(Some(m)) => Ok(m),
            Ok(None) => Err(ConsoleError::Hardware("the console stopped".to_string())),
            Err(_) => Err(ConsoleError::Timeout(format!(
                "no console output matched {pattern:?} within {} ms",
                timeout.as_millis()
            ))),
        }
    }

    /// A socket that is a raw console client, for a caller that gets it over D-Bus; what
    /// is typed into it passes the gate as the caller who attached it.
    pub fn attach(&self, permit: &Permit) -> std::io::Result<StdUnixStream> {
        let (ours, theirs) = StdUnixStream::pair()?;
        ours.set_nonblocking(true)?;
        let stream = tokio::net::UnixStream::from_std(ours)?;
        let session = self
            .gate
            .input_session(permit.caller().clone(), "Console.Input");
        tokio::spawn(serve_client(
            stream,
            self.clone(),
            false,
            "D-Bus Attach".to_string(),
            session,
        ));
        Ok(theirs)
    }
}

async fn accept_tcp(listener: TcpListener, console: Console, telnet: bool) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
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
                ));
            }
            Err(e) => {
                warn!(subsystem = "console", "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn accept_unix(listener: UnixListener, console: Console) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
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
                ));
            }
            Err(e) => {
                warn!(subsystem = "console", "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One client: board output to it, its input to the board, until either side ends. Each
/// chunk of input passes `session` (the lease); refused input is dropped, and the client is
/// told once per refusal, in plain text on its output.
async fn serve_client<S>(
    stream: S,
    console: Console,
    telnet: bool,
    label: String,
    mut session: InputSession,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut sub = console.hub.subscribe(true, &label);
    info!(subsystem = "console", "console client {label} connected");
    if telnet && writer.write_all(&telnet::OPENING).await.is_err() {
        return;
    }
    let (reply_tx, mut reply_rx) = mpsc::unbounded_channel::<Vec<u8>>();
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
                    Some(r) => Bytes::from(r),
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
        let mut buf = vec![0u8; 4096];
        loop {
            let n = match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if !telnet {
                let data = buf.get(..n).unwrap_or_default();
                if hub.may_write(id_may_write)
                    && admitted(&mut session, &mut refused, data, &reply_tx)
                    && input
                        .send(Input::Data(Bytes::copy_from_slice(data)))
                        .await
                        .is_err()
                {
                    return;
                }
                continue;
            }
            let mut decoded = decoder.decode(buf.get(..n).unwrap_or_default());
            if !decoded.reply.is_empty() {
                let _ = reply_tx.send(std::mem::take(&mut decoded.reply));
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
            if steps.is_empty() || !admitted(&mut session, &mut refused, &typed, &reply_tx) {
                continue;
            }
            for step in steps {
                let sent = match step {
                    telnet::ToBoard::Data(data) => {
                        input.send(Input::Data(Bytes::copy_from_slice(data))).await
                    }
                    telnet::ToBoard::Break => {
                        // The reply is not awaited: a telnet client gets no answer to BREAK.
                        let (tx, _rx) = oneshot::channel();
                        let from = format!("telnet BREAK from {label}");
                        input.send(Input::Break { from, reply: tx }).await
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
fn admitted(
    session: &mut InputSession,
    refused: &mut bool,
    data: &[u8],
    tell: &mpsc::UnboundedSender<Vec<u8>>,
) -> bool {
    match session.admit(|| bytes_summary(data)) {
        Ok(_permit) => {
            *refused = false;
            true
        }
        Err(e) => {
            if !*refused {
                *refused = true;
                let _ = tell.send(format!("\r\n[rtmd: input not sent: {e}]\r\n").into_bytes());
            }
            false
        }
    }
}
