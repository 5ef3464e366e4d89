//! Switching through a lab's existing pdudaemon (LAVA's power daemon), over its HTTP API:
//! `GET /power/control/on|off?hostname=<pdu>&port=<outlet>`.
//!
//! pdudaemon answers only after its driver has run the switch, but it cannot report a port's
//! state and it ignores a driver command's exit code. So `200` is the strongest confirmation
//! there is: the state we publish is the one pdudaemon accepted, and `unknown` until the first
//! switch.
//!
//! The request is written by hand: it is one `GET` with a one-line answer, and an HTTP client
//! crate (hyper, reqwest) would add a hundred dependencies and most of the daemon's memory.

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{PowerError, PowerState, PowerSwitch};
use crate::config::PdudaemonConfig;

/// The request line and headers for one switch.
pub fn request(config: &PdudaemonConfig, on: bool) -> String {
    format!(
        "GET /power/control/{}?hostname={}&port={} HTTP/1.1\r\nHost: {}:{}\r\n\
         User-Agent: rtmd\r\nConnection: close\r\n\r\n",
        if on { "on" } else { "off" },
        percent_encode(&config.pdu),
        config.outlet,
        config.host,
        config.port
    )
}

/// Percent-encodes a query value (PDU names are usually plain, but need not be).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The status code and body of an HTTP response.
pub fn parse_response(raw: &[u8]) -> Result<(u16, String), String> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status_line = head.lines().next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        return Err(format!("not an HTTP response: {status_line:?}"));
    };
    if !version.starts_with("HTTP/") {
        return Err(format!("not an HTTP response: {status_line:?}"));
    }
    let code = code
        .parse()
        .map_err(|_| format!("bad HTTP status line {status_line:?}"))?;
    Ok((code, body.trim().to_string()))
}

pub struct Pdudaemon {
    config: PdudaemonConfig,
    last: PowerState,
}

impl Pdudaemon {
    pub fn new(config: PdudaemonConfig) -> Self {
        Pdudaemon {
            config,
            last: PowerState::Unknown,
        }
    }
}

#[async_trait]
impl PowerSwitch for Pdudaemon {
    async fn switch(&mut self, on: bool) -> Result<PowerState, PowerError> {
        let addr = format!("{}:{}", self.config.host, self.config.port);
        let io = |e: std::io::Error| PowerError::Io(format!("pdudaemon at {addr}: {e}"));
        let mut stream = TcpStream::connect(&addr).await.map_err(io)?;
        stream
            .write_all(request(&self.config, on).as_bytes())
            .await
            .map_err(io)?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.map_err(io)?;
        let (code, body) = parse_response(&raw)
            .map_err(|e| PowerError::Protocol(format!("pdudaemon at {addr}: {e}")))?;
        if code != 200 {
            // pdudaemon answers 500 "Invalid request" for an unknown PDU or port.
            return Err(PowerError::Refused(format!(
                "pdudaemon at {addr} refused {} of {} port {}: HTTP {code} {body}",
                if on { "on" } else { "off" },
                self.config.pdu,
                self.config.outlet
            )));
        }
        self.last = PowerState::from_bool(on);
        Ok(self.last)
    }

    async fn state(&mut self) -> Result<PowerState, PowerError> {
        Ok(self.last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> PdudaemonConfig {
        PdudaemonConfig {
            host: "127.0.0.1".into(),
            port: 16421,
            pdu: "lab pdu".into(),
            outlet: 3,
        }
    }

    #[test]
    fn builds_the_api_request() {
        let r = request(&cfg(), true);
        assert!(
            r.starts_with("GET /power/control/on?hostname=lab%20pdu&port=3 HTTP/1.1\r\n"),
            "{r}"
        );
        assert!(r.ends_with("\r\n\r\n"));
        assert!(request(&cfg(), false).starts_with("GET /power/control/off?"));
    }

    #[test]
    fn parses_answers() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nOK - accepted request\n";
        assert_eq!(
            parse_response(ok),
            Ok((200, "OK - accepted request".into()))
        );
        let bad = b"HTTP/1.1 500 Internal Server Error\r\n\r\nInvalid request\n";
        assert_eq!(parse_response(bad), Ok((500, "Invalid request".into())));
        assert!(parse_response(b"ack\n").is_err());
        assert!(parse_response(b"").is_err());
    }
}
