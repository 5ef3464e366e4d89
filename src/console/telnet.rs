//! The telnet protocol (RFC 854/857/858), as much as a serial console needs: the server
//! side's opening negotiation (we echo, no go-ahead: telnet switches to character mode),
//! answers to the client's option requests, IAC escaping both ways, and `BREAK`.
//!
//! [`Decoder`] is a byte-at-a-time state machine, so a command split across TCP reads is
//! handled, and stray or garbage commands are consumed without reaching the board.

// TEMPORARY: removed when the lead fixes this file after the merge (issue 13 item 1)
#![allow(
    clippy::indexing_slicing,
    clippy::string_slice,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

pub const IAC: u8 = 255;
pub const DONT: u8 = 254;
pub const DO: u8 = 253;
pub const WONT: u8 = 252;
pub const WILL: u8 = 251;
pub const SB: u8 = 250;
pub const BRK: u8 = 243;
pub const SE: u8 = 240;

pub const OPT_BINARY: u8 = 0;
pub const OPT_ECHO: u8 = 1;
pub const OPT_SGA: u8 = 3;

/// What the server sends first: it will echo and suppress go-ahead, which makes a telnet
/// client send each key at once and stop echoing locally (the board echoes).
pub const OPENING: [u8; 9] = [IAC, WILL, OPT_ECHO, IAC, WILL, OPT_SGA, IAC, DO, OPT_SGA];

/// Doubles every IAC in output to the client.
pub fn escape(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 8);
    for &b in data {
        out.push(b);
        if b == IAC {
            out.push(IAC);
        }
    }
    out
}

/// What a chunk of client input amounts to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Decoded {
    /// Bytes for the board.
    pub data: Vec<u8>,
    /// Negotiation answers for the client.
    pub reply: Vec<u8>,
    /// Where the client asked for a serial break: offsets into `data`, in order. The bytes
    /// before an offset go to the board before that break (Magic SysRq is a break and then
    /// the command key: "\n" IAC BRK "b" must not become a break and then "\nb").
    pub breaks: Vec<usize>,
}

/// One step of a client's input, in the order the client sent it.
#[derive(Debug, PartialEq, Eq)]
pub enum ToBoard<'a> {
    Data(&'a [u8]),
    Break,
}

impl Decoded {
    /// The data and breaks in the order they came, without empty data steps.
    pub fn input(&self) -> Vec<ToBoard<'_>> {
        let mut steps = Vec::new();
        let mut from = 0;
        for &at in &self.breaks {
            if at > from {
                steps.push(ToBoard::Data(&self.data[from..at]));
            }
            steps.push(ToBoard::Break);
            from = at;
        }
        if from < self.data.len() {
            steps.push(ToBoard::Data(&self.data[from..]));
        }
        steps
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    #[default]
    Data,
    /// After a CR: a following NUL is the telnet way of sending a bare CR.
    Cr,
    Iac,
    /// After IAC DO/DONT/WILL/WONT: the option byte.
    Option(u8),
    Sub,
    SubIac,
}

/// Client-to-board decoder for one connection.
#[derive(Debug)]
pub struct Decoder {
    state: State,
    /// Options we agreed to enable on our side (WILL) and on the client's side (DO).
    ours: [bool; 256],
    theirs: [bool; 256],
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// A decoder that knows what [`OPENING`] offered.
    pub fn new() -> Self {
        let mut d = Decoder {
            state: State::Data,
            ours: [false; 256],
            theirs: [false; 256],
        };
        d.ours[usize::from(OPT_ECHO)] = true;
        d.ours[usize::from(OPT_SGA)] = true;
        d.theirs[usize::from(OPT_SGA)] = true;
        d
    }

    pub fn decode(&mut self, input: &[u8]) -> Decoded {
        let mut out = Decoded::default();
        for &b in input {
            self.state = match (self.state, b) {
                (State::Data | State::Cr, IAC) => State::Iac,
                (State::Cr, 0) => State::Data,
                (State::Data | State::Cr, b'\r') => {
                    out.data.push(b);
                    State::Cr
                }
                (State::Data | State::Cr, _) => {
                    out.data.push(b);
                    State::Data
                }
                (State::Iac, IAC) => {
                    out.data.push(IAC);
                    State::Data
                }
                (State::Iac, DO | DONT | WILL | WONT) => State::Option(b),
                (State::Iac, SB) => State::Sub,
                (State::Iac, BRK) => {
                    out.breaks.push(out.data.len());
                    State::Data
                }
                // NOP, AYT, GA and friends: nothing for the board.
                (State::Iac, _) => State::Data,
                (State::Option(verb), option) => {
                    self.negotiate(verb, option, &mut out.reply);
                    State::Data
                }
                (State::Sub, IAC) => State::SubIac,
                (State::Sub, _) => State::Sub,
                (State::SubIac, SE) => State::Data,
                (State::SubIac, _) => State::Sub,
            };
        }
        out
    }

    /// Answers a request only when it changes an option's state (RFC 854: no answer to an
    /// acknowledgement, so two peers never loop).
    fn negotiate(&mut self, verb: u8, option: u8, reply: &mut Vec<u8>) {
        let o = usize::from(option);
        // We do echo and SGA (and binary, harmlessly); everything else we refuse.
        let we_can = matches!(option, OPT_ECHO | OPT_SGA | OPT_BINARY);
        let they_may = matches!(option, OPT_SGA | OPT_BINARY);
        match verb {
            DO if !self.ours[o] => {
                self.ours[o] = we_can;
                reply.extend_from_slice(&[IAC, if we_can { WILL } else { WONT }, option]);
            }
            DONT if self.ours[o] => {
                self.ours[o] = false;
                reply.extend_from_slice(&[IAC, WONT, option]);
            }
            WILL if !self.theirs[o] => {
                self.theirs[o] = they_may;
                reply.extend_from_slice(&[IAC, if they_may { DO } else { DONT }, option]);
            }
            WONT if self.theirs[o] => {
                self.theirs[o] = false;
                reply.extend_from_slice(&[IAC, DONT, option]);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_iac() {
        assert_eq!(escape(b"a\xffb"), b"a\xff\xffb");
        assert_eq!(escape(b""), b"");
    }

    #[test]
    fn plain_data_passes_and_cr_nul_becomes_cr() {
        let mut d = Decoder::new();
        assert_eq!(d.decode(b"ls\r\0").data, b"ls\r");
        assert_eq!(d.decode(b"ls\r\n").data, b"ls\r\n");
        assert_eq!(d.decode(b"\xff\xff").data, [IAC]);
    }

    #[test]
    fn acknowledgements_get_no_answer_and_requests_do() {
        let mut d = Decoder::new();
        // telnet acknowledges our opening: no reply, or we would loop.
        let r = d.decode(&[IAC, DO, OPT_ECHO, IAC, DO, OPT_SGA, IAC, WILL, OPT_SGA]);
        assert!(r.reply.is_empty() && r.data.is_empty(), "{r:?}");
        // It asks for terminal type and window size: refused, once.
        let r = d.decode(&[IAC, WILL, 24, IAC, WILL, 31, IAC, DO, 5]);
        assert_eq!(r.reply, [IAC, DONT, 24, IAC, DONT, 31, IAC, WONT, 5]);
        let r = d.decode(&[IAC, WILL, 24]);
        assert_eq!(r.reply, [IAC, DONT, 24]);
    }

    #[test]
    fn commands_split_across_reads_and_subnegotiation_are_consumed() {
        let mut d = Decoder::new();
        let a = d.decode(&[b'x', IAC]);
        let b = d.decode(&[SB, 24, 0, b'V', b'T', IAC]);
        let c = d.decode(&[SE, b'y', IAC, 241, b'z']);
        assert_eq!([a.data, b.data, c.data].concat(), b"xyz");
    }

    #[test]
    fn break_is_reported() {
        let mut d = Decoder::new();
        let r = d.decode(&[b'a', IAC, BRK, b'b']);
        assert_eq!(r.breaks, [1]);
        assert_eq!(r.data, b"ab");
        let r = d.decode(&[IAC, BRK, b'\n', IAC, BRK, IAC, BRK]);
        assert_eq!(r.breaks, [0, 1, 1]);
        assert_eq!(r.data, b"\n");
    }

    #[test]
    fn input_splits_around_breaks_in_order() {
        let d = Decoded {
            data: b"\nb".to_vec(),
            breaks: vec![1],
            reply: Vec::new(),
        };
        assert_eq!(
            d.input(),
            [ToBoard::Data(b"\n"), ToBoard::Break, ToBoard::Data(b"b")]
        );
        let d = Decoded {
            data: b"x".to_vec(),
            breaks: vec![0, 0],
            reply: Vec::new(),
        };
        assert_eq!(
            d.input(),
            [ToBoard::Break, ToBoard::Break, ToBoard::Data(b"x")]
        );
    }
}
