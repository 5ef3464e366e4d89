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
//! and each is audited as `Power.On`/`Off`/`Cycle` via `pdudaemon-api`.
//!
//! The HTTP side is written by hand for the same reason as the pdudaemon backend: one
//! request line in, one short answer out.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{info, warn};

use crate::access::{AccessError, Caller, Face, FaceError, Gate};
use crate::board::Board;
use crate::config::PduApiConfig;
use crate::power::Power;

/// A switch request, parsed once at the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    On,
    Off,
    /// Off, wait, on; `None`: the board's `cycle_off_ms`.
    Reboot(Option<Duration>),
}

/// Why a request is refused: (HTTP status, reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub u16, pub String);

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

/// Longest request head we read; pdudaemon requests are one short line.
const MAX_HEAD: usize = 8192;
/// Longest delay a request may ask for.
const MAX_DELAY: Duration = Duration::from_secs(600);

fn parse_command(word: &str, delay: Option<&str>) -> Result<Command, Refusal> {
    let delay = match delay {
        None | Some("") => None,
        Some(d) => {
            let secs: f64 = d
                .parse()
                .map_err(|_| Refusal(400, format!("bad delay {d:?}: expected seconds")))?;
            if !(secs.is_finite() && secs >= 0.0 && secs <= MAX_DELAY.as_secs_f64()) {
                return Err(Refusal(
                    400,
                    format!("delay {d} is outside 0..{} s", MAX_DELAY.as_secs()),
                ));
            }
            Some(Duration::from_secs_f64(secs))
        }
    };
    match word {
        "on" => Ok(Command::On),
        "off" => Ok(Command::Off),
        "reboot" => Ok(Command::Reboot(delay)),
        other => Err(Refusal(
            400,
            format!("unknown command {other:?}: expected on, off or reboot"),
        )),
    }
}

/// Checks that a request is for this board's PDU and port.
fn check_target(
    config: &PduApiConfig,
    hostname: Option<&str>,
    port: Option<&str>,
) -> Result<(), Refusal> {
    let hostname = hostname.ok_or(Refusal(400, "missing hostname".to_string()))?;
    let port = port.ok_or(Refusal(400, "missing port".to_string()))?;
    let port: u16 = port
        .parse()
        .map_err(|_| Refusal(400, format!("bad port {port:?}: expected a number")))?;
    if hostname != config.hostname || port != config.port {
        return Err(Refusal(
            404,
            format!(
                "no PDU {hostname} port {port} here: this rtmd serves {} port {} only",
                config.hostname, config.port
            ),
        ));
    }
    Ok(())
}

/// Parses an HTTP request head into a command.
pub fn parse_http(config: &PduApiConfig, head: &str) -> Result<Command, Refusal> {
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(Refusal(400, "malformed request line".to_string()));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(Refusal(400, "malformed request line".to_string()));
    }
    if method != "GET" {
        return Err(Refusal(
            405,
            format!("method {method} not allowed: use GET"),
        ));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let Some(word) = path.strip_prefix("/power/control/") else {
        return Err(Refusal(
            404,
            format!("no such path {path:?}: expected /power/control/on|off|reboot"),
        ));
    };
    let params: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    let get = |key: &str| {
        params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    // pdudaemon accepts `alias=` in place of hostname and port.
    if let Some(alias) = get("alias") {
        return if alias == config.hostname {
            parse_command(word, get("delay"))
        } else {
            Err(Refusal(
                404,
                format!(
                    "no alias {alias} here: this rtmd serves {} only",
                    config.hostname
                ),
            ))
        };
    }
    check_target(config, get("hostname"), get("port"))?;
    parse_command(word, get("delay"))
}

/// Parses a legacy TCP request line (`PDU PORT COMMAND [DELAY]`).
pub fn parse_line(config: &PduApiConfig, line: &str) -> Result<Command, Refusal> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if !(3..=4).contains(&fields.len()) {
        return Err(Refusal(
            400,
            "expected: PDU PORT on|off|reboot [DELAY]".to_string(),
        ));
    }
    check_target(config, Some(fields[0]), Some(fields[1]))?;
    parse_command(fields[2], fields.get(3).copied())
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(
                    std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"),
                    16,
                ) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn http_response(code: u16, body: &str) -> String {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
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
    if let Some(addr) = config.http {
        let listener = bind(addr).await?;
        tokio::spawn(accept(listener, face.clone(), true));
    }
    if let Some(addr) = config.tcp {
        let listener = bind(addr).await?;
        tokio::spawn(accept(listener, face, false));
    }
    Ok(())
}

async fn accept(listener: TcpListener, face: PduFace, http: bool) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let face = face.clone();
                tokio::spawn(async move {
                    // No credentials on this face: requests act as the configured identity.
                    let caller = Caller::configured(
                        &face.config.identity,
                        Face::PduApi,
                        format!("{} {peer}", if http { "http" } else { "tcp" }),
                    );
                    // A client that never finishes its request must not hold a task forever.
                    let serve = serve(stream, &face, &caller, http);
                    if tokio::time::timeout(Duration::from_secs(900), serve)
                        .await
                        .is_err()
                    {
                        warn!(
                            subsystem = "pdu-api",
                            "request from {peer} took too long; dropped"
                        );
                    }
                });
            }
            Err(e) => {
                warn!(subsystem = "pdu-api", "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve(mut stream: TcpStream, face: &PduFace, caller: &Caller, http: bool) {
    let config = &face.config;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            // HTTP: up to the blank line. Legacy TCP: one read, as pdudaemon does (its
            // clients send the line without a newline and wait for the answer).
            let done = if http {
                buf.windows(4).any(|w| w == b"\r\n\r\n")
            } else {
                true
            };
            if done || buf.len() >= MAX_HEAD {
                break;
            }
        }
    });
    let _ = read.await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let parsed = if http {
        parse_http(config, &text)
    } else {
        parse_line(config, text.trim())
    };
    let outcome = match parsed {
        Ok(command) => {
            info!(
                subsystem = "pdu-api",
                "pdudaemon request: {command:?} from {caller}"
            );
            execute(&face.power, &face.gate, caller, command).await
        }
        Err(refusal) => Err(refusal),
    };
    let answer = match (&outcome, http) {
        (Ok(()), true) => http_response(200, "OK - accepted request"),
        (Err(Refusal(code, reason)), true) => http_response(*code, reason),
        (Ok(()), false) => "ack\n".to_string(),
        (Err(Refusal(_, reason)), false) => {
            warn!(subsystem = "pdu-api", "refused: {reason}");
            "nack\n".to_string()
        }
    };
    let _ = stream.write_all(answer.as_bytes()).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> PduApiConfig {
        PduApiConfig {
            http: None,
            tcp: None,
            hostname: "rpi4-01".into(),
            port: 1,
            identity: crate::access::Identity::Label("pdudaemon-api".into()),
        }
    }

    #[test]
    fn http_requests() {
        let c = cfg();
        let get = |path: &str| parse_http(&c, &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert_eq!(
            get("/power/control/on?hostname=rpi4-01&port=1"),
            Ok(Command::On)
        );
        assert_eq!(
            get("/power/control/off?port=1&hostname=rpi4-01"),
            Ok(Command::Off)
        );
        assert_eq!(
            get("/power/control/reboot?hostname=rpi4-01&port=1&delay=2.5"),
            Ok(Command::Reboot(Some(Duration::from_millis(2500))))
        );
        assert_eq!(
            get("/power/control/reboot?alias=rpi4-01"),
            Ok(Command::Reboot(None))
        );
        assert_eq!(
            get("/power/control/on?hostname=rpi4%2d01&port=1"),
            Ok(Command::On)
        );
        assert_eq!(
            get("/power/control/on?hostname=other&port=1")
                .unwrap_err()
                .0,
            404
        );
        assert_eq!(
            get("/power/control/on?hostname=rpi4-01&port=2")
                .unwrap_err()
                .0,
            404
        );
        assert_eq!(
            get("/power/control/on?hostname=rpi4-01&port=x")
                .unwrap_err()
                .0,
            400
        );
        assert_eq!(
            get("/power/control/on?hostname=rpi4-01").unwrap_err().0,
            400
        );
        assert_eq!(
            get("/power/control/toggle?hostname=rpi4-01&port=1")
                .unwrap_err()
                .0,
            400
        );
        assert_eq!(
            get("/power/control/reboot?hostname=rpi4-01&port=1&delay=-1")
                .unwrap_err()
                .0,
            400
        );
        assert_eq!(get("/status").unwrap_err().0, 404);
        assert_eq!(
            parse_http(&c, "POST /power/control/on HTTP/1.1\r\n\r\n")
                .unwrap_err()
                .0,
            405
        );
        assert_eq!(parse_http(&c, "garbage\r\n\r\n").unwrap_err().0, 400);
        assert_eq!(parse_http(&c, "").unwrap_err().0, 400);
    }

    #[test]
    fn legacy_lines() {
        let c = cfg();
        assert_eq!(parse_line(&c, "rpi4-01 1 on"), Ok(Command::On));
        assert_eq!(
            parse_line(&c, "rpi4-01 1 reboot 3"),
            Ok(Command::Reboot(Some(Duration::from_secs(3))))
        );
        assert!(parse_line(&c, "rpi4-01 1").is_err());
        assert!(parse_line(&c, "nope 1 on").is_err());
        assert!(parse_line(&c, "rpi4-01 1 dance").is_err());
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b+c"), "a b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
