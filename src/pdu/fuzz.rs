//! The entry point for fuzzing the pdudaemon API's request parser (`fuzz/`, target
//! `pdu_request`; docs/config.md "Fuzzing"): arbitrary peer bytes, fed to the HTTP head
//! reader in pieces and to both parsers. Any panic is a bug, and so is a broken invariant,
//! which [`request`] reports as an error for the target to fail on.

use super::request::{
    Command, HeadProgress, MAX_DELAY, MAX_HEAD, Refusal, Target, http_progress, parse_http,
    parse_line,
};
use crate::mutate::Mutator;

const TARGET: Target<'static> = Target {
    hostname: "lab-pdu",
    port: 3,
};

/// Valid requests of both protocols, to mutate from (also in `fuzz/seeds/`).
pub const SEEDS: &[&[u8]] = &[
    b"GET /power/control/reboot?hostname=lab-pdu&port=3&delay=5 HTTP/1.1\r\nHost: 127.0.0.1:16421\r\nUser-Agent: python-requests/2.31\r\nAccept: */*\r\n\r\n",
    b"GET /power/control/on?alias=lab%2Dpdu HTTP/1.0\n\n",
    b"lab-pdu 3 reboot 5",
    b"lab-pdu 3 off\n",
];

/// Runs one input. The first byte sets how the HTTP reader receives the rest (in pieces of
/// 1 to 64 bytes); the rest is the peer's bytes. Returns what the parsers made of it, or
/// which invariant broke.
pub fn request(data: &[u8]) -> Result<(Option<Command>, Option<Command>), String> {
    let Some((&first, data)) = data.split_first() else {
        return Ok((None, None));
    };
    let piece = usize::from(first % 64) + 1;

    // The reader's view: the head grows piece by piece until it is complete or refused.
    let mut seen = Vec::new();
    let mut progress = HeadProgress::NeedMore;
    for chunk in data.chunks(piece) {
        seen.extend_from_slice(chunk);
        progress = http_progress(&seen);
        if progress != HeadProgress::NeedMore {
            break;
        }
    }
    let http = match progress {
        HeadProgress::Complete(end) => {
            if end > MAX_HEAD || end > seen.len() {
                return Err(format!("head of {end} bytes out of bounds"));
            }
            // However the bytes arrived, the head ends at the same place.
            if http_progress(data) != HeadProgress::Complete(end) {
                return Err("the head's end depends on how it arrived".to_string());
            }
            Some(checked(parse_http(
                &TARGET,
                seen.get(..end).unwrap_or_default(),
            ))?)
        }
        HeadProgress::Refused(r) => {
            checked(Err(r))?;
            None
        }
        HeadProgress::NeedMore => {
            if data.len() >= MAX_HEAD {
                return Err("an oversized head still wants more".to_string());
            }
            None
        }
    };
    let line = checked(parse_line(&TARGET, data))?;
    Ok((http.flatten(), line))
}

/// A parse result's invariants: a delay within bounds; a refusal with a known status and a
/// reason fit for a log line and an HTTP body (no control characters).
fn checked(result: Result<Command, Refusal>) -> Result<Option<Command>, String> {
    match result {
        Ok(Command::Reboot(Some(d))) if d > MAX_DELAY => Err(format!("delay {d:?} passed")),
        Ok(command) => Ok(Some(command)),
        Err(Refusal(code, reason)) => {
            if ![400, 404, 405, 414, 431].contains(&code) {
                return Err(format!("unexpected status {code}"));
            }
            if reason.chars().any(char::is_control) {
                return Err(format!("control characters in the reason {reason:?}"));
            }
            Ok(None)
        }
    }
}

/// Runs the entry point over `n` mutations of [`SEEDS`] (xorshift, fixed seed): a cheap
/// stand-in for `cargo fuzz` in every test run. The seeds themselves must parse.
pub fn mutations(n: usize) -> Result<(), String> {
    for seed in SEEDS {
        let mut input = vec![0u8];
        input.extend_from_slice(seed);
        if request(&input)? == (None, None) {
            return Err(format!("seed {:?} parses as nothing", seed));
        }
    }
    // Bytes that matter to the parsers: escapes, separators, line ends.
    let dictionary: &[&[u8]] = &[
        b"%", b"%00", b"%e9", b"\r\n", b"\n\n", b"&", b"=", b"+", b"\xc3", b" ",
    ];
    let mut mutator = Mutator::new(0x2545_f491_4f6c_dd1d);
    for i in 0..n {
        let seed = SEEDS.get(i % SEEDS.len()).copied().unwrap_or_default();
        let mut input = vec![mutator.number() as u8];
        input.extend_from_slice(seed);
        mutator.mutate(&mut input, 6, dictionary);
        request(&input).map_err(|e| format!("{e} (input {input:?})"))?;
    }
    Ok(())
}
