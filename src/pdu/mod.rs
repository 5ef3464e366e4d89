//! A pdudaemon-compatible front end for this board's power, so a lab's existing LAVA device
//! dictionaries (`pduclient --daemon HOST --hostname PDU --port N --command on|off|reboot`,
//! or the HTTP API they call) keep working while the lab moves to rtmd.
//!
//! Both of pdudaemon's protocols are served: HTTP
//! (`GET /power/control/on|off|reboot?hostname=PDU&port=N[&delay=S]`, answered
//! `200 OK - accepted request`) and the legacy TCP line (`PDU N on|off|reboot [DELAY]`,
//! answered `ack` or `nack`). Unlike pdudaemon, the answer comes once the hardware confirmed the
//! new state, and a request for another PDU or port is refused with a reason (HTTP 404) instead
//! of a bare 500.
//!
//! A face like D-Bus, a sibling of `bus/` over the board's parts: every request passes the
//! board's gate. pdudaemon's protocols carry no identity, so requests act as the
//! `[pdudaemon_api] identity` the admin configured (a label by default, which holds no lease:
//! while anyone holds the board, switching through here is refused with HTTP 403 or `nack`),
//! and each is audited as `Power.On`/`Off`/`Cycle` via `pdudaemon-api` with the peer's address.
//!
//! Every peer is a stranger: a listener serves at most [`MAX_CONNECTIONS`] connections at once
//! (the next get `503` and are closed at once), a request must arrive whole within
//! [`READ_DEADLINE`] and within the size bounds of [`request`], and only a complete, valid
//! request runs: a half-sent one is answered `408` or `400` (`nack`) and never executed.
//!
//! The HTTP side is written by hand for the same reason as the pdudaemon backend: one
//! request line in, one short answer out.

pub mod fuzz;
pub mod request;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{info, warn};

use crate::access::{AccessError, Caller, Face, FaceError, Gate};
use crate::board::Board;
use crate::config::PduApiConfig;
use crate::power::Power;
pub use request::{Command, Refusal};
use request::{HeadProgress, MAX_LINE, Target, http_progress, parse_http, parse_line};

/// Connections one listener serves at once. A LAVA dispatcher sends a handful of requests
/// per job, one at a time; 32 is far above that, and bounds the descriptors, memory and
/// queued power requests a flood can cost to 32 of each.
pub const MAX_CONNECTIONS: usize = 32;
/// How long a peer has to send its whole request, from the moment it was accepted.
/// pdudaemon's clients send it at once; a request still incomplete after this is answered
/// `408` and not executed.
pub const READ_DEADLINE: Duration = Duration::from_secs(10);
/// How long a peer has to take its answer (a few hundred bytes) before it is dropped.
const WRITE_DEADLINE: Duration = Duration::from_secs(10);
/// After answering, how long and how much of what the peer still sends is read and thrown
/// away, so that closing with unread bytes does not reset the connection under the answer
/// (a 431 to a client still sending its headers).
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 64 * 1024;
/// A backstop for one connection, far above any legitimate request (read, the switch with
/// its longest delay and retries, the answer): nothing keeps a task forever.
const CONNECTION_BOUND: Duration = Duration::from_secs(300);
/// At most one log line per listener per this period about refused peers (a flood must not
/// become a flood of log lines); the lines say how many were not logged.
const LOG_PERIOD: Duration = Duration::from_secs(1);

impl From<AccessError> for Refusal {
    fn from(e: AccessError) -> Self {
        match e {
            AccessError::Leased(_) => Refusal(403, format!("refused: the board is {e}")),
            AccessError::Closed(_) => Refusal(503, e.to_string()),
            other => Refusal(403, other.to_string()),
        }
    }
}

impl FaceError for Refusal {
    fn audit_summary(&self) -> String {
        let Refusal(code, reason) = self;
        format!("HTTP {code}: {reason}")
    }
}

fn http_response(code: u16, body: &str) -> String {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        414 => "URI Too Long",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Error",
    };
    format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}\n",
        body.len() + 1
    )
}

/// Runs a command on the board's power through the gate.
async fn execute(
    power: &Power,
    gate: &Gate,
    caller: &Caller,
    command: Command,
) -> Result<(), Refusal> {
    let (method, args) = match command {
        Command::On => ("Power.On", String::new()),
        Command::Off => ("Power.Off", String::new()),
        Command::Reboot(None) => ("Power.Cycle", "reboot".to_string()),
        Command::Reboot(Some(d)) => ("Power.Cycle", format!("reboot, {} ms", d.as_millis())),
    };
    gate.run(caller, method, args, |permit| async move {
        let result = match command {
            Command::On => power.on(&permit).await,
            Command::Off => power.off(&permit).await,
            Command::Reboot(delay) => power.cycle(&permit, delay).await,
        };
        result
            .map(|_| ())
            .map_err(|e| Refusal(502, format!("power failed: {e}")))
    })
    .await
}

/// The face's share of the board: the power it switches, the gate, who it acts as.
#[derive(Clone)]
struct PduFace {
    config: PduApiConfig,
    power: Power,
    gate: Gate,
}

/// One listener: its protocol, its connection slots, its throttled log of refusals.
struct Listener {
    face: PduFace,
    http: bool,
    slots: Arc<Semaphore>,
    log: Mutex<Throttle>,
}

impl Listener {
    fn protocol(&self) -> &'static str {
        if self.http { "http" } else { "tcp" }
    }

    /// Logs a refused peer, at most once per [`LOG_PERIOD`].
    fn refused(&self, peer: SocketAddr, why: &str) {
        let Ok(mut log) = self.log.lock() else { return };
        if let Some(also) = log.admit(Instant::now()) {
            let more = if also > 0 {
                format!(" (and {also} more refusals not logged)")
            } else {
                String::new()
            };
            warn!(
                subsystem = "pdu-api",
                "{} {peer}: refused: {why}{more}",
                self.protocol()
            );
        }
    }
}

/// Lets one line through per period; counts the others.
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    /// `Some(n)`: log now, `n` lines were dropped since the last one.
    fn admit(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.duration_since(t) < LOG_PERIOD => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// Binds the configured listeners (a taken port is a start-up error) and serves them.
/// Nothing to do for a board without `[pdudaemon_api]` (or without power).
pub async fn start(board: &Board) -> Result<(), String> {
    let (Some(config), Some(power)) = (&board.config.pdudaemon_api, &board.power) else {
        return Ok(());
    };
    let face = PduFace {
        config: config.clone(),
        power: power.clone(),
        gate: board.gate.clone(),
    };
    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|e| format!("pdudaemon API: cannot listen on {addr}: {e}"))
    };
    for (addr, http) in [(config.http, true), (config.tcp, false)] {
        let Some(addr) = addr else { continue };
        let socket = bind(addr).await?;
        let listener = Arc::new(Listener {
            face: face.clone(),
            http,
            slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            log: Mutex::new(Throttle::default()),
        });
        tokio::spawn(accept(socket, listener));
    }
    Ok(())
}

async fn accept(socket: TcpListener, listener: Arc<Listener>) {
    loop {
        let (stream, peer) = match socket.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors, most likely: wait for some to come back rather than
                // spin; the other faces are not affected by this listener waiting.
                warn!(subsystem = "pdu-api", "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = listener.slots.clone().try_acquire_owned() else {
            turn_away(&stream, listener.http);
            listener.refused(
                peer,
                &format!("{MAX_CONNECTIONS} connections are being served already"),
            );
            continue;
        };
        let listener = listener.clone();
        tokio::spawn(async move {
            let _slot = slot;
            // No credentials on this face: requests act as the configured identity.
            let caller = Caller::configured(
                &listener.face.config.identity,
                Face::PduApi,
                format!("{} {peer}", listener.protocol()),
            );
            let serve = serve(stream, peer, &listener, &caller);
            if tokio::time::timeout(CONNECTION_BOUND, serve).await.is_err() {
                warn!(
                    subsystem = "pdu-api",
                    "request from {peer} took longer than {} s; dropped",
                    CONNECTION_BOUND.as_secs()
                );
            }
        });
    }
}

/// Answers a peer over the connection cap without reading anything from it, and closes.
/// The answer is tiny and the socket's buffer empty, so one non-blocking write takes it.
fn turn_away(stream: &TcpStream, http: bool) {
    let answer = if http {
        http_response(
            503,
            &format!("busy: {MAX_CONNECTIONS} requests are being served; try again"),
        )
    } else {
        "nack\n".to_string()
    };
    let _ = stream.try_write(answer.as_bytes());
}

async fn serve(mut stream: TcpStream, peer: SocketAddr, listener: &Listener, caller: &Caller) {
    let face = &listener.face;
    let target = Target {
        hostname: &face.config.hostname,
        port: face.config.port,
    };
    let outcome = match read_request(&mut stream, &target, listener.http).await {
        Ok(command) => {
            info!(
                subsystem = "pdu-api",
                "pdudaemon request: {command:?} from {caller}"
            );
            execute(&face.power, &face.gate, caller, command).await
        }
        Err(refusal) => {
            listener.refused(peer, &format!("{} {}", refusal.0, refusal.1));
            Err(refusal)
        }
    };
    let answer = match (&outcome, listener.http) {
        (Ok(()), true) => http_response(200, "OK - accepted request"),
        (Err(Refusal(code, reason)), true) => http_response(*code, reason),
        (Ok(()), false) => "ack\n".to_string(),
        (Err(_), false) => "nack\n".to_string(),
    };
    let answered = tokio::time::timeout(WRITE_DEADLINE, async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
    if matches!(answered, Ok(Ok(()))) {
        linger(&mut stream).await;
    }
}

/// Reads one request within [`READ_DEADLINE`]; only a complete, valid one is a command.
async fn read_request(
    stream: &mut TcpStream,
    target: &Target<'_>,
    http: bool,
) -> Result<Command, Refusal> {
    let deadline = tokio::time::Instant::now() + READ_DEADLINE;
    let late = || {
        Refusal(
            408,
            format!(
                "the request did not arrive whole within {} s; nothing was done",
                READ_DEADLINE.as_secs()
            ),
        )
    };
    if !http {
        // Legacy TCP: one read, as pdudaemon does (its clients send the request without a
        // newline and wait for the answer). One byte more than a request may have tells
        // an oversized one.
        let mut line = [0u8; MAX_LINE + 1];
        return match tokio::time::timeout_at(deadline, stream.read(&mut line)).await {
            Err(_) => Err(late()),
            Ok(Err(e)) => Err(Refusal(400, format!("reading the request: {e}"))),
            Ok(Ok(0)) => Err(Refusal(400, "no request before the end".to_string())),
            Ok(Ok(n)) => parse_line(target, line.get(..n).unwrap_or_default()),
        };
    }
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => return Err(late()),
            Ok(Err(e)) => return Err(Refusal(400, format!("reading the request: {e}"))),
            Ok(Ok(0)) => {
                return Err(Refusal(
                    400,
                    "incomplete request: the connection ended before the blank line that \
                     ends the request head; nothing was done"
                        .to_string(),
                ));
            }
            Ok(Ok(n)) => n,
        };
        head.extend_from_slice(chunk.get(..n).unwrap_or_default());
        match http_progress(&head) {
            HeadProgress::NeedMore => {}
            HeadProgress::Complete(end) => {
                return parse_http(target, head.get(..end).unwrap_or_default());
            }
            HeadProgress::Refused(refusal) => return Err(refusal),
        }
    }
}

/// Reads and drops what the peer still sends, within [`LINGER`] and [`LINGER_BYTES`].
async fn linger(stream: &mut TcpStream) {
    let _ = tokio::time::timeout(LINGER, async {
        let mut sink = [0u8; 4096];
        let mut total = 0;
        while total < LINGER_BYTES {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_logged_once_per_period_with_a_count() {
        let mut t = Throttle::default();
        let start = Instant::now();
        assert_eq!(t.admit(start), Some(0));
        assert_eq!(t.admit(start), None);
        assert_eq!(t.admit(start + Duration::from_millis(10)), None);
        assert_eq!(t.admit(start + LOG_PERIOD), Some(2));
        assert_eq!(t.admit(start + LOG_PERIOD * 3), Some(0));
    }

    #[test]
    fn answers_name_their_status() {
        for (code, reason) in [
            (408, "Request Timeout"),
            (414, "URI Too Long"),
            (431, "Request Header Fields Too Large"),
            (503, "Service Unavailable"),
        ] {
            let answer = http_response(code, "why");
            assert!(
                answer.starts_with(&format!("HTTP/1.1 {code} {reason}\r\n")),
                "{answer}"
            );
            assert!(answer.ends_with("\r\n\r\nwhy\n"), "{answer}");
        }
    }

    #[test]
    fn the_fuzz_entry_point_survives_mutated_requests() {
        fuzz::mutations(3000).unwrap();
    }
}
