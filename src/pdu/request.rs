//! pdudaemon's two request formats, parsed once at the edge from the bytes a peer sent: the
//! HTTP request head (`GET /power/control/on?hostname=H&port=N[&delay=S]`) and the legacy
//! TCP line (`H N on|off|reboot [DELAY]`). Pure: no I/O, so the unit tests and the fuzz
//! target (`pdu::fuzz`) drive it directly.
//!
//! What a request may be is bounded here: [`MAX_REQUEST_LINE`], [`MAX_HEAD`], [`MAX_LINE`],
//! [`MAX_DELAY`]. [`http_progress`] tells the reader, after every read, whether the head is
//! complete, needs more bytes, or is already refused (too long), so a request is parsed only
//! once it is complete: a half-sent request is never executed.

use std::time::Duration;

use percent_encoding::percent_decode_str;

/// A switch request, parsed once at the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    On,
    Off,
    /// Off, wait, on; `None`: the board's `cycle_off_ms`.
    Reboot(Option<Duration>),
}

/// Why a request is refused: (HTTP status, reason). The legacy protocol answers `nack`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub u16, pub String);

/// Longest HTTP request line (method, target, version). pdudaemon's are under 100 bytes; 2 KiB
/// leaves room for a long PDU name and is what many servers allow. Longer: `414`.
pub const MAX_REQUEST_LINE: usize = 2048;
/// Longest HTTP request head (request line and headers). Longer: `431`.
pub const MAX_HEAD: usize = 8192;
/// Longest legacy TCP request (`lab-pdu 3 reboot 5` is 18 bytes). Longer: `nack`.
pub const MAX_LINE: usize = 256;
/// Longest `delay` a reboot may ask for. pdudaemon's own default is 5 s; what a board needs
/// off is the time its supply takes to drain (under 10 s for an SBC's adapter, some 20 s for an
/// ATX supply). 30 s covers those; a longer one would let any client that reaches the port
/// keep a board dark for as long as it likes. An admin who wants a board off for longer says
/// `off`, then `on`: two audited requests.
pub const MAX_DELAY: Duration = Duration::from_secs(30);

/// Where an HTTP request head stands after the bytes received so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadProgress {
    /// Not complete yet: read more (within the deadline and [`MAX_HEAD`]).
    NeedMore,
    /// Complete: the head is the first `n` bytes (up to and including the blank line).
    Complete(usize),
    /// Refused already (too long); answer and close, nothing runs.
    Refused(Refusal),
}

/// Whether `buf` (every byte received so far) holds a complete HTTP request head. The head
/// ends at the first blank line (`\r\n\r\n`, or `\n\n` from lenient clients, as RFC 9112
/// allows a recipient to accept).
pub fn http_progress(buf: &[u8]) -> HeadProgress {
    let line_end = buf.iter().position(|&b| b == b'\n');
    let line_len = line_end.unwrap_or(buf.len());
    if line_len > MAX_REQUEST_LINE {
        return HeadProgress::Refused(Refusal(
            414,
            format!("request line longer than {MAX_REQUEST_LINE} bytes"),
        ));
    }
    if let Some(end) = head_end(buf) {
        return if end > MAX_HEAD {
            HeadProgress::Refused(too_large())
        } else {
            HeadProgress::Complete(end)
        };
    }
    if buf.len() >= MAX_HEAD {
        return HeadProgress::Refused(too_large());
    }
    HeadProgress::NeedMore
}

fn too_large() -> Refusal {
    Refusal(
        431,
        format!("request header fields larger than {MAX_HEAD} bytes"),
    )
}

/// The length of the head (through its blank line), if `buf` has one.
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut at_line_start = true;
    for (i, &b) in buf.iter().enumerate() {
        match b {
            b'\n' if at_line_start => return Some(i + 1),
            b'\n' => at_line_start = true,
            // A `\r` right before the `\n` belongs to the line end.
            b'\r' if buf.get(i + 1) == Some(&b'\n') => {}
            _ => at_line_start = false,
        }
    }
    None
}

/// This board's PDU: what a request must name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target<'a> {
    pub hostname: &'a str,
    pub port: u16,
}

/// Parses a complete HTTP request head (as [`http_progress`] delimited it).
pub fn parse_http(target: &Target<'_>, head: &[u8]) -> Result<Command, Refusal> {
    let text = std::str::from_utf8(head)
        .map_err(|_| bad("the request head is not UTF-8 (request targets are ASCII)"))?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let line = lines.next().unwrap_or("");
    for header in lines.take_while(|l| !l.is_empty()) {
        check_header(header)?;
    }
    if !line.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return Err(bad(
            "malformed request line: control or non-ASCII characters",
        ));
    }
    let mut parts = line.split(' ');
    let (Some(method), Some(target_text), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad(
            "malformed request line: expected METHOD TARGET HTTP/1.x",
        ));
    };
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(bad(&format!(
            "malformed request line: unsupported version {version:?}"
        )));
    }
    if method != "GET" {
        return Err(Refusal(
            405,
            format!("method {method} not allowed: use GET"),
        ));
    }
    let (path, query) = target_text.split_once('?').unwrap_or((target_text, ""));
    // A fragment is never sent by clients; take it as part of nothing.
    let query = query.split('#').next().unwrap_or("");
    let Some(word) = path.strip_prefix("/power/control/") else {
        return Err(Refusal(
            404,
            format!("no such path {path:?}: expected /power/control/on|off|reboot"),
        ));
    };
    let params = Params::parse(query)?;
    let delay = params.get("delay");
    // pdudaemon accepts `alias=` in place of hostname and port.
    if let Some(alias) = params.get("alias") {
        return if alias == target.hostname {
            command(word, delay)
        } else {
            Err(Refusal(
                404,
                format!(
                    "no alias {alias:?} here: this rtmd serves {} only",
                    target.hostname
                ),
            ))
        };
    }
    check_target(target, params.get("hostname"), params.get("port"))?;
    command(word, delay)
}

/// Parses a legacy TCP request (`PDU PORT COMMAND [DELAY]`): what one read brought, as
/// pdudaemon's clients send it (no newline needed; one may end it).
pub fn parse_line(target: &Target<'_>, line: &[u8]) -> Result<Command, Refusal> {
    if line.len() > MAX_LINE {
        return Err(bad(&format!("request longer than {MAX_LINE} bytes")));
    }
    let text = std::str::from_utf8(line).map_err(|_| bad("the request is not UTF-8"))?;
    let text = text.strip_suffix('\n').unwrap_or(text);
    let text = text.strip_suffix('\r').unwrap_or(text);
    if text.chars().any(|c| c.is_control() && c != '\t') {
        return Err(bad("control characters in the request (one line expected)"));
    }
    let fields: Vec<&str> = text.split_whitespace().collect();
    let (Some(hostname), Some(port), Some(word), delay, None) = (
        fields.first(),
        fields.get(1),
        fields.get(2),
        fields.get(3),
        fields.get(4),
    ) else {
        return Err(bad("expected: PDU PORT on|off|reboot [DELAY]"));
    };
    check_target(target, Some(hostname), Some(port))?;
    command(word, delay.copied())
}

fn bad(reason: &str) -> Refusal {
    Refusal(400, reason.to_string())
}

/// A header line: `name: value`, the name a token. Nothing else of it is used.
fn check_header(line: &str) -> Result<(), Refusal> {
    let Some((name, value)) = line.split_once(':') else {
        return Err(bad("malformed header line: no colon"));
    };
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(token) {
        return Err(bad("malformed header name"));
    }
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return Err(bad("control characters in a header value"));
    }
    Ok(())
}

/// The query's parameters, decoded (`+` is a space, `%XX` a byte; the result must be UTF-8
/// without control characters). A parameter given twice is refused: which one would count is
/// a guess.
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(query: &str) -> Result<Params, Refusal> {
        let mut params: Vec<(String, String)> = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let (k, v) = (decode(k)?, decode(v)?);
            if params.iter().any(|(seen, _)| *seen == k) {
                return Err(bad(&format!("parameter {k:?} given twice")));
            }
            params.push((k, v));
        }
        Ok(Params(params))
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// One query component, form-decoded with the percent-encoding crate (the one decoder).
fn decode(s: &str) -> Result<String, Refusal> {
    let spaced = s.replace('+', " ");
    let text = percent_decode_str(&spaced)
        .decode_utf8()
        .map_err(|_| bad("a query parameter is not UTF-8 once decoded"))?;
    if text.chars().any(char::is_control) {
        return Err(bad("control characters in a query parameter"));
    }
    Ok(text.into_owned())
}

fn command(word: &str, delay: Option<&str>) -> Result<Command, Refusal> {
    let delay = match delay {
        None | Some("") => None,
        Some(d) => Some(parse_delay(d)?),
    };
    match word {
        "on" => Ok(Command::On),
        "off" => Ok(Command::Off),
        "reboot" => Ok(Command::Reboot(delay)),
        other => Err(bad(&format!(
            "unknown command {other:?}: expected on, off or reboot"
        ))),
    }
}

fn parse_delay(d: &str) -> Result<Duration, Refusal> {
    let secs: f64 = d
        .parse()
        .map_err(|_| bad(&format!("bad delay {d:?}: expected seconds")))?;
    if !(secs.is_finite() && (0.0..=MAX_DELAY.as_secs_f64()).contains(&secs)) {
        return Err(bad(&format!(
            "delay {d:?} is outside 0..{} s (the longest off time a request may ask for)",
            MAX_DELAY.as_secs()
        )));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Checks that a request is for this board's PDU and port.
fn check_target(
    target: &Target<'_>,
    hostname: Option<&str>,
    port: Option<&str>,
) -> Result<(), Refusal> {
    let hostname = hostname.ok_or_else(|| bad("missing hostname"))?;
    let port_text = port.ok_or_else(|| bad("missing port"))?;
    let port: u16 = port_text
        .parse()
        .map_err(|_| bad(&format!("bad port {port_text:?}: expected a number")))?;
    if hostname != target.hostname || port != target.port {
        return Err(Refusal(
            404,
            format!(
                "no PDU {hostname} port {port} here: this rtmd serves {} port {} only",
                target.hostname, target.port
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Target<'static> = Target {
        hostname: "rpi4-01",
        port: 1,
    };

    fn get(path: &str) -> Result<Command, Refusal> {
        parse_http(
            &T,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        )
    }

    fn code(r: Result<Command, Refusal>) -> u16 {
        r.unwrap_err().0
    }

    #[test]
    fn http_requests() {
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
        assert_eq!(code(get("/power/control/on?hostname=other&port=1")), 404);
        assert_eq!(code(get("/power/control/on?hostname=rpi4-01&port=2")), 404);
        assert_eq!(code(get("/power/control/on?hostname=rpi4-01&port=x")), 400);
        assert_eq!(code(get("/power/control/on?hostname=rpi4-01")), 400);
        assert_eq!(
            code(get("/power/control/toggle?hostname=rpi4-01&port=1")),
            400
        );
        assert_eq!(code(get("/status")), 404);
        let post = parse_http(&T, b"POST /power/control/on HTTP/1.1\r\n\r\n");
        assert_eq!(code(post), 405);
        assert_eq!(code(parse_http(&T, b"garbage\r\n\r\n")), 400);
        assert_eq!(code(parse_http(&T, b"")), 400);
        // A lenient client's bare newlines are fine.
        assert_eq!(
            parse_http(
                &T,
                b"GET /power/control/on?alias=rpi4-01 HTTP/1.0\nHost: x\n\n"
            ),
            Ok(Command::On)
        );
    }

    #[test]
    fn delays_are_bounded() {
        let reboot = |d: &str| get(&format!("/power/control/reboot?alias=rpi4-01&delay={d}"));
        assert_eq!(
            reboot("30"),
            Ok(Command::Reboot(Some(Duration::from_secs(30))))
        );
        assert_eq!(reboot("0"), Ok(Command::Reboot(Some(Duration::ZERO))));
        for d in ["30.001", "600", "-1", "nan", "inf", "1e400", "5s", "0x10"] {
            let err = reboot(d).unwrap_err();
            assert_eq!(err.0, 400, "{d}");
        }
        assert!(reboot("600").unwrap_err().1.contains("outside 0..30 s"));
    }

    #[test]
    fn bad_bytes_are_refused_not_decoded_lossily() {
        // Decoded bytes that are not UTF-8, a NUL, a newline: 400, nothing else.
        for q in [
            "hostname=%ff&port=1",
            "hostname=rpi4-01%00&port=1",
            "hostname=rpi4-01%0a&port=1",
            "hostname=rpi4-01&port=1&hostname=rpi4-01",
            "hostname=%e9&port=1",
        ] {
            assert_eq!(code(get(&format!("/power/control/on?{q}"))), 400, "{q}");
        }
        // Invalid escapes stay as they are (and then name no PDU here).
        assert_eq!(code(get("/power/control/on?hostname=%zz&port=1")), 404);
        assert_eq!(code(get("/power/control/on?hostname=%a&port=1")), 404);
        // Raw non-ASCII, control characters, extra spaces in the request line.
        assert_eq!(
            code(parse_http(
                &T,
                "GET /power/control/on?alias=é HTTP/1.1\r\n\r\n".as_bytes()
            )),
            400
        );
        assert_eq!(
            code(parse_http(
                &T,
                b"GET /power/control/on?alias=rpi4-01  HTTP/1.1\r\n\r\n"
            )),
            400
        );
        assert_eq!(
            code(parse_http(
                &T,
                b"GET /power/control/on?alias=rpi4-01 HTTP/1.1\r\nno colon\r\n\r\n"
            )),
            400
        );
        assert_eq!(
            code(parse_http(
                &T,
                b"GET /power/control/on?alias=rpi4-01 HTTP/1.1\r\nX: a\x00b\r\n\r\n"
            )),
            400
        );
        assert_eq!(
            code(parse_http(
                &T,
                b"GET /power/control/on?alias=rpi4-01 HTTP/2.0\r\n\r\n"
            )),
            400
        );
    }

    #[test]
    fn a_head_is_complete_only_at_its_blank_line() {
        let full = b"GET /power/control/on?alias=rpi4-01 HTTP/1.1\r\nHost: x\r\n\r\n";
        for n in 0..full.len() {
            assert_eq!(
                http_progress(&full[..n]),
                HeadProgress::NeedMore,
                "{n} bytes"
            );
        }
        assert_eq!(http_progress(full), HeadProgress::Complete(full.len()));
        let mut more = full.to_vec();
        more.extend_from_slice(b"body");
        assert_eq!(http_progress(&more), HeadProgress::Complete(full.len()));
        assert_eq!(
            http_progress(b"GET / HTTP/1.1\n\n"),
            HeadProgress::Complete(16)
        );
        // `\r\r\n` is not a blank line.
        assert_eq!(
            http_progress(b"GET / HTTP/1.1\r\n\r\r\n"),
            HeadProgress::NeedMore
        );
    }

    #[test]
    fn oversized_heads_are_refused_before_they_end() {
        let long_line = format!("GET /{} HTTP/1.1", "a".repeat(MAX_REQUEST_LINE));
        let HeadProgress::Refused(r) = http_progress(long_line.as_bytes()) else {
            panic!("a long request line is refused at once");
        };
        assert_eq!(r.0, 414);
        let mut head = b"GET / HTTP/1.1\r\n".to_vec();
        while head.len() < MAX_HEAD {
            head.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        let HeadProgress::Refused(r) = http_progress(&head) else {
            panic!("a long head is refused at once");
        };
        assert_eq!(r.0, 431);
    }

    #[test]
    fn legacy_lines() {
        assert_eq!(parse_line(&T, b"rpi4-01 1 on"), Ok(Command::On));
        assert_eq!(parse_line(&T, b"rpi4-01 1 off\n"), Ok(Command::Off));
        assert_eq!(parse_line(&T, b"rpi4-01 1 off\r\n"), Ok(Command::Off));
        assert_eq!(
            parse_line(&T, b"rpi4-01 1 reboot 3"),
            Ok(Command::Reboot(Some(Duration::from_secs(3))))
        );
        for bad in [
            &b"rpi4-01 1"[..],
            b"nope 1 on",
            b"rpi4-01 1 dance",
            b"rpi4-01 1 on 1 2",
            b"rpi4-01 1 reboot 600",
            b"rpi4-01 1 on\nrpi4-01 1 off",
            b"rpi4-01 1 o\x00n",
            b"\xff\xfe",
            b"",
        ] {
            assert!(parse_line(&T, bad).is_err(), "{bad:?}");
        }
        let long = format!("rpi4-01 1 on {}", " ".repeat(MAX_LINE));
        assert!(parse_line(&T, long.as_bytes()).is_err());
    }
}
